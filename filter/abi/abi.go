// Package abi is the small proxy-wasm ABI layer (version 0.2.1) that the asyncmesh
// filter runs on.
//
// The tetratelabs proxy-wasm-go-sdk builds only with TinyGo and its successor is not
// published as a module, so the filter owns the part of the ABI it needs:
//
//   - Host: the host calls the filter makes (headers, buffers, local responses,
//     dispatch_http_call, properties, shared data, logging). The real implementation, in
//     host_wasip1.go, is a set of //go:wasmimport functions of module "env"; FakeHost
//     (fakehost.go) implements the same interface natively so that every piece of
//     filter logic is tested with plain `go test`.
//   - Dispatcher: the per-context bookkeeping behind the exports the host calls
//     (proxy_on_context_create, proxy_on_request_headers, proxy_on_http_call_response,
//     ...). The //go:wasmexport functions in exports_wasip1.go only forward to it, so
//     the native tests drive exactly the code that runs inside Envoy.
//
// Facts this package relies on (proxy-wasm spec 0.2.1, Envoy's proxy-wasm-cpp-host):
// the host calls `_initialize` (Go's c-shared wasip1 reactor entry) and then
// proxy_on_context_create for the root context, proxy_on_vm_start and
// proxy_on_configure; memory for returned values is obtained from the module through
// proxy_on_memory_allocate; callbacks of dispatch_http_call arrive on the root context
// and the module must call proxy_set_effective_context before acting on the stream
// that made the call; shared data (proxy_get/set_shared_data) is one map per vm_id
// for the whole Envoy process, seen by every worker thread's VM, with a CAS per key
// that is never 0, where set with cas 0 is unconditional and an absent key is always
// created (there is no "set only if absent", and no delete). No package-level
// initialiser may do I/O or host calls.
package abi

import (
	"encoding/binary"
	"errors"
	"strconv"
	"unsafe"
)

// Action is what a stream callback tells the host to do next.
type Action uint32

const (
	// Continue lets the stream go on to the next filter.
	Continue Action = 0
	// Pause stops iteration: for headers StopIteration, for bodies
	// StopIterationAndBuffer (the host keeps buffering the body).
	Pause Action = 1
)

// MapType selects a header map.
type MapType uint32

const (
	RequestHeaders          MapType = 0
	RequestTrailers         MapType = 1
	ResponseHeaders         MapType = 2
	ResponseTrailers        MapType = 3
	HTTPCallResponseHeaders MapType = 6
)

// BufferType selects a buffer.
type BufferType uint32

const (
	RequestBody          BufferType = 0
	ResponseBody         BufferType = 1
	HTTPCallResponseBody BufferType = 4
	VMConfiguration      BufferType = 6
	PluginConfiguration  BufferType = 7
)

// StreamType selects the direction of proxy_continue_stream.
type StreamType uint32

const (
	StreamRequest  StreamType = 0
	StreamResponse StreamType = 1
)

// LogLevel is the proxy-wasm log level.
type LogLevel uint32

const (
	LogTrace LogLevel = iota
	LogDebug
	LogInfo
	LogWarn
	LogError
	LogCritical
)

// Status is the result of a host call.
type Status uint32

const (
	StatusOK              Status = 0
	StatusNotFound        Status = 1
	StatusBadArgument     Status = 2
	StatusEmpty           Status = 7
	StatusCASMismatch     Status = 8
	StatusInternalFailure Status = 10
	StatusUnimplemented   Status = 12
)

// Err returns nil for StatusOK and a descriptive error otherwise.
func (s Status) Err() error {
	switch s {
	case StatusOK:
		return nil
	case StatusNotFound:
		return ErrNotFound
	case StatusBadArgument:
		return errors.New("proxy-wasm: bad argument")
	case StatusEmpty:
		return errors.New("proxy-wasm: empty")
	case StatusCASMismatch:
		return ErrCASMismatch
	case StatusInternalFailure:
		return errors.New("proxy-wasm: internal failure")
	case StatusUnimplemented:
		return errors.New("proxy-wasm: unimplemented")
	}
	return errors.New("proxy-wasm: status " + strconv.Itoa(int(s)))
}

// ErrNotFound is returned when a header, property, buffer or shared data key
// does not exist.
var ErrNotFound = errors.New("proxy-wasm: not found")

// ErrCASMismatch is returned by SetSharedData when the key changed since its
// CAS was read.
var ErrCASMismatch = errors.New("proxy-wasm: cas mismatch")

// Header is one header name/value pair, names lower-case as Envoy keeps them.
type Header = [2]string

// Host is the set of host calls the filter uses.
type Host interface {
	Log(level LogLevel, msg string)
	// Header returns the first value of key in map m.
	Header(m MapType, key string) (string, bool)
	// Headers returns all pairs of map m.
	Headers(m MapType) []Header
	// SetHeader replaces (or adds) key in map m.
	SetHeader(m MapType, key, value string)
	// RemoveHeader removes every value of key in map m.
	RemoveHeader(m MapType, key string)
	// Buffer returns up to max bytes of buffer b from start.
	Buffer(b BufferType, start, max int) ([]byte, error)
	// SendLocalResponse answers the current stream directly.
	SendLocalResponse(status int, details string, body []byte, headers []Header) error
	// HTTPCall dispatches an HTTP request to cluster; the answer arrives on
	// RootContext's stream through Dispatcher.OnHTTPCallResponse.
	HTTPCall(cluster string, headers []Header, body []byte, timeoutMillis uint32) (token uint32, err error)
	// ContinueStream resumes a paused stream.
	ContinueStream(s StreamType) error
	// Property reads a host property by path (for example "route_name").
	Property(path ...string) ([]byte, error)
	// SetEffectiveContext makes id the stream later host calls act on.
	SetEffectiveContext(id uint32) error
	// SharedData returns key's value and CAS in the data shared by every VM
	// of this vm_id in the Envoy process (all worker threads); ErrNotFound
	// when absent.
	SharedData(key string) (value []byte, cas uint32, err error)
	// SetSharedData stores value under key if key's CAS is still cas
	// (ErrCASMismatch otherwise); cas 0 stores unconditionally, and an absent
	// key is always created (proxy-wasm has no "only if absent").
	SetSharedData(key string, value []byte, cas uint32) error
}

// RootContext is the plugin: one per VM and configuration.
type RootContext interface {
	// OnConfigure receives the plugin configuration; false rejects it.
	OnConfigure(config []byte) bool
	// NewHTTPContext creates the state of one HTTP stream.
	NewHTTPContext(id uint32) HTTPContext
}

// HTTPContext is the state of one HTTP stream.
type HTTPContext interface {
	OnRequestHeaders(numHeaders int, endOfStream bool) Action
	OnRequestBody(bodySize int, endOfStream bool) Action
	// OnRequestTrailers runs only for requests that have trailers (the
	// host skips it otherwise), after the last body callback, whose
	// endOfStream was then false.
	OnRequestTrailers(numTrailers int) Action
	OnResponseHeaders(numHeaders int, endOfStream bool) Action
	// OnHTTPCallResponse receives the answer of a call this stream made;
	// numHeaders == 0 means the call failed (reset, timeout, no upstream).
	OnHTTPCallResponse(token uint32, numHeaders, bodySize, numTrailers int)
}

// EncodeHeaders serialises pairs in the proxy-wasm map format: a u32 count, then
// a u32 key size and u32 value size per pair, then each key and value followed by
// a NUL byte. All integers are little-endian.
func EncodeHeaders(hs []Header) []byte {
	n := 4 + 8*len(hs)
	for _, h := range hs {
		n += len(h[0]) + len(h[1]) + 2
	}
	buf := make([]byte, n)
	binary.LittleEndian.PutUint32(buf, uint32(len(hs)))
	p := 4
	for _, h := range hs {
		binary.LittleEndian.PutUint32(buf[p:], uint32(len(h[0])))
		binary.LittleEndian.PutUint32(buf[p+4:], uint32(len(h[1])))
		p += 8
	}
	for _, h := range hs {
		p += copy(buf[p:], h[0]) + 1
		p += copy(buf[p:], h[1]) + 1
	}
	return buf
}

// DecodeHeaders parses the proxy-wasm map format; malformed input is an error,
// never a panic. The strings share buf's memory (no copy on the filter's
// hottest path): buf must not be changed afterwards.
func DecodeHeaders(buf []byte) ([]Header, error) {
	if len(buf) < 4 {
		if len(buf) == 0 {
			return nil, nil
		}
		return nil, errors.New("header map: short count")
	}
	count := int(binary.LittleEndian.Uint32(buf))
	if count > (len(buf)-4)/8 {
		return nil, errors.New("header map: count " + strconv.Itoa(count) + " exceeds buffer")
	}
	hs := make([]Header, count)
	sizes := buf[4:]
	p := 4 + 8*count
	for i := range count {
		ks := int(binary.LittleEndian.Uint32(sizes[8*i:]))
		vs := int(binary.LittleEndian.Uint32(sizes[8*i+4:]))
		if ks < 0 || vs < 0 || ks > len(buf)-p-1 {
			return nil, errors.New("header map: key overruns buffer")
		}
		k := unsafe.String(&buf[p], ks) // ks may be 0: buf[p] is the NUL after it
		p += ks + 1
		if vs > len(buf)-p-1 {
			return nil, errors.New("header map: value overruns buffer")
		}
		v := unsafe.String(&buf[p], vs)
		p += vs + 1
		hs[i] = Header{k, v}
	}
	return hs, nil
}

// encodePath joins property path segments with NUL bytes, as proxy_get_property wants.
func encodePath(path []string) []byte {
	n := 0
	for _, s := range path {
		n += len(s) + 1
	}
	if n == 0 {
		return nil
	}
	buf := make([]byte, 0, n)
	for i, s := range path {
		if i > 0 {
			buf = append(buf, 0)
		}
		buf = append(buf, s...)
	}
	return buf
}
