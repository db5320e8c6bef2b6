package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/asyncmesh/asyncmesh/collector/elastic"
	"github.com/asyncmesh/asyncmesh/collector/store"
)

// The Elasticsearch store (collector/elastic).
func init() {
	register(Backend{
		Name: "elasticsearch",
		Doc:  "Elasticsearch 8 at the URL in -es-url-env's variable; daily indices (-es-*)",
		Flags: func(fs *flag.FlagSet) *Setup {
			urlEnv := fs.String("es-url-env", "ASYNCMESH_ES_URL", "environment variable holding the Elasticsearch URL (http://host:port; a cluster's nodes comma-separated)")
			prefix := fs.String("es-prefix", "asyncmesh", "prefix of the Elasticsearch index templates and indices")
			replicas := fs.Int("es-replicas", 1, "replicas of each daily index (0 on a single node)")
			flushers := fs.Int("es-flushers", 2, "bulk requests in flight to Elasticsearch")
			linger := fs.Duration("es-linger", 2*time.Millisecond, "how long a bulk that finds other writes waiting waits for more (0: sent at once; a lone write never waits)")
			// -es-retention came before -retention applied to every store;
			// kept so that existing command lines mean what they meant.
			if r := fs.Lookup("retention"); r != nil {
				fs.Var(r.Value, "es-retention", "deprecated: the same as -retention")
			}
			var url string
			return &Setup{
				Check: func() error {
					var err error
					if url, err = envURL("es-url-env", *urlEnv); err != nil {
						return err
					}
					switch {
					case *replicas < 0:
						return fmt.Errorf("-es-replicas %d: want 0 or more", *replicas)
					case *flushers < 1:
						return fmt.Errorf("-es-flushers %d: want 1 or more", *flushers)
					case *linger < 0:
						return fmt.Errorf("-es-linger %v: want 0 or more", *linger)
					}
					return nil
				},
				Store: func(ctx context.Context, e *env) (store.Store, error) {
					es, err := elastic.Open(ctx, elastic.Config{URL: url, Prefix: *prefix, Replicas: *replicas, Retention: e.retention,
						Flushers: *flushers, Linger: *linger, Logger: e.log})
					if err != nil {
						return nil, err
					}
					e.closers = append(e.closers, es.Close)
					return es, nil
				},
			}
		},
	})
}
