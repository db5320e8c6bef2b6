package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

const callerHostsConfig = `{
  "collectorCluster": "asyncmesh_collector",
  "replaySecretEnv": "ASYNCMESH_TEST_REPLAY_SECRET",
  "rules": [
    {"name": "listed", "match": {"pathPrefix": "/listed"}, "mode": "async",
     "callback": {"url": "http://10.1.2.3/cb", "allowOverride": true,
                  "allowedHosts": ["hooks.example.com", "*.partner.example", "127.0.0.1"], "allowPrivate": true}},
    {"name": "mq", "match": {"pathPrefix": "/mq"}, "mode": "async",
     "callback": {"url": "amqp://mq.internal/?exchange=x", "protocol": "amqp", "credentialsRef": "mq", "allowOverride": true,
                  "allowedHosts": ["*.partner.example"], "allowNetworks": ["10.0.0.0/8"]}},
    {"name": "open", "match": {"pathPrefix": "/open"}, "mode": "async",
     "callback": {"url": "https://hooks.example.com/cb", "allowOverride": true}}
  ]
}`

// TestCallerCallbackHosts plays a caller who names a callback outside the
// rule's callback.allowedHosts: 400 naming x-async-callback, nothing sent to
// the collector. An accepted caller URL carries no credentials, and the
// private allowance only for a listed host.
func TestCallerCallbackHosts(t *testing.T) {
	tests := []struct {
		name, path string
		hdrs       []string
		status     int // 0: accepted
		private    bool
	}{
		{"metadata", "/listed", []string{"x-async-callback", "http://169.254.169.254/latest/meta-data/"}, 400, false},
		{"loopback by name", "/listed", []string{"x-async-callback", "http://localhost:8080/cb"}, 400, false},
		{"suffix look-alike", "/listed", []string{"x-async-callback", "https://evilpartner.example/cb"}, 400, false},
		{"the domain itself", "/listed", []string{"x-async-callback", "https://partner.example/cb"}, 400, false},
		{"protocol alone: the rule's URL is not listed", "/listed", []string{"x-async-callback-protocol", "soap"}, 400, false},
		{"broker outside the list", "/mq", []string{"x-async-callback", "amqp://10.0.0.7/?exchange=x"}, 400, false},
		{"listed host", "/listed", []string{"x-async-callback", "https://hooks.example.com/cb"}, 0, true},
		{"listed suffix", "/listed", []string{"x-async-callback", "https://a.partner.example/cb"}, 0, true},
		{"listed broker: no credentials", "/mq", []string{"x-async-callback", "amqps://mq.a.partner.example/?exchange=x"}, 0, false},
		{"listed loopback", "/listed", []string{"x-async-callback", "http://127.0.0.1:7000/cb"}, 0, true},
		{"no list: any host, no allowance", "/open", []string{"x-async-callback", "http://10.0.0.1/cb"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, callerHostsConfig)
			h.request("POST", tt.path, nil, tt.hdrs...)
			if tt.status != 0 {
				if h.host.Local == nil || h.host.Local.Status != tt.status || len(h.host.Calls) != 0 {
					t.Fatalf("want %d and no intake, got %+v (%d calls)", tt.status, h.host.Local, len(h.host.Calls))
				}
				var body map[string]string
				if err := json.Unmarshal(h.host.Local.Body, &body); err != nil || body["error"] != "callback_not_allowed" ||
					!strings.HasPrefix(body["message"], "x-async-callback: ") || !strings.Contains(body["message"], "allowedHosts") {
					t.Fatalf("error body %s", h.host.Local.Body)
				}
				return
			}
			if len(h.host.Calls) != 1 {
				t.Fatalf("not accepted: %+v", h.host.Local)
			}
			env, err := envelope.Decode(h.host.Calls[0].Body)
			if err != nil {
				t.Fatal(err)
			}
			if !env.CallbackFromCaller || env.Callback.CredentialsRef != "" || env.Callback.AllowPrivate != tt.private ||
				(len(env.Callback.AllowNetworks) > 0) != (tt.path == "/mq") {
				t.Fatalf("envelope callback %+v (from caller %v)", env.Callback, env.CallbackFromCaller)
			}
		})
	}
}
