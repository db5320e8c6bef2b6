package collector

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
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
			if got := computeShare(tt.others, tt.self, nil, tt.lim); got != tt.want {
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
	l.holdMax = 0 // refusals go back to the queue at once: the fake clock does not sleep
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
	if !tk.used {
		t.Fatal("the ticket was not marked used")
	}
	if _, err := l.enter(context.Background(), e, "id2"); err == nil {
		t.Fatal("without a ticket, past maxInFlight: admitted")
	}
	leave() // the receiver answered: the place is free before the handler ends
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

// The shares follow the collectors' demands: with demand above the limit
// at some collectors and below it at others, the callbacks started across
// all of them reach at least 90 % of the limit (and never more than it,
// plus the buckets' bursts), and at least 90 % of the places are in use.
// A deterministic schedule on a fake clock, in steps of a millisecond: a
// busy collector has callbacks waiting at every step (as the queue brings
// them back); a light one gets a new callback every so often, which tries
// again at each step until it goes; each collector heartbeats every
// second, at its own offset.
func TestSharesFollowUnevenDemand(t *testing.T) {
	const busy = 0 // every step
	type want struct {
		every  time.Duration // busy: always; else a new callback this often; -1: one at the start, then none
		holdMS int           // how long a callback holds its place
	}
	tests := []struct {
		name string
		lim  endpointLimit
		cols []want
	}{
		{"rate: one busy, one light", endpointLimit{Endpoint: testEndpoint, PerSecond: 50, Burst: 5}, []want{{busy, 0}, {200 * time.Millisecond, 0}}},
		{"rate: one busy, one gone idle", endpointLimit{Endpoint: testEndpoint, PerSecond: 50, Burst: 5}, []want{{busy, 0}, {-1, 0}}},
		{"rate: both busy", endpointLimit{Endpoint: testEndpoint, PerSecond: 50, Burst: 5}, []want{{busy, 0}, {busy, 0}}},
		{"rate: two busy, one light", endpointLimit{Endpoint: testEndpoint, PerSecond: 90, Burst: 3}, []want{{busy, 0}, {100 * time.Millisecond, 0}, {busy, 0}}},
		{"rate: three light, one busy", endpointLimit{Endpoint: testEndpoint, PerSecond: 40, Burst: 4}, []want{{250 * time.Millisecond, 0}, {500 * time.Millisecond, 0}, {time.Second, 0}, {busy, 0}}},
		{"places: one busy, one light", endpointLimit{Endpoint: testEndpoint, MaxInFlight: 10}, []want{{busy, 50}, {300 * time.Millisecond, 50}}},
		{"places: two busy, one light", endpointLimit{Endpoint: testEndpoint, MaxInFlight: 20}, []want{{busy, 30}, {busy, 30}, {time.Second, 100}}},
		{"both: one busy, one light", endpointLimit{Endpoint: testEndpoint, PerSecond: 100, Burst: 10, MaxInFlight: 8}, []want{{busy, 50}, {100 * time.Millisecond, 50}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			eps := &memEndpoints{eps: map[string]store.Endpoint{}}
			type col struct {
				l       *limiter
				w       want
				backlog int
				next    time.Time
				held    []*ticket
				until   []time.Time
			}
			start := clock.now()
			var cols []*col
			for i, w := range tt.cols {
				c := &col{l: testLimiter(eps, clock, string(rune('a'+i))), w: w, next: start}
				if w.every < 0 {
					c.backlog = 1
				}
				cols = append(cols, c)
			}
			const warmup, measure = 10 * time.Second, 20 * time.Second
			started, lightStarted, lightOffered := 0, 0, 0
			var placeSteps, steps int
			ctx := context.Background()
			for step := 0; step < int((warmup+measure)/time.Millisecond); step++ {
				clock.add(time.Millisecond)
				now := clock.now()
				measuring := now.Sub(start) >= warmup
				for i, c := range cols {
					if now.Sub(start)%limitBeatEvery == time.Duration(i*137)*time.Millisecond%limitBeatEvery {
						c.l.beatAll(ctx, false)
					}
					for k := 0; k < len(c.held); k++ { // places freed
						if !now.Before(c.until[k]) {
							c.held[k].release()
							c.held = slices.Delete(c.held, k, k+1)
							c.until = slices.Delete(c.until, k, k+1)
							k--
						}
					}
					if c.w.every > 0 && !now.Before(c.next) {
						c.backlog++
						c.next = c.next.Add(c.w.every)
						if measuring {
							lightOffered++
						}
					}
					if c.w.every == busy || c.backlog > 0 {
						tk, _, _ := c.l.admit(tt.lim, "k")
						if tk == nil {
							if c.w.every == -1 && now.Sub(start) < time.Second {
								continue
							}
							continue
						}
						tk.used = true
						if c.backlog > 0 {
							c.backlog--
						}
						if measuring {
							started++
							if c.w.every != busy {
								lightStarted++
							}
						}
						if c.w.holdMS == 0 {
							tk.release()
						} else {
							c.held = append(c.held, tk)
							c.until = append(c.until, now.Add(time.Duration(c.w.holdMS)*time.Millisecond))
						}
					}
				}
				if measuring {
					steps++
					for _, c := range cols {
						placeSteps += len(c.held)
					}
					if tt.lim.MaxInFlight > 0 {
						total := 0
						for _, c := range cols {
							total += len(c.held)
						}
						if total > tt.lim.MaxInFlight {
							t.Fatalf("%v: %d in flight, limit %d", now.Sub(start), total, tt.lim.MaxInFlight)
						}
					}
				}
			}
			rate := float64(started) / measure.Seconds()
			places := float64(placeSteps) / float64(steps)
			t.Logf("%.1f callbacks/s (light ones: %d of %d offered), %.2f in flight on average", rate, lightStarted, lightOffered, places)
			if lim := tt.lim.PerSecond; lim > 0 {
				bursts := 0.0
				for range cols {
					bursts += float64(tt.lim.Burst)
				}
				if rate < 0.9*lim {
					t.Errorf("%.1f callbacks/s, limit %g/s: under 90 %%", rate, lim)
				}
				if float64(started) > lim*measure.Seconds()+bursts {
					t.Errorf("%d callbacks in %v, limit %g/s", started, measure, lim)
				}
			}
			if c := tt.lim.MaxInFlight; c > 0 && tt.lim.PerSecond == 0 && places < 0.9*float64(c) {
				t.Errorf("%.2f places in use on average, limit %d: under 90 %%", places, c)
			}
			// The light collectors are served: what they were offered goes
			// (but for the last few, still waiting at the end).
			if lightOffered > 0 && float64(lightStarted) < 0.95*float64(lightOffered)-2 {
				t.Errorf("light collectors started %d of the %d callbacks they had", lightStarted, lightOffered)
			}
		})
	}
}

// The division by demand: max-min fair, the parts add up to the budget.
func TestFillByDemand(t *testing.T) {
	light := func(rate float64, inFlight int) *store.EndpointDemand {
		return &store.EndpointDemand{Rate: rate, InFlight: inFlight}
	}
	starved := &store.EndpointDemand{Starved: true, Rate: 1000, InFlight: 1000}
	rates := []struct {
		name    string
		limit   float64
		demands []*store.EndpointDemand
		want    []float64
	}{
		{"all starved or silent: even", 90, []*store.EndpointDemand{nil, starved, nil}, []float64{30, 30, 30}},
		{"a light one needs its rate with headroom", 100, []*store.EndpointDemand{light(10, 0), starved}, []float64{12, 88}},
		{"a light one over the level gets the level", 100, []*store.EndpointDemand{light(60, 0), starved}, []float64{50, 50}},
		{"none starved: the rest evenly", 100, []*store.EndpointDemand{light(10, 0), light(20, 0)}, []float64{12 + 32.5, 23 + 32.5}},
		{"idle: the floor", 100, []*store.EndpointDemand{light(0, 0), starved, starved}, []float64{1, 49.5, 49.5}},
	}
	for _, tt := range rates {
		t.Run(tt.name, func(t *testing.T) {
			got := fillRate(tt.limit, tt.demands)
			var sum float64
			for i := range got {
				sum += got[i]
				if math.Abs(got[i]-tt.want[i]) > 1e-9 {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
			if math.Abs(sum-tt.limit) > 1e-9 {
				t.Fatalf("parts add up to %g, limit %g", sum, tt.limit)
			}
		})
	}
	slots := []struct {
		name    string
		c       int
		demands []*store.EndpointDemand
		want    []int
	}{
		{"all starved: even, the remainder to the first by id", 7, []*store.EndpointDemand{nil, starved, nil}, []int{3, 2, 2}},
		{"a light one keeps what it had in flight", 10, []*store.EndpointDemand{starved, light(0, 1), starved}, []int{5, 1, 4}},
		{"an idle one none", 4, []*store.EndpointDemand{light(0, 0), starved}, []int{0, 4}},
		{"a light one over the level gets the level", 5, []*store.EndpointDemand{light(0, 4), starved}, []int{3, 2}},
		{"none starved: the rest one each by id", 10, []*store.EndpointDemand{light(0, 1), light(0, 2), light(0, 0)}, []int{4, 4, 2}},
		{"more collectors than places", 2, []*store.EndpointDemand{starved, starved, starved}, []int{1, 1, 0}},
	}
	for _, tt := range slots {
		t.Run(tt.name, func(t *testing.T) {
			got := fillSlots(tt.c, tt.demands)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			sum := 0
			for _, n := range got {
				sum += n
			}
			if sum != tt.c {
				t.Fatalf("parts add up to %d, limit %d", sum, tt.c)
			}
		})
	}
	// computeShare takes its part, and never more than the others leave.
	others := []store.EndpointLimiter{{Collector: "b", Seen: time.Now(), Rate: 50, InFlight: 5, Demand: light(10, 1)}}
	lim := endpointLimit{Endpoint: "e", PerSecond: 100, Burst: 10, MaxInFlight: 10}
	if got, want := computeShare(others, "a", nil, lim), (share{Rate: 50, Burst: 5, Slots: 5}); got != want {
		t.Fatalf("while b still advertises half: %+v, want %+v", got, want)
	}
	others[0].Rate, others[0].InFlight = 12, 1
	if got, want := computeShare(others, "a", nil, lim), (share{Rate: 88, Burst: 8.8, Slots: 9}); math.Abs(got.Rate-want.Rate) > 1e-9 || math.Abs(got.Burst-want.Burst) > 1e-9 || got.Slots != want.Slots {
		t.Fatalf("once b lowered its share: %+v, want %+v", got, want)
	}
}

// A delivery message refused for want of a place holds for it at the
// collector (bounded per endpoint and across endpoints) and goes as soon as
// a place frees; one that cannot hold, or whose token is not due within
// holdMax, goes back to the queue at once.
func TestHoldForAPlace(t *testing.T) {
	l := newLimiter(nil, slog.New(slog.DiscardHandler), nil)
	l.holdMax, l.maxHolders = time.Hour, 4 // no timing in this test: a place frees, or the context ends
	body := func(lim endpointLimit) []byte {
		b, _ := json.Marshal(taskMessage{ID: "id", Limit: &lim})
		return b
	}
	slot := endpointLimit{Endpoint: testEndpoint, MaxInFlight: 1}
	_, first, err := l.admitMessage(context.Background(), queue.Message{Key: "1", Body: body(slot)})
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		_, done, err := l.admitMessage(context.Background(), queue.Message{Key: "2", Body: body(slot)})
		if err == nil {
			done()
		}
		held <- err
	}()
	for { // the second holds
		l.mu.Lock()
		n := l.holders
		l.mu.Unlock()
		if n == 1 {
			break
		}
		runtime.Gosched()
	}
	// The endpoint's one place: no one else holds for it.
	if _, _, err := l.admitMessage(context.Background(), queue.Message{Key: "3", Body: body(slot)}); err == nil {
		t.Fatal("a third admitted past maxInFlight 1")
	} else if _, ok := queue.RetryDelay(err); !ok {
		t.Fatalf("a third: %v, want a delayed redelivery", err)
	}
	first()
	if err := <-held; err != nil {
		t.Fatalf("the held one, once the place freed: %v", err)
	}
	// Its context ends while it holds: back to the queue.
	_, first, _ = l.admitMessage(context.Background(), queue.Message{Key: "4", Body: body(slot)})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			l.mu.Lock()
			n := l.holders
			l.mu.Unlock()
			if n == 1 {
				cancel()
				return
			}
			runtime.Gosched()
		}
	}()
	if _, _, err := l.admitMessage(ctx, queue.Message{Key: "5", Body: body(slot)}); err == nil {
		t.Fatal("admitted past maxInFlight 1")
	} else if _, ok := queue.RetryDelay(err); !ok {
		t.Fatalf("context ended: %v, want a delayed redelivery", err)
	}
	first()
	// A token due later than holdMax: no hold.
	l.holdMax = 100 * time.Millisecond
	slow := endpointLimit{Endpoint: "fedcba9876543210fedcba9876543210", PerSecond: 0.1, Burst: 1}
	if ctx, done, err := l.admitMessage(context.Background(), queue.Message{Key: "6", Body: body(slow)}); err != nil {
		t.Fatal(err)
	} else {
		ctx.Value(ticketKey{}).(*ticket).used = true // its token is spent
		done()
	}
	if _, _, err := l.admitMessage(context.Background(), queue.Message{Key: "7", Body: body(slow)}); err == nil {
		t.Fatal("admitted past the rate")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holders != 0 {
		t.Fatalf("%d still counted as holding", l.holders)
	}
}

// A heartbeat with negative or absurd figures (another collector's word,
// read back from the store) does not raise a share over the limit.
func TestShareIgnoresAbsurdHeartbeats(t *testing.T) {
	lim := endpointLimit{Endpoint: "e", PerSecond: 10, Burst: 2, MaxInFlight: 4}
	for _, o := range []store.EndpointLimiter{
		{Collector: "b", Rate: -100, InFlight: -100, Demand: &store.EndpointDemand{Rate: -100, InFlight: -100}},
		{Collector: "b", Rate: 1e300, InFlight: 1 << 30, Demand: &store.EndpointDemand{Rate: 1e300, InFlight: 1 << 30}},
	} {
		o.Seen = time.Now()
		sh := computeShare([]store.EndpointLimiter{o}, "a", nil, lim)
		if sh.Rate > lim.PerSecond || sh.Rate < 0 || sh.Slots > lim.MaxInFlight || sh.Slots < 0 || math.IsNaN(sh.Rate) {
			t.Fatalf("with %+v: share %+v, limit %+v", o, sh, lim)
		}
	}
}
