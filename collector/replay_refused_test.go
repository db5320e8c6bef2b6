package collector

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/replay"
)

// verifyReplay checks a replay as the filter does (signature over the
// request-target as received, the Host, the method and the body's digest).
func verifyReplay(r *http.Request, body []byte) error {
	_, err := replay.Verify([][]byte{replaySecret}, r.Header.Get(replay.Header), replay.Request{
		ID: r.Header.Get("x-async-request-id"), Method: r.Method, Authority: r.Host, Path: r.RequestURI, BodyDigest: replay.Digest(body),
	}, time.Now())
	return err
}

// withService replaces the env's service (the filter and the service behind
// Envoy, for the worker) by h.
func (e *env) withService(h http.HandlerFunc) {
	e.stop()
	e.service.Close()
	e.service = httptest.NewServer(h)
	e.start()
}

func statuses(rec map[string]any) string {
	var seen []string
	hist, _ := rec["history"].([]any)
	for _, h := range hist {
		seen = append(seen, h.(map[string]any)["status"].(string))
	}
	return strings.Join(seen, ",")
}

// A 403 of the filter's own (marked with replay.RefusedHeader) is never the
// service's answer: the worker retries, signing anew each time, and then
// fails the record with the reason. A service's own 403 is its answer.
func TestReplayRefusedByTheFilter(t *testing.T) {
	tests := []struct {
		name      string
		refusals  int // how many attempts the filter refuses
		unmarked  bool
		status    string
		response  int
		errorPart string
	}{
		{"refused every time: failed with the reason", 1000, false, "failed", 0, "the filter refused the replay (used): x-async-replay: replay signature already used"},
		{"refused twice, then passed", 2, false, "completed", 200, ""},
		{"the service's own 403", 1, true, "completed", 403, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			var mu sync.Mutex
			attempts := 0
			headers := map[string]bool{}
			e.withService(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				if err := verifyReplay(r, body); err != nil {
					http.Error(w, err.Error(), 400)
					return
				}
				mu.Lock()
				attempts++
				n := attempts
				headers[r.Header.Get(replay.Header)] = true
				mu.Unlock()
				if n <= tt.refusals {
					if !tt.unmarked {
						w.Header().Set(replay.RefusedHeader, "used")
					}
					w.Header().Set("content-type", "application/json")
					w.WriteHeader(403)
					fmt.Fprint(w, `{"error":"replay_refused","reason":"used","message":"x-async-replay: replay signature already used"}`)
					return
				}
				fmt.Fprintf(w, "echo:%s", body)
			})
			en := e.envelope("/work", []byte("hello"))
			e.intake(en)
			var rec map[string]any
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
				_, rec = e.get("/v1/requests/" + en.ID + "?wait=5s")
				if rec["status"] == "delivered" || rec["status"] == "dead" {
					break
				}
			}
			hist := statuses(rec)
			if !strings.Contains(hist, ","+tt.status+",") {
				t.Fatalf("history %s, want %s (record %v)", hist, tt.status, rec)
			}
			if tt.status == "failed" {
				if strings.Contains(hist, "completed") {
					t.Fatalf("a refusal was stored as the service's answer: %s", hist)
				}
				if !strings.Contains(fmt.Sprint(rec["error"]), tt.errorPart) {
					t.Fatalf("error %q, want %q", rec["error"], tt.errorPart)
				}
				if attempts != replayAttempts {
					t.Fatalf("%d attempts, want %d", attempts, replayAttempts)
				}
			} else {
				_, res := e.get("/v1/requests/" + en.ID + "/result")
				resp, _ := res["response"].(map[string]any)
				if fmt.Sprint(resp["status"]) != fmt.Sprint(tt.response) {
					t.Fatalf("result %v, want status %d", res, tt.response)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(headers) != attempts {
				t.Fatalf("%d attempts sent %d distinct replay headers: a retry must sign anew", attempts, len(headers))
			}
		})
	}
}

// The request-target goes out byte for byte, whatever net/http would have
// re-escaped or refused, and the signature covers those bytes.
func TestReplayRequestTargetIsExact(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lines := make(chan string, 1)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(conn)
			line, _ := br.ReadString('\n')
			lines <- strings.TrimSuffix(line, "\r\n")
			fmt.Fprint(conn, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
			conn.Close()
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	for _, target := range []string{
		"/slow?ms=10",
		`/x/{a}|b^c"d`,
		"/caf\xc3\xa9/\xe2\x82\xac",
		"/broken%zz/%?q=%zz&r=%",
		"/a%20b?x=%7B%7d",
		"/a+b;c=d/%2F/.././x",
		"/q?",
		"//double/slash",
	} {
		req, err := replayRequest(context.Background(), "http://"+ln.Addr().String(), "POST", "api.local", target, []byte("b"))
		if err != nil {
			t.Errorf("%q: %v", target, err)
			continue
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%q: %v", target, err)
			continue
		}
		resp.Body.Close()
		if got, want := <-lines, "POST "+target+" HTTP/1.1"; got != want {
			t.Errorf("request line %q, want %q", got, want)
		}
	}
	for _, tt := range []struct{ base, target, err string }{
		{"http://127.0.0.1:1", "relative", "must start with /"},
		{"http://127.0.0.1:1", "//host/a{b}", "cannot be sent byte for byte"},
		{"http://127.0.0.1:1/prefix", "/a", "must have no path"},
		{"127.0.0.1:1", "/a", "not an absolute URL"},
	} {
		if _, err := replayRequest(context.Background(), tt.base, "GET", "h", tt.target, nil); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("replayRequest(%q, %q) = %v, want %q", tt.base, tt.target, err, tt.err)
		}
	}
}

// A target with bytes over 0x7f goes over HTTP/2 (Envoy refuses them in an
// HTTP/1.1 request line, not in an HTTP/2 :path), still byte for byte.
func TestReplayNonASCIITargetOverHTTP2(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Proto + " " + r.RequestURI + " " + r.Host
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	c := &Collector{replay: &http.Client{}}
	for _, tt := range []struct{ target, proto string }{
		{"/caf\xc3\xa9/\xe2\x82\xac?q=\xc3\xa9", "HTTP/2.0"},
		{"/ascii/{x}", "HTTP/1.1"},
	} {
		req, err := replayRequest(context.Background(), srv.URL, "GET", "api.local", tt.target, nil)
		if err != nil {
			t.Fatal(err)
		}
		client, done := c.replayClient(tt.target)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%q: %v", tt.target, err)
		}
		resp.Body.Close()
		done()
		if g, want := <-got, tt.proto+" "+tt.target+" api.local"; g != want {
			t.Errorf("the service saw %q, want %q", g, want)
		}
	}
}
