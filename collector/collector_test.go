package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var replaySecret = []byte("collector-test-replay-secret-32-bytes")

// testSecrets holds secret values by reference.
type testSecrets map[string]string

func (s testSecrets) Value(ref string) (string, error) {
	if v, ok := s[ref]; ok {
		return v, nil
	}
	return "", errors.New("no secret " + ref)
}

func (s testSecrets) Lookup(ref string) ([]webhook.Secret, error) {
	v, err := s.Value(ref)
	if err != nil {
		return nil, err
	}
	sec, err := webhook.ParseSecret(v)
	return []webhook.Secret{sec}, err
}

// env is a collector over a fresh embedded database, with a service that
// checks the replay signature (standing in for Envoy + the filter) and a
// receiver that counts callbacks by webhook-id.
type env struct {
	t        *testing.T
	dbPath   string
	service  *httptest.Server
	receiver *httptest.Server
	api      *httptest.Server
	c        *Collector
	stop     func()
	tune     func(*Config)                 // applied by start, when set
	wrap     func(store.Store) store.Store // wraps the store, when set
	// wrapQueue wraps the queue, when set; a wrapped queue is not the
	// store's own, so intake writes no outbox.
	wrapQueue func(queue.Queue) queue.Queue

	failing atomic.Bool // the receiver answers 500
	secrets testSecrets

	mu        sync.Mutex
	callbacks map[string]int
	payloads  map[string][]byte
	headers   map[string]http.Header // of the last callback, by webhook-id
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, dbPath: filepath.Join(t.TempDir(), "c.db"), callbacks: map[string]int{}, payloads: map[string][]byte{}, headers: map[string]http.Header{}, secrets: testSecrets{}}
	e.service = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := verifyReplay(r, body); err != nil {
			http.Error(w, "bad replay: "+err.Error(), 403)
			return
		}
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			time.Sleep(d)
		}
		w.Header().Set("x-service", "yes")
		w.WriteHeader(200)
		fmt.Fprintf(w, "echo:%s", body)
	}))
	e.receiver = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if e.failing.Load() {
			w.WriteHeader(500)
			return
		}
		e.mu.Lock()
		e.callbacks[r.Header.Get("webhook-id")]++
		e.payloads[r.Header.Get("webhook-id")] = body
		e.headers[r.Header.Get("webhook-id")] = r.Header.Clone()
		e.mu.Unlock()
	}))
	t.Cleanup(func() { e.service.Close(); e.receiver.Close() })
	e.start()
	t.Cleanup(func() { e.stop() })
	return e
}

// start runs a collector on the env's database; stop ends it gracefully.
func (e *env) start() {
	db, err := embedded.Open(context.Background(), e.dbPath)
	if err != nil {
		e.t.Fatal(err)
	}
	api := httptest.NewUnstartedServer(nil)
	cfg := Config{
		ReplayURL: e.service.URL, ReplaySecret: replaySecret, Secrets: e.secrets,
		RelayInterval: 50 * time.Millisecond, RelayAge: 50 * time.Millisecond,
		APIURL: "http://" + api.Listener.Addr().String(), AdminToken: []byte(adminToken), Logger: slog.New(slog.DiscardHandler),
	}
	if e.tune != nil {
		e.tune(&cfg)
	}
	var st store.Store = db.Store()
	if e.wrap != nil {
		st = e.wrap(st)
	}
	var q queue.Queue = db.Queue()
	if e.wrapQueue != nil {
		q = e.wrapQueue(q)
	}
	c, err := New(cfg, st, q)
	if err != nil {
		e.t.Fatal(err)
	}
	e.c = c
	api.Config.Handler = c.Handler()
	api.Start()
	e.mu.Lock()
	e.api = api
	e.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	e.stop = func() {
		cancel() // as on SIGTERM: Run drains, the API closes, then the database
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
		api.Close()
		db.Close()
		e.stop = func() {}
	}
}

func (e *env) envelope(path string, body []byte) *envelope.Envelope {
	tp := trace.NewParent()
	return &envelope.Envelope{
		Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(), TraceParent: tp.String(),
		Rule: "r", Method: "POST", Authority: "api.local", Path: path, Body: body,
		Callback: rules.Callback{URL: e.receiver.URL, Protocol: rules.ProtocolHTTP, AllowPrivate: true},
		Retry:    rules.Retry{MaxAttempts: 3, InitialBackoff: rules.Duration(10 * time.Millisecond), MaxBackoff: rules.Duration(50 * time.Millisecond)},
		Timeout:  rules.Duration(5 * time.Second),
	}
}

func (e *env) post(path string, body []byte) *http.Response {
	resp, err := http.Post(e.api.URL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (e *env) intake(env *envelope.Envelope) *http.Response {
	data, _ := json.Marshal(env)
	return e.post("/v1/intake", data)
}

// get reads path as an operator (with the admin token); getAs with the
// given bearer token ("" for none), as a caller would.
func (e *env) get(path string) (int, map[string]any) { return e.getAs(path, adminToken) }

func (e *env) getAs(path, bearer string) (int, map[string]any) {
	req, _ := http.NewRequest("GET", e.api.URL+path, nil)
	if bearer != "" {
		req.Header.Set("authorization", "Bearer "+bearer)
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

func TestLifecycleDeliversOnce(t *testing.T) {
	e := newEnv(t)
	en := e.envelope("/work?x=1", []byte("hello"))
	if resp := e.intake(en); resp.StatusCode != 201 || resp.Header.Get("x-async-status") == "" {
		t.Fatalf("intake answered %d", resp.StatusCode)
	}
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=10s")
	if code != 200 || rec["status"] != "delivered" {
		t.Fatalf("after wait: %d %v", code, rec)
	}
	var seen []string
	for _, h := range rec["history"].([]any) {
		seen = append(seen, h.(map[string]any)["status"].(string))
	}
	if got := strings.Join(seen, ","); got != "persisted,queued,completed,delivering,delivered" {
		t.Fatalf("history %s", got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.callbacks[en.ID] != 1 || !bytes.Contains(e.payloads[en.ID], []byte(`"body":"echo:hello"`)) {
		t.Fatalf("callbacks %v payload %s", e.callbacks, e.payloads[en.ID])
	}
	code, res := e.get("/v1/requests/" + en.ID + "/result")
	if code != 200 || res["status"] != "completed" {
		t.Fatalf("result %d %v", code, res)
	}
	code, page := e.get("/v1/requests?traceId=" + en.TraceID)
	if code != 200 || len(page["records"].([]any)) != 1 {
		t.Fatalf("search %d %v", code, page)
	}
}

// A collector with negative Workers and DeliveryWorkers only takes requests
// in; another one on the same store and queue executes and delivers them.
func TestIntakeOnlyCollector(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers = -1, -1 }
	e.start()
	en := e.envelope("/work", []byte("hello"))
	if resp := e.intake(en); resp.StatusCode != 201 {
		t.Fatalf("intake answered %d", resp.StatusCode)
	}
	if _, rec := e.get("/v1/requests/" + en.ID + "?wait=300ms"); rec["status"] != "queued" {
		t.Fatalf("an intake-only collector moved the record: %v", rec["status"])
	}
	e.stop()
	e.tune = nil
	e.start()
	if _, rec := e.get("/v1/requests/" + en.ID + "?wait=10s"); rec["status"] != "delivered" {
		t.Fatalf("the next collector left it %v", rec["status"])
	}
}

func TestUnreachableServiceFails(t *testing.T) {
	e := newEnv(t)
	e.service.Close() // connection refused: retried, then failed, and the failure called back
	en := e.envelope("/work", nil)
	e.intake(en)
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=30s")
	if code != 200 || rec["status"] != "delivered" || !strings.Contains(fmt.Sprint(rec["error"]), "replaying") {
		t.Fatalf("%d %v", code, rec)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !bytes.Contains(e.payloads[en.ID], []byte(`"status":"failed"`)) {
		t.Fatalf("payload %s", e.payloads[en.ID])
	}
}

func TestPreferWaitReturnsTheResponse(t *testing.T) {
	e := newEnv(t)
	fast := e.envelope("/work", []byte("quick"))
	fast.Wait = rules.Duration(5 * time.Second)
	resp := e.intake(fast)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("x-async-status") != "completed" || resp.Header.Get("x-service") != "yes" || string(body) != "echo:quick" {
		t.Fatalf("fast request within wait: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	slow := e.envelope("/work?sleep=2s", nil)
	slow.Wait = rules.Duration(time.Second)
	start := time.Now()
	resp = e.intake(slow)
	if resp.StatusCode != 201 || resp.Header.Get("x-async-status") == "completed" {
		t.Fatalf("slow request: %d %v", resp.StatusCode, resp.Header)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 1900*time.Millisecond {
		t.Fatalf("intake held %v, want about the 1s wait", d)
	}
}

func TestIntakeRefusals(t *testing.T) {
	e := newEnv(t)
	good := e.envelope("/x", nil)
	data, _ := json.Marshal(good)
	if resp := e.post("/v1/intake", data); resp.StatusCode != 201 {
		t.Fatalf("first intake %d", resp.StatusCode)
	}
	other := *good
	other.TraceID = strings.Repeat("a", 32)
	other.TraceParent = "00-" + other.TraceID + "-00f067aa0ba902b7-01"
	otherData, _ := json.Marshal(&other)
	tests := []struct {
		name string
		body []byte
		code int
		want string
	}{
		{"not json", []byte("{"), 400, "bad_envelope"},
		{"unknown field", bytes.Replace(data, []byte(`{"v":1`), []byte(`{"v":1,"extra":true`), 1), 400, "extra"},
		{"bad id", bytes.Replace(data, []byte(good.ID), []byte("nope"), 1), 400, "id:"},
		{"wait too long", bytes.Replace(data, []byte(`"timeout"`), []byte(`"wait":"2h","timeout"`), 1), 400, "wait:"},
		{"too large", bytes.Repeat([]byte(" "), envelope.MaxSize+1), 413, "envelope_too_large"},
		{"retry of the same request", data, 201, `"id"`},
		{"id of another trace", otherData, 409, "id_conflict"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.post("/v1/intake", tt.body)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.code || !strings.Contains(string(b), tt.want) {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
		})
	}
}

func TestAPIParameters(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		path string
		code int
		want string
	}{
		{"/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", 404, "not_found"},
		{"/v1/requests/x?wait=forever", 400, "wait:"},
		{"/v1/requests/x?wait=5m", 400, "wait:"},
		{"/v1/requests?color=red", 400, "color: unknown parameter"},
		{"/v1/requests?status=lost", 400, "status:"},
		{"/v1/requests?limit=0", 400, "limit:"},
		{"/v1/requests?limit=501", 400, "limit:"},
		{"/v1/requests?since=yesterday", 400, "since:"},
		{"/v1/requests?status=queued&limit=10", 200, "records"},
		{"/v2/nothing", 404, "no such endpoint"},
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ready"},
	}
	for _, tt := range tests {
		code, v := e.get(tt.path)
		if b, _ := json.Marshal(v); code != tt.code || !strings.Contains(string(b), tt.want) {
			t.Errorf("GET %s = %d %s; want %d containing %q", tt.path, code, b, tt.code, tt.want)
		}
	}
}

// TestShutdownUnderLoadLosesNothing stops the collector gracefully (what
// SIGTERM does) in the middle of a stream of intakes, starts a new one on the
// same database, and counts: every accepted request is delivered exactly once.
func TestShutdownUnderLoadLosesNothing(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var accepted []string
	var wg sync.WaitGroup
	stopLoad := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				en := e.envelope(fmt.Sprintf("/work?sleep=%dms", (w*7+i)%20), nil)
				data, _ := json.Marshal(en)
				e.mu.Lock()
				url := e.api.URL
				e.mu.Unlock()
				resp, err := http.Post(url+"/v1/intake", "application/json", bytes.NewReader(data))
				if err != nil {
					continue // the API is down between the two collectors
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 201 {
					mu.Lock()
					accepted = append(accepted, en.ID)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	e.stop()
	e.start()
	time.Sleep(500 * time.Millisecond)
	close(stopLoad)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(accepted) < 20 {
		t.Fatalf("only %d requests accepted: the load did not run", len(accepted))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range accepted {
		code, rec := e.get("/v1/requests/" + id + "?wait=" + time.Until(deadline).Round(time.Second).String())
		if code != 200 || rec["status"] != "delivered" {
			t.Fatalf("request %s: %d %v", id, code, rec["status"])
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	dups := 0
	for _, id := range accepted {
		switch n := e.callbacks[id]; {
		case n == 0:
			t.Errorf("request %s accepted but never called back", id)
		case n > 1:
			dups++
		}
	}
	t.Logf("accepted %d, called back %d, duplicates %d", len(accepted), len(e.callbacks), dups)
	if dups > 0 {
		t.Errorf("%d callbacks sent twice across a graceful restart", dups)
	}
}

// refusingQueue refuses to publish while refuse is set: a broker that is down
// or does not confirm.
type refusingQueue struct {
	queue.Queue
	refuse atomic.Bool
}

func (q *refusingQueue) Publish(ctx context.Context, m queue.Message) error {
	if q.refuse.Load() {
		return errors.New("no confirm")
	}
	return q.Queue.Publish(ctx, m)
}

// TestUnconfirmedPublishStaysPersisted: intake still accepts (the record is
// durable) but leaves it persisted; the outbox relay publishes it once the
// queue confirms again, and it is delivered once.
func TestUnconfirmedPublishStaysPersisted(t *testing.T) {
	e := newEnv(t)
	e.stop()
	q := &refusingQueue{}
	q.refuse.Store(true)
	e.tune = func(c *Config) { c.RelayInterval, c.RelayAge = 50*time.Millisecond, 10*time.Millisecond }
	e.wrapQueue = func(inner queue.Queue) queue.Queue { q.Queue = inner; return q }
	e.start()
	ctx := context.Background()

	en := e.envelope("/work", nil)
	resp := e.intake(en)
	if resp.StatusCode != 201 || resp.Header.Get("x-async-status") != "persisted" {
		t.Fatalf("intake with the queue refusing: %d %s", resp.StatusCode, resp.Header.Get("x-async-status"))
	}
	time.Sleep(300 * time.Millisecond) // relay rounds fail and back off
	if r, _ := e.c.store.Get(ctx, en.ID); r.Status != store.Persisted {
		t.Fatalf("status %s while nothing was confirmed", r.Status)
	}
	q.refuse.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, _ := e.c.store.Get(ctx, en.ID)
		if r.Status == store.Delivered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %s 10s after the queue came back", r.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.callbacks[en.ID] != 1 {
		t.Fatalf("%d callbacks", e.callbacks[en.ID])
	}
}

type ruleMap map[string]rules.Rule

func (m ruleMap) Rule(name string) (*rules.Rule, bool) {
	r, ok := m[name]
	return &r, ok
}

func (m ruleMap) Caller(string) (*rules.Caller, bool) { return nil, false }

func TestApplyRules(t *testing.T) {
	live := ruleMap{"r": {Name: "r", Mode: rules.ModeAsync, Timeout: rules.Duration(time.Minute),
		Callback: rules.Callback{URL: "http://new.example/cb", Protocol: "http", SecretRef: "s2"},
		Retry:    rules.Retry{MaxAttempts: 9}},
		"off": {Name: "off", Mode: rules.ModeSync}}
	c := &Collector{cfg: Config{Rules: live}}
	base := envelope.Envelope{Rule: "r", Timeout: rules.Duration(time.Second), Retry: rules.Retry{MaxAttempts: 1},
		Callback: rules.Callback{URL: "http://old.example/cb", Protocol: "http", SecretRef: "s1"}}
	tests := []struct {
		name    string
		mod     func(e *envelope.Envelope)
		url     string
		secret  string
		retries int
	}{
		{"live rule applies", func(e *envelope.Envelope) {}, "http://new.example/cb", "s2", 9},
		{"caller's callback kept", func(e *envelope.Envelope) { e.CallbackFromCaller = true }, "http://old.example/cb", "s2", 9},
		{"removed rule: as accepted", func(e *envelope.Envelope) { e.Rule = "gone" }, "http://old.example/cb", "s1", 1},
		{"rule now sync: as accepted", func(e *envelope.Envelope) { e.Rule = "off" }, "http://old.example/cb", "s1", 1},
	}
	for _, tt := range tests {
		e := base
		tt.mod(&e)
		got := c.applyRules(&e)
		if got.Callback.URL != tt.url || got.Callback.SecretRef != tt.secret || got.Retry.MaxAttempts != tt.retries {
			t.Errorf("%s: %+v %+v", tt.name, got.Callback, got.Retry)
		}
	}
	if base.Callback.URL != "http://old.example/cb" {
		t.Fatal("applyRules modified the stored envelope")
	}
}

// TestSweeperRescuesStuckRecords: records whose message was lost (here: never
// published) in every non-terminal status after intake are republished and
// reach a terminal status; leased or recent ones are left alone.
func TestSweeperRescuesStuckRecords(t *testing.T) {
	e := newEnv(t)
	e.stop() // a collector without consumers: only sweepOnce runs
	db, err := embedded.Open(context.Background(), e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := New(Config{ReplayURL: e.service.URL, ReplaySecret: replaySecret, Secrets: testSecrets{},
		SweepAge: time.Minute, Logger: slog.New(slog.DiscardHandler)}, db.Store(), db.Queue())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []string
	for _, stuck := range []store.Status{store.Queued, store.Processing, store.Completed, store.Failed, store.Delivering} {
		r := walk(t, db.Store(), e.envelope("/work", nil), stuck, 0)
		ids = append(ids, r.ID)
	}
	walk(t, db.Store(), e.envelope("/work", nil), store.Processing, 3*time.Hour)

	// Two hours on, all but the leased one are stuck.
	n, err := c.sweepOnce(ctx, time.Now().Add(2*time.Hour))
	if err != nil || n != len(ids) {
		t.Fatalf("sweepOnce republished %d (%v), want %d", n, err, len(ids))
	}
	// Now the consumers finish them.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { cancel(); <-done }()
	for _, id := range ids {
		got, err := c.await(ctx, id, 20*time.Second, store.Status.Terminal)
		if err != nil || got.Status != store.Delivered {
			t.Fatalf("record %s ended %v (%v)", id, got.Status, err)
		}
	}
}

// walk creates a record of e and takes it to status by the lifecycle's
// events, the last one leased for lease.
func walk(t *testing.T, s store.Store, e *envelope.Envelope, status store.Status, lease time.Duration) *store.Record {
	t.Helper()
	ctx := context.Background()
	r := store.NewRecord(e, time.Now())
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	events := map[store.Status][]store.Event{
		store.Persisted: nil, store.Queued: {store.Enqueue}, store.Processing: {store.Enqueue, store.Claim},
		store.Completed:  {store.Enqueue, store.Complete},
		store.Failed:     {store.Enqueue, store.Fail},
		store.Delivering: {store.Enqueue, store.Complete, store.StartDelivery},
		store.Delivered:  {store.Enqueue, store.Complete, store.StartDelivery, store.Deliver},
	}[status]
	for i, ev := range events {
		ch := store.Change{Event: ev}
		if ev == store.Complete {
			ch.Response = &store.Response{Status: 200}
		}
		if i == len(events)-1 {
			ch.Lease = lease
		}
		got, err := s.Transition(ctx, r.ID, ch)
		if err != nil {
			t.Fatal(err)
		}
		r = got
	}
	return r
}

// TestHandlersFollowTheRecordsStatus: work and delivery messages act by the
// record's status as they read it, whatever the message implies.
func TestHandlersFollowTheRecordsStatus(t *testing.T) {
	e := newEnv(t)
	e.stop() // handlers are called directly
	db, err := embedded.Open(context.Background(), e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := New(Config{ReplayURL: e.service.URL, ReplaySecret: replaySecret, Secrets: testSecrets{}, Logger: slog.New(slog.DiscardHandler)}, db.Store(), db.Queue())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tt := range []struct {
		topic    string
		status   store.Status
		leased   bool
		envelope bool // the work message carries the envelope
		want     store.Status
		wantErr  string // "" | "retry" | "poison"
	}{
		{queue.TopicWork, store.Persisted, false, true, store.Delivered, ""},
		{queue.TopicWork, store.Queued, false, true, store.Delivered, ""},
		{queue.TopicWork, store.Queued, false, false, store.Delivered, ""},
		{queue.TopicWork, store.Processing, false, true, store.Delivered, ""},
		{queue.TopicWork, store.Processing, true, true, store.Processing, "retry"},
		{queue.TopicWork, store.Completed, false, true, store.Delivered, ""},
		{queue.TopicWork, store.Delivering, true, true, store.Delivering, "retry"},
		{queue.TopicWork, store.Delivered, false, true, store.Delivered, ""},
		{queue.TopicWork, "", false, true, "", "poison"},
		{queue.TopicDelivery, store.Queued, false, false, store.Queued, "retry"},
		{queue.TopicDelivery, store.Completed, false, false, store.Delivered, ""},
		{queue.TopicDelivery, store.Delivered, false, false, store.Delivered, ""},
		{queue.TopicDelivery, "", false, false, "", "poison"},
	} {
		name := fmt.Sprintf("%s/%s/leased=%v/envelope=%v", tt.topic, tt.status, tt.leased, tt.envelope)
		t.Run(name, func(t *testing.T) {
			r := store.NewRecord(e.envelope("/work", []byte("hi")), time.Now())
			if tt.status != "" {
				lease := time.Duration(0)
				if tt.leased {
					lease = time.Minute
				}
				r = walk(t, db.Store(), r.Envelope, tt.status, lease)
			}
			m, err := c.message(tt.topic, r)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.envelope {
				m, _ = c.message(tt.topic, &store.Record{ID: r.ID, TraceID: r.TraceID})
			}
			handle := map[string]queue.Handler{queue.TopicWork: c.handleWork, queue.TopicDelivery: c.handleDelivery}[tt.topic]
			err = handle(ctx, m)
			_, retry := queue.RetryDelay(err)
			switch {
			case tt.wantErr == "" && err != nil, tt.wantErr == "retry" && !retry, tt.wantErr == "poison" && !queue.IsPoison(err):
				t.Fatalf("handler answered %v, want %q", err, tt.wantErr)
			}
			if tt.status == "" {
				return
			}
			got, err := db.Store().Get(ctx, r.ID)
			if err != nil || got.Status != tt.want {
				t.Fatalf("record is %s (%v), want %s", got.Status, err, tt.want)
			}
		})
	}
}
