package delivery

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/asyncmesh/asyncmesh/client/callbackpb"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// TestProtocolRegistry checks that the sending half of the registry and the
// configuration half (rules.Protocols) name the same protocols, and that an
// unknown protocol is a retried attempt, not a panic.
func TestProtocolRegistry(t *testing.T) {
	var configured, sent []string
	for _, p := range rules.Protocols() {
		configured = append(configured, p.Name)
	}
	for name := range senders {
		sent = append(sent, name)
	}
	slices.Sort(configured)
	slices.Sort(sent)
	if !slices.Equal(configured, sent) {
		t.Fatalf("rules.Protocols %v, senders %v: register the missing half", configured, sent)
	}
	rec := record("https://a.example/cb", true)
	rec.Envelope.Callback.Protocol = "smtp"
	if res := NewSender(secrets{"s": {testSecret}}, time.Second).Send(context.Background(), rec, 1); res.Outcome != Retry {
		t.Fatalf("unknown protocol: %+v, want Retry", res)
	}
}

// receiver starts a callback receiver of one protocol for a test and returns
// its callback URL and a function that waits for the webhook-id it received.
type receiver func(t *testing.T) (callbackURL string, received func() string)

// conformance has a receiver per registered protocol: adding a protocol
// without one fails TestProtocolConformance.
var conformance = map[string]receiver{
	rules.ProtocolHTTP: httpReceiver,
	rules.ProtocolSOAP: httpReceiver,
	rules.ProtocolGRPC: func(t *testing.T) (string, func() string) {
		lis := must(net.Listen("tcp", "127.0.0.1:0"))
		recv := &grpcReceiver{}
		srv := grpc.NewServer()
		callbackpb.RegisterCallbackServer(srv, recv)
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		return "grpc://" + lis.Addr().String(), func() string { return first(recv.md.Get("webhook-id")) }
	},
	rules.ProtocolAMQP: func(t *testing.T) (string, func() string) {
		u, msgs := amqpTopic(t, "conformance")
		u.RawQuery = url.Values{"exchange": {"amq.topic"}, "routingKey": {"conformance"}}.Encode()
		return u.String(), func() string {
			select {
			case m := <-msgs:
				id, _ := m.Headers["webhook-id"].(string)
				return id
			case <-time.After(5 * time.Second):
				return ""
			}
		}
	},
}

func httpReceiver(t *testing.T) (string, func() string) {
	var mu sync.Mutex
	var id string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		id = r.Header.Get("webhook-id")
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() string { mu.Lock(); defer mu.Unlock(); return id }
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// TestProtocolConformance delivers one signed callback over every registered
// protocol: the rule validates with the protocol's own configuration check,
// the attempt is Delivered, and the receiver saw the webhook-id.
func TestProtocolConformance(t *testing.T) {
	for _, p := range rules.Protocols() {
		t.Run(p.Name, func(t *testing.T) {
			recv, ok := conformance[p.Name]
			if !ok {
				t.Fatalf("protocol %s has no conformance receiver", p.Name)
			}
			cbURL, received := recv(t)
			if err := rules.CheckCallbackURLFor(p.Name, cbURL); err != nil {
				t.Fatalf("the receiver's URL fails the protocol's check: %v", err)
			}
			rec := record(cbURL, true)
			rec.Envelope.Callback.Protocol = p.Name
			if p.SOAPAction {
				rec.Envelope.Callback.SOAPAction = rules.SOAPActionDefault
			}
			if p.Credentials {
				rec.Envelope.Callback.CredentialsRef = "s"
			}
			s := NewSender(secrets{"s": {testSecret}}, 5*time.Second)
			defer s.Close()
			if res := s.Send(context.Background(), rec, 1); res.Outcome != Delivered {
				t.Fatalf("%+v", res)
			}
			if id := received(); id == "" {
				t.Fatal("the receiver saw no webhook-id")
			}
		})
	}
}
