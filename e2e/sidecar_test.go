//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/procs"
)

// TestOneCommandSidecar: asyncmesh sidecar, given only a service's address
// and a rules file, runs the control plane, the collector and Envoy in
// front of a service the test starts, prints where to send requests; an
// async request through that address gets the 202, the service's answer
// reaches the callback, and the Location reads the delivered record. The
// secrets it generates are files of mode 0600 that it never prints.
// SIGINT stops it cleanly. Twice: with a rules file, and with -async
// /work and no file (the caller names its callback).
func TestOneCommandSidecar(t *testing.T) {
	t.Run("rules", func(t *testing.T) { oneCommandSidecar(t, false) })
	t.Run("async", func(t *testing.T) { oneCommandSidecar(t, true) })
}

func oneCommandSidecar(t *testing.T, async bool) {
	service := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "done:%s", b)
	}))
	defer service.Close()
	callbacks := make(chan *http.Request, 4)
	bodies := make(chan string, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		callbacks <- r
		bodies <- string(b)
	}))
	defer receiver.Close()

	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(`
filter:
  collectorCluster: asyncmesh_collector
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
rules:
  - name: work
    match: {pathPrefix: /work}
    mode: async
    callback: {url: "`+receiver.URL+`/cb", allowNetworks: [127.0.0.0/8]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ports, err := procs.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	args := []string{"sidecar", "-upstream", strings.TrimPrefix(service.URL, "http://"), "-rules", rules,
		"-listen", "127.0.0.1:" + strconv.Itoa(ports[0]), "-data", data, "-envoy", os.Getenv("ENVOY_BIN")}
	if async {
		args[3], args[4] = "-async", "/work"
	}
	cmd := exec.Command(filepath.Join(os.Getenv("ASYNCMESH_BIN"), "asyncmesh"), args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var printed strings.Builder
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()

	var front string
	deadline := time.After(20 * time.Second)
	for ready := false; !ready; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("asyncmesh sidecar exited: %v\n%s", <-exited, printed.String())
			}
			printed.WriteString(l + "\n")
			if f := strings.Fields(l); len(f) == 4 && strings.Join(f[:3], " ") == "send requests to" {
				front = f[3]
			}
			ready = strings.HasPrefix(l, "Ctrl-C")
		case <-deadline:
			t.Fatalf("not ready within 20 s; printed:\n%s", printed.String())
		}
	}
	t.Logf("printed:\n%s", printed.String())
	if front != "http://127.0.0.1:"+strconv.Itoa(ports[0]) {
		t.Fatalf("send requests to %q", front)
	}
	if !strings.Contains(printed.String(), filepath.Join(data, "admin-token")) {
		t.Errorf("the admin token file is not named")
	}
	for _, name := range []string{"replay-secret", "admin-token"} {
		fi, err := os.Stat(filepath.Join(data, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, fi.Mode().Perm())
		}
		secret, _ := os.ReadFile(filepath.Join(data, name))
		if len(secret) < 32 || strings.Contains(printed.String(), string(secret)) {
			t.Errorf("%s: %d bytes, or printed", name, len(secret))
		}
	}

	req, _ := http.NewRequest(http.MethodPost, front+"/work/1", strings.NewReader("payload"))
	if async {
		req.Header.Set("x-async-callback", receiver.URL+"/cb")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("POST /work/1: %s, location %q; want 202 with a Location", resp.Status, loc)
	}
	id := resp.Header.Get("x-async-request-id")
	select {
	case r := <-callbacks:
		if body := <-bodies; r.Header.Get("webhook-id") != id || !strings.Contains(body, "done:payload") {
			t.Errorf("callback webhook-id %q (want %s), body %s", r.Header.Get("webhook-id"), id, body)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no callback within 15 s")
	}
	var rec struct{ Status string }
	for end := time.Now().Add(10 * time.Second); rec.Status != "delivered"; {
		if time.Now().After(end) {
			t.Fatalf("record %s: %q, want delivered", id, rec.Status)
		}
		resp, err := http.Get(front + loc)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s, %v", loc, resp.Status, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	_ = cmd.Process.Signal(syscall.SIGINT)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for range lines {
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("after SIGINT: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("still running 15 s after SIGINT")
	}
	if _, err := http.Get(front + "/"); err == nil {
		t.Errorf("Envoy still answers after SIGINT")
	}
}

// TestControlplaneBootstrapValidates: what controlplane bootstrap prints,
// static (-rules -wasm) and ECDS (-xds), is a configuration the real Envoy
// accepts (envoy --mode validate).
func TestControlplaneBootstrapValidates(t *testing.T) {
	bin, dir := os.Getenv("ASYNCMESH_BIN"), t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(`
filter: {collectorCluster: asyncmesh_collector, replaySecretEnv: ASYNCMESH_REPLAY_SECRET}
rules:
  - {name: work, match: {pathPrefix: /work}, mode: async, callback: {allowOverride: true, allowedHosts: ["127.0.0.1"]}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for mode, args := range map[string][]string{
		"static": {"-rules", rules, "-wasm", filepath.Join(bin, "asyncmesh.wasm")},
		"ecds":   {"-xds", "127.0.0.1:18000"},
	} {
		out, err := exec.Command(filepath.Join(bin, "controlplane"), append([]string{"bootstrap", "-upstream", "127.0.0.1:8080"}, args...)...).Output()
		if err != nil {
			t.Fatalf("%s: controlplane bootstrap: %v", mode, err)
		}
		boot := filepath.Join(dir, mode+".yaml")
		if err := os.WriteFile(boot, out, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Getenv("ENVOY_BIN"), "--mode", "validate", "-c", boot, "-l", "error")
		cmd.Env = append(os.Environ(), "ASYNCMESH_REPLAY_SECRET="+strings.Repeat("s", 40))
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "OK") {
			t.Errorf("%s: envoy --mode validate: %v\n%s", mode, err, out)
		}
	}
}
