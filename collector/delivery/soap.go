package delivery

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"unicode/utf8"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// SOAP 1.1 callbacks. The envelope (namespace NamespaceSOAP for the body's
// Deliver element) carries what an http callback's JSON does:
//
//	<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
//	  <soap:Body>
//	    <Deliver xmlns="urn:asyncmesh:callback:v1">
//	      <Id>…</Id><TraceId>…</TraceId><Status>completed</Status>
//	      <Response><Status>200</Status>
//	        <Header name="content-type">application/json</Header>
//	        <Body>…</Body>            (encoding="base64" when not XML text)
//	      </Response>
//	      <Error>…</Error>            (failed requests)
//	    </Deliver>
//	  </soap:Body>
//	</soap:Envelope>
const (
	NamespaceSOAPEnvelope = "http://schemas.xmlsoap.org/soap/envelope/"
	NamespaceSOAP         = "urn:asyncmesh:callback:v1"
	// SOAPContentType is SOAP 1.1's content type.
	SOAPContentType = "text/xml; charset=utf-8"
)

type soapEnvelope struct {
	XMLName xml.Name `xml:"http://schemas.xmlsoap.org/soap/envelope/ Envelope"`
	Body    struct {
		Deliver *soapDeliver `xml:"urn:asyncmesh:callback:v1 Deliver"`
		Fault   *struct {
			Code   string `xml:"faultcode"`
			String string `xml:"faultstring"`
		} `xml:"Fault"`
	} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
}

type soapDeliver struct {
	ID       string        `xml:"Id"`
	TraceID  string        `xml:"TraceId"`
	Status   string        `xml:"Status"`
	Response *soapResponse `xml:"Response,omitempty"`
	Error    string        `xml:"Error,omitempty"`
}

type soapResponse struct {
	Status  int          `xml:"Status"`
	Headers []soapHeader `xml:"Header"`
	Body    soapText     `xml:"Body"`
}

type soapHeader struct {
	Name  string `xml:"name,attr"`
	Value string `xml:",chardata"`
}

type soapText struct {
	Encoding string `xml:"encoding,attr,omitempty"`
	Text     string `xml:",chardata"`
}

func init() { register(rules.ProtocolSOAP, (*Sender).sendSOAP) }

// sendSOAP makes a soap attempt: the envelope POSTed signed, with the rule's
// SOAPAction (quoted, as SOAP 1.1 wants).
func (s *Sender) sendSOAP(ctx context.Context, a *attempt, p Payload) Result {
	header := http.Header{"Soapaction": {`"` + a.cb.SOAPAction + `"`}}
	return s.post(ctx, a, SOAPContentType, EncodeSOAP(p), header)
}

// EncodeSOAP renders a callback payload as a SOAP 1.1 envelope.
func EncodeSOAP(p Payload) []byte {
	d := &soapDeliver{ID: p.ID, TraceID: p.TraceID, Status: p.Status, Error: p.Error}
	if r := p.Response; r != nil {
		sr := &soapResponse{Status: r.Status}
		keys := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			sr.Headers = append(sr.Headers, soapHeader{Name: k, Value: xmlSafe(r.Headers[k])})
		}
		body := r.Body
		if r.BodyEncoding == "" && !isXMLText(body) {
			body, sr.Body.Encoding = base64.StdEncoding.EncodeToString([]byte(body)), "base64"
		} else if r.BodyEncoding != "" {
			sr.Body.Encoding = r.BodyEncoding
		}
		sr.Body.Text = body
		d.Response = sr
	}
	inner, _ := xml.Marshal(struct {
		XMLName xml.Name `xml:"urn:asyncmesh:callback:v1 Deliver"`
		*soapDeliver
	}{soapDeliver: d}) // cannot fail: strings and ints only
	return WrapSOAP(inner)
}

// WrapSOAP puts inner (one marshalled XML element) in a SOAP 1.1 envelope's
// body: callbacks' Deliver, and processing nodes' Task (collector/external).
func WrapSOAP(inner []byte) []byte {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	b.WriteString(`<soap:Envelope xmlns:soap="` + NamespaceSOAPEnvelope + `"><soap:Body>`)
	b.Write(inner)
	b.WriteString(`</soap:Body></soap:Envelope>`)
	return b.Bytes()
}

// DecodeSOAP reads a callback envelope made by EncodeSOAP (for receivers and
// tests); a base64 body is returned decoded.
func DecodeSOAP(data []byte) (Payload, error) {
	var env soapEnvelope
	if err := xml.Unmarshal(data, &env); err != nil {
		return Payload{}, fmt.Errorf("decoding SOAP envelope: %w", err)
	}
	d := env.Body.Deliver
	if d == nil {
		return Payload{}, errors.New("decoding SOAP envelope: no Deliver element in the body")
	}
	p := Payload{ID: d.ID, TraceID: d.TraceID, Status: d.Status, Error: d.Error}
	if r := d.Response; r != nil {
		pr := &PayloadResponse{Status: r.Status, Headers: map[string]string{}, Body: r.Body.Text}
		for _, h := range r.Headers {
			pr.Headers[h.Name] = h.Value
		}
		switch r.Body.Encoding {
		case "":
		case "base64":
			b, err := base64.StdEncoding.DecodeString(r.Body.Text)
			if err != nil {
				return Payload{}, fmt.Errorf("decoding SOAP envelope: Response/Body: %w", err)
			}
			pr.Body = string(b)
		default:
			return Payload{}, fmt.Errorf("decoding SOAP envelope: Response/Body: unknown encoding %q", r.Body.Encoding)
		}
		p.Response = pr
	}
	return p, nil
}

// parseFault returns the faultstring of a SOAP fault envelope.
func parseFault(data []byte) (string, error) {
	var env soapEnvelope
	if err := xml.Unmarshal(data, &env); err != nil {
		return "", err
	}
	if env.Body.Fault == nil {
		return "", errors.New("no fault")
	}
	return env.Body.Fault.Code + ": " + env.Body.Fault.String, nil
}

// isXMLText reports whether s can be XML character data as it is.
func isXMLText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !isXMLChar(r) {
			return false
		}
	}
	return true
}

func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF
}

// xmlSafe drops characters XML cannot carry (header values are text).
func xmlSafe(s string) string {
	if isXMLText(s) {
		return s
	}
	b := make([]rune, 0, len(s))
	for _, r := range s {
		if isXMLChar(r) && r != utf8.RuneError {
			b = append(b, r)
		}
	}
	return string(b)
}
