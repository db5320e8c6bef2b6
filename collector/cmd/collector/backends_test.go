package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// parse registers the command's flags on a FlagSet of their own and parses args.
func parse(t *testing.T, args ...string) (options, *flag.FlagSet) {
	t.Helper()
	var o options
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return o, fs
}

// TestHelpListsBackends: -store and -queue list the registered backends of
// their kind with their docs line, and every backend's flags are there.
func TestHelpListsBackends(t *testing.T) {
	_, fs := parse(t)
	var help bytes.Buffer
	fs.SetOutput(&help)
	fs.PrintDefaults()
	for _, tc := range []struct {
		flag string
		want []string
	}{
		{"store", []string{"embedded", "elasticsearch"}},
		{"queue", []string{"embedded", "rabbitmq"}},
	} {
		usage := fs.Lookup(tc.flag).Usage
		for _, name := range tc.want {
			if !strings.Contains(usage, "  "+name+" ") || !strings.Contains(usage, registry[name].Doc) {
				t.Errorf("-%s's usage does not list %s with its docs line:\n%s", tc.flag, name, usage)
			}
		}
	}
	if u := fs.Lookup("queue").Usage; strings.Contains(u, "elasticsearch") {
		t.Errorf("-queue lists a backend that is not a queue:\n%s", u)
	}
	for _, f := range []string{"db", "es-prefix", "es-retention", "amqp-prefix", "retention"} {
		if !strings.Contains(help.String(), "  -"+f+" ") {
			t.Errorf("-help lacks -%s", f)
		}
	}
}

// TestBackendChoiceAndChecks: an unknown name, or a backend of the other
// kind, is refused with the known names; each chosen backend's flags are
// checked before anything is opened (no database file appears).
func TestBackendChoiceAndChecks(t *testing.T) {
	t.Setenv("ASYNCMESH_TEST_EMPTY", "")
	t.Setenv("ASYNCMESH_TEST_URL", "http://127.0.0.1:1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown store", []string{"-store", "mongo"}, `-store: unknown store backend "mongo" (known: elasticsearch, embedded)`},
		{"unknown queue", []string{"-queue", "kafka"}, `-queue: unknown queue backend "kafka" (known: embedded, rabbitmq)`},
		{"a store as the queue", []string{"-queue", "elasticsearch"}, `-queue: unknown queue backend "elasticsearch" (known: embedded, rabbitmq)`},
		{"a queue as the store", []string{"-store", "rabbitmq"}, `-store: unknown store backend "rabbitmq"`},
		{"negative retention", []string{"-retention", "-1h"}, "-retention -1h0m0s: want 0"},
		{"no Elasticsearch URL", []string{"-store", "elasticsearch", "-es-url-env", "ASYNCMESH_TEST_EMPTY"}, "backend elasticsearch: -es-url-env: environment variable ASYNCMESH_TEST_EMPTY is empty"},
		{"no RabbitMQ URL", []string{"-queue", "rabbitmq", "-amqp-url-env", "ASYNCMESH_TEST_EMPTY"}, "backend rabbitmq: -amqp-url-env: environment variable ASYNCMESH_TEST_EMPTY is empty"},
		{"bad replicas", []string{"-store", "elasticsearch", "-es-url-env", "ASYNCMESH_TEST_URL", "-es-replicas", "-1"}, "-es-replicas -1: want 0 or more"},
		{"bad flushers", []string{"-store", "elasticsearch", "-es-url-env", "ASYNCMESH_TEST_URL", "-es-flushers", "0"}, "-es-flushers 0: want 1 or more"},
		{"bad prefetch", []string{"-queue", "rabbitmq", "-amqp-url-env", "ASYNCMESH_TEST_URL", "-amqp-prefetch", "-2"}, "-amqp-prefetch -2: want 0 or more"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "a.db")
			o, _ := parse(t, append(tc.args, "-db", db)...)
			b, err := openBackends(context.Background(), o, slog.New(slog.DiscardHandler))
			if err == nil {
				b.close()
				t.Fatalf("opened %s/%s", o.storeKind, o.queueKind)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
			if _, err := os.Stat(db); !os.IsNotExist(err) {
				t.Errorf("the embedded database was created before the flags were checked (%v)", err)
			}
		})
	}
}

// TestEmbeddedBothWays: the default opens one database for the store and
// the queue (the outbox needs them in one file) and closes it once.
func TestEmbeddedBothWays(t *testing.T) {
	o, _ := parse(t, "-db", filepath.Join(t.TempDir(), "a.db"), "-retention", "1h")
	b, err := openBackends(context.Background(), o, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(b.closers); n != 1 {
		t.Errorf("%d things to close, want the one database", n)
	}
	if err := b.store.Ping(context.Background()); err != nil {
		t.Error(err)
	}
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
}

// TestRetentionFlags: -retention defaults to 30 days, 0 keeps everything,
// and the deprecated -es-retention sets the same value.
func TestRetentionFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 30 * 24 * time.Hour},
		{[]string{"-retention", "0"}, 0},
		{[]string{"-retention", "48h"}, 48 * time.Hour},
		{[]string{"-es-retention", "72h"}, 72 * time.Hour},
	} {
		if o, _ := parse(t, tc.args...); o.retention != tc.want {
			t.Errorf("%q: retention %v, want %v", tc.args, o.retention, tc.want)
		}
	}
}
