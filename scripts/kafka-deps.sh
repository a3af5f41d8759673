#!/usr/bin/env bash
# What the Kafka source and its tests need: the C toolchain bits rdkafka's
# bundled librdkafka build links against, and the `tansu` Kafka-protocol broker
# the tests start on loopback (no JVM needed). Idempotent; installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { echo "kafka-deps: $*"; }

missing=()
for pkg in cmake libcurl4-openssl-dev libssl-dev zlib1g-dev libsasl2-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "build packages: present"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if tansu --version >/dev/null 2>&1; then
  say "tansu: $(tansu --version 2>&1 | head -n 1)"
else
  # Takes 12-15 minutes on 2 cores, once; the binary lands in ~/.cargo/bin and is reused.
  say "tansu: installing (cargo install tansu --locked --features dynostore)"
  cargo install tansu --locked --features dynostore
fi
