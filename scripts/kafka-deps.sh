#!/usr/bin/env bash
# What the Kafka source and its tests need: the build packages for the bundled
# librdkafka (build-deps.sh) and the `tansu` Kafka-protocol broker the tests
# start on loopback (no JVM needed). Idempotent; installs only what is missing.
set -euo pipefail
bash "$(dirname "$0")/build-deps.sh"

export PATH="$HOME/.cargo/bin:$PATH"
# The security tests need tansu's Postgres storage (SCRAM credentials); a tansu
# installed without it is replaced.
with_postgres() {
  grep -q '"tansu [^"]*":{[^}]*"features":\[[^]]*"postgres"' "$HOME/.cargo/.crates2.json" 2>/dev/null
}
if tansu --version >/dev/null 2>&1 && with_postgres; then
  echo "kafka-deps: tansu: $(tansu --version 2>&1 | head -n 1)"
else
  # Takes 12-15 minutes on 2 cores, once; the binary lands in ~/.cargo/bin and is reused.
  echo "kafka-deps: tansu: installing (cargo install tansu --locked --features dynostore,postgres)"
  cargo install tansu --locked --features dynostore,postgres
fi
