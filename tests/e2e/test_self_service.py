"""A tenant reads its own balance through the gateway: `GET /tollgate/v1/self`
with the credential it calls Bedrock with (bearer key or SigV4), and nothing of
another tenant."""

from __future__ import annotations

from decimal import Decimal

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import requests

from harness import CA, REGION

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SELF = "/tollgate/v1/self"


def messages(text: str) -> list:
    return [{"role": "user", "content": [{"text": text}]}]


def get_self(stack, key: str) -> requests.Response:
    return requests.get(f"{stack.gateway_url}{SELF}", headers={"Authorization": f"Bearer {key}"},
                        verify=str(CA), timeout=30)


def test_a_tenant_reads_its_own_balance_with_its_key(stack, tenant_id):
    stack.set_price(HAIKU, "0.25", "1.25")
    key = stack.create_tenant(tenant_id, budget="2.00", rate_limit_rpm=500)
    other = stack.create_tenant(f"{tenant_id}-other", budget="7.00")
    stack.bedrock(key).call("converse", modelId=HAIKU, messages=messages("hello"))
    ledger = stack.settled(tenant_id, 1)["balance"]

    r = get_self(stack, key)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-tollgate-request-id"]
    view = r.json()
    assert view["tenant_id"] == tenant_id
    assert Decimal(view["balance"]["spent_usd"]) == Decimal(ledger["spent_usd"]) > 0
    assert Decimal(view["balance"]["available_usd"]) == Decimal(ledger["available_usd"])
    assert Decimal(r.headers["x-tollgate-budget-remaining"]) == Decimal(ledger["available_usd"])
    assert view["balance"]["requests"] == 1
    assert view["limits"]["rate_limit_rpm"] == 500

    # The other tenant's key sees the other tenant, untouched; neither sees the other.
    r = get_self(stack, other)
    assert r.status_code == 200, r.text
    assert r.json()["tenant_id"] == f"{tenant_id}-other"
    assert Decimal(r.json()["balance"]["spent_usd"]) == 0
    assert tenant_id + '"' not in r.text


def test_self_refuses_bad_credentials_and_other_methods(stack, tenant_id):
    stack.create_tenant(tenant_id)
    r = get_self(stack, "tg_not-a-key-at-all")
    assert r.status_code == 403, r.text
    assert r.headers["x-amzn-errortype"] == "UnrecognizedClientException"
    r = requests.get(f"{stack.gateway_url}{SELF}", verify=str(CA), timeout=30)
    assert r.status_code == 401, r.text
    r = requests.post(f"{stack.gateway_url}{SELF}", data=b"{}", verify=str(CA), timeout=30,
                      headers={"Authorization": "Bearer x"})
    assert r.status_code == 405, r.text
    assert "message" in r.json()


def test_a_tenant_reads_its_own_balance_with_sigv4(stack, tenant_id):
    stack.create_tenant(tenant_id, budget="3.00")
    akid, secret = stack.issue_sigv4(tenant_id)
    url = f"{stack.gateway_url}{SELF}"
    req = botocore.awsrequest.AWSRequest(method="GET", url=url)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, secret), "bedrock", REGION).add_auth(req)
    r = requests.get(url, headers=dict(req.headers), verify=str(CA), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["tenant_id"] == tenant_id
    assert Decimal(r.json()["balance"]["budget_usd"]) == Decimal("3.00")

    # A wrong secret is refused as Bedrock refuses a bad signature.
    bad = botocore.awsrequest.AWSRequest(method="GET", url=url)
    wrong = secret[:-1] + ("y" if secret.endswith("x") else "x")  # never the secret itself
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, wrong), "bedrock", REGION).add_auth(bad)
    r = requests.get(url, headers=dict(bad.headers), verify=str(CA), timeout=30)
    assert r.status_code == 403, r.text
