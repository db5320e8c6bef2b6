package collector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/elastic"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// keyed returns an envelope as the filter sends it for a request with
// Idempotency-Key key from caller.
func (e *env) keyed(caller, key string, body []byte, window time.Duration) *envelope.Envelope {
	en := e.envelope("/orders?x=1", body)
	_, en.AccessHash = access.NewToken()
	en.Caller, en.IdempotencyKey, en.IdempotencyWindow = caller, key, rules.Duration(window)
	en.Deadline = time.Now().Add(5 * time.Second).UnixMilli()
	return en
}

// intakeSigned posts en as the filter does, with its intake signature (an
// envelope that names a caller needs it).
func (e *env) intakeSigned(en *envelope.Envelope) *http.Response {
	data, _ := json.Marshal(en)
	req, _ := http.NewRequest(http.MethodPost, e.api.URL+"/v1/intake", bytes.NewReader(data))
	req.Header.Set("content-type", "application/json")
	req.Header.Set(replay.IntakeHeader, replay.SignIntake(replaySecret, data))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// answer decodes intake's JSON answer.
func answer(t *testing.T, resp *http.Response) map[string]string {
	t.Helper()
	var v map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("decoding intake's answer (%d): %v", resp.StatusCode, err)
	}
	return v
}

func (e *env) records(t *testing.T) int {
	t.Helper()
	page, err := e.c.store.Search(context.Background(), store.Query{Rule: "r"})
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Records)
}

func TestIdempotencyKeyRetryGetsTheFirstRequest(t *testing.T) {
	e := newEnv(t)
	first := e.keyed("billing", "k-1", []byte("order 1"), time.Hour)
	if resp := e.intakeSigned(first); resp.StatusCode != 201 {
		t.Fatalf("first intake: %d", resp.StatusCode)
	}
	retry := e.keyed("billing", "k-1", []byte("order 1"), time.Hour) // a new id, trace and token
	resp := e.intakeSigned(retry)
	got := answer(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get(hdrIdempotent) != idempotentReplay {
		t.Fatalf("retry: %d %s %v, want 200 with %s: %s", resp.StatusCode, resp.Header.Get(hdrIdempotent), got, hdrIdempotent, idempotentReplay)
	}
	if got["id"] != first.ID || got["traceId"] != first.TraceID || got["accessHash"] != first.AccessHash || got["status"] == "" {
		t.Fatalf("retry answered %v, want the first request's id %s, trace %s and access hash", got, first.ID, first.TraceID)
	}
	if code, rec := e.get("/v1/requests/" + first.ID + "?wait=10s"); code != 200 || rec["status"] != "delivered" {
		t.Fatalf("first request: %d %v", code, rec["status"])
	}
	// Once delivered, a retry still gets the first request, now delivered.
	again := e.keyed("billing", "k-1", []byte("order 1"), time.Hour)
	if got := answer(t, e.intakeSigned(again)); got["id"] != first.ID || got["status"] != "delivered" {
		t.Fatalf("late retry answered %v", got)
	}
	for _, id := range []string{retry.ID, again.ID} {
		if code, _ := e.get("/v1/requests/" + id); code != 404 {
			t.Fatalf("the retry's own id %s was stored (%d)", id, code)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.callbacks) != 1 || e.callbacks[first.ID] != 1 {
		t.Fatalf("callbacks %v, want one, for %s", e.callbacks, first.ID)
	}
}

func TestIdempotencyKeyScopes(t *testing.T) {
	e := newEnv(t)
	first := e.keyed("billing", "k-1", []byte("order 1"), time.Hour)
	if resp := e.intakeSigned(first); resp.StatusCode != 201 {
		t.Fatalf("first intake: %d", resp.StatusCode)
	}
	otherRule := e.keyed("billing", "k-1", []byte("order 1"), time.Hour)
	otherRule.Rule = "r2"
	for _, tc := range []struct {
		name string
		env  *envelope.Envelope
		code int
		err  string
	}{
		{"same key, another body", e.keyed("billing", "k-1", []byte("order 2"), time.Hour), 422, "idempotency_key_reused"},
		{"same key, another target", func() *envelope.Envelope {
			en := e.keyed("billing", "k-1", []byte("order 1"), time.Hour)
			en.Path = "/orders?x=2"
			return en
		}(), 422, "idempotency_key_reused"},
		// The attacker: caller B (or an anonymous one) sending caller A's
		// key gets a job of its own, never A's id or token hash.
		{"another caller", e.keyed("shipping", "k-1", []byte("order 1"), time.Hour), 201, ""},
		{"anonymous", e.keyed("", "k-1", []byte("order 1"), time.Hour), 201, ""},
		{"another rule", otherRule, 201, ""},
		{"another key", e.keyed("billing", "k-2", []byte("order 1"), time.Hour), 201, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.intakeSigned(tc.env)
			got := answer(t, resp)
			if resp.StatusCode != tc.code || got["error"] != tc.err {
				t.Fatalf("intake: %d %v, want %d %q", resp.StatusCode, got, tc.code, tc.err)
			}
			if got["id"] == first.ID || got["accessHash"] == first.AccessHash || resp.Header.Get(hdrIdempotent) != "" {
				t.Fatalf("answered with the first request: %v", got)
			}
			if tc.code == 201 && got["id"] != tc.env.ID {
				t.Fatalf("answered id %s, want its own %s", got["id"], tc.env.ID)
			}
		})
	}
}

func TestIdempotencyKeyConcurrentRetriesMakeOneJob(t *testing.T) {
	e := newEnv(t)
	const n = 8
	var wg sync.WaitGroup
	codes := make([]int, n)
	ids := make([]string, n)
	for i := range n {
		en := e.keyed("", "0b9c1d4e-race", []byte("order"), time.Hour)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := e.intakeSigned(en)
			codes[i], ids[i] = resp.StatusCode, answer(t, resp)["id"]
		}()
	}
	wg.Wait()
	var winner string
	for i, code := range codes {
		switch code {
		case 201:
			if winner != "" {
				t.Fatalf("two intakes created a job: %v", codes)
			}
			winner = ids[i]
		case 200, 409: // the first's answer, or "still being taken in"
		default:
			t.Fatalf("intake answered %d", code)
		}
	}
	for i, code := range codes {
		if code == 200 && ids[i] != winner {
			t.Fatalf("a retry got id %s, the job is %s", ids[i], winner)
		}
	}
	if n := e.records(t); n != 1 || winner == "" {
		t.Fatalf("%d records (winner %q), want 1", n, winner)
	}
}

func TestIdempotencyKeyExpires(t *testing.T) {
	e := newEnv(t)
	first := e.keyed("", "k-exp", []byte("order"), time.Second)
	if resp := e.intakeSigned(first); resp.StatusCode != 201 {
		t.Fatalf("first intake: %d", resp.StatusCode)
	}
	time.Sleep(1100 * time.Millisecond)
	later := e.keyed("", "k-exp", []byte("order"), time.Second)
	if resp := e.intakeSigned(later); resp.StatusCode != 201 {
		t.Fatalf("intake after the window: %d, want a new job", resp.StatusCode)
	}
	if n := e.records(t); n != 2 {
		t.Fatalf("%d records, want 2", n)
	}
}

// A key whose first request intake abandoned (its caller was told 503) is
// free: the retry is a new job.
func TestIdempotencyKeyOfAnAbandonedRequestIsFree(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers = -1, -1 }
	e.start()
	first := e.keyed("", "k-abandoned", []byte("order"), time.Hour)
	if resp := e.intakeSigned(first); resp.StatusCode != 201 {
		t.Fatalf("first intake: %d", resp.StatusCode)
	}
	if err := e.c.abandon(context.Background(), &store.Record{ID: first.ID}); err != nil {
		t.Fatal(err)
	}
	retry := e.keyed("", "k-abandoned", []byte("order"), time.Hour)
	resp := e.intakeSigned(retry)
	if got := answer(t, resp); resp.StatusCode != 201 || got["id"] != retry.ID {
		t.Fatalf("retry of an abandoned request: %d %v, want a new job", resp.StatusCode, got)
	}
	again := e.keyed("", "k-abandoned", []byte("order"), time.Hour)
	if got := answer(t, e.intakeSigned(again)); got["id"] != retry.ID {
		t.Fatalf("the next retry got %v, want the new job %s", got, retry.ID)
	}
}

// judgeHolder's table: what a held key means, by the holder's record and
// this collector's decision on it.
func TestJudgeHolder(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.Workers, c.DeliveryWorkers = -1, -1 }
	e.start()
	ctx := context.Background()
	put := func(status store.Status) *store.Record {
		en := e.keyed("", "k", []byte("b"), time.Hour)
		r := store.NewRecord(en, time.Now())
		if status != store.Persisted {
			if err := (store.Change{Event: store.Enqueue, At: time.Now()}).Apply(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.c.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	fp := idempotency.Fingerprint("POST", "/orders?x=1", []byte("b"))
	future, past := time.Now().Add(time.Minute), time.Now().Add(-time.Minute)
	queued := put(store.Queued)
	pending := put(store.Queued)
	e.c.decided.pending(pending.ID, future)
	acceptedRec := put(store.Queued)
	e.c.decided.pending(acceptedRec.ID, future)
	e.c.decided.decide(acceptedRec.ID, accepted)
	abandoned := put(store.Queued)
	if err := e.c.abandon(ctx, abandoned); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		id       string
		deadline time.Time
		fp       string
		want     keyVerdict
	}{
		{"no record yet, within its deadline", "0190a5d0-0000-7000-8000-000000000001", future, fp, keyInProgress},
		{"no record, past its deadline", "0190a5d0-0000-7000-8000-000000000001", past, fp, keyFree},
		{"abandoned", abandoned.ID, past, fp, keyFree},
		{"another request", queued.ID, past, "other", keyReused},
		{"queued, decided elsewhere", queued.ID, past, fp, keyDuplicate},
		{"queued, another collector still deciding", queued.ID, future, fp, keyInProgress},
		{"queued, this collector still deciding", pending.ID, future, fp, keyInProgress},
		{"queued, accepted here", acceptedRec.ID, future, fp, keyDuplicate},
	} {
		got, _, err := e.c.judgeHolder(ctx, store.Key{ID: tc.id, Fingerprint: fp, Deadline: tc.deadline}, tc.fp)
		if err != nil || got != tc.want {
			t.Errorf("%s: judgeHolder = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

// TestIdempotencyKeyOnElasticsearch runs intake's idempotency on the
// Elasticsearch store (no transaction: the key, then the record), when
// ASYNCMESH_TEST_ES_URL is set: concurrent retries make one job, a retry
// gets the first request, another body is 422, another caller its own job.
func TestIdempotencyKeyOnElasticsearch(t *testing.T) {
	url := os.Getenv("ASYNCMESH_TEST_ES_URL")
	if url == "" {
		t.Skip("ASYNCMESH_TEST_ES_URL is not set (scripts/start-elasticsearch.sh prints one)")
	}
	prefix := fmt.Sprintf("asyncmesh-test-idem-%d", time.Now().UnixNano())
	es, err := elastic.Open(context.Background(), elastic.Config{URL: url, Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range []string{"/" + prefix + "-*", "/_index_template/" + prefix + "-requests", "/_index_template/" + prefix + "-bodies", "/_index_template/" + prefix + "-idempotency-keys"} {
			req, _ := http.NewRequest(http.MethodDelete, url+p, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		es.Close()
	})
	e := newEnv(t)
	e.stop()
	e.wrap = func(store.Store) store.Store { return es } // the embedded queue, Elasticsearch's records
	e.start()

	const n = 6
	var wg sync.WaitGroup
	codes := make([]int, n)
	ids := make([]string, n)
	for i := range n {
		en := e.keyed("billing", "es-key", []byte("order"), time.Hour)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := e.intakeSigned(en)
			codes[i], ids[i] = resp.StatusCode, answer(t, resp)["id"]
		}()
	}
	wg.Wait()
	var winner string
	for i, code := range codes {
		switch {
		case code == 201 && winner == "":
			winner = ids[i]
		case code == 201:
			t.Fatalf("two intakes created a job: %v", codes)
		case code != 200 && code != 409:
			t.Fatalf("intake answered %d", code)
		}
	}
	if winner == "" {
		t.Fatalf("no intake created the job: %v", codes)
	}
	retry := e.intakeSigned(e.keyed("billing", "es-key", []byte("order"), time.Hour))
	if got := answer(t, retry); retry.StatusCode != 200 || got["id"] != winner {
		t.Fatalf("retry: %d %v, want the job %s", retry.StatusCode, got, winner)
	}
	if resp := e.intakeSigned(e.keyed("billing", "es-key", []byte("other"), time.Hour)); resp.StatusCode != 422 {
		t.Fatalf("another body: %d, want 422", resp.StatusCode)
	}
	other := e.keyed("shipping", "es-key", []byte("order"), time.Hour)
	if got := answer(t, e.intakeSigned(other)); got["id"] != other.ID {
		t.Fatalf("another caller got %v, want its own job %s", got, other.ID)
	}
	if code, rec := e.get("/v1/requests/" + winner + "?wait=10s"); code != 200 || rec["status"] != "delivered" {
		t.Fatalf("the job: %d %v", code, rec["status"])
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.callbacks[winner] != 1 {
		t.Fatalf("callbacks %v, want one for %s", e.callbacks, winner)
	}
}
