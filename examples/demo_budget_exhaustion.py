#!/usr/bin/env python3
"""Budget-exhaustion demo (the scenario of the multi-tenant cost-tracking guide):
a tenant with a $1.00 budget and an 80 % alert threshold calls Bedrock Converse
through Tollgate with boto3 until Tollgate refuses with HTTP 402.

The client is unmodified boto3: only the endpoint URL and the credential
(AWS_BEARER_TOKEN_BEDROCK=<Tollgate key>) change. At the end the ledger is checked
against the usage the client saw × the price table, exactly (Decimal, no rounding).

`cargo xtask demo` starts the stack and runs this; to run it against a stack of
your own: demo_budget_exhaustion.py --gateway URL --sidecar URL (TOLLGATE_ADMIN_TOKEN set).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from decimal import Decimal

import boto3
import botocore.config
import botocore.exceptions
import requests

TENANT = "tenant-quick-demo"
MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"
PRICE = {"input": Decimal("3.00"), "output": Decimal("15.00")}  # USD per 1M tokens
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/quickdemo01"
BUDGET = Decimal("1.00")
THRESHOLD = Decimal("0.8")
MAX_CALLS = 200


class Admin:
    def __init__(self, url: str, token: str):
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}

    def __call__(self, method: str, path: str, body=None, expect=(200, 201)):
        r = requests.request(method, self.url + path, json=body, headers=self.headers, timeout=10)
        if r.status_code not in expect:
            sys.exit(f"sidecar {method} {path} -> {r.status_code}: {r.text}")
        return r.json() if r.content else None


def prompt(i: int) -> str:
    # About 2,000 input tokens; the length varies a little so costs differ per call.
    line = f"Call {i}: summarise the quarterly spend of every team in one paragraph. "
    return line * (100 + (i * 7) % 15)


def wait_settled(admin: Admin, calls: int) -> dict:
    """Commits travel asynchronously from Envoy to the sidecar; wait for them."""
    deadline = time.monotonic() + 15
    while True:
        t = admin("GET", f"/v1/tenants/{TENANT}")
        b = t["balance"]
        if (b["requests"] >= calls and Decimal(b["reserved_usd"]) == 0) or time.monotonic() > deadline:
            return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", default="http://127.0.0.1:10000")
    ap.add_argument("--sidecar", default="http://127.0.0.1:9190")
    args = ap.parse_args()
    admin = Admin(args.sidecar, os.environ.get("TOLLGATE_ADMIN_TOKEN", ""))

    bar = "=" * 78
    print(bar)
    print("Tollgate — per-tenant budget enforcement on Amazon Bedrock: budget exhaustion demo")
    print(bar)
    print(f"Model {MODEL}: ${PRICE['input']} / 1M input, ${PRICE['output']} / 1M output tokens")

    print(f"\nStep 1  tenant {TENANT}: budget ${BUDGET}, alert at {THRESHOLD:.0%}, monthly reset")
    admin("PUT", f"/v1/pricing/{MODEL}", {"input": str(PRICE["input"]), "output": str(PRICE["output"])})
    admin("PUT", f"/v1/tenants/{TENANT}", {
        "budget_usd": str(BUDGET), "alert_threshold": str(THRESHOLD), "reset_cycle": "monthly",
        "active": True, "allowed_models": [MODEL], "max_tokens_cap": 4000,
    })
    admin("PUT", f"/v1/tenants/{TENANT}/profiles", {"application_id": None, "model": MODEL, "arn": PROFILE_ARN})
    key = admin("POST", f"/v1/tenants/{TENANT}/keys", {"application_id": None})["key"]
    print(f"        bearer key issued ({key[:8]}…); profile {PROFILE_ARN}")

    # The only client-side change: endpoint URL and credential.
    os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
    client = boto3.client(
        "bedrock-runtime", endpoint_url=args.gateway, region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )

    print(f"\nStep 2  calling Converse until the budget runs out (max {MAX_CALLS} calls)\n")
    print(f"{'call':>5} {'in tok':>7} {'out tok':>8} {'cost USD':>11} {'spent USD':>11} {'remaining':>11}")
    costs: list[Decimal] = []
    alert_seen = False
    refusal = None
    for i in range(1, MAX_CALLS + 1):
        try:
            out = client.converse(
                modelId=MODEL,
                messages=[{"role": "user", "content": [{"text": prompt(i)}]}],
                inferenceConfig={"maxTokens": 1024},
            )
        except botocore.exceptions.ClientError as e:
            refusal = e
            break
        u = out["usage"]
        c = (Decimal(u["inputTokens"]) * PRICE["input"] + Decimal(u["outputTokens"]) * PRICE["output"]) / Decimal(1_000_000)
        costs.append(c)
        t = wait_settled(admin, len(costs))
        b = t["balance"]
        print(f"{i:>5} {u['inputTokens']:>7} {u['outputTokens']:>8} {c:>11.6f} {Decimal(b['spent_usd']):>11.6f} "
              f"{Decimal(b['available_usd']):>11.6f}")
        if not alert_seen and any(a["kind"] == "threshold" for a in t.get("alerts", [])):
            alert_seen = True
            used = Decimal(b["spent_usd"]) / BUDGET
            print(f"\n  ALERT  {TENANT} crossed its {THRESHOLD:.0%} threshold: {used:.1%} of ${BUDGET} used "
                  f"after call {i}; ${Decimal(b['available_usd']):.4f} left\n")

    print()
    if refusal is None:
        print(f"FAIL: no refusal after {MAX_CALLS} calls")
        return 1
    meta = refusal.response["ResponseMetadata"]
    print(f"  REFUSED  call {len(costs) + 1}: HTTP {meta['HTTPStatusCode']} "
          f"{refusal.response['Error']['Code']} (as boto3 raises it)")
    print(f"           {refusal.response['Error']['Message']}")

    t = wait_settled(admin, len(costs))
    b = t["balance"]
    expected = sum(costs, Decimal(0))
    spent = Decimal(b["spent_usd"])
    print(f"\nStep 3  the ledger (sidecar, period {b['period']})")
    print(f"        budget     ${Decimal(b['budget_usd'])}")
    print(f"        spent      ${spent}")
    print(f"        reserved   ${Decimal(b['reserved_usd'])}")
    print(f"        available  ${Decimal(b['available_usd'])}")
    print(f"        requests   {b['requests']}   input tokens {b['input_tokens']}   output tokens {b['output_tokens']}")
    kinds = [a["kind"] for a in t.get("alerts", [])]
    print(f"        alerts     {', '.join(kinds) or 'none'}")
    print(f"\n        sum of per-call costs from the usage boto3 saw × prices: ${expected}")
    checks = [
        ("80 % alert fired", alert_seen),
        ("refused with HTTP 402", meta["HTTPStatusCode"] == 402),
        ("refusal is BudgetExceededException", refusal.response["Error"]["Code"] == "BudgetExceededException"),
        ("ledger spent == sum of per-call costs, exactly", spent == expected),
        ("ledger requests == successful calls", b["requests"] == len(costs)),
        ("spent never exceeds the budget", spent <= BUDGET),
        ("calls before refusal in 20..60", 20 <= len(costs) <= 60),
    ]
    print()
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(bar)
    ok = all(ok for _, ok in checks)
    print("Demo complete: budget enforced, ledger exact." if ok else "Demo FAILED.")
    print(bar)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
