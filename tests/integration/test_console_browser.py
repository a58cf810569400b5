"""The web console in a real browser: Debian's chromium through chromium-driver (Selenium),
against a real server (and agent) on real sockets. Each page visited is saved under
build/screenshots/."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from devtools.harness.agent_clients import agent_cli
from devtools.harness.agent_process import AgentProcess
from devtools.harness.browser import browser_missing, chromium, console_errors, screenshot
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.server.console.app import COOKIE
from tests.integration.conftest import ServerFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONSOLE = {"address": "127.0.0.1:0"}


def need_browser() -> None:
    why = browser_missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    need_browser()
    with chromium() as driver:
        yield driver


@pytest.fixture
def running_server(server_factory: ServerFactory) -> ServerProcess:
    """This module's server has the console on (agent_factory attaches agents to it)."""
    return server_factory(console=CONSOLE)


def base(server: ServerProcess) -> str:
    return f"https://{server.addresses['console']}"


def login_url(server: ServerProcess) -> str:
    return server.cli("console", "login").stdout.splitlines()[0]


def log_in(driver: WebDriver, server: ServerProcess) -> str:
    """Open a fresh login URL; returns the session's name (as the audit log shows it)."""
    url = login_url(server)
    driver.get(url)
    assert driver.current_url == base(server) + "/"
    return url.split("token=", 1)[1].split(".", 1)[0]


def raw(
    server: ServerProcess,
    method: str,
    path: str,
    cookie: str | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request outside the browser (certificate unchecked, as the browser's)."""
    host, port = server.addresses["console"].rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    headers = {"cookie": f"{COOKIE}={cookie}"} if cookie else {}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["content-type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _replaced(page: WebElement) -> bool:
    """Whether `page` has left the document. Chromium reports a node of a replaced document
    either as stale or, mid-navigation, as "does not belong to the document"; both mean gone
    (selenium's staleness_of knows only the first)."""
    try:
        page.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in (exc.msg or ""):
            return True
        raise
    return False


def click_to_next_page(driver: WebDriver, by: str, value: str) -> None:
    """Click a link or submit button and wait until the page it leads to has replaced this one."""
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, value).click()
    WebDriverWait(driver, 30).until(lambda _driver: _replaced(page))


def why_refused(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "reason").get_attribute("data-why"))


def audited(server: ServerProcess, method: str, session: str) -> bool:
    """Whether the audit log has `method` done by console session `session`."""
    return any(
        r.get("event") == "admin call"
        and (r.get("method"), r.get("console_session"), r.get("result")) == (method, session, "OK")
        for r in server.log_lines()
    )


def entry_count(server: ServerProcess) -> int:
    return int(server.cli_json("entry", "count")["count"])


def test_a_login_url_works_once_and_pages_need_a_session(
    running_server: ServerProcess, browser: WebDriver
) -> None:
    console = base(running_server)
    browser.get(console + "/agents")  # no session: redirected to the explanation
    assert browser.current_url == console + "/signed-out?why=missing"
    assert why_refused(browser) == "missing"
    assert "insignia-server console login" in browser.page_source
    screenshot(browser, "signed-out")

    status, headers, _ = raw(running_server, "GET", "/entries")
    assert (status, headers["location"]) == (303, "/signed-out?why=missing")
    assert raw(running_server, "GET", "/events/stream")[0] == 401
    assert raw(running_server, "POST", "/entries/new", form={"spiffe_id": "x"})[0] == 401

    url = login_url(running_server)
    browser.get(url)
    assert browser.current_url == console + "/"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Trust domain example.org"
    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert raw(running_server, "GET", "/entries", cookie=cookie["value"])[0] == 200
    opened = [r for r in running_server.log_lines() if r.get("event") == "console session opened"]
    assert [r["console_session"] for r in opened] == [url.split("token=")[1].split(".")[0]]

    browser.delete_all_cookies()
    browser.get(url)  # the same URL again: refused
    assert why_refused(browser) == "used"
    browser.get(console + "/")
    assert browser.current_url == console + "/signed-out?why=missing"
    status, headers, _ = raw(running_server, "GET", "/")
    assert "default-src 'self'" in headers["content-security-policy"]


def test_an_expired_session_is_explained(server_factory: ServerFactory, browser: WebDriver) -> None:
    server = server_factory(console={**CONSOLE, "session_ttl": "2s"})
    log_in(browser, server)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Trust domain example.org"

    def expired() -> bool:
        browser.get(base(server) + "/agents")
        return browser.current_url.endswith("/signed-out?why=expired")

    wait_for(expired, 30, "the 2 s session to expire")
    assert "expired" in browser.find_element(By.ID, "reason").text


def test_a_form_without_its_csrf_token_is_refused(
    running_server: ServerProcess, browser: WebDriver
) -> None:
    log_in(browser, running_server)
    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None
    browser.get(base(running_server) + "/entries/new")
    token = browser.find_element(By.NAME, "csrf").get_attribute("value")
    fields = {
        "spiffe_id": "spiffe://example.org/csrf",
        "parent_id": "spiffe://example.org/insignia/agent/join_token/x",
        "selectors": "unix:uid:1000",
    }
    for form in (fields, {**fields, "csrf": "forged"}):
        status, _, body = raw(running_server, "POST", "/entries/new", cookie["value"], form)
        assert status == 403 and b"CSRF" in body
    assert entry_count(running_server) == 0
    status, _, _ = raw(
        running_server, "POST", "/entries/new", cookie["value"], {**fields, "csrf": str(token)}
    )
    assert status == 303  # the same post with the token goes through
    assert entry_count(running_server) == 1


def test_an_entry_made_in_the_form_reaches_a_workload(
    running_server: ServerProcess, running_agent: AgentProcess, browser: WebDriver
) -> None:
    session = log_in(browser, running_server)
    spiffe_id = "spiffe://example.org/console/made"
    browser.get(base(running_server) + "/entries/new")
    browser.find_element(By.ID, "spiffe_id").send_keys(spiffe_id)
    browser.find_element(By.ID, "parent_id").send_keys(running_agent.agent_id)
    browser.find_element(By.ID, "selectors").send_keys(f"unix:uid:{os.getuid()}")
    screenshot(browser, "entry-new")
    click_to_next_page(browser, By.ID, "save")
    assert "/entries/detail?id=" in browser.current_url
    assert browser.find_element(By.ID, "entry-spiffe-id").text == spiffe_id
    screenshot(browser, "entry-detail")

    shown = running_server.cli_json("entry", "show")["entries"]
    assert [e["spiffe_id"] for e in shown] == [spiffe_id]
    assert audited(running_server, "CreateEntries", session)

    def fetched() -> bool:
        result = agent_cli("api", "fetch", "x509", "--socket", str(running_agent.socket_path))
        return result.returncode == 0 and spiffe_id in result.stdout

    wait_for(fetched, 30, "the workload to receive the SVID of the entry made in the form")
    browser.get(base(running_server) + f"/entries?parent_id={running_agent.agent_id}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
    assert len(rows) == 1 and spiffe_id in rows[0].text
    screenshot(browser, "entries")


def test_a_bad_spiffe_id_gets_the_cli_message_beside_the_field(
    running_server: ServerProcess, browser: WebDriver
) -> None:
    bad = "spiffe://example.org/has//empty-segment"
    parent = "spiffe://example.org/insignia/agent/join_token/x"
    cli = running_server.cli(
        "entry", "create", "--spiffe-id", bad, "--parent-id", parent,
        "--selector", "unix:uid:1000", check=False,
    )  # fmt: skip
    assert cli.returncode == 1
    log_in(browser, running_server)
    browser.get(base(running_server) + "/entries/new")
    browser.find_element(By.ID, "spiffe_id").send_keys(bad)
    browser.find_element(By.ID, "parent_id").send_keys(parent)
    browser.find_element(By.ID, "selectors").send_keys("unix:uid:1000")
    click_to_next_page(browser, By.ID, "save")
    assert browser.find_element(By.ID, "error-spiffe_id").text == cli.stderr.strip()
    assert browser.find_element(By.ID, "spiffe_id").get_attribute("value") == bad  # kept
    screenshot(browser, "entry-form-error")
    assert entry_count(running_server) == 0
    browser.get(base(running_server) + f"/entries?spiffe_id={quote(bad)}")  # a bad search too
    assert "empty segment" in browser.find_element(By.ID, "error-spiffe_id").text


def test_evicting_an_agent_from_the_page(
    running_server: ServerProcess, running_agent: AgentProcess, browser: WebDriver
) -> None:
    agent_id = running_agent.agent_id  # read before the eviction removes its identity file
    session = log_in(browser, running_server)
    screenshot(browser, "overview")
    browser.get(base(running_server) + "/agents")
    screenshot(browser, "agents")
    click_to_next_page(browser, By.LINK_TEXT, agent_id)
    screenshot(browser, "agent-detail")
    click_to_next_page(browser, By.ID, "evict")
    assert "must attest again" in browser.find_element(By.CLASS_NAME, "effect").text
    screenshot(browser, "agent-evict-confirm")
    click_to_next_page(browser, By.ID, "confirm")
    assert browser.find_element(By.ID, "message").text == f"{agent_id} evicted"

    assert running_agent.wait_exit(60) == 1  # a join-token agent cannot attest again: it exits
    assert "create a new join token" in running_agent.logs()
    assert running_server.cli_json("agent", "list").get("agents", []) == []
    assert audited(running_server, "EvictAgent", session)


def test_the_timeline_shows_a_prepared_key_without_a_reload(
    running_server: ServerProcess, browser: WebDriver
) -> None:
    session = log_in(browser, running_server)
    prepared = "#timeline g.key-prepared[data-kind='x509']"
    assert browser.find_elements(By.CSS_SELECTOR, prepared) == []
    browser.execute_script("window.notReloaded = true;")
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.documentElement.dataset.live") == "open"
    )
    running_server.cli("authority", "x509", "prepare")
    issued = time.monotonic()
    WebDriverWait(browser, 2).until(lambda d: d.find_elements(By.CSS_SELECTOR, prepared))
    print(f"prepared key on the timeline {time.monotonic() - issued:.3f} s after the CLI returned")
    assert browser.execute_script("return window.notReloaded === true;")
    key = browser.find_element(By.CSS_SELECTOR, prepared).get_attribute("data-key-id")
    listed = running_server.cli_json("authority", "x509", "show")["authorities"]
    assert key in [a["authority_id"] for a in listed if a["state"] == "prepared"]
    WebDriverWait(browser, 10).until(
        lambda d: "prepared" in d.find_element(By.ID, "live-events").text
    )
    screenshot(browser, "overview-live")

    browser.get(base(running_server) + "/authorities")
    screenshot(browser, "authorities")
    click_to_next_page(browser, By.LINK_TEXT, "Activate prepared X.509 CA")
    assert "signed by it" in browser.find_element(By.CLASS_NAME, "effect").text
    click_to_next_page(browser, By.ID, "confirm")
    assert browser.find_element(By.ID, "message").text == f"x509 authority {key}: active"
    assert audited(running_server, "ActivateAuthority", session)
    browser.get(base(running_server) + "/authorities")
    (old_id,) = [a["authority_id"] for a in listed if a["state"] == "active"]  # active before
    click_to_next_page(browser, By.CSS_SELECTOR, f"a[href*='action=taint&id={old_id}']")
    assert "replaces, at once" in browser.find_element(By.CLASS_NAME, "effect").text
    click_to_next_page(browser, By.ID, "confirm")
    browser.get(base(running_server) + "/authorities")
    tainted = f"#timeline g.key-tainted[data-key-id='{old_id}']"
    assert browser.find_elements(By.CSS_SELECTOR, tainted)
    click_to_next_page(browser, By.LINK_TEXT, "revoke")
    assert "leaves the trust bundle at once" in browser.find_element(By.CLASS_NAME, "effect").text
    click_to_next_page(browser, By.ID, "confirm")
    browser.get(base(running_server) + "/authorities")
    revoked = f"#timeline g.key-revoked[data-key-id='{old_id}']"
    assert browser.find_elements(By.CSS_SELECTOR, revoked)
    screenshot(browser, "authorities-after-revoke")
    assert audited(running_server, "RevokeAuthority", session)
    for page in ("federation", "events"):
        browser.get(base(running_server) + f"/{page}")
        screenshot(browser, page)


READ_ONLY_PAGES = {  # path -> a text the page shows when it works
    "/": "Authority timeline",
    "/agents": "join_token",
    "/entries": "spiffe://example.org/ro/web",
    "/authorities": "Prepare X.509 CA",
    "/federation": "no federated trust domains",
    "/timeline": "X.509 CA",
}


def test_read_only_pages_work_without_javascript_and_keep_the_csp(
    running_server: ServerProcess, running_agent: AgentProcess, browser: WebDriver
) -> None:
    running_server.create_entry(
        "spiffe://example.org/ro/web", running_agent.agent_id, [f"unix:uid:{os.getuid()}"]
    )
    agent_page = f"/agents/detail?id={running_agent.agent_id}"
    pages = {**READ_ONLY_PAGES, agent_page: "Node selectors", "/events": "Live events"}
    log_in(browser, running_server)
    console_errors(browser)  # drop what came before
    for path, shown in pages.items():  # JavaScript on: nothing the CSP refuses
        browser.get(base(running_server) + path)
        assert shown in browser.find_element(By.TAG_NAME, "main").text, path
        assert console_errors(browser) == [], path
    with chromium(javascript=False) as plain:
        log_in(plain, running_server)
        plain.get(base(running_server) + "/events")
        assert "JavaScript is off" in plain.find_element(By.TAG_NAME, "main").text  # <noscript>
        for path, shown in pages.items():
            plain.get(base(running_server) + path)
            assert shown in plain.find_element(By.TAG_NAME, "main").text, path
        plain.get(base(running_server) + "/")
        bars = plain.find_elements(By.CSS_SELECTOR, "#timeline g.key-active")
        assert {b.get_attribute("data-kind") for b in bars} == {"x509", "jwt", "wit"}
        screenshot(plain, "overview-no-javascript")


def test_an_entry_is_edited_and_deleted_from_the_page(
    running_server: ServerProcess, browser: WebDriver
) -> None:
    parent = "spiffe://example.org/insignia/agent/join_token/x"
    entry_id = running_server.create_entry(
        "spiffe://example.org/edit/me", parent, ["unix:uid:1000"]
    )
    session = log_in(browser, running_server)
    browser.get(base(running_server) + f"/entries/detail?id={entry_id}")
    click_to_next_page(browser, By.LINK_TEXT, "Edit")
    selectors = browser.find_element(By.ID, "selectors")
    assert selectors.get_attribute("value") == "unix:uid:1000"
    selectors.clear()
    selectors.send_keys("unix:uid:1001\nunix:gid:5")
    browser.find_element(By.ID, "x509_svid_ttl").send_keys("900")
    click_to_next_page(browser, By.ID, "save")
    (shown,) = running_server.cli_json("entry", "show")["entries"]
    assert (shown["selectors"], shown["x509_svid_ttl"]) == (["unix:gid:5", "unix:uid:1001"], 900)
    assert audited(running_server, "UpdateEntry", session)

    click_to_next_page(browser, By.LINK_TEXT, "Delete…")
    screenshot(browser, "entry-delete-confirm")
    click_to_next_page(browser, By.ID, "confirm")
    assert browser.find_element(By.ID, "message").text == f"deleted {entry_id}"
    assert entry_count(running_server) == 0
    assert audited(running_server, "DeleteEntry", session)


def test_banning_an_agent_from_the_page(
    running_server: ServerProcess, running_agent: AgentProcess, browser: WebDriver
) -> None:
    agent_id = running_agent.agent_id
    session = log_in(browser, running_server)
    browser.get(base(running_server) + f"/agents/detail?id={agent_id}")
    click_to_next_page(browser, By.ID, "ban")
    assert "refused for good" in browser.find_element(By.CLASS_NAME, "effect").text
    click_to_next_page(browser, By.ID, "confirm")
    assert browser.find_element(By.ID, "message").text == f"{agent_id} banned"
    (listed,) = running_server.cli_json("agent", "list")["agents"]
    assert listed["banned"] is True
    assert audited(running_server, "BanAgent", session)
    browser.get(base(running_server) + "/agents?banned=yes")
    assert agent_id in browser.find_element(By.ID, "agents").text
    browser.get(base(running_server) + "/agents?banned=no")
    assert agent_id not in browser.find_element(By.ID, "agents").text


def test_entry_pages_walk_every_entry_once_in_spiffe_id_order(
    running_server: ServerProcess, browser: WebDriver, tmp_path: Path
) -> None:
    parent = "spiffe://example.org/insignia/agent/join_token/x"
    made = [f"spiffe://example.org/paged/{i:03}" for i in range(120)]
    batch = tmp_path / "entries.json"
    batch.write_text(
        json.dumps({"entries": [
            {"spiffe_id": s, "parent_id": parent, "selectors": ["unix:uid:1000"]} for s in made
        ]})
    )  # fmt: skip
    running_server.cli("entry", "create", "--file", str(batch))
    log_in(browser, running_server)
    browser.get(base(running_server) + "/entries")
    seen: list[str] = []
    while True:
        rows = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr td:first-child")
        seen += [r.text for r in rows]
        if not browser.find_elements(By.ID, "next-page"):
            break
        click_to_next_page(browser, By.ID, "next-page")
    assert seen == made  # 50 + 50 + 20, none twice, none lost


def test_the_federation_page_shows_a_failing_relationship(
    server_factory: ServerFactory, browser: WebDriver
) -> None:
    peer = {"trust_domain": "b.example", "bundle_endpoint_url": "https://127.0.0.1:1/"}
    server = server_factory(
        console=CONSOLE, federation={"federates_with": [{**peer, "profile": "https_web"}]}
    )
    log_in(browser, server)

    def failure_shown() -> str:
        browser.get(base(server) + "/federation")
        row = browser.find_element(By.CSS_SELECTOR, "#federation tbody tr").text
        return row if "in a row" in row else ""

    row = wait_for(failure_shown, 30, "the refresh failure on the federation page")
    assert row.startswith("b.example https://127.0.0.1:1/ https_web never ")  # no success yet
    assert "cannot connect to 127.0.0.1:1" in row  # the fetch's own error text
    screenshot(browser, "federation-failing")
