package xds

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/asyncmesh/asyncmesh/collector/xdsrules"
	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const good = `
filter: {collectorCluster: asyncmesh_collector, replaySecretEnv: REPLAY}
rules:
  - name: everywhere
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "http://cb.example/x"}
  - name: billing
    nodes: {clusters: [billing]}
    match: {pathPrefix: /invoices}
    mode: opt-in
    callback: {url: "http://cb.example/y"}
`

var wasmOpts = WasmOptions{Path: "/opt/asyncmesh.wasm"}

// pluginConfig returns the filter configuration carried by a snapshot, as the
// filter will parse it.
func pluginConfig(t *testing.T, ext *core.TypedExtensionConfig) *rules.Config {
	t.Helper()
	w, err := xdsrules.WasmOf(ext.TypedConfig)
	if err != nil {
		t.Fatal(err)
	}
	var s wrapperspb.StringValue
	if err := w.Config.Configuration.UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.Parse([]byte(s.Value))
	if err != nil {
		t.Fatalf("the filter would refuse its configuration: %v", err)
	}
	if got := w.Config.GetVmConfig().GetCode().GetLocal().GetFilename(); got != wasmOpts.Path {
		t.Fatalf("code path %q", got)
	}
	if keys := w.Config.GetVmConfig().GetEnvironmentVariables().GetHostEnvKeys(); len(keys) != 1 || keys[0] != "REPLAY" {
		t.Fatalf("host env keys %v", keys)
	}
	return cfg
}

func snapshotRules(t *testing.T, f *rulesfile.File, id, cluster string) (string, []string) {
	t.Helper()
	snap, err := Snapshot(f, id, cluster, wasmOpts, true)
	if err != nil {
		t.Fatal(err)
	}
	res := snap.GetResources(resourceType)
	ext, ok := res[FilterName].(*core.TypedExtensionConfig)
	if !ok {
		t.Fatalf("snapshot resources %v", res)
	}
	var names []string
	for _, r := range pluginConfig(t, ext).Rules {
		names = append(names, r.Name)
	}
	return snap.GetVersion(resourceType), names
}

func TestSnapshotPerNodeAndContentVersion(t *testing.T) {
	f, err := rulesfile.Parse("rules.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	v1, names := snapshotRules(t, f, "a", "reports")
	if strings.Join(names, ",") != "everywhere" {
		t.Fatalf("reports node rules %v", names)
	}
	v2, names := snapshotRules(t, f, "b", "billing")
	if strings.Join(names, ",") != "everywhere,billing" || v2 == v1 {
		t.Fatalf("billing node rules %v, version %s vs %s", names, v2, v1)
	}
	again, _ := snapshotRules(t, f, "c", "reports")
	if again != v1 {
		t.Fatalf("same content, versions %s and %s", again, v1)
	}
	f2, _ := rulesfile.Parse("rules.yaml", []byte(strings.Replace(good, "/slow", "/slower", 1)))
	if v, _ := snapshotRules(t, f2, "a", "reports"); v == v1 {
		t.Fatal("changed rules kept the version")
	}
}

func request(id, cluster, version string, nack bool) *discovery.DiscoveryRequest {
	r := &discovery.DiscoveryRequest{Node: &core.Node{Id: id, Cluster: cluster}, TypeUrl: resourceType, VersionInfo: version}
	if nack {
		r.ErrorDetail = &status.Status{Code: 3, Message: "bad wasm"}
	}
	return r
}

func TestReloadKeepsLastGoodAndCountsNacks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	os.WriteFile(path, []byte(good), 0o644)
	s, err := NewServer(path, wasmOpts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.onRequest(1, request("a", "reports", "", false)); err != nil {
		t.Fatal(err)
	}
	served := s.NodeVersions()["a"][0]
	if served == "" {
		t.Fatal("no snapshot for a new node")
	}
	s.onRequest(1, request("a", "reports", served, false))
	s.onRequest(1, request("a", "reports", served, true))

	os.WriteFile(path, []byte(good+"  - name: everywhere\n    mode: sync\n"), 0o644)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "duplicate rule name") {
		t.Fatalf("bad reload = %v", err)
	}
	if got := s.NodeVersions()["a"]; got[0] != served || got[1] != served {
		t.Fatalf("after a bad file: served/acked %v, want %s", got, served)
	}
	rec := httptest.NewRecorder()
	s.Metrics(rec, nil)
	for _, want := range []string{`reloads_total{result="refused"} 1`, "rules_file_ok 0", `nacks_total{node="a"} 1`, `acked="` + served + `"`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, rec.Body)
		}
	}

	rec = httptest.NewRecorder()
	s.ServeStatus(rec, nil)
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("GET /v1/nodes: %v: %s", err, rec.Body)
	}
	want := NodeStatus{Node: "a", Cluster: "reports", Served: served, Acked: served, Nacks: 1, LastNack: "bad wasm", Connected: true}
	if st.RulesFileOK || !strings.Contains(st.RulesError, "duplicate rule name") || len(st.Nodes) != 1 || st.Nodes[0] != want {
		t.Fatalf("GET /v1/nodes = %+v, want rules refused and %+v", st, want)
	}

	// The watcher follows a rename (as editors and config maps write).
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, nil) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond)
	os.WriteFile(path+".new", []byte(strings.Replace(good, "/slow", "/slower", 1)), 0o644)
	os.Rename(path+".new", path)
	deadline := time.Now().Add(5 * time.Second)
	for s.NodeVersions()["a"][0] == served {
		if time.Now().After(deadline) {
			t.Fatal("the rename was not followed by a new snapshot")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSnapshotWithSidecarIsConsistent(t *testing.T) {
	withAnnotations := strings.Replace(good, "replaySecretEnv: REPLAY}", "replaySecretEnv: REPLAY, routeAnnotations: true}", 1)
	f, err := rulesfile.Parse("rules.yaml", []byte(withAnnotations+`
sidecar:
  listen: "127.0.0.1:10000"
  clusters:
    - {name: service, address: "127.0.0.1:8080"}
    - {name: asyncmesh_collector, address: "127.0.0.1:9901"}
  routes:
    - {name: r, prefix: /r, cluster: service, annotations: {rule: everywhere, mode: sync}}
    - {name: all, prefix: /, cluster: service}
`))
	if err != nil {
		t.Fatal(err)
	}
	envoy, err := Snapshot(f, "a", "reports", wasmOpts, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "type.googleapis.com/envoy.config.cluster.v3.Cluster"} {
		if len(envoy.GetResources(typ)) == 0 {
			t.Errorf("no %s in the sidecar's snapshot", typ)
		}
	}
	collector, err := Snapshot(f, "a", "reports", wasmOpts, false)
	if err != nil || len(collector.GetResources("type.googleapis.com/envoy.config.listener.v3.Listener")) != 0 {
		t.Fatalf("a collector's snapshot carries the sidecar (%v)", err)
	}
}
