package xds

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Names of the sidecar's served resources.
const (
	ListenerName = "asyncmesh_ingress"
	RouteName    = "asyncmesh_routes"
)

// sidecarResources builds the listener, route configuration and clusters of
// the sidecar: section. The listener's HTTP filters are the asyncmesh filter
// (its configuration by ECDS) and the router. The first route
// sends the status prefix to the collector's API.
func sidecarResources(f *rulesfile.File) (map[resource.Type][]types.Resource, error) {
	s := f.Sidecar
	lis, err := ingressListener(ListenerName, s.Listen,
		&hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: RouteName,
			ConfigSource: &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
				ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}},
		ecdsFilter())
	if err != nil {
		return nil, err
	}

	routes := statusRoutes(statusPrefix(f), StatusCluster(f.Filter.CollectorCluster))
	named := map[string]bool{} // routes a rule names
	for _, r := range f.Rules {
		if r.Match.Route != "" && r.Mode != rules.ModeSync {
			named[r.Match.Route] = true
		}
	}
	for _, r := range s.Routes {
		timeout := r.Timeout.D()
		if timeout == 0 {
			timeout = 60 * time.Second
		}
		rt := prefixRoute(r.Name, r.Prefix, r.Cluster, r.PrefixRewrite, timeout, len(r.Annotations) > 0 || named[r.Name])
		if len(r.Annotations) > 0 {
			fields := map[string]any{}
			for k, v := range r.Annotations {
				fields[k] = v
			}
			st, err := structpb.NewStruct(fields)
			if err != nil {
				return nil, err
			}
			rt.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{FilterName: st}}
		}
		routes = append(routes, rt)
	}
	rc := &route.RouteConfiguration{Name: RouteName, VirtualHosts: []*route.VirtualHost{{
		Name: "sidecar", Domains: []string{"*"}, Routes: routes}}}

	var clusters []types.Resource
	for _, c := range s.Clusters {
		a, err := socketAddress(c.Address)
		if err != nil {
			return nil, err
		}
		if c.Name == f.Filter.CollectorCluster {
			for _, cl := range collectorClusters(c.Name, a) {
				clusters = append(clusters, cl)
			}
			continue
		}
		clusters = append(clusters, staticCluster(c.Name, a))
	}
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {lis},
		resource.RouteType:    {rc},
		resource.ClusterType:  clusters,
	}, nil
}

// ecdsFilter is the asyncmesh HTTP filter whose configuration comes from
// the control plane over ADS (ECDS).
func ecdsFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: FilterName, ConfigType: &hcm.HttpFilter_ConfigDiscovery{ConfigDiscovery: &core.ExtensionConfigSource{
		ConfigSource: &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
			InitialFetchTimeout:   durationpb.New(10 * time.Second)},
		TypeUrls: []string{FilterTypeURL},
	}}}
}

// ingressListener is the sidecar's listener on listen: one connection
// manager with routes, the asyncmesh filter and the router.
func ingressListener(name, listen string, routes any, asyncmesh *hcm.HttpFilter) (*listener.Listener, error) {
	manager := &hcm.HttpConnectionManager{
		StatPrefix: "ingress",
		HttpFilters: []*hcm.HttpFilter{
			asyncmesh,
			{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: anyOf(&router.Router{})}},
		},
	}
	switch r := routes.(type) {
	case *hcm.HttpConnectionManager_Rds:
		manager.RouteSpecifier = r
	case *route.RouteConfiguration:
		manager.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: r}
	default:
		return nil, fmt.Errorf("ingress listener: routes %T", routes)
	}
	addr, err := socketAddress(listen)
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:    name,
		Address: addr,
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: anyOf(manager)},
		}}}},
	}, nil
}

// prefixRoute sends a path prefix to a cluster; override marks a route
// Envoy's matcher cannot judge (annotated, or named by a rule): all of its
// requests go to the Wasm filter.
func prefixRoute(name, prefix, clusterName, rewrite string, timeout time.Duration, override bool) *route.Route {
	rt := &route.Route{
		Name:  name,
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName},
			PrefixRewrite:    rewrite, Timeout: durationpb.New(timeout)}},
	}
	if override {
		rt.TypedPerFilterConfig = map[string]*anypb.Any{FilterName: RouteOverride()}
	}
	return rt
}

// collectorClusters are the collector's intake cluster and, on the same
// address, its status cluster for the callers' reads: a cluster of its own
// with its own circuit breakers, so that readers (long-polls and event
// streams hold a request each) cannot starve intake.
func collectorClusters(name string, a *core.Address) []*cluster.Cluster {
	st := staticCluster(StatusCluster(name), a)
	st.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections: wrapperspb.UInt32(StatusMaxRequests), MaxRequests: wrapperspb.UInt32(StatusMaxRequests),
		MaxPendingRequests: wrapperspb.UInt32(StatusMaxPending)}}}
	return []*cluster.Cluster{staticCluster(name, a), st}
}

// statusPrefix is the file's status prefix, /async by default.
func statusPrefix(f *rulesfile.File) string {
	if f.Filter.StatusPrefix == "" {
		return "/async"
	}
	return f.Filter.StatusPrefix
}

func staticCluster(name string, a *core.Address) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{
				Endpoint: &endpoint.Endpoint{Address: a}}}}}}},
	}
}

// StatusCluster is the cluster of the callers' reads of the collector
// whose intake cluster is collector.
func StatusCluster(collector string) string { return collector + "_status" }

// Circuit breakers of the status cluster: the collector holds 1024
// long-polls and event streams by default (collector.Config.MaxWaiters).
const (
	StatusMaxRequests = 1024
	StatusMaxPending  = 128
)

// statusRoutes are the routes under the status prefix (envoy.yaml and
// envoy-xds.yaml have the same by hand, TestStaticBootstrapsMatchGenerated
// compares them): the caller's reads of one request, GET only, to the status
// cluster, the events stream without a route timeout (it sends a comment
// every 15 s, and the collector ends it after collector.MaxEventStream);
// anything else under the prefix, search, replay and metrics included, is
// answered 404 by Envoy itself: those are operator endpoints and never
// reach the collector from the caller-facing listener.
func statusRoutes(prefix, statusCluster string) []*route.Route {
	get := []*route.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
		StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: "GET"}}}}}
	rewrite := &matcher.RegexMatchAndSubstitute{Pattern: &matcher.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix)}, Substitution: ""}
	read := func(name, suffix string, timeout, idle time.Duration) *route.Route {
		ra := &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: statusCluster},
			RegexRewrite:     rewrite, Timeout: durationpb.New(timeout)}
		if idle > 0 {
			ra.IdleTimeout = durationpb.New(idle)
		}
		return &route.Route{Name: name, Match: &route.RouteMatch{
			PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{
				Regex: regexp.QuoteMeta(prefix) + "/v1/requests/[^/]+" + suffix}},
			Headers: get},
			Action: &route.Route_Route{Route: ra}}
	}
	return []*route.Route{
		read("asyncmesh_events", "/events", 0, time.Minute),
		read("asyncmesh_status", "(/result)?", 75*time.Second, 0),
		{Name: "asyncmesh_closed", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix + "/"}},
			Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 404,
				Body: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: `{"error":"not_found","message":"no such endpoint"}`}}}}},
	}
}

func socketAddress(hostPort string) (*core.Address, error) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", hostPort, err)
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("address %q: bad port", hostPort)
	}
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p)}}}}, nil
}
