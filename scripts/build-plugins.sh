#!/usr/bin/env bash
# Builds every plugin in plugins/ for wasm32-wasip2 (installing the target when
# missing) and copies the components to target/plugins/, the plugins_dir the
# examples and tests use. Idempotent; fast when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "build-plugins: installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

(cd "$root/plugins" && cargo build --release --quiet)

out="$root/target/plugins"
mkdir -p "$out"
built=()
for wasm in "$root"/target/wasm32-wasip2/release/*.wasm; do
  name=$(basename "$wasm")
  # Copy only when changed, so a watching runtime sees one event per real change.
  if ! cmp -s "$wasm" "$out/$name"; then
    cp "$wasm" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
  fi
  built+=("$name")
done
echo "build-plugins: ${built[*]} in target/plugins/"
