package external

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
)

// SOAP nodes (node format soap). The task is the same bytes a json node
// gets — the task JSON, or its sealed form — base64 in a SOAP 1.1 envelope
// (delivery.WrapSOAP, as callbacks are), with SOAPAction SOAPActionTask:
//
//	<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
//	  <soap:Body>
//	    <Task xmlns="urn:asyncmesh:node:v1" contentType="application/json">base64</Task>
//	  </soap:Body>
//	</soap:Envelope>
//
// An hmac node's signature covers the envelope's bytes as sent. The node
// completes in JSON, as every node does (POST /v1/requests/{id}/complete):
// one completion format keeps the completion endpoint's checks — the
// authentication before the body is read, the strict decoding — one code
// path.
const (
	NamespaceNode  = "urn:asyncmesh:node:v1"
	SOAPActionTask = NamespaceNode + "#Task"
)

// MaxSOAPTask bounds a SOAP task a node decodes: the largest envelope the
// collector sends (a request body of up to 16 MiB, base64 twice: in the task
// JSON, then around it, plus room).
const MaxSOAPTask = 16<<20*16/9 + 1<<20

type soapTaskEnvelope struct {
	XMLName xml.Name `xml:"http://schemas.xmlsoap.org/soap/envelope/ Envelope"`
	Body    struct {
		Task *soapTask `xml:"urn:asyncmesh:node:v1 Task"`
	} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
}

type soapTask struct {
	XMLName     xml.Name `xml:"urn:asyncmesh:node:v1 Task"`
	ContentType string   `xml:"contentType,attr"`
	Payload     string   `xml:",chardata"`
}

// EncodeSOAPTask wraps a task's bytes (of content type ct) for a soap node.
func EncodeSOAPTask(ct string, payload []byte) []byte {
	inner, _ := xml.Marshal(soapTask{ContentType: ct, Payload: base64.StdEncoding.EncodeToString(payload)}) // strings only
	return delivery.WrapSOAP(inner)
}

// DecodeSOAPTask returns the task bytes of a SOAP task envelope and their
// content type (for nodes, as DecodeSOAP is for receivers).
func DecodeSOAPTask(data []byte) (ct string, payload []byte, err error) {
	if len(data) > MaxSOAPTask {
		return "", nil, fmt.Errorf("decoding SOAP task: %d bytes, over %d", len(data), MaxSOAPTask)
	}
	var env soapTaskEnvelope
	if err := xml.Unmarshal(data, &env); err != nil {
		return "", nil, fmt.Errorf("decoding SOAP task: %w", err)
	}
	t := env.Body.Task
	if t == nil {
		return "", nil, errors.New("decoding SOAP task: no Task element in the body")
	}
	if t.ContentType == "" {
		return "", nil, errors.New("decoding SOAP task: Task: no contentType")
	}
	// Whitespace is allowed around base64 in XML text (line breaks, say).
	if payload, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(t.Payload), "")); err != nil {
		return "", nil, fmt.Errorf("decoding SOAP task: Task: %w", err)
	}
	return t.ContentType, payload, nil
}
