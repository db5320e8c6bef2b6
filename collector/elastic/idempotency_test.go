package elastic

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
)

// TestKeyWithoutItsRecord plays a crash between the key's write and the
// record's: the key names a request that does not exist. It stays held
// (the collector decides, by the holder's deadline, when it is free), a
// retry that names it for replacement takes it over, and the record it
// then creates is the only one.
func TestKeyWithoutItsRecord(t *testing.T) {
	s := open(t, prefix())
	ctx := context.Background()
	scope := idempotency.Scope("", "idem", "crash")
	ghost := storetest.NewEnvelope("idem", "").ID
	data, _ := json.Marshal(keyDoc{ID: ghost, Fingerprint: "f", Expires: s.Now().Add(time.Hour), Deadline: s.Now().Add(-time.Minute)})
	if err := s.takeKey(ctx, scope, data, ""); err != nil {
		t.Fatal(err)
	}
	r := store.NewRecord(storetest.NewEnvelope("idem", ""), time.Now())
	k := store.Key{Scope: scope, ID: r.ID, Fingerprint: "f", Expires: s.Now().Add(time.Hour)}
	var held *store.KeyHeldError
	if err := s.CreateKeyed(ctx, r, k, nil, ""); !errors.As(err, &held) || held.Held.ID != ghost || held.Held.Deadline.IsZero() {
		t.Fatalf("CreateKeyed = %v, want the key held by the missing request %s, with its deadline", err, ghost)
	}
	if err := s.CreateKeyed(ctx, r, k, nil, ghost); err != nil {
		t.Fatalf("taking the key over from a request that never landed: %v", err)
	}
	if _, err := s.Get(ctx, r.ID); err != nil {
		t.Fatalf("Get: %v", err)
	}
	r2 := store.NewRecord(storetest.NewEnvelope("idem", ""), time.Now())
	k.ID = r2.ID
	if err := s.CreateKeyed(ctx, r2, k, nil, ghost); !errors.As(err, &held) || held.Held.ID != r.ID {
		t.Fatalf("a second take-over from the same ghost = %v, want the key held by %s", err, r.ID)
	}
}
