package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/asyncmesh/asyncmesh/collector/embedded"
	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// The embedded backend: one SQLite file, opened once when it is the store,
// the queue or both (then it is also the outbox: the collector writes a
// record and its message in one commit).
func init() {
	register(Backend{
		Name: "embedded",
		Doc:  "SQLite file (-db); as both store and queue, one commit writes a record and its message (the outbox)",
		Flags: func(fs *flag.FlagSet) *Setup {
			path := fs.String("db", "asyncmesh.db", "embedded database file (when the store or the queue is embedded)")
			var db *embedded.DB
			open := func(ctx context.Context, e *env) (*embedded.DB, error) {
				if db != nil {
					return db, nil
				}
				d, err := embedded.Open(ctx, *path)
				if err != nil {
					return nil, fmt.Errorf("-db: %w", err)
				}
				db, e.closers = d, append(e.closers, d.Close)
				return db, nil
			}
			return &Setup{
				Store: func(ctx context.Context, e *env) (store.Store, error) {
					db, err := open(ctx, e)
					if err != nil {
						return nil, err
					}
					if e.retention > 0 {
						db.StartRetention(e.retention)
					}
					return db.Store(), nil
				},
				Queue: func(ctx context.Context, e *env) (queue.Queue, error) {
					db, err := open(ctx, e)
					if err != nil {
						return nil, err
					}
					return db.Queue(), nil
				},
			}
		},
	})
}
