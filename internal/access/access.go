// Package access is the per-request access token of asyncmesh: the filter
// makes one for every accepted request and hands it to the caller, once, in
// the 202's Location (…/v1/requests/{id}?token=…); the envelope, and so the
// store, keeps only its SHA-256. Reading the request's status, result or
// events through the caller-facing API needs the token (collector/api.go):
// the id alone, which appears in callbacks, logs and traces, is not enough.
//
// A token is 32 random bytes (crypto/rand) in unpadded base64url: 43
// characters, safe in a query string. Check compares hashes in constant time.
package access

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
)

// TokenLen is the length of an encoded token, and of an encoded hash.
const TokenLen = 43

// Param is the query parameter that carries the token.
const Param = "token"

// NewToken returns a fresh token and the hash to store with the request.
func NewToken() (token, hash string) {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+); random_get under wasip1
	token = base64.RawURLEncoding.EncodeToString(b[:])
	return token, Hash(token)
}

// tokenLabel separates derived tokens from every other use of the secret.
const tokenLabel = "asyncmesh access token v1"

// DeriveToken returns the token of request id under secret (the filter's
// replay secret), and its hash: base64url(HMAC-SHA256(K, id)) with K =
// HMAC-SHA256(secret, "asyncmesh access token v1"). The filter derives,
// instead of drawing, the token of a request that carries an
// Idempotency-Key, so that it can hand the same token out again to the
// caller's retry (which the collector answers with the first request's id
// and token hash) without the token ever being stored. Knowing an id is
// not enough to derive it: that takes the secret, which only the filter
// and the collector hold.
func DeriveToken(secret []byte, id string) (token, hash string) {
	k := hmac.New(sha256.New, secret)
	k.Write([]byte(tokenLabel))
	m := hmac.New(sha256.New, k.Sum(nil))
	m.Write([]byte(id))
	token = base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	return token, Hash(token)
}

// Hash is the stored form of a token.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// ValidHash reports whether h has the shape of a Hash.
func ValidHash(h string) bool {
	if len(h) != TokenLen {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(h)
	return err == nil
}

// Check reports whether token is the one whose hash is stored. An empty
// hash (a request accepted before tokens existed) matches nothing.
func Check(hash, token string) bool {
	if hash == "" || token == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(Hash(token)), []byte(hash)) == 1
}
