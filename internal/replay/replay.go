// Package replay signs and verifies the header with which the collector's worker
// replays an accepted request through Envoy to the real service. The filter lets a
// request carrying a valid signature pass to the service even on an async route;
// an invalid or stale one is refused, so callers cannot forge it.
//
// Header: x-async-replay: t=<unix seconds>,v1=<base64url(HMAC-SHA256(secret,
// "<request id>.<t>.<method>.<path>"))>. A signature is valid for MaxSkew.
package replay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header is the replay header's name.
const Header = "x-async-replay"

// MaxSkew is how far a signature's time may be from now.
const MaxSkew = 5 * time.Minute

// Sign returns the header value for replaying (id, method, path) at now.
func Sign(secret []byte, id, method, path string, now time.Time) string {
	t := strconv.FormatInt(now.Unix(), 10)
	return "t=" + t + ",v1=" + mac(secret, id, t, method, path)
}

func mac(secret []byte, id, t, method, path string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(t))
	m.Write([]byte{'.'})
	m.Write([]byte(method))
	m.Write([]byte{'.'})
	m.Write([]byte(path))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Errors of Verify.
var (
	ErrMalformed = errors.New("replay header malformed")
	ErrStale     = errors.New("replay header outside the allowed clock skew")
	ErrSignature = errors.New("replay signature does not match")
)

// Verify checks a header value against (id, method, path) at now.
func Verify(secret []byte, value, id, method, path string, now time.Time) error {
	if len(secret) == 0 {
		return ErrSignature
	}
	tpart, vpart, ok := strings.Cut(value, ",")
	t, ok1 := strings.CutPrefix(tpart, "t=")
	sig, ok2 := strings.CutPrefix(vpart, "v1=")
	if !ok || !ok1 || !ok2 {
		return ErrMalformed
	}
	ts, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return ErrMalformed
	}
	if d := now.Sub(time.Unix(ts, 0)); d > MaxSkew || d < -MaxSkew {
		return ErrStale
	}
	if !hmac.Equal([]byte(sig), []byte(mac(secret, id, t, method, path))) {
		return ErrSignature
	}
	return nil
}
