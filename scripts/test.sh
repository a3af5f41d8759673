#!/usr/bin/env bash
# The one test command (README and CI): services, plugins, format, lint, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-services.sh
bash scripts/kafka-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/build-plugins.sh
bash scripts/browser.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p evercache --test faults -- -D warnings   # not a default test target
(cd plugins && cargo clippy --release -- -D warnings)

echo "== benchmarks in tiny mode (keeps the harness working; figures meaningless here)"
cargo run --quiet -p evercache-bench -- compare --tiny
cargo run --quiet -p evercache-bench -- capture --rate 200 --seconds 1 --burst 2000
cargo run --quiet -p evercache-bench -- capture --database mariadb --rate 200 --seconds 1 --burst 2000
cargo run --quiet -p evercache-bench -- visibility --rate 200 --seconds 1 --rounds 1
cargo run --quiet -p evercache-bench -- durability --rate 200 --seconds 1 --burst 2000
cargo run --quiet -p evercache-bench -- plugin-cost --tiny
cargo run --quiet -p evercache-bench -- read-path --tiny
cargo run --quiet -p evercache-bench -- kafka-source --tiny
cargo run --quiet -p evercache-bench -- stream-floor --tiny
cargo build --quiet -p evercache   # the backlog bench runs the evercache binary as its own process
cargo run --quiet -p evercache-bench -- backlog --tiny

echo "== cargo test"
cargo test --workspace

echo "== the end-to-end suites again, against Valkey instead of Redis"
bash scripts/valkey.sh
EVERCACHE_TEST_REDIS_URL=redis://127.0.0.1:6391 EVERCACHE_TEST_REDIS_SERVER="$(bash scripts/valkey.sh --binary)" \
  cargo test -p evercache-e2e

echo "== fault suite (kills and restarts real processes; prints what each scenario checked)"
cargo test -p evercache --test faults -- --nocapture --test-threads=1

echo "== the quickstart demo (README), end to end"
bash examples/marketplace/run.sh

echo "== the no-code example (a [mapper] pipeline), end to end"
bash examples/user-profiles/run.sh

echo "== artifacts: target/artifacts/status-page.png (the status page as headless Chromium rendered it)"
