"""Application and user budgets inside the tenant budget, through Envoy with
real clients: boto3 naming its user in Converse `requestMetadata`, the
Anthropic SDK naming it in `x-user-id`, a key bound to an application, and an
application claimed in `x-application-id`. A refused request never reaches
Bedrock; each level's ledger equals the emulator's usage × price."""

from __future__ import annotations

import ssl
from decimal import Decimal

import anthropic
import boto3
import botocore.config
import botocore.exceptions
import httpx2
import pytest

from harness import CA, HAIKU, REGION, cost
from harness import HAIKU_PRICE as PRICE


def converse(stack, key: str, user: str | None, text: str = "hello") -> dict:
    kwargs = {"requestMetadata": {"user_id": user}} if user else {}
    return stack.bedrock(key).call(
        "converse", modelId=HAIKU, messages=[{"role": "user", "content": [{"text": text}]}],
        inferenceConfig={"maxTokens": 200}, **kwargs,
    )


def refused(stack, key: str, user: str | None) -> str:
    """The 402 a refused call gets, with its message; Bedrock never saw it."""
    stack.clear_emulator()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        converse(stack, key, user)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 402, err
    assert err["Error"]["Code"] == "BudgetExceededException", err
    assert stack.emulator_requests() == []
    return err["Error"]["Message"]


def charged(out: dict) -> Decimal:
    """What a call costs by the usage the client was told."""
    u = out["usage"]
    return cost({"input_tokens": u["inputTokens"], "output_tokens": u["outputTokens"]}, PRICE)


def test_user_budgets_cap_each_user_and_charge_exactly(priced, tenant_id):
    stack = priced
    key = stack.create_tenant(
        tenant_id, budget="10.00",
        user_budgets={"alice": "1.00", "mallory": "0.000001"},
        default_user_budget_usd="0.5",
    )
    alice_cost = sum(charged(converse(stack, key, "alice", f"question {i}")) for i in range(3))
    converse(stack, key, "bob")  # under the default user budget
    converse(stack, key, None)  # no user: the tenant budget alone
    ledger = stack.settled(tenant_id, 5)["balance"]

    users = ledger["by_user"]
    assert Decimal(users["alice"]["spent_usd"]) == alice_cost > 0
    assert users["alice"]["requests"] == 3
    assert Decimal(users["alice"]["available_usd"]) == Decimal("1.00") - alice_cost
    assert Decimal(users["bob"]["budget_usd"]) == Decimal("0.5")
    assert users["bob"]["requests"] == 1
    assert Decimal(users["mallory"]["spent_usd"]) == 0

    assert refused(stack, key, "mallory").startswith(
        f"User budget exhausted for tenant {tenant_id}, user mallory: available $0.000001,"
    )

    # Alice's budget cut to what she spent plus less than one hold: refused,
    # while everyone else still gets through.
    stack.admin("PUT", f"/v1/tenants/{tenant_id}", {
        "budget_usd": "10.00", "user_budgets": {"alice": str(alice_cost + Decimal("0.0001"))},
        "default_user_budget_usd": "0.5",
    })
    assert refused(stack, key, "alice").startswith(
        f"User budget exhausted for tenant {tenant_id}, user alice: available $0.0001,"
    )
    converse(stack, key, "bob")
    converse(stack, key, None)
    alerts = {(a["scope"], a["kind"]) for a in stack.tenant(tenant_id)["alerts"]}
    assert {("user:mallory", "exhausted"), ("user:alice", "exhausted")} <= alerts, alerts
    assert not any(scope == "tenant" for scope, _ in alerts), alerts


def test_the_anthropic_sdk_names_its_user_in_a_header(priced, tenant_id):
    stack = priced
    key = stack.create_tenant(tenant_id, budget="10.00", user_budgets={"carol": "0.000001"})
    client = anthropic.AnthropicBedrock(
        aws_region="us-east-1", base_url=stack.gateway_url, api_key=key, max_retries=0,
        http_client=httpx2.Client(verify=ssl.create_default_context(cafile=str(CA))),
    )
    stack.clear_emulator()
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model=HAIKU, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"x-user-id": "carol"})
    assert e.value.status_code == 402
    assert "User budget exhausted" in str(e.value)
    assert stack.emulator_requests() == []
    # Another user of the same key is not held to carol's budget.
    msg = client.messages.create(model=HAIKU, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                 extra_headers={"x-user-id": "dave"})
    assert msg.usage.output_tokens > 0


def test_application_budgets_follow_the_key_binding_and_the_header(priced, tenant_id):
    stack = priced
    stack.create_tenant(tenant_id, budget="10.00",
                        application_budgets={"ops-bot": "0.000001", "reporting": "1.00"})
    bound = stack.admin("POST", f"/v1/tenants/{tenant_id}/keys", {"application_id": "ops-bot"}, expect=201)["key"]
    free = stack.admin("POST", f"/v1/tenants/{tenant_id}/keys", {"application_id": None}, expect=201)["key"]

    assert refused(stack, bound, None).startswith(
        f"Application budget exhausted for tenant {tenant_id}, application ops-bot: available $0.000001,"
    )
    # boto3 with the application in a header, as an SDK event hook adds it.
    rt = boto3.client("bedrock-runtime", endpoint_url=stack.gateway_url, region_name=REGION, verify=str(CA),
                      aws_access_key_id="AKIANOTATENANT", aws_secret_access_key="unused",
                      config=botocore.config.Config(retries={"total_max_attempts": 1}))

    def bearer_and_app(request, **_):
        request.headers["Authorization"] = f"Bearer {free}"
        request.headers["x-application-id"] = "reporting"

    rt.meta.events.register("before-send.bedrock-runtime.Converse", bearer_and_app)
    out = rt.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "report"}]}],
                      inferenceConfig={"maxTokens": 100})
    ledger = stack.settled(tenant_id, 1)["balance"]
    app = ledger["by_application"]["reporting"]
    assert app["requests"] == 1
    assert Decimal(app["spent_usd"]) == charged(out) > 0
    assert Decimal(ledger["by_application"]["ops-bot"]["spent_usd"]) == 0
