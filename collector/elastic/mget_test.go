package elastic

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeMget answers _mget like Elasticsearch after delay: ids starting with
// "missing" are not found, "noindex" is in an index that does not exist,
// "broken" fails alone; others are found with their id as _seq_no source.
func fakeMget(t *testing.T, delay time.Duration) (*reader, *atomic.Int64) {
	var requests atomic.Int64
	s := fakeStore(t, func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		var req struct {
			Docs []mgetDoc `json:"docs"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.URL.Path != "/_mget" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		time.Sleep(delay)
		var docs []string
		for i, d := range req.Docs {
			switch {
			case strings.HasPrefix(d.ID, "missing"):
				docs = append(docs, `{"found":false}`)
			case strings.HasPrefix(d.ID, "noindex"):
				docs = append(docs, `{"error":{"type":"index_not_found_exception","reason":"no such index"}}`)
			case strings.HasPrefix(d.ID, "broken"):
				docs = append(docs, `{"error":{"type":"shard_not_available","reason":"try later"}}`)
			default:
				docs = append(docs, fmt.Sprintf(`{"found":true,"_seq_no":%d,"_primary_term":1,"_source":{"id":%q}}`, i, d.ID))
			}
		}
		fmt.Fprint(w, `{"docs":[`+strings.Join(docs, ",")+`]}`)
	})
	rd := newReader(s, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); rd.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return rd, &requests
}

func TestReaderAnswersEachRead(t *testing.T) {
	rd, _ := fakeMget(t, 0)
	tests := []struct {
		id        string
		wantFound bool
		wantErr   bool
	}{
		{"rec-1", true, false},
		{"missing-1", false, false},
		{"noindex-1", false, false},
		{"broken-1", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			res := rd.get(context.Background(), "i", tt.id)
			if (res.err != nil) != tt.wantErr || res.found != tt.wantFound {
				t.Fatalf("got found=%v err=%v, want found=%v err=%v", res.found, res.err, tt.wantFound, tt.wantErr)
			}
			if tt.wantFound && !strings.Contains(string(res.source), tt.id) {
				t.Fatalf("got the source %s for %s", res.source, tt.id)
			}
		})
	}
}

// Reads that arrive while a request is out share the next one, and each
// caller gets its own document.
func TestReaderGroupsConcurrentReads(t *testing.T) {
	rd, requests := fakeMget(t, 5*time.Millisecond)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("rec-%d", i)
			res := rd.get(context.Background(), "i", id)
			if res.err != nil || !res.found || !strings.Contains(string(res.source), `"`+id+`"`) {
				errs <- fmt.Errorf("%s: found=%v err=%v source=%s", id, res.found, res.err, res.source)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := requests.Load(); got > n/4 {
		t.Errorf("%d reads took %d _mget requests; want them grouped", n, got)
	}
}

func TestReaderGivesUpWithItsCaller(t *testing.T) {
	rd, _ := fakeMget(t, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	if res := rd.get(ctx, "i", "rec-1"); res.err == nil {
		t.Fatal("a read whose context ended answered without an error")
	}
}
