#!/usr/bin/env bash
# What the Kafka and Debezium suites need: the build packages for the bundled
# librdkafka the tests produce with (build-deps.sh), the Java parts from Maven
# Central (java-parts.sh: Apache Kafka with Connect and Debezium's Postgres
# connector, Debezium Server), and the suite's shared Kafka broker started
# (kafka.sh: 127.0.0.1:19092), so no test waits for a JVM to start.
# Idempotent; installs only what is missing.
set -euo pipefail
here="$(dirname "$0")"
bash "$here/build-deps.sh"
# kafka-connect.sh talks to Connect's REST API with curl and jq and looks into jars with unzip.
missing=()
for tool in jq curl unzip; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "kafka-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash "$here/java-parts.sh" kafka >/dev/null
bash "$here/java-parts.sh" debezium-server >/dev/null
bash "$here/kafka.sh"
