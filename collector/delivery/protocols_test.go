package delivery

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/asyncmesh/asyncmesh/client/callbackpb"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/seal"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

var testSecret = must(webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))

const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func TestSealedCallback(t *testing.T) {
	var got http.Header
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, body = r.Header.Clone(), must(io.ReadAll(r.Body))
	}))
	defer srv.Close()
	rec := record(srv.URL, true)
	rec.Envelope.Callback.Encryption = &rules.Encryption{Type: rules.EncryptAESGCM, KeyRef: "key"}
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	if res := s.Send(context.Background(), rec, 1); res.Outcome != Delivered {
		t.Fatalf("%+v", res)
	}
	if got.Get("content-type") != seal.ContentTypeAESGCM || strings.Contains(string(body), "completed") {
		t.Fatalf("not sealed: %v %s", got, body)
	}
	if err := webhook.Verify(got, body, []webhook.Secret{testSecret}, time.Now()); err != nil {
		t.Fatalf("signature over the sealed bytes: %v", err)
	}
	plain, err := seal.Open(seal.AESGCM, must(seal.ParseKey(testKey)), rec.ID, body)
	if err != nil || !strings.Contains(string(plain), `"status":"completed"`) {
		t.Fatalf("%s %v", plain, err)
	}
}

func TestSOAPCallback(t *testing.T) {
	var got http.Header
	var body []byte
	fault := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, body = r.Header.Clone(), must(io.ReadAll(r.Body))
		if fault {
			w.Header().Set("content-type", "text/xml")
			w.WriteHeader(500)
			io.WriteString(w, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>ledger locked</faultstring></s:Fault></s:Body></s:Envelope>`)
		}
	}))
	defer srv.Close()
	rec := record(srv.URL, true)
	rec.Envelope.Callback.Protocol, rec.Envelope.Callback.SOAPAction = rules.ProtocolSOAP, "urn:x#Done"
	rec.Response.Body = []byte("a\x00b") // not XML text: travels as base64
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	if res := s.Send(context.Background(), rec, 1); res.Outcome != Delivered {
		t.Fatalf("%+v", res)
	}
	if got.Get("soapaction") != `"urn:x#Done"` || !strings.HasPrefix(got.Get("content-type"), "text/xml") {
		t.Fatalf("headers %v", got)
	}
	if err := webhook.Verify(got, body, []webhook.Secret{testSecret}, time.Now()); err != nil {
		t.Fatalf("signature over the envelope: %v", err)
	}
	p, err := DecodeSOAP(body)
	if err != nil || p.ID != rec.ID || p.TraceID != rec.TraceID || p.Status != "completed" || p.Response.Status != 200 ||
		p.Response.Body != "a\x00b" || p.Response.Headers["content-type"] != "application/json" {
		t.Fatalf("decoded %+v %v\n%s", p, err, body)
	}
	fault = true
	if res := s.Send(context.Background(), rec, 1); res.Outcome != Retry || !strings.Contains(res.Attempt.Error, "SOAP fault: s:Server: ledger locked") {
		t.Fatalf("fault: %+v", res)
	}
}

func FuzzDecodeSOAP(f *testing.F) {
	f.Add(EncodeSOAP(NewPayload(record("http://x/", false))))
	f.Add([]byte(`<Envelope><Body><Deliver xmlns="urn:asyncmesh:callback:v1"><Response><Body encoding="base64">!!</Body></Response></Deliver></Body></Envelope>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeSOAP(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to a valid envelope.
		if _, err := DecodeSOAP(EncodeSOAP(p)); err != nil {
			t.Fatalf("re-encoding %+v: %v", p, err)
		}
	})
}

// grpcReceiver is a Callback service answering with the next error.
type grpcReceiver struct {
	callbackpb.UnimplementedCallbackServer
	answer error
	md     metadata.MD
	req    *callbackpb.DeliverRequest
}

func (g *grpcReceiver) Deliver(ctx context.Context, req *callbackpb.DeliverRequest) (*callbackpb.DeliverResponse, error) {
	g.md, _ = metadata.FromIncomingContext(ctx)
	g.req = req
	if g.answer != nil && status.Code(g.answer) == codes.Unavailable {
		grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "3"))
	}
	return &callbackpb.DeliverResponse{}, g.answer
}

func TestGRPCCallback(t *testing.T) {
	lis := must(net.Listen("tcp", "127.0.0.1:0"))
	recv := &grpcReceiver{}
	srv := grpc.NewServer()
	callbackpb.RegisterCallbackServer(srv, recv)
	go srv.Serve(lis)
	defer srv.Stop()
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	defer s.Close()
	tests := []struct {
		name    string
		answer  error
		want    Outcome
		minWait time.Duration
	}{
		{"ok", nil, Delivered, 0},
		{"gone", status.Error(codes.NotFound, "no such order"), Gone, 0},
		{"throttled", status.Error(codes.Unavailable, "busy"), Retry, 3 * time.Second},
		{"error", status.Error(codes.Internal, "boom"), Retry, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recv.answer = tt.answer
			rec := record("grpc://"+lis.Addr().String(), true)
			rec.Envelope.Callback.Protocol = rules.ProtocolGRPC
			res := s.Send(context.Background(), rec, 1)
			if res.Outcome != tt.want || res.Wait < tt.minWait || (tt.want != Delivered) != (res.Attempt.Error != "") {
				t.Fatalf("%+v", res)
			}
			h := http.Header{}
			for k, v := range recv.md {
				h[http.CanonicalHeaderKey(k)] = v
			}
			if err := webhook.Verify(h, recv.req.Payload, []webhook.Secret{testSecret}, time.Now()); err != nil {
				t.Fatalf("signature over the payload: %v (%v)", err, recv.md)
			}
			var p Payload
			if err := json.Unmarshal(recv.req.Payload, &p); err != nil || p.ID != recv.req.Id || recv.req.TraceId != rec.TraceID || recv.req.Status != "completed" {
				t.Fatalf("request %+v", recv.req)
			}
		})
	}
	rec := record("grpc://"+lis.Addr().String(), false)
	rec.Envelope.Callback.Protocol = rules.ProtocolGRPC
	if res := s.Send(context.Background(), rec, 1); res.Outcome != Refused || !strings.Contains(res.Attempt.Error, "loopback") {
		t.Fatalf("guard: %+v", res)
	}
}

func TestGuard(t *testing.T) {
	tests := []struct {
		cb   rules.Callback
		ip   string
		want bool
	}{
		{rules.Callback{}, "93.184.216.34", true},
		{rules.Callback{}, "127.0.0.1", false},
		{rules.Callback{AllowPrivate: true}, "169.254.169.254", true},
		{rules.Callback{AllowNetworks: []string{"127.0.0.0/8"}}, "127.0.0.5", true},
		{rules.Callback{AllowNetworks: []string{"127.0.0.0/8"}}, "169.254.169.254", false},
		{rules.Callback{AllowNetworks: []string{"10.1.0.0/16"}}, "::ffff:10.1.2.3", true},
		{rules.Callback{AllowNetworks: []string{"10.1.0.0/16"}}, "10.2.0.1", false},
	}
	for _, tt := range tests {
		err := GuardFor(tt.cb, false).Check(netip.MustParseAddr(tt.ip))
		if (err == nil) != tt.want {
			t.Errorf("%+v %s: %v", tt.cb, tt.ip, err)
		}
	}
	if GuardFor(rules.Callback{AllowNetworks: []string{"127.0.0.0/8"}}, false).Key() == GuardFor(rules.Callback{}, false).Key() {
		t.Fatal("guards with different allowances share connections")
	}
}

// amqpTopic binds a fresh queue to amq.topic with key on the test broker
// (ASYNCMESH_TEST_AMQP_URL; the test skips without it) and returns the
// broker's URL without credentials and the queue's messages.
func amqpTopic(t *testing.T, key string) (*url.URL, <-chan amqp.Delivery) {
	t.Helper()
	raw := os.Getenv("ASYNCMESH_TEST_AMQP_URL")
	if raw == "" {
		t.Skip("ASYNCMESH_TEST_AMQP_URL not set")
	}
	conn := must(amqp.Dial(raw))
	t.Cleanup(func() { conn.Close() })
	ch := must(conn.Channel())
	q := must(ch.QueueDeclare("", false, true, true, false, nil))
	must(0, ch.QueueBind(q.Name, key, "amq.topic", false, nil))
	msgs := must(ch.Consume(q.Name, "", true, true, false, false, nil))
	u := must(url.Parse(raw))
	u.User = nil
	return u, msgs
}

// TestAMQPCallback publishes callbacks to a real RabbitMQ
// (ASYNCMESH_TEST_AMQP_URL, as the integration tests).
func TestAMQPCallback(t *testing.T) {
	u, msgs := amqpTopic(t, "results.orders")
	s := NewSender(secrets{"s": {testSecret}}, 5*time.Second)
	defer s.Close()
	send := func(key string) Result {
		cbURL := *u
		cbURL.RawQuery = url.Values{"exchange": {"amq.topic"}, "routingKey": {key}}.Encode()
		rec := record(cbURL.String(), true)
		rec.Envelope.Callback.Protocol, rec.Envelope.Callback.CredentialsRef = rules.ProtocolAMQP, "s"
		return s.Send(context.Background(), rec, 1)
	}
	if res := send("results.orders"); res.Outcome != Delivered {
		t.Fatalf("%+v", res)
	}
	select {
	case m := <-msgs:
		h := http.Header{}
		for k, v := range m.Headers {
			h.Set(k, v.(string))
		}
		if err := webhook.Verify(h, m.Body, []webhook.Secret{testSecret}, time.Now()); err != nil || m.MessageId == "" || m.DeliveryMode != amqp.Persistent {
			t.Fatalf("message %+v: %v", m, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no callback message")
	}
	if res := send("nobody.listens"); res.Outcome != Retry || !strings.Contains(res.Attempt.Error, "unroutable") {
		t.Fatalf("unroutable: %+v", res)
	}
}
