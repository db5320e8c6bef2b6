package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/elastic"
	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/rabbitmq"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// options are the command's flags.
type options struct {
	listen, replayURL, replayEnv, secretsDir, apiURL string
	adminTokenEnv, otlpEndpoint, debugListen         string
	operatorListen                                   string
	rulesPath                                        string
	workers, deliveryWorkers                         int

	storeKind, queueKind, dbPath string
	esEnv, esPrefix              string
	esReplicas, esFlushers       int
	esLinger, esRetention        time.Duration
	amqpEnv, amqpPrefix          string
	amqpInstance                 string
	amqpPrefetch                 int

	xdsAddr, nodeID, nodeCluster string
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9901", "address of the collector API (intake and requests)")
	fs.StringVar(&o.replayURL, "replay-url", "http://127.0.0.1:10000", "Envoy listener through which requests are replayed to the service")
	fs.StringVar(&o.replayEnv, "replay-secret-env", "ASYNCMESH_REPLAY_SECRET", "environment variable holding the replay-signing secret shared with the filter, at least 32 bytes (\"current,previous\" during a rotation: the current one signs)")
	fs.StringVar(&o.secretsDir, "secrets-dir", "", "directory of callback secrets, one file per reference (a fallback after the declared sources)")
	fs.StringVar(&o.rulesPath, "rules", "", "rules file whose secrets: section says where each secret is (only that section is read; with -xds the control plane's declarations come first)")
	fs.StringVar(&o.apiURL, "api-url", "", "base URL of this API as others reach it, for the statusUrl in queue messages")
	fs.StringVar(&o.otlpEndpoint, "otlp-endpoint", "", "OTLP/HTTP endpoint for OpenTelemetry spans (for example http://127.0.0.1:4318); empty: tracing off")
	fs.StringVar(&o.adminTokenEnv, "admin-token-env", "", "environment variable holding the bearer token of the operator endpoints (search, replay, metrics); unset: they are off")
	fs.StringVar(&o.operatorListen, "operator-listen", "", "address of a listener of its own for the operator endpoints (search, replay, metrics), which -listen then does not serve; empty: -listen serves them too, behind the token")
	fs.StringVar(&o.debugListen, "debug-listen", "", "address of a profiling server (net/http/pprof; keep it on loopback); empty: off")
	fs.IntVar(&o.workers, "workers", 16, "concurrent request executions (0: this collector does not execute; another one on the same store and queue does)")
	fs.IntVar(&o.deliveryWorkers, "delivery-workers", 64, "concurrent callback deliveries (0: this collector does not deliver; another one on the same store and queue does)")

	fs.StringVar(&o.storeKind, "store", "embedded", "store backend: embedded or elasticsearch")
	fs.StringVar(&o.queueKind, "queue", "embedded", "queue backend: embedded or rabbitmq")
	fs.StringVar(&o.dbPath, "db", "asyncmesh.db", "embedded database file (when the store or the queue is embedded)")
	fs.StringVar(&o.esEnv, "es-url-env", "ASYNCMESH_ES_URL", "environment variable holding the Elasticsearch URL (http://host:port)")
	fs.StringVar(&o.esPrefix, "es-prefix", "asyncmesh", "prefix of the Elasticsearch index templates and indices")
	fs.IntVar(&o.esReplicas, "es-replicas", 1, "replicas of each daily index (0 on a single node)")
	fs.IntVar(&o.esFlushers, "es-flushers", 2, "bulk requests in flight to Elasticsearch")
	fs.DurationVar(&o.esLinger, "es-linger", 2*time.Millisecond, "how long a bulk that finds other writes waiting waits for more (0: sent at once; a lone write never waits)")
	fs.DurationVar(&o.esRetention, "es-retention", 30*24*time.Hour, "delete daily indices older than this (0 keeps everything)")
	fs.StringVar(&o.amqpEnv, "amqp-url-env", "ASYNCMESH_AMQP_URL", "environment variable holding the RabbitMQ URL (amqp://user:pass@host:port/vhost)")
	fs.StringVar(&o.amqpPrefix, "amqp-prefix", "asyncmesh", "prefix of the RabbitMQ exchanges and queues")
	fs.StringVar(&o.amqpInstance, "amqp-instance", "", "name of this collector among those sharing -amqp-prefix (a pod's name): the work messages of its intakes wait in a queue of its own until the filter's deadline has passed, then go to all (default: -node-id, else the host name)")
	fs.IntVar(&o.amqpPrefetch, "amqp-prefetch", 0, "unacked messages per consumer (0: its number of workers)")
	fs.StringVar(&o.xdsAddr, "xds", "", "control plane xDS address (host:port): follow its rules live (empty: the rules travel in each envelope)")
	fs.StringVar(&o.nodeID, "node-id", "", "with -xds: the Envoy node id of this collector's sidecar")
	fs.StringVar(&o.nodeCluster, "node-cluster", "", "with -xds: the Envoy cluster of this collector's sidecar")
}

type backends struct {
	store   store.Store
	queue   queue.Queue
	closers []func() error
}

// close closes in reverse order of opening.
func (b *backends) close() error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		errs = append(errs, b.closers[i]())
	}
	return errors.Join(errs...)
}

func envURL(flagName, env string) (string, error) {
	v := os.Getenv(env)
	if v == "" {
		return "", fmt.Errorf("-%s: environment variable %s is empty", flagName, env)
	}
	return v, nil
}

// openBackends opens the configured store and queue; the embedded database
// only when one of them uses it.
func openBackends(ctx context.Context, o options, log *slog.Logger) (*backends, error) {
	b := &backends{}
	fail := func(err error) (*backends, error) { b.close(); return nil, err }
	var db *embedded.DB
	if o.storeKind == "embedded" || o.queueKind == "embedded" {
		var err error
		if db, err = embedded.Open(ctx, o.dbPath); err != nil {
			return nil, fmt.Errorf("-db: %w", err)
		}
		b.closers = append(b.closers, db.Close)
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch o.storeKind {
	case "embedded":
		b.store = db.Store()
	case "elasticsearch":
		url, err := envURL("es-url-env", o.esEnv)
		if err != nil {
			return fail(err)
		}
		es, err := elastic.Open(octx, elastic.Config{URL: url, Prefix: o.esPrefix, Replicas: o.esReplicas, Retention: o.esRetention,
			Flushers: o.esFlushers, Linger: o.esLinger, Logger: log})
		if err != nil {
			return fail(fmt.Errorf("-store elasticsearch: %w", err))
		}
		b.store, b.closers = es, append(b.closers, es.Close)
	default:
		return fail(fmt.Errorf("-store: %q is not embedded or elasticsearch", o.storeKind))
	}
	switch o.queueKind {
	case "embedded":
		b.queue = db.Queue()
	case "rabbitmq":
		url, err := envURL("amqp-url-env", o.amqpEnv)
		if err != nil {
			return fail(err)
		}
		instance := o.amqpInstance
		if instance == "" {
			instance = o.nodeID
		}
		if instance == "" {
			if instance, err = os.Hostname(); err != nil {
				return fail(fmt.Errorf("-amqp-instance: not set, and the host name is unknown: %w", err))
			}
		}
		rq, err := rabbitmq.Open(octx, rabbitmq.Config{URL: url, Prefix: o.amqpPrefix, Prefetch: o.amqpPrefetch,
			Topics: []string{queue.TopicWork, queue.TopicDelivery}, Instance: instance, Logger: log})
		if err != nil {
			return fail(fmt.Errorf("-queue rabbitmq: %w", err))
		}
		b.queue, b.closers = rq, append(b.closers, rq.Close)
	default:
		return fail(fmt.Errorf("-queue: %q is not embedded or rabbitmq", o.queueKind))
	}
	return b, nil
}
