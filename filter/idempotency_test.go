package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/access"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
)

// keyed sends a POST to /slow with Idempotency-Key key and returns the
// envelope the collector got.
func (h *harness) keyed(key string, body []byte) (uint32, *envelope.Envelope) {
	h.t.Helper()
	id, _ := h.request("POST", "/slow/report?x=1", body, "idempotency-key", key)
	if len(h.host.Calls) != 1 {
		h.t.Fatalf("want 1 collector call, got %d (local %+v)", len(h.host.Calls), h.host.Local)
	}
	env, err := envelope.Decode(h.host.Calls[0].Body)
	if err != nil {
		h.t.Fatalf("envelope invalid: %v", err)
	}
	return id, env
}

// answerReplayed makes the collector answer a retry with first's acceptance.
func (h *harness) answerReplayed(id uint32, first *envelope.Envelope, status string) {
	body, _ := json.Marshal(map[string]string{"id": first.ID, "traceId": first.TraceID, "status": status, "accessHash": first.AccessHash})
	h.host.Maps[abi.HTTPCallResponseHeaders] = []abi.Header{{":status", "200"}, {"x-async-status", status}, {hdrIdempotent, idempotentReplay}}
	h.host.Buffers[abi.HTTPCallResponseBody] = body
	h.d.OnHTTPCallResponse(1, h.host.Calls[0].Token, 3, len(body), 0)
}

func TestIdempotencyKeyRetryGetsTheSameLocation(t *testing.T) {
	h := newHarness(t)
	id, first := h.keyed(`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, []byte(`{"n":1}`))
	if first.IdempotencyKey != "8e03978e-40d5-43e8-bc93-6894a57f9324" || first.IdempotencyWindow.D() != 24*time.Hour {
		t.Fatalf("envelope key %q window %s", first.IdempotencyKey, first.IdempotencyWindow.D())
	}
	h.collectorAnswers(id, "201", true)
	loc, body := h.host.LocalHeader("location"), string(h.host.Local.Body)
	token, _ := access.DeriveToken([]byte(testReplaySecret), first.ID)
	if !strings.HasSuffix(loc, "/v1/requests/"+first.ID+"?token="+token) || access.Hash(token) != first.AccessHash {
		t.Fatalf("first Location %q: want the token derived from the id under the replay secret", loc)
	}
	if strings.Contains(string(h.host.Calls[0].Body), token) {
		t.Fatal("the access token reached the collector")
	}

	id, retry := h.keyed(`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, []byte(`{"n":1}`))
	if retry.ID == first.ID {
		t.Fatal("the retry's envelope reused the id: the collector decides")
	}
	h.answerReplayed(id, first, "queued")
	l := h.host.Local
	if l == nil || l.Status != 202 || h.host.LocalHeader("location") != loc || string(l.Body) != body {
		t.Fatalf("retry answered %+v, want the first 202: Location %q body %s", l, loc, body)
	}
	if h.host.LocalHeader(hdrRequestID) != first.ID || h.host.LocalHeader(hdrIdempotent) != idempotentReplay {
		t.Fatalf("retry headers %v", l.Headers)
	}
}

func TestIdempotencyKeyDuringARotation(t *testing.T) {
	// The first request was accepted under the previous secret (now the
	// second of the list): its token is derived again under it.
	t.Setenv("ASYNCMESH_TEST_ROTATING", testReplaySecret+","+previousSecret)
	h := newHarnessWith(t, strings.Replace(testConfig, "ASYNCMESH_TEST_REPLAY_SECRET", "ASYNCMESH_TEST_ROTATING", 1))
	id, retry := h.keyed("k", []byte(`{"n":1}`))
	first := *retry
	first.ID = "0190a5d0-0000-7000-8000-0000000000aa"
	old, hash := access.DeriveToken([]byte(previousSecret), first.ID)
	first.AccessHash = hash
	h.answerReplayed(id, &first, "completed")
	if loc := h.host.LocalHeader("location"); !strings.HasSuffix(loc, first.ID+"?token="+old) {
		t.Fatalf("Location %q, want the token under the previous secret (%+v, %v)", loc, h.host.Local, h.host.Logs)
	}

	// A token minted under a secret since retired is not issued again: same
	// id and status, a Location without a token, and a field that says why.
	id, _ = h.keyed("k", []byte(`{"n":1}`))
	_, first.AccessHash = access.DeriveToken([]byte(retiredSecret), first.ID)
	h.answerReplayed(id, &first, "completed")
	var body map[string]string
	_ = json.Unmarshal(h.host.Local.Body, &body)
	if loc := h.host.LocalHeader("location"); h.host.Local.Status != 202 || strings.Contains(loc, "token=") || !strings.HasSuffix(loc, first.ID) ||
		body["id"] != first.ID || body["status"] != "completed" || body["accessTokenUnavailable"] == "" || body["accessToken"] != "" {
		t.Fatalf("retry after the secret's retirement: %d %q %v", h.host.Local.Status, loc, body)
	}
}

func TestIdempotencyKeyRefusals(t *testing.T) {
	h := newHarness(t)
	long := strings.Repeat("k", 256)
	for _, tc := range []struct {
		name string
		hdrs []string
		want string
	}{
		{"not an sf-string", []string{"idempotency-key", `"abc`}, "Idempotency-Key: the sf-string has no closing quote"},
		{"a list", []string{"idempotency-key", `"a", "b"`}, "Idempotency-Key: characters after the closing quote"},
		{"too long", []string{"idempotency-key", long}, "Idempotency-Key: longer than 255 bytes"},
		{"empty", []string{"idempotency-key", `""`}, "Idempotency-Key: empty key"},
		{"twice", []string{"idempotency-key", "a", "idempotency-key", "b"}, "Idempotency-Key: sent more than once"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.request("POST", "/slow", []byte("x"), tc.hdrs...)
			var body map[string]string
			if h.host.Local == nil || h.host.Local.Status != 400 || len(h.host.Calls) != 0 {
				t.Fatalf("want 400 and no collector call, got %+v", h.host.Local)
			}
			_ = json.Unmarshal(h.host.Local.Body, &body)
			if body["error"] != "bad_idempotency_key" || !strings.HasPrefix(body["message"], tc.want) {
				t.Fatalf("body %v, want bad_idempotency_key %q", body, tc.want)
			}
		})
	}
}

func TestIdempotencyKeyCollectorRefusals(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		status, body, retryAfter string
		want                     int
	}{
		{"422", `{"error":"idempotency_key_reused","message":"m"}`, "", 422},
		{"409", `{"error":"idempotency_key_in_progress","message":"m"}`, "1", 409},
		{"409", `{"error":"id_conflict","message":"m"}`, "5", 503}, // not the caller's doing
	} {
		_, _ = h.keyed("k", []byte("x"))
		h.host.Maps[abi.HTTPCallResponseHeaders] = []abi.Header{{":status", tc.status}}
		h.host.Buffers[abi.HTTPCallResponseBody] = []byte(tc.body)
		h.d.OnHTTPCallResponse(1, h.host.Calls[0].Token, 1, len(tc.body), 0)
		if l := h.host.Local; l == nil || l.Status != tc.want || h.host.LocalHeader("retry-after") != tc.retryAfter {
			t.Fatalf("collector %s %s: caller got %+v", tc.status, tc.body, l)
		}
		if tc.want != 503 && string(h.host.Local.Body) != tc.body {
			t.Fatalf("body %s, want the collector's", h.host.Local.Body)
		}
	}
}

func TestIdempotencyKeyOffOnTheRule(t *testing.T) {
	h := newHarnessWith(t, strings.Replace(testConfig, `"bodyLimit": 16,`, `"bodyLimit": 16, "idempotencyWindow": "0s",`, 1))
	_, env := h.keyed(`"not checked`, []byte("x"))
	if env.IdempotencyKey != "" || env.IdempotencyWindow != 0 {
		t.Fatalf("envelope key %q window %s on a rule with keys off", env.IdempotencyKey, env.IdempotencyWindow.D())
	}
	var forwarded bool
	for _, kv := range env.Headers {
		forwarded = forwarded || kv[0] == "idempotency-key"
	}
	if !forwarded {
		t.Fatal("the header is the service's when the rule keeps no keys")
	}
}
