#!/usr/bin/env bash
# Formats and starts one Apache Kafka broker in KRaft mode (broker and
# controller in one process) on 127.0.0.1, detached, and waits until it serves.
# Idempotent: a broker already answering on the port is left as it is.
#
#   scripts/kafka.sh [--dir DIR] [--port P]    start (the suite's: /tmp/evercache-kafka, 19092)
#   scripts/kafka.sh --dir DIR --stop          SIGTERM, wait for the exit (--kill: SIGKILL)
#
# Listeners, from the base port P:
#   P     PLAINTEXT
#   P+1   SASL_PLAINTEXT, SCRAM-SHA-256 and -512 (user evercache / evercache-secret,
#         added at format time)
#   P+2   SSL (a throwaway CA in DIR/tls/ca.pem signs the broker's certificate)
#   P+3   SASL_SSL, SCRAM as on P+1
#   P+9   the KRaft controller
# Extra server properties: --set key=value (repeatable), e.g. a tiny log.retention.bytes.
# The log is DIR/broker.log, the pid DIR/broker.pid. Data survives a restart
# with the same DIR (the format step runs once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

dir=/tmp/evercache-kafka
port=19092
action=start
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --set) extra+=("$2"); shift 2 ;;
    --stop) action=stop; shift ;;
    --kill) action=kill; shift ;;
    *) echo "usage: $0 [--dir DIR] [--port P] [--set k=v]... [--stop|--kill]" >&2; exit 2 ;;
  esac
done
say() { echo "kafka: $*" >&2; }

if [ "$action" != start ]; then
  pid=$(cat "$dir/broker.pid" 2>/dev/null || true)
  [ -n "$pid" ] || exit 0
  if [ "$action" = kill ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  say "broker $pid did not exit within 30 s; killing it"; kill -KILL "$pid" 2>/dev/null || true
  exit 0
fi

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if answers && [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
  say "running on 127.0.0.1:$port ($dir)"; exit 0
fi

parts=$(bash "$here/java-parts.sh" kafka)
java=$(bash "$here/java-parts.sh" java kafka)
mkdir -p "$dir"

if [ ! -f "$dir/tls/ca.pem" ]; then
  mkdir -p "$dir/tls" && (
    cd "$dir/tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=evercache-kafka-ca -keyout ca.key -out ca.pem 2>/dev/null
    printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' > server.cnf
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile server.cnf -out server.crt 2>/dev/null
    # Kafka's PEM key store: the PKCS#8 key, then the certificate chain, in one file.
    openssl pkcs8 -topk8 -nocrypt -in server.key -out server.pk8
    cat server.pk8 server.crt ca.pem > server-keystore.pem
  )
fi

props="$dir/server.properties"
{
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$((port + 9))
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$((port + 1)),SSL://127.0.0.1:$((port + 2)),SASL_SSL://127.0.0.1:$((port + 3)),CONTROLLER://127.0.0.1:$((port + 9))
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$((port + 1)),SSL://127.0.0.1:$((port + 2)),SASL_SSL://127.0.0.1:$((port + 3))
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/server-keystore.pem
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# One broker: a group forms at once instead of after the default 3 s.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# Compacted topics are compacted within seconds, so a test sees the offset gaps it leaves.
log.cleaner.backoff.ms=500
log.flush.interval.messages=1000000
EOF
  for kv in "${extra[@]}"; do echo "$kv"; done
} > "$props"

if [ ! -f "$dir/data/meta.properties" ]; then
  "$java" -cp "$parts/lib/*" -Dlog4j2.configurationFile="$parts/log4j2.properties" -Devercache.log="$dir/format.log" \
    kafka.tools.StorageTool format --standalone -t "$(cat "$dir/cluster-id" 2>/dev/null || echo 'ZXZlcmNhY2hlLWthZmthAA')" -c "$props" \
    --add-scram 'SCRAM-SHA-256=[name=evercache,password=evercache-secret]' \
    --add-scram 'SCRAM-SHA-512=[name=evercache,password=evercache-secret]' >"$dir/format.out" 2>&1 \
    || { say "ERROR: formatting $dir failed:"; cat "$dir/format.out" >&2; exit 1; }
fi

start=$(date +%s%N)
setsid "$java" -Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
  -cp "$parts/lib/*" -Dlog4j2.configurationFile="$parts/log4j2.properties" -Devercache.log="$dir/broker.log" \
  kafka.Kafka "$props" </dev/null >"$dir/broker.out" 2>&1 &
echo $! > "$dir/broker.pid"
for _ in $(seq 1 600); do
  if answers; then
    say "started on 127.0.0.1:$port in $(( ($(date +%s%N) - start) / 1000000 )) ms ($dir, pid $(cat "$dir/broker.pid"))"
    exit 0
  fi
  kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null || { say "ERROR: the broker exited:"; tail -20 "$dir/broker.out" "$dir/broker.log" >&2; exit 1; }
  sleep 0.1
done
say "ERROR: the broker did not listen on 127.0.0.1:$port within 60 s; see $dir/broker.log"; exit 1
