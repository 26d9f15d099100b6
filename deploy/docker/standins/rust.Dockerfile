# A stand-in for the official rust:1-bookworm image (the Dockerfile's builder
# stage), for a machine that cannot pull it: Debian with the C toolchain the
# official image has (gcc for ring and aws-lc-sys) and the host's rustup
# toolchain, wasm32-wasip1 target included. Made by hand to check the default
# BINARIES=source path (docs/deploy.md); never shipped: only the builder stage
# uses it. ca/ holds CAs the build machine's network needs to reach crates.io
# (empty where none is needed).
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc g++ libc6-dev make pkg-config \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version && rustup target list --installed
