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
