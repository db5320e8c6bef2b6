// Package stack starts the whole asyncmesh sidecar on free loopback ports — Envoy
// with the compiled filter, the collector (embedded backend, or RabbitMQ and/or
// Elasticsearch), the demo
// service and the callback receiver — for the demo and the end-to-end tests.
// Binaries are expected in Options.BinDir (make build puts them in build/).
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/internal/procs"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Options of a stack.
type Options struct {
	Root     string    // repository root (envoy.yaml, envoy-xds.yaml, examples/rules.yaml)
	BinDir   string    // collector, service, receiver, asyncmesh.wasm
	EnvoyBin string    // envoy binary
	WorkDir  string    // logs, database, rendered bootstrap
	Logs     io.Writer // where process output goes besides the log files (may be nil)
	// AMQPURL, when set, runs the collector's queue on this RabbitMQ (with a
	// prefix of its own, so that stacks do not share queues).
	AMQPURL string
	// CollectorAMQPURL, when set with AMQPURL, is where the collector's queue
	// connects instead (a proxy in front of the same broker, say); the
	// receiver and the amqp callbacks of the rules keep AMQPURL.
	CollectorAMQPURL string
	// ESURL, when set, runs the collector's store on this Elasticsearch (with
	// a prefix of its own).
	ESURL string
	// ControlPlane, when set, starts controlplane serve on the rules file and
	// Envoy with envoy-xds.yaml, which takes the filter's rules from it.
	ControlPlane bool
	// ServeSidecar (with ControlPlane) starts Envoy with envoy-ads.yaml: its
	// listener, routes and clusters come from the control plane too.
	ServeSidecar bool
	// CollectorArgs are added to the collector's command line, and
	// CollectorEnv to its environment (secrets of the rules, say).
	CollectorArgs []string
	CollectorEnv  []string
	// Rules, when set, is the rules file instead of examples/rules.yaml
	// (placeholders such as ${RECEIVER_URL} filled).
	Rules string
	// HTTPFilters, when set, are YAML list items of Envoy HTTP filters put
	// before the asyncmesh filter of envoy.yaml (jwt_authn, say), indented
	// as the list is (10 spaces).
	HTTPFilters string
	// DownstreamTLS, when set, adds to Envoy's listener a TLS filter chain
	// (chosen by tls_inspector) that requires a client certificate signed by
	// ClientCA, as a mesh's mutual TLS does; plaintext connections (the
	// collector's replays) keep the plain chain.
	DownstreamTLS *TLSFiles
}

// TLSFiles are PEM files of a TLS server that verifies its clients.
type TLSFiles struct{ Cert, Key, ClientCA string }

// withDownstreamTLS adds the TLS filter chain of f to the bootstrap of
// envoy.yaml: a copy of its one filter chain with a transport socket.
func withDownstreamTLS(tmpl string, f *TLSFiles) (string, error) {
	const address = "    address: {socket_address: {address: 127.0.0.1, port_value: ${ENVOY_PORT}}}\n"
	const chains, chain, end = "    filter_chains:\n", "    - filters:\n", "  clusters:\n"
	i, j := strings.Index(tmpl, chain), strings.Index(tmpl, end)
	if !strings.Contains(tmpl, address) || !strings.Contains(tmpl, chains) || i < 0 || j < i {
		return "", errors.New("DownstreamTLS: envoy.yaml's listener is not as expected")
	}
	tlsChain := "    - filter_chain_match: {transport_protocol: tls}\n" +
		"      transport_socket:\n" +
		"        name: envoy.transport_sockets.tls\n" +
		"        typed_config:\n" +
		"          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n" +
		"          require_client_certificate: true\n" +
		"          common_tls_context:\n" +
		"            tls_certificates: [{certificate_chain: {filename: " + f.Cert + "}, private_key: {filename: " + f.Key + "}}]\n" +
		"            validation_context: {trusted_ca: {filename: " + f.ClientCA + "}}\n" +
		"      filters:\n" + tmpl[i+len(chain):j]
	tmpl = tmpl[:j] + tlsChain + tmpl[j:]
	inspector := "    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n"
	return strings.Replace(tmpl, address, address+inspector, 1), nil
}

// Stack is a running sidecar.
type Stack struct {
	opt                                 Options
	EnvoyURL, AdminURL, CollectorURL    string
	ServiceURL, ReceiverURL             string
	ControlPlaneMetricsURL              string
	envoyPort, adminPort, collectorPort int
	servicePort, receiverPort           int
	receiverGRPCPort                    int
	xdsPort, metricsPort                int
	ReplaySecret, WebhookSecret         string
	// AdminToken is the collector's operator token (search, replay,
	// metrics, reading any request): see OperatorGet.
	AdminToken     string
	collectorExtra []string // RestartCollector's flags
	procs          *procs.Group
}

// Start starts every process and waits until each answers.
func Start(ctx context.Context, opt Options) (*Stack, error) {
	for _, p := range []*string{&opt.Root, &opt.BinDir, &opt.WorkDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	s := &Stack{opt: opt, procs: &procs.Group{Dir: opt.WorkDir, Logs: opt.Logs},
		ReplaySecret: "replay-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_"), WebhookSecret: webhook.NewSecret(),
		AdminToken: "admin-" + strings.TrimPrefix(webhook.NewSecret(), "whsec_")}
	ports, err := FreePorts(8)
	if err != nil {
		return nil, err
	}
	s.envoyPort, s.adminPort, s.collectorPort, s.servicePort, s.receiverPort = ports[0], ports[1], ports[2], ports[3], ports[4]
	s.xdsPort, s.metricsPort, s.receiverGRPCPort = ports[5], ports[6], ports[7]
	s.ControlPlaneMetricsURL = "http://127.0.0.1:" + strconv.Itoa(s.metricsPort)
	url := func(p int) string { return "http://127.0.0.1:" + strconv.Itoa(p) }
	s.EnvoyURL, s.AdminURL, s.CollectorURL, s.ServiceURL, s.ReceiverURL = url(s.envoyPort), url(s.adminPort), url(s.collectorPort), url(s.servicePort), url(s.receiverPort)
	bootstrap, err := s.render()
	if err != nil {
		return nil, err
	}
	steps := []struct {
		name   string
		start  func() error
		health string
	}{
		{"service", func() error {
			return s.spawn("service", filepath.Join(opt.BinDir, "service"), nil, "-listen", addr(s.servicePort))
		}, s.ServiceURL + "/healthz"},
		{"receiver", func() error {
			env := []string{"ASYNCMESH_SECRET_DEMO=" + s.WebhookSecret}
			args := []string{"-listen", addr(s.receiverPort), "-grpc-listen", addr(s.receiverGRPCPort)}
			if opt.AMQPURL != "" {
				env = append(env, "ASYNCMESH_RECEIVER_AMQP_URL="+opt.AMQPURL)
				args = append(args, "-amqp-url-env", "ASYNCMESH_RECEIVER_AMQP_URL", "-amqp-binding", s.amqpBinding())
			}
			return s.spawn("receiver", filepath.Join(opt.BinDir, "receiver"), env, args...)
		}, s.ReceiverURL + "/healthz"},
		{"controlplane", func() error {
			if !opt.ControlPlane {
				return nil
			}
			return s.spawn("controlplane", filepath.Join(opt.BinDir, "controlplane"), []string{"ASYNCMESH_ADMIN_TOKEN=" + s.AdminToken}, "serve",
				"-rules", s.RulesPath(), "-wasm", filepath.Join(opt.BinDir, "asyncmesh.wasm"),
				"-listen", addr(s.xdsPort), "-metrics", addr(s.metricsPort), "-operator-token-env", "ASYNCMESH_ADMIN_TOKEN")
		}, s.ControlPlaneMetricsURL + "/healthz"},
		{"collector", s.StartCollector, s.CollectorURL + "/healthz"},
		{"envoy", func() error {
			return s.spawn("envoy", opt.EnvoyBin, []string{"ASYNCMESH_REPLAY_SECRET=" + s.ReplaySecret},
				"-c", bootstrap, "--concurrency", "2", "--base-id", strconv.Itoa(s.adminPort), "-l", "warning", "--component-log-level", "wasm:info")
		}, s.AdminURL + "/ready"},
	}
	for _, st := range steps {
		if st.name == "controlplane" && !opt.ControlPlane {
			continue
		}
		if err := st.start(); err != nil {
			s.Close()
			return nil, err
		}
		if err := waitHTTP(ctx, st.health, 60*time.Second); err != nil {
			s.Close()
			return nil, fmt.Errorf("%s did not become ready (see %s): %w", st.name, s.LogPath(st.name), err)
		}
	}
	return s, nil
}

func addr(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }

// render writes the rules file and the Envoy bootstrap (envoy.yaml with the
// rules embedded, or envoy-xds.yaml) into the work directory, placeholders
// filled.
func (s *Stack) render() (string, error) {
	raw := []byte(s.opt.Rules)
	if s.opt.Rules == "" {
		var err error
		if raw, err = os.ReadFile(filepath.Join(s.opt.Root, "examples", "rules.yaml")); err != nil {
			return "", fmt.Errorf("reading rules: %w", err)
		}
	}
	if err := s.WriteRules(string(raw)); err != nil {
		return "", err
	}
	f, err := rulesfile.Load(s.RulesPath())
	if err != nil {
		return "", err
	}
	filter, err := xds.StaticFilter(f.Config(nil), xds.WasmOptions{Path: filepath.Join(s.opt.BinDir, "asyncmesh.wasm")})
	if err != nil {
		return "", err
	}
	vars := s.vars()
	vars["ASYNCMESH_FILTER"] = string(filter)
	name := "envoy.yaml"
	switch {
	case s.opt.ControlPlane && s.opt.ServeSidecar:
		name = "envoy-ads.yaml"
	case s.opt.ControlPlane:
		name = "envoy-xds.yaml"
	}
	tmpl, err := os.ReadFile(filepath.Join(s.opt.Root, name))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	if s.opt.HTTPFilters != "" {
		const at = "          - ${ASYNCMESH_FILTER}\n"
		if !strings.Contains(string(tmpl), at) {
			return "", fmt.Errorf("%s has no %q to put HTTPFilters before", name, strings.TrimSpace(at))
		}
		tmpl = []byte(strings.Replace(string(tmpl), at, strings.TrimRight(s.opt.HTTPFilters, "\n")+"\n"+at, 1))
	}
	if s.opt.DownstreamTLS != nil {
		t, err := withDownstreamTLS(string(tmpl), s.opt.DownstreamTLS)
		if err != nil {
			return "", err
		}
		tmpl = []byte(t)
	}
	out := filepath.Join(s.opt.WorkDir, name)
	if err := os.WriteFile(out, []byte(fill(string(tmpl), vars)), 0o600); err != nil {
		return "", err
	}
	return out, nil
}

func (s *Stack) vars() map[string]string {
	return map[string]string{
		"ENVOY_PORT": strconv.Itoa(s.envoyPort), "ADMIN_PORT": strconv.Itoa(s.adminPort),
		"COLLECTOR_PORT": strconv.Itoa(s.collectorPort), "SERVICE_PORT": strconv.Itoa(s.servicePort),
		"XDS_PORT": strconv.Itoa(s.xdsPort), "NODE_ID": "sidecar-1", "NODE_CLUSTER": "demo",
		"WASM_PATH": filepath.Join(s.opt.BinDir, "asyncmesh.wasm"), "RECEIVER_URL": s.ReceiverURL,
		"RECEIVER_GRPC_URL": "grpc://" + addr(s.receiverGRPCPort), "AMQP_CALLBACK_URL": s.amqpCallbackURL(),
	}
}

// amqpBinding is the routing key of this stack's amqp callbacks on amq.topic:
// stacks sharing a broker do not see each other's.
func (s *Stack) amqpBinding() string { return "asyncmesh.callbacks." + strconv.Itoa(s.receiverPort) }

// amqpCallbackURL is the amqp callback target of the demo rules: the stack's
// RabbitMQ without its credentials (guest is RabbitMQ's default), or, without
// one, a port nothing listens on.
func (s *Stack) amqpCallbackURL() string {
	host := "127.0.0.1:9"
	if u, err := neturl.Parse(s.opt.AMQPURL); err == nil && s.opt.AMQPURL != "" {
		host = u.Host
	}
	return "amqp://" + host + "/?exchange=amq.topic&routingKey=" + s.amqpBinding()
}

// fill replaces ${NAME} placeholders (and nothing else: a $ in a regular
// expression stays).
func fill(text string, vars map[string]string) string {
	var pairs []string
	for k, v := range vars {
		pairs = append(pairs, "${"+k+"}", v)
	}
	return strings.NewReplacer(pairs...).Replace(text)
}

func (s *Stack) fill(text string) string { return fill(text, s.vars()) }

// RulesPath is the rules file the control plane serves.
func (s *Stack) RulesPath() string { return filepath.Join(s.opt.WorkDir, "rules.yaml") }

// WriteRules replaces the rules file (placeholders such as ${RECEIVER_URL}
// filled) by an atomic rename, as an editor or a config map update would.
func (s *Stack) WriteRules(content string) error {
	tmp := s.RulesPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(s.fill(content)), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.RulesPath())
}

// StartCollector (re)starts the collector on its port, database and queue.
func (s *Stack) StartCollector() error {
	env := []string{"ASYNCMESH_REPLAY_SECRET=" + s.ReplaySecret, "ASYNCMESH_SECRET_DEMO=" + s.WebhookSecret, "ASYNCMESH_ADMIN_TOKEN=" + s.AdminToken}
	args := []string{"-listen", addr(s.collectorPort), "-db", s.DBPath(),
		"-replay-url", s.EnvoyURL, "-api-url", s.CollectorURL, "-admin-token-env", "ASYNCMESH_ADMIN_TOKEN"}
	if s.opt.AMQPURL != "" {
		url := s.opt.AMQPURL
		if s.opt.CollectorAMQPURL != "" {
			url = s.opt.CollectorAMQPURL
		}
		env = append(env, "ASYNCMESH_AMQP_URL="+url)
		args = append(args, "-queue", "rabbitmq", "-amqp-prefix", "asyncmesh-"+strconv.Itoa(s.collectorPort))
	}
	if s.opt.ESURL != "" {
		env = append(env, "ASYNCMESH_ES_URL="+s.opt.ESURL)
		args = append(args, "-store", "elasticsearch", "-es-prefix", "asyncmesh-e2e-"+strconv.Itoa(s.collectorPort), "-es-replicas", "0")
	}
	if s.opt.ControlPlane {
		args = append(args, "-xds", addr(s.xdsPort), "-node-id", "sidecar-1", "-node-cluster", "demo", "-controlplane-url", s.ControlPlaneMetricsURL)
	}
	args = append(args, s.opt.CollectorArgs...)
	args = append(args, s.collectorExtra...)
	env = append(env, s.opt.CollectorEnv...)
	return s.spawn("collector", filepath.Join(s.opt.BinDir, "collector"), env, args...)
}

// RestartCollector stops the collector gracefully and starts it again with
// extra flags (none: as configured), then waits until it answers.
func (s *Stack) RestartCollector(ctx context.Context, extra ...string) error {
	if err := s.StopCollector(false); err != nil {
		return err
	}
	s.collectorExtra = extra
	if err := s.StartCollector(); err != nil {
		return err
	}
	return s.WaitCollector(ctx)
}

// WaitCollector waits until a (re)started collector answers.
func (s *Stack) WaitCollector(ctx context.Context) error {
	return waitHTTP(ctx, s.CollectorURL+"/healthz", 30*time.Second)
}

// StopCollector stops the collector with SIGTERM (graceful) or SIGKILL.
func (s *Stack) StopCollector(kill bool) error {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	return s.procs.Stop("collector", sig)
}

// PID is the process id of a running process of the stack ("envoy",
// "collector", "service", "receiver", ...), or 0.
func (s *Stack) PID(name string) int { return s.procs.PID(name) }

// Spawn starts one more process with the stack (its output in
// LogPath(name)); Close stops it with the others.
func (s *Stack) Spawn(name, bin string, env []string, args ...string) error {
	return s.procs.Spawn(name, bin, env, args...)
}

// DBPath is the collector's embedded database.
func (s *Stack) DBPath() string { return filepath.Join(s.opt.WorkDir, "asyncmesh.db") }

// OperatorGet reads path (such as /v1/requests?traceId=…) on the
// collector's API with the operator's token.
func (s *Stack) OperatorGet(ctx context.Context, path string) (*http.Response, error) {
	return s.Operator(ctx, http.MethodGet, path)
}

// Operator calls the collector's operator API with the operator's token
// (no body).
func (s *Stack) Operator(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.CollectorURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("authorization", "Bearer "+s.AdminToken)
	return http.DefaultClient.Do(req)
}

// ServiceAddr is the demo service's host:port.
func (s *Stack) ServiceAddr() string { return addr(s.servicePort) }

// LogPath is where a process's output goes.
func (s *Stack) LogPath(name string) string { return s.procs.LogPath(name) }

func (s *Stack) spawn(name, bin string, env []string, args ...string) error {
	return s.procs.Spawn(name, bin, env, args...)
}

// Close stops every process.
func (s *Stack) Close() {
	s.procs.StopAll("envoy", "controlplane", "collector", "receiver", "service")
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) { return procs.FreePorts(n) }

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	return procs.WaitHTTP(ctx, url, timeout)
}
