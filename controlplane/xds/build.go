// Package xds builds and serves the control plane's xDS resources with
// go-control-plane: the filter's configuration as an ECDS TypedExtensionConfig
// per sidecar, over ADS, from a snapshot cache keyed by Envoy node id.
//
// Builders here are pure functions of the rules file and the node; the
// server (server.go) owns the cache, the reload and the metrics.
//
// # Authenticated nodes
//
// Rules are targeted by node id and cluster, and what a node receives names
// the routes, callbacks and secret references meant for it, so the node a
// client asks as is a confidentiality boundary only if the server checks
// it. Server.UseTLS (controlplane serve -tls-cert, -tls-key) serves xDS over
// TLS; with a client CA (-client-ca) every client must present a
// certificate from it, and its one URI SAN, a SPIFFE ID of the shape Istio
// and SPIRE issue,
//
//	spiffe://<trust-domain>/ns/<cluster>/sa/<node-id>
//
// must name exactly the node id and cluster it asks as (see Identity;
// -trust-domain pins the trust domain). A client without a certificate, or
// with one from another CA, fails the handshake; one whose certificate names
// another node, or none, has its stream ended with PermissionDenied before
// anything is built for the node it claimed (state of the world or delta,
// also when a later request on the stream switches node). Every refusal is
// logged and counted in /metrics. A collector presents its sidecar's
// identity (collector/xdsrules). The files are read again when they change.
// The working example, with the Envoy bootstrap, is e2e/xdstls_test.go.
//
// # Nodes that went away
//
// A node is known while a stream asks as it and for Server.NodeGrace
// (-node-grace, 1 minute) after its last stream closed; then its snapshot,
// its cache status and its metrics are dropped, and it is built anew if it
// comes back. At most Server.MaxNodes (-max-nodes, 10000) are known: past
// that the node idle the longest is forgotten first, and with none idle a
// new node is refused (ResourceExhausted).
package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	wasm "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// FilterName is the name of the ECDS resource; the HTTP filter's
// config_discovery in the Envoy bootstrap asks for it.
const FilterName = "asyncmesh"

// WasmOptions say where each Envoy finds the filter's code.
type WasmOptions struct {
	// Path of asyncmesh.wasm on the Envoy's machine.
	Path string
	// Env lists Envoy environment variables exposed to the VM (the replay
	// secret's variable is added from the rules file).
	Env []string
}

// FilterConfig returns the ECDS resource that configures the filter with
// cfg: the Wasm filter behind Envoy's own matcher, which tags the requests no
// rule can make async without entering the VM (PassThroughFilter).
func FilterConfig(cfg *rules.Config, w WasmOptions) (*core.TypedExtensionConfig, error) {
	wf, err := WasmFilter(cfg, w)
	if err != nil {
		return nil, err
	}
	return &core.TypedExtensionConfig{Name: FilterName, TypedConfig: anyOf(PassThroughFilter(cfg, anyOf(wf)))}, nil
}

// WasmFilter returns the Wasm filter's own configuration. It lets the
// filter stop iteration in its headers callback
// (allow_on_headers_stop_iteration, holdHeaders), so the sidecar needs no
// buffer filter.
func WasmFilter(cfg *rules.Config, w WasmOptions) (*wasmfilter.Wasm, error) {
	c := *cfg
	c.HoldHeaders = true
	js, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encoding the filter configuration: %w", err)
	}
	env := append([]string(nil), w.Env...)
	if cfg.ReplaySecretEnv != "" {
		env = append(env, cfg.ReplaySecretEnv)
	}
	return &wasmfilter.Wasm{Config: &wasm.PluginConfig{
		Name: FilterName, RootId: FilterName, Configuration: anyOf(wrapperspb.String(string(js))),
		AllowOnHeadersStopIteration: wrapperspb.Bool(true),
		Vm: &wasm.PluginConfig_VmConfig{VmConfig: &wasm.VmConfig{
			VmId:    FilterName,
			Runtime: "envoy.wasm.runtime.v8",
			Code: &core.AsyncDataSource{Specifier: &core.AsyncDataSource_Local{
				Local: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: w.Path}}}},
			EnvironmentVariables: &wasm.EnvironmentVariables{HostEnvKeys: env},
		}},
	}}, nil
}

// Snapshot returns the snapshot of one node: its filter configuration and,
// when the file has a sidecar: section (and the node is an Envoy, not a
// collector), the sidecar's listener, routes and clusters; versioned by a hash
// of its content and checked with Consistent.
func Snapshot(f *rulesfile.File, nodeID, cluster string, w WasmOptions, withSidecar bool) (*cache.Snapshot, error) {
	ext, err := FilterConfig(f.ForNode(nodeID, cluster), w)
	if err != nil {
		return nil, err
	}
	res := map[resource.Type][]types.Resource{resource.ExtensionConfigType: {ext}}
	if f.Sidecar != nil && withSidecar {
		side, err := sidecarResources(f)
		if err != nil {
			return nil, err
		}
		for t, rs := range side {
			res[t] = rs
		}
	}
	version, err := contentVersion(res)
	if err != nil {
		return nil, err
	}
	snap, err := cache.NewSnapshot(version, res)
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot for node %s: %w", nodeID, err)
	}
	return snap, nil
}

// contentVersion is a short hash of the resources' deterministic encoding, in
// a fixed order: the same rules give the same version on every replica.
func contentVersion(res map[resource.Type][]types.Resource) (string, error) {
	typesInOrder := make([]string, 0, len(res))
	for t := range res {
		typesInOrder = append(typesInOrder, t)
	}
	slices.Sort(typesInOrder)
	h := sha256.New()
	for _, t := range typesInOrder {
		h.Write([]byte(t))
		for _, r := range res[t] {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				return "", err
			}
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
