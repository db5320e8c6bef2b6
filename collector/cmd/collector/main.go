// Command collector runs the asyncmesh collector sidecar on the embedded
// (SQLite) backend.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/embedded"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:9901", "address of the collector API (intake and requests)")
	dbPath := flag.String("db", "asyncmesh.db", "embedded database file")
	replayURL := flag.String("replay-url", "http://127.0.0.1:10000", "Envoy listener through which requests are replayed to the service")
	replayEnv := flag.String("replay-secret-env", "ASYNCMESH_REPLAY_SECRET", "environment variable holding the replay-signing secret (shared with the filter)")
	secretsDir := flag.String("secrets-dir", "", "directory of callback secrets, one file per reference")
	workers := flag.Int("workers", 16, "concurrent request executions")
	flag.Parse()

	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(log)
	secret := os.Getenv(*replayEnv)
	if secret == "" {
		return fmt.Errorf("-replay-secret-env: environment variable %s is empty", *replayEnv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	db, err := embedded.Open(ctx, *dbPath)
	if err != nil {
		return err
	}
	defer db.Close()
	c, err := collector.New(collector.Config{
		ReplayURL: *replayURL, ReplaySecret: []byte(secret), Secrets: collector.SecretSource{Dir: *secretsDir},
		Workers: *workers, Logger: log,
	}, db.Store(), db.Queue())
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	srv := &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(ln) }()
	log.Info("collector: serving", "addr", ln.Addr().String(), "db", *dbPath, "replay_url", *replayURL)

	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()

	select {
	case <-ctx.Done():
	case err := <-srvErr:
		stop()
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
