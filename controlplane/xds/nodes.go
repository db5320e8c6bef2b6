package xds

import (
	"context"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of Server.NodeGrace and Server.MaxNodes.
const (
	DefaultNodeGrace = time.Minute
	DefaultMaxNodes  = 10000
)

// streamKey names a stream: the state-of-the-world and the delta servers
// number their streams independently.
type streamKey struct {
	delta bool
	id    int64
}

func (s *Server) grace() time.Duration {
	if s.NodeGrace > 0 {
		return s.NodeGrace
	}
	return DefaultNodeGrace
}

func (s *Server) maxNodes() int {
	if s.MaxNodes > 0 {
		return s.MaxNodes
	}
	return DefaultMaxNodes
}

// learnLocked registers the node a stream asks as: a node seen for the first
// time gets its snapshot built, and the stream is counted towards it (once,
// whatever the number of requests on it).
func (s *Server) learnLocked(sk streamKey, node *core.Node) (string, *nodeState, error) {
	key := nodeKey{}.ID(node)
	n, ok := s.nodes[key]
	if !ok || n.cluster != node.GetCluster() {
		if !ok {
			if err := s.makeRoomLocked(); err != nil {
				return key, nil, err
			}
		}
		collector := key != node.GetId()
		snap, err := Snapshot(s.file, node.GetId(), node.GetCluster(), s.wasm, !collector)
		if err != nil {
			return key, nil, fmt.Errorf("building the snapshot of node %s: %w", key, err)
		}
		if !ok {
			n = &nodeState{id: node.GetId(), collector: collector}
			s.nodes[key] = n
		}
		// A node that changed cluster gets that cluster's rules (and its
		// acknowledgements start again).
		n.cluster, n.acked = node.GetCluster(), ""
		s.setLocked(key, snap)
		s.log.Info("controlplane: node connected", "node", key, "cluster", n.cluster, "version", n.served)
	}
	if prev, had := s.streams[sk]; !had || prev != key {
		if had {
			s.releaseLocked(prev)
		}
		s.streams[sk] = key
		n.streams++
	}
	return key, n, nil
}

// makeRoomLocked keeps the number of known nodes under MaxNodes: the node
// idle the longest goes first; with none idle, the new node is refused.
func (s *Server) makeRoomLocked() error {
	if len(s.nodes) < s.maxNodes() {
		return nil
	}
	oldest := ""
	for key, n := range s.nodes {
		if n.streams == 0 && (oldest == "" || n.idleSince.Before(s.nodes[oldest].idleSince)) {
			oldest = key
		}
	}
	if oldest == "" {
		s.log.Warn("controlplane: node refused: too many nodes connected", "max_nodes", s.maxNodes())
		return status.Errorf(codes.ResourceExhausted, "the control plane serves %d nodes already", len(s.nodes))
	}
	s.forgetLocked(oldest, "to make room for a new node")
	return nil
}

// releaseLocked uncounts one stream of a node; at none left, the node's grace
// period starts.
func (s *Server) releaseLocked(key string) {
	n, ok := s.nodes[key]
	if !ok {
		return
	}
	if n.streams--; n.streams == 0 {
		n.idleSince = time.Now()
	}
}

func (s *Server) forgetLocked(key, why string) {
	delete(s.nodes, key)
	s.cache.ClearSnapshot(key)
	s.log.Info("controlplane: node forgotten", "node", key, "why", why)
}

// onStreamClosed uncounts a closed stream from the node it asked as.
func (s *Server) onStreamClosed(delta bool) func(int64, *core.Node) {
	return func(id int64, node *core.Node) {
		s.mu.Lock()
		defer s.mu.Unlock()
		sk := streamKey{delta, id}
		key, ok := s.streams[sk]
		if !ok {
			return // it never asked (or was refused)
		}
		delete(s.streams, sk)
		s.releaseLocked(key)
		s.log.Info("controlplane: node stream closed", "node", key, "delta", delta)
	}
}

// sweep forgets nodes whose last stream closed more than NodeGrace ago, their
// snapshot, metrics and all: node ids come and go (pods), and the server
// must not keep every one it ever saw. A node that comes back later is built
// anew at its first request.
func (s *Server) sweep(ctx context.Context) {
	tick := min(max(s.grace()/4, 10*time.Millisecond), 10*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			for key, n := range s.nodes {
				if n.streams == 0 && !n.idleSince.IsZero() && now.Sub(n.idleSince) >= s.grace() {
					s.forgetLocked(key, "no stream for the grace period")
				}
			}
			s.mu.Unlock()
		}
	}
}
