"""Fidelity tests for tests/bedrock-emulator, driven directly by real clients.

boto3/botocore (SigV4 signing, rest-json and event-stream parsing with CRC
checks) and the Anthropic SDK's AnthropicBedrock talk to the emulator with no
proxy in between; every expected token count comes from the documented formula:

    input_tokens  = max(1, ceil(utf8_bytes(text) / 4))
    output_tokens = min(max_tokens (default 512), 20 + input_tokens // 2)

Run: .tollgate/venv/bin/python -m pytest tests/e2e/test_emulator_fidelity.py
(needs `cargo build -p bedrock-emulator`; TOLLGATE_BIN_DIR overrides target/debug).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import anthropic
import boto3
import botocore.auth
import botocore.config
import botocore.eventstream
import botocore.exceptions
import pytest
import requests
import urllib3

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("TOLLGATE_BIN_DIR", REPO / "target" / "debug"))
AKID = "AKIATOLLGATEEMULATOR"
SECRET = "tollgate-emulator-secret"
REGION = "us-east-1"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
ANTHROPIC_VERSION = "bedrock-2023-05-31"


def input_tokens(*texts: str) -> int:
    n = sum(len(t.encode("utf-8")) for t in texts)
    return max(1, -(-n // 4))


def output_tokens(inp: int, max_tokens: int = 512) -> int:
    return min(max_tokens, 20 + inp // 2)


def expected_text(n: int) -> str:
    return " ".join(f"tok{i}" for i in range(n))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_emulator(*extra_args: str):
    """Starts the emulator on a free 127.0.0.1 port; yields its base URL."""
    binary = BIN_DIR / "bedrock-emulator"
    if not binary.exists():
        pytest.fail(f"{binary} not found: run `cargo build -p bedrock-emulator` first")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="bedrock-emulator-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [str(binary), "--listen", f"127.0.0.1:{port}", *extra_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("BEDROCK_EMULATOR_")},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"emulator exited with {proc.returncode}: {Path(log.name).read_text()}")
            try:
                if requests.get(f"{url}/_emulator/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("emulator did not become healthy within 30 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="module")
def emulator():
    with run_emulator() as url:
        yield url


@pytest.fixture(autouse=True)
def clear_records(emulator):
    requests.delete(f"{emulator}/_emulator/requests", timeout=5).raise_for_status()


def make_client(url: str, secret: str = SECRET, akid: str = AKID):
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        # `max_attempts` counts retries (so 1 would mean two requests);
        # `total_max_attempts` includes the first attempt: exactly one request.
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def client(emulator):
    return make_client(emulator)


def records(url: str) -> list[dict]:
    r = requests.get(f"{url}/_emulator/requests", timeout=5)
    r.raise_for_status()
    return r.json()


def only_record(url: str) -> dict:
    recs = records(url)
    assert len(recs) == 1, recs
    return recs[0]


def converse_args(model: str, text: str, system: str | None = None, max_tokens: int | None = None):
    args = {"modelId": model, "messages": [{"role": "user", "content": [{"text": text}]}]}
    if system is not None:
        args["system"] = [{"text": system}]
    if max_tokens is not None:
        args["inferenceConfig"] = {"maxTokens": max_tokens}
    return args


def anthropic_body(text: str, max_tokens: int = 512, system: str | None = None) -> bytes:
    body = {
        "anthropic_version": ANTHROPIC_VERSION,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    if system is not None:
        body["system"] = system
    return json.dumps(body).encode()


def decode_invoke_stream(resp) -> list[dict]:
    out = []
    for event in resp["body"]:
        assert set(event) == {"chunk"}, event
        out.append(json.loads(event["chunk"]["bytes"]))
    return out


# --------------------------------------------------------------------------- Converse


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_converse_counts_and_routing(emulator, client, model):
    system, text = "You are terse.", "Count the tokens in this sentence, please. ✓"
    inp = input_tokens(system, text)
    out = output_tokens(inp)
    resp = client.converse(**converse_args(model, text, system=system))
    assert resp["usage"] == {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out}
    assert resp["stopReason"] == "end_turn"
    assert resp["output"]["message"]["role"] == "assistant"
    assert resp["output"]["message"]["content"] == [{"text": expected_text(out)}]
    assert resp["metrics"]["latencyMs"] >= 0
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]

    rec = only_record(emulator)
    assert rec["operation"] == "Converse"
    assert rec["model"] == model
    assert rec["sigv4"] == {"ok": True, "access_key_id": AKID, "error": None}
    assert rec["status"] == 200
    assert rec["usage"] == {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_input_tokens": 0,
        "cache_write_input_tokens": 0,
    }
    assert rec["body_json"]["messages"][0]["content"][0]["text"] == text
    assert rec["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + AKID)
    assert all(k == k.lower() for k in rec["headers"])
    if model == PROFILE_ARN:
        # boto3 encodes ':' and '/' in the label; the emulator saw the raw form.
        assert "arn%3Aaws%3Abedrock" in rec["raw_path"]
        assert "application-inference-profile%2Fabc123" in rec["raw_path"]


def test_converse_max_tokens_and_cache_marker(emulator, client):
    text = "[[cache:read=1000,write=24]] cached prompt"
    inp = input_tokens(text)
    resp = client.converse(**converse_args(MODEL, text, max_tokens=5))
    assert resp["stopReason"] == "max_tokens"
    assert resp["usage"]["inputTokens"] == inp
    assert resp["usage"]["outputTokens"] == 5
    assert resp["usage"]["cacheReadInputTokens"] == 1000
    assert resp["usage"]["cacheWriteInputTokens"] == 24
    assert resp["usage"]["totalTokens"] == inp + 5 + 1024
    assert only_record(emulator)["usage"]["cache_read_input_tokens"] == 1000


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_converse_stream(emulator, client, model):
    text = "stream me " * 30
    inp = input_tokens(text)
    out = output_tokens(inp)
    resp = client.converse_stream(**converse_args(model, text))
    kinds, deltas, metadata, stop = [], [], None, None
    for event in resp["stream"]:  # botocore validates both CRCs of every frame
        (kind,) = event.keys()
        kinds.append(kind)
        if kind == "contentBlockDelta":
            assert event[kind]["contentBlockIndex"] == 0
            deltas.append(event[kind]["delta"]["text"])
        elif kind == "messageStop":
            stop = event[kind]["stopReason"]
        elif kind == "metadata":
            metadata = event[kind]
    assert kinds[0] == "messageStart"
    assert kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert len(deltas) > 1
    assert "".join(deltas) == expected_text(out)
    assert stop == "end_turn"
    assert metadata["usage"] == {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out}
    assert "latencyMs" in metadata["metrics"]
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    rec = only_record(emulator)
    assert (rec["operation"], rec["model"], rec["sigv4"]["ok"]) == ("ConverseStream", model, True)
    assert rec["usage"]["output_tokens"] == out


# ------------------------------------------------------------------------ InvokeModel


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_invoke_model_anthropic(emulator, client, model):
    system, text = "sys prompt", "What is a budget? Answer briefly."
    inp = input_tokens(system, text)
    out = output_tokens(inp, 300)
    resp = client.invoke_model(modelId=model, body=anthropic_body(text, 300, system=system))
    body = json.loads(resp["body"].read())
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": expected_text(out)}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"] == {"input_tokens": inp, "output_tokens": out}
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == str(inp)
    assert headers["x-amzn-bedrock-output-token-count"] == str(out)
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0
    assert headers["content-type"] == "application/json"
    rec = only_record(emulator)
    assert (rec["operation"], rec["model"], rec["sigv4"]["ok"]) == ("InvokeModel", model, True)


def test_invoke_model_cache_headers(emulator, client):
    text = "[[cache:read=7,write=3]]"
    resp = client.invoke_model(modelId=MODEL, body=anthropic_body(text))
    body = json.loads(resp["body"].read())
    assert body["usage"]["cache_read_input_tokens"] == 7
    assert body["usage"]["cache_creation_input_tokens"] == 3
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-cache-read-input-token-count"] == "7"
    assert headers["x-amzn-bedrock-cache-write-input-token-count"] == "3"


@pytest.mark.parametrize(
    "model,body,check",
    [
        (
            "amazon.titan-text-express-v1",
            {"inputText": "titan text here", "textGenerationConfig": {"maxTokenCount": 9}},
            lambda b, i, o: b["inputTextTokenCount"] == i and b["results"][0]["tokenCount"] == o,
        ),
        (
            "meta.llama3-8b-instruct-v1:0",
            {"prompt": "llama prompt text", "max_gen_len": 100},
            lambda b, i, o: b["prompt_token_count"] == i and b["generation_token_count"] == o,
        ),
        (
            "amazon.nova-lite-v1:0",
            {
                "schemaVersion": "messages-v1",
                "messages": [{"role": "user", "content": [{"text": "nova prompt"}]}],
                "inferenceConfig": {"max_new_tokens": 50},
            },
            lambda b, i, o: b["usage"]["inputTokens"] == i and b["usage"]["outputTokens"] == o,
        ),
    ],
)
def test_invoke_model_other_families(client, model, body, check):
    text = body.get("inputText") or body.get("prompt") or body["messages"][0]["content"][0]["text"]
    cap = (
        body.get("textGenerationConfig", {}).get("maxTokenCount")
        or body.get("max_gen_len")
        or body.get("inferenceConfig", {}).get("max_new_tokens")
    )
    inp = input_tokens(text)
    out = output_tokens(inp, cap)
    resp = client.invoke_model(modelId=model, body=json.dumps(body))
    assert check(json.loads(resp["body"].read()), inp, out)
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"] == str(out)


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_invoke_model_with_response_stream(emulator, client, model):
    text = "tell me a long story " * 10 + "[[cache:read=40,write=2]]"
    inp = input_tokens(text)
    out = output_tokens(inp)
    resp = client.invoke_model_with_response_stream(modelId=model, body=anthropic_body(text))
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-content-type"] == "application/json"
    chunks = decode_invoke_stream(resp)
    types = [c["type"] for c in chunks]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    usage = chunks[0]["message"]["usage"]
    assert usage["input_tokens"] == inp
    assert usage["output_tokens"] == 1
    assert usage["cache_read_input_tokens"] == 40
    assert usage["cache_creation_input_tokens"] == 2
    text_out = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    assert text_out == expected_text(out)
    assert chunks[-2]["usage"]["output_tokens"] == out
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == inp
    assert metrics["outputTokenCount"] == out
    assert {"invocationLatency", "firstByteLatency"} <= set(metrics)
    rec = only_record(emulator)
    assert (rec["operation"], rec["model"], rec["sigv4"]["ok"]) == (
        "InvokeModelWithResponseStream",
        model,
        True,
    )


# ------------------------------------------------------------------- AnthropicBedrock


@pytest.fixture(scope="module")
def anthropic_client(emulator):
    return anthropic.AnthropicBedrock(
        aws_access_key=AKID,
        aws_secret_key=SECRET,
        aws_region=REGION,
        base_url=emulator,
        max_retries=0,
    )


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_anthropic_sdk_create(emulator, anthropic_client, model):
    text = "Hello from the Anthropic SDK"
    inp = input_tokens(text)
    out = output_tokens(inp, 64)
    msg = anthropic_client.messages.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": text}]
    )
    assert msg.usage.input_tokens == inp
    assert msg.usage.output_tokens == out
    assert msg.content[0].text == expected_text(out)
    rec = only_record(emulator)
    assert (rec["operation"], rec["model"], rec["sigv4"]["ok"]) == ("InvokeModel", model, True)
    if model == PROFILE_ARN:
        # AnthropicBedrock keeps ':' literal and encodes only '/'.
        assert rec["raw_path"].startswith("/model/arn:aws:bedrock:")
        assert "%2Fabc123/invoke" in rec["raw_path"]


@pytest.mark.parametrize("model", [MODEL, PROFILE_ARN])
def test_anthropic_sdk_stream(emulator, anthropic_client, model):
    text = "Stream from the Anthropic SDK " * 5
    inp = input_tokens(text)
    out = output_tokens(inp, 40)
    with anthropic_client.messages.stream(
        model=model, max_tokens=40, messages=[{"role": "user", "content": text}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == expected_text(out)
    assert final.usage.input_tokens == inp
    assert final.usage.output_tokens == out
    assert final.stop_reason == ("max_tokens" if out == 40 else "end_turn")
    rec = only_record(emulator)
    assert (rec["operation"], rec["model"], rec["sigv4"]["ok"]) == (
        "InvokeModelWithResponseStream",
        model,
        True,
    )


# ---------------------------------------------------------------------------- Auth


def test_wrong_secret_is_invalid_signature(emulator):
    bad = make_client(emulator, secret="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        bad.converse(**converse_args(MODEL, "hi"))
    err = exc.value.response
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "Canonical String" in err["Error"]["Message"]
    rec = only_record(emulator)
    assert rec["sigv4"]["ok"] is False
    assert rec["sigv4"]["access_key_id"] == AKID
    assert rec["usage"] is None
    assert rec["status"] == 403


def test_unknown_access_key(emulator):
    bad = make_client(emulator, akid="AKIASOMEONEELSE0000")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        bad.invoke_model(modelId=MODEL, body=anthropic_body("hi"))
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_expired_timestamp(emulator, client, monkeypatch):
    skewed = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: skewed)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.converse(**converse_args(MODEL, "hi"))
    assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert "Signature expired" in exc.value.response["Error"]["Message"]


def test_missing_auth_and_unknown_path(emulator):
    r = requests.post(f"{emulator}/model/{MODEL}/converse", json={"messages": []}, timeout=5)
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert "message" in r.json()
    r = requests.post(f"{emulator}/model/x/not-an-op", json={}, timeout=5)
    assert r.status_code == 404
    assert r.headers["x-amzn-ErrorType"] == "UnknownOperationException"
    assert set(r.json()) == {"message"}
    recs = records(emulator)
    assert [x["status"] for x in recs] == [403, 404]
    assert recs[0]["operation"] == "Converse" and recs[1]["operation"] is None


def test_malformed_json_is_validation_error(emulator, client):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.invoke_model(modelId=MODEL, body=b"{not json")
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    rec = only_record(emulator)
    assert rec["sigv4"]["ok"] is True
    assert rec["body_json"] is None
    assert rec["usage"] is None


# --------------------------------------------------------------------------- Faults


def add_header(client, name: str, value: str):
    def hook(request, **_):
        request.headers[name] = value

    client.meta.events.register_first("before-sign.bedrock-runtime.*", hook)
    return hook


@pytest.mark.parametrize(
    "fault,code,status",
    [
        ("throttle", "ThrottlingException", 429),
        ("validation", "ValidationException", 400),
        ("internal", "InternalServerException", 500),
        ("unavailable", "ServiceUnavailableException", 503),
    ],
)
@pytest.mark.parametrize("via", ["marker", "header"])
def test_http_faults(emulator, fault, code, status, via):
    c = make_client(emulator)
    text = f"[[fault:{fault}]] hello" if via == "marker" else "hello"
    if via == "header":
        add_header(c, "x-emulator-fault", fault)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.converse(**converse_args(MODEL, text))
    assert exc.value.response["Error"]["Code"] == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    if fault == "throttle":
        assert exc.value.response["Error"]["Message"] == (
            "Too many requests, please wait before trying again."
        )
    rec = only_record(emulator)  # retries disabled: exactly one attempt
    assert rec["fault"] == fault
    assert rec["status"] == status
    assert rec["usage"] is None


def test_throttle_on_invoke_stream(client):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.invoke_model_with_response_stream(
            modelId=MODEL, body=anthropic_body("[[fault:throttle]]")
        )
    assert exc.value.response["Error"]["Code"] == "ThrottlingException"


def test_stream_exception_converse(emulator, client):
    resp = client.converse_stream(**converse_args(MODEL, "[[fault:stream-exception]] " + "x" * 200))
    seen = []
    with pytest.raises(botocore.exceptions.EventStreamError) as exc:
        for event in resp["stream"]:
            seen.extend(event.keys())
    assert exc.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert seen[0] == "messageStart"
    assert "contentBlockDelta" in seen and "metadata" not in seen
    rec = only_record(emulator)
    assert rec["fault"] == "stream-exception" and rec["status"] == 200 and rec["usage"] is None


def test_stream_exception_invoke(client):
    resp = client.invoke_model_with_response_stream(
        modelId=MODEL, body=anthropic_body("[[fault:stream-exception]] " + "x" * 200)
    )
    types = []
    with pytest.raises(botocore.exceptions.EventStreamError) as exc:
        for event in resp["body"]:
            types.append(json.loads(event["chunk"]["bytes"])["type"])
    assert exc.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert types[0] == "message_start" and "message_stop" not in types


def test_stream_cut(emulator, client):
    resp = client.converse_stream(**converse_args(MODEL, "[[fault:stream-cut]] " + "x" * 200))
    seen = []
    # botocore's EventStream does not wrap urllib3's error for a truncated body.
    with pytest.raises((botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError)):
        for event in resp["stream"]:
            seen.extend(event.keys())
    assert seen[0] == "messageStart"
    assert "metadata" not in seen and "messageStop" not in seen
    assert only_record(emulator)["usage"] is None


def test_corrupt_frame(emulator, client):
    resp = client.converse_stream(**converse_args(MODEL, "[[fault:corrupt-frame]] " + "x" * 200))
    seen = []
    with pytest.raises(botocore.eventstream.ChecksumMismatch):
        for event in resp["stream"]:
            seen.extend(event.keys())
    assert seen[0] == "messageStart"
    assert "metadata" not in seen
    # The emulator still sent the rest, metadata included, and reports usage.
    assert only_record(emulator)["usage"] is not None


def test_corrupt_frame_raw_bytes_contain_metadata(emulator, client):
    """Read the raw body: the frames after the corrupt one are all there."""
    text = "[[fault:corrupt-frame]] hello"
    resp = client.converse_stream(**converse_args(MODEL, text))
    raw = resp["stream"]._raw_stream.read()  # bypass botocore's parser
    assert b"metadata" in raw and b"messageStop" in raw


def test_stream_faults_ignored_on_non_streaming_ops(client):
    resp = client.converse(**converse_args(MODEL, "[[fault:stream-cut]]"))
    assert resp["usage"]["outputTokens"] == output_tokens(input_tokens("[[fault:stream-cut]]"))


def test_unknown_fault_name_is_validation_error(client):
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.converse(**converse_args(MODEL, "[[fault:bogus]]"))
    assert exc.value.response["Error"]["Code"] == "ValidationException"


# ----------------------------------------------------------------------- Inspection


def test_inspection_api(emulator, client):
    client.converse(**converse_args(MODEL, "one"))
    client.invoke_model(modelId=MODEL, body=anthropic_body("two"))
    recs = records(emulator)
    assert [r["operation"] for r in recs] == ["Converse", "InvokeModel"]
    for r in recs:
        assert set(r) >= {
            "operation",
            "raw_path",
            "model",
            "sigv4",
            "headers",
            "body_json",
            "usage",
            "fault",
            "status",
        }
        assert r["headers"]["host"].startswith("127.0.0.1:")
        assert "x-amz-date" in r["headers"]
    r = requests.delete(f"{emulator}/_emulator/requests", timeout=5)
    assert r.status_code == 200
    assert records(emulator) == []
    assert requests.get(f"{emulator}/_emulator/health", timeout=5).status_code == 200


def test_b64_padding_field_present(client):
    """Every streamed payload carries a "p" padding field, like real Bedrock."""
    resp = client.invoke_model_with_response_stream(modelId=MODEL, body=anthropic_body("pad"))
    raw = resp["body"]._raw_stream.read()
    assert raw.count(b'"p":"') >= 5


# ------------------------------------------------------------- Bearer and options


def test_bearer_token_and_stream_delay_options():
    with run_emulator("--bearer-token", "tg-test-token", "--stream-delay-ms", "5") as url:
        path = f"{url}/model/{MODEL}/converse"
        body = {"messages": [{"role": "user", "content": [{"text": "bearer"}]}]}
        ok = requests.post(path, json=body, headers={"Authorization": "Bearer tg-test-token"}, timeout=5)
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["inputTokens"] == input_tokens("bearer")
        bad = requests.post(path, json=body, headers={"Authorization": "Bearer nope"}, timeout=5)
        assert bad.status_code == 403
        assert bad.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
        recs = records(url)
        assert recs[0]["sigv4"]["ok"] is True and recs[1]["sigv4"]["ok"] is False
        # SigV4 still works, and streams still complete with a per-frame delay.
        resp = make_client(url).converse_stream(**converse_args(MODEL, "delayed"))
        kinds = [k for e in resp["stream"] for k in e]
        assert kinds[-1] == "metadata"


def test_bearer_rejected_by_default(emulator):
    r = requests.post(
        f"{emulator}/model/{MODEL}/converse",
        json={"messages": []},
        headers={"Authorization": "Bearer anything"},
        timeout=5,
    )
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"


def test_session_token_is_signed_and_accepted(emulator):
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=emulator,
        region_name=REGION,
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        aws_session_token="FwoGZXIvYXdzEXAMPLETOKEN",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    assert c.converse(**converse_args(MODEL, "temp creds"))["usage"]["inputTokens"] == 3
    rec = only_record(emulator)
    assert rec["sigv4"]["ok"] is True
    assert rec["headers"]["x-amz-security-token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
