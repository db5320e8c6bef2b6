package embedded

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/store"
	"github.com/asyncmesh/asyncmesh/collector/store/storetest"
)

// BenchmarkLifecycle writes a record through intake's and a delivery's
// writes (create, enqueue, complete, start-delivery, deliver), in parallel,
// as the store is and, against that baseline in the same run, with an
// index on the update time (requests_updated), which the operator's stream
// could have used: it made a record's writes 2 to 59 % slower, median 22 %
// (six runs on a busy 2-core machine), so Changes reads requests_status
// instead (TestChangesUseTheStatusIndex).
//
//	go test -run '^$' -bench Lifecycle -benchtime 3s ./collector/embedded
func BenchmarkLifecycle(b *testing.B) {
	for _, bc := range []struct {
		name string
		add  bool
	}{{"as-is", false}, {"with-requests_updated", true}} {
		b.Run(bc.name, func(b *testing.B) {
			db, err := Open(context.Background(), filepath.Join(b.TempDir(), "asyncmesh.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			if bc.add {
				if _, err := db.w.Exec(`CREATE INDEX requests_updated ON requests(updated_at, id)`); err != nil {
					b.Fatal(err)
				}
			}
			s := db.Store()
			ctx := context.Background()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := store.NewRecord(storetest.NewEnvelope("r", ""), time.Now())
					if err := s.Create(ctx, r); err != nil {
						b.Fatal(err)
					}
					for _, ev := range []store.Event{store.Enqueue, store.Complete, store.StartDelivery, store.Deliver} {
						if _, err := s.Transition(ctx, r.ID, store.Change{Event: ev}); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		})
	}
}

// plan is SQLite's plan of query.
func plan(t *testing.T, db *DB, query string, args []any) string {
	t.Helper()
	rows, err := db.r.Query("EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	return strings.Join(plan, "; ")
}

// TestHeldByEndpointUsesItsIndex: enabling an endpoint reads its held
// records by the partial index requests_endpoint, not every held record.
func TestHeldByEndpointUsesItsIndex(t *testing.T) {
	db := open(t)
	q := store.Query{Status: store.Held, Endpoint: "3147bc82b88953e0ddddceaf35914488", Cursor: "01a24a4d-db30-7c19-9622-aa7622fa3d66"}
	query, args := searchQuery(q, 501)
	if got := plan(t, db, query, args); !strings.Contains(got, "INDEX requests_endpoint") {
		t.Fatalf("plan %s", got)
	}
}

// TestChangesUseTheStatusIndex: the operator's stream polls Changes every
// second; it reads ranges of requests_status, never the whole table.
func TestChangesUseTheStatusIndex(t *testing.T) {
	db := open(t)
	after := store.ChangeCursor{At: time.Now(), ID: "01a24a4d-db30-7c19-9622-aa7622fa3d66"}
	for _, q := range []store.Query{{}, {Status: store.Delivered}, {Caller: "alice", Rule: "r"}} {
		query, args := changesQuery(q, after, 200)
		got := plan(t, db, query, args)
		if !strings.Contains(got, "USING INDEX requests_status") || strings.Contains(got, "SCAN requests") {
			t.Errorf("%+v: plan %s", q, got)
		}
		if testing.Verbose() {
			t.Logf("%+v: %s", q, got)
		}
	}
}
