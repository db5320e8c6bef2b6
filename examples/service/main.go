// Command service is the demo's slow API: the service asyncmesh makes async
// without changing a line of it.
//
//	ANY /slow?ms=2000        sleeps, then answers JSON echoing the body (also /maybe, /soft)
//	GET      /fast           answers at once
//	ANY      /headers        echoes the request headers it received (also /headers/…)
//	ANY /slow/raw/…          echoes the request exactly as it arrived: method, the raw
//	                         request-target (RequestURI, never re-escaped), Host and the
//	                         body's SHA-256 (also /maybe/raw/, /raw/)
//	GET      /healthz
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	slow := func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 || ms > 60000 {
			ms = 2000
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		slog.Info("service: answered slow request", "ms", ms, "trace_id", r.Header.Get("x-async-trace-id"), "request_id", r.Header.Get("x-async-request-id"))
		writeJSON(w, map[string]any{"report": "done", "tookMs": ms, "received": string(body),
			"requestId": r.Header.Get("x-async-request-id"), "traceId": r.Header.Get("x-async-trace-id")})
	}
	// /maybe, /soft and /orders are the same slow endpoint under other rules
	// of the demo.
	for _, p := range []string{"/slow", "/maybe", "/soft", "/orders"} {
		mux.HandleFunc(p, slow)
	}
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, map[string]any{"fast": true}) })
	headers := func(w http.ResponseWriter, r *http.Request) {
		hs := map[string]string{}
		for k, v := range r.Header {
			hs[http.CanonicalHeaderKey(k)] = v[0]
		}
		writeJSON(w, map[string]any{"headers": hs})
	}
	mux.HandleFunc("/headers", headers)
	mux.HandleFunc("/headers/", headers)
	// The raw echo shows the request-target byte for byte, so that a replay
	// can be compared with a direct call of the same bytes.
	raw := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		sum := sha256.Sum256(body)
		slog.Info("service: raw request", "uri", r.RequestURI, "request_id", r.Header.Get("x-async-request-id"), "body_len", len(body))
		writeJSON(w, map[string]any{"method": r.Method, "requestURI": r.RequestURI, "host": r.Host,
			"bodySha256": hex.EncodeToString(sum[:]), "bodyLen": len(body), "requestId": r.Header.Get("x-async-request-id")})
	}
	for _, p := range []string{"/raw/", "/slow/raw/", "/maybe/raw/"} {
		mux.HandleFunc(p, raw)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, map[string]any{"ok": true}) })
	slog.Info("service: listening", "addr", *listen)
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		slog.Error("service", "err", err)
		os.Exit(1)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
