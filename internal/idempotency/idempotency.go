// Package idempotency is the Idempotency-Key of asyncmesh's intake
// (draft-ietf-httpapi-idempotency-key-header): a caller that retries a POST
// with the same key, on the same rule, within the rule's idempotencyWindow,
// gets the first request's 202 (same id, same Location) instead of a second
// job; the same key with another request is refused (422).
//
// The filter parses the header (ParseKey) and carries the key in the
// envelope; the collector scopes it (Scope: the declared caller, the rule
// and the key) and compares the request's Fingerprint with the one stored
// by the first request. Standard library only: the filter imports it.
package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"time"
)

// Header is the request header of the draft.
const Header = "idempotency-key"

// MaxKeyLen bounds a key (its value, without the quotes of the sf-string).
const MaxKeyLen = 255

// Windows: how long a key holds. A rule sets its own (rules.Rule
// IdempotencyWindow); 0 turns keys off for the rule.
const (
	DefaultWindow = 24 * time.Hour
	MaxWindow     = 7 * 24 * time.Hour
)

// ParseKey reads an Idempotency-Key header value: an sf-string (RFC 8941
// §3.3.3, `"…"` with `\"` and `\\` the only escapes), as the draft
// specifies, or, for leniency, a bare value of visible ASCII without
// quotes, backslashes, commas or semicolons (most clients send a bare
// UUID). The key is what is between the quotes, unescaped: 1 to MaxKeyLen
// bytes of printable ASCII. Surrounding spaces are ignored (RFC 9110
// field values). Errors say what is wrong, for a 400 that names the header.
func ParseKey(v string) (string, error) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return "", errors.New("empty; want an sf-string such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
	}
	if v[0] != '"' {
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == ',' || c == ';' {
				return "", errors.New("not an sf-string (\"…\") nor a bare key of visible ASCII without quotes, backslashes, commas or semicolons")
			}
		}
		return checkLen(v)
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i >= len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", errors.New(`bad escape in the sf-string: only \" and \\ are allowed`)
			}
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", errors.New("characters after the closing quote of the sf-string (one key only)")
			}
			return checkLen(b.String())
		case c < 0x20 || c >= 0x7f:
			return "", errors.New("the sf-string holds a character outside printable ASCII")
		default:
			b.WriteByte(c)
		}
		if b.Len() > MaxKeyLen {
			return "", errLong
		}
	}
	return "", errors.New("the sf-string has no closing quote")
}

var errLong = errors.New("longer than 255 bytes")

func checkLen(k string) (string, error) {
	switch {
	case k == "":
		return "", errors.New("empty key")
	case len(k) > MaxKeyLen:
		return "", errLong
	}
	return k, nil
}

// ValidKey reports whether k is a key ParseKey can return (the collector
// checks the envelope's).
func ValidKey(k string) bool {
	if k == "" || len(k) > MaxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] >= 0x7f {
			return false
		}
	}
	return true
}

// Fingerprint identifies the request a key was first used for: SHA-256 over
// the method, the request-target (path and query, as sent) and the body,
// each length-prefixed so that no two requests share the input. Headers are
// left out on purpose: clients add and reorder them between retries
// (dates, tracing), and the draft lets the server choose.
func Fingerprint(method, target string, body []byte) string {
	h := sha256.New()
	writeField(h, []byte("asyncmesh idempotency fingerprint v1"))
	writeField(h, []byte(method))
	writeField(h, []byte(target))
	writeField(h, body)
	return hex.EncodeToString(h.Sum(nil))
}

// Scope is the stored form of a key: SHA-256 over the declared caller (""
// for an anonymous caller), the rule and the key. Two callers' equal keys
// are different keys; an anonymous caller's key is scoped by itself alone,
// so it must be unguessable (a UUIDv4, as the draft recommends). The key
// itself is not stored in the key's index.
func Scope(caller, rule, key string) string {
	h := sha256.New()
	writeField(h, []byte("asyncmesh idempotency scope v1"))
	writeField(h, []byte(caller))
	writeField(h, []byte(rule))
	writeField(h, []byte(key))
	return hex.EncodeToString(h.Sum(nil))
}

func writeField(h interface{ Write([]byte) (int, error) }, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	_, _ = h.Write(n[:])
	_, _ = h.Write(b)
}
