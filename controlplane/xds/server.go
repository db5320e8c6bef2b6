package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extensiongrpc "github.com/envoyproxy/go-control-plane/envoy/service/extension/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// Server serves the rules file to Envoys over ADS and reloads it.
type Server struct {
	// NodeGrace is how long a node is remembered (its snapshot and metrics)
	// after its last stream closed (DefaultNodeGrace when 0). Set before Serve.
	NodeGrace time.Duration
	// MaxNodes bounds the nodes known at once (DefaultMaxNodes when 0): past
	// it, the node idle the longest is forgotten, or with none idle the new
	// node is refused (ResourceExhausted). Set before Serve.
	MaxNodes int

	path  string
	wasm  WasmOptions
	log   *slog.Logger
	cache cache.SnapshotCache
	tls   *serverTLS // nil: plaintext

	mu      sync.Mutex
	file    *rulesfile.File // last good
	nodes   map[string]*nodeState
	streams map[streamKey]string // open stream → the node key it asks as
	reloads struct{ ok, failed int }
	lastErr string
}

// nodeState is what the metrics show of one node.
type nodeState struct {
	id        string // Envoy node id (a collector gives its sidecar's)
	cluster   string
	collector bool
	served    string // version of the snapshot set for it
	acked     string // version it last acknowledged
	nacks     int
	lastNack  string
	streams   int       // open streams asking as this node
	idleSince time.Time // when streams last fell to 0
}

// NewServer loads the rules file at path; a bad file is an error here (there
// is no last good snapshot to keep yet).
func NewServer(path string, w WasmOptions, log *slog.Logger) (*Server, error) {
	f, err := rulesfile.Load(path)
	if err != nil {
		return nil, err
	}
	s := &Server{path: path, wasm: w, log: log, file: f, nodes: map[string]*nodeState{}, streams: map[streamKey]string{}}
	s.cache = cache.NewSnapshotCache(true, nodeKey{}, nil)
	return s, nil
}

// Reload reads the rules file again. A good file replaces the snapshots of
// every known node; a bad one changes nothing and is logged and counted.
func (s *Server) Reload() error {
	f, err := rulesfile.Load(s.path)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.reloads.failed++
		s.lastErr = err.Error()
		s.log.Error("controlplane: rules file refused; keeping the last good rules", "file", s.path, "err", err)
		return err
	}
	// Build every snapshot first: publish all or nothing.
	snaps := map[string]*cache.Snapshot{}
	for key, n := range s.nodes {
		snap, err := Snapshot(f, n.id, n.cluster, s.wasm, !n.collector)
		if err != nil {
			s.reloads.failed++
			s.lastErr = err.Error()
			s.log.Error("controlplane: building snapshots; keeping the last good rules", "err", err)
			return err
		}
		snaps[key] = snap
	}
	s.file, s.lastErr = f, ""
	s.reloads.ok++
	for id, snap := range snaps {
		s.setLocked(id, snap)
	}
	s.log.Info("controlplane: rules reloaded", "file", s.path, "rules", len(f.Rules), "nodes", len(snaps))
	return nil
}

func (s *Server) setLocked(id string, snap *cache.Snapshot) {
	if err := s.cache.SetSnapshot(context.Background(), id, snap); err != nil {
		s.log.Error("controlplane: setting snapshot", "node", id, "err", err)
		return
	}
	s.nodes[id].served = snap.GetVersion(resourceType) // one version for all types
}

const resourceType = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"

// nodeKey keys the snapshot cache: the node id, with "#collector" for a
// collector (node metadata asyncmesh.role = collector) that subscribes with
// its sidecar's id, so that both get the same rules and their ACKs are
// tracked apart.
type nodeKey struct{}

func (nodeKey) ID(node *core.Node) string {
	if node.GetMetadata().GetFields()["asyncmesh.role"].GetStringValue() == "collector" {
		return node.GetId() + "#collector"
	}
	return node.GetId()
}

// onRequest learns nodes as they connect (a node's first request gets its
// snapshot built), counts their streams and records ACKs and NACKs.
func (s *Server) onRequest(stream int64, req *discovery.DiscoveryRequest) error {
	node := req.GetNode()
	if node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "discovery request without a node id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, n, err := s.learnLocked(streamKey{false, stream}, node)
	if err != nil {
		return err
	}
	if req.ErrorDetail != nil {
		n.nacks++
		n.lastNack = req.ErrorDetail.GetMessage()
		s.log.Warn("controlplane: node refused the configuration (NACK)", "node", node.Id, "type", req.TypeUrl,
			"version", req.ResponseNonce, "err", n.lastNack)
	} else if req.VersionInfo != "" {
		n.acked = req.VersionInfo
	}
	return nil
}

// onDeltaRequest learns nodes of delta streams as onRequest does (their
// ACKs are not tracked).
func (s *Server) onDeltaRequest(stream int64, req *discovery.DeltaDiscoveryRequest) error {
	node := req.GetNode()
	if node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "discovery request without a node id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _, err := s.learnLocked(streamKey{true, stream}, node)
	return err
}

// UseTLS makes Serve speak TLS with the files f names (and, with a client
// CA, authenticate every node by its certificate; see TLSFiles and
// Identity). It reads them now: a missing or bad file is an error here.
func (s *Server) UseTLS(f TLSFiles) error {
	t, err := newServerTLS(f, s.log)
	if err != nil {
		return err
	}
	s.tls = t
	if f.ClientCA == "" {
		s.log.Warn("controlplane: xDS over TLS without a client CA: any client may ask as any node")
	}
	return nil
}

// Serve runs the ADS (and ECDS) gRPC server on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	xs := serverv3.NewServer(ctx, s.cache, serverv3.CallbackFuncs{
		StreamRequestFunc:      s.onRequest,
		StreamClosedFunc:       s.onStreamClosed(false),
		StreamDeltaRequestFunc: s.onDeltaRequest,
		DeltaStreamClosedFunc:  s.onStreamClosed(true),
	})
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if s.tls != nil {
		opts = append(opts, grpc.Creds(s.tls.credentials()))
		if s.tls.files.ClientCA != "" {
			opts = append(opts, grpc.StreamInterceptor(s.tls.authorize),
				// No unary method is served; refuse any that a later
				// registration would add rather than serve it unchecked.
				grpc.UnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
					return nil, status.Error(codes.PermissionDenied, "no unary xDS method is served")
				}))
		}
	}
	g := grpc.NewServer(opts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(g, xs)
	extensiongrpc.RegisterExtensionConfigDiscoveryServiceServer(g, xs)
	swept := make(chan struct{})
	go func() { s.sweep(ctx); close(swept) }()
	go func() { <-ctx.Done(); g.GracefulStop() }()
	err := g.Serve(ln)
	cancel()
	<-swept
	return err
}

// Metrics writes Prometheus text: reloads, the version served to and
// acknowledged by each node, and its NACKs.
func (s *Server) Metrics(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.Header().Set("content-type", "text/plain; version=0.0.4")
	var b strings.Builder
	fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_reloads_total counter\n")
	fmt.Fprintf(&b, "asyncmesh_controlplane_reloads_total{result=\"ok\"} %d\n", s.reloads.ok)
	fmt.Fprintf(&b, "asyncmesh_controlplane_reloads_total{result=\"refused\"} %d\n", s.reloads.failed)
	fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_rules_file_ok gauge\nasyncmesh_controlplane_rules_file_ok %d\n", btoi(s.lastErr == ""))
	connected := 0
	for _, n := range s.nodes {
		connected += btoi(n.streams > 0)
	}
	fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_nodes gauge\n")
	fmt.Fprintf(&b, "asyncmesh_controlplane_nodes{state=\"connected\"} %d\n", connected)
	fmt.Fprintf(&b, "asyncmesh_controlplane_nodes{state=\"idle\"} %d\n", len(s.nodes)-connected)
	if s.tls != nil {
		fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_tls_handshake_failures_total counter\nasyncmesh_controlplane_tls_handshake_failures_total %d\n", s.tls.handshakeFailures.Load())
		fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_streams_refused_total counter\nasyncmesh_controlplane_streams_refused_total %d\n", s.tls.refused.Load())
	}
	ids := make([]string, 0, len(s.nodes))
	for id := range s.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_node_config gauge\n")
	for _, id := range ids {
		n := s.nodes[id]
		fmt.Fprintf(&b, "asyncmesh_controlplane_node_config{node=%s,cluster=%s,served=%s,acked=%s} 1\n",
			strconv.Quote(id), strconv.Quote(n.cluster), strconv.Quote(n.served), strconv.Quote(n.acked))
	}
	fmt.Fprintf(&b, "# TYPE asyncmesh_controlplane_nacks_total counter\n")
	for _, id := range ids {
		fmt.Fprintf(&b, "asyncmesh_controlplane_nacks_total{node=%s} %d\n", strconv.Quote(id), s.nodes[id].nacks)
	}
	io.WriteString(w, b.String())
}

// NodeStatus is what the control plane knows of one node: the version of
// the rules it was served and the one it last acknowledged (they differ
// while a node applies a change, or for good when it refused one: then
// Nacks and LastNack say why). GET /v1/nodes lists them.
type NodeStatus struct {
	Node      string `json:"node"`
	Cluster   string `json:"cluster"`
	Collector bool   `json:"collector"`
	Served    string `json:"served"`
	Acked     string `json:"acked"`
	Nacks     int    `json:"nacks"`
	LastNack  string `json:"lastNack,omitempty"`
	Connected bool   `json:"connected"`
}

// Status is the body of GET /v1/nodes: every known node, by id, and whether
// the rules file last loaded (a refused edit keeps the last good rules).
type Status struct {
	RulesFileOK bool         `json:"rulesFileOk"`
	RulesError  string       `json:"rulesError,omitempty"`
	Nodes       []NodeStatus `json:"nodes"`
}

// Status returns the nodes' status, sorted by node id.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{RulesFileOK: s.lastErr == "", RulesError: s.lastErr, Nodes: make([]NodeStatus, 0, len(s.nodes))}
	for _, n := range s.nodes {
		st.Nodes = append(st.Nodes, NodeStatus{Node: n.id, Cluster: n.cluster, Collector: n.collector, Served: n.served,
			Acked: n.acked, Nacks: n.nacks, LastNack: n.lastNack, Connected: n.streams > 0})
	}
	sort.Slice(st.Nodes, func(i, j int) bool {
		a, b := st.Nodes[i], st.Nodes[j]
		return a.Node < b.Node || a.Node == b.Node && !a.Collector && b.Collector
	})
	return st
}

// ServeStatus answers GET /v1/nodes with Status as JSON.
func (s *Server) ServeStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Status())
}

// NodeVersions returns node id → acknowledged version (tests, status pages).
func (s *Server) NodeVersions() map[string][2]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][2]string{}
	for id, n := range s.nodes {
		out[id] = [2]string{n.served, n.acked}
	}
	return out
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
