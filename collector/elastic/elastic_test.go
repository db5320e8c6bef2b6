package elastic

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
)

// The client's connection pool revives a node it marked dead after a timer
// of its own (TestSeveralNodes), which Close cannot stop; it ends by itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/elastic/elastic-transport-go/v8/elastictransport.(*statusConnectionPool).scheduleResurrect.func1"))
}

func esURL(t *testing.T) string {
	u := os.Getenv("ASYNCMESH_TEST_ES_URL")
	if u == "" {
		t.Skip("ASYNCMESH_TEST_ES_URL is not set (scripts/start-elasticsearch.sh prints one)")
	}
	return u
}

func prefix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "asyncmesh-test-" + hex.EncodeToString(b)
}

// open returns a store with a fresh prefix, deleted at the end of the test.
func open(t *testing.T, p string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{URL: esURL(t), Prefix: p, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanup(t, s)
		s.Close()
	})
	return s
}

func cleanup(t *testing.T, s *Store) {
	ctx := context.Background()
	_ = s.call(ctx, http.MethodDelete, "/"+s.cfg.Prefix+"-*?expand_wildcards=all", nil, nil)
	_ = s.call(ctx, http.MethodDelete, "/_index_template/"+s.cfg.Prefix+"-requests", nil, nil)
	_ = s.call(ctx, http.MethodDelete, "/_index_template/"+s.cfg.Prefix+"-bodies", nil, nil)
	_ = s.call(ctx, http.MethodDelete, "/_index_template/"+s.cfg.Prefix+"-"+keysIndexName, nil, nil)
	_ = s.call(ctx, http.MethodDelete, "/_index_template/"+s.cfg.Prefix+"-endpoints", nil, nil)
}

func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, prefix()) })
}

func TestMismatchedMappingRefusesToStart(t *testing.T) {
	p := prefix()
	s := open(t, p)
	// An index that matches the pattern but was made by someone else.
	body := `{"mappings":{"properties":{"status":{"type":"text"}}}}`
	_ = s.call(context.Background(), http.MethodDelete, "/_index_template/"+p+"-requests", nil, nil)
	if err := s.call(context.Background(), http.MethodPut, "/"+p+"-requests-2020.01.01", []byte(body), nil); err != nil {
		t.Fatal(err)
	}
	_, err := Open(context.Background(), Config{URL: esURL(t), Prefix: p, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), p+"-requests-2020.01.01") || !strings.Contains(err.Error(), "status") {
		t.Fatalf("Open over a mismatched index = %v", err)
	}
}

func TestOpenRefusesBadURL(t *testing.T) {
	if _, err := Open(context.Background(), Config{URL: "127.0.0.1:9200"}); err == nil {
		t.Fatal("accepted a URL without a scheme")
	}
}

func TestDownIsAnError(t *testing.T) {
	_, err := Open(context.Background(), Config{URL: "http://127.0.0.1:1", Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		t.Fatal("Open with Elasticsearch down succeeded")
	}
}

// TestSeveralNodes: with a cluster's nodes listed, one that refuses
// connections is passed over: the store opens and writes.
func TestSeveralNodes(t *testing.T) {
	p := prefix()
	s, err := Open(context.Background(), Config{URL: "http://127.0.0.1:1," + esURL(t), Prefix: p, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanup(t, s); s.Close() })
	for range 4 { // round robin: every other request goes to the dead node first
		r := store.NewRecord(storetest.NewEnvelope("a", ""), time.Now())
		if err := s.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(context.Background(), Config{URL: esURL(t) + ",ftp://x"}); err == nil {
		t.Fatal("a list with a bad URL was accepted")
	}
}

// TestOldIndexTakesTheAttemptLog: a daily index created before the attempt
// log existed (attempts mapped without request and response) is brought up
// to the template at Open, so that its strict mapping accepts an attempt
// with its log and keeps it.
func TestOldIndexTakesTheAttemptLog(t *testing.T) {
	ctx := context.Background()
	p := prefix()
	s := open(t, p)
	r := store.NewRecord(storetest.NewEnvelope("a", ""), time.Now())
	ix, err := s.index("requests", r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var old map[string]any
	data, _ := json.Marshal(requestsMapping)
	_ = json.Unmarshal(data, &old)
	attempts := old["properties"].(map[string]any)["attempts"].(map[string]any)["properties"].(map[string]any)
	delete(attempts, "request")
	delete(attempts, "response")
	_ = s.call(ctx, http.MethodDelete, "/_index_template/"+p+"-requests", nil, nil)
	if err := s.call(ctx, http.MethodPut, "/"+ix, map[string]any{"mappings": old}, nil); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, Config{URL: esURL(t), Prefix: p, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	for _, c := range []store.Change{{Event: store.Complete, Then: store.StartDelivery, Response: &store.Response{Status: 200}}} {
		if _, err := s2.Transition(ctx, r.ID, c); err != nil {
			t.Fatal(err)
		}
	}
	want := storetest.AttemptLog()[1]
	if _, err := s2.Transition(ctx, r.ID, store.Change{Event: store.Retry, Attempt: &want}); err != nil {
		t.Fatalf("an attempt with its log on an index made before it: %v", err)
	}
	got, err := s2.Get(ctx, r.ID)
	if err != nil || len(got.Attempts) != 1 || got.Attempts[0].Response == nil || got.Attempts[0].Response.Body != want.Response.Body {
		t.Fatalf("read back %+v: %v", got, err)
	}
}
