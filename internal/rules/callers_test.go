package rules

import (
	"strings"
	"testing"
	"time"
)

const callersCfg = `{"collectorCluster":"c","replaySecretEnv":"S","callers":[
	{"name":"billing","identity":{"principals":["spiffe://cluster.local/ns/billing/*"]},
	 "callbackHosts":["hooks.billing.example"],
	 "signing":[{"secretRef":"billing-new"},{"secretRef":"billing-old","until":"2026-12-20T00:00:00Z"}],
	 "auth":{"type":"bearer","secretRef":"billing-token"},
	 "encryption":{"type":"jwe","keyRef":"billing-key"}},
	{"name":"partner","identity":{"principals":["spiffe://cluster.local/ns/partner/sa/app"],
	 "jwt":{"issuer":"https://auth.example","subjects":["partner-app"]}}},
	{"name":"any-of-issuer","identity":{"jwt":{"issuer":"https://other.example"}}}],
 "rules":[
	{"name":"only-billing","mode":"async","callers":["billing"],"match":{"pathPrefix":"/b"},"callback":{"url":"http://x/cb","secretRef":"rule"}},
	{"name":"open","mode":"async","match":{"pathPrefix":"/o"},"callback":{"url":"http://x/cb","secretRef":"rule","allowOverride":true}}]}`

func TestIdentify(t *testing.T) {
	cfg, err := Parse([]byte(callersCfg))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                 string
		san, iss, sub        string
		wantCaller, wantPrin string
	}{
		{"spiffe prefix", "spiffe://cluster.local/ns/billing/sa/frontend", "", "", "billing", "spiffe://cluster.local/ns/billing/sa/frontend"},
		{"prefix needs a segment below", "spiffe://cluster.local/ns/billing", "", "", "", ""},
		{"prefix is not a string prefix", "spiffe://cluster.local/ns/billing-evil/sa/x", "", "", "", ""},
		{"exact", "spiffe://cluster.local/ns/partner/sa/app", "", "", "partner", "spiffe://cluster.local/ns/partner/sa/app"},
		{"exact only", "spiffe://cluster.local/ns/partner/sa/app2", "", "", "", ""},
		{"jwt subject", "", "https://auth.example", "partner-app", "partner", "jwt:partner-app@https://auth.example"},
		{"jwt other subject", "", "https://auth.example", "someone", "", ""},
		{"jwt any subject", "", "https://other.example", "anyone", "any-of-issuer", "jwt:anyone@https://other.example"},
		{"jwt without subject", "", "https://other.example", "", "", ""},
		{"nothing", "", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p := cfg.Identify(tt.san, tt.iss, tt.sub)
			got := ""
			if c != nil {
				got = c.Name
			}
			if got != tt.wantCaller || p != tt.wantPrin {
				t.Fatalf("Identify = %q %q, want %q %q", got, p, tt.wantCaller, tt.wantPrin)
			}
		})
	}
}

func TestRuleAdmitsItsCallers(t *testing.T) {
	cfg, err := Parse([]byte(callersCfg))
	if err != nil {
		t.Fatal(err)
	}
	billing, _ := cfg.Caller("billing")
	partner, _ := cfg.Caller("partner")
	only, open := &cfg.Rules[0], &cfg.Rules[1]
	if only.CheckCaller(billing) != nil || only.CheckCaller(partner) == nil || only.CheckCaller(nil) == nil {
		t.Fatal("a rule limited to billing must admit billing only")
	}
	if open.CheckCaller(nil) != nil || open.CheckCaller(partner) != nil {
		t.Fatal("a rule without callers admits everyone")
	}
}

func TestWithCaller(t *testing.T) {
	cfg, err := Parse([]byte(callersCfg))
	if err != nil {
		t.Fatal(err)
	}
	billing, _ := cfg.Caller("billing")
	partner, _ := cfg.Caller("partner")
	rule := cfg.Rules[1].Callback
	rule.Auth = &CallbackAuth{Type: CallbackAuthBearer, SecretRef: "rule-token"}

	cb := rule.WithCaller(billing)
	if cb.SecretRef != "" || len(cb.Signing) != 2 || cb.Auth.SecretRef != "billing-token" || cb.Encryption.KeyRef != "billing-key" {
		t.Fatalf("billing's callback = %+v: want its signing, auth and key", cb)
	}
	if cb := rule.WithCaller(partner); cb.SecretRef != "rule" || cb.Auth.SecretRef != "rule-token" {
		t.Fatalf("a caller without settings keeps the rule's: %+v", cb)
	}
	// A caller-chosen URL loses the rule's auth first, then gets only the
	// caller's own.
	if cb := rule.ForCaller().WithCaller(partner); cb.Auth != nil {
		t.Fatalf("a caller-chosen URL got the rule's auth: %+v", cb.Auth)
	}
	if cb := rule.ForCaller().WithCaller(billing); cb.Auth == nil || cb.Auth.SecretRef != "billing-token" {
		t.Fatalf("a caller-chosen URL must carry the caller's own auth: %+v", cb.Auth)
	}
	amqp := Callback{URL: "amqp://b/v?exchange=e", Protocol: ProtocolAMQP, CredentialsRef: "broker"}
	if cb := amqp.WithCaller(billing); cb.Auth != nil || cb.Encryption == nil {
		t.Fatalf("amqp takes the caller's key but no receiver auth: %+v", cb)
	}
}

func TestSigningUntil(t *testing.T) {
	cfg, err := Parse([]byte(callersCfg))
	if err != nil {
		t.Fatal(err)
	}
	billing, _ := cfg.Caller("billing")
	end := time.Date(2026, 12, 20, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		at   time.Time
		want int
	}{{end.Add(-time.Second), 2}, {end, 1}, {end.Add(time.Hour), 1}} {
		n := 0
		for _, s := range billing.Signing {
			if s.Active(tt.at) {
				n++
			}
		}
		if n != tt.want {
			t.Errorf("at %s: %d secrets sign, want %d", tt.at, n, tt.want)
		}
	}
	// Decoded from an envelope, without validation: parsed at use.
	if !(SigningSecret{SecretRef: "x", Until: "2099-01-01T00:00:00Z"}).Active(end) || (SigningSecret{SecretRef: "x", Until: "bogus"}).Active(end) {
		t.Fatal("an unvalidated until must be parsed, and a bad one never signs")
	}
}

func TestCallerValidation(t *testing.T) {
	caller := func(c string) string {
		return `{"collectorCluster":"c","replaySecretEnv":"S","callers":[` + c + `],"rules":[]}`
	}
	tests := []struct{ name, cfg, want string }{
		{"no identity", caller(`{"name":"a","identity":{}}`), "callers[0].identity: want principals, jwt or both"},
		{"bad name", caller(`{"name":"a b","identity":{"principals":["spiffe://d/x"]}}`), "callers[0].name"},
		{"bad principal", caller(`{"name":"a","identity":{"principals":["not a uri"]}}`), "callers[0].identity.principals[0]"},
		{"star inside", caller(`{"name":"a","identity":{"principals":["spiffe://d/*/sa"]}}`), "a * only as the last path segment"},
		{"no issuer", caller(`{"name":"a","identity":{"jwt":{"subjects":["s"]}}}`), "identity.jwt.issuer: required"},
		{"bad host", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"callbackHosts":["*"]}`), "callers[0].callbackHosts[0]"},
		{"bad until", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"signing":[{"secretRef":"s","until":"tomorrow"}]}`), "callers[0].signing[0].until"},
		{"too many secrets", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"signing":[{"secretRef":"1"},{"secretRef":"2"},{"secretRef":"3"},{"secretRef":"4"},{"secretRef":"5"}]}`), "at most 4"},
		{"bearer without token", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"auth":{"type":"bearer"}}`), "callers[0].auth.secretRef: required"},
		{"oauth2 url", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"auth":{"type":"oauth2","clientId":"c","secretRef":"s","tokenUrl":"ftp://x"}}`), "callers[0].auth.tokenUrl"},
		{"mtls key", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"auth":{"type":"mtls","certRef":"c"}}`), "callers[0].auth.certRef"},
		{"auth type", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]},"auth":{"type":"basic"}}`), "not bearer, oauth2 or mtls"},
		{"duplicate name", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]}},{"name":"a","identity":{"principals":["spiffe://d/y"]}}`), "callers[1].name: duplicate"},
		{"shared principal", caller(`{"name":"a","identity":{"principals":["spiffe://d/x"]}},{"name":"b","identity":{"principals":["spiffe://d/x"]}}`), "callers[1].identity.principals[0]: \"spiffe://d/x\" is already caller a's"},
		{"no replay secret", `{"collectorCluster":"c","callers":[{"name":"a","identity":{"principals":["spiffe://d/x"]}}],"rules":[]}`, "replaySecretEnv: required with callers"},
		{"undeclared caller", `{"collectorCluster":"c","rules":[{"name":"r","mode":"async","callers":["ghost"],"callback":{"url":"http://x"}}]}`, `rules[0].callers[0]: "ghost" is not declared`},
		{"rule signing", `{"collectorCluster":"c","rules":[{"name":"r","mode":"async","callback":{"url":"http://x","signing":[{"secretRef":"s"}]}}]}`, "rules[0].callback.signing"},
		{"rule auth on amqp", `{"collectorCluster":"c","rules":[{"name":"r","mode":"async","callback":{"url":"amqp://b/v?exchange=e","protocol":"amqp","auth":{"type":"bearer","secretRef":"t"}}}]}`, "rules[0].callback.auth.type: not for protocol amqp"},
		{"rule auth without url", `{"collectorCluster":"c","rules":[{"name":"r","mode":"async","callback":{"allowOverride":true,"auth":{"type":"bearer","secretRef":"t"}}}]}`, "rules[0].callback.auth: never sent to a caller-chosen URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.cfg))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestCheckCallerHost(t *testing.T) {
	cfg, err := Parse([]byte(callersCfg))
	if err != nil {
		t.Fatal(err)
	}
	billing, _ := cfg.Caller("billing")
	partner, _ := cfg.Caller("partner")
	if err := billing.CheckCallerHost("https://hooks.billing.example/cb"); err != nil {
		t.Fatal(err)
	}
	if err := billing.CheckCallerHost("https://hooks.partner.example/cb"); err == nil {
		t.Fatal("billing pointed a callback outside its callbackHosts")
	}
	if err := partner.CheckCallerHost("https://anywhere.example/cb"); err != nil {
		t.Fatal("a caller without callbackHosts is limited by the rule only:", err)
	}
}
