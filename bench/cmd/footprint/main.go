// Command footprint measures the collector's idle footprint on the embedded
// default (issue 17): it starts a collector binary on loopback with a fresh
// database, measures its CPU and memory over an idle window, sends it a
// burst of requests straight to /v1/intake (a local service stands in for
// Envoy as -replay-url, a local receiver takes the callbacks), waits for
// every callback, lets it settle and measures the idle window again.
//
//	go build -o /tmp/collector ./collector/cmd/collector
//	go run ./bench/cmd/footprint -collector /tmp/collector
//
// CPU is the run time of all the process's threads (/proc/PID/task/*/schedstat)
// over the window, as a share of one core; memory is VmRSS, split into
// RssAnon (the process's own memory) and RssFile (mapped files: the
// executable's pages, SQLite's WAL index), at the end of the window.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/procs"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

func main() {
	bin := flag.String("collector", "", "collector binary (required)")
	idle := flag.Duration("idle", time.Minute, "each idle window")
	settle := flag.Duration("settle", 10*time.Second, "wait before each window (after start, after the last callback)")
	n := flag.Int("requests", 20000, "requests in the burst (0: only the fresh window)")
	conc := flag.Int("concurrency", 32, "intakes in flight")
	body := flag.Int("body", 512, "request body bytes")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "footprint: -collector is required")
		os.Exit(2)
	}
	if err := run(*bin, *idle, *settle, *n, *conc, *body); err != nil {
		fmt.Fprintln(os.Stderr, "footprint:", err)
		os.Exit(1)
	}
}

func run(bin string, idle, settle time.Duration, n, conc, body int) error {
	dir, err := os.MkdirTemp("", "footprint")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// The service (replays) and the receiver (callbacks) on one listener.
	var delivered atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/callback", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		delivered.Add(1)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = http.Serve(ln, mux) }()
	local := "http://" + ln.Addr().String()

	ports, err := procs.FreePorts(1)
	if err != nil {
		return err
	}
	port := ports[0]
	api := "http://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "-listen", "127.0.0.1:"+strconv.Itoa(port), "-db", filepath.Join(dir, "asyncmesh.db"),
		"-replay-url", local, "-api-url", api)
	cmd.Env = append(os.Environ(), "ASYNCMESH_REPLAY_SECRET=footprint-replay-secret-0123456789abcdef")
	logf, err := os.Create(filepath.Join(dir, "collector.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	if err := procs.WaitHTTP(context.Background(), api+"/healthz", 30*time.Second); err != nil {
		return err
	}
	fmt.Printf("collector %s, pid %d, embedded default on loopback\n", bin, pid)

	time.Sleep(settle)
	w, err := window(pid, idle)
	if err != nil {
		return err
	}
	fmt.Printf("fresh, idle %v: %s\n", idle, w)
	if n == 0 {
		return nil
	}

	start := time.Now()
	failed := burst(api, local+"/callback", n, conc, body)
	took := time.Since(start)
	for delivered.Load() < int64(n-failed) {
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("%d of %d callbacks after 10 minutes", delivered.Load(), n-failed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("burst: %d intakes in %v (%.0f/s), %d refused, every callback after %v\n",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), failed, time.Since(start).Round(time.Millisecond))
	time.Sleep(settle)
	if w, err = window(pid, idle); err != nil {
		return err
	}
	fmt.Printf("after the burst, idle %v: %s\n", idle, w)
	return nil
}

// burst posts n envelopes to the collector's intake, conc at a time, and
// returns how many were not accepted.
func burst(api, callback string, n, conc, size int) int {
	payload := bytes.Repeat([]byte("x"), size)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	defer client.CloseIdleConnections()
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				tp := trace.NewParent()
				e := envelope.Envelope{Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(), TraceParent: tp.String(),
					Rule: "footprint", Method: "POST", Authority: "service.local", Path: "/work", Body: payload,
					Headers:  [][2]string{{"content-type", "text/plain"}},
					Callback: rules.Callback{URL: callback, Protocol: rules.ProtocolHTTP, AllowPrivate: true},
					Retry:    rules.Retry{MaxAttempts: 3, InitialBackoff: rules.Duration(10 * time.Millisecond), MaxBackoff: rules.Duration(time.Second)},
					Timeout:  rules.Duration(10 * time.Second)}
				data, _ := json.Marshal(e)
				resp, err := client.Post(api+"/v1/intake", "application/json", bytes.NewReader(data))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

// window measures pid over d.
func window(pid int, d time.Duration) (string, error) {
	cpu0, err := procs.CPUTime(pid)
	if err != nil {
		return "", err
	}
	t0 := time.Now()
	time.Sleep(d)
	cpu1, err := procs.CPUTime(pid)
	if err != nil {
		return "", err
	}
	wall := time.Since(t0)
	mem, err := procs.Status(pid, "VmRSS", "RssAnon", "RssFile")
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("CPU %.1f ms (%.3f%% of a core), VmRSS %.1f MB (RssAnon %.1f MB, RssFile %.1f MB)",
		float64(cpu1-cpu0)/1e6, float64(cpu1-cpu0)/float64(wall)*100, mem[0]/1024, mem[1]/1024, mem[2]/1024), nil
}
