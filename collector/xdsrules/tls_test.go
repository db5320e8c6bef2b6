package xdsrules

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/controlplane/xds/xdstest"
)

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

// TestSubscribeOverMutualTLS: a collector with its sidecar's certificate
// gets that sidecar's rules over mutual TLS; one whose certificate names
// another node gets nothing and says why; one without a client certificate
// never gets past the handshake.
func TestSubscribeOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	pki, err := xdstest.NewPKI(dir, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, _ := pki.Server("controlplane", "localhost")
	path := filepath.Join(dir, "rules.yaml")
	os.WriteFile(path, []byte(rulesYAML), 0o600)
	s, err := xds.NewServer(path, xds.WasmOptions{Path: "/x.wasm"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UseTLS(xds.TLSFiles{Cert: srvCert, Key: srvKey, ClientCA: pki.CAFile}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { s.Serve(ctx, ln); close(served) }()
	defer func() { cancel(); <-served }()
	// Dialled by name: the server certificate is for localhost, not the IP.
	addr := strings.Replace(ln.Addr().String(), "127.0.0.1", "localhost", 1)

	run := func(t *testing.T, files TLSFiles) (*Rules, *syncBuffer) {
		logs := &syncBuffer{}
		log := slog.New(slog.NewTextHandler(logs, nil))
		cfg, err := ClientTLS(files, log)
		if err != nil {
			t.Fatal(err)
		}
		r := New(Config{Address: addr, NodeID: "sidecar-1", Cluster: "reports", TLS: cfg, Logger: log})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return r, logs
	}

	t.Run("its sidecar's certificate", func(t *testing.T) {
		cert, key, _ := pki.Client("sidecar-1", "spiffe://asyncmesh.test/ns/reports/sa/sidecar-1")
		r, _ := run(t, TLSFiles{CA: pki.CAFile, Cert: cert, Key: key})
		waitFor(t, r, "rules over mutual TLS", func() bool { return callbackOf(r, "report") == "http://one.example/cb" })
		waitFor(t, r, "the ACK", func() bool { return s.NodeVersions()["sidecar-1#collector"][1] == r.Version() })
	})
	for _, c := range []struct {
		name, uri, logged string
	}{
		{"another node's certificate", "spiffe://asyncmesh.test/ns/reports/sa/sidecar-2", "PermissionDenied"},
		{"another cluster's certificate", "spiffe://asyncmesh.test/ns/billing/sa/sidecar-1", "PermissionDenied"},
		{"no client certificate", "", "Unavailable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			files := TLSFiles{CA: pki.CAFile}
			if c.uri != "" {
				files.Cert, files.Key, _ = pki.Client(strings.ReplaceAll(c.name, " ", "-"), c.uri)
			}
			r, logs := run(t, files)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), c.logged) {
				if time.Now().After(deadline) {
					t.Fatalf("no %s logged:\n%s", c.logged, logs)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if r.Version() != "" {
				t.Fatalf("got rules version %s", r.Version())
			}
		})
	}
	if v := s.NodeVersions(); len(v) != 1 {
		t.Fatalf("nodes %v: want only sidecar-1#collector", v)
	}
}

func TestClientTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	pki, _ := xdstest.NewPKI(dir, "mesh")
	cert, key, _ := pki.Client("c", "spiffe://x/ns/a/sa/b")
	for _, c := range []struct {
		name string
		f    TLSFiles
		want string
	}{
		{"no CA", TLSFiles{Cert: cert, Key: key}, "CA that verifies"},
		{"cert without key", TLSFiles{CA: pki.CAFile, Cert: cert}, "both"},
		{"CA is a key", TLSFiles{CA: key}, "no PEM certificate"},
		{"swapped", TLSFiles{CA: pki.CAFile, Cert: key, Key: cert}, "loading the client certificate"},
	} {
		if _, err := ClientTLS(c.f, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
