package collector

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// callerRules is a live RuleSource with callers.
type callerRules struct {
	rules   map[string]rules.Rule
	callers map[string]rules.Caller
}

func (l callerRules) Rule(name string) (*rules.Rule, bool) {
	r, ok := l.rules[name]
	return &r, ok
}

func (l callerRules) Caller(name string) (*rules.Caller, bool) {
	c, ok := l.callers[name]
	return &c, ok
}

// TestIntakeTrustsOnlySignedCallers plays something on the collector's
// loopback port (the service's container, a compromised neighbour) that
// posts envelopes naming a caller to borrow its signing secret: refused
// unless the filter signed the envelope, and unless the live rule admits
// that caller. Nothing refused is stored.
func TestIntakeTrustsOnlySignedCallers(t *testing.T) {
	e := newEnv(t)
	billingSecret := webhook.NewSecret()
	e.secrets["billing-signing"] = billingSecret
	e.stop()
	live := callerRules{
		rules: map[string]rules.Rule{
			"r":      {Name: "r", Mode: rules.ModeAsync, Timeout: rules.Duration(5 * time.Second), Retry: rules.Retry{MaxAttempts: 3}},
			"closed": {Name: "closed", Mode: rules.ModeAsync, Callers: []string{"partner"}, Timeout: rules.Duration(5 * time.Second), Retry: rules.Retry{MaxAttempts: 3}},
		},
		callers: map[string]rules.Caller{
			"billing": {Name: "billing", Signing: []rules.SigningSecret{{SecretRef: "billing-signing"}}},
			"partner": {Name: "partner"},
		},
	}
	previous := []byte("the-previous-replay-secret-of-32-bytes")
	e.tune = func(c *Config) { c.Rules, c.IntakeSecrets = live, [][]byte{replaySecret, previous} }
	e.start()
	for _, r := range []string{"r", "closed"} {
		rr := live.rules[r]
		rr.Callback = rules.Callback{URL: e.receiver.URL, Protocol: rules.ProtocolHTTP, AllowPrivate: true}
		live.rules[r] = rr
	}

	tests := []struct {
		name, rule, caller, principal string
		sign                          func(body []byte) string
		want                          int
	}{
		{"unsigned caller", "r", "billing", "spiffe://x/ns/billing/sa/a", nil, 403},
		{"unsigned principal alone", "r", "", "spiffe://x/ns/billing/sa/a", nil, 403},
		{"signed with another secret", "r", "billing", "", func(b []byte) string { return replay.SignIntake([]byte("an-attacker-made-up-secret-of-32-bytes"), b) }, 403},
		{"signature of another envelope", "r", "billing", "", func([]byte) string { return replay.SignIntake(replaySecret, []byte(`{}`)) }, 403},
		{"a caller not declared", "r", "ghost", "", func(b []byte) string { return replay.SignIntake(replaySecret, b) }, 403},
		{"a caller the rule does not admit", "closed", "billing", "", func(b []byte) string { return replay.SignIntake(replaySecret, b) }, 403},
		{"anonymous on a rule for some callers", "closed", "", "", nil, 403},
		{"signed", "r", "billing", "spiffe://x/ns/billing/sa/a", func(b []byte) string { return replay.SignIntake(replaySecret, b) }, 201},
		{"signed with the previous secret (rotation)", "r", "billing", "", func(b []byte) string { return replay.SignIntake(previous, b) }, 201},
		{"anonymous", "r", "", "", nil, 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			en := e.envelope("/work", []byte("x"))
			en.Rule, en.Caller, en.Principal = tt.rule, tt.caller, tt.principal
			data, _ := json.Marshal(en)
			req, _ := http.NewRequest("POST", e.api.URL+"/v1/intake", bytes.NewReader(data))
			if tt.sign != nil {
				req.Header.Set(replay.IntakeHeader, tt.sign(data))
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]string
			json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != tt.want {
				t.Fatalf("intake answered %d %v, want %d", resp.StatusCode, body, tt.want)
			}
			code, rec := e.get("/v1/requests/" + en.ID + "?wait=5s")
			if tt.want != 201 {
				if body["error"] != "caller_refused" || code != 404 {
					t.Fatalf("refused with %v, and the record reads %d: want caller_refused and nothing stored", body, code)
				}
				return
			}
			if rec["status"] != "delivered" {
				t.Fatalf("record %v", rec)
			}
			e.mu.Lock()
			payload, h := e.payloads[en.ID], e.headers[en.ID]
			e.mu.Unlock()
			sec, _ := webhook.ParseSecret(billingSecret)
			signedByBilling := webhook.Verify(h, payload, []webhook.Secret{sec}, time.Now()) == nil
			if signedByBilling != (tt.caller == "billing") {
				t.Fatalf("callback signed with billing's secret: %v, for caller %q", signedByBilling, tt.caller)
			}
		})
	}
}
