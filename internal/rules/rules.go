// Package rules defines asyncmesh's callback rules: which requests go async, where
// their callbacks go and how they are retried, and the Envoy-side settings of the
// filter. The filter decodes it from its plugin configuration (JSON) on every
// configure, so it is standard-library only and its Match is allocation-free.
//
// Decisions not spelled out in docs/architecture.md:
//   - Rules are tried in file order; the first that matches wins. A request no rule
//     matches passes through (mode sync) with only its trace headers added.
//   - Until the control plane distributes rules to collectors, the filter copies the
//     matched rule's callback, retry and timeout into the intake envelope, so the
//     collector needs no rules of its own. Secrets are referenced by name only.
package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/idempotency"
	"github.com/asyncmesh/asyncmesh/internal/strict"
)

// Mode says when a matched request goes async.
type Mode string

const (
	ModeAsync Mode = "async"  // always
	ModeOptIn Mode = "opt-in" // only with Prefer: respond-async
	ModeSync  Mode = "sync"   // never (an explicit exception before a broader rule)
)

// What the filter does when the collector cannot take a request.
const (
	CollectorDownReject      = "reject"      // 503 + Retry-After
	CollectorDownPassthrough = "passthrough" // serve it synchronously
)

// Config is the filter's plugin configuration.
type Config struct {
	// CollectorCluster is the Envoy cluster of the collector's intake.
	CollectorCluster string `json:"collectorCluster"`
	// CollectorAuthority is the :authority of intake calls.
	CollectorAuthority string `json:"collectorAuthority,omitempty"`
	// CollectorTimeout bounds each intake call; past it the rule's
	// onCollectorDown applies.
	CollectorTimeout Duration `json:"collectorTimeout,omitempty"`
	// StatusPrefix is the path prefix under which Envoy routes the collector's
	// API to callers (Location: {StatusPrefix}/v1/requests/{id}).
	StatusPrefix string `json:"statusPrefix,omitempty"`
	// ReplaySecretEnv names the environment variable (passed to the Wasm VM by
	// vm_config.environment_variables) that holds the replay-signing secret.
	ReplaySecretEnv string `json:"replaySecretEnv,omitempty"`
	// RouteAnnotations makes the filter read each request's route metadata
	// (filter_metadata["asyncmesh"]): an annotated route picks its rule by
	// name, overriding the match (see Annotated). Off, it costs nothing.
	RouteAnnotations bool `json:"routeAnnotations,omitempty"`
	// HoldHeaders says that Envoy lets the filter stop iteration in its
	// request-headers callback (PluginConfig.allow_on_headers_stop_iteration,
	// Envoy 1.3x+): the filter then holds an async request's headers itself
	// while it reads the body, and no buffer filter is needed after it.
	HoldHeaders bool `json:"holdHeaders,omitempty"`
	// Untagged lists requests the mesh leaves untraced (health checks,
	// metrics scrapes): Envoy only strips the caller's x-async-* headers from
	// them, adding no traceparent nor x-async-trace-id. The control plane
	// turns it into Envoy's matcher; a request some rule may make async is
	// never untagged.
	Untagged []Untagged `json:"untagged,omitempty"`
	Rules    []Rule     `json:"rules"`
	// Secrets declares where collectors find the secrets these rules
	// reference: name → an environment variable or a file of the collector,
	// never a value. The control plane fills it from the rules file's
	// secrets: section with the declarations the node's rules use, so that
	// a collector following it over xDS resolves them; the filter ignores it.
	Secrets map[string]SecretDecl `json:"secrets,omitempty"`
	// Callers are the caller applications the filter recognizes (by the
	// peer certificate or a verified JWT) and whose callbacks are their
	// own (see Caller).
	Callers []Caller `json:"callers,omitempty"`
	// JWTPayloadKey is where Envoy's jwt_authn filter keeps a verified
	// JWT's claims in the request's dynamic metadata (its providers'
	// payload_in_metadata), read to recognize callers by identity.jwt.
	JWTPayloadKey string `json:"jwtPayloadKey,omitempty"`
	// Nodes are the external processing nodes rules name (target.nodes):
	// every sidecar gets them all, as it gets every caller.
	Nodes []Node `json:"nodes,omitempty"`
}

// SecretDecl says where a collector finds one secret: exactly one of Env (an
// environment variable) or File (an absolute path, read at each use so that a
// rotated file applies without a restart).
type SecretDecl struct {
	Env  string `json:"env,omitempty"`
	File string `json:"file,omitempty"`
}

// Rule is one callback rule.
type Rule struct {
	Name            string   `json:"name"`
	Match           Match    `json:"match"`
	Mode            Mode     `json:"mode"`
	Callback        Callback `json:"callback"`
	Target          *Target  `json:"target,omitempty"`
	BodyLimit       int64    `json:"bodyLimit,omitempty"`
	Timeout         Duration `json:"timeout,omitempty"`
	Retry           Retry    `json:"retry"`
	OnCollectorDown string   `json:"onCollectorDown,omitempty"`
	// IdempotencyWindow is how long an Idempotency-Key holds on this rule
	// (internal/idempotency): unset, 24h; "0s" turns keys off (the header
	// is then passed on to the service untouched); at most 7 days.
	IdempotencyWindow *Duration `json:"idempotencyWindow,omitempty"`
	// Ordering, when set, names the request parameter whose value orders
	// the rule's requests (ordering.go).
	Ordering *Ordering `json:"ordering,omitempty"`
	// Callers limits the rule to these declared callers (empty: any caller,
	// recognized or not); the filter answers others 403.
	Callers []string `json:"callers,omitempty"`
	// Package names the rules file's package the rule belongs to (its
	// defaults are already applied); recorded with each request.
	Package   string `json:"package,omitempty"`
	pathRegex *regexp.Regexp
}

// Idempotency is how long an Idempotency-Key holds on r; 0 when keys are
// off (or on a rule not validated).
func (r *Rule) Idempotency() time.Duration {
	if r.IdempotencyWindow == nil {
		return 0
	}
	return r.IdempotencyWindow.D()
}

// Untagged selects requests to leave untraced: a path prefix, a host (exact
// or "*.suffix", any port), or both.
type Untagged struct {
	Host       string `json:"host,omitempty"`
	PathPrefix string `json:"pathPrefix,omitempty"`
}

// MaxUntagged bounds filter.untagged (each entry is a matcher Envoy tries
// on every request that no rule may make async).
const MaxUntagged = 100

// Match selects requests. Empty fields match everything; all set fields must match.
type Match struct {
	Route      string   `json:"route,omitempty"`      // Envoy route name
	Host       string   `json:"host,omitempty"`       // exact, or "*.suffix"
	Methods    []string `json:"methods,omitempty"`    // upper case
	PathPrefix string   `json:"pathPrefix,omitempty"` // on the path without query
	PathRegex  string   `json:"pathRegex,omitempty"`  // RE2, anchored by the author
}

// Retry bounds callback delivery.
type Retry struct {
	MaxAttempts    int      `json:"maxAttempts,omitempty"`
	InitialBackoff Duration `json:"initialBackoff,omitempty"`
	MaxBackoff     Duration `json:"maxBackoff,omitempty"`
}

// Defaults applied by Parse.
const (
	DefaultBodyLimit        = 1 << 20
	DefaultTimeout          = 30 * time.Second
	DefaultCollectorTimeout = 2 * time.Second
	DefaultMaxAttempts      = 8
	DefaultInitialBackoff   = time.Second
	DefaultMaxBackoff       = 5 * time.Minute
	MaxBodyLimit            = 64 << 20
	DefaultJWTPayloadKey    = "jwt_payload"
)

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	// A *json.UnmarshalTypeError lets the decoder add the field's path.
	bad := &json.UnmarshalTypeError{Value: "duration " + string(b) + " (want a string such as \"30s\")", Type: reflect.TypeFor[Duration]()}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return bad
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return bad
	}
	*d = Duration(v)
	return nil
}

// Parse decodes and validates a configuration strictly: unknown fields, wrong
// types and invalid values are errors naming the field.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := strict.Decode(data, &c); err != nil {
		return nil, fmt.Errorf("decoding filter configuration: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// FieldError is a validation error of one field, named by its path in the
// configuration (for example rules[2].callback.url).
type FieldError struct {
	Path string
	Err  error
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(path string, format string, args ...any) error {
	return &FieldError{Path: path, Err: fmt.Errorf(format, args...)}
}

// prefixed puts prefix (ending in "." or "") before the path of a
// *FieldError, or of a plain error.
func prefixed(prefix string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Path: prefix + fe.Path, Err: fe.Err}
	}
	return fmt.Errorf("%s: %w", strings.TrimSuffix(prefix, "."), err)
}

// Validate applies defaults and checks every field; errors are *FieldError.
func (c *Config) Validate() error {
	if c.CollectorCluster == "" {
		return fieldErr("collectorCluster", "required")
	}
	if c.CollectorAuthority == "" {
		c.CollectorAuthority = "asyncmesh-collector"
	}
	if c.CollectorTimeout == 0 {
		c.CollectorTimeout = Duration(DefaultCollectorTimeout)
	}
	if c.StatusPrefix == "" {
		c.StatusPrefix = "/async"
	}
	if !strings.HasPrefix(c.StatusPrefix, "/") || strings.HasSuffix(c.StatusPrefix, "/") {
		return fieldErr("statusPrefix", "%q must start with / and not end with /", c.StatusPrefix)
	}
	if len(c.Untagged) > MaxUntagged {
		return fieldErr("untagged", "%d entries, at most %d", len(c.Untagged), MaxUntagged)
	}
	for i, u := range c.Untagged {
		switch {
		case u.Host == "" && u.PathPrefix == "":
			return fieldErr(fmt.Sprintf("untagged[%d]", i), "want host, pathPrefix or both")
		case u.PathPrefix != "" && !strings.HasPrefix(u.PathPrefix, "/"):
			return fieldErr(fmt.Sprintf("untagged[%d].pathPrefix", i), "%q must start with /", u.PathPrefix)
		case u.Host != "" && !validHostPattern(u.Host):
			return fieldErr(fmt.Sprintf("untagged[%d].host", i), "%q: want a host name, or *.suffix", u.Host)
		}
	}
	if c.JWTPayloadKey == "" {
		c.JWTPayloadKey = DefaultJWTPayloadKey
	}
	seen := map[string]bool{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if err := r.validate(); err != nil {
			return prefixed(fmt.Sprintf("rules[%d].", i), err)
		}
		if seen[r.Name] {
			return fieldErr(fmt.Sprintf("rules[%d].name", i), "duplicate rule name %q", r.Name)
		}
		seen[r.Name] = true
	}
	if err := c.validateCallers(); err != nil {
		return err
	}
	return c.validateNodes()
}

func (r *Rule) validate() error {
	if r.Name == "" {
		return fieldErr("name", "required")
	}
	switch r.Mode {
	case ModeAsync, ModeOptIn, ModeSync:
	case "":
		return fieldErr("mode", "required (async, opt-in or sync)")
	default:
		return fieldErr("mode", "%q is not async, opt-in or sync", r.Mode)
	}
	for j, m := range r.Match.Methods {
		if m == "" || strings.ToUpper(m) != m {
			return fieldErr(fmt.Sprintf("match.methods[%d]", j), "%q must be an upper-case method", m)
		}
	}
	if p := r.Match.PathPrefix; p != "" && !strings.HasPrefix(p, "/") {
		return fieldErr("match.pathPrefix", "%q must start with /", p)
	}
	if r.Match.PathRegex != "" {
		re, err := regexp.Compile(r.Match.PathRegex)
		if err != nil {
			return fieldErr("match.pathRegex", "%w", err)
		}
		r.pathRegex = re
	}
	if r.Mode == ModeSync {
		// It runs nothing here, but a route annotation may make it async
		// (Annotated, which checks the rest then): a target it carries
		// must hold up.
		if r.Target != nil {
			if err := r.Target.validate(); err != nil {
				return prefixed("target.", err)
			}
		}
		return nil
	}
	return r.validateRun()
}

// validateRun checks (and defaults) what an async or opt-in rule runs
// with: everything but its name, mode and match.
func (r *Rule) validateRun() error {
	if r.BodyLimit == 0 {
		r.BodyLimit = DefaultBodyLimit
	}
	if r.BodyLimit < 0 || r.BodyLimit > MaxBodyLimit {
		return fieldErr("bodyLimit", "%d is outside 1..%d", r.BodyLimit, MaxBodyLimit)
	}
	if r.Timeout == 0 {
		r.Timeout = Duration(DefaultTimeout)
	}
	switch r.OnCollectorDown {
	case "":
		r.OnCollectorDown = CollectorDownReject
	case CollectorDownReject, CollectorDownPassthrough:
	default:
		return fieldErr("onCollectorDown", "%q is not reject or passthrough", r.OnCollectorDown)
	}
	if err := r.Callback.validate(); err != nil {
		return prefixed("callback.", err)
	}
	if r.Target != nil {
		if err := r.Target.validate(); err != nil {
			return prefixed("target.", err)
		}
	}
	if r.Retry.MaxAttempts == 0 {
		r.Retry.MaxAttempts = DefaultMaxAttempts
	}
	if r.Retry.MaxAttempts < 1 || r.Retry.MaxAttempts > 100 {
		return fieldErr("retry.maxAttempts", "%d is outside 1..100", r.Retry.MaxAttempts)
	}
	if r.Retry.InitialBackoff == 0 {
		r.Retry.InitialBackoff = Duration(DefaultInitialBackoff)
	}
	if r.Retry.MaxBackoff == 0 {
		r.Retry.MaxBackoff = Duration(DefaultMaxBackoff)
	}
	if r.Retry.MaxBackoff < r.Retry.InitialBackoff {
		return fieldErr("retry.maxBackoff", "must not be below retry.initialBackoff")
	}
	if r.IdempotencyWindow == nil {
		w := Duration(idempotency.DefaultWindow)
		r.IdempotencyWindow = &w
	}
	if w := r.IdempotencyWindow.D(); w != 0 && (w < time.Second || w > idempotency.MaxWindow) {
		return fieldErr("idempotencyWindow", "%s is outside 1s..%s (0s turns Idempotency-Key off)", w, idempotency.MaxWindow)
	}
	if r.Ordering != nil {
		return r.Ordering.validate()
	}
	return nil
}

// Request is what Match looks at.
type Request struct {
	Route     string // "" when the filter did not read it
	Authority string
	Method    string
	Path      string // may include a query; it is ignored
}

// Annotation keys of a route's filter_metadata["asyncmesh"].
const (
	AnnotationRule     = "rule"     // required: the name of the rule to apply
	AnnotationMode     = "mode"     // optional: overrides the rule's mode
	AnnotationCallback = "callback" // optional: overrides the rule's callback URL
)

// Annotated returns the rule a route annotation selects: the named rule with
// the annotation's mode and callback, if given. An annotation that names no
// rule, an unknown key or a bad value is an error (the filter logs it and
// falls back to matching).
func (c *Config) Annotated(kv [][2]string) (*Rule, error) {
	var name, mode, callback string
	for _, p := range kv {
		switch p[0] {
		case AnnotationRule:
			name = p[1]
		case AnnotationMode:
			mode = p[1]
		case AnnotationCallback:
			callback = p[1]
		default:
			return nil, fmt.Errorf("route annotation: unknown key %q (want rule, mode, callback)", p[0])
		}
	}
	if name == "" {
		return nil, errors.New("route annotation: rule: required")
	}
	var base *Rule
	for i := range c.Rules {
		if c.Rules[i].Name == name {
			base = &c.Rules[i]
			break
		}
	}
	if base == nil {
		return nil, fmt.Errorf("route annotation: rule %q is not in the configuration", name)
	}
	r := *base
	switch Mode(mode) {
	case "":
	case ModeAsync, ModeOptIn, ModeSync:
		r.Mode = Mode(mode)
	default:
		return nil, fmt.Errorf("route annotation: mode %q is not async, opt-in or sync", mode)
	}
	if callback != "" {
		if r.Callback.Select != nil {
			return nil, fmt.Errorf("route annotation: callback: rule %q selects its callback by a request parameter", name)
		}
		if err := CheckCallbackURLFor(r.Callback.Protocol, callback); err != nil {
			return nil, fmt.Errorf("route annotation: callback: %w", err)
		}
		r.Callback.URL = callback
	}
	if r.Mode != ModeSync && r.Callback.URL == "" && r.Callback.Select == nil && !r.Callback.AllowOverride {
		return nil, fmt.Errorf("route annotation: rule %q has no callback URL", name)
	}
	if base.Mode == ModeSync && r.Mode != ModeSync {
		// Made async here: what validation skipped for a sync rule (its
		// callback, retry, limits and their defaults) is checked now.
		if err := r.validateRun(); err != nil {
			return nil, fmt.Errorf("route annotation: rule %q as %s: %w", name, r.Mode, err)
		}
	}
	return &r, nil
}

// NeedsRoute reports whether any rule matches by Envoy route name, so that the
// filter reads that property only when it must.
func (c *Config) NeedsRoute() bool {
	for i := range c.Rules {
		if c.Rules[i].Match.Route != "" {
			return true
		}
	}
	return false
}

// Match returns the first rule matching req, or nil.
func (c *Config) Match(req Request) *Rule {
	path := req.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for i := range c.Rules {
		if r := &c.Rules[i]; r.matches(req, path) {
			return r
		}
	}
	return nil
}

func (r *Rule) matches(req Request, path string) bool {
	m := &r.Match
	if m.Route != "" && m.Route != req.Route {
		return false
	}
	if m.Host != "" && !hostMatches(m.Host, req.Authority) {
		return false
	}
	if len(m.Methods) > 0 {
		found := false
		for _, x := range m.Methods {
			if x == req.Method {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if m.PathPrefix != "" && !strings.HasPrefix(path, m.PathPrefix) {
		return false
	}
	if r.pathRegex != nil && !r.pathRegex.MatchString(path) {
		return false
	}
	return true
}

// validHostPattern reports whether p is a host name (letters, digits, -
// and .), optionally behind "*." .
func validHostPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func hostMatches(pattern, authority string) bool {
	host := authority
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return len(host) > len(suffix) && strings.HasSuffix(strings.ToLower(host), suffix)
	}
	return strings.EqualFold(host, pattern)
}
