# The evercache runtime with the example plugins, for docker-compose.yml.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release -p evercache && bash scripts/build-plugins.sh

FROM debian:bookworm-slim
# The system's roots, which TLS connections (Redis, Postgres, MySQL, Kafka) trust by default.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/evercache /usr/local/bin/evercache
# The examples' plugins only: the test plugins (testkit, hostile) are never deployed.
COPY --from=build /src/target/plugins/specialist_status.wasm /src/target/plugins/shop_product.wasm /opt/evercache/plugins/
COPY examples /opt/evercache/examples
WORKDIR /opt/evercache
ENTRYPOINT ["evercache"]
CMD ["run", "--config", "/opt/evercache/examples/marketplace/docker/evercache.toml"]
