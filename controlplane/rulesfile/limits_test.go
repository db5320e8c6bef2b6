package rulesfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// bomb is a rules file whose anchors nest through callback.select.targets:
// each level is a callback that selects among targets, every target an
// alias of the level below, so decoding it visits targets^levels nodes.
// bomb(9, 9) is 1.3 KB; before the decode budget it took minutes and
// gigabytes (bomb(6, 9): 9.6 s and 700 MB).
func bomb(levels, targets int) []byte {
	s := `&l0 {url: "http://x.example/"}`
	for l := 1; l <= levels; l++ {
		tg := make([]string, targets)
		for i := range tg {
			v := fmt.Sprintf("*l%d", l-1)
			if i == 0 {
				v = s
			}
			tg[i] = fmt.Sprintf("t%d: %s", i, v)
		}
		s = fmt.Sprintf("&l%d {select: {header: h, targets: {%s}}}", l, strings.Join(tg, ", "))
	}
	return []byte("filter: {collectorCluster: c}\nrules:\n- name: r\n  mode: async\n  callback: " + s + "\n")
}

// parseWithin parses data in a goroutine and fails the test if that takes
// longer than limit (so that a regression fails instead of hanging).
func parseWithin(t *testing.T, name string, data []byte, limit time.Duration) (error, time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := Parse(name, data)
		done <- err
	}()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(limit):
		t.Fatalf("%s (%d bytes): Parse still running after %v", name, len(data), limit)
		return nil, 0
	}
}

func TestAliasBombRefusedQuickly(t *testing.T) {
	for _, tc := range []struct{ levels, targets int }{{9, 9}, {12, 9}, {30, 2}, {6, 40}} {
		data := bomb(tc.levels, tc.targets)
		name := fmt.Sprintf("bomb-%dx%d.yaml", tc.levels, tc.targets)
		t.Run(name, func(t *testing.T) {
			if len(data) > 4096 {
				t.Fatalf("%d bytes: not a small file", len(data))
			}
			err, took := parseWithin(t, name, data, 2*time.Second)
			var es Errors
			if !errors.As(err, &es) || len(es) != 1 {
				t.Fatalf("error %v (%T), want one rulesfile error", err, err)
			}
			// file:line:col at the alias where the expansion starts.
			if e := es[0]; !strings.Contains(e.Msg, "too many alias expansions") || e.File != name || e.Pos.Line != 5 || e.Pos.Col < 10 {
				t.Fatalf("error %q at %+v", e.Error(), e.Pos)
			}
			if !strings.HasPrefix(err.Error(), name+":5:") {
				t.Fatalf("error does not start with file:line:col: %v", err)
			}
			if took > 100*time.Millisecond*slack {
				t.Fatalf("%d bytes refused in %v, want under 100ms", len(data), took)
			}
			t.Logf("%d bytes refused in %v", len(data), took)
		})
	}
}

// TestAliasesWithinBudget: anchors reused as they are meant to be, a shared
// callback and retry policy for many rules, still decode.
func TestAliasesWithinBudget(t *testing.T) {
	var b strings.Builder
	b.WriteString("filter: {collectorCluster: c}\nsecrets: {partner: {env: PARTNER_SECRET}}\nrules:\n")
	b.WriteString(`- {name: r0, mode: async, match: {pathPrefix: /r0}, callback: &cb {url: "https://hooks.partner.example/callbacks/v1", secretRef: partner, allowNetworks: [10.0.0.0/8, 192.168.0.0/16]}, retry: &retry {maxAttempts: 5, initialBackoff: 200ms, maxBackoff: 2s}}` + "\n")
	for i := 1; i < 500; i++ {
		fmt.Fprintf(&b, "- {name: r%d, mode: async, match: {pathPrefix: /r%d}, callback: *cb, retry: *retry}\n", i, i)
	}
	f, err := Parse("shared.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Rules) != 500 || f.Rules[499].Callback.SecretRef != "partner" || f.Rules[499].Retry.MaxAttempts != 5 {
		t.Fatalf("rules %d, last %+v", len(f.Rules), f.Rules[499].Rule)
	}
}

// TestDecodeOf4KBIsBounded: whatever a 4 KB file holds (aliases or not),
// parsing it (decoding and validation) takes less than 100 ms.
func TestDecodeOf4KBIsBounded(t *testing.T) {
	flowList := "filter: {collectorCluster: c}\nrules:\n- {name: r, mode: sync, match: {methods: [" + strings.Repeat("A,", 1900) + "A]}}\n"
	deep := "filter: {collectorCluster: c}\nrules:\n- name: r\n  mode: async\n  callback: " + strings.Repeat("{select: {targets: {k: ", 150) + "{}" + strings.Repeat("}}}", 150) + "\n"
	// A key longer than YAML's 1024 for implicit keys, explicit with "? ",
	// in the path of every node below it.
	longKey := "filter: {collectorCluster: c}\nrules:\n- name: r\n  mode: async\n  callback: &a\n    select:\n      header: h\n      targets:\n        ? " +
		strings.Repeat("k", 3000) + "\n        : {url: \"http://x/\", allowNetworks: [" + strings.Repeat("a, ", 100) + "a]}\n- {name: r2, mode: async, callback: *a}\n"
	cases := map[string][]byte{"bomb": bomb(9, 9), "flow list": []byte(flowList), "deep": []byte(deep), "long key": []byte(longKey)}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			if len(data) > 4096+64 {
				t.Fatalf("%d bytes", len(data))
			}
			err, took := parseWithin(t, name, data, 2*time.Second)
			if took > 100*time.Millisecond*slack {
				t.Fatalf("%d bytes decoded in %v (err %v)", len(data), took, err)
			}
			t.Logf("%d bytes in %v: %v", len(data), took, err)
		})
	}
}

func TestSizeCheckedBeforeReading(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "huge.yaml")
	fh, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	// 64 GiB that were never written: reading it would take minutes.
	if err := fh.Truncate(64 << 30); err != nil {
		t.Skip("no sparse files here:", err)
	}
	fh.Close()
	exact := filepath.Join(dir, "exact.yaml")
	os.WriteFile(exact, []byte("filter: {collectorCluster: c}\nrules: []\n"+strings.Repeat("#", MaxSize-42)+"\n"), 0o644)
	for _, tc := range []struct {
		path, want string
	}{
		{sparse, "68719476736 bytes or more, larger than the limit of 1048576"},
		{"/dev/zero", "1048577 bytes or more, larger than the limit of 1048576"}, // no size to stat: the read is bounded
		{exact, ""},
	} {
		t.Run(filepath.Base(tc.path), func(t *testing.T) {
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := Load(tc.path)
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("a file of exactly MaxSize: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.path+": ") {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8*MaxSize {
				t.Fatalf("allocated %d bytes to refuse it", alloc)
			}
			if took := time.Since(start); took > time.Second*slack {
				t.Fatalf("took %v", took)
			}
		})
	}
}

// TestValidationLimits: bounds on what decoding lets through, each a
// rulesfile error naming the field.
func TestValidationLimits(t *testing.T) {
	head := "filter: {collectorCluster: c}\n"
	rule := func(match string) string {
		return head + "rules:\n- {name: r, mode: sync, match: " + match + "}\n"
	}
	var manyRules strings.Builder
	manyRules.WriteString(head + "rules:\n")
	for i := range MaxEntries + 1 {
		fmt.Fprintf(&manyRules, "- {name: r%d, mode: sync}\n", i)
	}
	var manySecrets strings.Builder
	manySecrets.WriteString(head + "rules: []\nsecrets:\n")
	for i := range MaxEntries + 1 {
		fmt.Fprintf(&manySecrets, "  s%d: {env: S}\n", i)
	}
	// 50 aliases of a callback with a 45 KB soapAction: within the decode
	// budget of a 100 KB file (a comment pads it), but 2.3 MB of filter
	// configuration.
	var bigConfig strings.Builder
	bigConfig.WriteString(head + "rules:\n")
	fmt.Fprintf(&bigConfig, "- {name: r0, mode: async, callback: &cb {url: \"http://x.example/\", protocol: soap, soapAction: \"urn:%s\"}}\n", strings.Repeat("a", 45000))
	for i := 1; i < 50; i++ {
		fmt.Fprintf(&bigConfig, "- {name: r%d, mode: async, callback: *cb}\n", i)
	}
	bigConfig.WriteString("#" + strings.Repeat(" ", 55000) + "\n")

	for _, tc := range []struct {
		name, data, want string
	}{
		{"rules", manyRules.String(), "t.yaml:3:1: rules: 1001 entries, more than 1000"},
		{"secrets", manySecrets.String(), "t.yaml:4:3: secrets: 1001 entries, more than 1000"},
		{"methods", rule("{methods: [" + strings.Repeat("GET, ", MaxEntries) + "GET]}"), "t.yaml:3:42: rules[0].match.methods: 1001 entries, more than 1000"},
		{"pattern length", rule(`{pathRegex: "^/` + strings.Repeat("a", MaxPatternLen) + `$"}`), "t.yaml:3:44: rules[0].match.pathRegex: 1027 bytes, over the limit of 1024"},
		{"pattern program", rule(`{pathRegex: "^/[a-z]{1000}[0-9]{1000}$"}`), "t.yaml:3:44: rules[0].match.pathRegex: compiles to 2005 instructions, over the limit of 1000"},
		{"pattern accepted", rule(`{pathRegex: "^/v1/orders/[0-9a-f-]{36}/export$"}`), ""},
		{"filter configuration", bigConfig.String(), "t.yaml:3:1: rules: the filter configuration of these rules is"},
		{"secret env name", head + "rules: []\nsecrets: {s: {env: \"A=B\"}}\n", `t.yaml:3:20: secrets.s.env: "A=B" is not an environment variable name`},
		{"secret file relative", head + "rules: []\nsecrets: {s: {file: etc/s}}\n", `t.yaml:3:21: secrets.s.file: "etc/s" is not an absolute path`},
		{"secret name", head + "rules: []\nsecrets: {../s: {file: /etc/s}}\n", `t.yaml:3:17: secrets.../s: a secret's name is letters`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err, took := parseWithin(t, "t.yaml", []byte(tc.data), 2*time.Second)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error\n%v\nwant it to start with\n%s", err, tc.want)
			}
			if _, ok := err.(Errors); !ok {
				t.Fatalf("error of type %T", err)
			}
			t.Logf("%d bytes refused in %v", len(tc.data), took)
		})
	}
}
