package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TLSFiles name the PEM files of the xDS server's TLS (controlplane serve
// -tls-cert, -tls-key, -client-ca, -trust-domain).
//
// With Cert and Key alone the channel is encrypted and Envoys can verify the
// control plane, but any client may still ask as any node. With ClientCA every
// client must present a certificate that chains to it (for client
// authentication), and may ask only as the node its certificate names; see
// Identity for how a certificate names a node.
//
// The files are read again when they change (checked at each TLS handshake),
// so that short-lived mesh certificates can rotate without a restart; a
// changed file that does not load keeps the previous certificates (logged).
type TLSFiles struct {
	Cert, Key string // the server's certificate chain and private key
	ClientCA  string // CA bundle of client certificates; empty: clients are not authenticated
	// TrustDomain, with ClientCA, is the only SPIFFE trust domain accepted in
	// client identities (empty: any that the client CA signs).
	TrustDomain string
}

// Identity is the node a client certificate names. It is taken from the
// certificate's one URI SAN, a SPIFFE ID of the shape Istio and SPIRE issue
// for Kubernetes workloads:
//
//	spiffe://<trust-domain>/ns/<cluster>/sa/<node-id>
//
// The certificate authorizes exactly that node id in exactly that Envoy
// cluster (node.id == the service account, node.cluster == the namespace);
// a collector asks as its sidecar's node (with asyncmesh.role = collector), so
// it carries the same identity as its sidecar's Envoy. Anything else (no URI
// SAN, more than one, another shape, another trust domain than the configured
// one) is refused: a certificate's Common Name is not used.
type Identity struct {
	SPIFFEID    string
	TrustDomain string
	Cluster     string
	NodeID      string
}

// ParseIdentity parses a SPIFFE ID naming a node (see Identity); trustDomain,
// when not empty, is the only one accepted.
func ParseIdentity(spiffeID, trustDomain string) (Identity, error) {
	// An empty fragment ("…#") leaves no trace in url.URL: refused here,
	// so that an accepted ID has one spelling.
	if strings.Contains(spiffeID, "#") {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: has parts a SPIFFE ID cannot have (user, query or fragment)", spiffeID)
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %w", spiffeID, err)
	}
	return identityFromURI(u, trustDomain)
}

func identityFromURI(u *url.URL, trustDomain string) (Identity, error) {
	bad := func(why string) (Identity, error) {
		return Identity{}, fmt.Errorf("SPIFFE ID %q: %s", u.String(), why)
	}
	switch {
	case u.Scheme != "spiffe":
		return bad("scheme is not spiffe")
	case u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "":
		return bad("has parts a SPIFFE ID cannot have (user, query or fragment)")
	case u.RawPath != "":
		return bad("percent-encoded path") // the spec allows none; refusing keeps one spelling per identity
	case u.Port() != "" || strings.Contains(u.Host, ":"):
		return bad("the trust domain has a port")
	case !validTrustDomain(u.Host):
		return bad("the trust domain must be lowercase letters, digits, '.', '-' or '_'")
	case trustDomain != "" && u.Host != trustDomain:
		return bad("trust domain is not " + trustDomain)
	}
	seg := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" || !strings.HasPrefix(u.Path, "/") {
		return bad("path is not /ns/<cluster>/sa/<node-id>")
	}
	for _, s := range []string{seg[1], seg[3]} {
		if !validSegment(s) {
			return bad("a path segment must be letters, digits, '.', '-' or '_' (and not . or ..)")
		}
	}
	return Identity{SPIFFEID: "spiffe://" + u.Host + u.Path, TrustDomain: u.Host, Cluster: seg[1], NodeID: seg[3]}, nil
}

func validTrustDomain(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// certIdentity is the identity of a verified client certificate.
func certIdentity(cert *x509.Certificate, trustDomain string) (Identity, error) {
	if len(cert.URIs) != 1 {
		return Identity{}, fmt.Errorf("client certificate %q has %d URI SANs, want exactly one SPIFFE ID", cert.Subject, len(cert.URIs))
	}
	return identityFromURI(cert.URIs[0], trustDomain)
}

// allows says whether the identity may ask as node.
func (id Identity) allows(node *core.Node) error {
	if node.GetId() != id.NodeID || node.GetCluster() != id.Cluster {
		return fmt.Errorf("certificate %s names node %q in cluster %q, the stream asks as node %q in cluster %q",
			id.SPIFFEID, id.NodeID, id.Cluster, node.GetId(), node.GetCluster())
	}
	return nil
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// serverTLS holds the current certificate and client CA pool, read again
// when their files change.
type serverTLS struct {
	files TLSFiles
	log   *slog.Logger

	mu     sync.Mutex
	stamps [3]fileStamp
	cert   *tls.Certificate
	pool   *x509.CertPool // nil without ClientCA

	handshakeFailures atomic.Int64
	refused           atomic.Int64
}

func newServerTLS(f TLSFiles, log *slog.Logger) (*serverTLS, error) {
	switch {
	case f.Cert == "" || f.Key == "":
		return nil, errors.New("TLS needs both a certificate and a key")
	case f.TrustDomain != "" && f.ClientCA == "":
		return nil, errors.New("a trust domain needs a client CA (it checks client certificates)")
	case f.TrustDomain != "" && !validTrustDomain(f.TrustDomain):
		return nil, fmt.Errorf("trust domain %q: lowercase letters, digits, '.', '-' or '_'", f.TrustDomain)
	}
	t := &serverTLS{files: f, log: log}
	stamps, cert, pool, err := t.read()
	if err != nil {
		return nil, err
	}
	t.stamps, t.cert, t.pool = stamps, cert, pool
	return t, nil
}

func (t *serverTLS) paths() []string {
	p := []string{t.files.Cert, t.files.Key}
	if t.files.ClientCA != "" {
		p = append(p, t.files.ClientCA)
	}
	return p
}

// read loads the files; their stamps are taken first, so that a file that
// changes while it is read is read again at the next handshake.
func (t *serverTLS) read() ([3]fileStamp, *tls.Certificate, *x509.CertPool, error) {
	var stamps [3]fileStamp
	for i, p := range t.paths() {
		s, err := stampOf(p)
		if err != nil {
			return stamps, nil, nil, fmt.Errorf("reading TLS files: %w", err)
		}
		stamps[i] = s
	}
	cert, err := tls.LoadX509KeyPair(t.files.Cert, t.files.Key)
	if err != nil {
		return stamps, nil, nil, fmt.Errorf("loading the server certificate %s and key %s: %w", t.files.Cert, t.files.Key, err)
	}
	var pool *x509.CertPool
	if t.files.ClientCA != "" {
		pem, err := os.ReadFile(t.files.ClientCA)
		if err != nil {
			return stamps, nil, nil, fmt.Errorf("reading the client CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return stamps, nil, nil, fmt.Errorf("client CA %s: no PEM certificate in it", t.files.ClientCA)
		}
	}
	return stamps, &cert, pool, nil
}

// current returns the certificate and pool, reloaded if a file changed.
func (t *serverTLS) current() (*tls.Certificate, *x509.CertPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for i, p := range t.paths() {
		if s, err := stampOf(p); err != nil || s != t.stamps[i] {
			changed = true
		}
	}
	if changed {
		stamps, cert, pool, err := t.read()
		if err != nil {
			t.log.Error("controlplane: reloading TLS files; keeping the previous certificates", "err", err)
			t.stamps = stamps // retried when a file changes again, not at every handshake
		} else {
			t.stamps, t.cert, t.pool = stamps, cert, pool
			t.log.Info("controlplane: TLS files reloaded", "cert", t.files.Cert, "client_ca", t.files.ClientCA)
		}
	}
	return t.cert, t.pool
}

// config is the server's tls.Config: each handshake takes the current files.
func (t *serverTLS) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := t.current()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}}
			if pool != nil {
				// The standard library verifies the chain and the client-auth
				// key usage; identity() then reads the verified leaf.
				c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
			}
			return c, nil
		},
	}
}

// credentials are gRPC's TLS credentials that log refused handshakes (a
// client without a certificate, or with one from another CA, never gets as
// far as a stream, so this is the only place that sees it).
func (t *serverTLS) credentials() credentials.TransportCredentials {
	return loggedCreds{TransportCredentials: credentials.NewTLS(t.config()), t: t}
}

type loggedCreds struct {
	credentials.TransportCredentials
	t *serverTLS
}

func (c loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.t.handshakeFailures.Add(1)
		c.t.log.Warn("controlplane: xDS TLS handshake refused", "peer", conn.RemoteAddr().String(), "err", err)
	}
	return out, info, err
}

func (c loggedCreds) Clone() credentials.TransportCredentials {
	return loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), t: c.t}
}

// identity is the identity of a stream's verified client certificate.
func (t *serverTLS) identity(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, errors.New("no verified client certificate")
	}
	return certIdentity(info.State.VerifiedChains[0][0], t.files.TrustDomain)
}

// authorize is the stream interceptor of a server with a client CA: every
// discovery request of the stream (state of the world or delta, ADS or
// ECDS) must ask as the node the client's certificate names. A request that
// does not ends the stream with PermissionDenied before the xDS server sees
// it, so nothing is built, cached or sent for the node it claimed.
func (t *serverTLS) authorize(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	addr := ""
	if p, ok := peer.FromContext(ss.Context()); ok {
		addr = p.Addr.String()
	}
	id, err := t.identity(ss.Context())
	if err != nil {
		t.refused.Add(1)
		t.log.Warn("controlplane: xDS stream refused", "peer", addr, "method", info.FullMethod, "err", err)
		return status.Error(codes.PermissionDenied, err.Error())
	}
	w := &authorizedStream{ServerStream: ss, id: id, t: t, peer: addr, method: info.FullMethod}
	err = handler(srv, w)
	// The xDS server ends a stream whose Recv failed without an error of its
	// own; the refusal is what the client must see.
	if d := w.denied.Load(); d != nil {
		return *d
	}
	return err
}

type authorizedStream struct {
	grpc.ServerStream
	id           Identity
	t            *serverTLS
	peer, method string
	seenNode     bool // only the receiving goroutine reads and writes it
	denied       atomic.Pointer[error]
}

func (w *authorizedStream) RecvMsg(m any) error {
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	var node *core.Node
	switch r := m.(type) {
	case *discovery.DiscoveryRequest:
		node = r.GetNode()
	case *discovery.DeltaDiscoveryRequest:
		node = r.GetNode()
	default:
		return w.deny(fmt.Errorf("unexpected message %T", m), nil)
	}
	if node == nil {
		// Envoy sends the node on the first request only
		// (set_node_on_first_message_only); the server keeps that one.
		if !w.seenNode {
			return w.deny(errors.New("the first discovery request carries no node"), nil)
		}
		return nil
	}
	if err := w.id.allows(node); err != nil {
		return w.deny(err, node)
	}
	w.seenNode = true
	return nil
}

func (w *authorizedStream) deny(err error, node *core.Node) error {
	st := status.Error(codes.PermissionDenied, err.Error())
	w.denied.Store(&st)
	w.t.refused.Add(1)
	w.t.log.Warn("controlplane: xDS stream refused: the client's certificate does not name the node it asks as",
		"peer", w.peer, "method", w.method, "identity", w.id.SPIFFEID, "node", node.GetId(), "cluster", node.GetCluster(), "err", err)
	return st
}
