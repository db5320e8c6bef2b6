package webhook

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

// The test vector published with the Standard Webhooks specification.
func TestSpecVector(t *testing.T) {
	sec, err := ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := sec.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
}

func TestVerify(t *testing.T) {
	old, _ := ParseSecret(NewSecret())
	cur, _ := ParseSecret(NewSecret())
	other, _ := ParseSecret(NewSecret())
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"id":"x"}`)
	h := http.Header{}
	Sign(h, []Secret{old, cur}, "dlv_1", now, body)
	tests := []struct {
		name    string
		body    []byte
		secrets []Secret
		at      time.Time
		want    error
	}{
		{"current secret", body, []Secret{cur}, now, nil},
		{"old secret during rotation", body, []Secret{old}, now, nil},
		{"wrong secret", body, []Secret{other}, now, ErrSignature},
		{"tampered body", []byte(`{"id":"y"}`), []Secret{cur}, now, ErrSignature},
		{"too old", body, []Secret{cur}, now.Add(6 * time.Minute), ErrTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Verify(h, tt.body, tt.secrets, tt.at); !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
	if err := Verify(http.Header{}, body, []Secret{cur}, now); !errors.Is(err, ErrMissingHeaders) {
		t.Fatalf("missing headers: %v", err)
	}
}

func TestParseSecret(t *testing.T) {
	for _, bad := range []string{"", "whsec_!!", "whsec_c2hvcnQ="} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) accepted", bad)
		}
	}
	s, _ := ParseSecret(NewSecret())
	if s.String() != "whsec_[redacted]" {
		t.Fatal("secret String must not reveal the key")
	}
}
