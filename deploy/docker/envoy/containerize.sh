#!/bin/sh
# containerize.sh AWS_YAML OUT — envoy/aws.yaml made container-shaped, at image
# build time: the listener binds ${LISTENER_ADDRESS} (0.0.0.0 in a container,
# not loopback) and the sidecar cluster resolves ${SIDECAR_HOST} by DNS (a
# compose service or Kubernetes Service name). Each edit must apply exactly
# once, so a change to envoy/aws.yaml fails the image build instead of
# shipping a config that silently lost an edit.
set -eu
in=$1
out=$2
once() {
    n=$(grep -c -F -- "$1" "$in" || true)
    if [ "$n" != 1 ]; then
        echo "containerize.sh: expected exactly one line with '$1' in envoy/aws.yaml, found $n" >&2
        exit 1
    fi
}
once 'address: 127.0.0.1, port_value: ${LISTENER_PORT}'
once 'address: 127.0.0.1, port_value: ${SIDECAR_PORT}'
once 'type: STATIC'
sed -e 's/address: 127\.0\.0\.1, port_value: \${LISTENER_PORT}/address: ${LISTENER_ADDRESS}, port_value: ${LISTENER_PORT}/' \
    -e 's/address: 127\.0\.0\.1, port_value: \${SIDECAR_PORT}/address: ${SIDECAR_HOST}, port_value: ${SIDECAR_PORT}/' \
    -e 's/type: STATIC/type: STRICT_DNS/' \
    "$in" > "$out"
