# syntax=docker/dockerfile:1
#
# Shadowcat container image: a small Debian runtime with the `shadowcat` binary, run as an
# unprivileged user, serving the gateway from /etc/shadowcat/gateway.toml.
#
#   docker build -t shadowcat .
#   docker run --rm -p 8080:8080 --stop-timeout 30 shadowcat    # MCP at http://localhost:8080/mcp
#
# The default configuration is deploy/docker/gateway.toml (the built-in demo server behind the
# gateway); mount another over it. deploy/compose.yaml and deploy/kubernetes/ use this image.

# The toolchain CI tests with. Cargo.lock needs Rust 1.89 or later (uuid 1.29 through rmcp).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The workspace's release profile: no debug info, stripped (28 MB; see Cargo.toml).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shadowcat \
    && install -m 0755 target/release/shadowcat /usr/local/bin/shadowcat

FROM debian:bookworm-slim
# ca-certificates: HTTPS upstreams, JWKS and token endpoints. curl: the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shadowcat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/shadowcat --create-home \
        --shell /usr/sbin/nologin shadowcat
COPY --from=build /usr/local/bin/shadowcat /usr/local/bin/shadowcat
COPY deploy/docker/gateway.toml /etc/shadowcat/gateway.toml
USER 10001:10001
WORKDIR /var/lib/shadowcat
EXPOSE 8080
# /health: 200 while the gateway serves (503 while a shared store is down and it fails closed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["shadowcat"]
CMD ["gateway", "--config", "/etc/shadowcat/gateway.toml", "--log-format", "json"]
