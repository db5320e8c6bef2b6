package k8s

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioapinet "istio.io/api/networking/v1alpha3"
	istiotype "istio.io/api/type/v1beta1"
	istioext "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	istionet "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"

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

// TestRenderedIstio renders the Istio mode's WasmPlugin and EnvoyFilter
// from the rules of the chart's istio variant, as docs/deploy.md says to,
// decodes them strictly, and checks they fit the pods the chart renders:
// the selector selects them, the collector cluster is where the collector
// listens, the replay secret is in the proxy's environment, and every
// patch value is valid Envoy configuration.
func TestRenderedIstio(t *testing.T) {
	src, vals, err := renderChart(loadChart(t), "ci/istio-values.yaml", nil)
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

	out, err := xds.Istio(f, xds.MeshOptions{Name: "asyncmesh", Namespace: namespace, Image: filterImage,
		Selector: map[string]string{"app": appName}, Collector: argValue(collector.Args, "-listen"),
		Port: chartPort(t, vals, "app.port")})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStream(string(out))
	if err != nil {
		t.Fatal(err)
	}
	plugins, filters := byKind[*istioext.WasmPlugin](objs), byKind[*istionet.EnvoyFilter](objs)
	if len(plugins) != 1 || len(filters) != 1 || len(objs) != 2 {
		t.Fatalf("want one WasmPlugin and one EnvoyFilter, got %d documents", len(objs))
	}
	wp := plugins[0]
	if !selects(wp.Spec.GetSelector().GetMatchLabels(), pod.Labels) {
		t.Errorf("WasmPlugin selector %v does not select the chart's pods %v", wp.Spec.GetSelector().GetMatchLabels(), pod.Labels)
	}
	if !selects(filters[0].Spec.GetWorkloadSelector().GetLabels(), pod.Labels) {
		t.Errorf("EnvoyFilter selector does not select the chart's pods")
	}
	// Inbound only, on the service's port: on the outbound side the filter
	// would make the workload's own calls async and spend replays early.
	if m := wp.Spec.GetMatch(); len(m) != 1 || m[0].GetMode() != istiotype.WorkloadMode_SERVER ||
		len(m[0].GetPorts()) != 1 || m[0].GetPorts()[0].GetNumber() != chartPort(t, vals, "app.port") {
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
	if proxy, ok := findContainer(pod.Spec.Containers, "istio-proxy"); !ok {
		t.Error("the chart's pod sets no istio-proxy environment")
	} else if _, ok := envFromSecret(proxy, f.Filter.ReplaySecretEnv); !ok {
		t.Errorf("istio-proxy has no %s from a Secret", f.Filter.ReplaySecretEnv)
	}

	clusters := 0
	for i, p := range filters[0].Spec.GetConfigPatches() {
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
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			if got, want := fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()), argValue(collector.Args, "-listen"); got != want {
				t.Errorf("cluster %s goes to %s, the collector listens on %s", c.GetName(), got, want)
			}
		}
	}
	if clusters != 2 {
		t.Errorf("%d cluster patches, want the collector's intake and status clusters", clusters)
	}
}

// TestRenderedEnvoyGateway renders the EnvoyExtensionPolicy from the rules
// of the chart's envoy-gateway variant and decodes it strictly.
func TestRenderedEnvoyGateway(t *testing.T) {
	src, _, err := renderChart(loadChart(t), "ci/envoy-gateway-values.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	chartObjs, err := decodeStream(src)
	if err != nil {
		t.Fatal(err)
	}
	f := rulesOf(t, chartObjs)
	out, err := xds.EnvoyGateway(f, xds.MeshOptions{Name: "asyncmesh", Namespace: namespace, Image: "oci://" + filterImage,
		TargetKind: "Gateway", TargetName: "shop", PullSecret: "registry"})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeStream(string(out))
	if err != nil {
		t.Fatal(err)
	}
	policies := byKind[*egv1a1.EnvoyExtensionPolicy](objs)
	if len(policies) != 1 || len(objs) != 1 {
		t.Fatalf("want one EnvoyExtensionPolicy, got %d documents", len(objs))
	}
	p := policies[0]
	if len(p.Spec.TargetRefs) != 1 || p.Spec.TargetRefs[0].Kind != "Gateway" || p.Spec.TargetRefs[0].Name != "shop" {
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
