package collector

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/access"
)

// TestCallerReadsOnlyWithItsToken plays a caller that knows another
// caller's request id (ids travel in callbacks, logs and traces): without
// that request's access token every read answers 404, exactly as for an id
// that does not exist, and a long-poll does not wait.
func TestCallerReadsOnlyWithItsToken(t *testing.T) {
	e := newEnv(t)
	tok, hash := access.NewToken()
	other, _ := access.NewToken()
	en := e.envelope("/work", []byte("secret body"))
	en.AccessHash = hash
	if resp := e.intake(en); resp.StatusCode != 201 {
		t.Fatalf("intake answered %d", resp.StatusCode)
	}
	if code, rec := e.getAs("/v1/requests/"+en.ID+"?wait=10s&token="+tok, ""); code != 200 || rec["status"] != "delivered" {
		t.Fatalf("caller with its token: %d %v", code, rec)
	}
	_, missing := e.getAs("/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", "")
	for _, p := range []string{"", "/result", "/events"} {
		for _, q := range []string{"", "?token=" + other, "?token=" + hash, "?token=", "?wait=20s"} {
			start := time.Now()
			code, v := e.getAs("/v1/requests/"+en.ID+p+q, "")
			if code != 404 || v["error"] != "not_found" || strings.Replace(v["message"].(string), en.ID, "ID", 1) != strings.Replace(missing["message"].(string), "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", "ID", 1) {
				t.Errorf("GET %s%s without the token: %d %v, want the 404 of a missing id", p, q, code, v)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("GET %s%s without the token waited", p, q)
			}
		}
		if code, _ := e.getAs("/v1/requests/"+en.ID+p+"?token="+tok, ""); code != 200 {
			t.Errorf("GET %s with the token: %d", p, code)
		}
		if code, _ := e.get("/v1/requests/" + en.ID + p); code != 200 {
			t.Errorf("GET %s as operator: %d", p, code)
		}
	}
	// A record accepted before tokens existed (no hash) is the operator's alone.
	old := e.envelope("/work", nil)
	e.intake(old)
	if code, _ := e.getAs("/v1/requests/"+old.ID+"?token=", ""); code != 404 {
		t.Errorf("a record without a token hash is readable by a caller: %d", code)
	}
}

// TestOperatorEndpointsNeedTheOperator plays a caller that reaches the
// collector's API and tries every endpoint that spans callers.
func TestOperatorEndpointsNeedTheOperator(t *testing.T) {
	e := newEnv(t)
	en := e.envelope("/work", nil)
	e.intake(en)
	e.get("/v1/requests/" + en.ID + "?wait=10s")
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/requests?limit=500"},
		{"GET", "/v1/requests?traceId=" + en.TraceID},
		{"GET", "/metrics"},
		{"POST", "/v1/requests/" + en.ID + "/replay"},
		{"POST", "/v1/deliveries/replay"},
	} {
		for _, bearer := range []string{"", "wrong-token-of-16-chars", adminToken + "x"} {
			req, _ := http.NewRequest(c.method, e.api.URL+c.path, strings.NewReader(`{"status":"delivered"}`))
			if bearer != "" {
				req.Header.Set("authorization", "Bearer "+bearer)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || strings.Contains(string(body), en.TraceID) {
				t.Errorf("%s %s with bearer %q: %d %s, want 401", c.method, c.path, bearer, resp.StatusCode, body)
			}
		}
	}
	if code, page := e.get("/v1/requests?traceId=" + en.TraceID); code != 200 || len(page["records"].([]any)) != 1 {
		t.Errorf("operator search: %d %v", code, page)
	}
}

// TestSeparateOperatorListener: with SeparateOperator the sidecar-facing
// handler does not serve the operator endpoints at all; OperatorHandler does.
func TestSeparateOperatorListener(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.SeparateOperator = true }
	e.start()
	op := httptest.NewServer(e.c.OperatorHandler())
	defer op.Close()
	en := e.envelope("/work", nil)
	e.intake(en)
	for _, p := range []string{"/v1/requests?traceId=" + en.TraceID, "/metrics"} {
		if code, _ := e.get(p); code != 404 {
			t.Errorf("sidecar listener serves %s to the operator token: %d, want 404", p, code)
		}
		req, _ := http.NewRequest("GET", op.URL+p, nil)
		req.Header.Set("authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("operator listener %s: %d", p, resp.StatusCode)
		}
	}
}

// TestWaitersAreCapped plays readers that open more long-polls and event
// streams than the collector holds: past MaxWaiters they get 429 with
// Retry-After at once, and reads without wait still answer.
func TestWaitersAreCapped(t *testing.T) {
	e := newEnv(t)
	e.stop()
	e.tune = func(c *Config) { c.MaxWaiters = 2; c.Workers = -1 } // nothing executes: polls wait
	e.start()
	en := e.envelope("/work", nil)
	e.intake(en)
	held := make(chan int, 2)
	for range 2 {
		go func() { code, _ := e.get("/v1/requests/" + en.ID + "?wait=3s"); held <- code }()
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(e.c.waiters) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []string{"?wait=3s", "/result?wait=3s", "/events"} {
		req, _ := http.NewRequest("GET", e.api.URL+"/v1/requests/"+en.ID+p, nil)
		req.Header.Set("authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 429 || resp.Header.Get("retry-after") == "" {
			t.Errorf("%s past the cap: %d (retry-after %q), want 429", p, resp.StatusCode, resp.Header.Get("retry-after"))
		}
	}
	if code, _ := e.get("/v1/requests/" + en.ID); code != 200 {
		t.Errorf("a read without wait past the cap: %d", code)
	}
	for range 2 {
		if code := <-held; code != 200 {
			t.Errorf("held long-poll answered %d", code)
		}
	}
}

// TestCallerSeesNoAttemptLog: the attempt log (what a callback attempt sent,
// what the receiver answered: its headers and error pages) is the
// operator's; a caller reading its own request with its token sees each
// attempt's time, status code, latency and error as before, on the record
// and on its event stream.
func TestCallerSeesNoAttemptLog(t *testing.T) {
	e := newEnv(t)
	tok, hash := access.NewToken()
	en := e.envelope("/work", nil)
	en.AccessHash = hash
	e.intake(en)
	attempts := func(rec map[string]any) []any {
		t.Helper()
		a, _ := rec["attempts"].([]any)
		if len(a) == 0 {
			t.Fatalf("no attempts: %v", rec)
		}
		return a
	}
	code, rec := e.getAs("/v1/requests/"+en.ID+"?wait=10s&token="+tok, "")
	if code != 200 || rec["status"] != "delivered" {
		t.Fatalf("caller: %d %v", code, rec)
	}
	for _, a := range attempts(rec) {
		a := a.(map[string]any)
		if _, ok := a["request"]; ok || a["response"] != nil || a["statusCode"] != 200.0 {
			t.Errorf("caller's attempt %v: want no request/response, status code 200", a)
		}
	}
	_, rec = e.get("/v1/requests/" + en.ID)
	a := attempts(rec)[0].(map[string]any)
	req, _ := a["request"].(map[string]any)
	resp, _ := a["response"].(map[string]any)
	if req["method"] != "POST" || resp["status"] != "200 OK" {
		t.Errorf("operator's attempt %v: want the request and the answer", a)
	}
	events := func(bearer, q string) string {
		r, _ := http.NewRequest("GET", e.api.URL+"/v1/requests/"+en.ID+"/events"+q, nil)
		if bearer != "" {
			r.Header.Set("authorization", "Bearer "+bearer)
		}
		res, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	if s := events("", "?token="+tok); !strings.Contains(s, `"statusCode":200`) || strings.Contains(s, `"response":`) {
		t.Errorf("caller's events: %s", s)
	}
	if s := events(adminToken, ""); !strings.Contains(s, `"response":{"status":"200 OK"`) {
		t.Errorf("operator's events: %s", s)
	}
}
