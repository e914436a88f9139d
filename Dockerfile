# syntax=docker/dockerfile:1
# Build: docker build -t pgid .
# Run:   docker run -v $PWD/pgid.toml:/etc/pgid/pgid.toml -v $PWD/policies:/etc/pgid/policies \
#          -v pgid-state:/var/lib/pgid -p 7443:7443 -p 7432:7432 pgid
# See README, "Running in a container". deploy/compose has Postgres, an OIDC provider and pgid.
# Base images, and where the binary comes from: `build` (the default) compiles it below; the
# container test (tests/container.rs) passes an image that holds one at /src/target/release/pgid,
# and local base images, so it builds this file without a registry.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY_FROM=build

FROM ${BUILDER_IMAGE} AS build
# pg_query's bindgen loads libclang (libclang-dev brings it and clang's headers).
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE}
# curl for the HEALTHCHECK only.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgid \
    && useradd --system --uid 10001 --gid pgid --home-dir /var/lib/pgid --no-create-home pgid \
    && mkdir -p /var/lib/pgid /etc/pgid/policies \
    && chown pgid:pgid /var/lib/pgid && chmod 0700 /var/lib/pgid
COPY --from=binary /src/target/release/pgid /usr/local/bin/pgid
# The example policies are there to be asked for (PGID_POLICIES=/usr/share/pgid/example-policies,
# with the demo schema of sql/demo.sql); /etc/pgid/policies, the default, is empty.
COPY policies /usr/share/pgid/example-policies
# Defaults below pgid.toml (a file that sets state_dir or listen wins): the state — server key,
# generated certificates, audit file — on the volume, and every address of the container.
ENV PGID_DEFAULT_STATE_DIR=/var/lib/pgid \
    PGID_DEFAULT_LISTEN_HOST=0.0.0.0
VOLUME ["/var/lib/pgid"]
USER pgid:pgid
WORKDIR /var/lib/pgid
EXPOSE 7443 7432
# Liveness of the broker (its certificate may be the generated one: -k, on loopback only).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsSk --max-time 4 \"https://127.0.0.1:${PGID_HEALTH_PORT:-7443}/healthz\" >/dev/null"]
ENTRYPOINT ["pgid"]
CMD ["serve", "--config", "/etc/pgid/pgid.toml"]
