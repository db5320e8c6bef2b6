// Command chaoscluster is asyncmesh's cluster fault test (make
// chaos-cluster). In network namespaces it creates itself, joined by one
// bridge (nothing is added to the machine's own namespace), it runs:
//
//   - service A: two pods (its Envoy with the compiled filter, and the
//     service) and three collectors, each in a namespace of its own, which
//     both Envoys balance over; collector i replays through pod i%2;
//   - service B: one pod with its own collector, on the same clusters
//     under other prefixes (-es-prefix, -amqp-prefix);
//   - a three-node RabbitMQ cluster (quorum queues) and a three-node
//     Elasticsearch cluster (indices with one replica), in one namespace;
//     collector i uses node i of each (the collector takes one URL);
//   - the caller: this program's load and the callback receiver.
//
// Under a steady load through the three Envoys it repeatedly SIGKILLs a
// collector (and starts it again), stops a RabbitMQ node, stops an
// Elasticsearch node (and starts them again) and partitions a collector from
// the backends (blackhole routes both ways) before healing it. Then it
// counts at the receiver, by webhook-id: every request that got a 202 must
// be called back (none lost), duplicates are counted, no record may be left
// in a non-terminal status, and neither service may have run a request the
// other accepted. It prints one summary line and exits 1 on any of those.
//
// The program runs as root: it creates the namespaces, runs itself again
// inside the caller's (-inner), and deletes them, with everything running in
// them, when that ends, fails or is interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is the command line, passed on to the inner run.
type config struct {
	envoy, bin, root string
	rate             float64
	dur, every       time.Duration
	settle           time.Duration
	esHeap           string
	inner            string // the namespace prefix, set in the inner run
	work             string // the work directory, set in the inner run
	keep             bool
}

func main() {
	var c config
	flag.StringVar(&c.envoy, "envoy", "", "envoy binary")
	flag.StringVar(&c.bin, "bin", "build", "directory of the built binaries")
	flag.StringVar(&c.root, "root", ".", "the repository (its scripts/)")
	flag.Float64Var(&c.rate, "rate", 60, "async requests per second, over the three Envoys")
	flag.DurationVar(&c.dur, "duration", 3*time.Minute, "how long the load and the faults last")
	flag.DurationVar(&c.every, "every", 10*time.Second, "time between faults")
	flag.DurationVar(&c.settle, "settle", 3*time.Minute, "how long to wait for the last callbacks after the load")
	flag.StringVar(&c.esHeap, "es-heap", "512m", "heap of each Elasticsearch node")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (logs, backends' data) after a successful run")
	flag.StringVar(&c.inner, "inner", "", "internal: run inside the caller's namespace of this prefix")
	flag.StringVar(&c.work, "work", "", "internal: the inner run's work directory")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if c.envoy == "" {
		fmt.Fprintln(os.Stderr, "chaoscluster: -envoy: required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if c.inner != "" {
		err = inner(ctx, c)
	} else {
		err = outer(ctx, c)
	}
	var code exitCode
	switch {
	case errors.As(err, &code):
		os.Exit(int(code))
	case err != nil:
		fmt.Fprintln(os.Stderr, "chaoscluster:", err)
		os.Exit(1)
	}
}
