package collector

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Endpoint limits (docs/architecture.md, "Endpoint limits"): a rule's
// callback.rateLimit and callback.maxInFlight bound the callbacks to one
// endpoint across every collector of a store, without a store write per
// callback. Each collector that delivers to a limited endpoint writes a
// heartbeat into the endpoint's state about once a second
// (store.EndpointLimiter) and takes its share of the budget: 1/N of it, N
// being the collectors whose heartbeat is fresh, and never more than what
// the others' heartbeats leave (a collector advertises what it may use
// until its next heartbeat, so the sum holds while N changes). Locally, a
// token bucket and a count of callbacks in flight enforce the share.
//
// A callback that finds no token or no place goes back to the queue with a
// short delay (queue.RetryAfter) before it is claimed: it holds neither a
// delivery worker nor a lease, and spends no attempt of the rule's retries.
// The delivery message names the endpoint and its limits (taskMessage.Limit)
// so that the check comes before the claim; the first attempt, made by the
// worker that executed the request, is checked before the result's write
// (finishRun), and when refused the result is written alone and its
// delivery message follows.

const (
	// limitBeatEvery is how often a collector writes its heartbeat on each
	// limited endpoint it delivers to.
	limitBeatEvery = time.Second
	// limitStaleAfter: a heartbeat older than this no longer counts (its
	// collector stopped, or lost the store).
	limitStaleAfter = 3 * time.Second
	// limitFenceAfter: a collector whose own heartbeat has not landed for
	// this long takes no more callbacks to the endpoint, before the others
	// stop counting it (limitStaleAfter) and take its share. Clocks of the
	// collectors must agree within limitStaleAfter-limitFenceAfter.
	limitFenceAfter = 2 * time.Second
	// limitIdleAfter: an endpoint without a callback here for this long is
	// forgotten, and its heartbeat withdrawn.
	limitIdleAfter = 5 * time.Second
	// maxLimitedEndpoints bounds the endpoints a collector tracks; a
	// callback to one more waits (reason "capacity").
	maxLimitedEndpoints = 10_000
	// maxLimiters bounds the heartbeats in one endpoint's state: a collector
	// past it gets no share.
	maxLimiters = 256
	// maxWaitingKnown bounds the waiting callbacks remembered per endpoint
	// (to spread their retries, see refuse).
	maxWaitingKnown = 10_000
	// limitHoldMax bounds how long a refused delivery message waits for
	// its token or place at the collector before it goes back to the queue
	// (hold): about the smallest delay the queues give (RabbitMQ's first
	// delay bucket).
	limitHoldMax = 250 * time.Millisecond
	// limitNoShareWait is about the delay of a callback refused by a
	// collector that has no share of its endpoint's budget.
	limitNoShareWait = 250 * time.Millisecond
	// limitMaxWait bounds the delay of a refused callback.
	limitMaxWait = 30 * time.Second
	// limitWaitGrace: a refused callback not back this long after it was
	// due no longer counts as waiting here.
	limitWaitGrace = 500 * time.Millisecond
)

// endpointLimit is what a delivery message says of its endpoint's limits
// (the envelope's at publication; the live rule's apply at the attempt).
type endpointLimit struct {
	Endpoint    string  `json:"endpoint"`
	PerSecond   float64 `json:"perSecond,omitempty"`
	Burst       int     `json:"burst,omitempty"`
	MaxInFlight int     `json:"maxInFlight,omitempty"`
}

// limitOf is the limit of e's callback, nil when it sets none.
func limitOf(e *envelope.Envelope) *endpointLimit {
	if e == nil || !e.Callback.Limited() {
		return nil
	}
	l := &endpointLimit{Endpoint: endpointOf(e), MaxInFlight: e.Callback.MaxInFlight}
	if r := e.Callback.RateLimit; r != nil {
		l.PerSecond, l.Burst = r.PerSecond, max(r.Burst, 1)
	}
	return l
}

// check validates a limit read from a message.
func (l *endpointLimit) check() error {
	if len(l.Endpoint) != 32 {
		return fmt.Errorf("endpoint %q is not an endpoint id", l.Endpoint)
	}
	if _, err := hex.DecodeString(l.Endpoint); err != nil {
		return fmt.Errorf("endpoint %q is not an endpoint id", l.Endpoint)
	}
	if !l.limited() {
		return fmt.Errorf("endpoint %s: no limit", l.Endpoint)
	}
	var r *rules.RateLimit
	if l.PerSecond != 0 {
		r = &rules.RateLimit{PerSecond: l.PerSecond, Burst: l.Burst}
	}
	return rules.CheckLimits(r, l.MaxInFlight)
}

func (l *endpointLimit) limited() bool { return l.PerSecond > 0 || l.MaxInFlight > 0 }

// share is one collector's part of an endpoint's budget. A negative Slots
// or an infinite Rate is no bound.
type share struct {
	Rate  float64
	Burst float64
	Slots int
}

// computeShare is collector self's share of lim, given the fresh
// heartbeats of the others and self's own demand (nil: wanting more). The
// budget is divided max-min fair by demand (fillRate, fillSlots): a
// collector that was not starved over its last interval needs what it used
// (with headroom for the rate), the starved ones split the rest equally,
// and what no one needs is spread over all of them; when every collector is
// starved (or says nothing of its demand) that is 1/N each, the places'
// remainder one each to the first collectors by id. Each collector computes
// the whole division from the same heartbeats, and takes its part — never
// more than the others' heartbeats leave: a collector that has not lowered
// its share yet (it learns of a newcomer, or of another's demand, at its
// next heartbeat) keeps the other's small until it has. The burst is shared
// as the rate is, at least one.
func computeShare(others []store.EndpointLimiter, self string, demand *store.EndpointDemand, lim endpointLimit) share {
	n := len(others) + 1
	ids := make([]string, 0, n)
	demands := make([]*store.EndpointDemand, 0, n)
	var usedRate float64
	usedSlots := 0
	for _, o := range others {
		ids = append(ids, o.Collector)
		demands = append(demands, o.Demand)
		usedRate += max(0, o.Rate) // a negative figure must not make room
		usedSlots += max(0, o.InFlight)
	}
	ids = append(ids, self)
	demands = append(demands, demand)
	// by id: the places' remainder goes to the first ones
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(ids[a], ids[b]) })
	sortedDemands := make([]*store.EndpointDemand, n)
	selfAt := 0
	for k, i := range order {
		sortedDemands[k] = demands[i]
		if i == n-1 {
			selfAt = k
		}
	}
	sh := share{Rate: math.Inf(1), Burst: math.Inf(1), Slots: -1}
	if lim.PerSecond > 0 {
		target := fillRate(lim.PerSecond, sortedDemands)[selfAt]
		sh.Rate = max(0, min(target, lim.PerSecond-usedRate))
		sh.Burst = 0
		if sh.Rate > 0 {
			sh.Burst = max(1, float64(max(lim.Burst, 1))*sh.Rate/lim.PerSecond)
		}
	}
	if c := lim.MaxInFlight; c > 0 {
		target := fillSlots(c, sortedDemands)[selfAt]
		sh.Slots = max(0, min(target, c-usedSlots))
	}
	return sh
}

const (
	// rateHeadroom: a collector that was not starved needs the rate it used
	// times this, plus rateFloor of the limit (so that an idle one can start
	// at once, and one whose demand grows has room before it is starved).
	rateHeadroom = 1.1
	rateFloor    = 0.01
)

// fillRate divides limit between collectors of the given demands (nil:
// starved), max-min fair: each not starved gets its need (rateHeadroom,
// rateFloor) unless that is over the level the starved ones get, and what
// is left when every need is met is spread evenly. The parts add up to
// limit.
func fillRate(limit float64, demands []*store.EndpointDemand) []float64 {
	n := len(demands)
	need := make([]float64, n)
	for i, d := range demands {
		need[i] = math.Inf(1)
		if d != nil && !d.Starved {
			// A heartbeat is another collector's word, read back from the
			// store: a negative or absurd figure must not raise the others'
			// parts over the limit.
			need[i] = max(0, min(d.Rate, limit))*rateHeadroom + limit*rateFloor
		}
	}
	return maxMinFill(limit, need)
}

// maxMinFill is the max-min fair division of total by needs (+Inf: as much
// as it can get); when every need is met, the rest is spread evenly.
func maxMinFill(total float64, need []float64) []float64 {
	n := len(need)
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmpFloat(need[a], need[b]) })
	out := make([]float64, n)
	left := total
	for k, i := range idx {
		level := left / float64(n-k)
		if need[i] > level {
			for _, j := range idx[k:] {
				out[j] = level
			}
			return out
		}
		out[i] = need[i]
		left -= need[i]
	}
	for i := range out { // every need met: the rest evenly
		out[i] += left / float64(n)
	}
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// fillSlots divides c places between collectors of the given demands (by
// collector id), max-min fair as fillRate: one not starved needs the most
// it had in flight; the starved ones split the rest, its remainder one each
// to the first by id; places no one needs go one each to the first by id.
// The parts add up to c.
func fillSlots(c int, demands []*store.EndpointDemand) []int {
	n := len(demands)
	out := make([]int, n)
	starved := make([]bool, n)
	idx := make([]int, 0, n)
	for i, d := range demands {
		starved[i] = d == nil || d.Starved
		if !starved[i] && (d.InFlight < 0 || d.InFlight > c) { // see fillRate
			d = &store.EndpointDemand{InFlight: min(max(d.InFlight, 0), c)}
			demands[i] = d
		}
		idx = append(idx, i)
	}
	// the not starved by need, then the starved (stable: by id)
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case starved[a] != starved[b]:
			if starved[a] {
				return 1
			}
			return -1
		case starved[a]:
			return 0
		}
		return demands[a].InFlight - demands[b].InFlight
	})
	left := c
	for k, i := range idx {
		rest := idx[k:]
		level := left / len(rest)
		if starved[i] || demands[i].InFlight > level {
			// the rest split evenly, the remainder to the first by id
			slices.Sort(rest)
			for r, j := range rest {
				out[j] = level
				if r < left%len(rest) {
					out[j]++
				}
			}
			return out
		}
		out[i] = demands[i].InFlight
		left -= out[i]
	}
	for i := range out { // every need met: the rest evenly, by id
		out[i] += left / n
		if i < left%n {
			out[i]++
		}
	}
	return out
}

// freshOthers is the heartbeats of e other than self's, without the stale
// ones, by collector id.
func freshOthers(e []store.EndpointLimiter, self string, now time.Time) []store.EndpointLimiter {
	out := make([]store.EndpointLimiter, 0, len(e))
	for _, o := range e {
		if o.Collector != self && now.Sub(o.Seen) < limitStaleAfter {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b store.EndpointLimiter) int { return strings.Compare(a.Collector, b.Collector) })
	return out
}

// limiter enforces this collector's shares.
type limiter struct {
	eps       store.Endpoints // nil: the store keeps no endpoints; each collector takes the whole budget
	self      string          // this collector's id in the heartbeats
	log       *slog.Logger
	throttled *prometheus.CounterVec
	tracked   prometheus.Gauge
	now       func() time.Time
	kick      chan struct{} // an endpoint waits for its first share
	admitted  atomic.Int64  // callbacks admitted (tests and benchmarks read it)
	// holdMax bounds how long a refused delivery message waits here for
	// its token or place before it goes back to the queue (0: never), and
	// maxHolders how many wait so across endpoints (they hold a delivery
	// worker each).
	holdMax    time.Duration
	maxHolders int
	holders    int // l.mu

	mu   sync.Mutex
	ends map[string]*limitState
}

// limitState is one limited endpoint's local state.
type limitState struct {
	lim                   endpointLimit
	url, protocol, caller string
	known                 bool  // a share was computed (and, with a store, written)
	sh                    share // in effect
	tokens                float64
	filled                time.Time // when tokens was computed
	inFlight              int
	lastUse               time.Time
	lastBeat              time.Time            // when the last heartbeat landed
	latency               time.Duration        // how long a place is held, on average (recent)
	waiting               map[string]time.Time // refused message keys, when they are due back
	holders               int                  // callbacks waiting here for a token or a place (hold)
	freed                 chan struct{}        // closed (and replaced) when a place frees
	// The demand since the last heartbeat (reported in the next one).
	since   time.Time
	started int  // callbacks admitted
	peak    int  // most in flight at once
	starved bool // some were refused for want of a token or a place
}

func newLimiter(st store.Store, log *slog.Logger, reg *prometheus.Registry) *limiter {
	l := &limiter{self: collectorID(), log: log, now: time.Now, kick: make(chan struct{}, 1), ends: map[string]*limitState{},
		holdMax: limitHoldMax, maxHolders: 16,
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_callbacks_throttled_total",
			Help: "Callbacks put back on the queue by an endpoint's rateLimit or maxInFlight, by reason (rate, inflight, share: waiting for this collector's share, capacity: too many limited endpoints)."}, []string{"reason"}),
		tracked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "asyncmesh_collector_limited_endpoints",
			Help: "Limited endpoints this collector delivers to (and heartbeats on)."}),
	}
	l.eps, _ = store.EndpointsOf(st)
	if reg != nil {
		reg.MustRegister(l.throttled, l.tracked)
	}
	return l
}

// collectorID names this collector in heartbeats: unique per process.
func collectorID() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	rand.Read(b)
	if len(host) > 64 {
		host = host[:64]
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// ticket is an admitted callback: a token taken and a place in flight.
type ticket struct {
	l    *limiter
	s    *limitState
	id   string
	at   time.Time // admitted
	used bool      // an attempt was made (deliver); else the token is given back
	once sync.Once
}

func (t *ticket) release() {
	t.once.Do(func() {
		t.l.mu.Lock()
		defer t.l.mu.Unlock()
		t.s.inFlight--
		close(t.s.freed) // wakes the callbacks holding for a place
		t.s.freed = make(chan struct{})
		if t.used { // the places' pace, for the spread of waits (refuse)
			held := t.l.now().Sub(t.at)
			if t.s.latency == 0 {
				t.s.latency = held
			}
			t.s.latency = (4*t.s.latency + held) / 5
		}
		if !t.used && !math.IsInf(t.s.sh.Rate, 1) {
			t.s.tokens = min(t.s.sh.Burst, t.s.tokens+1)
		}
	})
}

type ticketKey struct{}

// state is lim's endpoint's state, created when new (nil past
// maxLimitedEndpoints), with lim in effect: a lower limit applies at once, a
// higher one from the next heartbeat. l.mu held.
func (l *limiter) state(lim endpointLimit, now time.Time) *limitState {
	s := l.ends[lim.Endpoint]
	if s == nil {
		if len(l.ends) >= maxLimitedEndpoints {
			return nil
		}
		s = &limitState{lim: lim, filled: now, waiting: map[string]time.Time{}, freed: make(chan struct{}), since: now}
		l.ends[lim.Endpoint] = s
		l.tracked.Set(float64(len(l.ends)))
		if l.eps == nil {
			s.setShare(computeShare(nil, l.self, nil, lim), now)
			s.known = true
		}
		return s
	}
	if s.lim != lim {
		s.lim = lim
		sh := computeShare(nil, l.self, nil, lim)
		if l.eps == nil {
			s.setShare(sh, now)
		} else {
			s.setShare(share{Rate: min(s.sh.Rate, sh.Rate), Burst: min(s.sh.Burst, sh.Burst), Slots: minSlots(s.sh.Slots, sh.Slots)}, now)
		}
	}
	return s
}

// admit takes a token and a place for a callback to lim's endpoint; key
// names the message. Refused, it returns the delay after which to try again
// (spread: refuse) and why.
func (l *limiter) admit(lim endpointLimit, key string) (*ticket, time.Duration, string) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	t, s, base, reason := l.tryAdmit(lim, key, now)
	if t != nil || s == nil {
		return t, base, reason
	}
	return nil, s.refuse(key, now, base), reason
}

// tryAdmit is admit without the spread of a refusal's delay: base is the
// time until a token is due (or a guess, for a place). s is nil past
// maxLimitedEndpoints. l.mu held.
func (l *limiter) tryAdmit(lim endpointLimit, key string, now time.Time) (t *ticket, s *limitState, base time.Duration, reason string) {
	s = l.state(lim, now)
	if s == nil {
		return nil, nil, time.Second + jitter(time.Second), "capacity"
	}
	s.lastUse = now
	if l.eps != nil && (!s.known || now.Sub(s.lastBeat) > limitFenceAfter) {
		select {
		case l.kick <- struct{}{}:
		default:
		}
		return nil, s, 100 * time.Millisecond, "share"
	}
	if s.sh.Slots >= 0 && s.inFlight >= s.sh.Slots {
		return nil, s, 20 * time.Millisecond, "inflight"
	}
	if !math.IsInf(s.sh.Rate, 1) {
		s.fill(now)
		if s.tokens < 1 {
			wait := time.Second
			if s.sh.Rate > 0 {
				wait = time.Duration((1 - s.tokens) / s.sh.Rate * float64(time.Second))
			}
			return nil, s, max(wait, time.Millisecond), "rate"
		}
		s.tokens--
	}
	s.inFlight++
	s.started++
	s.peak = max(s.peak, s.inFlight)
	delete(s.waiting, key)
	l.admitted.Add(1)
	return &ticket{l: l, s: s, id: lim.Endpoint, at: now}, s, 0, ""
}

// hold makes a delivery message refused for want of a token or a place
// wait here for it, up to holdMax, instead of going back to the queue: the
// queue brings waiting callbacks back at random moments (and on RabbitMQ
// no sooner than its smallest delay bucket, 250 ms), so a share's tokens
// and places would otherwise go unused between two returns — the budget
// is used only when a callback is at hand the moment it frees. Few wait so:
// per endpoint about the tokens due within holdMax (or the share's places),
// and maxHolders across endpoints, since each holds a delivery worker (not
// a lease, not an attempt). The rest go back to the queue (refuse).
func (l *limiter) hold(ctx context.Context, lim endpointLimit, key string) (*ticket, time.Duration, string) {
	l.mu.Lock()
	t, s, base, reason := l.tryAdmit(lim, key, l.now())
	if t != nil || s == nil {
		l.mu.Unlock()
		return t, base, reason
	}
	holdable := (reason == "rate" || reason == "inflight") && l.holdMax > 0 &&
		l.holders < l.maxHolders && s.holders < s.maxHold(l.holdMax) &&
		(reason != "rate" || base <= l.holdMax)
	if !holdable {
		defer l.mu.Unlock()
		return nil, s.refuse(key, l.now(), base), reason
	}
	l.holders++
	s.holders++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.holders--
		s.holders--
		l.mu.Unlock()
	}()
	deadline := time.Now().Add(l.holdMax)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		left := time.Until(deadline)
		l.mu.Lock()
		freed := s.freed
		l.mu.Unlock()
		if reason == "rate" {
			left = min(left, base)
		}
		if left <= 0 {
			break
		}
		timer.Reset(left)
		select {
		case <-ctx.Done():
			l.mu.Lock()
			defer l.mu.Unlock()
			return nil, s.refuse(key, l.now(), base), reason
		case <-timer.C:
		case <-freed:
		}
		l.mu.Lock()
		t, s2, b, r := l.tryAdmit(lim, key, l.now())
		l.mu.Unlock()
		if t != nil || s2 != s || (r != "rate" && r != "inflight") || time.Now().After(deadline) {
			if t != nil {
				return t, 0, ""
			}
			base, reason = b, r
			break
		}
		base, reason = b, r
		if reason == "rate" && base > time.Until(deadline) {
			break
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return nil, s.refuse(key, l.now(), base), reason
}

// maxHold is how many callbacks may hold for this endpoint at once: the
// tokens due within d at the share's rate, and no more than the share's
// places, at least one.
func (s *limitState) maxHold(d time.Duration) int {
	n := math.MaxInt
	if !math.IsInf(s.sh.Rate, 1) {
		n = int(math.Ceil(s.sh.Rate * d.Seconds()))
	}
	if s.sh.Slots >= 0 {
		n = min(n, s.sh.Slots)
	}
	return max(1, n)
}

func minSlots(a, b int) int {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
}

// refuse is the delay of a refused callback: base (until the next token,
// say), spread over the time the callbacks waiting here need at the
// share's pace, so that the queue brings them back about as fast as they
// can go and no faster (a fixed short delay would make every waiting
// callback a queue round trip every few milliseconds).
func (s *limitState) refuse(key string, now time.Time, base time.Duration) time.Duration {
	s.starved = true // it would have used more (a callback that held, then went, did not count)
	wait := s.spreadWait(now, base)
	if _, ok := s.waiting[key]; ok || len(s.waiting) < maxWaitingKnown {
		s.waiting[key] = now.Add(wait)
	}
	return wait
}

// spreadWait is refuse's delay. The waiting callbacks come back at random
// over the spread, at four times the pace: a token bucket fed at random
// moments only at its own rate would leave some of its tokens unused.
func (s *limitState) spreadWait(now time.Time, base time.Duration) time.Duration {
	pace := s.sh.Rate // callbacks per second this collector may start
	if s.sh.Slots >= 0 {
		// A place frees about every attempt's latency (before a measure,
		// take a tenth of a second).
		lat := max(s.latency, time.Millisecond)
		if s.latency == 0 {
			lat = 100 * time.Millisecond
		}
		pace = min(pace, float64(s.sh.Slots)/lat.Seconds())
	}
	if pace <= 0 {
		// No share here (the others hold the budget, or a newcomer waits
		// for them to make room): the callback is for another collector,
		// which the queue may bring it to — soon, not after a second.
		return limitNoShareWait + jitter(limitNoShareWait)
	}
	spread := min(limitMaxWait, time.Duration(float64(len(s.waiting)+1)/(4*pace)*float64(time.Second)))
	return min(limitMaxWait, max(base, time.Millisecond)+jitter(spread))
}

func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(mrand.Int64N(int64(d)))
}

// fill adds the tokens of the time since the last fill.
func (s *limitState) fill(now time.Time) {
	if dt := now.Sub(s.filled).Seconds(); dt > 0 {
		s.tokens = min(s.sh.Burst, s.tokens+dt*s.sh.Rate)
	}
	s.filled = now
}

// setShare puts sh in effect; l.mu held.
func (s *limitState) setShare(sh share, now time.Time) {
	if !math.IsInf(s.sh.Rate, 1) {
		s.fill(now)
	}
	if !s.known {
		// A new share starts full, as an idle endpoint's: bounded by the
		// burst, which the others' shares leave room for.
		s.tokens = sh.Burst
	}
	s.sh = sh
	s.tokens = min(s.tokens, sh.Burst)
	s.filled = now
}

// admitMessage checks a delivery message against its endpoint's limits
// (when it names them): admitted, the returned context carries the ticket
// and done releases it; refused, the error asks the queue for a delayed
// redelivery.
func (l *limiter) admitMessage(ctx context.Context, m queue.Message) (context.Context, func(), error) {
	if !bytes.Contains(m.Body, []byte(`"limit"`)) {
		return ctx, func() {}, nil
	}
	var msg struct {
		Limit *endpointLimit `json:"limit"`
	}
	if err := json.Unmarshal(m.Body, &msg); err != nil || msg.Limit == nil {
		return ctx, func() {}, nil // the claim's poison handling, and deliver's check, apply
	}
	if err := msg.Limit.check(); err != nil {
		l.log.Warn("limits: a delivery message names a bad limit; checked at the attempt instead", "id", m.Key, "err", err)
		return ctx, func() {}, nil
	}
	t, wait, reason := l.hold(ctx, *msg.Limit, m.Key)
	if t == nil {
		l.throttled.WithLabelValues(reason).Inc()
		return ctx, nil, queue.RetryAfter(wait, "endpoint limit: "+reason)
	}
	return context.WithValue(ctx, ticketKey{}, t), t.release, nil
}

// admitFirst checks the first attempt, which the worker that executed
// record r makes after the result's write: ok false means no token or
// place now, and the result goes without the start of its delivery.
func (l *limiter) admitFirst(ctx context.Context, r *store.Record) (context.Context, bool, func()) {
	lim := limitOf(r.Envelope)
	if lim == nil {
		return ctx, true, func() {}
	}
	t, _, reason := l.admit(*lim, r.ID)
	if t == nil {
		l.throttled.WithLabelValues(reason).Inc()
		return ctx, false, func() {}
	}
	return context.WithValue(ctx, ticketKey{}, t), true, t.release
}

// enter is deliver's check, with the live rule's limits of e: the ticket
// the message was admitted with (marked used: its token is spent), or, for
// a callback admitted under other limits or none (a message from before
// its rule set them, or whose endpoint changed), one taken now. Refused
// then, the record stays leased until its lease ends: rare, and bounded by
// the lease.
func (l *limiter) enter(ctx context.Context, e *envelope.Envelope, id string) (func(), error) {
	lim := limitOf(e)
	t, _ := ctx.Value(ticketKey{}).(*ticket)
	if lim == nil {
		if t != nil {
			l.mu.Lock()
			t.used = true
			l.mu.Unlock()
		}
		return func() {}, nil
	}
	if t != nil && t.id == lim.Endpoint {
		l.mu.Lock()
		defer l.mu.Unlock()
		t.used = true
		if s := l.state(*lim, l.now()); s != nil && s.url == "" {
			s.url, s.protocol, s.caller = e.Callback.URL, e.Callback.Protocol, e.Caller
		}
		return t.release, nil // deliver gives the place back once the receiver answered
	}
	nt, wait, reason := l.admit(*lim, id)
	if nt == nil {
		l.throttled.WithLabelValues(reason).Inc()
		return nil, queue.RetryAfter(wait, "endpoint limit: "+reason)
	}
	l.mu.Lock()
	nt.used = true
	if nt.s.url == "" {
		nt.s.url, nt.s.protocol, nt.s.caller = e.Callback.URL, e.Callback.Protocol, e.Caller
	}
	l.mu.Unlock()
	return nt.release, nil
}

// run writes the heartbeats until ctx ends, then withdraws them.
func (l *limiter) run(ctx context.Context) error {
	t := time.NewTicker(limitBeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			l.withdrawAll(wctx)
			return nil
		case <-t.C:
			l.beatAll(ctx, false)
		case <-l.kick:
			l.beatAll(ctx, true)
		}
	}
}

// beatAll heartbeats on every endpoint (only those without a share when
// onlyNew), and forgets the idle ones.
func (l *limiter) beatAll(ctx context.Context, onlyNew bool) {
	now := l.now()
	l.mu.Lock()
	ids := make([]string, 0, len(l.ends))
	for id, s := range l.ends {
		for k, due := range s.waiting {
			// Not back by then: another collector took it, or it is done.
			if now.Sub(due) > limitWaitGrace {
				delete(s.waiting, k)
			}
		}
		if idle := now.Sub(s.lastUse) > limitIdleAfter && s.inFlight == 0; idle && l.eps == nil {
			delete(l.ends, id)
			continue
		}
		if !onlyNew || !s.known || now.Sub(s.lastBeat) > limitFenceAfter {
			ids = append(ids, id)
		}
	}
	l.tracked.Set(float64(len(l.ends)))
	l.mu.Unlock()
	if l.eps == nil {
		return
	}
	for _, id := range ids {
		if err := l.beat(ctx, id); err != nil && ctx.Err() == nil {
			l.log.Warn("limits: writing the heartbeat; this collector takes no more of the endpoint's callbacks until one lands",
				"endpoint", id, "err", err)
		}
	}
}

// beat writes this collector's heartbeat on endpoint id and puts the share
// it computed in effect; an idle endpoint's heartbeat is withdrawn and the
// endpoint forgotten.
func (l *limiter) beat(ctx context.Context, id string) error {
	l.mu.Lock()
	s := l.ends[id]
	if s == nil {
		l.mu.Unlock()
		return nil
	}
	lim, cur, inFlight := s.lim, s.sh, s.inFlight
	url, protocol, caller := s.url, s.protocol, s.caller
	idle := l.now().Sub(s.lastUse) > limitIdleAfter && inFlight == 0
	demand := s.takeDemand(l.now())
	if idle {
		s.known = false // until the heartbeat is back: the others may take its share
	}
	l.mu.Unlock()
	var sh share
	var at time.Time
	_, err := l.eps.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
		at = l.now()
		if e.URL == "" && url != "" {
			e.URL, e.Protocol, e.Caller, e.UpdatedAt = url, protocol, caller, at.UTC()
		}
		others := freshOthers(e.Limiters, l.self, at)
		if idle || len(others) >= maxLimiters {
			e.Limiters = others
			sh = share{Slots: 0}
			return nil
		}
		sh = computeShare(others, l.self, demand, lim)
		// What this collector may use until its next heartbeat: the new
		// share, or the one in effect until this write lands, or what is
		// in flight already (a lowered share drains).
		adv := store.EndpointLimiter{Collector: l.self, Seen: at.UTC(), Demand: demand}
		if lim.PerSecond > 0 {
			adv.Rate = max(sh.Rate, finite(cur.Rate))
		}
		if lim.MaxInFlight > 0 {
			adv.InFlight = max(sh.Slots, cur.Slots, inFlight)
		}
		e.Limiters = append(others, adv)
		return nil
	})
	if err != nil {
		return fmt.Errorf("heartbeat on endpoint %s: %w", id, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s2 := l.ends[id]; s2 != s {
		return nil
	}
	if idle {
		if l.now().Sub(s.lastUse) > limitIdleAfter && s.inFlight == 0 {
			delete(l.ends, id)
			l.tracked.Set(float64(len(l.ends)))
		}
		return nil
	}
	if s.lim != lim { // changed meanwhile: the next heartbeat computes it
		sh = share{Rate: min(sh.Rate, s.sh.Rate), Burst: min(sh.Burst, s.sh.Burst), Slots: minSlots(sh.Slots, s.sh.Slots)}
	}
	s.setShare(sh, at)
	s.known, s.lastBeat = true, at
	return nil
}

// takeDemand is the demand since the last heartbeat, and starts the next
// interval. l.mu held.
func (s *limitState) takeDemand(now time.Time) *store.EndpointDemand {
	// An interval shorter than a quarter second (a first heartbeat, kicked
	// by the first callback) counts as one: a rate from a few milliseconds
	// means nothing.
	dt := max(now.Sub(s.since), limitBeatEvery/4).Seconds()
	d := &store.EndpointDemand{Rate: float64(s.started) / dt, InFlight: max(s.peak, s.inFlight), Starved: s.starved}
	s.since, s.started, s.peak, s.starved = now, 0, s.inFlight, false
	return d
}

// finite is x, or 0 for no bound (a share before the first heartbeat).
func finite(x float64) float64 {
	if math.IsInf(x, 0) {
		return 0
	}
	return x
}

// withdrawAll removes this collector's heartbeats (it stops): the others
// take its share at their next heartbeat instead of after limitStaleAfter.
func (l *limiter) withdrawAll(ctx context.Context) {
	if l.eps == nil {
		return
	}
	l.mu.Lock()
	ids := make([]string, 0, len(l.ends))
	for id := range l.ends {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	for _, id := range ids {
		_, err := l.eps.UpdateEndpoint(ctx, id, func(e *store.Endpoint) error {
			e.Limiters = freshOthers(e.Limiters, l.self, l.now())
			return nil
		})
		if err != nil {
			l.log.Info("limits: withdrawing the heartbeat on stopping; it goes stale instead", "endpoint", id, "err", err)
		}
	}
}
