package external

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

type bearerSecrets struct{}

func (bearerSecrets) Lookup(ref string) ([]webhook.Secret, error) {
	return nil, errors.New("no " + ref)
}
func (bearerSecrets) Value(ref string) (string, error) {
	if ref == "node" {
		return "node-token", nil
	}
	return "", errors.New("no " + ref)
}

// countingNode is a node on 127.0.0.1 that records the tasks it gets and
// counts its connections.
type countingNode struct {
	srv   *httptest.Server
	conns atomic.Int32
	tasks chan Task
}

func newCountingNode(t *testing.T) *countingNode {
	n := &countingNode{tasks: make(chan Task, 1)}
	n.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("authorization") != "Bearer node-token" {
			http.Error(w, "unauthenticated", 401)
			return
		}
		var task Task
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &task); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		n.tasks <- task
		w.WriteHeader(http.StatusAccepted)
	}))
	n.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.conns.Add(1)
		}
	}
	n.srv.Start()
	t.Cleanup(n.srv.Close)
	return n
}

func task() Task {
	return Task{ID: "0190b3c2-7d6e-7a1b-8c3d-4e5f60718293", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Rule: "r",
		Request: TaskRequest{Method: "POST", Authority: "api.local", Path: "/ledger", Headers: [][2]string{
			{"authorization", "Bearer caller-jwt"}, {"Cookie", "session=caller"}, {"proxy-authorization", "Basic Y2FsbGVy"},
			{"x-api-key", "caller-key"}, {"x-auth-token", "t"}, {"x-forwarded-client-cert", "Hash=abc;Subject=caller"},
			{"content-type", "application/json"}, {"x-tenant", "acme"},
		}}}
}

// TestDispatchDropsCallerCredentials plays a caller whose request carries
// its credentials to a rule with an external node: the node gets the rest of
// the headers, and only what target.passHeaders names of the credentials.
func TestDispatchDropsCallerCredentials(t *testing.T) {
	for _, tt := range []struct {
		name string
		pass []string
		want string // the headers the node sees, in order
	}{
		{"default", nil, "content-type x-tenant"},
		{"passHeaders", []string{"authorization", "x-api-key"}, "authorization x-api-key content-type x-tenant"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := newCountingNode(t)
			c := New(bearerSecrets{}, 2*time.Second)
			target := &rules.Target{Type: rules.TargetExternal, Endpoint: n.srv.URL, AllowPrivate: true,
				Auth: &rules.NodeAuth{Type: rules.AuthBearer, SecretRef: "node"}, PassHeaders: tt.pass}
			if err := c.Dispatch(context.Background(), target, task()); err != nil {
				t.Fatal(err)
			}
			got := <-n.tasks
			var names []string
			for _, h := range got.Request.Headers {
				names = append(names, strings.ToLower(h[0]))
			}
			if strings.Join(names, " ") != tt.want {
				t.Fatalf("node got headers %v, want %s", got.Request.Headers, tt.want)
			}
		})
	}
}

func TestCredentialHeaders(t *testing.T) {
	for name, want := range map[string]bool{
		"authorization": true, "proxy-authorization": true, "cookie": true, "x-api-key": true, "api_key": true,
		"x-auth-token": true, "x-access-token": true, "x-csrf-token": true, "x-session-id": true,
		"x-amz-security-token": true, "x-forwarded-client-cert": true, "x-goog-api-key": true,
		"content-type": false, "accept": false, "x-tenant": false, "traceparent": false, "x-request-id": false,
	} {
		if got := rules.CredentialHeader(name); got != want {
			t.Errorf("CredentialHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestDispatchRefusedByTheGuardIsPermanent: a node endpoint at an address
// the rule does not allow is a permanent error with the reason (the record
// fails at once), and nothing is connected to.
func TestDispatchRefusedByTheGuardIsPermanent(t *testing.T) {
	n := newCountingNode(t)
	c := New(bearerSecrets{}, 2*time.Second)
	for _, endpoint := range []string{n.srv.URL + "/tasks", "http://169.254.169.254/latest/meta-data/"} {
		target := &rules.Target{Type: rules.TargetExternal, Endpoint: endpoint, Auth: &rules.NodeAuth{Type: rules.AuthBearer, SecretRef: "node"}}
		err := c.Dispatch(context.Background(), target, task())
		var perm *PermanentError
		if !errors.As(err, &perm) || !strings.Contains(err.Error(), "loopback, private") {
			t.Fatalf("%s: %v, want a permanent refusal", endpoint, err)
		}
	}
	if got := n.conns.Load(); got != 0 {
		t.Fatalf("the refused node got %d connections", got)
	}
}
