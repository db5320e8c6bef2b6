package store

import (
	"context"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// Key is an Idempotency-Key as a store keeps it (internal/idempotency): it
// says which request took it, for what request, and until when.
type Key struct {
	// Scope is idempotency.Scope(caller, rule, key): the stored key.
	Scope string `json:"scope"`
	// ID is the request that holds the key.
	ID string `json:"id"`
	// Fingerprint is idempotency.Fingerprint of that request.
	Fingerprint string `json:"fingerprint"`
	// Expires is when the key is free again, on the store's clock
	// (Store.Now): its creation plus the rule's idempotencyWindow.
	Expires time.Time `json:"expires"`
	// Deadline is the intake deadline of the request that holds it
	// (envelope.Deadline; zero when none): until then (and the workers'
	// grace) its intake may still refuse it, after it a key whose record
	// does not exist was never used (a crash between the key's write and
	// the record's, on a store that writes them apart).
	Deadline time.Time `json:"deadline,omitzero"`
}

// Idempotent is a store that creates a record only if no live record holds
// its Idempotency-Key, atomically (storetest's Idempotency part checks it):
// of any number of concurrent CreateKeyed calls with one Scope, one creates
// its record and the others get a *KeyHeldError.
type Idempotent interface {
	Store
	// CreateKeyed creates r under key k (k.ID is r.ID) unless another
	// request holds k.Scope and the key has not expired by the store's
	// clock: then it writes nothing and returns a *KeyHeldError naming the
	// holder. replace, when not "", is a holder the caller found dead (its
	// record abandoned, or never written): the key is taken over only if
	// it still names that request (compare-and-set). m, when not nil, is
	// published in the same commit (a store that is also an Outbox; others
	// refuse it).
	CreateKeyed(ctx context.Context, r *Record, k Key, m *queue.Message, replace string) error
	// ExpireKeys deletes the keys expired before before and returns how
	// many: a key past Expires is free already (CreateKeyed ignores it),
	// this only frees the space. Retain runs it on every pass.
	ExpireKeys(ctx context.Context, before time.Time) (int, error)
}

// KeyHeldError says that a live request holds the key a CreateKeyed asked
// for; nothing was written.
type KeyHeldError struct {
	Held Key
}

func (e *KeyHeldError) Error() string {
	return "idempotency key held by request " + e.Held.ID + " until " + e.Held.Expires.UTC().Format(time.RFC3339)
}
