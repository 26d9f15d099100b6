"""End to end through real Envoy + the Wasm filter + the sidecar + the emulator,
driven by boto3 exactly as a user runs it (bearer key in AWS_BEARER_TOKEN_BEDROCK).

For each call: the client sees what the emulator sent, the emulator saw the
tenant's application-inference-profile ARN and a valid gateway signature, and the
ledger equals the emulator's usage × the price table, exactly.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import botocore.exceptions
import pytest
import requests

from harness import CA, cost

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_PRICE = {"input": "0.25", "output": "1.25", "cache_read": "0.03", "cache_write": "0.30"}
SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
SONNET_PRICE = {"input": "3.00", "output": "15.00"}


@pytest.fixture(scope="module", autouse=True)
def prices(stack):
    stack.set_price(HAIKU, **HAIKU_PRICE)
    stack.set_price(SONNET, **SONNET_PRICE)
    stack.admin("PUT", "/v1/aliases/claude-3-haiku", {"model_id": HAIKU})


def arn_for(tenant: str) -> str:
    suffix = "".join(c for c in tenant if c.isalnum())[-20:]
    return f"arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/{suffix}"


@pytest.fixture
def tenant(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="5.00", allowed_models=["claude-3-haiku", SONNET])
    stack.map_profile(tenant_id, HAIKU, arn_for(tenant_id))
    return tenant_id, key


def messages(text: str) -> list:
    return [{"role": "user", "content": [{"text": text}]}]


def last_emulator_request(stack) -> dict:
    reqs = stack.emulator_requests()
    assert reqs, "nothing reached the emulator"
    return reqs[-1]


def assert_forwarded_correctly(stack, tenant_id: str, rec: dict) -> None:
    assert rec["model"] == arn_for(tenant_id), rec["raw_path"]
    assert "%2F" in rec["raw_path"], rec["raw_path"]
    assert rec["sigv4"]["ok"], rec["sigv4"]
    assert rec["sigv4"]["access_key_id"] == "AKIATOLLGATEEMULATOR"
    headers = rec["headers"]
    assert "x-tenant-id" not in headers
    assert not headers["authorization"].lower().startswith("bearer")


def test_converse_is_routed_signed_and_charged_exactly(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    out = stack.bedrock(key).call(
        "converse", modelId="claude-3-haiku", messages=messages("Explain budgets in one line. " * 20),
        inferenceConfig={"maxTokens": 200},
        requestMetadata={"user_id": "alice", "tenant_id": "forged"},
    )
    rec = last_emulator_request(stack)
    assert_forwarded_correctly(stack, tenant_id, rec)
    usage = out["usage"]
    assert usage["inputTokens"] == rec["usage"]["input_tokens"]
    assert usage["outputTokens"] == rec["usage"]["output_tokens"]
    # Attribution reached Bedrock's requestMetadata; the client cannot forge the tenant.
    md = rec["body_json"]["requestMetadata"]
    assert md["tenant_id"] == tenant_id
    assert md["user_id"] == "alice"
    assert md["request_id"].startswith("tg-")
    headers = out["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-tollgate-request-id"] == md["request_id"]
    assert Decimal(headers["x-tollgate-budget-remaining"]) < Decimal("5.00")

    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], HAIKU_PRICE)
    assert t["balance"]["input_tokens"] == usage["inputTokens"]
    assert t["balance"]["output_tokens"] == usage["outputTokens"]


def test_converse_stream_passes_frames_and_charges_exactly(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    out = stack.bedrock(key).call(
        "converse_stream", modelId=HAIKU, messages=messages("stream me a story " * 30),
        inferenceConfig={"maxTokens": 300},
    )
    events = out["events"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    meta = next(e["metadata"] for e in events if "metadata" in e)
    rec = last_emulator_request(stack)
    assert_forwarded_correctly(stack, tenant_id, rec)
    assert meta["usage"]["outputTokens"] == rec["usage"]["output_tokens"]
    assert len(text.split()) == rec["usage"]["output_tokens"]
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], HAIKU_PRICE)


def test_cache_tokens_are_priced_at_their_own_rates(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    out = stack.bedrock(key).call(
        "converse", modelId=HAIKU, messages=messages("[[cache:read=4000,write=1000]] hello"),
    )
    assert out["usage"]["cacheReadInputTokens"] == 4000
    rec = last_emulator_request(stack)
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], HAIKU_PRICE)
    assert t["balance"]["cache_read_input_tokens"] == 4000


def test_tenant_without_a_profile_is_sent_to_the_model_id(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    stack.bedrock(key).call("converse", modelId=SONNET, messages=messages("hi"))
    rec = last_emulator_request(stack)
    assert rec["model"] == SONNET
    assert rec["sigv4"]["ok"]
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], SONNET_PRICE)


def client_error(fn) -> botocore.exceptions.ClientError:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        fn()
    return e.value


def test_refusals_are_bedrock_shaped_and_never_forwarded(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    cases = [
        # boto3 without a Tollgate key signs with whatever AWS keys it has: not a tenant.
        (None, HAIKU, 403, "UnrecognizedClientException"),
        ("tg_not_a_real_key", HAIKU, 403, "UnrecognizedClientException"),
        (key, "anthropic.claude-3-opus-20240229-v1:0", 403, "AccessDeniedException"),
        (key, "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/someoneelse", 403,
         "AccessDeniedException"),
    ]
    for k, model, status, code in cases:
        err = client_error(lambda: stack.bedrock(k).call("converse", modelId=model, messages=messages("x")))
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status, (k, model, err.response)
        assert err.response["Error"]["Code"] == code, (k, model, err.response)
        assert err.response["Error"]["Message"]
        assert err.response["ResponseMetadata"]["HTTPHeaders"]["x-tollgate-request-id"].startswith("tg-")
    # No credential at all.
    r = requests.post(f"{stack.gateway_url}/model/{HAIKU}/converse", json={"messages": messages("x")},
                      timeout=10, verify=CA)
    assert r.status_code == 401, r.text
    assert r.headers["x-amzn-errortype"] == "UnrecognizedClientException"
    assert stack.emulator_requests() == []


def test_malformed_requests_get_validation_errors(stack, tenant):
    tenant_id, key = tenant
    stack.clear_emulator()
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    base = stack.gateway_url
    cases = [
        (f"{base}/model/{HAIKU}/converse", b"{not json", 400),
        (f"{base}/model/{HAIKU}/converse", b"[1,2]", 400),
        (f"{base}/model/{HAIKU}/converse", b'{"inferenceConfig":{"maxTokens":-5}}', 400),
        (f"{base}/model/{HAIKU}/count-tokens", b"{}", 404),
        (f"{base}/guardrail/x/version/1/apply", b"{}", 404),
        (f"{base}/", b"{}", 404),
    ]
    for url, body, status in cases:
        r = requests.post(url, data=body, headers=auth, timeout=10, verify=CA)
        assert r.status_code == status, (url, body, r.status_code, r.text)
        assert r.headers["x-amzn-errortype"] == "ValidationException"
        assert json.loads(r.text)["message"]
    r = requests.get(f"{base}/model/{HAIKU}/converse", headers=auth, timeout=10, verify=CA)
    assert r.status_code == 400 and r.headers["x-amzn-errortype"] == "ValidationException"
    assert stack.emulator_requests() == []


def test_forged_tenant_header_is_ignored(stack, tenant, tenant_id):
    _, key = tenant
    victim = tenant_id + "-victim"
    stack.create_tenant(victim, budget="1.00")
    stack.clear_emulator()
    # No credential but a claimed tenant: refused (trusted header is off by default).
    r = requests.post(f"{stack.gateway_url}/model/{HAIKU}/converse", json={"messages": messages("x")},
                      headers={"x-tenant-id": victim}, timeout=10, verify=CA)
    assert r.status_code == 401
    # A real key plus someone else's tenant header: charged to the key's tenant.
    r = requests.post(f"{stack.gateway_url}/model/{HAIKU}/converse", json={"messages": messages("x")},
                      headers={"x-tenant-id": victim, "Authorization": f"Bearer {key}"}, timeout=10, verify=CA)
    assert r.status_code == 200, r.text
    assert "x-tenant-id" not in stack.emulator_requests()[-1]["headers"]
    stack.settled(tenant_id, 1)
    assert Decimal(stack.tenant(victim)["balance"]["spent_usd"]) == 0


def test_upstream_errors_release_the_hold(stack, tenant):
    tenant_id, key = tenant
    for fault, code in [("throttle", "ThrottlingException"), ("internal", "InternalServerException"),
                        ("validation", "ValidationException")]:
        err = client_error(lambda: stack.bedrock(key).call(
            "converse", modelId=HAIKU, messages=messages(f"[[fault:{fault}]] hi")))
        assert err.response["Error"]["Code"] == code
    t = stack.settled(tenant_id, 0)
    assert Decimal(t["balance"]["spent_usd"]) == 0
    assert Decimal(t["balance"]["reserved_usd"]) == 0


def test_budget_exhaustion_is_a_402_budget_exceeded(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="0.001")
    err = client_error(lambda: stack.bedrock(key).call(
        "converse", modelId=HAIKU, messages=messages("hi"), inferenceConfig={"maxTokens": 4096}))
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    assert err.response["Error"]["Code"] == "BudgetExceededException"
    assert err.response["ResponseMetadata"]["HTTPHeaders"]["x-should-retry"] == "false"
    # A smaller request that fits is admitted.
    stack.bedrock(key).call("converse", modelId=HAIKU, messages=messages("hi"), inferenceConfig={"maxTokens": 50})
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["spent_usd"]) <= Decimal("0.001")


def test_tenant_max_tokens_cap_clamps_the_request(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="5.00", max_tokens_cap=64)
    stack.clear_emulator()
    out = stack.bedrock(key).call("converse", modelId=HAIKU, messages=messages("word " * 2000),
                                  inferenceConfig={"maxTokens": 4000})
    rec = last_emulator_request(stack)
    assert rec["body_json"]["inferenceConfig"]["maxTokens"] == 64
    assert out["usage"]["outputTokens"] == 64
    assert out["stopReason"] == "max_tokens"


def test_rate_limited_tenant_gets_throttling_with_retry_after(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="5.00", rate_limit_rpm=1)
    stack.clear_emulator()
    # Limits count per UTC minute: keep both calls in one.
    if time.gmtime().tm_sec >= 50:
        time.sleep(61 - time.gmtime().tm_sec)
    ok = stack.bedrock(key).call("converse", modelId=HAIKU, messages=messages("first"))
    # IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers) on the 200 and the 429.
    headers = ok["ResponseMetadata"]["HTTPHeaders"]
    assert headers["ratelimit-policy"] == '"rpm";q=1;w=60'
    assert headers["ratelimit"].startswith('"rpm";r=0;t=')
    err = client_error(lambda: stack.bedrock(key).call("converse", modelId=HAIKU, messages=messages("second")))
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err.response["Error"]["Code"] == "ThrottlingException"
    headers = err.response["ResponseMetadata"]["HTTPHeaders"]
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 60
    assert headers["ratelimit-policy"] == '"rpm";q=1;w=60'
    assert headers["ratelimit"] == f'"rpm";r=0;t={retry}'
    assert len(stack.emulator_requests()) == 1
    t = stack.settled(tenant_id, 1)
    assert Decimal(t["balance"]["reserved_usd"]) == 0
