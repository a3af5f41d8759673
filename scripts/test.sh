#!/usr/bin/env bash
# The one test command (README and CI): services, plugins, format, lint, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-services.sh
bash scripts/build-plugins.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --release -- -D warnings)

echo "== cargo test"
cargo test --workspace
