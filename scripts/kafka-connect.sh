#!/usr/bin/env bash
# Starts one Kafka Connect standalone worker (Kafka 4.4 with Debezium's Postgres
# connector on its classpath, from scripts/java-parts.sh) detached, waits until
# its REST API answers, and creates or updates connectors through that API.
# Idempotent: a worker already answering is left as it is (its connectors are
# still created or updated).
#
#   scripts/kafka-connect.sh [--dir DIR] [--bootstrap HOST:PORT] [--port P]
#                            [--worker FILE] [--connector FILE.json]...
#   scripts/kafka-connect.sh [--dir DIR] --stop     SIGTERM, wait for the exit (--kill: SIGKILL)
#
# Defaults: DIR /tmp/evercache-kafka-connect, bootstrap 127.0.0.1:19092 (the
# broker of scripts/kafka.sh), REST port 18083, worker properties
# examples/shop/debezium/connect-standalone.properties (its bootstrap.servers,
# listeners and offset file are replaced by this script's).
# A connector file is what a user POSTs to any Connect cluster:
# {"name": …, "config": {…}}. It is POSTed to /connectors when the worker has
# no connector of that name, else its config is PUT to /connectors/NAME/config.
# Standalone keeps connectors made over REST only in memory: a restarted worker
# has none until they are posted again (their offsets stay in DIR/connect.offsets).
# Log: DIR/connect.log (Log4j) and DIR/connect.out (stdout); pid: DIR/connect.pid.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

dir=/tmp/evercache-kafka-connect
bootstrap=127.0.0.1:19092
port=18083
worker="$here/../examples/shop/debezium/connect-standalone.properties"
action=start
connectors=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --bootstrap) bootstrap=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --worker) worker=$2; shift 2 ;;
    --connector) connectors+=("$2"); shift 2 ;;
    --stop) action=stop; shift ;;
    --kill) action=kill; shift ;;
    *) echo "usage: $0 [--dir DIR] [--bootstrap HOST:PORT] [--port P] [--worker FILE] [--connector FILE]... [--stop|--kill]" >&2; exit 2 ;;
  esac
done
say() { echo "kafka-connect: $*" >&2; }
url="http://127.0.0.1:$port"

if [ "$action" != start ]; then
  pid=$(cat "$dir/connect.pid" 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  if [ "$action" = kill ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  say "worker $pid did not exit within 30 s; killing it"; kill -KILL "$pid" 2>/dev/null || true
  exit 0
fi

command -v jq >/dev/null || { say "ERROR: jq is missing (apt-get install jq)"; exit 1; }
command -v curl >/dev/null || { say "ERROR: curl is missing (apt-get install curl)"; exit 1; }
for file in "${connectors[@]}"; do
  jq -e '.name and (.config | type == "object")' "$file" >/dev/null \
    || { say "ERROR: $file is not {\"name\": …, \"config\": {…}}"; exit 1; }
done
mkdir -p "$dir"
# Two callers at once (tests of two binaries) must not start two workers.
exec 9>"$dir/.lock"
flock 9

answers() { curl -fsS -o /dev/null --max-time 2 "$url/" 2>/dev/null; }
running() { [ -f "$dir/connect.pid" ] && kill -0 "$(cat "$dir/connect.pid")" 2>/dev/null; }

# A worker busy starting or under load gets 30 s to answer before it is replaced.
if running; then
  for _ in $(seq 1 30); do answers && break; sleep 1; done
fi
if running && answers; then
  say "running on $url ($dir, pid $(cat "$dir/connect.pid"))"
else
  if running; then
    say "worker $(cat "$dir/connect.pid") does not answer on $url; restarting it"
    kill -KILL "$(cat "$dir/connect.pid")" 2>/dev/null || true
  elif answers; then
    say "ERROR: another worker (not $dir's) answers on $url; give this one another --port"; exit 1
  fi
  parts=$(bash "$here/java-parts.sh" kafka)
  java=$(bash "$here/java-parts.sh" java kafka)
  classpath="$parts/lib/*"
  # Debezium 3.6.1 calls org.apache.kafka.common.utils.Sanitizer, which Kafka 4.4
  # moved to ...utils.internals (KAFKA-20297; Debezium's fix is debezium/dbz#2555),
  # so its task fails with NoClassDefFoundError unless a class at the old name
  # delegates to the new one. It goes last, so a jar that has the class wins.
  if ! unzip -l "$parts"/lib/kafka-clients-*.jar 2>/dev/null | grep -q ' org/apache/kafka/common/utils/Sanitizer.class$'; then
    shim="$dir/shim"
    if [ ! -f "$shim/org/apache/kafka/common/utils/Sanitizer.class" ]; then
      command -v javac >/dev/null || { say "ERROR: javac is missing (apt-get install openjdk-17-jdk-headless)"; exit 1; }
      mkdir -p "$shim/src"
      cat >"$shim/src/Sanitizer.java" <<'JAVA'
package org.apache.kafka.common.utils;

/** Kafka 4.3's Sanitizer, delegating to where Kafka 4.4 moved it (for Debezium 3.6.1). */
public final class Sanitizer {
    private Sanitizer() {}
    public static String sanitize(String name) { return org.apache.kafka.common.utils.internals.Sanitizer.sanitize(name); }
    public static String desanitize(String name) { return org.apache.kafka.common.utils.internals.Sanitizer.desanitize(name); }
    public static String jmxSanitize(String name) { return org.apache.kafka.common.utils.internals.Sanitizer.jmxSanitize(name); }
}
JAVA
      javac -nowarn -cp "$parts/lib/*" -d "$shim" "$shim/src/Sanitizer.java" >&2
    fi
    classpath="$classpath:$shim"
  fi
  props="$dir/worker.properties"
  {
    grep -Ev '^[[:space:]]*(bootstrap\.servers|listeners|offset\.storage\.file\.filename)[[:space:]]*=' "$worker"
    echo "bootstrap.servers=$bootstrap"
    echo "listeners=http://127.0.0.1:$port"
    echo "offset.storage.file.filename=$dir/connect.offsets"
  } >"$props"

  start=$(date +%s%N)
  setsid "$java" -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -cp "$classpath" -Dlog4j2.configurationFile="$parts/log4j2.properties" -Devercache.log="$dir/connect.log" \
    org.apache.kafka.connect.cli.ConnectStandalone "$props" </dev/null >"$dir/connect.out" 2>&1 9>&- &
  echo $! >"$dir/connect.pid"
  up=
  for _ in $(seq 1 1200); do
    if answers; then up=1; break; fi
    running || { say "ERROR: the worker exited:"; tail -20 "$dir/connect.out" "$dir/connect.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$up" ] || { say "ERROR: the REST API did not answer on $url within 120 s; see $dir/connect.log"; exit 1; }
  say "started on $url in $(( ($(date +%s%N) - start) / 1000000 )) ms ($dir, pid $(cat "$dir/connect.pid"), brokers $bootstrap)"
fi

# Prints the HTTP status; the body goes to $dir/rest.out.
rest() { curl -sS -o "$dir/rest.out" -w '%{http_code}' --max-time 60 "$@"; }
for file in "${connectors[@]}"; do
  name=$(jq -r .name "$file")
  if [ "$(rest "$url/connectors/$name")" = 200 ]; then
    code=$(jq .config "$file" | rest -X PUT -H 'Content-Type: application/json' --data-binary @- "$url/connectors/$name/config")
    verb=updated
  else
    code=$(rest -X POST -H 'Content-Type: application/json' --data-binary @"$file" "$url/connectors")
    verb=created
  fi
  case "$code" in
    200 | 201) say "connector $name $verb" ;;
    *) say "ERROR: connector $name from $file: HTTP $code: $(cat "$dir/rest.out")"; exit 1 ;;
  esac
done
