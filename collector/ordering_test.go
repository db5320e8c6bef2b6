package collector

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// orderedStack is two collectors on one embedded store and queue, a
// service that logs each execution, and a receiver that logs each callback
// and fails the test when two callbacks of one ordering key overlap.
type orderedStack struct {
	t        *testing.T
	db       *embedded.DB
	path     string // its file
	env      *env   // envelopes, the service's replay check and the receiver's URL
	service  *httptest.Server
	receiver *httptest.Server
	apis     [2]string // the collectors' API URLs
	stops    [2]func()

	mu       sync.Mutex
	req      map[string]orderedReq // by id
	events   map[string][]string   // by ordering key: "run i", "callback i"
	inflight map[string]int        // callbacks in progress, by key
	done     map[string]time.Time  // callback time, by id
	sent     map[string]time.Time  // intake time, by id
	count    map[string]int        // callbacks, by id
	drop     map[string]int        // executions still to fail, by id
}

type orderedReq struct {
	key string
	i   int
}

func newOrderedStack(t *testing.T) *orderedStack {
	minWas, maxWas := orderRecheckMin, orderRecheckMax
	orderRecheckMin, orderRecheckMax = 10*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { orderRecheckMin, orderRecheckMax = minWas, maxWas })
	s := &orderedStack{t: t, req: map[string]orderedReq{}, events: map[string][]string{}, inflight: map[string]int{},
		done: map[string]time.Time{}, sent: map[string]time.Time{}, count: map[string]int{}, drop: map[string]int{}}
	s.service = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := verifyReplay(r, body); err != nil {
			http.Error(w, "bad replay: "+err.Error(), 403)
			return
		}
		q := r.URL.Query()
		i, _ := strconv.Atoi(q.Get("i"))
		s.mu.Lock()
		if id := r.Header.Get("x-async-request-id"); s.drop[id] > 0 {
			// Unreachable, as far as the worker can tell: a replay that fails.
			s.drop[id]--
			s.mu.Unlock()
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
			return
		}
		s.events[q.Get("key")] = append(s.events[q.Get("key")], fmt.Sprintf("run %d", i))
		s.mu.Unlock()
		if d, err := time.ParseDuration(q.Get("sleep")); err == nil {
			time.Sleep(d)
		}
		w.WriteHeader(200)
	}))
	s.receiver = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		id := r.Header.Get("webhook-id")
		s.mu.Lock()
		q, known := s.req[id]
		s.count[id]++
		if known {
			s.inflight[q.key]++
			if s.inflight[q.key] > 1 {
				t.Errorf("two callbacks of key %s at once (request %d)", q.key, q.i)
			}
			s.events[q.key] = append(s.events[q.key], fmt.Sprintf("callback %d", q.i))
			if _, again := s.done[id]; !again {
				s.done[id] = time.Now()
			}
		}
		s.mu.Unlock()
		time.Sleep(5 * time.Millisecond) // long enough for an overlap to show
		s.mu.Lock()
		if known {
			s.inflight[q.key]--
		}
		s.mu.Unlock()
	}))
	t.Cleanup(func() { s.service.Close(); s.receiver.Close() })
	s.path = filepath.Join(t.TempDir(), "c.db")
	db, err := embedded.Open(context.Background(), s.path)
	if err != nil {
		t.Fatal(err)
	}
	s.db = db
	s.env = &env{t: t, receiver: s.receiver}
	for n := range 2 {
		s.start(n)
	}
	t.Cleanup(func() {
		for n := range 2 {
			s.stops[n]()
		}
		db.Close()
	})
	return s
}

// start runs collector n on the shared store.
func (s *orderedStack) start(n int) {
	api := httptest.NewUnstartedServer(nil)
	c, err := New(Config{
		ReplayURL: s.service.URL, ReplaySecret: replaySecret, Secrets: testSecrets{},
		RelayInterval: 50 * time.Millisecond, RelayAge: 50 * time.Millisecond,
		APIURL: "http://" + api.Listener.Addr().String(), AdminToken: []byte(adminToken), Logger: slog.New(slog.DiscardHandler),
	}, s.db.Store(), s.db.Queue())
	if err != nil {
		s.t.Fatal(err)
	}
	api.Config.Handler = c.Handler()
	api.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	s.mu.Lock()
	s.apis[n] = api.URL
	s.mu.Unlock()
	s.stops[n] = func() {
		cancel()
		if err := <-done; err != nil {
			s.t.Errorf("Run: %v", err)
		}
		api.Close()
		s.stops[n] = func() {}
	}
}

// send takes request i of key (unordered when key is "") in through
// collector n; sleep slows its execution.
func (s *orderedStack) send(n int, key string, i int, sleep time.Duration) *envelope.Envelope {
	en := s.env.envelope(fmt.Sprintf("/orders?key=%s&i=%d&sleep=%s", key, i, sleep), nil)
	en.OrderKey = key
	// The filter's deadline, on the ordered keys' requests: a waiting
	// message must keep intake's decision (a worker without it waits for
	// the deadline, deadline.go). The other keys' requests have none: a
	// worker of the collector that did not take one in would wait for it
	// however it is ordered, and their timing is to show the ordered key's
	// effect alone.
	if strings.HasPrefix(key, "account-") {
		en.Deadline = time.Now().Add(3 * time.Second).UnixMilli()
	}
	s.mu.Lock()
	s.req[en.ID] = orderedReq{key, i}
	s.sent[en.ID] = time.Now()
	api := s.apis[n]
	s.mu.Unlock()
	data, _ := json.Marshal(en)
	resp, err := http.Post(api+"/v1/intake", "application/json", bytes.NewReader(data))
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		s.t.Fatalf("intake of %s %d answered %d", key, i, resp.StatusCode)
	}
	return en
}

// waitEvent waits until key has event ev.
func (s *orderedStack) waitEvent(key, ev string, timeout time.Duration) {
	for deadline := time.Now().Add(timeout); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		seen := slices.Contains(s.events[key], ev)
		s.mu.Unlock()
		if seen {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q for key %s after %s", ev, key, timeout)
		}
	}
}

// get reads record id through collector 1's API.
func (s *orderedStack) get(id string) (int, map[string]any) {
	s.mu.Lock()
	api := s.apis[1]
	s.mu.Unlock()
	req, _ := http.NewRequest("GET", api+"/v1/requests/"+id, nil)
	req.Header.Set("authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rec map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&rec)
	return resp.StatusCode, rec
}

// waitAll waits until every request sent was called back.
func (s *orderedStack) waitAll(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := len(s.done)
		s.mu.Unlock()
		if n == len(s.req) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t.Fatalf("%d of %d requests called back after %s; events %v", len(s.done), len(s.req), timeout, s.events)
}

// checkOrder checks that key's n requests ran and were called back in
// intake order, one at a time: run 0, callback 0, run 1, callback 1, …
func (s *orderedStack) checkOrder(key string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("run %d", i), fmt.Sprintf("callback %d", i))
	}
	if got := s.events[key]; !slices.Equal(got, want) {
		s.t.Fatalf("key %s: events\n%v\nwant\n%v", key, got, want)
	}
}

// TestOrderedKeyKeepsIntakeOrder: 20 requests with one ordering key, taken
// in alternately by two collectors on one store and some slow to run, run
// and are called back in intake order, one at a time; 20 requests with
// other keys, taken in meanwhile, are not held up behind them.
func TestOrderedKeyKeepsIntakeOrder(t *testing.T) {
	s := newOrderedStack(t)
	const n = 20
	var others []*envelope.Envelope
	for i := range n {
		sleep := time.Duration(0)
		if i%3 == 0 {
			sleep = 80 * time.Millisecond
		}
		s.send(i%2, "account-1", i, sleep)
		others = append(others, s.send((i+1)%2, fmt.Sprintf("other-%d", i), 0, 0))
	}
	s.waitAll(60 * time.Second)
	s.checkOrder("account-1", n)
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for id, q := range s.req {
		if q.key == "account-1" && s.done[id].After(last) {
			last = s.done[id]
		}
	}
	for i, o := range others {
		if took := s.done[o.ID].Sub(s.sent[o.ID]); took > 2*time.Second || !s.done[o.ID].Before(last) {
			t.Errorf("request %d of another key took %s, called back %s before the ordered key's last", i, took, last.Sub(s.done[o.ID]))
		}
	}
	for id, c := range s.count {
		if c != 1 {
			t.Errorf("request %v called back %d times", s.req[id], c)
		}
	}
}

// TestOrderedKeySurvivesRestart: a collector stopped and started again
// while a key's requests are under way loses none of them, and the key
// keeps its order.
func TestOrderedKeySurvivesRestart(t *testing.T) {
	s := newOrderedStack(t)
	const n = 20
	for i := range n {
		sleep := time.Duration(0)
		if i%4 == 1 {
			sleep = 60 * time.Millisecond
		}
		via := i % 2
		if i > n/2 && i <= n/2+3 {
			via = 1 // collector 0 is down
		}
		s.send(via, "account-7", i, sleep)
		if i == n/2 {
			s.stops[0]() // mid-way: its requests and messages are left to the other one, or to it once back
		}
		if i == n/2+3 {
			s.start(0)
		}
	}
	s.waitAll(60 * time.Second)
	s.checkOrder("account-7", n)
}

// TestOrderTurn: a link to a
// request whose record was never written (intake crashed between the two
// writes) holds its successor until the predecessor's intake deadline and
// the workers' grace, then blocks nothing; a predecessor done, or done
// once and replayed, blocks nothing.
func TestOrderTurn(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Now()
	missing := e.envelope("/x", nil)
	for _, tt := range []struct {
		name     string
		deadline time.Time
		wait     bool
	}{
		{"never written, intake may still write it", now.Add(time.Second), true},
		{"never written, its intake is over", now.Add(-workerGrace - time.Millisecond), false},
	} {
		wait, _, _, err := e.c.turn(ctx, []envelope.OrderLink{{ID: missing.ID, Deadline: tt.deadline.UnixMilli()}}, now)
		if err != nil || (wait > 0) != tt.wait {
			t.Errorf("%s: wait %s (%v), want waiting %v", tt.name, wait, err, tt.wait)
		}
	}
	walked := func(st store.Status) *store.Record {
		then := map[store.Status]store.Event{store.Held: store.Hold, store.Dead: store.GiveUp}
		ev, ok := then[st]
		if !ok {
			return walk(t, e.c.store, e.envelope("/x", nil), st, 0)
		}
		r := walk(t, e.c.store, e.envelope("/x", nil), store.Delivering, 0)
		r, err := e.c.store.Transition(ctx, r.ID, store.Change{Event: ev})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tt := range []struct {
		status store.Status
		wait   bool
	}{
		{store.Queued, true}, {store.Completed, true}, {store.Delivering, true}, {store.Held, true},
		{store.Delivered, false}, {store.Dead, false},
	} {
		r := walked(tt.status)
		wait, _, why, err := e.c.turn(ctx, []envelope.OrderLink{{ID: r.ID}}, now)
		if err != nil || (wait > 0) != tt.wait {
			t.Errorf("predecessor %s: wait %s (%s, %v), want waiting %v", tt.status, wait, why, err, tt.wait)
		}
	}
	// Replayed after its delivery: its key does not wait again.
	r := walked(store.Delivered)
	if _, err := e.c.store.Transition(ctx, r.ID, store.Change{Event: store.Replay}); err != nil {
		t.Fatal(err)
	}
	if wait, _, why, err := e.c.turn(ctx, []envelope.OrderLink{{ID: r.ID}}, now); err != nil || wait > 0 {
		t.Errorf("a replayed predecessor: wait %s (%s, %v), want none", wait, why, err)
	}
}

// TestOrderTurnPastRequestsThatNeverRan: a request before this one that
// never ran vouches for nothing before it, so the turn is decided further
// back: past a never-written one (its intake over) by the next link, past
// an abandoned one by the abandoned record's own links (which reach
// further than the request's). The chaos run saw the hole this closes: a
// RabbitMQ restart held a key's request queued; the next ones were
// abandoned (their intake too slow for the filter), and the first accepted
// after them ran before the held one.
func TestOrderTurnPastRequestsThatNeverRan(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Now()
	over := now.Add(-workerGrace - time.Millisecond).UnixMilli()
	queued := walk(t, e.c.store, e.envelope("/x", nil), store.Queued, 0)
	delivered := walk(t, e.c.store, e.envelope("/x", nil), store.Delivered, 0)
	abandoned := func(links ...envelope.OrderLink) envelope.OrderLink {
		en := e.envelope("/x", nil)
		en.OrderKey = "k"
		if len(links) > 0 {
			en.OrderAfter, en.OrderEarlier = &links[0], links[1:]
		}
		r := store.NewRecord(en, e.c.store.Now())
		if err := e.c.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.store.Transition(ctx, r.ID, store.Change{Event: store.Abandon, Error: AbandonedNote}); err != nil {
			t.Fatal(err)
		}
		return envelope.OrderLink{ID: r.ID}
	}
	never := func() envelope.OrderLink { return envelope.OrderLink{ID: e.envelope("/x", nil).ID, Deadline: over} }
	link := func(r *store.Record) envelope.OrderLink { return envelope.OrderLink{ID: r.ID} }
	for _, tt := range []struct {
		name  string
		links []envelope.OrderLink
		wait  bool
	}{
		{"never written, then queued", []envelope.OrderLink{never(), never(), link(queued)}, true},
		{"never written, then delivered", []envelope.OrderLink{never(), link(delivered), link(queued)}, false},
		{"abandoned after a queued one", []envelope.OrderLink{abandoned(link(queued))}, true},
		{"abandoned after abandoned after a queued one", []envelope.OrderLink{abandoned(abandoned(never(), link(queued)))}, true},
		{"abandoned after a delivered one", []envelope.OrderLink{abandoned(link(delivered), link(queued))}, false},
		{"only never-written and abandoned ones", []envelope.OrderLink{never(), abandoned(never())}, false},
	} {
		wait, _, why, err := e.c.turn(ctx, tt.links, now)
		if err != nil || (wait > 0) != tt.wait {
			t.Errorf("%s: wait %s (%s, %v), want waiting %v", tt.name, wait, why, err, tt.wait)
		}
	}
}

// TestOrderLinksOnlyWrittenRequests: intake links a request to the ones
// its key took in and wrote: an Idempotency-Key's retry (answered from the
// first request) or reuse (refused) is taken back out of the key, and a
// request whose intake is retried (the filter lost the answer: its record
// exists) keeps its one place.
func TestOrderLinksOnlyWrittenRequests(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keyed := func(key, body string) *envelope.Envelope {
		en := e.keyed("billing", key, []byte(body), time.Hour)
		en.OrderKey = "account-1"
		return en
	}
	intake := func(en *envelope.Envelope, want int) {
		t.Helper()
		if resp := e.intakeSigned(en); resp.StatusCode != want {
			t.Fatalf("intake of %s: %d, want %d", en.ID, resp.StatusCode, want)
		}
	}
	links := func(id string) []string {
		t.Helper()
		r, err := e.c.store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range orderLinks(r.Envelope) {
			ids = append(ids, l.ID)
		}
		return ids
	}
	first := keyed("k-1", "order 1")
	intake(first, 201)
	intake(keyed("k-1", "order 1"), 200) // a retry: answered from first
	intake(keyed("k-1", "order 2"), 422) // the key reused: refused
	second := keyed("k-2", "order 3")
	intake(second, 201)
	if got := links(second.ID); !slices.Equal(got, []string{first.ID}) {
		t.Fatalf("the request after a retry and a refusal follows %v, want [%s]", got, first.ID)
	}
	third := keyed("k-3", "order 4")
	intake(third, 201)
	if got := links(third.ID); !slices.Equal(got, []string{second.ID, first.ID}) {
		t.Fatalf("the request after the second follows %v, want [%s %s]", got, second.ID, first.ID)
	}
	plain := e.envelope("/orders", nil) // no Idempotency-Key: its second intake finds its record
	plain.OrderKey = "account-1"
	intake(plain, 201)
	intake(plain, 201)
	last := keyed("k-4", "order 5")
	intake(last, 201)
	if got := links(last.ID); !slices.Equal(got, []string{plain.ID, third.ID, second.ID, first.ID}) {
		t.Fatalf("the request after one taken in twice follows %v, want [%s %s %s %s]", got, plain.ID, third.ID, second.ID, first.ID)
	}
}

// TestTurnWaitIsNotARun: a work message whose request waits for its turn
// goes back as a queue.Wait (the queue does not count it: queuetest's
// WaitIsNotCounted), whatever its deliveries, and counts in
// asyncmesh_collector_ordering_waits_total; a wait past orderStuckAfter is
// reported stuck. Once its turn comes it runs with the deliveries it had.
func TestTurnWaitIsNotARun(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	stuckWas := orderStuckAfter
	t.Cleanup(func() { orderStuckAfter = stuckWas })
	prev := walk(t, e.c.store, e.envelope("/x", nil), store.Queued, 0)
	en := e.envelope("/y", nil)
	en.OrderKey, en.OrderAfter = "k", &envelope.OrderLink{ID: prev.ID}
	r := store.NewRecord(en, e.c.store.Now().Add(-time.Minute)) // taken in a minute ago
	for i := 1; i <= replayAttempts+3; i++ {
		m := queue.Message{Topic: queue.TopicWork, Key: r.ID, Deliveries: 1}
		if i == replayAttempts+3 {
			orderStuckAfter = 61 * time.Second // the last wait (a minute and its 2 s) reports the key stuck
		}
		err := e.c.awaitTurn(ctx, &m, r)
		if !waitingTurn(err) || !queue.IsWait(err) || m.Deliveries != 1 {
			t.Fatalf("wait %d with its predecessor queued: %v (deliveries %d), want a queue.Wait", i, err, m.Deliveries)
		}
		if d, _ := queue.RetryDelay(err); d != orderRecheckMax {
			t.Errorf("wait %d after a minute: recheck in %s, want %s", i, d, orderRecheckMax)
		}
	}
	for _, ev := range []store.Event{store.Complete, store.StartDelivery, store.Deliver} {
		if _, err := e.c.store.Transition(ctx, prev.ID, store.Change{Event: ev, Response: &store.Response{Status: 200}}); err != nil {
			t.Fatal(err)
		}
	}
	m := queue.Message{Topic: queue.TopicWork, Key: r.ID, Deliveries: 1}
	if err := e.c.awaitTurn(ctx, &m, r); err != nil || m.Deliveries != 1 {
		t.Fatalf("its turn: %v, deliveries %d; want it to run as on its first delivery", err, m.Deliveries)
	}
	req, _ := http.NewRequest("GET", e.api.URL+"/metrics", nil)
	req.Header.Set("authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`asyncmesh_collector_ordering_waits_total{rule="r"} %d`, replayAttempts+3),
		`asyncmesh_collector_ordering_stuck_total{rule="r"} 1`,
		`asyncmesh_collector_ordering_turn_seconds_count{rule="r"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestOrderRecheck: the recheck delay grows with the time waited, within
// its bounds; crosses marks a wait that reaches the next multiple of its
// period, once per period.
func TestOrderRecheck(t *testing.T) {
	for _, tt := range []struct {
		waited time.Duration
		want   time.Duration
	}{
		{0, orderRecheckMin}, {400 * time.Millisecond, orderRecheckMin}, {2 * time.Second, 250 * time.Millisecond},
		{8 * time.Second, time.Second}, {time.Minute, orderRecheckMax}, {time.Hour, orderRecheckMax},
	} {
		if got := orderRecheck(tt.waited); got != tt.want {
			t.Errorf("orderRecheck(%s) = %s, want %s", tt.waited, got, tt.want)
		}
	}
	for _, tt := range []struct {
		waited, next, every time.Duration
		want                bool
	}{
		{time.Second, time.Second, 30 * time.Second, false},
		{29 * time.Second, time.Second, 30 * time.Second, true},
		{30 * time.Second, time.Second, 30 * time.Second, false}, // reported by the wait before
		{59 * time.Second, 2 * time.Second, 30 * time.Second, true},
		{time.Second, time.Second, 0, false},
	} {
		if got := crosses(tt.waited, tt.next, tt.every); got != tt.want {
			t.Errorf("crosses(%s, %s, %s) = %v, want %v", tt.waited, tt.next, tt.every, got, tt.want)
		}
	}
}

// TestOrderedWaitsSpendNoRetries: a request that waited for its turn many
// times, on both collectors (more waits than replayAttempts), still has
// all its replay retries when its turn comes: the service dropping its
// first connections (fewer than replayAttempts) does not fail it.
func TestOrderedWaitsSpendNoRetries(t *testing.T) {
	s := newOrderedStack(t)
	s.send(0, "account-3", 0, 1500*time.Millisecond) // slow: its successor waits ~20 times
	next := s.send(1, "account-3", 1, 0)
	s.mu.Lock()
	s.drop[next.ID] = replayAttempts - 2
	s.mu.Unlock()
	s.waitAll(60 * time.Second)
	s.checkOrder("account-3", 2)
	code, rec := s.get(next.ID)
	for deadline := time.Now().Add(10 * time.Second); rec["status"] == "delivering" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, rec = s.get(next.ID) // called back; its outcome is being written
	}
	if code != 200 || rec["status"] != "delivered" || rec["error"] != nil {
		t.Fatalf("the request that waited, then failed to reach the service %d times: %d %v (error %v)", replayAttempts-2, code, rec["status"], rec["error"])
	}
	statuses := []string{}
	for _, h := range rec["history"].([]any) {
		statuses = append(statuses, h.(map[string]any)["status"].(string))
	}
	if !slices.Contains(statuses, "completed") || slices.Contains(statuses, "failed") {
		t.Fatalf("its history %v, want it completed, never failed", statuses)
	}
}

// The collector a test kills: TestOrderedKeySurvivesKill runs this test
// binary again as a process of its own (killedCollectorEnv naming the
// database file, serviceURLEnv the service), which runs a collector on the
// shared embedded database, prints its API URL and runs until it is
// killed. Its leases are short (the message lease, the delivery lease), so
// that the survivor takes its work over within seconds.
const (
	killedCollectorEnv = "ASYNCMESH_TEST_KILLED_COLLECTOR_DB"
	serviceURLEnv      = "ASYNCMESH_TEST_KILLED_COLLECTOR_SERVICE"
)

func TestKilledCollectorProcess(t *testing.T) {
	path := os.Getenv(killedCollectorEnv)
	if path == "" {
		t.Skip("run by TestOrderedKeySurvivesKill only")
	}
	db, err := embedded.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMessageLease(2 * time.Second)
	leaseMargin = time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		ReplayURL: os.Getenv(serviceURLEnv), ReplaySecret: replaySecret, Secrets: testSecrets{},
		RelayInterval: 50 * time.Millisecond, RelayAge: 50 * time.Millisecond,
		APIURL: "http://" + ln.Addr().String(), AdminToken: []byte(adminToken), Logger: slog.New(slog.DiscardHandler),
	}, db.Store(), db.Queue())
	if err != nil {
		t.Fatal(err)
	}
	c.sender.Timeout = 2 * time.Second
	go func() { _ = http.Serve(ln, c.Handler()) }()
	fmt.Printf("api http://%s\n", ln.Addr())
	_ = c.Run(context.Background()) // until killed
}

// startKilled runs collector n as a process of its own (TestKilledCollectorProcess)
// and returns it; killing it is the test's.
func (s *orderedStack) startKilled(n int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledCollectorProcess$", "-test.v")
	cmd.Env = append(os.Environ(), killedCollectorEnv+"="+s.path, serviceURLEnv+"="+s.service.URL)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if url, ok := strings.CutPrefix(lines.Text(), "api "); ok {
			s.mu.Lock()
			s.apis[n] = url
			s.mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return cmd
		}
	}
	s.t.Fatalf("the collector process printed no API URL: %v", lines.Err())
	return nil
}

// checkOrderAfterKill checks key's n requests as checkOrder does, where a
// killed collector may have run a request or sent its callback without
// recording it (so that another runs it, or calls back, again): the first
// callbacks come in intake order, and no run of a request comes before
// the first callback of the one before it.
func (s *orderedStack) checkOrderAfterKill(key string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	called := -1 // the last request called back
	seen := map[int]bool{}
	for _, ev := range s.events[key] {
		var what string
		var i int
		if _, err := fmt.Sscanf(ev, "%s %d", &what, &i); err != nil {
			s.t.Fatalf("event %q", ev)
		}
		switch {
		case what == "run" && i > called+1:
			s.t.Fatalf("key %s: request %d ran before request %d was called back; events %v", key, i, i-1, s.events[key])
		case what == "callback" && !seen[i]:
			if i != called+1 {
				s.t.Fatalf("key %s: request %d called back after request %d; events %v", key, i, called, s.events[key])
			}
			seen[i], called = true, i
		}
	}
	if called != n-1 {
		s.t.Fatalf("key %s: the last request called back is %d of %d", key, called, n)
	}
}

// TestOrderedKeySurvivesKill: a collector process killed (SIGKILL) while
// a key's requests are under way — some taken in by it, queued, running or
// being called back — loses none of them, and the key keeps its order: the
// survivor on the same embedded store takes its work over once its leases
// end, and runs and calls back the rest in intake order, one at a time.
func TestOrderedKeySurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a collector process and kills it")
	}
	s := newOrderedStack(t)
	s.stops[0]()
	killed := s.startKilled(0)
	const n, killAt = 24, 12
	for i := range n {
		sleep := time.Duration(0)
		if i%3 == 0 {
			sleep = 150 * time.Millisecond // in flight when the kill comes
		}
		via := i % 2
		if i > killAt {
			via = 1
		}
		s.send(via, "account-9", i, sleep)
		if i == killAt {
			// Killed as the receiver takes request 4's callback: the
			// callback may be the killed one's, not yet recorded, and the
			// requests after it are queued, waiting, on both collectors.
			s.waitEvent("account-9", "callback 4", 30*time.Second)
			if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.waitAll(90 * time.Second)
	s.checkOrderAfterKill("account-9", n)
	s.mu.Lock()
	t.Logf("events of the key: %v", s.events["account-9"])
	s.mu.Unlock()
}
