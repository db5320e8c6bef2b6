package collector

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

const (
	nodeSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	nodeKey    = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

// node is an external processing node: it checks the collector's
// authentication, opens the task and completes it (unless silent) by calling
// completeUrl, sealed and signed as its target says.
type node struct {
	t      *testing.T
	target *rules.Target
	silent bool
	srv    *httptest.Server
	tokens *httptest.Server // oauth2 token endpoint
	tasks  chan external.Task
}

func newNode(t *testing.T, auth string, enc string) *node {
	n := &node{t: t, tasks: make(chan external.Task, 4)}
	n.tokens = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, _ := r.BasicAuth()
		if r.FormValue("grant_type") != "client_credentials" || id != "asyncmesh" || secret != "client-secret" {
			http.Error(w, `{"error":"invalid_client"}`, 401)
			return
		}
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"access_token":"node-token-1","token_type":"Bearer","expires_in":3600}`)
	}))
	n.srv = httptest.NewServer(http.HandlerFunc(n.serve))
	t.Cleanup(func() { n.srv.Close(); n.tokens.Close() })
	n.target = &rules.Target{Type: rules.TargetExternal, Endpoint: n.srv.URL + "/tasks", AllowPrivate: true,
		Timeout: rules.Duration(time.Minute), CompletionSecretRef: "node-hmac"}
	switch auth {
	case rules.AuthHMAC:
		n.target.Auth = &rules.NodeAuth{Type: auth, SecretRef: "node-hmac"}
	case rules.AuthBearer:
		n.target.Auth = &rules.NodeAuth{Type: auth, SecretRef: "node-bearer"}
		n.target.CompletionSecretRef = "" // the node presents its bearer token
	case rules.AuthOAuth2:
		n.target.Auth = &rules.NodeAuth{Type: auth, SecretRef: "node-client", TokenURL: n.tokens.URL, ClientID: "asyncmesh", Scopes: []string{"tasks"}}
	}
	if enc != "" {
		n.target.Encryption = &rules.Encryption{Type: enc, KeyRef: "node-key"}
	}
	return n
}

func (n *node) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id := r.Header.Get("x-async-request-id")
	var err error
	switch n.target.Auth.Type {
	case rules.AuthHMAC:
		sec, _ := webhook.ParseSecret(nodeSecret)
		err = webhook.Verify(r.Header, body, []webhook.Secret{sec}, time.Now())
	case rules.AuthBearer:
		if r.Header.Get("authorization") != "Bearer bearer-token" {
			err = io.EOF
		}
	case rules.AuthOAuth2:
		if r.Header.Get("authorization") != "Bearer node-token-1" {
			err = io.EOF
		}
	}
	if err != nil {
		http.Error(w, "unauthenticated", 401)
		return
	}
	key, _ := seal.ParseKey(nodeKey)
	if n.target.Encryption != nil {
		if bytes.Contains(body, []byte(`"method"`)) {
			n.t.Errorf("task sent in the clear: %s", body)
		}
		if body, err = seal.Open(n.target.Encryption.Type, key, id, body); err != nil {
			n.t.Errorf("opening the task: %v", err)
		}
	}
	var task external.Task
	if err := json.Unmarshal(body, &task); err != nil {
		n.t.Errorf("task: %v", err)
	}
	n.tasks <- task
	w.WriteHeader(http.StatusAccepted)
	if n.silent {
		return
	}
	go func() {
		// 503 (a rule of several nodes, the hand-off not written yet): again.
		for range 100 {
			resp := n.complete(task, `{"status":201,"headers":{"content-type":"text/plain"},"body":"`+base64.StdEncoding.EncodeToString([]byte("done:"+string(task.Request.Body)))+`","bodyEncoding":"base64"}`)
			if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}

// complete sends a completion the way the node is configured to.
func (n *node) complete(task external.Task, payload string) *http.Response {
	body := []byte(payload)
	if n.target.Encryption != nil {
		key, _ := seal.ParseKey(nodeKey)
		body, _, _ = seal.Seal(n.target.Encryption.Type, key, task.ID, body)
	}
	req, _ := http.NewRequest("POST", task.CompleteURL, bytes.NewReader(body))
	if n.target.CompletionSecretRef != "" {
		sec, _ := webhook.ParseSecret(nodeSecret)
		webhook.Sign(req.Header, []webhook.Secret{sec}, task.ID, time.Now(), body)
	} else {
		req.Header.Set("authorization", "Bearer bearer-token")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Errorf("completing: %v", err)
		return nil
	}
	resp.Body.Close()
	return resp
}

func nodeEnv(t *testing.T) *env {
	e := newEnv(t)
	for k, v := range map[string]string{"node-hmac": nodeSecret, "node-bearer": "bearer-token", "node-client": "client-secret", "node-key": nodeKey} {
		e.secrets[k] = v
	}
	return e
}

func TestExternalNodeCompletes(t *testing.T) {
	for _, tt := range []struct{ auth, enc string }{
		{rules.AuthHMAC, ""}, {rules.AuthBearer, rules.EncryptAESGCM}, {rules.AuthOAuth2, rules.EncryptJWE},
	} {
		t.Run(tt.auth+" "+tt.enc, func(t *testing.T) {
			e := nodeEnv(t)
			n := newNode(t, tt.auth, tt.enc)
			en := e.envelope("/ledger", []byte("entry"))
			en.Target = n.target
			e.intake(en)
			code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
			if code != 200 || rec["status"] != "delivered" {
				t.Fatalf("%d %v", code, rec)
			}
			task := <-n.tasks
			if task.TraceID != en.TraceID || string(task.Request.Body) != "entry" || task.Request.Path != "/ledger" {
				t.Fatalf("task %+v", task)
			}
			if !strings.Contains(string(e.payloadOf(en.ID)), `"status":201`) || !strings.Contains(string(e.payloadOf(en.ID)), `done:entry`) {
				t.Fatalf("callback %s", e.payloadOf(en.ID))
			}
			// (The hand-off note may be missing: this node completes at once,
			// possibly before the collector notes the hand-off.)
			// Idempotent: a second completion answers with the status reached.
			if resp := n.complete(task, `{"status":200}`); resp == nil || resp.StatusCode != 200 {
				t.Fatalf("repeat completion: %+v", resp)
			}
		})
	}
}

func TestExternalCompletionRefusals(t *testing.T) {
	e := nodeEnv(t)
	n := newNode(t, rules.AuthHMAC, rules.EncryptAESGCM)
	n.silent = true
	en := e.envelope("/ledger", nil)
	en.Target = n.target
	e.intake(en)
	task := <-n.tasks
	post := func(body []byte, sign bool) int {
		req, _ := http.NewRequest("POST", task.CompleteURL, bytes.NewReader(body))
		if sign {
			sec, _ := webhook.ParseSecret(nodeSecret)
			webhook.Sign(req.Header, []webhook.Secret{sec}, task.ID, time.Now(), body)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post([]byte(`{"status":200}`), false); code != 401 {
		t.Fatalf("unsigned: %d", code)
	}
	// An unauthenticated party announcing a large body is refused before
	// the collector reads it: the answer comes while the body never does.
	u, _ := url.Parse(task.CompleteURL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 20000000\r\nwebhook-id: %s\r\n\r\n{", u.Path, u.Host, task.ID)
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || resp.StatusCode != 401 {
		t.Fatalf("unauthenticated completion with a body still coming: %v %v, want 401 at once", resp, err)
	}
	if code := post([]byte(`{"status":200}`), true); code != 400 { // signed but not sealed
		t.Fatalf("plaintext: %d", code)
	}
	key, _ := seal.ParseKey(nodeKey)
	bad, _, _ := seal.Seal(rules.EncryptAESGCM, key, task.ID, []byte(`{"status":99}`))
	if code := post(bad, true); code != 400 {
		t.Fatalf("bad status: %d", code)
	}
	if code, _ := e.get("/v1/requests/" + en.ID); code != 200 {
		t.Fatal(code)
	}
	if resp := n.complete(task, `{"error":"ledger closed"}`); resp.StatusCode != 200 {
		t.Fatalf("completion: %d", resp.StatusCode)
	}
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
	if code != 200 || rec["status"] != "delivered" || !strings.Contains(rec["error"].(string), "ledger closed") {
		t.Fatalf("%d %v", code, rec)
	}
}

func TestExternalNodeTimesOut(t *testing.T) {
	e := nodeEnv(t)
	n := newNode(t, rules.AuthHMAC, "")
	n.silent = true
	n.target.Timeout = rules.Duration(300 * time.Millisecond)
	en := e.envelope("/ledger", nil)
	en.Target = n.target
	e.intake(en)
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
	if code != 200 || rec["status"] != "delivered" || !strings.Contains(rec["error"].(string), "did not complete within 300ms") {
		t.Fatalf("%d %v", code, rec)
	}
	if !strings.Contains(string(e.payloadOf(en.ID)), `"status":"failed"`) {
		t.Fatalf("callback %s", e.payloadOf(en.ID))
	}
	if !strings.Contains(historyEvents(rec), string(store.HandOff)) {
		t.Fatalf("no hand-off in the history %v", rec["history"])
	}
}

func TestExternalNodeRefusesTask(t *testing.T) {
	e := nodeEnv(t)
	n := newNode(t, rules.AuthHMAC, "")
	e.secrets["node-other"] = webhook.NewSecret()
	n.target.Auth.SecretRef = "node-other" // not the node's secret: it answers 401
	en := e.envelope("/ledger", nil)
	en.Target = n.target
	e.intake(en)
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
	if code != 200 || rec["status"] != "delivered" || !strings.Contains(rec["error"].(string), "refused the task with 401") {
		t.Fatalf("%d %v", code, rec)
	}
}

func (e *env) payloadOf(id string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.payloads[id]
}

func historyEvents(rec map[string]any) string {
	var b strings.Builder
	for _, h := range rec["history"].([]any) {
		if n, ok := h.(map[string]any)["event"].(string); ok {
			b.WriteString(n + ";")
		}
	}
	return b.String()
}

// TestExternalCompletionBeforeDispatchRefused: a node, even one that signs
// as the rule says, cannot complete a request it was never sent (still
// queued): 409, and the record is untouched and runs as usual.
func TestExternalCompletionBeforeDispatchRefused(t *testing.T) {
	e := nodeEnv(t)
	n := newNode(t, rules.AuthHMAC, "")
	en := e.envelope("/ledger", nil)
	en.Target = n.target
	r := walk(t, e.c.store, en, store.Queued, 0) // no work message: it stays queued
	task := external.Task{ID: r.ID, CompleteURL: e.api.URL + "/v1/requests/" + r.ID + "/complete"}
	if resp := n.complete(task, `{"status":200}`); resp == nil || resp.StatusCode != http.StatusConflict {
		t.Fatalf("completion of a queued request: %v, want 409", resp)
	}
	if got, err := e.c.store.Get(context.Background(), r.ID); err != nil || got.Status != store.Queued || got.Response != nil {
		t.Fatalf("record after a refused completion: %+v (%v)", got, err)
	}
}
