package collector

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// failingNode is a declared node that answers every task 500 (after
// reading it: it may have seen the task), signing with a secret of its own.
type failingNode struct {
	srv  *httptest.Server
	hits atomic.Int32
	node rules.Node
}

func newFailingNode(t *testing.T, e *env) *failingNode {
	f := &failingNode{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		http.Error(w, "overloaded", http.StatusInternalServerError)
	}))
	t.Cleanup(f.srv.Close)
	e.secrets["node-a-hmac"] = webhook.NewSecret()
	f.node = rules.Node{Name: "a", Endpoint: f.srv.URL + "/tasks", Format: rules.NodeJSON, AllowPrivate: true,
		Timeout: rules.Duration(time.Minute), Auth: &rules.NodeAuth{Type: rules.AuthHMAC, SecretRef: "node-a-hmac"}}
	return f
}

// declared is n's target as a declared node named b.
func (n *node) declared() rules.Node {
	t := n.target
	return rules.Node{Name: "b", Endpoint: t.Endpoint, Format: rules.NodeJSON, Auth: t.Auth, Encryption: t.Encryption,
		CompletionSecretRef: t.CompletionSecretRef, Timeout: t.Timeout, AllowPrivate: true}
}

func namedTarget(nodes ...rules.Node) *rules.Target {
	t := &rules.Target{Type: rules.TargetExternal, Resolved: nodes}
	for _, n := range nodes {
		t.Nodes = append(t.Nodes, n.Name)
	}
	return t
}

// TestNodeFailoverAndCompletionBinding: the first node answers 500, the
// task fails over to the second, whose hand-off the history names. The
// first node — which saw the task — then tries to complete it, signed with
// its own secret, as an attacker would: 401, and the record is untouched.
// The second node's sealed completion is the caller's callback.
func TestNodeFailoverAndCompletionBinding(t *testing.T) {
	e := nodeEnv(t)
	a := newFailingNode(t, e)
	b := newNode(t, rules.AuthHMAC, rules.EncryptAESGCM)
	b.silent = true
	en := e.envelope("/ledger", []byte("entry"))
	en.Target = namedTarget(a.node, b.declared())
	e.intake(en)
	task := <-b.tasks
	if a.hits.Load() != 1 {
		t.Fatalf("node a tried %d times, want 1", a.hits.Load())
	}
	// Wait for the hand-off to be written.
	_, rec := e.get("/v1/requests/" + en.ID)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(historyNotes(rec), "node b "); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no hand-off to node b in %v", rec["history"])
		}
		_, rec = e.get("/v1/requests/" + en.ID)
	}
	// The attacker: node a, signing with its own secret.
	forged := []byte(`{"status":200,"body":"forged"}`)
	req, _ := http.NewRequest("POST", task.CompleteURL, bytes.NewReader(forged))
	aSec, _ := webhook.ParseSecret(e.secrets["node-a-hmac"])
	webhook.Sign(req.Header, []webhook.Secret{aSec}, task.ID, time.Now(), forged)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("completion signed by node a after the hand-off to b: %d, want 401", resp.StatusCode)
	}
	if _, rec = e.get("/v1/requests/" + en.ID); rec["status"] != "processing" {
		t.Fatalf("record after the refused completion: %v", rec["status"])
	}
	if resp := b.complete(task, `{"status":200,"body":"from b"}`); resp == nil || resp.StatusCode != 200 {
		t.Fatalf("node b's completion: %+v", resp)
	}
	rec = e.waitStatus(en.ID, "delivered")
	if p := string(e.payloadOf(en.ID)); !strings.Contains(p, "from b") || strings.Contains(p, "forged") {
		t.Fatalf("callback %s", p)
	}
}

// TestNodeDisabledSkipped: node health is endpoint health. Past the
// threshold node a is disabled (listed by /v1/endpoints), and the next task
// goes to node b without an attempt at a. A rule whose nodes are all
// disabled keeps its request processing, neither failed nor sent.
func TestNodeDisabledSkipped(t *testing.T) {
	e := nodeEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.EndpointDisableAfter, c.EndpointFailingFor = 1, -1 }
	e.start()
	a := newFailingNode(t, e)
	b := newNode(t, rules.AuthHMAC, "")
	first := e.envelope("/ledger", []byte("1"))
	first.Target = namedTarget(a.node, b.declared())
	e.intake(first)
	e.waitStatus(first.ID, "delivered")
	id, _, _ := nodeEndpoint("a", a.node.Endpoint)
	code, ep := e.get("/v1/endpoints/" + id)
	if code != 200 || ep["disabled"] != true || ep["caller"] != "node:a" {
		t.Fatalf("node a's endpoint: %d %v", code, ep)
	}
	second := e.envelope("/ledger", []byte("2"))
	second.Target = namedTarget(a.node, b.declared())
	e.intake(second)
	e.waitStatus(second.ID, "delivered")
	if n := a.hits.Load(); n != 1 {
		t.Fatalf("node a was tried %d times, want 1 (disabled after the first)", n)
	}
	only := e.envelope("/ledger", []byte("3"))
	only.Target = namedTarget(a.node)
	e.intake(only)
	time.Sleep(time.Second)
	if _, rec := e.get("/v1/requests/" + only.ID); rec["status"] != "processing" || rec["error"] != nil {
		t.Fatalf("request whose nodes are all disabled: %v (error %v)", rec["status"], rec["error"])
	}
	if n := a.hits.Load(); n != 1 {
		t.Fatalf("disabled node a was tried: %d", n)
	}
}

// TestNodeCompletionBeforeHandOff: on a rule of several nodes, a completion
// that comes before the hand-off is written is answered 503 Retry-After
// (which node took the task is not known yet) when it is authenticated as
// one of the rule's nodes, 401 otherwise.
func TestNodeCompletionBeforeHandOff(t *testing.T) {
	e := nodeEnv(t)
	a := newFailingNode(t, e)
	b := newNode(t, rules.AuthHMAC, "")
	en := e.envelope("/ledger", nil)
	en.Target = namedTarget(a.node, b.declared())
	r := walk(t, e.c.store, en, store.Processing, time.Minute).ID // claimed, not handed off
	task := external.Task{ID: r, CompleteURL: e.api.URL + "/v1/requests/" + r + "/complete"}
	if resp := b.complete(task, `{"status":200}`); resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("completion before the hand-off: %+v, want 503", resp)
	}
	req, _ := http.NewRequest("POST", task.CompleteURL, strings.NewReader(`{"status":200}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unsigned completion before the hand-off: %d, want 401", resp.StatusCode)
	}
}

// TestNodesAllRefuse: when every node refuses the task for good (a 4xx,
// or an address the guard refuses), the request fails with each node's
// reason, at once.
func TestNodesAllRefuse(t *testing.T) {
	e := nodeEnv(t)
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such tenant", http.StatusNotFound)
	}))
	defer refusing.Close()
	a := rules.Node{Name: "a", Endpoint: refusing.URL, Format: rules.NodeJSON, AllowPrivate: true, Timeout: rules.Duration(time.Minute),
		Auth: &rules.NodeAuth{Type: rules.AuthHMAC, SecretRef: "node-hmac"}}
	guarded := a
	guarded.Name, guarded.AllowPrivate = "guarded", false // 127.0.0.1: refused by the guard
	en := e.envelope("/ledger", nil)
	en.Target = namedTarget(a, guarded)
	e.intake(en)
	rec := e.waitStatus(en.ID, "delivered")
	msg, _ := rec["error"].(string)
	if !strings.Contains(msg, "node a: node refused the task with 404") || !strings.Contains(msg, "node guarded: ") {
		t.Fatalf("error %q", msg)
	}
}

// TestNodesDisabledWaitsSpendNoRetries: while a rule's only node is
// disabled, the request's work message comes back (every
// nodesDisabledRetry) as a queue.Wait, many more times than replayAttempts.
// Once an operator enables the node and it fails again, the dispatch still
// has its retries: the request waits again, it is not failed.
func TestNodesDisabledWaitsSpendNoRetries(t *testing.T) {
	was := nodesDisabledRetry
	nodesDisabledRetry = 20 * time.Millisecond
	t.Cleanup(func() { nodesDisabledRetry = was })
	e := nodeEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.EndpointDisableAfter, c.EndpointFailingFor = 1, -1 }
	e.start()
	a := newFailingNode(t, e)
	en := e.envelope("/ledger", []byte("1"))
	en.Target = namedTarget(a.node)
	e.intake(en)
	waitHits := func(n int32) {
		for deadline := time.Now().Add(10 * time.Second); a.hits.Load() < n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("node a tried %d times, want %d", a.hits.Load(), n)
			}
		}
	}
	stillWaiting := func(when string) {
		// Long enough for many more waits than replayAttempts.
		time.Sleep(time.Duration(4*replayAttempts) * nodesDisabledRetry * 5)
		if _, rec := e.get("/v1/requests/" + en.ID); rec["status"] != "processing" || rec["error"] != nil {
			t.Fatalf("%s: the request is %v (error %v), want it processing", when, rec["status"], rec["error"])
		}
	}
	waitHits(1) // its first dispatch fails, and disables the node
	stillWaiting("node a disabled")
	id, _, _ := nodeEndpoint("a", a.node.Endpoint)
	if resp := e.postAs("/v1/endpoints/"+id+"/enable", nil, adminToken); resp.StatusCode != 200 {
		t.Fatalf("enabling node a: %d", resp.StatusCode)
	}
	waitHits(2) // dispatched again: it fails again, a retry of the dispatch's budget
	stillWaiting("node a failed once more")
	if n := a.hits.Load(); n != 2 {
		t.Fatalf("node a tried %d times, want 2 (disabled again after its second failure)", n)
	}
}
