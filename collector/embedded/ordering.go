package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Ordering keys (store.Orderer): a row per key naming its last request
// (id, deadline: what expiry joins on) and the ones before it (earlier,
// JSON, newest first). The writer is one connection, so the read of the
// last requests and the write that replaces them are atomic: concurrent
// Chain calls form one sequence.
const (
	qOrderLast = `SELECT id, deadline, earlier FROM order_keys WHERE scope = ?`
	qDropOrder = `DELETE FROM order_keys WHERE scope = ?`
	qPutOrder  = `INSERT INTO order_keys(scope, id, deadline, earlier, updated_at) VALUES (?,?,?,?,?)
	ON CONFLICT(scope) DO UPDATE SET id = excluded.id, deadline = excluded.deadline, earlier = excluded.earlier, updated_at = excluded.updated_at`
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
func (s *sqlStore) Chain(ctx context.Context, scope string, l store.Link) ([]store.Link, error) {
	var prev []store.Link
	err := s.db().tx(ctx, func(t wtx) error {
		var err error
		if prev, err = orderLinks(t, scope); err != nil {
			return err
		}
		if before, again := store.Rechained(prev, l.ID); again {
			prev = before
			return nil
		}
		return putOrderLinks(t, scope, store.NextLinks(l, prev), s.Now())
	})
	if err != nil {
		return nil, fmt.Errorf("chaining request %s to its ordering key: %w", l.ID, err)
	}
	return prev, nil
}

// Unchain implements store.Orderer.
func (s *sqlStore) Unchain(ctx context.Context, scope string, l store.Link) error {
	err := s.db().tx(ctx, func(t wtx) error {
		links, err := orderLinks(t, scope)
		switch {
		case err != nil:
			return err
		case len(links) == 0 || links[0].ID != l.ID:
			return nil // chained to since
		case len(links) == 1:
			_, err = t.exec(qDropOrder, scope)
			return err
		}
		return putOrderLinks(t, scope, links[1:], s.Now())
	})
	if err != nil {
		return fmt.Errorf("taking request %s out of its ordering key: %w", l.ID, err)
	}
	return nil
}

// orderLinks reads the links of key scope, newest first (none: a new key).
func orderLinks(t wtx, scope string) ([]store.Link, error) {
	rows, err := t.query(qOrderLast, scope)
	if err != nil {
		return nil, err
	}
	var last store.Link
	var deadline int64
	var earlier []byte
	found := rows.Next()
	if found {
		err = rows.Scan(&last.ID, &deadline, &earlier)
	}
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = rows.Err()
	}
	if err != nil || !found {
		return nil, err
	}
	if deadline != 0 {
		last.Deadline = time.Unix(0, deadline).UTC()
	}
	links := []store.Link{last}
	if len(earlier) > 0 {
		var more []store.Link
		if err := json.Unmarshal(earlier, &more); err != nil {
			return nil, fmt.Errorf("decoding the key's earlier requests: %w", err)
		}
		links = append(links, more...)
	}
	return links, nil
}

// putOrderLinks writes links (newest first, at least one) as key scope's.
func putOrderLinks(t wtx, scope string, links []store.Link, now time.Time) error {
	var earlier []byte
	if len(links) > 1 {
		var err error
		if earlier, err = json.Marshal(links[1:]); err != nil {
			return err
		}
	}
	_, err := t.exec(qPutOrder, scope, links[0].ID, deadlineNano(links[0].Deadline), earlier, unixNano(now))
	return err
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
