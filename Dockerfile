# syntax=docker/dockerfile:1
#
# The `wif` image: one static binary (x86_64-unknown-linux-musl) on distroless/static, non-root.
#
#   docker build -t wif .
#
# Layers: the toolchain; then every dependency, built from a skeleton of the workspace
# (manifests + stub sources, scripts/cargo-skeleton.sh) so it stays cached until a Cargo.toml or
# Cargo.lock changes; then our own code. CI builds the same binary with the same command
# (`make static`) and lints this file (`make docker-lint`).

ARG RUST_VERSION=1.95.0
ARG TARGET=x86_64-unknown-linux-musl

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS toolchain
ARG TARGET
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "${TARGET}"
WORKDIR /src
ENV CARGO_TERM_COLOR=never

FROM toolchain AS skeleton
COPY . .
RUN scripts/cargo-skeleton.sh /skeleton

FROM toolchain AS build
ARG TARGET
# Without the `emulator` feature: `wif emulator` is for demos and tests, not the image.
# Dependencies only: this layer is reused while the manifests and the lock file are unchanged.
COPY --from=skeleton /skeleton/ ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --locked --release --target "${TARGET}" -p wif --no-default-features
# Our code; the stubs' build outputs are replaced because the sources are newer.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY e2e/Cargo.toml ./e2e/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    find crates -name '*.rs' -exec touch {} + \
 && cargo build --locked --release --target "${TARGET}" -p wif --no-default-features \
 && cp "target/${TARGET}/release/wif" /wif \
 && /wif version

# Static binary, CA certificates (Entra, Graph, ARM) and a non-root user; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="wif" \
      org.opencontainers.image.description="Entra workload identity for Kubernetes: webhook, controller, doctor" \
      org.opencontainers.image.source="https://github.com/wif-dev/wif" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wif /wif
USER 65532:65532
ENTRYPOINT ["/wif"]
CMD ["--help"]
