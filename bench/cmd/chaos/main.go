// Command chaos is asyncmesh's fault test (make chaos): under a steady load
// of async requests through Envoy it repeatedly kills the collector with
// SIGKILL and starts it again, restarts RabbitMQ, stops Elasticsearch for a
// while, and stalls the callback receiver. Then it counts from the
// receiver's side, by webhook-id: every request that got a 202 must be
// called back (none lost), duplicates are counted, and no record may be left
// in a non-terminal status.
//
// Beside that unordered load, a few ordering keys (the demo's orders rule
// with ordering: {header: x-account}) each get a request after another,
// the next sent once the one before was answered 202, throughout the
// faults: SIGKILL of the collector among them. Per key, the first callback
// of each request must arrive in intake order and not before the receiver
// answered the previous one (tally.Order): any pair that does not is an
// order violation.
//
// It prints one summary line and exits 1 on any loss, stuck record or
// order violation. Everything runs on 127.0.0.1 and is bounded in time.
//
// RabbitMQ and Elasticsearch faults run when ASYNCMESH_TEST_AMQP_URL and
// ASYNCMESH_TEST_ES_URL are set (scripts/with-backends.sh); otherwise the
// collector runs on the embedded backend and only the collector and
// receiver faults run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/bench/load"
	"github.com/asyncmesh/asyncmesh/bench/tally"
	"github.com/asyncmesh/asyncmesh/examples/stack"
)

func main() {
	envoy := flag.String("envoy", "", "envoy binary")
	bin := flag.String("bin", "build", "directory of the built binaries")
	rate := flag.Float64("rate", 100, "async requests per second")
	dur := flag.Duration("duration", 60*time.Second, "how long the load and the faults last")
	every := flag.Duration("every", 8*time.Second, "time between faults")
	settle := flag.Duration("settle", 4*time.Minute, "how long to wait for the last callbacks after the load")
	var ord ordered
	flag.IntVar(&ord.keys, "ordered-keys", 4, "ordering keys that get ordered requests (0: none)")
	flag.DurationVar(&ord.every, "ordered-every", 1500*time.Millisecond, "time between the requests of one ordering key")
	flag.Parse()
	if *envoy == "" {
		fmt.Fprintln(os.Stderr, "chaos: -envoy: required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sum, err := run(ctx, *envoy, *bin, *rate, *dur, *every, *settle, ord)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	fmt.Println(sum.String("chaos"))
	if sum.Failed() {
		os.Exit(1)
	}
}

// ordered is the ordered load: keys keys, a request every every on each.
type ordered struct {
	keys  int
	every time.Duration
}

// orderedRule is the line after which the chaos run adds the ordering key
// to the demo's orders rule.
const orderedRule = "match: {pathPrefix: /orders}"

func run(ctx context.Context, envoy, bin string, rate float64, dur, every, settle time.Duration, ord ordered) (tally.Summary, error) {
	start := time.Now()
	sum := tally.Summary{Faults: map[string]int{}}
	root, _ := filepath.Abs(".")
	work, err := os.MkdirTemp("", "asyncmesh-chaos-")
	if err != nil {
		return sum, err
	}
	opt := stack.Options{Root: root, BinDir: bin, EnvoyBin: envoy, WorkDir: work,
		AMQPURL: os.Getenv("ASYNCMESH_TEST_AMQP_URL"), ESURL: os.Getenv("ASYNCMESH_TEST_ES_URL")}
	if ord.keys > 0 {
		raw, err := os.ReadFile(filepath.Join(root, "examples", "rules.yaml"))
		if err != nil {
			return sum, err
		}
		line := "\n    " + orderedRule + "\n"
		if !strings.Contains(string(raw), line) {
			return sum, fmt.Errorf("examples/rules.yaml: no orders rule (%q) to order", orderedRule)
		}
		opt.Rules = strings.Replace(string(raw), line, line+"    ordering: {header: x-account}\n", 1)
	}
	s, err := stack.Start(ctx, opt)
	if err != nil {
		return sum, err
	}
	defer s.Close()
	// Quick faults first, so that a short run still sees every kind.
	faults := []string{"kill9", "stall"}
	if opt.AMQPURL != "" {
		faults = append(faults, "rabbitmq")
	}
	if opt.ESURL != "" {
		faults = append(faults, "elasticsearch") // its restart takes ~30 s
	}

	var mu sync.Mutex
	accepted := map[string]bool{}
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		load.Run(ctx, load.Params{Rate: rate, Duration: dur, Grace: 20 * time.Second}, func(ctx context.Context, _ int) error {
			req, _ := http.NewRequestWithContext(ctx, "POST", s.EnvoyURL+"/slow?ms=20", strings.NewReader(`{"chaos":true}`))
			req.Header.Set("content-type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return errors.New(resp.Status) // not accepted (collector down: 503), so not owed a callback
			}
			mu.Lock()
			accepted[resp.Header.Get("x-async-request-id")] = true
			mu.Unlock()
			return nil
		})
	}()

	// The ordered load: per key, one request after another.
	keys := map[string][]string{} // by key, the accepted ids in intake order
	var orderedWG sync.WaitGroup
	for k := range ord.keys {
		key := fmt.Sprintf("chaos-%d", k)
		orderedWG.Go(func() {
			end := time.Now().Add(dur)
			for n := 0; time.Now().Before(end) && ctx.Err() == nil; n++ {
				next := time.Now().Add(ord.every)
				id, err := sendOrdered(ctx, s.EnvoyURL, key, n)
				if err == nil {
					mu.Lock()
					keys[key] = append(keys[key], id)
					accepted[id] = true
					mu.Unlock()
				}
				time.Sleep(time.Until(next))
			}
		})
	}

	deadline := time.Now().Add(dur)
	for i := 0; time.Now().Add(every).Before(deadline); i++ {
		select {
		case <-ctx.Done():
			return sum, ctx.Err()
		case <-time.After(every):
		}
		f := faults[i%len(faults)]
		fmt.Fprintf(os.Stderr, "chaos: %s fault %s\n", time.Since(start).Round(time.Second), f)
		if err := inject(ctx, s, root, f); err != nil {
			return sum, fmt.Errorf("fault %s: %w", f, err)
		}
		sum.Faults[f]++
	}
	<-loadDone
	orderedWG.Wait()

	// Count at the receiver, by webhook-id, until every 202 is called back.
	stuck, err := sum.Settle(ctx, accepted, settle, func(ctx context.Context) (map[string]int, error) {
		return tally.Received(ctx, http.DefaultClient, s.ReceiverURL)
	}, func(ctx context.Context) ([]tally.Stuck, error) { return tally.UnfinishedRecords(ctx, s.OperatorGet) })
	if len(stuck) > 0 {
		describeStuck(ctx, s, stuck, accepted)
	}
	if err == nil && ord.keys > 0 {
		var got []tally.Callback
		if got, err = tally.Callbacks(ctx, http.DefaultClient, s.ReceiverURL); err == nil {
			for _, why := range sum.Order(keys, got) {
				fmt.Fprintln(os.Stderr, "chaos: order violation:", why)
			}
		}
	}
	sum.Took = time.Since(start)
	return sum, err
}

// sendOrdered sends request n of ordering key key and returns its id once
// it is accepted (202).
func sendOrdered(ctx context.Context, envoyURL, key string, n int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", envoyURL+"/orders?ms=20", strings.NewReader(fmt.Sprintf(`{"chaos":"ordered","key":%q,"n":%d}`, key, n)))
	req.Header.Set("content-type", "application/json")
	req.Header.Set("x-account", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", errors.New(resp.Status)
	}
	return resp.Header.Get("x-async-request-id"), nil
}

// inject applies one fault and returns once the system is back.
func inject(ctx context.Context, s *stack.Stack, root, fault string) error {
	switch fault {
	case "kill9":
		if err := s.StopCollector(true); err != nil {
			return err
		}
		time.Sleep(time.Second)
		if err := s.StartCollector(); err != nil {
			return err
		}
		return s.WaitCollector(ctx)
	case "stall":
		resp, err := http.Post(s.ReceiverURL+"/stall?for=5s", "", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	case "rabbitmq":
		return script(root, "stop-rabbitmq.sh", "start-rabbitmq.sh", 3*time.Second)
	case "elasticsearch":
		return script(root, "stop-elasticsearch.sh", "start-elasticsearch.sh", 5*time.Second)
	}
	return fmt.Errorf("unknown fault %s", fault)
}

// script stops a server, waits, and starts it again (the scripts keep its port).
func script(root, stopScript, startScript string, down time.Duration) error {
	for i, name := range []string{stopScript, startScript} {
		if i == 1 {
			time.Sleep(down)
		}
		if out, err := exec.Command(filepath.Join(root, "scripts", name)).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", name, err, out)
		}
	}
	return nil
}

// describeStuck prints, for each record left unfinished (at most 20), its
// history and attempts as the operator API reads it now, whether its caller
// got a 202, the callbacks the receiver got for it, and the collector's log
// lines that name it; and writes the same into stuck.txt in the work
// directory (kept, with the logs).
func describeStuck(ctx context.Context, s *stack.Stack, stuck []tally.Stuck, accepted map[string]bool) {
	var b strings.Builder
	got, err := tally.Callbacks(ctx, http.DefaultClient, s.ReceiverURL)
	if err != nil {
		fmt.Fprintf(&b, "reading the receiver's callbacks: %v\n", err)
	}
	byID := map[string][]tally.Callback{}
	for _, c := range got {
		byID[c.WebhookID] = append(byID[c.WebhookID], c)
	}
	text, _ := os.ReadFile(s.LogPath("collector"))
	for _, st := range tally.Reread(ctx, s.OperatorGet, stuck, 20) {
		b.WriteString(st.Report(accepted[st.ID], byID[st.ID]))
		for line := range strings.Lines(string(text)) {
			if strings.Contains(line, st.ID) {
				fmt.Fprintf(&b, "  collector: %s", line)
			}
		}
	}
	fmt.Fprint(os.Stderr, b.String())
	path := filepath.Join(filepath.Dir(s.LogPath("collector")), "stuck.txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: writing the stuck records:", err)
		return
	}
	fmt.Fprintf(os.Stderr, "chaos: %d records left unfinished, described in %s (logs beside it)\n", len(stuck), path)
}
