// Package webhook signs and verifies callbacks by Standard Webhooks v1: headers
// webhook-id, webhook-timestamp and webhook-signature ("v1,<base64 HMAC-SHA256 of
// id.timestamp.body>", space-separated when several secrets are active during a
// rotation). Secrets are written "whsec_<base64 key>".
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Tolerance is how old (or early) a timestamp Verify accepts.
const Tolerance = 5 * time.Minute

const secretPrefix = "whsec_"

// Secret is a decoded signing key.
type Secret []byte

// ParseSecret decodes "whsec_<base64>" (the prefix is optional).
func ParseSecret(s string) (Secret, error) {
	s = strings.TrimSpace(strings.TrimPrefix(s, secretPrefix))
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, errors.New("webhook secret: not base64 after whsec_")
	}
	if len(key) < 16 || len(key) > 64 {
		return nil, fmt.Errorf("webhook secret: key is %d bytes, want 16..64", len(key))
	}
	return key, nil
}

// NewSecret returns a fresh random secret in its "whsec_" form.
func NewSecret() string {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return secretPrefix + base64.StdEncoding.EncodeToString(key)
}

// String never reveals the key.
func (s Secret) String() string { return "whsec_[redacted]" }

func (s Secret) sign(id, ts string, body []byte) string {
	m := hmac.New(sha256.New, s)
	m.Write([]byte(id))
	m.Write([]byte{'.'})
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Sign sets the three signature headers on h for body, signed with every secret.
func Sign(h http.Header, secrets []Secret, id string, now time.Time, body []byte) {
	ts := strconv.FormatInt(now.Unix(), 10)
	sigs := make([]string, 0, len(secrets))
	for _, s := range secrets {
		sigs = append(sigs, s.sign(id, ts, body))
	}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, ts)
	h.Set(HeaderSignature, strings.Join(sigs, " "))
}

// Errors of Verify.
var (
	ErrMissingHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrTimestamp      = errors.New("webhook: timestamp outside tolerance")
	ErrSignature      = errors.New("webhook: no matching signature")
)

// Verify checks the signature headers of a received callback against any of the
// secrets, and the timestamp against Tolerance around now.
func Verify(h http.Header, body []byte, secrets []Secret, now time.Time) error {
	id, ts, sigs := h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
	if id == "" || ts == "" || sigs == "" {
		return ErrMissingHeaders
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return ErrTimestamp
	}
	if d := now.Sub(time.Unix(sec, 0)); d > Tolerance || d < -Tolerance {
		return ErrTimestamp
	}
	for _, s := range secrets {
		want := s.sign(id, ts, body)
		for _, got := range strings.Fields(sigs) {
			if hmac.Equal([]byte(got), []byte(want)) {
				return nil
			}
		}
	}
	return ErrSignature
}
