package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/netns"
)

// subnet is the fabric's /24 (its first three octets); it exists only
// inside the namespaces this program creates.
const subnet = "10.232.0"

// The hosts of the fabric: role → address.
var hosts = []struct{ role, ip string }{
	{"caller", subnet + ".20"},
	{"pod1", subnet + ".11"}, {"pod2", subnet + ".12"}, // service A's Envoys
	{"col1", subnet + ".21"}, {"col2", subnet + ".22"}, {"col3", subnet + ".23"}, // service A's collectors
	{"podb", subnet + ".40"}, // service B: Envoy, service and collector
	{"backends", subnet + ".30"},
}

func ipOf(role string) string {
	for _, h := range hosts {
		if h.role == role {
			return h.ip
		}
	}
	panic("no host " + role)
}

// nsName is the namespace of a role for the run of prefix p (amchaos<pid>-).
func nsName(p, role string) string { return p + role }

var stalePrefix = regexp.MustCompile(`^(amchaos([0-9]+)-)`)

// outer creates the fabric, runs this program again inside the caller's
// namespace, and deletes the fabric with all that runs in it when that run
// ends (or this one is interrupted: the inner run gets the signal too, and
// a minute to finish).
func outer(ctx context.Context, c config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces (ip netns add, veth, bridge)")
	}
	removeStale()
	prefix := "amchaos" + strconv.Itoa(os.Getpid()) + "-"
	defer deleteAll(prefix)
	if err := makeFabric(prefix); err != nil {
		return fmt.Errorf("creating the namespaces: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The work directory (logs, the backends' state) outlives the inner
	// run: it is removed after a passing run once the namespaces, and the
	// backends writing into it, are gone.
	work, err := os.MkdirTemp("", "asyncmesh-chaoscluster-")
	if err != nil {
		return err
	}
	// The Elasticsearch nodes run as another user: their state is under it.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	args := append([]string{"netns", "exec", nsName(prefix, "caller"), self, "-inner", prefix, "-work", work}, os.Args[1:]...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the run in the caller's namespace: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			err = <-done
		}
	}
	deleteAll(prefix)
	if err == nil && !c.keep {
		if rmErr := os.RemoveAll(work); rmErr != nil {
			slog.Warn("removing the work directory", "dir", work, "err", rmErr)
		}
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exitCode(exit.ExitCode()) // the inner run printed why
	}
	return err
}

// makeFabric creates the bridge's namespace and one per host, each with lo
// up and eth0 (a veth whose peer is a port of the bridge) at its address.
func makeFabric(p string) error {
	bridge := nsName(p, "fabric")
	steps := [][]string{{"netns", "add", bridge}, {"-n", bridge, "link", "set", "lo", "up"},
		{"-n", bridge, "link", "add", "br0", "type", "bridge"}, {"-n", bridge, "link", "set", "br0", "up"}}
	for _, h := range hosts {
		ns := nsName(p, h.role)
		steps = append(steps, []string{"netns", "add", ns}, []string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", h.role, "netns", bridge},
			[]string{"-n", ns, "addr", "add", h.ip + "/24", "dev", "eth0"}, []string{"-n", ns, "link", "set", "eth0", "up"},
			[]string{"-n", bridge, "link", "set", h.role, "master", "br0"}, []string{"-n", bridge, "link", "set", h.role, "up"})
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	return nil
}

// exitCode is the inner run's exit status, passed on once the namespaces
// are deleted.
type exitCode int

func (c exitCode) Error() string { return "exit status " + strconv.Itoa(int(c)) }

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// deleteAll deletes the namespaces of prefix p.
func deleteAll(p string) {
	for _, ns := range netns.List() {
		if strings.HasPrefix(ns, p) {
			deleteNamespace(ns)
		}
	}
}

// removeStale deletes the namespaces of earlier runs whose process is gone.
func removeStale() {
	for _, ns := range netns.List() {
		m := stalePrefix.FindStringSubmatch(ns)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[2]); err == nil {
			continue
		}
		slog.Info("removing the namespace of a run that is gone", "ns", ns)
		deleteNamespace(ns)
	}
}

func deleteNamespace(ns string) {
	if err := netns.Delete(ns); err != nil {
		slog.Error("deleting a namespace", "ns", ns, "err", err)
	}
}
