//go:build wasip1

package abi

// The exports Envoy calls. Each forwards to the dispatcher made by Run.
//
// Callbacks the filter has no use for (response trailers, response body,
// on_log, on_done) are not exported: the host skips a callback the module
// does not export, and every call into the VM costs a few microseconds on
// each stream. (proxy_on_delete stays: it frees the stream's state however
// the stream ended. proxy_on_request_trailers too: the host calls it only
// for requests that have trailers, and a replay's body check needs to see
// them, since a body followed by trailers never ends in a body callback.)

var dispatcher *Dispatcher

// Run installs newRoot as the plugin of this module. Call it from main's init:
// it makes no host call, as _initialize allows none.
func Run(newRoot func(Host) RootContext) {
	dispatcher = NewDispatcher(wasmHost{}, newRoot)
}

//go:wasmexport proxy_abi_version_0_2_1
func proxyABIVersion() {}

//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) *byte {
	if size == 0 {
		size = 1
	}
	buf := make([]byte, size)
	return &buf[0]
}

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(id, parent uint32) { dispatcher.OnContextCreate(id, parent) }

//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(rootID uint32, size int32) bool { return true }

//go:wasmexport proxy_on_configure
func proxyOnConfigure(rootID uint32, size int32) bool {
	return dispatcher.OnConfigure(rootID, int(size))
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id uint32, n int32, eos bool) Action {
	return dispatcher.OnRequestHeaders(id, int(n), eos)
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(id uint32, size int32, eos bool) Action {
	return dispatcher.OnRequestBody(id, int(size), eos)
}

//go:wasmexport proxy_on_request_trailers
func proxyOnRequestTrailers(id uint32, n int32) Action {
	return dispatcher.OnRequestTrailers(id, int(n))
}

//go:wasmexport proxy_on_response_headers
func proxyOnResponseHeaders(id uint32, n int32, eos bool) Action {
	return dispatcher.OnResponseHeaders(id, int(n), eos)
}

//go:wasmexport proxy_on_http_call_response
func proxyOnHTTPCallResponse(rootID, token uint32, numHeaders, bodySize, numTrailers int32) {
	dispatcher.OnHTTPCallResponse(rootID, token, int(numHeaders), int(bodySize), int(numTrailers))
}

//go:wasmexport proxy_on_delete
func proxyOnDelete(id uint32) { dispatcher.OnDelete(id) }
