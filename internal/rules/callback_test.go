package rules

import (
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

func TestCallbackValidation(t *testing.T) {
	rule := func(cb string) string {
		return `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":` + cb + `}]}`
	}
	tests := []struct{ name, cb, want string }{
		{"grpc", `{"url":"grpc://h:9000","protocol":"grpc"}`, ""},
		{"grpc with http scheme", `{"url":"http://h:9000","protocol":"grpc"}`, "callback.url"},
		{"amqp", `{"url":"amqp://h/vh?exchange=x&routingKey=k","protocol":"amqp","credentialsRef":"mq"}`, ""},
		{"amqp without exchange", `{"url":"amqp://h/","protocol":"amqp"}`, "want ?exchange"},
		{"amqp user info", `{"url":"amqp://u:p@h/?exchange=x","protocol":"amqp"}`, "user info"},
		{"amqp unknown param", `{"url":"amqp://h/?exchange=x&q=1","protocol":"amqp"}`, "unknown query parameter"},
		{"credentials on http", `{"url":"http://h/","credentialsRef":"mq"}`, "callback.credentialsRef"},
		{"soapAction on http", `{"url":"http://h/","soapAction":"x"}`, "callback.soapAction"},
		{"bad network", `{"url":"http://h/","allowNetworks":["10.0.0.0"]}`, "callback.allowNetworks[0]"},
		{"select", `{"select":{"header":"x-t","default":"a","targets":{"a":{"url":"http://h/"}}}}`, ""},
		{"select two params", `{"select":{"header":"x-t","query":"t","targets":{"a":{"url":"http://h/"}}}}`, "exactly one"},
		{"select no targets", `{"select":{"query":"t"}}`, "callback.select.targets"},
		{"select bad default", `{"select":{"query":"t","default":"b","targets":{"a":{"url":"http://h/"}}}}`, "callback.select.default"},
		{"select bad target", `{"select":{"query":"t","targets":{"a":{"url":"ftp://h/"}}}}`, "callback.select.targets.a.url"},
		{"select with url", `{"url":"http://h/","select":{"query":"t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select"},
		{"select async header", `{"select":{"header":"x-async-t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select.header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(rule(tt.cb)))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestSOAPActionDefault(t *testing.T) {
	c, err := Parse([]byte(`{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"url":"http://h/","protocol":"soap"}}]}`))
	if err != nil || c.Rules[0].Callback.SOAPAction != SOAPActionDefault {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestParameterValues(t *testing.T) {
	tests := []struct {
		name, in, key, want string
		ok                  bool
		get                 func(string, string) (string, bool)
	}{
		{"query", "/p?a=1&cb=x%2Fy", "cb", "x/y", true, QueryValue},
		{"query first", "/p?cb=1&cb=2", "cb", "1", true, QueryValue},
		{"query absent", "/p?a=1", "cb", "", false, QueryValue},
		{"query no query", "/p", "cb", "", false, QueryValue},
		{"query empty value", "/p?cb=", "cb", "", true, QueryValue},
		{"json nested", `{"a":{"b":"x"}}`, "a.b", "x", true, jsonField},
		{"json number", `{"a":7}`, "a", "7", true, jsonField},
		{"json object", `{"a":{}}`, "a", "", false, jsonField},
		{"json missing", `{"a":{}}`, "a.b", "", false, jsonField},
		{"json array", `[1]`, "a", "", false, jsonField},
		{"json broken", `{"a":`, "a", "", false, jsonField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.get(tt.in, tt.key)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("got %q %v, want %q %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func jsonField(body, path string) (string, bool) { return JSONFieldValue([]byte(body), path) }

func FuzzParameterValues(f *testing.F) {
	f.Add("/p?a=1&cb=x", `{"a":{"b":"x"}}`, "a.b")
	f.Fuzz(func(t *testing.T, path, body, key string) {
		QueryValue(path, key)
		JSONFieldValue([]byte(body), key)
	})
}

func TestPick(t *testing.T) {
	s := &Select{Header: "x-t", Targets: map[string]Callback{"a": {URL: "http://a/"}}}
	if _, _, err := s.Pick("", false); err == nil || !strings.Contains(err.Error(), "header x-t: required") {
		t.Fatalf("missing without default: %v", err)
	}
	if _, _, err := s.Pick("b", true); err == nil || !strings.Contains(err.Error(), `"b" names no callback target`) {
		t.Fatalf("unknown: %v", err)
	}
	if k, cb, err := s.Pick("a", true); err != nil || k != "a" || cb.URL != "http://a/" {
		t.Fatalf("known: %q %+v %v", k, cb, err)
	}
}

// TestCallerOverrideValidation: a rule that lets callers choose the callback
// cannot lend them its private-network allowances without saying where they
// may point it.
func TestCallerOverrideValidation(t *testing.T) {
	rule := func(cb string) string {
		return `{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":` + cb + `}]}`
	}
	tests := []struct{ name, cb, want string }{
		{"override alone", `{"allowOverride":true}`, ""},
		{"override with a url", `{"url":"http://h/","allowOverride":true}`, ""},
		{"override with allowPrivate", `{"url":"http://h/","allowOverride":true,"allowPrivate":true}`, "callback.allowedHosts: required when allowOverride"},
		{"override with allowNetworks", `{"allowOverride":true,"allowNetworks":["127.0.0.0/8"]}`, "callback.allowedHosts: required when allowOverride"},
		{"override, allowPrivate and hosts", `{"allowOverride":true,"allowPrivate":true,"allowedHosts":["127.0.0.1","*.partner.example:8443"]}`, ""},
		{"hosts without override", `{"url":"http://h/","allowedHosts":["h"]}`, "callback.allowedHosts: only with allowOverride"},
		{"credentials without a url of its own", `{"protocol":"amqp","allowOverride":true,"credentialsRef":"mq"}`, "callback.credentialsRef: never sent to a caller-chosen URL"},
		{"credentials with a url of its own", `{"url":"amqp://h/?exchange=x","protocol":"amqp","allowOverride":true,"credentialsRef":"mq"}`, ""},
		{"select with hosts", `{"allowedHosts":["h"],"select":{"query":"t","targets":{"a":{"url":"http://h/"}}}}`, "callback.select"},
		{"target with hosts", `{"select":{"query":"t","targets":{"a":{"url":"http://h/","allowedHosts":["h"]}}}}`, "callback.select.targets.a.allowedHosts"},
		{"bad host: scheme", `{"allowOverride":true,"allowedHosts":["https://h"]}`, "callback.allowedHosts[0]"},
		{"bad host: path", `{"allowOverride":true,"allowedHosts":["h/cb"]}`, "callback.allowedHosts[0]"},
		{"bad host: empty", `{"allowOverride":true,"allowedHosts":["ok.example",""]}`, "callback.allowedHosts[1]"},
		{"bad host: bare wildcard", `{"allowOverride":true,"allowedHosts":["*"]}`, "callback.allowedHosts[0]"},
		{"bad host: top-level wildcard", `{"allowOverride":true,"allowedHosts":["*.com"]}`, "two labels"},
		{"bad host: inner wildcard", `{"allowOverride":true,"allowedHosts":["a.*.example"]}`, "not a host name"},
		{"bad host: port", `{"allowOverride":true,"allowedHosts":["h.example:99999"]}`, "port"},
		{"bad host: empty port", `{"allowOverride":true,"allowedHosts":["h.example:"]}`, "port"},
		{"bad host: zone", `{"allowOverride":true,"allowedHosts":["fe80::1%eth0"]}`, "zone"},
		{"bad host: user", `{"allowOverride":true,"allowedHosts":["u@h.example"]}`, "callback.allowedHosts[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(rule(tt.cb)))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestAllowedHostsNormalized(t *testing.T) {
	c, err := Parse([]byte(`{"collectorCluster":"c","rules":[{"name":"a","mode":"async","callback":{"allowOverride":true,
		"allowedHosts":["Hooks.Example.COM.","[::1]","[::1]:9000","::FFFF:127.0.0.1","*.Partner.example:443"]}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"hooks.example.com", "::1", "[::1]:9000", "127.0.0.1", "*.partner.example:443"}
	if got := c.Rules[0].Callback.AllowedHosts; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("normalized %q, want %q", got, want)
	}
}

func TestCheckCallerURL(t *testing.T) {
	cb := Callback{AllowOverride: true, AllowedHosts: []string{"hooks.example.com", "*.partner.example", "127.0.0.1", "[::1]:9000", "api.example:8443"}}
	tests := []struct {
		url string
		ok  bool
	}{
		{"https://hooks.example.com/cb", true},
		{"https://HOOKS.example.com./cb", true},
		{"http://hooks.example.com:8080/cb", true}, // no port in the pattern: any port
		{"https://a.partner.example/cb", true},
		{"https://a.b.partner.example/cb", true},
		{"https://partner.example/cb", false}, // *.suffix is strictly below the suffix
		{"https://evilpartner.example/cb", false},
		{"https://hooks.example.com.evil.example/cb", false},
		{"https://evil.example/?hooks.example.com", false},
		{"http://127.0.0.1:7000/cb", true},
		{"http://127.0.0.2/cb", false},
		{"http://[::ffff:127.0.0.1]/cb", true},
		{"http://[::1]:9000/cb", true},
		{"http://[::1]:9001/cb", false},
		{"http://[::1]/cb", false},
		{"https://api.example:8443/cb", true},
		{"https://api.example/cb", false}, // default port 443, not 8443
		{"grpcs://api.example:8443", true},
		{"http://169.254.169.254/latest/meta-data/", false},
		{"http://localhost/cb", false},
		{"http://2130706433/cb", false}, // 127.0.0.1 as a number is not the listed address
		{"not a url", false},
	}
	for _, tt := range tests {
		if err := cb.CheckCallerURL(tt.url); (err == nil) != tt.ok {
			t.Errorf("CheckCallerURL(%q) = %v, want ok %v", tt.url, err, tt.ok)
		} else if err != nil && !strings.Contains(err.Error(), "allowedHosts") && tt.url != "not a url" {
			t.Errorf("CheckCallerURL(%q) = %v: the error must name callback.allowedHosts", tt.url, err)
		}
	}
	if err := (&Callback{AllowOverride: true}).CheckCallerURL("https://anywhere.example/"); err != nil {
		t.Errorf("no list: any host (the SSRF guard decides): %v", err)
	}
}

// TestForCaller plays a caller who points the callback at a host of its
// choice on a rule with credentials and private allowances.
func TestForCaller(t *testing.T) {
	rule := Callback{URL: "amqp://mq.internal/?exchange=x", Protocol: ProtocolAMQP, SecretRef: "sig", CredentialsRef: "mq",
		AllowOverride: true, AllowPrivate: true, AllowNetworks: []string{"10.0.0.0/8"}, AllowedHosts: []string{"127.0.0.1"},
		Encryption: &Encryption{Type: EncryptAESGCM, KeyRef: "k"}}
	tests := []struct {
		name, url string
		private   bool
	}{
		{"listed host keeps the private allowance", "amqp://127.0.0.1:5672/?exchange=x", true},
		{"unlisted host loses it", "amqp://169.254.169.254/?exchange=x", false},
	}
	for _, tt := range tests {
		cb := rule
		cb.URL = tt.url
		got := cb.ForCaller()
		if got.CredentialsRef != "" {
			t.Errorf("%s: credentials %q lent to the caller's URL", tt.name, got.CredentialsRef)
		}
		if got.AllowPrivate != tt.private || (len(got.AllowNetworks) > 0) != tt.private {
			t.Errorf("%s: allowPrivate %v allowNetworks %v", tt.name, got.AllowPrivate, got.AllowNetworks)
		}
		if got.SecretRef != "sig" || got.Encryption == nil {
			t.Errorf("%s: signing and encryption must stay: %+v", tt.name, got)
		}
		if again := got.ForCaller(); again.AllowPrivate != got.AllowPrivate || again.CredentialsRef != "" {
			t.Errorf("%s: ForCaller is not idempotent", tt.name)
		}
	}
	noList := rule
	noList.AllowedHosts, noList.URL = nil, "http://127.0.0.1/cb"
	if got := noList.ForCaller(); got.AllowPrivate || got.AllowNetworks != nil {
		t.Errorf("without allowedHosts a caller's URL gets no private allowance: %+v", got)
	}
	if rule.CredentialsRef != "mq" || !rule.AllowPrivate {
		t.Fatal("ForCaller modified its receiver")
	}
}

// FuzzCallerURL: the caller's x-async-callback is outside input; whatever
// it holds, the check neither panics nor lets a host through that no
// pattern names.
func FuzzCallerURL(f *testing.F) {
	for _, s := range []string{"https://hooks.example.com/cb", "http://[::1]:9000/", "http://a.partner.example:1/", "http://%31%32%37.0.0.1/", "http://[fe80::1%25eth0]/", "http://x:y@h/", "http://127.0.0.1:7000"} {
		f.Add(s)
	}
	cb := Callback{AllowOverride: true, AllowedHosts: []string{"hooks.example.com", "*.partner.example", "127.0.0.1", "[::1]:9000"}}
	f.Fuzz(func(t *testing.T, raw string) {
		if cb.CheckCallerURL(raw) != nil {
			return
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%q allowed but does not parse: %v", raw, err)
		}
		h := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
		// An address matches by value: [::01] is [::1], ::ffff:127.0.0.1 is 127.0.0.1.
		ip, ipErr := netip.ParseAddr(h)
		is := func(addr string) bool {
			return ipErr == nil && ip.Zone() == "" && ip.Unmap() == netip.MustParseAddr(addr).Unmap()
		}
		ok := h == "hooks.example.com" || strings.HasSuffix(h, ".partner.example") || is("127.0.0.1") || (is("::1") && u.Port() == "9000")
		if !ok {
			t.Fatalf("%q allowed: host %q is on no list", raw, u.Hostname())
		}
	})
}
