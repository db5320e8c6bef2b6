package k8s

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	headermutation "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/ohler55/ojg/jp"
	"github.com/ohler55/ojg/oj"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

// applyEG applies one JSON patch of an EnvoyPatchPolicy to an xDS
// resource's JSON the way Envoy Gateway v1.9.1 does
// (internal/utils/jsonpatch.ApplyJSONPatches and ConvertPathToPointers,
// which cannot be imported: internal). Same libraries, same steps: the
// JSONPath is located with ojg, each location turned into a JSON pointer
// with Path appended, and RFC 6902 applied by json-patch v5 with
// EnsurePathExistsOnAdd.
func applyEG(doc []byte, op egv1a1.JSONPatchOperation) ([]byte, error) {
	path := ""
	if op.Path != nil {
		path = *op.Path
	}
	pointers := []string{path}
	if op.JSONPath != nil {
		obj, err := oj.Parse(doc)
		if err != nil {
			return nil, err
		}
		x, err := jp.ParseString(*op.JSONPath)
		if err != nil {
			return nil, fmt.Errorf("jsonPath %q: %w", *op.JSONPath, err)
		}
		pointers = nil
		for _, loc := range x.Locate(obj, 0) {
			p, err := pointerOf(loc)
			if err != nil {
				return nil, err
			}
			if path != "" {
				p = strings.TrimSuffix(p, "/") + "/" + strings.TrimPrefix(path, "/")
			}
			pointers = append(pointers, p)
		}
		if len(pointers) == 0 {
			return nil, fmt.Errorf("jsonPath %q selects nothing", *op.JSONPath)
		}
	}
	opts := jsonpatch.NewApplyOptions()
	opts.EnsurePathExistsOnAdd = true
	for _, p := range pointers {
		o := jsonpatch.Operation{}
		for k, v := range map[string]any{"op": string(op.Op), "path": p} {
			js, _ := json.Marshal(v)
			raw := json.RawMessage(js)
			o[k] = &raw
		}
		if op.Value != nil {
			raw := json.RawMessage(op.Value.Raw)
			o["value"] = &raw
		}
		var err error
		if doc, err = (jsonpatch.Patch{o}).ApplyWithOptions(doc, opts); err != nil {
			return nil, fmt.Errorf("%s %s: %w", op.Op, p, err)
		}
	}
	return doc, nil
}

// pointerOf is Envoy Gateway's expToPointer: a located JSONPath is only
// the root, indexes and keys (escaped as RFC 6901 says).
func pointerOf(e jp.Expr) (string, error) {
	var b strings.Builder
	for _, f := range e {
		switch f := f.(type) {
		case jp.Root:
		case jp.Nth:
			b.WriteString("/" + strconv.Itoa(int(f)))
		case jp.Child:
			b.WriteString("/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(string(f)))
		default:
			return "", fmt.Errorf("fragment %T in a located path", f)
		}
	}
	return b.String(), nil
}

// gatewayListener is a listener as Envoy Gateway builds one for a Gateway
// listener (named NAMESPACE/GATEWAY/LISTENER, its HTTP connection
// manager's filters ending with the router), here with two filter chains,
// each with a filter before the router, to show the filter lands before
// the router in every one.
func gatewayListener(name string) *listener.Listener {
	manager := func() *listener.Filter {
		m := &hcm.HttpConnectionManager{StatPrefix: "http-10080",
			RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: name, ConfigSource: &core.ConfigSource{
				ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}},
			HttpFilters: []*hcm.HttpFilter{
				{Name: "envoy.filters.http.header_mutation", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&headermutation.HeaderMutation{})}},
				{Name: xds.RouterFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{SuppressEnvoyHeaders: true})}},
			}}
		return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)}}
	}
	return &listener.Listener{Name: name,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: "::",
			PortSpecifier: &core.SocketAddress_PortValue{PortValue: 10080}}}},
		FilterChains:       []*listener.FilterChain{{Name: "https", Filters: []*listener.Filter{manager()}}},
		DefaultFilterChain: &listener.FilterChain{Name: name, Filters: []*listener.Filter{manager()}},
	}
}

// gatewayRoutes is Envoy Gateway's route configuration of that listener:
// a virtual host per hostname, routes named after the HTTPRoute rules; the
// route "exports" of the second host has another filter's per-route
// configuration, which the override must keep.
func gatewayRoutes(name string) *route.RouteConfiguration {
	rt := func(routeName string, perFilter map[string]*anypb.Any) *route.Route {
		return &route.Route{Name: routeName, Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action:               &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "httproute/shop/orders/rule/0"}}},
			TypedPerFilterConfig: perFilter}
	}
	other := map[string]*anypb.Any{"envoy.filters.http.header_mutation": mustAny(&headermutation.HeaderMutationPerRoute{})}
	return &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{
		{Name: name + "/orders.example", Domains: []string{"orders.example"}, Routes: []*route.Route{rt("exports", nil), rt("httproute/shop/orders/rule/0/match/0", nil)}},
		{Name: name + "/*", Domains: []string{"*"}, Routes: []*route.Route{rt("exports", other)}},
	}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

// TestEnvoyGatewayPatchesApply applies the rendered EnvoyPatchPolicy, as
// Envoy Gateway would, to a listener, route configuration and cluster list
// shaped like the ones it generates, and checks the outcome is valid Envoy
// configuration with everything where it belongs: the whole filter right
// before the router in each connection manager, the status routes first in
// every virtual host, in order, the override added to the named routes
// beside other filters' configuration, the collector's clusters added.
func TestEnvoyGatewayPatchesApply(t *testing.T) {
	src, _, err := renderChart(loadChart(t), "ci/envoy-gateway-values.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	chartObjs, err := decodeStream(src)
	if err != nil {
		t.Fatal(err)
	}
	var text string
	for _, cm := range byKind[*corev1.ConfigMap](chartObjs) {
		if cm.Name == releaseName+"-rules" {
			text = cm.Data["rules.yaml"]
		}
	}
	// The chart's rules and one naming a route, which Envoy's matcher cannot
	// judge: the patches then carry an override.
	f, err := rulesfile.Parse("rules.yaml", []byte(text+`
  - name: exports
    match: {route: exports}
    mode: async
    callback: {url: "https://hooks.example/exports"}
`))
	if err != nil {
		t.Fatal(err)
	}
	served, err := xds.FilterConfig(f.Config(nil), xds.WasmOptions{Path: xds.DefaultMeshWasmPath})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		wasmAPI  bool
		filter   string     // before the router
		want     *anypb.Any // its typed_config (nil: only its name is checked here, TestMeshBufferFilter checks the rest)
		override *anypb.Any
	}{
		{false, xds.FilterName, served.GetTypedConfig(), xds.RouteOverride()},
		{true, xds.BufferFilterName, nil, xds.BufferRouteOverride()},
	} {
		t.Run(fmt.Sprintf("wasmAPI=%v", tc.wasmAPI), func(t *testing.T) {
			applyRendered(t, f, chartObjs, tc.wasmAPI, tc.filter, tc.want, tc.override)
		})
	}
}

// applyRendered applies one render's EnvoyPatchPolicy and checks the result
// (TestEnvoyGatewayPatchesApply).
func applyRendered(t *testing.T, f *rulesfile.File, chartObjs []object, wasmAPI bool, filter string, want, override *anypb.Any) {
	t.Helper()
	o := xds.MeshOptions{Name: "asyncmesh", Namespace: namespace, Gateway: "shop", Collector: collectorService(t, chartObjs)}
	if wasmAPI {
		o.WasmAPI, o.Image, o.TargetKind, o.TargetName = true, filterImage, "Gateway", "shop"
	}
	out, err := xds.EnvoyGateway(f, o)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStream(string(out))
	if err != nil {
		t.Fatal(err)
	}
	policies := byKind[*egv1a1.EnvoyPatchPolicy](objs)
	if len(policies) != 1 {
		t.Fatalf("%d EnvoyPatchPolicies", len(policies))
	}
	policy := policies[0]

	const name = namespace + "/shop/http"
	resources := map[egv1a1.EnvoyResourceType]proto.Message{
		egv1a1.ListenerEnvoyResourceType:           gatewayListener(name),
		egv1a1.RouteConfigurationEnvoyResourceType: gatewayRoutes(name),
	}
	var added []*cluster.Cluster
	for _, p := range policy.Spec.JSONPatches {
		if p.Type == egv1a1.ClusterEnvoyResourceType && p.Operation.Path != nil && *p.Operation.Path == "" {
			// Envoy Gateway adds a whole resource as it is.
			c := new(cluster.Cluster)
			if err := protojson.Unmarshal(p.Operation.Value.Raw, c); err != nil {
				t.Fatal(err)
			}
			added = append(added, c)
			continue
		}
		target, ok := resources[p.Type]
		if !ok || p.Name != name {
			t.Fatalf("patch of %s %s: no such resource", p.Type, p.Name)
		}
		// Envoy Gateway marshals with the proto field names and reads the
		// patched JSON back into the type, then validates it.
		doc, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(target)
		if err != nil {
			t.Fatal(err)
		}
		if doc, err = applyEG(doc, p.Operation); err != nil {
			t.Fatalf("patch of %s: %v", p.Type, err)
		}
		next := target.ProtoReflect().New().Interface()
		if err := protojson.Unmarshal(doc, next); err != nil {
			t.Fatalf("patched %s: %v", p.Type, err)
		}
		if err := next.(interface{ Validate() error }).Validate(); err != nil {
			t.Fatalf("patched %s: %v", p.Type, err)
		}
		resources[p.Type] = next
	}

	if names := []string{added[0].GetName(), added[1].GetName()}; len(added) != 2 ||
		!slices.Equal(names, []string{f.Filter.CollectorCluster, xds.StatusCluster(f.Filter.CollectorCluster)}) {
		t.Errorf("clusters added: %v", names)
	}
	lis := resources[egv1a1.ListenerEnvoyResourceType].(*listener.Listener)
	for _, fc := range append(lis.GetFilterChains(), lis.GetDefaultFilterChain()) {
		var m hcm.HttpConnectionManager
		if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, hf := range m.GetHttpFilters() {
			got = append(got, hf.GetName())
		}
		if names := []string{"envoy.filters.http.header_mutation", filter, xds.RouterFilter}; !slices.Equal(got, names) {
			t.Errorf("chain %s: http filters %v, want %v", fc.GetName(), got, names)
			continue
		}
		if want != nil && !sameJSON(t, m.GetHttpFilters()[1].GetTypedConfig(), want) {
			t.Errorf("chain %s: the filter is not the one xDS serves", fc.GetName())
		}
	}
	rc := resources[egv1a1.RouteConfigurationEnvoyResourceType].(*route.RouteConfiguration)
	for _, vh := range rc.GetVirtualHosts() {
		var got []string
		for _, r := range vh.GetRoutes() {
			got = append(got, r.GetName())
			if r.GetName() != "exports" {
				continue
			}
			if o := r.GetTypedPerFilterConfig()[filter]; o == nil || !sameJSON(t, o, override) {
				t.Errorf("%s: route exports has no override", vh.GetName())
			}
			if vh.GetName() == name+"/*" && r.GetTypedPerFilterConfig()["envoy.filters.http.header_mutation"] == nil {
				t.Errorf("%s: the override dropped another filter's configuration", vh.GetName())
			}
		}
		if len(got) < 4 || !slices.Equal(got[:3], []string{"asyncmesh_events", "asyncmesh_status", "asyncmesh_closed"}) {
			t.Errorf("%s: routes %v, want the status routes first", vh.GetName(), got)
		}
	}
}

// sameJSON says whether two messages are the same configuration, whatever
// the byte encoding of the Any values inside them.
func sameJSON(t *testing.T, a, b proto.Message) bool {
	t.Helper()
	var trees [2]any
	for i, m := range []proto.Message{a, b} {
		js, err := protojson.Marshal(m)
		if err == nil {
			err = json.Unmarshal(js, &trees[i])
		}
		if err != nil {
			t.Fatalf("comparing configurations: %v", err)
		}
	}
	return reflect.DeepEqual(trees[0], trees[1])
}
