package collector

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func TestComputeShare(t *testing.T) {
	now := time.Now()
	hb := func(id string, rate float64, inFlight int) store.EndpointLimiter {
		return store.EndpointLimiter{Collector: id, Seen: now, Rate: rate, InFlight: inFlight}
	}
	lim := endpointLimit{Endpoint: "e", PerSecond: 90, Burst: 9, MaxInFlight: 10}
	tests := []struct {
		name   string
		others []store.EndpointLimiter
		self   string
		lim    endpointLimit
		want   share
	}{
		{"alone: the whole budget", nil, "b", lim, share{Rate: 90, Burst: 9, Slots: 10}},
		{"two settled: half each, the odd place to the first by id", []store.EndpointLimiter{hb("c", 45, 5)}, "b", lim, share{Rate: 45, Burst: 4.5, Slots: 5}},
		{"three settled, first by id", []store.EndpointLimiter{hb("b", 30, 3), hb("c", 30, 3)}, "a", lim, share{Rate: 30, Burst: 3, Slots: 4}},
		{"three settled, last by id", []store.EndpointLimiter{hb("a", 30, 4), hb("b", 30, 3)}, "c", lim, share{Rate: 30, Burst: 3, Slots: 3}},
		{"newcomer: what the others leave, nothing yet", []store.EndpointLimiter{hb("a", 90, 10)}, "b", lim, share{Rate: 0, Burst: 0, Slots: 0}},
		{"newcomer: the part left", []store.EndpointLimiter{hb("a", 60, 8)}, "b", lim, share{Rate: 30, Burst: 3, Slots: 2}},
		{"a draining collector keeps its places counted", []store.EndpointLimiter{hb("a", 45, 9)}, "b", lim, share{Rate: 45, Burst: 4.5, Slots: 1}},
		{"more collectors than places: the first by id get one", []store.EndpointLimiter{hb("a", 0, 1), hb("b", 0, 1)}, "c",
			endpointLimit{MaxInFlight: 2}, share{Rate: math.Inf(1), Burst: math.Inf(1), Slots: 0}},
		{"burst share at least one", []store.EndpointLimiter{hb("a", 1, 0), hb("b", 1, 0), hb("c", 1, 0)}, "d",
			endpointLimit{PerSecond: 4, Burst: 1}, share{Rate: 1, Burst: 1, Slots: -1}},
		{"three, two just joined: the middle one by id gets no odd place", []store.EndpointLimiter{hb("a", 0, 0), hb("c", 0, 0)}, "b", lim, share{Rate: 30, Burst: 3, Slots: 3}},
		{"rate only", nil, "a", endpointLimit{PerSecond: 5, Burst: 5}, share{Rate: 5, Burst: 5, Slots: -1}},
		{"in flight only", []store.EndpointLimiter{hb("z", 0, 2)}, "a", endpointLimit{MaxInFlight: 5}, share{Rate: math.Inf(1), Burst: math.Inf(1), Slots: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := computeShare(tt.others, tt.self, tt.lim); got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFreshOthers(t *testing.T) {
	now := time.Now()
	in := []store.EndpointLimiter{
		{Collector: "z", Seen: now.Add(-time.Second)},
		{Collector: "self", Seen: now},
		{Collector: "old", Seen: now.Add(-limitStaleAfter - time.Millisecond)},
		{Collector: "a", Seen: now},
	}
	got := freshOthers(in, "self", now)
	var ids []string
	for _, o := range got {
		ids = append(ids, o.Collector)
	}
	if !slices.Equal(ids, []string{"a", "z"}) {
		t.Fatalf("got %v", ids)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// memEndpoints is store.Endpoints in memory (compare-and-set by a mutex).
type memEndpoints struct {
	mu     sync.Mutex
	eps    map[string]store.Endpoint
	fail   bool   // every write fails
	during func() // runs as a write begins, once (what happens meanwhile)
}

func (m *memEndpoints) UpdateEndpoint(_ context.Context, id string, fn func(*store.Endpoint) error) (*store.Endpoint, error) {
	if f := m.during; f != nil {
		m.during = nil
		f()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return nil, errors.New("store down")
	}
	e, ok := m.eps[id]
	if !ok {
		e = store.Endpoint{ID: id}
	}
	e.Limiters = slices.Clone(e.Limiters)
	if err := fn(&e); err != nil {
		return nil, err
	}
	m.eps[id] = e
	return &e, nil
}

func (m *memEndpoints) GetEndpoint(_ context.Context, id string) (*store.Endpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.eps[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &e, nil
}

func (m *memEndpoints) ListEndpoints(context.Context, store.EndpointQuery) ([]*store.Endpoint, error) {
	return nil, nil
}

func testLimiter(eps store.Endpoints, clock *fakeClock, id string) *limiter {
	l := newLimiter(nil, slog.New(slog.DiscardHandler), nil)
	l.eps, l.now, l.self = eps, clock.now, id
	return l
}

const testEndpoint = "0123456789abcdef0123456789abcdef"

// The local limiter alone (no shared store): the token bucket gives the
// burst then the rate, an unused ticket gives its token back, and the
// places in flight hold.
func TestLocalLimiter(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := testLimiter(nil, clock, "a")
	lim := endpointLimit{Endpoint: testEndpoint, PerSecond: 10, Burst: 3}
	admitted := 0
	for range 10 {
		if tk, _, _ := l.admit(lim, "k"); tk != nil {
			tk.used = true
			tk.release()
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("a full bucket admitted %d at once, want the burst 3", admitted)
	}
	_, wait, reason := l.admit(lim, "k")
	if reason != "rate" || wait < 100*time.Millisecond || wait > limitMaxWait {
		t.Fatalf("refused %q, wait %v: want rate, about the 100ms to the next token", reason, wait)
	}
	// Over ten seconds, in steps of 10ms: 100 more, and no more.
	admitted = 0
	for range 1000 {
		clock.add(10 * time.Millisecond)
		if tk, _, _ := l.admit(lim, "k"); tk != nil {
			tk.used = true
			tk.release()
			admitted++
		}
	}
	if admitted < 99 || admitted > 101 {
		t.Fatalf("admitted %d in 10s at 10/s", admitted)
	}
	// An admission that makes no attempt (the record was leased, say)
	// gives its token back.
	clock.add(time.Second)
	for range 3 {
		if tk, _, _ := l.admit(lim, "k"); tk != nil {
			tk.release()
		}
	}
	if tk, _, _ := l.admit(lim, "k"); tk == nil {
		t.Fatal("unused tickets spent their tokens")
	} else {
		tk.release()
	}

	slots := endpointLimit{Endpoint: testEndpoint, MaxInFlight: 2}
	var held []*ticket
	for range 5 {
		if tk, _, _ := l.admit(slots, "k"); tk != nil {
			held = append(held, tk)
		}
	}
	if len(held) != 2 {
		t.Fatalf("%d in flight, limit 2", len(held))
	}
	if _, _, reason := l.admit(slots, "k"); reason != "inflight" {
		t.Fatalf("refused %q, want inflight", reason)
	}
	held[0].release()
	held[0].release() // twice: counted once
	again, _, _ := l.admit(slots, "k")
	if again == nil {
		t.Fatal("a released place was not reused")
	}
	if tk, _, _ := l.admit(slots, "k"); tk != nil {
		t.Fatal("a place released twice counted twice")
	}
	again.release()
	held[1].release()
}

// The waits of refused callbacks spread over the time the waiting ones
// need at the share's pace, and stay bounded.
func TestRefusedWaitsSpread(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := testLimiter(nil, clock, "a")
	lim := endpointLimit{Endpoint: testEndpoint, PerSecond: 10, Burst: 1}
	l.admit(lim, "first")
	var maxWait time.Duration
	for i := range 200 {
		_, wait, _ := l.admit(lim, string(rune('a'+i%26))+string(rune('a'+i/26)))
		maxWait = max(maxWait, wait)
	}
	// 200 waiting at 10/s, brought back at four times the pace: over
	// about 5s (a fixed short wait would bring them all back at once).
	if maxWait < 2500*time.Millisecond || maxWait > limitMaxWait {
		t.Fatalf("longest wait %v for 200 waiting at 10/s", maxWait)
	}
}

// The shares of collectors that join and leave an endpoint, each
// heartbeating at its own moments, never add up to more than the budget:
// the places in flight at every step, the rates advertised.
func TestSharesHoldWhileCollectorsComeAndGo(t *testing.T) {
	lims := []endpointLimit{
		{Endpoint: testEndpoint, MaxInFlight: 7},
		{Endpoint: testEndpoint, PerSecond: 30, Burst: 3},
		{Endpoint: testEndpoint, PerSecond: 300, Burst: 30, MaxInFlight: 7},
	}
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 1))
		clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
		eps := &memEndpoints{eps: map[string]store.Endpoint{}}
		lim := lims[seed%uint64(len(lims))]
		maxTotal := 0
		type col struct {
			l      *limiter
			held   []*ticket
			active bool
			beat   time.Time
		}
		var cols []*col
		for i := range 5 {
			cols = append(cols, &col{l: testLimiter(eps, clock, string(rune('a'+i))), active: i == 0})
		}
		ctx := context.Background()
		admittedAt := map[int]int{} // second → admissions
		for step := range 3000 {
			clock.add(time.Duration(rng.IntN(20)) * time.Millisecond)
			c := cols[rng.IntN(len(cols))]
			switch op := rng.IntN(10); {
			case op == 0 && rng.IntN(5) == 0: // a collector starts or stops taking this endpoint's callbacks
				c.active = !c.active
			case op < 6 && c.active:
				if tk, _, _ := c.l.admit(lim, "k"); tk != nil {
					tk.used = true
					c.held = append(c.held, tk)
					admittedAt[int(clock.now().Unix())]++
				}
			case op < 8 && len(c.held) > 0 && rng.IntN(4) == 0: // callbacks take a while: shares drain
				i := rng.IntN(len(c.held))
				c.held[i].release()
				c.held = slices.Delete(c.held, i, i+1)
			}
			// Every collector heartbeats about every second, as run does.
			for _, c := range cols {
				if clock.now().Sub(c.beat) >= limitBeatEvery-time.Duration(rng.IntN(100))*time.Millisecond {
					c.l.beatAll(ctx, false)
					c.beat = clock.now()
				}
			}
			total := 0
			for _, c := range cols {
				total += len(c.held)
			}
			maxTotal = max(maxTotal, total)
			if lim.MaxInFlight > 0 && total > lim.MaxInFlight {
				t.Fatalf("seed %d step %d: %d in flight across collectors, limit %d", seed, step, total, lim.MaxInFlight)
			}
			var rate float64
			for _, h := range eps.eps[testEndpoint].Limiters {
				if clock.now().Sub(h.Seen) < limitStaleAfter {
					rate += h.Rate
				}
			}
			if lim.PerSecond > 0 && rate > lim.PerSecond*1.0001 {
				t.Fatalf("seed %d step %d: advertised rates add up to %.2f/s, limit %g", seed, step, rate, lim.PerSecond)
			}
		}
		if lim.MaxInFlight > 0 && maxTotal < lim.MaxInFlight-2 {
			t.Fatalf("seed %d: at most %d in flight, limit %d: the budget is not used", seed, maxTotal, lim.MaxInFlight)
		}
		for sec, n := range admittedAt {
			if lim.PerSecond == 0 {
				break
			}
			// Per wall second: the rate, plus the bursts that the shares
			// allow (at most one per collector's bucket).
			if float64(n) > lim.PerSecond+float64(len(cols)*lim.Burst) {
				t.Fatalf("seed %d: %d admitted in second %d, limit %g/s", seed, n, sec, lim.PerSecond)
			}
		}
	}
}

// A collector whose heartbeats stop landing (it lost the store) takes no
// more callbacks once its last heartbeat is limitFenceAfter old: before the
// others count it out (limitStaleAfter) and take its share.
func TestLimiterFencesItselfWithoutHeartbeats(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	eps := &memEndpoints{eps: map[string]store.Endpoint{}}
	l := testLimiter(eps, clock, "a")
	lim := endpointLimit{Endpoint: testEndpoint, MaxInFlight: 5}
	if _, _, reason := l.admit(lim, "k"); reason != "share" {
		t.Fatalf("before its first heartbeat: %q, want share", reason)
	}
	l.beatAll(context.Background(), true)
	tk, _, _ := l.admit(lim, "k")
	if tk == nil {
		t.Fatal("refused after its heartbeat")
	}
	tk.release()
	eps.mu.Lock()
	eps.fail = true
	eps.mu.Unlock()
	clock.add(limitFenceAfter - 100*time.Millisecond)
	l.beatAll(context.Background(), false)
	if tk, _, _ := l.admit(lim, "k"); tk == nil {
		t.Fatal("fenced too early")
	} else {
		tk.release()
	}
	clock.add(200 * time.Millisecond)
	if _, _, reason := l.admit(lim, "k"); reason != "share" {
		t.Fatalf("heartbeat %v old: %q, want share (fenced)", limitFenceAfter+100*time.Millisecond, reason)
	}
	if limitFenceAfter >= limitStaleAfter {
		t.Fatal("a collector must fence itself before the others count it out")
	}
}

// An idle endpoint's heartbeat is withdrawn and the endpoint forgotten: its
// share goes back to the others.
func TestIdleEndpointWithdrawn(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	eps := &memEndpoints{eps: map[string]store.Endpoint{}}
	a, b := testLimiter(eps, clock, "a"), testLimiter(eps, clock, "b")
	lim := endpointLimit{Endpoint: testEndpoint, MaxInFlight: 4}
	for _, l := range []*limiter{a, b} {
		l.admit(lim, "k")
		l.beatAll(context.Background(), true)
	}
	// b joined after a took everything: it gets its half once a has
	// lowered its share (a's next heartbeat) and said so (the one after).
	for range 2 {
		a.beatAll(context.Background(), false)
		b.beatAll(context.Background(), false)
	}
	if got := b.ends[testEndpoint].sh.Slots; got != 2 {
		t.Fatalf("b's share %d, want 2 of 4", got)
	}
	clock.add(limitIdleAfter + time.Second)
	b.admit(lim, "k") // b still busy
	a.beatAll(context.Background(), false)
	if _, ok := a.ends[testEndpoint]; ok {
		t.Fatal("idle endpoint still tracked")
	}
	b.beatAll(context.Background(), false)
	if got := b.ends[testEndpoint].sh.Slots; got != 4 {
		t.Fatalf("b's share %d after a left, want 4", got)
	}
}

// admitMessage, the check before the claim, reads the message's limit:
// none, or a bad one, lets the callback through to deliver's check; a
// refusal asks the queue for a delayed redelivery.
func TestAdmitMessage(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := testLimiter(nil, clock, "a")
	body := func(lim *endpointLimit) []byte {
		b, _ := json.Marshal(taskMessage{ID: "id", Limit: lim})
		return b
	}
	lim := &endpointLimit{Endpoint: testEndpoint, MaxInFlight: 1}
	ctx, done, err := l.admitMessage(context.Background(), queue.Message{Key: "id", Body: body(lim)})
	if err != nil || ctx.Value(ticketKey{}) == nil {
		t.Fatalf("first: %v", err)
	}
	_, _, err = l.admitMessage(context.Background(), queue.Message{Key: "id2", Body: body(lim)})
	if d, ok := queue.RetryDelay(err); !ok || d <= 0 {
		t.Fatalf("second, past maxInFlight: %v, want a delayed redelivery", err)
	}
	done()
	for _, b := range [][]byte{body(nil), body(&endpointLimit{Endpoint: "nothex", MaxInFlight: 1}),
		body(&endpointLimit{Endpoint: testEndpoint, MaxInFlight: 1 << 30}), []byte(`{"limit":`)} {
		ctx, done, err := l.admitMessage(context.Background(), queue.Message{Key: "id3", Body: b})
		if err != nil || ctx.Value(ticketKey{}) != nil {
			t.Fatalf("%s: %v", b, err)
		}
		done()
	}
}

// deliver's check uses the message's ticket when it is for the live
// endpoint, and takes one when the message had none.
func TestEnterUsesTheTicket(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := testLimiter(nil, clock, "a")
	e := &envelope.Envelope{Callback: rules.Callback{URL: "http://x.example/cb", Protocol: "http", MaxInFlight: 1}}
	lim := limitOf(e)
	tk, _, _ := l.admit(*lim, "id")
	ctx := context.WithValue(context.Background(), ticketKey{}, tk)
	leave, err := l.enter(ctx, e, "id")
	if err != nil {
		t.Fatalf("with its ticket: %v", err)
	}
	leave()
	if !tk.used {
		t.Fatal("the ticket was not marked used")
	}
	if _, err := l.enter(context.Background(), e, "id2"); err == nil {
		t.Fatal("without a ticket, past maxInFlight: admitted")
	}
	tk.release()
	leave, err = l.enter(context.Background(), e, "id2")
	if err != nil {
		t.Fatalf("without a ticket, a place free: %v", err)
	}
	leave()
	if l.ends[lim.Endpoint].url != e.Callback.URL {
		t.Fatal("the endpoint's URL was not kept for its state")
	}
}

// FuzzDeliveryLimit: whatever a delivery message's body, admitMessage does
// not panic, and admits under a limit only one that passes the rules'
// bounds.
func FuzzDeliveryLimit(f *testing.F) {
	f.Add([]byte(`{"id":"x","limit":{"endpoint":"0123456789abcdef0123456789abcdef","perSecond":5,"burst":2,"maxInFlight":3}}`))
	f.Add([]byte(`{"limit":{"endpoint":"0123456789abcdef0123456789abcdef","perSecond":1e308}}`))
	f.Add([]byte(`{"limit":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
		l := testLimiter(nil, clock, "a")
		ctx, done, err := l.admitMessage(context.Background(), queue.Message{Key: "k", Body: body})
		if err != nil {
			if _, ok := queue.RetryDelay(err); !ok {
				t.Fatalf("refusal is not a delayed redelivery: %v", err)
			}
			return
		}
		defer done()
		tk, _ := ctx.Value(ticketKey{}).(*ticket)
		if tk == nil {
			return
		}
		if err := tk.s.lim.check(); err != nil {
			t.Fatalf("admitted under a bad limit %+v: %v", tk.s.lim, err)
		}
	})
}

// A caller that points callbacks of a limited rule at ever new URLs (with
// allowOverride, each is an endpoint) cannot grow a collector's memory past
// maxLimitedEndpoints: one more waits ("capacity") until some go idle.
func TestLimitedEndpointsBounded(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := testLimiter(nil, clock, "a")
	e := &envelope.Envelope{Caller: "mallory", Callback: rules.Callback{Protocol: "http", MaxInFlight: 1}}
	for i := range maxLimitedEndpoints {
		e.Callback.URL = "https://x.example/" + strconv.Itoa(i)
		tk, _, reason := l.admit(*limitOf(e), "k")
		if tk == nil {
			t.Fatalf("endpoint %d refused: %s", i, reason)
		}
		tk.release()
	}
	e.Callback.URL = "https://x.example/one-more"
	if tk, wait, reason := l.admit(*limitOf(e), "k"); tk != nil || reason != "capacity" || wait <= 0 {
		t.Fatalf("past the bound: %v %v %q", tk, wait, reason)
	}
	if len(l.ends) != maxLimitedEndpoints {
		t.Fatalf("%d endpoints tracked", len(l.ends))
	}
	clock.add(limitIdleAfter + time.Second)
	l.beatAll(context.Background(), false) // without a store: idle ones forgotten
	if tk, _, _ := l.admit(*limitOf(e), "k"); tk == nil {
		t.Fatal("still refused once the others went idle")
	}
}

// Callbacks a collector starts while its heartbeat is being written (under
// the share in effect) are covered by what the heartbeat advertises: a
// newcomer that reads it takes only what is left.
func TestHeartbeatCoversCallbacksStartedDuringItsWrite(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	eps := &memEndpoints{eps: map[string]store.Endpoint{}}
	a, b := testLimiter(eps, clock, "a"), testLimiter(eps, clock, "b")
	lim := endpointLimit{Endpoint: testEndpoint, MaxInFlight: 7}
	a.admit(lim, "k")
	a.beatAll(context.Background(), true) // a alone: all 7
	var held []*ticket
	b.admit(lim, "k")
	eps.during = func() {
		// b registers (taking nothing: a advertises 7), and a starts
		// callbacks under its share of 7 while its own write is under way.
		b.beatAll(context.Background(), true)
		for range 7 {
			if tk, _, _ := a.admit(lim, "k"); tk != nil {
				held = append(held, tk)
			}
		}
	}
	clock.add(limitBeatEvery)
	a.beatAll(context.Background(), false) // a's share is now 4, but 7 are in flight
	clock.add(10 * time.Millisecond)
	b.beatAll(context.Background(), false)
	var bHeld int
	for range 7 {
		if tk, _, _ := b.admit(lim, "k"); tk != nil {
			bHeld++
		}
	}
	if len(held)+bHeld > lim.MaxInFlight {
		t.Fatalf("a %d + b %d in flight, limit %d", len(held), bHeld, lim.MaxInFlight)
	}
	if len(held) != 7 {
		t.Fatalf("a started %d during its heartbeat, want 7 (its share then)", len(held))
	}
}
