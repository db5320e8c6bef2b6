//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// TestTypeScriptSDK: the TypeScript SDK (sdk/typescript, built: make
// sdk-ts-build) through the real Envoy and collector, in a Node process of
// its own (sdk/typescript/e2e/run.mjs): three async requests whose handlers
// each run once with the service's response, a wait(id) long-poll, and a
// Prefer: wait request answered synchronously whose later callback the SDK
// acknowledges without running the handler.
func TestTypeScriptSDK(t *testing.T) {
	runTypeScriptSDK(t, st, st.WebhookSecret, "")
}

// TestTypeScriptSDKSealedAndRotated: the same on a stack of its own whose
// rule seals callbacks with JWE and signs them with two secrets (a rotation:
// the secret holds the new and the old one); the SDK has the old secret
// only, and the key.
func TestTypeScriptSDKSealedAndRotated(t *testing.T) {
	newSecret, oldSecret, key := webhook.NewSecret(), webhook.NewSecret(), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  rotated: {env: ASYNCMESH_SECRET_ROTATED}
  seal-key: {env: ASYNCMESH_SECRET_SEAL_KEY}
rules:
  - name: sealed
    match: {pathPrefix: /slow}
    mode: async
    timeout: 20s
    callback: {allowOverride: true, allowedHosts: ["127.0.0.1"], allowNetworks: [127.0.0.0/8], secretRef: rotated, encryption: {type: jwe, keyRef: seal-key}}
    retry: {maxAttempts: 5, initialBackoff: 200ms, maxBackoff: 2s}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), Rules: rulesYAML,
		CollectorEnv: []string{"ASYNCMESH_SECRET_ROTATED=" + newSecret + "\n" + oldSecret, "ASYNCMESH_SECRET_SEAL_KEY=" + key}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	runTypeScriptSDK(t, s, oldSecret, key)
}

// runTypeScriptSDK runs sdk/typescript/e2e/run.mjs against stack s with the
// SDK's secret and key, and checks what it printed and the records.
func runTypeScriptSDK(t *testing.T, s *stack.Stack, secret, key string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node (20 or later) is needed for the TypeScript SDK's e2e test")
	}
	root, _ := filepath.Abs("..")
	dir := filepath.Join(root, "sdk", "typescript")
	if _, err := os.Stat(filepath.Join(dir, "dist", "index.js")); err != nil {
		t.Fatal("the TypeScript SDK is not built: make sdk-ts-build (make e2e does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "e2e", "run.mjs"))
	cmd.Env = append(os.Environ(), "ASYNCMESH_BASE_URL="+s.EnvoyURL, "ASYNCMESH_SECRET="+secret, "ASYNCMESH_KEY="+key, "ASYNCMESH_REQUESTS=3")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node run.mjs: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr.String())
	}
	t.Logf("run.mjs:\n%s", stdout)
	type event struct {
		Event, ID, TraceID, Status, Body, Record string
		ResponseStatus                           int
		Token, StatusURL, Sync                   bool
		HandlerRuns                              json.RawMessage
	}
	var calls, callbacks []event
	var wait, syncEv, done *event
	lines := bufio.NewScanner(bytes.NewReader(stdout))
	for lines.Scan() {
		var e event
		if err := json.Unmarshal(lines.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", lines.Text(), err)
		}
		switch e.Event {
		case "call":
			calls = append(calls, e)
		case "callback":
			callbacks = append(callbacks, e)
		case "wait":
			wait = &e
		case "sync":
			syncEv = &e
		case "done":
			done = &e
		}
	}
	if len(calls) != 3 || len(callbacks) != 3 || wait == nil || syncEv == nil || done == nil {
		t.Fatalf("output:\n%s\nstderr:\n%s", stdout, stderr.String())
	}
	traceOf := map[string]string{}
	for _, c := range calls {
		if c.ID == "" || c.TraceID == "" || !c.Token || !c.StatusURL || c.Sync {
			t.Fatalf("call %+v", c)
		}
		traceOf[c.ID] = c.TraceID
	}
	for _, cb := range callbacks {
		if tr, ok := traceOf[cb.ID]; !ok || cb.TraceID != tr || cb.Status != "completed" || cb.ResponseStatus != 200 ||
			!strings.Contains(cb.Body, `"report":"done"`) || !strings.Contains(cb.Body, `\"sdk\":\"ts\"`) || !strings.Contains(cb.Body, cb.ID) {
			t.Fatalf("callback %+v (calls %v)", cb, traceOf)
		}
		delete(traceOf, cb.ID) // each request's handler once
	}
	var runs map[string]int
	if err := json.Unmarshal(done.HandlerRuns, &runs); err != nil || len(runs) != 3 {
		t.Fatalf("handler runs %s", done.HandlerRuns)
	}
	for id, n := range runs {
		if n != 1 {
			t.Fatalf("handler of %s ran %d times", id, n)
		}
	}
	// The request's trace id (the read through Envoy has a trace of its own).
	if wait.ID != calls[0].ID || wait.TraceID != calls[0].TraceID || wait.Status != "completed" || wait.ResponseStatus != 200 || !strings.Contains(wait.Body, `\"i\":0`) {
		t.Fatalf("wait %+v", wait)
	}
	if syncEv.ID == "" || syncEv.ResponseStatus != 200 || !strings.Contains(syncEv.Body, "quick") || !syncEv.Token ||
		syncEv.Record != "delivered" || string(syncEv.HandlerRuns) != "0" {
		t.Fatalf("Prefer: wait %+v", syncEv)
	}
	// The collector delivered each callback to the SDK's own receiver (the
	// caller's x-async-callback), not to the rule's.
	for _, c := range calls {
		resp, err := s.OperatorGet(ctx, "/v1/requests/"+c.ID)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Status  string
			Request struct{ Callback string }
		}
		err = json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		if err != nil || rec.Status != "delivered" || !strings.HasPrefix(rec.Request.Callback, "http://127.0.0.1:") || strings.HasPrefix(rec.Request.Callback, s.ReceiverURL) {
			t.Fatalf("record of %s: %+v, %v", c.ID, rec, err)
		}
	}
}
