package xds

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	mutation "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	composite "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/composite/v3"
	headermutation "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	h2m "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_to_metadata/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	envoymatcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Pass-through at Envoy's own cost.
//
// Most requests through a sidecar are not async, and entering the Wasm VM
// at all costs about a tenth of Envoy's capacity (make bench's empty-filter
// floor). So the filter Envoy runs is not the Wasm filter alone but an
// ExtensionWithMatcher around a composite filter: Envoy's own matcher
// decides, before any VM is entered, which of three named filter chains a
// request takes:
//
//   - "wasm", the asyncmesh Wasm filter: a request some async or opt-in
//     rule may match (a superset, decided on :path prefixes, methods and the
//     Prefer header; the filter still decides exactly), a replay (it carries
//     x-async-replay), and every request of a route that carries
//     RouteOverride (routes a rule names, annotated routes);
//   - "keep", native: a valid W3C traceparent (the same language as
//     trace.ParseParent, as two regular expressions): header_to_metadata
//     copies its trace id, header_mutation strips every caller-sent
//     x-async-* header and sets x-async-trace-id on the request and the
//     response;
//   - "create", native: no valid traceparent: two %UNIQUE_ID% (UUID v4,
//     Envoy's random generator) become the trace id and the parent id of a
//     new sampled traceparent, then as "keep";
//   - "strip", native: a request the rules file's filter.untagged lists (and
//     no rule may make async): only the caller's x-async-* headers are
//     removed.
//
// The wire contract of a pass-through request is the same whichever side
// serves it (e2e TestSyncPassThrough, TestNativePassThroughContract). CEL
// formatters would say the same in fewer lines but cost 3-4× more Envoy CPU
// per request (measured: a CEL traceparent check alone is ~12 µs, the whole
// native chain ~5 µs for "keep").

// Names of the composite's filter chains.
const (
	ChainWasm   = "wasm"
	ChainKeep   = "keep"
	ChainCreate = "create"
	ChainStrip  = "strip"
)

// FilterTypeURL is the type of the ECDS resource FilterName: bootstraps
// list it in the filter's config_discovery.type_urls.
const FilterTypeURL = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"

// metadataNamespace holds the trace and parent ids between the native
// chain's filters.
const metadataNamespace = "asyncmesh"

// Regular expressions of the traceparent header (RE2, matched against the
// whole value by Envoy): a value is kept when it matches traceparentValid
// and not traceparentInvalid, which is exactly trace.ParseParent's
// language (TestTraceparentMatchersAgreeWithParseParent,
// FuzzTraceparentMatchers): lower-case hex, version ff refused, version 00
// exactly 55 characters, later versions possibly followed by "-…" (any
// bytes: (?s), as ParseParent reads nothing past the flags), and neither
// id all zeros.
const (
	traceparentValid   = `(?s)[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?`
	traceparentInvalid = `(?s)ff-.*|[0-9a-f]{2}-0{32}-.*|[0-9a-f]{2}-[0-9a-f]{32}-0{16}-.*|00-.{52}-.*`
)

// anyOf packs m deterministically (the composite's chains are a map):
// snapshot versions are hashes of the encoding.
func anyOf(m proto.Message) *anypb.Any {
	a := new(anypb.Any)
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("xds: packing %T: %v", m, err)) // only for messages of known types
	}
	return a
}

func ext(name string, m proto.Message) *core.TypedExtensionConfig {
	return &core.TypedExtensionConfig{Name: name, TypedConfig: anyOf(m)}
}

// PassThroughFilter wraps the Wasm filter's configuration in the matcher
// and composite filter described above: the resource Envoy gets over ECDS
// (named FilterName), and the typed_config of the static envoy.yaml.
func PassThroughFilter(cfg *rules.Config, wasmFilter *anypb.Any) *matching.ExtensionWithMatcher {
	comp := &composite.Composite{NamedFilterChains: map[string]*composite.FilterChainConfiguration{
		ChainWasm:   {TypedConfig: []*core.TypedExtensionConfig{{Name: "asyncmesh.wasm", TypedConfig: wasmFilter}}},
		ChainKeep:   {TypedConfig: keepChain()},
		ChainCreate: {TypedConfig: createChain()},
		ChainStrip:  {TypedConfig: []*core.TypedExtensionConfig{ext("asyncmesh.strip", stripMutation())}},
	}}
	m := &xmatcher.Matcher{OnNoMatch: execute(ChainWasm)} // a rule may match any request
	if p := wasmPredicate(cfg); p != nil {
		ms := []*xmatcher.Matcher_MatcherList_FieldMatcher{{Predicate: p, OnMatch: execute(ChainWasm)}}
		if u := untaggedPredicate(cfg.Untagged); u != nil {
			ms = append(ms, &xmatcher.Matcher_MatcherList_FieldMatcher{Predicate: u, OnMatch: execute(ChainStrip)})
		}
		ms = append(ms,
			&xmatcher.Matcher_MatcherList_FieldMatcher{Predicate: header("traceparent", regex(traceparentInvalid)), OnMatch: execute(ChainCreate)},
			&xmatcher.Matcher_MatcherList_FieldMatcher{Predicate: header("traceparent", regex(traceparentValid)), OnMatch: execute(ChainKeep)},
		)
		m = &xmatcher.Matcher{
			MatcherType: &xmatcher.Matcher_MatcherList_{MatcherList: &xmatcher.Matcher_MatcherList{Matchers: ms}},
			OnNoMatch:   execute(ChainCreate),
		}
	}
	return &matching.ExtensionWithMatcher{ExtensionConfig: ext("asyncmesh.composite", comp), XdsMatcher: m}
}

// RouteOverride is the typed_per_filter_config (under FilterName) of a
// route whose requests all go to the Wasm filter: a route a rule names
// (match.route) or one with an asyncmesh annotation, which Envoy's matcher
// cannot see.
func RouteOverride() *anypb.Any {
	return anyOf(&matching.ExtensionWithMatcherPerRoute{XdsMatcher: &xmatcher.Matcher{OnNoMatch: execute(ChainWasm)}})
}

func execute(chain string) *xmatcher.Matcher_OnMatch {
	return &xmatcher.Matcher_OnMatch{OnMatch: &xmatcher.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{
		Name: chain, TypedConfig: anyOf(&composite.ExecuteFilterAction{FilterChainName: chain})}}}
}

// wasmPredicate is a superset of the requests some rule may make async, and
// the replays; nil when a rule may match any request.
func wasmPredicate(cfg *rules.Config) *xmatcher.Matcher_MatcherList_Predicate {
	preds := []*xmatcher.Matcher_MatcherList_Predicate{header("x-async-replay", regex(`(?s).*`))}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		if r.Mode == rules.ModeSync || r.Match.Route != "" {
			continue // sync never enters; a route name is matched per route (RouteOverride)
		}
		var and []*xmatcher.Matcher_MatcherList_Predicate
		if p := pathPrefixOf(&r.Match); p != "" {
			and = append(and, header(":path", prefix(p)))
		}
		if len(r.Match.Methods) > 0 {
			var ms []*xmatcher.Matcher_MatcherList_Predicate
			for _, m := range r.Match.Methods {
				ms = append(ms, header(":method", &xmatcher.StringMatcher{MatchPattern: &xmatcher.StringMatcher_Exact{Exact: m}}))
			}
			and = append(and, anyPredicate(ms))
		}
		if r.Mode == rules.ModeOptIn {
			// Only with Prefer: respond-async (parsePrefer reads it case-insensitively,
			// and the value may hold any byte around it: (?s)).
			and = append(and, header("prefer", regex(`(?is).*respond-async.*`)))
		}
		if len(and) == 0 {
			return nil // a rule that may match any request: everything enters the filter
		}
		preds = append(preds, allPredicate(and))
	}
	return anyPredicate(preds)
}

// untaggedPredicate matches the requests filter.untagged lists, or is nil.
func untaggedPredicate(us []rules.Untagged) *xmatcher.Matcher_MatcherList_Predicate {
	var ps []*xmatcher.Matcher_MatcherList_Predicate
	for _, u := range us {
		var and []*xmatcher.Matcher_MatcherList_Predicate
		if u.Host != "" {
			// :authority may carry a port; host names are case-insensitive.
			host := regexp.QuoteMeta(strings.TrimPrefix(u.Host, "*."))
			if strings.HasPrefix(u.Host, "*.") {
				host = `[^:]+\.` + host
			}
			and = append(and, header(":authority", regex(`(?i)`+host+`(:[0-9]+)?`)))
		}
		if u.PathPrefix != "" {
			and = append(and, header(":path", prefix(u.PathPrefix)))
		}
		ps = append(ps, allPredicate(and))
	}
	if len(ps) == 0 {
		return nil
	}
	return anyPredicate(ps)
}

// pathPrefixOf is a literal prefix of every :path the match accepts, or ""
// when there is none (then the rule may match any path).
func pathPrefixOf(m *rules.Match) string {
	if m.PathPrefix != "" {
		return m.PathPrefix
	}
	if m.PathRegex == "" {
		return ""
	}
	// Only an anchored expression says how the path begins: ^/orders/[0-9]+
	// gives /orders/. Rules match the path without its query, which
	// begins the same.
	re, err := syntax.Parse(m.PathRegex, syntax.Perl)
	if err != nil {
		return ""
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) < 2 || re.Sub[0].Op != syntax.OpBeginText {
		return ""
	}
	if lit := re.Sub[1]; lit.Op == syntax.OpLiteral && lit.Flags&syntax.FoldCase == 0 {
		return string(lit.Rune)
	}
	return ""
}

func anyPredicate(ps []*xmatcher.Matcher_MatcherList_Predicate) *xmatcher.Matcher_MatcherList_Predicate {
	if len(ps) == 1 {
		return ps[0]
	}
	return &xmatcher.Matcher_MatcherList_Predicate{MatchType: &xmatcher.Matcher_MatcherList_Predicate_OrMatcher{
		OrMatcher: &xmatcher.Matcher_MatcherList_Predicate_PredicateList{Predicate: ps}}}
}

func allPredicate(ps []*xmatcher.Matcher_MatcherList_Predicate) *xmatcher.Matcher_MatcherList_Predicate {
	if len(ps) == 1 {
		return ps[0]
	}
	return &xmatcher.Matcher_MatcherList_Predicate{MatchType: &xmatcher.Matcher_MatcherList_Predicate_AndMatcher{
		AndMatcher: &xmatcher.Matcher_MatcherList_Predicate_PredicateList{Predicate: ps}}}
}

func prefix(p string) *xmatcher.StringMatcher {
	return &xmatcher.StringMatcher{MatchPattern: &xmatcher.StringMatcher_Prefix{Prefix: p}}
}

func header(name string, m *xmatcher.StringMatcher) *xmatcher.Matcher_MatcherList_Predicate {
	return &xmatcher.Matcher_MatcherList_Predicate{MatchType: &xmatcher.Matcher_MatcherList_Predicate_SinglePredicate_{
		SinglePredicate: &xmatcher.Matcher_MatcherList_Predicate_SinglePredicate{
			Input:   &xdscore.TypedExtensionConfig{Name: name, TypedConfig: anyOf(&envoymatcher.HttpRequestHeaderMatchInput{HeaderName: name})},
			Matcher: &xmatcher.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: m},
		}}}
}

func regex(re string) *xmatcher.StringMatcher {
	return &xmatcher.StringMatcher{MatchPattern: &xmatcher.StringMatcher_SafeRegex{SafeRegex: &xmatcher.RegexMatcher{
		EngineType: &xmatcher.RegexMatcher_GoogleRe2{GoogleRe2: &xmatcher.RegexMatcher_GoogleRE2{}}, Regex: re}}}
}

// The native chains. Header values of header_mutation are Envoy's
// substitution formats: %REQ(x)% reads the request header as it is then,
// %DYNAMIC_METADATA(ns:key)% what header_to_metadata stored.
const (
	traceIDValue = "%DYNAMIC_METADATA(" + metadataNamespace + ":trace_id)%"
	parentValue  = "%DYNAMIC_METADATA(" + metadataNamespace + ":parent_id)%"
	// Scratch headers of "create", never seen upstream: stripped with the
	// namespace.
	scratchTrace  = "x-async-scratch-trace"
	scratchParent = "x-async-scratch-parent"
)

func keepChain() []*core.TypedExtensionConfig {
	return []*core.TypedExtensionConfig{
		ext("asyncmesh.trace_id", &h2m.Config{RequestRules: []*h2m.Config_Rule{
			toMetadata("traceparent", "trace_id", `^[0-9a-f]{2}-([0-9a-f]{32})-.*$`, `\1`, false)}}),
		ext("asyncmesh.tag", tagMutation(nil)),
	}
}

func createChain() []*core.TypedExtensionConfig {
	return []*core.TypedExtensionConfig{
		ext("asyncmesh.ids", &headermutation.HeaderMutation{Mutations: &headermutation.Mutations{RequestMutations: []*mutation.HeaderMutation{
			set(scratchTrace, "%UNIQUE_ID%"), set(scratchParent, "%UNIQUE_ID%")}}}),
		ext("asyncmesh.trace_id", &h2m.Config{RequestRules: []*h2m.Config_Rule{
			toMetadata(scratchTrace, "trace_id", `^(.{8})-(.{4})-(.{4})-(.{4})-(.{12})$`, `\1\2\3\4\5`, true),
			toMetadata(scratchParent, "parent_id", `^.{8}-.{4}-.{4}-(.{4})-(.{12})$`, `\1\2`, true)}}),
		ext("asyncmesh.tag", tagMutation(set("traceparent", "00-"+traceIDValue+"-"+parentValue+"-01"))),
	}
}

// stripMutation removes every caller-sent x-async-* header.
func stripMutation() *headermutation.HeaderMutation {
	return &headermutation.HeaderMutation{Mutations: &headermutation.Mutations{RequestMutations: []*mutation.HeaderMutation{stripAsync()}}}
}

func stripAsync() *mutation.HeaderMutation {
	return &mutation.HeaderMutation{Action: &mutation.HeaderMutation_RemoveOnMatch_{RemoveOnMatch: &mutation.HeaderMutation_RemoveOnMatch{
		KeyMatcher: &envoymatcher.StringMatcher{MatchPattern: &envoymatcher.StringMatcher_Prefix{Prefix: "x-async-"}}}}}
}

// tagMutation strips the caller's x-async-* headers, then sets
// x-async-trace-id (and first, when given, traceparent) on the request and
// the trace id on the response.
func tagMutation(traceparent *mutation.HeaderMutation) *headermutation.HeaderMutation {
	req := []*mutation.HeaderMutation{stripAsync()}
	if traceparent != nil {
		req = append(req, traceparent)
	}
	req = append(req, set("x-async-trace-id", traceIDValue))
	return &headermutation.HeaderMutation{Mutations: &headermutation.Mutations{
		RequestMutations:  req,
		ResponseMutations: []*mutation.HeaderMutation{set("x-async-trace-id", traceIDValue)},
	}}
}

func set(name, value string) *mutation.HeaderMutation {
	return &mutation.HeaderMutation{Action: &mutation.HeaderMutation_Append{Append: &core.HeaderValueOption{
		Header: &core.HeaderValue{Key: name, Value: value}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}}
}

func toMetadata(hdr, key, pattern, substitution string, remove bool) *h2m.Config_Rule {
	return &h2m.Config_Rule{Header: hdr, Remove: remove, OnHeaderPresent: &h2m.Config_KeyValuePair{
		MetadataNamespace: metadataNamespace, Key: key,
		RegexValueRewrite: &envoymatcher.RegexMatchAndSubstitute{
			Pattern: &envoymatcher.RegexMatcher{Regex: pattern}, Substitution: substitution}}}
}

// StaticFilter is the asyncmesh entry of a static bootstrap's http_filters
// (envoy.yaml), as JSON, which YAML reads too: the same filter the control
// plane serves over ECDS, with cfg embedded.
func StaticFilter(cfg *rules.Config, w WasmOptions) ([]byte, error) {
	ext, err := FilterConfig(cfg, w)
	if err != nil {
		return nil, err
	}
	return protojson.Marshal(&hcm.HttpFilter{Name: FilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: ext.TypedConfig}})
}

// StaticRouteOverride is RouteOverride as JSON, for a static route's
// typed_per_filter_config under the filter's name.
func StaticRouteOverride() ([]byte, error) { return protojson.Marshal(RouteOverride()) }
