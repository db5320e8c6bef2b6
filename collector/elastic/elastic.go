// Package elastic is the Elasticsearch store of the collector
// (github.com/elastic/go-elasticsearch/v8): the system of record, searchable by
// trace id, status, rule and time.
//
// # Index design
//
// One index per UTC day, named from the request id: ids are UUIDv7, so
// P-requests-YYYY.MM.DD follows from the id alone and a read by id is a
// real-time read on one index, never a search. Concurrent reads by id share
// one _mget request (reader, like the write batcher below): a collector that
// takes over records another one wrote reads each once before its first
// compare-and-set, and those reads come in crowds. Composable index templates (P-requests,
// P-bodies) give every daily index explicit, strict mappings: ids, trace id,
// rule, status, caller, package, method, authority and path are keywords; timestamps are
// dates; the status history and the delivery attempts are object lists;
// the envelope, the stored response and each attempt's request and answer
// (the attempt log) are kept in _source but not indexed (enabled: false).
// Bodies over Config.InlineBodyMax are kept by reference: 1 MiB chunks in
// P-bodies-YYYY.MM.DD, read back on Get. Retention
// (retention.go, store.Expirer) deletes records terminal for longer than
// Config.Retention and never a record that is not terminal: whole daily
// indices when all their records are expired (the integ-test distribution
// has no ILM; deleting an index is cheaper than deleting by query anyway),
// record by record in a day that holds one to keep. Only days that ended
// before the cutoff are looked at, so the granularity is one day.
//
// Templates are put at Open (idempotent). An existing index whose mapping
// disagrees with them on a field this store queries is a startup error
// naming the index and the field.
//
// # Writes and refresh
//
// Creates and compare-and-set updates go through one bulk batcher: a caller's
// operation is sent at once if the batcher is idle and grouped with whatever
// else is waiting otherwise (group commit), and each caller waits for its own
// item's result. Elasticsearch charges a bulk request far more than a
// document in it (make bench, on 2 cores, once its JIT is warm: about 2.4 ms
// of its CPU for a bulk of 1 document, 2.8 ms for 8, 4.9 ms for 64), so with
// Config.Linger (the collector's -es-linger, 2 ms by default) a bulk that
// finds other writes already waiting waits a moment for more; a lone write
// is sent at once. In the bench's intake phase this halved Elasticsearch's
// CPU at the same rate. Config.Flushers (-es-flushers, 2) bounds the bulks in
// flight; 1 and 4 were tried at the bench's rates and moved intake within
// its run-to-run noise (±25%). Bulk requests use refresh=false: the write is durable when
// Elasticsearch answers (the translog is fsynced per request, the default
// index.translog.durability), and reads by id are real-time GETs, which do not
// need a refresh. Refreshing per write (refresh=wait_for) would cost every 202
// up to the refresh interval and gain nothing for reads by id. The price:
// Search and Stale see a write after the next refresh (refresh_interval 1s),
// which the Store interface allows.
//
// # Compare-and-set
//
// Transition reads the document with its _seq_no/_primary_term, applies the
// store.Change (whose From check enforces the monotonic lifecycle) and writes
// it back with if_seq_no/if_primary_term. On a version conflict it re-reads
// and applies again, so a concurrent change is never overwritten and a record
// never moves backwards: the second writer sees the new status and either
// still qualifies or gets a store.ConflictError.
package elastic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elastic/go-elasticsearch/v8"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// Config of the store.
type Config struct {
	// URL of Elasticsearch, http://host:port, or several, comma-separated
	// (the nodes of a cluster: requests go round them, and one that fails
	// to connect is retried on the next).
	URL string
	// Prefix names the templates and indices (default "asyncmesh").
	Prefix string
	// Replicas per daily index (number_of_replicas; 0 on a single node).
	Replicas int
	// Retention deletes records terminal for longer than this, by day
	// (retention.go; 0 keeps everything).
	Retention time.Duration
	// InlineBodyMax is the largest body kept inside the record (default 256 KiB).
	InlineBodyMax int
	// Flushers is how many bulk requests may be in flight (default 2).
	Flushers int
	// Linger is how long a bulk that finds other writes already waiting
	// waits for more before it is sent (0: it is sent at once). Elasticsearch
	// charges a bulk request several times what it charges a document in it
	// (make bench measures both), so under concurrency fewer, larger bulks
	// leave it more CPU; a lone write is never held back.
	Linger time.Duration
	// Clock is this process's clock (default time.Now; tests skew it). The
	// store's own clock is Elasticsearch's (clock.go).
	Clock  func() time.Time
	Logger *slog.Logger
}

// Store is a store.Store on Elasticsearch.
type Store struct {
	cfg   Config
	es    *elasticsearch.Client
	tr    *http.Transport
	log   *slog.Logger
	batch *batcher
	read  *reader
	// versions caches what this store last wrote (store.Recent).
	versions *store.Recent
	// offset is Elasticsearch's clock minus this process's (ns; clock.go).
	offset atomic.Int64
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

// Open connects, puts the index templates, checks existing indices against
// them and starts the bulk batcher, the _mget reader and the retention job.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	var addrs []string
	for _, u := range strings.Split(cfg.URL, ",") {
		u = strings.TrimSpace(u)
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return nil, fmt.Errorf("elasticsearch: url: want http://host:port[,http://host:port…], got %q", u)
		}
		addrs = append(addrs, u)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "asyncmesh"
	}
	if cfg.InlineBodyMax <= 0 {
		cfg.InlineBodyMax = 256 << 10
	}
	if cfg.Flushers <= 0 {
		cfg.Flushers = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: 30 * time.Second}
	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: addrs, MaxRetries: len(addrs), Transport: tr})
	if err != nil {
		return nil, fmt.Errorf("elasticsearch: %w", err)
	}
	s := &Store{cfg: cfg, es: es, tr: tr, versions: store.NewRecent(), log: cfg.Logger.With("store", "elasticsearch")}
	// Templates, then existing indices checked against them and brought up
	// to them, then the clock (clock.go).
	for _, step := range []func(context.Context) error{s.putTemplates, s.checkMappings, s.putMappings, s.measureClock} {
		if err := step(ctx); err != nil {
			tr.CloseIdleConnections()
			return nil, err
		}
	}
	bctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.batch = newBatcher(s, cfg.Flushers, cfg.Linger)
	s.read = newReader(s, cfg.Flushers)
	s.wg.Add(2*cfg.Flushers + 1)
	go func() { defer s.wg.Done(); s.keepClock(bctx) }()
	for range cfg.Flushers {
		go func() { defer s.wg.Done(); s.batch.run(bctx) }()
		go func() { defer s.wg.Done(); s.read.run(bctx) }()
	}
	if cfg.Retention > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); store.Retain(bctx, s, s.Now, cfg.Retention, store.RetentionInterval, s.log) }()
	}
	return s, nil
}

// Close stops the batcher, the reader and the retention job.
func (s *Store) Close() error {
	s.stop()
	s.wg.Wait()
	s.tr.CloseIdleConnections()
	return nil
}

// Names.
func (s *Store) requestsPattern() string { return s.cfg.Prefix + "-requests-*" }
func (s *Store) bodiesPattern() string   { return s.cfg.Prefix + "-bodies-*" }

// index returns the daily index of a request id and kind ("requests", "bodies").
func (s *Store) index(kind, id string) (string, error) {
	t, ok := trace.RequestIDTime(id)
	if !ok {
		return "", fmt.Errorf("id %q is not a UUIDv7 request id", id)
	}
	return s.cfg.Prefix + "-" + kind + "-" + t.Format("2006.01.02"), nil
}

// call performs one request and decodes a 2xx JSON answer into out (if not
// nil). Other statuses are returned as *apiError.
func (s *Store) call(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, path, rd)
	if err != nil {
		return err
	}
	if rd != nil {
		req.Header.Set("content-type", "application/json")
	}
	resp, err := s.es.Perform(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &apiError{Status: resp.StatusCode, Body: string(data), Op: method + " " + path}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
		}
	}
	return nil
}

type apiError struct {
	Status   int
	Body, Op string
}

func (e *apiError) Error() string {
	b := e.Body
	if len(b) > 300 {
		b = b[:300] + "…"
	}
	return fmt.Sprintf("%s: elasticsearch answered %d: %s", e.Op, e.Status, b)
}

func statusOf(err error) int {
	var a *apiError
	if errors.As(err, &a) {
		return a.Status
	}
	return 0
}

// requestsMapping is the strict mapping of the daily request indices.
var requestsMapping = map[string]any{
	"dynamic": "strict",
	"properties": map[string]any{
		"id": keyword, "traceId": keyword, "rule": keyword, "status": keyword,
		"method": keyword, "authority": keyword, "caller": keyword, "package": keyword, "endpoint": keyword,
		"path":      map[string]any{"type": "keyword", "ignore_above": 2048},
		"error":     map[string]any{"type": "keyword", "ignore_above": 1024},
		"createdAt": date, "updatedAt": date, "leaseUntil": date,
		"envelope": unindexed, "response": unindexed, "bodies": unindexed,
		"history": map[string]any{"properties": map[string]any{
			"status": keyword, "at": date, "event": keyword, "note": map[string]any{"type": "keyword", "index": false, "doc_values": false},
			"node": map[string]any{"type": "keyword", "index": false, "doc_values": false}}},
		"attempts": map[string]any{"properties": map[string]any{
			"at": date, "statusCode": map[string]any{"type": "integer"}, "latency": map[string]any{"type": "long"},
			"error": map[string]any{"type": "keyword", "index": false, "doc_values": false},
			// The attempt log: receivers' headers and bodies, never searched,
			// kept in _source only so that they cannot grow the mapping.
			"request": unindexed, "response": unindexed}},
	},
}

var (
	keyword   = map[string]any{"type": "keyword"}
	date      = map[string]any{"type": "date"}
	unindexed = map[string]any{"type": "object", "enabled": false}
)

// queried are the fields whose type this store relies on, checked on start.
var queried = map[string]string{"id": "keyword", "traceId": "keyword", "rule": "keyword", "status": "keyword",
	"createdAt": "date", "updatedAt": "date", "leaseUntil": "date"}

func (s *Store) putTemplates(ctx context.Context) error {
	settings := map[string]any{"number_of_shards": 1, "number_of_replicas": s.cfg.Replicas, "refresh_interval": "1s"}
	templates := map[string]map[string]any{
		s.cfg.Prefix + "-requests": {"index_patterns": []string{s.requestsPattern()}, "priority": 200,
			"template": map[string]any{"settings": settings, "mappings": requestsMapping},
			"_meta":    map[string]any{"managed_by": "asyncmesh collector"}},
		s.cfg.Prefix + "-bodies": {"index_patterns": []string{s.bodiesPattern()}, "priority": 200,
			"template": map[string]any{"settings": settings, "mappings": map[string]any{"dynamic": "strict", "_source": map[string]any{"enabled": true},
				"properties": map[string]any{"data": map[string]any{"type": "binary"}}}},
			"_meta": map[string]any{"managed_by": "asyncmesh collector"}},
		s.cfg.Prefix + "-" + keysIndexName: {"index_patterns": []string{s.keysIndex()}, "priority": 200,
			"template": map[string]any{"settings": settings, "mappings": keysMapping},
			"_meta":    map[string]any{"managed_by": "asyncmesh collector"}},
		s.cfg.Prefix + "-endpoints":  s.endpointsTemplate(settings), // endpoints.go
		s.cfg.Prefix + "-order-keys": s.orderTemplate(settings),     // ordering.go
	}
	for name, body := range templates {
		if err := s.call(ctx, http.MethodPut, "/_index_template/"+name, body, nil); err != nil {
			return fmt.Errorf("elasticsearch: putting index template %s: %w", name, err)
		}
	}
	return nil
}

// putMappings brings existing daily indices up to the template: fields
// added since they were created (history.event, attempts.request,
// attempts.response, caller and package) are added to them, which
// Elasticsearch allows on a strict mapping.
func (s *Store) putMappings(ctx context.Context) error {
	if err := s.call(ctx, http.MethodPut, "/"+s.requestsPattern()+"/_mapping?allow_no_indices=true&ignore_unavailable=true", requestsMapping, nil); err != nil {
		return fmt.Errorf("elasticsearch: updating the mappings of existing indices: %w", err)
	}
	// The ordering keys' at (ordering.go), on an index made before it.
	if err := s.call(ctx, http.MethodPut, "/"+s.orderIndex()+"/_mapping?allow_no_indices=true&ignore_unavailable=true", orderMapping, nil); err != nil {
		return fmt.Errorf("elasticsearch: updating the mapping of the ordering keys: %w", err)
	}
	return nil
}

// checkMappings refuses to start on an existing daily index whose mapping
// disagrees with the template on a queried field.
func (s *Store) checkMappings(ctx context.Context) error {
	var got map[string]struct {
		Mappings struct {
			Properties map[string]struct {
				Type string `json:"type"`
			} `json:"properties"`
		} `json:"mappings"`
	}
	if err := s.call(ctx, http.MethodGet, "/"+s.requestsPattern()+"/_mapping?allow_no_indices=true&ignore_unavailable=true", nil, &got); err != nil {
		return fmt.Errorf("elasticsearch: reading existing mappings: %w", err)
	}
	indices := make([]string, 0, len(got))
	for ix := range got {
		indices = append(indices, ix)
	}
	slices.Sort(indices)
	fields := make([]string, 0, len(queried))
	for f := range queried {
		fields = append(fields, f)
	}
	slices.Sort(fields)
	for _, ix := range indices {
		props := got[ix].Mappings.Properties
		var bad []string
		for _, f := range fields {
			if have := props[f].Type; have != queried[f] {
				bad = append(bad, fmt.Sprintf("%s is %q, want %q", f, have, queried[f]))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("elasticsearch: index %s was not created by this collector's template (%s); delete or reindex it, or use another prefix", ix, strings.Join(bad, "; "))
		}
	}
	return nil
}

// Ping reports whether the cluster can take writes (health not red).
func (s *Store) Ping(ctx context.Context) error {
	var h struct {
		Status string `json:"status"`
	}
	if err := s.call(ctx, http.MethodGet, "/_cluster/health?timeout=2s", nil, &h); err != nil {
		return err
	}
	if h.Status == "red" {
		return errors.New("elasticsearch: cluster health is red")
	}
	return nil
}
