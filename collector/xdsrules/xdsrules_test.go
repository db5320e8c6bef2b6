package xdsrules

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const rulesYAML = `
filter: {collectorCluster: c}
rules:
  - name: report
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "http://one.example/cb"}
    retry: {maxAttempts: 3}
  - name: billing-only
    nodes: {clusters: [billing]}
    mode: async
    callback: {url: "http://billing.example/cb"}
`

// controlPlane serves path on addr until the returned stop is called.
func controlPlane(t *testing.T, path, addr string) (string, func()) {
	t.Helper()
	s, err := xds.NewServer(path, xds.WasmOptions{Path: "/x.wasm"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ { // the port of a stopped server may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	watchDone := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	go func() { s.Watch(ctx, nil); close(watchDone) }()
	return ln.Addr().String(), func() { cancel(); <-done; <-watchDone }
}

func waitFor(t *testing.T, r *Rules, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s (version %q)", what, r.Version())
		}
		select {
		case <-r.Updated():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func callbackOf(r *Rules, name string) string {
	if rule, ok := r.Rule(name); ok {
		return rule.Callback.URL
	}
	return ""
}

func TestSubscribeFollowAndSurviveControlPlaneRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(rulesYAML), 0o644)
	addr, stop := controlPlane(t, path, "127.0.0.1:0")

	r := New(Config{Address: addr, NodeID: "sidecar-1", Cluster: "reports", Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()
	defer func() { cancel(); <-runDone }()

	waitFor(t, r, "first rules", func() bool { return callbackOf(r, "report") == "http://one.example/cb" })
	if _, ok := r.Rule("billing-only"); ok {
		t.Fatal("got a rule targeted at another cluster")
	}
	if rule, _ := r.Rule("report"); rule.Retry.MaxAttempts != 3 {
		t.Fatalf("retry %+v", rule.Retry)
	}

	// A change of the file reaches the collector live.
	os.WriteFile(path+".new", []byte(strings.Replace(rulesYAML, "one.example", "two.example", 1)), 0o644)
	os.Rename(path+".new", path)
	waitFor(t, r, "changed rules", func() bool { return callbackOf(r, "report") == "http://two.example/cb" })
	v := r.Version()

	// The control plane goes away: the last good rules stay.
	stop()
	time.Sleep(500 * time.Millisecond)
	if callbackOf(r, "report") != "http://two.example/cb" || r.Version() != v {
		t.Fatal("rules lost when the control plane went away")
	}
	// It comes back (with newer rules): the collector resubscribes.
	os.WriteFile(path, []byte(strings.Replace(rulesYAML, "one.example", "three.example", 1)), 0o644)
	_, stop = controlPlane(t, path, addr)
	defer stop()
	waitFor(t, r, "rules after the control plane came back", func() bool { return callbackOf(r, "report") == "http://three.example/cb" })
}
