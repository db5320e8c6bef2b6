//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// TestIdempotencyKey retries a POST with the same Idempotency-Key through
// the real Envoy: the retry gets the first request's 202 byte for byte
// (the same id, Location and body), the service runs once and one callback
// is sent; the same key with another body is 422.
func TestIdempotencyKey(t *testing.T) {
	key := `"` + trace.NewRequestID() + `"` // any unguessable value
	send := func(body string) (int, map[string][]string, []byte) {
		resp, b := do(t, "POST", "/slow?ms=1500", body, "content-type", "application/json", "idempotency-key", key)
		return resp.StatusCode, resp.Header, b
	}
	resp, body1 := do(t, "POST", "/slow?ms=1500", `{"order":77}`, "content-type", "application/json", "idempotency-key", key)
	id, _ := accepted(t, resp, body1)
	loc := resp.Header.Get("location")

	code, hdr, body2 := send(`{"order":77}`)
	if code != 202 || first(hdr, "Location") != loc || string(body2) != string(body1) ||
		first(hdr, "X-Async-Request-Id") != id || first(hdr, "X-Async-Idempotent") != "replayed" {
		t.Fatalf("retry: %d %v %s; want the first 202: Location %s body %s", code, hdr, body2, loc, body1)
	}

	code, hdr, body3 := send(`{"order":78}`)
	var e struct{ Error, Message string }
	_ = json.Unmarshal(body3, &e)
	if code != 422 || e.Error != "idempotency_key_reused" || first(hdr, "X-Async-Request-Id") != "" {
		t.Fatalf("the same key with another body: %d %s", code, body3)
	}

	_, cb := waitCallback(t, id)
	if cb.ID != id || cb.Status != "completed" {
		t.Fatalf("callback %+v", cb)
	}
	// A retry after the result still gets the first request, now further on.
	code, hdr, body4 := send(`{"order":77}`)
	var b4 struct{ ID, Status, StatusURL string }
	_ = json.Unmarshal(body4, &b4)
	if code != 202 || first(hdr, "Location") != loc || b4.ID != id || b4.StatusURL != loc || b4.Status == "queued" {
		t.Fatalf("late retry: %d %s", code, body4)
	}

	time.Sleep(time.Second) // a second callback, if any, would have come
	if n := callbacksFor(t, id); n != 1 {
		t.Fatalf("%d callbacks for %s, want 1", n, id)
	}
	svcLog, _ := os.ReadFile(st.LogPath("service"))
	if n := strings.Count(string(svcLog), "request_id="+id); n != 1 {
		t.Fatalf("the service ran the request %d times, want once", n)
	}
}

func first(h map[string][]string, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// callbacksFor counts the callbacks the receiver got for request id.
func callbacksFor(t *testing.T, id string) int {
	t.Helper()
	resp, err := client.Get(st.ReceiverURL + "/received")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []received
	_ = json.NewDecoder(resp.Body).Decode(&got)
	n := 0
	for _, r := range got {
		if r.WebhookID == id {
			n++
		}
	}
	return n
}
