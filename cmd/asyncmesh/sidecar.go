package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
	"github.com/asyncmesh/asyncmesh/internal/procs"
)

type options struct {
	upstream, rules, listen, data, envoy, bin, collector string
	nodeID, nodeCluster                                  string
	async                                                []string
}

// sidecar runs asyncmesh in front of one service with one command:
//
//	asyncmesh sidecar -upstream 127.0.0.1:8080 (-rules rules.yaml | -async /slow [-async /other])
//	        [-listen 127.0.0.1:10000] [-data DIR] [-envoy PATH] [-bin DIR] [-collector ADDR]
//	        [-node-id ID -node-cluster C]
//
// -async PREFIX, instead of a rules file, makes the requests under each
// prefix async with a rules file the runner writes into the data directory:
// callers name their callback (x-async-callback), on this machine only
// (docs/rules.md has every other choice).
//
// It starts the control plane on the rules file (edits apply live), the
// collector on the embedded store and queue in the data directory, and Envoy
// with a bootstrap generated for the service (xds.BootstrapFor, ECDS mode),
// waits until all three answer, and prints where to send requests, where
// callers read their results and the operator API. The replay secret and the
// operator's token are generated into the data directory on the first run
// (mode 0600) and never printed; the operator API's URL is written beside
// them (operator-url), where the operator commands find both. ctx ending
// (SIGINT or SIGTERM) stops everything.
//
// The collector, controlplane and asyncmesh.wasm are looked up beside this
// binary (make build puts them all in build/) or in -bin; Envoy is -envoy,
// $ENVOY_BIN, the one scripts/install-envoy.sh installs, or envoy on the PATH.
func sidecar(ctx context.Context, args []string, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("sidecar", flag.ExitOnError)
	fs.StringVar(&o.upstream, "upstream", "", "host:port of your service (required)")
	fs.StringVar(&o.rules, "rules", "", "the rules file (docs/rules.md); edits apply live")
	fs.Func("async", "instead of -rules: a path prefix whose requests become async, callers naming their callback on this machine (repeatable)", func(v string) error {
		if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, "\"'\n{}[]#\\") {
			return fmt.Errorf("%q: want a path prefix such as /slow", v)
		}
		o.async = append(o.async, v)
		return nil
	})
	fs.StringVar(&o.listen, "listen", "127.0.0.1:10000", "host:port where callers send their requests (Envoy's listener)")
	fs.StringVar(&o.data, "data", defaultDataDir(), "data directory: database, secrets, logs, generated bootstrap")
	fs.StringVar(&o.envoy, "envoy", "", "the envoy binary (default: $ENVOY_BIN, scripts/install-envoy.sh's, or envoy on the PATH)")
	fs.StringVar(&o.bin, "bin", "", "directory of collector, controlplane and asyncmesh.wasm (default: beside this binary)")
	fs.StringVar(&o.collector, "collector", "", "host:port of the collector's API, operator endpoints included (default: a free loopback port)")
	fs.StringVar(&o.nodeID, "node-id", "sidecar-1", "the sidecar's node id (rules targeting)")
	fs.StringVar(&o.nodeCluster, "node-cluster", "default", "the sidecar's node cluster (rules targeting)")
	_ = fs.Parse(args)
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.upstream == "" {
		return errors.New("-upstream: required (host:port of your service)")
	}
	if _, _, err := net.SplitHostPort(o.upstream); err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	if (o.rules == "") == (len(o.async) == 0) {
		return errors.New("want -rules FILE or -async PREFIX (one or more), not both")
	}
	var err error
	if o.data, err = filepath.Abs(o.data); err != nil {
		return err
	}
	if err := os.MkdirAll(o.data, 0o700); err != nil {
		return err
	}
	if len(o.async) > 0 {
		o.rules = filepath.Join(o.data, "rules.yaml")
		if err := os.WriteFile(o.rules, []byte(asyncRules(o.async)), 0o600); err != nil {
			return err
		}
	}
	rulesPath, err := filepath.Abs(o.rules)
	if err != nil {
		return err
	}
	f, err := rulesfile.Load(rulesPath)
	if err != nil {
		return err
	}
	replayEnv := f.Filter.ReplaySecretEnv
	if replayEnv == "" {
		return fmt.Errorf("%s: filter.replaySecretEnv is required (say ASYNCMESH_REPLAY_SECRET): the filter and the collector sign replays with it", o.rules)
	}
	bin, err := binDir(o.bin)
	if err != nil {
		return err
	}
	envoy, err := findEnvoy(o.envoy, bin)
	if err != nil {
		return err
	}
	logs := filepath.Join(o.data, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return err
	}
	replaySecret, err := secretFile(filepath.Join(o.data, "replay-secret"))
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(o.data, "admin-token")
	adminToken, err := secretFile(tokenPath)
	if err != nil {
		return err
	}

	l, err := net.Listen("tcp", o.listen) // a clear error now rather than Envoy's later
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	l.Close()
	ports, err := procs.FreePorts(4)
	if err != nil {
		return err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	collector, admin, xdsAddr, metrics := addr(ports[0]), addr(ports[1]), addr(ports[2]), addr(ports[3])
	if o.collector != "" {
		collector = o.collector
	}
	boot, err := xds.BootstrapFor(xds.BootstrapOptions{Listen: o.listen, Upstream: o.upstream, Collector: collector,
		Admin: admin, XDS: xdsAddr, Rules: f, NodeID: o.nodeID, NodeCluster: o.nodeCluster})
	if err != nil {
		return err
	}
	js, err := protojson.MarshalOptions{Multiline: true}.Marshal(boot)
	if err != nil {
		return err
	}
	bootPath := filepath.Join(o.data, "envoy.json")
	if err := os.WriteFile(bootPath, js, 0o600); err != nil {
		return err
	}

	g := &procs.Group{Dir: logs}
	exits := g.Exits()
	defer g.StopAll("envoy", "collector", "controlplane")
	// One process ending on its own ends the run (and the others).
	run, died := context.WithCancelCause(ctx)
	defer died(nil)
	go func() {
		select {
		case name := <-exits:
			died(fmt.Errorf("%s exited (its log: %s); stopping the others", name, g.LogPath(name)))
		case <-run.Done():
		}
	}()
	listenURL, collectorURL := "http://"+o.listen, "http://"+collector
	steps := []struct {
		name, bin, health string
		env, args         []string
	}{
		{"controlplane", filepath.Join(bin, "controlplane"), "http://" + metrics + "/healthz", []string{"ASYNCMESH_ADMIN_TOKEN=" + adminToken},
			[]string{"serve", "-rules", rulesPath, "-wasm", filepath.Join(bin, "asyncmesh.wasm"), "-listen", xdsAddr, "-metrics", metrics,
				"-operator-token-env", "ASYNCMESH_ADMIN_TOKEN"}},
		{"collector", filepath.Join(bin, "collector"), collectorURL + "/healthz",
			[]string{replayEnv + "=" + replaySecret, "ASYNCMESH_ADMIN_TOKEN=" + adminToken},
			[]string{"-listen", collector, "-db", filepath.Join(o.data, "asyncmesh.db"), "-replay-url", listenURL,
				"-replay-secret-env", replayEnv, "-api-url", collectorURL, "-admin-token-env", "ASYNCMESH_ADMIN_TOKEN",
				"-xds", xdsAddr, "-node-id", o.nodeID, "-node-cluster", o.nodeCluster, "-controlplane-url", "http://" + metrics}},
		{"envoy", envoy, "http://" + admin + "/ready", []string{replayEnv + "=" + replaySecret},
			[]string{"-c", bootPath, "--base-id", strconv.Itoa(ports[1]), "-l", "warning"}},
	}
	for _, st := range steps {
		if err := g.Spawn(st.name, st.bin, st.env, st.args...); err != nil {
			return err
		}
		if err := procs.WaitHTTP(run, st.health, 60*time.Second); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if run.Err() != nil {
				return context.Cause(run)
			}
			return fmt.Errorf("%s did not become ready (its log: %s): %w", st.name, g.LogPath(st.name), err)
		}
	}
	// The operator commands' defaults (operator.go); gone when we stop.
	urlFile := filepath.Join(o.data, operatorURLFile)
	if err := os.WriteFile(urlFile, []byte(collectorURL+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(urlFile)
	fmt.Fprintf(out, `asyncmesh is in front of %s (rules %s, edits apply live)
  send requests to   %s
  callers read results at the Location of a 202: %s%s/v1/requests/{id}?token=… (&wait=30s long-polls)
  operator API       %s/v1/requests (Authorization: Bearer <the token in %s>);
                     from another terminal: asyncmesh search, get ID, tail, replay, endpoints, rules
  data and logs      %s
Ctrl-C stops everything.
`, o.upstream, rulesPath, listenURL, listenURL, statusPrefix(f), collectorURL, tokenPath, o.data)
	<-run.Done()
	if ctx.Err() != nil {
		fmt.Fprintln(out, "asyncmesh: stopping")
		return nil
	}
	return context.Cause(run)
}

// asyncRules is the rules file of -async: each prefix async, the callback
// named by the caller on this machine.
func asyncRules(prefixes []string) string {
	var b strings.Builder
	b.WriteString(`# Written by asyncmesh sidecar -async (rewritten at each start; use -rules
# with a file of your own for anything else: docs/rules.md).
filter:
  collectorCluster: asyncmesh_collector
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
rules:
`)
	for i, p := range prefixes {
		fmt.Fprintf(&b, `  - name: async-%d
    match: {pathPrefix: "%s"}
    mode: async
    # Callers name their callback with x-async-callback, on this machine only.
    callback: {allowOverride: true, allowedHosts: ["127.0.0.1", "localhost"], allowNetworks: [127.0.0.0/8]}
`, i+1, p)
	}
	return b.String()
}

func statusPrefix(f *rulesfile.File) string {
	if f.Filter.StatusPrefix == "" {
		return "/async"
	}
	return f.Filter.StatusPrefix
}

// defaultDataDir is asyncmesh under the user's cache directory, or
// ./asyncmesh-data without one.
func defaultDataDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "asyncmesh")
	}
	return "asyncmesh-data"
}

// secretFile reads a secret from path, creating it (mode 0600, 32 random
// bytes in base64url) if absent.
func secretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) == 0 {
			return "", fmt.Errorf("%s: empty", path)
		}
		return string(b), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	rand.Read(raw)
	s := base64.RawURLEncoding.EncodeToString(raw)
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := w.WriteString(s); err != nil {
		w.Close()
		return "", err
	}
	return s, w.Close()
}

// binDir is where collector, controlplane and asyncmesh.wasm are.
func binDir(flagged string) (string, error) {
	dir := flagged
	if dir == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		dir = filepath.Dir(exe)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for _, n := range []string{"collector", "controlplane", "asyncmesh.wasm"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return "", fmt.Errorf("%s not found in %s (make build puts it in build/; or -bin DIR)", n, dir)
		}
	}
	return dir, nil
}

// findEnvoy: -envoy, $ENVOY_BIN, the venv of scripts/install-envoy.sh
// (.tools/venv beside bin's parent or the working directory), envoy on the
// PATH.
func findEnvoy(flagged, bin string) (string, error) {
	for _, p := range []string{flagged, os.Getenv("ENVOY_BIN")} {
		if p != "" {
			return p, nil
		}
	}
	for _, root := range []string{filepath.Dir(bin), "."} {
		m, _ := filepath.Glob(filepath.Join(root, ".tools", "venv", "lib", "python*", "site-packages", "envoy", "_bin", "envoy"))
		if len(m) > 0 {
			return filepath.Abs(m[len(m)-1])
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	if script := filepath.Join(filepath.Dir(bin), "scripts", "install-envoy.sh"); fileExists(script) {
		fmt.Fprintln(os.Stderr, "asyncmesh: installing Envoy with", script)
		cmd := exec.Command(script)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", script, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	return "", errors.New("no envoy found: run scripts/install-envoy.sh, or give -envoy PATH or ENVOY_BIN")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
