"""Rotating TOLLGATE_SECRET_KEY with boto3 signing SigV4 through the real gateway:
a credential issued under key A keeps working when the sidecar restarts with
key B current and A previous; `tollgate-sidecar rewrap` re-seals it under B;
with B alone everything still verifies; with A alone the sidecar names the key id
it is missing and the client gets a 503, never a wrong answer.

Own stack (the sidecar restarts with other keys), so it does not disturb the
session stack other tests share.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess

import botocore.exceptions
import pytest

from harness import BIN_DIR, REPO, Stack, sigv4_client

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
MSGS = [{"role": "user", "content": [{"text": "hello"}]}]


def key_id(hex_key: str) -> str:
    """What the sidecar calls a key: the first 8 hex chars of SHA-256 of its bytes."""
    return hashlib.sha256(bytes.fromhex(hex_key)).hexdigest()[:8]


@pytest.fixture
def own_stack(tmp_path):
    s = Stack(tmp_path / "stack").start()
    try:
        yield s
    finally:
        s.stop()


def restart_sidecar(stack: Stack, current: str, previous: str = "") -> None:
    stack.procs.pop("sidecar").stop()
    stack.secret_key = current
    stack.sidecar_env = {"TOLLGATE_SECRET_KEY_PREVIOUS": previous}
    stack.start_sidecar()


def rewrap(stack: Stack, current: str, previous: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOLLGATE_SECRET_KEY": current, "TOLLGATE_SECRET_KEY_PREVIOUS": previous,
           "TOLLGATE_STORE": "sqlite"}
    return subprocess.run([str(BIN_DIR / "tollgate-sidecar"), "rewrap", "--db", str(stack.workdir / "ledger.db")],
                          env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def converse(stack: Stack, akid: str, secret: str) -> str:
    out = sigv4_client(stack.gateway_url, akid, secret).converse(modelId=HAIKU, messages=MSGS)
    return out["output"]["message"]["content"][0]["text"]


def test_rotate_secret_key_rewrap_and_drop_the_old_key(own_stack):
    stack = own_stack
    stack.set_price(HAIKU, "0.25", "1.25")
    stack.create_tenant("rotating", budget="5.00")
    key_a = stack.secret_key
    key_b = secrets.token_hex(32)
    akid1, secret1 = stack.issue_sigv4("rotating")
    assert converse(stack, akid1, secret1)

    # B current, A previous: the old credential verifies, a new one is sealed with B.
    restart_sidecar(stack, key_b, key_a)
    assert converse(stack, akid1, secret1)
    akid2, secret2 = stack.issue_sigv4("rotating")
    assert converse(stack, akid2, secret2)

    # Re-seal under B while the sidecar runs; idempotent.
    r = rewrap(stack, key_b, key_a)
    assert r.returncode == 0, r.stderr
    assert "rewrapped 1, already current 1, failed 0" in r.stdout, r.stdout
    assert key_id(key_b) in r.stdout
    assert "tollgate::audit" in r.stderr and "applied" in r.stderr, r.stderr
    r = rewrap(stack, key_b, key_a)
    assert r.returncode == 0 and "rewrapped 0, already current 2" in r.stdout, r.stdout + r.stderr

    # B alone: both still verify.
    restart_sidecar(stack, key_b)
    assert converse(stack, akid1, secret1)
    assert converse(stack, akid2, secret2)

    # A alone: refused (fail closed), and the sidecar log says which key is missing.
    restart_sidecar(stack, key_a)
    before = len(stack.emulator_requests())
    with pytest.raises(botocore.exceptions.ClientError) as e:
        converse(stack, akid1, secret1)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, e.value.response
    assert e.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert len(stack.emulator_requests()) == before, "nothing forwarded"
    log = stack.procs["sidecar"].log.read_text()
    assert f"sealed with key id {key_id(key_b)}" in log, log[-3000:]
    assert "TOLLGATE_SECRET_KEY_PREVIOUS" in log

    # And rewrap with the wrong key fails loudly, changing nothing.
    r = rewrap(stack, key_a, "")
    assert r.returncode != 0
    assert "failed 2" in r.stdout and key_id(key_b) in r.stderr, r.stdout + r.stderr
