package client

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/asyncmesh/asyncmesh/collector/delivery"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// FuzzDecode feeds the SDK's callback decoding (the body of a verified
// callback, or of a 200 from Wait) arbitrary bytes. Properties:
//   - decode never panics; what it accepts has an id;
//   - an accepted payload, written again in the wire format (a UTF-8 body
//     as text, any other as base64 with bodyEncoding), decodes to the same
//     Result;
//   - and, the other way round, the same bytes as the response body of a
//     record, encoded by the collector (delivery.NewPayload, the JSON of an
//     http callback), decode to exactly those bytes, with the record's id,
//     trace id, status and headers.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":"0190b3c2","traceId":"4bf92f3577b34da6a3ce929d0e0e4736","status":"completed","response":{"status":200,"headers":{"content-type":"application/json"},"body":"{\"ok\":true}"}}`))
	f.Add([]byte(`{"id":"0190b3c2","status":"completed","response":{"status":200,"body":"AP8=","bodyEncoding":"base64"}}`))
	f.Add([]byte(`{"id":"0190b3c2","status":"completed","response":{"status":200,"body":"AP8","bodyEncoding":"base64"}}`)) // unpadded
	f.Add([]byte(`{"id":"0190b3c2","status":"completed","response":{"status":200,"body":"!!","bodyEncoding":"base64"}}`))
	f.Add([]byte(`{"id":"0190b3c2","status":"completed","response":{"status":200,"body":"AP8=","bodyEncoding":"gzip"}}`))
	f.Add([]byte(`{"id":"0190b3c2","status":"failed","error":"replaying: connection refused"}`))
	f.Add([]byte(`{"id":"0190b3c2","response":null}`))
	f.Add([]byte(`{"id":"","status":"completed"}`))
	f.Add([]byte(`{"ID":"x","Response":{"Status":1e400}}`))
	f.Add([]byte(`{"id":"a","id":"b","response":{"headers":{"a":"1","a":"2"}}}`))
	f.Add([]byte(`{"id":"\ud800","response":{"body":"\u0000\xff"}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte{0xff, 0xfe})
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := decode(data); err == nil {
			if r.ID == "" {
				t.Fatalf("decode(%q) accepted a payload without an id", data)
			}
			again, err := decode(rewire(r))
			if err != nil {
				t.Fatalf("decode(%q) = %+v, but its re-encoding %s does not decode: %v", data, r, rewire(r), err)
			}
			if !sameResult(r, again) {
				t.Fatalf("decode(%q) = %+v, re-encoded and decoded = %+v", data, r, again)
			}
		} else if !strings.HasPrefix(err.Error(), "callback payload: ") {
			t.Fatalf("decode(%q): error %q does not say what it was decoding", data, err)
		}

		// The collector's encoding of data as a response body.
		rec := &store.Record{ID: "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
			Envelope: &envelope.Envelope{}, Response: &store.Response{Status: 201, Headers: [][2]string{{"content-type", "application/octet-stream"}}, Body: data}}
		wire, err := json.Marshal(delivery.NewPayload(rec))
		if err != nil {
			t.Fatal(err)
		}
		r, err := decode(wire)
		if err != nil {
			t.Fatalf("the collector's payload %s does not decode: %v", wire, err)
		}
		if r.ID != rec.ID || r.TraceID != rec.TraceID || r.Status != "completed" || r.Response == nil ||
			r.Response.Status != 201 || r.Response.Headers["content-type"] != "application/octet-stream" {
			t.Fatalf("the collector's payload %s decodes to %+v", wire, r)
		}
		if !bytes.Equal(r.Response.Body, data) {
			t.Fatalf("response body %q reached the SDK as %q (payload %s)", data, r.Response.Body, wire)
		}
	})
}

// rewire writes r in the callback's wire format, as the collector would.
func rewire(r Result) []byte {
	type resp struct {
		Status       int               `json:"status"`
		Headers      map[string]string `json:"headers,omitempty"`
		Body         string            `json:"body"`
		BodyEncoding string            `json:"bodyEncoding,omitempty"`
	}
	w := struct {
		ID       string `json:"id"`
		TraceID  string `json:"traceId"`
		Status   string `json:"status"`
		Error    string `json:"error,omitempty"`
		Response *resp  `json:"response,omitempty"`
	}{ID: r.ID, TraceID: r.TraceID, Status: r.Status, Error: r.Error}
	if r.Response != nil {
		w.Response = &resp{Status: r.Response.Status, Headers: r.Response.Headers, Body: string(r.Response.Body)}
		if !utf8.Valid(r.Response.Body) {
			b, _ := json.Marshal(r.Response.Body) // base64 in quotes
			w.Response.Body, w.Response.BodyEncoding = strings.Trim(string(b), `"`), "base64"
		}
	}
	b, err := json.Marshal(w)
	if err != nil {
		panic(err) // strings, ints and a map of strings
	}
	return b
}

// sameResult compares results, an empty header map being no header map
// (the wire omits both).
func sameResult(a, b Result) bool {
	if a.Response != nil && b.Response != nil {
		ra, rb := *a.Response, *b.Response
		if len(ra.Headers) == 0 && len(rb.Headers) == 0 {
			ra.Headers, rb.Headers = nil, nil
		}
		if len(ra.Body) == 0 && len(rb.Body) == 0 {
			ra.Body, rb.Body = nil, nil
		}
		a.Response, b.Response = &ra, &rb
	}
	return reflect.DeepEqual(a, b)
}
