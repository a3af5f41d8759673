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
bash "$here/java-parts.sh" kafka >/dev/null
bash "$here/java-parts.sh" debezium-server >/dev/null
bash "$here/kafka.sh"
