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
// replaying an accepted request: it passes to the service once, with the very
// body that was signed (see replay.go and internal/replay).
//
// # Replay secrets
//
// The environment variable that replaySecretEnv names (exposed to the VM by
// vm_config.environment_variables.host_env_keys) holds the current secret,
// optionally followed by a comma and the previous one while it rotates; each
// at least 32 bytes. A secret that is set but too short is a configuration
// error (the configuration is refused, so Envoy keeps the previous one or
// does not start); no secret at all leaves the filter usable for sync routes
// and refuses every replay.
//
// # Cost of the pass-through path
//
// Most requests never get here: Envoy's own matcher sends only the requests a
// rule may make async, replays and routes that ask for it to this filter,
// and tags the rest with its own header filters (controlplane/xds,
// PassThroughFilter; docs/rules.md). What reaches the filter but passes
// through (a request the superset took that no rule makes async after all)
// is counted in crossings, since in Envoy's V8 every callback into the
// module and every host call costs microseconds: the callbacks
// context_create, request_headers, response_headers and delete (on_done and
// the others are not exported), one header read (get_header_map_pairs, which
// calls back into the module to allocate), up to two request header writes
// (traceparent when absent, x-async-trace-id) and one response header
// write. make bench measured that path at about 60 µs of Envoy CPU per
// request over an empty Wasm filter, itself about 0.9× of Envoy's capacity
// on the 2-core bench machine; the native chains cost a fraction of it
// (bench/REPORT.md). Replacing the two request writes with one
// set_header_map_pairs call, and raising GOGC, were tried and measured no
// better.
package main

import (
	"os"

	"github.com/asyncmesh/asyncmesh/filter/abi"
	"github.com/asyncmesh/asyncmesh/internal/replay"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

func main() {}

// plugin is the root context: the parsed configuration shared by all streams of
// one VM.
type plugin struct {
	host          abi.Host
	cfg           *rules.Config
	replaySecrets [][]byte
	shared        sharedData
	needsRoute    bool
}

func newPlugin(h abi.Host) abi.RootContext { return &plugin{host: h, shared: sharedData{h}} }

// loadReplaySecrets reads the replay secrets from env and prepares the table
// of spent signatures; false refuses the configuration (a secret set but
// unusable), after a log line that says why.
func (p *plugin) loadReplaySecrets(env string) ([][]byte, bool) {
	var value string
	if env != "" {
		value = os.Getenv(env)
	}
	if value == "" {
		p.host.Log(abi.LogWarn, "asyncmesh: no replay secret (replaySecretEnv unset or empty): replays are refused, async requests cannot complete")
		return nil, true
	}
	secrets, err := replay.ParseSecrets(value)
	if err != nil {
		p.host.Log(abi.LogError, "asyncmesh: replaySecretEnv "+env+": "+err.Error()+"; configuration refused")
		return nil, false
	}
	if err := replay.Prepare(p.shared); err != nil {
		// Replays will be refused (Use fails closed) until shared data works.
		p.host.Log(abi.LogError, "asyncmesh: preparing the replay table in shared data: "+err.Error()+"; replays are refused")
	}
	return secrets, true
}

// OnConfigure parses the configuration; a bad one is rejected (Envoy keeps the
// previous one, or refuses to start) with a log line naming the field.
func (p *plugin) OnConfigure(data []byte) bool {
	cfg, err := rules.Parse(data)
	if err != nil {
		p.host.Log(abi.LogError, "asyncmesh: "+err.Error())
		return false
	}
	secrets, ok := p.loadReplaySecrets(cfg.ReplaySecretEnv)
	if !ok {
		return false
	}
	p.cfg, p.replaySecrets, p.needsRoute = cfg, secrets, cfg.NeedsRoute()
	p.host.Log(abi.LogInfo, "asyncmesh: configured with "+itoa(len(cfg.Rules))+" rules")
	return true
}

func (p *plugin) NewHTTPContext(id uint32) abi.HTTPContext {
	return &stream{p: p, host: p.host}
}
