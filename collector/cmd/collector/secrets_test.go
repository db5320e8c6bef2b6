package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// liveRules stands for the -xds subscription: a RuleSource that declares.
type liveRules map[string]rules.SecretDecl

func (liveRules) Rule(string) (*rules.Rule, bool)     { return nil, false }
func (liveRules) Caller(string) (*rules.Caller, bool) { return nil, false }
func (l liveRules) SecretDecl(name string) (rules.SecretDecl, bool) {
	d, ok := l[name]
	return d, ok
}

// TestRulesFlagDeclaresSecrets: collector -rules rules.yaml (no control
// plane) resolves secretRef: partner through partner: {env: ...} of the
// file's secrets: section; with -xds the control plane's declarations come
// first; a bad file stops the collector at start, naming the flag.
func TestRulesFlagDeclaresSecrets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	os.WriteFile(path, []byte(`
filter: {collectorCluster: c}
secrets:
  partner: {env: ASYNCMESH_TEST_FLAG_PARTNER}
rules:
  - {name: r, mode: async, callback: {url: "https://hooks.example/cb", secretRef: partner}}
`), 0o644)
	t.Setenv("ASYNCMESH_TEST_FLAG_PARTNER", "from-the-declared-env")
	t.Setenv("ASYNCMESH_TEST_FLAG_LIVE", "from-the-live-declaration")
	os.Unsetenv("ASYNCMESH_SECRET_PARTNER")
	log := slog.New(slog.DiscardHandler)

	src, err := secretSource(options{rulesPath: path}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := src.Value("partner"); err != nil || v != "from-the-declared-env" {
		t.Fatalf("Value = %q, %v", v, err)
	}
	src, _ = secretSource(options{rulesPath: path}, liveRules{"partner": {Env: "ASYNCMESH_TEST_FLAG_LIVE"}}, log)
	if v, err := src.Value("partner"); err != nil || v != "from-the-live-declaration" {
		t.Fatalf("with -xds: Value = %q, %v", v, err)
	}
	if src, _ := secretSource(options{}, nil, log); len(src.Declared) != 0 {
		t.Fatalf("declarations without -rules or -xds: %v", src.Declared)
	}
	var _ collector.RuleSource = liveRules{}

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("secrets: {partner: {env: X, file: /y}}\n"), 0o644)
	if _, err := secretSource(options{rulesPath: bad}, nil, log); err == nil || !strings.HasPrefix(err.Error(), "-rules: "+bad+":1:20: secrets.partner: want exactly one") {
		t.Fatalf("bad file: %v", err)
	}
}
