// Command controlplane serves asyncmesh's callback rules to every Envoy over
// xDS (ECDS through ADS) and follows edits of the rules file live.
//
//	controlplane validate rules.yaml          check a file (for CI pipelines); exit 1 on errors
//	controlplane filter -wasm /path/asyncmesh.wasm rules.yaml
//	        print the asyncmesh entry of a static bootstrap's http_filters (JSON, which
//	        YAML reads), rules embedded; -route-override prints the typed_per_filter_config
//	        of a route a rule names or that carries annotations
//	controlplane bootstrap -upstream 127.0.0.1:8080 [-listen 127.0.0.1:10000] [-collector 127.0.0.1:9901] [-admin 127.0.0.1:9902]
//	        (-xds 127.0.0.1:18000 [-rules FILE] | -rules FILE -wasm /path/asyncmesh.wasm) [-node-id ID -node-cluster C]
//	        print a complete Envoy bootstrap (JSON, which Envoy reads as YAML too) in front of one
//	        service: the status routes, then everything to the service; the filter follows
//	        the control plane over ECDS (-xds) or embeds the file's rules; -out FILE writes it
//	        there instead (an init container without a shell)
//	controlplane render (--istio -selector app=NAME [-port N] [-collector 127.0.0.1:9901] |
//	        --envoy-gateway -namespace NS -gateway NAME -collector SVC:PORT [-listener http[,https]])
//	        [-wasm /etc/asyncmesh/filter/plugin.wasm | -wasm-api -image REGISTRY/REPO:TAG [-sha256 HEX]
//	        [-pull-secret S] [-fail-open] [-phase P] [-target-kind Gateway|HTTPRoute -target-name NAME]]
//	        [-name NAME] [-namespace NS] [-node-id ID -node-cluster C] rules.yaml
//	        print the mesh's resources carrying the rules instead of serving them, YAML for
//	        kubectl apply: the whole filter as xDS serves it (Istio: an EnvoyFilter before the
//	        router; Envoy Gateway: a JSON patch of an EnvoyPatchPolicy), or with -wasm-api the
//	        mesh's Wasm API (WasmPlugin, EnvoyExtensionPolicy) and a buffer filter after it; and
//	        the collector's clusters and the status routes (Istio: a second EnvoyFilter; Envoy
//	        Gateway: the same EnvoyPatchPolicy); docs/deploy.md
//	controlplane serve -rules rules.yaml -wasm /path/asyncmesh.wasm [-listen 127.0.0.1:18000] [-metrics 127.0.0.1:18001]
//	        [-tls-cert server.pem -tls-key server-key.pem [-client-ca mesh-ca.pem [-trust-domain cluster.local]]]
//	        [-node-grace 1m] [-max-nodes 10000]
//
// With -client-ca, every Envoy and collector must present a certificate from
// that CA whose SPIFFE ID, spiffe://<trust-domain>/ns/<cluster>/sa/<node-id>,
// names the node it asks as; others are refused (see package
// controlplane/xds, Identity). The working example is the end-to-end test
// e2e/xdstls_test.go with the bootstrap envoy-xds-mtls.yaml.
package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "validate":
		err = validate(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	case "filter":
		err = filter(os.Args[2:])
	case "bootstrap":
		err = bootstrapCmd(os.Args[2:])
	case "render":
		err = render(os.Args[2:], os.Stdout)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane validate FILE | controlplane filter -wasm PATH [-route-override] FILE | controlplane bootstrap -upstream ADDR (-xds ADDR | -rules FILE -wasm PATH) (bootstrap -h: all flags) | controlplane render (--istio | --envoy-gateway) [flags] FILE (render -h: all flags) | controlplane serve -rules FILE -wasm PATH [-listen ADDR] [-metrics ADDR] [-tls-cert PEM -tls-key PEM [-client-ca PEM]] (serve -h: all flags)")
	os.Exit(2)
}

func validate(args []string) error {
	if len(args) != 1 {
		usage()
	}
	f, err := rulesfile.Load(args[0])
	if err != nil {
		return err
	}
	fmt.Printf("%s: ok, %d rules, %d secrets declared\n", args[0], len(f.Rules), len(f.Secrets))
	return nil
}

// filter prints what a static bootstrap (envoy.yaml) needs: the filter
// the control plane would serve over ECDS, or a route's override.
func filter(args []string) error {
	fs := flag.NewFlagSet("filter", flag.ExitOnError)
	wasmPath := fs.String("wasm", "", "path of asyncmesh.wasm on the Envoy's machine")
	override := fs.Bool("route-override", false, "print the typed_per_filter_config.asyncmesh of a route a rule names or that carries annotations instead")
	_ = fs.Parse(args)
	if *override {
		out, err := xds.StaticRouteOverride()
		if err == nil {
			fmt.Println(string(out))
		}
		return err
	}
	if fs.NArg() != 1 || *wasmPath == "" {
		usage()
	}
	f, err := rulesfile.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	out, err := xds.StaticFilter(f.Config(nil), xds.WasmOptions{Path: *wasmPath})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// bootstrapCmd prints an Envoy bootstrap for a sidecar in front of one
// service (xds.BootstrapFor).
func bootstrapCmd(args []string) error {
	fs := flag.NewFlagSet("bootstrap", flag.ExitOnError)
	var o xds.BootstrapOptions
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:10000", "host:port of Envoy's listener (where callers send requests)")
	fs.StringVar(&o.Upstream, "upstream", "", "host:port of the service (required)")
	fs.StringVar(&o.Collector, "collector", "127.0.0.1:9901", "host:port of the collector's API")
	fs.StringVar(&o.Admin, "admin", "127.0.0.1:9902", "host:port of Envoy's admin interface")
	fs.StringVar(&o.XDS, "xds", "", "host:port of the control plane: the filter follows it over ECDS")
	rulesPath := fs.String("rules", "", "the rules file: embedded in the filter (with -wasm), or with -xds only read for filter.collectorCluster and statusPrefix")
	fs.StringVar(&o.Wasm.Path, "wasm", "", "without -xds: path of asyncmesh.wasm on the Envoy's machine")
	fs.StringVar(&o.NodeID, "node-id", "sidecar-1", "Envoy's node id (the control plane's rules targeting)")
	fs.StringVar(&o.NodeCluster, "node-cluster", "default", "Envoy's node cluster")
	outPath := fs.String("out", "", "write the bootstrap to this file instead of standard output")
	_ = fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("bootstrap: unexpected argument %q", fs.Arg(0))
	}
	if o.Upstream == "" {
		return errors.New("-upstream: required")
	}
	if o.XDS == "" && (*rulesPath == "" || o.Wasm.Path == "") {
		return errors.New("want -xds ADDR, or -rules FILE and -wasm PATH")
	}
	if *rulesPath != "" {
		f, err := rulesfile.Load(*rulesPath)
		if err != nil {
			return err
		}
		o.Rules = f
	}
	b, err := xds.BootstrapFor(o)
	if err != nil {
		return err
	}
	if err := resolveXDSByDNS(b, o.XDS); err != nil {
		return err
	}
	out, err := protojson.MarshalOptions{Multiline: true}.Marshal(b)
	if err != nil {
		return err
	}
	if *outPath != "" {
		if err := os.WriteFile(*outPath, append(out, '\n'), 0o644); err != nil {
			return fmt.Errorf("-out: %w", err)
		}
		return nil
	}
	fmt.Println(string(out))
	return nil
}

// resolveXDSByDNS makes the bootstrap's xDS cluster STRICT_DNS when -xds
// names a host rather than an IP address: in Kubernetes the control plane
// is a Service, reached by its DNS name (its cluster IP is not known when
// the manifests are written), and Envoy re-resolves it, so a Service
// recreated with another IP is followed.
func resolveXDSByDNS(b *bootstrapv3.Bootstrap, addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-xds: %w", err)
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == xds.XDSCluster {
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
			c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
			return b.Validate()
		}
	}
	return fmt.Errorf("bootstrap: no cluster %s to resolve %s with", xds.XDSCluster, addr)
}

// render prints the resources through which a mesh's own control plane
// (istiod, Envoy Gateway) serves the rules: there this one serves no xDS.
func render(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("render", flag.ExitOnError)
	istio := fs.Bool("istio", false, "render Istio's EnvoyFilters (or with -wasm-api the WasmPlugin)")
	eg := fs.Bool("envoy-gateway", false, "render Envoy Gateway's EnvoyPatchPolicy (and with -wasm-api the EnvoyExtensionPolicy)")
	var o xds.MeshOptions
	fs.StringVar(&o.Name, "name", "asyncmesh", "name of the rendered resources")
	fs.StringVar(&o.Namespace, "namespace", "", "namespace of the rendered resources (default: kubectl's; required with --envoy-gateway)")
	fs.StringVar(&o.NodeID, "node-id", "", "render the rules of this node id (for files whose rules have nodes:)")
	fs.StringVar(&o.NodeCluster, "node-cluster", "", "render the rules of this node cluster")
	fs.StringVar(&o.WasmPath, "wasm", "", "path of the module in the proxy's container, where the chart mounts the filter image (default "+xds.DefaultMeshWasmPath+")")
	fs.BoolVar(&o.WasmAPI, "wasm-api", false, "use the mesh's Wasm API (WasmPlugin, EnvoyExtensionPolicy) instead of the whole filter: the mesh fetches -image, but every request enters the VM and a buffer filter after it holds the headers of the requests it may make async, bodies whole")
	fs.StringVar(&o.Image, "image", "", "with -wasm-api: the filter image (make images' filter), registry/repository:tag or @sha256:digest (required)")
	fs.StringVar(&o.SHA256, "sha256", "", "with -wasm-api: the image manifest's sha256 (hex), checked before the module runs")
	fs.StringVar(&o.PullSecret, "pull-secret", "", "with -wasm-api: Secret with the registry's credentials")
	fs.BoolVar(&o.FailOpen, "fail-open", false, "with -wasm-api: let requests through when the module cannot load (default: refuse them)")
	collector := fs.String("collector", "", "host:port of the collector's API as the proxy reaches it (--istio: an IP, default 127.0.0.1:9901; --envoy-gateway: the collector's Service, required, e.g. am-collector.shop.svc:9901)")
	selector := fs.String("selector", "", "with --istio: labels of the workloads, key=value[,key=value] (required)")
	fs.StringVar(&o.Phase, "phase", "", "with --istio -wasm-api: WasmPlugin phase (default UNSPECIFIED_PHASE: last, after authn and authz)")
	port := fs.Uint("port", 0, "with --istio: the inbound port (the service's container port) whose traffic gets the filter and the status routes (0: all)")
	fs.StringVar(&o.Gateway, "gateway", "", "with --envoy-gateway: the Gateway whose Envoy gets the collector's clusters, the status routes and the filter (default: -target-name when -target-kind is Gateway)")
	listeners := fs.String("listener", "http", "with --envoy-gateway: the Gateway's listener names to patch, comma-separated")
	fs.StringVar(&o.TargetKind, "target-kind", "Gateway", "with --envoy-gateway -wasm-api: the EnvoyExtensionPolicy's target, Gateway or HTTPRoute")
	fs.StringVar(&o.TargetName, "target-name", "", "with --envoy-gateway: the target's name (the Gateway, or with -wasm-api an HTTPRoute)")
	_ = fs.Parse(args)
	if fs.NArg() != 1 || *istio == *eg {
		return errors.New("usage: controlplane render (--istio | --envoy-gateway) [flags] RULES_FILE (render -h: all flags)")
	}
	if *port > 65535 {
		return fmt.Errorf("-port %d: not a port", *port)
	}
	o.Port = uint32(*port)
	o.Collector = *collector
	for l := range strings.SplitSeq(*listeners, ",") {
		o.Listeners = append(o.Listeners, strings.TrimSpace(l))
	}
	f, err := rulesfile.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	var out []byte
	if *istio {
		if *selector == "" {
			return errors.New("-selector: required with --istio (the workloads whose sidecars run the filter)")
		}
		if o.Selector, err = xds.ParseSelector(*selector); err != nil {
			return fmt.Errorf("-selector: %w", err)
		}
		out, err = xds.Istio(f, o)
	} else {
		if o.Collector == "" {
			// No default: the gateway reaches the collector's Service, whose
			// name depends on the Helm release.
			return errors.New("-collector: required with --envoy-gateway (the collector's Service, e.g. am-collector.shop.svc:9901)")
		}
		out, err = xds.EnvoyGateway(f, o)
	}
	if err != nil {
		return err
	}
	// Say where the resources come from, so that nobody edits them instead
	// of the rules (an edit would be lost at the next render).
	mode := map[bool]string{true: "--istio", false: "--envoy-gateway"}[*istio]
	header := fmt.Sprintf("# Generated by controlplane render %s from %s: edit the rules file and render again.\n", mode, filepath.Base(fs.Arg(0)))
	_, err = io.WriteString(stdout, header+string(out))
	return err
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	rulesPath := fs.String("rules", "rules.yaml", "the rules file, reloaded when it changes or on SIGHUP")
	wasmPath := fs.String("wasm", "", "path of asyncmesh.wasm on the Envoys' machines")
	listen := fs.String("listen", "127.0.0.1:18000", "address of the xDS (ADS) gRPC server")
	metrics := fs.String("metrics", "127.0.0.1:18001", "address of /metrics and /healthz")
	var tlsFiles xds.TLSFiles
	fs.StringVar(&tlsFiles.Cert, "tls-cert", "", "xDS over TLS: the server's certificate chain (PEM); reloaded when it changes")
	fs.StringVar(&tlsFiles.Key, "tls-key", "", "with -tls-cert: its private key (PEM)")
	fs.StringVar(&tlsFiles.ClientCA, "client-ca", "", "with -tls-cert: CA bundle (PEM) of client certificates; set, every node must present one whose SPIFFE ID spiffe://<trust-domain>/ns/<cluster>/sa/<node-id> names the node it asks as")
	fs.StringVar(&tlsFiles.TrustDomain, "trust-domain", "", "with -client-ca: the only SPIFFE trust domain accepted (default: any the CA signs)")
	nodeGrace := fs.Duration("node-grace", xds.DefaultNodeGrace, "how long a node's snapshot and metrics are kept after its last stream closed")
	tokenEnv := fs.String("operator-token-env", "", "environment variable holding the operator's bearer token, which GET /v1/nodes (on -metrics) asks for; unset: /v1/nodes is off")
	maxNodes := fs.Int("max-nodes", xds.DefaultMaxNodes, "most nodes known at once (past it the longest idle is forgotten, or a new node refused)")
	fs.Parse(args)
	if *wasmPath == "" {
		return errors.New("-wasm: required")
	}
	if *nodeGrace <= 0 || *maxNodes <= 0 {
		return fmt.Errorf("-node-grace %v, -max-nodes %d: want more than 0", *nodeGrace, *maxNodes)
	}
	if tlsFiles.Cert == "" && (tlsFiles.Key != "" || tlsFiles.ClientCA != "" || tlsFiles.TrustDomain != "") {
		return errors.New("-tls-cert: required with -tls-key, -client-ca or -trust-domain")
	}
	var token []byte
	if *tokenEnv != "" {
		if token = []byte(os.Getenv(*tokenEnv)); len(token) < 16 {
			return fmt.Errorf("-operator-token-env: %s must hold a token of at least 16 characters", *tokenEnv)
		}
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	s, err := xds.NewServer(*rulesPath, xds.WasmOptions{Path: *wasmPath}, log)
	if err != nil {
		return err
	}
	s.NodeGrace, s.MaxNodes = *nodeGrace, *maxNodes
	if tlsFiles.Cert != "" {
		if err := s.UseTLS(tlsFiles); err != nil {
			return fmt.Errorf("-tls-cert, -tls-key, -client-ca: %w", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	mln, err := net.Listen("tcp", *metrics)
	if err != nil {
		return fmt.Errorf("-metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", s.Metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if *tokenEnv != "" {
		mux.Handle("GET /v1/nodes", operatorOnly(token, http.HandlerFunc(s.ServeStatus)))
	}
	msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go msrv.Serve(mln)
	defer msrv.Close()
	go func() {
		if err := s.Watch(ctx, reload); err != nil {
			log.Error("controlplane: watching the rules file", "err", err)
		}
	}()
	log.Info("controlplane: serving", "xds", ln.Addr().String(), "metrics", mln.Addr().String(), "rules", *rulesPath,
		"tls", tlsFiles.Cert != "", "client_certificates", tlsFiles.ClientCA != "")
	return s.Serve(ctx, ln)
}

// operatorOnly serves h to requests that carry the operator's bearer token,
// and 401 with a JSON error to any other.
func operatorOnly(token []byte, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), token) != 1 {
			w.Header().Set("content-type", "application/json")
			w.Header().Set("www-authenticate", `Bearer realm="asyncmesh-operator"`)
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error":"unauthorized","message":"the operator's bearer token is required"}`)
			return
		}
		h.ServeHTTP(w, r)
	})
}
