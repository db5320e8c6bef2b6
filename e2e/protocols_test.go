//go:build e2e

package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestCallbackProtocols sends one request per callback protocol of the
// demo's orders rule, chosen by the x-reply-via header, and waits for each at
// the receiver of that kind: http and soap (HTTP server), grpc (a gRPC
// Callback server), amqp (a consumer of a queue on RabbitMQ, when
// ASYNCMESH_TEST_AMQP_URL is set). Each callback is signed and verified.
func TestCallbackProtocols(t *testing.T) {
	check := func(t *testing.T, s *stack.Stack, via string) {
		resp, body := doAt(t, s, "POST", "/orders?ms=50", `{"order":7}`, "content-type", "application/json", "x-reply-via", via)
		id, traceID := accepted(t, resp, body)
		rec, cb := waitCallbackAt(t, s, id)
		if rec.Protocol != via || !rec.Verified || rec.TraceID != traceID || cb.ID != id || cb.Status != "completed" ||
			cb.Response.Status != 200 || !strings.Contains(cb.Response.Body, `{\"order\":7}`) {
			t.Fatalf("%s callback: %+v %+v", via, rec, cb)
		}
	}
	for _, via := range []string{"http", "soap", "grpc"} {
		t.Run(via, func(t *testing.T) { check(t, st, via) })
	}
	t.Run("amqp", func(t *testing.T) { check(t, backendStack(t, "ASYNCMESH_TEST_AMQP_URL"), "amqp") })
	t.Run("unknown target", func(t *testing.T) {
		resp, body := do(t, "POST", "/orders", `{}`, "x-reply-via", "pigeon")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `header x-reply-via: \"pigeon\" names no callback target`) {
			t.Fatalf("%s %s", resp.Status, body)
		}
	})
}
