package external

import (
	"strings"
	"testing"
)

func TestParseCompletion(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"status":200,"headers":{"content-type":"text/plain"},"body":"ok"}`, ""},
		{`{"error":"ledger closed"}`, ""},
		{`{"status":200,"body":"b2s=","bodyEncoding":"base64"}`, ""},
		{`{"status":200,"error":"x"}`, "not both"},
		{`{}`, "status: want 100..599"},
		{`{"status":700}`, "status: want 100..599"},
		{`{"status":200,"bodyEncoding":"hex"}`, "bodyEncoding"},
		{`{"status":200,"body":"!","bodyEncoding":"base64"}`, "not base64"},
		{`{"status":200,"headers":{"bad name":"x"}}`, "invalid header"},
		{`{"status":200,"extra":1}`, "unknown field"},
		{`{"status":200} {}`, "trailing data"},
	}
	for _, tt := range tests {
		_, err := ParseCompletion([]byte(tt.in))
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want %q", tt.in, err, tt.want)
		}
	}
}

func FuzzParseCompletion(f *testing.F) {
	f.Add([]byte(`{"status":200,"headers":{"a":"b"},"body":"b2s=","bodyEncoding":"base64"}`))
	f.Add([]byte(`{"error":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if cp, err := ParseCompletion(b); err == nil {
			cp.BodyBytes()
		}
	})
}
