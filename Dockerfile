# syntax=docker/dockerfile:1
#
# pgmoat container image: a statically linked release build in a Rust stage, then a small
# Debian runtime with only the binary, CA certificates and the reference config, running as an
# unprivileged user.
#
#   docker build -t pgmoat .
#   docker run --rm pgmoat --version
#
# The binary is static (deploy/build-static.sh), so it needs nothing from the runtime image;
# the Debian stage is there for CA certificates, a user account and a shell to debug with.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the criterion bench, so the manifest does not load without it; config/ is
# there for anything the code embeds from it.
COPY benches ./benches
COPY config ./config
COPY deploy/build-static.sh ./deploy/
# The cache mounts keep downloaded crates and compiled dependencies between builds, so a
# change to pgmoat's own code rebuilds pgmoat only. The target dir is a cache, not a layer,
# so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    install -m 0755 "$(deploy/build-static.sh)" /usr/local/bin/pgmoat

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates follows Debian's security updates, so it is not pinned to a version.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 pgmoat \
    && useradd --uid 10001 --gid pgmoat --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin pgmoat
COPY --from=build /usr/local/bin/pgmoat /usr/local/bin/pgmoat
# The reference config (every setting, commented). Mount your own pgmoat.toml over
# /etc/pgmoat/pgmoat.toml, or run with no file and PGMOAT_* variables only.
COPY config/ /etc/pgmoat/
# Relative paths in the config (certs/pgmoat.crt, ...) resolve against the working directory,
# so certificates mounted at /etc/pgmoat/certs work with the reference paths.
WORKDIR /etc/pgmoat
USER 10001:10001
EXPOSE 6432
# No HEALTHCHECK: the image has no curl or psql. Set metrics_addr (e.g. "0.0.0.0:9187") and let
# the orchestrator probe http://<container>:9187/health (200 while serving, 503 while
# draining), or probe the TCP port 6432.
ENTRYPOINT ["pgmoat"]
CMD ["run", "--config", "/etc/pgmoat/pgmoat.toml"]
