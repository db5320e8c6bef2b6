package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzKey is the fixed secret the fuzz targets verify against; fuzzNow the
// clock they verify at.
var (
	fuzzKey = Secret("asyncmesh-webhook-fuzz-key-32-by")
	fuzzNow = time.Unix(1_700_000_000, 0)
)

// oracle is an independent statement of Standard Webhooks v1 (not the
// package's own sign): the expected "v1,<base64 HMAC-SHA256(id.ts.body)>".
func oracle(key []byte, id, ts string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// FuzzVerify feeds Verify arbitrary webhook-id, webhook-timestamp,
// webhook-signature headers and bodies. With sign set, the fuzzer's
// signature is wrapped around a correct one (prefix + valid + suffix), so
// that near-valid inputs are explored as well as garbage. Properties:
//   - Verify never panics and returns nil or one of its three errors;
//   - it returns nil exactly when the headers are present, the timestamp is
//     an integer within Tolerance of now, and a whitespace-separated field of
//     the signature header is the oracle's signature under the fixed secret;
//   - a verified input stops verifying when the body, id or timestamp
//     changes, under another secret, or with no secrets at all.
func FuzzVerify(f *testing.F) {
	body := []byte(`{"id":"0190b3c2","status":"completed"}`)
	ts := strconv.FormatInt(fuzzNow.Unix(), 10)
	valid := oracle(fuzzKey, "dlv_1", ts, body)
	f.Add("dlv_1", ts, valid, body, false)                                      // correctly signed
	f.Add("dlv_1", ts, "v1,AAAA "+valid+" v1,BBBB", body, false)                // one of several (rotation)
	f.Add("dlv_1", ts, " ", body, true)                                         // the valid one, space-separated
	f.Add("dlv_1", ts, "v1,", body, true)                                       // the valid one glued to junk
	f.Add("dlv_1", ts, valid[:len(valid)-1], body, false)                       // truncated
	f.Add("dlv_1", ts, strings.ToUpper(valid), body, false)                     // case changed
	f.Add("dlv_1", "+"+ts, oracle(fuzzKey, "dlv_1", "+"+ts, body), body, false) // signed, unusual number
	f.Add("dlv_1", strconv.FormatInt(fuzzNow.Unix()-301, 10), "", body, true)   // just too old
	f.Add("dlv_1", strconv.FormatInt(fuzzNow.Unix()+300, 10), "", body, true)   // at the edge, early
	f.Add("dlv_1", "9223372036854775807", "", body, true)                       // far future: time arithmetic saturates
	f.Add("dlv_1", "-9223372036854775808", "", body, true)                      // far past
	f.Add("dlv_1", "1e9", "", body, true)                                       // not an integer
	f.Add("", ts, valid, body, false)                                           // missing id
	f.Add("dlv_1", "", valid, body, false)                                      // missing timestamp
	f.Add("dlv_1", ts, "", body, false)                                         // missing signature
	f.Add("dlv_\x00\xff", ts, "\t\n", []byte{0, 0xff}, true)                    // binary everywhere
	f.Add("dlv_1", ts, "v1,"+strings.Repeat("A", 4096), body, false)            // long junk
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte, sign bool) {
		if sign {
			sig = sig + oracle(fuzzKey, id, ts, body) + sig
		}
		h := http.Header{}
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, ts)
		h.Set(HeaderSignature, sig)
		err := Verify(h, body, []Secret{fuzzKey}, fuzzNow)
		if err != nil && !errors.Is(err, ErrMissingHeaders) && !errors.Is(err, ErrTimestamp) && !errors.Is(err, ErrSignature) {
			t.Fatalf("Verify returned an error that is none of its own: %v", err)
		}
		// The expected answer, stated independently. Header.Set keeps the
		// values as they are (Get returns exactly them).
		want := ErrSignature
		switch sec, perr := strconv.ParseInt(ts, 10, 64); {
		case id == "" || ts == "" || sig == "":
			want = ErrMissingHeaders
		case perr != nil:
			want = ErrTimestamp
		case sec < fuzzNow.Unix()-int64(Tolerance/time.Second) || sec > fuzzNow.Unix()+int64(Tolerance/time.Second):
			want = ErrTimestamp
		default:
			expected := oracle(fuzzKey, id, ts, body)
			for _, field := range strings.Fields(sig) {
				if field == expected {
					want = nil
				}
			}
		}
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("Verify(id=%q ts=%q sig=%q body=%q) = %v, want %v", id, ts, sig, body, err, want)
		}
		if err != nil {
			return
		}
		// Verified: every change of what the signature covers is refused.
		if Verify(h, append(bytes.Clone(body), 'x'), []Secret{fuzzKey}, fuzzNow) == nil {
			t.Fatal("verified with a changed body")
		}
		if len(body) > 0 && Verify(h, body[:len(body)-1], []Secret{fuzzKey}, fuzzNow) == nil {
			t.Fatal("verified with a truncated body")
		}
		for _, hdr := range []string{HeaderID, HeaderTimestamp} {
			changed := h.Clone()
			changed.Set(hdr, h.Get(hdr)+"0")
			if Verify(changed, body, []Secret{fuzzKey}, fuzzNow) == nil {
				t.Fatalf("verified with a changed %s", hdr)
			}
		}
		other := Secret("asyncmesh-webhook-fuzz-key-32-bX")
		if Verify(h, body, []Secret{other}, fuzzNow) == nil || Verify(h, body, nil, fuzzNow) == nil {
			t.Fatal("verified without the signing secret")
		}
		if Verify(h, body, []Secret{other, fuzzKey}, fuzzNow) != nil {
			t.Fatal("a verified input failed with the secret among others (rotation)")
		}
	})
}

// FuzzParseSecret feeds ParseSecret arbitrary strings. Properties: a parsed
// key is 16..64 bytes; its canonical form "whsec_" + base64(key) parses to
// the same key; and the input re-encodes to that canonical form, except
// for what ParseSecret deliberately tolerates (no "whsec_" prefix,
// surrounding white space, and the line breaks and non-zero padding bits
// that encoding/base64 ignores), which the property spells out.
func FuzzParseSecret(f *testing.F) {
	f.Add(NewSecret())
	f.Add("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") // the specification's test vector
	f.Add("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")       // without the prefix
	f.Add("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
	f.Add(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	f.Add("whsec_whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	f.Add("whsec_c2hvcnQ=")                             // too short
	f.Add("whsec_" + strings.Repeat("A", 88))           // 66 bytes: too long
	f.Add("whsec_" + strings.Repeat("A", 86) + "==")    // 64 bytes: longest
	f.Add("whsec_AAAAAAAAAAAAAAAAAAAAAB==")             // non-zero padding bits
	f.Add("whsec_MfKQ9r8GKYqrTwjU\r\nPD8ILPZIo2LaLaSw") // a line break inside
	f.Add("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw=")    // bad padding
	f.Add("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw-_")   // URL alphabet
	f.Add("whsec_!!")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		key, err := ParseSecret(s)
		if err != nil {
			if key != nil {
				t.Fatalf("ParseSecret(%q) returned a key with its error %v", s, err)
			}
			return
		}
		if len(key) < 16 || len(key) > 64 {
			t.Fatalf("ParseSecret(%q) accepted a %d-byte key", s, len(key))
		}
		canonical := secretPrefix + base64.StdEncoding.EncodeToString(key)
		again, err := ParseSecret(canonical)
		if err != nil || !bytes.Equal(again, key) {
			t.Fatalf("ParseSecret(%q) = %x, but its re-encoding %q parses to %x, %v", s, []byte(key), canonical, []byte(again), err)
		}
		if key.String() != "whsec_[redacted]" || strings.Contains(key.String(), canonical[len(secretPrefix):]) {
			t.Fatal("String reveals the key")
		}
		// The input, less what is tolerated, is the canonical form.
		tolerated := strings.TrimSpace(strings.TrimPrefix(s, secretPrefix))
		tolerated = strings.NewReplacer("\r", "", "\n", "").Replace(tolerated)
		if strict, err := base64.StdEncoding.Strict().DecodeString(tolerated); err == nil {
			if secretPrefix+tolerated != canonical || !bytes.Equal(strict, key) {
				t.Fatalf("ParseSecret(%q): the input is %q once normalised, its key re-encodes to %q", s, tolerated, canonical)
			}
		} else if !bytes.Equal(mustDecode(base64.StdEncoding.DecodeString(tolerated)), key) {
			t.Fatalf("ParseSecret(%q) accepted what only lenient base64 reads, as another key", s)
		}
	})
}

func mustDecode(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
