package main

import (
	"math"
	"strings"
	"testing"
)

// An excerpt of an Envoy's smaps with two Wasm VMs: each linear memory is
// the accessible start of an 8 GB reservation; V8's code space is rwx; a
// thread stack (rw-p after a small guard) and the executable are neither.
const smapsExcerpt = `55ad97b6d000-55ad99bea000 r--p 00000000 08:01 123 /usr/bin/envoy
Rss:               16336 kB
16c595b64000-16c5969d7000 rwxp 00000000 00:00 0 
Rss:               12988 kB
7fbfa8360000-7fbfa87e0000 rw-p 00000000 00:00 0 
Rss:                3228 kB
7fbfa87e0000-7fc1a8360000 ---p 00000000 00:00 0 
Rss:                   0 kB
7fc1d8360000-7fc1d87e0000 rw-p 00000000 00:00 0 
Rss:                2864 kB
7fc1d87e0000-7fc3d8360000 ---p 00000000 00:00 0 
Rss:                   0 kB
7fc500000000-7fc500001000 ---p 00000000 00:00 0 
Rss:                   0 kB
7fc500001000-7fc500801000 rw-p 00000000 00:00 0 
Rss:                 100 kB
7fc500801000-7fc500802000 ---p 00000000 00:00 0 
Rss:                   0 kB
`

func TestWasmMemory(t *testing.T) {
	jit, mem, vms, err := wasmMemory(strings.NewReader(smapsExcerpt))
	if err != nil {
		t.Fatal(err)
	}
	if vms != 2 || math.Abs(mem-(3228+2864)/1024.0) > 1e-9 || math.Abs(jit-12988/1024.0) > 1e-9 {
		t.Fatalf("jit %.2f MB, %d VMs %.2f MB; want 12.68 MB, 2 VMs 5.95 MB", jit, vms, mem)
	}
}
