package xds

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// aliasBomb is a 1.3 KB rules file whose anchors nest nine levels deep
// through callback.select.targets, nine targets each (see rulesfile's
// TestAliasBombRefusedQuickly): 9^9 nodes to decode without a budget.
func aliasBomb() string {
	s := `&l0 {url: "http://x.example/"}`
	for l := 1; l <= 9; l++ {
		tg := make([]string, 9)
		for i := range tg {
			v := fmt.Sprintf("*l%d", l-1)
			if i == 0 {
				v = s
			}
			tg[i] = fmt.Sprintf("t%d: %s", i, v)
		}
		s = fmt.Sprintf("&l%d {select: {header: h, targets: {%s}}}", l, strings.Join(tg, ", "))
	}
	return "filter: {collectorCluster: c}\nrules:\n- name: r\n  mode: async\n  callback: " + s + "\n"
}

// TestReloadOfAliasBombKeepsLastGood: a serving control plane whose rules
// file is replaced by an alias bomb refuses it at once and keeps serving the
// last good rules (before the decode budget, Reload ran for minutes while
// allocating gigabytes, and the process died first).
func TestReloadOfAliasBombKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(good), 0o644)
	s, err := NewServer(path, wasmOpts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.onRequest(1, request("a", "reports", "", false)); err != nil {
		t.Fatal(err)
	}
	served := s.NodeVersions()["a"][0]
	lastGood := s.file

	os.WriteFile(path, []byte(aliasBomb()), 0o644)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.Reload() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Reload of a 1.3 KB alias bomb still running after 2s")
	}
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "too many alias expansions") || !strings.HasPrefix(err.Error(), path+":5:") {
		t.Fatalf("reload of the bomb = %v", err)
	}
	s.mu.Lock()
	kept := s.file == lastGood
	s.mu.Unlock()
	if !kept || s.NodeVersions()["a"][0] != served {
		t.Fatalf("the last good rules were replaced (served %v, want %s)", s.NodeVersions()["a"], served)
	}
	rec := httptest.NewRecorder()
	s.Metrics(rec, nil)
	if body := rec.Body.String(); !strings.Contains(body, `reloads_total{result="refused"} 1`) || !strings.Contains(body, "rules_file_ok 0") {
		t.Fatalf("metrics do not show the refusal:\n%s", body)
	}
	t.Logf("bomb refused in %v", took)
}
