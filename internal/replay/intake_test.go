package replay

import (
	"bytes"
	"testing"
	"time"
)

func TestIntakeSignature(t *testing.T) {
	cur, prev := bytes.Repeat([]byte("c"), 32), bytes.Repeat([]byte("p"), 32)
	body := []byte(`{"id":"x","caller":"billing"}`)
	tests := []struct {
		name    string
		secrets [][]byte
		value   string
		body    []byte
		ok      bool
	}{
		{"current", [][]byte{cur, prev}, SignIntake(cur, body), body, true},
		{"previous during a rotation", [][]byte{cur, prev}, SignIntake(prev, body), body, true},
		{"unknown secret", [][]byte{cur}, SignIntake(prev, body), body, false},
		{"another body", [][]byte{cur}, SignIntake(cur, body), []byte(`{"id":"x","caller":"admin"}`), false},
		{"missing", [][]byte{cur}, "", body, false},
		{"padded", [][]byte{cur}, SignIntake(cur, body) + "=", body, false},
		{"a replay signature is no intake signature", [][]byte{cur}, Sign(cur, Request{ID: "x"}, time.Unix(1e9, 0))[3:], body, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := VerifyIntake(tt.secrets, tt.value, tt.body); (err == nil) != tt.ok {
				t.Fatalf("VerifyIntake = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

// FuzzVerifyIntake: a value verifies exactly when it is the signature the
// secret makes over that body (the oracle recomputes it independently of
// the parser).
func FuzzVerifyIntake(f *testing.F) {
	secret := bytes.Repeat([]byte("s"), 32)
	f.Add(SignIntake(secret, []byte("{}")), []byte("{}"))
	f.Add("", []byte(nil))
	f.Add(SignIntake(secret, []byte("{}"))+"=", []byte("{}"))
	f.Fuzz(func(t *testing.T, value string, body []byte) {
		got := VerifyIntake([][]byte{secret}, value, body) == nil
		if want := value == SignIntake(secret, body); got != want {
			t.Fatalf("VerifyIntake(%q) = %v, want %v", value, got, want)
		}
	})
}
