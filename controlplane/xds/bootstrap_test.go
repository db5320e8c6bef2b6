package xds

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// TestStaticBootstrapsMatchGenerated: the static bootstraps (envoy.yaml,
// envoy-xds.yaml), written by hand, carry exactly the status routes, the
// status cluster and the connection manager settings that the control
// plane generates for envoy-ads.yaml's sidecars: the caller's three reads,
// GET only, the events stream without a route timeout and with a 60 s idle
// timeout, the status read's 75 s, Envoy's own 404 for the rest of
// /async/, the status cluster's circuit breakers, and no connection manager
// timeout (request_timeout, stream_idle_timeout, max_stream_duration) in
// one that the other does not have. A change to one of the three must be
// made to the others.
func TestStaticBootstrapsMatchGenerated(t *testing.T) {
	f, err := rulesfile.Parse("rules.yaml", []byte(good+`
sidecar:
  listen: "127.0.0.1:10000"
  clusters:
    - {name: service, address: "127.0.0.1:8080"}
    - {name: asyncmesh_collector, address: "127.0.0.1:9901"}
  routes:
    - {name: all, prefix: /, cluster: service}
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := sidecarResources(f)
	if err != nil {
		t.Fatal(err)
	}
	genRoutes := res[resource.RouteType][0].(*route.RouteConfiguration).VirtualHosts[0].Routes[:3]
	var genManager hcm.HttpConnectionManager
	lis := res[resource.ListenerType][0].(*listener.Listener)
	if err := lis.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&genManager); err != nil {
		t.Fatal(err)
	}
	genManager.RouteSpecifier, genManager.HttpFilters = nil, nil
	var genStatus *cluster.Cluster
	for _, c := range res[resource.ClusterType] {
		if c := c.(*cluster.Cluster); c.Name == StatusCluster("asyncmesh_collector") {
			genStatus = proto.Clone(c).(*cluster.Cluster)
			genStatus.LoadAssignment = nil
		}
	}

	for _, name := range []string{"envoy.yaml", "envoy-xds.yaml"} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("..", "..", name))
			if err != nil {
				t.Fatal(err)
			}
			// Placeholders (filled in by examples/stack) become numbers,
			// one per name, so that addresses can still be compared.
			seen := map[string]string{}
			filled := placeholder.ReplaceAllStringFunc(string(raw), func(p string) string {
				if _, ok := seen[p]; !ok {
					seen[p] = strconv.Itoa(10000 + len(seen))
				}
				return seen[p]
			})
			var boot map[string]any
			if err := yaml.Unmarshal([]byte(filled), &boot); err != nil {
				t.Fatal(err)
			}
			sr := boot["static_resources"].(map[string]any)

			// The allocator hands free heap back as in generated bootstraps.
			var release bootstrap.MemoryAllocatorManager
			decode(t, boot["memory_allocator_manager"], &release)
			if !proto.Equal(&release, MemoryRelease()) {
				t.Errorf("memory_allocator_manager: %s has %v, generated %v", name, &release, MemoryRelease())
			}
			filter := sr["listeners"].([]any)[0].(map[string]any)["filter_chains"].([]any)[0].(map[string]any)["filters"].([]any)[0].(map[string]any)
			manager := filter["typed_config"].(map[string]any)
			routes := manager["route_config"].(map[string]any)["virtual_hosts"].([]any)[0].(map[string]any)["routes"].([]any)

			// The first three routes are the status prefix's, as generated.
			for i, want := range genRoutes {
				var got route.Route
				decode(t, routes[i], &got)
				if !proto.Equal(&got, want) {
					t.Errorf("route %d:\n%s has   %v\ngenerated %v", i, name, &got, want)
				}
			}

			// The connection manager: nothing but its routes and filters
			// differs (a timeout here would cut event streams there).
			m := map[string]any{}
			for k, v := range manager {
				switch k {
				case "@type", "route_config", "http_filters":
				default:
					m[k] = v
				}
			}
			var got hcm.HttpConnectionManager
			decode(t, m, &got)
			if !proto.Equal(&got, &genManager) {
				t.Errorf("connection manager:\n%s has   %v\ngenerated %v", name, &got, &genManager)
			}

			// The status cluster: as generated, on the collector's address.
			clusters := map[string]map[string]any{}
			for _, c := range sr["clusters"].([]any) {
				c := c.(map[string]any)
				clusters[c["name"].(string)] = c
			}
			st, collector := clusters[genStatus.Name], clusters["asyncmesh_collector"]
			if st == nil || collector == nil {
				t.Fatalf("%s: clusters %v: want asyncmesh_collector and %s", name, clusters, genStatus.Name)
			}
			sla, cla := st["load_assignment"].(map[string]any), collector["load_assignment"].(map[string]any)
			if a, b := js(t, sla["endpoints"]), js(t, cla["endpoints"]); a != b || sla["cluster_name"] != genStatus.Name {
				t.Errorf("%s: the status cluster's load assignment %v, want the collector's endpoints %s", name, sla, b)
			}
			c := map[string]any{}
			for k, v := range st {
				if k != "load_assignment" {
					c[k] = v
				}
			}
			var gotStatus cluster.Cluster
			decode(t, c, &gotStatus)
			if !proto.Equal(&gotStatus, genStatus) {
				t.Errorf("status cluster:\n%s has   %v\ngenerated %v", name, &gotStatus, genStatus)
			}
		})
	}
}

var placeholder = regexp.MustCompile(`\$\{[A-Z_]+\}`)

// decode reads v, a part of a bootstrap decoded from YAML, as Envoy would
// read it into m.
func decode(t *testing.T, v any, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(js(t, v)), m); err != nil {
		t.Fatalf("%s: %v", js(t, v), err)
	}
}

func js(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
