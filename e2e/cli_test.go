//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// cli runs build/asyncmesh against stack s's operator API, with its token in
// the environment, as an operator's shell would; it returns the exit code
// and stdout (stderr goes to the test log).
func cli(t *testing.T, s *stack.Stack, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(os.Getenv("ASYNCMESH_BIN"), "asyncmesh"), args...)
	cmd.Env = append(os.Environ(), "ASYNCMESH_SERVER="+s.CollectorURL, "ASYNCMESH_TOKEN="+s.AdminToken)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if errb.Len() > 0 {
		t.Logf("asyncmesh %s: %s", strings.Join(args, " "), errb.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("asyncmesh %v: %v", args, err)
	}
	return 0, string(out)
}

// TestCLI: the operator's first commands against the real stack. A request
// sent through Envoy is followed live by tail, found by search, shown by
// get with its timeline and attempt, replayed (a second attempt), counted
// by a bulk replay's dry run; its endpoint is listed; the rules file
// validates; rules shows what each node applied.
// Twice: on the embedded default, and on RabbitMQ + Elasticsearch (when
// ASYNCMESH_TEST_AMQP_URL and ASYNCMESH_TEST_ES_URL are set), each stack
// with its control plane, whose nodes rules shows.
func TestCLI(t *testing.T) {
	withControlPlane := func(o *stack.Options) { o.ControlPlane = true }
	t.Run("embedded", func(t *testing.T) { cliAgainst(t, backendStackWith(t, withControlPlane)) })
	t.Run("rabbitmq+elasticsearch", func(t *testing.T) {
		cliAgainst(t, backendStackWith(t, withControlPlane, "ASYNCMESH_TEST_AMQP_URL", "ASYNCMESH_TEST_ES_URL"))
	})
}

func cliAgainst(t *testing.T, s *stack.Stack) {
	// tail first, so that it sees the request arrive and end.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tail := exec.CommandContext(ctx, filepath.Join(os.Getenv("ASYNCMESH_BIN"), "asyncmesh"), "tail", "-o", "json", "--rule", "slow-report")
	tail.Env = append(os.Environ(), "ASYNCMESH_SERVER="+s.CollectorURL, "ASYNCMESH_TOKEN="+s.AdminToken)
	tailOut, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tail.Stderr = os.Stderr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); tail.Wait() }()
	time.Sleep(500 * time.Millisecond) // the stream is open

	resp, body := doAt(t, s, "POST", "/slow?ms=10", `{"cli":1}`, "content-type", "application/json")
	id, traceID := accepted(t, resp, body)
	waitCallbackAt(t, s, id)

	// tail: the request's changes, ending delivered.
	statuses := []string{}
	sc := bufio.NewScanner(tailOut)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var r struct{ ID, Status string }
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			t.Fatalf("tail -o json printed %q", sc.Text())
		}
		if r.ID == id {
			statuses = append(statuses, r.Status)
			if r.Status == "delivered" {
				break
			}
		}
	}
	if len(statuses) == 0 || statuses[len(statuses)-1] != "delivered" {
		t.Fatalf("tail saw %v of %s, want it to end delivered (%v)", statuses, id, sc.Err())
	}

	code, out := cli(t, s, "search", "--trace", traceID)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "delivered") {
		t.Fatalf("search --trace: %d\n%s", code, out)
	}
	code, out = cli(t, s, "get", id)
	if code != 0 || !strings.Contains(out, "Timeline:") || !strings.Contains(out, "delivering") || !strings.Contains(out, "204") {
		t.Fatalf("get: %d\n%s", code, out)
	}
	if code, out = cli(t, s, "replay", id); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("replay: %d %s", code, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, out = cli(t, s, "get", id, "-o", "json")
		var r struct {
			Status   string
			Attempts []json.RawMessage
		}
		json.Unmarshal([]byte(out), &r)
		if r.Status == "delivered" && len(r.Attempts) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after replay: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	code, out = cli(t, s, "replay", "--status", "delivered", "--trace", traceID, "--dry-run")
	if code != 0 || !strings.Contains(out, "1 delivered requests would be delivered again") {
		t.Fatalf("replay --dry-run: %d %s", code, out)
	}
	// A bulk replay without a terminal to ask, and without --yes: refused.
	if code, _ = cli(t, s, "replay", "--status", "delivered", "--trace", traceID); code != 2 {
		t.Fatalf("a bulk replay without --yes and no terminal: exit %d, want 2", code)
	}
	if code, out = cli(t, s, "search", "--trace", traceID, "--count"); code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("search --count: %d %q", code, out)
	}
	for deadline := time.Now().Add(10 * time.Second); ; { // each collector merges its counts once a second
		code, out = cli(t, s, "endpoints")
		if code == 0 && strings.Contains(out, s.ReceiverURL) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints: %d\n%s", code, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if code, out = cli(t, s, "validate", s.RulesPath()); code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("validate: %d %s", code, out)
	}
	code, out = cli(t, s, "rules", "--check")
	if code != 0 || !strings.Contains(out, "applied") {
		t.Fatalf("rules --check: %d\n%s", code, out)
	}
	if code, _ = cli(t, s, "get", "no-such-request"); code != 3 {
		t.Fatalf("get of an unknown id: exit %d, want 3", code)
	}
}
