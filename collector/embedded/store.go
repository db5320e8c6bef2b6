package embedded

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// Store returns the store view of db.
func (db *DB) Store() store.Store { return (*sqlStore)(db) }

type sqlStore DB

func (s *sqlStore) db() *DB { return (*DB)(s) }

func (s *sqlStore) Ping(ctx context.Context) error { return s.db().Ping(ctx) }

// Close is a no-op: the DB is closed by its owner.
func (s *sqlStore) Close() error { return nil }

func (s *sqlStore) Create(ctx context.Context, r *store.Record) error {
	return s.CreatePublish(ctx, r, nil)
}

// CreatePublish creates r and, when m is not nil, publishes m on this
// database's queue in the same commit (the collector's outbox: intake makes
// one write, and no crash falls between the record and its message).
func (s *sqlStore) CreatePublish(ctx context.Context, r *store.Record, m *queue.Message) error {
	doc, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding record %s: %w", r.ID, err)
	}
	err = s.db().tx(ctx, func(t wtx) error {
		if _, err := t.exec(qInsertRecord,
			r.ID, r.TraceID, r.Rule, string(r.Status), r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), doc); err != nil {
			return err
		}
		return insertMessage(t, m)
	})
	if err != nil && strings.Contains(err.Error(), "UNIQUE constraint") {
		return store.ErrExists
	}
	if err != nil {
		return fmt.Errorf("creating record %s: %w", r.ID, err)
	}
	s.recent.Put(r, store.Version{})
	s.wakeFor(m)
	return nil
}

func (s *sqlStore) Transition(ctx context.Context, id string, c store.Change) (*store.Record, error) {
	return s.TransitionPublish(ctx, id, c, nil)
}

// maxCASRetries bounds re-reads after version conflicts.
const maxCASRetries = 20

// errStale is a compare-and-set that found a newer version.
var errStale = errors.New("record changed since it was read")

// TransitionPublish applies c and, when m is not nil, publishes m on this
// database's queue in the same commit.
//
// The record is read (or taken from the recent-writes cache), changed and
// encoded by the caller's goroutine; the writer only runs the UPDATE,
// conditioned on the version that was read. Decoding and encoding JSON in the
// writer made it the collector's bottleneck: it is one goroutine.
func (s *sqlStore) TransitionPublish(ctx context.Context, id string, c store.Change, m *queue.Message) (*store.Record, error) {
	if c.At.IsZero() {
		c.At = time.Now().UTC() // one time for every retry of this change
	}
	for i := range maxCASRetries {
		r, ver, cached := s.recent.Get(id)
		if !cached || i > 0 {
			var err error
			if r, ver.Seq, err = s.read(ctx, id); err != nil {
				return nil, err
			}
		}
		if err := c.Apply(r); err != nil {
			if cached && i == 0 {
				continue // the cached version may be stale: decide on a fresh read
			}
			return nil, err
		}
		doc, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encoding record %s: %w", id, err)
		}
		err = s.db().tx(ctx, func(t wtx) error {
			res, err := t.exec(qUpdateRecord, string(r.Status), r.UpdatedAt.UnixNano(), doc, id, ver.Seq)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				return errStale
			}
			return insertMessage(t, m)
		})
		if errors.Is(err, errStale) {
			s.recent.Drop(id)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("moving record %s to %s: %w", id, c.To, err)
		}
		s.recent.Put(r, store.Version{Seq: ver.Seq + 1})
		s.wakeFor(m)
		return r, nil
	}
	return nil, fmt.Errorf("moving record %s to %s: still conflicting after %d re-reads", id, c.To, maxCASRetries)
}

// read reads a record and its version from the read pool.
func (s *sqlStore) read(ctx context.Context, id string) (*store.Record, int64, error) {
	var doc []byte
	var ver int64
	if err := s.db().readRow(ctx, qRecordVersion, id).Scan(&doc, &ver); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, 0, store.ErrNotFound
		}
		return nil, 0, fmt.Errorf("reading record %s: %w", id, err)
	}
	var r store.Record
	if err := json.Unmarshal(doc, &r); err != nil {
		return nil, 0, fmt.Errorf("decoding record %s: %w", id, err)
	}
	return &r, ver, nil
}

// Queue is the queue that CreatePublish and TransitionPublish publish on.
func (s *sqlStore) Queue() queue.Queue { return s.db().Queue() }

func (s *sqlStore) wakeFor(m *queue.Message) {
	if m != nil {
		(*sqlQueue)(s).wake(m.Topic)
	}
}

func (s *sqlStore) Get(ctx context.Context, id string) (*store.Record, error) {
	r, _, err := s.read(ctx, id)
	return r, err
}

func (s *sqlStore) Search(ctx context.Context, q store.Query) (store.Page, error) {
	var where []string
	var args []any
	add := func(cond string, arg any) { where = append(where, cond); args = append(args, arg) }
	if q.TraceID != "" {
		add("trace_id = ?", q.TraceID)
	}
	if q.Status != "" {
		add("status = ?", string(q.Status))
	}
	if q.Rule != "" {
		add("rule = ?", q.Rule)
	}
	if !q.Since.IsZero() {
		add("created_at >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("created_at < ?", q.Until.UnixNano())
	}
	if q.Cursor != "" {
		add("id > ?", q.Cursor)
	}
	limit := q.PageLimit()
	query := `SELECT doc FROM requests`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY id LIMIT ?"
	recs, err := s.list(ctx, query, append(args, limit+1)...)
	if err != nil {
		return store.Page{}, fmt.Errorf("searching records: %w", err)
	}
	return store.NewPage(recs, limit), nil
}

func (s *sqlStore) Stale(ctx context.Context, st store.Status, before time.Time, limit int) ([]*store.Record, error) {
	recs, err := s.list(ctx, `SELECT doc FROM requests WHERE status = ? AND updated_at < ? ORDER BY updated_at LIMIT ?`,
		string(st), before.UnixNano(), limit)
	if err != nil {
		return nil, fmt.Errorf("listing %s records: %w", st, err)
	}
	return recs, nil
}

func (s *sqlStore) list(ctx context.Context, query string, args ...any) ([]*store.Record, error) {
	rows, err := s.db().read(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Record
	for rows.Next() {
		r, err := scanOne(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

type scanner interface{ Scan(...any) error }

func scanOne(row scanner) (*store.Record, error) {
	var doc []byte
	if err := row.Scan(&doc); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return nil, err
	}
	var r store.Record
	if err := json.Unmarshal(doc, &r); err != nil {
		return nil, fmt.Errorf("decoding stored record: %w", err)
	}
	return &r, nil
}
