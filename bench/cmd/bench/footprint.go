package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/procs"
)

// EnvoyFootprint is where an Envoy's resident memory is, after load.
type EnvoyFootprint struct {
	Name  string  `json:"name"`
	RSSMB float64 `json:"rssMB"`
	// AnonMB is RssAnon: the process's own memory, without the mapped pages
	// of the executable (the same in every Envoy of one binary).
	AnonMB float64 `json:"anonMB"`
	// From Envoy's /memory (tcmalloc): what is allocated, the free pages it
	// still holds, and its per-thread caches.
	HeapAllocatedMB float64 `json:"heapAllocatedMB"`
	HeapFreeMB      float64 `json:"heapFreeMB"`
	ThreadCachesMB  float64 `json:"threadCachesMB"`
	// From /proc/PID/smaps: V8's machine code for Wasm (anonymous rwx
	// mappings) and the Wasm VMs' linear memories (the accessible start of
	// a reservation of over 1 GB), each VM one memory.
	JITCodeMB      float64 `json:"jitCodeMB"`
	WasmMemoriesMB float64 `json:"wasmMemoriesMB"`
	WasmVMs        int     `json:"wasmVMs"`
}

// envoyFootprint reads an Envoy's memory; admin is its admin URL.
func envoyFootprint(ctx context.Context, name string, pid int, admin string) (EnvoyFootprint, error) {
	f := EnvoyFootprint{Name: name}
	st, err := procs.Status(pid, "VmRSS", "RssAnon")
	if err != nil {
		return f, fmt.Errorf("reading %s's memory: %w", name, err)
	}
	f.RSSMB, f.AnonMB = st[0]/1024, st[1]/1024
	var mem struct {
		Allocated    string `json:"allocated"`
		PageheapFree string `json:"pageheap_free"`
		ThreadCache  string `json:"total_thread_cache"`
	}
	if err := getJSON(ctx, admin+"/memory", &mem); err != nil {
		return f, fmt.Errorf("reading %s's /memory: %w", name, err)
	}
	mb := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v / (1 << 20) }
	f.HeapAllocatedMB, f.HeapFreeMB, f.ThreadCachesMB = mb(mem.Allocated), mb(mem.PageheapFree), mb(mem.ThreadCache)
	file, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		return f, fmt.Errorf("reading %s's mappings: %w", name, err)
	}
	defer file.Close()
	if f.JITCodeMB, f.WasmMemoriesMB, f.WasmVMs, err = wasmMemory(file); err != nil {
		return f, fmt.Errorf("reading %s's mappings: %w", name, err)
	}
	return f, nil
}

// wasmMemory sums, from an smaps listing, the RSS of V8's machine code
// (anonymous rwx mappings) and of the Wasm VMs' linear memories: V8 reserves
// each memory's whole address range (8 GB and more) and makes its used
// start accessible, so a memory is an anonymous rw-p mapping followed at
// once by a ---p one of over 1 GB.
func wasmMemory(r io.Reader) (jitMB, memoriesMB float64, vms int, err error) {
	maps, err := smaps(r)
	for i, m := range maps {
		switch {
		case m.anonymous && m.perms == "rwxp":
			jitMB += m.rssKB / 1024
		case m.anonymous && m.perms == "rw-p" && i+1 < len(maps) && maps[i+1].start == m.end &&
			maps[i+1].perms == "---p" && maps[i+1].end-maps[i+1].start > 1<<30:
			memoriesMB += m.rssKB / 1024
			vms++
		}
	}
	return jitMB, memoriesMB, vms, err
}

type mapping struct {
	start, end uint64
	perms      string
	anonymous  bool
	rssKB      float64
}

// smaps lists the mappings of a /proc/PID/smaps in address order with their
// RSS.
func smaps(r io.Reader) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			lo, hi, _ := strings.Cut(f[0], "-")
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				out = append(out, mapping{start: a, end: b, perms: f[1], anonymous: len(f) == 5})
				continue
			}
		}
		if len(f) >= 2 && f[0] == "Rss:" && len(out) > 0 {
			out[len(out)-1].rssKB, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return out, sc.Err()
}

// CollectorIdle is the collector with nothing to do: its CPU over a window
// and its RSS at the end of it.
type CollectorIdle struct {
	When       string  `json:"when"`
	CPUPercent float64 `json:"cpuPercentOfACore"`
	RSSMB      float64 `json:"rssMB"`
	// AnonMB is its own memory (RssAnon), FileMB the mapped pages of its
	// executable and files (RssFile: the same in every collector).
	AnonMB float64 `json:"anonMB"`
	FileMB float64 `json:"fileMB"`
}

// collectorIdle measures pid, idle, over d.
func collectorIdle(ctx context.Context, when string, pid int, d time.Duration) (CollectorIdle, error) {
	c := CollectorIdle{When: when}
	cpu0, err := procs.CPUTime(pid)
	if err != nil {
		return c, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return c, ctx.Err()
	case <-time.After(d):
	}
	cpu1, err := procs.CPUTime(pid)
	if err != nil {
		return c, err
	}
	st, err := procs.Status(pid, "VmRSS", "RssAnon", "RssFile")
	if err != nil {
		return c, err
	}
	c.CPUPercent, c.RSSMB, c.AnonMB, c.FileMB = float64(cpu1-cpu0)/float64(time.Since(t0))*100, st[0]/1024, st[1]/1024, st[2]/1024
	logf("  collector %s: %.3f%% of a core, RSS %.1f MB (anon %.1f, file %.1f)", when, c.CPUPercent, c.RSSMB, c.AnonMB, c.FileMB)
	return c, nil
}
