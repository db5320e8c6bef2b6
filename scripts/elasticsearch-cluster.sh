#!/usr/bin/env bash
# Starts or stops node I (1..3) of a three-node Elasticsearch cluster, for the
# cluster fault test (make chaos-cluster), which runs it inside a network
# namespace of its own: scripts/elasticsearch-cluster.sh start|stop I
# (install I: only install the distribution, before starting nodes in parallel).
# Node esI serves HTTP on ASYNCMESH_CLUSTER_HOST:920I; the nodes talk to each
# other on the namespace's loopback (127.0.0.1:930I: a transport bound to
# loopback keeps Elasticsearch in development mode, without the production
# bootstrap checks), with a heap of ES_HEAP (default 512m) each, data under
# ASYNCMESH_CLUSTER_DIR/esI. The distribution is the one
# scripts/start-elasticsearch.sh installs under .tools (installed here too if missing).
set -euo pipefail
action=$1 i=$2
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${ASYNCMESH_CLUSTER_DIR:?}/es$i
host=${ASYNCMESH_CLUSTER_HOST:-127.0.0.1}
version=${ES_VERSION:-8.19.7}
home="$root/.tools/elasticsearch-$version"
case $action in
stop)
  [ -f "$dir/pid" ] || exit 0
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  exit 0 ;;
start|install) ;;
*) echo "usage: $0 start|stop|install I" >&2; exit 2 ;;
esac
if [ ! -d "$home" ]; then # as scripts/start-elasticsearch.sh installs it
  zip="$HOME/.m2/repository/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$version/elasticsearch-$version.zip"
  [ -f "$zip" ] || mvn -q dependency:get -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$version:zip" >&2
  mkdir -p "$root/.tools" && (cd "$root/.tools" && unzip -q "$zip")
fi
[ "$action" = start ] || exit 0
java_home=${ES_JAVA_HOME:-}
if [ -z "$java_home" ]; then
  for j in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/*17*; do
    [ -x "$j/bin/java" ] && java_home=$j && break
  done
fi
mkdir -p "$dir/data" "$dir/logs"
# A configuration directory per node: each writes its own keystore there.
[ -d "$dir/config" ] || cp -r "$home/config" "$dir/config"
rm -f "$dir/pid"
id asyncmesh-es >/dev/null 2>&1 || useradd --system --no-create-home asyncmesh-es
chown -R asyncmesh-es "$dir"
chown -R asyncmesh-es "$home"
chmod o+x "$root" "$root/.tools" "$(dirname "$ASYNCMESH_CLUSTER_DIR")" "$ASYNCMESH_CLUSTER_DIR" 2>/dev/null || true
seeds=127.0.0.1:9301,127.0.0.1:9302,127.0.0.1:9303
heap=${ES_HEAP:-512m}
nohup runuser -u asyncmesh-es -- env ES_JAVA_HOME="$java_home" ES_PATH_CONF="$dir/config" ES_JAVA_OPTS="-Xms$heap -Xmx$heap" \
  "$home/bin/elasticsearch" -p "$dir/pid" -E node.name=es$i -E cluster.name=asyncmesh-chaos \
  -E http.host="$host" -E http.port=$((9200 + i)) -E transport.host=127.0.0.1 -E transport.port=$((9300 + i)) \
  -E discovery.seed_hosts=$seeds -E cluster.initial_master_nodes=es1,es2,es3 \
  -E path.data="$dir/data" -E path.logs="$dir/logs" -E cluster.routing.allocation.disk.threshold_enabled=false \
  -E action.destructive_requires_name=false -E xpack.security.enabled=false -E xpack.ml.enabled=false \
  > "$dir/server.out" 2>&1 &
# A node is up once it answers as a member of a cluster with an elected
# master (the first start waits for the others: the three form it together).
for _ in $(seq 1 240); do
  if curl -fsS "http://$host:$((9200 + i))/_cluster/health?timeout=1s" 2>/dev/null | grep -q '"status"'; then
    echo "http://$host:$((9200 + i))"
    exit 0
  fi
  sleep 1
done
echo "elasticsearch node $i did not start; see $dir/server.out" >&2
tail -20 "$dir/server.out" >&2
exit 1
