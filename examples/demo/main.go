// Command demo runs asyncmesh end to end on the embedded default: it starts the
// control plane, Envoy (the compiled filter, configured by the control plane
// over xDS), the collector, the slow demo service and the callback receiver on
// free loopback ports, sends one request to the slow endpoint, shows the
// immediate 202, the signed callback arriving with the same trace id and the
// record's status history, then edits the rules file and shows the change
// taking effect live, and stops everything it started.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	root := flag.String("root", ".", "repository root")
	bin := flag.String("bin", "build", "directory of the built binaries and asyncmesh.wasm")
	envoy := flag.String("envoy", os.Getenv("ENVOY_BIN"), "envoy binary")
	flag.Parse()
	if *envoy == "" {
		return fmt.Errorf("-envoy: no Envoy binary (run scripts/install-envoy.sh, or make demo)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	work, err := os.MkdirTemp("", "asyncmesh-demo-")
	if err != nil {
		return err
	}
	step("starting the control plane, Envoy + asyncmesh filter (rules over xDS), collector (embedded SQLite), slow service, callback receiver")
	s, err := stack.Start(ctx, stack.Options{Root: *root, BinDir: *bin, EnvoyBin: *envoy, WorkDir: work, ControlPlane: true})
	if err != nil {
		return err
	}
	defer func() {
		s.Close()
		step("stopped everything; logs are in " + work)
	}()
	fmt.Printf("   envoy %s  collector %s  service %s  receiver %s\n", s.EnvoyURL, s.CollectorURL, s.ServiceURL, s.ReceiverURL)

	step("POST /slow?ms=2000 through Envoy (the service takes 2 s to answer)")
	start := time.Now()
	http.DefaultClient.Timeout = 30 * time.Second
	resp, err := http.Post(s.EnvoyURL+"/slow?ms=2000", "application/json", strings.NewReader(`{"report":"q3"}`))
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("   %s after %v\n", resp.Status, time.Since(start).Round(time.Millisecond))
	for _, h := range []string{"Location", "X-Async-Request-Id", "X-Async-Trace-Id"} {
		fmt.Printf("   %s: %s\n", h, resp.Header.Get(h))
	}
	fmt.Printf("   %s", body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("expected 202 Accepted")
	}
	traceID := resp.Header.Get("X-Async-Trace-Id")

	step("waiting for the signed callback at the receiver")
	var cb map[string]any
	for deadline := time.Now().Add(30 * time.Second); cb == nil; {
		if time.Now().After(deadline) {
			return fmt.Errorf("no callback within 30s (see %s)", s.LogPath("collector"))
		}
		var got []struct {
			WebhookID string          `json:"webhookId"`
			TraceID   string          `json:"traceId"`
			Verified  bool            `json:"verified"`
			Body      json.RawMessage `json:"body"`
		}
		if err := getJSON(s.ReceiverURL+"/received", &got); err == nil && len(got) > 0 {
			fmt.Printf("   callback after %v: webhook-id %s, signature verified %v, trace id %s (same: %v)\n",
				time.Since(start).Round(time.Millisecond), got[0].WebhookID, got[0].Verified, got[0].TraceID, got[0].TraceID == traceID)
			_ = json.Unmarshal(got[0].Body, &cb)
			pretty, _ := json.MarshalIndent(cb, "   ", "  ")
			fmt.Printf("   %s\n", pretty)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	step("the record's status history, through the Location the caller got (long-poll until terminal)")
	var rec struct {
		Status  string `json:"status"`
		History []struct {
			Status string    `json:"status"`
			At     time.Time `json:"at"`
		} `json:"history"`
	}
	if err := getJSON(s.EnvoyURL+resp.Header.Get("Location")+"&wait=10s", &rec); err != nil {
		return err
	}
	t0 := rec.History[0].At
	for _, h := range rec.History {
		fmt.Printf("   +%-8v %s\n", h.At.Sub(t0).Round(time.Millisecond), h.Status)
	}
	if rec.Status != "delivered" {
		return fmt.Errorf("record ended %s, want delivered", rec.Status)
	}
	return liveRuleChange(s)
}

// liveRuleChange edits the rules file so that /maybe (opt-in) becomes always
// async, and shows Envoy following within a moment, without a restart.
func liveRuleChange(s *stack.Stack) error {
	post := func() (int, error) {
		resp, err := http.Post(s.EnvoyURL+"/maybe?ms=50", "application/json", strings.NewReader(`{}`))
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	step("POST /maybe without Prefer: rule maybe-async is opt-in, so it is served synchronously")
	code, err := post()
	if err != nil {
		return err
	}
	fmt.Printf("   %d\n", code)
	step("editing " + s.RulesPath() + ": maybe-async becomes mode: async")
	raw, err := os.ReadFile(s.RulesPath())
	if err != nil {
		return err
	}
	if err := s.WriteRules(strings.Replace(string(raw), "mode: opt-in", "mode: async", 1)); err != nil {
		return err
	}
	start := time.Now()
	for code != http.StatusAccepted {
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("the rule change did not take effect within 10s (see %s)", s.LogPath("controlplane"))
		}
		time.Sleep(50 * time.Millisecond)
		if code, err = post(); err != nil {
			return err
		}
	}
	fmt.Printf("   POST /maybe now answers %d, %v after the edit, with no restart\n", code, time.Since(start).Round(time.Millisecond))
	resp, err := http.Get(s.ControlPlaneMetricsURL + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	m, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(m), "\n") {
		if strings.HasPrefix(line, "asyncmesh_controlplane_node_config") || strings.HasPrefix(line, "asyncmesh_controlplane_reloads_total") {
			fmt.Printf("   %s\n", line)
		}
	}
	return nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
