package embedded

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Endpoint health (store.Endpoints): one row per endpoint, its state as
// JSON, changed by compare-and-set on version like records.
const (
	qEndpoint       = `SELECT doc, version FROM endpoints WHERE id = ?`
	qInsertEndpoint = `INSERT INTO endpoints(id, disabled, doc, version) VALUES (?,?,?,1) ON CONFLICT(id) DO NOTHING`
	qUpdateEndpoint = `UPDATE endpoints SET disabled = ?, doc = ?, version = version + 1 WHERE id = ? AND version = ?`
	qListEndpoints  = `SELECT doc FROM endpoints WHERE id > ? AND (disabled = 1 OR ? = 0) ORDER BY id LIMIT ?`
)

func (s *sqlStore) readEndpoint(ctx context.Context, id string) (*store.Endpoint, int64, error) {
	var doc []byte
	var ver int64
	if err := s.db().readRow(ctx, qEndpoint, id).Scan(&doc, &ver); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, 0, store.ErrNotFound
		}
		return nil, 0, fmt.Errorf("reading endpoint %s: %w", id, err)
	}
	var e store.Endpoint
	if err := json.Unmarshal(doc, &e); err != nil {
		return nil, 0, fmt.Errorf("decoding endpoint %s: %w", id, err)
	}
	return &e, ver, nil
}

func (s *sqlStore) GetEndpoint(ctx context.Context, id string) (*store.Endpoint, error) {
	e, _, err := s.readEndpoint(ctx, id)
	return e, err
}

// UpdateEndpoint reads, changes and writes the endpoint in one write
// transaction: the single writer serializes the updates of every collector
// on this database, so none conflicts.
func (s *sqlStore) UpdateEndpoint(ctx context.Context, id string, fn func(*store.Endpoint) error) (*store.Endpoint, error) {
	var out *store.Endpoint
	err := s.db().tx(ctx, func(t wtx) error {
		e := &store.Endpoint{ID: id}
		rows, err := t.query(qEndpoint, id)
		if err != nil {
			return err
		}
		var doc []byte
		var ver int64
		if rows.Next() {
			err = rows.Scan(&doc, &ver)
		}
		if cerr := rows.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if doc != nil {
			if err := json.Unmarshal(doc, e); err != nil {
				return fmt.Errorf("decoding endpoint %s: %w", id, err)
			}
		}
		if err := fn(e); err != nil {
			return err
		}
		e.ID = id
		if doc, err = json.Marshal(e); err != nil {
			return fmt.Errorf("encoding endpoint %s: %w", id, err)
		}
		if ver == 0 {
			_, err = t.exec(qInsertEndpoint, id, e.Disabled, doc)
		} else {
			_, err = t.exec(qUpdateEndpoint, e.Disabled, doc, id, ver)
		}
		out = e
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("writing endpoint %s: %w", id, err)
	}
	return out, nil
}

func (s *sqlStore) ListEndpoints(ctx context.Context, q store.EndpointQuery) ([]*store.Endpoint, error) {
	limit := q.Limit
	if limit <= 0 || limit > store.MaxLimit {
		limit = store.MaxLimit
	}
	rows, err := s.db().read(ctx, qListEndpoints, q.After, q.DisabledOnly, limit)
	if err != nil {
		return nil, fmt.Errorf("listing endpoints: %w", err)
	}
	defer rows.Close()
	out := []*store.Endpoint{}
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("listing endpoints: %w", err)
		}
		var e store.Endpoint
		if err := json.Unmarshal(doc, &e); err != nil {
			return nil, fmt.Errorf("decoding an endpoint: %w", err)
		}
		out = append(out, &e)
	}
	return out, rows.Err()
}
