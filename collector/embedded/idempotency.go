package embedded

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Idempotency keys (store.Idempotent): a table keyed by the key's scope
// hash, written in the same transaction as the record it names (and its
// work message), so no crash leaves a key without its record or a record
// without its key. The writer is one connection, so the read of the holder
// and the write that follows it are atomic.
const (
	qKeyHolder = `SELECT id, fingerprint, expires_at, deadline FROM idempotency_keys WHERE scope = ?`
	// qPutKey takes the key when it is free, expired (?: now) or held by
	// the request to replace (?); otherwise it changes no row.
	qPutKey = `INSERT INTO idempotency_keys(scope, id, fingerprint, expires_at, deadline) VALUES (?,?,?,?,?)
	ON CONFLICT(scope) DO UPDATE SET id = excluded.id, fingerprint = excluded.fingerprint, expires_at = excluded.expires_at, deadline = excluded.deadline
	WHERE idempotency_keys.expires_at <= ? OR idempotency_keys.id = ?`
	qExpiredKey = `SELECT 1 FROM idempotency_keys WHERE expires_at < ? LIMIT 1`
	qExpireKeys = `DELETE FROM idempotency_keys WHERE scope IN (SELECT scope FROM idempotency_keys WHERE expires_at < ? LIMIT ?)`
)

// CreateKeyed implements store.Idempotent.
func (s *sqlStore) CreateKeyed(ctx context.Context, r *store.Record, k store.Key, m *queue.Message, replace string) error {
	if k.ID != r.ID {
		return fmt.Errorf("creating record %s: its key names request %s", r.ID, k.ID)
	}
	doc, reqBody, respBody, err := encode(r)
	if err != nil {
		return err
	}
	var held *store.KeyHeldError
	err = s.db().tx(ctx, func(t wtx) error {
		// One statement in the common case (a new key); the holder is read
		// only when the key turns out to be held.
		res, err := t.exec(qPutKey, k.Scope, k.ID, k.Fingerprint, unixNano(k.Expires), deadlineNano(k.Deadline), unixNano(s.Now()), replace)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			h, found, err := keyHolder(t, k.Scope)
			if err != nil {
				return err
			}
			if !found {
				return fmt.Errorf("idempotency key %s neither taken nor held", k.Scope)
			}
			held = &store.KeyHeldError{Held: h}
			return held // rolls this operation back: nothing is written
		}
		if err := insertRecord(t, r, doc, reqBody, respBody); err != nil {
			return err
		}
		return insertMessage(t, m)
	})
	switch {
	case held != nil && errors.As(err, &held):
		return held
	case err != nil && strings.Contains(err.Error(), "UNIQUE constraint"):
		return store.ErrExists
	case err != nil:
		return fmt.Errorf("creating record %s under an idempotency key: %w", r.ID, err)
	}
	s.recent.Put(r, store.Version{})
	s.wakeFor(m)
	return nil
}

func keyHolder(t wtx, scope string) (store.Key, bool, error) {
	rows, err := t.query(qKeyHolder, scope)
	if err != nil {
		return store.Key{}, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return store.Key{}, false, rows.Err()
	}
	h := store.Key{Scope: scope}
	var expires, deadline int64
	if err := rows.Scan(&h.ID, &h.Fingerprint, &expires, &deadline); err != nil {
		return store.Key{}, false, err
	}
	h.Expires = time.Unix(0, expires).UTC()
	if deadline != 0 {
		h.Deadline = time.Unix(0, deadline).UTC()
	}
	return h, true, rows.Close()
}

func deadlineNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return unixNano(t)
}

// ExpireKeys implements store.Idempotent: it deletes the keys expired
// before before, in batches, taking no write when there are none.
func (s *sqlStore) ExpireKeys(ctx context.Context, before time.Time) (int, error) {
	n, err := s.db().expireAll(ctx, qExpiredKey, qExpireKeys, unixNano(before))
	if err != nil {
		return n, fmt.Errorf("expiring idempotency keys before %s: %w", before.UTC().Format(time.RFC3339), err)
	}
	return n, nil
}

var _ store.Idempotent = (*sqlStore)(nil)
