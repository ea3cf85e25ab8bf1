"""The console's pages at /console: signing in and out, the HTML shell of each
page (rendered here with the session's name and CSRF nonce; the page's own
module in api/static/console/ fills it from the /v1/… JSON endpoints), and the
console's static files. Every page is served under a strict
Content-Security-Policy: no inline script or style, nothing from elsewhere."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.console.session import (
    SESSION_COOKIE,
    Session,
    SignInThrottle,
    cleared_cookie_header,
    cookie_header,
    decode,
    encode,
    sign_in,
)
from api.http import Asset, read_body, services_of
from engine.errors import NotAuthenticated
from engine.ingest.identity import ADMIN
from engine.settings import Settings

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static" / "console"
CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
PAGE_HEADERS = {
    "Content-Security-Policy": CONSOLE_CSP,
    "Cache-Control": "no-store",  # a page holds the session's CSRF nonce
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# path -> (title, template, the page's script module)
PAGES = {
    "/console/overview": ("Overview", "overview.html", "overview.js"),
    "/console/catalog": ("Catalog", "catalog.html", "catalog.js"),
    "/console/people": ("People", "people.html", "people.js"),
    "/console/offers": ("Offers", "offers.html", "offers.js"),
    "/console/experiments": ("Experiments", "experiments.html", "experiments.js"),
    "/console/benchmarks": ("Benchmarks", "benchmarks.html", "benchmarks.js"),
}
HOME = "/console/overview"
SIGN_IN = "/console/sign-in"


def static_assets() -> dict[str, Asset]:
    """Every file the console serves, by URL path, read once: a fixed list, so no
    request path ever reaches the file system."""
    assets = {}
    for path in sorted(STATIC.rglob("*")):
        if path.suffix in MEDIA_TYPES:
            url = "/console/static/" + path.relative_to(STATIC).as_posix()
            assets[url] = Asset(path.read_bytes(), MEDIA_TYPES[path.suffix])
    return assets


def console_routes(settings: Settings) -> list[Route]:
    """The console, for `attimo serve` and `attimo demo`."""
    templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                            auto_reload=False)
    assets = static_assets()
    throttle = SignInThrottle()

    def html(template: str, status: int = 200, headers: dict | None = None, **context) -> Response:
        body = templates.get_template(template).render(**context)
        return Response(body, status, {**PAGE_HEADERS, **(headers or {})}, media_type="text/html; charset=utf-8")

    def current_session(request: Request) -> Session | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            return None
        try:
            return decode(cookie, settings, time.time())
        except NotAuthenticated:
            return None

    async def home(request: Request) -> Response:
        return RedirectResponse(HOME, 303)

    async def page(request: Request) -> Response:
        path = request.url.path
        session = current_session(request)
        if session is None:
            wanted = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{SIGN_IN}?next={quote(wanted, safe='')}", 303,
                                    headers={"Cache-Control": "no-store"})
        title, template, script = PAGES[path]
        catalog = services_of(request).holder.current
        return html(template, title=title, path=path, pages=PAGES, session=session, script=script,
                    placements=sorted(catalog.placements), may_publish=session.may(ADMIN))

    async def sign_in_form(request: Request) -> Response:
        return html("sign_in.html", next=_next_page(request.query_params.get("next")), error=None,
                    signed_in=current_session(request))

    async def sign_in_post(request: Request) -> Response:
        if not _same_origin(request):
            return html("sign_in.html", 403, next=HOME, signed_in=None,
                        error="This sign-in form was sent from another site, so it was refused.")
        client = services_of(request).rate_limits.client(request.scope)
        now = time.time()
        wait = throttle.retry_after(client, now)
        if wait:
            return html("sign_in.html", 429, {"Retry-After": str(wait)}, next=HOME, signed_in=None,
                        error=f"Too many failed sign-ins from your address: try again in {wait} s.")
        form = _form(await read_body(request, 8 * 1024))
        target = _next_page(form.get("next"))
        session = sign_in(form.get("token", "").strip(), settings, now)
        if session is None:
            throttle.failed(client, now)
            return html("sign_in.html", 401, next=target, signed_in=None,
                        error="That is not this server's admin token, read token or server token.")
        response = RedirectResponse(target, 303, headers={"Cache-Control": "no-store"})
        response.headers["Set-Cookie"] = cookie_header(encode(session, settings), settings)
        return response

    async def sign_out(request: Request) -> Response:
        # A stateless session cannot be recalled; its cookie is cleared. Only the
        # console's own form may do it (its nonce), never a link from elsewhere.
        session = current_session(request)
        form = _form(await read_body(request, 8 * 1024))
        if session is not None and form.get("csrf") != session.csrf:
            return Response("sign-out needs the page's CSRF nonce: reload the page and sign out again",
                            403, media_type="text/plain; charset=utf-8")
        response = RedirectResponse(SIGN_IN, 303, headers={"Cache-Control": "no-store"})
        response.headers["Set-Cookie"] = cleared_cookie_header(settings)
        return response

    async def static(request: Request) -> Response:
        asset = assets.get(request.url.path)
        if asset is None:
            return Response("not found", 404, media_type="text/plain")
        return asset.response(request, {"X-Content-Type-Options": "nosniff"})

    return [
        Route("/console", home, methods=["GET"], include_in_schema=False),
        Route(SIGN_IN, sign_in_form, methods=["GET"], include_in_schema=False),
        Route(SIGN_IN, sign_in_post, methods=["POST"], include_in_schema=False),
        Route("/console/sign-out", sign_out, methods=["POST"], include_in_schema=False),
        Route("/console/static/{name:path}", static, methods=["GET"], include_in_schema=False),
        *(Route(path, page, methods=["GET"], include_in_schema=False) for path in PAGES),
    ]


def _form(raw: bytes) -> dict[str, str]:
    """An urlencoded form's fields (the first of each name)."""
    try:
        fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10)
    except ValueError:  # more fields than any console form has
        return {}
    return {name: values[0] for name, values in fields.items()}


def _next_page(text: str | None) -> str:
    """Where to go after signing in: one of the console's pages (with its
    query), never another site."""
    if not text:
        return HOME
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or parts.path not in PAGES:
        return HOME
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _same_origin(request: Request) -> bool:
    """A sign-in posted by a page of this server (no Origin header: not a
    browser's cross-site form, which always sends one)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")
