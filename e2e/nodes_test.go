//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// TestNodesFailover: through the real Envoy, a rule names two declared
// nodes; the first is down (nothing listens on its port), the second is
// examples/node in its own process, one json and one soap. The caller gets
// its 202; the task fails over to the example node, which gets it sealed,
// opens it, upper-cases the body and completes with a sealed, signed
// result; the caller's callback carries that result, and the request's
// history names the node that took the task.
func TestNodesFailover(t *testing.T) {
	for _, format := range []string{"json", "soap"} {
		t.Run(format, func(t *testing.T) { testNodesFailover(t, format) })
	}
}

func testNodesFailover(t *testing.T, format string) {
	rcv := newRecordingReceiver(t)
	ports, err := stack.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	down, up := ports[0], ports[1]
	aSecret, bSecret, key := webhook.NewSecret(), webhook.NewSecret(), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  a-hmac: {env: ASYNCMESH_SECRET_A_HMAC}
  b-hmac: {env: ASYNCMESH_SECRET_B_HMAC}
  b-key: {env: ASYNCMESH_SECRET_B_KEY}
nodes:
  - name: node-down
    endpoint: "http://127.0.0.1:` + fmt.Sprint(down) + `/tasks"
    allowPrivate: true
    auth: {type: hmac, secretRef: a-hmac}
  - name: node-up
    endpoint: "http://127.0.0.1:` + fmt.Sprint(up) + `/tasks"
    format: ` + format + `
    allowPrivate: true
    timeout: 1m
    auth: {type: hmac, secretRef: b-hmac}
    encryption: {type: aes-256-gcm, keyRef: b-key}
rules:
  - name: processed
    match: {pathPrefix: /slow}
    mode: async
    target: {type: external, nodes: [node-down, node-up]}
    callback: {url: "` + rcv.URL + `/cb", allowPrivate: true}
    retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
`
	root, _ := filepath.Abs("..")
	bin := os.Getenv("ASYNCMESH_BIN")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: bin,
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), Rules: rulesYAML,
		CollectorEnv: []string{"ASYNCMESH_SECRET_A_HMAC=" + aSecret, "ASYNCMESH_SECRET_B_HMAC=" + bSecret, "ASYNCMESH_SECRET_B_KEY=" + key}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nodeURL := fmt.Sprintf("http://127.0.0.1:%d", up)
	if err := s.Spawn("node", filepath.Join(bin, "node"), []string{"NODE_SECRET=" + bSecret, "NODE_KEY=" + key},
		"-listen", fmt.Sprintf("127.0.0.1:%d", up)); err != nil {
		t.Fatal(err)
	}
	waitUp(t, nodeURL+"/received")

	resp, body := doAt(t, s, "POST", "/slow?ms=1", "hello node")
	id, _ := accepted(t, resp, body)
	_, cb := rcv.wait(t, id)
	if !strings.Contains(string(cb), "HELLO NODE") || !strings.Contains(string(cb), `"completed"`) {
		t.Fatalf("callback %s: want the node's upper-cased result", cb)
	}
	var got []struct {
		ID        string `json:"id"`
		SOAP      bool   `json:"soap"`
		Sealed    bool   `json:"sealed"`
		Completed int    `json:"completed"`
	}
	r, err := http.Get(nodeURL + "/received")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != id || !got[0].Sealed || got[0].SOAP != (format == "soap") || got[0].Completed != 200 {
		t.Fatalf("the node received %+v", got)
	}
	hr, err := s.OperatorGet(context.Background(), "/v1/requests/"+id)
	if err != nil {
		t.Fatal(err)
	}
	defer hr.Body.Close()
	hist, _ := io.ReadAll(hr.Body)
	if !strings.Contains(string(hist), `"note":"node node-up http://127.0.0.1:`+fmt.Sprint(up)) {
		t.Fatalf("history does not name node-up: %s", hist)
	}
}

func waitUp(t *testing.T, url string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not up", url)
		}
	}
}
