#!/usr/bin/env bash
# The marketplace demo, end to end on this machine, with nothing but Postgres,
# Redis and the evercache binary:
#   legacy SQL writes → Postgres WAL → evercache's built-in capture → plugin → specialist:{id} in Redis.
# `run.sh mariadb` runs the same demo on MariaDB: binlog → built-in binlog capture.
# It prepares Redis and Postgres (wal_level = logical), creates a fresh
# `marketplace` database with a read-only role for evercache's queries, a
# replication role for its capture and a separate writer role, builds the plugin
# and the runtime, starts the runtime, then plays a "legacy writer" that knows
# nothing about the cache and shows when each write reached the cache.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }
clock() { date +%H:%M:%S.%3N; }
admin() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
redis() { redis-cli -h 127.0.0.1 -p 6379 "$@"; }
my() { mysql -h 127.0.0.1 -P 3306 -u root --batch --skip-column-names "$@"; }
slot=evercache_marketplace
mode=${1:-postgres}
case "$mode" in
  postgres) config=examples/marketplace/evercache.toml; streams=marketplace.public ;;
  mariadb) config=examples/marketplace/mariadb/evercache.toml; streams=marketplace.marketplace ;;
  *) echo "usage: $0 [postgres|mariadb]"; exit 2 ;;
esac
# The legacy application's writes, as its own database user.
legacy_sql() {
  if [ "$mode" = mariadb ]; then
    mysql -h 127.0.0.1 -P 3306 -u marketplace_writer marketplace -e "$1"
  else
    psql -h 127.0.0.1 -U marketplace_writer -d marketplace -v ON_ERROR_STOP=1 -qc "$1"
  fi
}

step "services (Redis, Postgres with wal_level = logical, MariaDB with its binlog on)"
bash scripts/dev-services.sh

step "database ($mode): a fresh marketplace with users evercache_ro, evercache_capture, marketplace_writer"
if [ "$mode" = mariadb ]; then
  my -e "drop database if exists marketplace; create database marketplace"
  my marketplace < examples/marketplace/mariadb/schema.sql
  my marketplace < examples/marketplace/mariadb/seed.sql
  my < examples/marketplace/mariadb/roles.sql
  echo "ok: $(my marketplace -e 'select count(*) from specialist') specialists, $(my marketplace -e 'select count(*) from session') sessions"
else
  admin -d postgres -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$slot'" >/dev/null
  admin -d postgres -c "drop database if exists marketplace with (force)"
  admin -d postgres -c "create database marketplace"
  admin -d marketplace -f examples/marketplace/schema.sql
  admin -d marketplace -f examples/marketplace/seed.sql
  admin -d marketplace -f examples/marketplace/roles.sql
  echo "ok: $(admin -d marketplace -c 'select count(*) from specialist') specialists, $(admin -d marketplace -c 'select count(*) from session') sessions"
fi

step "build: plugins and runtime"
bash scripts/build-plugins.sh
# The example loads its own plugin only, not every plugin the repository builds.
mkdir -p examples/marketplace/plugins
cp target/plugins/specialist_status.wasm examples/marketplace/plugins/
cargo build --quiet -p evercache
evercache="$root/target/debug/evercache"

step "redis: clear the demo's keys"
redis --scan --pattern 'specialist:*' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
redis --scan --pattern '{specialist:*}:meta' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
redis DEL "evercache:snapshot:marketplace:$slot" evercache:binlog:marketplace \
  "$streams.specialist:dlq" "$streams.session:dlq" >/dev/null
echo "ok"

step "evercache run --config $config (built-in capture, initial snapshot)"
log=$(mktemp /tmp/evercache-demo.XXXXXX.log)
"$evercache" run --config "$config" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  [ "$(redis --scan --pattern 'specialist:*' | wc -l)" -ge 4 ] && break
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "evercache failed to start"; exit 1; fi
  sleep 0.05
done
echo "running (pid $pid, log $log); the snapshot warmed the cache:"
for id in 1 2 3 4; do printf '  specialist:%s = %s\n' "$id" "$(redis GET "specialist:$id")"; done

# One legacy write as marketplace_writer; waits for the cache to change and
# reports the delay from the database commit to the moment the new value was
# visible in Redis. Postgres' WAL stamps commits in microseconds (the key's
# metadata records it); the binlog only in seconds, so on MariaDB the delay is
# taken from just before the writer's command ran (it includes the client's start).
legacy() {
  local sql=$1 key=$2
  local before pos value seen committed started label
  # Wait for the key's version, not its value: a write may leave the value as it was.
  before=$(redis HGET "{$key}:meta" pos)
  printf '\n[%s] legacy writer: %s\n' "$(clock)" "$sql"
  started=$(now_ms)
  legacy_sql "$sql"
  pos=$before
  for _ in $(seq 1 2000); do
    pos=$(redis HGET "{$key}:meta" pos)
    [ "$pos" != "$before" ] && break
    sleep 0.001
  done
  seen=$(now_ms)
  if [ "$pos" = "$before" ]; then
    echo "ERROR: $key was not rewritten; see the runtime log $log"; exit 1
  fi
  value=$(redis GET "$key")
  committed=$(redis HGET "{$key}:meta" committed_at_ms)
  label="commit -> cache"
  if [ "$mode" = mariadb ]; then committed=$started; label="write -> cache"; fi
  printf '[%s] cache %s = %s   (%s: %s ms)\n' "$(clock)" "$key" "${value:-(deleted)}" "$label" "$(( seen - committed ))"
}

step "legacy writer (plain SQL, no idea a cache exists)"
legacy "insert into session (id, specialist_id) values (10, 1)" specialist:1
legacy "update specialist set online = false where id = 2" specialist:2
legacy "update session set ended_at = now() where id = 10" specialist:1
legacy "update specialist set name = 'Alan M. Turing', online = true where id = 3" specialist:3
legacy "insert into specialist (id, name, online) values (5, 'Barbara Liskov', true)" specialist:5
legacy "delete from session where specialist_id = 4; delete from specialist where id = 4" specialist:4

step "freshness metadata of specialist:1 (what applications can read)"
redis HGETALL '{specialist:1}:meta' | paste - -

step "done"
if [ "$mode" = mariadb ]; then
  sleep 0.2
  echo "binlog head: $(my -e 'show master status' | cut -f1,2 | tr '\t' ':'); stored resume position (written only after cache writes): $(redis GET evercache:binlog:marketplace)"
else
  lag=$(admin -d marketplace -c "select pg_current_wal_lsn() - confirmed_flush_lsn from pg_replication_slots where slot_name = '$slot'")
  echo "replication slot $slot: $lag bytes behind the WAL (confirmed only after cache writes)"
fi
echo "dead letters: $(redis XLEN "$streams.specialist:dlq") / $(redis XLEN "$streams.session:dlq")"
