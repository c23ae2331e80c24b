# Questech API image.
#
#   docker build -t questech .
#   docker run -p 10089:10089 questech            # SQLite under /app/data, echo model
#
# Uses BuildKit cache mounts (the default builder of Docker >= 23 and `docker compose`)
# so that rebuilding after a source change does not recompile every dependency.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder
WORKDIR /build

# Never let sqlx's compile-time macros try to reach a database during the image build.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY engine ./engine
# Workspace members (test and benchmark tools): Cargo reads every member's manifest.
COPY tools ./tools
# Embedded at compile time by sqlx::migrate!, and shipped to the runtime image below.
COPY migrations ./migrations
# Not needed by the binary, but Cargo reads every target of the workspace manifest.
COPY benches ./benches
COPY tests ./tests

# target/ lives in a cache mount, so the binary is copied out within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin questech \
 && install -m 0755 target/release/questech /usr/local/bin/questech

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Fixed uid/gid so bind-mounted volumes can be chowned predictably on the host.
RUN groupadd --system --gid 10001 questech \
 && useradd --system --uid 10001 --gid questech --home-dir /app --shell /usr/sbin/nologin questech

WORKDIR /app
COPY --from=builder /usr/local/bin/questech /usr/local/bin/questech
COPY migrations /app/migrations
# data/ holds the SQLite file and dev keys in single-container mode, data/uploads the user
# uploads. Creating uploads/ here makes a fresh named volume mounted on it inherit the owner.
RUN mkdir -p /app/data/uploads && chown -R questech:questech /app/data

USER questech
ENV BIND_ADDR=0.0.0.0:10089
EXPOSE 10089
ENTRYPOINT ["questech"]
CMD ["serve"]
