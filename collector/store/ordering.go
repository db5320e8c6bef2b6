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

// MaxOrderLinks is how many of a key's last requests its document names,
// and so how far back a request's links reach (newest first). One link
// would do if every request chained were written and ran; but a request
// can be chained and then never written (its intake failed or crashed in
// between, or answered an Idempotency-Key's retry from its first request),
// and then the one after it must know the one before it: the collector's
// ordering.go walks back over those. Past MaxOrderLinks never-written
// requests in a row (intake refusing that many in a row, after their links
// were written, within one request's wait), a request runs without knowing
// whether the one before them is done. Abandoned requests do not count:
// their records carry links of their own.
const MaxOrderLinks = 16

// Orderer is a store that keeps the sequences of ordering keys (rules
// ordering:): one small document per key naming its last requests. Both
// stores implement it; storetest's Ordering part checks it.
type Orderer interface {
	// Chain makes l the last request of the key scope (OrderScope) and
	// returns the ones it follows, newest first, at most MaxOrderLinks
	// (none for the key's first), by compare-and-set: of concurrent Chain
	// calls on one scope each returns a different predecessor (prev[0]),
	// so that the requests form one sequence.
	//
	// Chain is idempotent: a request already among the key's links (its
	// intake retried: the filter lost the answer) keeps its place, and gets
	// the links before it again (Rechained); nothing is written.
	Chain(ctx context.Context, scope string, l Link) (prev []Link, err error)
	// Unchain takes l back out of the key scope when it is still its last
	// request: intake refused it after Chain, so it will never be written,
	// and the next request follows the ones before it directly. A key
	// chained to since keeps l (the requests after it pass over it once its
	// intake deadline is past, the collector's ordering.go).
	Unchain(ctx context.Context, scope string, l Link) error
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
// An abandoned record is done but never ran (OrderRan): the requests
// before it may not be done.
func OrderDone(r *Record) bool {
	return r.Status.Terminal() || !r.Last(Deliver, GiveUp, Abandon).IsZero()
}

// OrderRan reports whether record r ran (or will): it was not abandoned.
// A request runs only once the one before it is done, so a done record
// that ran vouches for every request before it in its key; an abandoned
// one vouches for nothing.
func OrderRan(r *Record) bool { return r.Last(Abandon).IsZero() }

// Rechained returns, when id is among a key's links prev (newest first),
// the links before it, and true (Orderer.Chain).
func Rechained(prev []Link, id string) ([]Link, bool) {
	for i, l := range prev {
		if l.ID == id {
			return prev[i+1:], true
		}
	}
	return nil, false
}

// NextLinks returns the links a key's document keeps once l is chained
// after prev (Chain's answer): l, then prev, at most MaxOrderLinks.
func NextLinks(l Link, prev []Link) []Link {
	return append([]Link{l}, prev[:min(len(prev), MaxOrderLinks-1)]...)
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
