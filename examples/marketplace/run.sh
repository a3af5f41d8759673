#!/usr/bin/env bash
# The marketplace demo, end to end on this machine:
#   legacy SQL writes → change events in Redis Streams → evercache → specialist:{id} in Redis.
# It prepares Redis and Postgres, creates the `marketplace` database with a
# read-only role for evercache and a separate writer role, builds the plugin and
# the runtime, starts the runtime, then plays a "legacy writer" that knows
# nothing about the cache and shows when each write reached the cache.
#
# Debezium Server is not run here (it needs a JVM): this script writes the
# change events Debezium Server's Redis sink would write (compact layout,
# schemas.enable=false) right after each commit. docker-compose.yml runs the
# same story with the real Debezium Server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

step() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }
clock() { date +%H:%M:%S.%3N; }

step "services"
bash scripts/dev-services.sh

step "database: marketplace, roles evercache_ro (read-only) and marketplace_writer"
admin() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(admin -d postgres -c "select 1 from pg_database where datname = 'marketplace'")" != "1" ]; then
  admin -d postgres -c "create database marketplace"
fi
admin -d marketplace <<'SQL'
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'evercache_ro') then create role evercache_ro login; end if;
  if not exists (select 1 from pg_roles where rolname = 'marketplace_writer') then create role marketplace_writer login; end if;
end $$;
SQL
admin -d marketplace -f examples/marketplace/schema.sql
admin -d marketplace -c "truncate session, specialist"
admin -d marketplace -f examples/marketplace/seed.sql
admin -d marketplace <<'SQL'
grant usage on schema public to evercache_ro, marketplace_writer;
grant select on all tables in schema public to evercache_ro;
alter role evercache_ro set default_transaction_read_only = on;
grant select, insert, update, delete on all tables in schema public to marketplace_writer;
SQL
echo "ok"

step "build: plugins and runtime"
bash scripts/build-plugins.sh
cargo build --quiet -p evercache
evercache="$root/target/debug/evercache"

step "redis: fresh demo streams and keys"
redis() { redis-cli -h 127.0.0.1 -p 6379 "$@"; }
redis DEL marketplace.public.specialist marketplace.public.session \
  marketplace.public.specialist:dlq marketplace.public.session:dlq >/dev/null
redis --scan --pattern 'specialist:*' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
redis --scan --pattern '{specialist:*}:meta' | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
echo "ok"

# A Debezium-style change event for one row, built by Postgres from the row itself.
# $1 table, $2 op (c|u|d|r), $3 id.
emit() {
  local table=$1 op=$2 id=$3 row
  if [ "$op" = d ]; then row="null"; else row="row_to_json(t)"; fi
  local value
  value=$(admin -d marketplace -c "
    with lsn as (select (pg_current_wal_lsn() - '0/0')::bigint as n)
    select json_build_object(
      'before', case when '$op' = 'd' then json_build_object('id', $id) end,
      'after', $row,
      'source', json_build_object('version', 'run.sh', 'connector', 'postgresql', 'name', 'marketplace',
        'ts_ms', (extract(epoch from clock_timestamp()) * 1000)::bigint, 'snapshot', '$([ "$op" = r ] && echo true || echo false)',
        'db', 'marketplace', 'sequence', json_build_array(lsn.n::text, lsn.n::text)::text,
        'schema', 'public', 'table', '$table', 'lsn', lsn.n),
      'op', '$op', 'ts_ms', (extract(epoch from clock_timestamp()) * 1000)::bigint)
    from lsn left join public.$table t on t.id = $id
    limit 1")
  redis XADD "marketplace.public.$table" '*' "{\"id\":$id}" "$value" >/dev/null
}

step "evercache: run"
log=$(mktemp /tmp/evercache-demo.XXXXXX.log)
"$evercache" run --config examples/marketplace/evercache.toml 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
sleep 1
if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "evercache failed to start"; exit 1; fi
echo "running (pid $pid, log $log)"

step "initial snapshot: every existing row, as Debezium's snapshot would send it"
for id in $(admin -d marketplace -c "select id from specialist order by id"); do emit specialist r "$id"; done
for id in $(admin -d marketplace -c "select id from session order by id"); do emit session r "$id"; done
for _ in $(seq 1 100); do
  [ "$(redis --scan --pattern 'specialist:*' | wc -l)" -ge 4 ] && break
  sleep 0.05
done
for id in 1 2 3 4; do printf '  specialist:%s = %s\n' "$id" "$(redis GET "specialist:$id")"; done

# Runs one legacy write as marketplace_writer, emits its change, waits for the cache.
legacy() {
  local sql=$1 table=$2 op=$3 id=$4 key=$5
  local before
  before=$(redis GET "$key")
  printf '\n[%s] legacy writer: %s\n' "$(clock)" "$sql"
  psql -h 127.0.0.1 -U marketplace_writer -d marketplace -v ON_ERROR_STOP=1 -qc "$sql"
  local committed
  committed=$(now_ms)
  emit "$table" "$op" "$id"
  local value=$before
  for _ in $(seq 1 1000); do
    value=$(redis GET "$key")
    [ "$value" != "$before" ] && break
    sleep 0.002
  done
  printf '[%s] cache %s = %s   (commit -> cache: %s ms)\n' "$(clock)" "$key" "${value:-(deleted)}" "$(( $(now_ms) - committed ))"
}

step "legacy writer (plain SQL, no idea a cache exists)"
legacy "insert into session (id, specialist_id) values (10, 1)" session c 10 specialist:1
legacy "update specialist set online = false where id = 2" specialist u 2 specialist:2
legacy "update session set ended_at = now() where id = 10" session u 10 specialist:1
legacy "update specialist set name = 'Alan M. Turing', online = true where id = 3" specialist u 3 specialist:3
legacy "insert into specialist (id, name, online) values (5, 'Barbara Liskov', true)" specialist c 5 specialist:5
legacy "delete from session where specialist_id = 4; delete from specialist where id = 4" specialist d 4 specialist:4

step "freshness metadata of specialist:1 (what applications can read)"
redis HGETALL '{specialist:1}:meta' | paste - -

step "done"
echo "pending entries: $(redis XPENDING marketplace.public.session evercache | head -1) (session), $(redis XPENDING marketplace.public.specialist evercache | head -1) (specialist)"
echo "dead letters: $(redis XLEN marketplace.public.specialist:dlq) / $(redis XLEN marketplace.public.session:dlq)"
