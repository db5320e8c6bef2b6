package xds

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	matcheraction "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/matcher/action/v3"
	buffer "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"gopkg.in/yaml.v3"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Meshes that serve the filter themselves.
//
// Where istiod or Envoy Gateway already serve the proxies' configuration,
// the control plane does not serve xDS: it renders its rules into those
// meshes' resources (controlplane render), and the mesh delivers them. Two
// variants:
//
//   - the whole filter (the default): the http_filters entry FilterConfig
//     serves plain sidecars over ECDS (the ExtensionWithMatcher, its native
//     chains, the Wasm filter with allow_on_headers_stop_iteration and
//     holdHeaders), put before the router of the proxy's listener by the
//     mesh's patch API: an Istio EnvoyFilter (HTTP_FILTER INSERT_BEFORE
//     envoy.filters.http.router), an Envoy Gateway EnvoyPatchPolicy (a JSON
//     patch adding it before the router). The module is a local file, the
//     filter image mounted into the proxy's container (the chart does it),
//     exactly as in plain sidecar mode. Routes a rule names get the same
//     RouteOverride as served routes (an HTTP_ROUTE MERGE, a JSON patch).
//     The price: the rules travel in the listener, so every new render is a
//     listener update (LDS) rather than an ECDS update.
//   - the mesh's Wasm API (MeshOptions.WasmAPI): Istio's WasmPlugin, Envoy
//     Gateway's EnvoyExtensionPolicy. Neither API has
//     allow_on_headers_stop_iteration, so the plugin's configuration says
//     holdHeaders: false (true would turn the filter's StopIteration into
//     StopAllIteration and hang every async request with a body), and
//     neither has a matcher: every request enters the VM. So that the
//     headers of an async request or a replay with a body do not reach the
//     service before the filter decides, the patch API adds Envoy's buffer
//     filter after it, for the requests the filter may make async only
//     (meshBufferFilter).
//
// In both, the collector's clusters and the callers' status routes, which
// the plain sidecar's bootstrap has, are patched in from the same builders
// (collectorClusters, statusRoutes).
//
// Everything else, the JSON of the rules included, is WasmFilter's, so the
// variants cannot drift from what xDS serves (TestMeshPluginConfigIsWasmFilters,
// TestMeshFilterIsServedFilter).

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
	// NodeID and NodeCluster select the rules of one kind of node, as the
	// control plane does for a sidecar by its Envoy node; both empty: every
	// rule, which is refused if some rule is limited by nodes:.
	NodeID, NodeCluster string

	// WasmAPI renders the mesh's own Wasm API (Istio's WasmPlugin, Envoy
	// Gateway's EnvoyExtensionPolicy) instead of the whole filter: the mesh
	// fetches the image itself, but the filter cannot hold headers and every
	// request enters the VM (see above).
	WasmAPI bool
	// WasmPath is the module's path in the proxy's container, where the
	// chart mounts the filter image (the whole-filter variant; default
	// DefaultMeshWasmPath).
	WasmPath string

	// With WasmAPI only: the image, its digest and pull secret, and what
	// happens when the module cannot be loaded.
	// Image is the filter image (make images' "filter"), as a registry
	// reference: registry/repository:tag or @sha256:digest. An oci:// prefix
	// is added for Istio, taken away for Envoy Gateway.
	Image string
	// SHA256 pins the image's manifest digest (hex), checked by the mesh
	// before the module runs; empty: not checked.
	SHA256 string
	// PullSecret names a Secret of the namespace holding registry credentials.
	PullSecret string
	// FailOpen lets requests through when the module cannot be fetched or
	// loaded; default fail closed, since without the filter a caller's
	// x-async-replay and x-async-* headers reach the service. (The whole
	// filter is always fail closed, as xDS serves it: a module Envoy cannot
	// load makes it refuse the listener update.)
	FailOpen bool

	// Collector is host:port of the collector's API as the proxy reaches
	// it. Istio: an IP address (a STATIC cluster), 127.0.0.1:9901 for the
	// collector container of the pod. Envoy Gateway (required): the
	// collector's Service, e.g. am-collector.shop.svc:9901 (a name makes a
	// STRICT_DNS cluster, which follows the Service).
	Collector string

	// Istio only.
	// Selector are the labels of the workloads whose sidecars run the filter.
	Selector map[string]string
	// Phase is the WasmPlugin phase (default UNSPECIFIED_PHASE: at the end of
	// the chain, after Istio's authentication and authorization, so a
	// request is accepted for later only once it may run at all). The whole
	// filter goes to the same place: right before the router.
	Phase string
	// Port limits the filter and the status routes to the inbound traffic
	// of this port (the port the service listens on in its pod); 0: every
	// inbound port of the workload.
	Port uint32

	// Envoy Gateway only.
	// Gateway is the Gateway whose Envoy gets the collector's clusters, the
	// status routes and the filter (the EnvoyPatchPolicy's target, which must
	// be in Namespace); default TargetName when TargetKind is Gateway.
	Gateway string
	// Listeners are the names of the Gateway's HTTP(S) listeners to patch
	// (default "http"): Envoy Gateway names the xDS listener and its route
	// configuration NAMESPACE/GATEWAY/LISTENER.
	Listeners []string
	// TargetKind and TargetName: the EnvoyExtensionPolicy's target (a
	// Gateway or an HTTPRoute), with WasmAPI.
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
	// DefaultMeshWasmPath is where the chart mounts the filter image into the
	// proxy (istio-proxy, the gateway's Envoy), as into plain sidecar mode's
	// Envoy.
	DefaultMeshWasmPath = "/etc/asyncmesh/filter/plugin.wasm"
	// RouterFilter is the HTTP filter the whole filter is put before.
	RouterFilter = "envoy.filters.http.router"
	// Envoy Gateway's JSON patch types.
	egListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	egRouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	egClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	// EGRouterPath selects the router in every http_filters list of a
	// listener; a JSON patch "add" at an array element inserts before it.
	EGRouterPath = "..http_filters[?(@.name=='" + RouterFilter + "')]"
	// EGVirtualHostsPath selects every virtual host of a route configuration.
	EGVirtualHostsPath = "$.virtual_hosts[*]"
)

// EGRoutePath selects the routes named name in a route configuration.
func EGRoutePath(name string) string { return "..routes[?(@.name=='" + name + "')]" }

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
	Listener           *listenerMatch    `yaml:"listener,omitempty"`
	RouteConfiguration *routeConfigMatch `yaml:"routeConfiguration,omitempty"`
}

type listenerMatch struct {
	PortNumber  uint32           `yaml:"portNumber,omitempty"`
	FilterChain filterChainMatch `yaml:"filterChain"`
}

type filterChainMatch struct {
	Filter filterMatch `yaml:"filter"`
}

type filterMatch struct {
	Name      string          `yaml:"name"`
	SubFilter *subFilterMatch `yaml:"subFilter,omitempty"`
}

type subFilterMatch struct {
	Name string `yaml:"name"`
}

type routeConfigMatch struct {
	PortNumber uint32      `yaml:"portNumber,omitempty"`
	Vhost      *vhostMatch `yaml:"vhost,omitempty"`
}

type vhostMatch struct {
	Route routeNameMatch `yaml:"route"`
}

type routeNameMatch struct {
	Name string `yaml:"name"`
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

type patchPolicySpec struct {
	TargetRef   policyTargetRef `yaml:"targetRef"`
	Type        string          `yaml:"type"`
	JSONPatches []egJSONPatch   `yaml:"jsonPatches"`
}

type egJSONPatch struct {
	Type      string      `yaml:"type"`
	Name      string      `yaml:"name"`
	Operation egOperation `yaml:"operation"`
}

// egOperation is one JSON patch operation. Path is a pointer because Envoy
// Gateway tells "add a whole resource" (path: "") from "no path" (nil).
type egOperation struct {
	Op       string  `yaml:"op"`
	JSONPath string  `yaml:"jsonPath,omitempty"`
	Path     *string `yaml:"path,omitempty"`
	Value    any     `yaml:"value"`
}

// meshConfig is the rules configuration of the nodes o selects.
func meshConfig(f *rulesfile.File, o MeshOptions) (*rules.Config, error) {
	if o.NodeID != "" || o.NodeCluster != "" {
		return f.ForNode(o.NodeID, o.NodeCluster), nil
	}
	for _, r := range f.Rules {
		if r.Limited() {
			return nil, fmt.Errorf("rule %q is limited by nodes (or its package is): say which node's rules to render (-node-id, -node-cluster)", r.Name)
		}
	}
	return f.Config(nil), nil
}

func (o MeshOptions) check() error {
	var errs []error
	if o.Name == "" {
		errs = append(errs, errors.New("a name is required"))
	}
	if o.WasmAPI {
		if o.Image == "" || strings.ContainsAny(o.Image, " \t\n") {
			errs = append(errs, fmt.Errorf("image %q: want registry/repository:tag or @sha256:digest", o.Image))
		}
		if o.SHA256 != "" && (len(o.SHA256) != 64 || strings.Trim(o.SHA256, "0123456789abcdef") != "") {
			errs = append(errs, fmt.Errorf("sha256 %q: want 64 lower-case hex digits", o.SHA256))
		}
		if o.WasmPath != "" {
			errs = append(errs, errors.New("a module path is for the whole filter; with the mesh's Wasm API the mesh fetches the image"))
		}
	} else {
		// Refused rather than ignored: whoever passes an image expects it to
		// be what runs, but the whole filter loads the mounted module.
		if o.Image != "" || o.SHA256 != "" || o.PullSecret != "" || o.FailOpen || o.Phase != "" {
			errs = append(errs, errors.New("image, sha256, pull secret, fail-open and phase are for the mesh's Wasm API (-wasm-api); "+
				"the whole filter loads the module the chart mounts (-wasm) and fails closed"))
		}
		if o.WasmPath != "" && !strings.HasPrefix(o.WasmPath, "/") {
			errs = append(errs, fmt.Errorf("module path %q: want an absolute path in the proxy's container", o.WasmPath))
		}
	}
	return errors.Join(errs...)
}

func (o MeshOptions) wasmPath() string {
	if o.WasmPath == "" {
		return DefaultMeshWasmPath
	}
	return o.WasmPath
}

// meshFilter is the http_filters entry of the whole-filter variant: the
// filter FilterConfig serves plain sidecars over ECDS, its module read
// from the file the chart mounts into the proxy, in Envoy's JSON as a tree.
func meshFilter(cfg *rules.Config, o MeshOptions) (map[string]any, error) {
	ext, err := FilterConfig(cfg, WasmOptions{Path: o.wasmPath()})
	if err != nil {
		return nil, err
	}
	return protoTree(&hcm.HttpFilter{Name: FilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: ext.TypedConfig}})
}

// overriddenRoutes are the route names some rule of cfg that may make
// requests async names (match.route), sorted: as in sidecarResources,
// Envoy's matcher cannot judge those routes, so they carry RouteOverride.
func overriddenRoutes(cfg *rules.Config) []string {
	var names []string
	for _, r := range cfg.Rules {
		if r.Match.Route != "" && r.Mode != rules.ModeSync {
			names = append(names, r.Match.Route)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// BufferFilterName names the -wasm-api variants' buffer filter in
// http_filters (and in a route's typed_per_filter_config).
const BufferFilterName = "asyncmesh.buffer"

// meshBufferFilter is the http_filters entry the -wasm-api variants put
// right before the router, after the mesh's Wasm filter. Without
// allow_on_headers_stop_iteration the filter lets a request's headers go on
// while it reads the body (holdHeaders: false, filter/stream.go); Envoy's
// buffer filter after it holds them back from the router until the body is
// complete, by which time the filter has answered an async request itself
// or refused a replay whose body does not match. It sits behind the
// matcher of the whole filter's wasm chain (wasmPredicate): every other
// request skips it, so a large body on a synchronous route is neither
// buffered nor refused with a 413. Its limit is the largest bodyLimit of
// the async rules, the largest body the filter accepts (a replay's body is
// an accepted body). A rule that may match any request makes it buffer
// every request, as the filter then may make any request async.
func meshBufferFilter(cfg *rules.Config) (map[string]any, error) {
	var limit int64
	for _, r := range cfg.Rules {
		if r.Mode == rules.ModeSync {
			continue
		}
		limit = max(limit, cmp.Or(r.BodyLimit, rules.DefaultBodyLimit))
	}
	if limit == 0 { // no async rule: only replays, of no rule's body
		limit = rules.DefaultBodyLimit
	}
	buf := ext("envoy.filters.http.buffer", &buffer.Buffer{MaxRequestBytes: wrapperspb.UInt32(uint32(limit))})
	f := &hcm.HttpFilter{Name: BufferFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: buf.TypedConfig}}
	if p := wasmPredicate(cfg); p != nil {
		skip := &xmatcher.Matcher{MatcherType: &xmatcher.Matcher_MatcherList_{MatcherList: &xmatcher.Matcher_MatcherList{
			Matchers: []*xmatcher.Matcher_MatcherList_FieldMatcher{{
				Predicate: &xmatcher.Matcher_MatcherList_Predicate{MatchType: &xmatcher.Matcher_MatcherList_Predicate_NotMatcher{NotMatcher: p}},
				OnMatch: &xmatcher.Matcher_OnMatch{OnMatch: &xmatcher.Matcher_OnMatch_Action{Action: &xdscore.TypedExtensionConfig{
					Name: "skip", TypedConfig: anyOf(&matcheraction.SkipFilter{})}}},
			}}}}}
		f.ConfigType = &hcm.HttpFilter_TypedConfig{TypedConfig: anyOf(&matching.ExtensionWithMatcher{ExtensionConfig: buf, XdsMatcher: skip})}
	}
	return protoTree(f)
}

// BufferRouteOverride is the buffer filter's typed_per_filter_config on a
// route a rule names: a matcher that matches nothing, so no request of the
// route skips the buffer (the Wasm filter may make any of them async).
func BufferRouteOverride() *anypb.Any {
	return anyOf(&matching.ExtensionWithMatcherPerRoute{XdsMatcher: &xmatcher.Matcher{}})
}

// inboundFilter is what one variant puts before the router: the filter
// (the whole filter, or the -wasm-api variants' buffer), its name, and the
// typed_per_filter_config of the routes a rule names.
type inboundFilter struct {
	name     string
	value    map[string]any
	override *anypb.Any
}

func meshInboundFilter(cfg *rules.Config, o MeshOptions) (inboundFilter, error) {
	if o.WasmAPI {
		v, err := meshBufferFilter(cfg)
		return inboundFilter{BufferFilterName, v, BufferRouteOverride()}, err
	}
	v, err := meshFilter(cfg, o)
	return inboundFilter{FilterName, v, RouteOverride()}, err
}

// Istio returns the YAML documents of Istio mode: the filter, either the
// whole filter in an EnvoyFilter (default) or a WasmPlugin (o.WasmAPI), and
// the EnvoyFilter that gives the selected sidecars what the filter calls
// by name and the bootstrap of plain sidecar mode has: the collector's
// intake and status clusters (the same clusters sidecarResources serves)
// and the callers' status routes (statusRoutes), first in every inbound
// route configuration (of o.Port).
func Istio(f *rulesfile.File, o MeshOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	if len(o.Selector) == 0 {
		// A WasmPlugin or EnvoyFilter without a selector applies to every
		// workload of its namespace (of the mesh, in the root namespace):
		// never by accident.
		return nil, errors.New("render --istio: a workload selector is required (-selector app=NAME)")
	}
	cfg, err := meshConfig(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	var filterDoc resourceDoc
	if o.WasmAPI {
		plugin, err := istioWasmPlugin(cfg, o)
		if err != nil {
			return nil, fmt.Errorf("render --istio: %w", err)
		}
		filterDoc = resourceDoc{APIVersion: IstioWasmAPIVersion, Kind: "WasmPlugin",
			Metadata: objectMeta{Name: o.Name, Namespace: o.Namespace}, Spec: plugin}
	} else {
		patches, err := istioFilterPatches(cfg, o)
		if err != nil {
			return nil, fmt.Errorf("render --istio: %w", err)
		}
		filterDoc = resourceDoc{APIVersion: IstioNetworkingAPIVersion, Kind: "EnvoyFilter",
			Metadata: objectMeta{Name: o.Name, Namespace: o.Namespace},
			Spec:     envoyFilterSpec{WorkloadSelector: &envoyFilterSelector{Labels: o.Selector}, ConfigPatches: patches}}
	}
	patches, err := istioPatches(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --istio: %w", err)
	}
	if o.WasmAPI {
		// The buffer that holds headers for the WasmPlugin (meshBufferFilter).
		bp, err := istioFilterPatches(cfg, o)
		if err != nil {
			return nil, fmt.Errorf("render --istio: %w", err)
		}
		patches = append(patches, bp...)
	}
	return marshalDocs(filterDoc,
		resourceDoc{APIVersion: IstioNetworkingAPIVersion, Kind: "EnvoyFilter",
			Metadata: objectMeta{Name: o.Name + istioEnvoyFilterNameSuffix, Namespace: o.Namespace},
			Spec:     envoyFilterSpec{WorkloadSelector: &envoyFilterSelector{Labels: o.Selector}, ConfigPatches: patches}},
	)
}

// istioWasmPlugin is the WasmPlugin of the -wasm-api variant.
func istioWasmPlugin(cfg *rules.Config, o MeshOptions) (*wasmPluginSpec, error) {
	pc, err := MeshPluginConfig(cfg)
	if err != nil {
		return nil, err
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
	plugin := &wasmPluginSpec{
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
	return plugin, nil
}

// istioFilterPatches put meshInboundFilter, the whole filter (or with
// o.WasmAPI the buffer), right before the router of the inbound connection
// managers (of o.Port; SIDECAR_INBOUND only, for the reason the
// WasmPlugin's match is SERVER), then merge its route override into each
// inbound route a rule names.
func istioFilterPatches(cfg *rules.Config, o MeshOptions) ([]envoyConfigPatch, error) {
	in, err := meshInboundFilter(cfg, o)
	if err != nil {
		return nil, err
	}
	filter := in.value
	patches := []envoyConfigPatch{{ApplyTo: "HTTP_FILTER",
		Match: envoyPatchMatch{Context: "SIDECAR_INBOUND", Listener: &listenerMatch{PortNumber: o.Port,
			FilterChain: filterChainMatch{Filter: filterMatch{Name: "envoy.filters.network.http_connection_manager",
				SubFilter: &subFilterMatch{Name: RouterFilter}}}}},
		Patch: envoyPatchAction{Operation: "INSERT_BEFORE", Value: filter}}}
	names := overriddenRoutes(cfg)
	if len(names) == 0 {
		return patches, nil
	}
	// A route carrying only the override: MERGE adds it to the route's
	// typed_per_filter_config, keeping the other filters' entries.
	override, err := protoTree(&route.Route{TypedPerFilterConfig: map[string]*anypb.Any{in.name: in.override}})
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		patches = append(patches, envoyConfigPatch{ApplyTo: "HTTP_ROUTE",
			Match: envoyPatchMatch{Context: "SIDECAR_INBOUND", RouteConfiguration: &routeConfigMatch{PortNumber: o.Port,
				Vhost: &vhostMatch{Route: routeNameMatch{Name: name}}}},
			Patch: envoyPatchAction{Operation: "MERGE", Value: override}})
	}
	return patches, nil
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

// EnvoyGateway returns the YAML of Envoy Gateway mode: an EnvoyPatchPolicy
// on the Gateway that adds the collector's clusters, the status routes
// first in every virtual host of the listeners' route configurations and,
// by default, the whole filter before the router of those listeners; with
// o.WasmAPI the filter comes instead from an EnvoyExtensionPolicy, printed
// first, and the patch adds the buffer that holds headers for it. Envoy Gateway applies EnvoyPatchPolicies only with
// extensionApis.enableEnvoyPatchPolicy in its configuration (docs/deploy.md).
func EnvoyGateway(f *rulesfile.File, o MeshOptions) ([]byte, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	if o.Gateway == "" && o.TargetKind == "Gateway" {
		o.Gateway = o.TargetName
	}
	var errs []error
	if o.Gateway == "" {
		errs = append(errs, errors.New("a Gateway is required (-gateway): its Envoy gets the collector's clusters and the status routes"))
	}
	if o.Namespace == "" {
		errs = append(errs, errors.New("the Gateway's namespace is required (-namespace): Envoy Gateway's resource names contain it"))
	}
	if o.WasmAPI {
		if o.TargetKind != "Gateway" && o.TargetKind != "HTTPRoute" {
			errs = append(errs, fmt.Errorf("target kind %q: want Gateway or HTTPRoute", o.TargetKind))
		}
		if o.TargetName == "" {
			errs = append(errs, errors.New("a target name is required (-target-name)"))
		}
	} else if o.TargetKind == "HTTPRoute" {
		errs = append(errs, errors.New("an HTTPRoute target needs -wasm-api: the whole filter goes into the Gateway's listeners"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	cfg, err := meshConfig(f, o)
	if err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	patches, err := egPatches(f, cfg, o)
	if err != nil {
		return nil, fmt.Errorf("render --envoy-gateway: %w", err)
	}
	policy := resourceDoc{APIVersion: EnvoyGatewayAPIVersion, Kind: "EnvoyPatchPolicy",
		Metadata: objectMeta{Name: o.Name, Namespace: o.Namespace},
		Spec: patchPolicySpec{TargetRef: policyTargetRef{Group: GatewayAPIGroup, Kind: "Gateway", Name: o.Gateway},
			Type: "JSONPatch", JSONPatches: patches}}
	if !o.WasmAPI {
		return marshalDocs(policy)
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
			Wasm: []egWasm{w}}}, policy)
}

// egPatches are the EnvoyPatchPolicy's JSON patches, applied in order:
//
//  1. the collector's intake and status clusters, added whole (path "");
//  2. per listener, meshInboundFilter (the whole filter, or with WasmAPI
//     the buffer that holds headers for the EnvoyExtensionPolicy's Wasm
//     filter), added at the router's place in each http_filters list,
//     which RFC 6902 "add" at an array element makes an insertion before
//     it: after Envoy Gateway's own filters, its Wasm filters included;
//  3. per listener, the status routes, inserted at 0, 1, 2 of every
//     virtual host's routes, so that they come first in statusRoutes' order;
//  4. per listener, that filter's route override in each route a rule
//     names (Envoy Gateway creates the missing typed_per_filter_config
//     map: it applies "add" with EnsurePathExistsOnAdd).
func egPatches(f *rulesfile.File, cfg *rules.Config, o MeshOptions) ([]egJSONPatch, error) {
	if f.Filter.CollectorCluster == "" {
		return nil, errors.New("the rules file sets no filter.collectorCluster")
	}
	host, _, err := net.SplitHostPort(o.Collector)
	if err != nil || host == "" {
		return nil, fmt.Errorf("collector %q: want the collector Service's host:port (-collector am-collector.%s.svc:9901)", o.Collector, o.Namespace)
	}
	a, err := socketAddress(o.Collector)
	if err != nil {
		return nil, err
	}
	var patches []egJSONPatch
	whole := ""
	for _, c := range collectorClusters(f.Filter.CollectorCluster, a) {
		if net.ParseIP(host) == nil {
			// A Service name: resolved, and re-resolved, by Envoy.
			c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
			c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
		}
		v, err := protoTree(c)
		if err != nil {
			return nil, err
		}
		patches = append(patches, egJSONPatch{Type: egClusterType, Name: c.Name,
			Operation: egOperation{Op: "add", Path: &whole, Value: v}})
	}
	listeners := o.Listeners
	if len(listeners) == 0 {
		listeners = []string{"http"}
	}
	in, err := meshInboundFilter(cfg, o)
	if err != nil {
		return nil, err
	}
	named := overriddenRoutes(cfg)
	for _, n := range named {
		if strings.ContainsAny(n, `'\`) {
			return nil, fmt.Errorf("route %q: a quote or backslash cannot be matched in a JSONPath filter", n)
		}
	}
	override, err := protoTree(in.override)
	if err != nil {
		return nil, err
	}
	routes := statusRoutes(statusPrefix(f), StatusCluster(f.Filter.CollectorCluster))
	for _, l := range listeners {
		if l == "" || strings.Contains(l, "/") {
			return nil, fmt.Errorf("listener %q: want the name of one of the Gateway's listeners", l)
		}
		name := o.Namespace + "/" + o.Gateway + "/" + l
		patches = append(patches, egJSONPatch{Type: egListenerType, Name: name,
			Operation: egOperation{Op: "add", JSONPath: EGRouterPath, Value: in.value}})
		for i, r := range routes {
			v, err := protoTree(r)
			if err != nil {
				return nil, err
			}
			path := "routes/" + strconv.Itoa(i)
			patches = append(patches, egJSONPatch{Type: egRouteType, Name: name,
				Operation: egOperation{Op: "add", JSONPath: EGVirtualHostsPath, Path: &path, Value: v}})
		}
		for _, n := range named {
			path := "typed_per_filter_config/" + in.name
			patches = append(patches, egJSONPatch{Type: egRouteType, Name: name,
				Operation: egOperation{Op: "add", JSONPath: EGRoutePath(n), Path: &path, Value: override}})
		}
	}
	return patches, nil
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
