//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestDashboard drives the operator's dashboard in headless Chromium
// (Debian's chromium, scripts/install-chromium.sh; CHROMIUM_BIN overrides)
// against a stack with the control plane: sign in with the operator token,
// send an async request through Envoy, see it appear in the log live and
// reach delivered, open it, replay it and see a second attempt; then the
// endpoints, bulk replay (dry-run count) and rules pages, at 1280 px and
// at a phone's 390 px. Screenshots go to build/screenshots/. The page must
// log no error (a CSP violation would), label every control, never put
// the token in a URL, and not scroll sideways on the phone.
//
// The "rabbitmq+elasticsearch" subtest does the same on the backends of
// ASYNCMESH_TEST_AMQP_URL and ASYNCMESH_TEST_ES_URL (skipped when unset).
func TestDashboard(t *testing.T) {
	browser := os.Getenv("CHROMIUM_BIN")
	if browser == "" {
		browser = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(browser); err != nil {
		t.Fatalf("no Chromium at %s (scripts/install-chromium.sh installs Debian's; CHROMIUM_BIN names another): %v", browser, err)
	}
	shots, _ := filepath.Abs("../build/screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, name string, envs ...string) {
		s := backendStackWith(t, func(o *stack.Options) { o.ControlPlane = true }, envs...)
		driveDashboard(t, s, browser, filepath.Join(shots, name))
	}
	t.Run("embedded", func(t *testing.T) { run(t, "embedded") })
	t.Run("rabbitmq+elasticsearch", func(t *testing.T) {
		run(t, "rabbitmq-elasticsearch", "ASYNCMESH_TEST_AMQP_URL", "ASYNCMESH_TEST_ES_URL")
	})
}

func driveDashboard(t *testing.T, s *stack.Stack, browser, shotPrefix string) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("disable-extensions", true),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil { // the browser starts, without a timeout (it lives as long as ctx)
		t.Fatalf("starting %s: %v", browser, err)
	}
	var mu sync.Mutex
	var consoleErrors []string
	go func() {
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				mu.Lock()
				consoleErrors = append(consoleErrors, string(m.Type)+": "+m.Text)
				mu.Unlock()
			}
		}
	}()
	step := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, timeout)
		defer scancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('main').innerText`))
			t.Fatalf("%s: %v\nthe page shows:\n%s", what, err, html)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		path := shotPrefix + "-" + name + ".png"
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", path)
	}
	// Every control has a label (its own, a <label>, aria-label or text).
	unlabelled := `[...document.querySelectorAll('input, select, button, a')].filter(e => e.offsetParent !== null &&
		!((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby') || e.textContent.trim())).map(e => e.outerHTML).join('\n')`
	checkLabels := func(page string) {
		t.Helper()
		if bad := eval(unlabelled); bad != "" {
			t.Errorf("%s: controls without a label:\n%s", page, bad)
		}
	}

	dashboard := s.CollectorURL + "/dashboard/"
	step("sign in", 30*time.Second,
		chromedp.Navigate(dashboard),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS("form.login button[type=submit]")),
		chromedp.Poll[chromedp.Void](`document.getElementById('login-error').textContent !== ''`, chromedp.WithPollingInterval(100*time.Millisecond)),
	)
	if msg := eval(`document.getElementById('login-error').textContent`); !strings.Contains(msg, "refused") {
		t.Fatalf("a wrong token: %q", msg)
	}
	checkLabels("sign-in")
	step("sign in", 30*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.getElementById('token').value = ''`),
		chromedp.SendKeys(chromedp.CSS("#token"), s.AdminToken),
		chromedp.Click(chromedp.CSS("form.login button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#log-rows")),
	)
	// The live log is open before the request is sent: the request appears
	// through the stream, not through a reload.
	step("the live stream", 30*time.Second, chromedp.Poll[chromedp.Void](`document.getElementById('live-state').textContent === 'Live'`, chromedp.WithPollingInterval(100*time.Millisecond)))

	resp, body := doAt(t, s, "POST", "/slow?ms=300", `{"order":7}`, "content-type", "application/json")
	id, traceID := accepted(t, resp, body)
	row := fmt.Sprintf(`#log-rows tr[data-id=%q]`, id)
	step("the request appears in the log", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(row)))
	step("the request reaches delivered", 60*time.Second, chromedp.WaitVisible(chromedp.CSS(row+`[data-status="delivered"]`)))
	if n := eval(`String(document.querySelectorAll('#log-rows tr[data-id]').length)`); n == "0" {
		t.Fatal("the log is empty")
	}
	// The keyboard alone: Tab walks the controls in reading order (from the
	// skip link: navigation, sign-out, filters, the rows), each with a
	// visible focus ring (a date field's own parts draw theirs), and Enter
	// on a row's link opens the request.
	keyboard := []string{}
	step("keyboard: from the page's first control", 10*time.Second,
		chromedp.Evaluate[chromedp.Void](`document.querySelector('a.skip').focus()`))
	for range 40 {
		step("keyboard: Tab", 10*time.Second, chromedp.KeyEvent("\t"))
		focused := eval(`(() => { const e = document.activeElement; if (!e || e === document.body) return '';
			const s = getComputedStyle(e); const ring = e.type === 'datetime-local' || s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2;
			return (ring ? '' : 'NO-RING ') + e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ':' + (e.getAttribute('href') || e.textContent.trim().slice(0, 20)); })()`)
		keyboard = append(keyboard, focused)
		if strings.Contains(focused, "#/request/"+id) {
			break
		}
	}
	t.Logf("Tab order: %s", strings.Join(keyboard, " → "))
	last := -1
	for _, want := range []string{"#/requests", "#/endpoints", "#/replay", "#/rules", "Sign out", "select#f-status", "input#f-rule", "Apply", "#/request/" + id} {
		j := slices.IndexFunc(keyboard, func(f string) bool { return strings.Contains(f, want) })
		if j <= last {
			t.Fatalf("Tab did not reach %q after the one before: %v", want, keyboard)
		}
		last = j
	}
	for _, f := range keyboard {
		if strings.HasPrefix(f, "NO-RING") {
			t.Errorf("no visible focus ring on %s", f)
		}
	}
	step("keyboard: Enter opens the request", 30*time.Second,
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.CSS("#req-trace")),
		chromedp.NavigateBack(),
		chromedp.WaitVisible(chromedp.CSS(row)),
	)
	step("the count follows", 30*time.Second,
		chromedp.Poll[chromedp.Void](`document.getElementById('match-count').textContent === '1 request matches'`, chromedp.WithPollingInterval(100*time.Millisecond)))
	checkLabels("request log")
	shot("log-1280")

	step("open the request", 30*time.Second,
		chromedp.Click(chromedp.CSS(row+` a`)),
		chromedp.WaitVisible(chromedp.CSS("#req-trace")),
		chromedp.WaitVisible(chromedp.CSS("#attempts tbody tr")),
		chromedp.WaitVisible(chromedp.CSS("#stored-response pre")),
	)
	if got := eval(`document.getElementById('req-trace').textContent`); got != traceID {
		t.Fatalf("trace id %q, want %q", got, traceID)
	}
	if n := eval(`String(document.querySelectorAll('#attempts tbody tr').length)`); n != "1" {
		t.Fatalf("%s attempts before the replay", n)
	}
	if tl := eval(`String(document.querySelectorAll('.timeline li').length)`); len(tl) != 1 || tl < "5" { // persisted … delivered
		t.Fatalf("a timeline of %s stages", tl)
	}
	if resp := eval(`document.getElementById('stored-response').textContent`); !strings.Contains(resp, `"report":"done"`) {
		t.Fatalf("stored response: %q", resp)
	}
	checkLabels("request")
	step("replay", 60*time.Second,
		chromedp.Click(chromedp.CSS("#replay")),
		chromedp.WaitVisible(chromedp.CSS("#attempts tbody tr:nth-child(2)")),
		chromedp.WaitVisible(chromedp.CSS(`#req-status .s-delivered`)),
	)
	shot("request-1280")

	// Collectors merge endpoint health into the store once a second.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r, err := s.OperatorGet(context.Background(), "/v1/endpoints")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if strings.Contains(string(b), `"url"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no endpoint after 15s: %s", b)
		}
	}
	step("endpoints", 30*time.Second,
		chromedp.Navigate(dashboard+"#/endpoints"),
		chromedp.WaitVisible(chromedp.CSS("table tbody tr[data-id]")),
	)
	checkLabels("endpoints")
	step("bulk replay: the filter", 30*time.Second,
		chromedp.Navigate(dashboard+"#/replay"),
		chromedp.WaitVisible(chromedp.CSS("#f-status")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('f-status').value = 'delivered'`),
		chromedp.SendKeys(chromedp.CSS("#f-traceId"), traceID),
	)
	// Elasticsearch counts a change after its next refresh (a second): the
	// replay above may not be counted as delivered yet, so count again.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		step("bulk replay: the dry-run count", 30*time.Second,
			chromedp.Click(chromedp.CSS("form.filters button[type=submit]")),
			chromedp.WaitVisible(chromedp.CSS("#replay-count")),
		)
		got := eval(`document.getElementById('replay-count').textContent`)
		if strings.HasPrefix(got, "1 delivered request matches") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dry run: %q", got)
		}
	}
	step("bulk replay: confirm", 60*time.Second,
		chromedp.Click(chromedp.CSS("#replay-start")),
		chromedp.WaitVisible(chromedp.CSS("#replay-confirm")),
		chromedp.Click(chromedp.CSS("#replay-confirm")),
		chromedp.Poll[chromedp.Void](`(document.getElementById('replay-progress')||{}).textContent?.startsWith('Done: replayed 1,')`, chromedp.WithPollingInterval(100*time.Millisecond)),
	)
	checkLabels("bulk replay")
	step("rules", 30*time.Second,
		chromedp.Navigate(dashboard+"#/rules"),
		chromedp.WaitVisible(chromedp.CSS("dl.facts")),
	)
	rules := eval(`document.getElementById('main').innerText`)
	// The control plane served this stack's Envoy (sidecar-1) and its
	// collector; the collector applies the version it was served.
	version := eval(`document.querySelector('dl.facts dd:nth-of-type(2)').textContent`)
	if !strings.Contains(rules, "Control plane\nok") || !strings.Contains(rules, "sidecar-1") || len(version) < 4 ||
		eval(`String(document.querySelectorAll('#nodes tbody tr').length)`) == "0" || !strings.Contains(rules, version) {
		t.Fatalf("rules page:\n%s", rules)
	}
	t.Logf("rules page:\n%s", rules)
	checkLabels("rules")

	// A phone's width: the page does not scroll sideways (tables scroll in
	// their own box).
	step("phone width", 30*time.Second,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(dashboard+"#/requests"),
		chromedp.WaitVisible(chromedp.CSS(row)),
	)
	if w := eval(`String(document.documentElement.scrollWidth)`); w != "390" {
		t.Errorf("at 390 px the page is %s px wide", w)
	}
	shot("log-390")
	step("phone width: the request", 30*time.Second,
		chromedp.Navigate(dashboard+"#/request/"+id),
		chromedp.WaitVisible(chromedp.CSS("#attempts tbody tr:nth-child(3)")), // the bulk replay's attempt
	)
	if w := eval(`String(document.documentElement.scrollWidth)`); w != "390" {
		t.Errorf("at 390 px the request page is %s px wide", w)
	}
	shot("request-390")

	// Filtered by status, a row whose request leaves the filter is updated
	// in place and marked, not left showing its old status.
	step("the log filtered by status", 30*time.Second,
		chromedp.Navigate(dashboard+"#/requests?status=queued"),
		chromedp.Poll[chromedp.Void](`document.getElementById('live-state').textContent === 'Live'`, chromedp.WithPollingInterval(100*time.Millisecond)),
	)
	resp, body = doAt(t, s, "POST", "/slow?ms=4000", `{"order":8}`, "content-type", "application/json")
	queued, _ := accepted(t, resp, body)
	left := fmt.Sprintf(`#log-rows tr[data-id=%q]`, queued)
	step("a queued request appears in the filtered log", 30*time.Second, chromedp.WaitVisible(chromedp.CSS(left+`[data-status="queued"]`)))
	step("and is marked once it leaves the filter", 60*time.Second, chromedp.WaitVisible(chromedp.CSS(left+`.left[data-status="delivered"]`)))
	checkLabels("filtered request log")

	// The token never went into a URL.
	if urls := eval(`performance.getEntriesByType('resource').map(e => e.name).concat([location.href]).join('\n')`); strings.Contains(urls, s.AdminToken) {
		t.Fatalf("the operator token is in a URL:\n%s", urls)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range consoleErrors {
		// A wrong token's 401 is logged by the browser as a failed fetch.
		if strings.Contains(e, "401") {
			continue
		}
		t.Errorf("the page logged %s", e)
	}
}
