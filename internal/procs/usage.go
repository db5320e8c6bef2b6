package procs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPUTime is the run time of pid's live threads (/proc/PID/task/*/schedstat,
// nanosecond resolution where /proc/PID/stat counts 10 ms ticks: an idle
// process's few milliseconds a minute need it). Threads that ended are not
// counted.
func CPUTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no threads of pid %d: %v", pid, err)
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			sum += v
		}
	}
	return time.Duration(sum), nil
}

// Status reads kB fields of /proc/PID/status (VmRSS, RssAnon, RssFile…), in
// the order asked; a field the kernel does not show reads 0.
func Status(pid int, fields ...string) ([]float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(fields))
	for _, line := range strings.Split(string(b), "\n") {
		for i, f := range fields {
			if v, ok := strings.CutPrefix(line, f+":"); ok {
				out[i], _ = strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			}
		}
	}
	return out, nil
}
