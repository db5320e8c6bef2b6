package delivery

import (
	"context"
	"net"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/asyncmesh/asyncmesh/client/callbackpb"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func init() { register(rules.ProtocolGRPC, (*Sender).deliverGRPC) }

// deliverGRPC makes a grpc attempt: one unary Deliver with the signed payload.
func (s *Sender) deliverGRPC(ctx context.Context, a *attempt, p Payload) Result {
	body, _, err := s.encode(a, p)
	if err != nil {
		return a.retry(0, err.Error())
	}
	u, err := url.Parse(a.cb.URL)
	if err != nil {
		return a.retry(0, "callback URL: "+err.Error())
	}
	key := a.cb.URL + "|" + a.guard.Key() + certKey(a.cert)
	s.mu.Lock()
	if s.close {
		s.mu.Unlock()
		return a.retry(0, errClosed.Error())
	}
	conn, err := s.grpc.get(key, func(*grpc.ClientConn) bool { return false }, func() (*grpc.ClientConn, error) {
		creds, port := insecure.NewCredentials(), "80"
		if u.Scheme == "grpcs" {
			creds, port = credentials.NewTLS(s.http.tlsConfig(a.cert)), "443"
		}
		// passthrough: the guarded dialer resolves the name itself, so every
		// connected address is checked.
		return grpc.NewClient("passthrough:///"+hostPort(u, port),
			grpc.WithTransportCredentials(creds),
			grpc.WithUserAgent("asyncmesh-collector"),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return a.guard.DialContext(ctx, "tcp", addr)
			}))
	}, func(c *grpc.ClientConn) { c.Close() })
	s.mu.Unlock()
	if err != nil {
		return a.retry(0, "grpc client: "+err.Error())
	}
	md := metadata.MD{}
	for k, v := range a.sign(body) {
		md[strings.ToLower(k)] = v
	}
	var trailer metadata.MD
	_, err = callbackpb.NewCallbackClient(conn).Deliver(metadata.NewOutgoingContext(ctx, md),
		&callbackpb.DeliverRequest{Payload: body, Id: p.ID, TraceId: p.TraceID, Status: p.Status},
		grpc.Trailer(&trailer), grpc.WaitForReady(false))
	st := status.Convert(err)
	switch st.Code() {
	case codes.OK:
		return Result{Outcome: Delivered}
	case codes.NotFound:
		return Result{Outcome: Gone, Attempt: store.Attempt{Error: "receiver answered NOT_FOUND: " + st.Message()}}
	}
	msg := "receiver answered " + st.Code().String() + ": " + st.Message()
	if st.Code() == codes.Unavailable && IsRefusal(err) {
		return a.refused(msg) // the dialer's refusal, flattened into the status
	}
	if c := st.Code(); c == codes.Unavailable || c == codes.ResourceExhausted {
		if v := trailer.Get("retry-after"); len(v) > 0 {
			if d, ok := ParseRetryAfter(v[0], time.Now()); ok {
				return a.throttled(0, msg, d)
			}
		}
	}
	return a.retry(0, msg)
}

// hostPort is u's host:port, with the default port when u has none.
func hostPort(u *url.URL, defaultPort string) string {
	port := u.Port()
	if port == "" {
		port = defaultPort
	}
	return net.JoinHostPort(u.Hostname(), port)
}
