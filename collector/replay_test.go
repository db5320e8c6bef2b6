package collector

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

const adminToken = "test-admin-token"

// admin posts to an operator endpoint with token.
func (e *env) admin(path, token, body string) (int, map[string]any) {
	req, _ := http.NewRequest("POST", e.api.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}

// dead accepts a request whose callbacks all fail until it is dead.
func (e *env) dead() string {
	e.failing.Store(true)
	en := e.envelope("/work", nil)
	en.Retry.MaxAttempts = 2
	e.intake(en)
	if code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s"); code != 200 || rec["status"] != "dead" {
		e.t.Fatalf("want dead: %d %v", code, rec)
	}
	return en.ID
}

func TestReplayOne(t *testing.T) {
	e := newEnv(t)
	id := e.dead()
	for _, tok := range []string{"", "wrong"} {
		if code, v := e.admin("/v1/requests/"+id+"/replay", tok, ""); code != 401 || v["error"] != "unauthorized" {
			t.Fatalf("token %q: %d %v", tok, code, v)
		}
	}
	if code, _ := e.admin("/v1/requests/0190b3c2-7d6e-7a1b-8c3d-4e5f60718293/replay", adminToken, ""); code != 404 {
		t.Fatalf("unknown id: %d", code)
	}
	e.failing.Store(false)
	if code, v := e.admin("/v1/requests/"+id+"/replay", adminToken, ""); code != 202 || v["status"] != "delivering" {
		t.Fatalf("replay: %d %v", code, v)
	}
	code, rec := e.get("/v1/requests/" + id + "?wait=20s")
	if code != 200 || rec["status"] != "delivered" || len(rec["attempts"].([]any)) != 3 {
		t.Fatalf("after replay: %d %v", code, rec)
	}
	hist := rec["history"].([]any)
	last := hist[len(hist)-2].(map[string]any)
	if last["status"] != "delivering" || last["event"] != string(store.Replay) {
		t.Fatalf("history %v", hist)
	}
	e.mu.Lock()
	n := e.callbacks[id]
	e.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d successful callbacks, want 1", n)
	}
	// Delivered now: replayable again. A replay racing the delivery it started
	// answers 409 (still delivering) or 202 (already delivered); nothing else.
	if code, v := e.admin("/v1/requests/"+id+"/replay", adminToken, ""); code != 202 {
		t.Fatalf("second replay: %d %v", code, v)
	}
	if code, v := e.admin("/v1/requests/"+id+"/replay", adminToken, ""); code != 409 && code != 202 {
		t.Fatalf("replay while delivering: %d %v", code, v)
	}
}

func TestReplayBulk(t *testing.T) {
	e := newEnv(t)
	ids := []string{e.dead(), e.dead(), e.dead()}
	e.failing.Store(false)
	for _, tt := range []struct{ body, want string }{
		{`{"status":"queued"}`, "status: queued is not dead or delivered"},
		{`{"limit":9999}`, "limit: want 1..500"},
		{`{"bogus":1}`, `unknown field "bogus"`},
	} {
		if code, v := e.admin("/v1/deliveries/replay", adminToken, tt.body); code != 400 || !strings.Contains(v["message"].(string), tt.want) {
			t.Fatalf("%s: %d %v", tt.body, code, v)
		}
	}
	code, v := e.admin("/v1/deliveries/replay", adminToken, `{"status":"dead","rule":"r","limit":2}`)
	if code != 200 || len(v["replayed"].([]any)) != 2 || v["next"] == nil {
		t.Fatalf("first page: %d %v", code, v)
	}
	body, _ := json.Marshal(map[string]any{"cursor": v["next"], "limit": 2})
	code, v = e.admin("/v1/deliveries/replay", adminToken, string(body))
	if code != 200 || len(v["replayed"].([]any)) != 1 || v["next"] != nil {
		t.Fatalf("second page: %d %v", code, v)
	}
	for _, id := range ids {
		if code, rec := e.get("/v1/requests/" + id + "?wait=20s"); code != 200 || rec["status"] != "delivered" {
			t.Fatalf("%s: %d %v", id, code, rec)
		}
	}
}

func TestReplayOffWithoutToken(t *testing.T) {
	c := &Collector{}
	w := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/deliveries/replay", bytes.NewReader(nil))
	req.Header.Set("authorization", "Bearer ")
	if c.authorized(w, req) || w.Code != 403 || !strings.Contains(w.Body.String(), "admin_disabled") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}
