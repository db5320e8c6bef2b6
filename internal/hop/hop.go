// Package hop knows which HTTP headers describe one connection or its framing
// (and so are recomputed, not copied, when a request or response is relayed).
// The Wasm filter imports it: standard library only.
package hop

// ByHop reports whether the lower-case header name is hop-by-hop or framing.
func ByHop(name string) bool {
	switch name {
	case "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "content-length":
		return true
	}
	return false
}
