"""The shipped Envoy configs are valid for the Envoy we run (`--mode validate`)."""

import subprocess

import pytest

from harness import ENVOY, REPO, TLS_DIR, WASM, emulator_envoy_config, render_template


def validate(tmp_path, text: str) -> None:
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(text)
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


def test_emulator_config_validates(tmp_path):
    validate(tmp_path, emulator_envoy_config(WASM, 10000, 9901, 9180, 9190))


@pytest.mark.parametrize("tls", [True, False])
def test_aws_config_validates(tmp_path, tls):
    text = render_template(
        REPO / "envoy/aws.yaml", ENVOY_ADMIN_PORT=9901, LISTENER_PORT=10000, WASM_PATH=WASM,
        AWS_REGION="eu-west-1", BEDROCK_HOST="bedrock-runtime.eu-west-1.amazonaws.com",
        BEDROCK_PORT=443 if tls else 80, SIDECAR_PORT=9190,
        TLS_CERT=TLS_DIR / "gateway.pem", TLS_KEY=TLS_DIR / "gateway.key",
    )
    if not tls:
        start = text.index("    # BEGIN TLS")
        end = text.index("    # END TLS\n") + len("    # END TLS\n")
        text = text[:start] + text[end:]
    assert ("UpstreamTlsContext" in text) == tls
    assert "DownstreamTlsContext" in text
    validate(tmp_path, text)


def test_a_broken_config_is_refused(tmp_path):
    cfg = tmp_path / "envoy.yaml"
    cfg.write_text(emulator_envoy_config(WASM, 10000, 9901, 9180, 9190).replace("allow_on_headers_stop_iteration", "allow_on_headers_stop"))
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
