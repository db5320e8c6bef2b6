// Command chaos is asyncmesh's fault test (make chaos): under a steady load
// of async requests through Envoy it repeatedly kills the collector with
// SIGKILL and starts it again, restarts RabbitMQ, stops Elasticsearch for a
// while, and stalls the callback receiver. Then it counts from the
// receiver's side, by webhook-id: every request that got a 202 must be
// called back (none lost), duplicates are counted, and no record may be left
// in a non-terminal status. It prints one summary line and exits 1 on any
// loss or stuck record. Everything runs on 127.0.0.1 and is bounded in time.
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
	flag.Parse()
	if *envoy == "" {
		fmt.Fprintln(os.Stderr, "chaos: -envoy: required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sum, err := run(ctx, *envoy, *bin, *rate, *dur, *every, *settle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	fmt.Println(sum.String("chaos"))
	if sum.Failed() {
		os.Exit(1)
	}
}

func run(ctx context.Context, envoy, bin string, rate float64, dur, every, settle time.Duration) (tally.Summary, error) {
	start := time.Now()
	sum := tally.Summary{Faults: map[string]int{}}
	root, _ := filepath.Abs(".")
	work, err := os.MkdirTemp("", "asyncmesh-chaos-")
	if err != nil {
		return sum, err
	}
	opt := stack.Options{Root: root, BinDir: bin, EnvoyBin: envoy, WorkDir: work,
		AMQPURL: os.Getenv("ASYNCMESH_TEST_AMQP_URL"), ESURL: os.Getenv("ASYNCMESH_TEST_ES_URL")}
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

	// Count at the receiver, by webhook-id, until every 202 is called back.
	err = sum.Settle(ctx, accepted, settle, func(ctx context.Context) (map[string]int, error) {
		return tally.Received(ctx, http.DefaultClient, s.ReceiverURL)
	}, func(ctx context.Context) (int, error) { return tally.Unfinished(ctx, s.OperatorGet) })
	sum.Took = time.Since(start)
	return sum, err
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
