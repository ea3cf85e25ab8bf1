"""The API application: `create_app(settings)` builds the process's runtime
(engine/runtime.py), mounts every resource's routes (api/routes/) and the console
(api/console/) with the error answers of api/errors.py, and runs the catalog
poller, the budget snapshot's refresh, the console figures' flush
(engine/store/ops_series.py) and the embedded scheduler for as long as it
serves. Imported by the CLI only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from api import metrics
from api.console.pages import console_routes
from api.errors import ERROR_HANDLERS
from api.protocol import HeaderDeadlineProtocol
from api.routes import (
    audiences,
    benchmarks,
    broadcasts,
    catalog,
    codes,
    decide,
    events,
    imports,
    inbox,
    links,
    operators,
    ops,
    outcomes,
    people,
    segment,
    web,
)
from api.services import Services
from engine.clock import cancel_for_good, every, in_background, now_ms
from engine.runtime import Runtime, freeze_start_up, run_embedded
from engine.settings import Settings

log = logging.getLogger("attimo.api")
OPS_FLUSH_S = 1.0  # how often this process adds its console figures to Redis

ROUTES = (events.ROUTES + decide.ROUTES + people.ROUTES + catalog.ROUTES + ops.ROUTES + segment.ROUTES
          + operators.ROUTES + inbox.ROUTES + links.ROUTES + outcomes.ROUTES + codes.ROUTES
          + audiences.ROUTES + imports.ROUTES + broadcasts.ROUTES + benchmarks.ROUTES)


def create_app(settings: Settings, extra_routes: list | None = None) -> Starlette:
    """The API for these settings. A catalog file that does not compile stops
    start-up here, before any request is served."""
    runtime, file_text = Runtime.from_catalog_file(settings)
    services = Services(runtime)
    # A second longer than the body's deadline, so a route reading the body answers 408 first.
    HeaderDeadlineProtocol.header_timeout_s = settings.read_timeout_ms / 1000 + 1.0

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await runtime.start(file_text)
        poller = asyncio.create_task(runtime.catalogs.poll(settings.catalog_poll_s))
        # Budgets and code pools: the first snapshot before serving, then every second.
        with contextlib.suppress(RedisError):  # Redis not there yet: run() says so and retries
            await runtime.budgets.refresh()
        scheduler_stop = asyncio.Event()
        scheduler = None
        if settings.scheduler == "embedded":
            scheduler = asyncio.create_task(run_embedded(settings, scheduler_stop, runtime.holder))
        loop = asyncio.get_running_loop()
        reload_tasks: set[asyncio.Task] = set()

        def on_sighup() -> None:
            task = loop.create_task(runtime.reload_file())
            reload_tasks.add(task)
            task.add_done_callback(reload_tasks.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        freeze_start_up()  # no GC pauses that grow with the catalog on the hot path
        def flush_ops():
            return runtime.ops.flush(metrics.OPS)

        background = contextlib.AsyncExitStack()
        for context in (runtime.models.running(), runtime.decision_log.running(now_ms),
                        in_background(runtime.budgets.run()),
                        in_background(every(OPS_FLUSH_S, flush_ops, "console figures flush", log, first_wait=True),
                                      last=flush_ops)):
            await background.enter_async_context(context)
        try:
            yield
        finally:
            # Each step of the shutdown has a deadline: one that hangs (a Redis
            # gone, a send that never answers) is logged with what was still
            # running, and the process stops anyway (Ctrl-C always works).
            await _within(background.aclose(), "the final flushes")
            poller.cancel()
            if scheduler is not None:
                scheduler_stop.set()
                await _within(scheduler, "the embedded scheduler")
            loop.remove_signal_handler(signal.SIGHUP)
            await _within(services.aclose(), "closing the stores")

    middleware = []
    if settings.allowed_origins:
        middleware.append(Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-Attimo-Key", "Authorization", "X-Attimo-User", "X-Attimo-User-Sig"],
            expose_headers=["Retry-After"],  # so the snippet can read a 429's
            max_age=600,
        ))
    if settings.decide_delay_ms:
        middleware.append(Middleware(SlowDecide, delay_s=settings.decide_delay_ms / 1000))
    middleware.append(Middleware(decide.DecideShortcut, handlers=ERROR_HANDLERS))

    app = Starlette(
        routes=ROUTES + web.web_routes(settings) + console_routes(settings) + (extra_routes or []),
        middleware=middleware,
        exception_handlers=ERROR_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = services
    return app


SHUTDOWN_STEP_S = 10.0


async def _within(work, what: str) -> None:
    """Await `work` for at most SHUTDOWN_STEP_S; past it, log every task still
    running (where each waits) and cancel it."""
    task = work if isinstance(work, asyncio.Future) else asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_S)
    if done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("shutdown: %s failed: %r", what, task.exception())
        return
    log.error("shutdown: %s did not finish within %.0f s; cancelled. Tasks still running:", what, SHUTDOWN_STEP_S)
    for other in asyncio.all_tasks():
        frames = other.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})"
                            for f in reversed(frames))
        log.error("  %s: %s", other.get_name(), where or "not started")
    await cancel_for_good(task)


class SlowDecide:
    """Test-only (ATTIMO_DECIDE_DELAY_MS): every decide answers this much later,
    so the browser tests can pass the snippet's time budget. Mounted only when
    set, so the hot path does not even test for it."""

    def __init__(self, app, delay_s: float):
        self.app = app
        self.delay_s = delay_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/decide":
            await asyncio.sleep(self.delay_s)
        await self.app(scope, receive, send)


def create_app_from_env() -> Starlette:
    """uvicorn factory (`--factory api.app:create_app_from_env`) for worker processes."""
    return create_app(Settings.from_env())
