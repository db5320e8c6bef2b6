//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/replay"
)

// rawDo sends one HTTP/1.1 request to Envoy with the request-target written
// byte for byte (net/http would re-escape it), and reads the answer.
func rawDo(t *testing.T, method, target, host string, body []byte, hdrs ...string) (*http.Response, []byte) {
	t.Helper()
	u, _ := url.Parse(st.EnvoyURL)
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: %d\r\n", method, target, host, len(body))
	for i := 0; i+1 < len(hdrs); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdrs[i], hdrs[i+1])
	}
	b.WriteString("\r\n")
	b.Write(body)
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %q: %v", method, target, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

// h2Do is rawDo over HTTP/2 without TLS (prior knowledge), where a :path may
// carry bytes over 0x7f that an HTTP/1.1 request line may not.
func h2Do(t *testing.T, method, target, host string, body []byte, hdrs ...string) (*http.Response, []byte) {
	t.Helper()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	defer tr.CloseIdleConnections()
	u, _ := url.Parse(st.EnvoyURL)
	u.Opaque = target
	req, err := http.NewRequest(method, "", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.URL, req.Host = u, host
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %q over HTTP/2: %v", method, target, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp, out
}

// echo is what examples/service's raw echo saw.
type echo struct {
	Method, RequestURI, Host, BodySha256, RequestID string
	BodyLen                                         int
}

func parseEcho(t *testing.T, body []byte) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal(body, &e); err != nil || e.RequestURI == "" {
		t.Fatalf("not the service's raw echo: %s", body)
	}
	return e
}

// A path with bytes that Go's client re-escapes or refuses reaches the
// service, replayed, exactly as a direct call of the same bytes through the
// same Envoy does (the opt-in rule: without Prefer the call is sync). Raw
// UTF-8 comes from an HTTP/2 caller: Envoy refuses it in an HTTP/1.1
// request line (and so the collector replays such a path over HTTP/2).
func TestReplayExactPaths(t *testing.T) {
	for _, tt := range []struct {
		suffix string
		h2     bool
	}{
		{`braces/{id}`, false},
		{`pipe|caret^quote"`, false},
		{"encoded/a%20b/%7Bx%7d?q=a%20b&r={x}", false},
		{"query/x?q=%zz&r=%", false},
		{"plus/a+b;c=d,e", false},
		{"empty-query?", false},
		{"utf8/caf\xc3\xa9/\xe2\x82\xac?q=\xc3\xa9", true},
		{`h2/{id}|x^y"z`, true},
	} {
		suffix, target := tt.suffix, "/maybe/raw/"+tt.suffix
		send := rawDo
		if tt.h2 {
			send = h2Do
		}
		t.Run(suffix, func(t *testing.T) {
			body := []byte(`{"path":` + strconv.Quote(suffix) + `}`)
			resp, direct := send(t, "POST", target, "api.local", body)
			if resp.StatusCode != 200 {
				t.Fatalf("direct call of %q: %s %s", target, resp.Status, direct)
			}
			want := parseEcho(t, direct)
			if want.RequestURI != target {
				t.Fatalf("Envoy changed the target of a direct call: %q, sent %q", want.RequestURI, target)
			}
			resp, b := send(t, "POST", target, "api.local", body, "prefer", "respond-async")
			if resp.StatusCode != 202 {
				t.Fatalf("async call: %s %s", resp.Status, b)
			}
			id := resp.Header.Get("x-async-request-id")
			_, cb := waitCallback(t, id)
			if cb.Status != "completed" || cb.Response.Status != 200 {
				t.Fatalf("replay of %q: %+v", target, cb)
			}
			got := parseEcho(t, []byte(cb.Response.Body))
			if got.RequestURI != want.RequestURI || got.Host != want.Host || got.Method != want.Method || got.BodySha256 != want.BodySha256 {
				t.Fatalf("the replay reached the service as %+v, a direct call as %+v", got, want)
			}
			if got.RequestID != id {
				t.Fatalf("replay request id %q, want %q", got.RequestID, id)
			}
		})
	}
	// A target the service's HTTP server itself refuses (a broken escape in
	// the path): the replay gets the same answer as a direct call, instead
	// of failing in the collector ("invalid URL escape").
	target := "/maybe/raw/broken%zz"
	resp, direct := rawDo(t, "POST", target, "api.local", nil)
	resp2, b := rawDo(t, "POST", target, "api.local", nil, "prefer", "respond-async")
	if resp2.StatusCode != 202 {
		t.Fatalf("async call: %s %s", resp2.Status, b)
	}
	_, cb := waitCallback(t, resp2.Header.Get("x-async-request-id"))
	if cb.Status != "completed" || cb.Response.Status != resp.StatusCode {
		t.Fatalf("replay of %q: %+v; a direct call answered %s %s", target, cb, resp.Status, direct)
	}
}

// A body over a few Envoy buffer chunks is hashed as it arrives and reaches
// the service whole.
func TestReplayLargeBody(t *testing.T) {
	body := make([]byte, 768<<10)
	_, _ = rand.Read(body)
	sum := sha256.Sum256(body)
	resp, b := rawDo(t, "POST", "/maybe/raw/large", "api.local", body, "prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("async call: %s %s", resp.Status, b)
	}
	_, cb := waitCallback(t, resp.Header.Get("x-async-request-id"))
	got := parseEcho(t, []byte(cb.Response.Body))
	if got.BodyLen != len(body) || got.BodySha256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the service got %d bytes (%s), sent %d", got.BodyLen, got.BodySha256, len(body))
	}
}

// signed is a replay header as the collector would make it for this stack.
func signed(secret, id, method, authority, target string, body []byte, at time.Time) string {
	return replay.Sign([]byte(secret), replay.Request{ID: id, Method: method, Authority: authority, Path: target, BodyDigest: replay.Digest(body)}, at)
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "01890a5d-ac96-774b-bcce-" + hex.EncodeToString(b[:6])
}

// The attacker holds a replay header (captured from one replay, or made up)
// and sends it through the real Envoy with one thing changed. Each attempt
// is refused by the filter with its reason, and the service never sees it.
func TestReplayAttacker(t *testing.T) {
	body := []byte(`{"transfer":100}`)
	marker := func() string { return "attack-" + newID()[24:] }
	refused := func(t *testing.T, resp *http.Response, b []byte, reason, mark string) {
		t.Helper()
		if resp.StatusCode != 403 || resp.Header.Get(replay.RefusedHeader) != reason {
			t.Fatalf("want the filter's 403 (%s), got %s %v %s", reason, resp.Status, resp.Header, b)
		}
		if svc, _ := os.ReadFile(st.LogPath("service")); bytes.Contains(svc, []byte(mark)) {
			t.Fatalf("the service saw the refused request %s", mark)
		}
	}

	t.Run("captured header reused, on other connections and worker threads", func(t *testing.T) {
		id, mark := newID(), marker()
		target := "/maybe/raw/" + mark
		h := signed(st.ReplaySecret, id, "POST", "api.local", target, body, time.Now())
		resp, b := rawDo(t, "POST", target, "api.local", body, replay.Header, h, "x-async-request-id", id)
		if resp.StatusCode != 200 || parseEcho(t, b).RequestID != id {
			t.Fatalf("the first use must pass: %s %s", resp.Status, b)
		}
		svcBefore, _ := os.ReadFile(st.LogPath("service"))
		// Envoy runs two worker threads, each with its own Wasm VM; new
		// connections land on either, and the spent signature is shared.
		for i := range 10 {
			resp, b := rawDo(t, "POST", target, "api.local", body, replay.Header, h, "x-async-request-id", id)
			if resp.StatusCode != 403 || resp.Header.Get(replay.RefusedHeader) != "used" {
				t.Fatalf("reuse %d: %s %v %s", i, resp.Status, resp.Header, b)
			}
		}
		svcAfter, _ := os.ReadFile(st.LogPath("service"))
		if n, m := bytes.Count(svcBefore, []byte(mark)), bytes.Count(svcAfter, []byte(mark)); n != 1 || m != 1 {
			t.Fatalf("the service saw the request %d times before the reuse, %d after", n, m)
		}
	})

	tests := []struct {
		name   string
		attack func(mark string) (method, target, host string, b []byte, header string)
		reason string
	}{
		{"another body", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "POST", target, "api.local", []byte(`{"transfer":100000}`), signed(st.ReplaySecret, "ID", "POST", "api.local", target, body, time.Now())
		}, "body-digest"},
		{"body dropped", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "POST", target, "api.local", nil, signed(st.ReplaySecret, "ID", "POST", "api.local", target, body, time.Now())
		}, "body-digest"},
		{"another authority", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "POST", target, "admin.local", body, signed(st.ReplaySecret, "ID", "POST", "api.local", target, body, time.Now())
		}, "signature"},
		{"another method", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "PUT", target, "api.local", body, signed(st.ReplaySecret, "ID", "POST", "api.local", target, body, time.Now())
		}, "signature"},
		{"another path", func(mark string) (string, string, string, []byte, string) {
			return "POST", "/maybe/raw/" + mark + "/admin", "api.local", body, signed(st.ReplaySecret, "ID", "POST", "api.local", "/maybe/raw/"+mark, body, time.Now())
		}, "signature"},
		{"the path re-escaped", func(mark string) (string, string, string, []byte, string) {
			return "POST", "/maybe/raw/" + mark + "%7Bx%7D", "api.local", body, signed(st.ReplaySecret, "ID", "POST", "api.local", "/maybe/raw/"+mark+"{x}", body, time.Now())
		}, "signature"},
		{"an old v1 header", func(mark string) (string, string, string, []byte, string) {
			return "POST", "/maybe/raw/" + mark, "api.local", body, "t=" + strconv.FormatInt(time.Now().Unix(), 10) + ",v1=AAAA"
		}, "version"},
		{"a retired secret", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "POST", target, "api.local", body, signed("a-retired-replay-secret-of-enough-bytes", "ID", "POST", "api.local", target, body, time.Now())
		}, "signature"},
		{"a stale header", func(mark string) (string, string, string, []byte, string) {
			target := "/maybe/raw/" + mark
			return "POST", target, "api.local", body, signed(st.ReplaySecret, "ID", "POST", "api.local", target, body, time.Now().Add(-2*replay.MaxSkew))
		}, "stale"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark := marker()
			method, target, host, b, h := tt.attack(mark)
			resp, out := rawDo(t, method, target, host, b, replay.Header, h, "x-async-request-id", "ID")
			refused(t, resp, out, tt.reason, mark)
		})
	}
}

// A replay the filter refuses is never stored as the service's answer: a
// collector signing with a secret the filter does not accept retries, then
// fails the record with the filter's reason.
func TestReplayRefusedFailsTheRecord(t *testing.T) {
	ctx := context.Background()
	t.Setenv("ASYNCMESH_E2E_WRONG_REPLAY_SECRET", "not-the-secret-envoy-knows-but-long-enough")
	if err := st.RestartCollector(ctx, "-replay-secret-env", "ASYNCMESH_E2E_WRONG_REPLAY_SECRET"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := st.RestartCollector(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	resp, b := rawDo(t, "POST", "/maybe/raw/refused", "api.local", []byte("{}"), "prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("async call: %s %s", resp.Status, b)
	}
	id := resp.Header.Get("x-async-request-id")
	rec, cb := waitCallback(t, id)
	var full struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	_ = json.Unmarshal(rec.Body, &full)
	if cb.Status != "failed" || !strings.Contains(full.Error, "the filter refused the replay (signature)") {
		t.Fatalf("callback %s, want failed with the filter's reason", rec.Body)
	}
	// (failed is reached from processing only: the refusal never became
	// the record's response; collector tests check the history too.)
	if bytes.Contains(rec.Body, []byte(`"response"`)) {
		t.Fatalf("the callback carries a response: %s", rec.Body)
	}
}

// The collector will not start with a replay secret shorter than 32 bytes.
func TestCollectorRefusesShortReplaySecret(t *testing.T) {
	cmd := exec.Command(filepath.Join(os.Getenv("ASYNCMESH_BIN"), "collector"), "-listen", "127.0.0.1:0", "-db", filepath.Join(t.TempDir(), "x.db"))
	cmd.Env = append(os.Environ(), "ASYNCMESH_REPLAY_SECRET=replay-secret")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ASYNCMESH_REPLAY_SECRET: the current secret is 13 bytes; at least 32 are required") {
		t.Fatalf("collector with a 13-byte secret: %v %s", err, out)
	}
}
