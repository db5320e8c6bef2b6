package embedded

import (
	"context"
	"fmt"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Ordering keys (store.Orderer): a row per key naming its last request.
// The writer is one connection, so the read of the last request and the
// write that replaces it are atomic: concurrent Chain calls form one
// sequence.
const (
	qOrderLast = `SELECT id, deadline FROM order_keys WHERE scope = ?`
	qPutOrder  = `INSERT INTO order_keys(scope, id, deadline, updated_at) VALUES (?,?,?,?)
	ON CONFLICT(scope) DO UPDATE SET id = excluded.id, deadline = excluded.deadline, updated_at = excluded.updated_at`
	// A key expires when it was last chained before the cutoff and its
	// last request is done: delivered or dead, or without a record and
	// with its intake deadline before the cutoff (store.Orderer). The
	// arguments: the cutoff twice, then the terminal statuses. A replayed
	// request (no longer terminal) keeps its key until it is terminal
	// again: conservative, never wrong. The delete is one statement on the
	// one writer: a key chained to meanwhile no longer matches.
	orderExpired = ` FROM order_keys o LEFT JOIN requests r ON r.id = o.id
	WHERE o.updated_at < ? AND ((r.id IS NULL AND o.deadline < ?) OR r.status IN (?,?))`
	qExpiredOrder = `SELECT 1` + orderExpired + ` LIMIT 1`
	qExpireOrder  = `DELETE FROM order_keys WHERE scope IN (SELECT o.scope` + orderExpired + ` LIMIT ?)`
)

// Chain implements store.Orderer.
func (s *sqlStore) Chain(ctx context.Context, scope string, l store.Link) (store.Link, error) {
	var prev store.Link
	err := s.db().tx(ctx, func(t wtx) error {
		prev = store.Link{}
		rows, err := t.query(qOrderLast, scope)
		if err != nil {
			return err
		}
		var deadline int64
		found := rows.Next()
		if found {
			err = rows.Scan(&prev.ID, &deadline)
		}
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = rows.Err()
		}
		if err != nil {
			return err
		}
		if deadline != 0 {
			prev.Deadline = time.Unix(0, deadline).UTC()
		}
		_, err = t.exec(qPutOrder, scope, l.ID, deadlineNano(l.Deadline), unixNano(s.Now()))
		return err
	})
	if err != nil {
		return store.Link{}, fmt.Errorf("chaining request %s to its ordering key: %w", l.ID, err)
	}
	return prev, nil
}

// ExpireOrder implements store.Orderer: batches of deletes, none (and no
// write) when nothing has expired.
func (s *sqlStore) ExpireOrder(ctx context.Context, before time.Time) (int, error) {
	cut := unixNano(before)
	n, err := s.db().expireAll(ctx, qExpiredOrder, qExpireOrder, append([]any{cut, cut}, terminal...)...)
	if err != nil {
		return n, fmt.Errorf("expiring ordering keys before %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	return n, nil
}

var _ store.Orderer = (*sqlStore)(nil)
