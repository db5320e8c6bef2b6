package xds

import (
	"errors"
	"fmt"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Names in a generated bootstrap (BootstrapFor).
const (
	// UpstreamCluster is the service asyncmesh stands in front of.
	UpstreamCluster = "service"
	// XDSCluster is the control plane's cluster (ECDS mode).
	XDSCluster = "asyncmesh_xds"
	// DefaultCollectorCluster is the collector's cluster when an ECDS
	// bootstrap is made without the rules file (its filter.collectorCluster
	// must then be this one, as in examples/rules.yaml).
	DefaultCollectorCluster = "asyncmesh_collector"
)

// BootstrapOptions describe one sidecar in front of one service.
type BootstrapOptions struct {
	Listen    string // host:port of Envoy's listener
	Upstream  string // host:port of the service
	Collector string // host:port of the collector's API
	Admin     string // host:port of Envoy's admin interface
	// Rules is the rules file: its filter: settings name the collector's
	// cluster and the status prefix, and, without XDS, its rules are
	// embedded in the filter. With XDS it may be nil (the collector's
	// cluster is DefaultCollectorCluster, the status prefix /async).
	Rules *rulesfile.File
	// XDS, when set, is the control plane's host:port: the filter's
	// configuration comes from it over ECDS (ADS). Otherwise Wasm says
	// where the filter's code is and the rules are embedded.
	XDS                 string
	Wasm                WasmOptions
	NodeID, NodeCluster string
}

// BootstrapFor returns a complete Envoy bootstrap for a sidecar in front
// of o.Upstream: one listener whose routes are the status routes (the
// callers' reads, as in the generated sidecar) and then everything to the
// service; the service, collector and collector-status clusters; the
// asyncmesh filter (static, or ECDS from the control plane, then with its
// cluster and ADS) and the router.
func BootstrapFor(o BootstrapOptions) (*bootstrap.Bootstrap, error) {
	if o.XDS == "" && (o.Rules == nil || o.Wasm.Path == "") {
		return nil, errors.New("bootstrap: want the control plane's address, or a rules file and the filter's .wasm path")
	}
	f := o.Rules
	if f == nil { // ECDS without the file: the defaults' names
		f = &rulesfile.File{Filter: rulesfile.FilterSettings{CollectorCluster: DefaultCollectorCluster}}
	}
	collectorName := f.Filter.CollectorCluster
	if collectorName == "" {
		return nil, errors.New("bootstrap: the rules file has no filter.collectorCluster")
	}
	if collectorName == UpstreamCluster || collectorName == XDSCluster || StatusCluster(collectorName) == UpstreamCluster {
		return nil, fmt.Errorf("bootstrap: filter.collectorCluster %q collides with a cluster of the bootstrap", collectorName)
	}

	var asyncmesh *hcm.HttpFilter
	if o.XDS != "" {
		asyncmesh = ecdsFilter()
	} else {
		ext, err := FilterConfig(f.ForNode(o.NodeID, o.NodeCluster), o.Wasm)
		if err != nil {
			return nil, err
		}
		asyncmesh = &hcm.HttpFilter{Name: FilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: ext.TypedConfig}}
	}

	named := false // a rule names the route: Envoy's matcher cannot judge it
	for _, r := range f.Rules {
		if r.Match.Route == UpstreamCluster && r.Mode != rules.ModeSync {
			named = true
		}
	}
	routes := append(statusRoutes(statusPrefix(f), StatusCluster(collectorName)),
		prefixRoute(UpstreamCluster, "/", UpstreamCluster, "", 60*time.Second, named))
	rc := &route.RouteConfiguration{Name: RouteName, VirtualHosts: []*route.VirtualHost{{
		Name: "sidecar", Domains: []string{"*"}, Routes: routes}}}
	lis, err := ingressListener(ListenerName, o.Listen, rc, asyncmesh)
	if err != nil {
		return nil, fmt.Errorf("-listen: %w", err)
	}

	up, err := socketAddress(o.Upstream)
	if err != nil {
		return nil, fmt.Errorf("-upstream: %w", err)
	}
	col, err := socketAddress(o.Collector)
	if err != nil {
		return nil, fmt.Errorf("-collector: %w", err)
	}
	admin, err := socketAddress(o.Admin)
	if err != nil {
		return nil, fmt.Errorf("-admin: %w", err)
	}
	clusters := append([]*cluster.Cluster{staticCluster(UpstreamCluster, up)}, collectorClusters(collectorName, col)...)

	b := &bootstrap.Bootstrap{
		Node: &core.Node{Id: o.NodeID, Cluster: o.NodeCluster},
		StaticResources: &bootstrap.Bootstrap_StaticResources{
			Listeners: []*listener.Listener{lis},
		},
		Admin:                  &bootstrap.Admin{Address: admin},
		MemoryAllocatorManager: MemoryRelease(),
	}
	if o.XDS != "" {
		xa, err := socketAddress(o.XDS)
		if err != nil {
			return nil, fmt.Errorf("-xds: %w", err)
		}
		xc := staticCluster(XDSCluster, xa)
		xc.TypedExtensionProtocolOptions = map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": anyOf(&upstreamhttp.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}}),
		}
		clusters = append(clusters, xc)
		b.DynamicResources = &bootstrap.Bootstrap_DynamicResources{AdsConfig: &core.ApiConfigSource{
			ApiType: core.ApiConfigSource_GRPC, TransportApiVersion: core.ApiVersion_V3,
			SetNodeOnFirstMessageOnly: true,
			GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}}}},
		}}
	}
	b.StaticResources.Clusters = clusters
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// MemoryRelease has Envoy hand its free heap back to the OS every second:
// tcmalloc keeps freed pages otherwise, and compiling the Wasm module at
// start leaves about 20 MB of them, resident in every pod for its lifetime
// (bench/REPORT.md, "Envoy footprint"). The shipped envoy*.yaml carry the
// same (TestStaticBootstrapsMatchGenerated).
func MemoryRelease() *bootstrap.MemoryAllocatorManager {
	return &bootstrap.MemoryAllocatorManager{BytesToRelease: 16 << 20, MemoryReleaseInterval: durationpb.New(time.Second)}
}
