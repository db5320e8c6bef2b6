package rulesfile

import (
	"strings"
	"testing"
)

// TestNodesSection: a nodes: section's nodes reach every sidecar's
// configuration with their secrets declared, and a rule naming them gets
// them resolved, in its order; a rules file cannot write resolvedNodes.
func TestNodesSection(t *testing.T) {
	const doc = `filter: {collectorCluster: c}
secrets:
  a-hmac: {env: A_HMAC}
  b-token: {env: B_TOKEN}
  b-key: {file: /run/b.key}
nodes:
  - name: a
    endpoint: "https://a.example/tasks"
    auth: {type: hmac, secretRef: a-hmac}
  - name: b
    endpoint: "https://b.example/soap"
    format: soap
    timeout: 5m
    auth: {type: bearer, secretRef: b-token}
    encryption: {type: aes-256-gcm, keyRef: b-key}
rules:
  - name: r
    mode: async
    callback: {url: "http://x/cb"}
    target: {type: external, nodes: [b, a]}
    nodes: {ids: [sidecar-1]}
`
	f, err := Parse("nodes.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"sidecar-1", "sidecar-2"} {
		c := f.ForNode(node, "")
		if len(c.Nodes) != 2 || c.Nodes[1].Format != "soap" {
			t.Fatalf("%s: nodes %+v", node, c.Nodes)
		}
		for _, s := range []string{"a-hmac", "b-token", "b-key"} {
			if _, ok := c.Secrets[s]; !ok {
				t.Fatalf("%s: secret %s not declared: %v", node, s, c.Secrets)
			}
		}
	}
	c := f.ForNode("sidecar-1", "")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	cands := c.Rules[0].Target.Candidates()
	if len(cands) != 2 || cands[0].Name != "b" || cands[0].Target.Endpoint != "https://b.example/soap" || cands[1].Name != "a" {
		t.Fatalf("candidates %+v", cands)
	}
	bad := strings.Replace(doc, "target: {type: external, nodes: [b, a]}",
		`target: {type: external, endpoint: "https://x.example", auth: {type: hmac, secretRef: a-hmac}, resolvedNodes: [{name: z, endpoint: "http://10.0.0.1"}]}`, 1)
	if _, err := Parse("bad.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), "rules[0].target.resolvedNodes: set from target.nodes") {
		t.Fatalf("resolvedNodes written: %v", err)
	}
}
