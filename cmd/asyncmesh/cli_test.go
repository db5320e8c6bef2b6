package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

const operatorToken = "cli-test-operator-token-0123"

// stack is a real collector (embedded store and queue, workers running)
// with a service that answers 200 and a receiver whose /ok answers 200 and
// /fail 500, as the operator commands meet it.
type stack struct {
	t        *testing.T
	api      *httptest.Server
	receiver *httptest.Server
	data     string // a sidecar's data directory: operator-url, admin-token
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{t: t, data: t.TempDir()}
	service := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"done":true}`)) }))
	s.receiver = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/fail") {
			http.Error(w, "receiver is down", http.StatusInternalServerError)
		}
	}))
	db, err := embedded.Open(context.Background(), filepath.Join(s.data, "asyncmesh.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.api = httptest.NewUnstartedServer(nil)
	c, err := collector.New(collector.Config{ReplayURL: service.URL, ReplaySecret: []byte("replay-secret"), Secrets: collector.SecretSource{},
		APIURL: "http://" + s.api.Listener.Addr().String(), AdminToken: []byte(operatorToken), Logger: slog.New(slog.DiscardHandler)},
		db.Store(), db.Queue())
	if err != nil {
		t.Fatal(err)
	}
	s.api.Config.Handler = c.Handler()
	s.api.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		s.api.Close()
		db.Close()
		service.Close()
		s.receiver.Close()
	})
	os.WriteFile(filepath.Join(s.data, operatorURLFile), []byte(s.api.URL+"\n"), 0o600)
	os.WriteFile(filepath.Join(s.data, tokenFile), []byte(operatorToken), 0o600)
	return s
}

// accept hands the collector a request whose callback goes to the
// receiver's path, as the filter would, and returns its id.
func (s *stack) accept(rule, path string) string {
	s.t.Helper()
	tp := trace.NewParent()
	e := &envelope.Envelope{Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(), TraceParent: tp.String(),
		Rule: rule, Method: "POST", Authority: "api.local", Path: "/slow", Body: []byte(`{}`), Timeout: rules.Duration(5 * time.Second),
		Callback: rules.Callback{URL: s.receiver.URL + path, Protocol: rules.ProtocolHTTP, AllowPrivate: true},
		Retry:    rules.Retry{MaxAttempts: 1}}
	body, _ := json.Marshal(e)
	resp, err := http.Post(s.api.URL+"/v1/intake", "application/json", bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		s.t.Fatalf("intake: %d", resp.StatusCode)
	}
	return e.ID
}

// run runs the command line and returns its exit code, stdout and stderr.
func (s *stack) run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	if s != nil {
		args = append(args, "--data", s.data)
	}
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb, false)
	return code, out.String(), errb.String()
}

// waitFor polls get until the request reaches status.
func (s *stack) waitFor(id, status string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, out, _ := s.run("get", id, "-o", "json")
		var r record
		if json.Unmarshal([]byte(out), &r) == nil && string(r.Status) == status {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s never became %s: %s", id, status, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOperatorCommands runs get, search, replay and endpoints against a
// real collector, in tables and in JSON, with the exit codes scripts see.
func TestOperatorCommands(t *testing.T) {
	s := newStack(t)
	ok, failed := s.accept("orders", "/ok"), s.accept("reports", "/fail")
	s.waitFor(ok, "delivered")
	s.waitFor(failed, "dead")

	code, out, errs := s.run("get", ok)
	if code != 0 || !strings.Contains(out, "delivered") || !strings.Contains(out, "Timeline:") || !strings.Contains(out, "Attempts:") {
		t.Fatalf("get: %d\n%s%s", code, out, errs)
	}
	code, out, _ = s.run("get", failed)
	if code != 0 || !strings.Contains(out, "dead") || !strings.Contains(out, "500") {
		t.Fatalf("get of a dead request shows no 500 attempt: %d\n%s", code, out)
	}

	code, out, _ = s.run("search", "--status", "dead")
	if code != 0 || !strings.Contains(out, failed) || strings.Contains(out, ok) {
		t.Fatalf("search --status dead: %d\n%s", code, out)
	}
	code, out, _ = s.run("search", "--rule", "orders", "-o", "json")
	var page struct {
		Records []record `json:"records"`
	}
	if err := json.Unmarshal([]byte(out), &page); code != 0 || err != nil || len(page.Records) != 1 || page.Records[0].ID != ok {
		t.Fatalf("search --rule orders -o json: %d %v\n%s", code, err, out)
	}
	code, out, _ = s.run("search", "--limit", "1", "--all", "-o", "json")
	if code != 0 || strings.Count(out, "\n") != 2 { // one record per line, both pages
		t.Fatalf("search --all -o json: %d\n%s", code, out)
	}
	if code, _, errs = s.run("search", "--since", "yesterday"); code != exitUsage || !strings.Contains(errs, "--since") {
		t.Fatalf("a bad --since: %d %s", code, errs)
	}

	code, out, _ = s.run("replay", ok)
	if code != 0 || !strings.Contains(out, "replaying "+ok) {
		t.Fatalf("replay: %d %s", code, out)
	}
	s.waitFor(ok, "delivered")
	_, out, _ = s.run("get", ok, "-o", "json")
	var r record
	json.Unmarshal([]byte(out), &r)
	if len(r.Attempts) != 2 {
		t.Fatalf("after the replay, %d attempts, want 2", len(r.Attempts))
	}

	// Bulk replay: counted, refused without --yes and no terminal, asked on
	// a terminal (no: nothing), then done.
	if code, out, _ = s.run("replay", "--status", "dead", "--dry-run"); code != 0 || !strings.Contains(out, "1 dead requests would be delivered again") {
		t.Fatalf("replay --dry-run: %d %s", code, out)
	}
	if code, _, errs = s.run("replay", "--status", "dead"); code != exitUsage || !strings.Contains(errs, "--yes") {
		t.Fatalf("a bulk replay without --yes nor a terminal: %d %s", code, errs)
	}
	var out2, errs2 bytes.Buffer
	code = run(context.Background(), []string{"replay", "--status", "dead", "--data", s.data}, strings.NewReader("n\n"), &out2, &errs2, true)
	if code != 0 || !strings.Contains(errs2.String(), "[y/N]") || !strings.Contains(errs2.String(), "nothing replayed") {
		t.Fatalf("answering no: %d %s %s", code, out2.String(), errs2.String())
	}
	if code, out, _ = s.run("replay", "--status", "dead", "--rule", "reports", "--yes"); code != 0 || !strings.Contains(out, "replayed 1 requests") {
		t.Fatalf("replay --yes: %d %s", code, out)
	}
	s.waitFor(failed, "dead")

	deadline := time.Now().Add(10 * time.Second) // the collector merges its counts once a second
	for {
		code, out, _ = s.run("endpoints")
		if code == 0 && strings.Contains(out, s.receiver.URL+"/fail") && strings.Contains(out, "enabled") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints: %d\n%s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Exit codes.
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"unknown id", []string{"get", "no-such-id"}, exitNotFound},
		{"not replayable", []string{"replay", s.accept("orders", "/slow-never-read")}, -1}, // queued or delivering: 409, or done: 0
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"unknown flag", []string{"search", "--nope"}, exitUsage},
		{"bad output", []string{"search", "-o", "yaml"}, exitUsage},
		{"two ids", []string{"get", "a", "b"}, exitUsage},
		{"id and filters", []string{"replay", "x", "--status", "dead"}, exitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := s.run(tc.args...)
			if tc.want >= 0 && code != tc.want {
				t.Fatalf("exit %d, want %d: %s", code, tc.want, errs)
			}
			if tc.want < 0 && code != exitConflict && code != exitOK {
				t.Fatalf("exit %d, want %d (or 0 if it was already delivered): %s", code, exitConflict, errs)
			}
		})
	}
}

// TestOperatorTokenRefused plays someone with another token: the operator
// commands are refused (exit 4, saying what to do), and a read of one
// request answers as for an id that does not exist (exit 3: the collector
// does not confirm that it exists). No server, or a bad URL: exit 1 and 2.
func TestOperatorTokenRefused(t *testing.T) {
	s := newStack(t)
	id := s.accept("orders", "/ok")
	bad := filepath.Join(t.TempDir(), "token")
	os.WriteFile(bad, []byte("someone-elses-token-0123456789"), 0o600)
	if code, out, _ := s.run("get", id, "--token-file", bad); code != exitNotFound || strings.Contains(out, id) {
		t.Errorf("get with another token: exit %d, want %d\n%s", code, exitNotFound, out)
	}
	for _, args := range [][]string{
		{"search", "--token-file", bad},
		{"replay", id, "--token-file", bad},
		{"endpoints", "--token-file", bad},
	} {
		code, out, errs := s.run(args...)
		if code != exitRefused || strings.Contains(out, id) || !strings.Contains(errs, "token") {
			t.Errorf("%v: exit %d, want %d\n%s%s", args, code, exitRefused, out, errs)
		}
	}
	t.Setenv("ASYNCMESH_SERVER", "http://127.0.0.1:9") // nothing listens there
	t.Setenv("ASYNCMESH_TOKEN", operatorToken)
	code, _, errs := (*stack)(nil).run("search")
	if code != exitFailed || !strings.Contains(errs, "is the collector running") {
		t.Fatalf("no server: exit %d: %s", code, errs)
	}
	t.Setenv("ASYNCMESH_SERVER", "ftp://x")
	if code, _, _ = (*stack)(nil).run("search"); code != exitUsage {
		t.Fatalf("a bad server URL: exit %d", code)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(asyncRules([]string{"/slow"})), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(asyncRules([]string{"/slow"}), "mode: async", "mode: sometimes", 1)), 0o600)
	code, out, _ := (*stack)(nil).run("validate", good)
	if code != 0 || !strings.Contains(out, "ok, 1 rules") {
		t.Fatalf("validate good: %d %s", code, out)
	}
	code, _, errs := (*stack)(nil).run("validate", good, bad)
	if code != exitFailed || !strings.Contains(errs, "bad.yaml:9:11: rules[0].mode") {
		t.Fatalf("validate bad: %d %s (want file:line:col)", code, errs)
	}
}

// TestHelpAndCompletion: every command has --help, and the completion
// scripts name every command and its flags.
func TestHelpAndCompletion(t *testing.T) {
	code, out, _ := (*stack)(nil).run("--help")
	if code != 0 {
		t.Fatal(code)
	}
	for _, c := range commands {
		if !strings.Contains(out, "  "+c.name+" ") {
			t.Errorf("help lacks %s", c.name)
		}
		if !slices.Contains(order, c.name) {
			t.Errorf("%s is not in order", c.name)
		}
		code, h, _ := (*stack)(nil).run(c.name, "--help")
		if code != 0 || !strings.HasPrefix(h, "usage: asyncmesh "+c.name) {
			t.Errorf("%s --help: %d %q", c.name, code, h)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		code, script, _ := (*stack)(nil).run("completion", shell)
		if code != 0 || !strings.Contains(script, "replay") || !strings.Contains(script, "dry-run") {
			t.Errorf("completion %s: %d\n%s", shell, code, script)
		}
	}
	if code, _, _ := (*stack)(nil).run("completion", "powershell"); code != exitUsage {
		t.Errorf("completion powershell: %d", code)
	}
}

// TestTailAndCount: tail follows the changes of the rule it filters on, live, from the real
// collector's stream until --max; search --count and rules answer.
func TestTailAndCount(t *testing.T) {
	s := newStack(t)
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := s.run("tail", "--rule", "tailed", "--max", "1", "-o", "json")
		done <- result{code, out, errs}
	}()
	time.Sleep(300 * time.Millisecond) // the stream is open
	s.accept("other", "/ok")
	id := s.accept("tailed", "/ok")
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("tail --max 1 did not end")
	}
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if r.code != 0 || len(lines) != 1 {
		t.Fatalf("tail: %d %q %s", r.code, r.out, r.err)
	}
	for _, l := range lines {
		var rec record
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.ID != id || rec.Rule != "tailed" {
			t.Fatalf("tail printed %q (%v), want only %s's changes", l, err, id)
		}
	}
	if code, out, _ := s.run("search", "--rule", "tailed", "--count"); code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("search --count: %d %q", code, out)
	}
	if code, out, _ := s.run("rules"); code != 0 || !strings.Contains(out, "control plane: not configured") {
		t.Fatalf("rules: %d %q", code, out)
	}
}
