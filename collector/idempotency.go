package collector

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/internal/envelope"
	"github.com/asyncmesh/asyncmesh/internal/idempotency"
)

// Idempotent intake (docs/rules.md, "Retried POSTs: Idempotency-Key").
//
// An envelope with an IdempotencyKey is created under the key's scope
// (store.Idempotent: the declared caller, the rule, the key), atomically:
// of two intakes with one key, one creates its record and the other finds
// the key held and answers from the holder, writing and publishing
// nothing:
//   - the holder is the same request (same fingerprint: method,
//     request-target, body) → 200 with x-async-idempotent: replayed and
//     the first request's id, trace id, status and access-token hash,
//     which the filter turns into the first request's 202;
//   - another request → 422 idempotency_key_reused;
//   - the holder's intake has not decided yet (it may still be refused) →
//     409 idempotency_key_in_progress, Retry-After: 1;
//   - the holder never ran and never will (intake abandoned it: its caller
//     was told 503; or its record was never written, past its deadline) →
//     the key is free: taken over by compare-and-set on the holder's id.

// Intake's answers on a held key.
const (
	hdrIdempotent     = "x-async-idempotent" // collector → filter: the answer is the first request's
	idempotentReplay  = "replayed"
	maxKeyTakeOvers   = 3
	inProgressRetryIn = "1"
	holderReads       = 4 // reads of a held key's holder before intake gives up (judgeHolder)
)

// keyClaim is the key an intake creates its record under.
type keyClaim struct {
	k       store.Key
	replace string // a dead holder to take the key over from
}

func idempotentStore(s store.Store) store.Idempotent {
	i, _ := s.(store.Idempotent)
	return i
}

// claimFor returns the key env's record is to be created under (nil: none).
func (c *Collector) claimFor(env *envelope.Envelope, deadline time.Time, log *slog.Logger) *keyClaim {
	if env.IdempotencyKey == "" {
		return nil
	}
	if c.idem == nil {
		log.Warn("intake: the store keeps no Idempotency-Keys; the request is taken as a new one")
		return nil
	}
	return &keyClaim{k: store.Key{
		Scope:       idempotency.Scope(env.Caller, env.Rule, env.IdempotencyKey),
		ID:          env.ID,
		Fingerprint: idempotency.Fingerprint(env.Method, env.Path, env.Body),
		Expires:     c.store.Now().Add(env.IdempotencyWindow.D()),
		Deadline:    deadline,
	}}
}

// create creates r: under key when not nil, publishing m in the same
// commit when not nil (the outbox).
func (c *Collector) create(ctx context.Context, r *store.Record, key *keyClaim, m *queue.Message) error {
	switch {
	case key != nil:
		return c.idem.CreateKeyed(ctx, r, key.k, m, key.replace)
	case m != nil:
		return c.outbox.CreatePublish(ctx, r, m)
	}
	return c.store.Create(ctx, r)
}

// keyVerdict is what intake does about a held key.
type keyVerdict int

const (
	keyDuplicate  keyVerdict = iota // answer the holder's acceptance
	keyReused                       // 422
	keyInProgress                   // 409
	keyFree                         // take the key over from its dead holder
)

// judgeHolder decides about key held, which a request whose fingerprint
// is fp asked for; with keyDuplicate it returns the holder's record
// (without bodies).
func (c *Collector) judgeHolder(ctx context.Context, held store.Key, fp string) (keyVerdict, *store.Record, error) {
	rec, err := store.Peek(ctx, c.store, held.ID)
	// A holder written an instant ago may not be readable yet (on
	// Elasticsearch, the first record of a day creates its daily index, and
	// reads fail until its shard has started): read again a few times
	// before answering that the store failed.
	for try := 1; err != nil && !errors.Is(err, store.ErrNotFound) && try < holderReads; try++ {
		select {
		case <-ctx.Done():
			return 0, nil, err
		case <-time.After(time.Duration(try) * 100 * time.Millisecond):
		}
		rec, err = store.Peek(ctx, c.store, held.ID)
	}
	undecided := func() bool { // its intake may still refuse it
		o, known := c.decided.state(held.ID)
		if known {
			return o != accepted
		}
		return !held.Deadline.IsZero() && time.Now().Before(held.Deadline.Add(workerGrace))
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Written apart from its key (a store without transactions) and
		// not yet, or never: free once its intake can no longer write it.
		if undecided() {
			return keyInProgress, nil, nil
		}
		return keyFree, nil, nil
	case err != nil:
		return 0, nil, err
	case rec.Status == store.Dead && rec.Error == AbandonedNote:
		return keyFree, nil, nil // its caller was told it failed
	case held.Fingerprint != fp:
		return keyReused, nil, nil
	case (rec.Status == store.Persisted || rec.Status == store.Queued) && undecided():
		return keyInProgress, nil, nil
	}
	return keyDuplicate, rec, nil
}

// answerDuplicate answers the filter with the first request's acceptance:
// its id, trace id, status now and access-token hash (from which the
// filter re-derives the token: access.DeriveToken).
func answerDuplicate(w http.ResponseWriter, first *store.Record) {
	hash := ""
	if first.Envelope != nil {
		hash = first.Envelope.AccessHash
	}
	w.Header().Set(hdrIdempotent, idempotentReplay)
	w.Header().Set("x-async-status", string(first.Status))
	writeJSON(w, http.StatusOK, map[string]string{"id": first.ID, "traceId": first.TraceID, "status": string(first.Status), "accessHash": hash})
}
