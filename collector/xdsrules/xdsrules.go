// Package xdsrules subscribes a collector to the control plane over ADS: it
// asks for the same ECDS resource its sidecar's Envoy gets (the filter's
// configuration, named "asyncmesh"), ACKs good versions and NACKs bad ones,
// and keeps the last good rules when the control plane goes away,
// resubscribing with backoff until it is back.
//
// The collector identifies itself with its sidecar's node id and cluster and
// the node metadata asyncmesh.role = "collector", so that it gets exactly the
// rules of that sidecar (see controlplane/xds), with the declarations of the
// secrets they reference (SecretDecl).
//
// Over mutual TLS (Config.TLS, made by ClientTLS from the collector's
// -xds-cert, -xds-key and -xds-ca), the control plane takes the node from
// the client certificate: the collector carries its sidecar's identity,
// spiffe://<trust-domain>/ns/<cluster>/sa/<node-id>, and may ask as no other
// node (a refused subscription is logged and retried with backoff, so that
// a renewed certificate is picked up).
package xdsrules

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	matching "github.com/envoyproxy/go-control-plane/envoy/extensions/common/matching/v3"
	composite "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/composite/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/asyncmesh/asyncmesh/internal/retry"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Names shared with the control plane.
const (
	ResourceName = "asyncmesh"
	TypeURL      = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	RoleKey      = "asyncmesh.role"
	RoleValue    = "collector"
)

// Config of a subscription.
type Config struct {
	Address string // host:port of the control plane's xDS server
	NodeID  string // the sidecar's Envoy node id
	Cluster string // the sidecar's Envoy cluster
	// TLS, when set, dials the control plane over TLS (ClientTLS makes one
	// with a client certificate); nil: plaintext.
	TLS    *tls.Config
	Logger *slog.Logger
}

// Rules holds the last good rules received.
type Rules struct {
	cfg     Config
	log     *slog.Logger
	current atomic.Pointer[rules.Config]
	version atomic.Pointer[string]
	mu      sync.Mutex
	updated chan struct{} // closed and replaced on every update
}

// New returns an empty subscription; Run fills it.
func New(cfg Config) *Rules {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Rules{cfg: cfg, log: cfg.Logger.With("xds", cfg.Address), updated: make(chan struct{})}
	empty := ""
	r.version.Store(&empty)
	return r
}

// Rule returns the current rule of that name.
func (r *Rules) Rule(name string) (*rules.Rule, bool) {
	c := r.current.Load()
	if c == nil {
		return nil, false
	}
	for i := range c.Rules {
		if c.Rules[i].Name == name {
			return &c.Rules[i], true
		}
	}
	return nil, false
}

// Caller returns the current declaration of the caller of that name.
func (r *Rules) Caller(name string) (*rules.Caller, bool) {
	c := r.current.Load()
	if c == nil {
		return nil, false
	}
	return c.Caller(name)
}

// SecretDecl returns where the current rules declare a secret (the rules
// file's secrets: section, as the control plane sends it with the rules that
// reference it), for collector.SecretSource: with it, secretRef: partner and
// partner: {env: PARTNER_SECRET} resolve as the file says.
func (r *Rules) SecretDecl(name string) (rules.SecretDecl, bool) {
	c := r.current.Load()
	if c == nil {
		return rules.SecretDecl{}, false
	}
	d, ok := c.Secrets[name]
	return d, ok
}

// Version is the version of the current rules ("" before the first).
func (r *Rules) Version() string { return *r.version.Load() }

// Updated returns a channel closed at the next update.
func (r *Rules) Updated() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.updated
}

// Run subscribes until ctx ends, reconnecting with backoff and full jitter.
func (r *Rules) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if r.cfg.TLS != nil {
		creds = credentials.NewTLS(r.cfg.TLS)
	}
	conn, err := grpc.NewClient(r.cfg.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("xds client for %s: %w", r.cfg.Address, err)
	}
	defer conn.Close()
	client := discovery.NewAggregatedDiscoveryServiceClient(conn)
	b := retry.Backoff{Policy: resubscribe}
	for ctx.Err() == nil {
		start := time.Now()
		err := r.subscribe(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			b.Reset() // it was up for a while
		}
		wait := b.Next()
		r.log.Warn("xdsrules: subscription ended; keeping the last good rules", "err", err, "version", r.Version(), "retry_in", wait)
		if retry.Sleep(ctx, retry.System, wait) != nil {
			return nil
		}
	}
	return nil
}

// resubscribe is the wait before subscribing again: 200ms doubling up to
// 12.8s, full jitter (package retry).
var resubscribe = retry.Exponential{Initial: 200 * time.Millisecond, Max: 12800 * time.Millisecond}

// subscribe runs one ADS stream.
func (r *Rules) subscribe(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	meta, _ := structpb.NewStruct(map[string]any{RoleKey: RoleValue})
	node := &core.Node{Id: r.cfg.NodeID, Cluster: r.cfg.Cluster, Metadata: meta}
	req := &discovery.DiscoveryRequest{Node: node, TypeUrl: TypeURL, ResourceNames: []string{ResourceName}, VersionInfo: r.Version()}
	if err := stream.Send(req); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: TypeURL, ResourceNames: []string{ResourceName}, ResponseNonce: resp.Nonce}
		cfg, err := decode(resp)
		if err != nil {
			r.log.Error("xdsrules: refusing rules (NACK); keeping the last good ones", "version", resp.VersionInfo, "err", err)
			ack.VersionInfo = r.Version()
			ack.ErrorDetail = &status.Status{Code: 3, Message: err.Error()}
		} else {
			r.store(cfg, resp.VersionInfo)
			ack.VersionInfo = resp.VersionInfo
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

func (r *Rules) store(cfg *rules.Config, version string) {
	r.current.Store(cfg)
	r.version.Store(&version)
	r.mu.Lock()
	close(r.updated)
	r.updated = make(chan struct{})
	r.mu.Unlock()
	r.log.Info("xdsrules: rules applied", "version", version, "rules", len(cfg.Rules))
}

// decode extracts and validates the filter configuration of a response.
func decode(resp *discovery.DiscoveryResponse) (*rules.Config, error) {
	for _, any := range resp.Resources {
		var ext core.TypedExtensionConfig
		if err := any.UnmarshalTo(&ext); err != nil {
			return nil, fmt.Errorf("decoding resource: %w", err)
		}
		if ext.Name != ResourceName {
			continue
		}
		w, err := WasmOf(ext.TypedConfig)
		if err != nil {
			return nil, fmt.Errorf("decoding the filter configuration: %w", err)
		}
		var s wrapperspb.StringValue
		if err := w.GetConfig().GetConfiguration().UnmarshalTo(&s); err != nil {
			return nil, fmt.Errorf("decoding the plugin configuration: %w", err)
		}
		return rules.Parse([]byte(s.Value))
	}
	return nil, fmt.Errorf("no %s resource in the response", ResourceName)
}

// WasmOf returns the Wasm filter's configuration in the filter's ECDS
// resource: the composite's "wasm" chain of the matcher the control plane
// wraps it in (controlplane/xds PassThroughFilter), or a bare Wasm filter.
func WasmOf(typed *anypb.Any) (*wasmfilter.Wasm, error) {
	var w wasmfilter.Wasm
	if typed.MessageIs(&w) {
		return &w, typed.UnmarshalTo(&w)
	}
	var m matching.ExtensionWithMatcher
	if err := typed.UnmarshalTo(&m); err != nil {
		return nil, err
	}
	var c composite.Composite
	if err := m.GetExtensionConfig().GetTypedConfig().UnmarshalTo(&c); err != nil {
		return nil, fmt.Errorf("the matcher's extension: %w", err)
	}
	for _, e := range c.GetNamedFilterChains()["wasm"].GetTypedConfig() {
		if e.GetTypedConfig().MessageIs(&w) {
			return &w, e.GetTypedConfig().UnmarshalTo(&w)
		}
	}
	return nil, errors.New("no wasm filter in the composite's wasm chain")
}
