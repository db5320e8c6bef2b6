package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Retention (store.Expirer): records that reached a terminal status more
// than the retention ago are deleted, with the dead letters of the same age
// (the embedded queue keeps those forever otherwise; acked messages are
// deleted already). A record's UpdatedAt is when it became terminal, and
// the index requests_status(status, updated_at) finds them without a scan.
//
// Deletes go in bounded batches (expireBatch rows, one write operation
// each), so that a pass after a long pause (or a first pass on a large old
// database) never holds the writer, and the intakes grouped with it, for
// more than one batch; the context is checked between batches. A pass that
// finds nothing to delete (one indexed read of each table) takes no write,
// so an idle collector stays idle (db.go, "Idle"): no commit, no
// checkpoint.
//
// Space: SQLite puts the pages of deleted rows on its freelist and the
// next inserts reuse them, so the file stops growing once it holds one
// retention's worth of records; it does not shrink (auto_vacuum is off:
// incremental vacuum would move pages on every pass for a file that fills
// up again). TestExpiredPagesAreReused measures it. To hand the space back
// after a burst, stop the collector and run VACUUM on the file.

// expireBatch bounds the rows deleted by one write operation.
const expireBatch = 256

var terminal = []any{string(store.Delivered), string(store.Dead)}

const (
	qExpiredRecord     = `SELECT 1 FROM requests WHERE status IN (?,?) AND updated_at < ? LIMIT 1`
	qExpireRecords     = `DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE status IN (?,?) AND updated_at < ? LIMIT ?)`
	qExpiredDeadLetter = `SELECT 1 FROM dead_letters WHERE at < ? LIMIT 1`
	// Dead letters have no index on at: seq follows at, so the oldest come
	// first and a batch stops at the first young one it does not need.
	qExpireDeadLetters = `DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM dead_letters WHERE at < ? ORDER BY seq LIMIT ?)`
)

// Expire implements store.Expirer: it deletes the records terminal since
// before before, and the dead letters older than before. The status
// condition is part of each DELETE, so a record replayed (moved out of its
// terminal status) while a pass runs is kept. It returns the records
// deleted.
func (s *sqlStore) Expire(ctx context.Context, before time.Time) (int, error) {
	return s.db().expire(ctx, before)
}

func (db *DB) expire(ctx context.Context, before time.Time) (int, error) {
	cut := unixNano(before)
	records, err := db.expireAll(ctx, qExpiredRecord, qExpireRecords, append(terminal, cut)...)
	if err != nil {
		return records, fmt.Errorf("expiring records terminal before %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	if _, err := db.expireAll(ctx, qExpiredDeadLetter, qExpireDeadLetters, cut); err != nil {
		return records, fmt.Errorf("expiring dead letters older than %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	return records, nil
}

// expireAll deletes with del (its arguments: args, then the batch size)
// batch after batch, after a read with probe (args) says there is
// something to delete.
func (db *DB) expireAll(ctx context.Context, probe, del string, args ...any) (int, error) {
	var one int
	if err := db.readRow(ctx, probe, args...).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return 0, nil
		}
		return 0, err
	}
	total := 0
	for {
		var n int64
		err := db.tx(ctx, func(t wtx) error {
			res, err := t.exec(del, append(args, expireBatch)...)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		total += int(n)
		if err != nil {
			return total, err
		}
		if n < expireBatch {
			return total, nil
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
	}
}

// StartRetention deletes, every store.RetentionInterval (and once now),
// the records terminal for longer than retention (Expire) until the
// database is closed. Call it at most once, before Close.
func (db *DB) StartRetention(retention time.Duration) {
	db.startRetention(retention, store.RetentionInterval)
}

func (db *DB) startRetention(retention, every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	db.wg.Add(2)
	go func() {
		defer db.wg.Done()
		defer cancel()
		s := db.Store()
		store.Retain(ctx, s.(store.Expirer), s.Now, retention, every, slog.Default().With("store", "embedded"))
	}()
	go func() { // Close stops the job: it waits on db.wg
		defer db.wg.Done()
		select {
		case <-db.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
}

var _ store.Expirer = (*sqlStore)(nil)
