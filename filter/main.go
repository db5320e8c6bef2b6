// Command filter is the asyncmesh proxy-wasm filter. Build it with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o asyncmesh.wasm ./filter
//
// and load it in Envoy's HTTP wasm filter (runtime envoy.wasm.runtime.v8) with the
// plugin configuration of internal/rules.Config as a JSON string.
//
// On every request it ensures a W3C traceparent, sets x-async-trace-id on the
// request and the response, and strips caller-sent x-async-* headers. A request a
// rule marks async (or opt-in with Prefer: respond-async) is buffered, handed to the
// collector with dispatch_http_call on the configured cluster, and answered 202. A
// request carrying a valid x-async-replay signature is the collector's worker
// replaying an accepted request: it passes to the service.
//
// # Cost of the pass-through path
//
// In Envoy's V8 every callback into the module and every host call costs
// microseconds, so the pass-through path is counted in crossings: the
// callbacks context_create, request_headers, response_headers and delete
// (on_done and the others are not exported), one header read
// (get_header_map_pairs, which calls back into the module to allocate), up
// to two request header writes (traceparent when absent, x-async-trace-id)
// and one response header write. make bench measures it against Envoy
// without the filter and with an empty Wasm filter (the same callbacks
// returning at once): on the 2-core bench machine the empty filter already
// costs about 0.91× of Envoy's capacity, and what this filter does on top
// of it (the header read and three writes) about 60 µs of Envoy CPU per
// request. Replacing the two request writes with one set_header_map_pairs
// call, and raising GOGC, were tried and measured no better.
package main

import (
	"os"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func main() {}

// plugin is the root context: the parsed configuration shared by all streams of
// one VM.
type plugin struct {
	host         abi.Host
	cfg          *rules.Config
	replaySecret []byte
	needsRoute   bool
}

func newPlugin(h abi.Host) abi.RootContext { return &plugin{host: h} }

// OnConfigure parses the configuration; a bad one is rejected (Envoy keeps the
// previous one, or refuses to start) with a log line naming the field.
func (p *plugin) OnConfigure(data []byte) bool {
	cfg, err := rules.Parse(data)
	if err != nil {
		p.host.Log(abi.LogError, "asyncmesh: "+err.Error())
		return false
	}
	var secret []byte
	if cfg.ReplaySecretEnv != "" {
		secret = []byte(os.Getenv(cfg.ReplaySecretEnv))
	}
	if len(secret) == 0 {
		p.host.Log(abi.LogWarn, "asyncmesh: no replay secret (replaySecretEnv unset or empty): replays are refused, async requests cannot complete")
	}
	p.cfg, p.replaySecret, p.needsRoute = cfg, secret, cfg.NeedsRoute()
	p.host.Log(abi.LogInfo, "asyncmesh: configured with "+itoa(len(cfg.Rules))+" rules")
	return true
}

func (p *plugin) NewHTTPContext(id uint32) abi.HTTPContext {
	return &stream{p: p, host: p.host}
}
