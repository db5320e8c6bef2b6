package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/asyncmesh/asyncmesh/client/callbackpb"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
	"github.com/asyncmesh/asyncmesh/internal/webhook"
)

// header returns the first value of name in a logged header list.
func header(h [][2]string, name string) (string, bool) {
	for _, kv := range h {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}

// TestAttemptLogHTTP: each http and soap attempt keeps the request it sent
// (no body: its size and type) and the receiver's status, bounded headers
// and the first KiB of its body; an attempt that got no answer keeps its
// request and its error.
func TestAttemptLogHTTP(t *testing.T) {
	long := strings.Repeat("é", 1000) // 2000 bytes: cut at a KiB inside a character
	tests := []struct {
		name     string
		protocol string
		status   int
		headers  int    // extra response headers x-h-N
		body     string // the receiver's body
		down     bool   // nothing listens
		check    func(t *testing.T, a store.Attempt)
	}{
		{"delivered", rules.ProtocolHTTP, 200, 0, `{"ok":true}`, false, func(t *testing.T, a store.Attempt) {
			if a.Response.Status != "200 OK" || a.Response.Body != `{"ok":true}` || a.Response.BodyEncoding != "" || a.Response.BodyTruncated {
				t.Errorf("response %+v", a.Response)
			}
		}},
		{"refused with a long text body", rules.ProtocolHTTP, 422, 0, long, false, func(t *testing.T, a store.Attempt) {
			r := a.Response
			if r.Status != "422 Unprocessable Entity" || !r.BodyTruncated || r.BodyEncoding != "" || r.Body != strings.Repeat("é", 512) {
				t.Errorf("response %+v", r)
			}
		}},
		{"binary body", rules.ProtocolHTTP, 500, 0, "\x00\xff\xfe binary", false, func(t *testing.T, a store.Attempt) {
			if a.Response.BodyEncoding != "base64" || a.Response.Body != "AP/+IGJpbmFyeQ==" || a.Response.BodyTruncated {
				t.Errorf("response %+v", a.Response)
			}
		}},
		{"many headers", rules.ProtocolHTTP, 401, 100, "", false, func(t *testing.T, a store.Attempt) {
			r := a.Response
			if len(r.Headers) != maxLoggedHeaders || !r.HeadersTruncated {
				t.Errorf("%d headers, truncated %v: want %d, true", len(r.Headers), r.HeadersTruncated, maxLoggedHeaders)
			}
			if v, _ := header(r.Headers, "www-authenticate"); v != `Bearer error="invalid_token"` {
				t.Errorf("the challenge, which says why, is not kept: %q in %v", v, r.Headers)
			}
		}},
		{"soap fault", rules.ProtocolSOAP, 500, 0, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>unknown order</faultstring></s:Fault></s:Body></s:Envelope>`, false, func(t *testing.T, a store.Attempt) {
			if v, _ := header(a.Request.Headers, "soapaction"); v != `"urn:x#Done"` || !strings.HasPrefix(a.Request.ContentType, "text/xml") {
				t.Errorf("request %+v", a.Request)
			}
			if !strings.Contains(a.Response.Body, "unknown order") || !strings.Contains(a.Error, "unknown order") {
				t.Errorf("response %+v, error %q", a.Response, a.Error)
			}
		}},
		{"connection refused", rules.ProtocolHTTP, 0, 0, "", true, func(t *testing.T, a store.Attempt) {
			if a.Response != nil || a.Error == "" || a.Request == nil {
				t.Errorf("attempt %+v: want the request, an error and no answer", a)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sent []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sent = must(io.ReadAll(r.Body))
				for i := range tt.headers {
					w.Header().Set(fmt.Sprintf("x-h-%03d", i), "v")
				}
				if tt.status == 401 {
					w.Header().Set("www-authenticate", `Bearer error="invalid_token"`)
				}
				if tt.protocol == rules.ProtocolSOAP {
					w.Header().Set("content-type", "text/xml")
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			if tt.down {
				srv.Close()
			}
			rec := record(srv.URL+"/cb?x=1", true)
			rec.Envelope.Callback.Protocol, rec.Envelope.Callback.SOAPAction = tt.protocol, "urn:x#Done"
			res := NewSender(secrets{"s": {testSecret}}, time.Second).Send(context.Background(), rec, 1)
			a := res.Attempt
			if a.Request == nil {
				t.Fatalf("no request logged: %+v", a)
			}
			if q := a.Request; q.Method != "POST" || q.URL != srv.URL+"/cb?x=1" || (!tt.down && q.BodySize != len(sent)) || q.ContentType == "" {
				t.Errorf("request %+v (sent %d bytes)", q, len(sent))
			}
			if v, _ := header(a.Request.Headers, "webhook-id"); v != rec.ID {
				t.Errorf("webhook-id %q in %v", v, a.Request.Headers)
			}
			if v, _ := header(a.Request.Headers, "webhook-signature"); v != redacted {
				t.Errorf("webhook-signature %q: want %s", v, redacted)
			}
			if !tt.down && (a.Response == nil || a.StatusCode != tt.status) {
				t.Fatalf("attempt %+v: want the answer", a)
			}
			tt.check(t, a)
		})
	}
}

// headerReceiver is a Callback service that answers with err and sends
// header and trailer metadata.
type headerReceiver struct {
	callbackpb.UnimplementedCallbackServer
	err             error
	header, trailer metadata.MD
	gotMD           metadata.MD
	gotPayload      []byte
}

func (g *headerReceiver) Deliver(ctx context.Context, req *callbackpb.DeliverRequest) (*callbackpb.DeliverResponse, error) {
	g.gotMD, _ = metadata.FromIncomingContext(ctx)
	g.gotPayload = req.Payload
	if g.header != nil {
		grpc.SetHeader(ctx, g.header)
	}
	if g.trailer != nil {
		grpc.SetTrailer(ctx, g.trailer)
	}
	return &callbackpb.DeliverResponse{}, g.err
}

func grpcServe(t *testing.T, recv callbackpb.CallbackServer) string {
	t.Helper()
	lis := must(net.Listen("tcp", "127.0.0.1:0"))
	srv := grpc.NewServer()
	callbackpb.RegisterCallbackServer(srv, recv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestAttemptLogGRPC: a grpc attempt keeps the method, the metadata sent and
// the receiver's code, message and metadata; no answer when nothing listens.
func TestAttemptLogGRPC(t *testing.T) {
	recv := &headerReceiver{}
	addr := grpcServe(t, recv)
	closed := must(net.Listen("tcp", "127.0.0.1:0"))
	closed.Close()
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	defer s.Close()
	tests := []struct {
		name    string
		addr    string
		err     error
		trailer metadata.MD
		status  string // "" for no answer
		message string
	}{
		{"ok", addr, nil, nil, "OK", ""},
		{"refused", addr, status.Error(codes.FailedPrecondition, "order 7 is closed"), metadata.Pairs("x-reason", "closed", "x-raw-bin", "\x00\xff"), "FailedPrecondition", "order 7 is closed"},
		{"nothing listens", closed.Addr().String(), nil, nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recv.err, recv.trailer = tt.err, tt.trailer
			rec := record("grpc://"+tt.addr, true)
			rec.Envelope.Callback.Protocol = rules.ProtocolGRPC
			a := s.Send(context.Background(), rec, 1).Attempt
			q := a.Request
			if q == nil || q.Method != callbackpb.Callback_Deliver_FullMethodName || q.URL != "grpc://"+tt.addr || q.ContentType != "application/json" || q.BodySize == 0 {
				t.Fatalf("request %+v", q)
			}
			if v, _ := header(q.Headers, "webhook-signature"); v != redacted {
				t.Errorf("webhook-signature %q in %v", v, q.Headers)
			}
			if tt.status == "" {
				if a.Response != nil || a.Error == "" {
					t.Fatalf("attempt %+v %+v: want an error and no answer", a, a.Response)
				}
				return
			}
			r := a.Response
			if r == nil || r.Status != tt.status || r.Message != tt.message {
				t.Fatalf("response %+v, want %s %q", r, tt.status, tt.message)
			}
			if v, _ := header(r.Headers, "content-type"); v != "application/grpc" {
				t.Errorf("metadata %v: want the receiver's content-type", r.Headers)
			}
			if tt.trailer != nil {
				if v, _ := header(r.Headers, "x-reason"); v != "closed" {
					t.Errorf("trailer x-reason %q in %v", v, r.Headers)
				}
				if v, _ := header(r.Headers, "x-raw-bin"); v != "AP8=" {
					t.Errorf("binary trailer %q: want base64", v)
				}
			}
		})
	}
}

// TestAttemptLogAMQP: an amqp attempt that cannot reach its broker keeps
// what it meant to publish and no answer; with a test broker
// (ASYNCMESH_TEST_AMQP_URL), the broker's ack and return are the answer.
func TestAttemptLogAMQP(t *testing.T) {
	closed := must(net.Listen("tcp", "127.0.0.1:0"))
	closed.Close()
	rec := record("amqp://"+closed.Addr().String()+"/?exchange=x&routingKey=k", true)
	rec.Envelope.Callback.Protocol, rec.Envelope.Callback.CredentialsRef = rules.ProtocolAMQP, "s"
	s := NewSender(secrets{"s": {testSecret}}, time.Second)
	defer s.Close()
	a := s.Send(context.Background(), rec, 1).Attempt
	if q := a.Request; q == nil || q.Method != "basic.publish" || q.URL != rec.Envelope.Callback.URL || q.ContentType != "application/json" {
		t.Fatalf("request %+v", q)
	}
	if a.Response != nil || a.Error == "" {
		t.Fatalf("attempt %+v: want an error and no answer", a)
	}

	u, _ := amqpTopic(t, "log.orders")
	for _, tt := range []struct{ key, status, message string }{
		{"log.orders", "ack", ""},
		{"nobody.listens", "returned", "312 NO_ROUTE"},
	} {
		cbURL := *u
		cbURL.RawQuery = url.Values{"exchange": {"amq.topic"}, "routingKey": {tt.key}}.Encode()
		rec := record(cbURL.String(), true)
		rec.Envelope.Callback.Protocol, rec.Envelope.Callback.CredentialsRef = rules.ProtocolAMQP, "s"
		a := s.Send(context.Background(), rec, 1).Attempt
		if r := a.Response; r == nil || r.Status != tt.status || r.Message != tt.message {
			t.Errorf("%s: response %+v, want %s %q", tt.key, r, tt.status, tt.message)
		}
	}
}

// attackerSecrets resolves every signing secret to testSecret, and each
// plain value to a recognisable secret: a bearer token, an OAuth2 client
// secret, a client certificate's key, a broker login.
type attackerSecrets map[string]string

func (s attackerSecrets) Lookup(string) ([]webhook.Secret, error) {
	return []webhook.Secret{testSecret}, nil
}

func (s attackerSecrets) Value(ref string) (string, error) {
	if v, ok := s[ref]; ok {
		return v, nil
	}
	return "", errors.New("no secret " + ref)
}

// TestAttemptLogKeepsNoSecrets plays the attacker who reads attempt logs
// (an operator's screen, a store dump, a search page): whatever a receiver
// echoes back (Authorization, Set-Cookie, API keys, a bearer under any
// name, in headers or gRPC metadata) and whatever the collector holds
// (the signing secret and the signatures it made, the receiver auth's
// bearer token, OAuth2 client secret and access token and client
// certificate key, the broker password, a token or a password in the
// callback URL) is never in a stored attempt. The record as a whole holds
// none of the collector's secrets either: its envelope names them by
// reference only (it keeps the callback URL as configured, so URL tokens
// are checked in the attempt alone).
func TestAttemptLogKeepsNoSecrets(t *testing.T) {
	const (
		echoed       = "echoed-bearer-7f3a9c"
		urlToken     = "url-token-51d0e2"
		urlPassword  = "url-password-c4b8aa"
		broker       = "broker-password-9e77d1"
		bearer       = "receiver-bearer-2b6f0d"
		clientSecret = "oauth-client-secret-83c1"
		accessToken  = "oauth-access-token-e5a7"
	)
	ca, caKey := newCA(t)
	certPEM, keyPEM := issuePEM(t, ca, caKey, "billing")
	sec := attackerSecrets{"key": testKey, "mq": "rule-user:" + broker, "bearer": bearer, "client": clientSecret,
		"billing.crt": certPEM, "billing.key": keyPEM}
	signingKey := "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" // testSecret's key, base64
	var signatures []string
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sig := r.Header.Get("webhook-signature")
		signatures = append(signatures, sig)
		w.Header().Set("authorization", "Bearer "+echoed)
		w.Header().Set("proxy-authorization", "Basic "+echoed)
		w.Header().Set("set-cookie", "session="+echoed+"; HttpOnly")
		w.Header().Set("x-api-key", echoed)
		w.Header().Set("x-echo", "Bearer "+echoed) // a bearer under a name nobody thought of
		w.Header().Set("x-echo-signature", sig)
		w.Header().Set("x-echo-authorization", r.Header.Get("authorization"))
		w.WriteHeader(401)
	})
	srv := httptest.NewServer(echo)
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tlsSrv := httptest.NewUnstartedServer(echo)
	tlsSrv.TLS = &tls.Config{Certificates: []tls.Certificate{issue(t, ca, caKey, "receiver", true)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": accessToken, "token_type": "Bearer", "expires_in": 3600})
	}))
	defer tokens.Close()
	recv := &headerReceiver{
		err:     status.Error(codes.PermissionDenied, "denied"),
		header:  metadata.Pairs("authorization", "Bearer "+echoed, "x-session-id", echoed),
		trailer: metadata.Pairs("set-cookie", "sid="+echoed, "x-token-bin", echoed),
	}
	grpcAddr := grpcServe(t, recv)
	brokerAddr, _ := fakeBroker(t)
	host := strings.TrimPrefix(srv.URL, "http://")
	closed := must(net.Listen("tcp", "127.0.0.1:0"))
	closed.Close()

	tests := []struct {
		name, protocol, url string
		auth                *rules.CallbackAuth
	}{
		{"http", rules.ProtocolHTTP, "http://mallory:" + urlPassword + "@" + host + "/cb?token=" + urlToken + "&api_key=" + urlToken + "&sig=" + urlToken, nil},
		{"http, sealed", rules.ProtocolHTTP, srv.URL + "/cb?access_token=" + urlToken, nil},
		{"http, bearer auth", rules.ProtocolHTTP, srv.URL + "/cb", &rules.CallbackAuth{Type: rules.CallbackAuthBearer, SecretRef: "bearer"}},
		{"http, oauth2", rules.ProtocolHTTP, srv.URL + "/cb", &rules.CallbackAuth{Type: rules.CallbackAuthOAuth2, TokenURL: tokens.URL, ClientID: "billing", SecretRef: "client"}},
		{"http, mtls", rules.ProtocolHTTP, tlsSrv.URL + "/cb", &rules.CallbackAuth{Type: rules.CallbackAuthMTLS, CertRef: "billing.crt", KeyRef: "billing.key"}},
		{"soap", rules.ProtocolSOAP, srv.URL + "/cb?code=" + urlToken, nil},
		{"http, nothing listens", rules.ProtocolHTTP, "http://" + closed.Addr().String() + "/cb?token=" + urlToken, nil},
		{"grpc, bearer auth", rules.ProtocolGRPC, "grpc://" + grpcAddr + "/?token=" + urlToken, &rules.CallbackAuth{Type: rules.CallbackAuthBearer, SecretRef: "bearer"}},
		{"amqp", rules.ProtocolAMQP, "amqp://mallory:" + urlPassword + "@" + brokerAddr + "/?exchange=x&routingKey=k&password=" + urlToken, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := record(tt.url, true)
			cb := &rec.Envelope.Callback
			cb.Protocol, cb.SOAPAction, cb.Auth = tt.protocol, "urn:x#Done", tt.auth
			if tt.protocol == rules.ProtocolAMQP {
				cb.CredentialsRef = "mq"
			}
			if strings.Contains(tt.name, "sealed") {
				cb.Encryption = &rules.Encryption{Type: rules.EncryptAESGCM, KeyRef: "key"}
			}
			s := NewSender(sec, 2*time.Second)
			s.http.RootCAs = pool
			defer s.Close()
			res := s.Send(context.Background(), rec, 1)
			if res.Attempt.Request == nil {
				t.Fatalf("nothing logged: %+v", res)
			}
			rec.Attempts = append(rec.Attempts, res.Attempt)
			attempt := must(json.Marshal(res.Attempt))
			whole := must(json.Marshal(rec))
			for _, secret := range []string{echoed, urlToken, urlPassword} {
				if bytes.Contains(attempt, []byte(secret)) {
					t.Errorf("the attempt keeps %q:\n%s", secret, attempt)
				}
			}
			pemBody := strings.Split(keyPEM, "\n")[1] // a line of the key's base64
			for _, secret := range []string{broker, signingKey, testKey, bearer, clientSecret, accessToken, pemBody} {
				if bytes.Contains(whole, []byte(secret)) {
					t.Errorf("the record keeps %q:\n%s", secret, whole)
				}
			}
			for _, v := range append(signatures, recvSignature(recv)) {
				for _, sig := range strings.Fields(v) {
					_, mac, _ := strings.Cut(sig, ",")
					if mac != "" && bytes.Contains(whole, []byte(mac)) {
						t.Errorf("the record keeps the signature %q:\n%s", mac, whole)
					}
				}
			}
			if tt.protocol != rules.ProtocolAMQP && !strings.Contains(tt.name, "nothing") && res.Attempt.Response == nil {
				t.Errorf("no answer logged: %+v", res.Attempt) // the test would pass vacuously
			}
			if tt.auth != nil && tt.auth.Type != rules.CallbackAuthMTLS {
				if v, _ := header(res.Attempt.Request.Headers, "authorization"); v != redacted {
					t.Errorf("authorization sent %q: want it logged as %s", v, redacted)
				}
			}
		})
	}
}

func recvSignature(g *headerReceiver) string {
	if v := g.gotMD.Get(webhook.HeaderSignature); len(v) > 0 {
		return v[0]
	}
	return ""
}

func TestLoggedBody(t *testing.T) {
	tests := []struct {
		name      string
		in        []byte
		body, enc string
		truncated bool
	}{
		{"empty", nil, "", "", false},
		{"text", []byte("refused: order closed"), "refused: order closed", "", false},
		{"exactly a KiB", bytes.Repeat([]byte("a"), maxLoggedBody), strings.Repeat("a", maxLoggedBody), "", false},
		{"cut", bytes.Repeat([]byte("a"), maxLoggedBody+1), strings.Repeat("a", maxLoggedBody), "", true},
		{"cut inside a character", append(bytes.Repeat([]byte("a"), maxLoggedBody-1), "€"...), strings.Repeat("a", maxLoggedBody-1), "", true},
		{"binary", []byte{0, 0xff, 'x'}, "AP94", "base64", false},
		{"invalid UTF-8 early, cut", append([]byte{0xff}, bytes.Repeat([]byte("a"), maxLoggedBody)...), "", "base64", true},
	}
	for _, tt := range tests {
		body, enc, truncated := loggedBody(tt.in)
		if enc != tt.enc || truncated != tt.truncated || (tt.enc == "" && body != tt.body) {
			t.Errorf("%s: loggedBody = %q %q %v, want %q %q %v", tt.name, body, enc, truncated, tt.body, tt.enc, tt.truncated)
		}
		if enc == "base64" && len(body) > (maxLoggedBody+2)/3*4 {
			t.Errorf("%s: %d base64 bytes: more than a KiB was kept", tt.name, len(body))
		}
	}
}

func TestLoggedURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://r.example/cb":                                      "https://r.example/cb",
		"https://u:p@r.example/cb?x=1":                              "https://r.example/cb?x=1",
		"https://r.example/cb?token=t&x=1":                          "https://r.example/cb?token=REDACTED&x=1",
		"https://r.example/cb?X-Amz-Signature=s&X-Amz-Credential=c": "https://r.example/cb?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
		"https://r.example/api?code=c&sig=s&key=k":                  "https://r.example/api?code=REDACTED&key=REDACTED&sig=REDACTED",
		"amqp://guest:guest@mq:5672/vh?exchange=e&routingKey=k":     "amqp://mq:5672/vh?exchange=e&routingKey=k",
		"http://[::1%zz/":                                           "(unparsable URL)",
	} {
		if got := loggedURL(in); got != want {
			t.Errorf("loggedURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoggedHeadersBounds(t *testing.T) {
	h := map[string][]string{
		"X-Long":  {strings.Repeat("v", 1000)},
		"X-Bad":   {"a\xffb"},
		"Cookie":  {"sid=1"},
		"X-Other": {"Basic dXNlcjpwYXNz"},
	}
	got, truncated := loggedHeaders(h)
	want := [][2]string{{"cookie", redacted}, {"x-bad", "a\uFFFDb"}, {"x-long", strings.Repeat("v", maxLoggedHeaderValue)}, {"x-other", redacted}}
	if !truncated || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("loggedHeaders = %q %v, want %q true", got, truncated, want)
	}
	// The total bound holds whatever the count.
	many := map[string][]string{}
	for i := range 20 {
		many[fmt.Sprintf("x-%02d", i)] = []string{strings.Repeat("v", maxLoggedHeaderValue)}
	}
	got, truncated = loggedHeaders(many)
	total := 0
	for _, kv := range got {
		total += len(kv[0]) + len(kv[1])
	}
	if !truncated || total > maxLoggedHeaderBytes || len(got) == 0 {
		t.Errorf("%d headers of %d bytes, truncated %v: want at most %d bytes", len(got), total, truncated, maxLoggedHeaderBytes)
	}
}
