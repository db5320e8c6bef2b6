package collector

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// Observability decisions:
//   - Metrics (GET /metrics, Prometheus) are labelled by rule and status (or
//     protocol and outcome); rule names come from the rules file, so the
//     label sets stay bounded. Each collector has a registry of its own.
//   - Spans (OpenTelemetry, exported over OTLP when the command is given an
//     endpoint, a no-op otherwise) continue the caller's trace: their parent
//     is the request's traceparent, so intake, processing and every delivery
//     attempt appear under the trace id the caller got in x-async-trace-id.
//     The replayed request carries the processing span as its parent.

var tracer = otel.Tracer("github.com/asyncmesh/asyncmesh/collector")

type metrics struct {
	reg            *prometheus.Registry
	intake         *prometheus.CounterVec
	intakeSeconds  *prometheus.HistogramVec
	transitions    *prometheus.CounterVec
	executeSeconds *prometheus.HistogramVec
	attempts       *prometheus.CounterVec
	attemptSeconds *prometheus.HistogramVec
	endToEnd       *prometheus.HistogramVec
	// rulePackage is an info metric: 1 for each rule seen with the package
	// it belongs to, so that every per-rule series sums by package
	// (... * on(rule) group_left(package) asyncmesh_collector_rule_package).
	rulePackage *prometheus.GaugeVec
	// Endpoint health (health.go).
	endpointEvents    *prometheus.CounterVec
	endpointsDisabled prometheus.Gauge
	// Ordering keys (ordering.go).
	orderWaits, orderStuck *prometheus.CounterVec
	orderTurnSeconds       *prometheus.HistogramVec
}

func newMetrics() *metrics {
	buckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		intake: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_intake_total",
			Help: "Intake calls by rule and outcome (accepted, duplicate, refused, late, store_error; with an Idempotency-Key: idempotent, key_reused, key_in_progress)."}, []string{"rule", "outcome"}),
		intakeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "asyncmesh_collector_intake_seconds",
			Help: "Time to persist and publish an accepted request (without a Prefer: wait).", Buckets: buckets}, []string{"rule"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_transitions_total",
			Help: "Status changes of records by rule and the status reached."}, []string{"rule", "status"}),
		executeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "asyncmesh_collector_execute_seconds",
			Help: "Time to run a request against the service (internal) or hand it to a node (external).", Buckets: buckets}, []string{"rule", "target"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_delivery_attempts_total",
			Help: "Callback attempts by rule, protocol and outcome (delivered, retry, gone)."}, []string{"rule", "protocol", "outcome"}),
		attemptSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "asyncmesh_collector_delivery_attempt_seconds",
			Help: "Latency of callback attempts.", Buckets: buckets}, []string{"rule", "protocol"}),
		endToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "asyncmesh_collector_accept_to_delivered_seconds",
			Help: "From intake to the delivered callback.", Buckets: buckets}, []string{"rule"}),
		endpointEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_endpoint_events_total",
			Help: "Callback endpoints this collector disabled (consecutive failures, 410 Gone) or an operator enabled or disabled, by event."}, []string{"event"}),
		endpointsDisabled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "asyncmesh_collector_endpoints_disabled",
			Help: "Callback endpoints disabled in the store, as this collector last read them: their deliveries are held."}),
		rulePackage: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "asyncmesh_collector_rule_package",
			Help: "1 for each rule of a package (rules file packages:) this collector has seen a request of: join per-rule series on rule to sum them by package."}, []string{"rule", "package"}),
		orderWaits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_ordering_waits_total",
			Help: "Work messages of ordered requests put back to wait for the request before them in their ordering key, by rule."}, []string{"rule"}),
		orderStuck: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "asyncmesh_collector_ordering_stuck_total",
			Help: "Ordered requests found still waiting for their turn after 5 minutes (counted once per 5 minutes of waiting), by rule."}, []string{"rule"}),
		orderTurnSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "asyncmesh_collector_ordering_turn_seconds",
			Help: "From intake to the turn of an ordered request (its predecessor done), by rule.", Buckets: buckets}, []string{"rule"}),
	}
	m.reg.MustRegister(m.intake, m.intakeSeconds, m.transitions, m.executeSeconds, m.attempts, m.attemptSeconds, m.endToEnd, m.rulePackage, m.endpointEvents, m.endpointsDisabled,
		m.orderWaits, m.orderStuck, m.orderTurnSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// transitioned counts the statuses a change moved r to.
func (m *metrics) transitioned(r *store.Record, ch store.Change) {
	if r.Envelope != nil && r.Envelope.Package != "" {
		m.rulePackage.WithLabelValues(r.Rule, r.Envelope.Package).Set(1)
	}
	for _, e := range ch.Events() {
		if e.Moves() {
			m.transitions.WithLabelValues(r.Rule, string(e.To())).Inc()
		}
	}
	if r.Status == store.Delivered {
		m.endToEnd.WithLabelValues(r.Rule).Observe(r.UpdatedAt.Sub(r.CreatedAt).Seconds())
	}
}

// spanFor starts a span whose parent is the request's traceparent.
func spanFor(ctx context.Context, e *envelope.Envelope, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if e != nil {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": e.TraceParent})
		attrs = append(attrs, attribute.String("asyncmesh.request_id", e.ID), attribute.String("asyncmesh.rule", e.Rule))
	}
	return tracer.Start(ctx, name, trace.WithAttributes(attrs...))
}

// traceParentOf is the traceparent of ctx's span, or fallback when no span
// is recording (tracing off).
func traceParentOf(ctx context.Context, fallback string) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return fallback
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	if tp := c["traceparent"]; tp != "" {
		return tp
	}
	return fallback
}

// endSpan records err (if any) and ends span.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func since(t time.Time) float64 { return time.Since(t).Seconds() }
