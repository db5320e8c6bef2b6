// Package embedded is asyncmesh's default backend: one SQLite database
// (modernc.org/sqlite, pure Go, WAL mode) that is both the Store and the Queue, so
// one collector runs with no server beside it.
//
// Durability: WAL with synchronous=NORMAL. A committed transaction survives a
// crash of the process (kill -9); only a power loss may roll back the last
// transactions. Intake's 202 follows the commit of the record.
//
// Concurrency: all writes go through one connection (SQLite has one writer),
// grouped: a writer goroutine takes whatever write operations are waiting
// and runs them in one transaction, each inside its own savepoint, so that
// one failing operation rolls back alone and each caller gets its own result
// after the shared commit (group commit: one WAL append for many intakes).
// Reads use a separate pool and never block writes.
package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// DB is one embedded database.
type DB struct {
	w, r *sql.DB

	mu      sync.Mutex
	waiters map[string][]chan struct{} // topic -> consumers to wake on publish

	ops    chan *writeOp
	closed chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

// writeOp is one caller's write, run by the writer goroutine.
type writeOp struct {
	ctx  context.Context
	fn   func(context.Context, *sql.Tx) error
	done chan error
}

// maxGroup bounds the operations committed together.
const maxGroup = 128

var errClosed = errors.New("embedded database is closed")

const schema = `
CREATE TABLE IF NOT EXISTS requests (
	id         TEXT PRIMARY KEY,
	trace_id   TEXT NOT NULL,
	rule       TEXT NOT NULL,
	status     TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	doc        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_trace ON requests(trace_id, id);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status, updated_at);
CREATE TABLE IF NOT EXISTS queue (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	topic      TEXT NOT NULL,
	key        TEXT NOT NULL,
	trace_id   TEXT NOT NULL DEFAULT '',
	body       BLOB NOT NULL,
	visible_at INTEGER NOT NULL,
	deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_due ON queue(topic, visible_at, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	topic      TEXT NOT NULL,
	key        TEXT NOT NULL,
	body       BLOB NOT NULL,
	deliveries INTEGER NOT NULL,
	reason     TEXT NOT NULL,
	at         INTEGER NOT NULL
);
`

// migrations bring databases made by earlier versions up to schema; each is
// idempotent.
var migrations = []string{
	`ALTER TABLE queue ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''`,
}

// Open opens (creating if needed) the database at path.
func Open(ctx context.Context, path string) (*DB, error) {
	dsn := func(readOnly bool) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Add("_pragma", "foreign_keys(ON)")
		if readOnly {
			q.Add("_pragma", "query_only(1)")
		} else {
			q.Set("_txlock", "immediate")
		}
		return "file:" + path + "?" + q.Encode()
	}
	w, err := sql.Open("sqlite", dsn(false))
	if err != nil {
		return nil, fmt.Errorf("opening embedded database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.ExecContext(ctx, schema); err != nil {
		w.Close()
		return nil, fmt.Errorf("creating schema in %s: %w", path, err)
	}
	for _, m := range migrations {
		if _, err := w.ExecContext(ctx, m); err != nil && !strings.Contains(err.Error(), "duplicate column name") {
			w.Close()
			return nil, fmt.Errorf("migrating schema in %s (%s): %w", path, m, err)
		}
	}
	r, err := sql.Open("sqlite", dsn(true))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening embedded database %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	db := &DB{w: w, r: r, waiters: map[string][]chan struct{}{}, ops: make(chan *writeOp, maxGroup), closed: make(chan struct{})}
	db.wg.Add(1)
	go db.writer()
	return db, nil
}

// Close stops the writer (pending writes fail) and closes the database.
func (db *DB) Close() error {
	db.once.Do(func() { close(db.closed) })
	db.wg.Wait()
	return errors.Join(db.r.Close(), db.w.Close())
}

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.w.PingContext(ctx) }

// tx runs fn in a write transaction (shared with other callers' writes, in
// its own savepoint) and returns once it is committed. fn gets a context that
// is not cancelled mid-batch: ctx is checked before fn starts.
func (db *DB) tx(ctx context.Context, fn func(context.Context, *sql.Tx) error) error {
	op := &writeOp{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case db.ops <- op:
	case <-ctx.Done():
		return ctx.Err()
	case <-db.closed:
		return errClosed
	}
	return <-op.done // the writer always answers, even when closing
}

func (db *DB) writer() {
	defer db.wg.Done()
	for {
		var batch []*writeOp
		select {
		case op := <-db.ops:
			batch = append(batch, op)
		case <-db.closed:
			for { // fail what is still queued
				select {
				case op := <-db.ops:
					op.done <- errClosed
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < maxGroup {
			select {
			case op := <-db.ops:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		db.commit(batch)
	}
}

// commit runs a batch in one transaction, each operation in a savepoint.
func (db *DB) commit(batch []*writeOp) {
	bg := context.Background()
	errs := make([]error, len(batch))
	fail := func(err error) {
		for i, op := range batch {
			if errs[i] == nil {
				errs[i] = err
			}
			op.done <- errs[i]
		}
	}
	tx, err := db.w.BeginTx(bg, nil)
	if err != nil {
		fail(err)
		return
	}
	ran := 0
	for i, op := range batch {
		if err := op.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if len(batch) == 1 { // alone: no savepoint needed
			errs[i] = op.fn(bg, tx)
			ran++
			continue
		}
		if _, err := tx.ExecContext(bg, "SAVEPOINT op"); err != nil {
			errs[i] = err
			continue
		}
		if err := op.fn(bg, tx); err != nil {
			errs[i] = err
			if _, rerr := tx.ExecContext(bg, "ROLLBACK TO op"); rerr != nil {
				_ = tx.Rollback()
				fail(fmt.Errorf("rolling back a failed write: %w", rerr))
				return
			}
		} else {
			ran++
		}
		if _, err := tx.ExecContext(bg, "RELEASE op"); err != nil {
			_ = tx.Rollback()
			fail(err)
			return
		}
	}
	if ran == 0 {
		_ = tx.Rollback()
	} else if err := tx.Commit(); err != nil {
		for i := range errs { // nothing of the batch is durable
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	for i, op := range batch {
		op.done <- errs[i]
	}
}
