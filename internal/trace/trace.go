// Package trace handles the W3C trace context and the request ids asyncmesh puts on
// every request. It is standard-library only and allocation-light: the Wasm filter
// calls it on every request, sync or async.
package trace

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	mrand "math/rand/v2"
	"time"
)

// Parent is a parsed W3C traceparent (version 00).
type Parent struct {
	TraceID [16]byte
	SpanID  [8]byte
	Flags   byte
}

// ParseParent parses a traceparent header value. It accepts version 00 exactly and
// higher versions by their 00 prefix, and rejects all-zero ids, as the W3C spec says.
func ParseParent(s string) (Parent, bool) {
	var p Parent
	if len(s) < 55 || (len(s) > 55 && s[55] != '-') {
		return p, false
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return p, false
	}
	var ver [1]byte
	if !decodeLowerHex(ver[:], s[0:2]) || ver[0] == 0xff || (ver[0] == 0 && len(s) != 55) {
		return p, false
	}
	var flags [1]byte
	if !decodeLowerHex(p.TraceID[:], s[3:35]) || !decodeLowerHex(p.SpanID[:], s[36:52]) || !decodeLowerHex(flags[:], s[53:55]) {
		return p, false
	}
	p.Flags = flags[0]
	if isZero(p.TraceID[:]) || isZero(p.SpanID[:]) {
		return p, false
	}
	return p, true
}

// NewParent returns a traceparent with fresh random trace and span ids, sampled.
// Trace and span ids need to be unique, not secret (they travel in headers to
// every service): they come from the runtime's ChaCha8 generator, seeded by
// the OS, which costs no host call in the filter — crypto/rand would be a
// random_get call into Envoy for every request. Request ids, which guard
// access to results, stay on crypto/rand.
func NewParent() Parent {
	var p Parent
	for p.TraceID == ([16]byte{}) { // all-zero is invalid
		binary.LittleEndian.PutUint64(p.TraceID[:8], mrand.Uint64())
		binary.LittleEndian.PutUint64(p.TraceID[8:], mrand.Uint64())
	}
	p.SpanID = newSpanID()
	p.Flags = 1
	return p
}

// Child returns p with a fresh span id: the span of this hop.
func (p Parent) Child() Parent {
	p.SpanID = newSpanID()
	return p
}

func newSpanID() (id [8]byte) {
	for id == ([8]byte{}) {
		binary.LittleEndian.PutUint64(id[:], mrand.Uint64())
	}
	return id
}

// String formats p as a version 00 traceparent.
func (p Parent) String() string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], p.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], p.SpanID[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{p.Flags})
	return string(b[:])
}

// TraceIDString is the 32-hex trace id.
func (p Parent) TraceIDString() string { return hex.EncodeToString(p.TraceID[:]) }

// ValidTraceID reports whether s is a 32-lower-hex, non-zero trace id.
func ValidTraceID(s string) bool {
	var id [16]byte
	return len(s) == 32 && decodeLowerHex(id[:], s) && !isZero(id[:])
}

// NewRequestID returns a UUIDv7 (RFC 9562): unique and sortable by creation time.
func NewRequestID() string { return newUUIDv7(time.Now()) }

func newUUIDv7(now time.Time) string {
	var u [16]byte
	fill(u[6:])
	ms := uint64(now.UnixMilli())
	binary.BigEndian.PutUint16(u[0:2], uint16(ms>>32))
	binary.BigEndian.PutUint32(u[2:6], uint32(ms))
	u[6] = 0x70 | (u[6] & 0x0f)
	u[8] = 0x80 | (u[8] & 0x3f)
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], u[10:16])
	return string(b[:])
}

// ValidRequestID reports whether s is a canonical lower-case UUID of version 7.
func ValidRequestID(s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' || s[14] != '7' {
		return false
	}
	var u [16]byte
	return decodeLowerHex(u[0:4], s[0:8]) && decodeLowerHex(u[4:6], s[9:13]) &&
		decodeLowerHex(u[6:8], s[14:18]) && decodeLowerHex(u[8:10], s[19:23]) &&
		decodeLowerHex(u[10:16], s[24:36])
}

// RequestIDTime returns the creation time carried by a UUIDv7 request id (to
// the millisecond).
func RequestIDTime(s string) (time.Time, bool) {
	if !ValidRequestID(s) {
		return time.Time{}, false
	}
	var ms [6]byte
	decodeLowerHex(ms[0:4], s[0:8])
	decodeLowerHex(ms[4:6], s[9:13])
	v := int64(ms[0])<<40 | int64(ms[1])<<32 | int64(ms[2])<<24 | int64(ms[3])<<16 | int64(ms[4])<<8 | int64(ms[5])
	return time.UnixMilli(v).UTC(), true
}

func fill(b []byte) {
	// crypto/rand.Read never fails on supported platforms (Go 1.24+); under wasip1
	// it uses random_get, which Envoy's host implements.
	_, _ = rand.Read(b)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// decodeLowerHex decodes exactly 2*len(dst) lower-case hex digits.
func decodeLowerHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := nibble(s[2*i])
		lo, ok2 := nibble(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func nibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
