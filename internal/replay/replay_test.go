package replay

import (
	"errors"
	"testing"
	"time"
)

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	now := time.Unix(1_700_000_000, 0)
	good := Sign(secret, "id1", "POST", "/slow?x=1", now)
	tests := []struct {
		name   string
		secret []byte
		value  string
		path   string
		at     time.Time
		want   error
	}{
		{"valid", secret, good, "/slow?x=1", now, nil},
		{"valid within skew", secret, good, "/slow?x=1", now.Add(4 * time.Minute), nil},
		{"stale", secret, good, "/slow?x=1", now.Add(6 * time.Minute), ErrStale},
		{"other path", secret, good, "/other", now, ErrSignature},
		{"other secret", []byte("nope"), good, "/slow?x=1", now, ErrSignature},
		{"no secret", nil, good, "/slow?x=1", now, ErrSignature},
		{"malformed", secret, "garbage", "/slow?x=1", now, ErrMalformed},
		{"bad time", secret, "t=x,v1=abc", "/slow?x=1", now, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.secret, tt.value, "id1", "POST", tt.path, tt.at)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("t=1700000000,v1=abc")
	f.Fuzz(func(t *testing.T, v string) {
		_ = Verify([]byte("k"), v, "id", "GET", "/", time.Unix(1_700_000_000, 0))
	})
}
