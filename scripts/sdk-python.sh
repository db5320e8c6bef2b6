#!/usr/bin/env bash
# The Python SDK's environment and tests (sdk/python).
#   scripts/sdk-python.sh env    makes the venv .tools/sdk-python with the SDK
#                                (editable) and its test dependencies, if
#                                missing or stale; prints its python
#   scripts/sdk-python.sh test   env, then mypy --strict and pytest
# Idempotent: pip runs only when sdk/python/pyproject.toml changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/sdk-python"
stamp="$venv/.asyncmesh-pyproject.sha256"
want=$(sha256sum "$root/sdk/python/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$root/sdk/python[test]" >&2
  echo "$want" >"$stamp"
fi
case "${1:-env}" in
env) echo "$venv/bin/python" ;;
test)
  cd "$root/sdk/python"
  "$venv/bin/python" -m mypy src tests examples
  # Exceptions in threads (receiver, handlers) fail the run; dependencies'
  # deprecation warnings do not.
  "$venv/bin/python" -m pytest -W error::pytest.PytestUnhandledThreadExceptionWarning -W error::pytest.PytestUnraisableExceptionWarning
  ;;
*) echo "usage: $0 env|test" >&2; exit 2 ;;
esac
