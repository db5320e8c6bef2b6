package collector

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/access"
)

// createAs writes a record whose envelope names caller and pkg straight to
// the store (intake takes a caller only with the filter's signature).
func (e *env) createAs(caller, pkg string) *store.Record {
	en := e.envelope("/work", nil)
	en.Caller, en.Package = caller, pkg
	r := store.NewRecord(en, time.Now())
	if err := e.c.store.Create(context.Background(), r); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// call makes a request with an optional bearer token and headers, and
// decodes a JSON answer.
func (e *env) call(method, path, bearer, body string, hdrs ...string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.api.URL+path, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

func TestSearchAndCountByCallerAndPackage(t *testing.T) {
	e := newEnv(t)
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers = -1, -1 } // records stay as written
	e.stop()
	e.start()
	alice := e.createAs("alice", "billing")
	e.createAs("bob", "billing")
	e.createAs("", "")
	for _, tc := range []struct {
		query string
		n     int
	}{
		{"caller=alice", 1},
		{"package=billing", 2},
		{"package=billing&caller=bob", 1},
		{"package=billing&status=delivered", 0},
		{"caller=carol", 0},
		{"", 3},
	} {
		code, v := e.get("/v1/requests?" + tc.query)
		if code != 200 || len(v["records"].([]any)) != tc.n {
			t.Errorf("search %q: %d %v, want %d records", tc.query, code, v, tc.n)
		}
		code, v = e.get("/v1/requests/count?" + tc.query)
		if code != 200 || v["count"] != float64(tc.n) {
			t.Errorf("count %q: %d %v, want %d", tc.query, code, v, tc.n)
		}
	}
	code, v := e.get("/v1/requests?caller=alice")
	if rec := v["records"].([]any)[0].(map[string]any); code != 200 || rec["id"] != alice.ID || rec["caller"] != "alice" || rec["package"] != "billing" {
		t.Fatalf("search by caller: %d %v", code, v)
	}
	for _, bad := range []string{"cursor=x", "limit=5", "status=nope", "since=yesterday", "bogus=1", "caller=a&caller=b", "caller=" + strings.Repeat("a", 2000)} {
		if code, v := e.get("/v1/requests/count?" + bad); code != 400 || v["error"] != "bad_parameter" {
			t.Errorf("count ?%s: %d %v, want 400 bad_parameter", bad, code, v)
		}
	}
}

func TestBulkReplayDryRunReplaysNothing(t *testing.T) {
	e := newEnv(t)
	a, b := e.dead(), e.dead()
	for _, tc := range []struct {
		body string
		n    float64
	}{
		{`{"dryRun":true}`, 2},
		{`{"dryRun":true,"status":"delivered"}`, 0},
		{`{"dryRun":true,"caller":"nobody"}`, 0},
		{`{"dryRun":true,"package":"nothing"}`, 0},
		{`{"dryRun":true,"rule":"r","limit":1,"cursor":"0"}`, 2}, // cursor and limit aside
	} {
		if code, v := e.admin("/v1/deliveries/replay", adminToken, tc.body); code != 200 || v["matched"] != tc.n || v["replayed"] != nil {
			t.Errorf("%s: %d %v, want matched %v", tc.body, code, v, tc.n)
		}
	}
	for _, id := range []string{a, b} {
		if code, rec := e.get("/v1/requests/" + id); code != 200 || rec["status"] != "dead" {
			t.Fatalf("after dry runs %s is %v, want still dead", id, rec["status"])
		}
	}
	e.failing.Store(false)
	if code, v := e.admin("/v1/deliveries/replay", adminToken, `{"dryRun":false}`); code != 200 || len(v["replayed"].([]any)) != 2 {
		t.Fatalf("replay after the dry runs: %d %v", code, v)
	}
	if code, v := e.admin("/v1/deliveries/replay", adminToken, `{"dryRun":"yes"}`); code != 400 {
		t.Fatalf("dryRun not a boolean: %d %v", code, v)
	}
}

// sse reads server-sent events from a response into a channel.
type sseEvent struct{ id, event, data string }

func readSSE(body io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 64)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.data != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return ch
}

// openStream opens GET /v1/stream?query as the operator; the stream is
// closed at the end of the test.
func (e *env) openStream(query string, hdrs ...string) (*http.Response, <-chan sseEvent) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.api.URL+"/v1/stream?"+query, nil)
	req.Header.Set("authorization", "Bearer "+adminToken)
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != 200 {
		return resp, nil
	}
	return resp, readSSE(resp.Body)
}

type streamed struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	UpdatedAt time.Time
	Attempts  []any
}

// next returns the next event of id, or fails after 20 s.
func next(t *testing.T, ch <-chan sseEvent, id string) (sseEvent, streamed) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended")
			}
			var v streamed
			if err := json.Unmarshal([]byte(ev.data), &v); err != nil {
				t.Fatalf("event data %q: %v", ev.data, err)
			}
			if ev.event != "record" || ev.id == "" {
				t.Fatalf("event %+v: want event record with an id", ev)
			}
			if v.ID == id {
				return ev, v
			}
		case <-timeout:
			t.Fatalf("no event of %s within 20s", id)
		}
	}
}

func TestStreamEveryChangeAndResume(t *testing.T) {
	e := newEnv(t)
	resp, events := e.openStream("")
	if ct := resp.Header.Get("content-type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("stream: %s %s", resp.Status, ct)
	}
	en := e.envelope("/work", nil)
	e.intake(en)
	var last sseEvent
	var statuses []string
	for {
		ev, rec := next(t, events, en.ID)
		if last.id != "" && ev.id <= last.id {
			t.Fatalf("event id %s after %s: want them to grow", ev.id, last.id)
		}
		last = ev
		statuses = append(statuses, rec.Status)
		if rec.Status == "delivered" {
			if len(rec.Attempts) != 1 {
				t.Fatalf("delivered with %d attempts streamed", len(rec.Attempts))
			}
			break
		}
	}
	t.Logf("streamed %v", statuses)

	// Resume after the last event: the earlier changes are not sent again,
	// the next one (a replay) is.
	_, resumed := e.openStream("", "last-event-id", last.id)
	if code, v := e.admin("/v1/requests/"+en.ID+"/replay", adminToken, ""); code != 202 {
		t.Fatalf("replay: %d %v", code, v)
	}
	ev, rec := next(t, resumed, en.ID)
	if rec.Status == "delivered" && len(rec.Attempts) < 2 {
		t.Fatalf("resumed stream sent again the change of %s: %+v", last.id, rec)
	}
	if ev.id <= last.id {
		t.Fatalf("resumed stream: event id %s, after %s", ev.id, last.id)
	}
	// A change no handler of this collector made (another collector on the
	// same store) is seen by the poll.
	// (the relay may have moved it on by then: the stream shows it as it is).
	other := e.createAs("", "")
	next(t, resumed, other.ID)
}

func TestStreamFilters(t *testing.T) {
	e := newEnv(t)
	_, delivered := e.openStream("status=delivered")
	_, byCaller := e.openStream("caller=alice")
	en := e.envelope("/work", nil)
	e.intake(en)
	if _, rec := next(t, delivered, en.ID); rec.Status != "delivered" {
		t.Fatalf("status=delivered streamed %s", rec.Status)
	}
	bob, alice := e.createAs("bob", ""), e.createAs("alice", "")
	if ev, _ := next(t, byCaller, alice.ID); strings.Contains(ev.data, bob.ID) {
		t.Fatal("caller=alice streamed bob's record")
	}
	// The relay runs both records on: alice's changes stream, bob's never.
	timeout := time.After(1500 * time.Millisecond) // polls and more
	for {
		select {
		case ev := <-byCaller:
			if !strings.Contains(ev.data, `"caller":"alice"`) {
				t.Fatalf("caller=alice streamed %s", ev.data)
			}
			continue
		case <-timeout:
		}
		break
	}
}

func TestStreamRefusals(t *testing.T) {
	e := newEnv(t)
	e.tune = func(c *Config) { c.MaxStreams = 1 }
	e.stop()
	e.start()
	for _, tc := range []struct {
		name, query, lastID string
		want                int
	}{
		{"unknown parameter", "bogus=1", "", 400},
		{"a time range", "since=2026-01-01T00:00:00Z", "", 400},
		{"a bad status", "status=nope", "", 400},
		{"a bad Last-Event-ID", "", "zzz", 400},
		{"a Last-Event-ID with other characters", "", "1.a:b<script>", 400},
	} {
		resp, _ := e.openStream(tc.query, "last-event-id", tc.lastID)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s, want %d", tc.name, resp.Status, tc.want)
		}
	}
	first, _ := e.openStream("")
	if first.StatusCode != 200 {
		t.Fatalf("first stream: %s", first.Status)
	}
	second, _ := e.openStream("")
	if second.StatusCode != 503 || second.Header.Get("retry-after") == "" {
		t.Fatalf("a stream past MaxStreams: %s %v", second.Status, second.Header)
	}
	first.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, _ := e.openStream("")
		if resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the place of a closed stream was not freed: %s", resp.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOperatorEndpointsRefuseOthers is the attacker's view of the new
// operator endpoints: without the operator's token (none, a wrong one, a
// request's access token, the token in the URL) they answer 401 and show
// nothing; the dashboard's assets are public and hold no data.
func TestOperatorEndpointsRefuseOthers(t *testing.T) {
	e := newEnv(t)
	en := e.envelope("/work", nil)
	tok, hash := access.NewToken()
	en.AccessHash = hash
	e.intake(en)
	e.get("/v1/requests/" + en.ID + "?wait=20s")
	routes := []struct{ method, path, body string }{
		{"GET", "/v1/requests?traceId=" + en.TraceID, ""},
		{"GET", "/v1/requests/count", ""},
		{"GET", "/v1/stream", ""},
		{"GET", "/v1/rules", ""},
		{"POST", "/v1/deliveries/replay", `{"dryRun":true,"status":"delivered"}`},
	}
	for _, r := range routes {
		for _, who := range []struct{ name, bearer, query string }{
			{"no token", "", ""},
			{"a wrong token", "not-the-operator-token", ""},
			{"the request's access token", tok, ""},
			{"the operator token in the URL", "", "token=" + adminToken},
			{"the request's token in the URL", "", "token=" + tok},
		} {
			path := r.path
			if who.query != "" {
				path += map[bool]string{true: "&", false: "?"}[strings.Contains(path, "?")] + who.query
			}
			code, v := e.call(r.method, path, who.bearer, r.body)
			if code != 401 && code != 400 {
				t.Errorf("%s %s with %s: %d %v, want 401", r.method, r.path, who.name, code, v)
			}
			if s := fmt.Sprint(v); strings.Contains(s, en.ID) || strings.Contains(s, "count") || strings.Contains(s, "matched") {
				t.Errorf("%s %s with %s showed data: %v", r.method, r.path, who.name, v)
			}
		}
	}
	// Without an operator token configured, the endpoints are off.
	e.tune = func(c *Config) { c.AdminToken = nil }
	e.stop()
	e.start()
	for _, r := range routes {
		if code, v := e.call(r.method, r.path, adminToken, r.body); code != 403 {
			t.Errorf("%s %s with no operator token configured: %d %v, want 403", r.method, r.path, code, v)
		}
	}
	// The dashboard's assets: public, with the headers that keep the page
	// its own (no framing, no sniffing, no other origin).
	resp, err := http.Get(e.api.URL + "/dashboard/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != 200 || !strings.Contains(h.Get("content-security-policy"), "default-src 'self'") ||
		!strings.Contains(h.Get("content-security-policy"), "frame-ancestors 'none'") || h.Get("x-frame-options") != "DENY" ||
		h.Get("x-content-type-options") != "nosniff" {
		t.Fatalf("dashboard: %s %v", resp.Status, h)
	}
	if strings.Contains(string(page), en.ID) || strings.Contains(string(page), en.TraceID) {
		t.Fatal("the dashboard's page holds a record")
	}
	// Its modules and style sheet are served with types a browser takes
	// under nosniff.
	for path, ctype := range map[string]string{"app.js": "text/javascript", "api.js": "text/javascript", "dom.js": "text/javascript", "app.css": "text/css"} {
		resp, err := http.Get(e.api.URL + "/dashboard/" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("content-type"), ctype) {
			t.Errorf("/dashboard/%s: %s %s", path, resp.Status, resp.Header.Get("content-type"))
		}
	}
}

func TestRulesStatus(t *testing.T) {
	cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("authorization") != "Bearer cp-token":
			http.Error(w, `{"error":"unauthorized"}`, 401)
		case r.URL.Path == "/v1/nodes":
			fmt.Fprint(w, `{"rulesFileOk":true,"nodes":[{"node":"n1","cluster":"c","collector":true,"served":"v2","acked":"v1","nacks":1,"lastNack":"bad rule","connected":true,"secret":"x","nested":{"a":1}}]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer cp.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", 500) }))
	defer broken.Close()
	e := newEnv(t)
	if code, v := e.get("/v1/rules"); code != 200 || v["controlplane"] != "not configured" || len(v["nodes"].([]any)) != 0 {
		t.Fatalf("without -controlplane-url: %d %v", code, v)
	}
	for _, tc := range []struct {
		name, url, want, token string
		nodes                  int
	}{
		{"a control plane", cp.URL + "/", "ok", "cp-token", 1},
		{"a control plane, without its token", cp.URL, "unavailable", "", 0},
		{"a control plane, with a wrong token", cp.URL, "unavailable", "not-it", 0},
		{"a failing control plane", broken.URL, "unavailable", "cp-token", 0},
		{"no control plane", "http://127.0.0.1:1", "unavailable", "cp-token", 0},
	} {
		e.tune = func(c *Config) {
			c.ControlPlaneURL, c.NodeID, c.ControlPlaneToken = tc.url, "collector-1", []byte(tc.token)
			c.Rules = versionedRules{ruleMap{}, "v7"}
		}
		e.stop()
		e.start()
		code, v := e.get("/v1/rules")
		col, _ := v["collector"].(map[string]any)
		if code != 200 || v["controlplane"] != tc.want || len(v["nodes"].([]any)) != tc.nodes || col["node"] != "collector-1" || col["version"] != "v7" {
			t.Fatalf("%s: %d %v", tc.name, code, v)
		}
		if tc.nodes == 1 {
			n := v["nodes"].([]any)[0].(map[string]any)
			if n["node"] != "n1" || n["served"] != "v2" || n["acked"] != "v1" || n["nacks"] != float64(1) || n["lastNack"] != "bad rule" || n["connected"] != true || n["collector"] != true {
				t.Fatalf("node: %v", n)
			}
			if _, ok := n["secret"]; ok || n["nested"] != nil {
				t.Fatalf("fields the contract does not name were passed on: %v", n)
			}
		}
	}
}

type versionedRules struct {
	ruleMap
	version string
}

func (r versionedRules) Version() string { return r.version }

func TestParseCursor(t *testing.T) {
	at := time.Date(2026, 12, 6, 7, 0, 0, 123456789, time.UTC)
	c := store.ChangeCursor{At: at, ID: "01938a2b-7d6e-7a1b-8c3d-4e5f60718293"}
	got, err := parseCursor(formatCursor(c))
	if err != nil || !got.At.Equal(c.At) || got.ID != c.ID {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "1", "x.a", "-1.a", "1.a b", "1.a\n", "1." + strings.Repeat("a", 200), "99999999999999999999.a"} {
		if _, err := parseCursor(bad); err == nil {
			t.Errorf("parseCursor(%q) took it", bad)
		}
	}
}

// TestStreamDropsAClientThatDoesNotRead: a client that stops reading is
// dropped once a write has waited streamWriteTimeout, and its place is
// freed: the collector buffers nothing for it but the connection's own
// buffers.
func TestStreamDropsAClientThatDoesNotRead(t *testing.T) {
	was := streamWriteTimeout
	t.Cleanup(func() { streamWriteTimeout = was }) // last: after the collector has stopped
	streamWriteTimeout = 300 * time.Millisecond
	e := newEnv(t)
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers, c.MaxStreams = -1, -1, 1 }
	e.stop()
	e.start()
	conn, err := net.Dial("tcp", e.api.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(1024)
	fmt.Fprintf(conn, "GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", adminToken)
	// The stream has its place; then changes pour in, and nobody reads.
	deadline := time.Now().Add(10 * time.Second)
	for len(e.c.streams) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	body := strings.Repeat("x", 2000)
	for i := 0; len(e.c.streams) > 0; i++ {
		if time.Now().After(deadline.Add(50 * time.Second)) {
			t.Fatalf("a client that reads nothing still holds its stream after %d records", i)
		}
		en := e.envelope("/work/"+body, nil)
		if err := e.c.store.Create(context.Background(), store.NewRecord(en, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	if resp, _ := e.openStream(""); resp.StatusCode != 200 {
		t.Fatalf("after the drop, a new stream: %s", resp.Status)
	}
}

// TestStreamSeesLateWrites: a change stamped before the last one sent but
// written (or, on Elasticsearch, searchable) after it is still streamed,
// once; what was sent is not sent again.
func TestStreamSeesLateWrites(t *testing.T) {
	e := newEnv(t)
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers, c.RelayAge = -1, -1, time.Hour } // records stay as written
	e.stop()
	e.start()
	start := time.Now()
	_, events := e.openStream("")
	only := func(id string) {
		t.Helper()
		select {
		case ev := <-events:
			if !strings.Contains(ev.data, `"id":"`+id+`"`) {
				t.Fatalf("streamed %s, want %s", ev.data, id)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was not streamed", id)
		}
	}
	time.Sleep(1200 * time.Millisecond)
	a := e.createAs("", "")
	only(a.ID)
	late := store.NewRecord(e.envelope("/late", nil), start.Add(600*time.Millisecond)) // stamped before a
	if err := e.c.store.Create(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	only(late.ID)
	select {
	case ev := <-events:
		t.Fatalf("sent again: %s", ev.data)
	case <-time.After(2500 * time.Millisecond): // polls, each looking back
	}
}
