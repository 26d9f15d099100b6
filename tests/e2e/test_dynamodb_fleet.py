"""A fleet of two sidecars sharing one DynamoDB ledger (dynalite, in memory).

Both sidecars run `--store dynamodb` against the same tables. Reserve/commit
cycles alternate between them, concurrently, against a budget that fits exactly
50 holds; the shared ledger must admit exactly 50 and never overspend.

Needs `target/debug/tollgate-sidecar` (cargo build -p tollgate-sidecar) and
dynalite (`cargo xtask setup`, or DYNALITE_BIN).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from harness import BIN_DIR, REPO, free_port, spawn, wait_http

DYNALITE = Path(os.environ.get("DYNALITE_BIN", REPO / "tests/node_modules/.bin/dynalite"))
DYNALITE_URL = ""  # set by the `fleet` fixture
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
# 1000 input + 1000 output tokens at 3/15 USD per 1M = 0.018 per hold; commits
# charge exactly the hold, so admissions consume the budget for good.
HOLD = Decimal("0.018")
FITS = 50
CYCLES = 200


def wait_tcp(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dynalite exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"dynalite not listening on {port} after {timeout}s")


@pytest.fixture
def fleet(tmp_path):
    if not DYNALITE.exists():
        pytest.fail(f"dynalite not found at {DYNALITE}: run `cargo xtask setup` (npm install in tests/) "
                    "or set DYNALITE_BIN")
    sidecar_bin = BIN_DIR / "tollgate-sidecar"
    if not sidecar_bin.exists():
        pytest.fail(f"{sidecar_bin} missing: run `cargo build -p tollgate-sidecar`")
    procs = []
    try:
        port = free_port()
        dyn = spawn("dynalite", [str(DYNALITE), "--host", "127.0.0.1", "--port", str(port),
                                 "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"], tmp_path)
        procs.append(dyn)
        wait_tcp(port, dyn.popen, dyn.log)
        token = secrets.token_hex(16)
        filter_token = secrets.token_hex(24)
        env = {
            "AWS_ENDPOINT_URL_DYNAMODB": f"http://127.0.0.1:{port}",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "dummy",
            "AWS_SECRET_ACCESS_KEY": "dummy",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "TOLLGATE_DYNAMODB_TABLE_PREFIX": "fleet-",
            "TOLLGATE_ADMIN_TOKEN": token,
            "TOLLGATE_SECRET_KEY": secrets.token_hex(32),
            # Both sidecars accept the same filter token, as a fleet's gateways use one.
            "TOLLGATE_FILTER_TOKEN": filter_token,
        }
        init = subprocess.run([str(sidecar_bin), "dynamodb", "init"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert init.returncode == 0, init.stderr
        assert "fleet-TenantBudgets: created" in init.stdout, init.stdout
        urls = []
        for name in ("sidecar-a", "sidecar-b"):
            p = free_port()
            proc = spawn(name, [str(sidecar_bin), "serve", "--store", "dynamodb", "--listen", f"127.0.0.1:{p}",
                                "--db", str(tmp_path / f"{name}-unused.db"), "--sweep-interval-secs", "1",
                                # As the harness's sidecar: a lease a gateway stopped renewing
                                # comes back within seconds, not the default 30 s; and a hold
                                # left open (a gateway that never settled it) within the
                                # lease test's wait, not the default 10 min.
                                "--lease-ttl-secs", "5", "--hold-ttl-secs", "30"],
                         tmp_path, env=env)
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{p}/healthz", proc.popen, proc.log, timeout=60)
            urls.append(f"http://127.0.0.1:{p}")
        global DYNALITE_URL
        DYNALITE_URL = f"http://127.0.0.1:{port}"
        yield urls, token, filter_token
    finally:
        for p in reversed(procs):
            p.stop()


def dump_ledger_items(tenant: str, tmp_path) -> None:
    """On a failure: the tenant's raw budget rows, holds and leases, and the
    warnings of every process, so that a rare race can be read after the fact."""
    import boto3

    c = boto3.client("dynamodb", endpoint_url=DYNALITE_URL, region_name="us-east-1",
                     aws_access_key_id="dummy", aws_secret_access_key="dummy")
    for table in ("fleet-TenantBudgets", "fleet-TollgateLeases", "fleet-TollgateHolds"):
        try:
            items = c.scan(TableName=table)["Items"]
        except Exception as e:  # noqa: BLE001 - a diagnostic must not hide the failure
            print(f"scan {table}: {e}")
            continue
        for item in items:
            text = json.dumps(item)
            if tenant in text and ('"open"' in text or '"pending"' in text or "lease:" in text
                                   or table.endswith("TenantBudgets")):
                print(f"{table}: {text[:2000]}")
    for log in sorted(tmp_path.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if any(w in line for w in ("WARN", "ERROR", "warning", "error")):
                print(f"{log.name}: {line[:500]}")


def test_two_sidecars_share_one_budget(fleet):
    (a, b), token, filter_token = fleet
    auth = {"Authorization": f"Bearer {token}"}
    data_plane = {"x-tollgate-filter-token": filter_token}
    session = requests.Session()

    def admin(url, method, path, body=None, expect=200):
        r = session.request(method, f"{url}{path}", json=body, headers=auth, timeout=10)
        assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    # Configure through A; B reads the same tables.
    admin(a, "PUT", f"/v1/pricing/{SONNET}", {"input": "3", "output": "15"})
    budget = HOLD * FITS
    admin(a, "PUT", "/v1/tenants/fleet", {"budget_usd": str(budget), "alert_threshold": "0.8",
                                           "reset_cycle": "monthly", "active": True})
    key = admin(a, "POST", "/v1/tenants/fleet/keys", {"application_id": None}, expect=201)["key"]
    assert Decimal(admin(b, "GET", "/v1/tenants/fleet")["config"]["budget_usd"]) == budget

    def cycle(i: int) -> bool:
        reserve_on, commit_on = (a, b) if i % 2 == 0 else (b, a)
        rid = f"fleet-{i}"
        r = requests.post(f"{reserve_on}/v1/reserve", timeout=15, headers=data_plane, json={
            "request_id": rid,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": SONNET,
            "input_tokens_estimate": 1000,
            "max_output_tokens": 1000,
        })
        assert r.status_code == 200, r.text
        body = r.json()
        if body["decision"] != "allow":
            assert body["status"] == 402, body
            return False
        assert Decimal(body["hold_usd"]) == HOLD, body
        c = requests.post(f"{commit_on}/v1/commit", timeout=15, headers=data_plane, json={
            "commits": [{"request_id": rid, "usage": {"input_tokens": 1000, "output_tokens": 1000}}],
        })
        assert c.status_code == 200, c.text
        assert c.json()["results"][0]["outcome"] == "committed", c.text
        return True

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(cycle, range(CYCLES), timeout=120))
    elapsed = time.monotonic() - started
    print(f"{CYCLES} cycles on two sidecars in {elapsed:.1f}s")

    assert sum(results) == FITS, f"admitted {sum(results)}, expected {FITS}"
    views = []
    for url in (a, b):
        bal = admin(url, "GET", "/v1/tenants/fleet")["balance"]
        spent, reserved, available = (Decimal(bal[k]) for k in ("spent_usd", "reserved_usd", "available_usd"))
        assert Decimal(bal["budget_usd"]) == budget
        assert spent <= budget
        assert spent + reserved + available == budget, bal
        assert spent == budget and reserved == 0 and available == 0, bal
        assert bal["requests"] == FITS
        assert bal["by_model"][SONNET]["requests"] == FITS
        views.append(bal)
    assert views[0] == views[1]
    # Duplicate commits through the other sidecar change nothing.
    dup = requests.post(f"{b}/v1/commit", timeout=15, headers=data_plane, json={
        "commits": [{"request_id": "fleet-0", "usage": {"input_tokens": 1, "output_tokens": 1}}]}).json()
    assert dup["results"][0]["outcome"] in ("duplicate", "unknown_request"), dup
    assert admin(a, "GET", "/v1/tenants/fleet")["balance"] == views[0]


def test_two_sidecars_honour_one_requests_per_minute_limit(fleet):
    """RPM is counted in the shared ledger: two sidecars together admit the
    configured rate per UTC minute, not twice it (each counting on its own)."""
    (a, b), token, filter_token = fleet
    auth = {"Authorization": f"Bearer {token}"}
    rpm = 12
    for method, path, body, expect in (
        ("PUT", f"/v1/pricing/{SONNET}", {"input": "3", "output": "15"}, 200),
        ("PUT", "/v1/tenants/rated", {"budget_usd": "100", "rate_limit_rpm": rpm}, 200),
    ):
        r = requests.request(method, f"{a}{path}", json=body, headers=auth, timeout=10)
        assert r.status_code == expect, r.text
    r = requests.post(f"{a}/v1/tenants/rated/keys", json={}, headers=auth, timeout=10)
    assert r.status_code == 201, r.text
    key = r.json()["key"]

    # The burst must fall inside one UTC minute: start early in one (waits at most 20 s).
    second = time.gmtime().tm_sec
    if second >= 40:
        time.sleep(61 - second)
    minute = int(time.time()) // 60

    def reserve(i: int) -> dict:
        r = requests.post(f"{(a, b)[i % 2]}/v1/reserve", timeout=15,
                          headers={"x-tollgate-filter-token": filter_token}, json={
                              "request_id": f"rated-{i}",
                              "credential": {"type": "bearer", "key": key},
                              "operation": "converse", "model": SONNET,
                              "input_tokens_estimate": 10, "max_output_tokens": 10})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(reserve, range(5 * rpm), timeout=60))
    assert int(time.time()) // 60 == minute, "the burst crossed a minute boundary"
    admitted = [r for r in results if r["decision"] == "allow"]
    throttled = [r for r in results if r["decision"] == "deny"]
    assert len(admitted) == rpm, f"admitted {len(admitted)} of {len(results)} with rpm={rpm}"
    assert {r["tenant_id"] for r in admitted} == {"rated"}
    assert len(throttled) == 4 * rpm
    for r in throttled:
        assert (r["status"], r["error_type"]) == (429, "ThrottlingException"), r
        assert 1 <= r["retry_after_secs"] <= 60, r
    # Both sidecars admitted some: the limit is the fleet's, not each one's.
    served_by = {i % 2 for i, r in enumerate(results) if r["decision"] == "allow"}
    assert served_by == {0, 1}, served_by


@pytest.mark.parametrize("gateways", [1, 2, 4])
def test_leased_gateways_on_two_sidecars_never_overspend(fleet, stack, tmp_path, gateways):
    """1, 2 or 4 gateways, in front of the two sidecars in turn, both sidecars
    on one DynamoDB ledger: 200 concurrent requests against a budget for about
    50. The leases the gateways hold are counted in the shared ledger, so the
    tenant never spends more than its budget."""
    from harness import CA, plan

    (a, b), token, filter_token = fleet
    auth = {"Authorization": f"Bearer {token}"}
    haiku = "anthropic.claude-3-haiku-20240307-v1:0"
    price = {"input": "0.25", "output": "1.25"}
    requests.put(f"{a}/v1/pricing/{haiku}", json=price, headers=auth, timeout=10).raise_for_status()
    hold = Decimal(64) * Decimal(price["output"]) / 1_000_000
    budget = (hold * 50).quantize(Decimal("0.000001"))
    tenant = "fleet-leases"
    requests.put(f"{a}/v1/tenants/{tenant}", timeout=10, headers=auth, json={
        "budget_usd": str(budget), "reset_cycle": "monthly", "active": True}).raise_for_status()
    key = requests.post(f"{a}/v1/tenants/{tenant}/keys", json={"application_id": None}, headers=auth,
                        timeout=10).json()["key"]
    names = [f"gw-{i}" for i in range(gateways)]
    urls = []
    for i, name in enumerate(names):
        sidecar = (a, b)[i % 2]
        listener, admin = free_port(), free_port()
        planned = plan(tmp_path, listener=listener, admin=admin, emulator=stack.emulator_port,
                       sidecar=int(sidecar.rsplit(":", 1)[1]), filter_token=filter_token)
        text = planned["envoy_config"]
        default_cfg = '{"sidecar_cluster": "tollgate_sidecar", "failure_mode": "closed"}'
        assert default_cfg in text
        # dynalite on a shared 2-core machine answers a burst of contended
        # reserves slowly; give them time rather than failing closed.
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(text.replace(default_cfg, json.dumps(
            {"sidecar_cluster": "tollgate_sidecar", "reserve_timeout_ms": 20000})))
        launch = planned["envoy"]
        launch["args"][launch["args"].index(planned["envoy_config_path"])] = str(cfg)
        p = spawn(name, [launch["program"], *launch["args"]], tmp_path, env=launch["env"])
        stack.procs[name] = p
        wait_http(f"http://127.0.0.1:{admin}/ready", p.popen, p.log)
        urls.append(f"https://127.0.0.1:{listener}")
    try:
        body = {"messages": [{"role": "user", "content": [{"text": "hello"}]}],
                "inferenceConfig": {"maxTokens": 64}}

        def one(i: int):
            return requests.post(f"{urls[i % len(urls)]}/model/{haiku}/converse", json=body, verify=str(CA),
                                 timeout=30, headers={"Authorization": f"Bearer {key}"})

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(one, range(200)))
        ok = [r for r in results if r.status_code == 200]
        assert ok, "some requests fit"
        for r in results:
            assert r.status_code in (200, 402), (r.status_code, r.text)
        expected = sum((Decimal(r.json()["usage"]["inputTokens"]) * Decimal(price["input"])
                        + Decimal(r.json()["usage"]["outputTokens"]) * Decimal(price["output"])) / 1_000_000
                       for r in ok)
        deadline = time.monotonic() + 45
        while True:
            bal = requests.get(f"{b}/v1/tenants/{tenant}", headers=auth, timeout=10).json()["balance"]
            done = bal["requests"] == len(ok) and Decimal(bal["reserved_usd"]) == 0
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not (bal["requests"] == len(ok) and Decimal(bal["reserved_usd"]) == 0):
            dump_ledger_items(tenant, tmp_path)
        assert bal["requests"] == len(ok), bal
        assert Decimal(bal["reserved_usd"]) == 0, bal
        spent = Decimal(bal["spent_usd"])
        assert spent == expected
        assert spent <= budget, f"spent {spent} > budget {budget}"
    finally:
        for name in names:
            p = stack.procs.pop(name, None)
            if p:
                p.stop()
