//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestOrderingThroughEnvoy: through the real Envoy and filter, a rule's
// ordering header orders its requests: a key's callbacks arrive in the
// order the requests were accepted even when the first is the slowest,
// while another key's requests are not held behind them; a request
// without the header is taken unordered, and an over-long key is refused
// 400 before anything is accepted.
func TestOrderingThroughEnvoy(t *testing.T) {
	var mu sync.Mutex
	var got []string // webhook-ids in arrival order
	at := map[string]time.Time{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		id := r.Header.Get("webhook-id")
		if _, seen := at[id]; !seen {
			got = append(got, id)
			at[id] = time.Now()
		}
		mu.Unlock()
	}))
	defer rcv.Close()
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
rules:
  - name: accounts
    match: {pathPrefix: /slow}
    mode: async
    ordering: {header: x-account}
    callback: {url: "` + rcv.URL + `/hooks", allowPrivate: true}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: workDir(t), Rules: rulesYAML})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Key a: the first request is slow, the later ones fast: unordered,
	// they would be called back first. Key b and an unordered request are
	// sent between them.
	var keyA, keyB []string
	sentAt := map[string]time.Time{}
	send := func(ms int, hdrs ...string) string {
		resp, body := doAt(t, s, "POST", fmt.Sprintf("/slow?ms=%d", ms), "{}", hdrs...)
		id, _ := accepted(t, resp, body)
		sentAt[id] = time.Now()
		return id
	}
	keyA = append(keyA, send(3000, "x-account", "a"))
	for range 3 {
		keyB = append(keyB, send(10, "x-account", "b"))
	}
	unordered := send(10)
	for range 4 {
		keyA = append(keyA, send(10, "x-account", "a"))
	}
	if resp, _ := doAt(t, s, "POST", "/slow?ms=10", "{}", "x-account", strings.Repeat("k", 300)); resp.StatusCode != 400 {
		t.Fatalf("an over-long ordering key answered %d, want 400", resp.StatusCode)
	}
	all := append(append(append([]string{}, keyA...), keyB...), unordered)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == len(all) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callbacks after 30 s", n, len(all))
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	order := func(ids []string) []string {
		var out []string
		for _, id := range got {
			if slices.Contains(ids, id) {
				out = append(out, id)
			}
		}
		return out
	}
	if o := order(keyA); !slices.Equal(o, keyA) {
		t.Fatalf("key a called back in the order %v, want %v", o, keyA)
	}
	if o := order(keyB); !slices.Equal(o, keyB) {
		t.Fatalf("key b called back in the order %v, want %v", o, keyB)
	}
	// Key b and the unordered request do not wait for key a's slow first.
	for _, id := range append(keyB, unordered) {
		if !at[id].Before(at[keyA[0]]) {
			t.Errorf("request %s was called back %s after key a's slow first request (sent %s apart); history %s", id, at[id].Sub(at[keyA[0]]), sentAt[id].Sub(sentAt[keyA[0]]), history(t, s, id))
		}
	}
}

// history is a record's history as the operator API shows it.
func history(t *testing.T, s *stack.Stack, id string) string {
	resp, err := s.OperatorGet(context.Background(), "/v1/requests/"+id)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var v struct {
		History  any `json:"history"`
		Envelope struct {
			OrderKey   string `json:"orderKey"`
			OrderAfter any    `json:"orderAfter"`
		} `json:"envelope"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	b, _ := json.Marshal(v)
	return string(b)
}

func workDir(t *testing.T) string {
	if d := os.Getenv("ORDER_E2E_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}
