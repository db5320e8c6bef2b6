package tally

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCountAndString(t *testing.T) {
	var s Summary
	s.Faults = map[string]int{"rabbitmq": 2, "kill9": 1, "stall": 0}
	s.Count(map[string]bool{"a": true, "b": true, "c": true}, map[string]int{"a": 1, "b": 3, "x": 1})
	if s.Accepted != 3 || s.Delivered != 2 || s.Lost != 1 || s.Duplicates != 2 {
		t.Fatalf("Count: %+v, want accepted 3, delivered 2, lost 1, duplicates 2", s)
	}
	s.Took = 61 * time.Second
	want := "chaos: accepted=3 delivered=2 lost=1 duplicates=2 stuck=0 crossed=0 faults=kill9×1,rabbitmq×2 took=1m1s"
	if got := s.String("chaos"); got != want {
		t.Errorf("String:\n got %s\nwant %s", got, want)
	}
	if !s.Failed() {
		t.Error("a run with a lost request did not fail")
	}
}

// TestOrder: first callbacks in intake order, each after the one before
// was answered, are in order; a duplicate of an earlier request arriving
// late is not a violation; a request called back before its predecessor,
// or while its predecessor's callback was being answered, is; a lost
// request is skipped.
func TestOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	cb := func(id string, ms, answered int) Callback {
		return Callback{WebhookID: id, At: at(ms), Answered: at(answered)}
	}
	for _, tt := range []struct {
		name string
		keys map[string][]string
		got  []Callback
		want int
	}{
		{"in order", map[string][]string{"k": {"a", "b", "c"}},
			[]Callback{cb("a", 0, 5), cb("b", 10, 15), cb("a", 12, 13), cb("c", 20, 25)}, 0},
		{"a lost request is skipped", map[string][]string{"k": {"a", "b", "c"}},
			[]Callback{cb("a", 0, 5), cb("c", 20, 25)}, 0},
		{"out of order", map[string][]string{"k": {"a", "b", "c"}},
			[]Callback{cb("b", 0, 5), cb("a", 10, 15), cb("c", 20, 25)}, 1},
		{"overlapping", map[string][]string{"k": {"a", "b"}},
			[]Callback{cb("a", 0, 50), cb("b", 10, 15)}, 1},
		{"keys are apart", map[string][]string{"k": {"a", "b"}, "l": {"x", "y"}},
			[]Callback{cb("x", 0, 5), cb("a", 1, 6), cb("y", 7, 8), cb("b", 9, 10)}, 0},
	} {
		var s Summary
		why := s.Order(tt.keys, tt.got)
		if s.OrderViolations != tt.want || len(why) != tt.want {
			t.Errorf("%s: %d violations (%v), want %d", tt.name, s.OrderViolations, why, tt.want)
		}
		if tt.want > 0 && !s.Failed() {
			t.Errorf("%s: a run with order violations did not fail", tt.name)
		}
	}
}

// TestUnfinishedRecords: the non-terminal statuses are listed page by page,
// and Reread reads each listed record again by id, keeping the status it
// is in now and its history, which Report prints.
func TestUnfinishedRecords(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/requests", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("status") + "/" + r.URL.Query().Get("cursor") {
		case "delivering/":
			fmt.Fprint(w, `{"records":[{"id":"r1","status":"delivering"}],"next":"r1"}`)
		case "delivering/r1":
			fmt.Fprint(w, `{"records":[{"id":"r2","status":"delivering"}]}`)
		case "queued/":
			fmt.Fprint(w, `{"records":[{"id":"r3","status":"queued"}]}`)
		default:
			fmt.Fprint(w, `{"records":[]}`)
		}
	})
	mux.HandleFunc("GET /v1/requests/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "r3" {
			http.Error(w, "no", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `{"id":%q,"status":"delivering","createdAt":"2026-01-01T00:00:00Z","history":[{"status":"queued","at":"2026-01-01T00:00:00Z","event":"enqueue"},{"status":"delivering","at":"2026-01-01T00:00:01Z","event":"start-delivery","note":"why"}],"attempts":[{"at":"2026-01-01T00:00:02Z","statusCode":503,"latencyMs":3}]}`, r.PathValue("id"))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(ctx context.Context, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		return http.DefaultClient.Do(req)
	}
	n, err := Unfinished(t.Context(), get)
	if err != nil || n != 3 {
		t.Fatalf("Unfinished: %d, %v; want 3", n, err)
	}
	recs, _ := UnfinishedRecords(t.Context(), get)
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID+":"+r.Status)
	}
	if got := strings.Join(ids, ","); got != "r3:queued,r1:delivering,r2:delivering" {
		t.Fatalf("UnfinishedRecords: %s", got)
	}
	again := Reread(t.Context(), get, recs, 2)
	if len(again) != 2 || again[0].Status != "queued (reread: 503 Service Unavailable <nil>)" || again[1].Status != "delivering" {
		t.Fatalf("Reread: %+v", again)
	}
	rep := again[1].Report(true, []Callback{{WebhookID: "r1", At: time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC)}})
	for _, want := range []string{"stuck record r1: status delivering, accepted (202) true, callbacks received 1",
		"start-delivery → delivering (why)", "attempt 2026-01-01T00:00:02Z status 503", "callback received 2026-01-01T00:00:02Z"} {
		if !strings.Contains(rep, want) {
			t.Errorf("Report lacks %q:\n%s", want, rep)
		}
	}
}
