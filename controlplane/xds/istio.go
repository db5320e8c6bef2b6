package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"gopkg.in/yaml.v3"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Meshes that serve the filter themselves.
//
// Where istiod (WasmPlugin) or Envoy Gateway (EnvoyExtensionPolicy) already
// serves the proxies' filters over ECDS, the control plane does not serve
// xDS: it renders its rules into those resources (controlplane render), and
// the mesh delivers them. Both APIs configure the Wasm plugin alone, so what
// the proxies run differs from what FilterConfig serves in two ways:
//
//   - no native pass-through (PassThroughFilter): every request enters the
//     VM, at the cost make bench measures for the Wasm path;
//   - no allow_on_headers_stop_iteration (neither API has the field), so the
//     plugin's configuration says holdHeaders: false. With it true, Envoy
//     would turn the filter's StopIteration into StopAllIteration and the
//     body would never reach it: every async request with a body would hang.
//     False is the filter's own fallback (filter/stream.go), which leaves the
//     holding of the headers to a buffer filter after it; these meshes have
//     none, which docs/deploy.md lists as not covered.
//
// Everything else, the JSON of the rules included, is WasmFilter's, so the
// two cannot drift (TestMeshPluginConfigIsWasmFilters).

// MeshPluginConfig returns the plugin configuration of a mesh's Wasm API
// (WasmPlugin.spec.pluginConfig, EnvoyExtensionPolicy.spec.wasm[].config):
// the JSON WasmFilter puts in the filter's configuration, holdHeaders
// off, as a tree whose numbers keep their exact text.
func MeshPluginConfig(cfg *rules.Config) (map[string]any, error) {
	wf, err := WasmFilter(cfg, WasmOptions{})
	if err != nil {
		return nil, err
	}
	var s wrapperspb.StringValue
	if err := wf.GetConfig().GetConfiguration().UnmarshalTo(&s); err != nil {
		return nil, fmt.Errorf("reading the Wasm filter's configuration: %w", err)
	}
	tree, err := jsonTree([]byte(s.Value))
	if err != nil {
		return nil, fmt.Errorf("decoding the Wasm filter's configuration: %w", err)
	}
	// holdHeaders is omitted when false, as rules.Config encodes it.
	delete(tree, "holdHeaders")
	return tree, nil
}

// jsonTree decodes a JSON object with its integers as int64 (or uint64), so
// that a 64-bit bodyLimit survives (float64 would round it past 2^53) and
// YAML prints every number as the number it is (yaml.v3 would quote a
// json.Number, a string).
func jsonTree(js []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(js))
	d.UseNumber()
	var tree map[string]any
	if err := d.Decode(&tree); err != nil {
		return nil, err
	}
	v, err := numbers(tree)
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

// numbers replaces every json.Number in v with an int64, a uint64 or a
// float64, the first that holds it exactly.
func numbers(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			n, err := numbers(e)
			if err != nil {
				return nil, err
			}
			v[k] = n
		}
	case []any:
		for i, e := range v {
			n, err := numbers(e)
			if err != nil {
				return nil, err
			}
			v[i] = n
		}
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return i, nil
		}
		if u, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return u, nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", v, err)
		}
		return f, nil
	}
	return v, nil
}

// protoTree is m in Envoy's JSON form (what an EnvoyFilter patch's value
// holds) as a tree.
func protoTree(m proto.Message) (map[string]any, error) {
	js, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %T: %w", m, err)
	}
	return jsonTree(js)
}

// MeshOptions are the settings of controlplane render that are not in the
// rules file.
type MeshOptions struct {
	// Name and Namespace of the rendered resources.
	Name, Namespace string
	// Image is the filter image (make images' "filter"), as a registry
	// reference: registry/repository:tag or @sha256:digest. An oci:// prefix
	// is added for Istio, taken away for Envoy Gateway.
	Image string
	// SHA256 pins the image's manifest digest (hex), checked by the mesh
	// before the module runs; empty: not checked.
	SHA256 string
	// PullSecret names a Secret of the namespace holding registry credentials.
	PullSecret string
	// NodeID and NodeCluster select the rules of one kind of node, as the
	// control plane does for a sidecar by its Envoy node; both empty: every
	// rule, which is refused if some rule is limited by nodes:.
	NodeID, NodeCluster string

	// Istio only.
	// Selector are the labels of the workloads whose sidecars run the filter.
	Selector map[string]string
	// Phase is the WasmPlugin phase (default UNSPECIFIED_PHASE: at the end of
	// the chain, after Istio's authentication and authorization, so a
	// request is accepted for later only once it may run at all).
	Phase string
	// FailOpen lets requests through when the module cannot be fetched or
	// loaded (FAIL_OPEN); default FAIL_CLOSE, since without the filter a
	// caller's x-async-replay and x-async-* headers reach the service.
	FailOpen bool
	// Collector is host:port of the collector's API as the sidecar reaches
	// it: an IP address (a STATIC cluster), 127.0.0.1:9901 for the collector
	// container of the pod.
	Collector string
	// Port limits the filter and the status routes to the inbound traffic
	// of this port (the port the service listens on in its pod); 0: every
	// inbound port of the workload.
	Port uint32

	// Envoy Gateway only: the policy's target (a Gateway or an HTTPRoute).
	TargetKind, TargetName string
}

// Fixed values of the rendered resources.
const (
	IstioWasmAPIVersion        = "extensions.istio.io/v1alpha1"
	IstioNetworkingAPIVersion  = "networking.istio.io/v1alpha3"
	EnvoyGatewayAPIVersion     = "gateway.envoyproxy.io/v1alpha1"
	GatewayAPIGroup            = "gateway.networking.k8s.io"
	defaultIstioPhase          = "UNSPECIFIED_PHASE"
	istioEnvoyFilterNameSuffix = "-collector"
)

// The resources, as small local structs: the root module does not depend
// on Kubernetes' or the meshes' Go types. deploy/k8s decodes what these
// print strictly into the real types (TestRenderedIstio, TestRenderedEnvoyGateway).

type objectMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace,omitempty"`
	Labels    map[string]string `yaml:"labels,omitempty"`
}

type resourceDoc struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       any        `yaml:"spec"`
}

type wasmPluginSpec struct {
	Selector        *workloadSelector `yaml:"selector,omitempty"`
	URL             string            `yaml:"url"`
	SHA256          string            `yaml:"sha256,omitempty"`
	ImagePullPolicy string            `yaml:"imagePullPolicy"`
	ImagePullSecret string            `yaml:"imagePullSecret,omitempty"`
	PluginName      string            `yaml:"pluginName"`
	Phase           string            `yaml:"phase"`
	FailStrategy    string            `yaml:"failStrategy"`
	Type            string            `yaml:"type"`
	PluginConfig    map[string]any    `yaml:"pluginConfig"`
	VMConfig        *istioVMConfig    `yaml:"vmConfig,omitempty"`
	Match           []trafficSelector `yaml:"match"`
}

type trafficSelector struct {
	Mode  string         `yaml:"mode"`
	Ports []portSelector `yaml:"ports,omitempty"`
}

type portSelector struct {
	Number uint32 `yaml:"number"`
}

type workloadSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type istioVMConfig struct {
	Env []istioEnvVar `yaml:"env"`
}

type istioEnvVar struct {
	Name      string `yaml:"name"`
	ValueFrom string `yaml:"valueFrom"`
}

type envoyFilterSpec struct {
	WorkloadSelector *envoyFilterSelector `yaml:"workloadSelector,omitempty"`
	ConfigPatches    []envoyConfigPatch   `yaml:"configPatches"`
}

type envoyFilterSelector struct {
	Labels map[string]string `yaml:"labels"`
}

type envoyConfigPatch struct {
	ApplyTo string           `yaml:"applyTo"`
	Match   envoyPatchMatch  `yaml:"match"`
	Patch   envoyPatchAction `yaml:"patch"`
}

type envoyPatchMatch struct {
	Context            string            `yaml:"context"`
	RouteConfiguration *routeConfigMatch `yaml:"routeConfiguration,omitempty"`
}

type routeConfigMatch struct {
	PortNumber uint32 `yaml:"portNumber,omitempty"`
}

type envoyPatchAction struct {
	Operation string         `yaml:"operation"`
	Value     map[string]any `yaml:"value"`
}

type extensionPolicySpec struct {
	TargetRefs []policyTargetRef `yaml:"targetRefs"`
	Wasm       []egWasm          `yaml:"wasm"`
}

type policyTargetRef struct {
	Group string `yaml:"group"`
	Kind  string `yaml:"kind"`
	Name  string `yaml:"name"`
}

type egWasm struct {
	Name     string         `yaml:"name"`
	RootID   string         `yaml:"rootID"`
	Code     egCode         `yaml:"code"`
	Config   map[string]any `yaml:"config"`
	FailOpen bool           `yaml:"failOpen"`
	Env      *egEnv         `yaml:"env,omitempty"`
}

type egCode struct {
	Type  string  `yaml:"type"`
	Image egImage `yaml:"image"`
}

type egImage struct {
	URL           string        `yaml:"url"`
	SHA256        string        `yaml:"sha256,omitempty"`
	PullSecretRef *egSecretName `yaml:"pullSecretRef,omitempty"`
}

type egSecretName struct {
	Name string `yaml:"name"`
}

type egEnv struct {
	HostKeys []string `yaml:"hostKeys"`
}

// meshConfig is the rules configuration of the nodes o selects.
func meshConfig(f *rulesfile.File, o MeshOptions) (*rules.Config, error) {
	if o.NodeID != "" || o.NodeCluster != "" {
		return f.ForNode(o.NodeID, o.NodeCluster), nil
	}
	for _, r := range f.Rules {
		if len(r.Nodes.IDs) > 0 || len(r.Nodes.Clusters) > 0 {
			return nil, fmt.Errorf("rule %q is limited by nodes: say which node's rules to render (-node-id, -node-cluster)", r.Name)
		}
	}
	return f.Config(nil), nil
}

func (o MeshOptions) check() error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("a name is required"))
	}
	if o.Image == "" || strings.ContainsAny(o.Image, " \t\n") {
		errs = append(errs, fmt.Errorf("image %q: want registry/repository:tag or @sha256:digest", o.Image))
	}
	if o.SHA256 != "" && (len(o.SHA256) != 64 || strings.Trim(o.SHA256, "0123456789abcdef") != "") {
		errs = append(errs, fmt.Errorf("sha256 %q: want 64 lower-case hex digits", o.SHA256))
	}
	return errors.Join(errs...)
}

// Istio returns the YAML documents of Istio mode: the WasmPlugin that
// loads the filter image into the selected sidecars with the rules as its
// pluginConfig, and the EnvoyFilter that gives those sidecars what the
// filter calls by name and the bootstrap of plain sidecar mode has: the
// collector's intake and status clusters (the same clusters
// sidecarResources serves) and the callers' status routes (statusRoutes),
// first in every inbound route configuration (of o.Port).
func Istio(f *rulesfile.File, o MeshOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	if len(o.Selector) == 0 {
		// A WasmPlugin without a selector applies to every workload of its
		// namespace (of the mesh, in the root namespace): never by accident.
		return nil, errors.New("render --istio: a workload selector is required (-selector app=NAME)")
	}
	cfg, err := meshConfig(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	pc, err := MeshPluginConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	phase := o.Phase
	if phase == "" {
		phase = defaultIstioPhase
	}
	fail := "FAIL_CLOSE"
	if o.FailOpen {
		fail = "FAIL_OPEN"
	}
	url := o.Image
	if !strings.HasPrefix(url, "oci://") {
		url = "oci://" + url
	}
	plugin := wasmPluginSpec{
		Selector: &workloadSelector{MatchLabels: o.Selector},
		URL:      url, SHA256: o.SHA256, ImagePullPolicy: "IfNotPresent", ImagePullSecret: o.PullSecret,
		PluginName: FilterName, Phase: phase, FailStrategy: fail, Type: "HTTP", PluginConfig: pc,
		// Inbound only: Istio's default, CLIENT_AND_SERVER, would also put
		// the filter on the workload's outbound calls, making its own calls
		// async and spending the signature of a replay the collector sends
		// out through this sidecar before the receiving one checks it.
		Match: []trafficSelector{{Mode: "SERVER"}},
	}
	if o.Port != 0 {
		plugin.Match[0].Ports = []portSelector{{Number: o.Port}}
	}
	if cfg.ReplaySecretEnv != "" {
		// The istio-proxy container's variable (docs/deploy.md: the pod
		// sets it from a Secret), as host_env_keys in WasmFilter.
		plugin.VMConfig = &istioVMConfig{Env: []istioEnvVar{{Name: cfg.ReplaySecretEnv, ValueFrom: "HOST"}}}
	}
	patches, err := istioPatches(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	return marshalDocs(
		resourceDoc{APIVersion: IstioWasmAPIVersion, Kind: "WasmPlugin",
			Metadata: objectMeta{Name: o.Name, Namespace: o.Namespace}, Spec: plugin},
		resourceDoc{APIVersion: IstioNetworkingAPIVersion, Kind: "EnvoyFilter",
			Metadata: objectMeta{Name: o.Name + istioEnvoyFilterNameSuffix, Namespace: o.Namespace},
			Spec:     envoyFilterSpec{WorkloadSelector: &envoyFilterSelector{Labels: o.Selector}, ConfigPatches: patches}},
	)
}

// istioPatches are the EnvoyFilter's patches: the collector's clusters,
// then the status routes. Each INSERT_FIRST goes before the previous ones,
// so the routes are listed last to first to end up in statusRoutes' order
// (the catch-all 404 of the prefix after the reads).
func istioPatches(f *rulesfile.File, o MeshOptions) ([]envoyConfigPatch, error) {
	if f.Filter.CollectorCluster == "" {
		return nil, errors.New("the rules file sets no filter.collectorCluster")
	}
	collector := o.Collector
	if collector == "" {
		collector = "127.0.0.1:9901"
	}
	host, _, err := net.SplitHostPort(collector)
	if err != nil || net.ParseIP(host) == nil {
		return nil, fmt.Errorf("collector %q: want ip:port (the sidecar reaches its pod's collector at 127.0.0.1)", collector)
	}
	a, err := socketAddress(collector)
	if err != nil {
		return nil, err
	}
	var patches []envoyConfigPatch
	for _, c := range collectorClusters(f.Filter.CollectorCluster, a) {
		v, err := protoTree(c)
		if err != nil {
			return nil, err
		}
		patches = append(patches, envoyConfigPatch{ApplyTo: "CLUSTER", Match: envoyPatchMatch{Context: "SIDECAR_INBOUND"},
			Patch: envoyPatchAction{Operation: "ADD", Value: v}})
	}
	routes := statusRoutes(statusPrefix(f), StatusCluster(f.Filter.CollectorCluster))
	for _, r := range slices.Backward(routes) {
		v, err := protoTree(r)
		if err != nil {
			return nil, err
		}
		m := envoyPatchMatch{Context: "SIDECAR_INBOUND"}
		if o.Port != 0 {
			m.RouteConfiguration = &routeConfigMatch{PortNumber: o.Port}
		}
		patches = append(patches, envoyConfigPatch{ApplyTo: "HTTP_ROUTE", Match: m,
			Patch: envoyPatchAction{Operation: "INSERT_FIRST", Value: v}})
	}
	return patches, nil
}

// EnvoyGateway returns the YAML of Envoy Gateway mode: the
// EnvoyExtensionPolicy that attaches the filter image, with the rules as
// its config, to a Gateway or an HTTPRoute. The collector's clusters and
// status routes are not rendered (docs/deploy.md, not covered yet).
func EnvoyGateway(f *rulesfile.File, o MeshOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	if o.TargetKind != "Gateway" && o.TargetKind != "HTTPRoute" {
		return nil, fmt.Errorf("render --envoy-gateway: target kind %q: want Gateway or HTTPRoute", o.TargetKind)
	}
	if o.TargetName == "" {
		return nil, errors.New("render --envoy-gateway: a target name is required (-target-name)")
	}
	cfg, err := meshConfig(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	pc, err := MeshPluginConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	w := egWasm{Name: FilterName, RootID: FilterName, Config: pc, FailOpen: o.FailOpen,
		Code: egCode{Type: "Image", Image: egImage{URL: strings.TrimPrefix(o.Image, "oci://"), SHA256: o.SHA256}}}
	if o.PullSecret != "" {
		w.Code.Image.PullSecretRef = &egSecretName{Name: o.PullSecret}
	}
	if cfg.ReplaySecretEnv != "" {
		w.Env = &egEnv{HostKeys: []string{cfg.ReplaySecretEnv}}
	}
	return marshalDocs(resourceDoc{APIVersion: EnvoyGatewayAPIVersion, Kind: "EnvoyExtensionPolicy",
		Metadata: objectMeta{Name: o.Name, Namespace: o.Namespace},
		Spec: extensionPolicySpec{TargetRefs: []policyTargetRef{{Group: GatewayAPIGroup, Kind: o.TargetKind, Name: o.TargetName}},
			Wasm: []egWasm{w}}})
}

// marshalDocs prints docs as one YAML stream, maps with sorted keys (yaml.v3
// sorts them), so the same inputs print the same bytes.
func marshalDocs(docs ...resourceDoc) ([]byte, error) {
	var b bytes.Buffer
	e := yaml.NewEncoder(&b)
	e.SetIndent(2)
	for _, d := range docs {
		if err := e.Encode(d); err != nil {
			return nil, fmt.Errorf("encoding %s %s: %w", d.Kind, d.Metadata.Name, err)
		}
	}
	if err := e.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ParseSelector reads -selector's k=v[,k=v...].
func ParseSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	for kv := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("selector %q: want key=value[,key=value]", s)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("selector %q: %s twice", s, k)
		}
		out[k] = v
	}
	return out, nil
}
