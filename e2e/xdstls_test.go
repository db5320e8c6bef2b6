//go:build e2e

package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/controlplane/xds/xdstest"
	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// xdsTLSSocket is what turns envoy-xds.yaml into a bootstrap that speaks xDS
// over mutual TLS: the transport socket of its asyncmesh_xds cluster. Envoy
// verifies the control plane's certificate (the mesh CA, the DNS name) and
// presents its own, whose SPIFFE ID
// spiffe://<trust-domain>/ns/<node.cluster>/sa/<node.id> must name the
// bootstrap's node. ALPN h2 is required: gRPC servers refuse TLS without it.
const xdsTLSSocket = `    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: ${XDS_SERVER_NAME}
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {filename: "${XDS_TLS_CERT}"}
            private_key: {filename: "${XDS_TLS_KEY}"}
          validation_context:
            trusted_ca: {filename: "${XDS_TLS_CA}"}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {exact: "${XDS_SERVER_NAME}"}
`

// TestControlPlaneMutualTLS is the working example of the control plane's
// mutual TLS (controlplane serve -tls-cert -tls-key -client-ca
// -trust-domain; collector -xds-ca -xds-cert -xds-key): an Envoy whose
// certificate names its node gets the filter's configuration over mTLS and
// makes a request async end to end, and so does the collector; an Envoy
// without a client certificate, and one whose certificate names another
// node but asks as sidecar-1, get nothing, and the control plane logs why.
func TestControlPlaneMutualTLS(t *testing.T) {
	root, _ := filepath.Abs("..")
	work := t.TempDir()
	bin, envoyBin := os.Getenv("ASYNCMESH_BIN"), os.Getenv("ENVOY_BIN")
	// A stack with static rules provides the service, collector and
	// receiver (and the Envoy the collector replays through).
	s, err := stack.Start(context.Background(), stack.Options{Root: root, BinDir: bin, EnvoyBin: envoyBin, WorkDir: work})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	pki, err := xdstest.NewPKI(work, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := pki.Server("controlplane", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	const trustDomain = "asyncmesh.test"
	sidecarCert, sidecarKey, _ := pki.Client("sidecar-1", "spiffe://"+trustDomain+"/ns/demo/sa/sidecar-1")
	intruderCert, intruderKey, _ := pki.Client("intruder", "spiffe://"+trustDomain+"/ns/demo/sa/intruder")

	ports, err := stack.FreePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr, metricsURL := "127.0.0.1:"+strconv.Itoa(ports[0]), "http://127.0.0.1:"+strconv.Itoa(ports[1])
	cpLog := filepath.Join(work, "controlplane-mtls.log")
	xdsStartProc(t, cpLog, filepath.Join(bin, "controlplane"), nil, "serve", "-rules", s.RulesPath(),
		"-wasm", filepath.Join(bin, "asyncmesh.wasm"), "-listen", xdsAddr, "-metrics", "127.0.0.1:"+strconv.Itoa(ports[1]),
		"-tls-cert", srvCert, "-tls-key", srvKey, "-client-ca", pki.CAFile, "-trust-domain", trustDomain)
	xdsWaitURL(t, metricsURL+"/healthz", 30*time.Second)

	// envoy starts an Envoy on envoy-xds.yaml with the TLS transport socket
	// (cert "": no client certificate), asking as sidecar-1 in cluster demo.
	envoy := func(name string, listen, admin int, cert, key string) (url, adminURL string) {
		raw, err := os.ReadFile(filepath.Join(root, "envoy-xds.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		socket := xdsTLSSocket
		if cert == "" {
			socket = regexp.MustCompile(`(?m)^\s+tls_certificates:\n.*\n.*\n`).ReplaceAllString(socket, "")
		}
		anchor := "  - name: asyncmesh_xds\n"
		if !strings.Contains(string(raw), anchor) {
			t.Fatal("envoy-xds.yaml has no asyncmesh_xds cluster to add TLS to")
		}
		text := strings.Replace(string(raw), anchor, anchor+socket, 1)
		_, collectorPort, _ := net.SplitHostPort(strings.TrimPrefix(s.CollectorURL, "http://"))
		_, servicePort, _ := net.SplitHostPort(s.ServiceAddr())
		text = strings.NewReplacer("${ENVOY_PORT}", strconv.Itoa(listen), "${ADMIN_PORT}", strconv.Itoa(admin),
			"${COLLECTOR_PORT}", collectorPort, "${SERVICE_PORT}", servicePort, "${XDS_PORT}", strconv.Itoa(ports[0]),
			"${NODE_ID}", "sidecar-1", "${NODE_CLUSTER}", "demo", "${XDS_SERVER_NAME}", "localhost",
			"${XDS_TLS_CERT}", cert, "${XDS_TLS_KEY}", key, "${XDS_TLS_CA}", pki.CAFile).Replace(text)
		if left := regexp.MustCompile(`(?m)^[^#\n]*(\$\{[A-Z_]+\})`).FindStringSubmatch(text); left != nil {
			t.Fatalf("envoy-xds.yaml has a placeholder this test does not fill: %s", left[1])
		}
		path := filepath.Join(work, name+".yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		xdsStartProc(t, filepath.Join(work, name+".log"), envoyBin, []string{"ASYNCMESH_REPLAY_SECRET=" + s.ReplaySecret},
			"-c", path, "--concurrency", "1", "--base-id", strconv.Itoa(admin), "-l", "warning")
		return "http://127.0.0.1:" + strconv.Itoa(listen), "http://127.0.0.1:" + strconv.Itoa(admin)
	}

	// The sidecar with its own certificate: the filter's rules arrive over
	// mTLS, are acknowledged, and an async request goes through.
	url, admin := envoy("envoy-mtls", ports[2], ports[3], sidecarCert, sidecarKey)
	xdsWaitURL(t, admin+"/ready", 30*time.Second)
	resp, err := client.Post(url+"/slow?ms=10", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id, _ := accepted(t, resp, body)
	waitCallbackAt(t, s, id)
	acked := regexp.MustCompile(`node_config\{node="sidecar-1",cluster="demo",served="(\w+)",acked="(\w+)"\}`)
	xdsWaitFor(t, "sidecar-1's ACK over mTLS", 15*time.Second, func() bool {
		m := acked.FindStringSubmatch(xdsGet(t, metricsURL+"/metrics"))
		return m != nil && m[1] == m[2]
	})
	if got := envoyStat(t, admin, "control_plane.connected_state"); got != "1" {
		t.Fatalf("Envoy with its certificate: connected_state %s", got)
	}
	if !strings.Contains(xdsGet(t, admin+"/config_dump"), "asyncmesh.wasm") {
		t.Fatal("the filter's served configuration (its code path) is not in the config dump")
	}

	// The collector follows the rules over mTLS with the sidecar's identity.
	if err := s.RestartCollector(context.Background(), "-xds", "127.0.0.1:"+strconv.Itoa(ports[0]), "-node-id", "sidecar-1", "-node-cluster", "demo",
		"-xds-ca", pki.CAFile, "-xds-cert", sidecarCert, "-xds-key", sidecarKey, "-xds-server-name", "localhost"); err != nil {
		t.Fatal(err)
	}
	xdsWaitFor(t, "the collector's ACK over mTLS", 15*time.Second, func() bool {
		return regexp.MustCompile(`node_config\{node="sidecar-1#collector",cluster="demo",served="(\w+)",acked="(\w+)"\}`).MatchString(xdsGet(t, metricsURL+"/metrics"))
	})

	// No client certificate, and another node's certificate asking as
	// sidecar-1: refused, nothing served, and the control plane says why.
	bare, bareAdmin := envoy("envoy-nocert", ports[4], ports[5], "", "")
	thief, thiefAdmin := envoy("envoy-intruder", ports[6], ports[7], intruderCert, intruderKey)
	xdsWaitFor(t, "both refusals logged", 30*time.Second, func() bool {
		l, _ := os.ReadFile(cpLog)
		return strings.Contains(string(l), "xDS TLS handshake refused") &&
			strings.Contains(string(l), `"identity":"spiffe://asyncmesh.test/ns/demo/sa/intruder","node":"sidecar-1"`)
	})
	// Past the listener's initial_fetch_timeout (10 s), each is still without
	// the filter's configuration: never connected, nothing to make a
	// request async with.
	time.Sleep(12 * time.Second)
	for _, e := range []struct{ name, url, admin string }{{"no certificate", bare, bareAdmin}, {"another node's certificate", thief, thiefAdmin}} {
		if got := envoyStat(t, e.admin, "control_plane.connected_state"); got != "0" {
			t.Errorf("Envoy with %s: connected_state %s", e.name, got)
		}
		if strings.Contains(xdsGet(t, e.admin+"/config_dump"), "asyncmesh.wasm") {
			t.Errorf("Envoy with %s holds the filter's configuration", e.name)
		}
		resp, err := client.Post(e.url+"/slow?ms=10", "application/json", strings.NewReader("{}"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				t.Errorf("Envoy with %s made a request async", e.name)
			}
		}
	}
	m := xdsGet(t, metricsURL+"/metrics")
	if strings.Contains(m, "intruder") || regexp.MustCompile(`streams_refused_total 0\b`).MatchString(m) || regexp.MustCompile(`handshake_failures_total 0\b`).MatchString(m) {
		t.Fatalf("metrics after the refusals:\n%s", m)
	}
	t.Logf("control plane metrics:\n%s", m)
}

// xdsStartProc runs a process of this test (its output in logPath) and stops it
// when the test ends.
func xdsStartProc(t *testing.T, logPath, bin string, env []string, args ...string) {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		f.Close()
	})
}

func xdsGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// envoyStat is one Envoy statistic's value from its admin.
func envoyStat(t *testing.T, admin, name string) string {
	t.Helper()
	for _, line := range strings.Split(xdsGet(t, admin+"/stats?filter=^"+regexp.QuoteMeta(name)+"$"), "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func xdsWaitURL(t *testing.T, url string, within time.Duration) {
	t.Helper()
	xdsWaitFor(t, url, within, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func xdsWaitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
