//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/examples/stack"
)

// TestEndpointLimitsThroughEnvoy: through the real Envoy and two collector
// processes on one database, a rule whose callback sets rateLimit and
// maxInFlight sends callbacks to a slow receiver, well above both limits;
// the receiver sees the limits hold across the two collectors — never more
// than maxInFlight at once, and within any window no more than the rate
// over it plus the burst (within 10 %) — and every request is called back
// once.
func TestEndpointLimitsThroughEnvoy(t *testing.T) {
	t.Run("embedded", func(t *testing.T) { testEndpointLimits(t, nil) })
	// The same with the collectors on Elasticsearch and RabbitMQ, when given.
	t.Run("elasticsearch+rabbitmq", func(t *testing.T) {
		testEndpointLimits(t, []string{"ASYNCMESH_TEST_ES_URL", "ASYNCMESH_TEST_AMQP_URL"})
	})
}

func testEndpointLimits(t *testing.T, backends []string) {
	const (
		perSecond, burst, maxInFlight = 10, 2, 2
		n                             = 40
		delay                         = 150 * time.Millisecond // 2 places at 150 ms allow 13/s: the rate binds, and the places are full
	)
	var mu sync.Mutex
	inFlight, most := 0, 0
	var arrivals []time.Time
	byID := map[string]int{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		arrivals = append(arrivals, time.Now())
		byID[r.Header.Get("webhook-id")]++
		mu.Unlock()
		time.Sleep(delay)
		mu.Lock()
		inFlight--
		mu.Unlock()
	}))
	defer rcv.Close()
	rulesYAML := `filter:
  collectorCluster: asyncmesh_collector
  collectorTimeout: 2s
  statusPrefix: /async
  replaySecretEnv: ASYNCMESH_REPLAY_SECRET
rules:
  - name: limited
    match: {pathPrefix: /slow}
    mode: async
    callback:
      url: "` + rcv.URL + `/hooks"
      allowPrivate: true
      rateLimit: {perSecond: ` + fmt.Sprint(perSecond) + `, burst: ` + fmt.Sprint(burst) + `}
      maxInFlight: ` + fmt.Sprint(maxInFlight) + `
`
	bin := os.Getenv("ASYNCMESH_BIN")
	s := backendStackWith(t, func(o *stack.Options) { o.Rules = rulesYAML }, backends...)
	// A second collector process on the same database (store and queue):
	// the limits hold across both, not per process.
	ports, err := stack.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	second := fmt.Sprintf("127.0.0.1:%d", ports[0])
	env := []string{"ASYNCMESH_REPLAY_SECRET=" + s.ReplaySecret, "ASYNCMESH_ADMIN_TOKEN=" + s.AdminToken}
	args := []string{"-listen", second, "-db", s.DBPath(), "-replay-url", s.EnvoyURL, "-api-url", "http://" + second,
		"-admin-token-env", "ASYNCMESH_ADMIN_TOKEN"}
	if len(backends) > 0 { // the first collector's queue and store, by the stack's prefixes
		first := s.CollectorURL[strings.LastIndex(s.CollectorURL, ":")+1:]
		env = append(env, "ASYNCMESH_AMQP_URL="+os.Getenv("ASYNCMESH_TEST_AMQP_URL"), "ASYNCMESH_ES_URL="+os.Getenv("ASYNCMESH_TEST_ES_URL"))
		args = append(args, "-queue", "rabbitmq", "-amqp-prefix", "asyncmesh-"+first,
			"-store", "elasticsearch", "-es-prefix", "asyncmesh-e2e-"+first, "-es-replicas", "0")
	}
	if err := s.Spawn("collector-2", filepath.Join(bin, "collector"), env, args...); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if pid := s.PID("collector-2"); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}()
	waitUp(t, "http://"+second+"/healthz")

	// All at once: far more than the limits let through.
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, body := doAt(t, s, "POST", "/slow?ms=1", "{}")
			ids[i], _ = accepted(t, resp, body)
		})
	}
	wg.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		got := len(byID)
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d callbacks after 60s", got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate would show by now
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if byID[id] != 1 {
			t.Errorf("request %s called back %d times", id, byID[id])
		}
	}
	if most > maxInFlight {
		t.Errorf("the receiver served %d callbacks at once, maxInFlight %d", most, maxInFlight)
	}
	sort.Slice(arrivals, func(i, j int) bool { return arrivals[i].Before(arrivals[j]) })
	// Within any window w, at most the rate over it plus the burst: the
	// bucket may start full (each collector's share of the burst, at least
	// one each).
	for _, w := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
		peak, j := 0, 0
		for i := range arrivals {
			for arrivals[i].Sub(arrivals[j]) >= w {
				j++
			}
			peak = max(peak, i-j+1)
		}
		allowed := (perSecond*w.Seconds() + burst) * 1.1
		t.Logf("at most %d callbacks within %v (allowed %.1f: %d/s, burst %d, +10 %%)", peak, w, allowed, perSecond, burst)
		if float64(peak) > allowed {
			t.Errorf("%d callbacks within %v, limit %d/s with a burst of %d", peak, w, perSecond, burst)
		}
	}
	// Both collectors delivered: the budget was shared, not taken by one.
	for _, name := range []string{"collector", "collector-2"} {
		logs, err := os.ReadFile(s.LogPath(name))
		if err != nil {
			t.Fatal(err)
		}
		k := strings.Count(string(logs), "delivery: finished")
		t.Logf("%s delivered %d", name, k)
		if k == 0 {
			t.Errorf("%s delivered none: the limits were not shared", name)
		}
	}
	span := arrivals[len(arrivals)-1].Sub(arrivals[0]).Seconds()
	t.Logf("%d callbacks over %.1fs: %.1f/s after the first (limit %d/s), at most %d at once (limit %d)",
		n, span, float64(n-1)/span, perSecond, most, maxInFlight)
}
