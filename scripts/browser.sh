#!/usr/bin/env bash
# Makes sure a headless Chromium is available for the status-page test: reuses an
# installed one, installs Debian's `chromium` with apt-get otherwise. Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if chromium --version >/dev/null 2>&1; then
  echo "browser: $(chromium --version)"
  exit 0
fi
echo "browser: installing chromium"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "browser: $(chromium --version)"
