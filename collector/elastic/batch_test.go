package elastic

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
)

// fakeStore is a Store whose Elasticsearch is h (answers are JSON from a
// server that says it is Elasticsearch, as the client checks).
func fakeStore(t *testing.T, h http.HandlerFunc) *Store {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Header().Set("X-Elastic-Product", "Elasticsearch")
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	return &Store{es: es}
}

// fakeBulk answers _bulk like Elasticsearch (every item created) after
// delay, and counts bulks and items.
func fakeBulk(t *testing.T, delay time.Duration) (*Store, *atomic.Int64, *atomic.Int64) {
	var bulks, items atomic.Int64
	s := fakeStore(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n := bytes.Count(body, []byte("\n")) / 2
		bulks.Add(1)
		items.Add(int64(n))
		time.Sleep(delay)
		item := `{"index":{"status":201,"_seq_no":1,"_primary_term":1}}`
		fmt.Fprint(w, `{"items":[`+strings.TrimSuffix(strings.Repeat(item+",", n), ",")+`]}`)
	})
	return s, &bulks, &items
}

func runBatcher(t *testing.T, s *Store, linger time.Duration) *batcher {
	b := newBatcher(s, 1, linger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

func write(b *batcher, id string) result {
	return b.do(context.Background(), &op{action: "index", index: "i", id: id, doc: []byte(`{}`)})
}

// With Linger, writes that arrive one after another while others wait go
// out in a few bulks, and every one gets its own result.
func TestBatcherLingerGroupsWrites(t *testing.T) {
	s, bulks, items := fakeBulk(t, 2*time.Millisecond)
	b := runBatcher(t, s, 100*time.Millisecond)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := write(b, fmt.Sprint(i)); r.err != nil || r.status != 201 {
				t.Errorf("write %d: %+v", i, r)
			}
		}()
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	if items.Load() != 40 || bulks.Load() > 8 {
		t.Fatalf("40 writes a millisecond apart went out as %d items in %d bulks; want 40 in a few", items.Load(), bulks.Load())
	}
}

// A lone write is never held back by Linger.
func TestBatcherLingerSendsALoneWriteAtOnce(t *testing.T) {
	s, _, _ := fakeBulk(t, 0)
	b := runBatcher(t, s, 10*time.Second)
	start := time.Now()
	if r := write(b, "a"); r.err != nil || r.status != 201 {
		t.Fatalf("write: %+v", r)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a lone write took %v", d)
	}
}
