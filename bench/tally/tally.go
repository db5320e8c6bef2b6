// Package tally counts the outcome of a fault test (bench/cmd/chaos and
// bench/cmd/chaoscluster) from the receiver's side: which requests that got
// a 202 were called back, how often, and how many records a collector still
// holds in a non-terminal status.
package tally

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Summary is the outcome of a run.
type Summary struct {
	Accepted, Delivered, Lost, Duplicates, Stuck int
	// Crossed counts requests run by a service other than the one that
	// accepted them (chaoscluster's shared-backends check).
	Crossed int
	// Ordered counts the accepted requests of ordering keys, and
	// OrderViolations the pairs of a key's consecutive requests whose first
	// callbacks came out of intake order or overlapped (Order).
	Ordered, OrderViolations int
	Faults                   map[string]int
	Took                     time.Duration
}

// String is the one summary line: name: accepted=… faults=kind×n,… took=….
func (s Summary) String(name string) string {
	var f []string
	for _, k := range slices.Sorted(maps.Keys(s.Faults)) {
		if n := s.Faults[k]; n > 0 {
			f = append(f, fmt.Sprintf("%s×%d", k, n))
		}
	}
	order := ""
	if s.Ordered > 0 || s.OrderViolations > 0 {
		order = fmt.Sprintf(" ordered=%d order_violations=%d", s.Ordered, s.OrderViolations)
	}
	return fmt.Sprintf("%s: accepted=%d delivered=%d lost=%d duplicates=%d stuck=%d crossed=%d%s faults=%s took=%s",
		name, s.Accepted, s.Delivered, s.Lost, s.Duplicates, s.Stuck, s.Crossed, order, strings.Join(f, ","), s.Took.Round(time.Second))
}

// Failed reports whether the run lost, stranded or crossed a request, or
// broke an ordering key's order.
func (s Summary) Failed() bool {
	return s.Lost > 0 || s.Stuck > 0 || s.Crossed > 0 || s.OrderViolations > 0
}

// Callback is one callback as the example receiver lists it.
type Callback struct {
	WebhookID string    `json:"webhookId"`
	At        time.Time `json:"at"`
	// Answered is when the receiver answered it 2xx (just before).
	Answered time.Time `json:"answered"`
}

// Order checks ordering keys from the receiver's side. keys holds, by
// key, the ids of its accepted requests in intake order (each sent once
// the one before it was answered); got is every callback in arrival order.
// For each key, the first callback of each of its requests (by
// webhook-id; a later one is a duplicate the receiver dedupes) must come
// in intake order, and not before the previous request's first callback
// was answered: otherwise the pair is a violation, described in why
// (at most 20). A request never called back is skipped (Count counts it
// lost). It sets Ordered and OrderViolations.
func (s *Summary) Order(keys map[string][]string, got []Callback) (why []string) {
	first := map[string]Callback{}
	for _, c := range got {
		if _, seen := first[c.WebhookID]; !seen {
			first[c.WebhookID] = c
		}
	}
	s.Ordered, s.OrderViolations = 0, 0
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		var prev *Callback
		prevID := ""
		for i, id := range keys[k] {
			s.Ordered++
			c, ok := first[id]
			if !ok {
				continue
			}
			if prev != nil {
				bad := ""
				switch {
				case c.At.Before(prev.At):
					bad = "called back before"
				case c.At.Before(prev.Answered):
					bad = "called back while the receiver was still answering"
				}
				if bad != "" {
					s.OrderViolations++
					if len(why) < 20 {
						why = append(why, fmt.Sprintf("key %s: request %d (%s) %s request before it (%s)", k, i, id, bad, prevID))
					}
				}
			}
			prev, prevID = &c, id
		}
	}
	return why
}

// Callbacks lists the callbacks of the example receiver (GET /received) in
// arrival order.
func Callbacks(ctx context.Context, c *http.Client, receiverURL string) ([]Callback, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, receiverURL+"/received", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the receiver's callbacks: %w", err)
	}
	defer resp.Body.Close()
	var all []Callback
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		return nil, fmt.Errorf("decoding the receiver's callbacks: %w", err)
	}
	return all, nil
}

// Count sets Accepted, Delivered, Lost and Duplicates from the ids that got
// a 202 and the callbacks received by webhook-id.
func (s *Summary) Count(accepted map[string]bool, got map[string]int) {
	s.Accepted, s.Delivered, s.Duplicates, s.Lost = len(accepted), 0, 0, 0
	for id := range accepted {
		if n := got[id]; n == 0 {
			s.Lost++
		} else {
			s.Delivered++
			s.Duplicates += n - 1
		}
	}
}

// Received counts the callbacks of the example receiver (GET /received) by
// webhook-id.
func Received(ctx context.Context, c *http.Client, receiverURL string) (map[string]int, error) {
	all, err := Callbacks(ctx, c, receiverURL)
	if err != nil {
		return nil, err
	}
	n := map[string]int{}
	for _, r := range all {
		n[r.WebhookID]++
	}
	return n, nil
}

// Unfinished counts the records a collector still has in a non-terminal
// status; get reads a path of its operator API (with the token).
func Unfinished(ctx context.Context, get func(ctx context.Context, path string) (*http.Response, error)) (int, error) {
	recs, err := UnfinishedRecords(ctx, get)
	return len(recs), err
}

// Stuck is a record that UnfinishedRecords found in a non-terminal status:
// its id and status as the search listed it, and the record as the
// operator API renders it (status, history, attempts, times).
type Stuck struct {
	// Service names the store it is in, when a run has several (set by
	// the caller).
	Service string
	ID      string
	Status  string
	Record  json.RawMessage
}

// UnfinishedRecords lists the records a collector still has in a
// non-terminal status (as Unfinished counts them, held aside: that one
// waits for an operator); get reads a path of its operator API.
func UnfinishedRecords(ctx context.Context, get func(ctx context.Context, path string) (*http.Response, error)) ([]Stuck, error) {
	var out []Stuck
	for _, st := range []string{"persisted", "queued", "processing", "completed", "failed", "delivering"} {
		cursor := ""
		for {
			resp, err := get(ctx, "/v1/requests?limit=500&status="+st+"&cursor="+cursor)
			if err != nil {
				return nil, fmt.Errorf("listing %s records: %w", st, err)
			}
			var page struct {
				Records []json.RawMessage `json:"records"`
				Next    string            `json:"next"`
			}
			if resp.StatusCode != http.StatusOK {
				resp.Body.Close()
				return nil, fmt.Errorf("listing %s records: %s", st, resp.Status)
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("decoding %s records: %w", st, err)
			}
			for _, raw := range page.Records {
				var head struct{ ID, Status string }
				_ = json.Unmarshal(raw, &head)
				out = append(out, Stuck{ID: head.ID, Status: head.Status, Record: raw})
			}
			if page.Next == "" {
				break
			}
			cursor = page.Next
		}
	}
	return out, nil
}

// Reread reads each record of stuck again, by id (GET /v1/requests/{id}:
// the store's own read, where the search may lag), at most max of them,
// and returns them as read; a record whose read fails keeps its listed
// copy, and says why in Status.
func Reread(ctx context.Context, get func(ctx context.Context, path string) (*http.Response, error), stuck []Stuck, max int) []Stuck {
	var out []Stuck
	for i, s := range stuck {
		if i == max {
			break
		}
		resp, err := get(ctx, "/v1/requests/"+s.ID)
		if err != nil {
			s.Status += " (reread failed: " + err.Error() + ")"
			out = append(out, s)
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		var head struct{ Status string }
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(body, &head) != nil {
			s.Status += fmt.Sprintf(" (reread: %s %v)", resp.Status, err)
			out = append(out, s)
			continue
		}
		if head.Status != s.Status {
			s.Status = head.Status + " (listed " + s.Status + ")"
		}
		s.Record = body
		out = append(out, s)
	}
	return out
}

// Report describes a stuck record for a log: its service, id and status,
// its history one transition a line, its attempts, whether its caller got
// a 202 (accepted), and the callbacks the receiver got for it (got).
func (s Stuck) Report(accepted bool, got []Callback) string {
	var b strings.Builder
	fmt.Fprintf(&b, "stuck record %s", s.ID)
	if s.Service != "" {
		fmt.Fprintf(&b, " (service %s)", s.Service)
	}
	fmt.Fprintf(&b, ": status %s, accepted (202) %v, callbacks received %d\n", s.Status, accepted, len(got))
	var r struct {
		CreatedAt, UpdatedAt time.Time
		Error                string
		History              []struct {
			Status, Event, Note, Node string
			At                        time.Time
		}
		Attempts []struct {
			At         time.Time
			StatusCode int
			LatencyMs  float64
			Error      string
		}
	}
	if err := json.Unmarshal(s.Record, &r); err != nil {
		fmt.Fprintf(&b, "  record (undecodable: %v): %s\n", err, s.Record)
		return b.String()
	}
	fmt.Fprintf(&b, "  created %s, updated %s", r.CreatedAt.Format(time.RFC3339Nano), r.UpdatedAt.Format(time.RFC3339Nano))
	if r.Error != "" {
		fmt.Fprintf(&b, ", error %q", r.Error)
	}
	b.WriteString("\n")
	for _, h := range r.History {
		fmt.Fprintf(&b, "  history %s %-14s → %s", h.At.Format(time.RFC3339Nano), h.Event, h.Status)
		if h.Node != "" {
			fmt.Fprintf(&b, " node %s", h.Node)
		}
		if h.Note != "" {
			fmt.Fprintf(&b, " (%s)", h.Note)
		}
		b.WriteString("\n")
	}
	for _, a := range r.Attempts {
		fmt.Fprintf(&b, "  attempt %s status %d latency %.1fms %s\n", a.At.Format(time.RFC3339Nano), a.StatusCode, a.LatencyMs, a.Error)
	}
	for _, c := range got {
		fmt.Fprintf(&b, "  callback received %s answered %s\n", c.At.Format(time.RFC3339Nano), c.Answered.Format(time.RFC3339Nano))
	}
	fmt.Fprintf(&b, "  record: %s\n", s.Record)
	return b.String()
}

// Settle counts the callbacks (received reads them by webhook-id) every 2 s
// until every accepted request is called back or settle has passed, then
// lists the unfinished records (unfinished) every 2 s until there are none
// or a minute has passed: records whose caller got no 202 are finished too,
// and Elasticsearch's search is near-real-time. It returns the records
// still unfinished at the end (Stuck is their count).
func (s *Summary) Settle(ctx context.Context, accepted map[string]bool, settle time.Duration,
	received func(context.Context) (map[string]int, error), unfinished func(context.Context) ([]Stuck, error)) ([]Stuck, error) {
	for end := time.Now().Add(settle); ; {
		got, err := received(ctx)
		if err != nil {
			return nil, err
		}
		s.Count(accepted, got)
		if s.Lost == 0 || time.Now().After(end) || ctx.Err() != nil {
			break
		}
		time.Sleep(2 * time.Second)
	}
	for wait := time.Now().Add(time.Minute); ; {
		time.Sleep(2 * time.Second)
		stuck, err := unfinished(ctx)
		if err != nil {
			return nil, err
		}
		s.Stuck = len(stuck)
		if len(stuck) == 0 || time.Now().After(wait) || ctx.Err() != nil {
			return stuck, nil
		}
	}
}
