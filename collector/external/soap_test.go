package external

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

const (
	soapSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	soapKey    = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

type hmacSecrets struct{}

func (hmacSecrets) Lookup(ref string) ([]webhook.Secret, error) {
	s, _ := webhook.ParseSecret(soapSecret)
	return []webhook.Secret{s}, nil
}
func (hmacSecrets) Value(ref string) (string, error) {
	if ref == "key" {
		return soapKey, nil
	}
	return "", errors.New("no " + ref)
}

// TestDispatchSOAP: a soap node gets a SOAP 1.1 envelope with the SOAPAction,
// signed over the envelope's bytes, whose Task holds the sealed task.
func TestDispatchSOAP(t *testing.T) {
	got := make(chan Task, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sec, _ := webhook.ParseSecret(soapSecret)
		if err := webhook.Verify(r.Header, body, []webhook.Secret{sec}, time.Now()); err != nil {
			http.Error(w, err.Error(), 401)
			return
		}
		if r.Header.Get("soapaction") != `"`+SOAPActionTask+`"` || !strings.HasPrefix(r.Header.Get("content-type"), "text/xml") {
			http.Error(w, "not soap: "+r.Header.Get("soapaction"), 400)
			return
		}
		ct, payload, err := DecodeSOAPTask(body)
		if err != nil || ct != seal.ContentTypeAESGCM || bytes.Contains(payload, []byte("secret-body")) {
			http.Error(w, "task: "+ct, 400)
			return
		}
		key, _ := seal.ParseKey(soapKey)
		plain, err := seal.Open(seal.AESGCM, key, r.Header.Get("webhook-id"), payload)
		var task Task
		if err != nil || json.Unmarshal(plain, &task) != nil {
			http.Error(w, "open", 400)
			return
		}
		got <- task
		w.WriteHeader(202)
	}))
	defer srv.Close()
	tg := &rules.Target{Type: rules.TargetExternal, Endpoint: srv.URL, Format: rules.NodeSOAP, AllowPrivate: true,
		Auth: &rules.NodeAuth{Type: rules.AuthHMAC, SecretRef: "hmac"}, Encryption: &rules.Encryption{Type: rules.EncryptAESGCM, KeyRef: "key"}}
	task := Task{ID: "id-1", Request: TaskRequest{Method: "POST", Path: "/x", Body: []byte("secret-body")}}
	if err := New(hmacSecrets{}, 5*time.Second).Dispatch(context.Background(), tg, task); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g.ID != "id-1" || string(g.Request.Body) != "secret-body" {
		t.Fatalf("task %+v", g)
	}
}

func TestDecodeSOAPTaskRefusals(t *testing.T) {
	for _, tt := range []struct{ name, doc string }{
		{"not xml", "{}"},
		{"no task", `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>`},
		{"wrong namespace", `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Task contentType="a">eA==</Task></soap:Body></soap:Envelope>`},
		{"no content type", `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Task xmlns="urn:asyncmesh:node:v1">eA==</Task></soap:Body></soap:Envelope>`},
		{"not base64", `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Task xmlns="urn:asyncmesh:node:v1" contentType="a">!!</Task></soap:Body></soap:Envelope>`},
		{"too large", strings.Repeat(" ", MaxSOAPTask+1)},
	} {
		if _, _, err := DecodeSOAPTask([]byte(tt.doc)); err == nil {
			t.Errorf("%s: decoded", tt.name)
		}
	}
	// Line breaks inside the base64 are XML whitespace: accepted.
	ct, p, err := DecodeSOAPTask([]byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Task xmlns="urn:asyncmesh:node:v1" contentType="application/json">eyJp
ZCI6IngifQ==</Task></soap:Body></soap:Envelope>`))
	if err != nil || ct != "application/json" || string(p) != `{"id":"x"}` {
		t.Fatalf("%q %q %v", ct, p, err)
	}
}

// FuzzDecodeSOAPTask: decoding never panics, and what it accepts encodes
// back to an envelope that decodes to the same content type and bytes.
func FuzzDecodeSOAPTask(f *testing.F) {
	f.Add(EncodeSOAPTask("application/json", []byte(`{"id":"x"}`)))
	f.Add(EncodeSOAPTask(seal.ContentTypeJWE, []byte("a.b.c.d.e")))
	f.Add([]byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Task xmlns="urn:asyncmesh:node:v1" contentType="x"> e A = = </Task></soap:Body></soap:Envelope>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ct, p, err := DecodeSOAPTask(data)
		if err != nil {
			return
		}
		ct2, p2, err := DecodeSOAPTask(EncodeSOAPTask(ct, p))
		if err != nil || ct2 != ct || !bytes.Equal(p, p2) {
			t.Fatalf("round trip of %q %q: %q %q %v", ct, p, ct2, p2, err)
		}
	})
}
