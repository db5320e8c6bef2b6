package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Backend is a store or a queue implementation, or both, that -store and
// -queue choose by name. Each lives in a file of its own (backend_*.go)
// that registers it from init, so that adding one is that file and its
// tests: the flags, -help and the error for an unknown name come from
// here. Caddy's module registry, much simplified: the command is its only
// user.
type Backend struct {
	// Name is what -store or -queue says.
	Name string
	// Doc is its line under -store / -queue in -help.
	Doc string
	// Flags registers the backend's own flags on fs, whichever backends are
	// chosen (so that -help shows them all), named after it (-es-*,
	// -amqp-*), and returns its Setup, which reads them once fs is parsed.
	Flags func(fs *flag.FlagSet) *Setup
}

// Setup is a backend as its flags configure it.
type Setup struct {
	// Check validates the flags before any backend is opened (nil: nothing
	// to check), so that a mistake costs no connection.
	Check func() error
	// Store opens it as the store; nil: it is not a store.
	Store func(ctx context.Context, e *env) (store.Store, error)
	// Queue opens it as the queue; nil: it is not a queue.
	Queue func(ctx context.Context, e *env) (queue.Queue, error)
}

// env is what the backends being opened share: the settings common to all
// of them, and what to close, in opening order.
type env struct {
	log *slog.Logger
	// retention is how long a store keeps records once terminal (0: for
	// ever); every store takes it (store.Expirer).
	retention time.Duration
	// nodeID is -node-id: this collector's name where a backend needs one.
	nodeID  string
	closers []func() error
}

// registry holds the registered backends by name.
var registry = map[string]Backend{}

func register(b Backend) {
	if _, dup := registry[b.Name]; dup || b.Name == "" || b.Flags == nil {
		panic(fmt.Sprintf("collector: backend %q registered twice, or without a name or flags", b.Name))
	}
	registry[b.Name] = b
}

// Kinds of backend: the flags that choose them.
const (
	kindStore = "store"
	kindQueue = "queue"
)

// setups are the registered backends configured on one FlagSet.
type setups map[string]*Setup

// registerBackends registers every backend's flags on fs.
func registerBackends(fs *flag.FlagSet) setups {
	s := setups{}
	for name, b := range registry {
		s[name] = b.Flags(fs)
	}
	return s
}

// is reports whether setup is of kind.
func (st *Setup) is(kind string) bool {
	if kind == kindStore {
		return st.Store != nil
	}
	return st.Queue != nil
}

// names lists the backends of kind, sorted.
func (s setups) names(kind string) []string {
	var out []string
	for name, st := range s {
		if st.is(kind) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// usage is the -store or -queue flag's text: one line per backend of kind.
func (s setups) usage(kind string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s backend, one of:\n", kind)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, name := range s.names(kind) {
		fmt.Fprintf(tw, "  %s\t%s\n", name, registry[name].Doc)
	}
	tw.Flush()
	return strings.TrimSuffix(b.String(), "\n")
}

// choose returns the backend of kind named name.
func (s setups) choose(kind, name string) (*Setup, error) {
	if st, ok := s[name]; ok && st.is(kind) {
		return st, nil
	}
	return nil, fmt.Errorf("-%s: unknown %s backend %q (known: %s)", kind, kind, name, strings.Join(s.names(kind), ", "))
}

// envURL is the URL in the environment variable env that flagName names:
// backends' URLs carry credentials, which stay out of the process list.
func envURL(flagName, env string) (string, error) {
	v := os.Getenv(env)
	if v == "" {
		return "", fmt.Errorf("-%s: environment variable %s is empty", flagName, env)
	}
	return v, nil
}
