package rules

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Caller is a caller application (the rules file's callers:): who it is as
// the mesh authenticates it, where its callbacks may go, and how they are
// signed, authenticated and sealed. A request whose caller the filter
// recognizes records the caller's name (envelope.Caller); its callbacks are
// then the caller's (Callback.WithCaller), whatever rule accepted it.
type Caller struct {
	Name     string         `json:"name"`
	Identity CallerIdentity `json:"identity"`
	// CallbackHosts lists where this caller may point a callback it chooses
	// (x-async-callback, on a rule with callback.allowOverride), in the
	// syntax of Callback.AllowedHosts. Empty: wherever the rule allows.
	CallbackHosts []string `json:"callbackHosts,omitempty"`
	// Signing lists the secrets that sign this caller's callbacks, newest
	// first; each may end (Until), so that during a rotation the old and the
	// new secret both sign (the receiver verifies with either) and the old
	// one stops by itself. Empty: the rule's callback.secretRef.
	Signing []SigningSecret `json:"signing,omitempty"`
	// Auth authenticates the collector to the caller's receiver.
	Auth *CallbackAuth `json:"auth,omitempty"`
	// Encryption seals this caller's callback payloads, instead of the
	// rule's callback.encryption.
	Encryption *Encryption `json:"encryption,omitempty"`
}

// CallerIdentity says how the filter recognizes a caller: by the mesh's
// mutual TLS (the peer certificate's URI SAN, as Istio and SPIRE issue
// SPIFFE IDs), or by a JWT that Envoy's jwt_authn filter verified. Either
// matching is enough; the identity is read from Envoy's own properties,
// never from a request header.
type CallerIdentity struct {
	// Principals are URI SANs: exact, or a prefix ending in "/*"
	// (spiffe://cluster.local/ns/billing/* is every service account of the
	// namespace).
	Principals []string     `json:"principals,omitempty"`
	JWT        *JWTIdentity `json:"jwt,omitempty"`
}

// JWTIdentity matches the verified JWT's claims, which jwt_authn keeps in
// the request's dynamic metadata (filter settings: jwtPayloadKey).
type JWTIdentity struct {
	Issuer   string   `json:"issuer"`
	Subjects []string `json:"subjects,omitempty"` // empty: any subject of Issuer
}

// SigningSecret is one secret that signs a caller's callbacks.
type SigningSecret struct {
	SecretRef string `json:"secretRef"`
	// Until ends the secret's use (RFC 3339); empty: no end.
	Until string `json:"until,omitempty"`
	until time.Time
}

// Active reports whether s signs callbacks at now.
func (s SigningSecret) Active(now time.Time) bool {
	if s.Until == "" {
		return true
	}
	t := s.until
	if t.IsZero() { // not validated (a decoded envelope): parse now
		var err error
		if t, err = time.Parse(time.RFC3339, s.Until); err != nil {
			return false
		}
	}
	return now.Before(t)
}

// Callback authentication types (CallbackAuth.Type).
const (
	CallbackAuthBearer = "bearer" // Authorization: Bearer <secret>
	CallbackAuthOAuth2 = "oauth2" // a client-credentials token from TokenURL
	CallbackAuthMTLS   = "mtls"   // a TLS client certificate
)

// CallbackAuth authenticates the collector to a receiver, beyond the
// signature: the receiver's gateway may demand a token or a client
// certificate before the body is read.
type CallbackAuth struct {
	Type string `json:"type"`
	// SecretRef: the bearer token, or the OAuth2 client secret.
	SecretRef string   `json:"secretRef,omitempty"`
	TokenURL  string   `json:"tokenUrl,omitempty"`
	ClientID  string   `json:"clientId,omitempty"`
	Scopes    []string `json:"scopes,omitempty"`
	// CertRef and KeyRef name secrets holding the PEM client certificate
	// (chain) and its private key (mtls).
	CertRef string `json:"certRef,omitempty"`
	KeyRef  string `json:"keyRef,omitempty"`
}

func (a *CallbackAuth) validate(proto string) error {
	if p, ok := LookupProtocol(proto); ok && p.Credentials {
		return fieldErr("type", "not for protocol %s: its broker's credentials are the rule's credentialsRef", proto)
	}
	switch a.Type {
	case CallbackAuthBearer:
		if a.SecretRef == "" {
			return fieldErr("secretRef", "required: the secret holding the token")
		}
		if a.TokenURL != "" || a.ClientID != "" || len(a.Scopes) > 0 || a.CertRef != "" || a.KeyRef != "" {
			return fieldErr("type", "bearer takes secretRef only")
		}
	case CallbackAuthOAuth2:
		if a.SecretRef == "" || a.ClientID == "" {
			return fieldErr("clientId", "oauth2 needs clientId and secretRef (the client secret)")
		}
		if u, err := url.Parse(a.TokenURL); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
			return fieldErr("tokenUrl", "%q is not an http(s) URL", a.TokenURL)
		}
		if a.CertRef != "" || a.KeyRef != "" {
			return fieldErr("type", "oauth2 takes tokenUrl, clientId, secretRef and scopes")
		}
	case CallbackAuthMTLS:
		if a.CertRef == "" || a.KeyRef == "" {
			return fieldErr("certRef", "mtls needs certRef and keyRef (PEM certificate and key)")
		}
		if a.SecretRef != "" || a.TokenURL != "" || a.ClientID != "" || len(a.Scopes) > 0 {
			return fieldErr("type", "mtls takes certRef and keyRef only")
		}
	case "":
		return fieldErr("type", "required (bearer, oauth2 or mtls)")
	default:
		return fieldErr("type", "%q is not bearer, oauth2 or mtls", a.Type)
	}
	return nil
}

// SecretRefs lists the secrets a names, with their field names.
func (a *CallbackAuth) SecretRefs() [][2]string {
	var out [][2]string
	for _, f := range [][2]string{{"secretRef", a.SecretRef}, {"certRef", a.CertRef}, {"keyRef", a.KeyRef}} {
		if f[1] != "" {
			out = append(out, f)
		}
	}
	return out
}

// MaxSigningSecrets bounds a caller's signing list: every one signs every
// callback.
const MaxSigningSecrets = 4

func (c *Caller) validate() error {
	if !plainCallerName(c.Name) {
		return fieldErr("name", "%q: want letters, digits, '.', '_' and '-' (not starting with '.')", c.Name)
	}
	id := &c.Identity
	if len(id.Principals) == 0 && id.JWT == nil {
		return fieldErr("identity", "want principals, jwt or both: how the mesh authenticates this caller")
	}
	for i, p := range id.Principals {
		if err := checkPrincipal(p); err != nil {
			return fieldErr(fmt.Sprintf("identity.principals[%d]", i), "%w", err)
		}
	}
	if j := id.JWT; j != nil {
		if j.Issuer == "" {
			return fieldErr("identity.jwt.issuer", "required")
		}
		for i, s := range j.Subjects {
			if s == "" {
				return fieldErr(fmt.Sprintf("identity.jwt.subjects[%d]", i), "empty")
			}
		}
	}
	for i, h := range c.CallbackHosts {
		n, err := checkHostPattern(h)
		if err != nil {
			return fieldErr(fmt.Sprintf("callbackHosts[%d]", i), "%w", err)
		}
		c.CallbackHosts[i] = n
	}
	if len(c.Signing) > MaxSigningSecrets {
		return fieldErr("signing", "%d secrets, at most %d (each signs every callback)", len(c.Signing), MaxSigningSecrets)
	}
	for i := range c.Signing {
		s := &c.Signing[i]
		if s.SecretRef == "" {
			return fieldErr(fmt.Sprintf("signing[%d].secretRef", i), "required")
		}
		if s.Until != "" {
			t, err := time.Parse(time.RFC3339, s.Until)
			if err != nil {
				return fieldErr(fmt.Sprintf("signing[%d].until", i), "%q is not an RFC 3339 time such as 2026-12-31T00:00:00Z", s.Until)
			}
			s.until = t
		}
	}
	if c.Auth != nil {
		if err := c.Auth.validate(""); err != nil {
			return prefixed("auth.", err)
		}
	}
	if c.Encryption != nil {
		if err := c.Encryption.validate(); err != nil {
			return prefixed("encryption.", err)
		}
	}
	return nil
}

// checkPrincipal checks a URI SAN pattern: a URI with a scheme, and a "*"
// only as the last path segment.
func checkPrincipal(p string) error {
	base, wild := strings.CutSuffix(p, "/*")
	if strings.Contains(base, "*") {
		return fmt.Errorf("%q: a * only as the last path segment (spiffe://domain/ns/name/*)", p)
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" || strings.ContainsAny(p, " \r\n") {
		return fmt.Errorf("%q is not a URI such as spiffe://cluster.local/ns/billing/sa/frontend", p)
	}
	if wild && u.Host == "" && u.Opaque == "" {
		return fmt.Errorf("%q: a prefix needs at least a trust domain", p)
	}
	return nil
}

func plainCallerName(name string) bool {
	if name == "" || name[0] == '.' || len(name) > 128 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// MaxPrincipals bounds the principals of all callers together: the filter
// may compare an async request's peer URI SAN with each.
const MaxPrincipals = 1000

// validateCallers checks the callers and the rules' references to them.
func (c *Config) validateCallers() error {
	seen := map[string]bool{}
	principals := map[string]string{}
	n := 0
	for _, cl := range c.Callers {
		n += len(cl.Identity.Principals)
	}
	if n > MaxPrincipals {
		return fieldErr("callers", "%d principals in all, at most %d (an async request's identity is compared with each)", n, MaxPrincipals)
	}
	for i := range c.Callers {
		cl := &c.Callers[i]
		if err := cl.validate(); err != nil {
			return prefixed(fmt.Sprintf("callers[%d].", i), err)
		}
		if seen[cl.Name] {
			return fieldErr(fmt.Sprintf("callers[%d].name", i), "duplicate caller name %q", cl.Name)
		}
		seen[cl.Name] = true
		for j, p := range cl.Identity.Principals {
			if other, ok := principals[p]; ok {
				return fieldErr(fmt.Sprintf("callers[%d].identity.principals[%d]", i, j), "%q is already caller %s's", p, other)
			}
			principals[p] = cl.Name
		}
	}
	if len(c.Callers) > 0 && c.ReplaySecretEnv == "" {
		return fieldErr("replaySecretEnv", "required with callers: the filter vouches for the caller it recognized with the replay secret")
	}
	for i, r := range c.Rules {
		for j, name := range r.Callers {
			if !seen[name] {
				return fieldErr(fmt.Sprintf("rules[%d].callers[%d]", i, j), "%q is not declared under callers", name)
			}
		}
	}
	return nil
}

// NameOrEmpty is c's name, "" for nil (an anonymous caller).
func (c *Caller) NameOrEmpty() string {
	if c == nil {
		return ""
	}
	return c.Name
}

// Caller returns the declared caller called name.
func (c *Config) Caller(name string) (*Caller, bool) {
	for i := range c.Callers {
		if c.Callers[i].Name == name {
			return &c.Callers[i], true
		}
	}
	return nil, false
}

// Identify returns the first caller (in file order) that the peer
// certificate's URI SAN or the verified JWT's issuer and subject identify,
// with the principal it matched ("" for none).
func (c *Config) Identify(uriSAN, jwtIssuer, jwtSubject string) (*Caller, string) {
	for i := range c.Callers {
		cl := &c.Callers[i]
		if uriSAN != "" {
			for _, p := range cl.Identity.Principals {
				if principalMatches(p, uriSAN) {
					return cl, uriSAN
				}
			}
		}
		if j := cl.Identity.JWT; j != nil && jwtIssuer != "" && jwtIssuer == j.Issuer && jwtSubject != "" &&
			(len(j.Subjects) == 0 || slices.Contains(j.Subjects, jwtSubject)) {
			return cl, JWTPrincipal(jwtIssuer, jwtSubject)
		}
	}
	return nil, ""
}

// JWTPrincipal is how a request's principal is recorded when a JWT
// identified its caller.
func JWTPrincipal(issuer, subject string) string { return "jwt:" + subject + "@" + issuer }

func principalMatches(pattern, san string) bool {
	if base, ok := strings.CutSuffix(pattern, "/*"); ok {
		return strings.HasPrefix(san, base+"/") && len(san) > len(base)+1
	}
	return pattern == san
}

// Admits reports whether rule r takes requests from caller (nil: a caller
// the filter did not recognize): every caller when r lists none.
func (r *Rule) Admits(caller *Caller) bool {
	return len(r.Callers) == 0 || caller != nil && slices.Contains(r.Callers, caller.Name)
}

// WithCaller returns c as it applies to a request of caller: signed with the
// caller's secrets (instead of the rule's secretRef), carrying its auth, and
// sealed with its key (instead of the rule's). A nil caller changes nothing.
func (c Callback) WithCaller(caller *Caller) Callback {
	if caller == nil {
		return c
	}
	if len(caller.Signing) > 0 {
		c.Signing, c.SecretRef = caller.Signing, ""
	}
	c.CallerHosts = caller.CallbackHosts
	proto, _ := LookupProtocol(c.Protocol) // unknown: neither sealed nor brokered
	if caller.Auth != nil {
		c.Auth = caller.Auth
		if proto.Credentials {
			c.Auth = nil // a broker's credentials are the rule's, never a caller's
		}
	}
	if caller.Encryption != nil && proto.Encryption {
		c.Encryption = caller.Encryption
	}
	return c
}

// CheckCallerHost reports why caller may not point a callback it chose at
// rawURL: its host is not on the caller's callbackHosts (nil when the
// caller lists none).
func (cl *Caller) CheckCallerHost(rawURL string) error {
	if cl == nil || len(cl.CallbackHosts) == 0 {
		return nil
	}
	return checkHostList(cl.CallbackHosts, rawURL, "one of caller "+cl.Name+"'s callbackHosts")
}

// CheckCaller reports why rule r refuses a request of caller.
func (r *Rule) CheckCaller(caller *Caller) error {
	if r.Admits(caller) {
		return nil
	}
	if caller == nil {
		return fmt.Errorf("rule %s admits only its callers (%s); the mesh did not identify this one", r.Name, strings.Join(r.Callers, ", "))
	}
	return fmt.Errorf("rule %s does not admit caller %s", r.Name, caller.Name)
}
