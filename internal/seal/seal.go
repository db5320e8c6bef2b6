// Package seal encrypts the payloads asyncmesh exchanges with external
// processing nodes and callers whose rule asks for it, with a per-rule
// 256-bit key (a secret holding the key in standard base64):
//
//   - aes-256-gcm: a JSON object {"alg":"A256GCM","iv","ciphertext"} (base64),
//     content type application/vnd.asyncmesh.sealed+json; the request id is
//     the additional authenticated data, so a ciphertext cannot be replayed
//     as another request's.
//   - jwe: a JWE compact serialization (alg "dir", enc "A256GCM", the request
//     id in the protected "kid" header and checked on opening), content type
//     application/jose, for nodes that speak JOSE.
//
// Signatures (Standard Webhooks) are computed over the sealed bytes.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// Algorithms.
const (
	AESGCM = "aes-256-gcm"
	JWE    = "jwe"
)

// Content types of sealed bodies.
const (
	ContentTypeAESGCM = "application/vnd.asyncmesh.sealed+json"
	ContentTypeJWE    = "application/jose"
)

// MaxSealed bounds a sealed body that Open accepts.
const MaxSealed = 96 << 20

// ParseKey decodes a 256-bit key written in standard base64.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(k) != 32 {
		return nil, errors.New("want a 256-bit key in standard base64 (openssl rand -base64 32)")
	}
	return k, nil
}

type gcmBox struct {
	Alg        string `json:"alg"`
	IV         []byte `json:"iv"`
	Ciphertext []byte `json:"ciphertext"`
}

// Seal encrypts plaintext for request id and returns the body and its
// content type.
func Seal(alg string, key []byte, id string, plaintext []byte) ([]byte, string, error) {
	switch alg {
	case AESGCM:
		aead, err := newGCM(key)
		if err != nil {
			return nil, "", err
		}
		iv := make([]byte, aead.NonceSize())
		_, _ = rand.Read(iv)
		b, err := json.Marshal(gcmBox{Alg: "A256GCM", IV: iv, Ciphertext: aead.Seal(nil, iv, plaintext, []byte(id))})
		return b, ContentTypeAESGCM, err
	case JWE:
		enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: jose.DIRECT, Key: key, KeyID: id}, nil)
		if err != nil {
			return nil, "", fmt.Errorf("seal: %w", err)
		}
		obj, err := enc.Encrypt(plaintext)
		if err != nil {
			return nil, "", fmt.Errorf("seal: %w", err)
		}
		s, err := obj.CompactSerialize()
		return []byte(s), ContentTypeJWE, err
	}
	return nil, "", fmt.Errorf("seal: unknown algorithm %q", alg)
}

// Open decrypts a body sealed for request id.
func Open(alg string, key []byte, id string, body []byte) ([]byte, error) {
	if len(body) > MaxSealed {
		return nil, errors.New("open: sealed body too large")
	}
	switch alg {
	case AESGCM:
		var box gcmBox
		if err := json.Unmarshal(body, &box); err != nil || box.Alg != "A256GCM" {
			return nil, errors.New(`open: want {"alg":"A256GCM","iv","ciphertext"}`)
		}
		aead, err := newGCM(key)
		if err != nil {
			return nil, err
		}
		if len(box.IV) != aead.NonceSize() {
			return nil, errors.New("open: bad iv")
		}
		pt, err := aead.Open(nil, box.IV, box.Ciphertext, []byte(id))
		if err != nil {
			return nil, errors.New("open: authentication failed (wrong key, or sealed for another request)")
		}
		return pt, nil
	case JWE:
		obj, err := jose.ParseEncryptedCompact(string(body), []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256GCM})
		if err != nil {
			return nil, fmt.Errorf("open: %w", err)
		}
		if obj.Header.KeyID != id {
			return nil, errors.New("open: JWE kid is not this request's id")
		}
		pt, err := obj.Decrypt(key)
		if err != nil {
			return nil, errors.New("open: authentication failed (wrong key)")
		}
		return pt, nil
	}
	return nil, fmt.Errorf("open: unknown algorithm %q", alg)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, errors.New("seal: key must be 32 bytes")
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
