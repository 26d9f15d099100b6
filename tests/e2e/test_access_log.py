"""Envoy's access log carries what Tollgate metered: the filter publishes tenant,
application, request id, model, tokens and cost as filter state
`wasm.tollgate.*`, and the template's access log (envoy/emulator.yaml, the same
block as envoy/aws.yaml) writes them as one JSON line per request. The cost in the
log must be the cost the ledger charged."""

import json
import time
from decimal import Decimal

import pytest
import requests

from harness import CA, HAIKU
from harness import HAIKU_PRICE as PRICE


def access_log_line(stack, request_id: str, timeout: float = 10) -> dict:
    """The JSON access-log line Envoy wrote for `request_id` (Envoy's stdout is
    the harness's envoy.log; access-log lines are flushed within a second)."""
    log = stack.procs["envoy"].log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                return json.loads(line)
        time.sleep(0.2)
    raise AssertionError(f"no access-log line for {request_id} in {log}")


def converse(stack, key: str, text: str, **headers: str) -> requests.Response:
    body = {"messages": [{"role": "user", "content": [{"text": text}]}], "inferenceConfig": {"maxTokens": 64}}
    return requests.post(f"{stack.gateway_url}/model/{HAIKU}/converse", json=body, verify=str(CA), timeout=30,
                         headers={"Authorization": f"Bearer {key}", **headers})


def test_the_access_log_carries_tenant_tokens_and_the_charged_cost(priced, tenant_id):
    stack = priced
    key = stack.create_tenant(tenant_id, budget="10.00")
    r = converse(stack, key, "tell me about gateways", **{"x-application-id": "chat-bot"})
    assert r.status_code == 200, r.text
    request_id = r.headers["x-tollgate-request-id"]
    entry = access_log_line(stack, request_id)
    usage = r.json()["usage"]
    assert entry["tenant_id"] == tenant_id
    assert entry["application_id"] == "chat-bot"
    assert entry["request_id"] == request_id
    assert entry["model"] == HAIKU
    assert entry["status"] == 200
    assert int(entry["input_tokens"]) == usage["inputTokens"]
    assert int(entry["output_tokens"]) == usage["outputTokens"]
    assert entry["estimated"] == "false"
    charged = Decimal(stack.settled(tenant_id, 1)["balance"]["spent_usd"])
    assert Decimal(entry["cost_usd"]) == charged > 0
    # The bearer key never reaches the log.
    assert key not in json.dumps(entry)


def test_a_streamed_answer_is_logged_with_its_stream_usage(priced, tenant_id):
    stack = priced
    key = stack.create_tenant(tenant_id, budget="10.00")
    out = stack.bedrock(key).call(
        "converse_stream", modelId=HAIKU, inferenceConfig={"maxTokens": 120},
        messages=[{"role": "user", "content": [{"text": "stream a few words please"}]}])
    request_id = out["ResponseMetadata"]["HTTPHeaders"]["x-tollgate-request-id"]
    usage = next(e["metadata"]["usage"] for e in out["events"] if "metadata" in e)
    entry = access_log_line(stack, request_id)
    assert entry["tenant_id"] == tenant_id
    assert entry["application_id"] is None, "no application was named"
    assert int(entry["input_tokens"]) == usage["inputTokens"]
    assert int(entry["output_tokens"]) == usage["outputTokens"]
    charged = Decimal(stack.settled(tenant_id, 1)["balance"]["spent_usd"])
    assert Decimal(entry["cost_usd"]) == charged > 0


def test_a_refused_request_is_logged_without_a_tenant_charge(priced, tenant_id):
    stack = priced
    key = stack.create_tenant(tenant_id, budget="0.000001")
    r = converse(stack, key, "too expensive")
    assert r.status_code == 402, r.text
    # Refused before admission: the line carries the request id the client got
    # back, and nothing metered.
    entry = access_log_line(stack, r.headers["x-tollgate-request-id"])
    assert entry["status"] == 402
    assert entry["cost_usd"] is None and entry["input_tokens"] is None
    assert Decimal(stack.tenant(tenant_id)["balance"]["spent_usd"]) == 0
