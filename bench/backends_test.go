// Package bench holds asyncmesh's benchmarks. This file compares the queue
// backends in one run (the embedded queue is the baseline):
//
//	ASYNCMESH_TEST_AMQP_URL=$(scripts/start-rabbitmq.sh) go test -run '^$' -bench . -benchtime 3s ./bench/
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/rabbitmq"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/trace"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// backends returns the queues to compare, each over a fresh embedded database
// (the store of the intake benchmark).
func backends(b *testing.B) map[string]func(b *testing.B) (*embedded.DB, queue.Queue) {
	out := map[string]func(b *testing.B) (*embedded.DB, queue.Queue){
		"embedded": func(b *testing.B) (*embedded.DB, queue.Queue) {
			db := openDB(b)
			return db, db.Queue()
		},
	}
	if url := os.Getenv("ASYNCMESH_TEST_AMQP_URL"); url != "" {
		out["rabbitmq"] = func(b *testing.B) (*embedded.DB, queue.Queue) {
			db := openDB(b)
			r := make([]byte, 4)
			rand.Read(r)
			q, err := rabbitmq.Open(context.Background(), rabbitmq.Config{URL: url, Prefix: "asyncmesh-bench-" + hex.EncodeToString(r), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			<-q.Ready()
			b.Cleanup(func() { q.Teardown(context.Background()); q.Close() })
			return db, q
		}
	}
	return out
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
	for _, name := range []string{"embedded", "rabbitmq"} {
		open, ok := backends(b)[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			_, q := open(b)
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

type noSecrets struct{}

func (noSecrets) Lookup(string) ([]webhook.Secret, error) { return nil, nil }

// BenchmarkIntake posts envelopes to the collector's intake from 16 clients:
// each 201 means persisted, published with a confirm and marked queued.
func BenchmarkIntake(b *testing.B) {
	for _, name := range []string{"embedded", "rabbitmq"} {
		open, ok := backends(b)[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			db, q := open(b)
			c, err := collector.New(collector.Config{ReplayURL: "http://127.0.0.1:9", ReplaySecret: []byte("x"), Secrets: noSecrets{},
				Logger: slog.New(slog.DiscardHandler)}, db.Store(), q)
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(c.Handler())
			defer srv.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					tp := trace.NewParent()
					data, _ := json.Marshal(&envelope.Envelope{Version: envelope.Version, ID: trace.NewRequestID(), TraceID: tp.TraceIDString(),
						TraceParent: tp.String(), Rule: "bench", Method: "POST", Authority: "api.local", Path: "/slow",
						Body: bytes.Repeat([]byte("y"), 256), Timeout: rules.Duration(time.Second),
						Callback: rules.Callback{URL: "http://127.0.0.1:9/cb", Protocol: "http"}, Retry: rules.Retry{MaxAttempts: 1}})
					resp, err := client.Post(srv.URL+"/v1/intake", "application/json", bytes.NewReader(data))
					if err != nil {
						b.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != 201 || resp.Header.Get("x-async-status") != "queued" {
						b.Errorf("intake answered %d, status %s", resp.StatusCode, resp.Header.Get("x-async-status"))
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "accepted/s")
		})
	}
}
