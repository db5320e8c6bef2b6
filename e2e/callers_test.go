//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/controlplane/xds/xdstest"
	"github.com/asyncmesh/asyncmesh/examples/stack"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

const e2eIssuer = "https://auth.e2e.example"

// TestCallersByJWT runs Envoy's jwt_authn before the asyncmesh filter, as a
// mesh that authenticates callers by JWT does, and a rules file with a
// caller recognized by its verified claims. Through the real Envoy: the
// caller's request is accepted and called back signed with the caller's own
// secret and carrying its bearer token; a request without a JWT, with
// another subject's, or claiming the identity by header is refused 403 by
// the filter on the rule limited to that caller (a bad JWT: 401 by
// jwt_authn); an open rule's anonymous request is signed with the rule's
// secret and carries no token.
func TestCallersByJWT(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rcv := newRecordingReceiver(t)
	billingSecret, ruleSecret := webhook.NewSecret(), webhook.NewSecret()
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  billing-signing: {env: ASYNCMESH_SECRET_BILLING_SIGNING}
  billing-token: {env: ASYNCMESH_SECRET_BILLING_TOKEN}
  rule-signing: {env: ASYNCMESH_SECRET_RULE_SIGNING}
callers:
  - name: billing
    identity: {jwt: {issuer: "` + e2eIssuer + `", subjects: [billing-app]}}
    signing: [{secretRef: billing-signing}]
    auth: {type: bearer, secretRef: billing-token}
rules:
  - name: billing-only
    match: {pathPrefix: /slow}
    mode: async
    callers: [billing]
    callback: {url: "` + rcv.URL + `/cb", allowPrivate: true, secretRef: rule-signing}
    retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
  - name: open
    match: {pathPrefix: /fast}
    mode: async
    callback: {url: "` + rcv.URL + `/cb", allowPrivate: true, secretRef: rule-signing}
    retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
`
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": "e2e", "alg": "ES256", "use": "sig",
		"x": b64(key.X.FillBytes(make([]byte, 32))), "y": b64(key.Y.FillBytes(make([]byte, 32))),
	}}})
	filters := `          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                e2e:
                  issuer: ` + e2eIssuer + `
                  local_jwks: {inline_string: '` + string(jwks) + `'}
                  payload_in_metadata: jwt_payload
              rules:
              - match: {prefix: /}
                requires: {requires_any: {requirements: [{provider_name: e2e}, {allow_missing: {}}]}}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), Rules: rulesYAML, HTTPFilters: filters,
		CollectorEnv: []string{"ASYNCMESH_SECRET_BILLING_SIGNING=" + billingSecret, "ASYNCMESH_SECRET_BILLING_TOKEN=billing-token-value",
			"ASYNCMESH_SECRET_RULE_SIGNING=" + ruleSecret}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	billingJWT := signJWT(t, key, e2eIssuer, "billing-app")
	refusals := []struct {
		name   string
		status int
		hdrs   []string
	}{
		{"no JWT", 403, nil},
		{"another subject", 403, []string{"authorization", "Bearer " + signJWT(t, key, e2eIssuer, "someone-else")}},
		{"the identity claimed by headers", 403, []string{"x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/billing/sa/app", "x-async-caller", "billing"}},
		{"a JWT signed by another key", 401, []string{"authorization", "Bearer " + signJWT(t, must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)), e2eIssuer, "billing-app")}},
	}
	for _, tt := range refusals {
		resp, body := doAt(t, s, "POST", "/slow?ms=5", "{}", tt.hdrs...)
		if resp.StatusCode != tt.status || tt.status == 403 && !strings.Contains(string(body), "caller_not_allowed") {
			t.Fatalf("%s: %s %s, want %d", tt.name, resp.Status, body, tt.status)
		}
	}

	resp, body := doAt(t, s, "POST", "/slow?ms=5", `{"from":"billing"}`, "authorization", "Bearer "+billingJWT)
	id, _ := accepted(t, resp, body)
	h, payload := rcv.wait(t, id)
	verify := func(secret string) bool {
		sec, _ := webhook.ParseSecret(secret)
		return webhook.Verify(h, payload, []webhook.Secret{sec}, time.Now()) == nil
	}
	if !verify(billingSecret) || verify(ruleSecret) || h.Get("authorization") != "Bearer billing-token-value" {
		t.Fatalf("billing's callback: signed by billing %v, by the rule %v, authorization %q", verify(billingSecret), verify(ruleSecret), h.Get("authorization"))
	}
	rec := operatorRecord(t, s, id)
	if rec.Caller != "billing" || rec.Principal != "jwt:billing-app@"+e2eIssuer {
		t.Fatalf("record caller %q principal %q", rec.Caller, rec.Principal)
	}

	resp, body = doAt(t, s, "POST", "/fast", "{}")
	id, _ = accepted(t, resp, body)
	h, payload = rcv.wait(t, id)
	if verify(billingSecret) || !verify(ruleSecret) || h.Get("authorization") != "" {
		t.Fatalf("an anonymous callback: signed by billing %v, by the rule %v, authorization %q", verify(billingSecret), verify(ruleSecret), h.Get("authorization"))
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// signJWT makes an ES256 JWT of iss and sub valid for an hour.
func signJWT(t *testing.T, key *ecdsa.PrivateKey, iss, sub string) string {
	t.Helper()
	head := b64([]byte(`{"alg":"ES256","typ":"JWT","kid":"e2e"}`))
	claims, _ := json.Marshal(map[string]any{"iss": iss, "sub": sub, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()})
	signing := head + "." + b64(claims)
	sum := sha256.Sum256([]byte(signing))
	r, sv, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64(append(r.FillBytes(make([]byte, 32)), sv.FillBytes(make([]byte, 32))...))
}

// recordingReceiver keeps each callback's headers and body by webhook-id.
type recordingReceiver struct {
	*httptest.Server
	mu  sync.Mutex
	got map[string]struct {
		h    http.Header
		body []byte
	}
}

func newRecordingReceiver(t *testing.T) *recordingReceiver {
	rc := &recordingReceiver{got: map[string]struct {
		h    http.Header
		body []byte
	}{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got[r.Header.Get("webhook-id")] = struct {
			h    http.Header
			body []byte
		}{r.Header.Clone(), b}
		rc.mu.Unlock()
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *recordingReceiver) wait(t *testing.T, id string) (http.Header, []byte) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		rc.mu.Lock()
		g, ok := rc.got[id]
		rc.mu.Unlock()
		if ok {
			return g.h, g.body
		}
	}
	t.Fatalf("no callback for %s within 30s", id)
	return nil, nil
}

type operatorView struct {
	Status    string `json:"status"`
	Caller    string `json:"caller"`
	Principal string `json:"principal"`
}

func operatorRecord(t *testing.T, s *stack.Stack, id string) operatorView {
	t.Helper()
	resp, err := s.OperatorGet(context.Background(), "/v1/requests/"+id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v operatorView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCallersByCertificate gives Envoy's listener a TLS filter chain that
// requires a client certificate, as a mesh's mutual TLS does, and declares
// a caller by the SPIFFE IDs of its namespace: through the real Envoy, a
// client whose certificate names a service account of that namespace is
// the caller (its record says which one), one of another namespace is
// refused 403 on the rule limited to the caller, and so is a plaintext
// client claiming the identity by header.
func TestCallersByCertificate(t *testing.T) {
	work := t.TempDir()
	pki, err := xdstest.NewPKI(work, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, serverKey := must2(pki.Server("envoy", "127.0.0.1"))
	billingCert, billingKey := must2(pki.Client("billing", "spiffe://cluster.local/ns/billing/sa/web"))
	otherCert, otherKey := must2(pki.Client("other", "spiffe://cluster.local/ns/other/sa/web"))
	rcv := newRecordingReceiver(t)
	billingSecret := webhook.NewSecret()
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  billing-signing: {env: ASYNCMESH_SECRET_BILLING_SIGNING}
callers:
  - name: billing
    identity: {principals: ["spiffe://cluster.local/ns/billing/*"]}
    signing: [{secretRef: billing-signing}]
rules:
  - name: billing-only
    match: {pathPrefix: /slow}
    mode: async
    callers: [billing]
    callback: {url: "` + rcv.URL + `/cb", allowPrivate: true}
    retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: work, Rules: rulesYAML,
		DownstreamTLS: &stack.TLSFiles{Cert: serverCert, Key: serverKey, ClientCA: pki.CAFile},
		CollectorEnv:  []string{"ASYNCMESH_SECRET_BILLING_SIGNING=" + billingSecret}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	roots := x509.NewCertPool()
	ca, _ := os.ReadFile(pki.CAFile)
	roots.AppendCertsFromPEM(ca)
	httpsAs := func(certFile, keyFile string) *http.Client {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
	}
	post := func(c *http.Client, url string, hdrs ...string) (*http.Response, []byte) {
		req, _ := http.NewRequest("POST", url, strings.NewReader("{}"))
		for i := 0; i+1 < len(hdrs); i += 2 {
			req.Header.Set(hdrs[i], hdrs[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	httpsURL := strings.Replace(s.EnvoyURL, "http://", "https://", 1) + "/slow?ms=5"

	resp, body := post(httpsAs(otherCert, otherKey), httpsURL)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "caller_not_allowed") {
		t.Fatalf("another namespace's certificate: %s %s", resp.Status, body)
	}
	resp, body = post(client, s.EnvoyURL+"/slow?ms=5", "x-forwarded-client-cert", "By=x;URI=spiffe://cluster.local/ns/billing/sa/web")
	if resp.StatusCode != 403 {
		t.Fatalf("a plaintext client claiming the identity: %s %s", resp.Status, body)
	}
	resp, body = post(httpsAs(billingCert, billingKey), httpsURL)
	id, _ := accepted(t, resp, body)
	h, payload := rcv.wait(t, id)
	sec, _ := webhook.ParseSecret(billingSecret)
	if err := webhook.Verify(h, payload, []webhook.Secret{sec}, time.Now()); err != nil {
		t.Fatalf("the caller's callback is not signed with its secret: %v", err)
	}
	if rec := operatorRecord(t, s, id); rec.Caller != "billing" || rec.Principal != "spiffe://cluster.local/ns/billing/sa/web" {
		t.Fatalf("record caller %q principal %q", rec.Caller, rec.Principal)
	}
}

func must2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, b
}
