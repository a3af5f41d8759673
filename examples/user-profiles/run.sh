#!/usr/bin/env bash
# The user-profiles demo, end to end on this machine, with nothing but
# Postgres, Redis and the evercache binary — and no plugin:
#   application SQL → Postgres WAL → built-in capture → [mapper] → user:{id} hash in Redis.
# It prepares Redis and Postgres (wal_level = logical), creates a fresh
# `profiles` database with a read-only role for evercache, a replication role
# for its capture and the application's own role, builds and starts the
# runtime, then plays the application (which knows nothing about the cache)
# and shows each write reaching the cache.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }
clock() { date +%H:%M:%S.%3N; }
admin() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
redis() { redis-cli -h 127.0.0.1 -p 6379 "$@"; }
app_sql() { psql -h 127.0.0.1 -U profiles_writer -d profiles -v ON_ERROR_STOP=1 -qc "$1"; }
slot=evercache_profiles
config=examples/user-profiles/evercache.toml

step "services (Redis, Postgres with wal_level = logical)"
bash scripts/dev-services.sh

step "database: a fresh profiles with users evercache_ro, evercache_capture, profiles_writer"
admin -d postgres -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$slot'" >/dev/null
admin -d postgres -c "drop database if exists profiles with (force)"
admin -d postgres -c "create database profiles"
admin -d profiles -f examples/user-profiles/schema.sql
admin -d profiles -f examples/user-profiles/seed.sql
admin -d profiles -f examples/user-profiles/roles.sql
echo "ok: $(admin -d profiles -c 'select count(*) from users') users"

step "build: the runtime (no plugin to build)"
cargo build --quiet -p evercache
evercache="$root/target/debug/evercache"
mkdir -p examples/user-profiles/plugins
"$evercache" check --config "$config"

step "redis: clear the demo's keys"
redis --scan --pattern 'user:*' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
redis --scan --pattern '{user:*}:meta' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
redis DEL "evercache:snapshot:profiles:$slot" profiles.public.users:dlq >/dev/null
echo "ok"

step "evercache run --config $config (built-in capture, initial snapshot)"
log=$(mktemp /tmp/evercache-profiles.XXXXXX.log)
"$evercache" run --config "$config" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  [ "$(redis --scan --pattern 'user:*' | wc -l)" -ge 3 ] && break
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "evercache failed to start"; exit 1; fi
  sleep 0.05
done
echo "running (pid $pid, log $log); the snapshot warmed the cache:"
for id in 1042 1043 1044; do printf '  user:%s = %s   ttl %ss\n' "$id" "$(redis HGETALL "user:$id" | paste -sd' ')" "$(redis TTL "user:$id")"; done

# One application write; waits for the key's version to change and reports
# the delay from the database commit to the moment Redis had the new value.
write() {
  local sql=$1 key=$2
  local before pos seen committed
  before=$(redis HGET "{$key}:meta" pos)
  printf '\n[%s] application: %s\n' "$(clock)" "$sql"
  app_sql "$sql"
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
  committed=$(redis HGET "{$key}:meta" committed_at_ms)
  printf '[%s] cache %s = %s   (commit -> cache: %s ms)\n' "$(clock)" "$key" \
    "$(redis HGETALL "$key" | paste -sd' ' | sed 's/^$/(deleted)/')" "$(( seen - committed ))"
}

step "the application writes (plain SQL, no idea a cache exists)"
write "update users set plan = 'pro', updated_at = now() where id = 1042" user:1042
write "update users set email = 'carol@example.com' where id = 1044" user:1044
write "insert into users (name, email, plan) values ('Dave', 'dave@example.com', 'free')" user:2001
write "delete from users where id = 1043" user:1043

step "reading through evercache: GET /v1/keys/user:1042 (a miss would be filled by the mapper)"
curl -sf http://127.0.0.1:9187/v1/keys/user:1042; echo

step "done"
lag=$(admin -d profiles -c "select pg_current_wal_lsn() - confirmed_flush_lsn from pg_replication_slots where slot_name = '$slot'")
echo "replication slot $slot: $lag bytes behind the WAL (confirmed only after cache writes)"
echo "dead letters: $(redis XLEN profiles.public.users:dlq)"
