package rules

import (
	"strings"
	"testing"
	"time"
)

func TestParseErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name, cfg, want string
	}{
		{"unknown key", `{"collectorCluster":"c","bogus":1}`, `unknown field "bogus"`},
		{"no cluster", `{"rules":[]}`, "collectorCluster: required"},
		{"bad mode", `{"collectorCluster":"c","rules":[{"name":"a","mode":"later"}]}`, "rules[0].mode"},
		{"bad regex", `{"collectorCluster":"c","rules":[{"name":"a","mode":"sync","match":{"pathRegex":"("}}]}`, "match.pathRegex"},
		{"bad url", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"ftp://x"}}]}`, "callback.url"},
		{"no url", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async"}]}`, "callback.url: required"},
		{"duplicate", `{"collectorCluster":"c","rules":[{"name":"a","mode":"sync"},{"name":"a","mode":"sync"}]}`, "duplicate rule name"},
		{"bad duration", `{"collectorCluster":"c","collectorTimeout":"soon"}`, "collectorTimeout"},
		{"wrong type", `{"collectorCluster":"c","rules":[{"name":"a","mode":"sync","bodyLimit":"big"}]}`, "bodyLimit"},
		{"bad protocol", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x","protocol":"smtp"}}]}`, "callback.protocol"},
		{"empty untagged", `{"collectorCluster":"c","untagged":[{}]}`, "untagged[0]: want host, pathPrefix or both"},
		{"untagged path", `{"collectorCluster":"c","untagged":[{"pathPrefix":"healthz"}]}`, "untagged[0].pathPrefix"},
		{"untagged host", `{"collectorCluster":"c","untagged":[{"pathPrefix":"/h"},{"host":"a b"}]}`, "untagged[1].host"},
		{"window too long", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"idempotencyWindow":"169h"}]}`, "rules[0].idempotencyWindow: 169h0m0s is outside 1s..168h0m0s"},
		{"window too short", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"idempotencyWindow":"1ms"}]}`, "rules[0].idempotencyWindow"},
		{"window negative", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"idempotencyWindow":"-1h"}]}`, "idempotencyWindow"},
		{"untagged regex host", `{"collectorCluster":"c","untagged":[{"host":".*"}]}`, "untagged[0].host"},
		{"ordering none", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{}}]}`, "rules[0].ordering: want exactly one of header, query or jsonField"},
		{"ordering two", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{"header":"x-a","query":"a"}}]}`, "rules[0].ordering: want exactly one"},
		{"ordering upper header", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{"header":"X-Account"}}]}`, "rules[0].ordering.header"},
		{"ordering own header", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{"header":"x-async-callback"}}]}`, "rules[0].ordering.header"},
		{"ordering bad path", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{"jsonField":"a..b"}}]}`, "rules[0].ordering.jsonField"},
		{"ordering unknown key", `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"},"ordering":{"cookie":"a"}}]}`, `unknown field "cookie"`},
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

func TestMatch(t *testing.T) {
	cfg, err := Parse([]byte(`{"collectorCluster":"c","rules":[
		{"name":"exception","mode":"sync","match":{"pathPrefix":"/slow/health"}},
		{"name":"slow","mode":"async","match":{"pathPrefix":"/slow","methods":["POST"]},"callback":{"url":"http://x/cb"}},
		{"name":"host","mode":"opt-in","match":{"host":"*.example.com","pathRegex":"^/r/[0-9]+$"},"callback":{"url":"http://x/cb"}},
		{"name":"route","mode":"async","match":{"route":"reports"},"callback":{"url":"http://x/cb"}}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		req  Request
		want string
	}{
		{Request{Method: "POST", Path: "/slow/report?x=1"}, "slow"},
		{Request{Method: "GET", Path: "/slow/report"}, ""},
		{Request{Method: "POST", Path: "/slow/health"}, "exception"},
		{Request{Method: "GET", Authority: "api.example.com:8080", Path: "/r/12"}, "host"},
		{Request{Method: "GET", Authority: "example.com", Path: "/r/12"}, ""},
		{Request{Method: "GET", Authority: "api.example.com", Path: "/r/x"}, ""},
		{Request{Method: "GET", Route: "reports", Path: "/"}, "route"},
	}
	for _, tt := range tests {
		got := ""
		if r := cfg.Match(tt.req); r != nil {
			got = r.Name
		}
		if got != tt.want {
			t.Errorf("Match(%+v) = %q, want %q", tt.req, got, tt.want)
		}
	}
	if !cfg.NeedsRoute() {
		t.Error("NeedsRoute = false with a route rule")
	}
	slow := cfg.Match(Request{Method: "POST", Path: "/slow"})
	if slow.BodyLimit != DefaultBodyLimit || slow.Retry.MaxAttempts != DefaultMaxAttempts || slow.OnCollectorDown != CollectorDownReject || slow.Callback.Protocol != ProtocolHTTP {
		t.Errorf("defaults not applied: %+v", slow)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"}}]}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Parse([]byte(s))
		if err == nil {
			cfg.Match(Request{Method: "GET", Path: "/x", Authority: "h"})
		}
	})
}

func TestAnnotated(t *testing.T) {
	cfg, err := Parse([]byte(`{"collectorCluster":"c","rules":[
		{"name":"slow","mode":"async","match":{"pathPrefix":"/slow"},"callback":{"url":"http://x/cb"}},
		{"name":"bare","mode":"opt-in","callback":{"allowOverride":true}},
		{"name":"quiet","mode":"sync","callback":{"url":"http://x/cb"}},
		{"name":"broken","mode":"sync","callback":{"url":"http://x/cb"},"retry":{"maxAttempts":1000}}
	]}`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kv       [][2]string
		mode     Mode
		callback string
		err      string
	}{
		{[][2]string{{"rule", "slow"}}, ModeAsync, "http://x/cb", ""},
		{[][2]string{{"rule", "slow"}, {"mode", "sync"}}, ModeSync, "http://x/cb", ""},
		{[][2]string{{"rule", "slow"}, {"callback", "https://y/cb"}}, ModeAsync, "https://y/cb", ""},
		{[][2]string{{"rule", "bare"}, {"mode", "async"}}, ModeAsync, "", ""},
		{[][2]string{{"mode", "async"}}, "", "", "rule: required"},
		{[][2]string{{"rule", "nope"}}, "", "", "not in the configuration"},
		{[][2]string{{"rule", "slow"}, {"mode", "later"}}, "", "", "mode"},
		{[][2]string{{"rule", "slow"}, {"callback", "ftp://y"}}, "", "", "callback"},
		{[][2]string{{"rule", "slow"}, {"color", "red"}}, "", "", "unknown key"},
		// A sync rule made async is checked as an async one, with its defaults.
		{[][2]string{{"rule", "quiet"}, {"mode", "async"}}, ModeAsync, "http://x/cb", ""},
		{[][2]string{{"rule", "broken"}, {"mode", "async"}}, "", "", "retry.maxAttempts"},
	}
	for _, tt := range tests {
		r, err := cfg.Annotated(tt.kv)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Annotated(%v) = %v, want error with %q", tt.kv, err, tt.err)
			}
			continue
		}
		if err != nil || r.Mode != tt.mode || r.Callback.URL != tt.callback {
			t.Errorf("Annotated(%v) = %+v, %v", tt.kv, r, err)
		}
		if err == nil && r.Mode == ModeAsync && (r.BodyLimit == 0 || r.Timeout == 0 || r.Retry.MaxAttempts == 0) {
			t.Errorf("Annotated(%v): an async rule without its defaults: %+v", tt.kv, r)
		}
	}
	if cfg.Rules[0].Mode != ModeAsync {
		t.Fatal("Annotated changed the configured rule")
	}
}

func TestIdempotencyWindow(t *testing.T) {
	for _, tc := range []struct {
		window string // "" leaves it unset
		want   time.Duration
	}{
		{"", 24 * time.Hour},
		{`"0s"`, 0},
		{`"10m"`, 10 * time.Minute},
		{`"168h"`, 168 * time.Hour},
	} {
		extra := ""
		if tc.window != "" {
			extra = `,"idempotencyWindow":` + tc.window
		}
		c, err := Parse([]byte(`{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://x"}` + extra + `}]}`))
		if err != nil {
			t.Fatalf("window %s: %v", tc.window, err)
		}
		if got := c.Rules[0].Idempotency(); got != tc.want {
			t.Errorf("window %s: Idempotency() = %s, want %s", tc.window, got, tc.want)
		}
	}
}

// TestValidOrderKey: ordering keys are bounded printable ASCII; the filter
// and the collector refuse anything else.
func TestValidOrderKey(t *testing.T) {
	for _, tt := range []struct {
		key  string
		want bool
	}{
		{"account-1", true}, {"a b/c:d", true}, {strings.Repeat("k", MaxOrderKeyLen), true},
		{"", false}, {strings.Repeat("k", MaxOrderKeyLen+1), false}, {"a\nb", false}, {"a\x00", false}, {"ключ", false},
	} {
		if got := ValidOrderKey(tt.key); got != tt.want {
			t.Errorf("ValidOrderKey(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
}
