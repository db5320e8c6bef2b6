package xds

import (
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// TestBootstrapFor: the generated bootstrap, printed as JSON, decodes
// strictly into Envoy's Bootstrap (no unknown field) in both modes: the
// status routes as generated for sidecars first, then everything to the
// service; the service, collector and collector-status clusters on their
// addresses; the filter embedded (static) or from ECDS with the control
// plane's cluster and ADS.
func TestBootstrapFor(t *testing.T) {
	f, err := rulesfile.Parse("rules.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"static", "ecds"} {
		t.Run(mode, func(t *testing.T) {
			o := BootstrapOptions{Listen: "127.0.0.1:10000", Upstream: "127.0.0.1:8080", Collector: "127.0.0.1:9901",
				Admin: "127.0.0.1:9902", Rules: f, NodeID: "sidecar-1", NodeCluster: "demo"}
			if mode == "ecds" {
				o.XDS = "127.0.0.1:18000"
			} else {
				o.Wasm = WasmOptions{Path: "/opt/asyncmesh.wasm"}
			}
			b, err := BootstrapFor(o)
			if err != nil {
				t.Fatal(err)
			}
			js, err := protojson.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			var got bootstrap.Bootstrap
			if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &got); err != nil {
				t.Fatalf("strict decode: %v", err)
			}
			if err := got.Validate(); err != nil {
				t.Fatal(err)
			}
			if got.Node.GetId() != "sidecar-1" || got.Node.GetCluster() != "demo" {
				t.Errorf("node %v", got.Node)
			}

			lis := got.StaticResources.Listeners
			if len(lis) != 1 || lis[0].Address.GetSocketAddress().GetPortValue() != 10000 {
				t.Fatalf("listeners %v", lis)
			}
			var m hcm.HttpConnectionManager
			if err := lis[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			routes := m.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
			want := statusRoutes("/async", "asyncmesh_collector_status")
			if len(routes) != len(want)+1 {
				t.Fatalf("%d routes, want %d", len(routes), len(want)+1)
			}
			for i, w := range want {
				if !proto.Equal(routes[i], w) {
					t.Errorf("route %d: %v, want %v", i, routes[i], w)
				}
			}
			last := routes[len(want)]
			if last.Match.GetPrefix() != "/" || last.GetRoute().GetCluster() != UpstreamCluster || last.TypedPerFilterConfig != nil {
				t.Errorf("last route %v: want / to %s", last, UpstreamCluster)
			}
			if _, ok := last.Action.(*route.Route_Route); !ok {
				t.Errorf("last route %v", last)
			}

			if n := len(m.HttpFilters); n != 2 || m.HttpFilters[0].Name != FilterName || m.HttpFilters[1].Name != "envoy.filters.http.router" {
				t.Fatalf("http filters %v", m.HttpFilters)
			}
			af := m.HttpFilters[0]
			ports := map[string]uint32{}
			for _, c := range got.StaticResources.Clusters {
				ports[c.Name] = c.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().GetPortValue()
			}
			wantPorts := map[string]uint32{"service": 8080, "asyncmesh_collector": 9901, "asyncmesh_collector_status": 9901}
			if mode == "ecds" {
				wantPorts[XDSCluster] = 18000
				ds := af.GetConfigDiscovery()
				if ds == nil || len(ds.TypeUrls) != 1 || ds.TypeUrls[0] != FilterTypeURL || ds.ConfigSource.GetAds() == nil {
					t.Errorf("asyncmesh filter %v: want config_discovery of %s over ADS", af, FilterTypeURL)
				}
				grpc := got.DynamicResources.GetAdsConfig().GetGrpcServices()
				if len(grpc) != 1 || grpc[0].GetEnvoyGrpc().GetClusterName() != XDSCluster {
					t.Errorf("ads_config %v", got.DynamicResources)
				}
			} else {
				ext, err := FilterConfig(f.ForNode("sidecar-1", "demo"), o.Wasm)
				if err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(af.GetTypedConfig(), ext.TypedConfig) {
					t.Errorf("asyncmesh filter: not the served configuration")
				}
				if got.DynamicResources != nil {
					t.Errorf("dynamic resources %v in a static bootstrap", got.DynamicResources)
				}
			}
			if len(ports) != len(wantPorts) {
				t.Errorf("clusters %v, want %v", ports, wantPorts)
			}
			for n, p := range wantPorts {
				if ports[n] != p {
					t.Errorf("cluster %s on port %d, want %d", n, ports[n], p)
				}
			}
			if got.Admin.Address.GetSocketAddress().GetPortValue() != 9902 {
				t.Errorf("admin %v", got.Admin)
			}
		})
	}
}

// TestBootstrapForRefuses: missing or clashing settings are errors.
func TestBootstrapForRefuses(t *testing.T) {
	f, err := rulesfile.Parse("rules.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	ok := BootstrapOptions{Listen: "127.0.0.1:10000", Upstream: "127.0.0.1:8080", Collector: "127.0.0.1:9901",
		Admin: "127.0.0.1:9902", Rules: f, XDS: "127.0.0.1:18000"}
	for name, edit := range map[string]func(*BootstrapOptions){
		"no rules":     func(o *BootstrapOptions) { o.Rules, o.XDS, o.Wasm.Path = nil, "", "/x.wasm" },
		"no source":    func(o *BootstrapOptions) { o.XDS = "" },
		"bad listen":   func(o *BootstrapOptions) { o.Listen = "10000" },
		"bad upstream": func(o *BootstrapOptions) { o.Upstream = "x:y" },
	} {
		o := ok
		edit(&o)
		if _, err := BootstrapFor(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := BootstrapFor(ok); err != nil {
		t.Fatal(err)
	}
	ok.Rules = nil // ECDS: the file's names default
	if _, err := BootstrapFor(ok); err != nil {
		t.Fatal(err)
	}
}
