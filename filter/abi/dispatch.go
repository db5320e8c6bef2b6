package abi

import "fmt"

// Dispatcher routes host callbacks to root and HTTP contexts. The wasm exports
// forward to the package's Default dispatcher; tests make their own with a FakeHost.
//
// A callback for an unknown context, or a panic inside filter logic, is logged and
// answered with Continue: the filter fails open for the stream rather than trapping
// the VM, which would fail every stream on the worker.
type Dispatcher struct {
	host    *trackingHost
	newRoot func(Host) RootContext

	roots   map[uint32]RootContext
	streams map[uint32]stream
}

type stream struct {
	root uint32
	ctx  HTTPContext
}

// trackingHost remembers which stream made each dispatch_http_call, because the
// answer is delivered to the root context with only the call's token.
type trackingHost struct {
	Host
	current uint32
	calls   map[uint32]uint32 // token -> stream id
}

func (h *trackingHost) HTTPCall(cluster string, headers []Header, body []byte, timeoutMillis uint32) (uint32, error) {
	token, err := h.Host.HTTPCall(cluster, headers, body, timeoutMillis)
	if err == nil {
		h.calls[token] = h.current
	}
	return token, err
}

// NewDispatcher returns a dispatcher that creates root contexts with newRoot.
func NewDispatcher(host Host, newRoot func(Host) RootContext) *Dispatcher {
	return &Dispatcher{
		host:    &trackingHost{Host: host, calls: map[uint32]uint32{}},
		newRoot: newRoot,
		roots:   map[uint32]RootContext{},
		streams: map[uint32]stream{},
	}
}

func (d *Dispatcher) recoverTo(where string, result *Action) {
	if r := recover(); r != nil {
		d.host.Log(LogError, fmt.Sprintf("asyncmesh: panic in %s: %v", where, r))
		if result != nil {
			*result = Continue
		}
	}
}

// OnContextCreate creates a root context (parent 0) or an HTTP stream context.
func (d *Dispatcher) OnContextCreate(id, parent uint32) {
	defer d.recoverTo("context_create", nil)
	if parent == 0 {
		d.roots[id] = d.newRoot(d.host)
		return
	}
	root, ok := d.roots[parent]
	if !ok {
		d.host.Log(LogError, fmt.Sprintf("asyncmesh: context %d has unknown root %d", id, parent))
		return
	}
	d.host.current = id
	d.streams[id] = stream{root: parent, ctx: root.NewHTTPContext(id)}
}

// OnConfigure hands the plugin configuration to the root context.
func (d *Dispatcher) OnConfigure(rootID uint32, size int) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			d.host.Log(LogError, fmt.Sprintf("asyncmesh: panic in configure: %v", r))
			ok = false
		}
	}()
	root, found := d.roots[rootID]
	if !found {
		return false
	}
	var cfg []byte
	if size > 0 {
		b, err := d.host.Buffer(PluginConfiguration, 0, size)
		if err != nil {
			d.host.Log(LogError, "asyncmesh: reading plugin configuration: "+err.Error())
			return false
		}
		cfg = b
	}
	return root.OnConfigure(cfg)
}

func (d *Dispatcher) stream(id uint32) (HTTPContext, bool) {
	s, ok := d.streams[id]
	if ok {
		d.host.current = id
	}
	return s.ctx, ok
}

// OnRequestHeaders forwards proxy_on_request_headers.
func (d *Dispatcher) OnRequestHeaders(id uint32, n int, eos bool) (a Action) {
	defer d.recoverTo("request_headers", &a)
	if s, ok := d.stream(id); ok {
		return s.OnRequestHeaders(n, eos)
	}
	return Continue
}

// OnRequestBody forwards proxy_on_request_body.
func (d *Dispatcher) OnRequestBody(id uint32, size int, eos bool) (a Action) {
	defer d.recoverTo("request_body", &a)
	if s, ok := d.stream(id); ok {
		return s.OnRequestBody(size, eos)
	}
	return Continue
}

// OnRequestTrailers forwards proxy_on_request_trailers.
func (d *Dispatcher) OnRequestTrailers(id uint32, n int) (a Action) {
	defer d.recoverTo("request_trailers", &a)
	if s, ok := d.stream(id); ok {
		return s.OnRequestTrailers(n)
	}
	return Continue
}

// OnResponseHeaders forwards proxy_on_response_headers.
func (d *Dispatcher) OnResponseHeaders(id uint32, n int, eos bool) (a Action) {
	defer d.recoverTo("response_headers", &a)
	if s, ok := d.stream(id); ok {
		return s.OnResponseHeaders(n, eos)
	}
	return Continue
}

// OnHTTPCallResponse routes the answer of a dispatch_http_call to the stream that
// made it, after making that stream the effective context. A stream that already
// ended (the caller hung up) is skipped.
func (d *Dispatcher) OnHTTPCallResponse(rootID, token uint32, numHeaders, bodySize, numTrailers int) {
	defer d.recoverTo("http_call_response", nil)
	id, ok := d.host.calls[token]
	if !ok {
		return
	}
	delete(d.host.calls, token)
	s, ok := d.stream(id)
	if !ok {
		return
	}
	if err := d.host.SetEffectiveContext(id); err != nil {
		d.host.Log(LogWarn, fmt.Sprintf("asyncmesh: set_effective_context %d: %v", id, err))
		return
	}
	s.OnHTTPCallResponse(token, numHeaders, bodySize, numTrailers)
}

// OnDelete forgets a context and any calls it still had in flight.
func (d *Dispatcher) OnDelete(id uint32) {
	delete(d.streams, id)
	delete(d.roots, id)
	for token, sid := range d.host.calls {
		if sid == id {
			delete(d.host.calls, token)
		}
	}
}

// Streams reports how many stream contexts are live (for leak tests).
func (d *Dispatcher) Streams() int { return len(d.streams) }
