//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// backendStack starts a second sidecar whose collector runs on the servers
// named by the given environment variables (ASYNCMESH_TEST_AMQP_URL: RabbitMQ
// queue; ASYNCMESH_TEST_ES_URL: Elasticsearch store); skipped when one is unset.
func backendStack(t *testing.T, envs ...string) *stack.Stack {
	return backendStackWith(t, nil, envs...)
}

// backendStackWith is backendStack with edit applied to the stack's options
// (when not nil) before it starts.
func backendStackWith(t *testing.T, edit func(*stack.Options), envs ...string) *stack.Stack {
	opt := stack.Options{BinDir: os.Getenv("ASYNCMESH_BIN"), EnvoyBin: os.Getenv("ENVOY_BIN"), WorkDir: t.TempDir()}
	opt.Root, _ = filepath.Abs("..")
	for _, env := range envs {
		url := os.Getenv(env)
		if url == "" {
			t.Skip(env + " is not set")
		}
		switch env {
		case "ASYNCMESH_TEST_AMQP_URL":
			opt.AMQPURL = url
		case "ASYNCMESH_TEST_ES_URL":
			opt.ESURL = url
		}
	}
	if edit != nil {
		edit(&opt)
	}
	s, err := stack.Start(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TestRabbitMQRestartUnderLoad stops and restarts the RabbitMQ node in the
// middle of a bounded load through Envoy: requests accepted while it is down
// stay persisted and go out when it returns; every 202 is called back.
func TestRabbitMQRestartUnderLoad(t *testing.T) {
	s := backendStack(t, "ASYNCMESH_TEST_AMQP_URL")
	l := loadDuring(t, s, "/slow?ms=30", 12*time.Second, func() {
		time.Sleep(2 * time.Second)
		runScript(t, "stop-rabbitmq.sh")
		time.Sleep(time.Second)
		runScript(t, "start-rabbitmq.sh") // same port, same data
	})
	lost, dups := countCallbacks(t, s, l.ids, 90*time.Second)
	log, _ := os.ReadFile(s.LogPath("collector"))
	relayed := strings.Count(string(log), "outbox relay: published")
	t.Logf("rabbitmq restart: accepted %d (%d of them published by the relay after the broker came back), refused %d, lost %d, duplicated %d",
		len(l.ids), relayed, l.refused(), lost, dups)
	if !strings.Contains(string(log), "rabbitmq: connection lost") {
		t.Fatal("the collector never saw the broker go: the fault did not happen")
	}
	if lost > 0 {
		t.Fatalf("%d accepted requests never called back", lost)
	}
}

// runScript runs one of scripts/ (a server's start or stop).
func runScript(t *testing.T, name string) {
	out, err := exec.Command(filepath.Join("..", "scripts", name)).CombinedOutput()
	if err != nil {
		t.Errorf("%s: %v\n%s", name, err, out)
	}
	t.Logf("%s: %s", name, strings.TrimSpace(string(out)))
}
