#!/usr/bin/env bash
# Stops the Elasticsearch node that scripts/start-elasticsearch.sh started (its
# data stays under .tools/es-state; start-elasticsearch.sh starts it again on the
# same port).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.tools/es-state"
[ -f "$state/port" ] || exit 0
url="http://127.0.0.1:$(cat "$state/port")"
pid=$(curl -fsS "$url/_nodes/_local/process?filter_path=nodes.*.process.id" 2>/dev/null | python3 -c 'import json,sys; print(next(iter(json.load(sys.stdin)["nodes"].values()))["process"]["id"])' 2>/dev/null) || exit 0
kill "$pid"
for _ in $(seq 1 60); do
  kill -0 "$pid" 2>/dev/null || exit 0
  sleep 1
done
kill -9 "$pid" 2>/dev/null || true
