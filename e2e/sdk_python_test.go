//go:build e2e

package e2e

import (
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

// sdkPython is the interpreter with the Python SDK installed:
// ASYNCMESH_SDK_PYTHON, or the venv scripts/sdk-python.sh makes (make e2e
// runs it first).
func sdkPython(t *testing.T) string {
	t.Helper()
	py := os.Getenv("ASYNCMESH_SDK_PYTHON")
	if py == "" {
		root, _ := filepath.Abs("..")
		py = filepath.Join(root, ".tools", "sdk-python", "bin", "python")
	}
	if _, err := os.Stat(py); err != nil {
		t.Fatalf("the Python SDK's interpreter %s: %v (scripts/sdk-python.sh env installs it)", py, err)
	}
	return py
}

// pyRoundtrip is sdk/python/examples/roundtrip.py's summary.
type pyRoundtrip struct {
	Sync struct {
		Calls      []pyCall   `json:"calls"`
		Results    []pyResult `json:"results"`
		Waited     pyResult   `json:"waited"`
		PreferWait *struct {
			ID       string `json:"id"`
			Status   int    `json:"status"`
			Body     string `json:"body"`
			HasToken bool   `json:"hasToken"`
		} `json:"preferWait"`
		Pending int `json:"pending"`
	} `json:"sync"`
	Asyncio struct {
		Calls   []pyCall   `json:"calls"`
		Results []pyResult `json:"results"`
	} `json:"asyncio"`
}

type pyCall struct {
	ID, TraceID, StatusURL string
	HasToken               bool
}

type pyResult struct {
	ID, TraceID, Status, Body, Error string
	ResponseStatus, Runs             int
}

// runRoundtrip runs the Python SDK's round trip against s and checks what
// it reports: every request's handler ran once with its own response, the
// callbacks verified (the SDK refuses any other), wait() read a result.
func runRoundtrip(t *testing.T, s *stack.Stack, args ...string) pyRoundtrip {
	t.Helper()
	root, _ := filepath.Abs("..")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sdkPython(t), append([]string{filepath.Join(root, "sdk/python/examples/roundtrip.py"), "--base-url", s.EnvoyURL}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("roundtrip.py: %v\nstderr:\n%s", err, stderr.String())
	}
	var out pyRoundtrip
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("roundtrip.py printed %q: %v\nstderr:\n%s", stdout.String(), err, stderr.String())
	}
	check := func(name, marker string, calls []pyCall, results []pyResult) {
		if len(calls) == 0 || len(results) != len(calls) {
			t.Fatalf("%s: %d calls, %d results", name, len(calls), len(results))
		}
		byID := map[string]pyCall{}
		for _, c := range calls {
			if c.ID == "" || !c.HasToken || !strings.Contains(c.StatusURL, "/async/v1/requests/"+c.ID+"?token=") {
				t.Fatalf("%s: call %+v", name, c)
			}
			byID[c.ID] = c
		}
		for _, r := range results {
			c, ok := byID[r.ID]
			if !ok || r.Runs != 1 || r.Status != "completed" || r.ResponseStatus != 200 || r.TraceID != c.TraceID || !strings.Contains(r.Body, marker) {
				t.Fatalf("%s: result %+v (call %+v)", name, r, c)
			}
		}
	}
	check("sync Client", "sdk=python-sync", out.Sync.Calls, out.Sync.Results)
	check("AsyncClient", "sdk=python-asyncio", out.Asyncio.Calls, out.Asyncio.Results)
	if w := out.Sync.Waited; w.ID != out.Sync.Calls[0].ID || w.TraceID != out.Sync.Calls[0].TraceID || w.Status != "completed" || !strings.Contains(w.Body, "sdk=python-sync") {
		t.Fatalf("wait(): %+v", w)
	}
	if out.Sync.Pending != 0 {
		t.Fatalf("%d handlers still pending", out.Sync.Pending)
	}
	return out
}

// TestPythonSDK: the Python SDK (sdk/python) through the real Envoy and
// collector: async requests with the sync and the asyncio client, their
// signed callbacks, wait() by long-poll, and Prefer: wait's synchronous
// answer.
func TestPythonSDK(t *testing.T) {
	out := runRoundtrip(t, st, "--secret", st.WebhookSecret, "--requests", "4", "--prefer-wait")
	pw := out.Sync.PreferWait
	if pw == nil || pw.ID == "" || pw.Status != 200 || !pw.HasToken || !strings.Contains(pw.Body, "prefer-wait") {
		t.Fatalf("Prefer: wait: %+v", pw)
	}
}

// TestPythonSDKSealedRotation: a rule whose callbacks are sealed (JWE) and
// signed with two secrets during a rotation; the Python client knows only
// the old secret and the key.
func TestPythonSDKSealedRotation(t *testing.T) {
	const key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	oldSecret, newSecret := webhook.NewSecret(), webhook.NewSecret()
	rules := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  sig: {env: ASYNCMESH_SECRET_SIG}
  key: {env: ASYNCMESH_SECRET_KEY}
rules:
  - name: sealed
    match: {pathPrefix: /slow}
    mode: async
    callback: {url: "${RECEIVER_URL}/callbacks", secretRef: sig, encryption: {type: jwe, keyRef: key}, allowOverride: true, allowedHosts: ["127.0.0.1"], allowNetworks: [127.0.0.0/8]}
    retry: {maxAttempts: 5, initialBackoff: 200ms, maxBackoff: 2s}
`
	root, _ := filepath.Abs("..")
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: os.Getenv("ASYNCMESH_BIN"),
		EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir(), Rules: rules,
		CollectorEnv: []string{"ASYNCMESH_SECRET_SIG=" + newSecret + " " + oldSecret, "ASYNCMESH_SECRET_KEY=" + key}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	runRoundtrip(t, s, "--secret", oldSecret, "--key", key, "--requests", "2")
}
