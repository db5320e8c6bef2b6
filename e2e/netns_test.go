//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/netns"
)

// A fabric is a set of network namespaces ("hosts") joined by veth pairs to
// one bridge, which lives in a namespace of its own: the test never adds an
// interface, address or route to the machine's own namespace, and the
// hosts' /24 exists only inside the fabric. Every namespace is named
// amtopo<pid>-<role>, so that a later run can tell the leftovers of a crashed
// one (its test process is gone) from those of a run still going.
type fabric struct {
	t      *testing.T
	prefix string // amtopo<pid>-
	bridge string // the namespace holding br0
}

// A netHost is one namespace on the fabric, with its address on eth0.
type netHost struct {
	role, ns, ip string
	// client makes its connections from inside the namespace, so a request
	// from one host to another leaves through eth0, crosses the bridge and
	// arrives on the other's eth0, as between two machines.
	client *http.Client
}

// topoSubnet is the fabric's /24 (its first three octets); nothing outside
// the test's namespaces ever sees it.
const topoSubnet = "10.231.0"

// newFabric creates the bridge namespace, or skips the test where network
// namespaces cannot be made (not root, no iproute2, no permission).
func newFabric(t *testing.T) *fabric {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the namespace topology needs root (ip netns add, veth, bridge); CI runs it as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the namespace topology needs iproute2's ip command: " + err.Error())
	}
	if _, ok := setnsTrap[runtime.GOARCH]; !ok {
		t.Skipf("the namespace topology knows setns(2) on amd64 and arm64, not %s", runtime.GOARCH)
	}
	removeStaleNamespaces(t)
	f := &fabric{t: t, prefix: "amtopo" + strconv.Itoa(os.Getpid()) + "-"}
	f.bridge = f.prefix + "fabric"
	if out, err := exec.Command("ip", "netns", "add", f.bridge).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace here (ip netns add: %v: %s); CI can", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() { deleteNamespace(t, f.bridge) })
	f.ip(f.bridge, "link", "set", "lo", "up")
	f.ip(f.bridge, "link", "add", "br0", "type", "bridge")
	f.ip(f.bridge, "link", "set", "br0", "up")
	return f
}

// ip runs ip -n ns args…, failing the test on an error.
func (f *fabric) ip(ns string, args ...string) {
	f.t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		f.t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// addHost creates namespace amtopo<pid>-<role> with lo up and eth0 at ip/24,
// whose veth peer (named role) is a port of the fabric's bridge.
func (f *fabric) addHost(role, ip string) *netHost {
	f.t.Helper()
	h := &netHost{role: role, ns: f.prefix + role, ip: ip}
	if out, err := exec.Command("ip", "netns", "add", h.ns).CombinedOutput(); err != nil {
		f.t.Fatalf("ip netns add %s: %v: %s", h.ns, err, out)
	}
	f.t.Cleanup(func() { deleteNamespace(f.t, h.ns) })
	f.ip(h.ns, "link", "set", "lo", "up")
	f.ip(h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", role, "netns", f.bridge)
	f.ip(h.ns, "addr", "add", ip+"/24", "dev", "eth0")
	f.ip(h.ns, "link", "set", "eth0", "up")
	f.ip(f.bridge, "link", "set", role, "master", "br0")
	f.ip(f.bridge, "link", "set", role, "up")
	h.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: h.dial, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second,
	}}
	f.t.Cleanup(h.client.CloseIdleConnections)
	return h
}

// inNamespace runs fn on an OS thread that has entered network namespace
// ns. A socket belongs to the namespace of the thread that created it, for
// its whole life, so connections dialled and listeners opened in fn stay in
// ns wherever they are used afterwards. The thread returns to the test's
// namespace before it is unlocked; if it cannot, it stays locked and the
// runtime retires it with the goroutine, so nothing else of the test ever
// runs in ns by accident. (The thread may be the process's main thread,
// whose namespace is the one ip netns pids and /proc/PID/ns/net report.)
func inNamespace(ns string, fn func() error) error {
	target, err := os.Open("/var/run/netns/" + ns) // where ip netns add mounts it
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering %s: %w", ns, err)
			return
		}
		err = fn()
		if setns(home) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func setns(f *os.File) error {
	if _, _, e := syscall.RawSyscall(setnsTrap[runtime.GOARCH], f.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// setnsTrap is setns(2)'s system call number by architecture: package
// syscall does not define it (golang.org/x/sys/unix does, but is no
// dependency of the module's own code).
var setnsTrap = map[string]uintptr{"amd64": 308, "arm64": 268}

// dial connects from inside h's namespace (addresses are IP literals: no
// resolver runs on another thread).
func (h *netHost) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(h.ns, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// listen opens a TCP listener inside h's namespace.
func (h *netHost) listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := inNamespace(h.ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// exec is the command line that runs bin with args inside h's namespace
// (ip netns exec execs bin: its pid is the process's).
func (h *netHost) exec(bin string, args ...string) []string {
	return append([]string{"netns", "exec", h.ns, bin}, args...)
}

// peers lists the remote addresses (host only) of the established TCP
// connections to local port port inside h's namespace.
func (h *netHost) peers(t *testing.T, port string) []string {
	t.Helper()
	out, err := exec.Command("ip", h.exec("ss", "-Htn", "state", "established", "( sport = :"+port+" )")...).CombinedOutput()
	if err != nil {
		t.Fatalf("ss in %s: %v: %s", h.ns, err, out)
	}
	var peers []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			if host, _, err := net.SplitHostPort(f[len(f)-1]); err == nil {
				peers = append(peers, strings.TrimPrefix(host, "::ffff:"))
			}
		}
	}
	return peers
}

var staleNamespace = regexp.MustCompile(`^amtopo([0-9]+)-`)

// removeStaleNamespaces deletes the namespaces of earlier runs whose test
// process is gone (a run killed before its cleanup), with whatever still
// runs in them; those of a run still going are left alone.
func removeStaleNamespaces(t *testing.T) {
	for _, ns := range netns.List() {
		m := staleNamespace.FindStringSubmatch(ns)
		if m == nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + m[1] + "/comm"); err == nil && strings.HasSuffix(strings.TrimSpace(string(comm)), ".test") {
			continue
		}
		t.Logf("removing namespace %s of a run that is gone", ns)
		deleteNamespace(t, ns)
	}
}

// deleteNamespace stops every process still in namespace ns and deletes
// it (netns.Delete).
func deleteNamespace(t *testing.T, ns string) {
	if err := netns.Delete(ns); err != nil {
		t.Error(err)
	}
}
