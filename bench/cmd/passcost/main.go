// Command passcost measures what Envoy's pass-through of the asyncmesh
// filter costs, piece by piece: one Envoy (--concurrency 2) with one
// loopback listener per variant (no filter; the filter as the control plane
// builds it; its matcher alone; the composite alone; its native filters
// alone; ...), all in front of the same in-process service. Each target (a
// variant and a kind of request) gets requests at a fixed rate in turns,
// rounds after rounds, and the Envoy process's CPU time during its turns
// (the sum of its threads' schedstat run time, and utime+stime of
// /proc/PID/stat) is divided by its successful requests. Whatever else the
// shared cores do then falls on every target alike; the ratios are to the
// no-filter baseline of the same run.
//
//	go run ./bench/cmd/passcost -envoy "$(scripts/install-envoy.sh)" [-only REGEXP] [-rounds 6] [-turn 3s]
//
// Everything listens on 127.0.0.1; the run is bounded by -rounds × -turn ×
// the number of targets (and -timeout).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/bench/load"
	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/procs"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func main() {
	envoy := flag.String("envoy", os.Getenv("ENVOY_BIN"), "envoy binary (default $ENVOY_BIN)")
	wasm := flag.String("wasm", "build/asyncmesh.wasm", "asyncmesh.wasm (only loaded, never entered by pass-through requests)")
	rulesPath := flag.String("rules", "examples/rules.yaml", "rules file (${...} placeholders are filled with loopback values)")
	rate := flag.Float64("rate", 1000, "requests per second during a turn")
	turn := flag.Duration("turn", 3*time.Second, "length of one target's turn")
	rounds := flag.Int("rounds", 6, "rounds (each target takes one turn per round)")
	only := flag.String("only", "", "measure only the targets whose name matches this regular expression (the baseline always)")
	reverse := flag.Bool("reverse", false, "take the targets' turns in reverse order (the baseline first still)")
	list := flag.Bool("list", false, "list the targets and exit")
	keep := flag.String("keep", "", "write the generated bootstrap and Envoy's log into this directory")
	timeout := flag.Duration("timeout", 6*time.Minute, "bound of the whole run")
	flag.Parse()

	cfg, err := loadRules(*rulesPath)
	if err != nil {
		fatal(err)
	}
	wasmPath, _ := filepath.Abs(*wasm)
	vs, err := variants(cfg, wasmPath)
	if err != nil {
		fatal(err)
	}
	ts := targets(vs)
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fatal(err)
		}
		ts = slices.DeleteFunc(ts, func(t target) bool { return t.name != baseline && !re.MatchString(t.name) })
	}
	if *reverse {
		slices.Reverse(ts[1:])
	}
	if *list {
		for _, t := range ts {
			fmt.Println(t.name)
		}
		return
	}
	if *envoy == "" {
		fatal(errors.New("-envoy (or $ENVOY_BIN) is required"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *envoy, *keep, vs, ts, *rate, *turn, *rounds); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "passcost:", err)
	os.Exit(1)
}

// loadRules reads the rules file with its placeholders filled.
func loadRules(path string) (*rules.Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	filled := strings.NewReplacer("${AMQP_CALLBACK_URL}", "amqp://127.0.0.1:9/?exchange=x&routingKey=k", "${RECEIVER_GRPC_URL}", "grpc://127.0.0.1:9").Replace(string(raw))
	filled = regexp.MustCompile(`\$\{[A-Z_]*URL\}`).ReplaceAllString(filled, "http://127.0.0.1:9")
	filled = regexp.MustCompile(`\$\{[A-Z_]*\}`).ReplaceAllString(filled, "9")
	tmp, err := os.CreateTemp("", "passcost-rules-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(filled); err != nil {
		return nil, err
	}
	tmp.Close()
	f, err := rulesfile.Load(tmp.Name())
	if err != nil {
		return nil, err
	}
	return f.Config(nil), nil
}

// A target is one kind of request to one variant's listener.
type target struct {
	name    string
	variant int
	path    string
	hdrs    []string
}

const baseline = "no filter"

// traceparent is a valid one, kept by the filter.
var traceparent = []string{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

func targets(vs []variant) []target {
	var ts []target
	for i, v := range vs {
		for _, r := range v.requests {
			name := v.name
			if r.label != "" {
				name += ", " + r.label
			}
			ts = append(ts, target{name: name, variant: i, path: r.path, hdrs: r.hdrs})
		}
	}
	return ts
}

func run(ctx context.Context, envoyBin, keep string, vs []variant, ts []target, rate float64, turn time.Duration, rounds int) error {
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer svc.Close()
	go http.Serve(svc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"fast":true}`)
	}))
	ports, err := procs.FreePorts(len(vs) + 1)
	if err != nil {
		return err
	}
	dir := keep
	if dir == "" {
		if dir, err = os.MkdirTemp("", "passcost-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	boot := bootstrap(vs, ports, svc.Addr().(*net.TCPAddr).Port)
	path := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(path, []byte(boot), 0o600); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(dir, "envoy.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	admin := ports[len(vs)]
	cmd := exec.CommandContext(ctx, envoyBin, "-c", path, "--concurrency", "2", "--base-id", strconv.Itoa(admin), "-l", "warning")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := procs.WaitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/ready", admin), 60*time.Second); err != nil {
		return fmt.Errorf("envoy did not start (see %s, -keep DIR): %w", logFile.Name(), err)
	}
	pid := cmd.Process.Pid

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}}
	do := func(t target) func(context.Context, int) error {
		url := fmt.Sprintf("http://127.0.0.1:%d%s", ports[t.variant], t.path)
		return func(ctx context.Context, _ int) error {
			req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
			for i := 0; i+1 < len(t.hdrs); i += 2 {
				req.Header.Set(t.hdrs[i], t.hdrs[i+1])
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("%s: %d", url, resp.StatusCode)
			}
			return nil
		}
	}
	// Every target once, briefly, unmeasured: connections, first use.
	for _, t := range ts {
		r := load.Run(ctx, load.Params{Rate: rate, Duration: 300 * time.Millisecond, Grace: 5 * time.Second}, do(t))
		if r.OK == 0 {
			return fmt.Errorf("%s: no request succeeded (see %s)", t.name, logFile.Name())
		}
	}
	fmt.Fprintf(os.Stderr, "passcost: %d targets, %d rounds of %v at %.0f/s (about %v)\n", len(ts), rounds, turn, rate,
		time.Duration(len(ts)*rounds)*(turn+200*time.Millisecond))
	sched := make([]float64, len(ts))
	stat := make([]float64, len(ts))
	ok := make([]int, len(ts))
	perRound := make([][]float64, len(ts))
	for round := range rounds {
		for i, t := range ts {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s0, t0 := schedSeconds(pid), statSeconds(pid)
			r := load.Run(ctx, load.Params{Rate: rate, Duration: turn, Grace: 5 * time.Second}, do(t))
			ds, dt := schedSeconds(pid)-s0, statSeconds(pid)-t0
			sched[i] += ds
			stat[i] += dt
			ok[i] += r.OK
			if r.OK > 0 {
				perRound[i] = append(perRound[i], ds/float64(r.OK)*1e6)
			}
			if r.Failed+r.Dropped > 0 {
				fmt.Fprintf(os.Stderr, "passcost: round %d %s: %d failed, %d dropped\n", round+1, t.name, r.Failed, r.Dropped)
			}
		}
		fmt.Fprintf(os.Stderr, "passcost: round %d/%d done\n", round+1, rounds)
	}
	us := func(i int, v []float64) float64 { return v[i] / float64(max(ok[i], 1)) * 1e6 }
	base := slices.IndexFunc(ts, func(t target) bool { return t.name == baseline })
	fmt.Printf("Envoy CPU per request at %.0f/s, %d rounds of %v per target, %s\n\n", rate, rounds, turn, time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Println("| target | µs/req | over no filter | capacity vs no filter | median of rounds (over no filter) | rounds min–max | µs/req by stat ticks |")
	fmt.Println("|---|---:|---:|---:|---:|---|---:|")
	median := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	for i := range ts {
		slices.Sort(perRound[i])
	}
	for i, t := range ts {
		spread := "—"
		if n := len(perRound[i]); n > 0 {
			spread = fmt.Sprintf("%.0f–%.0f", perRound[i][0], perRound[i][n-1])
		}
		m := median(perRound[i])
		fmt.Printf("| %s | %.1f | %+.1f | %.2f× | %.1f (%+.1f) | %s | %.1f |\n", t.name, us(i, sched), us(i, sched)-us(base, sched),
			us(base, sched)/us(i, sched), m, m-median(perRound[base]), spread, us(i, stat))
	}
	return nil
}

// schedSeconds is the CPU time of all of a process's threads
// (/proc/PID/task/*/schedstat, nanoseconds).
func schedSeconds(pid int) float64 {
	dirs, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	total := 0.0
	for _, d := range dirs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, d.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			ns, _ := strconv.ParseFloat(f[0], 64)
			total += ns / 1e9
		}
	}
	return total
}

// statSeconds is utime+stime of /proc/PID/stat (USER_HZ ticks).
func statSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}
