//go:build wasip1

package abi

import "unsafe"

//go:wasmimport env proxy_log
func proxyLog(level LogLevel, msg *byte, msgSize int32) Status

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(m MapType, key *byte, keySize int32, retData unsafe.Pointer, retSize *int32) Status

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(m MapType, retData unsafe.Pointer, retSize *int32) Status

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(m MapType, key *byte, keySize int32, value *byte, valueSize int32) Status

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(m MapType, key *byte, keySize int32) Status

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(b BufferType, start, maxSize int32, retData unsafe.Pointer, retSize *int32) Status

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(status uint32, details *byte, detailsSize int32, body *byte, bodySize int32, headers *byte, headersSize int32, grpcStatus int32) Status

//go:wasmimport env proxy_http_call
func proxyHTTPCall(upstream *byte, upstreamSize int32, headers *byte, headersSize int32, body *byte, bodySize int32, trailers *byte, trailersSize int32, timeout uint32, token *uint32) Status

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(s StreamType) Status

//go:wasmimport env proxy_get_property
func proxyGetProperty(path *byte, pathSize int32, retData unsafe.Pointer, retSize *int32) Status

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(id uint32) Status

//go:wasmimport env proxy_get_shared_data
func proxyGetSharedData(key *byte, keySize int32, retData unsafe.Pointer, retSize *int32, retCAS *uint32) Status

//go:wasmimport env proxy_set_shared_data
func proxySetSharedData(key *byte, keySize int32, value *byte, valueSize int32, cas uint32) Status

// wasmHost calls the proxy through the proxy-wasm imports. Values the host returns
// live in memory it obtained from proxy_on_memory_allocate, i.e. in ordinary Go
// allocations, so they are used in place without copying.
type wasmHost struct{}

func ptr(b []byte) *byte {
	if len(b) == 0 {
		return nil
	}
	return &b[0]
}

func sptr(s string) *byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.StringData(s)
}

func (wasmHost) Log(level LogLevel, msg string) {
	proxyLog(level, sptr(msg), int32(len(msg)))
}

func (wasmHost) Header(m MapType, key string) (string, bool) {
	var data *byte
	var size int32
	if proxyGetHeaderMapValue(m, sptr(key), int32(len(key)), unsafe.Pointer(&data), &size) != StatusOK || data == nil {
		return "", false
	}
	return unsafe.String(data, size), true
}

func (wasmHost) Headers(m MapType) []Header {
	var data *byte
	var size int32
	if proxyGetHeaderMapPairs(m, unsafe.Pointer(&data), &size) != StatusOK || data == nil {
		return nil
	}
	hs, _ := DecodeHeaders(unsafe.Slice(data, size))
	return hs
}

func (wasmHost) SetHeader(m MapType, key, value string) {
	proxyReplaceHeaderMapValue(m, sptr(key), int32(len(key)), sptr(value), int32(len(value)))
}

func (wasmHost) RemoveHeader(m MapType, key string) {
	proxyRemoveHeaderMapValue(m, sptr(key), int32(len(key)))
}

func (wasmHost) Buffer(b BufferType, start, max int) ([]byte, error) {
	var data *byte
	var size int32
	if err := proxyGetBufferBytes(b, int32(start), int32(max), unsafe.Pointer(&data), &size).Err(); err != nil {
		return nil, err
	}
	if data == nil {
		return nil, nil
	}
	return unsafe.Slice(data, size), nil
}

func (wasmHost) SendLocalResponse(status int, details string, body []byte, headers []Header) error {
	hs := EncodeHeaders(headers)
	return proxySendLocalResponse(uint32(status), sptr(details), int32(len(details)),
		ptr(body), int32(len(body)), ptr(hs), int32(len(hs)), -1).Err()
}

func (wasmHost) HTTPCall(cluster string, headers []Header, body []byte, timeoutMillis uint32) (uint32, error) {
	hs := EncodeHeaders(headers)
	var token uint32
	err := proxyHTTPCall(sptr(cluster), int32(len(cluster)), ptr(hs), int32(len(hs)),
		ptr(body), int32(len(body)), nil, 0, timeoutMillis, &token).Err()
	return token, err
}

func (wasmHost) ContinueStream(s StreamType) error { return proxyContinueStream(s).Err() }

func (wasmHost) Property(path ...string) ([]byte, error) {
	p := encodePath(path)
	var data *byte
	var size int32
	if err := proxyGetProperty(ptr(p), int32(len(p)), unsafe.Pointer(&data), &size).Err(); err != nil {
		return nil, err
	}
	if data == nil {
		return nil, nil
	}
	return unsafe.Slice(data, size), nil
}

func (wasmHost) SetEffectiveContext(id uint32) error { return proxySetEffectiveContext(id).Err() }

func (wasmHost) SharedData(key string) ([]byte, uint32, error) {
	var data *byte
	var size int32
	var cas uint32
	if err := proxyGetSharedData(sptr(key), int32(len(key)), unsafe.Pointer(&data), &size, &cas).Err(); err != nil {
		return nil, 0, err
	}
	if data == nil {
		return nil, cas, nil
	}
	return unsafe.Slice(data, size), cas, nil
}

func (wasmHost) SetSharedData(key string, value []byte, cas uint32) error {
	return proxySetSharedData(sptr(key), int32(len(key)), ptr(value), int32(len(value)), cas).Err()
}
