// Command receiver is the demo's callback receiver: it verifies each callback's
// Standard Webhooks signature, prints what it got, and lists what it received at
// GET /received (for the demo and the end-to-end tests).
//
//	POST /callbacks   a callback (401 when the signature does not verify)
//	GET  /received    every callback so far, in order
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// Received is one callback as the receiver saw it.
type Received struct {
	WebhookID string          `json:"webhookId"`
	TraceID   string          `json:"traceId"`
	Verified  bool            `json:"verified"`
	URI       string          `json:"uri"` // path and query the callback was sent to
	At        time.Time       `json:"at"`
	Body      json.RawMessage `json:"body"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8082", "listen address")
	secretEnv := flag.String("secret-env", "ASYNCMESH_SECRET_DEMO", "environment variable holding the whsec_ secret")
	flag.Parse()
	var secrets []webhook.Secret
	for _, s := range strings.Fields(os.Getenv(*secretEnv)) {
		sec, err := webhook.ParseSecret(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "receiver: -secret-env:", err)
			os.Exit(1)
		}
		secrets = append(secrets, sec)
	}
	var (
		mu  sync.Mutex
		got = []Received{}
	)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /callbacks", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		rec := Received{WebhookID: r.Header.Get(webhook.HeaderID), TraceID: r.Header.Get("x-async-trace-id"), URI: r.URL.RequestURI(), At: time.Now()}
		if err := webhook.Verify(r.Header, body, secrets, time.Now()); err != nil {
			slog.Warn("receiver: refused callback", "webhook_id", rec.WebhookID, "err", err)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		rec.Verified = true
		if json.Valid(body) {
			rec.Body = body
		}
		mu.Lock()
		got = append(got, rec)
		mu.Unlock()
		fmt.Printf("receiver: verified callback webhook-id=%s trace=%s body=%s\n", rec.WebhookID, rec.TraceID, body)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /received", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("content-type", "application/json")
		_ = json.NewEncoder(w).Encode(got)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	slog.Info("receiver: listening", "addr", *listen, "secrets", len(secrets))
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		slog.Error("receiver", "err", err)
		os.Exit(1)
	}
}
