package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Link is the last request taken into an ordering key's sequence: its id,
// and its intake deadline (zero when none), past which (and the workers'
// grace) a request without a record was never written.
type Link struct {
	ID       string    `json:"id"`
	Deadline time.Time `json:"deadline,omitzero"`
}

// Orderer is a store that keeps the sequences of ordering keys (rules
// ordering:): one small document per key naming its last request. Both
// stores implement it; storetest's Ordering part checks it.
type Orderer interface {
	// Chain makes l the last request of the key scope (OrderScope) and
	// returns the one it follows (the zero Link for the key's first), by
	// compare-and-set: of concurrent Chain calls on one scope each returns
	// a different predecessor, so that the requests form one sequence.
	Chain(ctx context.Context, scope string, l Link) (prev Link, err error)
	// ExpireOrder deletes the documents of the keys whose last request was
	// chained before before (on the store's clock) and is done (OrderDone:
	// delivered or dead; or without a record and with an intake deadline
	// before before: never written, or deleted by retention), and returns
	// how many it deleted. Such a key's next request follows nothing, as
	// it would have run at once after its predecessor anyway. The delete is
	// conditioned on the document it checked: a key chained to meanwhile
	// is kept. A key whose last request is not done is kept however old.
	// Retain runs it with the records' cutoff.
	ExpireOrder(ctx context.Context, before time.Time) (int, error)
}

// OrderDone reports whether record r, the predecessor of requests in an
// ordering key, no longer blocks them: it is delivered or dead, or was
// once (a replay sends an old callback again, and does not stop its key).
func OrderDone(r *Record) bool {
	return r.Status.Terminal() || !r.Last(Deliver, GiveUp, Abandon).IsZero()
}

// OrderScope is the stored name of ordering key key of rule rule: fixed
// length whatever the key (the key is bounded, rules.MaxOrderKeyLen, but
// the rule name is not).
func OrderScope(rule, key string) string {
	sum := sha256.Sum256([]byte(rule + "\n" + key))
	return hex.EncodeToString(sum[:16])
}

// OrdererOf returns s's key sequences, when it keeps them.
func OrdererOf(s Store) (Orderer, bool) {
	o, ok := s.(Orderer)
	return o, ok
}

// MaxChainRetries bounds the re-reads of Chain on conflicts.
const MaxChainRetries = 50
