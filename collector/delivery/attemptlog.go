package delivery

import (
	"encoding/base64"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// The attempt log: each attempt keeps the request it sent and the
// receiver's answer (store.AttemptRequest, store.AttemptResponse), so that an
// operator can see why a receiver refused. It is stored for every attempt of
// every record (up to the rule's maxAttempts, 100 at most), so everything is
// bounded, the request body (the payload, which the record already holds) is
// not kept, and no secret is: credentials in headers, URLs or the broker's
// address never reach the store (TestAttemptLogKeepsNoSecrets).
const (
	maxLoggedHeaders     = 32   // headers kept per request or answer
	maxLoggedHeaderValue = 256  // bytes of one header name or value
	maxLoggedHeaderBytes = 2048 // bytes of all names and values together
	maxLoggedBody        = 1024 // bytes of the receiver's body
	maxLoggedMessage     = 1024 // bytes of a gRPC status message or an AMQP reply text
	maxLoggedURL         = 2048 // as rules.CheckURL allows
)

// redacted replaces a secret value in the attempt log.
const redacted = "[redacted]"

// sentRequest records what an attempt sends: method, the URL without
// credentials, the headers redacted, and the body's size and type only.
func sentRequest(method, rawURL string, headers map[string][]string, bodySize int, contentType string) *store.AttemptRequest {
	h, cut := loggedHeaders(headers)
	return &store.AttemptRequest{Method: method, URL: loggedURL(rawURL), Headers: h, HeadersTruncated: cut,
		BodySize: bodySize, ContentType: cut256(contentType)}
}

// loggedURL is rawURL without user info, and with the values of
// secret-looking query parameters (tokens, keys, signatures, SAS sig=,
// Azure Functions code=) redacted. Callback URLs have no user info
// (rules.CheckURL), but the log does not rely on an envelope being valid.
// The path is kept: the operator needs to see where the attempt went, and
// the record's envelope holds the URL as configured anyway.
func loggedURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)" // it could be anything, credentials included
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k, vs := range q {
			if secretParam(k) {
				for i := range vs {
					vs[i] = "REDACTED" // brackets would be escaped
				}
			}
		}
		u.RawQuery = q.Encode()
	}
	return cut(u.String(), maxLoggedURL)
}

// secretParam reports whether a query parameter of this name may carry a
// credential: the header names rules.CredentialHeader catches, and the
// short names of presigned URLs and function keys.
func secretParam(name string) bool {
	name = strings.ToLower(name)
	switch name {
	case "key", "sig", "code", "pass", "pwd", "x-amz-signature", "x-goog-signature":
		return true
	}
	return rules.CredentialHeader(name)
}

// loggedHeaders renders headers for the log: names in lower case and in
// order, credential-bearing values redacted, at most maxLoggedHeaders
// values of at most maxLoggedHeaderValue bytes each, maxLoggedHeaderBytes in
// all. truncated reports that something was dropped or shortened.
func loggedHeaders(headers map[string][]string) (out [][2]string, truncated bool) {
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	total := 0
	for _, k := range names {
		name := strings.ToLower(k)
		for _, v := range headers[k] {
			switch {
			case secretHeader(name, v):
				v = redacted
			case strings.HasSuffix(name, "-bin"): // gRPC binary metadata, raw bytes
				v = base64.StdEncoding.EncodeToString([]byte(v))
			}
			n, val := cut(name, maxLoggedHeaderValue), cut(v, maxLoggedHeaderValue)
			if len(n) < len(name) || len(val) < len(v) {
				truncated = true
			}
			if len(out) == maxLoggedHeaders || total+len(n)+len(val) > maxLoggedHeaderBytes {
				return out, true
			}
			total += len(n) + len(val)
			out = append(out, [2]string{n, val})
		}
	}
	return out, truncated
}

// secretHeader reports whether a header's value is a secret: a credential
// header by name (rules.CredentialHeader: Authorization, Cookie, Set-Cookie,
// API keys, tokens, sessions; the webhook signature too, which is no secret
// but is a valid signature of the payload for the next five minutes, and an
// operator needs to know that an attempt was signed, not the MAC), or a value
// in a credential scheme under any name. A challenge (WWW-Authenticate) is
// kept: it says why a receiver refused and holds no secret.
func secretHeader(name, value string) bool {
	if name == "www-authenticate" || name == "proxy-authenticate" {
		return false
	}
	if rules.CredentialHeader(name) {
		return true
	}
	scheme, _, _ := strings.Cut(strings.TrimSpace(value), " ")
	switch strings.ToLower(scheme) {
	case "bearer", "basic", "digest", "negotiate", "aws4-hmac-sha256":
		return true
	}
	return false
}

// loggedBody renders the first maxLoggedBody bytes of a receiver's body: as
// text when UTF-8 (a character cut at the end does not count), base64
// otherwise.
func loggedBody(b []byte) (body, encoding string, truncated bool) {
	if len(b) > maxLoggedBody {
		b, truncated = b[:maxLoggedBody], true
	}
	text := b
	if truncated {
		// Drop a character the cut left incomplete.
		for k := 1; k < utf8.UTFMax && k <= len(text); k++ {
			if utf8.RuneStart(text[len(text)-k]) {
				if !utf8.FullRune(text[len(text)-k:]) {
					text = text[:len(text)-k]
				}
				break
			}
		}
	}
	if utf8.Valid(text) {
		return string(text), "", truncated
	}
	return base64.StdEncoding.EncodeToString(b), "base64", truncated
}

// cut shortens s to at most n bytes on a character boundary, and makes it
// valid UTF-8 (the stores keep JSON, where invalid bytes would be mangled).
func cut(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s
}

func cut256(s string) string { return cut(s, maxLoggedHeaderValue) }
