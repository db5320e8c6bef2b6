package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/replay"
)

const callersConfig = `{
  "collectorCluster": "asyncmesh_collector",
  "replaySecretEnv": "ASYNCMESH_TEST_REPLAY_SECRET",
  "callers": [
    {"name": "billing", "identity": {"principals": ["spiffe://cluster.local/ns/billing/*"]},
     "callbackHosts": ["hooks.billing.example"],
     "signing": [{"secretRef": "billing-signing"}], "auth": {"type": "bearer", "secretRef": "billing-token"}},
    {"name": "partner", "identity": {"jwt": {"issuer": "https://auth.example", "subjects": ["partner-app"]}}}
  ],
  "rules": [
    {"name": "billing-only", "package": "billing", "match": {"pathPrefix": "/billing"}, "mode": "async", "callers": ["billing"],
     "callback": {"url": "http://hooks.rule.example/cb", "secretRef": "rule", "allowOverride": true,
                  "auth": {"type": "bearer", "secretRef": "rule-token"}}},
    {"name": "open", "match": {"pathPrefix": "/open"}, "mode": "async",
     "callback": {"url": "http://hooks.rule.example/cb", "secretRef": "rule", "allowOverride": true}}
  ]
}`

const (
	sanProp = "connection.uri_san_peer_certificate"
	issProp = "metadata.filter_metadata.envoy.filters.http.jwt_authn.jwt_payload.iss"
	subProp = "metadata.filter_metadata.envoy.filters.http.jwt_authn.jwt_payload.sub"
)

// TestCallerIdentity plays callers who are not who a rule admits, or who
// claim an identity by header: the filter goes by Envoy's properties only,
// answers 403 before any intake, and signs the envelope of a recognized
// caller so that the collector can trust its name.
func TestCallerIdentity(t *testing.T) {
	tests := []struct {
		name       string
		path       string
		props      map[string]string
		hdrs       []string
		status     int // 0: accepted
		wantCaller string
		wantPrin   string
		wantSecret string // the envelope's signing
	}{
		{"billing by its certificate", "/billing", map[string]string{sanProp: "spiffe://cluster.local/ns/billing/sa/web"}, nil, 0, "billing", "spiffe://cluster.local/ns/billing/sa/web", "billing-signing"},
		{"anonymous on a billing-only rule", "/billing", nil, nil, 403, "", "", ""},
		{"another namespace", "/billing", map[string]string{sanProp: "spiffe://cluster.local/ns/other/sa/web"}, nil, 403, "", "", ""},
		{"a header claiming the identity", "/billing", nil, []string{"x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/billing/sa/web", "x-async-caller", "billing"}, 403, "", "", ""},
		{"partner by its JWT, on a rule for billing", "/billing", map[string]string{issProp: "https://auth.example", subProp: "partner-app"}, nil, 403, "", "", ""},
		{"partner by its JWT", "/open", map[string]string{issProp: "https://auth.example", subProp: "partner-app"}, nil, 0, "partner", "jwt:partner-app@https://auth.example", ""},
		{"a JWT of another subject is anonymous", "/open", map[string]string{issProp: "https://auth.example", subProp: "x"}, nil, 0, "", "", ""},
		{"anonymous on an open rule", "/open", nil, nil, 0, "", "", ""},
		{"billing names its own host", "/billing", map[string]string{sanProp: "spiffe://cluster.local/ns/billing/sa/web"}, []string{"x-async-callback", "https://hooks.billing.example/cb"}, 0, "billing", "spiffe://cluster.local/ns/billing/sa/web", "billing-signing"},
		{"billing names a host not its own", "/billing", map[string]string{sanProp: "spiffe://cluster.local/ns/billing/sa/web"}, []string{"x-async-callback", "https://hooks.partner.example/cb"}, 400, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, callersConfig)
			for k, v := range tt.props {
				h.host.Props[k] = []byte(v)
			}
			h.request("POST", tt.path, nil, tt.hdrs...)
			if tt.status != 0 {
				if h.host.Local == nil || h.host.Local.Status != tt.status || len(h.host.Calls) != 0 {
					t.Fatalf("want %d and no intake, got %+v (%d calls)", tt.status, h.host.Local, len(h.host.Calls))
				}
				var body map[string]string
				json.Unmarshal(h.host.Local.Body, &body)
				if tt.status == 403 && (body["error"] != "caller_not_allowed" || !strings.Contains(body["message"], "billing-only")) {
					t.Fatalf("error body %s", h.host.Local.Body)
				}
				return
			}
			if len(h.host.Calls) != 1 {
				t.Fatalf("not accepted: %+v", h.host.Local)
			}
			call := h.host.Calls[0]
			env, err := envelope.Decode(call.Body)
			if err != nil {
				t.Fatal(err)
			}
			if wantPkg := map[string]string{"/billing": "billing"}[tt.path]; env.Package != wantPkg {
				t.Fatalf("envelope package %q, want %q", env.Package, wantPkg)
			}
			if env.Caller != tt.wantCaller || env.Principal != tt.wantPrin {
				t.Fatalf("envelope caller %q principal %q, want %q %q", env.Caller, env.Principal, tt.wantCaller, tt.wantPrin)
			}
			sig := ""
			for _, hd := range call.Headers {
				if hd[0] == replay.IntakeHeader {
					sig = hd[1]
				}
			}
			if (sig != "") != (tt.wantCaller != "") {
				t.Fatalf("intake signature %q for caller %q", sig, tt.wantCaller)
			}
			if sig != "" && replay.VerifyIntake([][]byte{[]byte(testReplaySecret)}, sig, call.Body) != nil {
				t.Fatal("intake signature does not verify")
			}
			cb := env.Callback
			switch {
			case tt.wantSecret != "" && (len(cb.Signing) != 1 || cb.Signing[0].SecretRef != tt.wantSecret || cb.SecretRef != ""):
				t.Fatalf("callback signing %+v / %q, want the caller's %s", cb.Signing, cb.SecretRef, tt.wantSecret)
			case tt.wantSecret == "" && (len(cb.Signing) != 0 || cb.SecretRef != "rule"):
				t.Fatalf("callback signing %+v / %q, want the rule's", cb.Signing, cb.SecretRef)
			case env.CallbackFromCaller && cb.Auth != nil && cb.Auth.SecretRef != "billing-token":
				t.Fatalf("a caller-chosen callback borrowed auth %+v", cb.Auth)
			}
		})
	}
}

// TestAnonymousWithoutCallers: without callers, envelopes name no caller
// whatever Envoy's properties say, and are not signed (no HMAC on the
// async path).
func TestAnonymousWithoutCallers(t *testing.T) {
	h := newHarness(t)
	h.host.Props[sanProp] = []byte("spiffe://cluster.local/ns/billing/sa/web")
	h.request("POST", "/slow", nil)
	env, err := envelope.Decode(h.host.Calls[0].Body)
	if err != nil || env.Caller != "" || env.Principal != "" {
		t.Fatalf("envelope %+v, %v", env, err)
	}
	for _, hd := range h.host.Calls[0].Headers {
		if hd[0] == replay.IntakeHeader {
			t.Fatal("an anonymous envelope was signed")
		}
	}
}
