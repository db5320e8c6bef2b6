package collector

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// fuzzRecord is a record the API fuzz target reads, with its caller's token.
type fuzzRecord struct {
	rec   *store.Record
	token string
}

// fuzzCollector is a collector over a fresh embedded database holding a
// delivered record and one that is still queued (nothing runs: Run is not
// called, so a long-poll on the second one waits for as long as it is let).
func fuzzCollector(f *testing.F) (*Collector, []fuzzRecord) {
	db, err := embedded.Open(context.Background(), filepath.Join(f.TempDir(), "c.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	c, err := New(Config{ReplayURL: "http://127.0.0.1:1", ReplaySecret: replaySecret, Secrets: testSecrets{},
		AdminToken: []byte(adminToken), MaxWaiters: 2, Logger: slog.New(slog.DiscardHandler)}, db.Store(), db.Queue())
	if err != nil {
		f.Fatal(err)
	}
	var recs []fuzzRecord
	for i, st := range []store.Status{store.Delivered, store.Queued} {
		tok, hash := access.NewToken()
		tp := trace.NewParent()
		en := &envelope.Envelope{Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(), TraceParent: tp.String(),
			AccessHash: hash, Rule: "rule-" + strconv.Itoa(i), Method: "POST", Authority: "api.local", Path: "/work?x=1", Body: []byte("secret request"),
			Callback: rules.Callback{URL: "http://127.0.0.1:1/cb", Protocol: rules.ProtocolHTTP}, Retry: rules.Retry{MaxAttempts: 1}, Timeout: rules.Duration(time.Second)}
		rec := store.NewRecord(en, time.Now().Add(time.Duration(i)*time.Millisecond))
		rec.Status = st
		rec.History = append(rec.History, store.Transition{Status: st, At: rec.CreatedAt})
		if st.HasResult() {
			rec.Response = &store.Response{Status: 200, Headers: [][2]string{{"content-type", "text/plain"}}, Body: []byte("secret response")}
		}
		if err := db.Store().Create(context.Background(), rec); err != nil {
			f.Fatal(err)
		}
		recs = append(recs, fuzzRecord{rec, tok})
	}
	return c, recs
}

// FuzzSearchQuery drives the collector's HTTP handler with arbitrary raw
// query strings on GET /v1/requests (the operator's search) and on the
// reads of one request (GET /v1/requests/{id}, /result, /events, with
// ?wait= and ?token=). sel picks the endpoint (bits 0-1), the record (bits
// 2-3: delivered, still queued, unknown id, the fuzzed id), whether the
// operator's bearer token is sent (bit 4) and whether the record's own
// access token is appended to the query (bit 5). Every request's context
// ends after 50 ms, so that a long-poll (up to MaxWait) never stalls the
// fuzzer. Properties:
//   - the handler returns within a few seconds and never answers 5xx;
//   - the status is 200, 400, 401, 404 or 429 (and 202 for /result of a
//     request without a result), or nothing at all when the caller's
//     context ended during a wait;
//   - a 400 is JSON naming the parameter at fault: "wait" or one of the
//     query's keys;
//   - search answers 401 without the operator's token; a record read
//     answers 200 only to the operator or with that record's token, and
//     404 (the unknown id's answer) to anyone else;
//   - a search page holds only records that match its filters, at most
//     limit of them;
//   - no long-poll place is left taken.
func FuzzSearchQuery(f *testing.F) {
	c, recs := fuzzCollector(f)
	h := c.Handler()
	done := recs[0].rec
	for _, s := range []struct {
		q   string
		sel uint8
	}{
		{"", 0x10},
		{"limit=500", 0x10},
		{"limit=0", 0x10},
		{"limit=501", 0x10},
		{"limit=-1", 0x10},
		{"limit=99999999999999999999", 0x10},
		{"limit=1&cursor=" + done.ID, 0x10},
		{"traceId=" + done.TraceID, 0x10},
		{"traceId=" + done.TraceID, 0},
		{"status=delivered&rule=rule-0", 0x10},
		{"caller=alice&package=billing", 0x10},
		{"order=desc&limit=1&cursor=" + done.ID, 0x10},
		{"order=sideways", 0x10},
		{"caller=&package=%00", 0x10},
		{"status=DELIVERED", 0x10},
		{"status=", 0x10},
		{"since=2024-01-01T00:00:00Z&until=2099-01-01T00:00:00.123456789%2B02:00", 0x10},
		{"since=yesterday", 0x10},
		{"until=9999-12-31T23:59:59Z", 0x10},
		{"since=0000-01-01T00:00:00Z", 0x10},
		{"since=2263-01-01T00:00:00Z", 0x10},
		{"until=2300-01-01T00:00:00Z", 0x10},
		{"since=1677-01-01T00:00:00Z&until=2262-04-11T23:47:16.854775807Z", 0x10},
		{"cursor=%00%ff", 0x10},
		{"rule=%27%20OR%201=1--", 0x10},
		{"foo=bar", 0x10},
		{"a;b=c", 0x10},
		{"%zz=1", 0x10},
		{"wait=1s", 0x10},
		{"wait=30s", 1 | 0x10},
		{"wait=30s", 1 | 1<<2 | 0x10},
		{"wait=60s", 1 | 1<<2 | 0x20},
		{"wait=61s", 1 | 1<<2 | 0x20},
		{"wait=-1s", 1 | 0x20},
		{"wait=18446744074", 1 | 1<<2 | 0x20},
		{"wait=9223372036854775807ns", 1 | 1<<2 | 0x20},
		{"wait=1e3", 1 | 0x20},
		{"wait=10", 2 | 1<<2 | 0x20},
		{"wait=10s", 2 | 2<<2},
		{"wait=10s", 1 | 1<<2},
		{"token=", 1},
		{"token=" + access.Hash(recs[0].token), 1},
		{"token=x&token=y", 1 | 0x20},
		{"", 3 | 0x20},
		{"", 3 | 1<<2 | 0x20},
		{"", 3 | 2<<2 | 0x10},
	} {
		f.Add(s.q, "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", s.sel)
	}
	f.Add("wait=1s", "\x00'\"<>%", uint8(1|3<<2|0x10))
	f.Add("", "..", uint8(2|3<<2))
	f.Fuzz(func(t *testing.T, rawQuery, fuzzID string, sel uint8) {
		endpoint, pick, asOperator, withToken := sel&3, sel>>2&3, sel&0x10 != 0, sel&0x20 != 0
		var rec *fuzzRecord
		id := "0190b3c2-0000-7000-8000-000000000000" // unknown
		switch pick {
		case 0:
			rec = &recs[0]
		case 1:
			rec = &recs[1]
		case 3:
			// Ids that are not one path segment are the mux's business.
			if fuzzID != "" && fuzzID != "." && fuzzID != ".." && !strings.Contains(fuzzID, "/") {
				id = fuzzID
			}
		}
		if rec != nil {
			id = rec.rec.ID
		}
		suffix := []string{"", "", "/result", "/events"}[endpoint]
		target := "/v1/requests/" + id + suffix
		if endpoint == 0 {
			target = "/v1/requests"
		}
		if withToken && rec != nil {
			if rawQuery != "" {
				rawQuery += "&"
			}
			rawQuery += access.Param + "=" + rec.token
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		req := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
		req.URL.Path, req.URL.RawPath, req.URL.RawQuery = target, "", rawQuery
		req.RequestURI = target + "?" + rawQuery
		if asOperator {
			req.Header.Set("authorization", "Bearer "+adminToken)
		} else if sel&0x40 != 0 {
			req.Header.Set("authorization", "Bearer "+adminToken+"x")
		}
		w := httptest.NewRecorder()
		finished := make(chan struct{})
		start := time.Now()
		go func() { defer close(finished); h.ServeHTTP(w, req) }()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			t.Fatalf("GET %s?%s: no answer after 5s (its context ended after 50ms)", target, rawQuery)
		}
		took := time.Since(start)
		if n := len(c.waiters); n != 0 {
			t.Fatalf("GET %s?%s left %d long-poll places taken", target, rawQuery, n)
		}
		code, body := w.Code, w.Body.Bytes()
		q := req.URL.Query()
		// ?wait= of a long-poll is refused exactly when it is out of range.
		if wv := q.Get("wait"); (endpoint == 1 || endpoint == 2) && wv != "" {
			refused := code == 400 && strings.Contains(string(body), `"message":"wait: `)
			if refused == validWait(wv) {
				t.Fatalf("GET %s?%s: wait=%q (valid: %v) answered %d %s", target, rawQuery, wv, validWait(wv), code, body)
			}
		}
		if !w.Flushed && len(body) == 0 && w.Header().Get("content-type") == "" {
			// Nothing written: only a caller that left during a wait gets that.
			if ctx.Err() == nil {
				t.Fatalf("GET %s?%s: empty answer after %v, the caller still there", target, rawQuery, took)
			}
			return
		}
		var v map[string]any
		if endpoint != 3 || code != 200 {
			if err := json.Unmarshal(body, &v); err != nil {
				t.Fatalf("GET %s?%s: %d with a body that is not JSON: %q", target, rawQuery, code, body)
			}
		}
		switch code {
		case 200:
		case 202:
			if endpoint != 2 || rec == nil || rec.rec.Status.HasResult() {
				t.Fatalf("GET %s?%s: 202 %s", target, rawQuery, body)
			}
		case 400:
			msg, _ := v["message"].(string)
			named := strings.HasPrefix(msg, "wait: ") && (endpoint == 1 || endpoint == 2)
			for k := range q {
				named = named || strings.HasPrefix(msg, jsonString(k)+": ")
			}
			if v["error"] != "bad_parameter" || !named {
				t.Fatalf("GET %s?%s: 400 %s does not name one of the parameters %q", target, rawQuery, body, keys(q))
			}
			return
		case 401:
			if endpoint != 0 || asOperator {
				t.Fatalf("GET %s?%s: 401 %s", target, rawQuery, body)
			}
			return
		case 404:
			if endpoint == 0 || v["error"] != "not_found" || v["message"] != "no request with id "+jsonString(id) {
				t.Fatalf("GET %s?%s: 404 %s", target, rawQuery, body)
			}
			if rec != nil && (asOperator || q.Get(access.Param) == rec.token) {
				t.Fatalf("GET %s?%s: 404 to a reader with the right to read", target, rawQuery)
			}
			return
		case 429:
			t.Fatalf("GET %s?%s: 429 with no other waiter: %s", target, rawQuery, body)
		default:
			t.Fatalf("GET %s?%s: %d %s", target, rawQuery, code, body)
		}

		// 200 (or 202): who may read, and what a search page holds.
		if endpoint == 0 {
			if !asOperator {
				t.Fatalf("GET %s?%s: a search answered without the operator's token", target, rawQuery)
			}
			checkPage(t, q, body, recs)
			return
		}
		if rec == nil || !asOperator && q.Get(access.Param) != rec.token {
			t.Fatalf("GET %s?%s: %d %s to a reader without the right to read it", target, rawQuery, code, body)
		}
	})
}

// checkPage checks that a search page holds the records that match the
// filters of q, and only them (all of them when the page is not full).
func checkPage(t *testing.T, q url.Values, body []byte, recs []fuzzRecord) {
	t.Helper()
	var page struct {
		Records []struct {
			ID        string    `json:"id"`
			TraceID   string    `json:"traceId"`
			Rule      string    `json:"rule"`
			Status    string    `json:"status"`
			Caller    string    `json:"caller"`
			Package   string    `json:"package"`
			CreatedAt time.Time `json:"createdAt"`
		} `json:"records"`
		Next string `json:"next"`
	}
	if err := json.Unmarshal(body, &page); err != nil || page.Records == nil {
		t.Fatalf("search page %s: %v", body, err)
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		limit, _ = strconv.Atoi(v)
	}
	if len(page.Records) > limit {
		t.Fatalf("search with limit %d answered %d records", limit, len(page.Records))
	}
	since, _ := time.Parse(time.RFC3339Nano, q.Get("since"))
	until, _ := time.Parse(time.RFC3339Nano, q.Get("until"))
	matches := func(id, traceID, rule, status, caller, pkg string, created time.Time) bool {
		switch {
		case q.Get("caller") != "" && caller != q.Get("caller"),
			q.Get("package") != "" && pkg != q.Get("package"):
			return false
		case q.Get("traceId") != "" && traceID != q.Get("traceId"),
			q.Get("status") != "" && status != q.Get("status"),
			q.Get("rule") != "" && rule != q.Get("rule"),
			q.Get("cursor") != "" && q.Get("order") != "desc" && id <= q.Get("cursor"),
			q.Get("cursor") != "" && q.Get("order") == "desc" && id >= q.Get("cursor"),
			q.Get("since") != "" && created.Before(since),
			q.Get("until") != "" && !created.Before(until):
			return false
		}
		return true
	}
	got := map[string]bool{}
	for _, r := range page.Records {
		if !matches(r.ID, r.TraceID, r.Rule, r.Status, r.Caller, r.Package, r.CreatedAt) {
			t.Fatalf("search %q answered a record that does not match: %+v", q, r)
		}
		got[r.ID] = true
	}
	if len(page.Records) == limit {
		return
	}
	for _, fr := range recs {
		r := fr.rec
		if matches(r.ID, r.TraceID, r.Rule, string(r.Status), r.Envelope.Caller, r.Envelope.Package, r.CreatedAt) && !got[r.ID] {
			t.Fatalf("search %q left out the matching record %s (%s, %s, created %s): %s", q, r.ID, r.Rule, r.Status, r.CreatedAt, body)
		}
	}
}

// validWait states independently what ?wait= accepts: a Go duration, or
// whole seconds, from 0 to MaxWait.
func validWait(v string) bool {
	if d, err := time.ParseDuration(v); err == nil {
		return d >= 0 && d <= MaxWait
	}
	n, ok := new(big.Int).SetString(v, 10)
	return ok && n.Sign() >= 0 && n.Cmp(big.NewInt(int64(MaxWait/time.Second))) <= 0
}

// jsonString is s as it comes back out of a JSON answer (invalid UTF-8
// replaced).
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	var out string
	_ = json.Unmarshal(b, &out)
	return out
}

func keys(q url.Values) []string {
	var ks []string
	for k := range q {
		ks = append(ks, k)
	}
	return ks
}
