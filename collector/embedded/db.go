// Package embedded is asyncmesh's default backend: one SQLite database
// (modernc.org/sqlite, pure Go, WAL mode) that is both the Store and the Queue, so
// one collector runs with no server beside it.
//
// Durability: WAL with synchronous=NORMAL. A committed transaction survives a
// crash of the process (kill -9); only a power loss may roll back the last
// transactions. Intake's 202 follows the commit of the record.
//
// Concurrency: all writes go through one connection (SQLite has one writer);
// reads use a separate pool and never block writes.
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
}

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
	return &DB{w: w, r: r, waiters: map[string][]chan struct{}{}}, nil
}

// Close closes the database.
func (db *DB) Close() error { return errors.Join(db.r.Close(), db.w.Close()) }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.w.PingContext(ctx) }

// tx runs fn in a write transaction.
func (db *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
