package rules

import (
	"fmt"
	"slices"
	"time"
)

// Node formats: how a task reaches a processing node.
const (
	NodeJSON = "json" // the task as JSON (sealed when encryption is set)
	NodeSOAP = "soap" // the same bytes in a SOAP 1.1 envelope (collector/external)
)

// Bounds of the nodes: section and of a rule's target.nodes.
const (
	MaxNodes     = 100 // declared nodes
	MaxRuleNodes = 10  // nodes one rule names (each may be tried per dispatch)
)

// Node is an external processing node declared once (Config.Nodes, the
// rules file's nodes: section) and named by rules (target.nodes), in
// failover order. It holds what an inline external target holds, except
// passHeaders, which stay the rule's.
type Node struct {
	Name string `json:"name"`
	// Endpoint is the node's processing URL (http or https).
	Endpoint string `json:"endpoint"`
	// Format is json (default) or soap.
	Format              string      `json:"format,omitempty"`
	Auth                *NodeAuth   `json:"auth,omitempty"`
	Encryption          *Encryption `json:"encryption,omitempty"`
	CompletionSecretRef string      `json:"completionSecretRef,omitempty"`
	Timeout             Duration    `json:"timeout,omitempty"`
	AllowPrivate        bool        `json:"allowPrivate,omitempty"`
	AllowNetworks       []string    `json:"allowNetworks,omitempty"`
}

// Target returns the external target of node n for a rule whose credential
// headers pass is (target.passHeaders): what the collector dispatches to
// and authenticates the completion with.
func (n *Node) Target(pass []string) *Target {
	return &Target{Type: TargetExternal, Endpoint: n.Endpoint, Format: n.Format, Auth: n.Auth,
		Encryption: n.Encryption, CompletionSecretRef: n.CompletionSecretRef, Timeout: n.Timeout,
		AllowPrivate: n.AllowPrivate, AllowNetworks: n.AllowNetworks, PassHeaders: pass}
}

func (n *Node) validate() error {
	if !plainCallerName(n.Name) {
		return fieldErr("name", "%q: want 1-128 letters, digits, '.', '_' or '-', not starting with '.'", n.Name)
	}
	t := n.Target(nil)
	if err := t.validate(); err != nil {
		return err
	}
	n.Format, n.Timeout = t.Format, t.Timeout // defaults
	return nil
}

// Node returns the declared node called name.
func (c *Config) Node(name string) (*Node, bool) {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], true
		}
	}
	return nil, false
}

// validateNodes checks the nodes and the rules' references to them, and
// resolves each rule's target.nodes into target.resolvedNodes (so that the
// envelope carries the nodes as the rules were when it was accepted, as it
// carries an inline target). Every sidecar gets every node, so that this is
// the same again where the configuration is validated once more.
func (c *Config) validateNodes() error {
	if len(c.Nodes) > MaxNodes {
		return fieldErr("nodes", "%d nodes, at most %d", len(c.Nodes), MaxNodes)
	}
	seen := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if err := n.validate(); err != nil {
			return prefixed(fmt.Sprintf("nodes[%d].", i), err)
		}
		if seen[n.Name] {
			return fieldErr(fmt.Sprintf("nodes[%d].name", i), "duplicate node name %q", n.Name)
		}
		seen[n.Name] = true
	}
	for i := range c.Rules {
		t := c.Rules[i].Target
		if !t.External() || len(t.Nodes) == 0 {
			continue
		}
		t.Resolved = make([]Node, 0, len(t.Nodes))
		for j, name := range t.Nodes {
			n, ok := c.Node(name)
			if !ok {
				return fieldErr(fmt.Sprintf("rules[%d].target.nodes[%d]", i, j), "%q is not declared under nodes", name)
			}
			t.Resolved = append(t.Resolved, *n)
		}
	}
	return nil
}

// validateNamed checks a target that names nodes (the rest of it comes from
// them: validateNodes).
func (t *Target) validateNamed() error {
	if t.Endpoint != "" || t.Auth != nil || t.Encryption != nil || t.CompletionSecretRef != "" ||
		t.AllowPrivate || len(t.AllowNetworks) > 0 || t.Format != "" || t.Timeout != 0 {
		return fieldErr("nodes", "a target naming nodes takes endpoint, format, auth, encryption, completionSecretRef, timeout and network allowances from them")
	}
	if len(t.Nodes) > MaxRuleNodes {
		return fieldErr("nodes", "%d nodes, at most %d", len(t.Nodes), MaxRuleNodes)
	}
	for j, name := range t.Nodes {
		if name == "" || slices.Contains(t.Nodes[:j], name) {
			return fieldErr(fmt.Sprintf("nodes[%d]", j), "%q: empty or named twice", name)
		}
	}
	return nil
}

// MaxTimeout is the longest time a node of t may take: the record's lease
// before a node took the task.
func (t *Target) MaxTimeout() time.Duration {
	d := t.Timeout.D()
	for i := range t.Resolved {
		d = max(d, t.Resolved[i].Timeout.D())
	}
	return d
}

// Candidate is one node a task may go to: its name ("" for an inline
// target) and its target.
type Candidate struct {
	Name   string
	Target *Target
}

// Candidates are the nodes of an external target in failover order: its
// resolved nodes, or the inline target alone.
func (t *Target) Candidates() []Candidate {
	if len(t.Resolved) == 0 {
		return []Candidate{{Target: t}}
	}
	out := make([]Candidate, len(t.Resolved))
	for i := range t.Resolved {
		out[i] = Candidate{Name: t.Resolved[i].Name, Target: t.Resolved[i].Target(t.PassHeaders)}
	}
	return out
}
