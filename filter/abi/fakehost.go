package abi

import (
	"errors"
	"strings"
	"sync"
)

// FakeHost is an in-memory Host for native tests of filter logic. It keeps the
// header maps and buffers of one stream at a time and records what the filter did.
// It is not safe for concurrent streams, like the Wasm VM it stands in for.
type FakeHost struct {
	Maps    map[MapType][]Header
	Buffers map[BufferType][]byte
	Props   map[string][]byte

	Logs      []string
	Calls     []FakeCall
	Local     *FakeLocalResponse
	Continued []StreamType
	Effective uint32
	nextToken uint32
	FailCalls bool // HTTPCall returns an error

	// Shared is the shared data (proxy_get/set_shared_data). Give two
	// FakeHosts the same one to stand for two worker VMs of one Envoy.
	Shared *FakeShared
}

// FakeShared is an in-memory shared data store with Envoy's semantics
// (proxy-wasm-cpp-host SharedData): a CAS per key, never 0; set with cas 0 is
// unconditional and an absent key is always created. Safe for concurrent use,
// as the real one is shared by worker threads.
type FakeShared struct {
	mu   sync.Mutex
	data map[string]fakeValue
	cas  uint32
	// BeforeSet, when set, runs at the start of each SetSharedData (without
	// the lock): tests interleave another VM's writes there.
	BeforeSet func(key string)
	// Fail makes every call fail (a host without shared data).
	Fail bool
}

type fakeValue struct {
	v   []byte
	cas uint32
}

// NewFakeShared returns an empty shared data store.
func NewFakeShared() *FakeShared { return &FakeShared{data: map[string]fakeValue{}, cas: 1} }

// Keys is the number of keys held.
func (f *FakeShared) Keys() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.data)
}

// Bytes is the total size of the values held.
func (f *FakeShared) Bytes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.data {
		n += len(v.v)
	}
	return n
}

// FakeCall is one recorded dispatch_http_call.
type FakeCall struct {
	Token   uint32
	Cluster string
	Headers []Header
	Body    []byte
	Timeout uint32
}

// FakeLocalResponse is a recorded send_local_response.
type FakeLocalResponse struct {
	Status  int
	Details string
	Body    []byte
	Headers []Header
}

// NewFakeHost returns an empty fake host.
func NewFakeHost() *FakeHost {
	return &FakeHost{Maps: map[MapType][]Header{}, Buffers: map[BufferType][]byte{}, Props: map[string][]byte{}, Shared: NewFakeShared()}
}

// Get returns the first value of key in map m, for assertions.
func (f *FakeHost) Get(m MapType, key string) string {
	v, _ := f.Header(m, key)
	return v
}

func (f *FakeHost) Log(level LogLevel, msg string) { f.Logs = append(f.Logs, msg) }

func (f *FakeHost) Header(m MapType, key string) (string, bool) {
	for _, h := range f.Maps[m] {
		if h[0] == key {
			return h[1], true
		}
	}
	return "", false
}

func (f *FakeHost) Headers(m MapType) []Header { return append([]Header(nil), f.Maps[m]...) }

func (f *FakeHost) SetHeader(m MapType, key, value string) {
	f.RemoveHeader(m, key)
	f.Maps[m] = append(f.Maps[m], Header{key, value})
}

func (f *FakeHost) RemoveHeader(m MapType, key string) {
	hs := f.Maps[m][:0]
	for _, h := range f.Maps[m] {
		if h[0] != key {
			hs = append(hs, h)
		}
	}
	f.Maps[m] = hs
}

func (f *FakeHost) Buffer(b BufferType, start, max int) ([]byte, error) {
	buf, ok := f.Buffers[b]
	if !ok {
		return nil, ErrNotFound
	}
	if start > len(buf) {
		return nil, errors.New("proxy-wasm: bad argument")
	}
	end := min(len(buf), start+max)
	return append([]byte(nil), buf[start:end]...), nil
}

func (f *FakeHost) SendLocalResponse(status int, details string, body []byte, headers []Header) error {
	if f.Local != nil {
		return errors.New("fake host: a local response was already sent")
	}
	f.Local = &FakeLocalResponse{Status: status, Details: details, Body: append([]byte(nil), body...), Headers: headers}
	return nil
}

// LocalHeader returns a header of the recorded local response.
func (f *FakeHost) LocalHeader(key string) string {
	if f.Local == nil {
		return ""
	}
	for _, h := range f.Local.Headers {
		if strings.EqualFold(h[0], key) {
			return h[1]
		}
	}
	return ""
}

func (f *FakeHost) HTTPCall(cluster string, headers []Header, body []byte, timeout uint32) (uint32, error) {
	if f.FailCalls {
		return 0, errors.New("proxy-wasm: bad argument")
	}
	f.nextToken++
	f.Calls = append(f.Calls, FakeCall{Token: f.nextToken, Cluster: cluster, Headers: headers, Body: append([]byte(nil), body...), Timeout: timeout})
	return f.nextToken, nil
}

func (f *FakeHost) ContinueStream(s StreamType) error {
	f.Continued = append(f.Continued, s)
	return nil
}

func (f *FakeHost) Property(path ...string) ([]byte, error) {
	v, ok := f.Props[strings.Join(path, ".")]
	if !ok {
		return nil, ErrNotFound
	}
	return v, nil
}

func (f *FakeHost) SetEffectiveContext(id uint32) error {
	f.Effective = id
	return nil
}

func (f *FakeHost) SharedData(key string) ([]byte, uint32, error) {
	sh := f.Shared
	if sh.Fail {
		return nil, 0, errors.New("proxy-wasm: unimplemented")
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	v, ok := sh.data[key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return append([]byte(nil), v.v...), v.cas, nil
}

func (f *FakeHost) SetSharedData(key string, value []byte, cas uint32) error {
	sh := f.Shared
	if sh.Fail {
		return errors.New("proxy-wasm: unimplemented")
	}
	if sh.BeforeSet != nil {
		sh.BeforeSet(key)
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if cur, ok := sh.data[key]; ok && cas != 0 && cas != cur.cas {
		return ErrCASMismatch
	}
	sh.data[key] = fakeValue{append([]byte(nil), value...), sh.cas}
	if sh.cas++; sh.cas == 0 {
		sh.cas = 1
	}
	return nil
}
