#!/usr/bin/env bash
# Installs RabbitMQ (Debian's rabbitmq-server) if missing, starts a private node on
# a free loopback port with its data under .tools/rabbitmq, and prints its AMQP URL.
# Idempotent: a node already running from this checkout is reused.
# ASYNCMESH_RABBITMQ_HOST (an address to listen on instead of 127.0.0.1) and
# ASYNCMESH_RABBITMQ_DIR (a data directory instead of .tools/rabbitmq) run a
# node of its own elsewhere: in a network namespace (e2e TestTopology).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
base=${ASYNCMESH_RABBITMQ_DIR:-$root/.tools/rabbitmq}
host=${ASYNCMESH_RABBITMQ_HOST:-127.0.0.1}
# One node per checkout: its name is derived from the checkout path.
node="asyncmesh-$(printf %s "$root" | md5sum | cut -c1-8)@localhost"
mkdir -p "$base"
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
  # The package starts a system node; this script runs its own.
  (service rabbitmq-server stop || true) >/dev/null 2>&1
fi
PATH=/usr/lib/rabbitmq/bin:$PATH
if [ -f "$base/port" ]; then
  port=$(cat "$base/port")
  if RABBITMQ_NODENAME="$node" rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "amqp://guest:guest@$host:$port/"
    exit 0
  fi
fi
# A restarted node keeps its port (and so its URL) when the port is still free.
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[2],int(sys.argv[1]))); print(s.getsockname()[1])' "$1" "$host" 2>/dev/null; }
port=$( { [ -f "$base/port" ] && free_port "$(cat "$base/port")"; } || free_port 0)
dist=$(free_port 0)
echo "$port" > "$base/port"
export RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS="$host" RABBITMQ_NODE_PORT="$port" \
  RABBITMQ_DIST_PORT="$dist" RABBITMQ_MNESIA_BASE="$base/mnesia" RABBITMQ_LOG_BASE="$base/log" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_PID_FILE="$base/pid" \
  RABBITMQ_CONFIG_FILE="$base/rabbitmq" ERL_EPMD_ADDRESS=127.0.0.1
echo "[]." > "$base/enabled_plugins"
echo "loopback_users = none" > "$base/rabbitmq.conf"
# The delay buckets hand messages back by at-least-once dead-lettering, whose
# worker retries a message it could not forward after this long (RabbitMQ's
# default: 3 minutes). At boot it may forward a message that expired while
# the node was down before the node has recovered its exchanges ("Cannot
# forward any dead-letter messages ... does not exist" in the log): with the
# default, that message then comes back 3 minutes late.
echo "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}]." > "$base/advanced.config"
export RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config"
# The server outlives this script: it must not hold the script's other open
# files (a caller's flock, a test's pipe) for its whole life.
closefds() { for fd in /proc/self/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-" 2>/dev/null; done; true; }
(closefds; exec nohup rabbitmq-server > "$base/server.out" 2>&1) &
# check_port_connectivity connects through the node's host name (localhost),
# where a node listening on another address does not answer: such a node is
# ready once its listener runs.
ready() {
  if [ "$host" = 127.0.0.1 ]; then rabbitmq-diagnostics -q check_port_connectivity
  else rabbitmq-diagnostics -q check_port_listener "$port"; fi
}
for _ in $(seq 1 120); do
  if ready >/dev/null 2>&1; then
    echo "amqp://guest:guest@$host:$port/"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq did not start; see $base/server.out and $base/log" >&2
exit 1
