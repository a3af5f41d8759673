#!/usr/bin/env bash
# Starts Debezium Server (the distribution scripts/java-parts.sh resolves)
# detached, with the given application.properties, and waits until its Quarkus
# health endpoint says UP. Idempotent: a server already up for DIR is left as it is.
#
#   scripts/debezium-server.sh --dir DIR --config FILE [--port P]   start (HTTP port P, default 8080)
#   scripts/debezium-server.sh --dir DIR --stop                     SIGTERM, wait for the exit (--kill: SIGKILL)
#
# One DIR per server: the server runs in it, so relative paths in the config (a
# file offset store's, say) resolve there. The example config keeps its offsets
# and schema history in Redis instead, under keys named by its topic prefix,
# beside the streams they describe (its comments say why); a restart resumes
# from them whatever DIR. The environment is passed on, for the config's
# ${NAME:default} references. The log is DIR/server.log, the pid DIR/server.pid.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

dir=
config=
port=8080
action=start
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --stop) action=stop; shift ;;
    --kill) action=kill; shift ;;
    *) echo "usage: $0 --dir DIR [--config FILE] [--port P] [--stop|--kill]" >&2; exit 2 ;;
  esac
done
say() { echo "debezium-server: $*" >&2; }
[ -n "$dir" ] || { say "ERROR: --dir is required"; exit 2; }

if [ "$action" != start ]; then
  pid=$(cat "$dir/server.pid" 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  if [ "$action" = kill ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/server.pid"; exit 0; }; sleep 0.1; done
  say "server $pid did not exit within 30 s; killing it"; kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
  exit 0
fi

[ -f "$config" ] || { say "ERROR: --config FILE is required and must exist (got '$config')"; exit 2; }
# Debezium's health check is UP while its engine runs and DOWN once it stopped.
healthy() { curl -sf -m 2 "http://127.0.0.1:$port/q/health" 2>/dev/null | grep -q '"status": *"UP"'; }
running() { [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; }
listens() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if running && healthy; then
  say "running, health on 127.0.0.1:$port ($dir, pid $(cat "$dir/server.pid"))"; exit 0
fi
running && { say "ERROR: pid $(cat "$dir/server.pid") runs for $dir but is not healthy on port $port; see $dir/server.log"; exit 1; }
listens && { say "ERROR: something else listens on 127.0.0.1:$port; pick another --port"; exit 1; }

parts=$(bash "$here/java-parts.sh" debezium-server)/debezium-server
java=$(bash "$here/java-parts.sh" java debezium-server)
mkdir -p "$dir/config"
dir=$(cd "$dir" && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")

# Quarkus reads config/application.properties under the working directory; a
# link keeps the user's file the one read. (Passing it in quarkus.config.locations
# would give it the system properties' precedence, and --port could not win.)
ln -sfn "$config" "$dir/config/application.properties"

start=$(date +%s%N)
# Serial GC, C1 only and a small heap: the server mostly waits on the binlog,
# and this starts it in a few seconds on two shared cores. The add-opens spares
# Quarkus' worker threads an IllegalAccessError at shutdown on Java 24 and later.
(cd "$dir" && exec setsid "$java" -Xms64m -Xmx384m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
  --add-opens java.base/java.lang=ALL-UNNAMED \
  -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
  -cp "$parts/debezium-server-dist-3.6.0.Final-runner.jar:$parts/lib/*" io.debezium.server.Main \
  </dev/null >"$dir/server.log" 2>&1) &
echo $! > "$dir/server.pid"
for _ in $(seq 1 1200); do
  if healthy; then
    say "started in $(( ($(date +%s%N) - start) / 1000000 )) ms, health on 127.0.0.1:$port ($dir, pid $(cat "$dir/server.pid"))"
    exit 0
  fi
  if ! running; then
    say "ERROR: the server exited; its first errors (all of it in $dir/server.log):"
    grep -m 3 ' ERROR ' "$dir/server.log" | cut -c1-600 >&2 || tail -20 "$dir/server.log" >&2
    rm -f "$dir/server.pid"; exit 1
  fi
  sleep 0.1
done
say "ERROR: the server was not healthy on 127.0.0.1:$port within 120 s; see $dir/server.log"; exit 1
