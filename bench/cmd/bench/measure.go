package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/bench/load"
	"github.com/asyncmesh/asyncmesh/examples/stack"
	"github.com/asyncmesh/asyncmesh/internal/procs"
)

// Point is one open-loop run at one offered rate.
type Point struct {
	Offered   float64 `json:"offered"`
	Achieved  float64 `json:"achieved"`
	ErrorRate float64 `json:"errorRate"`
	P50ms     float64 `json:"p50ms"`
	P99ms     float64 `json:"p99ms"`
	P999ms    float64 `json:"p999ms"`
}

// Curve is a ladder of offered rates against one target.
type Curve struct {
	Name   string  `json:"name"`
	Points []Point `json:"points"`
	// EnvoyCPUus is Envoy's CPU time per request at a fixed rate below
	// saturation (proxy paths only): the cost of the path, steadier than
	// saturation on a machine whose cores the load generator shares.
	EnvoyCPUus float64 `json:"envoyCpuMicrosPerRequest,omitempty"`
	// CostP99ms is the p99 at that rate (the median of its rounds').
	CostP99ms float64 `json:"p99msAtCostRate,omitempty"`
}

// at is the point measured at an offered rate (the zero Point if none).
func (c Curve) at(rate float64) Point {
	for _, p := range c.Points {
		if p.Offered == rate {
			return p
		}
	}
	return Point{}
}

// Saturation is the highest achieved rate with under 1% errors.
func (c Curve) Saturation() float64 {
	best := 0.0
	for _, p := range c.Points {
		if p.ErrorRate < 0.01 {
			best = max(best, p.Achieved)
		}
	}
	return best
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pointOf(r load.Result) Point {
	return Point{Offered: r.Offered, Achieved: r.Achieved, ErrorRate: r.ErrorRate(),
		P50ms: ms(r.Percentile(50)), P99ms: ms(r.Percentile(99)), P999ms: ms(r.Percentile(99.9))}
}

var client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
	MaxIdleConns: 8192, MaxIdleConnsPerHost: 8192, IdleConnTimeout: 30 * time.Second}}

// request sends one request and checks its status; the body is drained so
// that the connection is reused.
func request(ctx context.Context, method, url, body string, want int, hdrs ...string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return resp, fmt.Errorf("%s %s: %d", method, url, resp.StatusCode)
	}
	return resp, nil
}

// ladder runs do at each rate for step and returns the curve.
func ladder(ctx context.Context, name string, rates []float64, step time.Duration, do func(ctx context.Context, seq int) error) Curve {
	c := Curve{Name: name}
	for _, rate := range rates {
		r := load.Run(ctx, load.Params{Rate: rate, Duration: step, Grace: 5 * time.Second}, do)
		p := pointOf(r)
		logf("  %-44s offered %6.0f/s  achieved %7.1f/s  errors %5.2f%%  p50 %7.2fms  p99 %8.2fms", name, rate, p.Achieved, 100*p.ErrorRate, p.P50ms, p.P99ms)
		c.Points = append(c.Points, p)
		if p.ErrorRate > 0.2 { // far past saturation: higher rates say nothing more
			break
		}
		time.Sleep(time.Second)
	}
	return c
}

// costTarget is one proxy path whose Envoy CPU per request envoyCosts measures.
type costTarget struct {
	pid int
	do  func(ctx context.Context, seq int) error
}

// cost is what envoyCosts measured of one target.
type cost struct {
	cpuUS float64 // Envoy's CPU time per successful request, µs
	p99ms float64 // the median of the rounds' p99 latencies
}

// envoyCosts measures each target at rate: its Envoy's CPU time per
// successful request, and its p99. The targets take turns in rounds of
// d/rounds each, so that whatever else the shared cores do during the
// measurement falls on every path alike rather than on whichever ran at the
// wrong moment; for the same reason the p99 is the median of the rounds'.
func envoyCosts(ctx context.Context, targets []costTarget, rate float64, d time.Duration, rounds int) []cost {
	cpu := make([]float64, len(targets))
	ok := make([]int, len(targets))
	p99s := make([][]float64, len(targets))
	for range rounds {
		for i, t := range targets {
			cpu0 := cpuSeconds(t.pid)
			r := load.Run(ctx, load.Params{Rate: rate, Duration: d / time.Duration(rounds), Grace: 5 * time.Second}, t.do)
			cpu[i] += cpuSeconds(t.pid) - cpu0
			ok[i] += r.OK
			p99s[i] = append(p99s[i], ms(r.Percentile(99)))
		}
	}
	out := make([]cost, len(targets))
	for i := range targets {
		if ok[i] > 0 {
			out[i].cpuUS = cpu[i] / float64(ok[i]) * 1e6
		}
		slices.Sort(p99s[i])
		out[i].p99ms = p99s[i][len(p99s[i])/2]
	}
	return out
}

// receivedSince is what the demo receiver recorded after its first n callbacks.
func receivedSince(s *stack.Stack, n int) ([]received, error) {
	var all []received
	if err := getJSON(context.Background(), s.ReceiverURL+"/received?since="+strconv.Itoa(n), &all); err != nil {
		return nil, fmt.Errorf("reading the receiver's list: %w", err)
	}
	return all, nil
}

// getJSON decodes the 200 answer of a GET into v.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// received is what the demo receiver recorded.
type received struct {
	WebhookID string    `json:"webhookId"`
	At        time.Time `json:"at"`
}

// callbacksAt returns when the receiver got the callback of each id in want,
// waiting until all are in or timeout passes.
func callbacksAt(s *stack.Stack, want map[string]time.Time, timeout time.Duration) map[string]time.Time {
	got := map[string]time.Time{}
	deadline := time.Now().Add(timeout)
	next := 0 // the receiver's list only grows: read what is new
	for {
		if all, err := receivedSince(s, next); err == nil {
			next += len(all)
			for _, r := range all {
				if _, ok := want[r.WebhookID]; ok {
					if _, seen := got[r.WebhookID]; !seen {
						got[r.WebhookID] = r.At
					}
				}
			}
		}
		if len(got) >= len(want) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// postAsync sends one async request through Envoy and expects its 202.
func postAsync(ctx context.Context, s *stack.Stack, path string) (*http.Response, error) {
	return request(ctx, "POST", s.EnvoyURL+path, `{"bench":true}`, http.StatusAccepted, "content-type", "application/json")
}

// acceptedIDs records when each 202 came back, by request id.
type acceptedIDs struct {
	mu sync.Mutex
	at map[string]time.Time
}

// send returns a load function that posts to path and records each 202.
func (a *acceptedIDs) send(s *stack.Stack, path string) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		resp, err := postAsync(ctx, s, path)
		if err != nil {
			return err
		}
		at := time.Now()
		a.mu.Lock()
		a.at[resp.Header.Get("x-async-request-id")] = at
		a.mu.Unlock()
		return nil
	}
}

// accepted runs an open-loop load of async requests and returns when each
// 202 came back, by request id.
func accepted(ctx context.Context, s *stack.Stack, path string, rate float64, d time.Duration) (load.Result, map[string]time.Time) {
	ids := &acceptedIDs{at: map[string]time.Time{}}
	r := load.Run(ctx, load.Params{Rate: rate, Duration: d, Grace: 10 * time.Second}, ids.send(s, path))
	return r, ids.at
}

// Delay summarises accept → callback latencies.
type Delay struct {
	Rate     float64 `json:"rate"`
	Accepted int     `json:"accepted"`
	Received int     `json:"received"`
	P50ms    float64 `json:"p50ms"`
	P99ms    float64 `json:"p99ms"`
	P999ms   float64 `json:"p999ms"`
	// Stages splits the time by the records' statuses (a sample of them).
	Stages []Stage `json:"stages,omitempty"`
}

func delays(rate float64, acc, got map[string]time.Time) Delay {
	var ds []time.Duration
	for id, a := range acc {
		if g, ok := got[id]; ok {
			ds = append(ds, max(g.Sub(a), 0))
		}
	}
	slices.Sort(ds)
	pct := func(p float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		return ms(ds[min(len(ds)-1, int(p/100*float64(len(ds))))])
	}
	return Delay{Rate: rate, Accepted: len(acc), Received: len(got), P50ms: pct(50), P99ms: pct(99), P999ms: pct(99.9)}
}

// Usage is a process's resources over a phase.
type Usage struct {
	Process  string  `json:"process"`
	CPU      float64 `json:"cpuCores"` // CPU seconds per second of the phase
	MaxRSSMB float64 `json:"maxRssMB"`
}

// Pseudo-processes every phase's usage also shows: the bench itself (the
// load generator, on the same cores), and the machine as a whole (every
// process's CPU, from /proc/stat; its RSS is not sampled).
const (
	loadGenerator = "load generator"
	machine       = "machine"
)

// sampler records the CPU time and peak RSS of some processes.
type sampler struct {
	names []string
	pids  []int
	cpu0  []float64
	start time.Time
	peak  []float64
	stop  chan struct{}
	done  chan struct{}
}

func sample(s *stack.Stack, names ...string) *sampler {
	names = append(names, loadGenerator, machine)
	sm := &sampler{names: names, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range names {
		pid := s.PID(n)
		switch {
		case n == loadGenerator:
			pid = os.Getpid()
		case n == machine:
			pid = machinePID
		case pid == 0:
			pid = findPID(backendCmdline[n])
		}
		sm.pids = append(sm.pids, pid)
		sm.cpu0 = append(sm.cpu0, cpuSeconds(pid))
		sm.peak = append(sm.peak, rssMB(pid))
	}
	go func() {
		defer close(sm.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sm.stop:
				return
			case <-t.C:
				for i, pid := range sm.pids {
					sm.peak[i] = max(sm.peak[i], rssMB(pid))
				}
			}
		}
	}()
	return sm
}

func (sm *sampler) end() []Usage {
	close(sm.stop)
	<-sm.done
	wall := time.Since(sm.start).Seconds()
	var out []Usage
	for i, n := range sm.names {
		out = append(out, Usage{Process: n, CPU: (cpuSeconds(sm.pids[i]) - sm.cpu0[i]) / wall, MaxRSSMB: sm.peak[i]})
	}
	return out
}

// backendCmdline is what the command line of a backend server (started
// outside the stack by scripts/with-backends.sh) contains.
var backendCmdline = map[string]string{"elasticsearch": "org.elasticsearch.bootstrap", "rabbitmq": "beam.smp"}

// findPID is the first process whose command line contains pattern, or 0.
func findPID(pattern string) int {
	if pattern == "" {
		return 0
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && strings.Contains(string(b), pattern) {
			return pid
		}
	}
	return 0
}

// machinePID stands for the whole machine in cpuSeconds (no process has it).
const machinePID = -1

// cpuSeconds is a process's user + system CPU time (Linux /proc); for
// machinePID, the busy time of all cores.
func cpuSeconds(pid int) float64 {
	if pid == machinePID {
		return machineBusySeconds()
	}
	return cpuSecondsOf("/proc/" + strconv.Itoa(pid) + "/stat")
}

// machineBusySeconds is the time all cores spent neither idle nor waiting
// for I/O, from the first line of /proc/stat.
func machineBusySeconds() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	busy := 0.0
	for i, v := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / 100 // USER_HZ
}

// cpuSecondsOf reads the user and system time of a process's or a thread's
// stat file.
func cpuSecondsOf(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssMB is a process's resident set size in MB (0 if it is gone).
func rssMB(pid int) float64 {
	st, err := procs.Status(pid, "VmRSS")
	if err != nil {
		return 0
	}
	return st[0] / 1024
}
