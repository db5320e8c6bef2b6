package xds

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func metricsText(s *Server) string {
	rec := httptest.NewRecorder()
	s.Metrics(rec, nil)
	return rec.Body.String()
}

func eventually(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNodesForgottenAfterLastStream: a node is kept while any stream asks
// as it and through the grace period after the last one closed, then its
// snapshot and metrics go; if it comes back it is served anew.
func TestNodesForgottenAfterLastStream(t *testing.T) {
	const grace = 300 * time.Millisecond
	s, addr, _ := newTestServer(t, func(s *Server) error { s.NodeGrace = grace; return nil })
	conn := dial(t, addr, nil)
	known := func(key string) bool { _, ok := s.NodeVersions()[key]; return ok }

	first, second := openADS(t, conn, node("a", "reports", false)), openADS(t, conn, node("a", "reports", false))
	for _, st := range []*adsStream{first, second} {
		if _, err := st.recv(t); err != nil {
			t.Fatal(err)
		}
	}
	first.cancel()
	time.Sleep(3 * grace)
	if !known("a") {
		t.Fatal("node forgotten while a stream still asks as it")
	}

	second.cancel()
	closed := time.Now()
	eventually(t, "forgetting node a", 5*time.Second, func() bool { return !known("a") })
	if d := time.Since(closed); d < grace {
		t.Fatalf("forgotten after %v, before the grace period %v", d, grace)
	}
	if _, err := s.cache.GetSnapshot("a"); err == nil {
		t.Fatal("the snapshot of a forgotten node is still cached")
	}
	if m := metricsText(s); strings.Contains(m, `node="a"`) {
		t.Fatalf("metrics still show the forgotten node:\n%s", m)
	}

	// It comes back: served again.
	if resp, err := ask(t, conn, node("a", "reports", false)); err != nil || len(resp.Resources) != 1 {
		t.Fatalf("node back after being forgotten: %v %v", resp, err)
	}
}

// TestMaxNodes: past MaxNodes the node idle the longest makes room; with
// every node connected, a new one is refused.
func TestMaxNodes(t *testing.T) {
	s, addr, _ := newTestServer(t, func(s *Server) error { s.MaxNodes = 2; return nil })
	conn := dial(t, addr, nil)
	a, b := openADS(t, conn, node("a", "reports", false)), openADS(t, conn, node("b", "reports", false))
	for _, st := range []*adsStream{a, b} {
		if _, err := st.recv(t); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ask(t, conn, node("c", "reports", false)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third node with two connected: %v, want ResourceExhausted", err)
	}
	a.cancel()
	eventually(t, "node a idle", 5*time.Second, func() bool {
		return strings.Contains(metricsText(s), `asyncmesh_controlplane_nodes{state="idle"} 1`)
	})
	if _, err := ask(t, conn, node("c", "reports", false)); err != nil {
		t.Fatalf("third node with one idle: %v", err)
	}
	v := s.NodeVersions()
	if _, ok := v["a"]; ok || len(v) != 2 {
		t.Fatalf("nodes %v: want b and c, a forgotten to make room", v)
	}
}
