package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// BulkPoint is Elasticsearch alone indexing documents the size and shape of
// a request record in bulks of Size, one bulk at a time.
type BulkPoint struct {
	Size          int     `json:"bulkSize"`
	DocsPerSecond float64 `json:"docsPerSecond"`
	CPUmsPerDoc   float64 `json:"esCpuMsPerDoc"`
	CPUmsPerBulk  float64 `json:"esCpuMsPerBulk"`
}

// ceilingBulkSizes are the bulk sizes of the Elasticsearch ceiling: the
// collector's batches are as large as the writes waiting at once.
var ceilingBulkSizes = []int{1, 8, 64}

// esBench indexes documents shaped like request records into a throwaway
// index of Elasticsearch and measures its CPU.
type esBench struct {
	url, index string
	pid        int
}

func newESBench(ctx context.Context, esURL string) (*esBench, error) {
	b := &esBench{url: esURL, index: "asyncmesh-bench-ceiling", pid: findPID(backendCmdline["elasticsearch"])}
	return b, b.bulk(ctx, 64) // creates the index; not measured
}

// close deletes the index.
func (b *esBench) close() {
	if req, err := http.NewRequest(http.MethodDelete, b.url+"/"+b.index, nil); err == nil {
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

const esBenchDoc = `{"id":"%s","traceId":"0af7651916cd43dd8448eb211c80319c","rule":"bench","status":"queued","method":"POST","authority":"api.local","path":"/slow?ms=0",` +
	`"createdAt":"2026-01-01T00:00:00Z","history":[{"status":"persisted","at":"2026-01-01T00:00:00Z"},{"status":"queued","at":"2026-01-01T00:00:00Z"}],` +
	`"envelope":{"body":"eyJiZW5jaCI6dHJ1ZX0=","headers":[["content-type","application/json"],["traceparent","00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]]}}`

// bulk indexes n new documents in one bulk request.
func (b *esBench) bulk(ctx context.Context, n int) error {
	var buf bytes.Buffer
	for range n {
		id := make([]byte, 16)
		rand.Read(id)
		h := hex.EncodeToString(id)
		fmt.Fprintf(&buf, "{\"create\":{\"_index\":%q,\"_id\":%q}}\n"+esBenchDoc+"\n", b.index, h, h)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url+"/_bulk?refresh=false", &buf)
	if err != nil {
		return err
	}
	req.Header.Set("content-type", "application/x-ndjson")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || bytes.Contains(body, []byte(`"errors":true`)) {
		return fmt.Errorf("bulk of %d: %d %.200s", n, resp.StatusCode, body)
	}
	return nil
}

// measure sends bulks of size, one at a time, for d.
func (b *esBench) measure(ctx context.Context, size int, d time.Duration) (BulkPoint, error) {
	cpu0, start, bulks := cpuSeconds(b.pid), time.Now(), 0
	for time.Since(start) < d && ctx.Err() == nil {
		if err := b.bulk(ctx, size); err != nil {
			return BulkPoint{}, err
		}
		bulks++
	}
	if bulks == 0 {
		return BulkPoint{}, ctx.Err()
	}
	cpu, docs := cpuSeconds(b.pid)-cpu0, float64(bulks*size)
	return BulkPoint{Size: size, DocsPerSecond: docs / time.Since(start).Seconds(), CPUmsPerDoc: cpu * 1000 / docs, CPUmsPerBulk: cpu * 1000 / float64(bulks)}, nil
}

// esCeiling measures what Elasticsearch does by itself on this machine: the
// ceiling of any store on it, as direct_response is Envoy's. Each bulk size
// runs for d in a throwaway index.
func esCeiling(ctx context.Context, esURL string, d time.Duration) ([]BulkPoint, error) {
	b, err := newESBench(ctx, esURL)
	defer b.close()
	if err != nil {
		return nil, err
	}
	var out []BulkPoint
	for _, size := range ceilingBulkSizes {
		p, err := b.measure(ctx, size, d)
		if err != nil {
			return nil, err
		}
		logf("  bulks of %3d: %6.0f documents/s, Elasticsearch CPU %.2f ms per document, %.2f ms per bulk", size, p.DocsPerSecond, p.CPUmsPerDoc, p.CPUmsPerBulk)
		out = append(out, p)
	}
	return out, ctx.Err()
}

// JVMWarmup is how a JVM backend (Elasticsearch) was brought to its steady
// state before anything was measured on it. Its JIT compilers work as the
// load reaches new code, and on two cores they take minutes and much of a
// core: figures taken meanwhile measure the compiler, not the server.
type JVMWarmup struct {
	Seconds float64 `json:"seconds"`
	// FirstJITCores and LastJITCores are the CPU of its JIT compiler
	// threads in the first and the last window.
	FirstJITCores float64 `json:"firstJitCores"`
	LastJITCores  float64 `json:"lastJitCores"`
	Steady        bool    `json:"steady"` // false: stopped by jvmWarmMax
}

// A JVM backend is warmed with the stack's own traffic at jvmWarmRate in
// windows of jvmWarmWindow until its JIT compilers use less than
// jvmWarmJITCores in a window, for at most jvmWarmMax.
const (
	jvmWarmRate     = 200
	jvmWarmWindow   = 10 * time.Second
	jvmWarmJITCores = 0.05
	jvmWarmMax      = 5 * time.Minute
)

// warmJVM sends async requests through the stack until the JIT compilers of
// process pid are idle (see JVMWarmup).
func warmJVM(ctx context.Context, s *stack.Stack, pid int) (JVMWarmup, error) {
	start := time.Now()
	w := JVMWarmup{FirstJITCores: -1}
	for time.Since(start) < jvmWarmMax && ctx.Err() == nil {
		jit0, t0 := jitSeconds(pid), time.Now()
		accepted(ctx, s, "/slow?ms=0", jvmWarmRate, jvmWarmWindow)
		cores := (jitSeconds(pid) - jit0) / time.Since(t0).Seconds()
		if w.FirstJITCores < 0 {
			w.FirstJITCores = cores
		}
		w.LastJITCores = cores
		logf("  JIT compilers: %.2f cores", cores)
		if cores < jvmWarmJITCores {
			w.Steady = true
			break
		}
	}
	w.Seconds = time.Since(start).Seconds()
	return w, drain(ctx, s)
}

// jitSeconds is the CPU time of the JIT compiler threads of a JVM.
func jitSeconds(pid int) float64 {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, _ := os.ReadDir(dir)
	total := 0.0
	for _, t := range tasks {
		if comm, err := os.ReadFile(dir + t.Name() + "/comm"); err == nil && bytes.Contains(comm, []byte("CompilerThre")) {
			total += cpuSecondsOf(dir + t.Name() + "/stat")
		}
	}
	return total
}
