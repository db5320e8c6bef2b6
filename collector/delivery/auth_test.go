package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// vault resolves references to signing secrets and plain values.
type vault struct {
	signing map[string][]webhook.Secret
	values  map[string]string
}

func (v vault) Lookup(ref string) ([]webhook.Secret, error) {
	if s, ok := v.signing[ref]; ok {
		return s, nil
	}
	return nil, errors.New("no secret " + ref)
}

func (v vault) Value(ref string) (string, error) {
	if s, ok := v.values[ref]; ok {
		return s, nil
	}
	return "", errors.New("no secret " + ref)
}

// authReceiver records what each callback carried.
type authReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	hdrs []http.Header
	body [][]byte
	cns  []string // client certificate subjects
}

func newAuthReceiver(t *testing.T, tlsCfg *tls.Config) *authReceiver {
	rc := &authReceiver{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.hdrs, rc.body = append(rc.hdrs, r.Header.Clone()), append(rc.body, b)
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			rc.cns = append(rc.cns, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
	})
	if tlsCfg == nil {
		rc.Server = httptest.NewServer(h)
	} else {
		rc.Server = httptest.NewUnstartedServer(h)
		rc.TLS = tlsCfg
		rc.StartTLS()
	}
	t.Cleanup(rc.Close)
	return rc
}

func (rc *authReceiver) last(t *testing.T) (http.Header, []byte) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.hdrs) == 0 {
		t.Fatal("no callback received")
	}
	return rc.hdrs[len(rc.hdrs)-1], rc.body[len(rc.body)-1]
}

func TestCallerSigningRotation(t *testing.T) {
	newS, _ := webhook.ParseSecret(webhook.NewSecret())
	oldS, _ := webhook.ParseSecret(webhook.NewSecret())
	v := vault{signing: map[string][]webhook.Secret{"new": {newS}, "old": {oldS}, "rule": {oldS}}}
	rc := newAuthReceiver(t, nil)
	future, past := time.Now().Add(time.Hour).Format(time.RFC3339), time.Now().Add(-time.Hour).Format(time.RFC3339)
	tests := []struct {
		name           string
		signing        []rules.SigningSecret
		verifiesWith   []webhook.Secret
		refusedBy      []webhook.Secret
		wantNoCallback bool
	}{
		{"grace: both sign", []rules.SigningSecret{{SecretRef: "new"}, {SecretRef: "old", Until: future}}, []webhook.Secret{newS, oldS}, nil, false},
		{"grace over: the new one alone", []rules.SigningSecret{{SecretRef: "new"}, {SecretRef: "old", Until: past}}, []webhook.Secret{newS}, []webhook.Secret{oldS}, false},
		{"every secret ended: not sent unsigned", []rules.SigningSecret{{SecretRef: "old", Until: past}}, nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := record(rc.URL, true)
			rec.Envelope.Callback.SecretRef, rec.Envelope.Callback.Signing = "", tt.signing
			before := len(rc.hdrs)
			res := NewSender(v, time.Second).Send(context.Background(), rec, 1)
			if tt.wantNoCallback {
				if res.Outcome != Retry || !strings.Contains(res.Attempt.Error, "ended") || len(rc.hdrs) != before {
					t.Fatalf("%+v", res)
				}
				return
			}
			if res.Outcome != Delivered {
				t.Fatalf("%+v", res)
			}
			h, body := rc.last(t)
			for _, s := range tt.verifiesWith {
				if err := webhook.Verify(h, body, []webhook.Secret{s}, time.Now()); err != nil {
					t.Fatalf("a receiver holding one active secret cannot verify: %v", err)
				}
			}
			for _, s := range tt.refusedBy {
				if webhook.Verify(h, body, []webhook.Secret{s}, time.Now()) == nil {
					t.Fatal("an ended secret still signs")
				}
			}
		})
	}
}

// TestCallbackAuthIsNeverLent plays a caller that points the callback of a
// rule with a bearer token at its own server: it gets no token. A declared
// caller's own token goes to its own URL.
func TestCallbackAuthIsNeverLent(t *testing.T) {
	v := vault{signing: map[string][]webhook.Secret{"s": nil}, values: map[string]string{"rule-token": "rule-secret-token", "caller-token": "caller-token-value\n"}}
	rc := newAuthReceiver(t, nil)
	ruleAuth := &rules.CallbackAuth{Type: rules.CallbackAuthBearer, SecretRef: "rule-token"}
	callerAuth := &rules.CallbackAuth{Type: rules.CallbackAuthBearer, SecretRef: "caller-token"}
	tests := []struct {
		name       string
		fromCaller bool
		caller     string
		auth       *rules.CallbackAuth
		want       string
	}{
		{"the rule's URL gets the rule's token", false, "", ruleAuth, "Bearer rule-secret-token"},
		{"an anonymous caller's URL gets nothing", true, "", ruleAuth, ""},
		{"a declared caller's URL gets its own token", true, "billing", callerAuth, "Bearer caller-token-value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := record(rc.URL, true)
			rec.Envelope.Callback.Auth, rec.Envelope.CallbackFromCaller, rec.Envelope.Caller = tt.auth, tt.fromCaller, tt.caller
			rec.Envelope.Callback.AllowedHosts = []string{"127.0.0.1"}
			if res := NewSender(v, time.Second).Send(context.Background(), rec, 1); res.Outcome != Delivered {
				t.Fatalf("%+v", res)
			}
			h, _ := rc.last(t)
			if got := h.Get("authorization"); got != tt.want {
				t.Fatalf("authorization %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCallbackOAuth2(t *testing.T) {
	var grants int
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		id, secret, _ := r.BasicAuth()
		if r.Form.Get("grant_type") != "client_credentials" || id != "billing" || secret != "client-secret" || r.Form.Get("scope") != "callbacks" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		grants++
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "tok-1", "token_type": "Bearer", "expires_in": 3600})
	}))
	defer tokens.Close()
	rc := newAuthReceiver(t, nil)
	v := vault{signing: map[string][]webhook.Secret{"s": nil}, values: map[string]string{"client": "client-secret"}}
	s := NewSender(v, time.Second)
	for range 3 {
		rec := record(rc.URL, true)
		rec.Envelope.Callback.Auth = &rules.CallbackAuth{Type: rules.CallbackAuthOAuth2, TokenURL: tokens.URL, ClientID: "billing", SecretRef: "client", Scopes: []string{"callbacks"}}
		if res := s.Send(context.Background(), rec, 1); res.Outcome != Delivered {
			t.Fatalf("%+v", res)
		}
		if h, _ := rc.last(t); h.Get("authorization") != "Bearer tok-1" {
			t.Fatalf("authorization %q", h.Get("authorization"))
		}
	}
	if grants != 1 {
		t.Fatalf("%d token grants for 3 callbacks: the token must be cached until it expires", grants)
	}
	// A token endpoint the guard refuses (no private allowance) gives no
	// token and sends nothing.
	rec := record(rc.URL, false)
	rec.Envelope.Callback.Auth = &rules.CallbackAuth{Type: rules.CallbackAuthOAuth2, TokenURL: tokens.URL, ClientID: "billing", SecretRef: "client"}
	if res := s.Send(context.Background(), rec, 1); res.Outcome == Delivered || !strings.Contains(res.Attempt.Error, "oauth2") {
		t.Fatalf("%+v", res)
	}
}

func TestCallbackMTLS(t *testing.T) {
	ca, caKey := newCA(t)
	serverCert := issue(t, ca, caKey, "receiver", true)
	clientPEM, clientKeyPEM := issuePEM(t, ca, caKey, "billing")
	otherPEM, otherKeyPEM := issuePEM(t, ca, caKey, "partner")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	rc := newAuthReceiver(t, &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool})
	v := vault{signing: map[string][]webhook.Secret{"s": nil}, values: map[string]string{
		"billing.crt": clientPEM, "billing.key": clientKeyPEM, "partner.crt": otherPEM, "partner.key": otherKeyPEM, "bad.key": "not a key"}}
	s := NewSender(v, time.Second)
	s.http.RootCAs = pool
	send := func(auth *rules.CallbackAuth) Result {
		rec := record(rc.URL, true)
		rec.Envelope.Callback.Auth = auth
		return s.Send(context.Background(), rec, 1)
	}
	// Each caller's certificate goes with its own callbacks only, even over
	// pooled connections.
	for _, name := range []string{"billing", "partner", "billing"} {
		if res := send(&rules.CallbackAuth{Type: rules.CallbackAuthMTLS, CertRef: name + ".crt", KeyRef: name + ".key"}); res.Outcome != Delivered {
			t.Fatalf("%s: %+v", name, res)
		}
	}
	if strings.Join(rc.cns, ",") != "billing,partner,billing" {
		t.Fatalf("client certificates seen %v", rc.cns)
	}
	if res := send(nil); res.Outcome != Retry {
		t.Fatalf("without a certificate the receiver must refuse the handshake: %+v", res)
	}
	res := send(&rules.CallbackAuth{Type: rules.CallbackAuthMTLS, CertRef: "billing.crt", KeyRef: "bad.key"})
	if res.Outcome != Retry || !strings.Contains(res.Attempt.Error, "billing.crt") || strings.Contains(res.Attempt.Error, "BEGIN") {
		t.Fatalf("a bad key must fail the attempt naming the references, not the PEM: %+v", res)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key))
	return must(x509.ParseCertificate(der)), key
}

func issueDER(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) ([]byte, *ecdsa.PrivateKey) {
	key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = append(tmpl.IPAddresses, []byte{127, 0, 0, 1})
	}
	return must(x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)), key
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) tls.Certificate {
	der, key := issueDER(t, ca, caKey, cn, server)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func issuePEM(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string) (string, string) {
	der, key := issueDER(t, ca, caKey, cn, false)
	kd := must(x509.MarshalECPrivateKey(key))
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}))
}

// TestCallerHostsAtDelivery: a URL the caller chose that is not (or no
// longer) on its callbackHosts is refused before any connection.
func TestCallerHostsAtDelivery(t *testing.T) {
	rc := newAuthReceiver(t, nil)
	for _, tt := range []struct {
		hosts []string
		want  Outcome
	}{{[]string{"127.0.0.1"}, Delivered}, {[]string{"hooks.billing.example"}, Refused}} {
		rec := record(rc.URL, true)
		rec.Envelope.CallbackFromCaller, rec.Envelope.Caller = true, "billing"
		rec.Envelope.Callback.AllowedHosts, rec.Envelope.Callback.CallerHosts = []string{"127.0.0.1"}, tt.hosts
		before := len(rc.hdrs)
		res := NewSender(vault{signing: map[string][]webhook.Secret{"s": nil}}, time.Second).Send(context.Background(), rec, 1)
		if res.Outcome != tt.want || tt.want == Refused && (len(rc.hdrs) != before || !strings.Contains(res.Attempt.Error, "callbackHosts")) {
			t.Fatalf("callerHosts %v: %+v", tt.hosts, res)
		}
	}
}
