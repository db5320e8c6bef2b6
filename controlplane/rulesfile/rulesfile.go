// Package rulesfile reads rules.yaml, the one file a platform team edits to
// say which routes go async and where their callbacks go. Decoding is strict:
// unknown or duplicate keys, wrong types, bad URLs, duplicate rule names,
// invalid regular expressions and undeclared secret references are errors
// naming file:line:column and the field. Every field is documented in
// docs/rules.md.
//
// Decisions not in DESIGN.md:
//   - Secrets are declared once, under secrets:, by name with their source (an
//     environment variable or a file on the collector's machine); a rule's
//     callback.secretRef must name a declared secret. The control plane never
//     reads the values.
//   - A rule may be limited to some sidecars with nodes: {ids, clusters}
//     (Envoy's node id and cluster); without it, a rule applies everywhere.
package rulesfile

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// File is a decoded rules file.
type File struct {
	// Filter holds the filter's settings (rules.Config without its rules).
	Filter  FilterSettings    `json:"filter"`
	Secrets map[string]Secret `json:"secrets"`
	Rules   []Rule            `json:"rules"`
	// Sidecar, when set, is served as LDS/RDS/CDS too (see Sidecar).
	Sidecar *Sidecar `json:"sidecar"`
}

// FilterSettings are the Envoy-side settings of every sidecar.
type FilterSettings struct {
	CollectorCluster   string         `json:"collectorCluster"`
	CollectorAuthority string         `json:"collectorAuthority"`
	CollectorTimeout   rules.Duration `json:"collectorTimeout"`
	StatusPrefix       string         `json:"statusPrefix"`
	ReplaySecretEnv    string         `json:"replaySecretEnv"`
	RouteAnnotations   bool           `json:"routeAnnotations"`
}

// Secret says where the collector finds a secret.
type Secret struct {
	Env  string `json:"env"`
	File string `json:"file"`
}

// Rule is a rules.Rule limited to some nodes.
type Rule struct {
	rules.Rule
	Nodes Nodes `json:"nodes"`
}

// Nodes limits a rule to sidecars by Envoy node id or cluster; empty means all.
type Nodes struct {
	IDs      []string `json:"ids"`
	Clusters []string `json:"clusters"`
}

// Applies reports whether a rule limited to n applies to a node.
func (n Nodes) Applies(id, cluster string) bool {
	if len(n.IDs) == 0 && len(n.Clusters) == 0 {
		return true
	}
	return slices.Contains(n.IDs, id) || slices.Contains(n.Clusters, cluster)
}

// MaxSize bounds a rules file.
const MaxSize = 4 << 20

// Load reads and checks the rules file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse decodes and validates a rules file; name is used in errors. The error
// is Errors.
func Parse(name string, data []byte) (*File, error) {
	if len(data) > MaxSize {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("larger than %d bytes", MaxSize)}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		e := &Error{File: name, Msg: "not YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if _, err := fmt.Sscanf(msg, "line %d:", &e.Pos.Line); err == nil {
			_, msg, _ = strings.Cut(msg, ":")
		}
		e.Msg = "not YAML: " + strings.TrimSpace(msg)
		return nil, Errors{e}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, Errors{{File: name, Msg: "empty file: want filter:, secrets: and rules:"}}
	}
	d := &decoder{file: name, pos: map[string]Pos{}}
	var f File
	d.decode(root.Content[0], reflect.ValueOf(&f).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	if err := f.validate(); err != nil {
		var fe *rules.FieldError
		e := &Error{File: name, Msg: err.Error()}
		if errors.As(err, &fe) {
			e.Path, e.Msg = fe.Path, fe.Err.Error()
			if !strings.HasPrefix(e.Path, "rules[") && !strings.HasPrefix(e.Path, "secrets.") && !strings.HasPrefix(e.Path, "sidecar.") {
				e.Path = "filter." + e.Path // a field of FilterSettings
			}
			e.Pos = d.nearest(e.Path)
		}
		return nil, Errors{e}
	}
	return &f, nil
}

// nearest returns the position of path, or of its closest decoded parent.
func (d *decoder) nearest(path string) Pos {
	for p := path; p != ""; {
		if pos, ok := d.pos[p]; ok {
			return pos
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return Pos{1, 1}
}

// validate checks what decoding cannot: the rules themselves (through
// rules.Config.Validate, which also applies defaults), secrets and targets.
func (f *File) validate() error {
	names := make([]string, 0, len(f.Secrets))
	for name := range f.Secrets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s, p := f.Secrets[name], "secrets."+name
		if (s.Env == "") == (s.File == "") {
			return &rules.FieldError{Path: p, Err: errors.New("want exactly one of env or file")}
		}
	}
	cfg := f.Config(nil)
	if err := cfg.Validate(); err != nil {
		return err
	}
	for i := range f.Rules {
		r := &f.Rules[i]
		r.Rule = cfg.Rules[i] // with defaults applied
		if err := f.checkRefs(fmt.Sprintf("rules[%d].callback", i), r.Callback); err != nil {
			return err
		}
		if t := r.Target; t != nil {
			refs := [][2]string{{"completionSecretRef", t.CompletionSecretRef}}
			if t.Auth != nil {
				refs = append(refs, [2]string{"auth.secretRef", t.Auth.SecretRef})
			}
			if t.Encryption != nil {
				refs = append(refs, [2]string{"encryption.keyRef", t.Encryption.KeyRef})
			}
			if err := f.declared(fmt.Sprintf("rules[%d].target", i), refs); err != nil {
				return err
			}
		}
		for j, id := range append(slices.Clone(r.Nodes.IDs), r.Nodes.Clusters...) {
			if strings.TrimSpace(id) == "" {
				return &rules.FieldError{Path: fmt.Sprintf("rules[%d].nodes", i), Err: fmt.Errorf("entry %d is empty", j)}
			}
		}
	}
	if f.Sidecar != nil {
		return f.Sidecar.validate(f)
	}
	return nil
}

// checkRefs checks that the secrets a callback (and each of its selectable
// targets) references are declared.
func (f *File) checkRefs(path string, cb rules.Callback) error {
	refs := [][2]string{{"secretRef", cb.SecretRef}, {"credentialsRef", cb.CredentialsRef}}
	if cb.Encryption != nil {
		refs = append(refs, [2]string{"encryption.keyRef", cb.Encryption.KeyRef})
	}
	if err := f.declared(path, refs); err != nil {
		return err
	}
	if cb.Select == nil {
		return nil
	}
	keys := slices.Sorted(maps.Keys(cb.Select.Targets))
	for _, k := range keys {
		if err := f.checkRefs(path+".select.targets."+k, cb.Select.Targets[k]); err != nil {
			return err
		}
	}
	return nil
}

// declared checks that each (field, reference) names a declared secret.
func (f *File) declared(path string, refs [][2]string) error {
	for _, fr := range refs {
		if _, ok := f.Secrets[fr[1]]; fr[1] != "" && !ok {
			return &rules.FieldError{Path: path + "." + fr[0], Err: fmt.Errorf("%q is not declared under secrets", fr[1])}
		}
	}
	return nil
}

// Config returns the filter configuration for the rules that apply to keep
// (nil: all of them).
func (f *File) Config(keep func(Rule) bool) *rules.Config {
	c := &rules.Config{
		CollectorCluster: f.Filter.CollectorCluster, CollectorAuthority: f.Filter.CollectorAuthority,
		CollectorTimeout: f.Filter.CollectorTimeout, StatusPrefix: f.Filter.StatusPrefix,
		ReplaySecretEnv: f.Filter.ReplaySecretEnv, RouteAnnotations: f.Filter.RouteAnnotations, Rules: []rules.Rule{},
	}
	for _, r := range f.Rules {
		if keep == nil || keep(r) {
			c.Rules = append(c.Rules, r.Rule)
		}
	}
	return c
}

// ForNode returns the filter configuration of one sidecar.
func (f *File) ForNode(id, cluster string) *rules.Config {
	return f.Config(func(r Rule) bool { return r.Nodes.Applies(id, cluster) })
}
