package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Callback says where and how the result is delivered.
//
// The URL's scheme depends on the protocol: http and soap take http(s)://;
// grpc takes grpc://host:port (plaintext HTTP/2) or grpcs://host:port (TLS);
// amqp takes amqp(s)://host:port/vhost?exchange=E&routingKey=K, whose
// credentials come from CredentialsRef, never from the URL.
type Callback struct {
	URL      string `json:"url,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	// SecretRef names the signing secret; the collector resolves it.
	SecretRef string `json:"secretRef,omitempty"`
	// Signing, when set, replaces SecretRef: the secrets of the request's
	// caller (Caller.Signing), each active until its end.
	Signing []SigningSecret `json:"signing,omitempty"`
	// CallerHosts are the callbackHosts of the request's caller
	// (Caller.CallbackHosts, set by WithCaller): a URL the caller chose must
	// be on them too (CheckCallerURL).
	CallerHosts []string `json:"callerHosts,omitempty"`
	// Auth authenticates the collector to the receiver (bearer, OAuth2 or
	// mTLS). Never sent to a caller-chosen URL, unless it is the caller's
	// own (Caller.Auth).
	Auth *CallbackAuth `json:"auth,omitempty"`
	// AllowOverride lets the caller choose with x-async-callback(-protocol).
	// A caller-chosen callback never borrows the rule's privileges: see
	// ForCaller.
	AllowOverride bool `json:"allowOverride,omitempty"`
	// AllowedHosts, with AllowOverride, lists where callers may point the
	// callback: a host name or IP address, or *.suffix (any name below
	// suffix), each optionally with :port (any port without). Empty: any
	// public host. A caller-chosen URL elsewhere is refused at intake (400)
	// and again by the collector before it connects.
	AllowedHosts []string `json:"allowedHosts,omitempty"`
	// AllowPrivate allows callbacks to any address, loopback and private
	// networks included; AllowNetworks allows only the listed ones (CIDR).
	// For a caller-chosen URL they apply only when its host is on
	// AllowedHosts.
	AllowPrivate  bool     `json:"allowPrivate,omitempty"`
	AllowNetworks []string `json:"allowNetworks,omitempty"`
	// SOAPAction is the soap protocol's SOAPAction header (default
	// SOAPActionDefault).
	SOAPAction string `json:"soapAction,omitempty"`
	// CredentialsRef names the secret holding "user:password" of the amqp
	// protocol's broker (guest:guest without it). Never sent to a
	// caller-chosen URL.
	CredentialsRef string `json:"credentialsRef,omitempty"`
	// Encryption seals the callback payload (http, grpc, amqp); the
	// signature covers the sealed bytes.
	Encryption *Encryption `json:"encryption,omitempty"`
	// RateLimit and MaxInFlight bound the callbacks to this callback's
	// endpoint, across the collectors of a store (limits.go).
	RateLimit   *RateLimit `json:"rateLimit,omitempty"`
	MaxInFlight int        `json:"maxInFlight,omitempty"`
	// Select chooses the callback among Targets by a request parameter.
	Select *Select `json:"select,omitempty"`
}

// SOAPActionDefault is the SOAPAction of soap callbacks unless a rule sets one.
const SOAPActionDefault = "urn:asyncmesh:callback:v1#Deliver"

// Select picks a rule's callback by a request parameter: exactly one of
// Header, Query or JSONField (a dot path into a JSON request body) names it,
// and its value is a key of Targets. A request whose parameter is missing
// gets Default, or 400 without one; a value that names no target gets 400.
type Select struct {
	Header    string              `json:"header,omitempty"`
	Query     string              `json:"query,omitempty"`
	JSONField string              `json:"jsonField,omitempty"`
	Targets   map[string]Callback `json:"targets"`
	Default   string              `json:"default,omitempty"`
}

// validate applies defaults and checks c; errors are *FieldError relative to c.
func (c *Callback) validate() error {
	if c.Select != nil {
		return c.Select.validate(c)
	}
	if c.Protocol == "" {
		c.Protocol = ProtocolHTTP
	}
	proto, ok := LookupProtocol(c.Protocol)
	if !ok {
		return fieldErr("protocol", "%w", CheckProtocol(c.Protocol))
	}
	if c.URL == "" && !c.AllowOverride {
		return fieldErr("url", "required unless callback.allowOverride is true")
	}
	if c.URL != "" {
		if err := CheckCallbackURLFor(c.Protocol, c.URL); err != nil {
			return fieldErr("url", "%w", err)
		}
	}
	for i, n := range c.AllowNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			return fieldErr(fmt.Sprintf("allowNetworks[%d]", i), "%q is not a CIDR prefix such as 127.0.0.0/8", n)
		}
	}
	if c.SOAPAction != "" && !proto.SOAPAction {
		return fieldErr("soapAction", "not for protocol %s", c.Protocol)
	}
	if proto.SOAPAction && c.SOAPAction == "" {
		c.SOAPAction = SOAPActionDefault
	}
	if strings.ContainsAny(c.SOAPAction, "\"\r\n") {
		return fieldErr("soapAction", "must not contain quotes or line breaks")
	}
	if c.Encryption != nil {
		if !proto.Encryption {
			return fieldErr("encryption", "not for protocol %s (for soap, use WS-Security at the receiver's gateway)", c.Protocol)
		}
		if err := c.Encryption.validate(); err != nil {
			return prefixed("encryption.", err)
		}
	}
	if c.CredentialsRef != "" && !proto.Credentials {
		return fieldErr("credentialsRef", "not for protocol %s", c.Protocol)
	}
	if c.Auth != nil {
		if err := c.Auth.validate(c.Protocol); err != nil {
			return prefixed("auth.", err)
		}
	}
	if len(c.Signing) > 0 {
		return fieldErr("signing", "a caller's (callers[].signing), not a rule's: use secretRef")
	}
	if len(c.CallerHosts) > 0 {
		return fieldErr("callerHosts", "a caller's (callers[].callbackHosts), not a rule's: use allowedHosts")
	}
	if err := c.validateLimits(); err != nil {
		return err
	}
	return c.validateOverride()
}

// validateOverride checks what a rule lets callers choose: the host list is
// normalized, and the rule's private-network allowances, which reach
// internal addresses, need a list of the hosts callers may point them at.
func (c *Callback) validateOverride() error {
	if len(c.AllowedHosts) > 0 && !c.AllowOverride {
		return fieldErr("allowedHosts", "only with allowOverride: it lists where callers may point the callback")
	}
	for i, h := range c.AllowedHosts {
		n, err := checkHostPattern(h)
		if err != nil {
			return fieldErr(fmt.Sprintf("allowedHosts[%d]", i), "%w", err)
		}
		c.AllowedHosts[i] = n
	}
	if !c.AllowOverride {
		return nil
	}
	if (c.AllowPrivate || len(c.AllowNetworks) > 0) && len(c.AllowedHosts) == 0 {
		return fieldErr("allowedHosts", "required when allowOverride is combined with allowPrivate or allowNetworks: "+
			"list the hosts callers may point the callback at (a caller's URL gets the private allowance only for a listed host)")
	}
	if c.CredentialsRef != "" && c.URL == "" {
		return fieldErr("credentialsRef", "never sent to a caller-chosen URL, and this callback has no url of its own")
	}
	if c.Auth != nil && c.URL == "" {
		return fieldErr("auth", "never sent to a caller-chosen URL, and this callback has no url of its own (a caller's own auth is callers[].auth)")
	}
	return nil
}

// ForCaller returns c as it applies to a callback the caller chose (with
// x-async-callback or x-async-callback-protocol; c.URL is then the caller's
// URL, or the rule's when only the protocol was chosen): the broker
// credentials and the receiver auth are dropped, always, and the private-network allowances unless
// c.URL's host is on AllowedHosts. Signing (SecretRef) stays: it is how the
// caller verifies the callback; so does Encryption, which only protects the
// payload on its way to the caller. ForCaller of its result is the same.
func (c Callback) ForCaller() Callback {
	c.CredentialsRef, c.Auth = "", nil
	if len(c.AllowedHosts) == 0 || c.CheckCallerURL(c.URL) != nil {
		c.AllowPrivate, c.AllowNetworks = false, nil
	}
	return c
}

// CheckCallerURL reports why a caller may not point the callback at rawURL:
// its host is not on AllowedHosts (nil when the list is empty: any host, left
// to the collector's SSRF guard).
func (c *Callback) CheckCallerURL(rawURL string) error {
	if len(c.CallerHosts) > 0 {
		if err := checkHostList(c.CallerHosts, rawURL, "one of the caller's callbackHosts"); err != nil {
			return err
		}
	}
	if len(c.AllowedHosts) == 0 {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Hostname() == "" {
		return fmt.Errorf("%q is not a URL with a host", rawURL)
	}
	port := u.Port()
	if port == "" {
		port = defaultPorts[u.Scheme]
	}
	if !HostAllowed(c.AllowedHosts, u.Hostname(), port) {
		return fmt.Errorf("host %s is not one the rule lets callers choose (callback.allowedHosts)", net.JoinHostPort(u.Hostname(), port))
	}
	return nil
}

// checkHostList reports why rawURL's host is not on hosts (HostAllowed
// patterns), which are what.
func checkHostList(hosts []string, rawURL, what string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Hostname() == "" {
		return fmt.Errorf("%q is not a URL with a host", rawURL)
	}
	port := u.Port()
	if port == "" {
		port = defaultPorts[u.Scheme]
	}
	if !HostAllowed(hosts, u.Hostname(), port) {
		return fmt.Errorf("host %s is not %s", net.JoinHostPort(u.Hostname(), port), what)
	}
	return nil
}

// defaultPorts are the ports of callback URLs without one.
var defaultPorts = map[string]string{"http": "80", "https": "443", "grpc": "80", "grpcs": "443", "amqp": "5672", "amqps": "5671"}

// HostAllowed reports whether host (a name or an IP address, without
// brackets) and port match one of the normalized patterns of
// Callback.AllowedHosts. Names compare case-insensitively and without a
// trailing dot; *.suffix matches names strictly below suffix, never an IP
// address; a pattern without a port matches any port.
func HostAllowed(patterns []string, host, port string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	ip, ipErr := netip.ParseAddr(host)
	for _, p := range patterns {
		ph, pp := splitHostPattern(p)
		if pp != "" && pp != port {
			continue
		}
		if pip, err := netip.ParseAddr(ph); err == nil {
			if ipErr == nil && pip.Unmap() == ip.Unmap() && ip.Zone() == "" {
				return true
			}
			continue
		}
		if ipErr == nil {
			continue // a name pattern never matches an address
		}
		if suffix, ok := strings.CutPrefix(ph, "*"); ok {
			if len(host) > len(suffix) && strings.HasSuffix(host, suffix) {
				return true
			}
		} else if host == ph {
			return true
		}
	}
	return false
}

// splitHostPattern splits a normalized pattern into host and port ("" for
// any); an IPv6 address is in brackets when it has a port.
func splitHostPattern(p string) (string, string) {
	if h, port, err := net.SplitHostPort(p); err == nil {
		return h, port
	}
	return strings.TrimSuffix(strings.TrimPrefix(p, "["), "]"), ""
}

// checkHostPattern validates one allowedHosts entry and returns it
// normalized (lower case, no trailing dot, IPv6 in brackets only with a
// port).
func checkHostPattern(p string) (string, error) {
	if p == "" || strings.ContainsAny(p, "/?#@ \t") {
		return "", fmt.Errorf("%q: want a host, *.domain or either with :port (no scheme, path or user)", p)
	}
	host, port := p, ""
	if h, pt, err := net.SplitHostPort(p); err == nil {
		host, port = h, pt
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return "", fmt.Errorf("%q: port %q is not 1..65535", p, port)
		}
	} else if strings.HasPrefix(p, "[") && strings.HasSuffix(p, "]") {
		host = p[1 : len(p)-1]
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("%q: an address with a zone is not allowed", p)
		}
		host = ip.Unmap().String()
		if port != "" {
			return net.JoinHostPort(host, port), nil
		}
		return host, nil
	}
	name := host
	if suffix, ok := strings.CutPrefix(host, "*."); ok {
		// Two labels at least, so that "*.com" cannot open a whole
		// top-level domain by a slip.
		if !strings.Contains(suffix, ".") {
			return "", fmt.Errorf("%q: a wildcard needs a domain of two labels or more, such as *.partner.example", p)
		}
		name = suffix
	}
	if !validHostName(name) {
		return "", fmt.Errorf("%q: %q is not a host name (letters, digits, -, _ and . only; * only as a leading *.)", p, name)
	}
	if port != "" {
		return host + ":" + port, nil
	}
	return host, nil
}

// validHostName reports whether s is a DNS name of LDH labels.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func (s *Select) validate(parent *Callback) error {
	if parent.URL != "" || parent.AllowOverride || parent.SecretRef != "" || len(parent.AllowedHosts) > 0 || parent.Limited() {
		return fieldErr("select", "a callback with select has its url, secretRef and the rest in each target")
	}
	n := 0
	for _, v := range []string{s.Header, s.Query, s.JSONField} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		return fieldErr("select", "want exactly one of header, query or jsonField")
	}
	if s.Header != "" && (strings.ToLower(s.Header) != s.Header || strings.HasPrefix(s.Header, "x-async-") || strings.HasPrefix(s.Header, ":")) {
		return fieldErr("select.header", "%q must be a lower-case header name outside x-async-*", s.Header)
	}
	if len(s.Targets) == 0 {
		return fieldErr("select.targets", "required: at least one target")
	}
	keys := make([]string, 0, len(s.Targets))
	for k := range s.Targets {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		t := s.Targets[k]
		if k == "" {
			return fieldErr("select.targets", "a target key is empty")
		}
		if t.Select != nil || t.AllowOverride {
			return fieldErr("select.targets."+k, "a target cannot select or allow overrides")
		}
		if err := t.validate(); err != nil {
			return prefixed("select.targets."+k+".", err)
		}
		s.Targets[k] = t
	}
	if _, ok := s.Targets[s.Default]; s.Default != "" && !ok {
		return fieldErr("select.default", "%q is not a key of targets", s.Default)
	}
	return nil
}

// SelectError is a request whose parameter names no callback target; the
// filter answers it with 400.
type SelectError struct{ Msg string }

func (e *SelectError) Error() string { return e.Msg }

// Pick returns the target that value selects ("" when the parameter is
// absent).
func (s *Select) Pick(value string, present bool) (string, Callback, error) {
	key := value
	if !present {
		if s.Default == "" {
			return "", Callback{}, &SelectError{s.Param() + ": required to choose the callback"}
		}
		key = s.Default
	}
	t, ok := s.Targets[key]
	if !ok {
		return "", Callback{}, &SelectError{fmt.Sprintf("%s: %q names no callback target", s.Param(), value)}
	}
	return key, t, nil
}

// Param names the selecting parameter for messages.
func (s *Select) Param() string {
	switch {
	case s.Header != "":
		return "header " + s.Header
	case s.Query != "":
		return "query parameter " + s.Query
	}
	return "body field " + s.JSONField
}

// QueryValue returns the first value of query parameter name in a request
// path ("/p?a=1&b=2").
func QueryValue(path, name string) (string, bool) {
	_, q, ok := strings.Cut(path, "?")
	if !ok {
		return "", false
	}
	q, _, _ = strings.Cut(q, "#")
	for q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == name {
			uv, err := url.QueryUnescape(v)
			return uv, err == nil
		}
	}
	return "", false
}

// JSONFieldValue reads the field at a dot path of a JSON object body; a
// string or number counts, anything else is absent.
func JSONFieldValue(body []byte, path string) (string, bool) {
	var v any
	if json.Unmarshal(body, &v) != nil {
		return "", false
	}
	for _, part := range strings.Split(path, ".") {
		obj, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = obj[part]; !ok {
			return "", false
		}
	}
	switch x := v.(type) {
	case string:
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	}
	return "", false
}

// CheckCallbackURL reports whether s is an acceptable http(s) callback URL.
func CheckCallbackURL(s string) error { return CheckCallbackURLFor(ProtocolHTTP, s) }

// CheckCallbackURLFor reports whether s is an absolute URL of the protocol's
// scheme with a host and no user info. Address checks (private, loopback)
// happen at connect time in the collector, where DNS answers are known.
func CheckCallbackURLFor(protocol, s string) error {
	if len(s) > 2048 {
		return errors.New("longer than 2048 bytes")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	p, ok := LookupProtocol(protocol)
	if !ok {
		return CheckProtocol(protocol)
	}
	if !slices.Contains(p.Schemes, u.Scheme) {
		return fmt.Errorf("%q: scheme must be %s for protocol %s", s, strings.Join(p.Schemes, " or "), protocol)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q: host required", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q: user info is not allowed (amqp credentials come from credentialsRef)", s)
	}
	if p.CheckURL != nil {
		return p.CheckURL(u)
	}
	return nil
}
