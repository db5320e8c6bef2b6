package elastic

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRetentionByDay: a pass looks only at days over before the cutoff;
// deletes a day whole (with its bodies) when all its records are expired,
// and only the expired records (and their chunks) of a day that holds one
// to keep (not terminal, or terminal since the cutoff); deletes bodies of a day without records; and lifts a write block
// that a pass stopped half-way left behind.
func TestRetentionByDay(t *testing.T) {
	p := prefix()
	s := open(t, p)
	ctx := context.Background()
	put := func(path, body string) {
		t.Helper()
		var b any
		if body != "" {
			b = []byte(body)
		}
		if err := s.call(ctx, http.MethodPut, "/"+p+path, b, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, ix := range []string{"-requests-2026.11.10", "-requests-2026.11.22", "-bodies-2026.11.01", "-requests-2026.11.21"} {
		put(ix, "") // empty days
	}
	// The 5th keeps a stuck record; the 8th holds only an expired one.
	put("-requests-2026.11.05/_doc/stuck?refresh=true", `{"id":"stuck","status":"processing","updatedAt":"2026-11-05T10:00:00Z"}`)
	put("-requests-2026.11.05/_doc/young?refresh=true", `{"id":"young","status":"delivered","updatedAt":"2026-11-22T10:00:00Z"}`) // terminal after the cutoff
	put("-requests-2026.11.05/_doc/old?refresh=true", `{"id":"old","status":"delivered","updatedAt":"2026-11-06T10:00:00Z","bodies":{"response":1}}`)
	put("-bodies-2026.11.05/_doc/old.response.0?refresh=true", `{"data":"eA=="}`)
	put("-requests-2026.11.08/_doc/dead?refresh=true", `{"id":"dead","status":"dead","updatedAt":"2026-11-08T10:00:00Z"}`)
	put("-bodies-2026.11.08/_doc/dead.request.0?refresh=true", `{"data":"eA=="}`)
	put("-requests-2026.11.05/_settings", `{"index.blocks.write":true}`) // a pass stopped half-way

	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	n, err := s.Expire(ctx, now.Add(-36*time.Hour)) // 22 Nov 00:00: keeps the 22nd and the 21st (not over before the cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("Expire deleted %d records, want 2", n)
	}
	var rows []struct{ Index string }
	if err := s.call(ctx, http.MethodGet, "/_cat/indices/"+p+"-*?format=json&h=index", nil, &rows); err != nil {
		t.Fatal(err)
	}
	left := map[string]bool{}
	for _, r := range rows {
		left[strings.TrimPrefix(r.Index, p)] = true
	}
	want := []string{"-requests-2026.11.22", "-requests-2026.11.21", "-requests-2026.11.05", "-bodies-2026.11.05"}
	if len(left) != len(want) {
		t.Errorf("left %v, want %v", left, want)
	}
	for _, w := range want {
		if !left[w] {
			t.Errorf("left %v, want %v", left, want)
		}
	}
	for path, found := range map[string]bool{"-requests-2026.11.05/_doc/stuck": true, "-requests-2026.11.05/_doc/young": true, "-requests-2026.11.05/_doc/old": false, "-bodies-2026.11.05/_doc/old.response.0": false} {
		err := s.call(ctx, http.MethodGet, "/"+p+path, nil, nil)
		if found && err != nil || !found && statusOf(err) != http.StatusNotFound {
			t.Errorf("GET %s: %v, want found=%v", path, err, found)
		}
	}
	blocked, err := s.writeBlocked(ctx)
	if err != nil || len(blocked) != 0 {
		t.Errorf("write blocks left: %v (%v)", blocked, err)
	}
}
