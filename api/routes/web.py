"""What browsers load: the website snippet at /v1/snippet.js (always), the
static demo storefront (only with ATTIMO_STOREFRONT or `attimo demo`), and two
DEMO-ONLY endpoints that `attimo demo` alone mounts (`demo_routes`): signing a
user id and reading one's own profile. A real site signs user ids on its own
server with the site secret and never exposes a profile to the browser."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from pathlib import Path

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import Asset, services_of
from engine.clock import now_ms
from engine.decisions.person_view import person_view
from engine.errors import EventRejected, NotAuthorized, StoreUnavailable
from engine.ingest.identity import sign_user_id
from engine.settings import Settings

HERE = Path(__file__).resolve().parent.parent  # api/: static/ and storefront/ live there
SNIPPET = HERE / "static" / "attimo.js"  # a link to js-snippet/attimo.js, served as written
STOREFRONT = HERE / "storefront"
# The inline stub of the loader, byte for byte as in js-snippet/loader.html:
# a strict CSP allows it by this hash (see LOADER_CSP_HASH).
LOADER_STUB = "window.attimo=window.attimo||function(){(attimo.q=attimo.q||[]).push(arguments)}"
LOADER_CSP_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(LOADER_STUB.encode()).digest()).decode() + "'"
DEMO_USER_ID = re.compile(r"u-[a-z0-9-]{1,60}")


@lru_cache(maxsize=1)
def snippet_asset() -> Asset:
    return Asset(SNIPPET.read_bytes(), "text/javascript; charset=utf-8")


async def get_snippet(request: Request) -> Response:
    """
    summary: The website snippet (plain JS, ETag and Cache-Control; If-None-Match gives 304).
    parameters:
      - {name: If-None-Match, in: header, schema: {type: string}}
    responses:
      200: {description: The script}
      304: {description: Not modified}
    """
    return snippet_asset().response(request, {"Access-Control-Allow-Origin": "*"})


# -- the demo storefront -------------------------------------------------------------

PAGES = {
    "/": "index.html",
    "/crm": "category-crm.html",
    "/analytics": "category-analytics.html",
    "/pricing": "pricing.html",
    "/pricing/crm": "pricing.html",
    "/product/crm-pro": "product.html",
    "/cart": "cart.html",
    "/register": "register.html",
    "/signup": "register.html",
}
STATIC = {"/shop.css": "text/css; charset=utf-8", "/shop.js": "text/javascript; charset=utf-8"}
# The storefront runs under a strict policy: no inline script but the loader stub (by hash).
STOREFRONT_CSP = (
    f"default-src 'self'; script-src 'self' {LOADER_CSP_HASH}; style-src 'self'; "
    "img-src 'self' data:; media-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def loader_html(settings: Settings, consent: str = "required") -> str:
    """The snippet as a site pastes it, for this server's site key (same origin)."""
    return (
        f"<script>{LOADER_STUB}</script>\n"
        f'<script async src="/v1/snippet.js" data-key="{settings.site_key or ""}" '
        f'data-budget="{settings.snippet_budget_ms}" data-consent="{consent}"></script>'
    )


def storefront_routes(settings: Settings, demo: bool = False) -> list[Route]:
    loader = loader_html(settings)
    cache: dict[str, Asset] = {}

    layout = (STOREFRONT / "layout.html").read_text()

    def page(name: str) -> Asset:
        if name not in cache:
            # A page file: "<!-- title | <html> attributes -->", then its <main>.
            header, _, main = (STOREFRONT / name).read_text().partition("\n")
            title, _, attrs = header.removeprefix("<!-- ").removesuffix(" -->").partition(" | ")
            text = layout.replace("%ATTRS%", attrs).replace("%TITLE%", title).replace("%MAIN%", main)
            text = text.replace("<!--attimo-->", loader)
            text = text.replace("<!--demo-panel-->", DEMO_PANEL if demo else "")
            cache[name] = Asset(text.encode(), "text/html; charset=utf-8")
        return cache[name]

    async def serve_page(request: Request) -> Response:
        return page(PAGES[request.url.path]).response(request, {"Content-Security-Policy": STOREFRONT_CSP})

    async def serve_static(request: Request) -> Response:
        path = request.url.path
        if path not in cache:
            cache[path] = Asset((STOREFRONT / path.lstrip("/")).read_bytes(), STATIC[path])
        return cache[path].response(request)

    return [Route(path, serve_page, methods=["GET"], include_in_schema=False) for path in PAGES] + [
        Route(path, serve_static, methods=["GET"], include_in_schema=False) for path in STATIC
    ]


DEMO_PANEL = """<aside id="profile-panel" class="panel"><h2>Your profile (demo only)</h2>
<button type="button" id="profile-refresh">Refresh</button><pre id="profile"></pre></aside>"""


# -- DEMO ONLY: mounted by `attimo demo`, never by `attimo serve` ----------------------


async def demo_sign(request: Request) -> Response:
    """DEMO ONLY. Signs a demo user id (u-...) as the shop's server would after a
    registration. A real site signs on its own server; never mount this."""
    settings: Settings = services_of(request).settings
    try:
        user_id = orjson.loads(await request.body()).get("user_id", "")
    except (orjson.JSONDecodeError, AttributeError):
        raise EventRejected("send {\"user_id\": \"u-...\"}", "user_id") from None
    if not isinstance(user_id, str) or not DEMO_USER_ID.fullmatch(user_id):
        raise EventRejected("demo user ids look like u-name", "user_id", 62)
    body = {"user_id": user_id, "user_sig": sign_user_id(settings.site_secret or "", user_id)}
    return Response(orjson.dumps(body), media_type="application/json")


async def demo_profile(request: Request) -> Response:
    """DEMO ONLY. The caller's own profile: its anonymous id, or a user id with a
    valid signature (so one visitor cannot read another's)."""
    services = services_of(request)
    query = request.query_params
    user_id = query.get("user_id") or None
    if user_id is None and not query.get("anonymous_id"):
        raise NotAuthorized("anonymous_id or user_id is required")
    from engine.ingest.identity import Caller

    person = Caller(False, services.settings.site_secret).person(
        query.get("anonymous_id"), user_id, query.get("user_sig"), "query"
    )
    try:
        profile = await services.store.fetch(person)
    except RedisError as exc:
        raise StoreUnavailable("the profile store is unavailable") from exc
    view = person_view(services.holder.current, person, profile, now_ms())
    return Response(orjson.dumps(view), media_type="application/json", headers={"Cache-Control": "no-store"})


def demo_routes(settings: Settings) -> list[Route]:
    """The storefront and the demo-only endpoints, for `attimo demo`."""
    return storefront_routes(settings, demo=True) + [
        Route("/demo/sign", demo_sign, methods=["POST"], include_in_schema=False),
        Route("/demo/profile", demo_profile, methods=["GET"], include_in_schema=False),
    ]


def demo_outbox_routes(outbox) -> list[Route]:
    """DEMO ONLY. What `attimo demo` sent: its local SMTP sink and webhook receiver
    (engine/demo/mail.py). GET /demo/outbox lists emails and webhooks, newest first."""

    async def show(request: Request) -> Response:
        return Response(orjson.dumps({"outbox": list(outbox.items)}), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def receive(request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        outbox.webhook(request.path_params["channel"], dict(request.headers), body)
        return Response(b"", 204)

    return [
        Route("/demo/outbox", show, methods=["GET"], include_in_schema=False),
        Route("/demo/webhooks/{channel}", receive, methods=["POST"], include_in_schema=False),
    ]


def web_routes(settings: Settings) -> list[Route]:
    """Mounted by every API: the snippet, and the static storefront when asked."""
    routes = [Route("/v1/snippet.js", get_snippet, methods=["GET"])]
    if settings.storefront:
        routes += storefront_routes(settings)
    return routes
