package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/queue"
)

// Queue settings.
const (
	// lease is how long a claimed message stays invisible; in-flight messages are
	// re-leased every lease/3, so a crashed consumer's messages return within lease.
	lease = 30 * time.Second
	// pollInterval is how long a consumer waits for a wakeup before it looks
	// at the table again after a round that found nothing. Rounds that keep
	// finding nothing double it up to idlePoll (see Consume).
	pollInterval = 100 * time.Millisecond
	// idlePoll is the longest wait of an idle consumer: it bounds the latency
	// of a message published by another process on the same database file
	// (this process's publishes wake its consumers at once, and delayed or
	// leased messages are waited for until they are due).
	idlePoll = 2 * time.Second
	// claimGather is how long freed workers gather before a claim when most
	// are busy (Consume).
	claimGather = time.Millisecond
)

// Queue returns the queue view of db.
func (db *DB) Queue() queue.Queue { return (*sqlQueue)(db) }

type sqlQueue DB

func (q *sqlQueue) db() *DB { return (*DB)(q) }

// Close is a no-op: the DB is closed by its owner.
func (q *sqlQueue) Close() error { return nil }

func (q *sqlQueue) Publish(ctx context.Context, m queue.Message) error {
	if err := q.db().tx(ctx, func(t wtx) error { return insertMessage(t, &m) }); err != nil {
		return fmt.Errorf("publishing %s/%s: %w", m.Topic, m.Key, err)
	}
	q.wake(m.Topic)
	return nil
}

// insertMessage adds m (when not nil) to the queue, visible at once.
func insertMessage(t wtx, m *queue.Message) error {
	if m == nil {
		return nil
	}
	_, err := t.exec(qInsertMessage,
		m.Topic, m.Key, m.TraceID, append([]byte{}, m.Body...), time.Now().UnixNano())
	return err
}

func (q *sqlQueue) wake(topic string) {
	q.mu.Lock()
	for _, ch := range q.waiters[topic] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	q.mu.Unlock()
}

func (q *sqlQueue) subscribe(topic string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	q.mu.Lock()
	q.waiters[topic] = append(q.waiters[topic], ch)
	q.mu.Unlock()
	return ch, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		ws := q.waiters[topic]
		for i, w := range ws {
			if w == ch {
				q.waiters[topic] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
	}
}

type claimed struct {
	seq int64
	msg queue.Message
}

func (q *sqlQueue) claim(ctx context.Context, topic string, n int) ([]claimed, error) {
	var out []claimed
	now := time.Now()
	err := q.db().tx(ctx, func(t wtx) error {
		rows, err := t.query(qClaimMessages, now.Add(q.lease()).UnixNano(), topic, now.UnixNano(), n)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c := claimed{msg: queue.Message{Topic: topic}}
			if err := rows.Scan(&c.seq, &c.msg.Key, &c.msg.TraceID, &c.msg.Body, &c.msg.Deliveries); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	return out, err
}

// idlePoll is the longest wait of an idle consumer (see the constant).
// lease is how long this process's claims hold a message (lease, unless
// SetMessageLease changed it).
func (q *sqlQueue) lease() time.Duration {
	if d := time.Duration(q.msgLease.Load()); d > 0 {
		return d
	}
	return lease
}

// SetMessageLease sets how long a message claimed by this process stays
// invisible to the others on the same file (default 30 s; in-flight
// messages are re-leased every third of it), so that a test of crash
// recovery does not wait half a minute for a killed process's messages.
func (db *DB) SetMessageLease(d time.Duration) { db.msgLease.Store(int64(d)) }

func (q *sqlQueue) idlePoll() time.Duration {
	if q.pollMax > 0 {
		return q.pollMax
	}
	return idlePoll
}

// nextDue is when the earliest message of topic becomes visible (now or
// later: delayed, or leased to a consumer); false when the topic is empty.
func (q *sqlQueue) nextDue(ctx context.Context, topic string) (time.Time, bool, error) {
	q.dueReads.Add(1)
	var due sql.NullInt64
	if err := q.db().readRow(ctx, qNextDue, topic).Scan(&due); err != nil {
		return time.Time{}, false, err
	}
	if !due.Valid {
		return time.Time{}, false, nil
	}
	return time.Unix(0, due.Int64), true, nil
}

func (q *sqlQueue) ack(ctx context.Context, seq int64) error {
	return q.db().tx(ctx, func(t wtx) error {
		_, err := t.exec(qDeleteMessage, seq)
		return err
	})
}

func (q *sqlQueue) requeue(ctx context.Context, seq int64, after time.Duration) error {
	return q.db().tx(ctx, func(t wtx) error {
		_, err := t.exec(qDelayMessage, time.Now().Add(after).UnixNano(), seq)
		return err
	})
}

// wait requeues a message after a queue.Wait: this delivery is not
// counted (the claim counted it).
func (q *sqlQueue) wait(ctx context.Context, seq int64, after time.Duration) error {
	return q.db().tx(ctx, func(t wtx) error {
		_, err := t.exec(qWaitMessage, time.Now().Add(after).UnixNano(), seq)
		return err
	})
}

func (q *sqlQueue) deadLetter(ctx context.Context, c claimed, reason string) error {
	return q.db().tx(ctx, func(t wtx) error {
		if _, err := t.exec(qInsertDeadLetter,
			c.msg.Topic, c.msg.Key, c.msg.Body, c.msg.Deliveries, reason, time.Now().UnixNano()); err != nil {
			return err
		}
		_, err := t.exec(qDeleteMessage, c.seq)
		return err
	})
}

func (q *sqlQueue) extend(ctx context.Context, seqs []int64) error {
	return q.db().tx(ctx, func(t wtx) error {
		until := time.Now().Add(q.lease()).UnixNano()
		for _, s := range seqs {
			if _, err := t.exec(qDelayMessage, until, s); err != nil {
				return err
			}
		}
		return nil
	})
}

// Consume claims messages for free workers and runs them. Between claims
// it sleeps until one of: a publish on topic from this process (Publish and
// the store's outbox writes wake it); a handler finishing (a worker is free,
// and a requeued message has a new due time); the due time of the earliest
// delayed or leased message (nextDue); the next lease renewal of in-flight
// messages; a poll, for messages that other processes sharing the database
// file publish. The poll comes pollInterval after activity (under load a
// wakeup comes first, and the loop runs as one that polls every
// pollInterval) and doubles up to idlePoll while polls find nothing; a poll
// reads the earliest due time and takes the writer only when a message is
// due. An idle consumer thus makes one indexed read per idlePoll.
func (q *sqlQueue) Consume(ctx context.Context, topic string, workers int, h queue.Handler) error {
	if workers < 1 {
		workers = 1
	}
	wakeup, unsubscribe := q.subscribe(topic)
	defer unsubscribe()

	// Handlers and their acks outlive ctx: a message being worked on is finished
	// and acked, not abandoned, when the collector shuts down.
	hctx := context.WithoutCancel(ctx)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		inflight = map[int64]bool{}
		free     = make(chan struct{}, workers)
	)
	for range workers {
		free <- struct{}{}
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	nextExtend := time.Now().Add(q.lease() / 3)
	poll := time.Duration(0) // the last poll's wait; 0 after activity
	defer wg.Wait()
	for {
		// Claim as many messages as there are free workers. Under load,
		// workers free up one at a time; a claim per freed worker would make
		// this loop, one write round trip per message, the ceiling. So when
		// most workers are busy, freed slots gather for a moment and one claim
		// takes several messages.
		n := len(free)
		if n > 0 && n < workers/4 {
			select {
			case <-ctx.Done():
			case <-time.After(claimGather):
			}
			n = len(free)
		}
		// After a poll (not a wakeup), look before taking the writer: the
		// earliest due time says whether a claim would find anything, and
		// how long to sleep if not.
		var due time.Time
		known := false // due is the earliest due time (zero: the topic is empty)
		if n > 0 && poll > 0 {
			d, ok, err := q.nextDue(hctx, topic)
			if err != nil {
				slog.Warn("queue: reading the next due message", "topic", topic, "err", err)
			} else if !ok || d.After(time.Now()) {
				due, known = d, true
				n = 0 // nothing is due
			}
		}
		if n > 0 {
			batch, err := q.claim(hctx, topic, n)
			if err != nil {
				slog.Warn("queue: claiming messages", "topic", topic, "err", err)
			}
			for _, c := range batch {
				<-free
				mu.Lock()
				inflight[c.seq] = true
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					q.handle(hctx, c, h)
					mu.Lock()
					delete(inflight, c.seq)
					mu.Unlock()
					free <- struct{}{}
					q.wake(topic)
				}()
			}
			if len(batch) == n {
				poll = 0
				continue // there may be more
			}
			if len(batch) > 0 {
				poll = 0
			}
		}
		mu.Lock()
		busy := len(inflight) > 0
		mu.Unlock()
		if !time.Now().Before(nextExtend) {
			if busy { // nothing to renew when nothing is in flight
				mu.Lock()
				seqs := make([]int64, 0, len(inflight))
				for s := range inflight {
					seqs = append(seqs, s)
				}
				mu.Unlock()
				if err := q.extend(hctx, seqs); err != nil {
					slog.Warn("queue: extending leases", "topic", topic, "err", err)
				}
			}
			nextExtend = time.Now().Add(q.lease() / 3)
		}
		wait := pollInterval
		if poll > 0 {
			poll = min(2*poll, q.idlePoll())
			wait = poll
		}
		if known && !due.IsZero() {
			wait = max(min(wait, time.Until(due)), claimGather)
		}
		if busy {
			wait = max(min(wait, time.Until(nextExtend)), claimGather)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-wakeup:
			timer.Stop() // no stale tick follows (Go 1.23 timers)
			poll = 0
		case <-timer.C:
			poll = max(poll, pollInterval) // doubled by the next wait
		}
	}
}

// handle runs h and settles the message by its result.
func (q *sqlQueue) handle(ctx context.Context, c claimed, h queue.Handler) {
	err := h(ctx, c.msg)
	var settle error
	switch {
	case err == nil:
		settle = q.ack(ctx, c.seq)
	case queue.IsPoison(err):
		slog.Warn("queue: dead-lettering poison message", "topic", c.msg.Topic, "key", c.msg.Key, "trace_id", c.msg.TraceID, "err", err)
		settle = q.deadLetter(ctx, c, err.Error())
	case c.msg.Deliveries >= queue.MaxDeliveries && !isRetryAfter(err):
		slog.Warn("queue: dead-lettering message after max deliveries", "topic", c.msg.Topic, "key", c.msg.Key, "trace_id", c.msg.TraceID, "deliveries", c.msg.Deliveries, "err", err)
		settle = q.deadLetter(ctx, c, fmt.Sprintf("after %d deliveries: %v", c.msg.Deliveries, err))
	default:
		d, ok := queue.RetryDelay(err)
		if !ok {
			d = queue.Backoff(c.msg.Deliveries)
			slog.Warn("queue: handler failed, will retry", "topic", c.msg.Topic, "key", c.msg.Key, "trace_id", c.msg.TraceID, "in", d, "err", err)
		}
		if queue.IsWait(err) {
			settle = q.wait(ctx, c.seq, d)
		} else {
			settle = q.requeue(ctx, c.seq, d)
		}
	}
	if settle != nil {
		// The lease will expire and the message come back: at least once.
		slog.Error("queue: settling message", "topic", c.msg.Topic, "key", c.msg.Key, "trace_id", c.msg.TraceID, "err", settle)
	}
}

func (q *sqlQueue) DeadLetters(ctx context.Context, topic string, limit int) ([]queue.DeadLetter, error) {
	rows, err := q.db().read(ctx, `SELECT key, body, deliveries, reason, at FROM dead_letters WHERE topic = ? ORDER BY seq LIMIT ?`, topic, limit)
	if err != nil {
		return nil, fmt.Errorf("listing dead letters of %s: %w", topic, err)
	}
	defer rows.Close()
	var out []queue.DeadLetter
	for rows.Next() {
		d := queue.DeadLetter{Message: queue.Message{Topic: topic}}
		var at int64
		if err := rows.Scan(&d.Key, &d.Body, &d.Deliveries, &d.Reason, &at); err != nil {
			return nil, err
		}
		d.At = time.Unix(0, at)
		out = append(out, d)
	}
	return out, rows.Err()
}

func isRetryAfter(err error) bool { _, ok := queue.RetryDelay(err); return ok }
