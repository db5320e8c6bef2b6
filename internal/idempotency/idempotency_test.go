package idempotency

import (
	"strings"
	"testing"
)

// quote writes k as an sf-string.
func quote(k string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(k) + `"`
}

func TestParseKey(t *testing.T) {
	long := strings.Repeat("k", MaxKeyLen)
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, want: "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{in: `8e03978e-40d5-43e8-bc93-6894a57f9324`, want: "8e03978e-40d5-43e8-bc93-6894a57f9324"}, // bare, for leniency
		{in: `  "a b"  `, want: "a b"},
		{in: `"a\"b\\c"`, want: `a"b\c`},
		{in: `"` + long + `"`, want: long},
		{in: long, want: long},
		{in: ``, err: "empty"},
		{in: `""`, err: "empty key"},
		{in: `"` + long + `k"`, err: "longer than 255"},
		{in: long + "k", err: "longer than 255"},
		{in: `"abc`, err: "no closing quote"},
		{in: `"a"b`, err: "after the closing quote"},
		{in: `"a", "b"`, err: "after the closing quote"},
		{in: `a,b`, err: "bare key"},
		{in: `a b`, err: "bare key"},
		{in: `a;x=1`, err: "bare key"},
		{in: `"a\nb"`, err: "bad escape"},
		{in: "\"a\tb\"", err: "outside printable ASCII"},
		{in: "\"é\"", err: "outside printable ASCII"},
		{in: "é", err: "bare key"},
		{in: `a\b`, err: "bare key"},
	} {
		got, err := ParseKey(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseKey(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseKey(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	base := Fingerprint("POST", "/orders?x=1", []byte(`{"n":1}`))
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		same         bool
	}{
		{"same request", "POST", "/orders?x=1", `{"n":1}`, true},
		{"other body", "POST", "/orders?x=1", `{"n":2}`, false},
		{"other query", "POST", "/orders?x=2", `{"n":1}`, false},
		{"other method", "PUT", "/orders?x=1", `{"n":1}`, false},
		{"bytes moved between fields", "POST", "/orders?x=1{", `"n":1}`, false},
		{"no body", "POST", "/orders?x=1", ``, false},
	} {
		got := Fingerprint(tc.method, tc.path, []byte(tc.body))
		if (got == base) != tc.same {
			t.Errorf("%s: fingerprint equal = %v, want %v", tc.name, got == base, tc.same)
		}
		if len(got) != 64 {
			t.Errorf("%s: fingerprint %q is not 64 hex digits", tc.name, got)
		}
	}
}

func TestScope(t *testing.T) {
	a := Scope("billing", "orders", "k1")
	for _, tc := range []struct {
		name              string
		caller, rule, key string
		same              bool
	}{
		{"same", "billing", "orders", "k1", true},
		{"other caller", "shipping", "orders", "k1", false},
		{"anonymous", "", "orders", "k1", false},
		{"other rule", "billing", "refunds", "k1", false},
		{"other key", "billing", "orders", "k2", false},
		{"bytes moved between fields", "billin", "gorders", "k1", false},
	} {
		if got := Scope(tc.caller, tc.rule, tc.key); (got == a) != tc.same {
			t.Errorf("%s: scope equal = %v, want %v", tc.name, got == a, tc.same)
		}
	}
}

// FuzzParseKey checks ParseKey against its contract: whatever it accepts
// is a ValidKey, serializing that key as an sf-string parses back to it,
// and a valid key written as an sf-string is always accepted.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, `abc`, `"a\"b"`, `""`, `"`, `"\`, `a,b`, " \"x\" ", strings.Repeat("x", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		k, err := ParseKey(in)
		if err == nil {
			if !ValidKey(k) {
				t.Fatalf("ParseKey(%q) = %q, which is not a ValidKey", in, k)
			}
			if back, err := ParseKey(quote(k)); err != nil || back != k {
				t.Fatalf("ParseKey(quote(%q)) = %q, %v", k, back, err)
			}
		}
		if ValidKey(in) {
			if back, err := ParseKey(quote(in)); err != nil || back != in {
				t.Fatalf("a valid key %q as an sf-string: ParseKey = %q, %v", in, back, err)
			}
		}
	})
}
