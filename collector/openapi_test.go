package collector

import (
	"github.com/asyncmesh/asyncmesh/internal/access"

	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// TestOpenAPI checks the server against openapi.yaml: every request the test
// makes and every answer the server gives must match the document, and every
// operation of the document must have been exercised.
func TestOpenAPI(t *testing.T) {
	ctx := context.Background()
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.FileBodyDecoder)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		route, params, err := router.FindRoute(r)
		if err != nil {
			t.Errorf("%s %s: not in openapi.yaml: %v", r.Method, r.URL.Path, err)
			e.c.Handler().ServeHTTP(w, r)
			return
		}
		mu.Lock()
		seen[r.Method+" "+route.Path] = true
		mu.Unlock()
		in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("%s %s: request does not match openapi.yaml: %v", r.Method, r.URL, err)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		e.c.Handler().ServeHTTP(rec, r)
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: rec.Code, Header: rec.Header(),
			Options: &openapi3filter.Options{IncludeResponseStatus: true}}
		out.SetBodyBytes(rec.Body.Bytes())
		if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
			t.Errorf("%s %s → %d: answer does not match openapi.yaml: %v\n%s", r.Method, r.URL, rec.Code, err, rec.Body)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	defer srv.Close()

	call := func(method, path, body string, hdrs ...string) (int, []byte) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("content-type", "application/json")
		}
		for i := 0; i+1 < len(hdrs); i += 2 {
			req.Header.Set(hdrs[i], hdrs[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	admin := []string{"authorization", "Bearer " + adminToken}
	en := e.envelope("/work", []byte("hi"))
	tok, hash := access.NewToken()
	en.AccessHash = hash
	data, _ := json.Marshal(en)
	call("POST", "/v1/intake", string(data))
	call("POST", "/v1/intake", `{"v":1}`)
	call("GET", "/v1/requests/"+en.ID+"/result?wait=10s&token="+tok, "")
	call("GET", "/v1/requests/"+en.ID+"?wait=10s&token="+tok, "")
	call("GET", "/v1/requests/"+en.ID+"?wait=forever", "")
	call("GET", "/v1/requests/"+en.ID, "")
	if code, b := call("GET", "/v1/requests/"+en.ID+"/events?token="+tok, ""); code != 200 || !strings.Contains(string(b), `"status":"delivered"`) {
		t.Fatalf("events of a delivered request: %d %s", code, b)
	}
	call("GET", "/v1/requests/"+en.ID+"/result", "", admin...)
	call("GET", "/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293/events", "")
	call("GET", "/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", "")
	// The operator's search shows the attempt log, so the schema of its
	// fields is checked too.
	if code, b := call("GET", "/v1/requests?traceId="+en.TraceID+"&limit=10", "", admin...); code != 200 ||
		!strings.Contains(string(b), `"request":{"method":"POST"`) || !strings.Contains(string(b), `"response":{"status":"200 OK"`) {
		t.Fatalf("search without the attempt log: %d %s", code, b)
	}
	call("GET", "/v1/requests?status=delivered&order=desc", "", admin...)
	if code, b := call("GET", "/v1/requests?caller=nobody&package=none", "", admin...); code != 200 || !strings.Contains(string(b), `"records":[]`) {
		t.Fatalf("search by caller and package: %d %s", code, b)
	}
	if code, b := call("GET", "/v1/requests/count?status=delivered&rule=r", "", admin...); code != 200 || !strings.Contains(string(b), `"count":1`) {
		t.Fatalf("count: %d %s", code, b)
	}
	call("GET", "/v1/requests/count?cursor=x", "", admin...)
	call("GET", "/v1/requests/count", "")
	call("GET", "/v1/rules", "", admin...)
	call("GET", "/v1/stream?since=2026-01-01T00:00:00Z", "", admin...)
	// A stream that runs until the client leaves: its answer is checked
	// once it has.
	func() {
		ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/stream?status=delivered", nil)
		req.Header.Set("authorization", "Bearer "+adminToken)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	call("GET", "/v1/requests?status=delivered", "")
	call("POST", "/v1/requests/"+en.ID+"/complete", `{"status":200}`)
	call("POST", "/v1/requests/"+en.ID+"/replay", "")
	if code, b := call("POST", "/v1/requests/"+en.ID+"/replay", "", admin...); code != 202 {
		t.Fatalf("replay %d %s", code, b)
	}
	call("POST", "/v1/deliveries/replay", `{"status":"dead","limit":5}`, admin...)
	if code, b := call("POST", "/v1/deliveries/replay", `{"status":"delivered","caller":"nobody","package":"none","dryRun":true}`, admin...); code != 200 || !strings.Contains(string(b), `"matched":0`) {
		t.Fatalf("dry run: %d %s", code, b)
	}
	// Endpoints: the one this test's callbacks went to.
	epID := endpointOf(en)
	e.c.health.flush(ctx) // merged every second; now
	call("GET", "/v1/endpoints?disabled=false&limit=10", "", admin...)
	call("GET", "/v1/endpoints", "")
	if code, b := call("GET", "/v1/endpoints/"+epID, "", admin...); code != 200 {
		t.Fatalf("endpoint %s: %d %s", epID, code, b)
	}
	call("GET", "/v1/endpoints/nope", "", admin...)
	call("POST", "/v1/endpoints/"+epID+"/disable", "", admin...)
	call("POST", "/v1/endpoints/"+epID+"/enable", "", admin...)
	call("POST", "/v1/endpoints/nope/enable", "", admin...)
	call("GET", "/v1/openapi.yaml", "")
	call("GET", "/metrics", "", admin...)
	call("GET", "/metrics", "")
	call("GET", "/healthz", "")
	call("GET", "/readyz", "")

	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !seen[method+" "+path] {
				t.Errorf("%s %s is documented but the test never called it", method, path)
			}
		}
	}
}
