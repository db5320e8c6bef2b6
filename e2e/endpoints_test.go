//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestEndpointHeldUntilEnabled: through the real Envoy, a receiver that
// answers 410 Gone disables its endpoint at once; the request is held, and
// so is the next one, without an attempt; the operator sees the endpoint
// disabled, enables it, and both are delivered, once each, oldest first.
func TestEndpointHeldUntilEnabled(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusGone)
	var hits atomic.Int32
	var mu sync.Mutex
	var delivered []string
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		st := int(status.Load())
		if st == 200 {
			mu.Lock()
			delivered = append(delivered, r.Header.Get("webhook-id"))
			mu.Unlock()
		}
		w.WriteHeader(st)
	}))
	defer rcv.Close()
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
rules:
  - name: hooks
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "` + rcv.URL + `/hooks", allowPrivate: true}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), Rules: rulesYAML})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitStatus := func(id, want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			if rec := operatorRecord(t, s, id); rec.Status == want {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("request %s is %s, want %s", id, rec.Status, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	resp, body := doAt(t, s, "POST", "/slow?ms=1", "{}")
	first, _ := accepted(t, resp, body)
	waitStatus(first, "held")
	resp, body = doAt(t, s, "POST", "/slow?ms=1", "{}")
	second, _ := accepted(t, resp, body)
	waitStatus(second, "held")
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d attempts at a gone endpoint, want 1", n)
	}

	var list struct {
		Endpoints []struct {
			ID, URL, Reason string
			Disabled        bool
			Held            int
		}
	}
	r, err := s.OperatorGet(context.Background(), "/v1/endpoints?disabled=true")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(r.Body).Decode(&list)
	r.Body.Close()
	if len(list.Endpoints) != 1 || list.Endpoints[0].URL != rcv.URL+"/hooks" || !list.Endpoints[0].Disabled || list.Endpoints[0].Held != 2 {
		t.Fatalf("disabled endpoints %+v", list)
	}
	// The operator's CLI shows the same.
	if code, out := cli(t, s, "endpoints", "--disabled"); code != 0 || !strings.Contains(out, "disabled, 2 held") {
		t.Fatalf("asyncmesh endpoints --disabled: %d\n%s", code, out)
	}
	status.Store(200)
	r, err = s.Operator(context.Background(), "POST", "/v1/endpoints/"+list.Endpoints[0].ID+"/enable")
	if err != nil {
		t.Fatal(err)
	}
	var enabled struct{ Resumed int }
	json.NewDecoder(r.Body).Decode(&enabled)
	r.Body.Close()
	if r.StatusCode != 200 || enabled.Resumed != 2 {
		t.Fatalf("enable: %d, resumed %d", r.StatusCode, enabled.Resumed)
	}
	waitStatus(first, "delivered")
	waitStatus(second, "delivered")
	mu.Lock()
	defer mu.Unlock()
	if len(delivered) != 2 {
		t.Fatalf("delivered %v, want each once", delivered)
	}
}
