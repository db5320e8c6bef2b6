//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEventStreamOutlivesRouteTimeouts follows one request's event stream
// through the sidecar's Envoy for longer than the status routes' 75 s
// timeout and Envoy's 60 s idle timeout: the events route has neither (no
// route timeout; an idle timeout the collector's keep-alive comment every
// 15 s stays under), so the stream must stay open, carry keep-alives while
// the record does not change, and end cleanly after the record's last
// status. The record stays in delivering for 93 s without a change: the
// demo receiver refuses its first callback (and only this request's, by its
// trace id) with 503 and Retry-After: 93, which the maybe-async rule's
// default maxBackoff (5 min) honours. Nothing else of the shared stack
// waits; this test alone takes about 94 s (it cannot run in parallel with
// the tests that stop the shared collector).
func TestEventStreamOutlivesRouteTimeouts(t *testing.T) {
	const retryAfter = 93 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Second)
	defer cancel()
	var tid [16]byte
	_, _ = rand.Read(tid[:])
	traceID := hex.EncodeToString(tid[:])
	req, _ := http.NewRequestWithContext(ctx, "POST", st.ReceiverURL+"/throttle?times=1&retryAfter="+retryAfter.String()+"&traceId="+traceID, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("throttling the receiver for trace %s: %v %v", traceID, resp, err)
	}
	resp, body := do(t, "POST", "/maybe?ms=10", `{"stream":1}`, "prefer", "respond-async",
		"traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	id, gotTrace := accepted(t, resp, body)
	if gotTrace != traceID {
		t.Fatalf("trace id %s, want the caller's %s", gotTrace, traceID)
	}

	req, _ = http.NewRequestWithContext(ctx, "GET", st.EnvoyURL+readPath(t, id, "/events", ""), nil)
	opened := time.Now()
	stream, err := (&http.Client{}).Do(req) // no client timeout: the stream is long
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	if stream.StatusCode != 200 || !strings.HasPrefix(stream.Header.Get("content-type"), "text/event-stream") {
		t.Fatalf("events: %s %v", stream.Status, stream.Header)
	}
	// Every comment and status event, with when it arrived.
	type item struct {
		at       time.Duration
		comment  bool
		status   string
		attempts []int
	}
	var items []item
	sc := bufio.NewScanner(stream.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			items = append(items, item{at: time.Since(opened), comment: true})
			t.Logf("%6.1fs %s", time.Since(opened).Seconds(), line)
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "status":
			var v struct {
				Status   string
				Attempts []struct{ StatusCode int }
			}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &v); err != nil {
				t.Fatalf("status event %q: %v", line, err)
			}
			it := item{at: time.Since(opened), status: v.Status}
			for _, a := range v.Attempts {
				it.attempts = append(it.attempts, a.StatusCode)
			}
			items = append(items, it)
			t.Logf("%6.1fs status %s, attempts %v", it.at.Seconds(), it.status, it.attempts)
		}
	}
	ended := time.Since(opened)
	// A stream Envoy cuts (a route timeout or idle timeout) ends without
	// HTTP/1.1's last chunk: unexpected EOF, not the collector's clean end.
	if err := sc.Err(); err != nil {
		t.Fatalf("the stream broke after %v: %v (Envoy cut it?)", ended, err)
	}
	if len(items) == 0 {
		t.Fatal("nothing on the stream")
	}
	last := items[len(items)-1]
	if last.status != "delivered" || len(last.attempts) != 2 || last.attempts[0] != 503 || last.attempts[1] != 204 {
		t.Fatalf("the stream ended after %v with %+v, want delivered after a 503 and a 204", ended, last)
	}
	// From the refused attempt until the redelivery claims the record again
	// (Retry-After later), the record does not change: only keep-alives
	// are sent, every 15 s (the collector polls each second; some slack).
	first := -1
	for i, it := range items {
		if len(it.attempts) == 1 {
			first = i
			break
		}
	}
	if first < 0 {
		t.Fatalf("no status event with the refused attempt: %+v", items)
	}
	var keepAlives []time.Duration
	rest := items[first+1:]
	for len(rest) > 0 && rest[0].comment {
		keepAlives = append(keepAlives, rest[0].at)
		rest = rest[1:]
	}
	prev := items[first].at
	for _, at := range keepAlives {
		if at-prev > 17*time.Second {
			t.Errorf("%v without anything on the stream before %v: keep-alives must come every 15 s", at-prev, at)
		}
		prev = at
	}
	// Six keep-alives, the last past 80 s: past the status routes' 75 s
	// timeout (from the stream's start) and Envoy's 60 s idle timeout
	// (which the keep-alives reset), the stream was open and kept alive.
	if len(keepAlives) < 6 || keepAlives[len(keepAlives)-1] < 80*time.Second {
		t.Errorf("keep-alives at %v: want one every 15 s for the %v Retry-After, the last past 80 s", keepAlives, retryAfter)
	}
	// Then the record's changes: the redelivery's claim (still delivering)
	// and the accepted second attempt, after the Retry-After.
	for _, it := range rest {
		if it.comment {
			t.Errorf("a keep-alive at %v between the record's last changes: %+v", it.at, items)
		}
	}
	if len(rest) == 0 || rest[0].at-items[first].at < retryAfter-time.Second {
		t.Errorf("the record changed %+v after the refused attempt at %v, want after the %v Retry-After", rest, items[first].at, retryAfter)
	}
	if ended-last.at > 5*time.Second {
		t.Errorf("the stream ended %v after the record's last status", ended-last.at)
	}
}
