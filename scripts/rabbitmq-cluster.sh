#!/usr/bin/env bash
# Starts or stops node I (1..3) of a three-node RabbitMQ cluster, for the
# cluster fault test (make chaos-cluster), which runs it inside a network
# namespace of its own: scripts/rabbitmq-cluster.sh start|stop I.
# Node I is amqI@localhost, AMQP on ASYNCMESH_CLUSTER_HOST:567(1+I), Erlang
# distribution on 127.0.0.1:2567(1+I) (the nodes talk over the namespace's
# loopback, through its own epmd), data under ASYNCMESH_CLUSTER_DIR/rabbitmqI.
# Node 1 starts alone; nodes 2 and 3 join it on their first start, and a
# restarted node rejoins the cluster it belongs to by itself. The package
# (Debian's rabbitmq-server) is installed by scripts/start-rabbitmq.sh.
set -euo pipefail
action=$1 i=$2
dir=${ASYNCMESH_CLUSTER_DIR:?}/rabbitmq$i
host=${ASYNCMESH_CLUSTER_HOST:-127.0.0.1}
PATH=/usr/lib/rabbitmq/bin:$PATH
node="amq$i@localhost"
export RABBITMQ_NODENAME="$node" ERL_EPMD_ADDRESS=127.0.0.1
case $action in
stop)
  # SIGTERM is RabbitMQ's orderly shutdown; signalled directly, without the
  # CLI, whose two Erlang VMs (ping, then stop) took 30-100 s on a loaded
  # machine. SIGKILL after 60 s.
  [ -f "$dir/pid" ] || exit 0
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop I" >&2; exit 2 ;;
esac
mkdir -p "$dir"
first=false
[ -d "$dir/mnesia" ] || first=true
export RABBITMQ_NODE_IP_ADDRESS="$host" RABBITMQ_NODE_PORT=$((5671 + i)) RABBITMQ_DIST_PORT=$((25671 + i)) \
  RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
  RABBITMQ_PID_FILE="$dir/pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
echo "[]." > "$dir/enabled_plugins"
echo "loopback_users = none" > "$dir/rabbitmq.conf"
# As in start-rabbitmq.sh: dead-lettered messages are retried after 5 s, not 3 min.
echo "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}]." > "$dir/advanced.config"
nohup rabbitmq-server > "$dir/server.out" 2>&1 &
for _ in $(seq 1 120); do
  if rabbitmq-diagnostics -q check_port_listener $((5671 + i)) >/dev/null 2>&1; then
    if $first && [ "$i" != 1 ]; then
      rabbitmqctl -q stop_app >&2
      rabbitmqctl -q join_cluster amq1@localhost >&2
      rabbitmqctl -q start_app >&2
    fi
    echo "amqp://guest:guest@$host:$((5671 + i))/"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq node $i did not start; see $dir/server.out and $dir/log" >&2
exit 1
