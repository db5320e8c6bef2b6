// Package rulesfile reads rules.yaml, the one file a platform team edits to
// say which routes go async and where their callbacks go. Decoding is strict:
// unknown or duplicate keys, wrong types, bad URLs, duplicate rule names,
// invalid regular expressions and undeclared secret references are errors
// naming file:line:column and the field. Every field is documented in
// docs/rules.md.
//
// Decisions not in docs/architecture.md:
//   - Secrets are declared once, under secrets:, by name with their source (an
//     environment variable or a file on the collector's machine); a rule's
//     callback.secretRef must name a declared secret. The control plane never
//     reads the values.
//   - A rule may be limited to some sidecars with nodes: {ids, clusters}
//     (Envoy's node id and cluster); without it, a rule applies everywhere.
//   - Each node's configuration carries the declarations (never the values)
//     of the secrets its rules reference (rules.Config.Secrets), so that a
//     collector following the control plane finds them where the file says.
//
// Limits: a rules file is outside input (a pull request, a config map), and
// a bad one must be refused quickly, never take the control plane down with
// it, or "a bad file keeps the last good rules" cannot hold. So its size is
// checked before it is read (MaxSize); decoding has a budget of steps across
// the whole file, aliases included (decodeBudget: a YAML bomb is refused with
// "too many alias expansions" at the alias that starts it); no list or
// mapping holds more than MaxEntries entries; a pathRegex is at most
// MaxPatternLen bytes and compiles to at most MaxPatternInsts instructions
// (RE2 matches in time linear in the path, but also in the program, on every
// request); and the filter configuration it gives is at most MaxConfigSize
// bytes of JSON, which every node gets and every filter VM parses. Together
// they make all later work (validation, one snapshot per node) linear in a
// file that is itself small.
package rulesfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"regexp"
	"regexp/syntax"
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
	// Callers are the caller applications (rules.Caller): every node gets
	// them all, since any rule without callers: admits each of them.
	Callers []rules.Caller `json:"callers"`
	// Nodes are the external processing nodes (rules.Node) that rules name
	// in target.nodes: every sidecar gets them all, as it gets callers.
	// (Not a rule's nodes:, which limits the rule to some sidecars.)
	Nodes    []rules.Node `json:"nodes"`
	Packages []Package    `json:"packages"`
	Rules    []Rule       `json:"rules"`
	// Sidecar, when set, is served as LDS/RDS/CDS too (see Sidecar).
	Sidecar *Sidecar `json:"sidecar"`
}

// FilterSettings are the Envoy-side settings of every sidecar.
type FilterSettings struct {
	CollectorCluster   string           `json:"collectorCluster"`
	CollectorAuthority string           `json:"collectorAuthority"`
	CollectorTimeout   rules.Duration   `json:"collectorTimeout"`
	StatusPrefix       string           `json:"statusPrefix"`
	ReplaySecretEnv    string           `json:"replaySecretEnv"`
	RouteAnnotations   bool             `json:"routeAnnotations"`
	Untagged           []rules.Untagged `json:"untagged"`
	JWTPayloadKey      string           `json:"jwtPayloadKey"`
}

// Secret says where the collector finds a secret: exactly one of env (an
// environment variable of the collector) or file (an absolute path on its
// machine).
type Secret = rules.SecretDecl

// Rule is a rules.Rule limited to some nodes.
type Rule struct {
	rules.Rule
	Nodes Nodes `json:"nodes"`
	// pkg is the rule's package once validated (rules.Rule.Package).
	pkg *Package
}

// Applies reports whether the rule applies to a node: its own nodes and its
// package's, and never while its package is disabled.
func (r Rule) Applies(id, cluster string) bool {
	if p := r.pkg; p != nil && (!p.On() || !p.Nodes.Applies(id, cluster)) {
		return false
	}
	return r.Nodes.Applies(id, cluster)
}

// Limited reports whether some node may not get the rule.
func (r Rule) Limited() bool {
	return r.Nodes.limits() || r.pkg != nil && (!r.pkg.On() || r.pkg.Nodes.limits())
}

// Package groups rules ("function packages"): they share its defaults, and
// are enabled, disabled or limited to nodes together. A rule joins with
// package: NAME; rules stay in the order of rules:, packages or not.
type Package struct {
	Name string `json:"name"`
	// Enabled, false, turns every rule of the package off on every node
	// (requests they would take pass through synchronously). Default true.
	Enabled *bool `json:"enabled"`
	// Nodes limits the package's rules to these sidecars (and each rule's
	// own nodes: limits further).
	Nodes    Nodes           `json:"nodes"`
	Defaults PackageDefaults `json:"defaults"`
}

// On reports whether the package is enabled.
func (p *Package) On() bool { return p.Enabled == nil || *p.Enabled }

// PackageDefaults are what a rule of the package gets where it says
// nothing: the whole callback when it has none, each retry field and the
// timeout when unset, the callers when it lists none.
type PackageDefaults struct {
	Callback *rules.Callback `json:"callback"`
	Retry    rules.Retry     `json:"retry"`
	Timeout  rules.Duration  `json:"timeout"`
	Callers  []string        `json:"callers"`
}

// Nodes limits a rule to sidecars by Envoy node id or cluster; empty means all.
type Nodes struct {
	IDs      []string `json:"ids"`
	Clusters []string `json:"clusters"`
}

func (n Nodes) limits() bool { return len(n.IDs) > 0 || len(n.Clusters) > 0 }

// Applies reports whether a rule limited to n applies to a node.
func (n Nodes) Applies(id, cluster string) bool {
	if !n.limits() {
		return true
	}
	return slices.Contains(n.IDs, id) || slices.Contains(n.Clusters, cluster)
}

// Limits of a rules file (see the package doc). Real files are far below
// them: a thousand rules fit in a few hundred kilobytes.
const (
	// MaxSize bounds the file, checked before it is read.
	MaxSize = 1 << 20
	// MaxEntries bounds every list and mapping (rules, select targets,
	// secrets, methods, networks, node ids, sidecar routes...).
	MaxEntries = 1000
	// MaxPatternLen and MaxPatternInsts bound a match.pathRegex: its length
	// in bytes and the size of its compiled program (a{1000} is 1000
	// instructions, run for every request the rule is tried on).
	MaxPatternLen   = 1024
	MaxPatternInsts = 1000
	// MaxConfigSize bounds the JSON filter configuration of all rules: what
	// the largest node gets over xDS (gRPC's default message limit, which a
	// collector applies, is 4 MiB) and what every filter VM parses.
	MaxConfigSize = 2 << 20
)

// Load reads and checks the rules file at path.
func Load(path string) (*File, error) {
	data, err := read(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// read reads the file at path, refusing one larger than MaxSize before
// reading it (by its size) and while reading it (a file that grows, a pipe
// or a device whose size says nothing).
func read(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	tooLarge := func(n int64) error {
		return Errors{{File: path, Msg: fmt.Sprintf("%d bytes or more, larger than the limit of %d", n, MaxSize)}}
	}
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > MaxSize {
		return nil, tooLarge(st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, tooLarge(int64(len(data)))
	}
	return data, nil
}

// Parse decodes and validates a rules file; name is used in errors. The error
// is Errors.
func Parse(name string, data []byte) (*File, error) {
	var f File
	d, err := decodeFile(name, data, &f)
	if err != nil {
		return nil, err
	}
	if err := f.validate(); err != nil {
		var fe *rules.FieldError
		e := &Error{File: name, Msg: err.Error()}
		if errors.As(err, &fe) {
			e.Path, e.Msg = fe.Path, fe.Err.Error()
			if !fileSection(e.Path) {
				e.Path = "filter." + e.Path // a field of FilterSettings
			}
			e.Pos = d.nearest(e.Path)
		}
		return nil, Errors{e}
	}
	return &f, nil
}

// fileSection reports whether path starts with a section of the file other
// than filter: (whose fields rules.Config has at its top level).
func fileSection(path string) bool {
	for _, s := range []string{"rules", "secrets", "sidecar", "callers", "nodes", "packages"} {
		if rest, ok := strings.CutPrefix(path, s); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
			return true
		}
	}
	return false
}

// LoadSecrets reads only the secrets: section of the rules file at path, for
// a collector that resolves references without a control plane (collector
// -rules). The other sections may be absent; those present must still be
// well formed, and the same limits apply.
func LoadSecrets(path string) (map[string]Secret, error) {
	data, err := read(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		Filter   yaml.Node         `json:"filter"`
		Secrets  map[string]Secret `json:"secrets"`
		Callers  yaml.Node         `json:"callers"`
		Nodes    yaml.Node         `json:"nodes"`
		Packages yaml.Node         `json:"packages"`
		Rules    yaml.Node         `json:"rules"`
		Sidecar  yaml.Node         `json:"sidecar"`
	}
	d, err := decodeFile(path, data, &f)
	if err != nil {
		return nil, err
	}
	if err := checkSecrets(f.Secrets); err != nil {
		var fe *rules.FieldError
		errors.As(err, &fe)
		return nil, Errors{{File: path, Pos: d.nearest(fe.Path), Path: fe.Path, Msg: fe.Err.Error()}}
	}
	return f.Secrets, nil
}

// decodeFile decodes data strictly into out (a pointer to a struct).
func decodeFile(name string, data []byte, out any) (*decoder, error) {
	if len(data) > MaxSize {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("%d bytes, larger than the limit of %d", len(data), MaxSize)}}
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
	budget := decodeBudget(len(data))
	d := &decoder{file: name, pos: map[string]Pos{}, budget: budget, limit: budget}
	d.decode(root.Content[0], reflect.ValueOf(out).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	return d, nil
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
	if err := checkSecrets(f.Secrets); err != nil {
		return err
	}
	if err := f.applyPackages(); err != nil {
		return err
	}
	// Patterns are bounded before rules.Config.Validate compiles them.
	for i := range f.Rules {
		if t := f.Rules[i].Target; t != nil && len(t.Resolved) > 0 {
			return &rules.FieldError{Path: fmt.Sprintf("rules[%d].target.resolvedNodes", i), Err: errors.New("set from target.nodes, not written")}
		}
		if err := checkPattern(f.Rules[i].Match.PathRegex); err != nil {
			return &rules.FieldError{Path: fmt.Sprintf("rules[%d].match.pathRegex", i), Err: err}
		}
	}
	cfg := f.config(nil, true)
	if err := cfg.Validate(); err != nil {
		return err
	}
	f.Callers, f.Nodes = cfg.Callers, cfg.Nodes // normalized
	for i := range f.Nodes {
		for _, ref := range nodeRefs(fmt.Sprintf("nodes[%d]", i), &f.Nodes[i]) {
			if _, ok := f.Secrets[ref.name]; !ok {
				return &rules.FieldError{Path: ref.path, Err: fmt.Errorf("%q is not declared under secrets", ref.name)}
			}
		}
	}
	for i := range f.Callers {
		for _, ref := range callerRefs(fmt.Sprintf("callers[%d]", i), &f.Callers[i]) {
			if _, ok := f.Secrets[ref.name]; !ok {
				return &rules.FieldError{Path: ref.path, Err: fmt.Errorf("%q is not declared under secrets", ref.name)}
			}
		}
	}
	for i := range f.Rules {
		r := &f.Rules[i]
		r.Rule = cfg.Rules[i] // with defaults applied
		for _, ref := range refsOf(fmt.Sprintf("rules[%d]", i), &r.Rule) {
			if _, ok := f.Secrets[ref.name]; !ok {
				return &rules.FieldError{Path: ref.path, Err: fmt.Errorf("%q is not declared under secrets", ref.name)}
			}
		}
		for j, id := range append(slices.Clone(r.Nodes.IDs), r.Nodes.Clusters...) {
			if strings.TrimSpace(id) == "" {
				return &rules.FieldError{Path: fmt.Sprintf("rules[%d].nodes", i), Err: fmt.Errorf("entry %d is empty", j)}
			}
		}
	}
	if f.Sidecar != nil {
		if err := f.Sidecar.validate(f); err != nil {
			return err
		}
	}
	// Every node's configuration is a part of this one (its rules, their
	// secrets), so this bounds what any node gets.
	js, err := json.Marshal(f.config(nil, true))
	if err != nil {
		return fmt.Errorf("encoding the filter configuration: %w", err)
	}
	if len(js) > MaxConfigSize {
		return &rules.FieldError{Path: "rules", Err: fmt.Errorf("the filter configuration of these rules is %d bytes of JSON, over the limit of %d", len(js), MaxConfigSize)}
	}
	return nil
}

// applyPackages checks the packages, links each rule to its own and fills
// in the package's defaults where the rule says nothing.
func (f *File) applyPackages() error {
	byName := map[string]*Package{}
	for i := range f.Packages {
		p, path := &f.Packages[i], fmt.Sprintf("packages[%d]", i)
		if !plainName(p.Name) {
			return &rules.FieldError{Path: path + ".name", Err: fmt.Errorf("%q: want letters, digits, '.', '_' and '-' (not starting with '.')", p.Name)}
		}
		if byName[p.Name] != nil {
			return &rules.FieldError{Path: path + ".name", Err: fmt.Errorf("duplicate package name %q", p.Name)}
		}
		byName[p.Name] = p
		for j, name := range p.Defaults.Callers {
			if !slices.ContainsFunc(f.Callers, func(c rules.Caller) bool { return c.Name == name }) {
				return &rules.FieldError{Path: fmt.Sprintf("%s.defaults.callers[%d]", path, j), Err: fmt.Errorf("%q is not declared under callers", name)}
			}
		}
		if cb := p.Defaults.Callback; cb != nil {
			// Checked on its own, so that an error names the package's field.
			probe := rules.Config{CollectorCluster: "probe", ReplaySecretEnv: f.Filter.ReplaySecretEnv, Callers: f.Callers,
				Rules: []rules.Rule{{Name: "probe", Mode: rules.ModeAsync, Callback: *cb}}}
			if err := probe.Validate(); err != nil {
				var fe *rules.FieldError
				if errors.As(err, &fe) && strings.HasPrefix(fe.Path, "rules[0].") {
					return &rules.FieldError{Path: path + ".defaults." + strings.TrimPrefix(fe.Path, "rules[0]."), Err: fe.Err}
				}
				return err
			}
		}
	}
	for i := range f.Rules {
		r := &f.Rules[i]
		if r.Package == "" {
			continue
		}
		p := byName[r.Package]
		if p == nil {
			return &rules.FieldError{Path: fmt.Sprintf("rules[%d].package", i), Err: fmt.Errorf("%q is not declared under packages", r.Package)}
		}
		r.pkg = p
		d := p.Defaults
		if d.Callback != nil && reflect.DeepEqual(r.Callback, rules.Callback{}) {
			r.Callback = *d.Callback
		}
		if r.Retry.MaxAttempts == 0 {
			r.Retry.MaxAttempts = d.Retry.MaxAttempts
		}
		if r.Retry.InitialBackoff == 0 {
			r.Retry.InitialBackoff = d.Retry.InitialBackoff
		}
		if r.Retry.MaxBackoff == 0 {
			r.Retry.MaxBackoff = d.Retry.MaxBackoff
		}
		if r.Timeout == 0 {
			r.Timeout = d.Timeout
		}
		if len(r.Callers) == 0 {
			r.Callers = d.Callers
		}
	}
	return nil
}

// checkPattern bounds a pathRegex: its length, then its compiled program.
func checkPattern(p string) error {
	if p == "" {
		return nil
	}
	if len(p) > MaxPatternLen {
		return fmt.Errorf("%d bytes, over the limit of %d", len(p), MaxPatternLen)
	}
	re, err := syntax.Parse(p, syntax.Perl)
	if err != nil {
		return err // rules.Config.Validate words it as regexp.Compile does
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return err
	}
	if n := len(prog.Inst); n > MaxPatternInsts {
		return fmt.Errorf("compiles to %d instructions, over the limit of %d (every request the rule is tried on runs them): use smaller repetition counts", n, MaxPatternInsts)
	}
	return nil
}

// envName is what a secret's env must look like: a portable environment
// variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkSecrets checks each declaration: a name the collector accepts as a
// reference, and exactly one well-formed source.
func checkSecrets(secrets map[string]Secret) error {
	for _, name := range slices.Sorted(maps.Keys(secrets)) {
		s, p := secrets[name], "secrets."+name
		switch {
		case !plainName(name):
			return &rules.FieldError{Path: p, Err: errors.New("a secret's name is letters, digits, '.', '_' and '-', not starting with '.'")}
		case (s.Env == "") == (s.File == ""):
			return &rules.FieldError{Path: p, Err: errors.New("want exactly one of env or file")}
		case s.Env != "" && !envName.MatchString(s.Env):
			return &rules.FieldError{Path: p + ".env", Err: fmt.Errorf("%q is not an environment variable name", s.Env)}
		case s.File != "" && (!strings.HasPrefix(s.File, "/") || strings.ContainsRune(s.File, 0)):
			return &rules.FieldError{Path: p + ".file", Err: fmt.Errorf("%q is not an absolute path", s.File)}
		}
	}
	return nil
}

// plainName reports whether name is usable as a secret reference (the
// collector also looks it up as a file name under -secrets-dir).
func plainName(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ref is one secret reference of a rule, with the path of its field.
type ref struct{ path, name string }

// refsOf lists the secrets rule r (at path) references: its callback's and
// each selectable target's, and its external node's.
func refsOf(path string, r *rules.Rule) []ref {
	var out []ref
	add := func(p, name string) {
		if name != "" {
			out = append(out, ref{path + "." + p, name})
		}
	}
	var callback func(p string, cb *rules.Callback)
	callback = func(p string, cb *rules.Callback) {
		add(p+".secretRef", cb.SecretRef)
		add(p+".credentialsRef", cb.CredentialsRef)
		if cb.Auth != nil {
			for _, f := range cb.Auth.SecretRefs() {
				add(p+".auth."+f[0], f[1])
			}
		}
		if cb.Encryption != nil {
			add(p+".encryption.keyRef", cb.Encryption.KeyRef)
		}
		if cb.Select != nil {
			for _, k := range slices.Sorted(maps.Keys(cb.Select.Targets)) {
				t := cb.Select.Targets[k]
				callback(p+".select.targets."+k, &t)
			}
		}
	}
	callback("callback", &r.Callback)
	if t := r.Target; t != nil {
		add("target.completionSecretRef", t.CompletionSecretRef)
		if t.Auth != nil {
			add("target.auth.secretRef", t.Auth.SecretRef)
		}
		if t.Encryption != nil {
			add("target.encryption.keyRef", t.Encryption.KeyRef)
		}
	}
	return out
}

// callerRefs lists the secrets caller c (at path) references.
func callerRefs(path string, c *rules.Caller) []ref {
	var out []ref
	for i, s := range c.Signing {
		out = append(out, ref{fmt.Sprintf("%s.signing[%d].secretRef", path, i), s.SecretRef})
	}
	if c.Auth != nil {
		for _, f := range c.Auth.SecretRefs() {
			out = append(out, ref{path + ".auth." + f[0], f[1]})
		}
	}
	if c.Encryption != nil {
		out = append(out, ref{path + ".encryption.keyRef", c.Encryption.KeyRef})
	}
	return out
}

// nodeRefs lists the secrets node n (at path) references.
func nodeRefs(path string, n *rules.Node) []ref {
	var out []ref
	if n.Auth != nil {
		out = append(out, ref{path + ".auth.secretRef", n.Auth.SecretRef})
	}
	if n.Encryption != nil {
		out = append(out, ref{path + ".encryption.keyRef", n.Encryption.KeyRef})
	}
	if n.CompletionSecretRef != "" {
		out = append(out, ref{path + ".completionSecretRef", n.CompletionSecretRef})
	}
	return out
}

// Config returns the filter configuration for the rules that apply to keep
// (nil: all of them) and every caller, with the declarations of the secrets
// they reference.
func (f *File) Config(keep func(Rule) bool) *rules.Config { return f.config(keep, false) }

// config is Config, with the rules of disabled packages when withDisabled
// (validation checks them too).
func (f *File) config(keep func(Rule) bool, withDisabled bool) *rules.Config {
	c := &rules.Config{
		CollectorCluster: f.Filter.CollectorCluster, CollectorAuthority: f.Filter.CollectorAuthority,
		CollectorTimeout: f.Filter.CollectorTimeout, StatusPrefix: f.Filter.StatusPrefix,
		ReplaySecretEnv: f.Filter.ReplaySecretEnv, RouteAnnotations: f.Filter.RouteAnnotations, Untagged: f.Filter.Untagged,
		JWTPayloadKey: f.Filter.JWTPayloadKey, Callers: f.Callers, Nodes: f.Nodes,
		Rules: []rules.Rule{},
	}
	declare := func(refs []ref) {
		for _, ref := range refs {
			if s, ok := f.Secrets[ref.name]; ok {
				if c.Secrets == nil {
					c.Secrets = map[string]rules.SecretDecl{}
				}
				c.Secrets[ref.name] = s
			}
		}
	}
	for i := range f.Callers {
		declare(callerRefs("", &f.Callers[i]))
	}
	for i := range f.Nodes {
		declare(nodeRefs("", &f.Nodes[i]))
	}
	for _, r := range f.Rules {
		if r.pkg != nil && !r.pkg.On() && !withDisabled {
			continue
		}
		if keep == nil || keep(r) {
			c.Rules = append(c.Rules, r.Rule)
			declare(refsOf("", &r.Rule))
		}
	}
	return c
}

// ForNode returns the filter configuration of one sidecar.
func (f *File) ForNode(id, cluster string) *rules.Config {
	return f.Config(func(r Rule) bool { return r.Applies(id, cluster) })
}
