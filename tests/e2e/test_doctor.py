"""`tollgate-sidecar doctor` against a real deployment (sidecar, Envoy with the
filter) and against broken ones: each broken setup must be caught, named, and
make the command fail."""

import subprocess

import pytest

from harness import BIN_DIR, EMULATOR_AKID, EMULATOR_SECRET, Stack, free_port, spawn, wait_http

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
GOOD_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/doctor1"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A stack of its own: the shared one holds other tests' catalog entries."""
    s = Stack(tmp_path_factory.mktemp("doctor")).start()
    s.set_price(HAIKU, "0.25", "1.25")
    s.create_tenant("doctor-ok")
    s.map_profile("doctor-ok", HAIKU, GOOD_ARN)
    yield s
    s.stop()


def doctor(stack: Stack, *extra: str, url: str | None = None, envoy_admin: int | None = None,
           aws: dict[str, str] | None = None):
    admin = envoy_admin if envoy_admin is not None else stack.envoy_admin
    cmd = [str(BIN_DIR / "tollgate-sidecar"), "doctor", "--url", url or stack.sidecar_url,
           "--envoy-admin", f"http://127.0.0.1:{admin}", *extra]
    # No AWS credentials unless a test gives some; no instance metadata to wait for.
    env = {"TOLLGATE_ADMIN_TOKEN": stack.admin_token, "PATH": "/usr/bin:/bin",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", **(aws or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def emulator_aws(stack: Stack, **override: str) -> dict[str, str]:
    """The emulator stands in for STS: the gateway's credentials, pointed at it."""
    return {"AWS_ACCESS_KEY_ID": EMULATOR_AKID, "AWS_SECRET_ACCESS_KEY": EMULATOR_SECRET,
            "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_STS": stack.emulator_url, **override}


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(level)]


def test_a_healthy_deployment_passes(deployment):
    r = doctor(deployment)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines(r.stdout, "FAIL") == []
    for check in ("sidecar.health", "sidecar.store", "clock", "catalog", "envoy.filter_loaded",
                  "envoy.allow_on_headers_stop_iteration", "envoy.filter_order",
                  "filter.settlements_dropped"):
        assert any(check in line for line in lines(r.stdout, "ok")), (check, r.stdout)


def test_an_envoy_that_forwards_headers_early_is_caught(deployment):
    s = deployment
    listener, admin = free_port(), free_port()
    p = s.plan(listener, admin, envoy_workers=1)
    flag = "allow_on_headers_stop_iteration: true"
    assert flag in p["envoy_config"]
    cfg = s.workdir / "envoy-early.yaml"
    cfg.write_text(p["envoy_config"].replace(flag, "allow_on_headers_stop_iteration: false"))
    launch = p["envoy"]
    launch["args"][launch["args"].index(p["envoy_config_path"])] = str(cfg)
    proc = spawn("envoy-early", [launch["program"], *launch["args"]], s.workdir, env=launch["env"])
    try:
        wait_http(f"http://127.0.0.1:{admin}/ready", proc.popen, proc.log)
        r = doctor(s, envoy_admin=admin)
        assert r.returncode != 0
        failed = lines(r.stdout, "FAIL")
        assert len(failed) == 1 and "envoy.allow_on_headers_stop_iteration" in failed[0], r.stdout
        assert "set `allow_on_headers_stop_iteration: true`" in r.stdout
    finally:
        proc.stop()


def test_a_profile_in_another_region_or_without_a_price_is_caught(deployment):
    s = deployment
    s.create_tenant("doctor-bad")
    s.map_profile("doctor-bad", HAIKU,
                  "arn:aws:bedrock:eu-west-1:123456789012:application-inference-profile/elsewhere")
    sonnet = "anthropic.claude-3-sonnet-20240229-v1:0"
    s.map_profile("doctor-bad", sonnet, GOOD_ARN)
    # (Profiles cannot be deleted yet: this test runs after the healthy one.)
    r = doctor(s)
    assert r.returncode != 0
    out = r.stdout
    assert any("catalog.profile_region" in line and "eu-west-1" in line for line in lines(out, "FAIL")), out
    assert any("catalog.profile_priced" in line and sonnet in line for line in lines(out, "FAIL")), out


def test_an_unreachable_sidecar_is_caught(deployment):
    r = doctor(deployment, url=f"http://127.0.0.1:{free_port()}")
    assert r.returncode != 0
    assert any("sidecar.health" in line for line in lines(r.stdout, "FAIL")), r.stdout
    assert "start the sidecar" in r.stdout


def test_aws_credentials_are_checked_with_sts(deployment):
    s = deployment
    r = doctor(s, aws=emulator_aws(s))
    # (Earlier tests left broken catalog entries in this stack: only the AWS lines count.)
    assert not [line for line in lines(r.stdout, "FAIL") if "aws." in line], r.stdout
    identity = [line for line in lines(r.stdout, "ok") if "aws.identity" in line]
    assert identity and "arn:aws:iam::123456789012:user/tollgate-emulator" in identity[0], r.stdout
    assert any("aws.credentials" in line and "AKIA…ATOR" in line for line in lines(r.stdout, "ok")), r.stdout
    assert EMULATOR_SECRET not in r.stdout + r.stderr
    calls = [c for c in s.emulator_requests() if c["operation"] == "GetCallerIdentity"]
    assert calls and calls[-1]["sigv4"]["ok"] is True and calls[-1]["status"] == 200


@pytest.mark.parametrize("override,code,advice", [
    ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "SignatureDoesNotMatch", "does not belong to this access key"),
    ({"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"}, "InvalidClientTokenId", "AWS does not know this access key"),
])
def test_credentials_sts_refuses_are_caught(deployment, override, code, advice):
    r = doctor(deployment, aws=emulator_aws(deployment, **override))
    assert r.returncode == 1, r.stdout + r.stderr
    fail = [line for line in lines(r.stdout, "FAIL") if "aws.identity" in line]
    assert fail and code in fail[0], r.stdout
    assert advice in r.stdout
    assert "not-the-secret" not in r.stdout + r.stderr


def test_missing_or_unverifiable_credentials_warn(deployment):
    r = doctor(deployment)
    assert not [line for line in lines(r.stdout, "FAIL") if "aws." in line], r.stdout
    assert any("aws.credentials" in line and "no AWS credentials resolve" in line
               for line in lines(r.stdout, "WARN")), r.stdout
    # Credentials, but STS out of reach: a warning, not a failure.
    r = doctor(deployment, aws=emulator_aws(deployment, AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{free_port()}"))
    assert not [line for line in lines(r.stdout, "FAIL") if "aws." in line], r.stdout
    assert any("aws.identity" in line and "unreachable" in line for line in lines(r.stdout, "WARN")), r.stdout
