package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/asyncmesh/asyncmesh/bench/load"
	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/examples/stack"
)

//go:embed envoy-baseline.yaml
var baselineBootstrap string

//go:embed envoy-plain.yaml
var plainBootstrap string

//go:embed empty-filter.wasm
var emptyFilter []byte

// run measures everything and returns the report.
func run(ctx context.Context, o options) (*Report, error) {
	root, err := filepath.Abs(".")
	if err != nil {
		return nil, err
	}
	rep := newReport()
	type backend struct{ name, amqp, es string }
	var backends []backend
	for _, name := range o.backends {
		switch name {
		case "embedded":
			backends = append(backends, backend{name, "", ""})
		case "rabbitmq+elasticsearch":
			backends = append(backends, backend{name, o.amqpURL, o.esURL})
		default:
			return nil, fmt.Errorf("-backends: unknown backend %q (embedded, rabbitmq+elasticsearch)", name)
		}
	}
	for i, b := range backends {
		if b.name != "embedded" && o.startBackends {
			// Started only now, so that their servers' idle work does not
			// share the cores with the embedded measurements.
			stop, err := startBackends(root)
			defer stop()
			if err != nil {
				return nil, err
			}
			b.amqp, b.es = os.Getenv("ASYNCMESH_TEST_AMQP_URL"), os.Getenv("ASYNCMESH_TEST_ES_URL")
		}
		if b.name != "embedded" && (b.amqp == "" || b.es == "") {
			logf("ASYNCMESH_TEST_AMQP_URL / ASYNCMESH_TEST_ES_URL not set (nor -start-backends): measuring the embedded backend only")
			break
		}
		work, err := os.MkdirTemp("", "asyncmesh-bench-")
		if err != nil {
			return nil, err
		}
		logf("== backend %s (work dir %s)", b.name, work)
		opt := stack.Options{Root: root, BinDir: o.bin, EnvoyBin: o.envoy, WorkDir: work, AMQPURL: b.amqp, ESURL: b.es, CollectorArgs: o.collectorArgs}
		prof := profiler{dir: o.profile, backend: b.name}
		if o.profile != "" {
			ports, err := stack.FreePorts(1)
			if err != nil {
				return nil, err
			}
			prof.url = "http://127.0.0.1:" + strconv.Itoa(ports[0]) + "/debug/pprof/profile"
			opt.CollectorArgs = append(opt.CollectorArgs, "-debug-listen", "127.0.0.1:"+strconv.Itoa(ports[0]))
		}
		s, err := stack.Start(ctx, opt)
		if err != nil {
			return nil, fmt.Errorf("starting the %s stack: %w", b.name, err)
		}
		if i == 0 && !o.noProxy {
			rep.Passthrough, rep.EnvoyFootprint, err = passthrough(ctx, o, s, work)
			if err != nil || o.proxyOnly {
				s.Close()
				return rep, err
			}
		}
		br, err := measureBackend(ctx, o, s, b.name, b.es, prof)
		s.Close()
		if err != nil {
			return nil, err
		}
		os.RemoveAll(work)
		rep.Backends = append(rep.Backends, br)
	}
	return rep, ctx.Err()
}

// startBackends starts RabbitMQ and Elasticsearch with the repository's
// scripts, sets their URLs in the environment, and returns what stops them.
func startBackends(root string) (func(), error) {
	var started []string
	stop := func() {
		for _, name := range started {
			if out, err := exec.Command(filepath.Join(root, "scripts", "stop-"+name+".sh")).CombinedOutput(); err != nil {
				logf("stopping %s: %v: %s", name, err, out)
			}
		}
	}
	for _, b := range []struct{ name, env string }{{"rabbitmq", "ASYNCMESH_TEST_AMQP_URL"}, {"elasticsearch", "ASYNCMESH_TEST_ES_URL"}} {
		logf("== starting %s", b.name)
		cmd := exec.Command(filepath.Join(root, "scripts", "start-"+b.name+".sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		started = append(started, b.name)
		if err != nil {
			return stop, fmt.Errorf("starting %s: %w", b.name, err)
		}
		lines := strings.Fields(string(out))
		if len(lines) == 0 {
			return stop, fmt.Errorf("starting %s: the script printed no URL", b.name)
		}
		os.Setenv(b.env, lines[len(lines)-1])
	}
	return stop, nil
}

// passthrough measures the proxy paths: Envoy's direct_response, Envoy
// without the filter and with an empty Wasm filter (a second Envoy, same
// binary and concurrency), against the sidecar's Envoy with the filter on a
// pass-through route; then the sidecar Envoy's memory against a third, plain
// Envoy (no Wasm runtime at all).
func passthrough(ctx context.Context, o options, s *stack.Stack, work string) ([]Curve, []EnvoyFootprint, error) {
	ports, err := stack.FreePorts(6)
	if err != nil {
		return nil, nil, err
	}
	wasmAll, err := wasmAllFilter(s, o.bin)
	if err != nil {
		return nil, nil, err
	}
	empty := filepath.Join(work, "empty-filter.wasm")
	if err := os.WriteFile(empty, emptyFilter, 0o600); err != nil {
		return nil, nil, err
	}
	_, servicePort, _ := net.SplitHostPort(s.ServiceAddr())
	conf := strings.NewReplacer("${PORT}", strconv.Itoa(ports[0]), "${ADMIN_PORT}", strconv.Itoa(ports[1]),
		"${WASM_PORT}", strconv.Itoa(ports[2]), "${EMPTY_WASM}", empty, "${SERVICE_PORT}", servicePort,
		"${WASM_ALL_PORT}", strconv.Itoa(ports[3]), "${ASYNCMESH_WASM_ALL}", wasmAll).Replace(baselineBootstrap)
	path := filepath.Join(work, "envoy-baseline.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, nil, err
	}
	if err := s.Spawn("envoy-baseline", o.envoy, nil, "-c", path, "--concurrency", "2", "--base-id", strconv.Itoa(ports[1]), "-l", "warning"); err != nil {
		return nil, nil, err
	}
	plainAdmin := "http://127.0.0.1:" + strconv.Itoa(ports[5])
	conf = strings.NewReplacer("${PORT}", strconv.Itoa(ports[4]), "${ADMIN_PORT}", strconv.Itoa(ports[5]), "${SERVICE_PORT}", servicePort).Replace(plainBootstrap)
	path = filepath.Join(work, "envoy-plain.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, nil, err
	}
	if err := s.Spawn("envoy-plain", o.envoy, nil, "-c", path, "--concurrency", "2", "--base-id", strconv.Itoa(ports[5]), "-l", "warning"); err != nil {
		return nil, nil, err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	if err := waitOK(ctx, "http://127.0.0.1:"+strconv.Itoa(ports[1])+"/ready"); err != nil {
		return nil, nil, fmt.Errorf("baseline envoy: %w", err)
	}
	if err := waitOK(ctx, plainAdmin+"/ready"); err != nil {
		return nil, nil, fmt.Errorf("plain envoy: %w", err)
	}
	logf("== proxy paths")
	get := func(url string, hdrs ...string) func(context.Context, int) error {
		return func(ctx context.Context, _ int) error {
			_, err := request(ctx, "GET", url, "", http.StatusOK, hdrs...)
			return err
		}
	}
	// The filter's pass-through is measured both ways a request can come:
	// without a traceparent (the filter creates one) and with a valid one
	// (kept), as most requests inside a traced mesh.
	tp := []string{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	paths := []struct {
		name, envoy, url string
		hdrs             []string
	}{
		{"envoy direct_response (ceiling)", "envoy-baseline", base + "/direct", nil},
		{"envoy → service, no filter (baseline)", "envoy-baseline", base + "/fast", nil},
		{"envoy + empty Wasm filter → service (floor)", "envoy-baseline", "http://127.0.0.1:" + strconv.Itoa(ports[2]) + "/fast", nil},
		{"envoy + asyncmesh filter → service, traceparent created", "envoy", s.EnvoyURL + "/fast", nil},
		{"envoy + asyncmesh filter → service, traceparent kept", "envoy", s.EnvoyURL + "/fast", tp},
		{"envoy + asyncmesh filter → service, untagged (filter.untagged)", "envoy", s.EnvoyURL + "/healthz", nil},
		{"envoy + asyncmesh Wasm filter on every request (before)", "envoy-baseline", "http://127.0.0.1:" + strconv.Itoa(ports[3]) + "/fast", nil},
	}
	var curves []Curve
	var targets []costTarget
	for _, p := range paths {
		curves = append(curves, ladder(ctx, p.name, o.passRates, o.step, get(p.url, p.hdrs...)))
		targets = append(targets, costTarget{pid: s.PID(p.envoy), do: get(p.url, p.hdrs...)})
	}
	for i, c := range envoyCosts(ctx, targets, costRate, costFor, costRounds) {
		curves[i].EnvoyCPUus, curves[i].CostP99ms = c.cpuUS, c.p99ms
		logf("  %-44s Envoy CPU %.1f µs per request at %d/s, p99 %.2f ms", paths[i].name, c.cpuUS, costRate, c.p99ms)
	}

	// Footprint: the sidecar's Envoy after all of the above, against a plain
	// Envoy (no Wasm runtime loaded) after the same ladder and cost load
	// (what an Envoy keeps after load depends on the connections and
	// requests in flight at its peak), each given a few release intervals to
	// hand free heap back.
	logf("-- Envoy footprint (after load, --concurrency 2)")
	plain := get("http://127.0.0.1:" + strconv.Itoa(ports[4]) + "/fast")
	ladder(ctx, "plain Envoy (load for its footprint)", o.passRates, o.step, plain)
	load.Run(ctx, load.Params{Rate: costRate, Duration: costFor, Grace: 5 * time.Second}, plain)
	time.Sleep(3 * time.Second)
	var fps []EnvoyFootprint
	for _, e := range []struct{ name, proc, admin string }{
		{"plain Envoy (no filter)", "envoy-plain", plainAdmin},
		{"sidecar Envoy with the asyncmesh filter", "envoy", s.AdminURL},
	} {
		fp, err := envoyFootprint(ctx, e.name, s.PID(e.proc), e.admin)
		if err != nil {
			return nil, nil, err
		}
		logf("  %-40s RSS %.1f MB (anon %.1f; heap %.1f allocated, %.1f free, %.1f thread caches; JIT %.1f; %d Wasm VMs %.1f)",
			fp.Name, fp.RSSMB, fp.AnonMB, fp.HeapAllocatedMB, fp.HeapFreeMB, fp.ThreadCachesMB, fp.JITCodeMB, fp.WasmVMs, fp.WasmMemoriesMB)
		fps = append(fps, fp)
	}
	return curves, fps, nil
}

// wasmAllFilter is the asyncmesh Wasm filter with the stack's rules as an
// http_filters entry of its own (JSON), without Envoy's matcher in front.
func wasmAllFilter(s *stack.Stack, bin string) (string, error) {
	f, err := rulesfile.Load(s.RulesPath())
	if err != nil {
		return "", err
	}
	w, err := xds.WasmFilter(f.Config(nil), xds.WasmOptions{Path: filepath.Join(bin, "asyncmesh.wasm")})
	if err != nil {
		return "", err
	}
	typed, err := anypb.New(w)
	if err != nil {
		return "", err
	}
	js, err := protojson.Marshal(&hcm.HttpFilter{Name: "asyncmesh", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: typed}})
	return string(js), err
}

// Before a backend is measured it gets warmupFor of requests at warmupRate
// (the first writes create the day's index, the embedded database its
// pages); a JVM backend is then warmed until its JIT compilers are idle
// (warmJVM).
const (
	warmupRate = 100
	warmupFor  = 5 * time.Second
)

// The proxy paths' cost is measured at costRate for costFor each, in
// costRounds turns (costRate is also the rate at which issue 17 bounds the
// p99 the filter adds).
const (
	costRate   = 1000
	costFor    = 30 * time.Second
	costRounds = 6
)

// intakeCostRate is the highest rate of the intake cost measurement.
const intakeCostRate = 1500

// The collector's idle footprint is measured over idleFor, idleSettle after
// its last work.
const (
	idleFor    = 20 * time.Second
	idleSettle = 10 * time.Second
)

// measureBackend measures async intake, accept → callback latency, delivery
// throughput, resources and the backlog on one stack.
func measureBackend(ctx context.Context, o options, s *stack.Stack, name, esURL string, prof profiler) (BackendReport, error) {
	br := BackendReport{Name: name, Usage: map[string][]Usage{}}
	logf("-- the collector idle, fresh")
	idle, err := collectorIdle(ctx, "fresh", s.PID("collector"), idleFor)
	if err != nil {
		return br, fmt.Errorf("measuring the idle collector: %w", err)
	}
	br.CollectorIdle = append(br.CollectorIdle, idle)
	logf("-- warm-up (%v at %d/s, not measured)", warmupFor, warmupRate)
	accepted(ctx, s, "/slow?ms=0", warmupRate, warmupFor)
	if err := drain(ctx, s); err != nil {
		return br, err
	}
	if esURL != "" {
		if pid := findPID(backendCmdline["elasticsearch"]); pid == 0 {
			logf("-- Elasticsearch is not a process on this machine: neither warmed nor its CPU measured")
		} else {
			logf("-- Elasticsearch warm-up (%d/s until its JIT compilers are idle, not measured)", jvmWarmRate)
			wu, err := warmJVM(ctx, s, pid)
			if err != nil {
				return br, fmt.Errorf("warming Elasticsearch: %w", err)
			}
			br.ESWarmup = &wu
		}
		logf("-- Elasticsearch alone (the ceiling of the store on this machine)")
		var err error
		if br.ESCeiling, err = esCeiling(ctx, esURL, 3*time.Second); err != nil {
			return br, fmt.Errorf("measuring Elasticsearch alone: %w", err)
		}
	}
	procs := []string{"collector", "envoy"}
	if name != "embedded" {
		procs = append(procs, "elasticsearch", "rabbitmq")
	}
	if err := intakeAlone(ctx, o, s, name, prof, &br, procs); err != nil {
		return br, err
	}

	logf("-- async intake with execution and delivery running (POST /slow?ms=0 → 202)")
	sm := sample(s, procs...)
	br.IntakeLoaded = ladder(ctx, "async intake (loaded) "+name, o.intakeRates, o.step, func(ctx context.Context, _ int) error {
		_, err := postAsync(ctx, s, "/slow?ms=0")
		return err
	})
	br.Usage["intake loaded"] = sm.end()
	if err := drain(ctx, s); err != nil {
		return br, err
	}

	logf("-- accept → callback at paced rates")
	sm = sample(s, procs...)
	for _, rate := range o.paced {
		_, acc := accepted(ctx, s, "/slow?ms=0", rate, o.pacedFor)
		d := delays(rate, acc, callbacksAt(s, acc, 60*time.Second))
		logf("  %6.0f/s: %d accepted, %d called back, p50 %.1fms p99 %.1fms p99.9 %.1fms", rate, d.Accepted, d.Received, d.P50ms, d.P99ms, d.P999ms)
		var err error
		if d.Stages, err = stages(ctx, s, sampleIDs(acc, stageSample)); err != nil {
			return br, err
		}
		for _, st := range d.Stages {
			logf("    %s → %s: p50 %.1fms p99 %.1fms", st.From, st.To, st.P50ms, st.P99ms)
		}
		br.Delays = append(br.Delays, d)
	}
	br.Usage["paced"] = sm.end()

	logf("-- pipeline throughput (a burst of %d: intake, execution and callback at once)", o.burst)
	sm = sample(s, append(procs, "service", "receiver")...)
	rate := min(2000, max(200, 0.8*br.IntakeLoaded.Saturation()))
	done := prof.start(ctx, "pipeline", time.Duration(float64(o.burst)/rate*float64(time.Second))+5*time.Second)
	_, acc := accepted(ctx, s, "/slow?ms=0", rate, time.Duration(float64(o.burst)/rate*float64(time.Second)))
	got := callbacksAt(s, acc, 120*time.Second)
	done()
	br.Pipeline = throughput(len(acc), got)
	br.Usage["pipeline"] = sm.end()
	logf("  %d accepted, %d called back at %.0f/s", len(acc), br.Pipeline.Callbacks, br.Pipeline.PerSecond)

	logf("-- delivery alone (a backlog of %d executed requests, fast receiver)", o.deliveryBacklog)
	d, usage, err := deliveryAlone(ctx, o, s, rate, prof, append(procs, "receiver"))
	if err != nil {
		return br, err
	}
	br.Delivery, br.Usage["delivery"] = d, usage
	logf("  %d executed, %d called back at %.0f/s", d.Accepted, d.Callbacks, d.PerSecond)

	// After load, before the backlog (which leaves a stalled service and
	// records the collector still works on).
	logf("-- the collector idle, after load")
	time.Sleep(idleSettle)
	if idle, err = collectorIdle(ctx, "after load", s.PID("collector"), idleFor); err != nil {
		return br, fmt.Errorf("measuring the idle collector: %w", err)
	}
	br.CollectorIdle = append(br.CollectorIdle, idle)

	if o.backlog > 0 {
		bl, err := backlog(ctx, o, s, rate)
		if err != nil {
			return br, err
		}
		br.Backlog = bl
	}
	return br, ctx.Err()
}

// intakeAlone measures async intake by itself: a collector that neither
// executes nor delivers (-workers 0 -delivery-workers 0) takes the ladder,
// then the collector as configured runs and calls back everything accepted
// (checked: none may be missing).
func intakeAlone(ctx context.Context, o options, s *stack.Stack, name string, prof profiler, br *BackendReport, procs []string) error {
	logf("-- async intake alone (POST /slow?ms=0 → 202; a collector that neither executes nor delivers)")
	if err := s.RestartCollector(ctx, "-workers", "0", "-delivery-workers", "0"); err != nil {
		return fmt.Errorf("restarting the collector for intake only: %w", err)
	}
	ids := &acceptedIDs{at: map[string]time.Time{}}
	sm := sample(s, procs...)
	done := prof.start(ctx, "intake", time.Duration(len(o.intakeRates))*o.step)
	br.Intake = ladder(ctx, "async intake "+name, o.intakeRates, o.step, ids.send(s, "/slow?ms=0"))
	br.Usage["intake"] = sm.end()
	done()
	// Envoy's CPU per intake, as the proxy paths' cost is measured, at a
	// rate this backend takes without queueing: an open loop far below
	// Envoy's capacity measures its idle wake-ups more than its work.
	br.IntakeCostRate = min(intakeCostRate, math.Round(0.7*br.Intake.Saturation()/100)*100)
	br.IntakeEnvoyCPUus = envoyCosts(ctx, []costTarget{{pid: s.PID("envoy"), do: ids.send(s, "/slow?ms=0")}}, br.IntakeCostRate, costFor/2, 1)[0].cpuUS
	logf("  Envoy CPU %.1f µs per intake at %.0f/s", br.IntakeEnvoyCPUus, br.IntakeCostRate)
	if err := s.RestartCollector(ctx); err != nil {
		return fmt.Errorf("restarting the collector: %w", err)
	}
	logf("  %d accepted; waiting for their callbacks", len(ids.at))
	if got := callbacksAt(s, ids.at, 5*time.Minute); len(got) < len(ids.at) {
		return fmt.Errorf("intake alone: %d of %d accepted requests not called back after 5 minutes", len(ids.at)-len(got), len(ids.at))
	}
	return nil
}

// deliveryAlone measures the delivery stage by itself: a collector that does
// not deliver (-delivery-workers 0) takes and executes a burst, then the
// collector as configured calls the backlog back, first to last callback.
func deliveryAlone(ctx context.Context, o options, s *stack.Stack, rate float64, prof profiler, procs []string) (Delivery, []Usage, error) {
	if err := s.RestartCollector(ctx, "-delivery-workers", "0"); err != nil {
		return Delivery{}, nil, fmt.Errorf("restarting the collector without delivery: %w", err)
	}
	_, acc := accepted(ctx, s, "/slow?ms=0", rate, time.Duration(float64(o.deliveryBacklog)/rate*float64(time.Second)))
	deadline := time.Now().Add(3 * time.Minute)
	for executed(s) < len(acc) {
		if time.Now().After(deadline) {
			return Delivery{}, nil, fmt.Errorf("only %d of %d accepted requests executed after 3 minutes", executed(s), len(acc))
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err := s.RestartCollector(ctx); err != nil {
		return Delivery{}, nil, fmt.Errorf("restarting the collector: %w", err)
	}
	sm := sample(s, procs...)
	done := prof.start(ctx, "delivery", 5*time.Second)
	got := callbacksAt(s, acc, 120*time.Second)
	done()
	return throughput(len(acc), got), sm.end(), nil
}

// executed is how many records the running collector moved to completed or
// failed (its transitions counter, which starts at zero with the process).
func executed(s *stack.Stack) int {
	resp, err := s.OperatorGet(context.Background(), "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	n := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "asyncmesh_collector_transitions_total{") &&
			(strings.Contains(line, `status="completed"`) || strings.Contains(line, `status="failed"`)) {
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				v, _ := strconv.ParseFloat(line[i+1:], 64)
				n += v
			}
		}
	}
	return int(n)
}

// Delivery is the callback rate of a burst, first to last callback.
type Delivery struct {
	Accepted  int     `json:"accepted"`
	Callbacks int     `json:"callbacks"`
	PerSecond float64 `json:"perSecond"`
}

func throughput(accepted int, got map[string]time.Time) Delivery {
	d := Delivery{Accepted: accepted, Callbacks: len(got)}
	var first, last time.Time
	for _, t := range got {
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	if span := last.Sub(first).Seconds(); len(got) > 1 && span > 0 {
		d.PerSecond = float64(len(got)-1) / span
	}
	return d
}

// Backlog is the collector's memory while requests pile up behind a
// stalled service.
type Backlog struct {
	Requests    int       `json:"requests"`
	FillSeconds float64   `json:"fillSeconds"`
	RSSStartMB  float64   `json:"rssStartMB"`
	RSSMaxMB    float64   `json:"rssMaxMB"`
	RSSEndMB    float64   `json:"rssEndMB"`
	SamplesMB   []float64 `json:"samplesMB"` // every 2 s
}

// maxBacklogFill bounds the backlog phase's load.
const maxBacklogFill = 150 * time.Second

// backlog queues o.backlog requests whose service call takes 15 s (16
// workers drain about one a second), sampling the collector's RSS during the
// fill and 10 s after.
func backlog(ctx context.Context, o options, s *stack.Stack, rate float64) (*Backlog, error) {
	logf("-- backlog of %d requests behind a stalled service", o.backlog)
	pid := s.PID("collector")
	b := &Backlog{RSSStartMB: rssMB(pid)}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				b.SamplesMB = append(b.SamplesMB, rssMB(pid))
			}
		}
	}()
	start := time.Now()
	// The fill is bounded in time: a backend that takes requests slowly
	// queues fewer, and the report says how many.
	fill := min(time.Duration(float64(o.backlog)/rate*float64(time.Second)), maxBacklogFill)
	r := load.Run(ctx, load.Params{Rate: rate, Duration: fill, Grace: 10 * time.Second},
		func(ctx context.Context, _ int) error {
			_, err := request(ctx, "POST", s.EnvoyURL+"/slow?ms=15000", `{"backlog":true}`, http.StatusAccepted, "content-type", "application/json")
			return err
		})
	b.Requests, b.FillSeconds = r.OK, time.Since(start).Seconds()
	time.Sleep(10 * time.Second)
	close(stop)
	<-done
	b.RSSEndMB = rssMB(pid)
	for _, v := range b.SamplesMB {
		b.RSSMaxMB = max(b.RSSMaxMB, v)
	}
	logf("  %d queued in %.0fs; collector RSS %.0f MB → max %.0f MB → %.0f MB", b.Requests, b.FillSeconds, b.RSSStartMB, b.RSSMaxMB, b.RSSEndMB)
	return b, ctx.Err()
}

// drain waits until the receiver stops getting callbacks (the intake ladder
// leaves work behind), so that one phase does not load the next.
func drain(ctx context.Context, s *stack.Stack) error {
	seen := -1
	for i := 0; i < 120; i++ {
		got, err := receivedSince(s, max(seen, 0))
		if err != nil {
			return err
		}
		if seen >= 0 && len(got) == 0 {
			return nil
		}
		seen = max(seen, 0) + len(got)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	return errors.New("callbacks still arriving after 4 minutes")
}

func waitOK(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("not ready within 30s: " + url)
}

// profiler takes CPU profiles of the collector (bench -profile) through its
// -debug-listen server.
type profiler struct{ dir, backend, url string }

// start profiles for d in the background into dir/collector-<backend>-<phase>.pprof;
// the returned function waits for the profile.
func (p profiler) start(ctx context.Context, phase string, d time.Duration) func() {
	if p.url == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path := filepath.Join(p.dir, "collector-"+p.backend+"-"+phase+".pprof")
		if err := fetchProfile(ctx, p.url+"?seconds="+strconv.Itoa(max(1, int(d.Seconds()))), path); err != nil {
			logf("  profile %s: %v", path, err)
			return
		}
		logf("  profile: %s", path)
	}()
	return func() { <-done }
}

func fetchProfile(ctx context.Context, url, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
