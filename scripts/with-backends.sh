#!/usr/bin/env bash
# Runs a command with RabbitMQ and Elasticsearch started on loopback (and
# stopped afterwards), their URLs in ASYNCMESH_TEST_AMQP_URL and
# ASYNCMESH_TEST_ES_URL: scripts/with-backends.sh make test
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'scripts/stop-rabbitmq.sh || true; scripts/stop-elasticsearch.sh || true' EXIT
ASYNCMESH_TEST_AMQP_URL=$(scripts/start-rabbitmq.sh)
ASYNCMESH_TEST_ES_URL=$(scripts/start-elasticsearch.sh)
export ASYNCMESH_TEST_AMQP_URL ASYNCMESH_TEST_ES_URL
"$@"
