package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestCeiling(t *testing.T) {
	e := Exponential{Initial: 100 * time.Millisecond, Max: time.Second}
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{-1, 100 * time.Millisecond},
		{0, 100 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{1000, time.Second}, // no overflow: doubling stops at the cap
	} {
		if got := e.Ceiling(tc.n); got != tc.want {
			t.Errorf("Ceiling(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	if got := (Exponential{Initial: time.Second}).Ceiling(3); got != 0 {
		t.Errorf("zero Max: Ceiling = %v, want 0", got)
	}
}

func TestDelayFullJitter(t *testing.T) {
	for _, tc := range []struct {
		name string
		rand func(int64) int64
		n    int
		want time.Duration
	}{
		{"lowest draw waits 0", func(int64) int64 { return 0 }, 3, 0},
		{"highest draw waits the ceiling", func(n int64) int64 { return n - 1 }, 3, 400 * time.Millisecond},
		{"capped", func(n int64) int64 { return n - 1 }, 50, time.Second},
	} {
		e := Exponential{Initial: 100 * time.Millisecond, Max: time.Second, Rand: tc.rand}
		if got := e.Delay(tc.n); got != tc.want {
			t.Errorf("%s: Delay(%d) = %v, want %v", tc.name, tc.n, got, tc.want)
		}
	}
}

func TestDelayNoJitter(t *testing.T) {
	e := Exponential{Initial: 100 * time.Millisecond, Max: 30 * time.Second, NoJitter: true,
		Rand: func(int64) int64 { t.Fatal("NoJitter drew a random number"); return 0 }}
	if got := e.Delay(3); got != 400*time.Millisecond {
		t.Errorf("Delay(3) = %v, want 400ms", got)
	}
}

// TestDelaySpread checks the real random source covers [0, ceiling].
func TestDelaySpread(t *testing.T) {
	e := Exponential{Initial: time.Millisecond, Max: time.Second}
	var lo, hi bool
	for range 2000 {
		d := e.Delay(2)
		if d < 0 || d > 2*time.Millisecond {
			t.Fatalf("Delay(2) = %v, outside [0, 2ms]", d)
		}
		lo = lo || d < time.Millisecond/2
		hi = hi || d > 3*time.Millisecond/2
	}
	if !lo || !hi {
		t.Errorf("Delay not spread over [0, 2ms]: low %v high %v", lo, hi)
	}
}

func TestBackoffResets(t *testing.T) {
	b := Backoff{Policy: Exponential{Initial: time.Second, Max: 4 * time.Second, NoJitter: true}}
	var got []time.Duration
	for range 4 {
		got = append(got, b.Next())
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits = %v, want %v", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != time.Second || b.Failures() != 1 {
		t.Errorf("after Reset: Next = %v (failures %d), want 1s (1)", d, b.Failures())
	}
}

type fakeClock struct{ after chan time.Time }

func (f fakeClock) Now() time.Time                       { return time.Unix(0, 0) }
func (f fakeClock) After(time.Duration) <-chan time.Time { return f.after }

func TestSleep(t *testing.T) {
	c := fakeClock{after: make(chan time.Time, 1)}
	c.after <- time.Unix(0, 0)
	if err := Sleep(context.Background(), c, time.Hour); err != nil {
		t.Errorf("Sleep with the clock fired = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, fakeClock{after: make(chan time.Time)}, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep with ctx done = %v, want context.Canceled", err)
	}
}
