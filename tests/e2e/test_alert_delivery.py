"""Alert delivery with the real sidecar binary: several thresholds, webhook
deliveries signed with HMAC-SHA256 (verified here by a real HTTP receiver on
127.0.0.1, with the snippet docs/operations.md gives receivers), an SNS topic on
the emulator (`AWS_ENDPOINT_URL_SNS`), and the outbox surviving a sidecar
restart while the webhook is down."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness import EMULATOR_AKID, EMULATOR_SECRET, REGION, Stack, free_port

SECRET = "whsec_e2e_" + "5" * 24
TOPIC = "arn:aws:sns:us-east-1:123456789012:tollgate-alerts"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


# --- the receiver's side, as docs/operations.md shows it --------------------
def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance:  # refuse replays of old deliveries
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Receiver:
    """A webhook endpoint: 200 for a valid signature, 401 otherwise."""

    def __init__(self, port: int, secret: str):
        self.got: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                sig = self.headers.get("x-tollgate-signature", "")
                ok = verify(secret, sig, body)
                receiver.got.append({"alert_id": self.headers.get("x-tollgate-alert-id"), "signature": sig,
                                     "raw": body, "body": json.loads(body), "valid": ok})
                self.send_response(200 if ok else 401)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def alerting(tmp_path_factory):
    hook_port = free_port()  # nothing listens there until the test says so
    s = Stack(tmp_path_factory.mktemp("alerts"))
    s.sidecar_args = [
        "--webhook", f"http://127.0.0.1:{hook_port}/hook", "--alert-sns-topic-arn", TOPIC,
        "--alert-retry-base-ms", "200", "--alert-retry-max-ms", "500", "--alert-poll-ms", "100",
    ]
    s.sidecar_env = {
        "TOLLGATE_WEBHOOK_SECRET": SECRET, "AWS_ENDPOINT_URL_SNS": s.emulator_url,
        "AWS_ACCESS_KEY_ID": EMULATOR_AKID, "AWS_SECRET_ACCESS_KEY": EMULATOR_SECRET, "AWS_REGION": REGION,
    }
    s.start(envoy=False)
    yield s, hook_port
    s.stop()


def spend(stack: Stack, key: str, rid: str, tokens: int) -> None:
    r = stack.data("/v1/reserve", {"request_id": rid, "credential": {"type": "bearer", "key": key},
                                   "operation": "converse", "model": MODEL, "input_tokens_estimate": tokens,
                                   "max_output_tokens": 0})
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    c = stack.data("/v1/commit", {"commits": [{"request_id": rid, "usage": {"input_tokens": tokens,
                                                                             "output_tokens": 0}}]})
    assert c.json()["results"][0]["outcome"] == "committed", c.text


def wait(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sns_messages(stack: Stack) -> list[dict]:
    return requests.get(f"{stack.emulator_url}/_emulator/sns", timeout=5).json()


def test_thresholds_reach_sns_and_a_signed_webhook_after_a_restart(alerting):
    stack, hook_port = alerting
    stack.set_price(MODEL, "1.00", "1.00")  # $1 per 1M tokens
    key = stack.create_tenant("alerted", "1.00", alert_threshold=None, alert_thresholds=["0.5", "0.8", "0.95"])
    spend(stack, key, "a1", 600_000)  # 0.60: crosses 0.5
    spend(stack, key, "a2", 250_000)  # 0.85: crosses 0.8
    alerts = [a for a in stack.tenant("alerted")["alerts"] if a["kind"] == "threshold"]
    assert sorted(a["threshold"] for a in alerts) == ["0.5", "0.8"], alerts
    ids = {a["alert_id"] for a in alerts}

    # SNS (the emulator verifies the SigV4 signature for service sns).
    msgs = wait("two SNS messages", lambda: (m := sns_messages(stack)) and len(m) >= 2 and m)
    assert len(msgs) == 2, msgs
    assert {m["topic_arn"] for m in msgs} == {TOPIC}
    bodies = [json.loads(m["message"]) for m in msgs]
    assert {b["alertId"] for b in bodies} == ids
    assert {m["message_attributes"]["alertId"]["StringValue"] for m in msgs} == ids
    assert all(b["tenantId"] == "alerted" and b["kind"] == "threshold" and b["scope"] == "tenant" for b in bodies)

    # The webhook is down: its deliveries wait in the outbox, retried.
    def pending_retried():
        e = stack.admin("GET", "/v1/alerts/outbox?state=pending")["entries"]
        return len(e) == 2 and all(x["attempts"] >= 2 for x in e) and e
    entries = wait("retried webhook entries", pending_retried)
    assert {e["alert_id"] for e in entries} == ids
    assert all(e["target"].startswith("webhook:") and "127.0.0.1" not in e["target"] for e in entries)
    m = stack.metrics().text
    assert 'tollgate_alert_deliveries_total{target="sns",result="delivered"} 2' in m, m
    assert "tollgate_alert_outbox_pending 2" in m, m

    # Restart the sidecar with the webhook still down, then bring the webhook up.
    stack.procs.pop("sidecar").stop()
    stack.restart_sidecar()
    receiver = Receiver(hook_port, SECRET)
    try:
        got = wait("two signed deliveries", lambda: len(receiver.got) >= 2 and receiver.got)
        time.sleep(0.5)
        assert len(receiver.got) == 2, receiver.got
        assert all(g["valid"] for g in got), got
        assert {g["alert_id"] for g in got} == ids
        assert {g["body"]["alertId"] for g in got} == ids
        assert {g["body"]["threshold"] for g in got} == {"0.5", "0.8"}
        # A receiver holding another secret refuses the very same delivery.
        g = got[0]
        assert not verify("whsec_wrong", g["signature"], g["raw"])
        assert not verify(SECRET, g["signature"], g["raw"] + b" ")
        # SNS was not published again after the restart (it was delivered).
        assert len(sns_messages(stack)) == 2
        assert stack.admin("GET", "/v1/alerts/outbox?state=pending")["entries"] == []
        delivered = stack.admin("GET", "/v1/alerts/outbox?state=delivered")["entries"]
        assert len(delivered) == 4, delivered
        m = wait("the pending gauge at 0", lambda: "tollgate_alert_outbox_pending 0" in (t := stack.metrics().text) and t)
        assert 'tollgate_alert_deliveries_total{target="webhook",result="delivered"} 2' in m, m
    finally:
        receiver.stop()
    # The secret is never logged.
    assert SECRET not in stack.procs["sidecar"].log.read_text()
