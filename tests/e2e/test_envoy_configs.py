"""The shipped Envoy configs are valid for the Envoy we run (`--mode validate`)."""

import subprocess

import pytest

from harness import ENVOY, REPO, TLS_DIR, WASM, emulator_envoy_config, render_template


def validate(tmp_path, text: str) -> None:
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(text)
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


def test_emulator_config_validates(tmp_path):
    validate(tmp_path, emulator_envoy_config(WASM, 10000, 9901, 9180, 9190))


@pytest.mark.parametrize("tls", [True, False])
def test_aws_config_validates(tmp_path, tls):
    text = render_template(
        REPO / "envoy/aws.yaml", ENVOY_ADMIN_PORT=9901, LISTENER_PORT=10000, WASM_PATH=WASM,
        AWS_REGION="eu-west-1", BEDROCK_HOST="bedrock-runtime.eu-west-1.amazonaws.com",
        BEDROCK_PORT=443 if tls else 80, SIDECAR_PORT=9190,
        TLS_CERT=TLS_DIR / "gateway.pem", TLS_KEY=TLS_DIR / "gateway.key",
        # Any bundle, not only Debian's: the test's own CA.
        TRUSTED_CA=TLS_DIR / "ca.pem",
    )
    assert str(TLS_DIR / "ca.pem") in text
    if not tls:
        start = text.index("    # BEGIN TLS")
        end = text.index("    # END TLS\n") + len("    # END TLS\n")
        text = text[:start] + text[end:]
    assert ("UpstreamTlsContext" in text) == tls
    assert "DownstreamTlsContext" in text
    validate(tmp_path, text)


def test_a_broken_config_is_refused(tmp_path):
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(emulator_envoy_config(WASM, 10000, 9901, 9180, 9190).replace("allow_on_headers_stop_iteration", "allow_on_headers_stop"))
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0


def test_istio_envoyfilter_patches_are_valid_envoy_config(tmp_path):
    """The EnvoyFilter's patches (sidecar cluster, Tollgate Wasm filter, signer),
    placed into a standalone bootstrap, validate with the Envoy we ship against."""
    import yaml

    docs = list(yaml.safe_load_all((REPO / "envoy/istio/tollgate-envoyfilter.yaml").read_text()))
    patches = docs[0]["spec"]["configPatches"]
    cluster = next(p["patch"]["value"] for p in patches if p["applyTo"] == "CLUSTER")
    filters = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert [f["name"] for f in filters] == ["tollgate", "envoy.filters.http.aws_request_signing"]
    wasm_cfg = filters[0]["typed_config"]["config"]
    assert wasm_cfg["allow_on_headers_stop_iteration"] is True
    wasm_cfg["vm_config"]["code"]["local"]["filename"] = str(WASM)
    cluster["type"] = "STATIC"
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "127.0.0.1"
    bootstrap = {
        "static_resources": {
            "listeners": [{
                "name": "gw", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10443}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gw",
                        "route_config": {"virtual_hosts": [{"name": "b", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "tollgate_sidecar"}}]}]},
                        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [cluster],
        }
    }
    validate(tmp_path, yaml.safe_dump(bootstrap))


def test_istio_manifests_parse():
    import yaml

    kinds = []
    for f in sorted((REPO / "envoy/istio").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], f
            kinds.append(doc["kind"])
    for k in ["EnvoyFilter", "Deployment", "Service", "ServiceEntry", "DestinationRule", "Gateway", "VirtualService"]:
        assert k in kinds


def test_istio_region_is_set_in_one_place(tmp_path):
    """`kubectl apply -k envoy/istio` with another Region in the kustomization's
    one literal: every host, SNI and the signer follow, and nothing of the
    default Region is left."""
    import shutil

    import yaml

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    base = tmp_path / "istio"
    shutil.copytree(REPO / "envoy/istio", base)
    k = base / "kustomization.yaml"
    assert "- region=us-east-1\n" in k.read_text()
    k.write_text(k.read_text().replace("- region=us-east-1\n", "- region=eu-west-1\n"))
    out = subprocess.run(["kubectl", "kustomize", str(base)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "us-east-1" not in out.stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    assert not [k for k in docs if k[0] == "ConfigMap"], "the region ConfigMap is local-config"
    host = "bedrock-runtime.eu-west-1.amazonaws.com"
    assert docs[("ServiceEntry", "bedrock-runtime")]["spec"]["hosts"] == [host]
    dr = docs[("DestinationRule", "bedrock-runtime")]["spec"]
    assert (dr["host"], dr["trafficPolicy"]["tls"]["sni"]) == (host, host)
    vs = docs[("VirtualService", "bedrock-runtime")]["spec"]
    assert vs["http"][0]["route"][0]["destination"]["host"] == host
    signer = next(p["patch"]["value"] for p in docs[("EnvoyFilter", "tollgate")]["spec"]["configPatches"]
                  if p["patch"]["value"].get("name") == "envoy.filters.http.aws_request_signing")
    assert signer["typed_config"]["region"] == "eu-west-1"
    assert signer["typed_config"]["host_rewrite"] == host
    # Every manifest of the directory is in the kustomization.
    listed = yaml.safe_load(k.read_text())["resources"]
    assert sorted(listed) == sorted(f.name for f in (REPO / "envoy/istio").glob("*.yaml")
                                    if f.name != "kustomization.yaml")


def test_the_filter_token_reaches_the_wasm_vm_by_name_only():
    """Every shipped config passes TOLLGATE_FILTER_TOKEN from Envoy's environment
    into the Wasm VM (never the value), and the Istio gateway gets it from the
    Secret the sidecar's token file comes from."""
    import yaml

    for name in ("emulator.yaml", "aws.yaml"):
        text = (REPO / "envoy" / name).read_text()
        assert 'host_env_keys: ["TOLLGATE_FILTER_TOKEN"]' in text, name
    docs = list(yaml.safe_load_all((REPO / "envoy/istio/tollgate-envoyfilter.yaml").read_text()))
    wasm = next(p["patch"]["value"] for p in docs[0]["spec"]["configPatches"] if p["patch"]["value"].get("name") == "tollgate")
    assert wasm["typed_config"]["config"]["vm_config"]["environment_variables"] == {"host_env_keys": ["TOLLGATE_FILTER_TOKEN"]}
    patch = yaml.safe_load((REPO / "envoy/istio/patches/gateway-filter-token.yaml").read_text())
    env = patch["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "TOLLGATE_FILTER_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "tollgate-filter-token", "key": "current"}}}]
    sidecar = list(yaml.safe_load_all((REPO / "envoy/istio/tollgate-sidecar.yaml").read_text()))
    secret = next(d for d in sidecar if d["kind"] == "Secret" and d["metadata"]["name"] == "tollgate-filter-token")
    assert secret["stringData"]["current"] in secret["stringData"]["tokens"].splitlines()
    deploy = next(d for d in sidecar if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--filter-token-file") + 1] == "/etc/tollgate/filter-token/tokens"
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    # Readiness checks the store; liveness only that the process serves.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
