"""The demo path (`cargo xtask demo`) against the test stack: boto3 through Envoy
until a 402, with the demo's own exact ledger check."""

import os
import subprocess
import sys

from harness import CA, REPO


def test_budget_exhaustion_demo(stack):
    r = subprocess.run(
        [sys.executable, str(REPO / "examples/demo_budget_exhaustion.py"),
         "--gateway", stack.gateway_url, "--sidecar", stack.sidecar_url],
        env={**os.environ, "TOLLGATE_ADMIN_TOKEN": stack.admin_token, "AWS_CA_BUNDLE": str(CA)},
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "ALERT" in out and "crossed its 80% threshold" in out
    assert "HTTP 402 BudgetExceededException" in out
    assert "[ok] ledger spent == sum of per-call costs, exactly" in out
    assert "FAIL" not in out
