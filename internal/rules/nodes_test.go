package rules

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func nodesConfig() *Config {
	return &Config{CollectorCluster: "c",
		Nodes: []Node{
			{Name: "a", Endpoint: "https://a.example/tasks", Auth: &NodeAuth{Type: AuthHMAC, SecretRef: "a-hmac"}},
			{Name: "b", Endpoint: "https://b.example/tasks", Format: NodeSOAP, Timeout: Duration(2 * time.Hour),
				Auth: &NodeAuth{Type: AuthBearer, SecretRef: "b-token"}, Encryption: &Encryption{Type: EncryptJWE, KeyRef: "b-key"}},
		},
		Rules: []Rule{{Name: "r", Mode: ModeAsync, Callback: Callback{URL: "https://cb.example/x"},
			Target: &Target{Type: TargetExternal, Nodes: []string{"b", "a"}, PassHeaders: []string{"x-api-key"}}}},
	}
}

// TestNodesResolve: a rule's target.nodes resolve to the declared nodes in
// its order, with defaults, its own passHeaders, and the longest timeout as
// the lease; validating the encoded configuration again (as the filter and
// the collector do with the control plane's) gives the same.
func TestNodesResolve(t *testing.T) {
	c := nodesConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	tg := c.Rules[0].Target
	cands := tg.Candidates()
	if len(cands) != 2 || cands[0].Name != "b" || cands[1].Name != "a" {
		t.Fatalf("candidates %+v", cands)
	}
	if a := cands[1].Target; a.Format != NodeJSON || a.Timeout.D() != DefaultNodeTimeout || a.PassHeaders[0] != "x-api-key" || a.Endpoint != "https://a.example/tasks" {
		t.Fatalf("node a's target %+v", a)
	}
	if cands[0].Target.Format != NodeSOAP || tg.MaxTimeout() != 2*time.Hour {
		t.Fatalf("node b %+v, max timeout %s", cands[0].Target, tg.MaxTimeout())
	}
	js, _ := json.Marshal(c)
	var again Config
	if err := json.Unmarshal(js, &again); err != nil {
		t.Fatal(err)
	}
	if err := again.Validate(); err != nil {
		t.Fatalf("validating again: %v", err)
	}
	js2, _ := json.Marshal(&again)
	if string(js) != string(js2) {
		t.Fatalf("not the same once validated again:\n%s\n%s", js, js2)
	}
	// Inline targets keep working: one candidate, no name.
	in := &Target{Type: TargetExternal, Endpoint: "https://n.example", Auth: &NodeAuth{Type: AuthHMAC, SecretRef: "s"}}
	if err := in.validate(); err != nil {
		t.Fatal(err)
	}
	if cs := in.Candidates(); len(cs) != 1 || cs[0].Name != "" || cs[0].Target != in || in.Format != NodeJSON {
		t.Fatalf("inline %+v", cs)
	}
}

func TestNodesInvalid(t *testing.T) {
	for _, tt := range []struct {
		name, path string
		mod        func(c *Config)
	}{
		{"undeclared node", "rules[0].target.nodes[1]", func(c *Config) { c.Rules[0].Target.Nodes[1] = "ghost" }},
		{"node named twice", "rules[0].target.nodes[1]", func(c *Config) { c.Rules[0].Target.Nodes[1] = "b" }},
		{"duplicate node", "nodes[1].name", func(c *Config) { c.Nodes[1].Name = "a" }},
		{"bad node name", "nodes[0].name", func(c *Config) { c.Nodes[0].Name = "a b" }},
		{"bad format", "nodes[1].format", func(c *Config) { c.Nodes[1].Format = "xml" }},
		{"node without auth", "nodes[0].auth", func(c *Config) { c.Nodes[0].Auth = nil }},
		{"node endpoint", "nodes[0].endpoint", func(c *Config) { c.Nodes[0].Endpoint = "ftp://a" }},
		{"inline endpoint with nodes", "rules[0].target.nodes", func(c *Config) { c.Rules[0].Target.Endpoint = "https://x" }},
		{"timeout with nodes", "rules[0].target.nodes", func(c *Config) { c.Rules[0].Target.Timeout = Duration(time.Second) }},
		{"too many nodes", "rules[0].target.nodes", func(c *Config) {
			for i := range MaxRuleNodes {
				c.Rules[0].Target.Nodes = append(c.Rules[0].Target.Nodes, "n"+string(rune('a'+i)))
			}
		}},
		{"resolvedNodes written", "rules[0].target.resolvedNodes", func(c *Config) {
			c.Rules[0].Target = &Target{Type: TargetExternal, Endpoint: "https://n.example", Auth: &NodeAuth{Type: AuthHMAC, SecretRef: "s"}, Resolved: c.Nodes}
		}},
		{"nodes on an internal target", "rules[0].target.type", func(c *Config) { c.Rules[0].Target.Type = TargetInternal }},
		{"bad passHeaders", "rules[0].target.passHeaders[0]", func(c *Config) { c.Rules[0].Target.PassHeaders[0] = "X-Api-Key" }},
		// A sync rule runs nothing, but a route annotation may make it
		// async: its target is checked all the same (found by the fuzzer).
		{"external target of a sync rule without endpoint or nodes", "rules[0].target.endpoint", func(c *Config) {
			c.Rules[0].Mode, c.Rules[0].Target = ModeSync, &Target{Type: TargetExternal}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := nodesConfig()
			tt.mod(c)
			err := c.Validate()
			var fe *FieldError
			if err == nil || !errors.As(err, &fe) || fe.Path != tt.path {
				t.Fatalf("error %v, want one at %s", err, tt.path)
			}
		})
	}
	c := nodesConfig()
	for i := range MaxNodes {
		c.Nodes = append(c.Nodes, Node{Name: "n" + strings.Repeat("x", i%5) + string(rune('0'+i%10)), Endpoint: "https://n.example"})
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("%d nodes: %v", len(c.Nodes), err)
	}
}

// FuzzNodesRevalidate: a configuration that validates validates again,
// encoded and decoded (as every sidecar and collector validates the control
// plane's), to the same bytes; and every candidate of an external target
// has an endpoint, named ones being declared nodes.
func FuzzNodesRevalidate(f *testing.F) {
	js, _ := json.Marshal(nodesConfig())
	f.Add(string(js))
	f.Add(`{"collectorCluster":"c","rules":[{"name":"r","mode":"async","callback":{"url":"http://x"},"target":{"type":"external","endpoint":"http://n","auth":{"type":"hmac","secretRef":"s"},"resolvedNodes":[{"name":"z"}]}}]}`)
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := Parse([]byte(s))
		if err != nil {
			return
		}
		for _, r := range cfg.Rules {
			if !r.Target.External() {
				continue
			}
			for _, c := range r.Target.Candidates() {
				if _, ok := cfg.Node(c.Name); c.Target.Endpoint == "" || c.Name != "" && !ok {
					t.Fatalf("candidate %+v of rule %s", c, r.Name)
				}
			}
		}
		once, _ := json.Marshal(cfg)
		again, err := Parse(once)
		if err != nil {
			t.Fatalf("validated, then refused: %v\n%s", err, once)
		}
		if twice, _ := json.Marshal(again); string(twice) != string(once) {
			t.Fatalf("changed by validating again:\n%s\n%s", once, twice)
		}
	})
}
