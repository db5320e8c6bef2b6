#!/usr/bin/env bash
# Stops the private RabbitMQ node that scripts/start-rabbitmq.sh started (its data
# stays under .tools/rabbitmq; start-rabbitmq.sh starts it again on the same port).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base="$root/.tools/rabbitmq"
# One node per checkout: its name is derived from the checkout path.
node="asyncmesh-$(printf %s "$root" | md5sum | cut -c1-8)@localhost"
PATH=/usr/lib/rabbitmq/bin:$PATH
export RABBITMQ_NODENAME="$node" ERL_EPMD_ADDRESS=127.0.0.1
if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  rabbitmqctl -q stop "$base/pid" >&2 || rabbitmqctl -q stop >&2
fi
