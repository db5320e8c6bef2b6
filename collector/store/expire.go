package store

import (
	"context"
	"log/slog"
	"time"
)

// Expirer is a Store that deletes records some time after they reached a
// terminal status (Status.Terminal: delivered, dead), so that the system of
// record does not grow forever. Retention is the last move of the lifecycle
// (docs/architecture.md, "Retention").
//
// Expire deletes the records that reached their terminal status before
// before (their UpdatedAt: nothing but a replay, which leaves the terminal
// status, changes a terminal record) and returns how many it deleted. It
// never deletes a record that is not terminal, nor one that became terminal
// at or after before, even when that happens while it runs (the delete is
// conditioned on the status and the version it saw). A backend may keep an
// expired record somewhat longer, for at most one day: Elasticsearch
// deletes records by daily index, and looks only at indices whose UTC day
// (the day the record was created) ended before before.
type Expirer interface {
	Expire(ctx context.Context, before time.Time) (int, error)
}

// DefaultRetention is how long records are kept once terminal, unless
// configured otherwise (the collector's -retention).
const DefaultRetention = 30 * 24 * time.Hour

// RetentionInterval is how often Retain runs a pass.
const RetentionInterval = time.Hour

// Retain runs a retention pass of e at once and then every interval until
// ctx ends: records terminal for longer than retention by the store's clock
// (now: Store.Now, the clock its records' times are on) are deleted, and,
// when e is an Orderer, the ordering keys whose last request is done and
// older than that (ExpireOrder). A pass that fails is logged and tried again at the next interval. Backends start
// it on open and stop it on Close, each with its own e.
func Retain(ctx context.Context, e Expirer, now func() time.Time, retention, interval time.Duration, log *slog.Logger) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := e.Expire(ctx, now().Add(-retention))
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("retention: expiring terminal records", "err", err, "deleted", n)
		case n > 0:
			log.Info("retention: expired terminal records", "deleted", n, "retention", retention.String())
		}
		// Ordering keys go with the records: a key whose last request is
		// done and was taken in before the cutoff.
		if o, ok := e.(Orderer); ok {
			n, err := o.ExpireOrder(ctx, now().Add(-retention))
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("retention: expiring ordering keys", "err", err, "deleted", n)
			case n > 0:
				log.Info("retention: expired ordering keys", "deleted", n)
			}
		}
		// Idempotency keys expire by their own window, not the
		// retention (which may be 0: keep records forever).
		if k, ok := e.(Idempotent); ok {
			n, err := k.ExpireKeys(ctx, now())
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("retention: expiring idempotency keys", "err", err, "deleted", n)
			case n > 0:
				log.Info("retention: expired idempotency keys", "deleted", n)
			}
		}
		t.Reset(interval)
	}
}
