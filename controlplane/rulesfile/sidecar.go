package rulesfile

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Sidecar is the optional sidecar: section. With it the control plane also
// serves the listener, routes and clusters of the sidecars (LDS/RDS/CDS), as
// for the example sidecar; a route may carry annotations that pick a rule.
// Without it, the mesh's own control plane serves those and asyncmesh only
// the filter's configuration (ECDS).
type Sidecar struct {
	// Listen is the listener's address, host:port.
	Listen   string           `json:"listen"`
	Clusters []SidecarCluster `json:"clusters"`
	Routes   []SidecarRoute   `json:"routes"`
}

// SidecarCluster is an upstream by static address.
type SidecarCluster struct {
	Name    string `json:"name"`
	Address string `json:"address"` // host:port
}

// SidecarRoute is one route, tried in order.
type SidecarRoute struct {
	Name          string            `json:"name"`
	Prefix        string            `json:"prefix"`
	Cluster       string            `json:"cluster"`
	PrefixRewrite string            `json:"prefixRewrite"`
	Timeout       rules.Duration    `json:"timeout"`
	Annotations   map[string]string `json:"annotations"` // filter_metadata["asyncmesh"]
}

func (s *Sidecar) validate(f *File) error {
	bad := func(path, format string, args ...any) error {
		return &rules.FieldError{Path: "sidecar." + path, Err: fmt.Errorf(format, args...)}
	}
	if err := checkHostPort(s.Listen); err != nil {
		return bad("listen", "%v", err)
	}
	clusters := map[string]bool{}
	for i, c := range s.Clusters {
		if c.Name == "" || clusters[c.Name] {
			return bad(fmt.Sprintf("clusters[%d].name", i), "%q is empty or repeated", c.Name)
		}
		clusters[c.Name] = true
		if err := checkHostPort(c.Address); err != nil {
			return bad(fmt.Sprintf("clusters[%d].address", i), "%v", err)
		}
	}
	if !clusters[f.Filter.CollectorCluster] {
		return bad("clusters", "no cluster %q (filter.collectorCluster) for the collector", f.Filter.CollectorCluster)
	}
	cfg := f.Config(nil)
	names := map[string]bool{}
	for i, r := range s.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		switch {
		case r.Name == "" || names[r.Name]:
			return bad(p+".name", "%q is empty or repeated", r.Name)
		case !strings.HasPrefix(r.Prefix, "/"):
			return bad(p+".prefix", "%q must start with /", r.Prefix)
		case !clusters[r.Cluster]:
			return bad(p+".cluster", "%q is not among sidecar.clusters", r.Cluster)
		case r.PrefixRewrite != "" && !strings.HasPrefix(r.PrefixRewrite, "/"):
			return bad(p+".prefixRewrite", "%q must start with /", r.PrefixRewrite)
		}
		names[r.Name] = true
		if len(r.Annotations) > 0 {
			if !f.Filter.RouteAnnotations {
				return bad(p+".annotations", "set filter.routeAnnotations: true, or the filter ignores them")
			}
			kv := make([][2]string, 0, len(r.Annotations))
			for k, v := range r.Annotations {
				kv = append(kv, [2]string{k, v})
			}
			if _, err := cfg.Annotated(kv); err != nil {
				return bad(p+".annotations", "%v", err)
			}
		}
	}
	if len(s.Routes) == 0 {
		return bad("routes", "at least one route")
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be 1..65535", s)
	}
	return nil
}
