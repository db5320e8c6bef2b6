package envelope

import (
	"encoding/json"
	"strings"
	"testing"
)

const valid = `{"v":1,"id":"01890a5d-ac96-774b-bcce-b302099a8057","traceId":"4bf92f3577b34da6a3ce929d0e0e4736",
"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","rule":"r","method":"POST",
"authority":"svc","path":"/slow","callback":{"url":"http://x/cb","protocol":"http"},
"retry":{"maxAttempts":3},"timeout":"5s"}`

func TestDecode(t *testing.T) {
	if _, err := Decode([]byte(valid)); err != nil {
		t.Fatalf("valid envelope: %v", err)
	}
	tests := []struct{ name, from, to, want string }{
		{"bad id", `"id":"01890a5d`, `"id":"x01890a5d`, "id:"},
		{"bad trace", `"traceId":"4bf`, `"traceId":"XYZ`, "traceId:"},
		{"bad path", `"path":"/slow"`, `"path":"slow"`, "path:"},
		{"unknown field", `"rule":"r"`, `"rule":"r","extra":1`, "unknown field"},
		{"bad callback", `"url":"http://x/cb"`, `"url":"gopher://x"`, "callback.url"},
		{"bad method", `"method":"POST"`, `"method":"po st"`, "method:"},
		{"key without window", `"rule":"r"`, `"rule":"r","idempotencyKey":"k"`, "idempotencyWindow: must be between"},
		{"window without key", `"rule":"r"`, `"rule":"r","idempotencyWindow":"1h"`, "idempotencyWindow: set without"},
		{"key not printable", `"rule":"r"`, `"rule":"r","idempotencyKey":"a\nb","idempotencyWindow":"1h"`, "idempotencyKey:"},
		{"window too long", `"rule":"r"`, `"rule":"r","idempotencyKey":"k","idempotencyWindow":"200h"`, "idempotencyWindow:"},
		{"order key not printable", `"rule":"r"`, `"rule":"r","orderKey":"a\u0000b"`, "orderKey:"},
		{"order key too long", `"rule":"r"`, `"rule":"r","orderKey":"` + strings.Repeat("k", 257) + `"`, "orderKey:"},
		// A filter (or anyone with its intake credentials) cannot make a
		// request wait for another: only intake links requests.
		{"order link from outside", `"rule":"r"`, `"rule":"r","orderKey":"k","orderAfter":{"id":"01890a5d-ac96-774b-bcce-b302099a8056"}`, "orderAfter:"},
		{"earlier order links from outside", `"rule":"r"`, `"rule":"r","orderKey":"k","orderEarlier":[{"id":"01890a5d-ac96-774b-bcce-b302099a8056"}]`, "orderEarlier:"},
	}
	if e, err := Decode([]byte(strings.Replace(valid, `"rule":"r"`, `"rule":"r","orderKey":"account 1"`, 1))); err != nil || e.OrderKey != "account 1" {
		t.Fatalf("envelope with an ordering key: %v", err)
	}
	if _, err := Decode([]byte(strings.Replace(valid, `"rule":"r"`, `"rule":"r","idempotencyKey":"k","idempotencyWindow":"24h"`, 1))); err != nil {
		t.Fatalf("envelope with a key: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(strings.Replace(valid, tt.from, tt.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(valid))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err == nil {
			if _, err := json.Marshal(e); err != nil {
				t.Fatal(err)
			}
		}
	})
}
