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

echo "== benchmarks in tiny mode (keeps the harness working; figures meaningless here)"
cargo run --quiet -p evercache-bench -- compare --tiny
cargo run --quiet -p evercache-bench -- capture --rate 200 --seconds 1 --burst 2000
cargo run --quiet -p evercache-bench -- plugin-cost --tiny

echo "== cargo test"
cargo test --workspace
