"""The sidecar's data plane and metrics against a caller that can reach its port
but holds no filter token (any pod, in the documented Istio layout).

Each attack from the security review is replayed against the real sidecar the
harness started: the call must be refused AND the victim's ledger (read back
through the admin API) must be exactly as before. Then the same calls with the
filter token but a credential type the sidecar does not honour, token rotation
end to end through Envoy, and /metrics."""

from __future__ import annotations

import json
import secrets
import time
from decimal import Decimal

import pytest
import requests

from harness import CA, FILTER_TOKEN_HEADER, Stack

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICE = {"input": "0.25", "output": "1.25"}
DATA_PLANE = ["/v1/reserve", "/v1/commit", "/v1/release", "/v1/leases/renew"]


@pytest.fixture
def victim(stack, tenant_id):
    stack.set_price(HAIKU, **PRICE)
    key = stack.create_tenant(tenant_id, budget="10.00")
    return tenant_id, key


def reserve_body(rid: str, credential: dict) -> dict:
    return {"request_id": rid, "credential": credential, "operation": "converse", "model": HAIKU,
            "input_tokens_estimate": 1000, "max_output_tokens": 1000}


def unreserved_commit(rid: str, tenant: str) -> dict:
    # 1M output tokens of Haiku: $1.25 charged to the victim.
    return {"commits": [{"request_id": rid, "usage": {"input_tokens": 0, "output_tokens": 1_000_000},
                         "unreserved": reserve_body(rid, {"type": "trusted_header", "tenant_id": tenant})}]}


def assert_unauthorized(r: requests.Response) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    assert isinstance(r.json()["message"], str) and r.json()["message"]


def balance(stack, tenant: str) -> dict:
    return stack.tenant(tenant)["balance"]


BAD_TOKENS = {
    "none": None,
    "wrong": "not-the-filter-token-" + "0" * 24,
    "short": "x",
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_reserve_for_a_victim_without_the_filter_token(stack, victim, token):
    tenant, _ = victim
    before = balance(stack, tenant)
    r = stack.data("/v1/reserve", reserve_body(f"atk-{secrets.token_hex(4)}",
                                               {"type": "trusted_header", "tenant_id": tenant}), token=token)
    assert_unauthorized(r)
    assert balance(stack, tenant) == before


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_unreserved_commit_charging_a_victim_without_the_filter_token(stack, victim, token):
    tenant, _ = victim
    before = balance(stack, tenant)
    assert_unauthorized(stack.data("/v1/commit", unreserved_commit(f"atk-{secrets.token_hex(4)}", tenant), token=token))
    assert balance(stack, tenant) == before
    assert Decimal(before["spent_usd"]) == 0


def test_release_of_another_requests_hold_without_the_filter_token(stack, victim):
    tenant, key = victim
    rid = f"victim-{secrets.token_hex(4)}"
    r = stack.data("/v1/reserve", reserve_body(rid, {"type": "bearer", "key": key}))
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    held = balance(stack, tenant)
    assert Decimal(held["reserved_usd"]) > 0
    for token in BAD_TOKENS.values():
        assert_unauthorized(stack.data("/v1/release", {"request_id": rid, "reason": "attack"}, token=token))
    assert balance(stack, tenant) == held
    # Its own commit still settles it.
    c = stack.data("/v1/commit", {"commits": [{"request_id": rid, "usage": {"input_tokens": 10, "output_tokens": 10}}]})
    assert c.json()["results"][0]["outcome"] == "committed", c.text


def test_the_admin_token_is_not_a_filter_token(stack, victim):
    tenant, _ = victim
    before = balance(stack, tenant)
    body = reserve_body(f"atk-{secrets.token_hex(4)}", {"type": "trusted_header", "tenant_id": tenant})
    assert_unauthorized(stack.data("/v1/reserve", body, token=stack.admin_token))
    r = requests.post(f"{stack.sidecar_url}/v1/reserve", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {stack.admin_token}"})
    assert_unauthorized(r)
    # Nor does the filter token open the admin API.
    r = requests.get(f"{stack.sidecar_url}/v1/tenants/{tenant}", timeout=10,
                     headers={"Authorization": f"Bearer {stack.filter_token}", FILTER_TOKEN_HEADER: stack.filter_token})
    assert r.status_code == 401, r.text
    assert balance(stack, tenant) == before


def test_every_data_plane_route_needs_the_token(stack):
    for path in DATA_PLANE + ["/v1/leases/added-later"]:
        assert_unauthorized(stack.data(path, {}, token=None))
    # With the token the same empty bodies reach the handlers (and are refused
    # as malformed, not as unauthorized).
    for path in DATA_PLANE:
        assert stack.data(path, {}).status_code == 400, path


def test_credentials_the_sidecar_does_not_honour(stack, victim):
    """Even with the filter token, trusted-header and JWT identities are refused
    by a sidecar started with the default --accept-credentials bearer,sigv4."""
    tenant, _ = victim
    before = balance(stack, tenant)
    for kind in ("trusted_header", "jwt"):
        r = stack.data("/v1/reserve", reserve_body(f"atk-{secrets.token_hex(4)}", {"type": kind, "tenant_id": tenant}))
        assert r.status_code == 200, r.text
        d = r.json()
        assert (d["decision"], d["status"], d["error_type"]) == ("deny", 403, "AccessDeniedException"), d
        assert d["message"] == f"credential type {kind} is not enabled on this sidecar"
    rid = f"atk-{secrets.token_hex(4)}"
    c = stack.data("/v1/commit", unreserved_commit(rid, tenant))
    assert c.status_code == 200, c.text
    assert c.json()["results"] == [{"request_id": rid, "outcome": "unknown_request"}]
    assert balance(stack, tenant) == before


def test_a_trusting_gateway_in_front_of_a_default_sidecar_is_refused(stack, tenant_id):
    """A gateway configured with trusted_tenant_header cannot make the sidecar
    honour it: the client gets Bedrock's AccessDeniedException."""
    stack.set_price(HAIKU, **PRICE)
    stack.create_tenant(tenant_id, budget="1.00")
    before = balance(stack, tenant_id)
    url = stack.start_edge_envoy("trusting-default", {"trusted_tenant_header": True})
    stack.clear_emulator()
    r = requests.post(f"{url}/model/{HAIKU}/converse", verify=str(CA), timeout=15,
                      headers={"content-type": "application/json", "x-tenant-id": tenant_id},
                      json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert r.status_code == 403, r.text
    assert r.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "not enabled" in r.json()["message"]
    assert stack.emulator_requests() == []
    assert balance(stack, tenant_id) == before


def test_metrics_need_a_token(stack, victim):
    tenant, key = victim
    # Put the victim in the metrics.
    rid = f"m-{secrets.token_hex(4)}"
    stack.data("/v1/reserve", reserve_body(rid, {"type": "bearer", "key": key}))
    stack.data("/v1/release", {"request_id": rid, "reason": "test"})
    for token in (None, "wrong-" + "0" * 24, stack.filter_token):
        r = stack.metrics(token=token)
        assert r.status_code == 401, r.text
        assert tenant not in r.text
    for token in (stack.metrics_token, stack.admin_token):
        r = stack.metrics(token=token)
        assert r.status_code == 200, r.text
        assert f'tenant="{tenant}"' in r.text
    assert requests.get(f"{stack.sidecar_url}/healthz", timeout=5).status_code == 200


def converse_ok(url: str, key: str) -> None:
    r = requests.post(f"{url}/model/{HAIKU}/converse", verify=str(CA), timeout=15,
                      headers={"content-type": "application/json", "Authorization": f"Bearer {key}"},
                      json={"messages": [{"role": "user", "content": [{"text": "rotation"}]}]})
    assert r.status_code == 200, r.text


def test_filter_token_rotation_without_downtime(tmp_path_factory, tenant_id):
    """Add the new token to the file, roll Envoy to it, remove the old one: the
    gateway answers at every step, and the old token stops working."""
    s = Stack(tmp_path_factory.mktemp("rotation")).start()
    try:
        s.set_price(HAIKU, **PRICE)
        key = s.create_tenant(tenant_id, budget="1.00")
        old = s.filter_token
        converse_ok(s.gateway_url, key)
        new = secrets.token_hex(24)
        assert_unauthorized(s.data("/v1/release", {"request_id": "x", "reason": "r"}, token=new))
        # 1. The sidecar accepts both (the file is re-read; no restart).
        s.write_filter_tokens(old, new)
        deadline = time.monotonic() + 5
        while s.data("/v1/release", {"request_id": "x", "reason": "r"}, token=new).status_code != 200:
            assert time.monotonic() < deadline, "new token not accepted after 5 s"
            time.sleep(0.1)
        converse_ok(s.gateway_url, key)
        # 2. Envoy rolls to the new token.
        s.filter_token = new
        s.restart_envoy()
        converse_ok(s.gateway_url, key)
        # 3. The old token is removed.
        s.write_filter_tokens(new)
        deadline = time.monotonic() + 5
        while s.data("/v1/release", {"request_id": "x", "reason": "r"}, token=old).status_code != 401:
            assert time.monotonic() < deadline, "old token still accepted after 5 s"
            time.sleep(0.2)
        converse_ok(s.gateway_url, key)
        s.settled(tenant_id, 3)
    finally:
        s.stop()


# ------------------------------------------------------ through the gateway
#
# The attacker now talks to the gateway, as any client can: replayed SigV4
# requests and bodies built to confuse or exhaust the filter. Each refusal is
# Bedrock-shaped, reaches neither Bedrock nor the ledger.

def signed_converse(stack, akid: str, secret: str, model: str, body: bytes) -> tuple[str, dict]:
    """A Converse request signed the way boto3 signs it, to be sent (and replayed)
    by hand."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from harness import REGION

    url = f"{stack.gateway_url}/model/{requests.utils.quote(model, safe='')}/converse"
    req = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(akid, secret), "bedrock", REGION).add_auth(req)
    return url, dict(req.headers.items())


def send(url: str, headers: dict, body: bytes) -> requests.Response:
    return requests.post(url, data=body, headers=headers, timeout=30, verify=CA)


def test_replayed_sigv4_requests(stack, victim, tenant_id):
    """A captured signed request replayed with anything changed (model, body,
    date, tenant header) is refused; replayed as is, it is what AWS does too:
    served while the signature is valid (15 minutes), and charged to its signer only."""
    victim_id, _ = victim
    signer = f"{tenant_id}-signer"
    stack.create_tenant(signer, budget="10.00")
    akid, secret = stack.issue_sigv4(signer)
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}],
                       "inferenceConfig": {"maxTokens": 20}}).encode()
    url, headers = signed_converse(stack, akid, secret, HAIKU, body)
    assert send(url, headers, body).status_code == 200
    r = send(url, headers, body)
    assert r.status_code == 200, r.text
    signer_after = stack.settled(signer, 2)["balance"]
    assert signer_after["requests"] == 2
    victim_before = balance(stack, victim_id)

    sonnet = "anthropic.claude-3-sonnet-20240229-v1:0"
    stack.clear_emulator()
    bigger = body.replace(b'"maxTokens": 20', b'"maxTokens": 4000')
    assert bigger != body
    later = dict(headers, **{"X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + 60))})
    replays = {
        "another model": (url.replace(requests.utils.quote(HAIKU, safe=""), requests.utils.quote(sonnet, safe="")),
                          headers, body),
        "another body": (url, headers, bigger),
        "another date": (url, later, body),
    }
    for name, (u, h, b) in replays.items():
        r = send(u, h, b)
        assert r.status_code == 403, (name, r.status_code, r.text)
        assert r.headers["x-amzn-errortype"] == "InvalidSignatureException", (name, r.text)
        assert r.json()["message"], name
    # A tenant header added to the replay names no one: the signature does.
    r = send(url, dict(headers, **{"x-tenant-id": victim_id}), body)
    assert r.status_code == 200, r.text
    assert stack.settled(signer, 3)["balance"]["requests"] == 3
    assert len(stack.emulator_requests()) == 1
    assert balance(stack, victim_id) == victim_before


def test_oversize_and_odd_bodies_are_refused_and_cost_nothing(stack, victim):
    tenant, key = victim
    before = balance(stack, tenant)
    stack.clear_emulator()
    url = f"{stack.gateway_url}/model/{HAIKU}/converse"
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    huge_text = "x" * 25_000_001
    cases = {
        # Past the filter's 25 MB limit (Bedrock's own): a 413, read no further.
        "oversize": (json.dumps({"messages": [{"role": "user", "content": [{"text": huge_text}]}]}).encode(), 413),
        "empty": (b"", 400),
        "not utf-8": (b'{"messages": [{"role": "user", "content": [{"text": "\xff\xfe"}]}]}', 400),
        "nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, 400),
        "max tokens past u64": (b'{"messages": [], "inferenceConfig": {"maxTokens": 1e30}}', 400),
        "a string for max tokens": (b'{"messages": [], "inferenceConfig": {"maxTokens": "4000"}}', 400),
    }
    for name, (body, status) in cases.items():
        r = requests.post(url, data=body, headers=auth, timeout=60, verify=CA)
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        assert r.headers["x-amzn-errortype"] == "ValidationException", (name, r.text[:300])
        assert r.json()["message"], name
    assert stack.emulator_requests() == []
    assert balance(stack, tenant) == before
    # The gateway is still fine.
    ok = requests.post(url, headers=auth, timeout=30, verify=CA,
                       json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert ok.status_code == 200, ok.text
    # A key twice is read once, as Bedrock's parser reads it (the last one), and
    # the body Bedrock gets is the gateway's re-serialization: one limit, the
    # one the hold was made for. (The unit tests check the single key.)
    twice = b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}], ' \
            b'"inferenceConfig": {"maxTokens": 4000, "maxTokens": 3}}'
    r = requests.post(url, data=twice, headers=auth, timeout=30, verify=CA)
    assert r.status_code == 200, r.text
    assert stack.emulator_requests()[-1]["body_json"]["inferenceConfig"]["maxTokens"] == 3
    assert r.json()["usage"]["outputTokens"] <= 3
    after = stack.settled(tenant, before["requests"] + 2)["balance"]
    assert after["output_tokens"] - before["output_tokens"] == r.json()["usage"]["outputTokens"] \
        + ok.json()["usage"]["outputTokens"]


def test_admin_changes_are_audited_without_secrets(stack, tenant_id):
    """Every admin change, applied or refused, leaves one `tollgate::audit` line
    naming method, path and status; never a key or a token."""
    key = stack.create_tenant(tenant_id, budget="1.00")
    refused = requests.put(f"{stack.sidecar_url}/v1/tenants/{tenant_id}", json={"budget_usd": "5"},
                           headers={"Authorization": "Bearer not-the-admin-token"}, timeout=10)
    assert refused.status_code == 401
    deadline = time.monotonic() + 5
    while True:
        log = stack.procs["sidecar"].log.read_text()
        audit = [line for line in log.splitlines() if "tollgate::audit" in line and tenant_id in line]
        if len(audit) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    put, post, bad = audit[-3:]
    assert "method=PUT" in put and f"path=/v1/tenants/{tenant_id} " in put and "status=200" in put, put
    assert "method=POST" in post and f"/v1/tenants/{tenant_id}/keys" in post and "status=201" in post, post
    assert "status=401" in bad and 'outcome="refused"' in bad, bad
    for secret in (key, stack.admin_token, stack.filter_token, "not-the-admin-token"):
        assert secret not in log


def test_headers_with_underscores_never_reach_the_filter_or_bedrock(stack, victim, tenant_id):
    """`x_tenant_id` could alias `x-tenant-id` behind Envoy: the edge drops every
    header with an underscore (`headers_with_underscores_action: DROP_HEADER`).
    The request is served as the key's tenant, charged to it alone."""
    victim_id, _ = victim
    caller = f"{tenant_id}-caller"
    key = stack.create_tenant(caller, budget="1.00")
    before = balance(stack, victim_id)
    stack.clear_emulator()
    r = requests.post(f"{stack.gateway_url}/model/{HAIKU}/converse", timeout=10, verify=CA,
                      headers={"Authorization": f"Bearer {key}", "x_tenant_id": victim_id},
                      json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]})
    assert r.status_code == 200, r.text
    seen = stack.emulator_requests()
    assert len(seen) == 1
    assert not any("_" in h for h in seen[0]["headers"]), seen[0]["headers"]
    assert stack.settled(caller, 1)["balance"]["requests"] == 1
    assert balance(stack, victim_id) == before
