package embedded

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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

// Now is this host's clock: every collector on a database file runs on the
// host that has the file.
func (s *sqlStore) Now() time.Time { return time.Now().UTC() }

func (s *sqlStore) Create(ctx context.Context, r *store.Record) error {
	return s.CreatePublish(ctx, r, nil)
}

// CreatePublish creates r and, when m is not nil, publishes m on this
// database's queue in the same commit (the collector's outbox: intake makes
// one write, and no crash falls between the record and its message).
func (s *sqlStore) CreatePublish(ctx context.Context, r *store.Record, m *queue.Message) error {
	doc, reqBody, respBody, err := encode(r)
	if err != nil {
		return err
	}
	err = s.db().tx(ctx, func(t wtx) error {
		if err := insertRecord(t, r, doc, reqBody, respBody); err != nil {
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

// insertRecord inserts r, encoded, with its searchable columns.
func insertRecord(t wtx, r *store.Record, doc, reqBody, respBody []byte) error {
	var caller, pkg string
	if e := r.Envelope; e != nil {
		caller, pkg = e.Caller, e.Package
	}
	_, err := t.exec(qInsertRecord,
		r.ID, r.TraceID, r.Rule, string(r.Status), r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), doc, reqBody, respBody, caller, pkg)
	return err
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
	c.At = s.Now() // one time for every retry of this change
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
		doc, reqBody, respBody, err := encode(r)
		if err != nil {
			return nil, err
		}
		err = s.db().tx(ctx, func(t wtx) error {
			res, err := t.exec(qUpdateRecord, string(r.Status), r.UpdatedAt.UnixNano(), doc, reqBody, respBody, r.Endpoint, id, ver.Seq)
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
			return nil, fmt.Errorf("applying %s to record %s: %w", c.Event, id, err)
		}
		s.recent.Put(r, store.Version{Seq: ver.Seq + 1})
		s.wakeFor(m)
		return r, nil
	}
	return nil, fmt.Errorf("applying %s to record %s: still conflicting after %d re-reads", c.Event, id, maxCASRetries)
}

// read reads a record and its version from the read pool.
func (s *sqlStore) read(ctx context.Context, id string) (*store.Record, int64, error) {
	var doc, reqBody, respBody []byte
	var ver int64
	if err := s.db().readRow(ctx, qRecordVersion, id).Scan(&doc, &ver, &reqBody, &respBody); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, 0, store.ErrNotFound
		}
		return nil, 0, fmt.Errorf("reading record %s: %w", id, err)
	}
	r, err := decode(doc, reqBody, respBody)
	if err != nil {
		return nil, 0, fmt.Errorf("decoding record %s: %w", id, err)
	}
	return r, ver, nil
}

// encode returns the stored form of r: the document without the request
// and response bodies, which go to columns of their own.
func encode(r *store.Record) (doc, reqBody, respBody []byte, err error) {
	cp := *r
	if r.Envelope != nil && len(r.Envelope.Body) > 0 {
		e := *r.Envelope
		reqBody, e.Body = e.Body, nil
		cp.Envelope = &e
	}
	if r.Response != nil && len(r.Response.Body) > 0 {
		resp := *r.Response
		respBody, resp.Body = resp.Body, nil
		cp.Response = &resp
	}
	if doc, err = json.Marshal(&cp); err != nil {
		return nil, nil, nil, fmt.Errorf("encoding record %s: %w", r.ID, err)
	}
	return doc, reqBody, respBody, nil
}

// decode is encode's inverse; nil bodies leave the document's (rows
// written before bodies had columns of their own carry them inside).
func decode(doc, reqBody, respBody []byte) (*store.Record, error) {
	var r store.Record
	if err := json.Unmarshal(doc, &r); err != nil {
		return nil, err
	}
	if reqBody != nil && r.Envelope != nil {
		r.Envelope.Body = reqBody
	}
	if respBody != nil && r.Response != nil {
		r.Response.Body = respBody
	}
	return &r, nil
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

// unixNano is t in Unix nanoseconds, clamped to int64 (UnixNano wraps
// outside the years 1678..2262: until=2300 would find nothing).
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// Peek implements store.Peeker: the document without the body columns.
func (s *sqlStore) Peek(ctx context.Context, id string) (*store.Record, error) {
	r, err := scanOne(s.db().readRow(ctx, `SELECT doc, NULL, NULL FROM requests WHERE id = ?`, id))
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("reading record %s: %w", id, err)
	}
	return r, err
}

// where renders q's filters (its Cursor and Limit aside) as SQL.
func where(q store.Query) (conds []string, args []any) {
	add := func(cond string, arg any) { conds = append(conds, cond); args = append(args, arg) }
	if q.TraceID != "" {
		add("trace_id = ?", q.TraceID)
	}
	if q.Status != "" {
		add("status = ?", string(q.Status))
	}
	if q.Rule != "" {
		add("rule = ?", q.Rule)
	}
	if q.Caller != "" {
		add("caller = ?", q.Caller)
	}
	if q.Package != "" {
		add("package = ?", q.Package)
	}
	if q.Endpoint != "" { // "!= ''" lets SQLite use the partial index requests_endpoint
		add("endpoint != '' AND endpoint = ?", q.Endpoint)
	}
	if !q.Since.IsZero() {
		add("created_at >= ?", unixNano(q.Since))
	}
	if !q.Until.IsZero() {
		add("created_at < ?", unixNano(q.Until))
	}
	return conds, args
}

func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

func (s *sqlStore) Search(ctx context.Context, q store.Query) (store.Page, error) {
	limit := q.PageLimit()
	query, args := searchQuery(q, limit+1)
	recs, err := s.list(ctx, query, args...)
	if err != nil {
		return store.Page{}, fmt.Errorf("searching records: %w", err)
	}
	return store.NewPage(recs, limit), nil
}

// searchQuery is the SQL of a page of q, n rows at most. Without the body
// columns: a page of search results never loads a request's or a
// response's body.
func searchQuery(q store.Query, n int) (string, []any) {
	conds, args := where(q)
	order, next := "id", "id > ?"
	if q.Desc {
		order, next = "id DESC", "id < ?"
	}
	if q.Cursor != "" {
		conds, args = append(conds, next), append(args, q.Cursor)
	}
	return `SELECT doc, NULL, NULL FROM requests` + whereClause(conds) + " ORDER BY " + order + " LIMIT ?", append(args, n)
}

// Count implements store.Counter.
func (s *sqlStore) Count(ctx context.Context, q store.Query) (int64, error) {
	conds, args := where(q)
	var n int64
	if err := s.db().readRow(ctx, `SELECT COUNT(*) FROM requests`+whereClause(conds), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting records: %w", err)
	}
	return n, nil
}

// Changes implements store.ChangeLister on the index requests_status
// (status, updated_at), one range of update times per status, sorted after:
// an index on the update time alone would cost every write (see
// BenchmarkLifecycle), and a poll reads only the few seconds of changes
// since its cursor.
func (s *sqlStore) Changes(ctx context.Context, q store.Query, after store.ChangeCursor, limit int) ([]*store.Record, error) {
	query, args := changesQuery(q, after, limit)
	recs, err := s.list(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing changed records: %w", err)
	}
	return recs, nil
}

func changesQuery(q store.Query, after store.ChangeCursor, limit int) (string, []any) {
	conds, args := where(q)
	if q.Status == "" {
		in := make([]string, 0, len(store.Statuses()))
		for _, st := range store.Statuses() {
			in = append(in, "?")
			args = append(args, string(st))
		}
		conds = append(conds, "status IN ("+strings.Join(in, ",")+")")
	}
	if !after.At.IsZero() || after.ID != "" {
		// (updated_at, id) > (at, id), written so that the index's range
		// on updated_at applies.
		at := unixNano(after.At)
		conds = append(conds, "updated_at >= ? AND (updated_at > ? OR id > ?)")
		args = append(args, at, at, after.ID)
	}
	return `SELECT doc, NULL, NULL FROM requests` + whereClause(conds) + " ORDER BY updated_at, id LIMIT ?", append(args, max(limit, 1))
}

func (s *sqlStore) Stale(ctx context.Context, st store.Status, before time.Time, limit int) ([]*store.Record, error) {
	recs, err := s.list(ctx, `SELECT doc, req_body, resp_body FROM requests WHERE status = ? AND updated_at < ? ORDER BY updated_at LIMIT ?`,
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
	var doc, reqBody, respBody []byte
	if err := row.Scan(&doc, &reqBody, &respBody); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, store.ErrNotFound
		}
		return nil, err
	}
	r, err := decode(doc, reqBody, respBody)
	if err != nil {
		return nil, fmt.Errorf("decoding stored record: %w", err)
	}
	return r, nil
}

var (
	_ store.Counter      = (*sqlStore)(nil)
	_ store.ChangeLister = (*sqlStore)(nil)
)
