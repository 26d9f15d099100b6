#!/bin/sh
# The Tollgate Envoy image's entrypoint: renders /etc/tollgate/envoy.yaml.tmpl
# (envoy/aws.yaml, container-shaped) from the environment, then runs Envoy.
#
#   BEDROCK_ENDPOINT   http(s)://host[:port]; default https://bedrock-runtime.$AWS_REGION.amazonaws.com
#   AWS_REGION         the signing region (default us-east-1)
#   SIDECAR_HOST, SIDECAR_PORT   the budget sidecar (default sidecar:9190)
#   LISTENER_ADDRESS, LISTENER_PORT, ENVOY_ADMIN_PORT   (0.0.0.0, 10000, 9901; admin on loopback)
#   TLS_CERT, TLS_KEY  the gateway's certificate (default /etc/tollgate/tls/gateway.{pem,key})
#   TRUSTED_CA         CA bundle verifying Bedrock (default: the image's system bundle)
#   TOLLGATE_FILTER_TOKEN   sent to the sidecar on every call (required)
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or any source of
#   Envoy's AWS credential chain (IRSA, instance role): what Envoy signs with.
#
# `entrypoint.sh validate` checks the rendered config (envoy --mode validate)
# and exits; any other arguments are passed to Envoy.
set -eu
: "${AWS_REGION:=us-east-1}"
: "${BEDROCK_ENDPOINT:=https://bedrock-runtime.$AWS_REGION.amazonaws.com}"
: "${SIDECAR_HOST:=sidecar}"
: "${SIDECAR_PORT:=9190}"
: "${LISTENER_ADDRESS:=0.0.0.0}"
: "${LISTENER_PORT:=10000}"
: "${ENVOY_ADMIN_PORT:=9901}"
: "${TLS_CERT:=/etc/tollgate/tls/gateway.pem}"
: "${TLS_KEY:=/etc/tollgate/tls/gateway.key}"
: "${TRUSTED_CA:=/etc/ssl/certs/ca-certificates.crt}"
: "${WASM_PATH:=/etc/tollgate/tollgate_filter.wasm}"
: "${TOLLGATE_ENVOY_CONFIG:=/tmp/envoy.yaml}"

die() { echo "tollgate-envoy: $*" >&2; exit 2; }

case "$BEDROCK_ENDPOINT" in
https://*) tls=1; rest=${BEDROCK_ENDPOINT#https://}; port=443 ;;
http://*) tls=0; rest=${BEDROCK_ENDPOINT#http://}; port=80 ;;
*) die "BEDROCK_ENDPOINT must start with http:// or https://, got '$BEDROCK_ENDPOINT'" ;;
esac
authority=${rest%%/*}
case "$authority" in
*:*) BEDROCK_HOST=${authority%:*}; BEDROCK_PORT=${authority##*:} ;;
*) BEDROCK_HOST=$authority; BEDROCK_PORT=$port ;;
esac
[ -n "$BEDROCK_HOST" ] || die "BEDROCK_ENDPOINT has no host: '$BEDROCK_ENDPOINT'"
[ "$tls" = 1 ] || TRUSTED_CA=
export AWS_REGION BEDROCK_HOST BEDROCK_PORT SIDECAR_HOST SIDECAR_PORT LISTENER_ADDRESS \
    LISTENER_PORT ENVOY_ADMIN_PORT TLS_CERT TLS_KEY TRUSTED_CA WASM_PATH

# Compose passes unset variables through as empty strings: an empty session
# token or key would be a credential, so drop them.
for v in AWS_SESSION_TOKEN AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_PROFILE; do
    eval "[ -n \"\${$v:-}\" ] || unset $v"
done
[ -n "${TOLLGATE_FILTER_TOKEN:-}" ] ||
    die "TOLLGATE_FILTER_TOKEN is not set: give Envoy the filter token the sidecar accepts"

# The demo's certificate is made by another container: wait for it a little.
i=0
while [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ]; do
    i=$((i + 1))
    [ "$i" -le 30 ] || die "no gateway certificate at $TLS_CERT / $TLS_KEY (mount one, or set TLS_CERT and TLS_KEY)"
    sleep 1
done

# ${NAME} from the environment; an unset one is an error. Without TLS towards
# Bedrock (an http:// endpoint, e.g. the emulator) the block between the
# template's BEGIN TLS and END TLS markers goes.
awk -v tls="$tls" '
    /^ *# BEGIN TLS/ && tls == 0 { skip = 1 }
    skip { if ($0 ~ /^ *# END TLS/) skip = 0; next }
    {
        out = ""; line = $0
        while (match(line, /\$\{[A-Za-z_][A-Za-z0-9_]*\}/)) {
            name = substr(line, RSTART + 2, RLENGTH - 3)
            if (!(name in ENVIRON)) { print "tollgate-envoy: the template needs " name > "/dev/stderr"; bad = 1; exit 2 }
            out = out substr(line, 1, RSTART - 1) ENVIRON[name]
            line = substr(line, RSTART + RLENGTH)
        }
        print out line
    }
    END { if (bad) exit 2 }
' /etc/tollgate/envoy.yaml.tmpl > "$TOLLGATE_ENVOY_CONFIG" || die "could not render the Envoy config"

if [ "${1:-}" = validate ]; then
    exec envoy --mode validate -c "$TOLLGATE_ENVOY_CONFIG"
fi
echo "tollgate-envoy: gateway on $LISTENER_ADDRESS:$LISTENER_PORT -> $BEDROCK_ENDPOINT (region $AWS_REGION), sidecar $SIDECAR_HOST:$SIDECAR_PORT"
exec envoy -c "$TOLLGATE_ENVOY_CONFIG" --log-level "${ENVOY_LOG_LEVEL:-warn}" \
    --file-flush-interval-msec 1000 "$@"
