// Package replay signs and verifies the header with which the collector's worker
// replays an accepted request through Envoy to the real service. The filter lets a
// request carrying a valid signature pass to the service even on an async route;
// an invalid, stale, reused or differently bodied one is refused, so that neither
// a caller nor anyone who sees one replay can make the filter pass another.
//
// # Header (version 2)
//
//	x-async-replay: v2,t=<unix seconds>,n=<nonce>,d=<body digest>,s=<signature>
//
// n is 16 random bytes, d the SHA-256 of the exact body bytes the collector
// sends, s the HMAC-SHA256 under the replay secret of
//
//	"asyncmesh-replay-v2" ‖ id ‖ t ‖ n ‖ method ‖ authority ‖ path ‖ d
//
// where every string field is preceded by its length (uvarint), so that no
// field can borrow bytes from its neighbour, and path is the request-target
// byte for byte as it is sent (the collector writes it unescaped, see
// collector.execute). n, d and s are unpadded base64url (strict: one encoding
// per value). A signature is valid within MaxSkew of its t.
//
// Version 1 (t=…,v1=…, over id, t, method and path only) is refused: it bound
// neither the authority nor the body, and had no nonce.
//
// # What the filter checks
//
// Check (at request headers): the version, the time, the signature under one
// of the accepted secrets (Secrets: the current and, while it rotates, the
// previous one). Then the signature is spent once (Use, a table in Envoy's
// shared data, see Table), and the body is hashed as it arrives and compared
// with d before it is let through (the filter buffers it: a body that reached
// the service before it was checked could not be taken back).
//
// A refusal is a 403 local response of the filter carrying RefusedHeader with
// the reason (Reason), so that the collector can tell it from a service's own
// 403: it retries (with a fresh nonce and time) and then fails the record with
// the reason, and never stores the refusal as the service's answer.
package replay

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header is the replay header's name.
const Header = "x-async-replay"

// RefusedHeader marks the filter's own refusal of a replay (a 403 local
// response); its value is Reason of the error. The filter strips it from the
// service's responses, so only the filter can set it.
const RefusedHeader = "x-async-replay-refused"

// Version is the header format version this package signs and accepts.
const Version = "v2"

// MaxSkew is how far a signature's time may be from now. The collector signs
// each replay right before it sends it, so this only has to cover the clock
// difference between the collector's and Envoy's hosts; it also bounds how
// long the filter remembers a spent signature (Table).
const MaxSkew = 60 * time.Second

// MinSecretLen is the shortest accepted secret: 256 bits, HMAC-SHA256's key
// strength. Shorter secrets are refused at start by the collector and the filter.
const MinSecretLen = 32

// MaxSecrets is how many secrets may be accepted at once: the current one
// and, while it rotates, the previous one.
const MaxSecrets = 2

const (
	nonceLen  = 16
	domain    = "asyncmesh-replay-v2"
	b64Nonce  = 22 // base64url (raw) length of 16 bytes
	b64Digest = 43 // of 32 bytes
)

var b64 = base64.RawURLEncoding.Strict()

// Request is what a replay signature binds.
type Request struct {
	ID        string // the request id (x-async-request-id)
	Method    string
	Authority string
	// Path is the request-target exactly as sent (path and query).
	Path string
	// BodyDigest is Digest of the exact body bytes sent.
	BodyDigest [sha256.Size]byte
}

// Digest is the SHA-256 of a body: what a signature binds the body by.
func Digest(body []byte) [sha256.Size]byte { return sha256.Sum256(body) }

// EmptyDigest is Digest(nil): the digest of a replay without a body.
var EmptyDigest = Digest(nil)

// Errors of Parse, Check and Use. Reason maps each to the short code the
// filter sends in RefusedHeader.
var (
	ErrMalformed  = errors.New("replay header malformed")
	ErrVersion    = errors.New("replay header of an unsupported version (v2 expected; v1 is no longer accepted)")
	ErrStale      = errors.New("replay header outside the allowed clock skew")
	ErrSignature  = errors.New("replay signature does not match")
	ErrNoSecret   = errors.New("no replay secret configured")
	ErrUsed       = errors.New("replay signature already used")
	ErrBodyDigest = errors.New("replay body does not match the signed digest")
	ErrBodyLarge  = errors.New("replay body over the largest body limit")
	ErrTrailers   = errors.New("replay with trailers (a signature does not cover them)")
	ErrTable      = errors.New("replay table unavailable")
)

// Reason is the short code of a refusal, for RefusedHeader and metrics.
func Reason(err error) string {
	for _, r := range []struct {
		err  error
		code string
	}{
		{ErrMalformed, "malformed"}, {ErrVersion, "version"}, {ErrStale, "stale"},
		{ErrSignature, "signature"}, {ErrNoSecret, "no-secret"}, {ErrUsed, "used"},
		{ErrBodyDigest, "body-digest"}, {ErrBodyLarge, "body-too-large"},
		{ErrTrailers, "trailers"}, {ErrTable, "table"},
	} {
		if errors.Is(err, r.err) {
			return r.code
		}
	}
	return "refused"
}

// Signed is a parsed version 2 header.
type Signed struct {
	T      int64
	tstr   string
	Nonce  string // as sent (base64url of 16 bytes)
	Digest [sha256.Size]byte
	MAC    [sha256.Size]byte
}

// Sign returns the header value for replaying r at now, under a fresh
// nonce: every call gives a new signature, so that a retry is never refused
// as a reuse of the previous attempt's.
func Sign(secret []byte, r Request, now time.Time) string {
	var n [nonceLen]byte
	_, _ = rand.Read(n[:]) // never fails (crypto/rand)
	return SignNonce(secret, r, now, b64.EncodeToString(n[:]))
}

// SignNonce is Sign with a given nonce (tests).
func SignNonce(secret []byte, r Request, now time.Time, nonce string) string {
	t := strconv.FormatInt(now.Unix(), 10)
	m := mac(secret, r, t, nonce, r.BodyDigest)
	return Version + ",t=" + t + ",n=" + nonce + ",d=" + b64.EncodeToString(r.BodyDigest[:]) + ",s=" + b64.EncodeToString(m[:])
}

func mac(secret []byte, r Request, t, nonce string, digest [sha256.Size]byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, secret)
	buf := make([]byte, 0, len(domain)+len(r.ID)+len(t)+len(nonce)+len(r.Method)+len(r.Authority)+len(r.Path)+6*binary.MaxVarintLen64+sha256.Size)
	buf = append(buf, domain...)
	for _, f := range []string{r.ID, t, nonce, r.Method, r.Authority, r.Path} {
		buf = binary.AppendUvarint(buf, uint64(len(f)))
		buf = append(buf, f...)
	}
	buf = append(buf, digest[:]...)
	h.Write(buf)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// Parse reads a header value strictly: v2, the four fields in order, each
// once, of their exact lengths.
func Parse(value string) (Signed, error) {
	var s Signed
	parts := strings.Split(value, ",")
	if len(parts) == 0 || parts[0] != Version {
		if strings.HasPrefix(value, "t=") || strings.HasPrefix(value, "v") {
			return s, ErrVersion
		}
		return s, ErrMalformed
	}
	if len(parts) != 5 {
		return s, ErrMalformed
	}
	var ok [4]bool
	var t, d, sig string
	t, ok[0] = strings.CutPrefix(parts[1], "t=")
	s.Nonce, ok[1] = strings.CutPrefix(parts[2], "n=")
	d, ok[2] = strings.CutPrefix(parts[3], "d=")
	sig, ok[3] = strings.CutPrefix(parts[4], "s=")
	if !ok[0] || !ok[1] || !ok[2] || !ok[3] || len(s.Nonce) != b64Nonce || len(d) != b64Digest || len(sig) != b64Digest {
		return s, ErrMalformed
	}
	if len(t) == 0 || len(t) > 18 || (len(t) > 1 && t[0] == '0') {
		return s, ErrMalformed
	}
	for i := 0; i < len(t); i++ {
		if t[i] < '0' || t[i] > '9' {
			return s, ErrMalformed
		}
	}
	s.T, _ = strconv.ParseInt(t, 10, 64) // at most 18 digits: fits
	s.tstr = t
	var nonce [nonceLen]byte
	if n, err := b64.Decode(nonce[:], []byte(s.Nonce)); err != nil || n != nonceLen {
		return s, ErrMalformed
	}
	if n, err := b64.Decode(s.Digest[:], []byte(d)); err != nil || n != sha256.Size {
		return s, ErrMalformed
	}
	if n, err := b64.Decode(s.MAC[:], []byte(sig)); err != nil || n != sha256.Size {
		return s, ErrMalformed
	}
	return s, nil
}

// Check parses value and verifies it for r (whose BodyDigest is ignored: the
// body is compared with the returned Signed's Digest once it has arrived) at
// now, under any of secrets. It does not spend the signature (Use).
func Check(secrets [][]byte, value string, r Request, now time.Time) (Signed, error) {
	s, err := Parse(value)
	if err != nil {
		return s, err
	}
	if d := now.Sub(time.Unix(s.T, 0)); d > MaxSkew || d < -MaxSkew {
		return s, ErrStale
	}
	if len(secrets) == 0 {
		return s, ErrNoSecret
	}
	for _, secret := range secrets {
		// Every accepted secret is tried (two at most), so that the time
		// taken does not say which one signed.
		want := mac(secret, r, s.tstr, s.Nonce, s.Digest)
		if len(secret) > 0 && hmac.Equal(want[:], s.MAC[:]) {
			return s, nil
		}
	}
	return s, ErrSignature
}

// Verify is Check and the body digest comparison in one, for a receiver that
// has the whole body at hand (r.BodyDigest).
func Verify(secrets [][]byte, value string, r Request, now time.Time) (Signed, error) {
	s, err := Check(secrets, value, r, now)
	if err == nil && !hmac.Equal(s.Digest[:], r.BodyDigest[:]) {
		err = ErrBodyDigest
	}
	return s, err
}

// ParseSecrets reads a secrets setting: the current secret, optionally
// followed by a comma and the previous one (during a rotation). Each must be
// at least MinSecretLen bytes; the error names which is not.
func ParseSecrets(value string) ([][]byte, error) {
	if value == "" {
		return nil, errors.New("no secret")
	}
	parts := strings.Split(value, ",")
	if len(parts) > MaxSecrets {
		return nil, errors.New("more than " + strconv.Itoa(MaxSecrets) + " comma-separated secrets (current,previous)")
	}
	out := make([][]byte, len(parts))
	for i, p := range parts {
		if len(p) < MinSecretLen {
			which := "current"
			if i == 1 {
				which = "previous"
			}
			return nil, errors.New("the " + which + " secret is " + strconv.Itoa(len(p)) + " bytes; at least " + strconv.Itoa(MinSecretLen) + " are required")
		}
		out[i] = []byte(p)
	}
	return out, nil
}
