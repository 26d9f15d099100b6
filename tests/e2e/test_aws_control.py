"""Tollgate and the AWS APIs around Bedrock Runtime, against the emulator:
`profiles create|sync|delete` (Bedrock's control plane), `reconcile` (Cost
Explorer) and `prices import --from-aws` (the Price List API); then boto3
against the emulator's new operations, errors included.

The sidecar and the CLI reach the emulator through the AWS SDK's standard
endpoint variables (AWS_ENDPOINT_URL_BEDROCK, _COST_EXPLORER, _PRICING). The
emulator bills every runtime request it serves at its own price table (the one
its GetProducts lists) and answers GetCostAndUsage from that bill.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
from decimal import Decimal

import boto3
import botocore.config
import botocore.exceptions
import pytest
import requests

from harness import BIN_DIR, EMULATOR_AKID, EMULATOR_SECRET, MILLION, REGION, Stack

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
NOVA = "amazon.nova-lite-v1:0"
APP_ARN_PREFIX = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/"


def aws_env(emulator_url: str) -> dict[str, str]:
    """The emulator's credentials and every AWS endpoint pointed at it; no
    profile files or instance metadata to wait for."""
    return {
        "AWS_ACCESS_KEY_ID": EMULATOR_AKID, "AWS_SECRET_ACCESS_KEY": EMULATOR_SECRET, "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_BEDROCK": emulator_url, "AWS_ENDPOINT_URL_COST_EXPLORER": emulator_url,
        "AWS_ENDPOINT_URL_PRICING": emulator_url, "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def new_stack(tmp_path_factory, name: str, envoy: bool = True) -> Stack:
    s = Stack(tmp_path_factory.mktemp(name))
    s.sidecar_env = aws_env(s.emulator_url)
    return s.start(envoy=envoy)


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """A stack of its own: its emulator's profiles and bill are this module's."""
    s = new_stack(tmp_path_factory, "aws")
    yield s
    s.stop()


def cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"TOLLGATE_ADMIN_TOKEN": stack.admin_token, "TOLLGATE_URL": stack.sidecar_url, "PATH": "/usr/bin:/bin",
           **aws_env(stack.emulator_url)}
    r = subprocess.run([str(BIN_DIR / "tollgate-sidecar"), *args], capture_output=True, text=True, timeout=60, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def client(stack: Stack, service: str):
    return boto3.client(service, endpoint_url=stack.emulator_url, region_name=REGION,
                        aws_access_key_id=EMULATOR_AKID, aws_secret_access_key=EMULATOR_SECRET,
                        config=botocore.config.Config(retries={"total_max_attempts": 1}))


def emulator(stack: Stack, method: str, path: str, body=None) -> dict:
    r = requests.request(method, f"{stack.emulator_url}/_emulator/{path}", json=body, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def this_month() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m")


def converse(stack: Stack, key: str, model: str, text: str) -> dict:
    return stack.bedrock(key).call("converse", modelId=model,
                                   messages=[{"role": "user", "content": [{"text": text}]}])


# --- profiles ------------------------------------------------------------------

def test_create_tags_maps_and_routes_the_tenants_traffic_to_the_new_profile(aws, tenant_id):
    s = aws
    s.set_price(HAIKU, "0.25", "1.25")
    s.create_tenant(tenant_id)
    key = s.admin("POST", f"/v1/tenants/{tenant_id}/keys", {"application_id": "chat"}, expect=201)["key"]
    out = json.loads(cli(s, "profiles", "create", tenant_id, HAIKU, "--application", "chat",
                         "--cost-center", "cc-7", "--environment", "prod", "--tag", "team=search").stdout)
    arn = out["arn"]
    assert arn.startswith(APP_ARN_PREFIX) and out["reused"] is False

    tags = {t["key"]: t["value"] for t in client(s, "bedrock").list_tags_for_resource(resourceARN=arn)["tags"]}
    assert tags == {"tollgate:tenant": tenant_id, "tollgate:application": "chat", "tollgate:model": HAIKU,
                    "cost-center": "cc-7", "environment": "prod", "team": "search"}
    got = client(s, "bedrock").get_inference_profile(inferenceProfileIdentifier=arn)
    assert got["type"] == "APPLICATION"
    assert got["models"] == [{"modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"}]
    mapped = s.admin("GET", f"/v1/tenants/{tenant_id}/profiles")["profiles"]
    assert mapped == [{"tenant_id": tenant_id, "application_id": "chat", "model_id": HAIKU, "arn": arn}]

    s.clear_emulator()
    resp = converse(s, key, HAIKU, "hello through the gateway")
    assert resp["usage"]["outputTokens"] > 0
    runtime = [r for r in s.emulator_requests() if r["operation"] == "Converse"]
    assert [r["model"] for r in runtime] == [arn]
    assert runtime[0]["status"] == 200

    # Again: the profile with the same Tollgate tags is reused, not duplicated.
    again = json.loads(cli(s, "profiles", "create", tenant_id, HAIKU, "--application", "chat").stdout)
    assert again["arn"] == arn and again["reused"] is True
    listed = client(s, "bedrock").list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"]
    assert [p["inferenceProfileArn"] for p in listed].count(arn) == 1
    ours = [p for p in listed
            if {t["key"]: t["value"] for t in client(s, "bedrock").list_tags_for_resource(
                resourceARN=p["inferenceProfileArn"])["tags"]}.get("tollgate:tenant") == tenant_id]
    assert len(ours) == 1


def test_a_geo_model_is_copied_from_its_system_profile_and_mapped_as_named(aws, tenant_id):
    s = aws
    s.create_tenant(tenant_id)
    geo = f"us.{HAIKU}"
    out = json.loads(cli(s, "profiles", "create", tenant_id, geo).stdout)
    assert out["model_id"] == geo and out["tags"]["tollgate:model"] == geo
    got = client(s, "bedrock").get_inference_profile(inferenceProfileIdentifier=out["arn"])
    assert sorted(m["modelArn"].split(":")[3] for m in got["models"]) == ["us-east-1", "us-east-2", "us-west-2"]
    assert s.admin("GET", f"/v1/tenants/{tenant_id}/profiles")["profiles"][0]["model_id"] == geo


def test_aws_refusals_are_said_in_plain_words(aws, tenant_id):
    s = aws
    s.create_tenant(tenant_id)
    try:
        emulator(s, "PUT", "deny", {"actions": ["bedrock:CreateInferenceProfile"]})
        r = cli(s, "profiles", "create", tenant_id, NOVA, check=False)
        assert r.returncode != 0
        assert "lack the IAM permission `bedrock:CreateInferenceProfile`" in r.stderr, r.stderr
        assert "arn:aws:iam::123456789012:user/tollgate-emulator" in r.stderr, r.stderr
    finally:
        emulator(s, "PUT", "deny", {"actions": []})

    r = cli(s, "profiles", "create", tenant_id, "acme.no-such-model-v1:0", check=False)
    assert r.returncode != 0 and "Bedrock does not know the model acme.no-such-model-v1:0" in r.stderr, r.stderr

    existing = len(client(s, "bedrock").list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"])
    try:
        emulator(s, "PUT", "quotas", {"application_inference_profiles": existing})
        r = cli(s, "profiles", "create", tenant_id, NOVA, check=False)
        assert r.returncode != 0 and "quota of application inference profiles" in r.stderr, r.stderr
    finally:
        emulator(s, "PUT", "quotas", {"application_inference_profiles": 1000})
    # Nothing was mapped by the failed attempts.
    assert s.admin("GET", f"/v1/tenants/{tenant_id}/profiles")["profiles"] == []


def test_delete_removes_the_profile_in_aws_and_the_mapping(aws, tenant_id):
    s = aws
    s.create_tenant(tenant_id)
    arn = json.loads(cli(s, "profiles", "create", tenant_id, NOVA).stdout)["arn"]
    out = json.loads(cli(s, "profiles", "delete", tenant_id, NOVA).stdout)
    assert out == {"arn": arn, "deleted_in_aws": True}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(s, "bedrock").get_inference_profile(inferenceProfileIdentifier=arn)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert s.admin("GET", f"/v1/tenants/{tenant_id}/profiles")["profiles"] == []
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(s, "bedrock-runtime").converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    # Another tenant's profile is not deleted through this tenant's mapping.
    other = f"{tenant_id}-other"
    s.create_tenant(other)
    theirs = json.loads(cli(s, "profiles", "create", other, NOVA).stdout)["arn"]
    s.map_profile(tenant_id, NOVA, theirs)
    r = cli(s, "profiles", "delete", tenant_id, NOVA, check=False)
    assert r.returncode != 0 and f"tagged tollgate:tenant={other}" in r.stderr, r.stderr
    assert client(s, "bedrock").get_inference_profile(inferenceProfileIdentifier=theirs)["inferenceProfileArn"] == theirs


def test_sync_rebuilds_the_mapping_of_a_wiped_ledger(tmp_path_factory):
    s = new_stack(tmp_path_factory, "aws-sync", envoy=False)
    try:
        for t in ("sync-a", "sync-b"):
            s.create_tenant(t)
        cli(s, "profiles", "create", "sync-a", HAIKU)
        cli(s, "profiles", "create", "sync-a", NOVA, "--application", "chat")
        cli(s, "profiles", "create", "sync-b", HAIKU, "--environment", "dev")
        # A profile someone made by hand, without Tollgate's tags, is left alone.
        client(s, "bedrock").create_inference_profile(
            inferenceProfileName="by-hand", modelSource={"copyFrom": f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA}"})
        before = {t: s.admin("GET", f"/v1/tenants/{t}/profiles")["profiles"] for t in ("sync-a", "sync-b")}
        assert sum(len(v) for v in before.values()) == 3

        # Wipe the ledger: a new, empty one; the tenants come back (as a seed would bring them).
        s.procs.pop("sidecar").stop()
        for f in s.workdir.glob("ledger.db*"):
            f.unlink()
        s.start_sidecar()
        for t in ("sync-a", "sync-b"):
            s.create_tenant(t)
            assert s.admin("GET", f"/v1/tenants/{t}/profiles")["profiles"] == []

        report = json.loads(cli(s, "profiles", "sync").stdout)["profiles"]
        assert sorted(p["outcome"] for p in report) == ["mapped", "mapped", "mapped", "skipped"]
        skipped = [p for p in report if p["outcome"] == "skipped"]
        assert "not a Tollgate profile" in skipped[0]["reason"]
        after = {t: s.admin("GET", f"/v1/tenants/{t}/profiles")["profiles"] for t in ("sync-a", "sync-b")}
        key = lambda p: (p["application_id"] or "", p["model_id"])  # noqa: E731
        assert {t: sorted(v, key=key) for t, v in after.items()} == {t: sorted(v, key=key) for t, v in before.items()}
    finally:
        s.stop()


# --- reconcile ----------------------------------------------------------------

def reconcile(stack: Stack) -> dict:
    return json.loads(cli(stack, "reconcile", "--month", this_month(), "--format", "json").stdout)


def row_of(report: dict, value: str) -> dict:
    rows = [r for r in report["rows"] if r["value"] == value]
    assert len(rows) == 1, report
    return rows[0]


def test_reconcile_agrees_when_prices_match_and_measures_a_wrong_price_exactly(aws, tenant_id):
    s = aws
    emu_prices = {p["model_id"]: p for p in emulator(s, "GET", "prices")}
    for m in (HAIKU, NOVA):
        s.set_price(m, emu_prices[m]["input"], emu_prices[m]["output"])
    a, b = f"{tenant_id}-a", f"{tenant_id}-b"
    keys = {t: s.create_tenant(t) for t in (a, b)}
    cli(s, "profiles", "create", a, HAIKU)
    cli(s, "profiles", "create", b, NOVA)
    for i in range(3):
        converse(s, keys[a], HAIKU, f"tenant a, request {i} " + "x" * (10 * i))
        converse(s, keys[b], NOVA, f"tenant b, request {i}")
    s.settled(a, 3)
    s.settled(b, 3)

    r = reconcile(s)
    for t in (a, b):
        row = row_of(r, t)
        assert Decimal(row["ledger_usd"]) > 0
        assert Decimal(row["aws_usd"]) == Decimal(row["ledger_usd"]), row
        assert Decimal(row["difference_usd"]) == 0
        assert row["requests"] == 3 and row["estimated_requests"] == 0 and Decimal(row["estimated_share"]) == 0

    # The ledger now charges Nova Lite too little: AWS's bill is above it by
    # exactly the tokens of the new requests times the price difference.
    s.set_price(NOVA, "0.05", "0.20")
    s.clear_emulator()
    for i in range(2):
        converse(s, keys[b], NOVA, f"tenant b, cheap request {i} " + "y" * (7 * i))
    s.settled(b, 5)
    usage = [r["usage"] for r in s.emulator_requests() if r["operation"] == "Converse"]
    assert len(usage) == 2
    expected = sum(
        (Decimal(u["input_tokens"]) * (Decimal(emu_prices[NOVA]["input"]) - Decimal("0.05"))
         + Decimal(u["output_tokens"]) * (Decimal(emu_prices[NOVA]["output"]) - Decimal("0.20"))) / MILLION
        for u in usage)
    assert expected > 0
    r = reconcile(s)
    assert Decimal(row_of(r, b)["difference_usd"]) == expected
    assert Decimal(row_of(r, a)["difference_usd"]) == 0
    assert any("AWS above the ledger" in c for c in r["causes"]), r["causes"]

    table = cli(s, "reconcile", "--month", this_month()).stdout
    line = next(l for l in table.splitlines() if l.startswith(b + " "))
    assert f"+{expected.normalize()}" in line, table
    assert "Usual causes of a gap:" in table


def test_reconcile_says_when_the_tag_is_not_in_cost_explorer(aws, tenant_id):
    aws.set_price(NOVA, "0.06", "0.24")
    key = aws.create_tenant(tenant_id)
    cli(aws, "profiles", "create", tenant_id, NOVA)
    converse(aws, key, NOVA, "billed under no activated tag")
    aws.settled(tenant_id, 1)
    r = json.loads(cli(aws, "reconcile", "--month", this_month(), "--tag-key", "never-activated",
                       "--format", "json").stdout)
    # No profile carries the key: every ledger dollar is untagged, and AWS's untagged
    # group holds all of the month's bill.
    assert r["rows"] == []
    assert Decimal(r["untagged_aws_usd"]) > 0
    assert any("without a profile tagged never-activated" in c for c in r["causes"]), r["causes"]
    r = cli(aws, "reconcile", "--month", "2026-13", check=False)
    assert r.returncode != 0 and "expected YYYY-MM" in r.stderr


# --- prices import --from-aws --------------------------------------------------

def price_of(stack: Stack, model: str) -> dict:
    return stack.admin("GET", f"/v1/pricing/{requests.utils.quote(model, safe='')}")


def test_price_import_shows_the_diff_and_writes_only_without_dry_run(aws, tenant_id):
    s = aws
    s.set_price(HAIKU, "0.30", "1.25", cache_read="0.03")
    # A mapped cross-Region model is in use too, but its price is not the Price List's.
    geo = f"us.{NOVA}"
    s.create_tenant(tenant_id)
    s.map_profile(tenant_id, geo, APP_ARN_PREFIX + "geoimport001")
    emulator(s, "PUT", f"prices/{HAIKU}", {"input": "0.275", "output": "1.375", "cache_read": "0.03", "cache_write": "0.3"})
    try:
        out = cli(s, "prices", "import", "--from-aws", "--dry-run").stdout
        assert f"{HAIKU}: changed: input 0.3 -> 0.275, output 1.25 -> 1.375, cache_write - -> 0.3" in out, out
        assert "nothing written" in out
        assert f"{geo}: a cross-Region profile ID; the Price List prices the model, not the profile: left as it is" in out
        assert Decimal(price_of(s, HAIKU)["input"]) == Decimal("0.30")

        out = cli(s, "prices", "import", "--from-aws").stdout
        p = price_of(s, HAIKU)
        assert (Decimal(p["input"]), Decimal(p["output"]), Decimal(p["cache_write"])) == (
            Decimal("0.275"), Decimal("1.375"), Decimal("0.3"))
        assert s.admin("GET", f"/v1/pricing/{requests.utils.quote(geo, safe='')}", expect=404)
        again = cli(s, "prices", "import", "--from-aws", "--dry-run").stdout
        assert f"{HAIKU}: unchanged" in again, again
        # A file import has no dry run: refused before anything is read or written.
        r = cli(s, "prices", "import", "prices.json", "--dry-run", check=False)
        assert r.returncode != 0 and "--dry-run and --aws-region go with --from-aws" in r.stderr, r.stderr
    finally:
        emulator(s, "PUT", f"prices/{HAIKU}", {"input": "0.25", "output": "1.25", "cache_read": "0.03", "cache_write": "0.30"})


# --- the emulator's new operations, through boto3 ------------------------------

def test_emulator_profiles_through_boto3(aws):
    b = client(aws, "bedrock")
    fm = f"arn:aws:bedrock:us-east-1::foundation-model/{NOVA}"
    arn = b.create_inference_profile(inferenceProfileName="fidelity-one", modelSource={"copyFrom": fm},
                                     description="fidelity", tags=[{"key": "k", "value": "v"}])["inferenceProfileArn"]
    assert arn.startswith(APP_ARN_PREFIX)
    by_id = b.get_inference_profile(inferenceProfileIdentifier=arn.rsplit("/", 1)[1])
    assert by_id["inferenceProfileArn"] == arn and by_id["description"] == "fidelity"
    assert isinstance(by_id["createdAt"], datetime.datetime)
    sys_id = f"us.{HAIKU}"
    sys_profile = b.get_inference_profile(inferenceProfileIdentifier=sys_id)
    assert sys_profile["type"] == "SYSTEM_DEFINED" and len(sys_profile["models"]) == 3
    copied = b.create_inference_profile(inferenceProfileName="fidelity-geo",
                                        modelSource={"copyFrom": sys_profile["inferenceProfileArn"]})["inferenceProfileArn"]
    assert len(b.get_inference_profile(inferenceProfileIdentifier=copied)["models"]) == 3

    # Pagination: one per page, every profile exactly once.
    seen, token = [], None
    while True:
        kw = {"typeEquals": "APPLICATION", "maxResults": 1, **({"nextToken": token} if token else {})}
        page = b.list_inference_profiles(**kw)
        assert len(page["inferenceProfileSummaries"]) <= 1
        seen += [p["inferenceProfileArn"] for p in page["inferenceProfileSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert arn in seen and copied in seen and len(seen) == len(set(seen))
    assert all(p["type"] == "SYSTEM_DEFINED"
               for p in b.list_inference_profiles(typeEquals="SYSTEM_DEFINED")["inferenceProfileSummaries"])

    b.tag_resource(resourceARN=arn, tags=[{"key": "env", "value": "prod"}])
    b.untag_resource(resourceARN=arn, tagKeys=["k"])
    assert b.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "env", "value": "prod"}]

    def code(call, **kw) -> tuple[str, int]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(**kw)
        return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]

    assert code(b.create_inference_profile, inferenceProfileName="fidelity-one",
                modelSource={"copyFrom": fm}) == ("ConflictException", 400)
    assert code(b.create_inference_profile, inferenceProfileName="bad name!",
                modelSource={"copyFrom": fm}) == ("ValidationException", 400)
    assert code(b.create_inference_profile, inferenceProfileName="unknown-model",
                modelSource={"copyFrom": "arn:aws:bedrock:us-east-1::foundation-model/acme.nope-v1:0"}) == (
        "ValidationException", 400)
    assert code(b.tag_resource, resourceARN=arn, tags=[{"key": "aws:reserved", "value": "x"}]) == (
        "ValidationException", 400)
    assert code(b.tag_resource, resourceARN=arn,
                tags=[{"key": f"t{i}", "value": "x"} for i in range(60)]) == ("TooManyTagsException", 400)
    assert code(b.get_inference_profile, inferenceProfileIdentifier=APP_ARN_PREFIX + "nosuchprofile") == (
        "ResourceNotFoundException", 404)
    assert code(b.delete_inference_profile, inferenceProfileIdentifier=sys_id) == ("ValidationException", 400)
    try:
        emulator(aws, "PUT", "quotas", {"application_inference_profiles": 0})
        assert code(b.create_inference_profile, inferenceProfileName="over-quota",
                    modelSource={"copyFrom": fm}) == ("ServiceQuotaExceededException", 400)
        emulator(aws, "PUT", "deny", {"actions": ["bedrock:ListTagsForResource"]})
        assert code(b.list_tags_for_resource, resourceARN=arn) == ("AccessDeniedException", 403)
    finally:
        emulator(aws, "PUT", "quotas", {"application_inference_profiles": 1000})
        emulator(aws, "PUT", "deny", {"actions": []})
    wrong = boto3.client("bedrock", endpoint_url=aws.emulator_url, region_name=REGION,
                         aws_access_key_id=EMULATOR_AKID, aws_secret_access_key="wrong-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        wrong.list_inference_profiles()
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"

    b.delete_inference_profile(inferenceProfileIdentifier=copied)
    b.delete_inference_profile(inferenceProfileIdentifier=arn)
    assert code(b.delete_inference_profile, inferenceProfileIdentifier=arn) == ("ResourceNotFoundException", 404)


def test_emulator_cost_explorer_bills_what_it_served(aws):
    s = aws
    b = client(s, "bedrock")
    arn = b.create_inference_profile(
        inferenceProfileName="fidelity-bill", modelSource={"copyFrom": f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"},
        tags=[{"key": "fidelity:bill", "value": "one"}])["inferenceProfileArn"]
    rt = client(s, "bedrock-runtime")
    texts = ["count these tokens", "and these " * 9]
    usage = [rt.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": t}]}])["usage"] for t in texts]
    price = {p["model_id"]: p for p in emulator(s, "GET", "prices")}[HAIKU]
    expected = sum((Decimal(u["inputTokens"]) * Decimal(price["input"])
                    + Decimal(u["outputTokens"]) * Decimal(price["output"])) / MILLION for u in usage)
    ce = client(s, "ce")
    today = datetime.datetime.now(datetime.timezone.utc).date()
    start = today.replace(day=1)
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    out = ce.get_cost_and_usage(TimePeriod={"Start": str(start), "End": str(end)}, Granularity="MONTHLY",
                                Metrics=["UnblendedCost"], GroupBy=[{"Type": "TAG", "Key": "fidelity:bill"}])
    assert out["GroupDefinitions"] == [{"Type": "TAG", "Key": "fidelity:bill"}]
    [period] = out["ResultsByTime"]
    assert period["TimePeriod"] == {"Start": str(start), "End": str(end)} and period["Estimated"] is True
    groups = {g["Keys"][0]: g["Metrics"]["UnblendedCost"] for g in period["Groups"]}
    assert Decimal(groups["fidelity:bill$one"]["Amount"]) == expected
    assert groups["fidelity:bill$one"]["Unit"] == "USD"
    daily = ce.get_cost_and_usage(TimePeriod={"Start": str(today), "End": str(today + datetime.timedelta(days=1))},
                                  Granularity="DAILY", Metrics=["UnblendedCost"],
                                  Filter={"Tags": {"Key": "fidelity:bill", "Values": ["one"]}})
    assert Decimal(daily["ResultsByTime"][0]["Total"]["UnblendedCost"]["Amount"]) == expected
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ce.get_cost_and_usage(TimePeriod={"Start": str(end), "End": str(start)}, Granularity="MONTHLY",
                              Metrics=["UnblendedCost"])
    assert e.value.response["Error"]["Code"] == "ValidationException"


def test_emulator_price_list_through_boto3(aws):
    p = client(aws, "pricing")
    flt = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"}]
    items, token = [], None
    while True:
        page = p.get_products(ServiceCode="AmazonBedrock", Filters=flt, MaxResults=3,
                              **({"NextToken": token} if token else {}))
        assert len(page["PriceList"]) <= 3
        items += [json.loads(i) for i in page["PriceList"]]
        token = page.get("NextToken")
        if not token:
            break
    table = {x["model_id"]: x for x in emulator(aws, "GET", "prices")}
    nova_in = [i for i in items if i["product"]["attributes"].get("model") == "Nova Lite"
               and i["product"]["attributes"]["inferenceType"] == "Input tokens"]
    assert len(nova_in) == 1
    dim = next(iter(next(iter(nova_in[0]["terms"]["OnDemand"].values()))["priceDimensions"].values()))
    assert dim["unit"] == "1K tokens"
    assert Decimal(dim["pricePerUnit"]["USD"]) * 1000 == Decimal(table[NOVA]["input"])
    # Third-party models are under their own service code, named by servicename.
    fm = p.get_products(ServiceCode="AmazonBedrockFoundationModels", Filters=flt)["PriceList"]
    assert any(json.loads(i)["product"]["attributes"].get("servicename") == "Claude 3 Haiku (Amazon Bedrock Edition)"
               for i in fm)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        p.get_products(ServiceCode="AmazonBedrock", MaxResults=500)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
