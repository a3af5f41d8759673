#!/usr/bin/env bash
# Resolves the Java parts the suites run (Apache Kafka with Kafka Connect and
# Debezium's Postgres connector, from java/kafka/pom.xml; Debezium Server) from
# Maven Central into a cached folder and prints its path. The folder is named
# after what it holds (the pom's hash, the archive's coordinates), so a change
# resolves anew and no change costs nothing.
#
#   scripts/java-parts.sh kafka             -> <cache>/kafka-<hash>/lib/*.jar
#   scripts/java-parts.sh debezium-server   -> <cache>/debezium-server-<hash>/debezium-server/
#   scripts/java-parts.sh java PART         -> the java binary PART needs
#
# Cache: $EVERCACHE_JAVA_PARTS, default ~/.cache/evercache/java-parts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${EVERCACHE_JAVA_PARTS:-$HOME/.cache/evercache/java-parts}"

say() { echo "java-parts: $*" >&2; }

# Debezium Server 3.x is built for Java 21; Kafka and the connectors run on 17.
java_for() {
  case "$1" in
    debezium-server)
      for home in "${EVERCACHE_JAVA21_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-21-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
        if [ -n "$home" ] && [ -x "$home/bin/java" ]; then echo "$home/bin/java"; return; fi
      done
      say "ERROR: Debezium Server needs Java 21 or newer; set EVERCACHE_JAVA21_HOME"; exit 1 ;;
    *) command -v java ;;
  esac
}

# Debezium Server ships as one distribution archive (its Quarkus runner, lib/,
# every connector and sink: the MariaDB connector and the Redis sink among
# them). 3.6.0.Final is the newest archive Maven Central serves here (3.6.1 has
# none, nor has the MariaDB connector a 3.6.x jar of its own). Its parent POM is
# not served, so it is fetched without its descriptor's dependencies.
DEBEZIUM_SERVER=io.debezium:debezium-server-dist:3.6.0.Final:tar.gz

resolve() {
  local part=$1 pom="$here/java/$1/pom.xml"
  command -v mvn >/dev/null || { say "ERROR: mvn is missing (apt-get install maven)"; exit 1; }
  local hash dir
  case "$part" in
    kafka) hash=$(cat "$pom" "$here/java/log4j2.properties" | sha256sum | cut -c1-12) ;;
    debezium-server) hash=$(echo "$DEBEZIUM_SERVER" | cat - "$here/java/log4j2.properties" | sha256sum | cut -c1-12) ;;
  esac
  dir="$cache/$part-$hash"
  if [ ! -f "$dir/.complete" ]; then
    say "resolving $part from Maven Central into $dir (once)"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    case "$part" in
      kafka)
        mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$dir.tmp/lib" >&2 ;;
      debezium-server)
        # The archive is ~780 MB; Maven keeps it in its local repository, and
        # only the server itself (runner, lib/, config/) is unpacked here.
        mvn -q -B dependency:get -Dartifact="$DEBEZIUM_SERVER" -Dtransitive=false >&2
        local repo version
        repo=$(mvn -q -B -Dstyle.color=never help:evaluate -Dexpression=settings.localRepository -DforceStdout 2>/dev/null \
          | sed 's/\x1b\[[0-9;]*m//g')
        version=$(echo "$DEBEZIUM_SERVER" | cut -d: -f3)
        tar xzf "$repo/io/debezium/debezium-server-dist/$version/debezium-server-dist-$version.tar.gz" -C "$dir.tmp" \
          --exclude 'debezium-server/lib_opt' --exclude 'debezium-server/lib_metrics' \
          --exclude 'debezium-server/connectors' --exclude 'debezium-server/jmx' ;;
    esac
    cp "$here/java/log4j2.properties" "$dir.tmp/"
    touch "$dir.tmp/.complete"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

case "${1:-}" in
  java) java_for "${2:?part}" ;;
  kafka|debezium-server) resolve "$1" ;;
  *) echo "usage: $0 kafka | debezium-server | java PART" >&2; exit 2 ;;
esac
