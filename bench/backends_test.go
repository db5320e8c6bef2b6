// Package bench holds asyncmesh's benchmarks. This file compares the
// backends in one run; the embedded (SQLite) store and queue are the baseline:
//
//	ASYNCMESH_TEST_AMQP_URL=$(scripts/start-rabbitmq.sh) ASYNCMESH_TEST_ES_URL=$(scripts/start-elasticsearch.sh) \
//	  go test -run '^$' -bench . -benchtime 3s ./bench/
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/elastic"
	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/rabbitmq"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
)

// setup is one combination of store and queue.
type setup func(b *testing.B) (store.Store, queue.Queue)

// backends returns the combinations to compare: embedded, embedded store +
// RabbitMQ, Elasticsearch + embedded queue, Elasticsearch + RabbitMQ (those
// whose servers are set in the environment).
func backends(b *testing.B) ([]string, map[string]setup) {
	amqpURL, esURL := os.Getenv("ASYNCMESH_TEST_AMQP_URL"), os.Getenv("ASYNCMESH_TEST_ES_URL")
	rabbit := func(b *testing.B) queue.Queue {
		q, err := rabbitmq.Open(context.Background(), rabbitmq.Config{URL: amqpURL, Prefix: "asyncmesh-bench-" + randHex(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		<-q.Ready()
		b.Cleanup(func() { q.Teardown(context.Background()); q.Close() })
		return q
	}
	es := func(b *testing.B) store.Store {
		s, err := elastic.Open(context.Background(), elastic.Config{URL: esURL, Prefix: "asyncmesh-bench-" + randHex(), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	names := []string{"embedded"}
	out := map[string]setup{"embedded": func(b *testing.B) (store.Store, queue.Queue) {
		db := openDB(b)
		return db.Store(), db.Queue()
	}}
	if amqpURL != "" {
		names = append(names, "embedded+rabbitmq")
		out["embedded+rabbitmq"] = func(b *testing.B) (store.Store, queue.Queue) { return openDB(b).Store(), rabbit(b) }
	}
	if esURL != "" {
		names = append(names, "elasticsearch+embedded")
		out["elasticsearch+embedded"] = func(b *testing.B) (store.Store, queue.Queue) { return es(b), openDB(b).Queue() }
	}
	if amqpURL != "" && esURL != "" {
		names = append(names, "elasticsearch+rabbitmq")
		out["elasticsearch+rabbitmq"] = func(b *testing.B) (store.Store, queue.Queue) { return es(b), rabbit(b) }
	}
	return names, out
}

func randHex() string {
	r := make([]byte, 4)
	rand.Read(r)
	return hex.EncodeToString(r)
}

func openDB(b *testing.B) *embedded.DB {
	db, err := embedded.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}

// BenchmarkPublishConfirm publishes 300-byte messages from 16 goroutines,
// each waiting for its confirm.
func BenchmarkPublishConfirm(b *testing.B) {
	names, setups := backends(b)
	for _, name := range names {
		if name != "embedded" && name != "embedded+rabbitmq" {
			continue // the queue alone: the store plays no part
		}
		b.Run(name, func(b *testing.B) {
			_, q := setups[name](b)
			body := bytes.Repeat([]byte("x"), 300)
			var n atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprint(n.Add(1))
					if err := q.Publish(context.Background(), queue.Message{Topic: "bench", Key: k, Body: body}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkIntake posts envelopes to the collector's intake from 16 clients:
// each 201 means persisted, published with a confirm and marked queued.
func BenchmarkIntake(b *testing.B) { benchIntake(b, false) }

// BenchmarkIntakeKeyed is BenchmarkIntake with a fresh Idempotency-Key on
// every envelope: what the key's atomic write costs (store.Idempotent).
func BenchmarkIntakeKeyed(b *testing.B) { benchIntake(b, true) }

func benchIntake(b *testing.B, keyed bool) {
	names, setups := backends(b)
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			st, q := setups[name](b)
			c, err := collector.New(collector.Config{ReplayURL: "http://127.0.0.1:9", ReplaySecret: []byte("x"), Secrets: collector.SecretSource{},
				Logger: slog.New(slog.DiscardHandler)}, st, q)
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(c.Handler())
			defer srv.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			var lat latencies
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					tp := trace.NewParent()
					data, _ := json.Marshal(&envelope.Envelope{Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(),
						TraceParent: tp.String(), Rule: "bench", Method: "POST", Authority: "api.local", Path: "/slow",
						Body: bytes.Repeat([]byte("y"), 256), Timeout: rules.Duration(time.Second),
						Callback: rules.Callback{URL: "http://127.0.0.1:9/cb", Protocol: "http"}, Retry: rules.Retry{MaxAttempts: 1},
						IdempotencyKey: idemKey(keyed), IdempotencyWindow: idemWindow(keyed)})
					t0 := time.Now()
					resp, err := client.Post(srv.URL+"/v1/intake", "application/json", bytes.NewReader(data))
					lat.add(time.Since(t0))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body) // drained, so the connection is reused
					resp.Body.Close()
					if resp.StatusCode != 201 || resp.Header.Get("x-async-status") != "queued" {
						b.Errorf("intake answered %d, status %s", resp.StatusCode, resp.Header.Get("x-async-status"))
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "accepted/s")
			b.ReportMetric(lat.quantile(0.5).Seconds()*1000, "p50-ms")
			b.ReportMetric(lat.quantile(0.99).Seconds()*1000, "p99-ms")
		})
	}
}

func idemKey(keyed bool) string {
	if !keyed {
		return ""
	}
	return randHex() + randHex() + randHex() + randHex()
}

func idemWindow(keyed bool) rules.Duration {
	if !keyed {
		return 0
	}
	return rules.Duration(24 * time.Hour)
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	return l.d[min(len(l.d)-1, int(q*float64(len(l.d))))]
}
