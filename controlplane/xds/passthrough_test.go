package xds

import (
	"regexp"
	"strings"
	"testing"

	xmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	composite "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/composite/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// headers are what Envoy's matcher sees of a request: its headers.
type headers map[string]string

// chainFor evaluates the matcher as Envoy does (first matching entry,
// else on_no_match; a header matcher sees nothing when the header is
// absent, a string matcher matches the whole value) and returns the name of
// the composite chain the request takes.
func chainFor(t testing.TB, m *xmatcher.Matcher, req headers) string {
	t.Helper()
	for _, fm := range m.GetMatcherList().GetMatchers() {
		if eval(t, fm.Predicate, req) {
			return actionChain(t, fm.OnMatch)
		}
	}
	return actionChain(t, m.OnNoMatch)
}

func actionChain(t testing.TB, om *xmatcher.Matcher_OnMatch) string {
	t.Helper()
	var a composite.ExecuteFilterAction
	if err := om.GetAction().GetTypedConfig().UnmarshalTo(&a); err != nil {
		t.Fatal(err)
	}
	return a.FilterChainName
}

func eval(t testing.TB, p *xmatcher.Matcher_MatcherList_Predicate, req headers) bool {
	t.Helper()
	switch {
	case p.GetOrMatcher() != nil:
		for _, q := range p.GetOrMatcher().Predicate {
			if eval(t, q, req) {
				return true
			}
		}
		return false
	case p.GetAndMatcher() != nil:
		for _, q := range p.GetAndMatcher().Predicate {
			if !eval(t, q, req) {
				return false
			}
		}
		return true
	}
	sp := p.GetSinglePredicate()
	var in envoymatcher.HttpRequestHeaderMatchInput
	if err := sp.GetInput().GetTypedConfig().UnmarshalTo(&in); err != nil {
		t.Fatal(err)
	}
	v, ok := req[in.HeaderName]
	if !ok {
		return false
	}
	sm := sp.GetValueMatch()
	switch {
	case sm.GetSafeRegex() != nil:
		return regexp.MustCompile(`^(?:` + sm.GetSafeRegex().Regex + `)$`).MatchString(v)
	case sm.GetPrefix() != "":
		return strings.HasPrefix(v, sm.GetPrefix())
	case sm.GetExact() != "":
		return v == sm.GetExact()
	}
	t.Fatalf("string matcher %v: not evaluated here", sm)
	return false
}

// traceparentKept reports what the native chains decide for a value.
func traceparentKept(v string) bool {
	full := func(re string) bool { return regexp.MustCompile(`^(?:` + re + `)$`).MatchString(v) }
	return full(traceparentValid) && !full(traceparentInvalid)
}

func TestTraceparentMatchersAgreeWithParseParent(t *testing.T) {
	for _, v := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // a later version may add fields
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // version 00 has exactly 55
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
		"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
		"", "bogus",
	} {
		_, want := trace.ParseParent(v)
		if got := traceparentKept(v); got != want {
			t.Errorf("%q: native chains keep it %v, trace.ParseParent %v", v, got, want)
		}
	}
}

// FuzzTraceparentMatchers: Envoy's matcher keeps exactly the traceparent
// values the filter keeps.
func FuzzTraceparentMatchers(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("ca-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-")
	f.Add("00-00000000000000000000000000000000-0000000000000000-01")
	f.Fuzz(func(t *testing.T, v string) {
		if _, want := trace.ParseParent(v); traceparentKept(v) != want {
			t.Fatalf("%q: native chains keep it %v, trace.ParseParent %v", v, !want, want)
		}
	})
}

const passthroughRules = `
filter:
  collectorCluster: c
  untagged: [{pathPrefix: /healthz}, {host: "*.internal.example", pathPrefix: /metrics}, {pathPrefix: /slow/health}]
rules:
  - {name: prefix, match: {pathPrefix: /slow}, mode: async, callback: {url: "http://cb.example/x"}}
  - {name: optin, match: {pathPrefix: /maybe, methods: [POST]}, mode: opt-in, callback: {url: "http://cb.example/x"}}
  - {name: regex, match: {pathRegex: "^/orders/[0-9]+$", methods: [PUT, PATCH]}, mode: async, callback: {url: "http://cb.example/x"}}
  - {name: sync, match: {pathPrefix: /fast}, mode: sync}
  - {name: named, match: {route: reports}, mode: async, callback: {url: "http://cb.example/x"}}
`

func matcherOf(t testing.TB, src string) (*rules.Config, *xmatcher.Matcher) {
	t.Helper()
	f, err := rulesfile.Parse("rules.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.Config(nil)
	ext, err := FilterConfig(cfg, wasmOpts)
	if err != nil {
		t.Fatal(err)
	}
	var m matching.ExtensionWithMatcher
	if err := ext.TypedConfig.UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	return cfg, m.XdsMatcher
}

func TestPassThroughChains(t *testing.T) {
	_, m := matcherOf(t, passthroughRules)
	valid := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tc := range []struct {
		name string
		req  headers
		want string
	}{
		{"async prefix", headers{":path": "/slow?x=1", ":method": "GET"}, ChainWasm},
		{"async prefix, valid traceparent", headers{":path": "/slow", ":method": "GET", "traceparent": valid}, ChainWasm},
		{"opt-in asked", headers{":path": "/maybe", ":method": "POST", "prefer": "wait=5, Respond-Async"}, ChainWasm},
		{"opt-in not asked", headers{":path": "/maybe", ":method": "POST"}, ChainCreate},
		{"opt-in, other method", headers{":path": "/maybe", ":method": "GET", "prefer": "respond-async"}, ChainCreate},
		{"anchored regex", headers{":path": "/orders/12", ":method": "PUT"}, ChainWasm},
		{"regex, other method", headers{":path": "/orders/12", ":method": "GET", "traceparent": valid}, ChainKeep},
		{"replay anywhere", headers{":path": "/fast", ":method": "GET", "x-async-replay": "v2:x"}, ChainWasm},
		{"sync rule", headers{":path": "/fast", ":method": "POST", "traceparent": valid}, ChainKeep},
		{"no rule, no traceparent", headers{":path": "/other", ":method": "GET"}, ChainCreate},
		{"no rule, invalid traceparent", headers{":path": "/other", ":method": "GET", "traceparent": "00-" + strings.Repeat("0", 32) + "-00f067aa0ba902b7-01"}, ChainCreate},
		{"route-named rule: per route only", headers{":path": "/reports", ":method": "GET"}, ChainCreate},
		{"untagged path", headers{":path": "/healthz", ":method": "GET", "traceparent": valid}, ChainStrip},
		{"untagged host and path", headers{":path": "/metrics", ":authority": "A.Internal.Example:9090", ":method": "GET"}, ChainStrip},
		{"untagged path, other host", headers{":path": "/metrics", ":authority": "internal.example", ":method": "GET"}, ChainCreate},
		{"a rule wins over untagged", headers{":path": "/slow/health", ":method": "GET"}, ChainWasm},
	} {
		if got := chainFor(t, m, tc.req); got != tc.want {
			t.Errorf("%s: chain %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestRuleMatchingAnyRequestSendsAllToWasm(t *testing.T) {
	_, m := matcherOf(t, `
filter: {collectorCluster: c}
rules:
  - {name: all-posts-of-a-host, match: {host: api.example}, mode: async, callback: {url: "http://cb.example/x"}}
`)
	if got := chainFor(t, m, headers{":path": "/x", ":method": "GET"}); got != ChainWasm {
		t.Fatalf("chain %q: a rule without path or method may match anything", got)
	}
}

// FuzzWasmChainIsSuperset: every request a rule makes async (as the filter
// decides it) takes the Wasm chain: Envoy's matcher may send more to the
// filter, never less.
func FuzzWasmChainIsSuperset(f *testing.F) {
	cfg, m := matcherOf(f, passthroughRules)
	f.Add("/slow/x?y", "GET", "")
	f.Add("/maybe", "POST", "respond-async")
	f.Add("/orders/7", "PATCH", "")
	f.Fuzz(func(t *testing.T, path, method, prefer string) {
		req := headers{":path": path, ":method": method}
		if prefer != "" {
			req["prefer"] = prefer
		}
		r := cfg.Match(rules.Request{Method: method, Path: path})
		if r == nil || r.Mode == rules.ModeSync {
			return
		}
		if r.Mode == rules.ModeOptIn && !strings.Contains(strings.ToLower(prefer), "respond-async") {
			return
		}
		if got := chainFor(t, m, req); got != ChainWasm {
			t.Fatalf("%s %q (Prefer %q): rule %s makes it async, but it takes chain %q", method, path, prefer, r.Name, got)
		}
	})
}

func TestPathPrefixOf(t *testing.T) {
	for _, tc := range []struct{ re, want string }{
		{"^/orders/[0-9]+$", "/orders/"},
		{"^/a(b|c)", "/a"},
		{"/orders/[0-9]+", ""}, // unanchored: matches anywhere in the path
		{"^(?i)/orders", ""},
		{"^(/a|/b)", ""}, // a group is no literal
		{"^.*", ""},
	} {
		if got := pathPrefixOf(&rules.Match{PathRegex: tc.re}); got != tc.want {
			t.Errorf("%q: prefix %q, want %q", tc.re, got, tc.want)
		}
	}
}

// The sidecar's routes that the matcher cannot judge, annotated ones and
// those a rule names, send all of their requests to the Wasm filter.
func TestSidecarRouteOverrides(t *testing.T) {
	src := strings.Replace(passthroughRules, "  collectorCluster: c\n", "  collectorCluster: c\n  routeAnnotations: true\n", 1)
	f, err := rulesfile.Parse("rules.yaml", []byte(src+`
sidecar:
  listen: "127.0.0.1:10000"
  clusters: [{name: c, address: "127.0.0.1:1"}, {name: service, address: "127.0.0.1:2"}]
  routes:
    - {name: annotated, prefix: /a, cluster: service, annotations: {rule: prefix}}
    - {name: reports, prefix: /reports, cluster: service}
    - {name: rest, prefix: /, cluster: service}
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := sidecarResources(f)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"annotated": true, "reports": true, "rest": false}
	for _, r := range res[resource.RouteType][0].(*route.RouteConfiguration).VirtualHosts[0].Routes {
		w, ok := want[r.Name]
		if !ok {
			continue
		}
		got := r.TypedPerFilterConfig[FilterName]
		if (got != nil) != w || (got != nil && !proto.Equal(got, RouteOverride())) {
			t.Errorf("route %s: override %v, want one: %v", r.Name, got, w)
		}
	}
}

// The static envoy.yaml's override is RouteOverride.
func TestStaticRouteOverrideDecodes(t *testing.T) {
	js, err := StaticRouteOverride()
	if err != nil {
		t.Fatal(err)
	}
	var a matching.ExtensionWithMatcherPerRoute
	got := new(anypb.Any)
	if err := protojson.Unmarshal(js, got); err != nil {
		t.Fatal(err)
	}
	if err := got.UnmarshalTo(&a); err != nil || actionChain(t, a.XdsMatcher.OnNoMatch) != ChainWasm {
		t.Fatalf("override %s: %v", js, err)
	}
}
