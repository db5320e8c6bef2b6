// Command collector runs the asyncmesh collector sidecar.
//
// Backends: the store is the embedded SQLite database (the default) or
// Elasticsearch (-store elasticsearch); the queue is the same SQLite database
// (the default) or RabbitMQ (-queue rabbitmq). Their URLs come from the
// environment variables named by -es-url-env and -amqp-url-env, so that
// credentials stay out of the process list and the logs.
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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/xdsrules"
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
	secret := os.Getenv(o.replayEnv)
	if secret == "" {
		return fmt.Errorf("-replay-secret-env: environment variable %s is empty", o.replayEnv)
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
		ReplayURL: o.replayURL, ReplaySecret: []byte(secret), Secrets: collector.SecretSource{Dir: o.secretsDir},
		Workers: o.workers, DeliveryWorkers: o.deliveryWorkers, APIURL: o.apiURL, Logger: log,
	}
	if o.workers == 0 {
		cfg.Workers = -1
	}
	if o.deliveryWorkers == 0 {
		cfg.DeliveryWorkers = -1
	}
	if o.adminTokenEnv != "" {
		if cfg.AdminToken = []byte(os.Getenv(o.adminTokenEnv)); len(cfg.AdminToken) < 16 {
			return fmt.Errorf("-admin-token-env: %s must hold a token of at least 16 characters", o.adminTokenEnv)
		}
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
	c, err := collector.New(cfg, b.store, b.queue)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	srv := &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	log.Info("collector: serving", "addr", ln.Addr().String(), "store", o.storeKind, "queue", o.queueKind, "replay_url", o.replayURL)

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
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("collector: shutdown of the API", "err", err)
	}
	err = <-runErr
	log.Info("collector: stopped")
	return err
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
