//go:build e2e

package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestControlPlaneLiveRules runs Envoy with the filter configured over ECDS by
// the control plane, changes the rules file under a bounded load and checks
// that the change takes effect within seconds with no request failing or lost;
// then that a bad file changes nothing and is reported.
func TestControlPlaneLiveRules(t *testing.T) {
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), ControlPlane: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	original, _ := os.ReadFile(filepath.Join(root, "examples", "rules.yaml"))

	// The rules came from the control plane: /slow is async.
	resp, err := client.Post(s.EnvoyURL+"/slow?ms=10", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	accepted(t, resp, body)

	// Load on /maybe (opt-in: served synchronously) while maybe-async becomes async.
	changed := strings.Replace(string(original), "mode: opt-in", "mode: async", 1)
	var written time.Time
	l := loadDuring(t, s, "/maybe?ms=20", 8*time.Second, func() {
		time.Sleep(time.Second)
		written = time.Now()
		if err := s.WriteRules(changed); err != nil {
			t.Error(err)
		}
	})
	ids := l.ids
	t.Logf("responses during the switch: %v; the new rule took effect %v after the write", l.codes, l.firstAccepted.Sub(written).Round(time.Millisecond))
	if len(l.codes) != 2 || l.codes[200] == 0 || l.codes[202] == 0 {
		t.Fatalf("want only 200 (before) and 202 (after), got %v", l.codes)
	}
	if d := l.firstAccepted.Sub(written); d > 5*time.Second {
		t.Fatalf("the new rule took %v", d)
	}
	if lost, _ := countCallbacks(t, s, ids, 60*time.Second); lost > 0 {
		t.Fatalf("%d of %d accepted requests never called back", lost, len(ids))
	}

	// The collector follows the rules too: a request in flight is called back
	// at the callback URL its rule has when it completes, not at intake.
	resp, err = client.Post(s.EnvoyURL+"/slow?ms=1500", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	inflight, _ := accepted(t, resp, body)
	changed = strings.Replace(changed, `${RECEIVER_URL}/callbacks", protocol: http`, `${RECEIVER_URL}/callbacks?rules=v3", protocol: http`, 1)
	if !strings.Contains(changed, "rules=v3") {
		t.Fatal("test rules file changed shape")
	}
	if err := s.WriteRules(changed); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for uri := ""; uri != "/callbacks?rules=v3"; {
		for _, r := range receivedAt(t, s) {
			if r.WebhookID == inflight {
				uri = r.URI
			}
		}
		if uri != "" && uri != "/callbacks?rules=v3" {
			t.Fatalf("in-flight request called back at %s, not at its rule's new URL", uri)
		}
		if time.Now().After(deadline) {
			t.Fatal("no callback for the in-flight request")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A bad file changes nothing and is reported.
	if err := s.WriteRules(strings.Replace(changed, "onCollectorDown: passthrough", "onCollectorDown: sometimes", 1)); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		m := metrics(t, s)
		if strings.Contains(m, `asyncmesh_controlplane_reloads_total{result="refused"} 1`) && strings.Contains(m, `sidecar-1#collector`) && strings.Contains(m, "asyncmesh_controlplane_rules_file_ok 0") {
			t.Logf("metrics after the bad file:\n%s", m)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bad file not reported:\n%s", m)
		}
		time.Sleep(200 * time.Millisecond)
	}
	resp, err = client.Post(s.EnvoyURL+"/maybe?ms=10", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	accepted(t, resp, body) // still the last good rules
	if log, _ := os.ReadFile(s.LogPath("controlplane")); !strings.Contains(string(log), "rules[2].onCollectorDown") {
		t.Fatalf("the control plane's log does not say why the file was refused")
	}
}

func metrics(t *testing.T, s *stack.Stack) string {
	resp, err := client.Get(s.ControlPlaneMetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestControlPlaneServesSidecar runs Envoy with everything from the control
// plane (envoy-ads.yaml): listener, routes with annotations, clusters and the
// filter's rules. Editing a route's annotation changes the behaviour live.
func TestControlPlaneServesSidecar(t *testing.T) {
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), ControlPlane: true, ServeSidecar: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	post := func(path string) (*http.Response, []byte) {
		resp, err := client.Post(s.EnvoyURL+path, "application/json", strings.NewReader(`{"served":1}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, body
	}
	resp, body := post("/annotated?ms=10") // with a body: held by the filter itself, no buffer filter
	id, _ := accepted(t, resp, body)
	if resp.Header.Get("x-async-rule") != "slow-report" {
		t.Fatalf("annotated route: rule %q", resp.Header.Get("x-async-rule"))
	}
	if resp, body := post("/slow/inline?ms=10"); resp.StatusCode != 200 {
		t.Fatalf("route annotated sync: %s %s", resp.Status, body)
	}
	if lost, _ := countCallbacks(t, s, []string{id}, 30*time.Second); lost > 0 {
		t.Fatal("no callback through the served sidecar")
	}
	serviceSawOnlyReplay(t, s, resp.Header.Get("x-async-trace-id"), id)
	// The Location is served by the status route the control plane adds.
	if resp, err := client.Get(s.EnvoyURL + resp.Header.Get("location")); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status route: %v %v", resp, err)
	}

	raw, _ := os.ReadFile(filepath.Join(root, "examples", "rules.yaml"))
	edited := strings.Replace(string(raw), "annotations: {rule: slow-report, mode: sync}", "annotations: {rule: slow-report, mode: async}", 1)
	if edited == string(raw) {
		t.Fatal("test rules file changed shape")
	}
	written := time.Now()
	if err := s.WriteRules(edited); err != nil {
		t.Fatal(err)
	}
	for {
		resp, body := post("/slow/inline?ms=10")
		if resp.StatusCode == 202 {
			t.Logf("route annotation change took effect after %v", time.Since(written).Round(time.Millisecond))
			break
		}
		if resp.StatusCode != 200 || time.Since(written) > 10*time.Second {
			t.Fatalf("after the annotation change: %s %s", resp.Status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
