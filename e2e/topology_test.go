//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/procs"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Each pod is laid out as the chart's sidecar mode lays it out
// (deploy/k8s/chart): the parts of the sidecar talk over the pod's
// loopback, as containers of one Kubernetes pod do; only Envoy's listener
// and the collector's operator listener are on every address of the pod.
const (
	podEnvoyPort    = "10000" // all addresses: the callers' way in
	podOperatorPort = "9903"  // all addresses: operators only, with the token
	podServicePort  = "8080"  // loopback
	podCollector    = "127.0.0.1:9901"
	podEnvoyAdmin   = "127.0.0.1:9902"
	cpXDSPort       = "18000"
	cpMetricsPort   = "18001"
	receiverPort    = "9000"
)

// TestTopology runs the sidecar as the manifests lay it out, on separate
// hosts (network namespaces joined by a bridge, so every hop between them
// crosses real interfaces): the control plane on one; two pods, each with
// the service, its Envoy and its collector; the caller and its callback
// receiver on a third; RabbitMQ and Elasticsearch, which the two pods'
// collectors share as replicas of one service (same queue, same store), on
// a fourth. Across it: the async lifecycle through each pod, a record
// accepted by one pod read through the other, the callers' and operators'
// trust boundaries, and a rules edit on the control plane reaching both pods.
func TestTopology(t *testing.T) {
	bin, envoyBin := os.Getenv("ASYNCMESH_BIN"), os.Getenv("ENVOY_BIN")
	root, _ := filepath.Abs("..")
	backendsInstalled(t, root)
	// Created before the namespaces, so removed after them: the backends
	// write here until they are stopped.
	work := t.TempDir()
	state := t.TempDir()
	logs := &procs.Group{Dir: work}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, work, state)
		}
	})

	f := newFabric(t)
	cp := f.addHost("cp", topoSubnet+".2")
	pods := []*netHost{f.addHost("pod1", topoSubnet+".11"), f.addHost("pod2", topoSubnet+".12")}
	caller := f.addHost("caller", topoSubnet+".20")
	backends := f.addHost("backends", topoSubnet+".30")
	// Stopped before the namespaces are deleted (cleanups run last first).
	t.Cleanup(func() {
		logs.StopAll("envoy-pod1", "envoy-pod2", "collector-pod1", "collector-pod2", "service-pod1", "service-pod2", "controlplane")
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// RabbitMQ and Elasticsearch start in the backends namespace, on its
	// address only, while the rest comes up (Elasticsearch takes the longest).
	type started struct {
		url string
		err error
	}
	amqpc, esc := make(chan started, 1), make(chan started, 1)
	go func() {
		url, err := startBackend(ctx, backends, filepath.Join(root, "scripts", "start-rabbitmq.sh"), filepath.Join(work, "rabbitmq-start.log"),
			"ASYNCMESH_RABBITMQ_HOST="+backends.ip, "ASYNCMESH_RABBITMQ_DIR="+filepath.Join(state, "rabbitmq"))
		amqpc <- started{url, err}
	}()
	go func() {
		url, err := startBackend(ctx, backends, filepath.Join(root, "scripts", "start-elasticsearch.sh"), filepath.Join(work, "elasticsearch-start.log"),
			"ASYNCMESH_ES_HOST="+backends.ip, "ASYNCMESH_ES_DIR="+filepath.Join(state, "es"))
		esc <- started{url, err}
	}()

	secret := webhook.NewSecret()
	receiver := startTopoReceiver(t, caller, caller.ip+":"+receiverPort, secret)
	rulesPath := filepath.Join(work, "rules.yaml")
	rules := topoRules(receiver.url)
	writeTopoRules(t, rulesPath, rules)

	cpAddr := cp.ip + ":" + cpXDSPort
	if !spawn(t, logs, cp, "controlplane", filepath.Join(bin, "controlplane"), nil, "serve", "-rules", rulesPath,
		"-wasm", filepath.Join(bin, "asyncmesh.wasm"), "-listen", cpAddr, "-metrics", cp.ip+":"+cpMetricsPort) ||
		!waitReady(ctx, t, cp, "http://"+cp.ip+":"+cpMetricsPort+"/healthz") {
		t.FailNow()
	}

	amqp, es := <-amqpc, <-esc
	if amqp.err != nil || es.err != nil {
		t.Fatalf("starting the backends in %s: RabbitMQ: %v; Elasticsearch: %v", backends.ns, amqp.err, es.err)
	}
	t.Logf("backends: %s, %s", amqp.url, es.url)

	// The pods are replicas of one service: one replay secret, one operator
	// token, one queue and one store (the same prefixes).
	replaySecret := "replay-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_")
	adminToken := "admin-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_")
	var wg sync.WaitGroup
	for _, pod := range pods {
		wg.Go(func() {
			startPod(ctx, t, logs, pod, bin, envoyBin, rulesPath, cpAddr, "ASYNCMESH_REPLAY_SECRET="+replaySecret, []string{
				"ASYNCMESH_SECRET_TOPO=" + secret,
				"ASYNCMESH_ADMIN_TOKEN=" + adminToken, "ASYNCMESH_AMQP_URL=" + amqp.url, "ASYNCMESH_ES_URL=" + es.url,
			})
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Both pods' collectors hold connections to the one RabbitMQ and the
	// one Elasticsearch, from their own addresses.
	for _, b := range []struct{ name, url string }{{"RabbitMQ", amqp.url}, {"Elasticsearch", es.url}} {
		u, err := neturl.Parse(b.url)
		if err != nil {
			t.Fatalf("%s URL %q: %v", b.name, b.url, err)
		}
		peers := backends.peers(t, u.Port())
		for _, pod := range pods {
			if !slices.Contains(peers, pod.ip) {
				t.Errorf("%s (%s) has no connection from %s: its peers are %v", b.name, u.Host, pod.role, peers)
			}
		}
	}

	envoyURL := func(pod *netHost) string { return "http://" + pod.ip + ":" + podEnvoyPort }
	podIPs := []string{pods[0].ip, pods[1].ip}
	// acc[i] is the request accepted through pods[i].
	var acc [2]topoAccepted

	t.Run("lifecycle", func(t *testing.T) {
		for i, pod := range pods {
			resp, body := topoDo(t, caller, "POST", envoyURL(pod)+"/slow?ms=300", `{"via":"`+pod.role+`"}`, "content-type", "application/json")
			acc[i] = topoAccept(t, pod.role, resp, body)
		}
		for i, pod := range pods {
			a := acc[i]
			cb := receiver.wait(t, a.id, 30*time.Second)
			// The callback came over the fabric from the collector that ran
			// the request: either replica's, from its pod's address.
			if cb.err != nil || cb.path != "/callbacks" || !slices.Contains(podIPs, cb.remote) ||
				cb.body.ID != a.id || cb.body.TraceID != a.traceID || cb.body.Status != "completed" ||
				cb.body.Response.Status != 200 || !strings.Contains(cb.body.Response.Body, `{\"via\":\"`+pod.role+`\"}`) {
				t.Errorf("%s: callback %+v (signature: %v), want a verified completed callback from %v", pod.role, cb, cb.err, podIPs)
			}
			// The service ran the request exactly once, in one of the pods.
			ran := 0
			for _, p := range pods {
				ran += strings.Count(readFile(t, logs.LogPath("service-"+p.role)), "request_id="+a.id)
			}
			if ran != 1 {
				t.Errorf("%s: the services ran request %s %d times, want once", pod.role, a.id, ran)
			}
			t.Logf("accepted by %s, called back from %s", pod.role, cb.remote)
			// The Location reads the record through the pod that accepted it
			// and through the other replica: they share the store.
			for _, via := range pods {
				resp, body := topoDo(t, caller, "GET", envoyURL(via)+a.location+"&wait=10s", "")
				var rec struct{ ID, Status string }
				if err := json.Unmarshal(body, &rec); err != nil || resp.StatusCode != 200 || rec.ID != a.id || rec.Status != "delivered" {
					t.Errorf("%s's request read through %s: %s %s, want 200 delivered", pod.role, via.role, resp.Status, body)
				}
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("trust", func(t *testing.T) {
		victim, other := acc[0], acc[1]
		_, missing := topoDo(t, caller, "GET", envoyURL(pods[1])+"/async/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", "")
		for _, via := range pods {
			// Another request's token, or none, reads nothing on either
			// replica: the 404 of an id that does not exist.
			for _, q := range []string{"", "?token=" + other.token, "?token="} {
				resp, body := topoDo(t, caller, "GET", envoyURL(via)+"/async/v1/requests/"+victim.id+q, "")
				if resp.StatusCode != 404 || strings.Replace(string(body), victim.id, "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", 1) != string(missing) {
					t.Errorf("read of %s through %s with %q: %s %s, want the 404 of a missing id", victim.id, via.role, q, resp.Status, body)
				}
			}
			// The operator endpoints are not on the callers' path.
			for _, p := range []string{"/async/v1/requests?traceId=" + victim.traceID, "/async/metrics"} {
				if resp, body := topoDo(t, caller, "GET", envoyURL(via)+p, ""); resp.StatusCode != 404 || strings.Contains(string(body), victim.id) {
					t.Errorf("GET %s through %s: %s %s, want 404", p, via.role, resp.Status, body)
				}
			}
			// A caller may not aim a callback at a host the rule does not
			// list, here the backends' Elasticsearch on the private network
			// (an SSRF into the store), at intake, on either replica.
			resp, body := topoDo(t, caller, "POST", envoyURL(via)+"/slow?ms=0", "{}",
				"x-async-callback", es.url+"/_bulk", "content-type", "application/json")
			if resp.StatusCode != 400 || !strings.Contains(string(body), "callback_not_allowed") {
				t.Errorf("callback to %s through %s: %s %s, want 400 callback_not_allowed", es.url, via.role, resp.Status, body)
			}
		}
		// A callback the caller names on a listed host (its own, across the
		// fabric) is called.
		resp, body := topoDo(t, caller, "POST", envoyURL(pods[1])+"/slow?ms=0", "{}",
			"x-async-callback", receiver.url+"/mine", "content-type", "application/json")
		mine := topoAccept(t, "pod2, own callback", resp, body)
		if cb := receiver.wait(t, mine.id, 30*time.Second); cb.err != nil || cb.path != "/mine" || !slices.Contains(podIPs, cb.remote) {
			t.Errorf("caller-named callback: %+v, want one at /mine from %v", cb, podIPs)
		}
		// A replay header (captured in flight, say) is spent at most once
		// per Envoy. The replicas share the replay secret but not the
		// spent signatures: docs/security.md names the window left, one
		// more use at each other Envoy within 60 s, which this logs.
		id, mark := newID(), "topology-"+newID()[24:]
		target, payload := "/slow/raw/"+mark, []byte(`{"transfer":100}`)
		header := signed(replaySecret, id, "POST", "api.local", target, payload, time.Now())
		for _, via := range pods {
			var codes []string
			for use := range 2 {
				req, _ := http.NewRequest("POST", envoyURL(via)+target, bytes.NewReader(payload))
				req.Host = "api.local"
				req.Header.Set("x-async-replay", header)
				req.Header.Set("x-async-request-id", id)
				resp, err := caller.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				refused := resp.Header.Get("x-async-replay-refused")
				codes = append(codes, resp.Status+" "+refused)
				switch {
				case via == pods[0] && use == 0 && (resp.StatusCode != 200 || !strings.Contains(string(b), id)):
					t.Errorf("the first use of the replay header at %s: %s %s, want the service's echo", via.role, resp.Status, b)
				case use == 1 && (resp.StatusCode != 403 || refused != "used"):
					t.Errorf("the replay header used again at %s: %s %q %s, want 403 used", via.role, resp.Status, refused, b)
				}
			}
			t.Logf("a replay header used twice at %s: %v", via.role, codes)
		}
		// The operator, on the control plane's host, searches the shared
		// store through either collector's operator listener with the
		// token, and only with it.
		for _, via := range pods {
			u := "http://" + via.ip + ":" + podOperatorPort + "/v1/requests?traceId=" + victim.traceID
			if resp, body := topoDo(t, cp, "GET", u, ""); resp.StatusCode != 401 || strings.Contains(string(body), victim.id) {
				t.Errorf("search on %s without the token: %s %s, want 401", via.role, resp.Status, body)
			}
			// Elasticsearch is near-real-time: a search sees a write after
			// its next refresh (1 s).
			for end := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				resp, body := topoDo(t, cp, "GET", u, "", "authorization", "Bearer "+adminToken)
				if resp.StatusCode == 200 && strings.Contains(string(body), victim.id) {
					break
				}
				if resp.StatusCode != 200 || time.Now().After(end) {
					t.Errorf("search on %s with the token: %s %s, want pod1's request %s", via.role, resp.Status, body, victim.id)
					break
				}
			}
		}
	})

	t.Run("rules edit", func(t *testing.T) {
		// No rule matches /maybe yet: both pods serve it synchronously.
		for _, pod := range pods {
			if resp, body := topoDo(t, caller, "POST", envoyURL(pod)+"/maybe?ms=0", "{}"); resp.StatusCode != 200 || !strings.Contains(string(body), `"report":"done"`) {
				t.Fatalf("/maybe through %s before the edit: %s %s, want the service's 200", pod.role, resp.Status, body)
			}
		}
		written := time.Now()
		writeTopoRules(t, rulesPath, rules+topoLaterRule(receiver.url))
		// The control plane pushes the edit to both pods' Envoys (and
		// collectors): /maybe becomes async on each within seconds. Both
		// are polled in turn, so each one's delay is its own.
		var after [2]*topoAccepted
		for after[0] == nil || after[1] == nil {
			for i, pod := range pods {
				if after[i] != nil {
					continue
				}
				resp, body := topoDo(t, caller, "POST", envoyURL(pod)+"/maybe?ms=0", `{"edit":true}`)
				switch {
				case resp.StatusCode == 202:
					a := topoAccept(t, pod.role+" after the edit", resp, body)
					after[i] = &a
					t.Logf("%s: /maybe async %v after the edit", pod.role, time.Since(written).Round(time.Millisecond))
				case resp.StatusCode != 200 || time.Since(written) > 15*time.Second:
					t.Fatalf("/maybe through %s %v after the edit: %s %s, want 202 within 15 s", pod.role, time.Since(written).Round(time.Millisecond), resp.Status, body)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The collectors run and call back under the new rule too.
		for i, pod := range pods {
			if cb := receiver.wait(t, after[i].id, 30*time.Second); cb.err != nil || cb.body.Status != "completed" || !slices.Contains(podIPs, cb.remote) {
				t.Errorf("%s: callback of the new rule %+v", pod.role, cb)
			}
		}
	})
}

// backendsInstalled skips the test where RabbitMQ or Elasticsearch is not
// installed: the namespaces have no way out to install them (CI installs
// them with scripts/with-backends.sh before the tests).
func backendsInstalled(t *testing.T, root string) {
	t.Helper()
	if _, err := exec.LookPath("rabbitmq-server"); err != nil {
		if _, err := os.Stat("/usr/lib/rabbitmq/bin/rabbitmq-server"); err != nil {
			t.Skip("RabbitMQ is not installed (scripts/start-rabbitmq.sh installs it; CI runs the tests under scripts/with-backends.sh)")
		}
	}
	version := os.Getenv("ES_VERSION")
	if version == "" {
		version = "8.19.7"
	}
	if _, err := os.Stat(filepath.Join(root, ".tools", "elasticsearch-"+version, "bin", "elasticsearch")); err != nil {
		t.Skip("Elasticsearch is not installed under .tools (scripts/start-elasticsearch.sh installs it; CI runs the tests under scripts/with-backends.sh)")
	}
}

// startBackend runs a scripts/start-*.sh inside h's namespace and returns
// the URL it prints; the server it starts stays in the namespace (deleting
// the namespace stops it). Its data directory's parents are opened for
// Elasticsearch, which runs as a user of its own.
func startBackend(ctx context.Context, h *netHost, script, logPath string, env ...string) (string, error) {
	for _, kv := range env {
		if dir, ok := strings.CutPrefix(kv, "ASYNCMESH_ES_DIR="); ok {
			for d := filepath.Dir(dir); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					return "", err
				}
			}
		}
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, "ip", h.exec(script)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = logf
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w (see %s)", filepath.Base(script), err, logPath)
	}
	return strings.TrimSpace(string(out)), nil
}

// startPod starts the service, the collector and Envoy of one pod and waits
// until each answers (from inside the pod).
// replayEnv (NAME=secret) goes to the collector and Envoy, env to the
// collector only.
func startPod(ctx context.Context, t *testing.T, logs *procs.Group, pod *netHost, bin, envoyBin, rulesPath, cpAddr, replayEnv string, env []string) {
	if !spawn(t, logs, pod, "service-"+pod.role, filepath.Join(bin, "service"), nil, "-listen", "127.0.0.1:"+podServicePort) ||
		!waitReady(ctx, t, pod, "http://127.0.0.1:"+podServicePort+"/healthz") {
		return
	}
	if !spawn(t, logs, pod, "collector-"+pod.role, filepath.Join(bin, "collector"), append(env, replayEnv),
		"-listen", podCollector, "-operator-listen", "0.0.0.0:"+podOperatorPort,
		"-replay-url", "http://127.0.0.1:"+podEnvoyPort, "-admin-token-env", "ASYNCMESH_ADMIN_TOKEN",
		"-db", filepath.Join(logs.Dir, pod.role+".db"),
		"-queue", "rabbitmq", "-amqp-prefix", "topology", "-store", "elasticsearch", "-es-prefix", "topology", "-es-replicas", "0",
		"-xds", cpAddr, "-node-id", pod.role, "-node-cluster", "orders") ||
		!waitReady(ctx, t, pod, "http://"+podCollector+"/readyz") {
		return
	}
	// The bootstrap is what controlplane bootstrap prints for this pod: its
	// rules come from the control plane on its own host.
	out, err := exec.Command(filepath.Join(bin, "controlplane"), "bootstrap", "-listen", "0.0.0.0:"+podEnvoyPort,
		"-upstream", "127.0.0.1:"+podServicePort, "-collector", podCollector, "-admin", podEnvoyAdmin,
		"-xds", cpAddr, "-rules", rulesPath, "-node-id", pod.role, "-node-cluster", "orders").Output()
	if err != nil {
		t.Errorf("%s: controlplane bootstrap: %v", pod.role, err)
		return
	}
	boot := filepath.Join(logs.Dir, "envoy-"+pod.role+".json")
	if err := os.WriteFile(boot, out, 0o600); err != nil {
		t.Error(err)
		return
	}
	if spawn(t, logs, pod, "envoy-"+pod.role, envoyBin, []string{replayEnv}, "-c", boot, "--concurrency", "1",
		"--disable-hot-restart", "-l", "warning", "--component-log-level", "wasm:info") {
		waitReady(ctx, t, pod, "http://"+podEnvoyAdmin+"/ready")
	}
}

// spawn starts bin inside h's namespace as name (its output in
// logs.LogPath(name)), reporting whether it could.
func spawn(t *testing.T, logs *procs.Group, h *netHost, name, bin string, env []string, args ...string) bool {
	t.Helper()
	if err := logs.Spawn(name, "ip", env, h.exec(bin, args...)...); err != nil {
		t.Error(err)
		return false
	}
	return true
}

// waitReady polls url from inside h's namespace until it answers 200
// (60 s at most), reporting an error otherwise.
func waitReady(ctx context.Context, t *testing.T, h *netHost, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := h.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
			err = errors.New(resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			t.Errorf("%s in %s did not become ready: %v", url, h.ns, last)
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topoDo sends a request from host h.
func topoDo(t *testing.T, h *netHost, method, url, body string, hdrs ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", method, url, h.role, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

type topoAccepted struct{ id, traceID, token, location string }

// topoAccept checks a 202 and returns what the caller keeps of it.
func topoAccept(t *testing.T, what string, resp *http.Response, body []byte) topoAccepted {
	t.Helper()
	var b struct{ ID, TraceID, StatusURL, AccessToken string }
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(body, &b) != nil {
		t.Fatalf("%s: %s %s, want 202", what, resp.Status, body)
	}
	a := topoAccepted{id: b.ID, traceID: b.TraceID, token: b.AccessToken, location: resp.Header.Get("location")}
	if a.id == "" || a.id != resp.Header.Get("x-async-request-id") || a.location != "/async/v1/requests/"+a.id+"?token="+a.token || b.StatusURL != a.location {
		t.Fatalf("%s: 202 headers %v body %s", what, resp.Header, body)
	}
	return a
}

// topoRules is the rules file of the topology: /slow is async, called back
// on the receiver's host, which is also the one host a caller may name for
// its own callbacks (and the one private address the rule may reach).
// The collector timeout is generous: the first write of a run creates the
// day's index on a cold Elasticsearch, on a busy CI machine.
func topoRules(receiverURL string) string {
	host := strings.TrimPrefix(receiverURL, "http://")
	ip, _, _ := net.SplitHostPort(host)
	return `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 5s
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
secrets:
  topo: {env: ASYNCMESH_SECRET_TOPO}
rules:
  - name: work
    match: {pathPrefix: /slow}
    mode: async
    timeout: 20s
    retry: {maxAttempts: 5, initialBackoff: 200ms, maxBackoff: 2s}
    callback: {url: "` + receiverURL + `/callbacks", secretRef: topo, allowOverride: true, allowedHosts: ["` + ip + `"], allowNetworks: [` + ip + `/32]}
`
}

// topoLaterRule is the rule the edit adds: /maybe becomes async.
func topoLaterRule(receiverURL string) string {
	ip, _, _ := net.SplitHostPort(strings.TrimPrefix(receiverURL, "http://"))
	return `  - name: later
    match: {pathPrefix: /maybe}
    mode: async
    callback: {url: "` + receiverURL + `/callbacks", secretRef: topo, allowNetworks: [` + ip + `/32]}
`
}

// writeTopoRules replaces the rules file by an atomic rename, as an editor
// or a config map update does.
func writeTopoRules(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// topoReceiver is the caller's callback endpoint, served by the test from a
// listener inside the caller's namespace: what it records of a callback
// (the remote address above all) is what arrived over the fabric.
type topoReceiver struct {
	url    string
	secret webhook.Secret

	mu      sync.Mutex
	got     map[string]topoCallback // by webhook-id (the request id)
	arrived chan struct{}           // closed (and replaced) at each callback
}

type topoCallback struct {
	remote, path string
	err          error // of the signature
	body         callback
}

// startTopoReceiver serves the receiver on addr inside h's namespace; it
// verifies callbacks against secret (whsec_…).
func startTopoReceiver(t *testing.T, h *netHost, addr, secret string) *topoReceiver {
	t.Helper()
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.listen(addr)
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, h.ns, err)
	}
	r := &topoReceiver{url: "http://" + addr, secret: key, got: map[string]topoCallback{}, arrived: make(chan struct{})}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		cb := topoCallback{path: req.URL.Path, err: webhook.Verify(req.Header, body, []webhook.Secret{r.secret}, time.Now())}
		cb.remote, _, _ = net.SplitHostPort(req.RemoteAddr)
		if err := json.Unmarshal(body, &cb.body); err != nil && cb.err == nil {
			cb.err = err
		}
		r.mu.Lock()
		r.got[req.Header.Get("webhook-id")] = cb
		close(r.arrived)
		r.arrived = make(chan struct{})
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return r
}

// wait returns the callback of request id, failing the test if none
// arrives within timeout.
func (r *topoReceiver) wait(t *testing.T, id string, timeout time.Duration) topoCallback {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		cb, ok := r.got[id]
		arrived := r.arrived
		r.mu.Unlock()
		if ok {
			return cb
		}
		select {
		case <-arrived:
		case <-deadline:
			t.Fatalf("no callback for %s within %v", id, timeout)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dumpLogs prints the end of every process's log (and the backends'
// server output) of a failed run.
func dumpLogs(t *testing.T, dirs ...string) {
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), "gc.log") || !(strings.HasSuffix(path, ".log") || strings.HasSuffix(path, "server.out")) {
				return nil
			}
			b, _ := os.ReadFile(path)
			var tail []string
			sc := bufio.NewScanner(bytes.NewReader(b))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				tail = append(tail, sc.Text())
				if len(tail) > 40 {
					tail = tail[1:]
				}
			}
			t.Logf("--- %s (last %d lines)\n%s", path, len(tail), strings.Join(tail, "\n"))
			return nil
		})
	}
}
