// Command collector runs the asyncmesh collector sidecar. The store is the
// embedded SQLite database; the queue is the same database (the default) or
// RabbitMQ (-queue rabbitmq, its URL in the environment variable named by
// -amqp-url-env so that the password stays out of the process list).
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
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/rabbitmq"
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
	queueKind := flag.String("queue", "embedded", "queue backend: embedded or rabbitmq")
	amqpEnv := flag.String("amqp-url-env", "ASYNCMESH_AMQP_URL", "environment variable holding the RabbitMQ URL (amqp://user:pass@host:port/vhost)")
	amqpPrefix := flag.String("amqp-prefix", "asyncmesh", "prefix of the RabbitMQ exchanges and queues")
	amqpPrefetch := flag.Int("amqp-prefetch", 0, "unacked messages per consumer (0: its number of workers)")
	apiURL := flag.String("api-url", "", "base URL of this API as others reach it, for the statusUrl in queue messages")
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
	var q queue.Queue = db.Queue()
	switch *queueKind {
	case "embedded":
	case "rabbitmq":
		url := os.Getenv(*amqpEnv)
		if url == "" {
			return fmt.Errorf("-amqp-url-env: environment variable %s is empty", *amqpEnv)
		}
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rq, err := rabbitmq.Open(octx, rabbitmq.Config{URL: url, Prefix: *amqpPrefix, Prefetch: *amqpPrefetch,
			Topics: []string{queue.TopicWork, queue.TopicDelivery}, Logger: log})
		cancel()
		if err != nil {
			return fmt.Errorf("-queue rabbitmq: %w", err)
		}
		defer rq.Close()
		q = rq
	default:
		return fmt.Errorf("-queue: %q is not embedded or rabbitmq", *queueKind)
	}
	c, err := collector.New(collector.Config{
		ReplayURL: *replayURL, ReplaySecret: []byte(secret), Secrets: collector.SecretSource{Dir: *secretsDir},
		Workers: *workers, APIURL: *apiURL, Logger: log,
	}, db.Store(), q)
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
	log.Info("collector: serving", "addr", ln.Addr().String(), "db", *dbPath, "queue", *queueKind, "replay_url", *replayURL)

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
