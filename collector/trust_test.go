package collector

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// connCounter is an http server on 127.0.0.1 counting the connections it
// gets: a refused callback must never reach it.
func connCounter(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestCallerCallbackRefusedIsDead plays a caller who points its callback at
// internal addresses of a rule with allowPrivate: the record is dead after
// one attempt, its history says why, and nothing was connected to.
func TestCallerCallbackRefusedIsDead(t *testing.T) {
	target, conns := connCounter(t)
	tests := []struct {
		name   string
		cb     rules.Callback
		reason string
	}{
		{"loopback outside allowedHosts", rules.Callback{URL: target.URL + "/cb", AllowOverride: true, AllowPrivate: true,
			AllowedHosts: []string{"hooks.example.com"}}, "allowedHosts"},
		{"metadata outside allowedHosts", rules.Callback{URL: "http://169.254.169.254/latest/meta-data/iam/", AllowOverride: true, AllowPrivate: true,
			AllowedHosts: []string{"hooks.example.com"}}, "allowedHosts"},
		// An envelope without a list whose callback says allowPrivate (as
		// intake wrote them before this change): no allowance for the
		// caller's URL, so the SSRF guard refuses it.
		{"loopback, no list", rules.Callback{URL: target.URL + "/cb", AllowOverride: true, AllowPrivate: true}, "loopback, private"},
		{"metadata, no list", rules.Callback{URL: "http://169.254.169.254/latest/meta-data/", AllowOverride: true, AllowPrivate: true}, "loopback, private"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			en := e.envelope("/work", nil)
			en.Callback, en.CallbackFromCaller = tt.cb, true
			en.Callback.Protocol = rules.ProtocolHTTP
			en.Retry.MaxAttempts = 5
			e.intake(en)
			code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
			if code != 200 || rec["status"] != "dead" {
				t.Fatalf("%d %v", code, rec)
			}
			if a, _ := rec["attempts"].([]any); len(a) != 1 {
				t.Fatalf("%d attempts, want 1: a refusal is not retried", len(a))
			}
			hist := fmt.Sprint(rec["history"])
			if !strings.Contains(hist, "callback refused") || !strings.Contains(hist, tt.reason) {
				t.Fatalf("history %s: want the refusal's reason %q", hist, tt.reason)
			}
			if n := conns.Load(); n != 0 {
				t.Fatalf("the refused callback connected %d times", n)
			}
		})
	}
}

// TestApplyRulesLendsCallersNothing: whatever the live rule says, a
// caller's URL gets no credentials, and the private allowances only for a
// host the live rule lists.
func TestApplyRulesLendsCallersNothing(t *testing.T) {
	mq := "amqp://mq.internal:5672/?exchange=x&routingKey=k"
	tests := []struct {
		name       string
		live       rules.Callback
		env        func(*envelope.Envelope)
		private    bool
		fromCaller bool
	}{
		{"live rule gains allowPrivate, no list", rules.Callback{URL: mq, Protocol: "amqp", CredentialsRef: "mq", AllowOverride: true, AllowPrivate: true, AllowNetworks: []string{"10.0.0.0/8"}},
			func(e *envelope.Envelope) { e.CallbackFromCaller = true }, false, true},
		{"live rule lists another host", rules.Callback{URL: mq, Protocol: "amqp", CredentialsRef: "mq", AllowOverride: true, AllowPrivate: true, AllowedHosts: []string{"hooks.example.com"}},
			func(e *envelope.Envelope) { e.CallbackFromCaller = true }, false, true},
		{"live rule lists the host", rules.Callback{URL: mq, Protocol: "amqp", CredentialsRef: "mq", AllowOverride: true, AllowPrivate: true, AllowedHosts: []string{"127.0.0.1"}},
			func(e *envelope.Envelope) { e.CallbackFromCaller = true }, true, true},
		{"live rule no longer lets callers choose", rules.Callback{URL: mq, Protocol: "amqp", CredentialsRef: "mq", AllowPrivate: true},
			func(e *envelope.Envelope) { e.CallbackFromCaller = true }, false, true},
		// The envelope does not say the caller chose, but the rule has no URL
		// of its own: the URL can only be the caller's.
		{"no URL of the rule's own, flag missing", rules.Callback{Protocol: "amqp", AllowOverride: true, AllowPrivate: true, AllowedHosts: []string{"hooks.example.com"}},
			func(e *envelope.Envelope) {}, false, true},
		{"the rule's own URL keeps its privileges", rules.Callback{URL: mq, Protocol: "amqp", CredentialsRef: "mq", AllowPrivate: true},
			func(e *envelope.Envelope) {}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Collector{cfg: Config{Rules: ruleMap{"r": {Name: "r", Mode: rules.ModeAsync, Callback: tt.live}}}}
			e := envelope.Envelope{Rule: "r", Callback: rules.Callback{URL: "amqp://127.0.0.1:5672/?exchange=x&routingKey=k", Protocol: "amqp", CredentialsRef: "mq", AllowPrivate: true}}
			tt.env(&e)
			got := c.applyRules(&e)
			cb := got.Callback
			if got.CallbackFromCaller != tt.fromCaller {
				t.Fatalf("callbackFromCaller %v", got.CallbackFromCaller)
			}
			if tt.fromCaller && (cb.CredentialsRef != "" || cb.URL != e.Callback.URL) {
				t.Fatalf("caller's callback %+v: credentials lent, or URL lost", cb)
			}
			if cb.AllowPrivate != tt.private {
				t.Fatalf("allowPrivate %v, want %v (%+v)", cb.AllowPrivate, tt.private, cb)
			}
			if !tt.private && len(cb.AllowNetworks) > 0 {
				t.Fatalf("allowNetworks %v lent", cb.AllowNetworks)
			}
		})
	}
}

// TestExternalNodeRefusedFailsAtOnce: a node endpoint the SSRF guard refuses
// fails the request on the first try with the reason, and the caller is
// called back with it.
func TestExternalNodeRefusedFailsAtOnce(t *testing.T) {
	e := nodeEnv(t)
	n := newNode(t, rules.AuthBearer, "")
	n.target.AllowPrivate = false // the node listens on 127.0.0.1
	en := e.envelope("/ledger", nil)
	en.Target = n.target
	e.intake(en)
	code, rec := e.get("/v1/requests/" + en.ID + "?wait=20s")
	if code != 200 || rec["status"] != "delivered" || !strings.Contains(fmt.Sprint(rec["error"]), "loopback, private") {
		t.Fatalf("%d %v", code, rec)
	}
	select {
	case task := <-n.tasks:
		t.Fatalf("the refused node got task %s", task.ID)
	default:
	}
	if !strings.Contains(string(e.payloadOf(en.ID)), `"status":"failed"`) {
		t.Fatalf("callback %s", e.payloadOf(en.ID))
	}
}

// TestExternalNodeGetsNoCallerCredentials: the caller's Authorization and
// Cookie do not travel to the node unless target.passHeaders names them.
func TestExternalNodeGetsNoCallerCredentials(t *testing.T) {
	for _, pass := range [][]string{nil, {"authorization"}} {
		t.Run(fmt.Sprint(pass), func(t *testing.T) {
			e := nodeEnv(t)
			n := newNode(t, rules.AuthHMAC, "")
			n.target.PassHeaders = pass
			en := e.envelope("/ledger", []byte("entry"))
			en.Headers = [][2]string{{"authorization", "Bearer caller-jwt"}, {"cookie", "session=caller"}, {"x-tenant", "acme"}}
			en.Target = n.target
			e.intake(en)
			var task = <-n.tasks
			got := fmt.Sprint(task.Request.Headers)
			if strings.Contains(got, "session=caller") || strings.Contains(got, "caller-jwt") != (pass != nil) || !strings.Contains(got, "acme") {
				t.Fatalf("node got headers %s with passHeaders %v", got, pass)
			}
			if _, rec := e.get("/v1/requests/" + en.ID + "?wait=20s"); rec["status"] != "delivered" {
				t.Fatalf("%v", rec)
			}
		})
	}
}
