"""The console in a real browser (Debian's Chromium driven by Playwright)
against `attimo serve` with an admin and a read token, on a free port with a
real Redis: signing in and out, the People page on a person made by real
events, the Catalog page with a read session, CSRF through httpx with the
session's cookie, a screenshot of every page (checked not blank) and an
axe-core scan of every page (no serious or critical violation)."""

from __future__ import annotations

import os
import re
from io import BytesIO
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import expect

from api.console.pages import CONSOLE_CSP
from engine.testing.processes import SITE_KEY, TOKEN, wait_until
from tests.conftest import ROOT
from tests.console.conftest import ADMIN_TOKEN, READ_TOKEN, new_page

ARTIFACTS = Path(os.environ.get("ATTIMO_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
PAGES = ("overview", "catalog", "people", "offers", "experiments", "benchmarks")


def sign_in(page, base_url: str, token: str, path: str = "/console") -> None:
    page.goto(base_url + path)
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/(overview|catalog|people|offers|experiments|benchmarks)"))


def session_cookie(page) -> str | None:
    return next((c["value"] for c in page.context.cookies() if c["name"] == "attimo_console"), None)


def csrf_of(page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def seed_ada(server) -> None:
    """A registered person with an email address who read CRM pricing three times."""
    events = [{"id": "ada-1", "type": "identify", "user_id": "u-ada",
               "traits": {"registered": True, "email": "Ada@Example.com", "plan": "pro"}}]
    events += [{"id": f"ada-pv-{i}", "type": "page_view", "user_id": "u-ada",
                "properties": {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}}
               for i in range(3)]
    with server.server() as client:
        answer = client.post("/v1/events", json={"events": events})
        assert answer.status_code == 202, answer.text
        wait_until(lambda: client.get("/v1/people", params={"email": "ada@example.com"}).json()["people"],
                   what="Ada in the email index")


def screenshot(page, name: str) -> Path:
    """The whole page as PNG under tests/artifacts/, checked not blank: a page that
    drew nothing (or one flat colour) has one or two colours; text alone has dozens."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    png = page.screenshot(path=str(path), full_page=True)
    image = Image.open(BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 16, f"{path} is (nearly) blank: {len(colours)} colours"
    return path


def no_problems(page) -> None:
    assert page.problems == [], page.problems


# -- signing in and out ------------------------------------------------------------


def test_every_page_asks_for_a_sign_in_first_and_goes_there_after(page, clean_console):
    base = clean_console.base_url
    sign_in(page, base, ADMIN_TOKEN, "/console/people?person=u-nobody")
    expect(page).to_have_url(f"{base}/console/people?person=u-nobody")
    expect(page.locator("header")).to_contain_text("Signed in with the admin token")
    no_problems(page)


def test_a_wrong_token_is_refused_and_the_form_says_so(page, clean_console):
    page.goto(clean_console.base_url + "/console/sign-in")
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not this server's admin token")
    assert session_cookie(page) is None


def test_the_session_cookie_is_http_only_and_strict(page, clean_console):
    sign_in(page, clean_console.base_url, ADMIN_TOKEN)
    cookie = next(c for c in page.context.cookies() if c["name"] == "attimo_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""  # page scripts never see it


def test_signing_out_clears_the_session(page, clean_console):
    base = clean_console.base_url
    sign_in(page, base, ADMIN_TOKEN)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    assert session_cookie(page) is None
    page.goto(base + "/console/catalog")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next="))
    no_problems(page)


def test_sign_in_is_throttled_per_address_after_ten_failures(clean_console):
    with clean_console.client() as client:
        guesser = {"X-Forwarded-For": "203.0.113.77"}
        for _ in range(10):
            assert client.post("/console/sign-in", data={"token": "guess"}, headers=guesser).status_code == 401
        held = client.post("/console/sign-in", data={"token": ADMIN_TOKEN}, headers=guesser)
        assert held.status_code == 429 and 0 < int(held.headers["Retry-After"]) <= 60
        assert "set-cookie" not in held.headers  # not even the right token, until the wait is over
        other = client.post("/console/sign-in", data={"token": ADMIN_TOKEN},
                            headers={"X-Forwarded-For": "203.0.113.78"})
        assert other.status_code == 303 and "attimo_console=" in other.headers["set-cookie"]


def test_a_sign_in_posted_from_another_site_is_refused(clean_console):
    with clean_console.client() as client:
        answer = client.post("/console/sign-in", data={"token": ADMIN_TOKEN},
                             headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


def test_an_ingest_token_does_not_open_the_console(clean_console):
    with clean_console.client() as client:
        # The server token opens it (as admin); the test server has no ingest token
        # of its own, so one made up is as good as any wrong one.
        assert client.post("/console/sign-in", data={"token": "ingest-anything"}).status_code == 401
        assert client.post("/console/sign-in", data={"token": TOKEN},
                           headers={"X-Forwarded-For": "203.0.113.90"}).status_code == 303


# -- the session's cookie against /v1/… ----------------------------------------------


def cookie_client(server, page) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, cookies={"attimo_console": session_cookie(page)}, timeout=10)


def test_a_changing_request_with_the_cookie_needs_the_csrf_nonce(page, clean_console):
    seed_ada(clean_console)
    sign_in(page, clean_console.base_url, ADMIN_TOKEN, "/console/people")
    ask = {"user_id": "u-ada", "placements": ["home_hero"]}
    with cookie_client(clean_console, page) as client:
        assert client.get("/v1/people/u-ada").json()["exists"] is True  # a read needs no nonce
        refused = client.post("/v1/decide?explain=1", json=ask)
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
        wrong = client.post("/v1/decide?explain=1", json=ask, headers={"X-CSRF-Token": "0" * 32})
        assert wrong.status_code == 403
        right = client.post("/v1/decide?explain=1", json=ask, headers={"X-CSRF-Token": csrf_of(page)})
        assert right.status_code == 200 and "explain" in right.json()
        # Credentials the request names win over the cookie: with the site key it is a browser.
        site = client.post("/v1/decide?explain=1", json={"anonymous_id": "a-1", "placements": ["home_hero"]},
                           headers={"X-CSRF-Token": csrf_of(page), "X-Attimo-Key": SITE_KEY})
        assert site.status_code == 403 and "explain needs a server token" in site.json()["error"]
        # Nor may another site's form sign the person out.
        assert client.post("/console/sign-out", data={}).status_code == 403
    with httpx.Client(base_url=clean_console.base_url, cookies={"attimo_console": "forged.cookie"}) as client:
        assert client.get("/v1/people/u-ada").status_code == 401


# -- pages ------------------------------------------------------------------------


def test_the_people_page_finds_a_person_by_email_and_explains_a_decision(page, clean_console):
    seed_ada(clean_console)
    sign_in(page, clean_console.base_url, ADMIN_TOKEN, "/console/people")
    page.get_by_label("Person id or email").fill("ada@example.com")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#person-heading")).to_have_text("u:u-ada")
    segments = page.locator("#segments")
    expect(segments).to_contain_text("registered")
    expect(segments).to_contain_text("crm_pricing_no_purchase")
    expect(page.locator("#traits")).to_contain_text("Ada@Example.com")
    expect(page).to_have_url(re.compile(r"\?person=u%3Au-ada$"))

    page.get_by_label("Placement").select_option("home_hero")
    page.get_by_role("button", name="Explain").click()
    explained = page.locator("#explain table")
    expect(explained).to_be_visible()
    # Every home_hero offer is a row, with a reason beside each one not eligible.
    with clean_console.server() as client:
        truth = client.post("/v1/decide?explain=1", json={"user_id": "u-ada", "placements": ["home_hero"]}).json()
    offers = truth["explain"]["home_hero"]["offers"]
    assert explained.locator("tbody tr").count() == len(offers) > 1
    for offer in offers:
        row = explained.locator("tbody tr", has=page.locator("th", has_text=offer["offer"]))
        expect(row).to_contain_text("yes" if offer["eligible"] else offer["reason"])
    chosen = truth["placements"]["home_hero"]
    expect(page.locator("#verdict")).to_contain_text(chosen["offer"] if chosen else "Shows nothing")
    screenshot(page, "people")
    no_problems(page)


def test_the_people_page_says_when_nobody_has_an_address(page, clean_console):
    sign_in(page, clean_console.base_url, READ_TOKEN, "/console/people")
    page.get_by_label("Person id or email").fill("nobody@example.com")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#people-status")).to_have_text("Nobody has the address nobody@example.com.")
    expect(page.locator("#person")).to_be_hidden()


def test_a_read_session_sees_the_catalog_page_but_may_not_publish(page, clean_console):
    sign_in(page, clean_console.base_url, READ_TOKEN, "/console/catalog")
    expect(page.locator("#read-only-note")).to_contain_text("need the admin token")
    with clean_console.server() as client:
        before = client.get("/readyz").json()["catalog"]
    page.get_by_label("Catalog (YAML)").fill((ROOT / "examples" / "catalog.yaml").read_text())
    page.get_by_label("Message for the history").fill("should not go in")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#catalog-status")).to_contain_text("Not published: Not allowed: this token may not admin")
    with clean_console.server() as client:
        assert client.get("/readyz").json()["catalog"] == before
    with cookie_client(clean_console, page) as client:
        answer = client.post("/v1/admin/catalog", content=b"offers: []", headers={"X-CSRF-Token": csrf_of(page)})
        assert answer.status_code == 403
    screenshot(page, "catalog-read-only")
    no_problems(page)


def test_an_admin_validates_publishes_compares_and_restores_the_catalog(page, clean_console):
    """Through the catalog endpoints: GET /v1/admin/catalog, …/versions, …/diff,
    POST …/validate, …/restore."""
    original = (ROOT / "examples" / "catalog.yaml").read_text()
    with clean_console.server() as client:
        in_force = client.get("/v1/admin/catalog/versions").json()["in_force"]
    sign_in(page, clean_console.base_url, ADMIN_TOKEN, "/console/catalog")
    status = page.locator("#catalog-status")
    expect(status).to_have_text(f"Version {in_force} is in force.")
    expect(page.locator("#versions tbody tr").first).to_contain_text(f"{in_force} (in force)")
    editor = page.get_by_label("Catalog (YAML)")
    assert editor.input_value() == original

    # A broken edit: its problem is shown at its line, and "Go to line" selects that line.
    broken = original.replace("    priority: 80\n", "    priority: high\n")
    lines = broken.splitlines()
    priority_line = lines.index("    priority: high") + 1
    editor.fill(broken)
    page.get_by_role("button", name="Validate").click()
    expect(status).to_contain_text("Not valid: the catalog has 1 problem, listed below at their lines.")
    problems = page.locator("#problems li")
    expect(problems.filter(has_text=f"Line {priority_line}")).to_have_count(1)
    page.get_by_role("button", name=f"Go to line {priority_line}").click()
    selected = page.evaluate("(() => { const t = document.getElementById('catalog-text');"
                             " return t.value.slice(t.selectionStart, t.selectionEnd); })()")
    assert selected == "    priority: high"
    page.get_by_label("Message for the history").fill("a broken one")
    page.get_by_role("button", name="Publish").click()
    expect(status).to_contain_text("Not published: the catalog has")
    with clean_console.server() as client:
        assert client.get("/v1/admin/catalog/versions").json()["in_force"] == in_force

    # A good edit, published with its message, then compared with the one before.
    editor.fill(original.replace('title: "Welcome back!"', 'title: "Welcome back, friend!"'))
    page.get_by_role("button", name="Validate").click()
    expect(status).to_contain_text("Valid:")
    page.get_by_label("Message for the history").fill("a friendlier welcome back")
    page.get_by_role("button", name="Publish").click()
    expect(status).to_contain_text("Published: version")
    with clean_console.server() as client:
        published = client.get("/v1/admin/catalog/versions").json()["in_force"]
    assert published != in_force
    expect(page.locator("#versions tbody tr").first).to_contain_text("a friendlier welcome back")
    expect(page.locator("#in-force")).to_contain_text("a friendlier welcome back")
    page.get_by_label("From version").select_option(str(in_force))
    page.get_by_label("To version").select_option(str(published))
    page.get_by_role("button", name="Show the differences").click()
    expect(page.locator("#diff .added")).to_contain_text(['+      title: "Welcome back, friend!"'])
    expect(page.locator("#diff .removed")).to_contain_text(['-      title: "Welcome back!"'])
    screenshot(page, "catalog")

    # Rolling back restores the text of the version chosen.
    page.get_by_label("Version to restore").select_option(str(in_force))
    page.get_by_label("Message", exact=True).fill("back to the plain welcome")
    page.get_by_role("button", name="Restore this version").click()
    expect(status).to_contain_text(f"Restored: version {in_force} is in force again")
    with clean_console.server() as client:
        assert client.get("/v1/admin/catalog").text == original
    assert editor.input_value() == original
    no_problems(page)


def traffic(server) -> None:
    """Decides and events for the Overview to draw."""
    with server.server() as client:
        for n in range(30):
            assert client.post("/v1/decide", json={"anonymous_id": f"a-ov{n}", "placements": ["home_hero"]}).status_code == 200
        events = [{"id": f"ov-{n}", "type": "page_view", "anonymous_id": f"a-ov{n}"} for n in range(30)]
        assert client.post("/v1/events", json={"events": events}).status_code == 202


def test_the_overview_draws_the_traffic_of_every_process(page, clean_console):
    traffic(clean_console)
    sign_in(page, clean_console.base_url, ADMIN_TOKEN)
    expect(page.locator("#overview-status")).to_contain_text("Updated")
    for chart in ("decide-latency", "rates"):  # points drawn, not just a canvas: the refresh brings them
        expect(page.locator(f"#chart-{chart} .chart")).not_to_have_attribute("data-points", "0", timeout=15_000)
        expect(page.locator(f"#chart-{chart} .chart")).to_have_attribute("data-points", re.compile(r"^[1-9]"))
    no_problems(page)


def test_every_page_is_served_under_the_strict_policy(page, clean_console):
    sign_in(page, clean_console.base_url, ADMIN_TOKEN)
    for name in PAGES:
        answer = page.goto(f"{clean_console.base_url}/console/{name}")
        assert answer.headers["content-security-policy"] == CONSOLE_CSP
        assert answer.headers["cache-control"] == "no-store"
        expect(page.locator("nav a[aria-current=page]")).to_have_text(name.capitalize())
    answer = page.goto(f"{clean_console.base_url}/console/sign-in")
    assert answer.headers["content-security-policy"] == CONSOLE_CSP
    no_problems(page)


def test_screenshots_of_every_page_are_not_blank(page, clean_console):
    seed_ada(clean_console)
    traffic(clean_console)
    base = clean_console.base_url
    page.goto(base + "/console/sign-in")
    screenshot(page, "sign-in")
    sign_in(page, base, ADMIN_TOKEN)
    for name in PAGES:
        open_loaded(page, base, name)
        if name == "overview":  # the burst drawn, not empty charts
            expect(page.locator("#chart-decide-latency .chart")).to_have_attribute(
                "data-points", re.compile(r"^[1-9]"), timeout=15_000)
        screenshot(page, name)
    no_problems(page)


def test_no_page_has_a_serious_or_critical_accessibility_violation(chromium, clean_console):
    """axe-core is injected as a script tag, which the console's own policy
    refuses: this context alone bypasses the CSP (the other tests keep it)."""
    seed_ada(clean_console)
    base = clean_console.base_url
    page = new_page(chromium, bypass_csp=True)
    try:
        found = {}
        page.goto(base + "/console/sign-in")
        found["sign-in"] = axe_violations(page)
        sign_in(page, base, ADMIN_TOKEN)
        for name in PAGES:
            open_loaded(page, base, name)
            if name == "people":
                page.get_by_role("button", name="Explain").click()
                expect(page.locator("#explain table")).to_be_visible()
            found[name] = axe_violations(page)
        assert found == dict.fromkeys(found, []), found
    finally:
        page.context.close()


def open_loaded(page, base: str, name: str) -> None:
    """A console page once its script has filled it (the People page with Ada)."""
    page.goto(f"{base}/console/{name}" + ("?person=u-ada" if name == "people" else ""))
    if name == "overview":
        expect(page.locator("#overview-status")).to_have_text(re.compile("Updated"))
    elif name == "catalog":
        expect(page.locator("#catalog-status")).to_have_text(re.compile(r"\S"))
    elif name in ("offers", "experiments", "benchmarks"):
        expect(page.locator(f"#{name}-status")).not_to_have_text(re.compile(r"^Loading"))
    else:
        expect(page.locator("#segments")).to_contain_text("registered")


def axe_violations(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"] if v["impact"] in ("serious", "critical")]
