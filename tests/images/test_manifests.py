"""The Kubernetes manifests: the Kubernetes resources checked against the API's
JSON schemas (kubernetes-validate, strict: unknown fields fail; its schemas ship
in the package, so this works offline), and the Istio EnvoyFilter that loads the
filter from its OCI image checked with Envoy (`--mode validate`), its remote
code source swapped for the built .wasm. Istio's own kinds have no schema in
kubernetes-validate: they are parsed and their Envoy parts validated instead.

Run by `cargo xtask test-images` (KUBERNETES_VALIDATE names the tool).
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = os.environ.get("KUBERNETES_VALIDATE")
ENVOY = os.environ.get("ENVOY_BIN", str(REPO / ".tollgate/venv/bin/envoy"))
WASM = Path(os.environ.get("TOLLGATE_WASM", REPO / "target/wasm/wasm32-wasip1/release/tollgate_filter.wasm"))
KUBERNETES_VERSION = "1.30"  # the oldest EKS version still in standard support when written

MANIFESTS = [
    REPO / "envoy/istio/tollgate-sidecar.yaml",
    REPO / "deploy/kubernetes/tollgate-sidecar-dynamodb.yaml",
]


@pytest.mark.skipif(VALIDATOR is None, reason="run by `cargo xtask test-images` (installs kubernetes-validate)")
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_resources_match_the_api_schemas(path):
    r = subprocess.run(
        [VALIDATOR, "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True, text=True, timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "ERROR" not in out and "FAIL" not in out, out
    kinds = {d["kind"] for d in yaml.safe_load_all(path.read_text())}
    assert {"Deployment", "Service"} <= kinds, kinds


def test_sidecar_manifests_run_the_image_as_its_non_root_user():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] != "Deployment":
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsUser"] == 10001, path
            assert pod["securityContext"]["fsGroup"] == 10001, path
            c = pod["containers"][0]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, path


def test_dynamodb_mode_uses_irsa():
    docs = list(yaml.safe_load_all((REPO / "deploy/kubernetes/tollgate-sidecar-dynamodb.yaml").read_text()))
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--store") + 1] == "dynamodb"
    # No static AWS keys: IRSA's web identity is the only credential.
    env = {e["name"] for e in pod["containers"][0].get("env", [])}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_the_oci_envoyfilter_is_valid_envoy_config(tmp_path):
    """The ECDS-delivered filter (EXTENSION_CONFIG), with its remote code swapped
    for the built .wasm as the Istio agent does, validates with the Envoy we ship."""
    if not Path(ENVOY).exists() or not WASM.exists():
        pytest.skip("needs .tollgate/venv/bin/envoy and the built filter (cargo xtask build)")
    doc = yaml.safe_load((REPO / "deploy/kubernetes/tollgate-wasm-oci-envoyfilter.yaml").read_text())
    patches = doc["spec"]["configPatches"]
    ext = next(p["patch"]["value"] for p in patches if p["applyTo"] == "EXTENSION_CONFIG")
    http = next(p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER")
    # The listener's filter names the extension config and its type.
    assert http["name"] == ext["name"]
    assert http["config_discovery"]["type_urls"] == [ext["typed_config"]["@type"]]
    remote = ext["typed_config"]["config"]["vm_config"]["code"]["remote"]
    assert remote["http_uri"]["uri"].startswith("oci://")
    assert len(remote["sha256"]) == 64
    # Same filter settings as the mounted-file EnvoyFilter, apart from the code source.
    mounted = yaml.safe_load_all((REPO / "envoy/istio/tollgate-envoyfilter.yaml").read_text())
    mounted = next(p["patch"]["value"] for p in next(mounted)["spec"]["configPatches"]
                   if p["patch"]["value"].get("name") == "tollgate")["typed_config"]
    ours = copy.deepcopy(ext["typed_config"])
    for cfg in (ours, mounted):
        cfg["config"]["vm_config"].pop("code")
    assert ours == mounted

    typed = copy.deepcopy(ext["typed_config"])
    typed["config"]["vm_config"]["code"] = {"local": {"filename": str(WASM)}}
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
                        "http_filters": [
                            {"name": ext["name"], "typed_config": typed},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                        ],
                    }}]}],
            }],
            "clusters": [{
                "name": "tollgate_sidecar", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "tollgate_sidecar", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9190}}}}]}]},
            }],
        }
    }
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(yaml.safe_dump(bootstrap))
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout + r.stderr, r.stdout + r.stderr
