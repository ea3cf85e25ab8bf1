"""Snippet benchmark (compass P8): its gzipped size; in headless Chromium on
localhost, navigation start -> slot filled over N loads, next to a floor page on
the same server that fills the same slot with one inline fetch of a constant
JSON; and the page's load event with and without the snippet.

    python -m benchmarks.bench_snippet [--loads 50] [--quick]

The server is the real API (`engine.cli.serve`) with a real Redis, plus
benchmark-only routes (/bench/...) mounted here and nowhere else. Every load is a
fresh browser context (a first visit: nothing cached). Last line: JSON figures."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SITE_KEY, SITE_SECRET, TOKEN = "bench-site-key", "bench-site-secret", "bench-token"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
SLOT = '<div id="hero" data-attimo-slot="home_hero"><b>default hero</b></div>'
BODY = "<h1>Shop</h1>" + SLOT + "<p>" + "Some page text. " * 50 + "</p>"
CONSTANT = {"decision_id": "floor", "placements": {"home_hero": {
    "offer": "spring_sale", "kind": "discount", "content": {"title": "Spring sale", "code": "SPRING20"}}}}
FLOOR_SCRIPT = """<script>
fetch('/bench/constant.json').then(r => r.json()).then(a => {
  const c = a.placements.home_hero.content, box = document.createElement('div');
  const t = document.createElement('strong'); t.textContent = c.title; box.appendChild(t);
  document.getElementById('hero').replaceChildren(box);
  performance.mark('floor:filled');
});
</script>"""


def bench_routes(settings):
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from api.routes.web import loader_html

    loader = loader_html(settings, consent="none")

    def page(head: str):
        html = f"<!doctype html><html><head><title>bench</title>{head}</head><body>{BODY}</body></html>"
        return lambda request: HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return [
        Route("/bench/snippet", page(loader)),
        Route("/bench/floor", page(FLOOR_SCRIPT)),
        Route("/bench/plain", page("")),
        Route("/bench/constant.json", lambda request: JSONResponse(CONSTANT)),
    ]


def serve_child(port: int, redis_url: str) -> None:
    """In the child process: the real API plus the benchmark pages."""
    from engine.cli import serve
    from engine.settings import Settings

    settings = Settings.from_env(
        {}, port=port, redis_url=redis_url, catalog_path=str(ROOT / "examples" / "catalog.yaml"),
        server_token=TOKEN, site_key=SITE_KEY, site_secret=SITE_SECRET,
        rate_limit="off", new_profile_limit="off",  # one browser on 127.0.0.1 plays many visitors
    )
    serve(settings, bench_routes(settings))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(browser, url: str, mark: str | None) -> tuple[float | None, float]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url, wait_until="load")
    filled = None
    if mark:
        page.wait_for_function(f"performance.getEntriesByName('{mark}').length > 0", timeout=10_000)
        filled = page.evaluate(f"performance.getEntriesByName('{mark}')[0].startTime")
    load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventStart")
    context.close()
    return filled, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="15 loads (under a minute)")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(int(args.serve[0]), args.serve[1])
        return 0
    loads = 15 if args.quick else args.loads

    from playwright.sync_api import sync_playwright

    from engine.testing.processes import RedisServer, ServerProcess

    class SnippetServer(ServerProcess):
        """This module's --serve child: the API and the pages, on a free port."""

        name = "snippet"

        def __init__(self, redis_url: str):
            super().__init__(cwd=ROOT)
            self.env = {k: v for k, v in os.environ.items() if not k.startswith("ATTIMO_")}
            self.redis_url = redis_url

        def command(self) -> list[str]:
            return [sys.executable, "-m", "benchmarks.bench_snippet", "--serve", str(self.port), self.redis_url]

        def is_ready(self) -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5).status_code == 200
            except httpx.TransportError:
                return False

    snippet = (ROOT / "js-snippet" / "attimo.js").read_bytes()
    gzip_bytes = len(gzip.compress(snippet, 9))
    with RedisServer() as redis, SnippetServer(redis.url) as child:
        base = f"http://127.0.0.1:{child.port}"
        series: dict[str, list[float]] = {"snippet": [], "floor": [], "load_snippet": [], "load_plain": []}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for name, mark in (("snippet", "attimo:filled:home_hero"), ("floor", "floor:filled"),
                               ("plain", None)):
                measure(browser, f"{base}/bench/{name}", mark)  # warm-up
            for _ in range(loads):  # interleaved, so drifts hit all pages alike
                filled, load = measure(browser, f"{base}/bench/snippet", "attimo:filled:home_hero")
                series["snippet"].append(filled)
                series["load_snippet"].append(load)
                series["floor"].append(measure(browser, f"{base}/bench/floor", "floor:filled")[0])
                series["load_plain"].append(measure(browser, f"{base}/bench/plain", None)[1])
            browser.close()

    figures = {
        "gzip_bytes": gzip_bytes,
        "raw_bytes": len(snippet),
        "loads": loads,
        "slot_filled_p50_ms": statistics.median(series["snippet"]),
        "slot_filled_p99_ms": pct(series["snippet"], 0.99),
        "floor_filled_p50_ms": statistics.median(series["floor"]),
        "floor_filled_p99_ms": pct(series["floor"], 0.99),
        "load_event_snippet_p50_ms": statistics.median(series["load_snippet"]),
        "load_event_plain_p50_ms": statistics.median(series["load_plain"]),
        "load_event_delta_ms": statistics.median(series["load_snippet"]) - statistics.median(series["load_plain"]),
        "load_event_delta_p99_ms": pct(series["load_snippet"], 0.99) - pct(series["load_plain"], 0.99),
    }
    figures["slot_over_floor_p99"] = figures["slot_filled_p99_ms"] / figures["floor_filled_p99_ms"]
    figures = {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}
    write_report(figures, series)
    print(json.dumps(figures))
    return 0


def write_report(figures: dict, series: dict[str, list[float]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (("snippet", "snippet: slot filled"), ("floor", "floor: inline fetch, slot filled"),
                        ("load_snippet", "load event, with snippet"), ("load_plain", "load event, no snippet")):
        values = sorted(series[name])
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
    ax.set_xlabel("ms from navigation start")
    ax.set_ylabel("fraction of loads")
    ax.set_title(f"Snippet in headless Chromium, {figures['loads']} loads each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "snippet.png", dpi=110)
    plt.close(fig)
    rows = "\n".join(f"| {k} | {v} |" for k, v in figures.items())
    (RESULTS / "snippet.md").write_text(f"""# Snippet benchmark (P8)

`python -m benchmarks.bench_snippet{' --quick' if figures['loads'] < 50 else ''}`: headless Debian Chromium on
localhost, every load a fresh context (first visit), the real API with a real Redis.
The floor page fills the same slot with one inline `fetch` of a constant JSON from
the same server. Target: slot filled p99 <= 1.5 x the floor's p99; <= 4096 bytes gzipped.

| figure | value |
|---|---|
{rows}

![CDF](snippet.png)
""")


if __name__ == "__main__":
    sys.exit(main())
