package rules

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// Target types.
const (
	TargetInternal = "internal" // replay through Envoy to the real service
	TargetExternal = "external" // hand the task to an external processing node
)

// Node authentication types.
const (
	AuthHMAC   = "hmac"   // Standard Webhooks signature with a whsec_ secret
	AuthBearer = "bearer" // Authorization: Bearer <secret>
	AuthOAuth2 = "oauth2" // client credentials grant at TokenURL
)

// Encryption algorithms (internal/seal).
const (
	EncryptAESGCM = "aes-256-gcm"
	EncryptJWE    = "jwe"
)

// DefaultNodeTimeout is how long an external node may take to complete.
const DefaultNodeTimeout = time.Hour

// Target says who executes an accepted request. The zero value is internal.
type Target struct {
	Type string `json:"type,omitempty"`
	// Endpoint is the external node's processing URL (http or https).
	Endpoint string `json:"endpoint,omitempty"`
	// Auth authenticates the collector to the node.
	Auth *NodeAuth `json:"auth,omitempty"`
	// Encryption seals the task and the node's completion.
	Encryption *Encryption `json:"encryption,omitempty"`
	// CompletionSecretRef names the whsec_ secret the node signs its
	// completion with; default: auth.secretRef when auth is hmac. Bearer
	// nodes may instead present their bearer token.
	CompletionSecretRef string `json:"completionSecretRef,omitempty"`
	// Timeout is how long the node may take to complete (default 1h); past
	// it the request fails.
	Timeout Duration `json:"timeout,omitempty"`
	// AllowPrivate / AllowNetworks: as for callbacks (SSRF guard).
	AllowPrivate  bool     `json:"allowPrivate,omitempty"`
	AllowNetworks []string `json:"allowNetworks,omitempty"`
	// PassHeaders names the caller's credential headers the node gets
	// (lower case); without it the task carries none of them (see
	// CredentialHeader).
	PassHeaders []string `json:"passHeaders,omitempty"`
	// Format is json (default) or soap (NodeJSON, NodeSOAP).
	Format string `json:"format,omitempty"`
	// Nodes names declared nodes (Config.Nodes) in failover order, instead
	// of an inline endpoint, auth, … (see Node).
	Nodes []string `json:"nodes,omitempty"`
	// Resolved are the named nodes as declared (validateNodes fills it;
	// a rules file may not write it).
	Resolved []Node `json:"resolvedNodes,omitempty"`
}

// CredentialHeader reports whether a request header (lower-case name) may
// carry the caller's credentials, which an external node does not get
// unless target.passHeaders names the header. The list is broad on purpose:
// a node outside the mesh should not receive a session or a token by a name
// nobody thought of, and a header wrongly caught is one line of passHeaders.
func CredentialHeader(name string) bool {
	switch name {
	case "x-forwarded-client-cert", // the mesh's view of the client certificate
		"x-client-cert", "ssl-client-cert", "x-ssl-client-cert":
		return true
	}
	for _, part := range credentialParts {
		if strings.Contains(name, part) {
			return true
		}
	}
	return false
}

// credentialParts are the name parts of CredentialHeader: authorization,
// proxy-authorization, x-auth-*, cookie, set-cookie, x-api-key, api_key,
// x-access-token, x-csrf-token, x-session-id, x-amz-security-token, …
var credentialParts = []string{"auth", "cookie", "token", "secret", "password", "passwd", "api-key", "apikey", "api_key", "session", "credential", "csrf", "xsrf", "signature"}

// NodeAuth is how the collector authenticates to an external node.
type NodeAuth struct {
	Type string `json:"type"`
	// SecretRef: the whsec_ secret (hmac), the token (bearer) or the client
	// secret (oauth2).
	SecretRef string   `json:"secretRef"`
	TokenURL  string   `json:"tokenUrl,omitempty"`
	ClientID  string   `json:"clientId,omitempty"`
	Scopes    []string `json:"scopes,omitempty"`
}

// Encryption seals payloads with a per-rule 256-bit key (a secret holding
// it in base64).
type Encryption struct {
	Type   string `json:"type"`
	KeyRef string `json:"keyRef"`
}

// External reports whether t sends tasks to an external node.
func (t *Target) External() bool { return t != nil && t.Type == TargetExternal }

func (t *Target) validate() error {
	switch t.Type {
	case "", TargetInternal:
		if t.Endpoint != "" || t.Auth != nil || t.Encryption != nil || len(t.PassHeaders) > 0 || len(t.Nodes) > 0 || t.Format != "" {
			return fieldErr("type", "endpoint, nodes, format, auth, encryption and passHeaders need type external")
		}
		t.Type = TargetInternal
		return nil
	case TargetExternal:
	default:
		return fieldErr("type", "%q is not internal or external", t.Type)
	}
	if err := t.validatePass(); err != nil {
		return err
	}
	if len(t.Nodes) > 0 {
		return t.validateNamed()
	}
	if len(t.Resolved) > 0 {
		return fieldErr("resolvedNodes", "set from target.nodes, not written")
	}
	switch t.Format {
	case "":
		t.Format = NodeJSON
	case NodeJSON, NodeSOAP:
	default:
		return fieldErr("format", "%q is not json or soap", t.Format)
	}
	u, err := url.Parse(t.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
		return fieldErr("endpoint", "%q: want an http(s) URL with a host and no user info", t.Endpoint)
	}
	if t.Auth == nil {
		return fieldErr("auth", "required: an external node is authenticated (hmac, bearer or oauth2)")
	}
	a := t.Auth
	if a.SecretRef == "" {
		return fieldErr("auth.secretRef", "required")
	}
	switch a.Type {
	case AuthHMAC, AuthBearer:
		if a.TokenURL != "" || a.ClientID != "" || len(a.Scopes) > 0 {
			return fieldErr("auth", "tokenUrl, clientId and scopes are for oauth2")
		}
	case AuthOAuth2:
		tu, err := url.Parse(a.TokenURL)
		if err != nil || (tu.Scheme != "http" && tu.Scheme != "https") || tu.Hostname() == "" {
			return fieldErr("auth.tokenUrl", "%q: want an http(s) URL", a.TokenURL)
		}
		if a.ClientID == "" {
			return fieldErr("auth.clientId", "required for oauth2")
		}
		if t.CompletionSecretRef == "" {
			return fieldErr("completionSecretRef", "required with oauth2: the node signs its completion with it")
		}
	default:
		return fieldErr("auth.type", "%q is not hmac, bearer or oauth2", a.Type)
	}
	if t.Encryption != nil {
		if err := t.Encryption.validate(); err != nil {
			return prefixed("encryption.", err)
		}
	}
	if t.Timeout == 0 {
		t.Timeout = Duration(DefaultNodeTimeout)
	}
	for i, n := range t.AllowNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			return fieldErr(fmt.Sprintf("allowNetworks[%d]", i), "%q is not a CIDR prefix", n)
		}
	}
	return nil
}

func (t *Target) validatePass() error {
	for i, h := range t.PassHeaders {
		if !validHeaderName(h) || strings.ToLower(h) != h {
			return fieldErr(fmt.Sprintf("passHeaders[%d]", i), "%q is not a lower-case header name", h)
		}
	}
	return nil
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > 0x7e || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}

func (e *Encryption) validate() error {
	switch e.Type {
	case EncryptAESGCM, EncryptJWE:
	default:
		return fieldErr("type", "%q is not aes-256-gcm or jwe", e.Type)
	}
	if e.KeyRef == "" {
		return fieldErr("keyRef", "required: the secret holding the 256-bit key in base64")
	}
	return nil
}
