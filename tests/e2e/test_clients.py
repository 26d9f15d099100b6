"""Unmodified SDKs through the gateway, for all four Bedrock Runtime operations and
both identity modes: boto3 with a bearer key or with tenant SigV4 credentials
(verified by the sidecar, the secret never leaves it), and the Anthropic SDK's
AnthropicBedrock (SigV4 and api_key), create and stream.

Each call: the client sees what the emulator produced, the emulator saw the
tenant's profile ARN and the gateway's valid signature, and the ledger equals the
emulator's usage × price, exactly.
"""

from __future__ import annotations

import json
import ssl
from decimal import Decimal
from unittest import mock

import anthropic
import botocore.exceptions
import httpx2
import pytest

from harness import CA, cost, sigv4_client

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICE = {"input": "0.25", "output": "1.25", "cache_read": "0.03", "cache_write": "0.30"}
ANTHROPIC_VERSION = "bedrock-2023-05-31"


@pytest.fixture(scope="module", autouse=True)
def prices(stack):
    stack.set_price(HAIKU, **PRICE)
    stack.admin("PUT", "/v1/aliases/claude-3-haiku", {"model_id": HAIKU})


def arn_for(tenant: str) -> str:
    suffix = "".join(c for c in tenant if c.isalnum())[-24:]
    return f"arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/{suffix}"


@pytest.fixture
def tenant(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="5.00")
    stack.map_profile(tenant_id, HAIKU, arn_for(tenant_id))
    akid, secret = stack.issue_sigv4(tenant_id)
    return tenant_id, key, akid, secret


def anthropic_body(text: str, max_tokens: int = 200) -> bytes:
    return json.dumps({
        "anthropic_version": ANTHROPIC_VERSION, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }).encode()


def check_charged_exactly(stack, tenant_id: str, n: int) -> list[dict]:
    recs = stack.emulator_requests()[-n:]
    assert len(recs) == n
    for rec in recs:
        assert rec["model"] == arn_for(tenant_id), rec["raw_path"]
        assert rec["sigv4"]["ok"] and rec["sigv4"]["access_key_id"] == "AKIATOLLGATEEMULATOR"
        assert rec["usage"] is not None
    t = stack.settled(tenant_id, n)
    assert Decimal(t["balance"]["spent_usd"]) == sum((cost(r["usage"], PRICE) for r in recs), Decimal(0))
    assert t["balance"]["requests"] == n
    return recs


def all_four_operations(client) -> list:
    """Runs the four operations; returns (input, output) tokens each client saw."""
    seen = []
    msgs = [{"role": "user", "content": [{"text": "four operations " * 40}]}]
    out = client.converse(modelId=HAIKU, messages=msgs, inferenceConfig={"maxTokens": 120})
    seen.append((out["usage"]["inputTokens"], out["usage"]["outputTokens"]))

    out = client.converse_stream(modelId=HAIKU, messages=msgs, inferenceConfig={"maxTokens": 120})
    meta = [e["metadata"] for e in out["stream"] if "metadata" in e][0]
    seen.append((meta["usage"]["inputTokens"], meta["usage"]["outputTokens"]))

    out = client.invoke_model(modelId=HAIKU, body=anthropic_body("invoke me " * 30))
    body = json.loads(out["body"].read())
    headers = out["ResponseMetadata"]["HTTPHeaders"]
    assert int(headers["x-amzn-bedrock-input-token-count"]) == body["usage"]["input_tokens"]
    seen.append((body["usage"]["input_tokens"], body["usage"]["output_tokens"]))

    out = client.invoke_model_with_response_stream(modelId=HAIKU, body=anthropic_body("stream me " * 30))
    inp = outp = None
    for ev in out["body"]:
        chunk = json.loads(ev["chunk"]["bytes"])
        if chunk["type"] == "message_start":
            inp = chunk["message"]["usage"]["input_tokens"]
        if chunk["type"] == "message_delta":
            outp = chunk["usage"]["output_tokens"]
    seen.append((inp, outp))
    return seen


def assert_seen_matches(recs: list[dict], seen: list) -> None:
    for rec, (inp, outp) in zip(recs, seen):
        assert (rec["usage"]["input_tokens"], rec["usage"]["output_tokens"]) == (inp, outp)


def test_boto3_bearer_all_four_operations(stack, tenant):
    tenant_id, key, _, _ = tenant
    bearer = stack.bedrock(key)
    with bearer._env():
        import boto3
        import botocore.config

        client = boto3.client("bedrock-runtime", endpoint_url=stack.gateway_url, region_name="us-east-1",
                              verify=str(CA), config=botocore.config.Config(retries={"total_max_attempts": 1}))
        seen = all_four_operations(client)
    recs = check_charged_exactly(stack, tenant_id, 4)
    assert [r["operation"] for r in recs] == ["Converse", "ConverseStream", "InvokeModel",
                                              "InvokeModelWithResponseStream"]
    assert_seen_matches(recs, seen)
    # InvokeModel carries attribution in the request-metadata header.
    md = json.loads(recs[2]["headers"]["x-amzn-bedrock-request-metadata"])
    assert md["tenant_id"] == tenant_id


def test_boto3_sigv4_tenant_credentials_all_four_operations(stack, tenant):
    tenant_id, _, akid, secret = tenant
    seen = all_four_operations(sigv4_client(stack.gateway_url, akid, secret))
    recs = check_charged_exactly(stack, tenant_id, 4)
    assert_seen_matches(recs, seen)
    # The client's signature never reaches Bedrock; the gateway's replaces it.
    for rec in recs:
        assert akid not in rec["headers"]["authorization"]


def test_sigv4_wrong_secret_unknown_key_and_skew_are_refused(stack, tenant):
    tenant_id, _, akid, secret = tenant
    stack.clear_emulator()
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    cases = [
        (sigv4_client(stack.gateway_url, akid, secret[:-1] + ("A" if secret[-1] != "A" else "B")),
         "InvalidSignatureException"),
        (sigv4_client(stack.gateway_url, "TGAKNOTISSUEDATALL00", secret), "UnrecognizedClientException"),
    ]
    for client, code in cases:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client.converse(modelId=HAIKU, messages=msgs)
        assert e.value.response["Error"]["Code"] == code
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # A signature from 20 minutes ago.
    import datetime

    past = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    with mock.patch("botocore.auth.get_current_datetime", return_value=past):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            sigv4_client(stack.gateway_url, akid, secret).converse(modelId=HAIKU, messages=msgs)
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert "expired" in e.value.response["Error"]["Message"].lower()
    # Revoked credentials stop working on the next request.
    stack.admin("DELETE", f"/v1/tenants/{tenant_id}/sigv4-credentials/{akid}", expect=204)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        sigv4_client(stack.gateway_url, akid, secret).converse(modelId=HAIKU, messages=msgs)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert stack.emulator_requests() == []


def test_sigv4_signature_covers_the_body(stack, tenant):
    """A body changed after signing (a replay with a bigger prompt) is refused."""
    _, _, akid, secret = tenant
    client = sigv4_client(stack.gateway_url, akid, secret)

    def tamper(request, **_):
        request.body = request.body.replace(b"small", b"LARGE")

    client.meta.events.register("before-send.bedrock-runtime.Converse", tamper)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "small"}]}])
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"


@pytest.mark.parametrize("auth", ["sigv4", "api_key"])
def test_anthropic_bedrock_create_and_stream(stack, tenant, auth):
    tenant_id, key, akid, secret = tenant
    creds = ({"aws_access_key": akid, "aws_secret_key": secret} if auth == "sigv4" else {"api_key": key})
    client = anthropic.AnthropicBedrock(
        aws_region="us-east-1", base_url=stack.gateway_url, max_retries=0,
        http_client=httpx2.Client(verify=ssl.create_default_context(cafile=str(CA))), **creds,
    )
    msg = client.messages.create(model=HAIKU, max_tokens=150,
                                 messages=[{"role": "user", "content": "Hello from the Anthropic SDK " * 10}])
    with client.messages.stream(model=HAIKU, max_tokens=150,
                                messages=[{"role": "user", "content": "Stream from the Anthropic SDK " * 10}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    recs = check_charged_exactly(stack, tenant_id, 2)
    assert msg.usage.input_tokens == recs[0]["usage"]["input_tokens"]
    assert msg.usage.output_tokens == recs[0]["usage"]["output_tokens"]
    assert final.usage.output_tokens == recs[1]["usage"]["output_tokens"]
    assert len(text.split()) == recs[1]["usage"]["output_tokens"]


def test_anthropic_bedrock_budget_refusal_is_not_retried(stack, tenant_id):
    key = stack.create_tenant(tenant_id, budget="0.0001")
    client = anthropic.AnthropicBedrock(aws_region="us-east-1", base_url=stack.gateway_url, api_key=key,
                                        http_client=httpx2.Client(verify=ssl.create_default_context(cafile=str(CA))))
    stack.clear_emulator()
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model=HAIKU, max_tokens=4000, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 402
    assert "Budget exhausted" in str(e.value)
    assert stack.emulator_requests() == []


def test_langchain_chat_bedrock_converse(stack, tenant):
    from langchain_aws import ChatBedrockConverse

    tenant_id, _, akid, secret = tenant
    llm = ChatBedrockConverse(model=HAIKU, region_name="us-east-1", max_tokens=100,
                              client=sigv4_client(stack.gateway_url, akid, secret))
    reply = llm.invoke("Say hello through LangChain " * 5)
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Stream through LangChain " * 5))
    recs = check_charged_exactly(stack, tenant_id, 2)
    assert reply.usage_metadata["input_tokens"] == recs[0]["usage"]["input_tokens"]
    assert reply.usage_metadata["output_tokens"] == recs[0]["usage"]["output_tokens"]
    assert streamed


def test_curl_converse_and_raw_event_stream(stack, tenant, tmp_path):
    import subprocess

    import botocore.eventstream

    tenant_id, key, _, _ = tenant
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "curl says hi " * 10}]}]})
    base = ["curl", "-sS", "--fail-with-body", "--cacert", str(CA), "-H", f"Authorization: Bearer {key}",
            "-H", "content-type: application/json", "-d", body]
    out = subprocess.run(base + ["-D", str(tmp_path / "h"), f"{stack.gateway_url}/model/claude-3-haiku/converse"],
                         capture_output=True, check=True, timeout=30)
    reply = json.loads(out.stdout)
    headers = (tmp_path / "h").read_text().lower()
    assert "x-tollgate-request-id: tg-" in headers
    raw = subprocess.run(base + [f"{stack.gateway_url}/model/{HAIKU}/converse-stream"],
                         capture_output=True, check=True, timeout=30).stdout
    buf = botocore.eventstream.EventStreamBuffer()
    buf.add_data(raw)
    events = [m.headers[":event-type"] for m in buf]
    assert events[0] == "messageStart" and events[-1] == "metadata"
    recs = check_charged_exactly(stack, tenant_id, 2)
    assert reply["usage"]["outputTokens"] == recs[0]["usage"]["output_tokens"]


def test_envoy_exports_filter_metrics(stack, tenant):
    _, key, _, _ = tenant
    import requests as rq

    def counter(name: str) -> int:
        text = rq.get(f"http://127.0.0.1:{stack.envoy_admin}/stats?filter=tollgate", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"wasmcustom.tollgate.{name}:"):
                return int(line.split(":")[1])
        return 0

    allowed, denied = counter("requests.allowed"), counter("requests.rejected")
    stack.bedrock(key).call("converse", modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "m"}]}])
    rq.post(f"{stack.gateway_url}/nope", verify=str(CA), timeout=10)
    assert counter("requests.allowed") == allowed + 1
    assert counter("requests.rejected") == denied + 1
    stats = rq.get(f"http://127.0.0.1:{stack.envoy_admin}/stats?filter=reserve_ms", timeout=5).text
    assert "wasmcustom.tollgate.reserve_ms" in stats
