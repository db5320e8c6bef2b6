// Package netns lists and deletes named network namespaces (ip netns) for
// the tests that build topologies out of them: e2e's TestTopology and
// bench/cmd/chaoscluster.
package netns

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// List returns the names of the namespaces ip netns knows.
func List() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// Delete stops every process still in namespace ns (SIGTERM, then SIGKILL
// after 10 s: detached servers such as the backends the start scripts run,
// epmd) and deletes it. Its veths go with it, and their peers with them.
func Delete(ns string) error {
	pids := func() []int {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		var ps []int
		for _, f := range strings.Fields(string(out)) {
			if p, err := strconv.Atoi(f); err == nil {
				ps = append(ps, p)
			}
		}
		return ps
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		ps := pids()
		for _, p := range ps {
			_ = syscall.Kill(p, sig)
		}
		for end := time.Now().Add(10 * time.Second); len(ps) > 0 && time.Now().Before(end); ps = pids() {
			time.Sleep(100 * time.Millisecond)
		}
		if len(ps) == 0 {
			break
		}
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}
