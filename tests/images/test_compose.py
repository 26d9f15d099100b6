"""The container images, for real: compose.yaml's stack (emulator, sidecar,
Envoy with the filter) started from the images `cargo xtask test-images` built,
boto3's Converse and ConverseStream through it, the ledger checked exactly,
`compose run demo`, the filter's OCI image, and the Envoy image's rendered
configs under `envoy --mode validate`.

Run by `cargo xtask test-images`, which builds the images and passes the
engine, the compose command and the ports in the environment; skipped
otherwise. Kept out of tests/e2e so `cargo xtask test` does not collect it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

COMPOSE = json.loads(os.environ.get("TOLLGATE_IMAGES_COMPOSE", "null") or "null")
pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="run by `cargo xtask test-images` (builds the images first)"
)

REPO = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("TOLLGATE_IMAGES_ENGINE", "podman")
PROJECT = os.environ.get("TOLLGATE_IMAGES_PROJECT", "tollgate-images-test")
PREFIX = os.environ.get("TOLLGATE_IMAGE_PREFIX", "tollgate-")
TAG = os.environ.get("TOLLGATE_TAG", "dev")
GATEWAY_PORT = int(os.environ.get("TOLLGATE_GATEWAY_PORT", "10000"))
SIDECAR_PORT = int(os.environ.get("TOLLGATE_SIDECAR_PORT", "9190"))
# compose.yaml's demo defaults (the test sets none of its own).
ADMIN_TOKEN = "demo-admin-token-change-me"
LOG_DIR = REPO / ".tollgate/images/logs"
# Claude 3 Haiku in examples/seed.json, USD per 1M tokens.
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_PRICE = (Decimal("0.25"), Decimal("1.25"))


def image(target: str) -> str:
    return f"{PREFIX}{target}:{TAG}"


def sh(args: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def compose(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return sh([*COMPOSE, "-p", PROJECT, *args], timeout=timeout, check=check)


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return sh([ENGINE, *args], timeout=timeout, check=check)


def container(service: str) -> str:
    """The container of a compose service (docker compose and podman-compose
    both label them)."""
    out = engine(
        "ps", "-a", "-q",
        "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).stdout.split()
    assert out, f"no container for service {service}"
    return out[0]


def wait_for(what: str, probe, seconds: float = 90):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            got = probe()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {seconds} s (last error: {last})")


class Admin:
    def __init__(self):
        import requests

        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        self.url = f"http://127.0.0.1:{SIDECAR_PORT}"

    def __call__(self, method: str, path: str, body=None):
        r = self.s.request(method, self.url + path, json=body, timeout=10)
        assert r.status_code in (200, 201), f"{method} {path} -> {r.status_code} {r.text}"
        return r.json() if r.content else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import requests

    compose("--profile", "demo", "down", "-v", "-t", "5", check=False, timeout=120)
    try:
        compose("up", "-d", "--no-build", timeout=300)
        wait_for(
            "sidecar /healthz",
            lambda: requests.get(f"http://127.0.0.1:{SIDECAR_PORT}/healthz", timeout=2).status_code == 200,
        )
        ca = tmp_path_factory.mktemp("tls") / "ca.pem"
        wait_for(
            "the demo CA in the envoy container",
            lambda: engine("cp", f"{container('envoy')}:/etc/tollgate/tls/ca.pem", str(ca), check=False).returncode == 0
            and ca.stat().st_size > 0,
        )
        # Envoy answers through the filter once it listens: a request without a
        # credential is refused Bedrock-style.
        wait_for(
            "the gateway",
            lambda: requests.post(
                f"https://127.0.0.1:{GATEWAY_PORT}/model/x/converse", json={}, verify=str(ca), timeout=5
            ).status_code in (401, 403),
        )
        yield {"ca": ca}
    finally:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        for service in ("certs", "emulator", "sidecar", "envoy"):
            try:
                r = engine("logs", container(service), check=False, timeout=30)
                (LOG_DIR / f"{service}.log").write_text(r.stdout + r.stderr)
            except Exception:  # noqa: BLE001 - best effort, the stack still goes down
                pass
        compose("--profile", "demo", "down", "-v", "-t", "5", check=False, timeout=120)


def bedrock(ca: Path, key: str):
    import boto3
    import botocore.config

    os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=f"https://127.0.0.1:{GATEWAY_PORT}",
        region_name="us-east-1",
        verify=str(ca),
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def test_boto3_converse_and_stream_through_the_containers_ledger_exact(stack):
    admin = Admin()
    tenant = f"images-{uuid.uuid4().hex[:8]}"
    admin("PUT", f"/v1/tenants/{tenant}", {
        "budget_usd": "5.00", "alert_threshold": "0.8", "reset_cycle": "monthly",
        "active": True, "allowed_models": ["claude-3-haiku"],
    })
    key = admin("POST", f"/v1/tenants/{tenant}/keys", {"application_id": None})["key"]
    client = bedrock(stack["ca"], key)

    out = client.converse(
        modelId="claude-3-haiku",
        messages=[{"role": "user", "content": [{"text": "Hello from a container " * 20}]}],
        inferenceConfig={"maxTokens": 200},
    )
    headers = out["ResponseMetadata"]["HTTPHeaders"]
    assert headers.get("x-tollgate-request-id"), headers
    usages = [out["usage"]]

    stream = client.converse_stream(
        modelId="claude-3-haiku",
        messages=[{"role": "user", "content": [{"text": "Stream through the compose stack " * 30}]}],
        inferenceConfig={"maxTokens": 300},
    )
    text, meta = "", None
    for event in stream["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"].get("text", "")
        if "metadata" in event:
            meta = event["metadata"]["usage"]
    assert text and meta, (text, meta)
    usages.append(meta)

    cost = sum(
        (Decimal(u["inputTokens"]) * HAIKU_PRICE[0] + Decimal(u["outputTokens"]) * HAIKU_PRICE[1]) / Decimal(1_000_000)
        for u in usages
    )

    def settled():
        b = admin("GET", f"/v1/tenants/{tenant}")["balance"]
        return b if b["requests"] == 2 and Decimal(b["reserved_usd"]) == 0 else None

    b = wait_for("the commits", settled, seconds=20)
    assert Decimal(b["spent_usd"]) == cost, (b, usages)
    assert b["input_tokens"] == sum(u["inputTokens"] for u in usages)
    assert b["output_tokens"] == sum(u["outputTokens"] for u in usages)
    assert list(b["by_model"]) == [HAIKU]


def test_a_tenant_without_budget_is_refused_402(stack):
    import botocore.exceptions

    admin = Admin()
    tenant = f"images-broke-{uuid.uuid4().hex[:8]}"
    admin("PUT", f"/v1/tenants/{tenant}", {
        "budget_usd": "0.0001", "alert_threshold": "0.8", "reset_cycle": "monthly", "active": True,
    })
    key = admin("POST", f"/v1/tenants/{tenant}/keys", {"application_id": None})["key"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bedrock(stack["ca"], key).converse(
            modelId="claude-3-haiku",
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
            inferenceConfig={"maxTokens": 4000},
        )
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    assert e.value.response["Error"]["Code"] == "BudgetExceededException"


def test_containers_run_non_root_read_only_with_the_ledger_on_its_volume(stack):
    sidecar, envoy = container("sidecar"), container("envoy")
    fmt = "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}"
    assert engine("inspect", "--format", fmt, sidecar).stdout.split() == ["10001:10001", "true"]
    assert engine("inspect", "--format", fmt, envoy).stdout.split() == ["101:101", "true"]
    # The ledger is on the volume (the root filesystem is read-only anyway).
    engine("exec", sidecar, "test", "-s", "/var/lib/tollgate/ledger.db")
    mounts = json.loads(engine("inspect", "--format", "{{json .Mounts}}", sidecar).stdout)
    assert any(m.get("Destination") == "/var/lib/tollgate" and m.get("Type") == "volume" for m in mounts), mounts
    # The images' HEALTHCHECKs: declared, and passing inside the running containers.
    for target, ctr in (("sidecar", sidecar), ("envoy", envoy), ("emulator", container("emulator"))):
        hc = engine("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image(target)).stdout
        assert "http-ok" in hc, (target, hc)
        test = json.loads(hc)["Test"]
        engine("exec", ctr, *(["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]))


def test_envoy_image_renders_valid_configs_for_the_emulator_and_for_bedrock(stack):
    for endpoint, region in (
        ("http://emulator:9180", "us-east-1"),
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", "eu-west-1"),
    ):
        r = engine(
            "run", "--rm", "--network", "none",
            "-v", f"{PROJECT}_tls:/etc/tollgate/tls:ro",
            "-e", f"BEDROCK_ENDPOINT={endpoint}", "-e", f"AWS_REGION={region}",
            "-e", "TOLLGATE_FILTER_TOKEN=validate-only-token",
            image("envoy"), "validate",
            timeout=120,
        )
        assert "OK" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_filter_oci_image_holds_the_built_wasm(stack, tmp_path):
    wasm = Path(os.environ["TOLLGATE_WASM"])
    name = f"tollgate-wasm-check-{uuid.uuid4().hex[:8]}"
    engine("create", "--name", name, image("filter-wasm"), "/plugin.wasm")
    try:
        engine("cp", f"{name}:/plugin.wasm", str(tmp_path / "plugin.wasm"))
    finally:
        engine("rm", "-f", name, check=False)
    got = hashlib.sha256((tmp_path / "plugin.wasm").read_bytes()).hexdigest()
    assert got == hashlib.sha256(wasm.read_bytes()).hexdigest()
    # Istio's Wasm image convention: one layer, holding plugin.wasm.
    layers = json.loads(engine("image", "inspect", "--format", "{{json .RootFS.Layers}}", image("filter-wasm")).stdout)
    assert len(layers) == 1, layers


def test_compose_run_demo(stack):
    r = compose("--profile", "demo", "run", "--rm", "demo", timeout=600, check=False)
    out = r.stdout + r.stderr
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "demo.log").write_text(out)
    assert r.returncode == 0, out[-4000:]
    assert "Demo complete: budget enforced, ledger exact." in out, out[-4000:]

