// Command node is an example external processing node (docs/rules.md,
// "External processing nodes"): it takes tasks from the collector, opens
// them, does something visible — the response is the request's body in
// upper case — and completes each one with POST {completeUrl}, sealed and
// signed as its rule's node declaration says.
//
//	POST /tasks     a task (json, or soap: a SOAP 1.1 Task envelope);
//	                401 when its signature does not verify
//	GET  /received  the tasks so far: id, content type, sealed or not
//
// Environment: NODE_SECRET, the node's whsec_ secret (it verifies the
// collector's hmac signature and signs the completion); NODE_KEY, when the
// node's encryption is set, the 256-bit key in base64 (NODE_ALG: aes-256-gcm,
// the default, or jwe).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/external"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// maxTask bounds a task read (the collector's largest, sealed, in SOAP).
const maxTask = external.MaxSOAPTask

// Received is one task as the node saw it.
type Received struct {
	ID          string `json:"id"`
	ContentType string `json:"contentType"`
	SOAP        bool   `json:"soap"`
	Sealed      bool   `json:"sealed"`
	Completed   int    `json:"completed"` // the collector's answer to the completion (0: not yet)
}

type node struct {
	secrets []webhook.Secret
	key     []byte
	alg     string
	client  *http.Client
	log     *slog.Logger

	mu  sync.Mutex
	got []Received
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8091", "address to listen on")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	n, err := newNode(os.Getenv("NODE_SECRET"), os.Getenv("NODE_KEY"), os.Getenv("NODE_ALG"), log)
	if err != nil {
		log.Error("node: configuration", "err", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tasks", n.task)
	mux.HandleFunc("GET /received", n.received)
	log.Info("node listening", "addr", *listen)
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		log.Error("node: serving", "err", err)
		os.Exit(1)
	}
}

func newNode(secret, key, alg string, log *slog.Logger) (*node, error) {
	s, err := webhook.ParseSecret(secret)
	if err != nil {
		return nil, fmt.Errorf("NODE_SECRET: %w", err)
	}
	n := &node{secrets: []webhook.Secret{s}, alg: alg, log: log, client: &http.Client{Timeout: 30 * time.Second}}
	if n.alg == "" {
		n.alg = seal.AESGCM
	}
	if key != "" {
		if n.key, err = seal.ParseKey(key); err != nil {
			return nil, fmt.Errorf("NODE_KEY: %w", err)
		}
	}
	return n, nil
}

// task takes one task: verified, recorded, answered 202, completed in the
// background.
func (n *node) task(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxTask+1))
	if err != nil || len(body) > maxTask {
		http.Error(w, "task unreadable or too large", http.StatusRequestEntityTooLarge)
		return
	}
	if err := webhook.Verify(r.Header, body, n.secrets, time.Now()); err != nil {
		http.Error(w, "signature: "+err.Error(), http.StatusUnauthorized)
		return
	}
	id := r.Header.Get(webhook.HeaderID)
	ct, payload := r.Header.Get("content-type"), body
	soap := strings.HasPrefix(ct, "text/xml")
	if soap {
		if ct, payload, err = external.DecodeSOAPTask(body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	sealed := ct != "application/json"
	if sealed {
		if n.key == nil {
			http.Error(w, "a sealed task, and no NODE_KEY", http.StatusBadRequest)
			return
		}
		if payload, err = seal.Open(n.alg, n.key, id, payload); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	var t external.Task
	if err := json.Unmarshal(payload, &t); err != nil || t.ID != id || t.CompleteURL == "" {
		http.Error(w, "not a task for "+id, http.StatusBadRequest)
		return
	}
	n.mu.Lock()
	i := len(n.got)
	n.got = append(n.got, Received{ID: id, ContentType: r.Header.Get("content-type"), SOAP: soap, Sealed: sealed})
	n.mu.Unlock()
	n.log.Info("task", "id", id, "soap", soap, "sealed", sealed, "path", t.Request.Path)
	w.WriteHeader(http.StatusAccepted)
	go func() {
		code := n.complete(t, sealed)
		n.mu.Lock()
		n.got[i].Completed = code
		n.mu.Unlock()
	}()
}

// complete sends t's result: the request body in upper case. It retries
// while the collector answers 503 (it may not have recorded the hand-off
// yet) or cannot be reached, for up to a minute.
func (n *node) complete(t external.Task, sealed bool) int {
	res, _ := json.Marshal(external.Completion{Status: 200, Headers: map[string]string{"content-type": "text/plain", "x-processed-by": "example-node"},
		Body: strings.ToUpper(string(t.Request.Body))})
	ct := "application/json"
	if sealed {
		var err error
		if res, ct, err = seal.Seal(n.alg, n.key, t.ID, res); err != nil {
			n.log.Error("sealing the completion", "id", t.ID, "err", err)
			return 0
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		code, err := n.post(t, ct, res)
		switch {
		case err == nil && code != http.StatusServiceUnavailable:
			n.log.Info("completed", "id", t.ID, "answer", code)
			return code
		case time.Now().After(deadline):
			n.log.Error("completing: giving up", "id", t.ID, "code", code, "err", err)
			return code
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (n *node) post(t external.Task, ct string, body []byte) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.CompleteURL, bytes.NewReader(body))
	if err != nil {
		return 0, errors.New("completeUrl: " + err.Error())
	}
	req.Header.Set("content-type", ct)
	webhook.Sign(req.Header, n.secrets, t.ID, time.Now(), body)
	resp, err := n.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}

func (n *node) received(w http.ResponseWriter, _ *http.Request) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(n.got)
}
