#!/usr/bin/env bash
# Installs Debian's chromium if missing (the dashboard's browser test drives
# it headless with chromedp; browsers are not downloaded any other way) and
# prints its path. Idempotent. CHROMIUM_BIN, when set, is used as it is.
set -euo pipefail
if [ -n "${CHROMIUM_BIN:-}" ]; then echo "$CHROMIUM_BIN"; exit 0; fi
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends chromium >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends chromium >&2; }
fi
command -v chromium
