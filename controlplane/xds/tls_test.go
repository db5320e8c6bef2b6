package xds

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/asyncmesh/asyncmesh/controlplane/xds/xdstest"
)

// syncBuffer is a log sink written from gRPC's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// newTestServer serves the good rules file on loopback until the test ends.
func newTestServer(t *testing.T, configure func(*Server) error) (*Server, string, *syncBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	s, err := NewServer(path, wasmOpts, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		if err := configure(s); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, ln.Addr().String(), logs
}

func dial(t *testing.T, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if cfg != nil {
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func clientTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

func node(id, cluster string, collector bool) *core.Node {
	n := &core.Node{Id: id, Cluster: cluster}
	if collector {
		n.Metadata, _ = structpb.NewStruct(map[string]any{"asyncmesh.role": "collector"})
	}
	return n
}

// adsStream is an open ADS stream that asked for the filter's configuration.
type adsStream struct {
	discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
	err    error // opening failed (a refused handshake)
}

func openADS(t *testing.T, conn *grpc.ClientConn, n *core.Node) *adsStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return &adsStream{cancel: cancel, err: err}
	}
	// A refused stream may fail to send already; Recv says why.
	_ = st.Send(&discovery.DiscoveryRequest{Node: n, TypeUrl: resourceType, ResourceNames: []string{FilterName}})
	return &adsStream{st, cancel, nil}
}

// recv waits (bounded) for the stream's next response.
func (a *adsStream) recv(t *testing.T) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	if a.err != nil {
		return nil, a.err
	}
	type res struct {
		r   *discovery.DiscoveryResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { r, err := a.Recv(); ch <- res{r, err} }()
	select {
	case r := <-ch:
		return r.r, r.err
	case <-time.After(10 * time.Second):
		a.cancel()
		t.Fatal("no answer within 10s")
		return nil, nil
	}
}

// ask opens a stream as n, returns its first response or error, and closes it.
func ask(t *testing.T, conn *grpc.ClientConn, n *core.Node) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	a := openADS(t, conn, n)
	defer a.cancel()
	return a.recv(t)
}

const trustDomain = "asyncmesh.test"

func spiffe(cluster, id string) string {
	return "spiffe://" + trustDomain + "/ns/" + cluster + "/sa/" + id
}

// TestMutualTLSNodeIdentity plays the other sidecars of a mesh: with a client
// CA, only a client whose certificate names node a (cluster reports) gets
// node a's rules; a client without a certificate, with one from another CA,
// or with one for another node, identity shape or trust domain gets nothing.
func TestMutualTLSNodeIdentity(t *testing.T) {
	dir := t.TempDir()
	pki, err := xdstest.NewPKI(dir, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	other, err := xdstest.NewPKI(dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := pki.Server("controlplane", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	client := func(p *xdstest.PKI, name string, uris ...string) *tls.Config {
		c, k, err := p.Client(name, uris...)
		if err != nil {
			t.Fatal(err)
		}
		return clientTLS(t, pki.CAFile, c, k)
	}
	s, addr, logs := newTestServer(t, func(s *Server) error {
		return s.UseTLS(TLSFiles{Cert: srvCert, Key: srvKey, ClientCA: pki.CAFile, TrustDomain: trustDomain})
	})

	cases := []struct {
		name   string
		tls    *tls.Config
		node   *core.Node
		code   codes.Code // codes.OK: the rules are served
		logged string
	}{
		{"no client certificate", clientTLS(t, pki.CAFile, "", ""), node("a", "reports", false), codes.Unavailable, "TLS handshake refused"},
		{"certificate from another CA", client(other, "foreign-a", spiffe("reports", "a")), node("a", "reports", false), codes.Unavailable, "TLS handshake refused"},
		{"certificate of node a asking as node b", client(pki, "a-as-b", spiffe("reports", "a")), node("b", "reports", false), codes.PermissionDenied, `node=b`},
		{"certificate of node a asking as a in another cluster", client(pki, "a-as-billing", spiffe("reports", "a")), node("a", "billing", false), codes.PermissionDenied, `cluster=billing`},
		{"collector asking as another node", client(pki, "a-collector-as-b", spiffe("reports", "a")), node("b", "reports", true), codes.PermissionDenied, `node=b`},
		{"another trust domain", client(pki, "evil-td", "spiffe://evil.test/ns/reports/sa/a"), node("a", "reports", false), codes.PermissionDenied, "trust domain is not"},
		{"Common Name only", client(pki, "a"), node("a", "reports", false), codes.PermissionDenied, "0 URI SANs"},
		{"two identities", client(pki, "two", spiffe("reports", "a"), spiffe("reports", "b")), node("b", "reports", false), codes.PermissionDenied, "2 URI SANs"},
		{"not a node identity", client(pki, "shape", "spiffe://"+trustDomain+"/reports/a"), node("a", "reports", false), codes.PermissionDenied, "path is not"},
		{"no node at all", client(pki, "empty", spiffe("reports", "a")), nil, codes.PermissionDenied, "carries no node"},
		{"node a with its certificate", client(pki, "a-ok", spiffe("reports", "a")), node("a", "reports", false), codes.OK, ""},
		{"node a's collector with the same identity", client(pki, "a-collector", spiffe("reports", "a")), node("a", "reports", true), codes.OK, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := ask(t, dial(t, addr, c.tls), c.node)
			if got := status.Code(err); got != c.code {
				t.Fatalf("status %v (%v), want %v", got, err, c.code)
			}
			if c.code != codes.OK {
				if resp != nil {
					t.Fatalf("refused client got %v", resp)
				}
				// The server logs a refused handshake on its own goroutine,
				// which may come after the client has seen the refusal.
				for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), c.logged); time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("refusal not logged with %q:\n%s", c.logged, logs)
					}
				}
				return
			}
			if len(resp.Resources) != 1 || resp.VersionInfo == "" {
				t.Fatalf("response %v", resp)
			}
		})
	}
	known := s.NodeVersions()
	if len(known) != 2 || known["a"][0] == "" || known["a#collector"][0] == "" {
		t.Fatalf("known nodes %v: want only a and a#collector (nothing built for a claimed node)", known)
	}
	if _, err := s.cache.GetSnapshot("b"); err == nil {
		t.Fatal("a snapshot exists for the node a stranger claimed")
	}
	rec := httptest.NewRecorder()
	s.Metrics(rec, nil)
	// gRPC clients may retry a refused handshake: at least one per case.
	if n := metricValue(t, rec.Body.String(), "asyncmesh_controlplane_tls_handshake_failures_total"); n < 2 {
		t.Errorf("handshake failures %d, want 2 or more", n)
	}
	if n := metricValue(t, rec.Body.String(), "asyncmesh_controlplane_streams_refused_total"); n != 8 {
		t.Errorf("refused streams %d, want 8", n)
	}
}

// TestMutualTLSNodeSwitchAndDelta: a client that asked as its own node and
// then as another on the same stream, or that asks over delta xDS, is held
// to its certificate too.
func TestMutualTLSNodeSwitchAndDelta(t *testing.T) {
	dir := t.TempDir()
	pki, _ := xdstest.NewPKI(dir, "mesh")
	srvCert, srvKey, _ := pki.Server("controlplane", "127.0.0.1")
	c, k, _ := pki.Client("a", spiffe("reports", "a"))
	s, addr, _ := newTestServer(t, func(s *Server) error {
		return s.UseTLS(TLSFiles{Cert: srvCert, Key: srvKey, ClientCA: pki.CAFile})
	})
	conn := dial(t, addr, clientTLS(t, pki.CAFile, c, k))

	a := openADS(t, conn, node("a", "reports", false))
	defer a.cancel()
	resp, err := a.recv(t)
	if err != nil {
		t.Fatal(err)
	}
	a.Send(&discovery.DiscoveryRequest{Node: node("b", "billing", false), TypeUrl: resourceType,
		ResourceNames: []string{FilterName}, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
	if _, err := a.recv(t); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("switching node on the stream: %v, want PermissionDenied", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d.Send(&discovery.DeltaDiscoveryRequest{Node: node("b", "billing", false), TypeUrl: resourceType, ResourceNamesSubscribe: []string{FilterName}})
	if _, err := d.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delta as another node: %v, want PermissionDenied", err)
	}
	if _, ok := s.NodeVersions()["b"]; ok {
		t.Fatal("node b was built")
	}
}

// TestTLSFilesReloaded: a renewed server certificate is served from the next
// handshake on, without a restart.
func TestTLSFilesReloaded(t *testing.T) {
	dir := t.TempDir()
	pki, _ := xdstest.NewPKI(dir, "mesh")
	srvCert, srvKey, _ := pki.Server("controlplane", "127.0.0.1")
	_, addr, _ := newTestServer(t, func(s *Server) error { return s.UseTLS(TLSFiles{Cert: srvCert, Key: srvKey}) })
	serial := func() *big.Int {
		var got *big.Int
		cfg := clientTLS(t, pki.CAFile, "", "")
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { got = cs.PeerCertificates[0].SerialNumber; return nil }
		if _, err := ask(t, dial(t, addr, cfg), node("a", "reports", false)); err != nil {
			t.Fatal(err) // server-only TLS: no client certificate needed
		}
		return got
	}
	first := serial()
	if _, _, err := pki.Server("controlplane", "127.0.0.1"); err != nil { // same files, new certificate
		t.Fatal(err)
	}
	if second := serial(); second.Cmp(first) == 0 {
		t.Fatalf("still serving certificate %v after it was replaced", first)
	}
}

func TestUseTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	pki, _ := xdstest.NewPKI(dir, "mesh")
	cert, key, _ := pki.Server("controlplane", "127.0.0.1")
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	s, err := NewServer(writeGood(t), wasmOpts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    TLSFiles
		want string
	}{
		{"key missing", TLSFiles{Cert: cert}, "both a certificate and a key"},
		{"cert and key swapped", TLSFiles{Cert: key, Key: cert}, "loading the server certificate"},
		{"client CA not PEM", TLSFiles{Cert: cert, Key: key, ClientCA: notPEM}, "no PEM certificate"},
		{"client CA missing", TLSFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "nope.pem")}, "no such file"},
		{"trust domain without client CA", TLSFiles{Cert: cert, Key: key, TrustDomain: "x"}, "needs a client CA"},
		{"bad trust domain", TLSFiles{Cert: cert, Key: key, ClientCA: pki.CAFile, TrustDomain: "Evil.Test"}, "trust domain"},
	} {
		if err := s.UseTLS(c.f); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func metricValue(t *testing.T, text, name string) int {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in\n%s", name, text)
	return 0
}

func writeGood(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(good), 0o600)
	return path
}

func TestParseIdentity(t *testing.T) {
	for _, c := range []struct {
		in, td string
		want   Identity
		err    string
	}{
		{in: "spiffe://cluster.local/ns/billing/sa/invoices", want: Identity{SPIFFEID: "spiffe://cluster.local/ns/billing/sa/invoices", TrustDomain: "cluster.local", Cluster: "billing", NodeID: "invoices"}},
		{in: "spiffe://cluster.local/ns/billing/sa/invoices", td: "cluster.local", want: Identity{SPIFFEID: "spiffe://cluster.local/ns/billing/sa/invoices", TrustDomain: "cluster.local", Cluster: "billing", NodeID: "invoices"}},
		{in: "spiffe://other.local/ns/billing/sa/invoices", td: "cluster.local", err: "trust domain is not"},
		{in: "https://cluster.local/ns/billing/sa/invoices", err: "scheme"},
		{in: "spiffe://Cluster.local/ns/billing/sa/invoices", err: "lowercase"},
		{in: "spiffe://cluster.local:8443/ns/billing/sa/invoices", err: "port"},
		{in: "spiffe://user@cluster.local/ns/billing/sa/invoices", err: "user"},
		{in: "spiffe://cluster.local/ns/billing/sa/invoices?x=1", err: "query"},
		{in: "spiffe://cluster.local/ns/billing/sa/invoices#f", err: "fragment"},
		{in: "spiffe://cluster.local/ns/billing/sa/", err: "path segment"},
		{in: "spiffe://cluster.local/ns/../sa/invoices", err: "path segment"},
		{in: "spiffe://cluster.local/ns/bill%2Fing/sa/invoices", err: "percent-encoded"},
		{in: "spiffe://cluster.local/ns/billing/sa/invoices/extra", err: "path is not"},
		{in: "spiffe://cluster.local/sa/invoices/ns/billing", err: "path is not"},
		{in: "spiffe:///ns/billing/sa/invoices", err: "trust domain"},
		{in: "spiffe:cluster.local/ns/billing/sa/invoices", err: "parts"},
	} {
		got, err := ParseIdentity(c.in, c.td)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v", c.in, got, err)
		}
	}
}

// FuzzParseIdentity: any URI SAN a client certificate carries parses or is
// refused without a panic, and an accepted one is exactly the canonical
// spiffe://<td>/ns/<cluster>/sa/<node-id> of what it grants.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/billing/sa/invoices", "spiffe://a/ns/b/sa/c?d", "spiffe://a/ns/%2e%2e/sa/c", "spiffe://a:1/ns/b/sa/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s, "")
		if err != nil {
			return
		}
		if want := "spiffe://" + id.TrustDomain + "/ns/" + id.Cluster + "/sa/" + id.NodeID; id.SPIFFEID != want || s != want {
			t.Fatalf("%q accepted as %+v", s, id)
		}
	})
}
