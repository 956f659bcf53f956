# Custos in a container: build with the Rust toolchain, run as a non-root
# user on a slim base. The store is a volume; secrets come as env vars.
#   docker build -t custos .
#   docker run -v custos-data:/var/lib/custos -v ./custos.toml:/etc/custos/custos.toml:ro \
#     -e CUSTOS_OPS_TOKEN=... -p 50051:50051 custos
FROM rust:1.95-slim-bookworm AS build
# jemalloc (the daemon's allocator) is built from C with make.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin custos

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/custos custos \
    && mkdir -p /var/lib/custos /etc/custos && chown custos /var/lib/custos && chmod 0700 /var/lib/custos
COPY --from=build /src/target/release/custos /usr/local/bin/custos
USER custos
VOLUME /var/lib/custos
EXPOSE 50051
# Listen on all interfaces inside the container: set listen = "0.0.0.0:50051"
# in the mounted config, with [tls] (or TLS in front).
ENTRYPOINT ["/usr/local/bin/custos"]
CMD ["serve", "--config", "/etc/custos/custos.toml"]
