//go:build e2e

// Package e2e runs the compiled filter inside a real Envoy with the real
// collector, demo service and callback receiver (examples/stack). Run with
// make e2e, which builds the binaries and sets ENVOY_BIN and ASYNCMESH_BIN.
package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

var st *stack.Stack

func TestMain(m *testing.M) {
	envoy, bin := os.Getenv("ENVOY_BIN"), os.Getenv("ASYNCMESH_BIN")
	if envoy == "" || bin == "" {
		println("e2e: ENVOY_BIN and ASYNCMESH_BIN must be set (make e2e)")
		os.Exit(1)
	}
	work, err := os.MkdirTemp("", "asyncmesh-e2e-")
	if err != nil {
		panic(err)
	}
	root, _ := filepath.Abs("..")
	st, err = stack.Start(context.Background(), stack.Options{Root: root, BinDir: bin, EnvoyBin: envoy, WorkDir: work})
	if err != nil {
		println("e2e: starting the stack:", err.Error())
		os.Exit(1)
	}
	code := m.Run()
	st.Close()
	if code != 0 {
		println("e2e: logs kept in", work)
	} else {
		os.RemoveAll(work)
	}
	os.Exit(code)
}

var client = &http.Client{Timeout: 30 * time.Second}

func do(t *testing.T, method, path, body string, hdrs ...string) (*http.Response, []byte) {
	t.Helper()
	return doAt(t, st, method, path, body, hdrs...)
}

// doAt sends a request through stack s's Envoy.
func doAt(t *testing.T, s *stack.Stack, method, path, body string, hdrs ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, s.EnvoyURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

type received struct {
	Protocol  string          `json:"protocol"`
	WebhookID string          `json:"webhookId"`
	TraceID   string          `json:"traceId"`
	Verified  bool            `json:"verified"`
	URI       string          `json:"uri"`
	Body      json.RawMessage `json:"body"`
}

type callback struct {
	ID       string `json:"id"`
	TraceID  string `json:"traceId"`
	Status   string `json:"status"`
	Response struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	} `json:"response"`
}

// waitCallback polls the receiver for the callback of request id.
func waitCallback(t *testing.T, id string) (received, callback) {
	t.Helper()
	return waitCallbackAt(t, st, id)
}

// waitCallbackAt polls stack s's receiver for the callback of request id.
func waitCallbackAt(t *testing.T, s *stack.Stack, id string) (received, callback) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(s.ReceiverURL + "/received")
		if err == nil {
			var got []received
			_ = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			for _, r := range got {
				if r.WebhookID == id {
					var cb callback
					if err := json.Unmarshal(r.Body, &cb); err != nil {
						t.Fatalf("callback body: %v", err)
					}
					return r, cb
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no callback for %s within 30s", id)
	return received{}, callback{}
}

func accepted(t *testing.T, resp *http.Response, body []byte) (id, traceID string) {
	t.Helper()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("want 202, got %s: %s", resp.Status, body)
	}
	var b struct{ ID, TraceID, Status, StatusURL, AccessToken string }
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("202 body %s: %v", body, err)
	}
	id, traceID = resp.Header.Get("x-async-request-id"), resp.Header.Get("x-async-trace-id")
	loc := "/async/v1/requests/" + id + "?token=" + b.AccessToken
	if id == "" || b.ID != id || b.TraceID != traceID || len(b.AccessToken) != 43 || resp.Header.Get("location") != loc || b.StatusURL != loc {
		t.Fatalf("202 headers %v body %s", resp.Header, body)
	}
	tokens.Store(id, b.AccessToken)
	return id, traceID
}

// tokens holds the access token of every request accepted() saw, by id.
var tokens sync.Map

// readPath is the caller's path to read request id (suffix "", "/result"
// or "/events") through Envoy, with its access token and query q.
func readPath(t *testing.T, id, suffix, q string) string {
	t.Helper()
	tok, ok := tokens.Load(id)
	if !ok {
		t.Fatalf("no access token for %s", id)
	}
	p := "/async/v1/requests/" + id + suffix + "?token=" + tok.(string)
	if q != "" {
		p += "&" + q
	}
	return p
}

func TestSyncPassThrough(t *testing.T) {
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	resp, body := do(t, "GET", "/headers", "", "traceparent", tp, "x-async-request-id", "forged", "x-async-rule", "forged", "x-custom", "kept")
	if resp.StatusCode != 200 {
		t.Fatalf("sync route: %s %s", resp.Status, body)
	}
	var got struct{ Headers map[string]string }
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	h := got.Headers
	if h["Traceparent"] != tp || h["X-Async-Trace-Id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || h["X-Custom"] != "kept" {
		t.Fatalf("service saw %v", h)
	}
	if _, ok := h["X-Async-Request-Id"]; ok {
		t.Fatalf("forged x-async-request-id reached the service: %v", h)
	}
	if _, ok := h["X-Async-Rule"]; ok {
		t.Fatalf("forged x-async-rule reached the service: %v", h)
	}
	if resp.Header.Get("x-async-trace-id") != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("response trace header %q", resp.Header.Get("x-async-trace-id"))
	}
}

func TestSyncCreatesTraceparent(t *testing.T) {
	resp, body := do(t, "GET", "/headers", "")
	var got struct{ Headers map[string]string }
	_ = json.Unmarshal(body, &got)
	tid := resp.Header.Get("x-async-trace-id")
	if len(tid) != 32 || !strings.Contains(got.Headers["Traceparent"], tid) {
		t.Fatalf("trace id %q, service saw traceparent %q", tid, got.Headers["Traceparent"])
	}
}

func TestAsyncLifecycle(t *testing.T) {
	start := time.Now()
	resp, body := do(t, "POST", "/slow?ms=1500", `{"order":42}`, "content-type", "application/json")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("202 took %v: it must not wait for the slow service", d)
	}
	id, traceID := accepted(t, resp, body)
	rec, cb := waitCallback(t, id)
	if !rec.Verified || rec.TraceID != traceID || cb.TraceID != traceID || cb.ID != id || cb.Status != "completed" {
		t.Fatalf("callback %+v %+v", rec, cb)
	}
	if cb.Response.Status != 200 || !strings.Contains(cb.Response.Body, `"report":"done"`) || !strings.Contains(cb.Response.Body, `{\"order\":42}`) || !strings.Contains(cb.Response.Body, id) {
		t.Fatalf("callback carries %+v, want the service's real response", cb.Response)
	}
	serviceSawOnlyReplay(t, st, traceID, id)
	// The Location is dereferenceable through Envoy; ?wait long-polls to the end.
	resp, body = do(t, "GET", readPath(t, id, "", "wait=10s"), "")
	var r struct {
		Status   string
		TraceID  string
		History  []struct{ Status string }
		Attempts []struct{ StatusCode int }
	}
	if err := json.Unmarshal(body, &r); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status: %s %s", resp.Status, body)
	}
	var hist []string
	for _, h := range r.History {
		hist = append(hist, h.Status)
	}
	if got := strings.Join(hist, " → "); got != "persisted → queued → completed → delivering → delivered" {
		t.Fatalf("history %s", got)
	}
	if len(r.Attempts) != 1 || r.Attempts[0].StatusCode != 204 {
		t.Fatalf("attempts %+v", r.Attempts)
	}
	resp, body = do(t, "GET", readPath(t, id, "/result", ""), "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `report`) {
		t.Fatalf("result: %s %s", resp.Status, body)
	}
	// Search is an operator endpoint: on the collector's API, with the token.
	sr, err := st.OperatorGet(context.Background(), "/v1/requests?traceId="+traceID)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(sr.Body)
	sr.Body.Close()
	if sr.StatusCode != 200 || !strings.Contains(string(body), id) {
		t.Fatalf("search by trace id: %s %s", sr.Status, body)
	}
}

// TestCallerReadsOnlyItsOwn plays a caller of the sidecar's Envoy who knows
// another caller's request id: without that request's token every read is
// 404, as for an id that does not exist, and nothing that spans callers
// (search, replay, metrics) is reachable through Envoy at all.
func TestCallerReadsOnlyItsOwn(t *testing.T) {
	resp, body := do(t, "POST", "/slow?ms=10", `{"secret":"victim"}`, "content-type", "application/json")
	id, traceID := accepted(t, resp, body)
	resp, body = do(t, "POST", "/slow?ms=10", `{}`, "content-type", "application/json")
	mine, _ := accepted(t, resp, body)
	if resp, body := do(t, "GET", readPath(t, id, "", "wait=10s"), ""); resp.StatusCode != 200 || !strings.Contains(string(body), `"delivered"`) {
		t.Fatalf("the owner's read: %s %s", resp.Status, body)
	}
	myTok, _ := tokens.Load(mine)
	_, missing := do(t, "GET", "/async/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", "")
	for _, p := range []string{
		"/async/v1/requests/" + id,
		"/async/v1/requests/" + id + "?wait=5s",
		"/async/v1/requests/" + id + "/result",
		"/async/v1/requests/" + id + "/events",
		"/async/v1/requests/" + id + "?token=" + myTok.(string),
		"/async/v1/requests/" + id + "/result?token=" + myTok.(string),
		"/async/v1/requests/" + id + "/result?token=",
	} {
		start := time.Now()
		resp, body := do(t, "GET", p, "")
		if resp.StatusCode != 404 || strings.Contains(string(body), "victim") || strings.Replace(string(body), id, "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", 1) != string(missing) {
			t.Errorf("GET %s: %s %s, want the 404 of a missing id (%s)", p, resp.Status, body, missing)
		}
		if time.Since(start) > 3*time.Second {
			t.Errorf("GET %s waited %v", p, time.Since(start))
		}
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/async/v1/requests?limit=500"},
		{"GET", "/async/v1/requests?traceId=" + traceID},
		{"GET", "/async/v1/requests/"},
		{"POST", "/async/v1/requests/" + id + "/replay"},
		{"POST", "/async/v1/deliveries/replay"},
		{"POST", "/async/v1/requests/" + id + "/complete"},
		{"POST", "/async/v1/intake"},
		{"GET", "/async/metrics"},
		{"GET", "/async/v1/requests/" + id + "/../../../metrics"},
		{"GET", "/async/v1/requests/" + id + "/%2e%2e/%2e%2e/%2e%2e/metrics"},
		{"DELETE", readPath(t, id, "", "")},
	} {
		resp, body := do(t, c.method, c.path, "{}")
		if resp.StatusCode != 404 || strings.Contains(string(body), id) || strings.Contains(string(body), "asyncmesh_collector") {
			t.Errorf("%s %s through Envoy: %s %s, want 404", c.method, c.path, resp.Status, body)
		}
	}
}

func TestOptIn(t *testing.T) {
	resp, body := do(t, "POST", "/maybe?ms=10", "{}")
	if resp.StatusCode != 200 {
		t.Fatalf("opt-in without Prefer must be served synchronously: %s %s", resp.Status, body)
	}
	resp, body = do(t, "POST", "/maybe?ms=10", "{}", "prefer", "respond-async")
	id, _ := accepted(t, resp, body)
	if resp.Header.Get("preference-applied") != "respond-async" {
		t.Fatalf("Preference-Applied missing: %v", resp.Header)
	}
	waitCallback(t, id)
}

func TestForgedReplayRefused(t *testing.T) {
	id := "01890a5d-ac96-774b-bcce-b302099a8057"
	authority := strings.TrimPrefix(st.EnvoyURL, "http://")
	forged := signed("a guess, a guess, a guess, a guess", id, "POST", authority, "/slow?ms=10", []byte("{}"), time.Now())
	resp, body := do(t, "POST", "/slow?ms=10", "{}", "x-async-replay", forged, "x-async-request-id", id)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "replay") {
		t.Fatalf("forged replay: %s %s", resp.Status, body)
	}
	// A genuine signature (the collector's secret) passes to the service.
	good := signed(st.ReplaySecret, id, "POST", authority, "/slow?ms=10", []byte("{}"), time.Now())
	resp, body = do(t, "POST", "/slow?ms=10", "{}", "x-async-replay", good, "x-async-request-id", id)
	if resp.StatusCode != 200 || !strings.Contains(string(body), id) {
		t.Fatalf("valid replay: %s %s", resp.Status, body)
	}
}

func TestBadInput(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		hdrs   []string
		status int
	}{
		{"body over the rule's limit", strings.Repeat("x", 5000), nil, 413},
		{"malformed callback header", "{}", []string{"x-async-callback", "not a url"}, 400},
		{"unknown callback protocol", "{}", []string{"x-async-callback-protocol", "carrier-pigeon"}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "POST", "/slow?ms=10", tt.body, tt.hdrs...)
			var e struct{ Error, Message string }
			if resp.StatusCode != tt.status || json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Fatalf("want %d with a JSON error, got %s %s", tt.status, resp.Status, body)
			}
		})
	}
}

// TestCollectorDown runs last: it stops and restarts the collector.
func TestCollectorDown(t *testing.T) {
	if err := st.StopCollector(false); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := st.StartCollector(); err != nil {
			t.Fatal(err)
		}
		if err := st.WaitCollector(context.Background()); err != nil {
			t.Fatal(err)
		}
	}()
	resp, body := do(t, "POST", "/slow?ms=10", "{}")
	if resp.StatusCode != 503 || resp.Header.Get("retry-after") == "" || !strings.Contains(string(body), "collector_unavailable") {
		t.Fatalf("collector down: want 503 + Retry-After, got %s %v %s", resp.Status, resp.Header, body)
	}
	resp, body = do(t, "POST", "/soft?ms=10", "{}")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"report":"done"`) {
		t.Fatalf("collector down with onCollectorDown passthrough: %s %s", resp.Status, body)
	}
}

func TestPreferWait(t *testing.T) {
	// Completes within the wait: the caller gets the service's own response.
	resp, body := do(t, "POST", "/slow?ms=100", `{"quick":1}`, "prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"report":"done"`) || !strings.Contains(string(body), "quick") {
		t.Fatalf("request completed within the wait: %s %s", resp.Status, body)
	}
	id := resp.Header.Get("x-async-request-id")
	if id == "" || resp.Header.Get("x-async-trace-id") == "" || resp.Header.Get("content-type") != "application/json" {
		t.Fatalf("relayed response headers: %v", resp.Header)
	}
	waitCallback(t, id) // the record's lifecycle goes on: the callback is still sent
	// Slower than the wait: 202 once the wait has passed.
	start := time.Now()
	resp, body = do(t, "POST", "/slow?ms=3000", "{}", "prefer", "respond-async, wait=1")
	if d := time.Since(start); d < 900*time.Millisecond || d > 2900*time.Millisecond {
		t.Fatalf("answered after %v, want about the 1 s wait", d)
	}
	accepted(t, resp, body)
}

// TestRouteAnnotations: a route's metadata.filter_metadata["asyncmesh"] picks
// the rule, read by the filter at xds.route_metadata.filter_metadata.asyncmesh
// (the property path Envoy 1.40 exposes, proven here).
func TestRouteAnnotations(t *testing.T) {
	// /annotated matches no rule by path; its route names rule slow-report.
	resp, body := do(t, "POST", "/annotated?ms=10", `{"via":"annotation"}`)
	id, _ := accepted(t, resp, body)
	if got := resp.Header.Get("x-async-rule"); got != "slow-report" {
		t.Fatalf("x-async-rule = %q", got)
	}
	_, cb := waitCallback(t, id)
	if cb.Response.Status != 200 || !strings.Contains(cb.Response.Body, "annotation") {
		t.Fatalf("callback %+v", cb)
	}
	// /slow/inline matches the async rule by path, but its route says sync.
	resp, body = do(t, "POST", "/slow/inline?ms=10", `{}`)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"report":"done"`) {
		t.Fatalf("annotated sync route: %s %s", resp.Status, body)
	}
}

// serviceSawOnlyReplay checks that the service saw an async request once, as
// the collector's replay: the filter held it back while it decided.
func serviceSawOnlyReplay(t *testing.T, s *stack.Stack, traceID, id string) {
	t.Helper()
	svcLog, _ := os.ReadFile(s.LogPath("service"))
	var seen []string
	for _, line := range strings.Split(string(svcLog), "\n") {
		if strings.Contains(line, traceID) {
			seen = append(seen, line)
		}
	}
	if len(seen) != 1 || !strings.Contains(seen[0], "request_id="+id) {
		t.Fatalf("the service saw the async request %d times: %q", len(seen), seen)
	}
}
