package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/asyncmesh/asyncmesh/collector/queue"
	"github.com/asyncmesh/asyncmesh/collector/rabbitmq"
)

// The RabbitMQ queue (collector/rabbitmq).
func init() {
	register(Backend{
		Name: "rabbitmq",
		Doc:  "RabbitMQ at the URL in -amqp-url-env's variable; quorum queues (-amqp-*)",
		Flags: func(fs *flag.FlagSet) *Setup {
			urlEnv := fs.String("amqp-url-env", "ASYNCMESH_AMQP_URL", "environment variable holding the RabbitMQ URL (amqp://user:pass@host:port/vhost; a cluster's nodes comma-separated, tried in turn)")
			prefix := fs.String("amqp-prefix", "asyncmesh", "prefix of the RabbitMQ exchanges and queues")
			instance := fs.String("amqp-instance", "", "name of this collector among those sharing -amqp-prefix (a pod's name): the work messages of its intakes wait in a queue of its own until the filter's deadline has passed, then go to all (default: -node-id, else the host name)")
			prefetch := fs.Int("amqp-prefetch", 0, "unacked messages per consumer (0: its number of workers)")
			var url string
			return &Setup{
				Check: func() error {
					var err error
					if url, err = envURL("amqp-url-env", *urlEnv); err != nil {
						return err
					}
					if *prefetch < 0 {
						return fmt.Errorf("-amqp-prefetch %d: want 0 or more", *prefetch)
					}
					return nil
				},
				Queue: func(ctx context.Context, e *env) (queue.Queue, error) {
					name := *instance
					if name == "" {
						name = e.nodeID
					}
					if name == "" {
						var err error
						if name, err = os.Hostname(); err != nil {
							return nil, fmt.Errorf("-amqp-instance: not set, and the host name is unknown: %w", err)
						}
					}
					rq, err := rabbitmq.Open(ctx, rabbitmq.Config{URL: url, Prefix: *prefix, Prefetch: *prefetch,
						Topics: []string{queue.TopicWork, queue.TopicDelivery}, Instance: name, Logger: e.log})
					if err != nil {
						return nil, err
					}
					e.closers = append(e.closers, rq.Close)
					return rq, nil
				},
			}
		},
	})
}
