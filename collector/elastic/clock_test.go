package elastic

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
)

// TestLeasesIgnoreCollectorClocks plays two collectors on one Elasticsearch
// whose own clocks are 30 s apart (one ahead, one behind): the store's clock
// is Elasticsearch's, so the one ahead does not take a lease the other holds
// as expired, and the one behind does not hold its lease 30 s too long.
func TestLeasesIgnoreCollectorClocks(t *testing.T) {
	p := prefix()
	base := open(t, p)
	skewed := func(d time.Duration) *Store {
		s, err := Open(context.Background(), Config{URL: esURL(t), Prefix: p, Logger: slog.New(slog.DiscardHandler),
			Clock: func() time.Time { return time.Now().Add(d) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	ahead, behind := skewed(30*time.Second), skewed(-30*time.Second)
	for _, s := range []*Store{base, ahead, behind} {
		if d := s.Now().Sub(time.Now()); d < -time.Second || d > time.Second {
			t.Fatalf("the store's clock is %v off Elasticsearch's (this host's)", d)
		}
	}
	ctx := context.Background()
	r := store.NewRecord(storetest.NewEnvelope("a", ""), time.Now())
	if err := base.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	// behind leases it for 10 s: on its own clock the lease would end 30 s
	// in the past, free for anyone at once.
	got, err := behind.Transition(ctx, r.ID, store.Change{Event: store.Claim, Claim: true, Lease: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(got.LeaseUntil); left < 8*time.Second || left > 12*time.Second {
		t.Fatalf("lease ends in %v, want about 10s", left)
	}
	// ahead would see it expired 20 s ago on its own clock.
	if _, err := ahead.Transition(ctx, r.ID, store.Change{Event: store.Resume, Claim: true, Lease: time.Minute}); err == nil {
		t.Fatal("a collector 30 s ahead took a lease held for 10 s more")
	} else if _, ok := store.LeasedUntil(err); !ok {
		t.Fatalf("claim = %v, want a lease conflict", err)
	}
	// A short lease held by ahead ends when it should for behind, not 30 s later.
	r2 := store.NewRecord(storetest.NewEnvelope("a", ""), time.Now())
	if err := base.Create(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if _, err := ahead.Transition(ctx, r2.ID, store.Change{Event: store.Claim, Claim: true, Lease: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if _, err := behind.Transition(ctx, r2.ID, store.Change{Event: store.Resume, Claim: true, Lease: time.Minute}); err != nil {
		t.Fatalf("a lease that ran out was not released to a collector 30 s behind: %v", err)
	}
}
