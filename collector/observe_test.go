package collector

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestMetricsAndSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })

	e := newEnv(t)
	en := e.envelope("/work", []byte("x"))
	en.Package = "billing"
	e.intake(en)
	if code, r := e.get("/v1/requests/" + en.ID + "?wait=10s"); code != 200 || r["status"] != "delivered" || r["package"] != "billing" {
		t.Fatalf("%d %v", code, r)
	}
	req, _ := http.NewRequest("GET", e.api.URL+"/metrics", nil)
	req.Header.Set("authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`asyncmesh_collector_intake_total{outcome="accepted",rule="r"} 1`,
		`asyncmesh_collector_transitions_total{rule="r",status="delivered"} 1`,
		`asyncmesh_collector_delivery_attempts_total{outcome="delivered",protocol="http",rule="r"} 1`,
		`asyncmesh_collector_accept_to_delivered_seconds_count{rule="r"} 1`,
		`asyncmesh_collector_execute_seconds_count{rule="r",target="internal"} 1`,
		`asyncmesh_collector_rule_package{package="billing",rule="r"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	names := map[string]bool{}
	for _, s := range rec.Ended() {
		if s.SpanContext().TraceID().String() == en.TraceID {
			names[s.Name()] = true
		}
	}
	for _, n := range []string{"asyncmesh.intake", "asyncmesh.process", "asyncmesh.deliver"} {
		if !names[n] {
			t.Errorf("no %s span in the caller's trace %s (got %v)", n, en.TraceID, names)
		}
	}
}
