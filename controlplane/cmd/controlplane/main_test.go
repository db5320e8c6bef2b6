package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

const rules = `
filter: {collectorCluster: asyncmesh_collector, replaySecretEnv: ASYNCMESH_REPLAY_SECRET}
rules:
  - name: slow
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "https://hooks.example/cb"}
`

func writeRules(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(p, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// In Kubernetes -xds names the control plane's Service: the bootstrap
// written by -out must resolve it (STRICT_DNS); an IP stays STATIC.
func TestBootstrapXDSByName(t *testing.T) {
	r := writeRules(t)
	for _, tc := range []struct {
		xds  string
		want clusterv3.Cluster_DiscoveryType
	}{
		{"asyncmesh-controlplane.shop.svc:18000", clusterv3.Cluster_STRICT_DNS},
		{"10.0.0.7:18000", clusterv3.Cluster_STATIC},
	} {
		t.Run(tc.xds, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "envoy.json")
			if err := bootstrapCmd([]string{"-upstream", "127.0.0.1:8080", "-listen", "0.0.0.0:10000", "-xds", tc.xds, "-rules", r, "-out", out}); err != nil {
				t.Fatal(err)
			}
			js, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var b bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(js, &b); err != nil {
				t.Fatal(err)
			}
			for _, c := range b.GetStaticResources().GetClusters() {
				if c.GetName() == xds.XDSCluster {
					if got := c.GetType(); got != tc.want {
						t.Errorf("xDS cluster type %v, want %v", got, tc.want)
					}
					return
				}
			}
			t.Fatalf("no %s cluster in\n%s", xds.XDSCluster, js)
		})
	}
}

func TestRenderCommand(t *testing.T) {
	r := writeRules(t)
	for _, tc := range []struct {
		name  string
		args  []string
		want  []string // substrings of the output
		error string
	}{
		{"istio", []string{"--istio", "-image", "registry.example/filter:1", "-selector", "app=orders", r},
			[]string{"kind: WasmPlugin", "kind: EnvoyFilter", "url: oci://registry.example/filter:1", "failStrategy: FAIL_CLOSE"}, ""},
		{"envoy gateway", []string{"--envoy-gateway", "-image", "oci://registry.example/filter:1", "-target-name", "eg", "-fail-open", r},
			[]string{"kind: EnvoyExtensionPolicy", "url: registry.example/filter:1", "failOpen: true"}, ""},
		{"both modes", []string{"--istio", "--envoy-gateway", "-image", "x:1", r}, nil, "usage"},
		{"istio without selector", []string{"--istio", "-image", "x:1", r}, nil, "-selector: required"},
		{"bad port", []string{"--istio", "-image", "x:1", "-selector", "a=b", "-port", "70000", r}, nil, "not a port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := render(tc.args, &out)
			if tc.error != "" {
				if err == nil || !strings.Contains(err.Error(), tc.error) {
					t.Fatalf("error %v, want %q", err, tc.error)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
