package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/replay"
)

const testConfig = `{
  "collectorCluster": "asyncmesh_collector",
  "replaySecretEnv": "ASYNCMESH_TEST_REPLAY_SECRET",
  "rules": [
    {"name": "report", "match": {"pathPrefix": "/slow"}, "mode": "async", "bodyLimit": 16,
     "callback": {"url": "http://127.0.0.1:9/cb", "allowOverride": true}},
    {"name": "down-ok", "match": {"pathPrefix": "/soft"}, "mode": "async",
     "callback": {"url": "http://127.0.0.1:9/cb"}, "onCollectorDown": "passthrough"},
    {"name": "optin", "match": {"pathPrefix": "/maybe", "methods": ["POST"]}, "mode": "opt-in",
     "callback": {"url": "http://127.0.0.1:9/cb"}}
  ]
}`

type harness struct {
	t    testing.TB
	host *abi.FakeHost
	d    *abi.Dispatcher
	next uint32
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, testConfig) }

func newHarnessWith(t testing.TB, config string) *harness {
	t.Setenv("ASYNCMESH_TEST_REPLAY_SECRET", testReplaySecret)
	h := &harness{t: t, host: abi.NewFakeHost()}
	h.d = abi.NewDispatcher(h.host, newPlugin)
	h.d.OnContextCreate(1, 0)
	h.host.Buffers[abi.PluginConfiguration] = []byte(config)
	if !h.d.OnConfigure(1, len(config)) {
		t.Fatalf("configure failed: %v", h.host.Logs)
	}
	return h
}

// request starts a stream with the given headers; body nil means end of stream.
func (h *harness) request(method, path string, body []byte, hdrs ...string) (uint32, abi.Action) {
	h.next++
	id := h.next + 1
	h.host.Local, h.host.Calls, h.host.Continued = nil, nil, nil
	hs := []abi.Header{{":method", method}, {":path", path}, {":authority", "api.local"}, {":scheme", "http"}}
	for i := 0; i+1 < len(hdrs); i += 2 {
		hs = append(hs, abi.Header{hdrs[i], hdrs[i+1]})
	}
	h.host.Maps[abi.RequestHeaders] = hs
	h.host.Maps[abi.ResponseHeaders] = nil
	h.d.OnContextCreate(id, 1)
	a := h.d.OnRequestHeaders(id, len(hs), body == nil)
	if body != nil && h.host.Local == nil && len(h.host.Calls) == 0 {
		h.host.Buffers[abi.RequestBody] = body
		a = h.d.OnRequestBody(id, len(body), true)
	}
	return id, a
}

func (h *harness) collectorAnswers(id uint32, status string, ok bool) {
	if len(h.host.Calls) != 1 {
		h.t.Fatalf("want 1 collector call, got %d", len(h.host.Calls))
	}
	n := 0
	if ok {
		h.host.Maps[abi.HTTPCallResponseHeaders] = []abi.Header{{":status", status}, {"x-async-status", "queued"}}
		h.host.Buffers[abi.HTTPCallResponseBody] = []byte(`{"error":"x"}`)
		n = 2
	}
	h.d.OnHTTPCallResponse(1, h.host.Calls[0].Token, n, 13, 0)
}

func TestPassThroughTagsTrace(t *testing.T) {
	h := newHarness(t)
	id, a := h.request("GET", "/fast", nil,
		"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"x-async-request-id", "forged", "x-async-rule", "forged", "x-async-whatever", "forged")
	if a != abi.Continue || h.host.Local != nil || len(h.host.Calls) != 0 {
		t.Fatalf("pass-through must continue untouched: action %v", a)
	}
	if got := h.host.Get(abi.RequestHeaders, "x-async-trace-id"); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("trace id header = %q", got)
	}
	for _, n := range []string{"x-async-request-id", "x-async-rule", "x-async-whatever"} {
		if _, ok := h.host.Header(abi.RequestHeaders, n); ok {
			t.Errorf("forged %s not stripped", n)
		}
	}
	h.d.OnResponseHeaders(id, 0, true)
	if got := h.host.Get(abi.ResponseHeaders, "x-async-trace-id"); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("response trace id = %q", got)
	}
}

func TestInvalidTraceparentReplaced(t *testing.T) {
	h := newHarness(t)
	h.request("GET", "/fast", nil, "traceparent", "garbage")
	tp := h.host.Get(abi.RequestHeaders, "traceparent")
	if tp == "garbage" || len(tp) != 55 || !strings.Contains(tp, h.host.Get(abi.RequestHeaders, "x-async-trace-id")) {
		t.Fatalf("traceparent = %q", tp)
	}
}

func TestAsyncAccepted(t *testing.T) {
	h := newHarness(t)
	id, a := h.request("POST", "/slow/report?x=1", []byte(`{"n":1}`), "content-type", "application/json", "x-request-id", "rid-1")
	if a != abi.Pause || h.host.Local != nil {
		t.Fatalf("async must pause until the collector answers")
	}
	call := h.host.Calls[0]
	if call.Cluster != "asyncmesh_collector" || call.Timeout != 2000 {
		t.Fatalf("call = %+v", call)
	}
	env, err := envelope.Decode(call.Body)
	if err != nil {
		t.Fatalf("envelope invalid: %v", err)
	}
	if env.Rule != "report" || string(env.Body) != `{"n":1}` || env.Path != "/slow/report?x=1" || env.XRequestID != "rid-1" || env.Callback.URL != "http://127.0.0.1:9/cb" {
		t.Fatalf("envelope = %+v", env)
	}
	h.collectorAnswers(id, "201", true)
	l := h.host.Local
	if l == nil || l.Status != 202 {
		t.Fatalf("want 202, got %+v", l)
	}
	var body map[string]string
	if err := json.Unmarshal(l.Body, &body); err != nil || body["id"] != env.ID || body["status"] != "queued" || body["traceId"] != env.TraceID {
		t.Fatalf("body = %s (%v)", l.Body, err)
	}
	// The access token is handed out in the Location (and the body) only;
	// the envelope, which the collector stores, carries its hash.
	tok := body["accessToken"]
	loc := "/async/v1/requests/" + env.ID + "?token=" + tok
	if !access.Check(env.AccessHash, tok) || strings.Contains(string(call.Body), tok) {
		t.Fatalf("token %q, envelope hash %q: the hash must match and the token must not travel to the collector", tok, env.AccessHash)
	}
	if h.host.LocalHeader("location") != loc || body["statusUrl"] != loc || h.host.LocalHeader("x-async-request-id") != env.ID || h.host.LocalHeader("x-async-trace-id") != env.TraceID {
		t.Fatalf("headers = %v, body %s", l.Headers, l.Body)
	}
	// Every request gets its own token.
	id2, _ := h.request("POST", "/slow/report", nil)
	env2, _ := envelope.Decode(h.host.Calls[len(h.host.Calls)-1].Body)
	h.collectorAnswers(id2, "201", true)
	var body2 map[string]string
	_ = json.Unmarshal(h.host.Local.Body, &body2)
	if body2["accessToken"] == tok || env2.AccessHash == env.AccessHash || !access.Check(env2.AccessHash, body2["accessToken"]) {
		t.Fatalf("second request reuses the token or its hash")
	}
}

func TestAsyncErrors(t *testing.T) {
	tests := []struct {
		name   string
		path   string
		body   []byte
		hdrs   []string
		status int
	}{
		{"body over limit", "/slow", []byte(strings.Repeat("x", 17)), nil, 413},
		{"content-length over limit", "/slow", []byte("x"), []string{"content-length", "100"}, 413},
		{"bad callback URL", "/slow", nil, []string{"x-async-callback", "ftp://x"}, 400},
		{"bad callback protocol", "/slow", nil, []string{"x-async-callback-protocol", "smtp"}, 400},
		{"override not allowed", "/soft", nil, []string{"x-async-callback", "http://example.com/cb"}, 400},
		{"protocol does not fit the URL", "/slow", nil, []string{"x-async-callback-protocol", "grpc"}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.request("POST", tt.path, tt.body, tt.hdrs...)
			if h.host.Local == nil || h.host.Local.Status != tt.status {
				t.Fatalf("want %d, got %+v", tt.status, h.host.Local)
			}
			var body map[string]string
			if err := json.Unmarshal(h.host.Local.Body, &body); err != nil || body["error"] == "" || body["message"] == "" {
				t.Fatalf("error body = %s", h.host.Local.Body)
			}
			if len(h.host.Calls) != 0 {
				t.Fatal("refused request must not reach the collector")
			}
		})
	}
}

func TestCallerCallbackOverride(t *testing.T) {
	h := newHarness(t)
	h.request("POST", "/slow", nil, "x-async-callback", "https://caller.example/cb", "x-async-callback-protocol", "soap")
	env, err := envelope.Decode(h.host.Calls[0].Body)
	if err != nil || env.Callback.URL != "https://caller.example/cb" || env.Callback.Protocol != "soap" {
		t.Fatalf("envelope %+v %v", env, err)
	}
	if _, ok := h.host.Header(abi.RequestHeaders, "x-async-callback"); ok {
		t.Fatal("x-async-callback must not reach the service")
	}
}

func TestCollectorDown(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		answered bool
		status   string
	}{
		{"no answer rejects", "/slow", false, ""},
		{"5xx rejects", "/slow", true, "500"},
		{"no answer passes through", "/soft", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			id, _ := h.request("POST", tt.path, nil)
			h.collectorAnswers(id, tt.status, tt.answered)
			if tt.path == "/soft" {
				if h.host.Local != nil || len(h.host.Continued) != 1 {
					t.Fatalf("want pass-through, got local %+v", h.host.Local)
				}
				return
			}
			if h.host.Local == nil || h.host.Local.Status != 503 || h.host.LocalHeader("retry-after") == "" {
				t.Fatalf("want 503 + Retry-After, got %+v", h.host.Local)
			}
		})
	}
}

func TestOptIn(t *testing.T) {
	h := newHarness(t)
	h.request("POST", "/maybe", nil)
	if len(h.host.Calls) != 0 {
		t.Fatal("opt-in without Prefer must pass through")
	}
	id, _ := h.request("POST", "/maybe", nil, "prefer", "respond-async, wait=5")
	env, _ := envelope.Decode(h.host.Calls[0].Body)
	if env.Wait.D() != 5*time.Second {
		t.Fatalf("wait = %v", env.Wait)
	}
	h.collectorAnswers(id, "201", true)
	if h.host.LocalHeader("preference-applied") != "respond-async" {
		t.Fatalf("headers = %v", h.host.Local.Headers)
	}
}

func TestReplay(t *testing.T) {
	h := newHarness(t)
	reqID := "01890a5d-ac96-774b-bcce-b302099a8057"
	sig := signReplay(testReplaySecret, reqID, "POST", "/slow", nil)
	_, a := h.request("POST", "/slow", nil, "x-async-replay", sig, "x-async-request-id", reqID)
	if a != abi.Continue || h.host.Local != nil || len(h.host.Calls) != 0 {
		t.Fatalf("a valid replay must pass to the service: %v %+v", a, h.host.Local)
	}
	if h.host.Get(abi.RequestHeaders, "x-async-request-id") != reqID {
		t.Fatal("replay must carry its request id")
	}
	if _, ok := h.host.Header(abi.RequestHeaders, "x-async-replay"); ok {
		t.Fatal("replay header must not reach the service")
	}
	forged := signReplay("a guess, a guess, a guess, a guess", reqID, "POST", "/slow", nil)
	h.request("POST", "/slow", nil, "x-async-replay", forged, "x-async-request-id", reqID)
	if h.host.Local == nil || h.host.Local.Status != 403 {
		t.Fatalf("forged replay must be refused, got %+v", h.host.Local)
	}
}

func TestBadConfigurationRejected(t *testing.T) {
	for _, cfg := range []string{`{}`, `{"collectorCluster":"c","rules":[{"name":"a","mode":"bogus"}]}`, `{"collectorCluster":"c","unknown":1}`, `not json`} {
		host := abi.NewFakeHost()
		d := abi.NewDispatcher(host, newPlugin)
		d.OnContextCreate(1, 0)
		host.Buffers[abi.PluginConfiguration] = []byte(cfg)
		if d.OnConfigure(1, len(cfg)) {
			t.Errorf("configuration %s accepted", cfg)
		}
		if len(host.Logs) == 0 {
			t.Errorf("configuration %s rejected without a log line", cfg)
		}
	}
}

func TestParsePrefer(t *testing.T) {
	tests := []struct {
		in    string
		async bool
		wait  time.Duration
	}{
		{"", false, 0},
		{"respond-async", true, 0},
		{"Respond-Async; foo=bar, wait=10", true, 10 * time.Second},
		{"wait=abc", false, 0},
		{"wait=999999", false, envelope.MaxWait},
		{`wait="3"; x=y`, false, 3 * time.Second},
		{"wait=-1, RESPOND-ASYNC", true, 0},
	}
	for _, tt := range tests {
		a, w := parsePrefer(tt.in)
		if a != tt.async || w != tt.wait {
			t.Errorf("parsePrefer(%q) = %v %v", tt.in, a, w)
		}
	}
}

func FuzzRequestHeaders(f *testing.F) {
	const id = "01890a5d-ac96-774b-bcce-b302099a8057"
	f.Add("POST", "/slow", "respond-async", "http://x/cb", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", []byte(nil))
	f.Add("POST", "/slow", "", "", "", signReplay(testReplaySecret, id, "POST", "/slow", []byte("{}")), []byte("{}"))
	f.Add("GET", "/a{b}", "", "", "", signReplay(testReplaySecret, id, "GET", "/a{b}", nil), []byte(nil))
	f.Add("POST", "/slow", "", "", "", "t=1700000000,v1=abc", []byte("x"))
	f.Fuzz(func(t *testing.T, method, path, prefer, cb, tp, replayHeader string, body []byte) {
		h := newHarness(t)
		hdrs := []string{"prefer", prefer, "x-async-callback", cb, "traceparent", tp}
		if replayHeader != "" {
			hdrs = append(hdrs, "x-async-replay", replayHeader, "x-async-request-id", id)
		}
		sid, a := h.request(method, path, body, hdrs...)
		// A replay reaches the service only with the very body it signed.
		if replayHeader != "" && h.host.Local == nil && a == abi.Continue {
			want := signReplay(testReplaySecret, id, method, path, body)
			if _, err := replay.Verify([][]byte{[]byte(testReplaySecret)}, replayHeader, replayRequest(id, method, path, body), time.Now()); err != nil {
				t.Fatalf("replay passed though it does not verify (%v); a good one is %s", err, want)
			}
		}
		h.d.OnResponseHeaders(sid, 0, true)
	})
}

func TestPreferWaitRelaysCompletedResponse(t *testing.T) {
	h := newHarness(t)
	id, _ := h.request("POST", "/slow", nil, "prefer", "respond-async, wait=5")
	call := h.host.Calls[0]
	if call.Timeout != 7000 {
		t.Fatalf("collector call timeout = %d ms, want the collector timeout plus the wait", call.Timeout)
	}
	env, err := envelope.Decode(call.Body)
	if err != nil || env.Wait.D() != 5*time.Second {
		t.Fatalf("envelope wait = %v (%v)", env.Wait.D(), err)
	}
	h.host.Maps[abi.HTTPCallResponseHeaders] = []abi.Header{
		{":status", "418"}, {"x-async-status", "completed"}, {"content-type", "text/plain"},
		{"content-length", "3"}, {"x-async-rule", "forged"}, {"x-served-by", "svc"},
	}
	h.host.Buffers[abi.HTTPCallResponseBody] = []byte("tea")
	h.d.OnHTTPCallResponse(1, call.Token, 6, 3, 0)
	l := h.host.Local
	if l == nil || l.Status != 418 || string(l.Body) != "tea" {
		t.Fatalf("local response = %+v", l)
	}
	want := map[string]string{"content-type": "text/plain", "x-served-by": "svc", "x-async-rule": "report",
		"x-async-request-id": env.ID, "x-async-trace-id": env.TraceID, "content-length": "", "x-async-status": ""}
	for k, v := range want {
		if got := h.host.LocalHeader(k); got != v {
			t.Errorf("relayed header %s = %q, want %q", k, got, v)
		}
	}
	h.d.OnResponseHeaders(id, 0, true) // a local response still passes the encoder path
}

func TestRouteAnnotationSelectsRule(t *testing.T) {
	h := newHarnessWith(t, strings.Replace(testConfig, `"rules": [`, `"routeAnnotations": true, "rules": [`, 1))
	const path = "xds.route_metadata.filter_metadata.asyncmesh"
	tests := []struct {
		name  string
		ann   []abi.Header // nil: the route has no annotation
		path  string
		async bool
		rule  string
	}{
		{"annotation picks a rule off its path", []abi.Header{{"rule", "report"}}, "/elsewhere", true, "report"},
		{"annotation makes a matching path sync", []abi.Header{{"rule", "report"}, {"mode", "sync"}}, "/slow", false, ""},
		{"bad annotation falls back to matching", []abi.Header{{"rule", "nope"}}, "/slow", true, "report"},
		{"no annotation: rules match", nil, "/slow", true, "report"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			delete(h.host.Props, path)
			if tt.ann != nil {
				h.host.Props[path] = abi.EncodeHeaders(tt.ann)
			}
			h.request("POST", tt.path, nil)
			if got := len(h.host.Calls) == 1; got != tt.async {
				t.Fatalf("async = %v, want %v", got, tt.async)
			}
			if tt.async {
				env, _ := envelope.Decode(h.host.Calls[0].Body)
				if env.Rule != tt.rule {
					t.Fatalf("rule %q, want %q", env.Rule, tt.rule)
				}
			}
		})
	}
}

func TestCallbackSelectedByParameter(t *testing.T) {
	cfg := `{"collectorCluster": "c", "rules": [
	  {"name": "by-header", "match": {"pathPrefix": "/h"}, "mode": "async",
	   "callback": {"select": {"header": "x-tenant", "targets": {
	     "acme": {"url": "grpc://acme.example:9000", "protocol": "grpc"},
	     "globex": {"url": "https://globex.example/cb"}}}}},
	  {"name": "by-query", "match": {"pathPrefix": "/q"}, "mode": "async",
	   "callback": {"select": {"query": "cb", "default": "acme", "targets": {
	     "acme": {"url": "https://acme.example/cb", "protocol": "soap"}}}}},
	  {"name": "by-body", "match": {"pathPrefix": "/b"}, "mode": "async",
	   "callback": {"select": {"jsonField": "reply.to", "targets": {
	     "queue": {"url": "amqp://mq.example/?exchange=results&routingKey=r", "protocol": "amqp"}}}}}
	]}`
	tests := []struct {
		name, path, body string
		hdrs             []string
		status           int
		target, url      string
	}{
		{"header", "/h", "", []string{"x-tenant", "acme"}, 0, "acme", "grpc://acme.example:9000"},
		{"header other", "/h", "", []string{"x-tenant", "globex"}, 0, "globex", "https://globex.example/cb"},
		{"header unknown", "/h", "", []string{"x-tenant", "initech"}, 400, "", ""},
		{"header missing", "/h", "", nil, 400, "", ""},
		{"query", "/q?a=1&cb=acme", "", nil, 0, "acme", "https://acme.example/cb"},
		{"query default", "/q", "", nil, 0, "acme", "https://acme.example/cb"},
		{"query unknown", "/q?cb=x%20y", "", nil, 400, "", ""},
		{"body", "/b", `{"reply":{"to":"queue"}}`, nil, 0, "queue", "amqp://mq.example/?exchange=results&routingKey=r"},
		{"body unknown", "/b", `{"reply":{"to":"elsewhere"}}`, nil, 400, "", ""},
		{"body not JSON", "/b", `reply=queue`, nil, 400, "", ""},
		{"override refused", "/h", "", []string{"x-tenant", "acme", "x-async-callback", "https://evil.example/"}, 400, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, cfg)
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			h.request("POST", tt.path, body, tt.hdrs...)
			if tt.status != 0 {
				if h.host.Local == nil || h.host.Local.Status != tt.status || len(h.host.Calls) != 0 {
					t.Fatalf("want %d and no intake, got %+v, %d calls", tt.status, h.host.Local, len(h.host.Calls))
				}
				return
			}
			if len(h.host.Calls) != 1 {
				t.Fatalf("no intake call; local answer %+v", h.host.Local)
			}
			env, err := envelope.Decode(h.host.Calls[0].Body)
			if err != nil || env.CallbackTarget != tt.target || env.Callback.URL != tt.url {
				t.Fatalf("envelope target %q url %q, err %v", env.CallbackTarget, env.Callback.URL, err)
			}
		})
	}
}

// TestAsyncWithTrailersRefused: an async request whose body ends with
// trailers is answered 400, never let through to the service synchronously.
func TestAsyncWithTrailersRefused(t *testing.T) {
	h := newHarness(t)
	h.host.Maps[abi.RequestHeaders] = []abi.Header{{":method", "POST"}, {":path", "/slow/report"}, {":authority", "api.local"}, {":scheme", "http"}}
	h.d.OnContextCreate(99, 1)
	h.d.OnRequestHeaders(99, 4, false)
	h.host.Buffers[abi.RequestBody] = []byte(`{"n":1}`)
	if a := h.d.OnRequestBody(99, 7, false); a != abi.Pause {
		t.Fatalf("body of an async request: %v, want it held", a)
	}
	if a := h.d.OnRequestTrailers(99, 1); a != abi.Pause || h.host.Local == nil || h.host.Local.Status != 400 || len(h.host.Calls) != 0 {
		t.Fatalf("trailers on an async request: action %v, local %+v, %d intake calls; want 400 and nothing sent", a, h.host.Local, len(h.host.Calls))
	}
}
