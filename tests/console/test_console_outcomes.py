"""The console's Offers, Experiments and Benchmarks pages in Chromium against
`attimo serve`, on data made through the API first (decides on the learning
placement, impressions, clicks and purchases from the server token, people
entering a journey): what each page draws is read back from its charts (the
uPlot instance's data, the `data-points` of each drawing) and checked against
the JSON the page reads; a date range with no data drops the figures to 0; a
screenshot and an axe-core scan of each page. And the Overview's latency for a
burst of decides against the server's own Prometheus histogram."""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import expect

from benchmarks.http_client import HttpTarget
from benchmarks.schedule import LoadOptions, run_open_loop
from engine.testing.processes import TOKEN, start_api, stop_api, wait_until
from tests.conftest import ROOT
from tests.console.conftest import ADMIN_TOKEN, READ_TOKEN, new_page
from tests.console.test_console_browser import axe_violations, no_problems, screenshot, sign_in

SHOPPERS = 24
JOURNEY_ENTRANTS = 5


def utc_today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def seed_outcomes(server) -> None:
    """Shoppers decided for on the cart strip (the learning placement of the
    cart_learning experiment) who see the offer chosen, a third click, a
    quarter buy; five put something in their cart (cart_abandonment)."""
    with server.server() as client:
        seen, bought = [], []
        for i in range(SHOPPERS):
            person = f"u-shop-{i}"
            answer = client.post("/v1/decide", json={"user_id": person, "placements": ["cart_banner"],
                                                     "context": {"category": "crm", "device": "desktop"}})
            assert answer.status_code == 200, answer.text
            chosen = answer.json()["placements"]["cart_banner"]
            assert chosen is not None, answer.text
            props = {"offer": chosen["offer"], "decision_id": answer.json()["decision_id"], "placement": "cart_banner"}
            seen.append({"id": f"{person}-imp", "type": "impression", "user_id": person, "properties": props})
            if i % 3 == 0:
                seen.append({"id": f"{person}-click", "type": "click", "user_id": person, "properties": props})
            if i % 4 == 0:
                bought.append({"id": f"{person}-buy", "type": "purchase", "user_id": person,
                               "properties": {"revenue": 120.0}})
            if i < JOURNEY_ENTRANTS:
                seen.append({"id": f"{person}-cart", "type": "add_to_cart", "user_id": person,
                             "properties": {"category": "crm"}})
        assert client.post("/v1/events", json={"events": seen}).status_code == 202
        # After the impressions are applied: a purchase counts for the offers seen before it.
        assert client.post("/v1/events", json={"events": bought}).status_code == 202

        def exposed() -> bool:
            arms = client.get("/v1/experiments/cart_learning").json()["arms"]
            return sum(arm["exposures"] for arm in arms.values()) == SHOPPERS

        wait_until(exposed, what="the experiment's exposures")
        wait_until(lambda: any(o["buckets"] for o in client.get("/v1/model").json()["offers"].values()),
                   what="the model to learn from the impressions")
        today = utc_today()
        wait_until(lambda: client.get("/v1/kpis", params={"from": today, "to": today}).json()["offers"]
                   and sum(o["converted"] for o in client.get("/v1/kpis").json()["offers"].values()) > 0,
                   what="conversions in the KPIs")


def points(locator) -> int:
    return int(locator.get_attribute("data-points"))


def plotted(locator) -> dict:
    """What the uPlot instance on a chart's box holds: its x length and each series' values."""
    return locator.evaluate("box => ({length: box.plot.data[0].length,"
                            " series: box.plot.series.slice(1).map((s, i) => [s.label, box.plot.data[i + 1]])})")


@pytest.fixture
def seeded(clean_console):
    seed_outcomes(clean_console)
    return clean_console


# -- Offers and placements ------------------------------------------------------------


def test_the_offers_page_draws_each_day_and_a_range_without_data_drops_to_zero(page, seeded):
    today = utc_today()
    week_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 6 * 86_400))
    with seeded.server() as client:
        truth = client.get("/v1/kpis", params={"from": week_ago, "to": today}).json()["offers"]
        model = client.get("/v1/model").json()["offers"]
    impressions = sum(o["impressions"] for o in truth.values())
    conversions = sum(o["converted"] for o in truth.values())
    assert impressions == SHOPPERS and conversions > 0

    sign_in(page, seeded.base_url, ADMIN_TOKEN, "/console/offers")
    status = page.locator("#offers-status")
    expect(status).to_contain_text(f"{week_ago} to {today} (7 days, UTC)")  # the default: the last 7 days
    chart = page.locator("#chart-offers-daily .chart")
    expect(chart).to_have_attribute("data-points", "7")
    drawn = plotted(chart)
    assert drawn["length"] == 7
    series = dict((label, values) for label, values in drawn["series"])
    assert series["impressions"][-1] == impressions and sum(series["impressions"][:-1]) == 0
    assert series["conversions"][-1] == conversions
    totals = page.locator("#offer-totals")
    expect(totals).to_contain_text(f"Impressions{impressions}")
    for offer, figures in truth.items():
        if figures["impressions"]:
            row = page.locator("#per-offer tbody tr", has=page.locator("th", has_text=re.compile(f"^{offer}$")))
            expect(row.locator("td").first).to_have_text(str(figures["impressions"]))
    # The learnt propensities: a row per offer and bucket with evidence (and each prior), each drawn.
    expected_rows = sum(1 + len(o["buckets"]) for o in model.values())
    intervals = page.locator("#model-intervals")
    expect(intervals.locator("tbody tr")).to_have_count(expected_rows)
    assert points(intervals) == expected_rows > len(model)
    expect(intervals.locator("svg.interval rect")).to_have_count(expected_rows)

    # A week with no data: every figure drops to 0, the chart still draws its 7 days.
    page.get_by_label("From (UTC day)").fill("2020-03-01")
    page.get_by_label("To (UTC day)").fill("2020-03-07")
    page.get_by_role("button", name="Show these days").click()
    expect(status).to_contain_text("2020-03-01 to 2020-03-07")
    expect(totals).to_contain_text("Impressions0")
    expect(chart).to_have_attribute("data-sum", "0")
    assert points(chart) == 7
    expect(page).to_have_url(re.compile(r"\?from=2020-03-01&to=2020-03-07$"))

    # Back to today: they come back.
    page.get_by_label("From (UTC day)").fill(today)
    page.get_by_label("To (UTC day)").fill(today)
    page.get_by_role("button", name="Show these days").click()
    expect(status).to_contain_text(f"{today} to {today} (1 day, UTC)")
    expect(totals).to_contain_text(f"Impressions{impressions}")
    expect(chart).to_have_attribute("data-sum", str(impressions + conversions))
    screenshot(page, "offers")
    no_problems(page)


def test_the_offers_page_shows_a_budgets_burn(page, clean_console):
    budgeted = (ROOT / "examples" / "catalog.yaml").read_text().replace(
        "    worth: 9 ", "    budget: {amount: 100, per: day}\n    worth: 9 ", 1)
    clean_console.post_catalog(budgeted)
    with clean_console.server() as client:
        buy = {"id": "burn-1", "type": "purchase", "user_id": "u-burn", "properties": {"revenue": 300, "code": "SYNC10"}}
        assert client.post("/v1/events", json={"events": [buy]}).status_code == 202
        wait_until(lambda: client.get("/v1/kpis").json()["offers"]["cart_crm_addon"]["budget"]["spent"] == 30.0,
                   what="the spend")
    sign_in(page, clean_console.base_url, READ_TOKEN, "/console/offers")
    row = page.locator("#per-offer tbody tr", has=page.locator("th", has_text=re.compile("^cart_crm_addon$")))
    expect(row).to_contain_text("30.00 of 100.00 today (30.0 %)")
    expect(row.locator("svg.bar")).to_have_attribute("aria-label", re.compile("Budget spent: 30.00 of 100.00"))
    no_problems(page)


# -- Experiments and journeys ------------------------------------------------------------


def test_the_experiments_page_draws_each_arms_effect_and_each_journeys_funnel(page, seeded):
    with seeded.server() as client:
        report = client.get("/v1/experiments/cart_learning").json()
        journey = client.get("/v1/kpis").json()["journeys"]["cart_abandonment"]
    # The entrants who bought left by the journey's exit (a purchase); the others wait at its first step.
    left = len([i for i in range(JOURNEY_ENTRANTS) if i % 4 == 0])
    assert (journey["entered"], journey["exited"]) == (JOURNEY_ENTRANTS, left)
    assert journey["waiting"] == {"0": JOURNEY_ENTRANTS - left}
    sign_in(page, seeded.base_url, ADMIN_TOKEN, "/console/experiments")
    expect(page.locator("#experiments-status")).to_contain_text("1 experiment and")
    section = page.locator("#experiment-cart_learning")
    for arm, figures in report["arms"].items():
        row = section.locator("tbody tr", has=page.locator("th", has_text=arm))
        expect(row.first).to_contain_text(str(figures["exposures"]))
    effects = section.locator(".effects")
    with_interval = [arm for arm, effect in report["effects"].items() if effect["ci95"]]
    expect(effects).to_have_attribute("data-points", str(len(with_interval)))
    expect(effects.locator("svg.interval")).to_have_count(len(with_interval))
    srm = section.locator(".srm")
    if report["srm"]["mismatch"]:
        expect(srm).to_contain_text("Sample ratio mismatch")
    else:
        expect(srm).to_contain_text(f"p = {report['srm']['p_value']}")

    funnel = page.locator("#journey-cart_abandonment .funnel")
    assert points(funnel) >= 2  # entered and waiting at least
    expect(funnel.locator("tbody tr", has=page.locator("th", has_text="Entered"))).to_contain_text(str(JOURNEY_ENTRANTS))
    expect(funnel.locator("tbody tr", has=page.locator("th", has_text="Waiting now"))).to_contain_text(
        f"step 0: {JOURNEY_ENTRANTS - left}")
    expect(page.locator("#journey-cart_abandonment .endings")).to_contain_text(f"{left} left by an exit")
    expect(page.locator("#journey-cart_abandonment .uplift")).to_contain_text("No hold-out")
    expect(page.locator("#idle-journeys")).to_contain_text("welcome")
    screenshot(page, "experiments")
    no_problems(page)


def test_a_sample_ratio_mismatch_is_flagged(page, clean_console):
    """Exposures far from the declared 50/50 (only people of one arm decided
    for, found with explain, which is not counted): the page says mismatch, in
    words, as an alert."""
    with clean_console.server() as client:
        exposed, i = 0, 0
        while exposed < 40:
            ask = {"user_id": f"u-skew-{i}", "placements": ["cart_banner"], "context": {"category": "crm"}}
            i += 1
            explained = client.post("/v1/decide?explain=1", json=ask).json()["explain"]
            if explained.get("_experiments", {}).get("cart_learning") == "learnt":
                assert client.post("/v1/decide", json=ask).status_code == 200
                exposed += 1
        wait_until(lambda: client.get("/v1/experiments/cart_learning").json()["srm"]["mismatch"],
                   what="a sample ratio mismatch")
    sign_in(page, clean_console.base_url, ADMIN_TOKEN, "/console/experiments")
    expect(page.locator("#experiment-cart_learning .srm.mismatch[role=alert]")).to_contain_text("Sample ratio mismatch")
    no_problems(page)


# -- Benchmarks ------------------------------------------------------------------------


def test_the_benchmarks_page_draws_every_committed_run_with_its_targets(page, clean_console):
    runs = [json.loads(line) for line in (ROOT / "benchmarks" / "results" / "history.jsonl").read_text().splitlines()
            if line.strip()]
    sign_in(page, clean_console.base_url, READ_TOKEN, "/console/benchmarks")
    expect(page.locator("#benchmarks-status")).to_contain_text(re.compile(r"\d+ runs of \d+ benchmarks"))
    for name in {run["benchmark"] for run in runs}:
        mine = sorted((r for r in runs if r["benchmark"] == name), key=lambda r: r["date"])
        section = page.locator(f"#benchmark-{name.replace('.', '-')}")
        assert section.locator("table tbody tr").count() >= len(mine)
        latest = mine[-1]
        expect(section.locator("dl")).to_contain_text(latest["commit"])
        expect(section.locator("dl")).to_contain_text(f"{latest['machine']['cores']} cores")
        for figure, (_, value) in latest["targets"].items():
            if not isinstance(latest["figures"].get(figure), int | float):
                continue
            box = section.locator(f"figure[id='chart-{name.replace('.', '-')}-{figure}'] .chart")
            assert points(box) >= len(mine)
            drawn = dict((label, values) for label, values in plotted(box)["series"])
            target = next(label for label in drawn if label.startswith("target"))
            assert drawn[target][-1] == value  # the target's line
            assert drawn[figure][-1] == latest["figures"][figure]
            if figure in latest["floors"]:
                assert drawn[f"floor: {latest['floors'][figure]}"][-1] == latest["figures"][latest["floors"][figure]]
    if any(run["quick"] for run in runs):
        expect(page.locator("table").get_by_text("quick", exact=True).first).to_be_visible()
    screenshot(page, "benchmarks")
    no_problems(page)


# -- accessibility --------------------------------------------------------------------


def test_the_new_pages_have_no_serious_or_critical_accessibility_violation(chromium, seeded):
    """On seeded data, so the tables, intervals, funnels and charts are all there."""
    page = new_page(chromium, bypass_csp=True)  # axe-core goes in as a script tag
    try:
        sign_in(page, seeded.base_url, ADMIN_TOKEN, "/console/offers")
        found = {}
        for name, ready in (("offers", "#model-intervals"), ("experiments", "#journey-cart_abandonment .funnel"),
                            ("benchmarks", ".benchmark .chart")):
            page.goto(f"{seeded.base_url}/console/{name}")
            expect(page.locator(ready).first).to_be_visible()
            found[name] = axe_violations(page)
        assert found == dict.fromkeys(found, []), found
    finally:
        page.context.close()


def test_every_page_links_to_the_new_pages_and_they_work_by_keyboard(page, seeded):
    sign_in(page, seeded.base_url, ADMIN_TOKEN, "/console/people")
    nav = page.get_by_role("navigation", name="Console pages")
    for label in ("Offers", "Experiments", "Benchmarks"):
        expect(nav.get_by_role("link", name=label)).to_be_visible()
    nav.get_by_role("link", name="Offers").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/offers$"))
    expect(page.locator("#chart-offers-daily .chart")).to_have_attribute("data-points", "7")
    page.get_by_label("From (UTC day)").focus()
    page.keyboard.type("03012020")  # a date field by keyboard: month, day, year
    page.get_by_label("To (UTC day)").fill("2020-03-02")
    page.get_by_label("To (UTC day)").press("Enter")
    expect(page.locator("#offers-status")).to_contain_text("2020-03-01 to 2020-03-02")
    no_problems(page)


# -- the Overview's latency against the server's own histogram ---------------------------

BURST = 300
RATE = 100.0


def prometheus_buckets(text: str, endpoint: str) -> tuple[list[float], list[int]]:
    """attimo_request_seconds's cumulative buckets of one endpoint, from /metrics."""
    labels = re.escape(f'endpoint="{endpoint}"')
    pattern = re.compile(r'^attimo_request_seconds_bucket\{(?=[^}]*' + labels + r')[^}]*le="([^"]+)"[^}]*\} (\S+)$', re.M)
    found = sorted(((float("inf") if le == "+Inf" else float(le)), float(n)) for le, n in pattern.findall(text))
    return [le for le, _ in found], [int(n) for _, n in found]


def histogram_quantile(q: float, bounds: list[float], cumulative: list[int]) -> float:
    """Prometheus's histogram_quantile over cumulative buckets, written out here
    (not engine.latency's), so the two paths share nothing but the buckets."""
    total = cumulative[-1]
    rank = q * total
    for i, (bound, below_or_at) in enumerate(zip(bounds, cumulative, strict=True)):
        if below_or_at >= rank:
            if bound == float("inf"):
                return bounds[-2]
            lower, before = (bounds[i - 1], cumulative[i - 1]) if i else (0.0, 0)
            return lower + (bound - lower) * (rank - before) / (below_or_at - before)
    return bounds[-2]


def test_the_overview_latency_of_a_burst_equals_the_servers_own_histogram(redis_server, redis_sync_client,
                                                                         tmp_path_factory):
    """A fresh `attimo serve` takes a burst of 300 decides, sent open-loop at a
    fixed rate by the benchmarks' load generator. The Overview's source,
    /v1/ops/overview, must count exactly those 300 decides, and its p50 over the
    window must be within 10 % of the p50 the server records in its Prometheus
    histogram attimo_request_seconds for the same requests. The comparison is
    with the server's own histogram, not with the time the client measured: a
    client's time adds the network, the kernel's queues and the client's own
    scheduling, which are not the server's latency and not what the console
    claims to show; the two server-side paths (the Prometheus histogram in
    memory, and the per-slot counts flushed to Redis and added up by the
    overview) must agree."""
    server = start_api(redis_server.url, tmp_path_factory.mktemp("burst"), ATTIMO_KEY_PREFIX="burst")
    try:
        body = lambda i: {"anonymous_id": f"a-burst-{i}", "placements": ["home_hero", "sidebar"]}  # noqa: E731
        target = HttpTarget.from_url(f"{server.base_url}/v1/decide", bodies=body, variants=BURST,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        # In a thread of its own: this module's Playwright runs an event loop in this one.
        with ThreadPoolExecutor(1) as thread:
            result = thread.submit(asyncio.run, run_open_loop(
                target, RATE, BURST / RATE, LoadOptions(connections=8, busy_poll=False))).result()
        assert (result.sent, result.completed, result.error_count) == (BURST, BURST, 0), result.errors

        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as client:
            def decide_total() -> dict | None:
                total = client.get("/v1/ops/overview", params={"minutes": 10}).json()["endpoints"]["decide"]["total"]
                return total if total["count"] >= BURST else None

            total = wait_until(decide_total, what="the burst in the overview")
            assert total["count"] == BURST
            bounds, cumulative = prometheus_buckets(client.get("/metrics").text, "decide")
        assert cumulative[-1] == BURST, (bounds, cumulative)
        server_p50_ms = histogram_quantile(0.5, bounds, cumulative) * 1000
        assert total["p50"] == pytest.approx(server_p50_ms, rel=0.10), (total, server_p50_ms, bounds, cumulative)
    finally:
        stop_api(server)
