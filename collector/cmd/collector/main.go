// Command collector runs the asyncmesh collector sidecar.
//
// Backends: the store is the embedded SQLite database (the default) or
// Elasticsearch (-store elasticsearch); the queue is the same SQLite database
// (the default) or RabbitMQ (-queue rabbitmq). Their URLs come from the
// environment variables named by -es-url-env and -amqp-url-env, so that
// credentials stay out of the process list and the logs. Each backend
// registers its name, flags and constructor in a backend_*.go file
// (registry.go). Either store deletes a request -retention (30 days) after
// it was delivered or dead, and never one that is not finished.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/xdsrules"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}

func run() error {
	var o options
	o.register(flag.CommandLine)
	var xdsTLS xdsTLSFlags
	xdsTLS.register(flag.CommandLine)
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(log)
	if o.workers < 0 || o.deliveryWorkers < 0 {
		return fmt.Errorf("-workers %d, -delivery-workers %d: want 0 or more", o.workers, o.deliveryWorkers)
	}
	secret, err := replaySecret(o.replayEnv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	stopTracing, err := startTracing(ctx, o.otlpEndpoint, o.nodeID)
	if err != nil {
		return err
	}
	defer func() { _ = stopTracing(context.Background()) }()
	if o.debugListen != "" {
		if err := serveDebug(o.debugListen, log); err != nil {
			return err
		}
	}
	b, err := openBackends(ctx, o, log)
	if err != nil {
		return err
	}
	defer b.close()
	cfg := collector.Config{
		ReplayURL: o.replayURL, ReplaySecret: secret[0], IntakeSecrets: secret, Secrets: collector.SecretSource{Dir: o.secretsDir},
		Workers: o.workers, DeliveryWorkers: o.deliveryWorkers, APIURL: o.apiURL, Logger: log,
	}
	if o.workers == 0 {
		cfg.Workers = -1
	}
	cfg.EndpointDisableAfter, cfg.EndpointEventsURL = o.endpointDisableAfter, o.endpointEventsURL
	cfg.EndpointFailingFor = o.endpointFailingFor
	if o.endpointFailingFor == 0 {
		cfg.EndpointFailingFor = -1 // the count alone
	}
	if o.endpointDisableAfter == 0 {
		cfg.EndpointDisableAfter = -1
	}
	if o.endpointEventsEnv != "" {
		for _, v := range strings.Fields(os.Getenv(o.endpointEventsEnv)) {
			sec, err := webhook.ParseSecret(v)
			if err != nil {
				return fmt.Errorf("-endpoint-events-secret-env: %s: %w", o.endpointEventsEnv, err)
			}
			cfg.EndpointEventsSecrets = append(cfg.EndpointEventsSecrets, sec)
		}
		if len(cfg.EndpointEventsSecrets) == 0 {
			return fmt.Errorf("-endpoint-events-secret-env: %s is not set", o.endpointEventsEnv)
		}
	}
	if o.deliveryWorkers == 0 {
		cfg.DeliveryWorkers = -1
	}
	cfg.SeparateOperator = o.operatorListen != ""
	cfg.NodeID, cfg.ControlPlaneURL, cfg.MaxStreams = o.nodeID, o.controlPlaneURL, o.maxStreams
	if o.controlPlaneURL != "" {
		if u, err := url.Parse(o.controlPlaneURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-controlplane-url: want http(s)://host:port, got %q", o.controlPlaneURL)
		}
	}
	if o.adminTokenEnv != "" {
		if cfg.AdminToken = []byte(os.Getenv(o.adminTokenEnv)); len(cfg.AdminToken) < 16 {
			return fmt.Errorf("-admin-token-env: %s must hold a token of at least 16 characters", o.adminTokenEnv)
		}
	}
	if o.controlPlaneTokenEnv != "" {
		if cfg.ControlPlaneToken = []byte(os.Getenv(o.controlPlaneTokenEnv)); len(cfg.ControlPlaneToken) < 16 {
			return fmt.Errorf("-controlplane-token-env: %s must hold a token of at least 16 characters", o.controlPlaneTokenEnv)
		}
	} else if o.controlPlaneURL != "" {
		cfg.ControlPlaneToken = cfg.AdminToken
	}
	xdsTLSConfig, err := xdsTLS.config(o.xdsAddr, log)
	if err != nil {
		return err
	}
	if o.xdsAddr != "" {
		if o.nodeID == "" {
			return fmt.Errorf("-node-id: required with -xds")
		}
		live := xdsrules.New(xdsrules.Config{Address: o.xdsAddr, NodeID: o.nodeID, Cluster: o.nodeCluster, TLS: xdsTLSConfig, Logger: log})
		go live.Run(ctx)
		cfg.Rules = live
	}
	if cfg.Secrets, err = secretSource(o, cfg.Rules, log); err != nil {
		return err
	}
	c, err := collector.New(cfg, b.store, b.queue)
	if err != nil {
		return err
	}
	srvErr := make(chan error, 2)
	srv, err := serve(o.listen, c.Handler(), srvErr)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	servers := []*http.Server{srv}
	log.Info("collector: serving", "addr", o.listen, "store", o.storeKind, "queue", o.queueKind, "replay_url", o.replayURL)
	if o.operatorListen != "" {
		op, err := serve(o.operatorListen, c.OperatorHandler(), srvErr)
		if err != nil {
			return fmt.Errorf("-operator-listen: %w", err)
		}
		servers = append(servers, op)
		log.Info("collector: serving the operator endpoints", "addr", o.operatorListen)
	}

	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()

	select {
	case <-ctx.Done():
	case err := <-srvErr:
		stop()
		<-runErr
		return fmt.Errorf("serving: %w", err)
	}
	log.Info("collector: shutting down")
	// Stop taking requests first (in-flight intakes finish and are persisted),
	// then let workers finish what they hold.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("collector: shutdown of the API", "err", err)
		}
	}
	err = <-runErr
	log.Info("collector: stopped")
	return err
}

// serve serves h on addr until it is shut down; a failure to serve goes to
// errs. Every phase of a connection is bounded, so that a slow or silent
// client holds no goroutine forever: headers within 10 s, a whole request
// (intake's envelope is at most envelope.MaxSize) within a minute, answers
// within a long-poll's longest wait plus a margin (the events stream
// extends its own deadline), and idle keep-alive connections for 2 min.
func serve(addr string, h http.Handler, errs chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: collector.MaxWait + 15*time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	go func() { errs <- srv.Serve(ln) }()
	return srv, nil
}

// replaySecret reads the replay-signing secret from env: the current secret,
// optionally followed by a comma and the previous one (the filter's setting
// during a rotation may be given to the collector as it is). The collector
// signs with the current one, and takes intake signatures (the filter
// vouching for a caller) made with either. A secret shorter than replay.MinSecretLen bytes
// stops the collector at start.
func replaySecret(env string) ([][]byte, error) {
	secrets, err := replay.ParseSecrets(os.Getenv(env))
	if err != nil {
		return nil, fmt.Errorf("-replay-secret-env: environment variable %s: %w", env, err)
	}
	return secrets, nil
}

// serveDebug serves net/http/pprof on addr (-debug-listen), apart from the API
// so that profiles are never reachable through Envoy.
func serveDebug(addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-debug-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("collector: profiling server", "addr", ln.Addr().String())
	go func() { _ = http.Serve(ln, mux) }()
	return nil
}
