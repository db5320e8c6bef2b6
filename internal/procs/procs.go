// Package procs runs a group of child processes, each with its output in a
// log file of its own, and waits for them to answer over HTTP: what the demo
// stack (examples/stack) and the one-command runner (cmd/asyncmesh) share.
package procs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Group is a set of named child processes; their output goes to
// Dir/<name>.log (and to Logs when set).
type Group struct {
	Dir  string
	Logs io.Writer

	mu    sync.Mutex
	procs map[string]*proc
	exits chan string
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// LogPath is where a process's output goes.
func (g *Group) LogPath(name string) string { return filepath.Join(g.Dir, name+".log") }

// Spawn starts bin as name, with env added to this process's environment.
// The child is killed if this process dies.
func (g *Group) Spawn(name, bin string, env []string, args ...string) error {
	f, err := os.OpenFile(g.LogPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var w io.Writer = f
	if g.Logs != nil {
		w = io.MultiWriter(f, g.Logs)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	g.mu.Lock()
	if g.procs == nil {
		g.procs = map[string]*proc{}
	}
	g.procs[name] = p
	exits := g.exits
	g.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
		if exits != nil {
			select {
			case exits <- name:
			default:
			}
		}
	}()
	return nil
}

// Exits returns a channel that receives the name of a process spawned after
// this call when it exits (stopped by Stop or not).
func (g *Group) Exits() <-chan string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exits == nil {
		g.exits = make(chan string, 16)
	}
	return g.exits
}

// PID is the process id of a running process, or 0.
func (g *Group) PID(name string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if p, ok := g.procs[name]; ok {
		return p.cmd.Process.Pid
	}
	return 0
}

// Stop sends sig to a process and waits for it to end (killing it after
// 35 s); a process not running is no error.
func (g *Group) Stop(name string, sig syscall.Signal) error {
	g.mu.Lock()
	p, ok := g.procs[name]
	delete(g.procs, name)
	g.mu.Unlock()
	if !ok {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(35 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within 35s", name)
	}
}

// StopAll stops the named processes in order with SIGTERM.
func (g *Group) StopAll(names ...string) {
	for _, n := range names {
		_ = g.Stop(n, syscall.SIGTERM)
	}
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// WaitHTTP waits until a GET of url answers 200.
func WaitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", url, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
