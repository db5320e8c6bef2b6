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
// Reads use a separate pool and never block writes. The writer's time is the
// collector's ceiling, so it does nothing but SQL (profiled with bench
// -profile):
//   - statements are prepared once per connection and reused (stmt): parsing
//     SQL was an eighth of its time;
//   - a transition reads, decodes, applies and encodes the record on the
//     caller's goroutine (or starts from the last version this process wrote,
//     store.Recent), and the writer runs one UPDATE conditioned on the version
//     column; a conflict re-reads and applies again;
//   - the store can publish on its own queue in the same commit
//     (CreatePublish, TransitionPublish: the collector's outbox), so intake is
//     one write;
//   - WAL checkpoints run on a connection of their own (checkpoints), not in
//     the commit that happens to cross SQLite's threshold.
//
// Idle: nothing runs on a clock while nothing happens. Consumers sleep until
// a publish in this process wakes them, a delayed or leased message is due,
// or a poll for other processes sharing the file comes (one indexed read,
// every idlePoll once polls keep finding nothing); checkpoints follow
// commits, and the WAL is truncated once writes stop (Consume, checkpoints).
// Retention, when started, reads twice an hour and writes only when
// something has expired (retention.go).
package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// DB is one embedded database.
type DB struct {
	w, r, cp *sql.DB // writer, readers, checkpoints

	recent *store.Recent // see sqlStore.TransitionPublish

	stmtMu sync.Mutex
	stmts  map[*sql.DB]map[string]*sql.Stmt

	mu      sync.Mutex
	waiters map[string][]chan struct{} // topic -> consumers to wake on publish
	// pollMax, when set, replaces idlePoll (tests make it long, so that
	// only wakeups and due times can move a consumer).
	pollMax time.Duration
	// msgLease, when set, replaces lease (SetMessageLease).
	msgLease atomic.Int64

	ops       chan *writeOp
	committed chan struct{} // a commit since the last checkpoint (checkpoints)
	closed    chan struct{}
	wg        sync.WaitGroup
	once      sync.Once

	// What the database did, for the tests of its idle path: write
	// operations (one per tx call), consumers' reads of the next due
	// message, checkpoints run, and WAL truncations.
	writes, dueReads, checkpointsRun, walTruncated atomic.Int64
}

// writeOp is one caller's write, run by the writer goroutine.
type writeOp struct {
	ctx  context.Context
	fn   func(wtx) error
	done chan error
}

// wtx is the writer's transaction as write operations see it.
type wtx struct {
	db *DB
	tx *sql.Tx
}

func (t wtx) exec(query string, args ...any) (sql.Result, error) {
	st, err := t.db.stmt(t.db.w, query)
	if err != nil {
		return nil, err
	}
	return t.tx.Stmt(st).Exec(args...)
}

func (t wtx) query(query string, args ...any) (*sql.Rows, error) {
	st, err := t.db.stmt(t.db.w, query)
	if err != nil {
		return nil, err
	}
	return t.tx.Stmt(st).Query(args...)
}

// errRow is a row that failed before it was read.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// stmt returns query prepared on pool (each connection prepares it once).
func (db *DB) stmt(pool *sql.DB, query string) (*sql.Stmt, error) {
	db.stmtMu.Lock()
	defer db.stmtMu.Unlock()
	if st, ok := db.stmts[pool][query]; ok {
		return st, nil
	}
	if pool == db.w {
		return nil, fmt.Errorf("statement %q is not in writeStatements", query)
	}
	st, err := pool.Prepare(query)
	if err != nil {
		return nil, fmt.Errorf("preparing %q: %w", query, err)
	}
	if db.stmts[pool] == nil {
		db.stmts[pool] = map[string]*sql.Stmt{}
	}
	db.stmts[pool][query] = st
	return st, nil
}

func (db *DB) readRow(ctx context.Context, query string, args ...any) scanner {
	st, err := db.stmt(db.r, query)
	if err != nil {
		return errRow{err}
	}
	return st.QueryRowContext(ctx, args...)
}

// read runs a read-only query on the read pool.
func (db *DB) read(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := db.stmt(db.r, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// maxGroup bounds the operations committed together.
const maxGroup = 128

var errClosed = fmt.Errorf("embedded database is closed: %w", store.ErrUnavailable)

const schema = `
CREATE TABLE IF NOT EXISTS requests (
	id         TEXT PRIMARY KEY,
	trace_id   TEXT NOT NULL,
	rule       TEXT NOT NULL,
	status     TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	doc        BLOB NOT NULL,
	version    INTEGER NOT NULL DEFAULT 0,
	req_body   BLOB,
	resp_body  BLOB,
	caller     TEXT NOT NULL DEFAULT '',
	package    TEXT NOT NULL DEFAULT '',
	endpoint   TEXT NOT NULL DEFAULT ''
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
CREATE TABLE IF NOT EXISTS idempotency_keys (
	scope       TEXT PRIMARY KEY,
	id          TEXT NOT NULL,
	fingerprint TEXT NOT NULL,
	expires_at  INTEGER NOT NULL,
	deadline    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires ON idempotency_keys(expires_at);
CREATE TABLE IF NOT EXISTS endpoints (
	id       TEXT PRIMARY KEY,
	disabled INTEGER NOT NULL,
	doc      BLOB NOT NULL,
	version  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS order_keys (
	scope      TEXT PRIMARY KEY,
	id         TEXT NOT NULL,
	deadline   INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS order_keys_updated ON order_keys(updated_at);
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

// The statements. The writer's (writeStatements) are prepared at Open on its
// one connection: a statement cannot be prepared while the writer holds it.
const (
	qSavepoint     = "SAVEPOINT op"
	qRollbackTo    = "ROLLBACK TO op"
	qRelease       = "RELEASE op"
	qInsertRecord  = `INSERT INTO requests(id, trace_id, rule, status, created_at, updated_at, doc, req_body, resp_body, caller, package) VALUES (?,?,?,?,?,?,?,?,?,?,?)`
	qRecordVersion = `SELECT doc, version, req_body, resp_body FROM requests WHERE id = ?`
	qUpdateRecord  = `UPDATE requests SET status = ?, updated_at = ?, doc = ?, req_body = ?, resp_body = ?, endpoint = ?, version = version + 1 WHERE id = ? AND version = ?`
	qInsertMessage = `INSERT INTO queue(topic, key, trace_id, body, visible_at) VALUES (?,?,?,?,?)`
	qClaimMessages = `UPDATE queue SET visible_at = ?, deliveries = deliveries + 1
	WHERE seq IN (SELECT seq FROM queue WHERE topic = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?)
	RETURNING seq, key, trace_id, body, deliveries`
	qDeleteMessage    = `DELETE FROM queue WHERE seq = ?`
	qDelayMessage     = `UPDATE queue SET visible_at = ? WHERE seq = ?`
	qWaitMessage      = `UPDATE queue SET visible_at = ?, deliveries = MAX(deliveries - 1, 0) WHERE seq = ?`
	qInsertDeadLetter = `INSERT INTO dead_letters(topic, key, body, deliveries, reason, at) VALUES (?,?,?,?,?,?)`
	qNextDue          = `SELECT MIN(visible_at) FROM queue WHERE topic = ?`
)

var writeStatements = []string{qSavepoint, qRollbackTo, qRelease, qInsertRecord, qUpdateRecord, qInsertMessage, qDeleteMessage, qDelayMessage, qWaitMessage, qInsertDeadLetter, qClaimMessages,
	qExpireRecords, qExpireDeadLetters, // retention.go
	qKeyHolder, qPutKey, qExpireKeys, // idempotency.go
	qEndpoint, qInsertEndpoint, qUpdateEndpoint, // endpoints.go
	qOrderLast, qPutOrder, qDropOrder, qExpireOrder} // ordering.go

// migrations bring databases made by earlier versions up to schema; each is
// idempotent.
var migrations = []string{
	`ALTER TABLE queue ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''`,
	`ALTER TABLE requests ADD COLUMN version INTEGER NOT NULL DEFAULT 0`,
	// Bodies apart from doc, so that searches never read them (rows written
	// before keep theirs inside doc, and read as ever).
	`ALTER TABLE requests ADD COLUMN req_body BLOB`,
	`ALTER TABLE requests ADD COLUMN resp_body BLOB`,
	// The operator searches by caller and package (GET /v1/requests): rows
	// written before have them in doc only, copied out below.
	`ALTER TABLE requests ADD COLUMN caller TEXT NOT NULL DEFAULT ''`,
	`ALTER TABLE requests ADD COLUMN package TEXT NOT NULL DEFAULT ''`,
	// An index of its own for the operator's stream made a record's writes
	// 2 to 59 % slower, median 22 % (BenchmarkLifecycle, six runs on a busy
	// 2-core machine); the stream reads requests_status instead.
	`DROP INDEX IF EXISTS requests_updated`,
	// A held record names its endpoint (store.Record.Endpoint): enabling the
	// endpoint reads its held records only. Partial: the rows of records
	// never held (nearly all) cost the index nothing.
	`ALTER TABLE requests ADD COLUMN endpoint TEXT NOT NULL DEFAULT ''`,
	`CREATE INDEX IF NOT EXISTS requests_endpoint ON requests(endpoint, id) WHERE endpoint != ''`,
	// An ordering key names its requests before its last
	// (store.MaxOrderLinks): JSON, NULL on rows written before.
	`ALTER TABLE order_keys ADD COLUMN earlier BLOB`,
}

// backfills run after migrations added their columns: each is idempotent
// and cheap once done (it touches only rows the migration left empty
// whose document says otherwise).
var backfills = []string{
	`UPDATE requests SET caller = json_extract(doc, '$.envelope.caller') WHERE caller = '' AND json_extract(doc, '$.envelope.caller') != ''`,
	`UPDATE requests SET package = json_extract(doc, '$.envelope.package') WHERE package = '' AND json_extract(doc, '$.envelope.package') != ''`,
	`UPDATE requests SET endpoint = json_extract(doc, '$.endpoint') WHERE endpoint = '' AND status = 'held' AND json_extract(doc, '$.endpoint') != ''`,
}

// Open opens (creating if needed) the database at path.
func Open(ctx context.Context, path string) (*DB, error) {
	const (
		writer = iota
		reader
		checkpointer
	)
	dsn := func(role int) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Add("_pragma", "foreign_keys(ON)")
		switch role {
		case writer:
			q.Set("_txlock", "immediate")
			// Checkpoints run beside the writer (checkpoints), not inside
			// the commit that crosses the WAL's threshold.
			q.Add("_pragma", "wal_autocheckpoint(0)")
		case reader:
			q.Add("_pragma", "query_only(1)")
		}
		return "file:" + path + "?" + q.Encode()
	}
	w, err := sql.Open("sqlite", dsn(writer))
	if err != nil {
		return nil, fmt.Errorf("opening embedded database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.ExecContext(ctx, schema); err != nil {
		w.Close()
		return nil, fmt.Errorf("creating schema in %s: %w", path, err)
	}
	added := false // a migration added a column: backfills run
	for _, m := range migrations {
		_, err := w.ExecContext(ctx, m)
		if err != nil && !strings.Contains(err.Error(), "duplicate column name") {
			w.Close()
			return nil, fmt.Errorf("migrating schema in %s (%s): %w", path, m, err)
		}
		added = added || err == nil
	}
	if added {
		for _, b := range backfills {
			if _, err := w.ExecContext(ctx, b); err != nil {
				w.Close()
				return nil, fmt.Errorf("migrating schema in %s (%s): %w", path, b, err)
			}
		}
	}
	stmts := map[string]*sql.Stmt{}
	for _, q := range writeStatements {
		st, err := w.PrepareContext(ctx, q)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("preparing %q in %s: %w", q, path, err)
		}
		stmts[q] = st
	}
	r, err := sql.Open("sqlite", dsn(reader))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening embedded database %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(4)
	cp, err := sql.Open("sqlite", dsn(checkpointer))
	if err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("opening embedded database %s for checkpoints: %w", path, err)
	}
	cp.SetMaxOpenConns(1)
	db := &DB{w: w, r: r, cp: cp, recent: store.NewRecent(), stmts: map[*sql.DB]map[string]*sql.Stmt{w: stmts}, waiters: map[string][]chan struct{}{}, ops: make(chan *writeOp, maxGroup), committed: make(chan struct{}, 1), closed: make(chan struct{})}
	db.wg.Add(2)
	go db.writer()
	go db.checkpoints()
	return db, nil
}

// checkpointEvery is how often, at most, the WAL is copied back into the
// database.
const checkpointEvery = time.Second

// checkpoints copies the WAL into the database file after commits, at most
// every checkpointEvery, on a connection of its own: under load once a
// second, and not at all while nothing is written. A PASSIVE checkpoint
// never waits for the writer or the readers; SQLite's automatic checkpoint
// (off on the writer) would run inside the commit that crosses its
// threshold and hold every caller of that group commit for the copy and its
// fsync — the slowest 0.1% of intakes. A checkpoint that could not copy
// every frame (a reader still needed them) is tried again a period later.
//
// Under sustained load some reader always holds a snapshot, so the WAL never
// restarts from its beginning and grows (1.4 GB after 20000 requests on
// loopback, for an 86 MB database). So once a checkpoint has copied every
// frame and a period has passed without a commit, the WAL is truncated
// (truncateWAL).
func (db *DB) checkpoints() {
	defer db.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-db.closed:
			return
		case <-db.committed:
		}
		var busy, frames, copied int64
		db.checkpointsRun.Add(1)
		err := db.cp.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &copied)
		if err != nil {
			slog.Warn("embedded: checkpoint", "err", err)
		} else if copied < frames {
			db.dirty()
		}
		t.Reset(checkpointEvery)
		select {
		case <-db.closed:
			return
		case <-t.C:
		}
		if err == nil && frames > 0 && copied == frames && len(db.committed) == 0 {
			db.truncateWAL()
		}
	}
}

// truncateWAL empties the WAL file, all of it copied and nothing written
// since. A TRUNCATE checkpoint holds new writers while it waits for readers
// to leave older snapshots: it waits 100 ms at most here, and, busy, is
// left for the next quiet period.
func (db *DB) truncateWAL() {
	ctx := context.Background()
	conn, err := db.cp.Conn(ctx)
	if err != nil {
		slog.Warn("embedded: truncating the WAL", "err", err)
		return
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA busy_timeout = 100"); err != nil {
		slog.Warn("embedded: truncating the WAL", "err", err)
		return
	}
	defer conn.ExecContext(ctx, "PRAGMA busy_timeout = 10000") // the DSN's
	var busy, frames, copied int64
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &frames, &copied); err != nil {
		slog.Warn("embedded: truncating the WAL", "err", err)
		return
	}
	db.walTruncated.Add(1 - busy) // busy: 1, nothing done
}

// dirty tells checkpoints that the WAL has frames to copy.
func (db *DB) dirty() {
	select {
	case db.committed <- struct{}{}:
	default:
	}
}

// Close stops the writer (pending writes fail) and closes the database.
func (db *DB) Close() error {
	db.once.Do(func() { close(db.closed) })
	db.wg.Wait()
	db.stmtMu.Lock()
	for _, sts := range db.stmts {
		for _, st := range sts {
			_ = st.Close()
		}
	}
	db.stmtMu.Unlock()
	_, cerr := db.cp.Exec("PRAGMA wal_checkpoint(TRUNCATE)") // leave a short WAL behind
	return errors.Join(cerr, db.cp.Close(), db.r.Close(), db.w.Close())
}

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.w.PingContext(ctx) }

// tx runs fn in a write transaction (shared with other callers' writes, in
// its own savepoint) and returns once it is committed. ctx is checked before
// fn starts; fn itself is not cancelled mid-batch.
func (db *DB) tx(ctx context.Context, fn func(wtx) error) error {
	db.writes.Add(1)
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
	t := wtx{db: db, tx: tx}
	ran := 0
	for i, op := range batch {
		if err := op.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if len(batch) == 1 { // alone: no savepoint needed
			errs[i] = op.fn(t)
			ran++
			continue
		}
		if _, err := t.exec(qSavepoint); err != nil {
			errs[i] = err
			continue
		}
		if err := op.fn(t); err != nil {
			errs[i] = err
			if _, rerr := t.exec(qRollbackTo); rerr != nil {
				_ = tx.Rollback()
				fail(fmt.Errorf("rolling back a failed write: %w", rerr))
				return
			}
		} else {
			ran++
		}
		if _, err := t.exec(qRelease); err != nil {
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
	} else {
		db.dirty()
	}
	for i, op := range batch {
		op.done <- errs[i]
	}
}
