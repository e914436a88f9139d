# Build: docker build -t pgid .   Run: docker run -v $PWD/pgid.toml:/etc/pgid/pgid.toml pgid
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/pgid --create-home pgid
COPY --from=build /src/target/release/pgid /usr/local/bin/pgid
COPY policies /etc/pgid/policies
USER pgid
WORKDIR /var/lib/pgid
EXPOSE 7443 7432
ENTRYPOINT ["pgid"]
CMD ["serve", "--config", "/etc/pgid/pgid.toml"]
