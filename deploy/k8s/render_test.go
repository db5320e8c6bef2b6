package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	composite "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/composite/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	istioapinet "istio.io/api/networking/v1alpha3"
	istiotype "istio.io/api/type/v1beta1"
	istioext "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	istionet "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

const filterImage = "registry.example/asyncmesh/filter:dev"

// chartValue reads a value of the rendered chart by its dotted path.
func chartValue(t *testing.T, vals map[string]any, path string) any {
	t.Helper()
	var v any = vals
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("values %s: %T at %s", path, v, k)
		}
		v = m[k]
	}
	return v
}

func chartPort(t *testing.T, vals map[string]any, path string) uint32 {
	t.Helper()
	n, err := strconv.ParseUint(fmt.Sprint(chartValue(t, vals, path)), 10, 16)
	if err != nil {
		t.Fatalf("values %s: %v", path, err)
	}
	return uint32(n)
}

// strictRulesConfig decodes a plugin configuration as the filter reads it.
func strictRulesConfig(t *testing.T, js []byte) rules.Config {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(js))
	d.DisallowUnknownFields()
	var c rules.Config
	if err := d.Decode(&c); err != nil {
		t.Fatalf("plugin configuration: %v\n%s", err, js)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("plugin configuration: %v", err)
	}
	return c
}

// TestRenderedIstio renders Istio mode's resources from the rules of the
// chart's istio variants, as docs/deploy.md says to, decodes them strictly,
// and checks they fit the pods the chart renders: the selectors select
// them, the collector cluster is where the collector listens, the replay
// secret is in the proxy's environment, every patch value is valid Envoy
// configuration and, with the whole filter, the module Envoy loads is in
// the filter image the chart mounts into istio-proxy, and the Wasm filter
// holds headers; with the WasmPlugin, it cannot.
func TestRenderedIstio(t *testing.T) {
	for _, tc := range []struct {
		values  string
		wasmAPI bool
	}{
		{"ci/istio-values.yaml", false},
		{"ci/istio-wasm-api-values.yaml", true},
	} {
		t.Run(tc.values, func(t *testing.T) {
			src, vals, err := renderChart(loadChart(t), tc.values, nil)
			if err != nil {
				t.Fatal(err)
			}
			chartObjs, err := decodeStream(src)
			if err != nil {
				t.Fatal(err)
			}
			f := rulesOf(t, chartObjs)
			pod := podWith(t, byKind[*appsv1.Deployment](chartObjs), "collector")
			collector, _ := findContainer(pod.Spec.Containers, "collector")
			appName := fmt.Sprint(chartValue(t, vals, "app.name"))
			port := chartPort(t, vals, "app.port")

			o := xds.MeshOptions{Name: "asyncmesh", Namespace: namespace, Selector: map[string]string{"app": appName},
				Collector: argValue(collector.Args, "-listen"), Port: port}
			if tc.wasmAPI {
				o.WasmAPI, o.Image = true, filterImage
			}
			out, err := xds.Istio(f, o)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeStream(string(out))
			if err != nil {
				t.Fatal(err)
			}
			plugins, filters := byKind[*istioext.WasmPlugin](objs), byKind[*istionet.EnvoyFilter](objs)
			wantPlugins, wantFilters := 0, 2
			if tc.wasmAPI {
				wantPlugins, wantFilters = 1, 1
			}
			if len(plugins) != wantPlugins || len(filters) != wantFilters || len(objs) != wantPlugins+wantFilters {
				t.Fatalf("%d WasmPlugins and %d EnvoyFilters, want %d and %d", len(plugins), len(filters), wantPlugins, wantFilters)
			}
			for _, ef := range filters {
				if !selects(ef.Spec.GetWorkloadSelector().GetLabels(), pod.Labels) {
					t.Errorf("EnvoyFilter %s does not select the chart's pods", ef.Name)
				}
			}
			if proxy, ok := findContainer(pod.Spec.Containers, "istio-proxy"); !ok {
				t.Error("the chart's pod sets no istio-proxy environment")
			} else if _, ok := envFromSecret(proxy, f.Filter.ReplaySecretEnv); !ok {
				t.Errorf("istio-proxy has no %s from a Secret", f.Filter.ReplaySecretEnv)
			}
			if tc.wasmAPI {
				checkWasmPlugin(t, plugins[0], f, pod.Labels, port)
			} else {
				checkIstioFilter(t, filters[0], f, chartObjs, port)
			}
			checkIstioCollectorPatches(t, filters[len(filters)-1], argValue(collector.Args, "-listen"), tc.wasmAPI)
		})
	}
}

// checkIstioFilter: the whole-filter EnvoyFilter inserts, before the
// router of the inbound connection managers of the service's port, a
// valid http filter whose Wasm module is in the filter image mounted into
// istio-proxy, reading the replay secret the proxy has, holding headers.
func checkIstioFilter(t *testing.T, ef *istionet.EnvoyFilter, f *rulesfile.File, chartObjs []object, port uint32) {
	t.Helper()
	ps := ef.Spec.GetConfigPatches()
	if len(ps) != 1 { // the chart's rules name no route: no overrides
		t.Fatalf("%d patches, want the filter", len(ps))
	}
	p := ps[0]
	l := p.GetMatch().GetListener()
	if p.GetApplyTo() != istioapinet.EnvoyFilter_HTTP_FILTER || p.GetPatch().GetOperation() != istioapinet.EnvoyFilter_Patch_INSERT_BEFORE ||
		p.GetMatch().GetContext() != istioapinet.EnvoyFilter_SIDECAR_INBOUND || l.GetPortNumber() != port ||
		l.GetFilterChain().GetFilter().GetSubFilter().GetName() != xds.RouterFilter {
		t.Errorf("patch %v: want HTTP_FILTER INSERT_BEFORE %s, SIDECAR_INBOUND, port %d", p, xds.RouterFilter, port)
	}
	js, err := protojson.Marshal(p.GetPatch().GetValue())
	if err != nil {
		t.Fatal(err)
	}
	var hf hcm.HttpFilter
	if err := protojson.Unmarshal(js, &hf); err != nil {
		t.Fatalf("the filter patch is no http filter: %v", err)
	}
	checkWholeFilter(t, &hf, f, chartObjs, "istio")
}

// checkWholeFilter: hf is valid Envoy configuration; its Wasm filter loads
// the module from where the chart mounts the filter image into the proxy,
// may stop iteration and says holdHeaders, and reads the replay secret.
func checkWholeFilter(t *testing.T, hf *hcm.HttpFilter, f *rulesfile.File, chartObjs []object, mode string) {
	t.Helper()
	if err := hf.Validate(); err != nil {
		t.Fatal(err)
	}
	// Down the nesting, each step reading what the previous one decoded.
	var ewm matching.ExtensionWithMatcher
	var comp composite.Composite
	var wf wasmfilter.Wasm
	var conf wrapperspb.StringValue
	for _, step := range []struct {
		from func() *anypb.Any
		to   proto.Message
	}{
		{hf.GetTypedConfig, &ewm},
		{func() *anypb.Any { return ewm.GetExtensionConfig().GetTypedConfig() }, &comp},
		{func() *anypb.Any {
			chain := comp.GetNamedFilterChains()[xds.ChainWasm].GetTypedConfig()
			if len(chain) == 0 {
				return nil
			}
			return chain[0].GetTypedConfig()
		}, &wf},
		{func() *anypb.Any { return wf.GetConfig().GetConfiguration() }, &conf},
	} {
		if err := step.from().UnmarshalTo(step.to); err != nil {
			t.Fatalf("reading the whole filter down to its Wasm filter, %T: %v", step.to, err)
		}
	}
	if !wf.GetConfig().GetAllowOnHeadersStopIteration().GetValue() || !strictRulesConfig(t, []byte(conf.Value)).HoldHeaders {
		t.Error("the Wasm filter cannot hold headers")
	}
	if !slices.Contains(wf.GetConfig().GetVmConfig().GetEnvironmentVariables().GetHostEnvKeys(), f.Filter.ReplaySecretEnv) {
		t.Errorf("the Wasm VM does not read %s from the proxy's environment", f.Filter.ReplaySecretEnv)
	}
	module := wf.GetConfig().GetVmConfig().GetCode().GetLocal().GetFilename()
	m, _ := meshModule(t, chartObjs, mode)
	if m == nil || path.Dir(module) != m.MountPath {
		t.Errorf("Envoy loads %s; the chart mounts the filter image at %v", module, m)
	}
}

// checkWasmPlugin: the -wasm-api variant runs inbound only on the
// service's port, with the replay secret from the proxy's environment and
// holdHeaders off (no allow_on_headers_stop_iteration in its API).
func checkWasmPlugin(t *testing.T, wp *istioext.WasmPlugin, f *rulesfile.File, podLabels map[string]string, port uint32) {
	t.Helper()
	if !selects(wp.Spec.GetSelector().GetMatchLabels(), podLabels) {
		t.Errorf("WasmPlugin selector %v does not select the chart's pods %v", wp.Spec.GetSelector().GetMatchLabels(), podLabels)
	}
	// Inbound only, on the service's port: on the outbound side the filter
	// would make the workload's own calls async and spend replays early.
	if m := wp.Spec.GetMatch(); len(m) != 1 || m[0].GetMode() != istiotype.WorkloadMode_SERVER ||
		len(m[0].GetPorts()) != 1 || m[0].GetPorts()[0].GetNumber() != port {
		t.Errorf("WasmPlugin match %v: want SERVER on the service's port", m)
	}
	js, err := protojson.Marshal(wp.Spec.GetPluginConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := strictRulesConfig(t, js)
	if cfg.HoldHeaders {
		t.Error("holdHeaders: true without allow_on_headers_stop_iteration hangs every async request with a body")
	}
	if len(cfg.Rules) != len(f.Rules) {
		t.Errorf("%d rules in the plugin, %d in the chart's file", len(cfg.Rules), len(f.Rules))
	}
	env := wp.Spec.GetVmConfig().GetEnv()
	if len(env) != 1 || env[0].GetName() != f.Filter.ReplaySecretEnv || env[0].GetValueFrom().String() != "HOST" {
		t.Errorf("vmConfig.env %v: want %s from the proxy's environment", env, f.Filter.ReplaySecretEnv)
	}
}

// checkIstioCollectorPatches: the collector EnvoyFilter's patches are
// valid clusters, routes and, with the WasmPlugin, the buffer filter that
// holds headers for it; the clusters go where the collector listens.
func checkIstioCollectorPatches(t *testing.T, ef *istionet.EnvoyFilter, listen string, wasmAPI bool) {
	t.Helper()
	clusters, buffers := 0, 0
	for i, p := range ef.Spec.GetConfigPatches() {
		js, err := protojson.Marshal(p.GetPatch().GetValue())
		if err != nil {
			t.Fatal(err)
		}
		var m proto.Message
		switch p.GetApplyTo() {
		case istioapinet.EnvoyFilter_CLUSTER:
			m = new(cluster.Cluster)
		case istioapinet.EnvoyFilter_HTTP_ROUTE:
			m = new(route.Route)
		case istioapinet.EnvoyFilter_HTTP_FILTER: // with the WasmPlugin: the buffer
			m = new(hcm.HttpFilter)
			buffers++
		default:
			t.Fatalf("patch %d applies to %v", i, p.GetApplyTo())
		}
		if err := protojson.Unmarshal(js, m); err != nil {
			t.Fatalf("patch %d is not a valid %T: %v", i, m, err)
		}
		if err := m.(interface{ Validate() error }).Validate(); err != nil {
			t.Errorf("patch %d: %v", i, err)
		}
		if c, ok := m.(*cluster.Cluster); ok {
			clusters++
			if got := clusterAddress(c); got != listen {
				t.Errorf("cluster %s goes to %s, the collector listens on %s", c.GetName(), got, listen)
			}
		}
	}
	if clusters != 2 {
		t.Errorf("%d cluster patches, want the collector's intake and status clusters", clusters)
	}
	if want := map[bool]int{false: 0, true: 1}[wasmAPI]; buffers != want {
		t.Errorf("%d buffer filters, want %d", buffers, want)
	}
}

func clusterAddress(c *cluster.Cluster) string {
	sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
}

// TestRenderedEnvoyGateway renders Envoy Gateway mode's resources from the
// rules of the chart's envoy-gateway variants and decodes them strictly,
// every patch value into its Envoy type: the clusters resolve the chart's
// collector Service on its port, the status routes are valid routes and,
// with the whole filter, the filter's module is where the chart's
// EnvoyProxy mounts the filter image; with -wasm-api the
// EnvoyExtensionPolicy comes first, holdHeaders off.
func TestRenderedEnvoyGateway(t *testing.T) {
	for _, tc := range []struct {
		values  string
		wasmAPI bool
	}{
		{"ci/envoy-gateway-values.yaml", false},
		{"ci/envoy-gateway-wasm-api-values.yaml", true},
	} {
		t.Run(tc.values, func(t *testing.T) {
			src, _, err := renderChart(loadChart(t), tc.values, nil)
			if err != nil {
				t.Fatal(err)
			}
			chartObjs, err := decodeStream(src)
			if err != nil {
				t.Fatal(err)
			}
			f := rulesOf(t, chartObjs)
			collector := collectorService(t, chartObjs)
			o := xds.MeshOptions{Name: "asyncmesh", Namespace: namespace, Gateway: "shop", Collector: collector}
			if tc.wasmAPI {
				o.WasmAPI, o.Image, o.PullSecret, o.TargetKind, o.TargetName = true, "oci://"+filterImage, "registry", "HTTPRoute", "orders"
			}
			out, err := xds.EnvoyGateway(f, o)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeStream(string(out))
			if err != nil {
				t.Fatal(err)
			}
			extension, patch := byKind[*egv1a1.EnvoyExtensionPolicy](objs), byKind[*egv1a1.EnvoyPatchPolicy](objs)
			if len(patch) != 1 || len(extension) != map[bool]int{false: 0, true: 1}[tc.wasmAPI] || len(objs) != len(patch)+len(extension) {
				t.Fatalf("%d EnvoyPatchPolicies and %d EnvoyExtensionPolicies", len(patch), len(extension))
			}
			if tc.wasmAPI {
				checkExtensionPolicy(t, extension[0], f)
			}
			p := patch[0]
			if ref := p.Spec.TargetRef; ref.Group != xds.GatewayAPIGroup || ref.Kind != "Gateway" || ref.Name != "shop" {
				t.Errorf("targetRef %+v: want the Gateway shop", ref)
			}
			if p.Spec.Type != egv1a1.JSONPatchEnvoyPatchType {
				t.Errorf("type %q", p.Spec.Type)
			}
			count := map[string]int{}
			for _, jp := range p.Spec.JSONPatches {
				m, err := patchValue(jp)
				if err != nil {
					t.Fatal(err)
				}
				if v, ok := m.(interface{ Validate() error }); ok {
					if err := v.Validate(); err != nil {
						t.Errorf("patch %s %s: %v", jp.Type, jp.Name, err)
					}
				}
				switch m := m.(type) {
				case *cluster.Cluster:
					if got := clusterAddress(m); got != collector || m.GetType() != cluster.Cluster_STRICT_DNS {
						t.Errorf("cluster %s: %s %v, want the collector Service %s, STRICT_DNS", m.GetName(), got, m.GetType(), collector)
					}
				case *hcm.HttpFilter:
					if tc.wasmAPI {
						if m.GetName() != xds.BufferFilterName {
							t.Errorf("listener patch adds %s, want the buffer after the EnvoyExtensionPolicy's filter", m.GetName())
						}
					} else {
						checkWholeFilter(t, m, f, chartObjs, "envoy-gateway")
					}
				}
				count[fmt.Sprintf("%T", m)]++
			}
			want := map[string]int{"*clusterv3.Cluster": 2, "*routev3.Route": 3, "*http_connection_managerv3.HttpFilter": 1}
			if !maps.Equal(count, want) {
				t.Errorf("patches %v, want %v", count, want)
			}
		})
	}
}

// collectorService is host:port of the chart's collector Service, by the
// name the gateway's Envoy resolves.
func collectorService(t *testing.T, objs []object) string {
	t.Helper()
	for _, s := range byKind[*corev1.Service](objs) {
		if s.Name == releaseName+"-collector" {
			return fmt.Sprintf("%s.%s.svc:%d", s.Name, namespace, s.Spec.Ports[0].Port)
		}
	}
	t.Fatal("no collector Service")
	return ""
}

// checkExtensionPolicy: the -wasm-api variant's policy fetches the image,
// reads the replay secret from Envoy's environment and has holdHeaders off.
func checkExtensionPolicy(t *testing.T, p *egv1a1.EnvoyExtensionPolicy, f *rulesfile.File) {
	t.Helper()
	if len(p.Spec.TargetRefs) != 1 || p.Spec.TargetRefs[0].Kind != "HTTPRoute" || p.Spec.TargetRefs[0].Name != "orders" {
		t.Errorf("targetRefs %+v", p.Spec.TargetRefs)
	}
	if len(p.Spec.Wasm) != 1 {
		t.Fatalf("%d wasm extensions", len(p.Spec.Wasm))
	}
	w := p.Spec.Wasm[0]
	if w.Code.Type != egv1a1.ImageWasmCodeSourceType || w.Code.Image == nil || w.Code.Image.URL != filterImage {
		t.Errorf("code %+v: want the image %s without oci://", w.Code, filterImage)
	}
	if w.Code.Image.PullSecretRef == nil || string(w.Code.Image.PullSecretRef.Name) != "registry" {
		t.Errorf("pullSecretRef %+v", w.Code.Image.PullSecretRef)
	}
	if w.RootID == nil || *w.RootID != xds.FilterName {
		t.Errorf("rootID %v: the filter registers %q", w.RootID, xds.FilterName)
	}
	if w.Env == nil || len(w.Env.HostKeys) != 1 || w.Env.HostKeys[0] != f.Filter.ReplaySecretEnv {
		t.Errorf("env %+v: want hostKeys [%s]", w.Env, f.Filter.ReplaySecretEnv)
	}
	if w.Config == nil {
		t.Fatal("no config")
	}
	if cfg := strictRulesConfig(t, w.Config.Raw); cfg.HoldHeaders || len(cfg.Rules) != len(f.Rules) {
		t.Errorf("config: holdHeaders %v, %d rules (file: %d)", cfg.HoldHeaders, len(cfg.Rules), len(f.Rules))
	}
}

// TestStrictDecodingCatchesMistakes: the validation above is only worth
// something if a misspelled field fails it, at every kind of type: a
// Kubernetes struct, a field whose case differs, a duplicate key, Istio's
// proto-backed spec (whose generated UnmarshalJSON allows unknown fields)
// and Envoy Gateway's types. Each case also decodes once corrected, so the
// failure is the mistake's.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	for _, tc := range []struct {
		name, good, bad, want string
	}{
		{"Deployment field", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec: {replicas: 1, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}}
`, `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec: {replica: 1, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}}
`, `unknown field "spec.replica"`},
		{"Service port field", `
apiVersion: v1
kind: Service
metadata: {name: x}
spec: {ports: [{port: 80, targetPort: http}]}
`, `
apiVersion: v1
kind: Service
metadata: {name: x}
spec: {ports: [{port: 80, targetport: http}]}
`, `unknown field "spec.ports[0].targetport"`},
		{"duplicate key", `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data: {a: "1"}
`, `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data: {a: "1", a: "2"}
`, `already set in map`},
		{"Istio spec", `
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x}
spec: {url: oci://r/f:1, failStrategy: FAIL_CLOSE, pluginConfig: {a: 1}}
`, `
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x}
spec: {url: oci://r/f:1, failStrategyy: FAIL_CLOSE, pluginConfig: {a: 1}}
`, `failStrategyy`},
		{"Istio enum value", `
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: x}
spec: {configPatches: [{applyTo: CLUSTER, match: {context: SIDECAR_INBOUND}, patch: {operation: ADD, value: {name: c}}}]}
`, `
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: x}
spec: {configPatches: [{applyTo: CLUSTERS, match: {context: SIDECAR_INBOUND}, patch: {operation: ADD, value: {name: c}}}]}
`, `CLUSTERS`},
		{"Istio metadata", `
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x}
spec: {url: oci://r/f:1}
`, `
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x, labelz: {a: b}}
spec: {url: oci://r/f:1}
`, `unknown field "metadata.labelz"`},
		{"Envoy Gateway field case", `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: x}
spec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}], wasm: [{rootID: asyncmesh, code: {type: Image, image: {url: r/f:1}}}]}
`, `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: x}
spec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}], wasm: [{rootId: asyncmesh, code: {type: Image, image: {url: r/f:1}}}]}
`, `rootId`},
		{"Envoy Gateway patch operation", `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyPatchPolicy
metadata: {name: x}
spec: {targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g}, type: JSONPatch,
  jsonPatches: [{type: type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c, operation: {op: add, jsonPath: "$.a", value: {}}}]}
`, `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyPatchPolicy
metadata: {name: x}
spec: {targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g}, type: JSONPatch,
  jsonPatches: [{type: type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c, operation: {op: add, jsonpath: "$.a", value: {}}}]}
`, `jsonpath`},
		{"EnvoyProxy container field", `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: x}
spec: {provider: {type: Kubernetes, kubernetes: {envoyDeployment: {container: {volumeMounts: [{name: f, mountPath: /f}]}}}}}
`, `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: x}
spec: {provider: {type: Kubernetes, kubernetes: {envoyDeployment: {container: {volumeMount: [{name: f, mountPath: /f}]}}}}}
`, `volumeMount`},
		{"unvalidated kind", `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
`, `
apiVersion: v1
kind: ConfigMapp
metadata: {name: x}
`, `no type to validate it against`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeStream(tc.good); err != nil {
				t.Fatalf("the corrected document fails: %v", err)
			}
			_, err := decodeStream(tc.bad)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestPatchValuesDecodeStrictly: an EnvoyPatchPolicy's values are raw JSON
// to Kubernetes, so patchValue is what validates them. A misspelled Envoy
// field, an unknown Any type, and a patch at a place no type is known for
// are errors; each corrected patch decodes, so the failure is the mistake's.
func TestPatchValuesDecodeStrictly(t *testing.T) {
	const good = `{"name": "c", "type": "STRICT_DNS", "connectTimeout": "1s"}`
	empty := ""
	routes := "routes/0"
	for _, tc := range []struct {
		name, typ, value, want string
		path, jsonPath         *string
	}{
		{"misspelled cluster field", string(egv1a1.ClusterEnvoyResourceType), `{"name": "c", "connectTimeOut": "1s"}`, "connectTimeOut", &empty, nil},
		{"unknown filter type", string(egv1a1.ListenerEnvoyResourceType),
			`{"name": "asyncmesh", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.nosuch.v3.NoSuch"}}`, "nosuch", nil, ptr(xds.EGRouterPath)},
		{"route field", string(egv1a1.RouteConfigurationEnvoyResourceType), `{"match": {"prefix": "/"}, "directResponse": {"status": 404}, "rout": {}}`,
			"rout", &routes, ptr(xds.EGVirtualHostsPath)},
		{"unknown place", string(egv1a1.RouteConfigurationEnvoyResourceType), `{}`, "no Envoy type known", ptr("virtual_hosts/0"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			jp := egv1a1.EnvoyJSONPatchConfig{Type: egv1a1.EnvoyResourceType(tc.typ), Name: "n",
				Operation: egv1a1.JSONPatchOperation{Op: "add", Path: tc.path, JSONPath: tc.jsonPath, Value: &apiextensionsv1.JSON{Raw: []byte(tc.value)}}}
			_, err := patchValue(jp)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	for _, c := range []egv1a1.EnvoyJSONPatchConfig{
		{Type: egv1a1.ClusterEnvoyResourceType, Name: "c", Operation: egv1a1.JSONPatchOperation{Op: "add", Path: &empty,
			Value: &apiextensionsv1.JSON{Raw: []byte(good)}}},
		{Type: egv1a1.RouteConfigurationEnvoyResourceType, Name: "r", Operation: egv1a1.JSONPatchOperation{Op: "add", Path: &routes,
			JSONPath: ptr(xds.EGVirtualHostsPath), Value: &apiextensionsv1.JSON{Raw: []byte(`{"match": {"prefix": "/"}, "directResponse": {"status": 404}}`)}}},
	} {
		if _, err := patchValue(c); err != nil {
			t.Errorf("the corrected patch fails: %v", err)
		}
	}
}

func ptr[T any](v T) *T { return &v }
