"""The Grafana dashboard (deploy/grafana/tollgate.json) and the Prometheus alerting
rules (deploy/prometheus/alerts.yaml) against what the stack really exports.

Every metric name their PromQL uses must appear in the sidecar's /metrics (read
with the metrics token, as Prometheus does) or in Envoy's admin /stats/prometheus
(where the filter's `wasmcustom.tollgate.*` stats land, without a prefix and, for
counters, without `_total`) after real requests went through the gateway. A panel
or an alert on a name nobody exports would stay empty, or silent, forever.

The rules' own unit tests (`promtool test rules deploy/prometheus/alerts_test.yaml`)
and `promtool check rules/config` run as a gate of `cargo xtask test`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import botocore.exceptions
import pytest
import requests
import yaml

from harness import REPO

DASHBOARD = REPO / "deploy/grafana/tollgate.json"
ALERTS = REPO / "deploy/prometheus/alerts.yaml"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICE = {"input": "0.25", "output": "1.25"}

# Grafana's variables, replaced by values that make the expressions plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$tenant": ".*"}
# PromQL words that look like metric names: operators and modifiers.
PROMQL_WORDS = {"by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}
# Series Prometheus makes itself, not an exporter.
SYNTHETIC = {"up"}


# --- what the dashboard and the rules use --------------------------------------
def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(metric, label) names a metric too.
            m = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\s*\)\s*", q)
            assert m, f"template variable {var['name']}: unexpected query {q!r}"
            exprs.append(m.group(1))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def plain_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not
    functions (followed by `(`), label matchers (`{...}`), grouping labels
    (`by (...)`), ranges, strings, numbers or operators."""
    s = plain_promql(expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', s)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_are_extracted_from_promql():
    assert metric_names('sum by (tenant) (rate(a_total{tenant=~"$tenant", x="y z"}[$__rate_interval])) * 3600') \
        == {"a_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))") == {"h_bucket"}
    assert metric_names("min_over_time(g[10m]) > 0 and deriv(g[10m]) > 0 unless on (instance) other") \
        == {"g", "other"}
    assert metric_names('up{job="tollgate-sidecar"} == 0') == {"up"}
    assert metric_names("predict_linear(r[1h], 6 * 3600) < 0") == {"r"}


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used ("dashboard", "alerts.yaml")."""
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs()), ("alerts.yaml", alert_exprs())):
        for e in exprs:
            for name in metric_names(e) - SYNTHETIC:
                used.setdefault(name, set()).add(where)
    return used


# --- the files themselves --------------------------------------------------------
def test_dashboard_is_importable_with_a_prometheus_input_and_a_tenant_variable():
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["tenant"]["type"] == "query" and variables["tenant"]["includeAll"]
    ids = set()

    def walk(panels: list[dict]) -> None:
        for p in panels:
            assert p["id"] not in ids, f"duplicate panel id {p['id']}"
            ids.add(p["id"])
            if p["type"] != "row":
                assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
                assert p["targets"], p["title"]
                for t in p["targets"]:
                    assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            walk(p.get("panels", []))

    walk(dash["panels"])
    # Every tenant-labelled sidecar series the dashboard reads follows the variable.
    for e in dashboard_exprs():
        for name in ("tollgate_cost_usd_total", "tollgate_budget_remaining_usd", "tollgate_requests_total",
                     "tollgate_tokens_total"):
            if name + "{" in e:
                assert 'tenant=~"$tenant"' in e, e


def test_dashboard_promql_parses(tmp_path):
    """promtool parses every panel query (as a recording rule)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (cargo xtask test installs it)"
    exprs = [plain_promql(e) for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"tollgate:dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout


# --- against the running stack ------------------------------------------------------
def sample_names(text: str) -> set[str]:
    """The names of the samples in a Prometheus or OpenMetrics exposition, as a
    query selects them: `_total` of counters (OpenMetrics), `_bucket`, `_sum`,
    `_count` of histograms. A family with no sample (the sidecar's labelled
    families before their first event) is not there: a query on it finds nothing."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def test_every_metric_the_dashboard_and_alerts_use_is_exported(stack, tenant_id):
    stack.set_price(HAIKU, **PRICE)
    # A tenant that spends: allowed, committed, leased (several requests from one key).
    spender = f"{tenant_id}-spends"
    key = stack.create_tenant(spender, budget="5.00")
    for i in range(4):
        stack.bedrock(key).call("converse", modelId=HAIKU,
                                messages=[{"role": "user", "content": [{"text": f"observe {i}"}]}],
                                inferenceConfig={"maxTokens": 50})
    # A tenant refused for budget (sidecar outcome denied_budget, gateway denied),
    # then admitted for a small request that crosses its 80 % alert threshold.
    broke = f"{tenant_id}-broke"
    small = stack.create_tenant(broke, budget="0.0001")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        stack.bedrock(small).call("converse", modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}],
                                  inferenceConfig={"maxTokens": 4096})
    assert refused.value.response["Error"]["Code"] == "BudgetExceededException"
    stack.bedrock(small).call("converse", modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}],
                              inferenceConfig={"maxTokens": 20})
    stack.settled(spender, 4)
    stack.settled(broke, 1)
    # A commit reporting more output than its hold allowed is capped
    # (tollgate_usage_capped_total): sent on the data plane, as a filter would.
    rid = f"obs-capped-{tenant_id}"
    r = stack.data("/v1/reserve", {"request_id": rid, "credential": {"type": "bearer", "key": key},
                                   "operation": "converse", "model": HAIKU, "input_tokens_estimate": 10,
                                   "max_output_tokens": 10})
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    c = stack.data("/v1/commit", {"commits": [{"request_id": rid,
                                               "usage": {"input_tokens": 10, "output_tokens": 10_000}}]})
    assert c.json()["results"][0]["outcome"] == "committed", c.text

    r = stack.metrics()
    assert r.status_code == 200, r.text
    sidecar = sample_names(r.text)
    assert 'outcome="denied_budget"' in r.text
    envoy = sample_names(requests.get(f"http://127.0.0.1:{stack.envoy_admin}/stats/prometheus", timeout=10).text)
    # The filter's wasmcustom.tollgate.* stats, as Envoy 1.40 names them.
    assert {"tollgate_settlements_pending", "tollgate_requests_allowed", "tollgate_reserve_ms_bucket"} <= envoy

    used = used_names()
    # The extraction found the sidecar's and the filter's metrics (not nothing).
    assert {"tollgate_cost_usd_total", "tollgate_budget_remaining_usd", "tollgate_requests_total",
            "tollgate_reserve_seconds_bucket", "tollgate_settlements_pending", "tollgate_settlements_dropped",
            "tollgate_requests_sidecar_error", "tollgate_store_errors_total"} <= set(used), sorted(used)
    missing = {name: sorted(where) for name, where in used.items() if name not in sidecar | envoy}
    assert not missing, f"used but exported by neither the sidecar nor Envoy: {missing}"
