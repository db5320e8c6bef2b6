package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// options are the command's flags.
type options struct {
	listen, replayURL, replayEnv, secretsDir, apiURL string
	adminTokenEnv, otlpEndpoint, debugListen         string
	operatorListen, controlPlaneURL                  string
	controlPlaneTokenEnv                             string
	maxStreams                                       int
	rulesPath                                        string
	workers, deliveryWorkers                         int

	// The backends (registry.go): their names, the retention every store
	// applies, and each one's own flags.
	storeKind, queueKind string
	retention            time.Duration
	backends             setups

	xdsAddr, nodeID, nodeCluster string

	// Endpoint health (collector/health.go).
	endpointDisableAfter                 int
	endpointFailingFor                   time.Duration
	endpointEventsURL, endpointEventsEnv string
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
	fs.IntVar(&o.endpointDisableAfter, "endpoint-disable-after", 100, "consecutive failed attempts at a callback endpoint, across the collectors of a store, over -endpoint-failing-for, that disable it (its deliveries are then held until an operator enables it); 0: never (410 Gone still disables)")
	fs.DurationVar(&o.endpointFailingFor, "endpoint-failing-for", 10*time.Minute, "with -endpoint-disable-after: how long an endpoint must have been failing, at least, before it is disabled (a short outage heals by itself with retries)")
	fs.StringVar(&o.endpointEventsURL, "endpoint-events-url", "", "URL that receives endpoint events (endpoint.disabled, endpoint.enabled) as JSON POSTs; empty: none")
	fs.StringVar(&o.endpointEventsEnv, "endpoint-events-secret-env", "", "environment variable holding the whsec_ secret(s) that sign the endpoint events (Standard Webhooks); unset: unsigned")
	fs.IntVar(&o.deliveryWorkers, "delivery-workers", 64, "concurrent callback deliveries (0: this collector does not deliver; another one on the same store and queue does)")

	fs.DurationVar(&o.retention, "retention", store.DefaultRetention, "how long a record is kept once delivered or dead; never deleted before (0 keeps everything; Elasticsearch deletes by day: up to a day later)")
	o.backends = registerBackends(fs) // after -retention, which -es-retention aliases
	fs.StringVar(&o.storeKind, kindStore, "embedded", o.backends.usage(kindStore))
	fs.StringVar(&o.queueKind, kindQueue, "embedded", o.backends.usage(kindQueue))
	fs.StringVar(&o.xdsAddr, "xds", "", "control plane xDS address (host:port): follow its rules live (empty: the rules travel in each envelope)")
	fs.StringVar(&o.controlPlaneTokenEnv, "controlplane-token-env", "", "environment variable holding the bearer token of the control plane's GET /v1/nodes (controlplane serve -operator-token-env); default: -admin-token-env's")
	fs.StringVar(&o.controlPlaneURL, "controlplane-url", "", "base URL of the control plane's -metrics listener, whose GET /v1/nodes the operator's GET /v1/rules and the dashboard show (the rules version each node was served and acknowledged); empty: not shown")
	fs.IntVar(&o.maxStreams, "max-streams", 16, "operator event streams (GET /v1/stream, the dashboard's live log) served at once; more answer 503")
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

// openBackends checks the chosen backends' flags, then opens the store and
// the queue.
func openBackends(ctx context.Context, o options, log *slog.Logger) (*backends, error) {
	st, err := o.backends.choose(kindStore, o.storeKind)
	if err != nil {
		return nil, err
	}
	qu, err := o.backends.choose(kindQueue, o.queueKind)
	if err != nil {
		return nil, err
	}
	if o.retention < 0 {
		return nil, fmt.Errorf("-retention %v: want 0 (keep everything) or more", o.retention)
	}
	for kind, s := range map[string]*Setup{o.storeKind: st, o.queueKind: qu} {
		if s.Check != nil {
			if err := s.Check(); err != nil {
				return nil, fmt.Errorf("backend %s: %w", kind, err)
			}
		}
	}
	e := &env{log: log, retention: o.retention, nodeID: o.nodeID}
	b := &backends{}
	fail := func(err error) (*backends, error) { b.closers = e.closers; b.close(); return nil, err }
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if b.store, err = st.Store(octx, e); err != nil {
		return fail(fmt.Errorf("-store %s: %w", o.storeKind, err))
	}
	if b.queue, err = qu.Queue(octx, e); err != nil {
		return fail(fmt.Errorf("-queue %s: %w", o.queueKind, err))
	}
	b.closers = e.closers
	return b, nil
}
