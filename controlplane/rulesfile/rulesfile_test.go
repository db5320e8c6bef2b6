package rulesfile

import (
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

var update = flag.Bool("update", false, "rewrite the golden error files")

func TestGood(t *testing.T) {
	f, err := Load("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Rules) != 4 || f.Rules[0].Timeout.D() != 20*time.Second || f.Rules[0].Retry.MaxAttempts != 5 {
		t.Fatalf("rules %+v", f.Rules)
	}
	if f.Rules[1].BodyLimit == 0 || f.Rules[1].Callback.Protocol != "http" {
		t.Fatalf("defaults not applied: %+v", f.Rules[1].Rule)
	}
	if sel := f.Rules[2].Callback.Select; sel == nil || sel.Targets["initech"].SOAPAction != "urn:initech#Done" || sel.Targets["acme"].Protocol != "grpc" {
		t.Fatalf("select targets: %+v", sel)
	}
	if got := f.ForNode("sidecar-1", "reports"); len(got.Rules) != 3 || got.Rules[0].Name != "slow-report" {
		t.Fatalf("rules for another cluster: %+v", got.Rules)
	}
	if got := f.ForNode("sidecar-2", "billing"); len(got.Rules) != 4 {
		t.Fatalf("rules for billing: %d", len(got.Rules))
	}
	if err := f.ForNode("x", "billing").Validate(); err != nil {
		t.Fatalf("per-node configuration invalid: %v", err)
	}
}

// TestErrorsGolden compares every bad-*.yaml's errors with bad-*.golden
// (go test -update rewrites them).
func TestErrorsGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad-*.yaml")
	if len(files) < 8 {
		t.Fatalf("only %d bad files", len(files))
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			_, err := Load(path)
			if err == nil {
				t.Fatal("accepted")
			}
			golden := strings.TrimSuffix(path, ".yaml") + ".golden"
			got := err.Error() + "\n"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, _ := os.ReadFile(golden)
			if got != string(want) {
				t.Fatalf("errors:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// FuzzParse: any bytes give a file whose configuration validates or an
// Errors, and within a budget of time and memory per input: at most 1s, and
// at most 16 MiB plus 1 KiB per input byte allocated (the bounded decoder
// stays under 3 MiB for the worst 4 KB files of TestDecodeOf4KBIsBounded).
// Seeded with the testdata and with small aliased files, among them the
// alias bomb: without the decode budget, bomb(3, 9) (446 bytes) allocates
// 2 MiB, bomb(4, 9) 20 MiB and bomb(5, 9) (674 bytes) 186 MiB in a second,
// which fails this target.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Add(bomb(3, 9))
	f.Add(bomb(5, 9))
	f.Add([]byte("filter: {collectorCluster: c}\nrules:\n- {name: a, mode: async, callback: &c {url: \"http://x/\"}}\n- {name: b, mode: async, callback: *c}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		type result struct {
			file *File
			err  error
		}
		done := make(chan result, 1)
		go func() {
			file, err := Parse("fuzz.yaml", data)
			done <- result{file, err}
		}()
		var file *File
		var err error
		select {
		case r := <-done:
			file, err = r.file, r.err
		case <-time.After(time.Second * slack):
			t.Fatalf("%d bytes: still parsing after %v", len(data), time.Second*slack)
		}
		runtime.ReadMemStats(&after)
		if alloc, limit := after.TotalAlloc-before.TotalAlloc, uint64(16<<20+1024*len(data)); alloc > limit {
			t.Fatalf("%d bytes allocated %d bytes, over %d", len(data), alloc, limit)
		}
		if err == nil {
			if vErr := file.Config(nil).Validate(); vErr != nil {
				t.Fatalf("accepted a file whose configuration does not validate: %v", vErr)
			}
			return
		}
		if _, ok := err.(Errors); !ok {
			t.Fatalf("error of type %T", err)
		}
	})
}

func TestCallers(t *testing.T) {
	f, err := Load("testdata/callers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Callers) != 2 || f.Callers[0].Signing[1].Until != "2026-12-20T00:00:00Z" {
		t.Fatalf("callers %+v", f.Callers)
	}
	// Every node gets every caller (a rule without callers: admits them
	// all), and the declarations of the secrets they reference, no others.
	for _, cluster := range []string{"billing", "reports"} {
		c := f.ForNode("n", cluster)
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if len(c.Callers) != 2 || c.JWTPayloadKey != "claims" {
			t.Fatalf("%s: callers %+v, jwtPayloadKey %q", cluster, c.Callers, c.JWTPayloadKey)
		}
		if _, ok := c.Secrets["unused"]; ok || len(c.Secrets) != 5 {
			t.Fatalf("%s: secrets %v", cluster, c.Secrets)
		}
	}
}

func TestPackages(t *testing.T) {
	f, err := Load("testdata/packages.yaml")
	if err != nil {
		t.Fatal(err)
	}
	billing := f.ForNode("n", "billing")
	names := func(c []rules.Rule) (out []string) {
		for _, r := range c {
			out = append(out, r.Name)
		}
		return out
	}
	// The disabled package's rule is off everywhere; billing's rules only
	// on billing's nodes; order is the file's.
	if got := strings.Join(names(billing.Rules), ","); got != "invoices,refunds,everywhere" {
		t.Fatalf("billing node rules: %s", got)
	}
	if got := strings.Join(names(f.ForNode("n", "reports").Rules), ","); got != "everywhere" {
		t.Fatalf("other node rules: %s", got)
	}
	inv, ref := billing.Rules[0], billing.Rules[1]
	if inv.Package != "billing" || inv.Callback.URL != "https://hooks.billing.example/cb" || inv.Callback.SecretRef != "billing" ||
		inv.Retry.MaxAttempts != 3 || inv.Timeout.D() != 2*time.Minute || strings.Join(inv.Callers, ",") != "billing-app" {
		t.Fatalf("package defaults not applied: %+v", inv)
	}
	// A rule's own settings win, field by field for retry.
	if ref.Callback.URL != "https://refunds.billing.example/cb" || ref.Callback.SecretRef != "" || ref.Retry.MaxAttempts != 3 ||
		ref.Retry.InitialBackoff.D() != 5*time.Second || ref.Timeout.D() != 10*time.Second {
		t.Fatalf("rule settings: %+v", ref)
	}
	if err := billing.Validate(); err != nil {
		t.Fatal(err)
	}
	if !f.Rules[0].Limited() || !f.Rules[2].Limited() || f.Rules[3].Limited() {
		t.Fatal("a package's nodes or its being disabled limit its rules")
	}
}
