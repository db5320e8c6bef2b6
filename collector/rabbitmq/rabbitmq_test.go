package rabbitmq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/queue/queuetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open returns a queue with a fresh prefix on the broker named by
// ASYNCMESH_TEST_AMQP_URL, torn down at the end of the test.
func open(t *testing.T) *Queue {
	b := make([]byte, 4)
	rand.Read(b)
	return openAs(t, "asyncmesh-test-"+hex.EncodeToString(b), "")
}

// openAs opens a queue on prefix as instance (none: "").
func openAs(t *testing.T, prefix, instance string) *Queue {
	url := os.Getenv("ASYNCMESH_TEST_AMQP_URL")
	if url == "" {
		t.Skip("ASYNCMESH_TEST_AMQP_URL is not set (scripts/start-rabbitmq.sh prints one)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Open(ctx, Config{URL: url, Prefix: prefix, Instance: instance,
		Logger: slog.New(slog.DiscardHandler), ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.Ready():
	case <-ctx.Done():
		t.Fatal("not connected within 10s")
	}
	t.Cleanup(func() {
		if err := q.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
		q.Close()
	})
	return q
}

func TestQueueConformance(t *testing.T) {
	queuetest.Run(t, func(t *testing.T) queue.Queue { return open(t) })
}

func TestOpenRefusesBadURL(t *testing.T) {
	for _, u := range []string{"", "http://x", "amqp://", "::", "amqp://a:5672,http://b", "amqp://a:5672,"} {
		if _, err := Open(context.Background(), Config{URL: u}); err == nil {
			t.Errorf("Open(%q) accepted", u)
		}
	}
}

// TestConnectsToTheNextNode: with a cluster's nodes listed, a node that
// refuses connections is passed over for the next.
func TestConnectsToTheNextNode(t *testing.T) {
	good := os.Getenv("ASYNCMESH_TEST_AMQP_URL")
	if good == "" {
		t.Skip("ASYNCMESH_TEST_AMQP_URL is not set (scripts/start-rabbitmq.sh prints one)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Open(ctx, Config{URL: "amqp://guest:guest@127.0.0.1:1/," + good, Prefix: "asyncmesh-test-next", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	select {
	case <-q.Ready():
	case <-ctx.Done():
		t.Fatal("not connected through the second node")
	}
}

func TestRedactHidesPassword(t *testing.T) {
	if got := Redact("amqp://user:s3cret@127.0.0.1:5672/"); got != "amqp://user:xxxxx@127.0.0.1:5672/" {
		t.Fatal(got)
	}
}

func TestUnreachableBrokerIsNotFatal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	q, err := Open(ctx, Config{URL: "amqp://guest:guest@127.0.0.1:1/", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("Open with the broker down: %v", err)
	}
	defer q.Close()
	err = q.Publish(context.Background(), queue.Message{Topic: "work", Key: "k"})
	if err == nil {
		t.Fatal("Publish succeeded with no broker")
	}
}

func TestDelayBucketsAndDue(t *testing.T) {
	q := open(t)
	ctx := context.Background()
	if err := q.Publish(ctx, queue.Message{Topic: "d", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var at []time.Time
	done := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		_ = q.Consume(cctx, "d", 1, func(ctx context.Context, m queue.Message) error {
			mu.Lock()
			defer mu.Unlock()
			at = append(at, time.Now())
			if len(at) == 1 {
				return queue.RetryAfter(1300*time.Millisecond, "not a bucket: 1s, then another round")
			}
			close(done)
			return nil
		})
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("not redelivered")
	}
	cancel()
	if d := at[1].Sub(at[0]); d < 1250*time.Millisecond || d > 3*time.Second {
		t.Fatalf("redelivered after %v, want about 1.3s", d)
	}
}

// TestLocalMessagesWaitForTheirInstance: two collectors share a prefix. A
// message published Local by a goes to a's own consumer at once; while a
// does not consume, b gets it only once Local has passed.
func TestLocalMessagesWaitForTheirInstance(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	prefix := "asyncmesh-test-" + hex.EncodeToString(b)
	a, other := openAs(t, prefix, "a"), openAs(t, prefix, "b")
	ctx := context.Background()
	got := make(chan string, 4)
	consume := func(q *Queue, name string) context.CancelFunc {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = q.Consume(cctx, "w", 2, func(_ context.Context, m queue.Message) error {
				got <- name + ":" + m.Key
				return nil
			})
		}()
		return func() { cancel(); <-done }
	}
	stopB := consume(other, "b")
	defer stopB()
	time.Sleep(200 * time.Millisecond) // b is consuming (and so is no one on a's local queue)
	start := time.Now()
	if err := a.Publish(ctx, queue.Message{Topic: "w", Key: "k1", Local: 1500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "b:k1" || time.Since(start) < 1400*time.Millisecond {
			t.Fatalf("got %s after %v, want b:k1 after about 1.5s", m, time.Since(start))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a local message whose instance does not consume never reached the others")
	}
	stopA := consume(a, "a")
	defer stopA()
	time.Sleep(200 * time.Millisecond)
	start = time.Now()
	if err := a.Publish(ctx, queue.Message{Topic: "w", Key: "k2", Local: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "a:k2" || time.Since(start) > time.Second {
			t.Fatalf("got %s after %v, want a:k2 at once", m, time.Since(start))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a local message did not reach its own consumer")
	}
}

// TestReconnect drops the connection under a consumer and a publisher: both
// resume on the new connection and nothing published with a confirm is lost.
func TestReconnect(t *testing.T) {
	q := open(t)
	ctx := context.Background()
	var mu sync.Mutex
	got := map[string]bool{}
	cctx, cancel := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- q.Consume(cctx, "r", 4, func(ctx context.Context, m queue.Message) error {
			mu.Lock()
			got[m.Key] = true
			mu.Unlock()
			return nil
		})
	}()
	var confirmed []string
	for i := range 200 {
		if i == 100 {
			q.mu.Lock()
			q.conn.Close() // as if the broker went away
			q.mu.Unlock()
		}
		key := "m" + time.Now().Format("150405.000000")
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		err := q.Publish(pctx, queue.Message{Topic: "r", Key: key})
		pcancel()
		if err == nil {
			confirmed = append(confirmed, key)
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := 0
		for _, k := range confirmed {
			if got[k] {
				n++
			}
		}
		mu.Unlock()
		if n == len(confirmed) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-consumed
	mu.Lock()
	defer mu.Unlock()
	for _, k := range confirmed {
		if !got[k] {
			t.Errorf("confirmed message %s never consumed", k)
		}
	}
	t.Logf("%d of 200 publishes confirmed across the drop", len(confirmed))
	if len(confirmed) < 150 {
		t.Fatalf("only %d of 200 publishes confirmed: no reconnect?", len(confirmed))
	}
}
