package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// TestAsyncRules: the file -async writes is a valid rules file, one async
// rule per prefix, the replay secret's variable named.
func TestAsyncRules(t *testing.T) {
	f, err := rulesfile.Parse("rules.yaml", []byte(asyncRules([]string{"/slow", "/reports/v1"})))
	if err != nil {
		t.Fatal(err)
	}
	if f.Filter.ReplaySecretEnv == "" || f.Filter.CollectorCluster == "" || len(f.Rules) != 2 {
		t.Fatalf("%+v", f)
	}
	for i, p := range []string{"/slow", "/reports/v1"} {
		if r := f.Rules[i]; r.Match.PathPrefix != p || r.Mode != rules.ModeAsync {
			t.Errorf("rule %d: %+v", i, r.Rule)
		}
	}
}

// TestSecretFile: a secret is created once, mode 0600, and read back.
func TestSecretFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	a, err := secretFile(p)
	if err != nil || len(a) < 32 {
		t.Fatalf("%q, %v", a, err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%v, %v", fi.Mode(), err)
	}
	if b, err := secretFile(p); err != nil || b != a {
		t.Fatalf("read back %q, %v", b, err)
	}
}
