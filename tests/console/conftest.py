"""What the console's browser tests share: `attimo serve` with an admin and a
read token (one per test module), the demo catalog in force on an empty Redis,
and Debian's Chromium through Playwright with a page that records script
errors and anything the CSP refused."""

from __future__ import annotations

import pytest

from engine.testing.processes import start_api, stop_api
from tests.conftest import ROOT

ADMIN_TOKEN = "console-admin-token-7Hq2"
READ_TOKEN = "console-read-token-Lp9x"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def console(redis_server, tmp_path_factory):
    # Its own tokens (the shared `api` has only the server token) and key prefix.
    # 127.0.0.1 is a trusted proxy so the throttle test can speak from other addresses.
    server = start_api(redis_server.url, tmp_path_factory.mktemp("console"), ATTIMO_ADMIN_TOKEN=ADMIN_TOKEN,
                       ATTIMO_READ_TOKEN=READ_TOKEN, ATTIMO_KEY_PREFIX="console",
                       ATTIMO_TRUSTED_PROXIES="127.0.0.1", ATTIMO_REDIS_BUDGET_MS="2000")
    yield server
    stop_api(server)


@pytest.fixture
def clean_console(console, redis_sync_client):
    """The console's server with an empty Redis and the demo catalog in force."""
    console.post_catalog((ROOT / "examples" / "catalog.yaml").read_text())
    return console


def new_page(chromium, **context_options):
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, **context_options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.problems = []  # uncaught script errors and anything the CSP refused
    page.on("pageerror", lambda error: page.problems.append(f"script error: {error}"))
    page.on("console", lambda message: page.problems.append(message.text)
            if "Content Security Policy" in message.text else None)
    return page


@pytest.fixture
def page(chromium):
    page = new_page(chromium)
    yield page
    page.context.close()
