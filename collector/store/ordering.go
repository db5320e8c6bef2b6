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
