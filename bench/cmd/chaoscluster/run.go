package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/bench/load"
	"github.com/asyncmesh/asyncmesh/bench/tally"
	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/internal/procs"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

const (
	envoyPort     = "10000" // every address of a pod
	collectorPort = "9901"  // every address of a collector's host
	receiverAddr  = subnet + ".20:9000"
)

// A service is a set of pods (Envoy + the service) and collectors sharing
// one store and one queue under its prefix.
type service struct {
	name       string   // a or b: also the prefix suffix
	pods       []string // roles of its pods
	collectors []string // roles of its collectors' hosts
}

var services = []service{
	{"a", []string{"pod1", "pod2"}, []string{"col1", "col2", "col3"}},
	{"b", []string{"podb"}, []string{"podb"}},
}

// run is one inner run: the processes, the backends and the counts.
type run struct {
	c              config
	prefix, work   string
	procs          *procs.Group
	secret, replay string
	admin          string
	client         *http.Client
	mu             sync.Mutex
	accepted       map[string]string // request id → service
}

// inner runs the test inside the caller's namespace of the fabric that
// outer created.
func inner(ctx context.Context, c config) error {
	start := time.Now()
	work := c.work
	r := &run{c: c, prefix: c.inner, work: work, procs: &procs.Group{Dir: work},
		secret: webhook.NewSecret(), replay: "replay-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_"),
		admin:    "admin-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_"),
		client:   &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		accepted: map[string]string{}}
	defer r.procs.StopAll(r.names()...)
	slog.Info("work directory: logs, backends' state (kept when the run fails, or with -keep)", "dir", work)
	sum, err := r.test(ctx)
	sum.Took = time.Since(start)
	if err != nil {
		return fmt.Errorf("%w (logs in %s)", err, work)
	}
	fmt.Println(sum.String("chaos-cluster"))
	if sum.Failed() {
		fmt.Fprintln(os.Stderr, "chaoscluster: logs in", work)
		return exitCode(1)
	}
	return nil
}

func (r *run) names() []string {
	names := []string{"receiver"}
	for _, s := range services {
		for _, p := range s.pods {
			names = append(names, "envoy-"+p, "service-"+p)
		}
		for _, col := range s.collectors {
			names = append(names, "collector-"+col)
		}
	}
	return names
}

func (r *run) ns(role string) string { return nsName(r.prefix, role) }

// spawn starts bin in role's namespace (ip netns exec execs it: the pid is
// bin's).
func (r *run) spawn(name, role, bin string, env []string, args ...string) error {
	return r.procs.Spawn(name, "ip", env, append([]string{"netns", "exec", r.ns(role), bin}, args...)...)
}

func (r *run) test(ctx context.Context) (tally.Summary, error) {
	sum := tally.Summary{Faults: map[string]int{}}
	begin := time.Now()
	backends := make(chan error, 1)
	go func() { backends <- r.startBackends(ctx) }()
	if err := r.procs.Spawn("receiver", filepath.Join(r.c.bin, "receiver"), []string{"ASYNCMESH_SECRET_DEMO=" + r.secret},
		"-listen", receiverAddr); err != nil {
		return sum, err
	}
	for _, s := range services {
		for _, p := range s.pods {
			if err := r.startPod(s, p); err != nil {
				return sum, fmt.Errorf("starting pod %s: %w", p, err)
			}
		}
	}
	if err := <-backends; err != nil {
		return sum, fmt.Errorf("starting the backends: %w", err)
	}
	slog.Info("backends up", "after", time.Since(begin).Round(time.Second))
	for _, s := range services {
		for i, col := range s.collectors {
			if err := r.startCollector(s, i, col); err != nil {
				return sum, err
			}
		}
	}
	for _, s := range services {
		for _, col := range s.collectors {
			if err := procs.WaitHTTP(ctx, "http://"+ipOf(col)+":"+collectorPort+"/healthz", time.Minute); err != nil {
				return sum, fmt.Errorf("collector %s: %w", col, err)
			}
		}
		for _, p := range s.pods {
			if err := procs.WaitHTTP(ctx, "http://"+ipOf(p)+":"+envoyPort+"/healthz", time.Minute); err != nil {
				return sum, fmt.Errorf("envoy %s: %w", p, err)
			}
		}
	}
	slog.Info("all up: load and faults start", "rate", r.c.rate, "duration", r.c.dur, "every", r.c.every)
	if err := r.loadAndFaults(ctx, &sum); err != nil {
		return sum, err
	}
	return sum, r.count(ctx, &sum)
}

// script runs scripts/<name> action i in the backends' namespace.
func (r *run) script(ctx context.Context, name, action string, i int) error {
	logf, err := os.OpenFile(filepath.Join(r.work, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", r.ns("backends"), filepath.Join(r.c.root, "scripts", name), action, strconv.Itoa(i))
	cmd.Env = append(os.Environ(), "ASYNCMESH_CLUSTER_DIR="+filepath.Join(r.work, "state"),
		"ASYNCMESH_CLUSTER_HOST="+ipOf("backends"), "ES_HEAP="+r.c.esHeap)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s %d: %w (see %s)", name, action, i, err, logf.Name())
	}
	return nil
}

// startBackends starts the RabbitMQ nodes one by one (2 and 3 join 1) while
// the Elasticsearch nodes start together (they elect a master together).
func (r *run) startBackends(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(r.work, "state"), 0o755); err != nil {
		return err
	}
	if err := r.script(ctx, "elasticsearch-cluster.sh", "install", 1); err != nil {
		return err
	}
	errs := make(chan error, 4)
	go func() {
		for i := 1; i <= 3; i++ {
			if err := r.script(ctx, "rabbitmq-cluster.sh", "start", i); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for i := 1; i <= 3; i++ {
		go func() { errs <- r.script(ctx, "elasticsearch-cluster.sh", "start", i) }()
	}
	var all []error
	for range 4 {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

func amqpURL(i int) string {
	return "amqp://guest:guest@" + ipOf("backends") + ":" + strconv.Itoa(5671+i) + "/"
}
func esURL(i int) string { return "http://" + ipOf("backends") + ":" + strconv.Itoa(9200+i) }

// nodes is the URLs of a cluster's three nodes, node first first: each
// collector starts on a node of its own and fails over to the others.
func nodes(url func(int) string, first int) string {
	var us []string
	for k := range 3 {
		us = append(us, url((first-1+k)%3+1))
	}
	return strings.Join(us, ",")
}

// startCollector starts service s's collector i on host col: node i+1 of
// each cluster first, then the others; replays through the service's pod
// i%len(pods). Its -amqp-instance is its host's name (the namespaces share
// the machine's host name).
func (r *run) startCollector(s service, i int, col string) error {
	prefix := "chaos-" + s.name
	return r.spawn("collector-"+col, col, filepath.Join(r.c.bin, "collector"), []string{
		"ASYNCMESH_REPLAY_SECRET=" + r.replay, "ASYNCMESH_SECRET_DEMO=" + r.secret, "ASYNCMESH_ADMIN_TOKEN=" + r.admin,
		"ASYNCMESH_AMQP_URL=" + nodes(amqpURL, i%3+1), "ASYNCMESH_ES_URL=" + nodes(esURL, i%3+1),
	}, "-listen", "0.0.0.0:"+collectorPort, "-api-url", "http://"+ipOf(col)+":"+collectorPort,
		"-replay-url", "http://"+ipOf(s.pods[i%len(s.pods)])+":"+envoyPort, "-admin-token-env", "ASYNCMESH_ADMIN_TOKEN",
		"-db", filepath.Join(r.work, col+".db"),
		"-queue", "rabbitmq", "-amqp-prefix", prefix, "-amqp-instance", col, "-store", "elasticsearch", "-es-prefix", prefix, "-es-replicas", "1")
}

// The demo's Envoy bootstrap, as examples/stack fills it, is changed in
// two places: the listener is on every address of the pod, and both
// collector clusters list all of the service's collectors.
const (
	oneCollector     = "endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${COLLECTOR_PORT}}}}}]}]"
	listenerLoopback = "address: 127.0.0.1, port_value: ${ENVOY_PORT}"
)

// startPod writes the rules and Envoy's bootstrap for pod p of s and starts
// its service and Envoy.
func (r *run) startPod(s service, p string) error {
	rulesPath := filepath.Join(r.work, "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(rules), 0o600); err != nil {
		return err
	}
	f, err := rulesfile.Load(rulesPath)
	if err != nil {
		return fmt.Errorf("loading the rules: %w", err)
	}
	filter, err := xds.StaticFilter(f.Config(nil), xds.WasmOptions{Path: filepath.Join(r.c.bin, "asyncmesh.wasm")})
	if err != nil {
		return fmt.Errorf("rendering the filter: %w", err)
	}
	tmpl, err := os.ReadFile(filepath.Join(r.c.root, "envoy.yaml"))
	if err != nil {
		return err
	}
	text := string(tmpl)
	if strings.Count(text, oneCollector) != 2 {
		return errors.New("envoy.yaml: the collector clusters are not as expected")
	}
	var eps []string
	for _, col := range s.collectors {
		eps = append(eps, "{endpoint: {address: {socket_address: {address: "+ipOf(col)+", port_value: "+collectorPort+"}}}}")
	}
	text = strings.ReplaceAll(text, oneCollector, "endpoints: [{lb_endpoints: ["+strings.Join(eps, ", ")+"]}]")
	text = strings.Replace(text, listenerLoopback, "address: 0.0.0.0, port_value: ${ENVOY_PORT}", 1)
	text = strings.NewReplacer("${ENVOY_PORT}", envoyPort, "${ADMIN_PORT}", "9902", "${SERVICE_PORT}", "8080",
		"${ASYNCMESH_FILTER}", string(filter)).Replace(text)
	boot := filepath.Join(r.work, "envoy-"+p+".yaml")
	if err := os.WriteFile(boot, []byte(text), 0o600); err != nil {
		return err
	}
	if err := r.spawn("service-"+p, p, filepath.Join(r.c.bin, "service"), nil, "-listen", "127.0.0.1:8080"); err != nil {
		return err
	}
	return r.spawn("envoy-"+p, p, r.c.envoy, []string{"ASYNCMESH_REPLAY_SECRET=" + r.replay},
		"-c", boot, "--concurrency", "1", "--disable-hot-restart", "-l", "warning")
}

// rules makes /slow async, called back at the receiver on the caller's
// host; both services use them.
const rules = `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
  untagged: [{pathPrefix: /healthz}]
secrets:
  demo: {env: ASYNCMESH_SECRET_DEMO}
rules:
  - name: slow
    match: {pathPrefix: /slow}
    mode: async
    bodyLimit: 4096
    timeout: 20s
    callback: {url: "http://` + receiverAddr + `/callbacks", protocol: http, secretRef: demo, allowNetworks: [` + subnet + `.0/24]}
    retry: {maxAttempts: 8, initialBackoff: 200ms, maxBackoff: 5s}
`

// loadAndFaults sends the load through the three Envoys (A, A, B in turn)
// and injects the faults in turn until the load ends.
func (r *run) loadAndFaults(ctx context.Context, sum *tally.Summary) error {
	type entry struct{ svc, pod string }
	var entries []entry
	for _, s := range services {
		for _, p := range s.pods {
			entries = append(entries, entry{s.name, p})
		}
	}
	loadDone := make(chan load.Result, 1)
	go func() {
		loadDone <- load.Run(ctx, load.Params{Rate: r.c.rate, Duration: r.c.dur, Grace: 20 * time.Second}, func(ctx context.Context, seq int) error {
			e := entries[seq%len(entries)]
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+ipOf(e.pod)+":"+envoyPort+"/slow?ms=20",
				strings.NewReader(`{"service":"`+e.svc+`"}`))
			if err != nil {
				return err
			}
			req.Header.Set("content-type", "application/json")
			resp, err := r.client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return errors.New(resp.Status) // not accepted, so not owed a callback
			}
			r.mu.Lock()
			r.accepted[resp.Header.Get("x-async-request-id")] = e.svc
			r.mu.Unlock()
			return nil
		})
	}()
	faults := []string{"kill9", "partition", "rabbitmq", "elasticsearch"}
	start := time.Now()
	deadline := start.Add(r.c.dur)
	for i := 0; time.Now().Add(r.c.every).Before(deadline); i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.c.every):
		}
		f := faults[i%len(faults)]
		target := i / len(faults) % 3 // the collector or node that takes it this round
		t0 := time.Now()
		if err := r.inject(ctx, f, target); err != nil {
			return fmt.Errorf("fault %s: %w", f, err)
		}
		slog.Info("fault", "kind", f, "target", target+1, "at", t0.Sub(start).Round(time.Second), "back after", time.Since(t0).Round(100*time.Millisecond))
		sum.Faults[f]++
	}
	res := <-loadDone
	slog.Info("load done", "sent", res.Sent, "accepted", res.OK, "refused", res.Failed, "dropped", res.Dropped)
	return nil
}

// inject applies one fault to collector or node target (0-based) and
// returns once it is healed.
func (r *run) inject(ctx context.Context, fault string, target int) error {
	col := services[0].collectors[target]
	switch fault {
	case "kill9":
		if err := r.procs.Stop("collector-"+col, syscall.SIGKILL); err != nil {
			return err
		}
		time.Sleep(time.Second)
		if err := r.startCollector(services[0], target, col); err != nil {
			return err
		}
		return procs.WaitHTTP(ctx, "http://"+ipOf(col)+":"+collectorPort+"/healthz", time.Minute)
	case "rabbitmq", "elasticsearch":
		name := fault + "-cluster.sh"
		t0 := time.Now()
		if err := r.script(ctx, name, "stop", target+1); err != nil {
			return err
		}
		slog.Info("node stopped", "kind", fault, "node", target+1, "after", time.Since(t0).Round(100*time.Millisecond))
		time.Sleep(5 * time.Second)
		return r.script(ctx, name, "start", target+1)
	case "partition":
		// Blackhole routes both ways: the collector's packets to the
		// backends and theirs to it go nowhere, as on a cut link; Envoy and
		// the receiver still reach it.
		cut := [][]string{{"-n", r.ns(col), "route", "add", "blackhole", ipOf("backends") + "/32"},
			{"-n", r.ns("backends"), "route", "add", "blackhole", ipOf(col) + "/32"}}
		for _, c := range cut {
			if err := ipCmd(c...); err != nil {
				return err
			}
		}
		time.Sleep(time.Duration(5+rand.IntN(5)) * time.Second)
		for _, c := range cut {
			c[3] = "del"
			if err := ipCmd(c...); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown fault %s", fault)
}

// count waits until every 202 is called back (or settle passes), then
// counts the records left unfinished in each service's store and the
// requests a service ran that the other accepted.
func (r *run) count(ctx context.Context, sum *tally.Summary) error {
	r.mu.Lock()
	accepted := map[string]bool{}
	for id := range r.accepted {
		accepted[id] = true
	}
	r.mu.Unlock()
	stuck, err := sum.Settle(ctx, accepted, r.c.settle, func(ctx context.Context) (map[string]int, error) {
		return tally.Received(ctx, r.client, "http://"+receiverAddr)
	}, func(ctx context.Context) ([]tally.Stuck, error) {
		var all []tally.Stuck
		for _, s := range services {
			recs, err := tally.UnfinishedRecords(ctx, r.operatorGet(s.collectors[0]))
			if err != nil {
				return nil, fmt.Errorf("service %s: %w", s.name, err)
			}
			for i := range recs {
				recs[i].Service = s.name
			}
			all = append(all, recs...)
		}
		return all, nil
	})
	if err != nil {
		return err
	}
	if len(stuck) > 0 {
		r.describeStuck(ctx, stuck, accepted)
	}
	// Each service's pods must have run only requests its own Envoys took
	// (and have run some: the check is not empty).
	for _, s := range services {
		own := 0
		for _, p := range s.pods {
			log, err := os.ReadFile(r.procs.LogPath("service-" + p))
			if err != nil {
				return fmt.Errorf("reading the service's log: %w", err)
			}
			for id, svc := range r.accepted {
				switch {
				case !strings.Contains(string(log), "request_id="+id):
				case svc == s.name:
					own++
				default:
					sum.Crossed++
					slog.Error("a service ran another's request", "service", s.name, "pod", p, "request", id, "accepted by", svc)
				}
			}
		}
		slog.Info("requests run by their own service", "service", s.name, "ran", own)
		if own == 0 {
			return fmt.Errorf("service %s ran none of its requests: the isolation check saw nothing", s.name)
		}
	}
	return nil
}

// operatorGet reads a path of collector col's operator API.
func (r *run) operatorGet(col string) func(ctx context.Context, path string) (*http.Response, error) {
	return func(ctx context.Context, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ipOf(col)+":"+collectorPort+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("authorization", "Bearer "+r.admin)
		return r.client.Do(req)
	}
}

// describeStuck prints, for each record left unfinished (at most 20), its
// history and attempts as the operator API reads it now, whether its caller
// got a 202, the callbacks the receiver got for it, and every line of the
// collectors' logs that names it; and writes the same into stuck.txt in the
// work directory, which a failing run keeps.
func (r *run) describeStuck(ctx context.Context, stuck []tally.Stuck, accepted map[string]bool) {
	var b strings.Builder
	got, err := tally.Callbacks(ctx, r.client, "http://"+receiverAddr)
	if err != nil {
		fmt.Fprintf(&b, "reading the receiver's callbacks: %v\n", err)
	}
	byID := map[string][]tally.Callback{}
	for _, c := range got {
		byID[c.WebhookID] = append(byID[c.WebhookID], c)
	}
	var logs []string
	for _, s := range services {
		for _, col := range s.collectors {
			logs = append(logs, "collector-"+col)
		}
		for _, p := range s.pods {
			logs = append(logs, "service-"+p)
		}
	}
	for _, s := range services {
		var mine []tally.Stuck
		for _, st := range stuck {
			if st.Service == s.name {
				mine = append(mine, st)
			}
		}
		for _, st := range tally.Reread(ctx, r.operatorGet(s.collectors[0]), mine, 20) {
			st.Service = s.name
			b.WriteString(st.Report(accepted[st.ID], byID[st.ID]))
			for _, name := range logs {
				text, err := os.ReadFile(r.procs.LogPath(name))
				if err != nil {
					continue
				}
				for line := range strings.Lines(string(text)) {
					if strings.Contains(line, st.ID) {
						fmt.Fprintf(&b, "  %s: %s", name, line)
					}
				}
			}
		}
	}
	fmt.Fprint(os.Stderr, b.String())
	path := filepath.Join(r.work, "stuck.txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		slog.Error("writing the stuck records", "err", err)
		return
	}
	slog.Error("records left unfinished", "count", len(stuck), "described in", path)
}
