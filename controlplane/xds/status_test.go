package xds

import (
	"regexp"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// TestStatusRoutesAreTheCallersReadsOnly: the generated sidecar routes only
// GET of the three reads of one request to the status cluster (with its
// circuit breakers; the events stream without a route timeout) and answers
// everything else under the prefix itself: search, replay and metrics are
// operator endpoints and never reach the collector from the caller's side.
func TestStatusRoutesAreTheCallersReadsOnly(t *testing.T) {
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
	rc := res[resource.RouteType][0].(*route.RouteConfiguration)
	routes := rc.VirtualHosts[0].Routes
	// route returns where Envoy sends method path: the route's name, and its
	// rewritten path (or "" for a direct response).
	match := func(method, path string) (string, *route.Route) {
		for _, r := range routes {
			m := r.Match
			if hs := m.Headers; len(hs) > 0 && hs[0].GetStringMatch().GetExact() != method {
				continue
			}
			switch {
			case m.GetSafeRegex() != nil:
				if regexp.MustCompile("^(?:" + m.GetSafeRegex().Regex + ")$").MatchString(path) {
					return r.Name, r
				}
			case len(path) >= len(m.GetPrefix()) && path[:len(m.GetPrefix())] == m.GetPrefix():
				return r.Name, r
			}
		}
		return "", nil
	}
	id := "01a237b4-22f5-7f1e-9988-c3492d044149"
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/async/v1/requests/" + id, "asyncmesh_status"},
		{"GET", "/async/v1/requests/" + id + "/result", "asyncmesh_status"},
		{"GET", "/async/v1/requests/" + id + "/events", "asyncmesh_events"},
		{"GET", "/async/v1/requests", "asyncmesh_closed"},
		{"GET", "/async/v1/requests/", "asyncmesh_closed"},
		{"POST", "/async/v1/requests/" + id + "/replay", "asyncmesh_closed"},
		{"POST", "/async/v1/deliveries/replay", "asyncmesh_closed"},
		{"GET", "/async/metrics", "asyncmesh_closed"},
		{"GET", "/async/v1/requests/" + id + "/../../../metrics", "asyncmesh_closed"},
		{"DELETE", "/async/v1/requests/" + id, "asyncmesh_closed"},
		{"GET", "/reports", "all"},
	} {
		name, r := match(c.method, c.path)
		if name != c.want {
			t.Errorf("%s %s routes to %q, want %q", c.method, c.path, name, c.want)
			continue
		}
		switch name {
		case "asyncmesh_closed":
			if r.GetDirectResponse().GetStatus() != 404 {
				t.Errorf("%s %s: %v, want Envoy's own 404", c.method, c.path, r.Action)
			}
		case "asyncmesh_status", "asyncmesh_events":
			a := r.GetRoute()
			if a.GetCluster() != "asyncmesh_collector_status" || a.RegexRewrite == nil {
				t.Errorf("%s %s goes to %q", c.method, c.path, a.GetCluster())
			}
			if name == "asyncmesh_events" && a.Timeout.AsDuration() != 0 {
				t.Errorf("the events route has a timeout of %v: Envoy would cut the stream", a.Timeout.AsDuration())
			}
		}
	}
	var status *cluster.Cluster
	for _, c := range res[resource.ClusterType] {
		if c := c.(*cluster.Cluster); c.Name == "asyncmesh_collector_status" {
			status = c
		}
	}
	if status == nil || status.CircuitBreakers == nil || status.CircuitBreakers.Thresholds[0].MaxRequests.GetValue() != StatusMaxRequests {
		t.Fatalf("status cluster %v: want circuit breakers of its own", status)
	}
}
