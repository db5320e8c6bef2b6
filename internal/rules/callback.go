package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Callback protocols.
const (
	ProtocolHTTP = "http" // JSON POST signed by Standard Webhooks v1
	ProtocolSOAP = "soap" // SOAP 1.1 envelope POST with SOAPAction
	ProtocolGRPC = "grpc" // unary Deliver of client/callbackpb's Callback service
	ProtocolAMQP = "amqp" // a message published to an exchange with a routing key
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
	// AllowOverride lets the caller choose with x-async-callback(-protocol).
	AllowOverride bool `json:"allowOverride,omitempty"`
	// AllowPrivate allows callbacks to any address, loopback and private
	// networks included; AllowNetworks allows only the listed ones (CIDR).
	AllowPrivate  bool     `json:"allowPrivate,omitempty"`
	AllowNetworks []string `json:"allowNetworks,omitempty"`
	// SOAPAction is the soap protocol's SOAPAction header (default
	// SOAPActionDefault).
	SOAPAction string `json:"soapAction,omitempty"`
	// CredentialsRef names the secret holding "user:password" of the amqp
	// protocol's broker (guest:guest without it).
	CredentialsRef string `json:"credentialsRef,omitempty"`
	// Encryption seals the callback payload (http, grpc, amqp); the
	// signature covers the sealed bytes.
	Encryption *Encryption `json:"encryption,omitempty"`
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
	if err := CheckProtocol(c.Protocol); err != nil {
		return fieldErr("protocol", "%w", err)
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
	if c.SOAPAction != "" && c.Protocol != ProtocolSOAP {
		return fieldErr("soapAction", "only for protocol soap")
	}
	if c.Protocol == ProtocolSOAP && c.SOAPAction == "" {
		c.SOAPAction = SOAPActionDefault
	}
	if strings.ContainsAny(c.SOAPAction, "\"\r\n") {
		return fieldErr("soapAction", "must not contain quotes or line breaks")
	}
	if c.Encryption != nil {
		if c.Protocol == ProtocolSOAP {
			return fieldErr("encryption", "not for protocol soap (use WS-Security at the receiver's gateway)")
		}
		if err := c.Encryption.validate(); err != nil {
			return prefixed("encryption.", err)
		}
	}
	if c.CredentialsRef != "" && c.Protocol != ProtocolAMQP {
		return fieldErr("credentialsRef", "only for protocol amqp")
	}
	return nil
}

func (s *Select) validate(parent *Callback) error {
	if parent.URL != "" || parent.AllowOverride || parent.SecretRef != "" {
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

// CheckProtocol reports whether p is a known callback protocol.
func CheckProtocol(p string) error {
	switch p {
	case ProtocolHTTP, ProtocolSOAP, ProtocolGRPC, ProtocolAMQP:
		return nil
	}
	return fmt.Errorf("%q is not http, soap, grpc or amqp", p)
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
	var schemes []string
	switch protocol {
	case ProtocolHTTP, ProtocolSOAP:
		schemes = []string{"http", "https"}
	case ProtocolGRPC:
		schemes = []string{"grpc", "grpcs"}
	case ProtocolAMQP:
		schemes = []string{"amqp", "amqps"}
	default:
		return CheckProtocol(protocol)
	}
	if !slices.Contains(schemes, u.Scheme) {
		return fmt.Errorf("%q: scheme must be %s for protocol %s", s, strings.Join(schemes, " or "), protocol)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q: host required", s)
	}
	if u.User != nil {
		return fmt.Errorf("%q: user info is not allowed (amqp credentials come from credentialsRef)", s)
	}
	if protocol == ProtocolAMQP {
		q := u.Query()
		if !q.Has("exchange") && !q.Has("routingKey") {
			return fmt.Errorf("%q: want ?exchange=E&routingKey=K", s)
		}
		for k := range q {
			if k != "exchange" && k != "routingKey" {
				return fmt.Errorf("%q: unknown query parameter %q (want exchange, routingKey)", s, k)
			}
		}
	}
	return nil
}
