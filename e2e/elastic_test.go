//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRabbitMQAndElasticsearch runs the whole flow through Envoy with the
// collector on RabbitMQ and Elasticsearch, and finds the request by its trace
// id through the search API (an operator endpoint, on the collector's API).
func TestRabbitMQAndElasticsearch(t *testing.T) {
	s := backendStack(t, "ASYNCMESH_TEST_AMQP_URL", "ASYNCMESH_TEST_ES_URL")
	get := func(path string) (int, []byte) {
		resp, err := client.Get(s.EnvoyURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	resp, err := client.Post(s.EnvoyURL+"/slow?ms=200", "application/json", strings.NewReader(`{"es":true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id, traceID := accepted(t, resp, body)

	code, rec := get(readPath(t, id, "", "wait=30s"))
	var v struct {
		Status  string
		History []struct{ Status string }
	}
	if err := json.Unmarshal(rec, &v); code != 200 || err != nil || v.Status != "delivered" {
		t.Fatalf("record: %d %s", code, rec)
	}
	var seen []string
	for _, h := range v.History {
		seen = append(seen, h.Status)
	}
	if got := strings.Join(seen, ","); got != "persisted,queued,completed,delivering,delivered" {
		t.Fatalf("history %s", got)
	}
	if code, res := get(readPath(t, id, "/result", "")); code != 200 || !strings.Contains(string(res), `es`) {
		t.Fatalf("result: %d %s", code, res)
	}
	// Search is near-real-time (one refresh interval).
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := s.OperatorGet(context.Background(), "/v1/requests?traceId="+traceID)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code := resp.StatusCode
		if code == http.StatusOK && strings.Contains(string(page), id) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("search by trace id: %d %s", code, page)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := len(receivedAt(t, s)); n != 1 {
		t.Fatalf("receiver got %d callbacks, want 1", n)
	}
}

// TestElasticsearchDownUnderLoad stops Elasticsearch in the middle of a
// bounded load: intake answers 503 while it is down (never 202 without a
// stored record), and when it is back everything resumes without a restart:
// every 202 is called back.
func TestElasticsearchDownUnderLoad(t *testing.T) {
	s := backendStack(t, "ASYNCMESH_TEST_AMQP_URL", "ASYNCMESH_TEST_ES_URL")
	l := loadDuring(t, s, "/slow?ms=30", 25*time.Second, func() {
		time.Sleep(2 * time.Second)
		runScript(t, "stop-elasticsearch.sh")
		time.Sleep(2 * time.Second)
		runScript(t, "start-elasticsearch.sh") // same port, same data
	})
	lost, dups := countCallbacks(t, s, l.ids, 90*time.Second)
	t.Logf("elasticsearch down: accepted %d, refused %d (503 while down), lost %d, duplicated %d", len(l.ids), l.refused(), lost, dups)
	if l.refused() == 0 {
		t.Fatal("no request was refused: Elasticsearch never went down")
	}
	if lost > 0 {
		t.Fatalf("%d accepted requests never called back", lost)
	}
}
