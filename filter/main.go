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
// PassThroughFilter; docs/rules.md). make bench (bench/REPORT.md, "Proxy
// paths") measures both sides in one run, as Envoy CPU per request at
// 1000/s against Envoy without the filter. Over four runs on 2026-12-05
// the native chains left 0.83-0.95× of Envoy's capacity (created and kept
// alike; the quiet run committed there: 0.87× and 0.88×), the untagged
// chain 0.92-0.97× (the matcher and the composite filter's delegation: 6-9
// µs), this filter on every request 0.72-0.79×, an empty Wasm filter
// 0.90-1.00×; the runs differ by ±5%, the two cores being shared with the
// load generator. The rest of the native chains' cost is Envoy's own
// header_to_metadata (a regex rewrite into a metadata Struct) and
// header_mutation (formatters reading that metadata); CEL in their place
// measured 3-4× dearer. What reaches the filter but passes through (a
// request the superset took that no rule makes async after all) is counted in
// crossings, since in Envoy's V8 every callback into the module and every
// host call costs microseconds: the callbacks context_create,
// request_headers, response_headers and delete (on_done and the others are
// not exported), one header read (get_header_map_pairs, which calls back
// into the module to allocate), up to two request header writes
// (traceparent when absent, x-async-trace-id) and one response header
// write. Replacing the two request writes with one set_header_map_pairs
// call, and raising GOGC, were tried and measured no better.
//
// # Cost of an intake
//
// An async request costs Envoy about 300-380 µs of CPU (closed loop, 16
// connections, POST /slow with a 30-byte body, a collector that neither
// executes nor delivers; make bench reports it at a fixed rate). perf
// record -g on Envoy's process put 55 % of it in Envoy's own code (the
// caller's exchange, the dispatch_http_call exchange with the collector, the
// local reply, V8's host-call glue), 25 % in this module's JIT code and 17 %
// in the kernel. Encoding the envelope (encoding/json, by reflection, in
// V8) is about 18 µs of it: a build that encoded it four times instead of
// once measured 55 µs more. Halving the intake cost needs Envoy to do the
// hand-over natively: the route sends an async request to the collector
// itself (the body streamed by Envoy, not copied into the VM and base64'd
// into JSON), the VM deciding only on the headers; that changes the
// collector's intake contract and is left for a later step.
//
// # Memory
//
// After 2,000 requests, Envoy at --concurrency 2 with this module held
// about 100 MB more than a plain Envoy (both on the generated bootstrap,
// memory_allocator_manager on; /proc/PID/smaps and Envoy's /memory): about
// 40 MB of heap that V8 allocates for the module, 13-15 MB of allocator
// thread caches left by compiling it, 13 MB of V8 machine code, and one
// linear memory of about 3 MB per VM (four: two workers', the main
// thread's and the configuration's). After make bench's ladder up to
// 8,000/s both Envoys keep more (free pages inside partly used huge pages,
// caches), and the difference measured +100 to +212 MB across runs
// (bench/REPORT.md, "Envoy footprint"). The module's size drives the fixed
// part: this 4.9 MB module (3.1 MB of code) measured +103 MB; a Go module
// that does nothing (the Go runtime and filter/abi only: 2.6 MB, 1.6 MB of
// code) +70 MB; make bench's empty hand-written module (empty-filter.wat)
// about +15 MB, the cost of V8 itself. That is about 11 MB of Envoy RSS per
// MB of module, and the Go runtime alone (1.17 MB of the 3.1 MB of code;
// encoding/json 0.23, regexp 0.26, reflect 0.15, fmt 0.11) is four times
// the 15 MB budget, so trimming packages cannot reach it. What would: a
// compiler that emits small modules (TinyGo, which no package registry
// reachable here serves) or a filter without a runtime.
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
	// callerSANs and callerJWTs say which properties identify callers
	// (some caller is declared by principals, by jwt).
	callerSANs, callerJWTs bool
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
	p.callerSANs, p.callerJWTs = false, false
	for _, c := range cfg.Callers {
		p.callerSANs = p.callerSANs || len(c.Identity.Principals) > 0
		p.callerJWTs = p.callerJWTs || c.Identity.JWT != nil
	}
	p.host.Log(abi.LogInfo, "asyncmesh: configured with "+itoa(len(cfg.Rules))+" rules")
	return true
}

func (p *plugin) NewHTTPContext(id uint32) abi.HTTPContext {
	return &stream{p: p, host: p.host}
}
