#!/usr/bin/env bash
# Installs Elasticsearch 8 (Maven Central's integ-test zip; 8.19's includes
# x-pack security, which is switched off here: loopback only) under .tools if missing, starts a single node on a free
# loopback port with a small heap and the machine's JDK 17, and prints its URL.
# Elasticsearch refuses to run as root, so as root it runs as user "asyncmesh-es".
# Idempotent: a node already running from this checkout is reused.
# ASYNCMESH_ES_HOST (an address to listen on instead of 127.0.0.1) and
# ASYNCMESH_ES_DIR (a state directory instead of .tools/es-state) run a node
# of its own elsewhere: in a network namespace (e2e TestTopology).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${ES_VERSION:-8.19.7}
tools="$root/.tools"
home="$tools/elasticsearch-$version"
zip="$HOME/.m2/repository/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$version/elasticsearch-$version.zip"
mkdir -p "$tools"
if [ ! -d "$home" ]; then
  [ -f "$zip" ] || mvn -q dependency:get -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$version:zip" >&2
  (cd "$tools" && unzip -q "$zip")
fi
state=${ASYNCMESH_ES_DIR:-$tools/es-state}
host=${ASYNCMESH_ES_HOST:-127.0.0.1}
mkdir -p "$state"
if [ -f "$state/port" ] && curl -fsS "http://$host:$(cat "$state/port")/_cluster/health" >/dev/null 2>&1; then
  echo "http://$host:$(cat "$state/port")"
  exit 0
fi
java_home=${ES_JAVA_HOME:-}
if [ -z "$java_home" ]; then
  for j in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/*17* "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"; do
    [ -x "$j/bin/java" ] && java_home=$j && break
  done
fi
# A restarted node keeps its port (and so its URL) when the port is still free.
free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[2],int(sys.argv[1]))); print(s.getsockname()[1])' "$1" "$host" 2>/dev/null; }
port=$( { [ -f "$state/port" ] && free_port "$(cat "$state/port")"; } || free_port 0)
echo "$port" > "$state/port"
mkdir -p "$state/data" "$state/logs"
run=()
if [ "$(id -u)" = 0 ]; then
  id asyncmesh-es >/dev/null 2>&1 || useradd --system --no-create-home asyncmesh-es
  chown -R asyncmesh-es "$home" "$state"
  chmod o+x "$root" "$tools" 2>/dev/null || true
  run=(runuser -u asyncmesh-es --)
fi
# The server outlives this script: it must not hold the script's other open
# files (a caller's flock, a test's pipe) for its whole life.
closefds() { for fd in /proc/self/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-" 2>/dev/null; done; true; }
closefds
nohup "${run[@]}" env ES_JAVA_HOME="$java_home" ES_JAVA_OPTS="-Xms512m -Xmx512m" \
  "$home/bin/elasticsearch" -E discovery.type=single-node -E network.host="$host" \
  -E http.port="$port" -E transport.port=0 -E path.data="$state/data" -E path.logs="$state/logs" \
  -E cluster.name=asyncmesh -E action.destructive_requires_name=false -E xpack.security.enabled=false \
  > "$state/server.out" 2>&1 &
for _ in $(seq 1 180); do
  if curl -fsS "http://$host:$port/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then
    echo "http://$host:$port"
    exit 0
  fi
  sleep 1
done
echo "elasticsearch did not start; see $state/server.out" >&2
tail -20 "$state/server.out" >&2
exit 1
