// Command bench is asyncmesh's benchmark harness (make bench): it starts the
// real stack (Envoy with the compiled filter, collector, demo service and
// receiver) on loopback, drives it with the open-loop generator of
// bench/load, and writes report.json, REPORT.md and latency.png. Every
// figure is shown with its ratio to a baseline measured in the same run:
// Envoy without the filter for the proxy paths and for Envoy's memory, the
// embedded backend for RabbitMQ + Elasticsearch. All traffic goes to
// 127.0.0.1 and every phase is bounded in time.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

type options struct {
	envoy, bin, out        string
	step, pacedFor         time.Duration
	passRates, intakeRates []float64
	paced                  []float64
	burst, backlog         int
	deliveryBacklog        int
	amqpURL, esURL         string
	profile                string
	collectorArgs          []string
	startBackends          bool
	proxyOnly, noProxy     bool
	backends               []string
}

func main() {
	var o options
	var pass, intake, paced string
	flag.StringVar(&o.envoy, "envoy", "", "envoy binary")
	flag.StringVar(&o.bin, "bin", "build", "directory of the built binaries and asyncmesh.wasm")
	flag.StringVar(&o.out, "out", "bench", "where report.json, REPORT.md and latency.png go")
	flag.DurationVar(&o.step, "step", 3*time.Second, "duration of each offered rate")
	flag.StringVar(&pass, "pass-rates", "1000,2000,3000,4000,6000,8000", "offered rates (req/s) for the proxy paths")
	flag.StringVar(&intake, "intake-rates", "500,1000,1500,2000,3000,4000", "offered rates (req/s) for async intake")
	flag.StringVar(&paced, "paced", "50,200,1000", "paced rates (req/s) for accept → callback latency")
	flag.DurationVar(&o.pacedFor, "paced-for", 5*time.Second, "duration of each paced rate")
	flag.IntVar(&o.burst, "burst", 3000, "requests of the delivery-throughput burst")
	flag.IntVar(&o.deliveryBacklog, "delivery-backlog", 10000, "executed requests called back by the delivery-alone phase")
	flag.IntVar(&o.backlog, "backlog", 100000, "requests queued behind a stalled service to watch the collector's RSS (0: skip)")
	flag.StringVar(&o.profile, "profile", "", "directory for CPU profiles of the collector during the intake ladder and the delivery burst (go tool pprof); empty: none")
	flag.BoolVar(&o.startBackends, "start-backends", false, "start RabbitMQ and Elasticsearch (scripts/start-*.sh) once the embedded backend is measured, and stop them at the end")
	flag.BoolVar(&o.proxyOnly, "proxy-only", false, "measure the proxy paths only (for trying a filter change quickly)")
	flag.BoolVar(&o.noProxy, "no-proxy", false, "skip the proxy paths (for trying a backend change quickly)")
	var backends string
	flag.StringVar(&backends, "backends", "embedded,rabbitmq+elasticsearch", "backends to measure, in order (the first is the baseline of the others)")
	var collectorArgs string
	flag.StringVar(&collectorArgs, "collector-args", "", "extra collector flags, space-separated (for example \"-workers 64\")")
	renderOnly := flag.Bool("render-only", false, "measure nothing: write REPORT.md and latency.png again from -out's report.json (after a change to the report's wording)")
	flag.Parse()
	if *renderOnly {
		if err := render(o.out); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		logf("wrote %s from its report.json", filepath.Join(o.out, "REPORT.md"))
		return
	}
	o.collectorArgs = strings.Fields(collectorArgs)
	o.backends = strings.Split(backends, ",")
	o.amqpURL, o.esURL = os.Getenv("ASYNCMESH_TEST_AMQP_URL"), os.Getenv("ASYNCMESH_TEST_ES_URL")
	var err error
	if o.passRates, err = rates(pass); err == nil {
		if o.intakeRates, err = rates(intake); err == nil {
			o.paced, err = rates(paced)
		}
	}
	if err == nil && o.envoy == "" {
		err = fmt.Errorf("-envoy: required")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	if err := rep.write(o.out); err != nil {
		fmt.Fprintln(os.Stderr, "bench: writing the report:", err)
		os.Exit(1)
	}
	logf("wrote %s", filepath.Join(o.out, "REPORT.md"))
}

// render rewrites dir's report from its report.json.
func render(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return err
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("reading %s/report.json: %w", dir, err)
	}
	return r.write(dir)
}

func rates(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("rate %q: want a positive number", f)
		}
		out = append(out, v)
	}
	return out, nil
}
