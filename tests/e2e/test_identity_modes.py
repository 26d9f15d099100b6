"""The identity modes that depend on the deployment: a tenant claim from Envoy's
`jwt_authn` filter, and the trusted `x-tenant-id` header (only when enabled; the
default gateway ignores and removes it, see test_gateway.py).

Both modes must be enabled on both sides: in the filter's configuration and on
the sidecar (`--accept-credentials bearer,sigv4,jwt,trusted_header`); this
module runs its own sidecar so started. A sidecar with the default
(`bearer,sigv4`) refuses them: see test_security.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from decimal import Decimal

import pytest
import requests

from harness import CA, Stack, cost

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICE = {"input": "0.25", "output": "1.25"}
JWT_SECRET = b"tollgate-test-hs256-secret-0123456789abcdef"
ISSUER = "https://idp.tollgate.test"
AUDIENCE = "bedrock-gateway"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims: dict, secret: bytes = JWT_SECRET) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


JWT_AUTHN = f"""          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: {ISSUER}
                  audiences: [{AUDIENCE}]
                  local_jwks:
                    inline_string: '{json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "k": b64url(JWT_SECRET)}]})}'
                  payload_in_metadata: jwt_payload
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ allow_missing_or_failed: {{}} }}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A sidecar that honours JWT and trusted-header credentials (no default
    gateway: each test module starts the edge Envoy it needs)."""
    s = Stack(tmp_path_factory.mktemp("identity"),
              sidecar_args=["--accept-credentials", "bearer,sigv4,jwt,trusted_header"]).start(envoy=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def jwt_gateway(stack):
    stack.set_price(HAIKU, **PRICE)
    return stack.start_edge_envoy(
        "jwt", {"jwt": {"payload_in_metadata": "jwt_payload", "tenant_claim": "tenant", "user_claim": "sub"}},
        JWT_AUTHN)


@pytest.fixture(scope="module")
def trusting_gateway(stack):
    stack.set_price(HAIKU, **PRICE)
    return stack.start_edge_envoy("trusted", {"trusted_tenant_header": True})


def converse(url: str, headers: dict, text: str = "identity check") -> requests.Response:
    return requests.post(f"{url}/model/{HAIKU}/converse", verify=CA, timeout=15,
                         headers={"content-type": "application/json", **headers},
                         json={"messages": [{"role": "user", "content": [{"text": text}]}]})


def test_jwt_claim_names_the_tenant(stack, jwt_gateway, tenant_id):
    stack.create_tenant(tenant_id, budget="1.00")
    stack.clear_emulator()
    token = jwt({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600, "sub": "user-1", "tenant": tenant_id})
    r = converse(jwt_gateway, {"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    rec = stack.emulator_requests()[-1]
    assert rec["sigv4"]["ok"]
    assert token not in json.dumps(rec["headers"])
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], PRICE)


def test_bad_jwts_are_refused_bedrock_style(stack, jwt_gateway, tenant_id):
    stack.create_tenant(tenant_id, budget="1.00")
    stack.clear_emulator()
    now = int(time.time())
    bad = [
        jwt({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "tenant": tenant_id}, secret=b"wrong-secret-wrong-secret-wrong!!"),
        jwt({"iss": ISSUER, "aud": AUDIENCE, "exp": now - 600, "tenant": tenant_id}),
        jwt({"iss": "https://evil.example", "aud": AUDIENCE, "exp": now + 600, "tenant": tenant_id}),
    ]
    for token in bad:
        r = converse(jwt_gateway, {"Authorization": f"Bearer {token}"})
        assert r.status_code in (401, 403), r.text
        assert r.headers["x-amzn-errortype"] == "UnrecognizedClientException"
    # A valid token naming a tenant that does not exist.
    r = converse(jwt_gateway, {"Authorization": "Bearer " + jwt(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "tenant": tenant_id + "-nope"})})
    assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert stack.emulator_requests() == []


def test_the_user_claim_is_the_user_budgets_and_bedrock_see(stack, jwt_gateway, tenant_id):
    """With `user_claim`, the token names the user: a caller cannot pick
    another user in `x-user-id` or `requestMetadata` to escape its budget."""
    stack.create_tenant(tenant_id, budget="1.00", user_budgets={"capped-user": "0.000001"})
    now = int(time.time())

    def token(sub: str) -> str:
        return jwt({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "sub": sub, "tenant": tenant_id})

    def call(sub: str, claimed: str) -> requests.Response:
        return requests.post(
            f"{jwt_gateway}/model/{HAIKU}/converse", verify=CA, timeout=15,
            headers={"content-type": "application/json", "Authorization": f"Bearer {token(sub)}",
                     "x-user-id": claimed},
            json={"messages": [{"role": "user", "content": [{"text": "who am I"}]}],
                  "requestMetadata": {"user_id": claimed}})

    stack.clear_emulator()
    r = call("capped-user", "someone-else")
    assert r.status_code == 402, r.text
    assert r.json()["message"].startswith(f"User budget exhausted for tenant {tenant_id}, user capped-user:")
    assert stack.emulator_requests() == []

    r = call("free-user", "capped-user")
    assert r.status_code == 200, r.text
    rec = stack.emulator_requests()[-1]
    assert rec["body_json"]["requestMetadata"]["user_id"] == "free-user"
    stack.settled(tenant_id, 1)

    # A token without the claim names no user: the request's claim is still ignored.
    r = requests.post(
        f"{jwt_gateway}/model/{HAIKU}/converse", verify=CA, timeout=15,
        headers={"content-type": "application/json", "x-user-id": "capped-user", "Authorization": "Bearer " + jwt(
            {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "tenant": tenant_id})},
        json={"messages": [{"role": "user", "content": [{"text": "nobody"}]}]})
    assert r.status_code == 200, r.text
    assert "user_id" not in stack.emulator_requests()[-1]["body_json"]["requestMetadata"]
    # A claim Bedrock could not log is refused before anything is reserved.
    r = call("no<angle>brackets", "x")
    assert r.status_code == 400, r.text
    assert "sub claim is not a valid user id" in r.json()["message"]
    stack.settled(tenant_id, 2)


def test_bearer_keys_still_work_behind_jwt_authn(stack, jwt_gateway, tenant_id):
    key = stack.create_tenant(tenant_id, budget="1.00")
    r = converse(jwt_gateway, {"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    stack.settled(tenant_id, 1)


def test_trusted_header_when_enabled(stack, trusting_gateway, tenant_id):
    stack.create_tenant(tenant_id, budget="1.00")
    stack.clear_emulator()
    r = converse(trusting_gateway, {"x-tenant-id": tenant_id})
    assert r.status_code == 200, r.text
    rec = stack.emulator_requests()[-1]
    assert "x-tenant-id" not in rec["headers"]
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], PRICE)
    r = converse(trusting_gateway, {"x-tenant-id": tenant_id + "-unknown"})
    assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "AccessDeniedException"
