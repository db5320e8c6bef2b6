package seal

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func key() []byte { k := make([]byte, 32); _, _ = rand.Read(k); return k }

func TestRoundTrip(t *testing.T) {
	k := key()
	for _, alg := range []string{AESGCM, JWE} {
		t.Run(alg, func(t *testing.T) {
			body, ct, err := Seal(alg, k, "id-1", []byte(`{"secret":true}`))
			if err != nil || ct == "" || bytes.Contains(body, []byte("secret")) {
				t.Fatalf("seal: %v %q %s", err, ct, body)
			}
			pt, err := Open(alg, k, "id-1", body)
			if err != nil || string(pt) != `{"secret":true}` {
				t.Fatalf("open: %v %s", err, pt)
			}
			if _, err := Open(alg, k, "id-2", body); err == nil {
				t.Fatal("opened as another request's")
			}
			if _, err := Open(alg, key(), "id-1", body); err == nil {
				t.Fatal("opened with another key")
			}
			if _, err := Open(alg, k, "id-1", append([]byte("x"), body...)); err == nil {
				t.Fatal("opened a tampered body")
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	if _, err := ParseKey("c2hvcnQ="); err == nil {
		t.Fatal("short key accepted")
	}
	if k, err := ParseKey(" MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"); err != nil || len(k) != 32 {
		t.Fatalf("%v %d", err, len(k))
	}
}

func FuzzOpen(f *testing.F) {
	k := key()
	for _, alg := range []string{AESGCM, JWE} {
		b, _, _ := Seal(alg, k, "id", []byte("x"))
		f.Add(alg == JWE, b)
	}
	f.Fuzz(func(t *testing.T, jwe bool, body []byte) {
		alg := AESGCM
		if jwe {
			alg = JWE
		}
		_, _ = Open(alg, k, "id", body)
	})
}
