"""The web dashboard (/ui) in a real browser: headless Chromium from Debian driven
by Selenium through Debian's chromedriver. A stack seeded with
examples/seed.json (the demo's tenants, prices and keys) takes real traffic
through the gateway first (boto3 Converse with the demo tenant's key, two
models, two applications, past its 80 % alert threshold); the test then logs in,
sees the seeded tenants, reads the demo tenant's budget bar, trend, model and
application splits, and checks every number against the admin API. It also checks that the page updates live,
that no key, secret or the admin token is in any page, the CSV export, and
logout. Screenshots are kept in target/test-artifacts/ui/."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from harness import REPO, Stack

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (tests/requirements.txt)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SONNET = "anthropic.claude-3-sonnet-20240229-v1:0"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
ARTIFACTS = REPO / "target" / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
SEED = REPO / "examples" / "seed.json"
DEMO_TENANT = "tenant-demo1"
DEMO_KEY = "tg_demo_tenant_demo1_key"  # examples/seed.json imports it


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A stack of its own whose sidecar starts from the seed file."""
    s = Stack(tmp_path_factory.mktemp("ui-stack"), sidecar_args=["--seed", str(SEED)]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"no Chromium/chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver "
                    "(cargo xtask test installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    # Debian's chromedriver, named: Selenium Manager would otherwise try to
    # download a driver, and the test must work offline.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    """A full-page PNG in target/test-artifacts/ui (the window grows to the page)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(1400, max(1000, min(int(height) + int(chrome) + 8, 8000)))
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    driver.set_window_size(1400, 1000)
    return path


def prompt(i: int) -> str:
    # About 20,000 input tokens (the demo's prompt, ten times over), so a few
    # Sonnet calls use most of the demo tenant's $1.00.
    return f"Call {i}: summarise the quarterly spend of every team in one paragraph. " * (1000 + (i * 7) % 15)


def converse(stack, key: str, model: str, app: str, i: int) -> None:
    out = stack.bedrock(key).call(
        "converse", modelId=model, inferenceConfig={"maxTokens": 64},
        messages=[{"role": "user", "content": [{"text": prompt(i)}]}],
        requestMetadata={"application_id": app})
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 200


def usd(el) -> Decimal:
    """The exact amount of a money element (its `data-usd`), checked against its text."""
    node = el if el.get_attribute("data-usd") is not None else el.find_element(By.CSS_SELECTOR, "[data-usd]")
    v = Decimal(node.get_attribute("data-usd"))
    assert node.text == f"${node.get_attribute('data-usd')}", node.text
    return v


def field(scope, name: str) -> Decimal:
    return usd(scope.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]'))


def split(driver, section: str) -> dict[str, Decimal]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{section} table.split tr[data-key]")
    return {r.get_attribute("data-key"): usd(r) for r in rows}


def login(driver, stack) -> None:
    driver.get(f"{stack.sidecar_url}/ui")
    box = driver.find_element(By.ID, "token")
    box.send_keys(stack.admin_token)
    driver.find_element(By.ID, "login").click()
    # The login form's page is replaced while the wait looks: look again then.
    WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "main h1") and
        d.find_element(By.CSS_SELECTOR, "main h1").text == "Tenants")


def test_the_dashboard_shows_the_demo_tenant_after_real_traffic(seeded, browser):
    stack, tenant_id, key = seeded, DEMO_TENANT, DEMO_KEY
    t0 = time.monotonic()
    akid, sigv4_secret = stack.issue_sigv4(tenant_id)
    # 16 Sonnet calls of about $0.054 cross the 80 % threshold of the $1.00 budget.
    calls = [(SONNET, "chat" if i % 3 else "search") for i in range(16)] + [(HAIKU, "chat"), (HAIKU, "search")]
    for i, (model, app) in enumerate(calls):
        converse(stack, key, model, app, i)
    api = stack.settled(tenant_id, len(calls))
    bal = api["balance"]
    assert Decimal(bal["spent_usd"]) > Decimal("0.8"), bal
    assert [a["kind"] for a in api["alerts"]] == ["threshold"], api["alerts"]

    # Logged out, a page is the login form and the token field is a password.
    browser.delete_all_cookies()
    browser.get(f"{stack.sidecar_url}/ui/tenants/{tenant_id}")
    assert browser.find_element(By.ID, "token").get_attribute("type") == "password"
    screenshot(browser, "login")
    login(browser, stack)
    assert stack.admin_token not in browser.current_url
    cookie = browser.get_cookie("tollgate_ui_session")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert cookie["value"] != stack.admin_token

    # The overview lists the seeded tenants; the demo tenant's row and budget
    # bar carry the API's numbers.
    shown = {r.get_attribute("data-tenant") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-tenant]")}
    assert shown == {t["tenant_id"] for t in stack.admin("GET", "/v1/tenants")["tenants"]}
    assert {"tenant-demo1", "tenant-demo2"} <= shown
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-tenant="{tenant_id}"]')
    for f in ("spent_usd", "reserved_usd", "available_usd", "budget_usd"):
        assert field(row, f) == Decimal(bal[f]), f
    assert row.find_element(By.CSS_SELECTOR, "svg.budget-bar line.threshold")
    screenshot(browser, "overview")
    overview_html = browser.page_source

    # The tenant page: budget bar, trend, model and application splits.
    browser.find_element(By.LINK_TEXT, tenant_id).click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "budget"))
    budget = browser.find_element(By.ID, "budget")
    for f in ("spent_usd", "reserved_usd", "available_usd", "budget_usd"):
        assert field(budget, f) == Decimal(bal[f]), f
    assert budget.find_element(By.CSS_SELECTOR, '[data-field="requests"]').text == str(bal["requests"])
    bar = budget.find_element(By.CSS_SELECTOR, "svg.budget-bar")
    spent_w = float(bar.find_element(By.CSS_SELECTOR, "rect.spent").get_attribute("width"))
    expected_w = float(Decimal(bal["spent_usd"]) / Decimal(bal["budget_usd"]) * 1000)
    assert abs(spent_w - min(expected_w, 1000)) < 0.11, (spent_w, expected_w)
    threshold_x = float(bar.find_element(By.CSS_SELECTOR, "line.threshold").get_attribute("x1"))
    assert threshold_x == 800.0

    days = browser.find_elements(By.CSS_SELECTOR, "#trend rect.day")
    per_day = {d.get_attribute("data-day"): Decimal(d.get_attribute("data-usd")) for d in days}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert per_day[today] == Decimal(bal["spent_usd"]), per_day
    assert sum(per_day.values()) == Decimal(bal["spent_usd"])
    assert len(per_day) == int(today[-2:]), "one bar per day of the month so far"

    assert split(browser, "by-model") == {m: Decimal(v["spent_usd"]) for m, v in bal["by_model"].items()}
    assert set(split(browser, "by-model")) == {SONNET, HAIKU}
    usage = stack.admin("GET", f"/v1/usage?group_by=application&tenant={tenant_id}")["rows"]
    assert split(browser, "by-application") == {r["application"]: Decimal(r["cost_usd"]) for r in usage}
    assert set(split(browser, "by-application")) == {"chat", "search"}

    # Configuration from the seed: limits, profiles, key ids, SigV4 ids.
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="rate_limit_rpm"]').text == "100"
    assert browser.find_element(By.CSS_SELECTOR, '[data-field="max_tokens_cap"]').text == "4000"
    assert "application-inference-profile/demo1sonnet" in browser.find_element(By.ID, "profiles").text
    for k in api["keys"]:
        assert browser.find_elements(By.CSS_SELECTOR, f'#keys tr[data-key-id="{k["key_id"]}"]')
    assert browser.find_elements(By.CSS_SELECTOR, f'#sigv4 tr[data-access-key-id="{akid}"]')
    alerts = browser.find_elements(By.CSS_SELECTOR, "#alerts tr.alert")
    assert len(alerts) == len(api["alerts"]), api["alerts"]
    screenshot(browser, "tenant")
    tenant_html = browser.page_source

    # Live: more traffic, and the open page follows without a reload.
    browser.execute_script("window.__noReload = 1")
    converse(stack, key, HAIKU, "chat", 99)
    after = stack.settled(tenant_id, len(calls) + 1)["balance"]
    assert after["spent_usd"] != bal["spent_usd"]
    # The live update replaces the figures: an element found just before it
    # goes stale, so the wait looks again rather than failing.
    WebDriverWait(browser, 20, poll_frequency=0.5,
                  ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '#budget [data-field="spent_usd"] [data-usd]')
        .get_attribute("data-usd") == after["spent_usd"])
    assert browser.execute_script("return window.__noReload") == 1, "the page was reloaded, not updated"
    assert int(browser.find_element(By.ID, "live").get_attribute("data-updates")) >= 1

    # The usage table and its CSV export (with the browser's session).
    browser.get(f"{stack.sidecar_url}/ui/usage?group_by=tenant,model&tenant={tenant_id}")
    total = browser.find_element(By.CSS_SELECTOR, "table.usage tfoot")
    assert field(total, "cost_usd") == Decimal(after["spent_usd"])
    assert total.find_element(By.CSS_SELECTOR, '[data-field="requests"]').text == str(after["requests"])
    screenshot(browser, "usage")
    usage_html = browser.page_source
    csv_url = browser.find_element(By.ID, "csv").get_attribute("href")
    session = {"tollgate_ui_session": browser.get_cookie("tollgate_ui_session")["value"]}
    got = requests.get(csv_url, cookies=session, timeout=10)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    want = stack.admin("GET", f"/v1/usage?group_by=tenant,model&tenant={tenant_id}&format=csv")
    assert got.text == want.text
    assert requests.get(csv_url, timeout=10, allow_redirects=False).status_code == 303, "no session, no CSV"

    # No secret in any page: not the bearer key (nor its hash), not the SigV4
    # secret, not the admin, filter or metrics token, not the sealing key.
    secrets = [key, hashlib.sha256(key.encode()).hexdigest(), sigv4_secret, stack.admin_token,
               stack.filter_token, stack.metrics_token, stack.secret_key]
    for name, html in (("overview", overview_html), ("tenant", tenant_html), ("usage", usage_html)):
        for s in secrets:
            assert s not in html, f"a secret is in the {name} page"

    # Logout ends the session: the old cookie no longer opens a page.
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "token"))
    r = requests.get(f"{stack.sidecar_url}/ui/usage", cookies=session, timeout=10, allow_redirects=False)
    assert r.status_code == 303
    print(f"dashboard test: {time.monotonic() - t0:.1f}s")
