package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/replay"
)

const (
	testReplaySecret = "test-replay-secret-of-32-bytes-!!" // ≥ replay.MinSecretLen
	previousSecret   = "the-previous-replay-secret-still-ok"
	retiredSecret    = "a-retired-replay-secret-long-enough"
	replayID         = "01890a5d-ac96-774b-bcce-b302099a8057"
)

func replayRequest(id, method, path string, body []byte) replay.Request {
	return replay.Request{ID: id, Method: method, Authority: "api.local", Path: path, BodyDigest: replay.Digest(body)}
}

// signReplay signs as the collector does, for the harness's authority.
func signReplay(secret, id, method, path string, body []byte) string {
	return replay.Sign([]byte(secret), replayRequest(id, method, path, body), time.Now())
}

// replayRefused asserts the filter's own refusal with reason.
func (h *harness) replayRefused(reason string) {
	h.t.Helper()
	l := h.host.Local
	if l == nil || l.Status != 403 {
		h.t.Fatalf("want the filter's 403 (%s), got %+v", reason, l)
	}
	if got := h.host.LocalHeader(replay.RefusedHeader); got != reason {
		h.t.Fatalf("%s = %q, want %q (body %s)", replay.RefusedHeader, got, reason, l.Body)
	}
	var b struct{ Error, Reason string }
	if err := json.Unmarshal(l.Body, &b); err != nil || b.Error != "replay_refused" || b.Reason != reason {
		h.t.Fatalf("refusal body %s", l.Body)
	}
}

// replayPassed asserts that a replay went on to the service with its id.
func (h *harness) replayPassed(a abi.Action) {
	h.t.Helper()
	if a != abi.Continue || h.host.Local != nil || len(h.host.Calls) != 0 {
		h.t.Fatalf("replay must pass to the service: action %v, local %+v", a, h.host.Local)
	}
	if h.host.Get(abi.RequestHeaders, "x-async-request-id") != replayID {
		h.t.Fatal("replay must carry its request id")
	}
	if _, ok := h.host.Header(abi.RequestHeaders, replay.Header); ok {
		h.t.Fatal("replay header must not reach the service")
	}
}

// Each attack starts from a header the attacker captured (or forged) and
// changes one thing; each must be refused with its reason.
func TestReplayAttacks(t *testing.T) {
	body := []byte(`{"n":1}`)
	good := func() string { return signReplay(testReplaySecret, replayID, "POST", "/slow?x=1", body) }
	type send struct {
		method, path string
		body         []byte
		hdrs         []string
	}
	legit := func(v string) send {
		return send{"POST", "/slow?x=1", body, []string{"x-async-replay", v, "x-async-request-id", replayID}}
	}
	tests := []struct {
		name   string
		first  bool // send legit(header) once first, as the collector did
		attack func(v string) send
		reason string
	}{
		{"captured header reused with the same request", true, legit, "used"},
		{"captured header reused with another body", true, func(v string) send { s := legit(v); s.body = []byte(`{"n":2}`); return s }, "used"},
		{"unspent header with another body", false, func(v string) send { s := legit(v); s.body = []byte(`{"n":2}`); return s }, "body-digest"},
		{"unspent header with a longer body", false, func(v string) send { s := legit(v); s.body = append(body, ' '); return s }, "body-digest"},
		{"unspent header without its body", false, func(v string) send { s := legit(v); s.body = nil; return s }, "body-digest"},
		{"unspent header with another authority", false, func(v string) send {
			s := legit(v)
			s.hdrs = append(s.hdrs, ":authority", "admin.local")
			return s
		}, "signature"},
		{"unspent header with another method", false, func(v string) send { s := legit(v); s.method = "DELETE"; return s }, "signature"},
		{"unspent header with another path", false, func(v string) send { s := legit(v); s.path = "/admin"; return s }, "signature"},
		{"unspent header with another query", false, func(v string) send { s := legit(v); s.path = "/slow?x=2"; return s }, "signature"},
		{"unspent header for another request id", false, func(v string) send {
			s := legit(v)
			s.hdrs[3] = "01890a5d-ac96-774b-bcce-b302099a8058"
			return s
		}, "signature"},
		{"old v1 header", false, func(string) send {
			return legit("t=" + itoa(int(time.Now().Unix())) + ",v1=3q2-7w")
		}, "version"},
		{"signed by a retired secret", false, func(string) send {
			return legit(signReplay(retiredSecret, replayID, "POST", "/slow?x=1", body))
		}, "signature"},
		{"stale header", false, func(string) send {
			return legit(replay.Sign([]byte(testReplaySecret), replayRequest(replayID, "POST", "/slow?x=1", body), time.Now().Add(-2*replay.MaxSkew)))
		}, "stale"},
		{"garbage", false, func(string) send { return legit("v2,garbage") }, "malformed"},
		{"content-length over the largest body limit", false, func(v string) send {
			s := legit(v)
			s.hdrs = append(s.hdrs, "content-length", "67108865")
			return s
		}, "body-too-large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			v := good()
			if tt.first {
				s := legit(v)
				_, a := h.request(s.method, s.path, s.body, s.hdrs...)
				h.replayPassed(a)
			}
			s := tt.attack(v)
			h.requestWith(s.method, s.path, s.body, s.hdrs...)
			h.replayRefused(tt.reason)
		})
	}
}

// requestWith is request, with headers that may override the pseudo ones.
func (h *harness) requestWith(method, path string, body []byte, hdrs ...string) (uint32, abi.Action) {
	var rest []string
	auth := ""
	for i := 0; i+1 < len(hdrs); i += 2 {
		if hdrs[i] == ":authority" {
			auth = hdrs[i+1]
			continue
		}
		rest = append(rest, hdrs[i], hdrs[i+1])
	}
	if auth == "" {
		return h.request(method, path, body, rest...)
	}
	h.next++
	id := h.next + 1
	h.host.Local, h.host.Calls, h.host.Continued = nil, nil, nil
	hs := []abi.Header{{":method", method}, {":path", path}, {":authority", auth}, {":scheme", "http"}}
	for i := 0; i+1 < len(rest); i += 2 {
		hs = append(hs, abi.Header{rest[i], rest[i+1]})
	}
	h.host.Maps[abi.RequestHeaders] = hs
	h.d.OnContextCreate(id, 1)
	a := h.d.OnRequestHeaders(id, len(hs), body == nil)
	if body != nil && h.host.Local == nil {
		h.host.Buffers[abi.RequestBody] = body
		a = h.d.OnRequestBody(id, len(body), true)
	}
	return id, a
}

// A signature spent on one worker VM is spent on the others: they share
// Envoy's shared data (same vm_id), not their memory.
func TestReplaySpentAcrossWorkerVMs(t *testing.T) {
	a, b := newHarness(t), newHarness(t)
	b.host.Shared = a.host.Shared
	v := signReplay(testReplaySecret, replayID, "POST", "/slow", nil)
	_, act := a.request("POST", "/slow", nil, "x-async-replay", v, "x-async-request-id", replayID)
	a.replayPassed(act)
	b.request("POST", "/slow", nil, "x-async-replay", v, "x-async-request-id", replayID)
	b.replayRefused("used")
	// A retry signs anew, and passes.
	_, act = b.request("POST", "/slow", nil, "x-async-replay", signReplay(testReplaySecret, replayID, "POST", "/slow", nil), "x-async-request-id", replayID)
	b.replayPassed(act)
}

// Two VMs spending signatures at the same moment both record theirs: the
// one that loses the compare-and-set reads again.
func TestReplayConcurrentWorkersLoseNoEntry(t *testing.T) {
	a, b := newHarness(t), newHarness(t)
	b.host.Shared = a.host.Shared
	sh := a.host.Shared
	va := signReplay(testReplaySecret, replayID, "POST", "/slow", nil)
	var vb string
	// Find a second signature in the same shard of the table as va.
	sa, _ := replay.Parse(va)
	for {
		vb = signReplay(testReplaySecret, replayID, "POST", "/slow", nil)
		if sb, _ := replay.Parse(vb); sb.MAC[16]%32 == sa.MAC[16]%32 {
			break
		}
	}
	sh.BeforeSet = func(string) {
		sh.BeforeSet = nil // VM b runs between a's read and a's write
		_, act := b.request("POST", "/slow", nil, "x-async-replay", vb, "x-async-request-id", replayID)
		b.replayPassed(act)
	}
	_, act := a.request("POST", "/slow", nil, "x-async-replay", va, "x-async-request-id", replayID)
	a.replayPassed(act)
	for _, v := range []string{va, vb} {
		a.request("POST", "/slow", nil, "x-async-replay", v, "x-async-request-id", replayID)
		a.replayRefused("used")
	}
}

// The body is hashed chunk by chunk as Envoy buffers it, and the headers stay
// held (holdHeaders) until it matched.
func TestReplayBodyInChunks(t *testing.T) {
	h := newHarnessWith(t, strings.Replace(testConfig, `"rules"`, `"holdHeaders": true, "rules"`, 1))
	body := []byte(strings.Repeat("0123456789", 10_000))
	for _, tt := range []struct {
		name string
		send []byte
		pass bool
	}{
		{"the signed body", body, true},
		{"one byte changed in the last chunk", append(append([]byte(nil), body[:len(body)-1]...), 'x'), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h.next++
			id := h.next + 1
			h.host.Local = nil
			h.host.Maps[abi.RequestHeaders] = []abi.Header{{":method", "PUT"}, {":path", "/slow/big"}, {":authority", "api.local"},
				{"x-async-replay", signReplay(testReplaySecret, replayID, "PUT", "/slow/big", body)}, {"x-async-request-id", replayID}}
			h.d.OnContextCreate(id, 1)
			if a := h.d.OnRequestHeaders(id, 5, false); a != abi.Pause {
				t.Fatalf("headers must be held until the body is checked, got %v", a)
			}
			for n := 16 << 10; ; n += 16 << 10 {
				end := n >= len(tt.send)
				n = min(n, len(tt.send))
				h.host.Buffers[abi.RequestBody] = tt.send[:n]
				a := h.d.OnRequestBody(id, n, end)
				if !end {
					if a != abi.Pause || h.host.Local != nil {
						t.Fatalf("at %d bytes: %v %+v", n, a, h.host.Local)
					}
					continue
				}
				if tt.pass {
					h.replayPassed(a)
				} else {
					h.replayRefused("body-digest")
				}
				break
			}
		})
	}
}

func TestReplayWithTrailersRefused(t *testing.T) {
	h := newHarness(t)
	id := uint32(100)
	body := []byte("x")
	h.host.Maps[abi.RequestHeaders] = []abi.Header{{":method", "POST"}, {":path", "/slow"}, {":authority", "api.local"},
		{"x-async-replay", signReplay(testReplaySecret, replayID, "POST", "/slow", body)}, {"x-async-request-id", replayID}}
	h.d.OnContextCreate(id, 1)
	h.d.OnRequestHeaders(id, 5, false)
	h.host.Buffers[abi.RequestBody] = body
	if a := h.d.OnRequestBody(id, 1, false); a != abi.Pause {
		t.Fatalf("body: %v", a)
	}
	h.d.OnRequestTrailers(id, 1)
	h.replayRefused("trailers")

	// Trailers on other streams go on as before.
	sid, _ := h.request("GET", "/fast", nil)
	if a := h.d.OnRequestTrailers(sid, 1); a != abi.Continue {
		t.Fatalf("trailers of a pass-through stream: %v", a)
	}
}

// Only the filter marks its refusals: a service's own answer to a replay
// never carries the marker, so the collector cannot be told to retry by it.
func TestReplayMarkerStrippedFromServiceResponse(t *testing.T) {
	h := newHarness(t)
	sid, a := h.request("POST", "/slow", nil, "x-async-replay", signReplay(testReplaySecret, replayID, "POST", "/slow", nil), "x-async-request-id", replayID)
	h.replayPassed(a)
	h.host.Maps[abi.ResponseHeaders] = []abi.Header{{":status", "403"}, {replay.RefusedHeader, "used"}}
	h.d.OnResponseHeaders(sid, 2, true)
	if _, ok := h.host.Header(abi.ResponseHeaders, replay.RefusedHeader); ok {
		t.Fatal("a service's response passed on the filter's refusal marker")
	}
}

// During a rotation the filter accepts the current and the previous secret;
// a secret retired from the list is refused.
func TestReplaySecretRotation(t *testing.T) {
	t.Setenv("ASYNCMESH_TEST_ROTATING", testReplaySecret+","+previousSecret)
	h := newHarnessWith(t, strings.Replace(testConfig, "ASYNCMESH_TEST_REPLAY_SECRET", "ASYNCMESH_TEST_ROTATING", 1))
	for _, tt := range []struct {
		secret string
		pass   bool
	}{{testReplaySecret, true}, {previousSecret, true}, {retiredSecret, false}} {
		_, a := h.request("POST", "/slow", nil, "x-async-replay", signReplay(tt.secret, replayID, "POST", "/slow", nil), "x-async-request-id", replayID)
		if tt.pass {
			h.replayPassed(a)
		} else {
			h.replayRefused("signature")
		}
	}
}

func TestReplaySecretConfiguration(t *testing.T) {
	tests := []struct {
		name, value string
		accepted    bool
		log         string
	}{
		{"too short", "replay-secret", false, "the current secret is 13 bytes; at least 32"},
		{"previous too short", testReplaySecret + ",old", false, "the previous secret is 3 bytes"},
		{"three secrets", testReplaySecret + "," + previousSecret + "," + retiredSecret, false, "more than 2"},
		{"none: sync routes still work, replays are refused", "", true, "no replay secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("ASYNCMESH_TEST_REPLAY_SECRET_X", tt.value)
			cfg := strings.Replace(testConfig, "ASYNCMESH_TEST_REPLAY_SECRET", "ASYNCMESH_TEST_REPLAY_SECRET_X", 1)
			host := abi.NewFakeHost()
			d := abi.NewDispatcher(host, newPlugin)
			d.OnContextCreate(1, 0)
			host.Buffers[abi.PluginConfiguration] = []byte(cfg)
			if got := d.OnConfigure(1, len(cfg)); got != tt.accepted {
				t.Fatalf("OnConfigure = %v, want %v (logs %v)", got, tt.accepted, host.Logs)
			}
			if !strings.Contains(strings.Join(host.Logs, "\n"), tt.log) {
				t.Fatalf("logs %v, want %q", host.Logs, tt.log)
			}
			if tt.accepted {
				h := &harness{t: t, host: host, d: d}
				h.request("POST", "/slow", nil, "x-async-replay", signReplay(testReplaySecret, replayID, "POST", "/slow", nil), "x-async-request-id", replayID)
				h.replayRefused("no-secret")
			}
		})
	}
}

// Without shared data a spent signature could not be recorded: replays are
// refused rather than let through twice.
func TestReplayFailsClosedWithoutSharedData(t *testing.T) {
	h := newHarness(t)
	h.host.Shared.Fail = true
	h.request("POST", "/slow", nil, "x-async-replay", signReplay(testReplaySecret, replayID, "POST", "/slow", nil), "x-async-request-id", replayID)
	h.replayRefused("table")
}

// The configuration creates the table's keys once; a second configuration
// (another worker VM, a new rules version) keeps what is recorded.
func TestReplayConfigureKeepsSpentSignatures(t *testing.T) {
	h := newHarness(t)
	v := signReplay(testReplaySecret, replayID, "POST", "/slow", nil)
	_, a := h.request("POST", "/slow", nil, "x-async-replay", v, "x-async-request-id", replayID)
	h.replayPassed(a)
	keys := h.host.Shared.Keys()
	if keys != 12*32 {
		t.Fatalf("%d shared data keys, want the ring's 384", keys)
	}
	h.host.Buffers[abi.PluginConfiguration] = []byte(testConfig)
	if !h.d.OnConfigure(1, len(testConfig)) {
		t.Fatal("reconfigure failed")
	}
	h.request("POST", "/slow", nil, "x-async-replay", v, "x-async-request-id", replayID)
	h.replayRefused("used")
	if h.host.Shared.Keys() != keys {
		t.Fatal("reconfiguring changed the table's keys")
	}
}

// Paths the collector sends byte for byte (characters Go would re-escape,
// raw UTF-8, broken escapes) are verified as they are.
func TestReplayExactPaths(t *testing.T) {
	for _, p := range []string{"/slow/{a}|b^c\"d", "/slow/caf\xc3\xa9", "/slow/%zz?q=%zz", "/slow/a%20b?x=%7B", "//slow"} {
		h := newHarness(t)
		_, a := h.request("GET", p, nil, "x-async-replay", signReplay(testReplaySecret, replayID, "GET", p, nil), "x-async-request-id", replayID)
		h.replayPassed(a)
	}
}
