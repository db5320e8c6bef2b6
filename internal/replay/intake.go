package replay

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
)

// IntakeHeader carries the filter's signature of an intake call's body: the
// filter vouches, with the secret it shares with the collector, for what it
// read from Envoy's own properties and no caller could set (the caller the
// mesh authenticated). Intake is reachable on the collector's loopback
// port; without the signature, anything else sharing the pod could post an
// envelope that names a caller and borrow that caller's signing secrets
// and callback credentials.
const IntakeHeader = "x-async-intake-signature"

// intakeLabel separates intake signatures from replay signatures made under
// the same secret.
const intakeLabel = "asyncmesh-intake-v1"

// SignIntake returns IntakeHeader's value for an intake body: unpadded
// base64url of HMAC-SHA256(secret, label ‖ body).
func SignIntake(secret, body []byte) string {
	m := intakeMAC(secret, body)
	return base64.RawURLEncoding.EncodeToString(m[:])
}

func intakeMAC(secret, body []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(intakeLabel))
	h.Write(body)
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// ErrIntakeSignature is VerifyIntake's refusal.
var ErrIntakeSignature = errors.New("intake signature missing or not made with an accepted replay secret")

// VerifyIntake checks value against body under each accepted secret.
func VerifyIntake(secrets [][]byte, value string, body []byte) error {
	// Exactly the encoding's length first: the decoder skips \r and \n,
	// and a signature is one spelling, not several.
	if len(value) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		return ErrIntakeSignature
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(value)
	if err != nil || len(sig) != sha256.Size {
		return ErrIntakeSignature
	}
	for _, s := range secrets {
		m := intakeMAC(s, body)
		if hmac.Equal(m[:], sig) {
			return nil
		}
	}
	return ErrIntakeSignature
}
