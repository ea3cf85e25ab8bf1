"""The website snippet in a real browser (Debian's Chromium driven by Playwright)
against `attimo serve` on a free port with a real Redis.

Test pages under /t/ are handed to the browser by Playwright on the API's own
origin (page.route), so each test controls its HTML and headers (CSP); the
snippet, /v1/events and /v1/decide are the real server's. The storefront pages
come from the server itself (ATTIMO_STOREFRONT=1). The time-budget test runs a
second server with ATTIMO_DECIDE_DELAY_MS, the test-only setting that makes
/v1/decide sleep before answering."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from api.routes.web import LOADER_CSP_HASH, LOADER_STUB
from engine.testing.processes import SITE_KEY, start_api, stop_api, wait_until
from tests.conftest import ROOT, signed

ARTIFACTS = Path(os.environ.get("ATTIMO_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
# Chromium, the test and the server share two cores: a decide's Redis read can
# pass the production budget (50 ms) and fall back, or the snippet's (300 ms),
# leaving a slot at its default. Budgets are tested on their own (slow_shop,
# tests/api/test_api_faults.py); everywhere else they are generous.
UNHURRIED = {"ATTIMO_REDIS_BUDGET_MS": "2000", "ATTIMO_SNIPPET_BUDGET_MS": "5000"}
STRICT_CSP = f"default-src 'self'; script-src 'self' {LOADER_CSP_HASH}; object-src 'none'; base-uri 'none'"


@pytest.fixture(scope="module")
def shop(redis_server, tmp_path_factory):
    # Its own catalog and people (other tests post catalogs).
    server = start_api(redis_server.url, tmp_path_factory.mktemp("shop"), ATTIMO_STOREFRONT="1",
                       ATTIMO_KEY_PREFIX="snippet", **UNHURRIED)
    yield server
    stop_api(server)


@pytest.fixture(scope="module")
def slow_shop(redis_server, tmp_path_factory):
    server = start_api(redis_server.url, tmp_path_factory.mktemp("slow"), ATTIMO_DECIDE_DELAY_MS="900",
                       ATTIMO_KEY_PREFIX="snippet-slow", ATTIMO_REDIS_BUDGET_MS="2000")
    yield server
    stop_api(server)


@pytest.fixture
def page(chromium, redis_sync_client):
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.sent = []  # (path, body) of every request to the API
    page.on("request", lambda r: page.sent.append((r.url, r.post_data)) if "/v1/" in r.url else None)
    page.statuses = []  # (path, status) of every API answer
    page.on("response", lambda r: page.statuses.append((r.url, r.status)) if "/v1/" in r.url else None)
    yield page
    context.close()


def loader(consent: str = "none", budget: int = 5000, before: str = "") -> str:
    return (
        f"<script>{LOADER_STUB}</script>{before}"
        f'<script async src="/v1/snippet.js" data-key="{SITE_KEY}" data-budget="{budget}" '
        f'data-consent="{consent}"></script>'
    )


def test_page(page, base_url: str, body: str, head: str, path: str = "/t/page", csp: str | None = None,
              html_attrs: str = "", scripts: dict[str, str] | None = None) -> None:
    headers = {"Content-Type": "text/html; charset=utf-8"}
    if csp:
        headers["Content-Security-Policy"] = csp
    html = f"<!doctype html><html{html_attrs}><head>{head}</head><body>{body}</body></html>"
    page.route(f"{base_url}/t/**", lambda route: route.fulfill(status=200, headers=headers, body=html))
    for name, js in (scripts or {}).items():  # routes added last are matched first
        page.route(f"{base_url}/t/{name}", script_handler(js))
    page.goto(base_url + path)


def script_handler(js: str):
    return lambda route: route.fulfill(status=200, body=js, content_type="text/javascript")


test_page.__test__ = False  # a helper, not a test


def wait_page(page, check, what: str, timeout_s: float = 10.0):
    """wait_until for browser-side facts: sleeping through Playwright lets its
    event handlers (page.sent) run."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {getattr(page, 'statuses', '')}")
        page.wait_for_timeout(50)
    return result


def visit_until(page, url: str, selector: str, what: str, timeout_s: float = 20.0) -> None:
    """Open `url` until `selector` shows. The events of the pages before leave
    by beacon as the browser navigates away, so the first decide of the next
    page may come before they are applied (on a loaded machine it does): a
    person who reloads sees the change, and so does this test."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(url)
        try:
            page.wait_for_selector(selector, timeout=2_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


def events_sent(page, type_: str | None = None) -> list[dict]:
    found = []
    for url, body in page.sent:
        if "/v1/events" in url and body:
            found += [e for e in json.loads(body)["events"] if type_ is None or e["type"] == type_]
    return found


def profile(server, person: str) -> dict:
    with server.server() as client:
        return client.get(f"/v1/people/{person}").json()


HERO = '<div id="hero" data-attimo-slot="home_hero"><b>default hero</b></div>'
SIDEBAR = '<div id="side" data-attimo-slot="sidebar"><b>default sidebar</b></div>'


def test_snippet_served_with_etag_cache_and_gzip_size(shop):
    first = httpx.get(f"{shop.base_url}/v1/snippet.js", headers={"Accept-Encoding": "identity"})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/javascript")
    assert "max-age" in first.headers["cache-control"]
    assert first.content == (ROOT / "js-snippet" / "attimo.js").read_bytes()
    again = httpx.get(f"{shop.base_url}/v1/snippet.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    changed = httpx.get(f"{shop.base_url}/v1/snippet.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200
    zipped = httpx.get(f"{shop.base_url}/v1/snippet.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert len(gzip.compress(first.content, 9)) <= 4096
    # The loader a site pastes is the stub the CSP hash covers.
    assert LOADER_STUB in (ROOT / "js-snippet" / "loader.html").read_text()
    assert LOADER_CSP_HASH.strip("'").removeprefix("sha256-") in (ROOT / "js-snippet" / "README.md").read_text()


def test_loader_queue_replay_fills_slots_and_events_reach_the_profile(shop, page):
    head = loader(before="<script src='/t/queue.js'></script>")
    test_page(page, shop.base_url, HERO + SIDEBAR, head, "/t/pricing",
              html_attrs=' data-attimo-category="crm" data-attimo-page-type="pricing"',
              scripts={"queue.js": "attimo('track', 'video_play', {video: 'tour'});"})
    # A new visitor: spring_sale in the hero, newsletter_signup in the sidebar.
    page.wait_for_selector("#hero[data-attimo-offer=spring_sale]")
    page.wait_for_selector("#side[data-attimo-offer=newsletter_signup]")
    assert "Spring sale" in page.inner_text("#hero")
    aid = page.evaluate("localStorage.getItem('attimo_aid')")
    decides = [u for u, _ in page.sent if "/v1/decide" in u]
    assert len(decides) == 1  # one decide for every slot on the page
    wait_until(lambda: profile(shop, f"a:{aid}")["exists"], what="events in the profile")
    wait_page(page, lambda: events_sent(page, "impression"), what="impressions")
    # The queued call made before the script arrived was replayed.
    assert events_sent(page, "video_play")
    # Two more pricing views: the trial banner (scenario 4) takes the hero.
    for _ in range(2):
        page.reload()
        page.wait_for_selector("#side[data-attimo-offer]")
    wait_until(lambda: profile(shop, f"a:{aid}")["score"] >= 30, what="pricing views scored")
    page.reload()
    page.wait_for_selector("#hero[data-attimo-offer=crm_trial]")
    person = profile(shop, f"a:{aid}")
    assert person["impressions"]["spring_sale"]["count"] >= 1
    # A click on a filled slot is an event with the decision id.
    page.click("#hero .attimo-offer strong")
    wait_page(page, lambda: events_sent(page, "click"), what="click event")
    click = events_sent(page, "click")[0]
    assert click["properties"]["offer"] == "crm_trial" and click["properties"]["decision_id"]
    # Every event has its own id; a batch the browser sends again (a reload cut
    # it off) carries the same ids for the same events, which the server dedupes.
    by_id: dict[str, list] = {}
    for event in events_sent(page):
        by_id.setdefault(event["id"], []).append((event["type"], event.get("properties")))
    assert all(len({json.dumps(v, sort_keys=True) for v in same}) == 1 for same in by_id.values())
    assert len(by_id) >= 5


def test_identify_with_good_and_forged_signature(shop, page):
    test_page(page, shop.base_url, HERO, loader())
    page.wait_for_selector("#hero[data-attimo-offer]")
    aid = page.evaluate("localStorage.getItem('attimo_aid')")
    page.evaluate("attimo('identify', 'u-mallory', 'ab'.repeat(32), {registered: true}); attimo('flush')")
    wait_page(page, lambda: any("/v1/events" in u and s == 403 for u, s in page.statuses), what="403")
    assert not profile(shop, "u-mallory")["exists"]
    page.goto("about:blank")
    test_page(page, shop.base_url, HERO, loader())
    sig = signed("u-ada")
    n = len(page.statuses)
    page.evaluate(f"attimo('identify', 'u-ada', '{sig}', {{registered: true, first_name: 'Ada'}});"
                  "attimo('flush')")
    wait_page(page, lambda: any("/v1/events" in u and s == 202 for u, s in page.statuses[n:]), what="202")
    wait_until(lambda: profile(shop, "u-ada")["traits"].get("registered") is True, what="identify")
    assert profile(shop, "u-ada")["traits"]["first_name"] == "Ada"
    # The forged identity was dropped, the good one merged this browser's history.
    assert page.evaluate("localStorage.getItem('attimo_uid')") == "u-ada"
    assert not profile(shop, "u-mallory")["exists"]
    assert profile(shop, "u-ada")["features"] is not None and aid


def test_consent_required_sends_and_stores_nothing_before_consent(shop, page):
    test_page(page, shop.base_url, HERO, loader(consent="required") + "<script src='/t/track.js'></script>",
              scripts={"track.js": "attimo('track', 'video_play', {});"})
    page.wait_for_function("window.attimo && window.attimo.loaded")
    page.wait_for_timeout(700)
    assert [u for u, _ in page.sent if "/v1/snippet.js" not in u] == []
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('attimo'))") == []
    assert page.inner_text("#hero") == "default hero"
    page.evaluate("attimo('consent', {personalization: true})")
    page.wait_for_selector("#hero[data-attimo-offer]")
    wait_page(page, lambda: events_sent(page, "page_view"), what="page_view after consent")
    assert page.evaluate("localStorage.getItem('attimo_consent')") == "1"


def test_spa_navigation_sends_page_view_and_decides_again(shop, page):
    test_page(page, shop.base_url, HERO, loader())
    page.wait_for_selector("#hero[data-attimo-offer]")
    page.evaluate("history.pushState({}, '', '/t/next')")
    wait_page(page, lambda: any(e["properties"]["path"] == "/t/next" for e in events_sent(page, "page_view")),
               what="page_view for pushState")
    page.evaluate("history.back()")
    wait_page(page, lambda: len(events_sent(page, "page_view")) >= 3, what="page_view for popstate")
    assert sum("/v1/decide" in u for u, _ in page.sent) >= 3


def test_time_budget_keeps_the_default_and_ignores_a_late_answer(slow_shop, page):
    test_page(page, slow_shop.base_url, HERO, loader(budget=300))
    with page.expect_response(lambda r: "/v1/decide" in r.url, timeout=5000) as late:
        pass
    assert late.value.json()["placements"]["home_hero"] is not None  # there was an offer ...
    page.wait_for_timeout(200)
    assert page.inner_text("#hero") == "default hero"  # ... but it came too late
    assert page.is_visible("#hero")
    assert page.get_attribute("#hero", "data-attimo-offer") is None


def test_strict_csp_page_works(shop, page):
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    test_page(page, shop.base_url, HERO + SIDEBAR, loader(), csp=STRICT_CSP)
    page.wait_for_selector("#hero[data-attimo-offer]")
    page.wait_for_selector("#side[data-attimo-offer]")
    wait_page(page, lambda: events_sent(page, "page_view"), what="events under CSP")
    assert violations == []


def test_storefront_fills_its_slots_and_screenshot(shop, page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    page.goto(shop.base_url + "/")
    assert page.is_visible("#consent")
    page.click("#consent-yes")
    page.wait_for_selector("[data-attimo-slot=home_hero][data-attimo-offer]")
    for path in ("/crm", "/pricing/crm", "/cart"):
        page.goto(shop.base_url + path)
        page.wait_for_selector("[data-attimo-offer]")
    page.goto(shop.base_url + "/")
    page.wait_for_selector("[data-attimo-slot=home_hero][data-attimo-offer]")
    page.screenshot(path=str(ARTIFACTS / "storefront.png"), full_page=True)
    assert (ARTIFACTS / "storefront.png").stat().st_size > 1000
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`attimo demo` itself (private Redis, demo people, storefront, demo-only endpoints)."""
    from engine.testing.processes import free_port

    port = free_port()
    log = open(tmp_path_factory.mktemp("demo") / "demo.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--port", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **UNHURRIED})
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert process.poll() is None, "attimo demo exited"
        try:
            return httpx.get(base + "/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 30, 0.1, "attimo demo")
    yield base
    process.send_signal(signal.SIGINT)
    process.wait(15)
    log.close()


def test_demo_storefront_click_through_shows_the_scenarios(demo, chromium, page):
    page.goto(demo + "/")
    page.click("#consent-yes")
    hero = "[data-attimo-slot=home_hero]"
    page.wait_for_selector(f"{hero}[data-attimo-offer=spring_sale]")
    for _ in range(3):  # scenario 4: repeated pricing visits ...
        page.goto(demo + "/pricing/crm")
        page.wait_for_selector("[data-attimo-slot=sidebar][data-attimo-offer]")
    visit_until(page, demo + "/", f"{hero}[data-attimo-offer=crm_trial]", "the trial banner")  # ... bring it
    # Scenario 7, another visitor: registers, then views analytics three times.
    page = chromium.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(10_000)
    page.goto(demo + "/register")
    page.click("#consent-yes")
    page.fill("[name=first_name]", "Ada")
    page.fill("[name=username]", "ada-demo")
    page.check("[name=consent]")
    page.click("#register button[type=submit]")
    page.wait_for_selector("#register-done", state="visible")
    for _ in range(3):
        with page.expect_response(lambda r: "/v1/decide" in r.url):
            page.goto(demo + "/analytics")
        page.evaluate("attimo('flush')")
    visit_until(page, demo + "/analytics", "[data-attimo-slot=sidebar][data-attimo-offer=analytics_banner]",
                "the analytics banner")
    page.click("#profile-refresh")
    wait_page(page, lambda: "analytics_browser" in page.inner_text("#profile"), "the profile panel")
    # Scenario 3: Dana, seeded as away for 40 days, signs in and is welcomed back.
    page.goto(demo + "/register")
    page.click("[data-demo-person=u-dana]")
    page.wait_for_url(demo + "/")
    page.wait_for_selector(f"{hero}[data-attimo-offer=welcome_back]")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "storefront-demo.png"), full_page=True)


def test_withdrawing_consent_forgets_and_stops_tracking_in_the_default_mode(shop, page):
    test_page(page, shop.base_url, HERO, loader())  # data-consent="none": tracking starts at once
    page.wait_for_selector("#hero[data-attimo-offer]")
    assert page.evaluate("localStorage.getItem('attimo_aid')")
    page.evaluate("attimo('consent', {personalization: false})")
    stored = page.evaluate("Object.fromEntries(Object.entries(localStorage).filter(([k]) => k.startsWith('attimo')))")
    assert stored == {"attimo_consent": "0"}  # every id forgotten; only the refusal kept
    n = len(page.sent)
    page.evaluate("attimo('track', 'video_play', {}); attimo('flush')")
    page.wait_for_timeout(500)
    assert [u for u, _ in page.sent[n:]] == []  # nothing leaves
    # The next page remembers the refusal: no id, no event, no decide, the defaults.
    page.goto("about:blank")
    page.sent.clear()
    test_page(page, shop.base_url, HERO, loader())
    page.wait_for_function("window.attimo && window.attimo.loaded")
    page.wait_for_timeout(700)
    assert [u for u, _ in page.sent if "/v1/snippet.js" not in u] == []
    assert page.inner_text("#hero") == "default hero"
    assert page.evaluate("localStorage.getItem('attimo_aid')") is None


def test_reset_at_logout_starts_a_new_anonymous_visitor(shop, page):
    test_page(page, shop.base_url, HERO, loader())
    page.wait_for_selector("#hero[data-attimo-offer]")
    before = page.evaluate("localStorage.getItem('attimo_aid')")
    page.evaluate(f"attimo('identify', 'u-reset', '{signed('u-reset')}', {{}})")
    assert page.evaluate("localStorage.getItem('attimo_uid')") == "u-reset"
    page.evaluate("attimo('reset'); attimo('track', 'after_logout', {}); attimo('flush')")
    after = page.evaluate("localStorage.getItem('attimo_aid')")
    assert after and after != before and page.evaluate("localStorage.getItem('attimo_uid')") is None
    [logged_out] = wait_page(page, lambda: events_sent(page, "after_logout"), what="the event after logout")
    assert logged_out["anonymous_id"] == after and "user_id" not in logged_out
