//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestStalledBrokerTimedOutIntakeNeverRuns reproduces, through the real
// Envoy, the path where callers were told 503 and their request ran all the
// same: a collector with the embedded store and the RabbitMQ queue (no
// outbox: intake writes the record, then publishes and waits for the
// broker's confirm) reaches the broker through a loopback proxy that this
// test freezes — no byte forwarded either way, nothing closed — while
// callers send async requests, and thaws around the filter's
// collectorTimeout (2 s in examples/rules.yaml). The records commit at once,
// their confirms come just before, at or after the moment the filter gives
// up and answers 503 (or, for onCollectorDown: passthrough, serves the
// request itself), and the publishes held in the proxy reach the broker
// after. Whatever the timing: a request whose caller was told it failed, or
// was served synchronously, is never run through the collector nor called
// back; every 202 is run and called back exactly once.
func TestStalledBrokerTimedOutIntakeNeverRuns(t *testing.T) {
	raw := os.Getenv("ASYNCMESH_TEST_AMQP_URL")
	if raw == "" {
		t.Skip("ASYNCMESH_TEST_AMQP_URL is not set")
	}
	broker, err := neturl.Parse(raw)
	if err != nil || broker.Host == "" {
		t.Fatalf("ASYNCMESH_TEST_AMQP_URL: %q: %v", raw, err)
	}
	fz := startFreezer(t, broker.Host)
	s := backendStackWith(t, func(o *stack.Options) {
		u := *broker
		u.Host = fz.addr()
		o.CollectorAMQPURL = u.String()
	}, "ASYNCMESH_TEST_AMQP_URL")
	if fz.accepted() == 0 {
		t.Fatal("the collector did not connect to the broker through the proxy")
	}
	// The queue works through the proxy before it stalls.
	resp, body := doAt(t, s, "POST", "/slow?ms=10&warmup=1", `{}`, "content-type", "application/json")
	id, _ := accepted(t, resp, body)
	waitCallbackAt(t, s, id)

	type sent struct {
		path, id, traceID string
		status            int
		err               error
	}
	var mu sync.Mutex
	var all []sent
	post := func(path string) {
		req, _ := http.NewRequest("POST", s.EnvoyURL+path, strings.NewReader(`{"pay":1}`))
		req.Header.Set("content-type", "application/json")
		r := sent{path: path}
		resp, err := client.Do(req)
		if err != nil {
			r.err = err
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			r.status, r.id, r.traceID = resp.StatusCode, resp.Header.Get("x-async-request-id"), resp.Header.Get("x-async-trace-id")
		}
		mu.Lock()
		all = append(all, r)
		mu.Unlock()
	}
	// Thawed well before the timeout (202s), just before the collector's
	// answer margin, around it and around the filter's timeout, and after.
	holds := []time.Duration{1200 * time.Millisecond, 1750 * time.Millisecond, 1900 * time.Millisecond,
		2000 * time.Millisecond, 2100 * time.Millisecond, 2400 * time.Millisecond}
	for round, hold := range holds {
		fz.freeze()
		start := time.Now()
		var wg sync.WaitGroup
		for i := range 5 {
			path := fmt.Sprintf("/slow?ms=10&round=%d&n=%d", round, i)
			if i%5 == 4 {
				path = fmt.Sprintf("/soft?ms=10&round=%d&n=%d", round, i)
			}
			wg.Add(1)
			go func() { defer wg.Done(); post(path) }()
		}
		time.Sleep(time.Until(start.Add(hold)))
		fz.thaw()
		wg.Wait()
		time.Sleep(300 * time.Millisecond)
	}

	var ids []string
	for _, r := range all {
		if r.status == 202 {
			ids = append(ids, r.id)
		}
	}
	lost, _ := countCallbacks(t, s, ids, 60*time.Second)
	// Time for whatever the collector still holds to run, if it were to: the
	// publishes the proxy held, the workers' grace after the deadline, the
	// outbox relay's age and interval.
	time.Sleep(6 * time.Second)

	svcLog, _ := os.ReadFile(s.LogPath("service"))
	var svcLines []string
	for _, line := range strings.Split(string(svcLog), "\n") {
		if strings.Contains(line, "service: answered slow request") {
			svcLines = append(svcLines, line)
		}
	}
	seen := func(traceID string) (lines []string) {
		for _, l := range svcLines {
			if strings.Contains(l, "trace_id="+traceID) {
				lines = append(lines, l)
			}
		}
		return lines
	}
	callbacks := map[string]int{}
	for _, r := range receivedAt(t, s) {
		callbacks[r.TraceID]++
	}
	told := map[int]int{}
	committed := 0 // refused or served synchronously, with a record stored
	for _, r := range all {
		if r.err != nil {
			t.Errorf("%s: %v", r.path, r.err)
			continue
		}
		told[r.status]++
		if r.traceID == "" {
			t.Errorf("%s: no trace id (status %d)", r.path, r.status)
			continue
		}
		lines, recs := seen(r.traceID), records(t, s, r.traceID)
		switch r.status {
		case 202: // accepted: run once, through the collector, called back once
			if len(lines) != 1 || !strings.Contains(lines[0], "request_id="+r.id) {
				t.Errorf("%s (accepted %s): the service saw it %d times, want once as the collector's replay: %q", r.path, r.id, len(lines), lines)
			}
			if callbacks[r.traceID] != 1 {
				t.Errorf("%s (accepted %s): called back %d times", r.path, r.id, callbacks[r.traceID])
			}
			if len(recs) != 1 || recs[0].Status != "delivered" {
				t.Errorf("%s (accepted %s): records %+v, want one delivered", r.path, r.id, recs)
			}
		case 200, 503: // served synchronously, or told it failed
			want := map[int]int{200: 1, 503: 0}[r.status]
			if len(lines) != want || callbacks[r.traceID] != 0 {
				t.Errorf("%s (told %d): the service saw it %d times (want %d), called back %d times", r.path, r.status, len(lines), want, callbacks[r.traceID])
			}
			for _, rec := range recs {
				if rec.Status != "dead" || !strings.HasPrefix(rec.Error, "abandoned:") || rec.reached("processing") {
					t.Errorf("%s (told %d): record %s is %s (%q), history %v; want dead, abandoned before it ran", r.path, r.status, rec.ID, rec.Status, rec.Error, rec.History)
				}
			}
			committed += len(recs)
		default:
			t.Errorf("%s: answered %d", r.path, r.status)
		}
	}
	colLog, _ := os.ReadFile(s.LogPath("collector"))
	t.Logf("stalled broker: %d requests, answers %v; %d of the 503s and 200s had their record committed; %d of %d accepted never called back; collector logged %d publish failures",
		len(all), told, committed, lost, len(ids), strings.Count(string(colLog), "intake: publish failed"))
	if committed == 0 {
		t.Error("no request was refused after its record committed: the stall did not hit the path under test")
	}
	if told[202] == 0 {
		t.Error("no request was accepted: the rounds thawed early enough for none")
	}
}

// storedRecord is what the operator's search says of a record.
type storedRecord struct {
	ID, Status, Error string
	History           []struct{ Status string }
}

func (r storedRecord) reached(status string) bool {
	for _, h := range r.History {
		if h.Status == status {
			return true
		}
	}
	return false
}

// records searches s's collector for the records of a trace id.
func records(t *testing.T, s *stack.Stack, traceID string) []storedRecord {
	t.Helper()
	resp, err := s.OperatorGet(context.Background(), "/v1/requests?traceId="+traceID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct{ Records []storedRecord }
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != 200 {
		t.Fatalf("search by trace id %s: %d %v", traceID, resp.StatusCode, err)
	}
	return page.Records
}

// freezer is a loopback TCP proxy to target that the test can freeze:
// while frozen it forwards no byte in either direction and closes nothing,
// as a stalled broker (or a partition without resets) looks from the
// collector.
type freezer struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	thawed chan struct{} // nil while flowing; closed at thaw
	conns  []net.Conn
	n      int
}

func startFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	go f.serve()
	t.Cleanup(func() {
		f.thaw()
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

func (f *freezer) accepted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *freezer) freeze() {
	f.mu.Lock()
	if f.thawed == nil {
		f.thawed = make(chan struct{})
	}
	f.mu.Unlock()
}

func (f *freezer) thaw() {
	f.mu.Lock()
	if f.thawed != nil {
		close(f.thawed)
		f.thawed = nil
	}
	f.mu.Unlock()
}

// wait blocks while frozen.
func (f *freezer) wait() {
	f.mu.Lock()
	ch := f.thawed
	f.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func (f *freezer) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.DialTimeout("tcp", f.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns, f.n = append(f.conns, c, u), f.n+1
		f.mu.Unlock()
		go f.pipe(u, c)
		go f.pipe(c, u)
	}
}

// pipe copies src to dst, holding what it read while frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
