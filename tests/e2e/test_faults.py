"""Faults end to end: whatever goes wrong, the ledger ends with no open hold and
no charge missing or doubled. Upstream errors release; streams cut, corrupted or
broken by an exception are charged from what was seen and flagged `estimated`; a
sidecar crash between reserve and commit delays the commit, never loses it."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import botocore.eventstream
import botocore.exceptions
import pytest
import urllib3

from harness import cost

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICE = {"input": "0.25", "output": "1.25", "cache_read": "0.03", "cache_write": "0.30"}
STREAM_ERRORS = (botocore.eventstream.ParserError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, urllib3.exceptions.HTTPError)


@pytest.fixture(scope="module", autouse=True)
def prices(stack):
    stack.set_price(HAIKU, **PRICE)


@pytest.fixture
def key(stack, tenant_id):
    return stack.create_tenant(tenant_id, budget="5.00")


def converse_stream_events(stack, key, text, max_tokens=300):
    out = stack.bedrock(key).call("converse_stream", modelId=HAIKU,
                                  messages=[{"role": "user", "content": [{"text": text}]}],
                                  inferenceConfig={"maxTokens": max_tokens})
    return out["events"]


def anthropic_body(text: str) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300,
                       "messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize("fault", ["stream-exception", "stream-cut", "corrupt-frame"])
def test_broken_converse_streams_are_charged_as_estimated(stack, key, tenant_id, fault):
    stack.clear_emulator()
    with pytest.raises(STREAM_ERRORS):
        converse_stream_events(stack, key, f"[[fault:{fault}]] tell me a long story " * 20)
    t = stack.settled(tenant_id, 1)
    spent = Decimal(t["balance"]["spent_usd"])
    assert spent > 0
    assert Decimal(t["balance"]["reserved_usd"]) == 0
    row = stack.usage(tenant_id)
    assert row["requests"] == 1 and row["estimated_requests"] == 1
    # Nothing was under-counted: the input estimate is an upper bound of what
    # Bedrock read, and it was charged.
    rec = stack.emulator_requests()[-1]
    assert rec["fault"] == fault
    text = f"[[fault:{fault}]] tell me a long story " * 20
    assert t["balance"]["input_tokens"] >= (len(text.encode()) + 3) // 4


def test_invoke_stream_exception_keeps_the_exact_input_count(stack, key, tenant_id):
    stack.clear_emulator()
    text = "[[fault:stream-exception]] invoke stream " * 20
    with pytest.raises(STREAM_ERRORS):
        stack.bedrock(key).call("invoke_model_with_response_stream", modelId=HAIKU, body=anthropic_body(text))
    stack.settled(tenant_id, 1)
    t = stack.tenant(tenant_id)
    expected_input = (len(text.encode()) + 3) // 4
    # message_start reported the input tokens before the stream broke.
    assert t["balance"]["input_tokens"] == expected_input
    assert stack.usage(tenant_id)["estimated_requests"] == 1


@pytest.mark.parametrize("fault,code", [("throttle", "ThrottlingException"), ("unavailable", "ServiceUnavailableException"),
                                        ("validation", "ValidationException"), ("internal", "InternalServerException")])
def test_upstream_errors_on_streams_release(stack, key, tenant_id, fault, code):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        converse_stream_events(stack, key, f"[[fault:{fault}]] hi")
    assert e.value.response["Error"]["Code"] == code
    t = stack.settled(tenant_id, 0)
    assert Decimal(t["balance"]["spent_usd"]) == 0
    assert Decimal(t["balance"]["reserved_usd"]) == 0


def test_client_disconnect_mid_stream_is_charged_for_what_was_generated(stack, key, tenant_id):
    stack.clear_emulator()
    client_out = {}

    with stack.bedrock(key)._env():
        import boto3
        import botocore.config

        from harness import CA

        client = boto3.client("bedrock-runtime", endpoint_url=stack.gateway_url, region_name="us-east-1",
                              verify=str(CA), config=botocore.config.Config(retries={"total_max_attempts": 1}))
        out = client.converse_stream(
            modelId=HAIKU, inferenceConfig={"maxTokens": 400},
            messages=[{"role": "user", "content": [{"text": "[[delay:150]] a slow story " * 40}]}])
        stream = out["stream"]
        seen = []
        for ev in stream:
            seen.append(ev)
            if len(seen) == 3:
                break
        stream.close()  # the client goes away mid-generation
        client_out["events"] = seen
    t = stack.settled(tenant_id, 1, timeout=30)
    assert Decimal(t["balance"]["reserved_usd"]) == 0
    assert Decimal(t["balance"]["spent_usd"]) > 0
    assert stack.usage(tenant_id)["estimated_requests"] == 1
    # Far less than the full generation was charged.
    full = stack.emulator_requests()[-1]
    assert t["balance"]["output_tokens"] < (full["usage"] or {}).get("output_tokens", 10**9)


def test_sidecar_crash_between_reserve_and_commit_delays_but_keeps_the_charge(stack, key, tenant_id):
    stack.clear_emulator()
    done = threading.Event()
    result = {}

    def slow_stream():
        try:
            result["events"] = converse_stream_events(stack, key, "[[delay:100]] crash story " * 30, max_tokens=120)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e
        done.set()

    th = threading.Thread(target=slow_stream)
    th.start()
    # Wait until the request has been reserved and is streaming, then crash the sidecar.
    deadline = time.monotonic() + 20
    while not stack.emulator_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    stack.kill_sidecar()
    assert done.wait(60), "stream did not finish"
    th.join()
    assert "error" not in result, result
    # The stream completed while the sidecar was down; the commit is queued.
    time.sleep(1)
    stack.restart_sidecar()
    rec = stack.emulator_requests()[-1]
    t = stack.settled(tenant_id, 1, timeout=45)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], PRICE)
    assert Decimal(t["balance"]["reserved_usd"]) == 0
    assert stack.usage(tenant_id)["estimated_requests"] == 0
    # Retried deliveries did not charge twice.
    time.sleep(1.5)
    assert Decimal(stack.tenant(tenant_id)["balance"]["spent_usd"]) == cost(rec["usage"], PRICE)


def test_sidecar_down_at_reserve_time_fails_closed(stack, key, tenant_id):
    stack.clear_emulator()
    stack.kill_sidecar()
    try:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            stack.bedrock(key).call("converse", modelId=HAIKU,
                                    messages=[{"role": "user", "content": [{"text": "hi"}]}])
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert e.value.response["Error"]["Code"] == "ServiceUnavailableException"
        assert stack.emulator_requests() == []
    finally:
        stack.restart_sidecar()


def test_failure_mode_open_forwards_and_charges_later(stack, key, tenant_id):
    import requests

    from harness import CA

    gateway = stack.start_edge_envoy("open", {"failure_mode": "open"})
    stack.clear_emulator()
    stack.kill_sidecar()
    try:
        body = {"messages": [{"role": "user", "content": [{"text": "served while the ledger is down"}]}]}
        r = requests.post(f"{gateway}/model/{HAIKU}/converse", json=body, verify=str(CA), timeout=15,
                          headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        # No credential is still refused, even open.
        r2 = requests.post(f"{gateway}/model/{HAIKU}/converse", json=body, verify=str(CA), timeout=15)
        assert r2.status_code == 401
    finally:
        stack.restart_sidecar()
    rec = stack.emulator_requests()[-1]
    assert rec["model"] == HAIKU and rec["sigv4"]["ok"]
    assert len(stack.emulator_requests()) == 1
    t = stack.settled(tenant_id, 1, timeout=45)
    assert Decimal(t["balance"]["spent_usd"]) == cost(rec["usage"], PRICE)
    assert r.json()["usage"]["outputTokens"] == rec["usage"]["output_tokens"]
