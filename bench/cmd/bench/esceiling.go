package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"time"
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

// esCeiling measures what Elasticsearch by itself does on this machine: the
// ceiling of any store on it, as direct_response is Envoy's. Each size runs
// for d in a throwaway index.
func esCeiling(ctx context.Context, esURL string, d time.Duration) ([]BulkPoint, error) {
	pid := findPID(backendCmdline["elasticsearch"])
	index := "asyncmesh-bench-ceiling"
	defer func() {
		if req, err := http.NewRequest(http.MethodDelete, esURL+"/"+index, nil); err == nil {
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	doc := `{"id":"%s","traceId":"0af7651916cd43dd8448eb211c80319c","rule":"bench","status":"queued","method":"POST","authority":"api.local","path":"/slow?ms=0",` +
		`"createdAt":"2026-01-01T00:00:00Z","history":[{"status":"persisted","at":"2026-01-01T00:00:00Z"},{"status":"queued","at":"2026-01-01T00:00:00Z"}],` +
		`"envelope":{"body":"eyJiZW5jaCI6dHJ1ZX0=","headers":[["content-type","application/json"],["traceparent","00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]]}}`
	bulk := func(n int) error {
		var b bytes.Buffer
		for range n {
			id := make([]byte, 16)
			rand.Read(id)
			h := hex.EncodeToString(id)
			fmt.Fprintf(&b, "{\"create\":{\"_index\":%q,\"_id\":%q}}\n"+doc+"\n", index, h, h)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, esURL+"/_bulk?refresh=false", &b)
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
	if err := bulk(64); err != nil { // creates the index; not measured
		return nil, err
	}
	var out []BulkPoint
	for _, size := range ceilingBulkSizes {
		cpu0, start, bulks := cpuSeconds(pid), time.Now(), 0
		for time.Since(start) < d && ctx.Err() == nil {
			if err := bulk(size); err != nil {
				return nil, err
			}
			bulks++
		}
		cpu, docs := cpuSeconds(pid)-cpu0, float64(bulks*size)
		p := BulkPoint{Size: size, DocsPerSecond: docs / time.Since(start).Seconds(), CPUmsPerDoc: cpu * 1000 / docs, CPUmsPerBulk: cpu * 1000 / float64(bulks)}
		logf("  bulks of %3d: %6.0f documents/s, Elasticsearch CPU %.2f ms per document, %.2f ms per bulk", size, p.DocsPerSecond, p.CPUmsPerDoc, p.CPUmsPerBulk)
		out = append(out, p)
	}
	return out, ctx.Err()
}
