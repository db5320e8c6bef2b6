//go:build e2e

package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	asyncclient "github.com/asyncmesh/asyncmesh/client"
)

// TestClientSDK: the Go SDK through the real Envoy and collector: the handler
// runs with the service's response, and Wait finds a result by long-poll.
func TestClientSDK(t *testing.T) {
	c, err := asyncclient.New(asyncclient.Config{BaseURL: st.EnvoyURL, Secrets: []string{st.WebhookSecret}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan asyncclient.Result, 2)
	req, _ := http.NewRequest("POST", "/slow?ms=100", strings.NewReader(`{"sdk":true}`))
	call, err := c.Do(context.Background(), req, func(_ context.Context, r asyncclient.Result) { got <- r })
	if err != nil || call.ID == "" {
		t.Fatalf("Do = %+v, %v", call, err)
	}
	select {
	case r := <-got:
		if r.ID != call.ID || r.TraceID != call.TraceID || r.Status != "completed" || r.Response.Status != 200 || !strings.Contains(string(r.Response.Body), "sdk") {
			t.Fatalf("result %+v", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("handler never ran")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := c.Wait(ctx, call)
	if err != nil || r.Status != "completed" || r.TraceID != call.TraceID || !strings.Contains(string(r.Response.Body), "sdk") {
		t.Fatalf("Wait = %+v, %v (trace id: want the 202's %s)", r, err, call.TraceID)
	}
	// Prefer: wait: a request that completes within it is answered with the
	// service's response, and its handler never runs (its callback, which
	// still comes, is acknowledged and dropped).
	req, _ = http.NewRequest("POST", "/slow?ms=50", strings.NewReader(`{"sdk":"prefer-wait"}`))
	call, err = c.Do(context.Background(), req, func(context.Context, asyncclient.Result) {
		t.Error("the handler ran for a result relayed within Prefer: wait")
	},
		asyncclient.PreferWait(10*time.Second))
	if err != nil || call.Sync == nil || call.ID == "" || call.AccessToken == "" {
		t.Fatalf("Do with PreferWait = %+v, %v", call, err)
	}
	body, _ := io.ReadAll(call.Sync.Body)
	call.Sync.Body.Close()
	if call.Sync.StatusCode != 200 || !strings.Contains(string(body), "prefer-wait") {
		t.Fatalf("Prefer: wait answered %d %q", call.Sync.StatusCode, body)
	}
	if r, err := c.Wait(ctx, call); err != nil || r.ID != call.ID || r.Status != "completed" {
		t.Fatalf("Wait after Prefer: wait = %+v, %v", r, err)
	}
	time.Sleep(time.Second) // the callback comes; the handler must not run
}
