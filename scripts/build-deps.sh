#!/usr/bin/env bash
# What the test suites need beyond Rust: the C toolchain bits that rdkafka's
# bundled librdkafka builds and links against. The tests produce to the test
# broker and read committed offsets with it, a client independent of evercache's
# own; evercache itself does not link librdkafka.
# Idempotent; installs only what is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for pkg in cmake libcurl4-openssl-dev libssl-dev zlib1g-dev libsasl2-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "build-deps: present"
fi
