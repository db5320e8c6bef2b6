package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	skip "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	composite "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/composite/v3"
	headermutation "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// A variant is one listener: its routes and its HTTP filters before the
// router, and the requests its targets send.
type variant struct {
	name     string
	sidecar  bool     // envoy.yaml's route table instead of a single prefix route
	filters  []string // http_filters entries (JSON)
	requests []request
}

type request struct {
	label, path string
	hdrs        []string
}

// The three kinds of pass-through request of the demo rules: no
// traceparent (created), a valid one (kept), a path filter.untagged lists.
var (
	created  = request{"traceparent created", "/fast", nil}
	kept     = request{"traceparent kept", "/fast", traceparent}
	untagged = request{"untagged", "/healthz", nil}
	plain    = request{"", "/fast", traceparent}
)

// variants builds the listeners: the filter exactly as the control plane
// serves it, and the pieces it is made of, taken from that same
// configuration.
func variants(cfg *rules.Config, wasmPath string) ([]variant, error) {
	full, err := xds.FilterConfig(cfg, xds.WasmOptions{Path: wasmPath})
	if err != nil {
		return nil, err
	}
	// The control plane serves an ExtensionWithMatcher around the
	// composite; the candidate layout measured here (bench/PASSTHROUGH.md)
	// is the composite carrying that matcher itself.
	var served matching.ExtensionWithMatcher
	if err := full.TypedConfig.UnmarshalTo(&served); err != nil {
		return nil, fmt.Errorf("the filter is not an ExtensionWithMatcher: %w", err)
	}
	var comp composite.Composite
	if err := served.GetExtensionConfig().GetTypedConfig().UnmarshalTo(&comp); err != nil {
		return nil, fmt.Errorf("the filter does not wrap a composite: %w", err)
	}
	comp.Matcher = served.XdsMatcher
	chain := func(name string) []string {
		var fs []string
		if c := comp.NamedFilterChains[name]; c != nil {
			for _, f := range c.TypedConfig {
				fs = append(fs, filterJSON(f.Name, f.TypedConfig))
			}
		}
		return fs
	}
	bare := proto.Clone(&comp).(*composite.Composite)
	bare.Matcher = nil
	// The layout served: the same composite and matcher, the matcher in an
	// ExtensionWithMatcher around the composite.
	ewm := &matching.ExtensionWithMatcher{
		ExtensionConfig: &core.TypedExtensionConfig{Name: "asyncmesh.composite", TypedConfig: mustAny(bare)},
		XdsMatcher:      comp.Matcher,
	}
	// The ExtensionWithMatcher's matcher alone: every action SkipFilter.
	skipOnly := proto.Clone(ewm).(*matching.ExtensionWithMatcher)
	eachAction(skipOnly.XdsMatcher, func(a *xdscore.TypedExtensionConfig) { a.TypedConfig = mustAny(&skip.SkipFilter{}) })
	// The composite's matcher alone: every action names a chain that does
	// not exist (the composite then runs nothing).
	noChain := proto.Clone(&comp).(*composite.Composite)
	eachAction(noChain.Matcher, func(a *xdscore.TypedExtensionConfig) {
		a.TypedConfig = mustAny(&composite.ExecuteFilterAction{FilterChainName: "none"})
	})
	// The composite with the real chains behind a trivial matcher: always
	// "keep".
	alwaysKeep := proto.Clone(&comp).(*composite.Composite)
	alwaysKeep.Matcher = &xmatcher.Matcher{OnNoMatch: executeChain(xds.ChainKeep)}
	// The composite with a chain of one filter that does nothing.
	noop := &composite.Composite{
		NamedFilterChains: map[string]*composite.FilterChainConfiguration{"noop": {TypedConfig: []*core.TypedExtensionConfig{
			{Name: "noop", TypedConfig: mustAny(&headermutation.HeaderMutation{})}}}},
		Matcher: &xmatcher.Matcher{OnNoMatch: executeChain("noop")},
	}

	emptyWasm, err := filepath.Abs("bench/cmd/bench/empty-filter.wasm")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(emptyWasm); err != nil {
		return nil, fmt.Errorf("the empty Wasm filter (run from the repository's root): %w", err)
	}
	vs := []variant{
		{name: baseline, requests: []request{{"", "/fast", nil}}},
		{name: "no filter (again, a control)", requests: []request{{"", "/fast", nil}}},
		{name: "no filter, sidecar routes", sidecar: true, requests: []request{plain}},
		{name: "asyncmesh filter", filters: []string{filterJSON(xds.FilterName, full.TypedConfig)}, requests: []request{created, kept, untagged}},
		{name: "asyncmesh filter, sidecar routes", sidecar: true, filters: []string{filterJSON(xds.FilterName, full.TypedConfig)}, requests: []request{kept}},
		{name: "candidate: the composite carrying its matcher", filters: []string{filterJSON(xds.FilterName, mustAny(&comp))}, requests: []request{created, kept, untagged}},
		{name: "ExtensionWithMatcher's matcher alone (actions: SkipFilter)", filters: []string{filterJSON("skip", mustAny(skipOnly))}, requests: []request{kept}},
		{name: "composite's matcher alone (actions: no chain)", filters: []string{filterJSON("nochain", mustAny(noChain))}, requests: []request{kept}},
		{name: "composite with a no-op chain", filters: []string{filterJSON("noop", mustAny(noop))}, requests: []request{kept}},
		{name: "composite, keep chain, trivial matcher", filters: []string{filterJSON("keep", mustAny(alwaysKeep))}, requests: []request{kept}},
		{name: "keep chain in the HCM", filters: chain(xds.ChainKeep), requests: []request{kept}},
		{name: "create chain in the HCM", filters: chain(xds.ChainCreate), requests: []request{created}},
		{name: "strip chain in the HCM", filters: chain(xds.ChainStrip), requests: []request{untagged}},
		{name: "an empty header_mutation", filters: []string{filterJSON("empty", mustAny(&headermutation.HeaderMutation{}))}, requests: []request{plain}},
		{name: "empty Wasm filter", filters: []string{filterJSON("empty", mustAny(emptyWasmFilter(emptyWasm)))}, requests: []request{plain}},
	}
	return vs, nil
}

func executeChain(name string) *xmatcher.Matcher_OnMatch {
	return &xmatcher.Matcher_OnMatch{OnMatch: &xmatcher.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{
		Name: name, TypedConfig: mustAny(&composite.ExecuteFilterAction{FilterChainName: name})}}}
}

// eachAction calls f on every action of a matcher tree.
func eachAction(m *xmatcher.Matcher, f func(*xdscore.TypedExtensionConfig)) {
	if m == nil {
		return
	}
	on := func(o *xmatcher.Matcher_OnMatch) {
		switch x := o.GetOnMatch().(type) {
		case *xmatcher.Matcher_OnMatch_Action:
			f(x.Action)
		case *xmatcher.Matcher_OnMatch_Matcher:
			eachAction(x.Matcher, f)
		}
	}
	if m.OnNoMatch != nil {
		on(m.OnNoMatch)
	}
	for _, fm := range m.GetMatcherList().GetMatchers() {
		on(fm.OnMatch)
	}
}

func emptyWasmFilter(path string) *wasmfilter.Wasm {
	return &wasmfilter.Wasm{Config: &wasmv3.PluginConfig{Name: "empty", Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
		Runtime: "envoy.wasm.runtime.v8",
		Code: &core.AsyncDataSource{Specifier: &core.AsyncDataSource_Local{Local: &core.DataSource{
			Specifier: &core.DataSource_Filename{Filename: path}}}},
	}}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func filterJSON(name string, typed *anypb.Any) string {
	js, err := protojson.Marshal(&hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: typed}})
	if err != nil {
		panic(err)
	}
	return string(js)
}

const router = `{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}`

// simpleRoutes is the bench baseline's route table; sidecarRoutes is
// envoy.yaml's (the status routes' regular expressions come first).
const simpleRoutes = `[{"match":{"prefix":"/"},"route":{"cluster":"service"}}]`

const sidecarRoutes = `[
 {"name":"asyncmesh_events","match":{"safe_regex":{"regex":"/async/v1/requests/[^/]+/events"},"headers":[{"name":":method","string_match":{"exact":"GET"}}]},"route":{"cluster":"service","regex_rewrite":{"pattern":{"regex":"^/async"},"substitution":""},"timeout":"0s"}},
 {"name":"asyncmesh_status","match":{"safe_regex":{"regex":"/async/v1/requests/[^/]+(/result)?"},"headers":[{"name":":method","string_match":{"exact":"GET"}}]},"route":{"cluster":"service","regex_rewrite":{"pattern":{"regex":"^/async"},"substitution":""},"timeout":"75s"}},
 {"name":"asyncmesh_closed","match":{"prefix":"/async/"},"direct_response":{"status":404}},
 {"name":"annotated_async","match":{"prefix":"/annotated"},"route":{"cluster":"service","prefix_rewrite":"/slow"},"metadata":{"filter_metadata":{"asyncmesh":{"rule":"slow-report"}}}%s},
 {"name":"annotated_sync","match":{"prefix":"/slow/inline"},"route":{"cluster":"service","prefix_rewrite":"/slow"},"metadata":{"filter_metadata":{"asyncmesh":{"rule":"slow-report","mode":"sync"}}}%s},
 {"name":"service","match":{"prefix":"/"},"route":{"cluster":"service","timeout":"60s"}}]`

// bootstrap is one Envoy with a listener per variant on ports[i], its
// admin on ports[len(vs)], every route to the service on servicePort.
func bootstrap(vs []variant, ports []int, servicePort int) string {
	override := ""
	if o, err := xds.StaticRouteOverride(); err == nil {
		override = `,"typed_per_filter_config":{"` + xds.FilterName + `":` + string(o) + `}`
	}
	var b strings.Builder
	b.WriteString("# Generated by bench/cmd/passcost.\nstatic_resources:\n  listeners:\n")
	for i, v := range vs {
		routes := simpleRoutes
		if v.sidecar {
			o := ""
			for _, f := range v.filters {
				if strings.Contains(f, `"name":"`+xds.FilterName+`"`) {
					o = override
				}
			}
			routes = fmt.Sprintf(sidecarRoutes, o, o)
		}
		filters := append(append([]string(nil), v.filters...), router)
		fmt.Fprintf(&b, `  - name: v%d
    address: {socket_address: {address: 127.0.0.1, port_value: %d}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: v%d
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: %s}]}
          http_filters: [%s]
`, i, ports[i], i, strings.ReplaceAll(routes, "\n", ""), strings.Join(filters, ", "))
	}
	fmt.Fprintf(&b, `  clusters:
  - name: service
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: service, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}}]}]}
  - name: asyncmesh_collector
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: asyncmesh_collector, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]}
memory_allocator_manager: {bytes_to_release: 16777216, memory_release_interval: 1s}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %d}}
`, servicePort, ports[len(vs)])
	return b.String()
}
