"""The `attimo` command: serve, demo, check, sign, import, …"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import AttimoError, CatalogError
from engine.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_CATALOG = EXAMPLES / "catalog.yaml"
DEMO_TOKEN = "demo-server-token"
DEMO_SITE_KEY = "demo-site-key"
DEMO_SITE_SECRET = "demo-site-secret"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attimo", description="Real-time personalization engine")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API")
    _server_flags(serve)
    serve.add_argument("--catalog", help="catalog file (YAML or JSON) [ATTIMO_CATALOG]")

    demo = commands.add_parser("demo", help="API + demo catalog + demo people on a private Redis")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--catalog", default=str(DEMO_CATALOG))

    check = commands.add_parser("check", help="validate a catalog; every problem with its path")
    check.add_argument("file")

    sign = commands.add_parser("sign", help="print user_sig for a user id (ATTIMO_SITE_SECRET)")
    sign.add_argument("user_id")
    sign.add_argument("--secret", help="site secret [ATTIMO_SITE_SECRET]")
    sign.add_argument("--timestamped", action="store_true",
                      help="the <unix seconds>.<hex> form, which expires after ATTIMO_SIGNATURE_MAX_AGE_S")

    scheduler = commands.add_parser("scheduler", help="send due follow-up messages (contact policy at send time)")
    scheduler.add_argument("--redis-url", help="[ATTIMO_REDIS_URL] default redis://127.0.0.1:6379/0")

    commands.add_parser("worker", help="apply events from Kafka (ATTIMO_KAFKA_BROKERS) with faust-streaming")

    migrate = commands.add_parser("migrate", help="move data written before the two identity spaces into them "
                                                  "(stop the API, workers and schedulers first)")
    migrate.add_argument("--redis-url", help="[ATTIMO_REDIS_URL] default redis://127.0.0.1:6379/0")
    migrate.add_argument("--anonymous-pattern", required=True,
                         help="ids that were anonymous (a regular expression over the whole id); the "
                              "snippet's are '[0-9a-f]{24}' (so are MongoDB ObjectIds: check your user ids)")
    migrate.add_argument("--dry-run", action="store_true", help="count what would move, change nothing")

    evaluate = commands.add_parser("evaluate", help="estimate what another catalog's arbitration would have "
                                                    "earned on the logged decisions (IPS and doubly robust)")
    evaluate.add_argument("--catalog", required=True, help="the catalog to evaluate (YAML or JSON)")
    evaluate.add_argument("--redis-url", help="[ATTIMO_REDIS_URL] default redis://127.0.0.1:6379/0")
    evaluate.add_argument("--json", action="store_true", help="print one JSON document")
    evaluate.add_argument("--reward-window-s", type=float, default=None,
                          help="leave out decisions younger than this before the newest, whose reward may "
                               "still come (default two days)")

    crm = commands.add_parser("import", help="import people and their traits from a CRM export (.csv or .jsonl)")
    crm.add_argument("file", help="CSV with a header row, or JSON Lines (one object a line)")
    crm.add_argument("--id-column", default="user_id", help="the column (or key) holding the user id "
                                                           "(default user_id): the person is u:<id>")
    crm.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file's extension")
    crm.add_argument("--errors", help="also write every refused line to this file (CSV: line,field,reason)")
    crm.add_argument("--batch-size", type=int, default=500, help="people applied together (1 to 500)")
    crm.add_argument("--redis-url", help="[ATTIMO_REDIS_URL] default redis://127.0.0.1:6379/0")
    crm.add_argument("--catalog", help="catalog file [ATTIMO_CATALOG]; default: the one published in Redis")

    args = parser.parse_args(argv)
    try:
        return {"serve": run_serve, "demo": run_demo, "check": run_check, "sign": run_sign,
                "scheduler": run_scheduler_command, "worker": run_worker_command,
                "migrate": run_migrate, "evaluate": run_evaluate, "import": run_import}[args.command](args)
    except AttimoError as exc:
        print(f"attimo: {exc}", file=sys.stderr)
        return 1


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="[ATTIMO_HOST] default 127.0.0.1")
    parser.add_argument("--port", type=int, help="[ATTIMO_PORT] default 8000")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes [ATTIMO_WORKERS] default 1")
    parser.add_argument("--redis-url", help="[ATTIMO_REDIS_URL] default redis://127.0.0.1:6379/0")
    parser.add_argument("--server-token", help="[ATTIMO_SERVER_TOKEN]")
    parser.add_argument("--site-key", help="[ATTIMO_SITE_KEY]")
    parser.add_argument("--site-secret", help="[ATTIMO_SITE_SECRET]")


def run_scheduler_command(args) -> int:
    from engine.runtime import run_scheduler

    settings = Settings.from_env(redis_url=args.redis_url)
    if settings.scheduler_metrics_port:  # embedded, the scheduler's metrics are in the API's /metrics
        from prometheus_client import start_http_server

        start_http_server(settings.scheduler_metrics_port, addr="127.0.0.1")
    import uvloop  # as the API and the worker run on

    stats = uvloop.run(run_scheduler(settings))
    print(f"attimo scheduler: stopped {stats.as_dict()}", flush=True)
    return 0


def run_worker_command(args) -> int:
    from engine.stream.worker import run_worker  # faust is imported only by workers

    return run_worker(Settings.from_env())


def run_check(args) -> int:
    from engine.catalog.compile import load_catalog_file

    try:
        catalog, _ = load_catalog_file(args.file)
    except CatalogError as exc:
        for path, reason in exc.problems:
            print(f"{exc.source}: {path}: {reason}")
        print(f"{len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"{args.file}: ok: {len(catalog.placements)} placements, {len(catalog.offers)} offers, "
        f"{len(catalog.segments)} segments, {len(catalog.features)} windowed features, "
        f"{len(catalog.journeys.all)} journeys, {len(catalog.journeys.templates)} templates"
    )
    return 0


def run_migrate(args) -> int:
    import json
    import re

    from engine.migrate import Migration
    from engine.store.client import connect
    from engine.store.keys import Keys

    settings = Settings.from_env(redis_url=args.redis_url)
    pattern = args.anonymous_pattern
    try:
        re.compile(pattern)
    except re.error as exc:
        print(f"attimo: --anonymous-pattern is not a regular expression: {exc}", file=sys.stderr)
        return 2

    async def run() -> dict:
        redis = connect(settings, pool_size=4, pool_timeout_s=5)
        try:
            return (await Migration(redis, Keys(settings.key_prefix), pattern, dry_run=args.dry_run).run()).as_dict()
        finally:
            await redis.aclose()

    print(json.dumps({"dry_run": args.dry_run, **asyncio.run(run())}))
    return 0


def run_evaluate(args) -> int:
    import json

    from redis.exceptions import RedisError

    from engine.catalog.compile import load_catalog_file
    from engine.clock import now_ms
    from engine.outcomes.evaluate import evaluate
    from engine.outcomes.learning import LearningStore
    from engine.store.client import connect
    from engine.store.keys import Keys

    settings = Settings.from_env(redis_url=args.redis_url)
    target, _ = load_catalog_file(args.catalog)
    window = {} if args.reward_window_s is None else {"reward_window_ms": int(args.reward_window_s * 1000)}

    async def run() -> dict:
        redis = connect(settings, pool_size=4, pool_timeout_s=5)
        keys = Keys(settings.key_prefix)
        try:
            return await evaluate(redis, keys, target, LearningStore(redis, keys), now_ms(), **window)
        finally:
            await redis.aclose()

    try:
        result = asyncio.run(run())
    except RedisError as exc:
        print(f"attimo: the store is unavailable: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    logged, target = result["logged"], result["target"]
    print(f"logged decisions: {logged['decisions']}, reward per decision: {logged['reward_rate']} "
          f"(left out: {logged['left_out']['reward_pending']} too recent for their reward, "
          f"{logged['left_out']['joint_placements']} filled with other placements)")
    for name in ("ips", "dr"):
        figure = target[name]
        if figure is not None:
            low, high = figure["ci95"]
            print(f"{args.catalog} by {name.upper()}: {figure['value']} per decision (95 % interval {low} to {high})")
    if target["match_rate"] is not None:
        print(f"it would have chosen the logged offer in {target['match_rate']:.1%} of decisions")
    return 0


IMPORT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
IMPORT_PIECE_BYTES = 64 * 1024


def run_import(args) -> int:
    """`attimo import FILE`: people and traits from a CRM export, applied through
    the pipeline in batches as the file is read (engine/ingest/importer.py), with
    a progress bar on a terminal; every refused line is listed at the end (and in
    --errors). Exit 0 when every line was applied, 1 when any was refused."""
    import csv

    from redis.exceptions import RedisError
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from engine.ingest.import_rows import rows_reader
    from engine.ingest.importer import Importer, import_people
    from engine.runtime import Runtime

    path = Path(args.file)
    kind = args.format or IMPORT_FORMATS.get(path.suffix.lower())
    if kind is None:
        print(f"attimo: {path.name}: not .csv or .jsonl; say which with --format", file=sys.stderr)
        return 2
    if not 1 <= args.batch_size <= 500:
        print("attimo: --batch-size is 1 to 500", file=sys.stderr)
        return 2
    try:
        size = path.stat().st_size
    except OSError as exc:
        print(f"attimo: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    settings = Settings.from_env(redis_url=args.redis_url, catalog_path=args.catalog)
    reader = rows_reader(kind, args.id_column)
    runtime, _ = Runtime.from_catalog_file(settings, pool_size=4, pool_timeout_s=5)
    errors_file = open(args.errors, "w", newline="", encoding="utf-8") if args.errors else None  # noqa: SIM115
    errors_csv = csv.writer(errors_file) if errors_file else None
    if errors_csv:
        errors_csv.writerow(["line", "field", "reason"])

    def write_refusal(refusal) -> None:
        if errors_csv:
            errors_csv.writerow([refusal.line, refusal.field, refusal.reason])

    importer = Importer(runtime.pipeline.apply, batch_size=args.batch_size, on_refusal=write_refusal)
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[counts]}"), console=console, disable=not console.is_terminal)

    def counts() -> str:
        report = importer.report
        return f"applied {report.applied}, duplicates {report.duplicates}, refused {report.refused}"

    async def pieces(task):
        with path.open("rb") as file:
            while piece := file.read(IMPORT_PIECE_BYTES):
                yield piece
                progress.update(task, advance=len(piece), counts=counts())

    async def run():
        try:
            if not args.catalog:
                await runtime.catalogs.refresh()  # the catalog in force, as the API has it
            with progress:
                task = progress.add_task(path.name, total=size, counts="")
                return await import_people(pieces(task), reader, importer)
        finally:
            await runtime.aclose()

    try:
        report = asyncio.run(run())
    except RedisError as exc:
        print(f"attimo: the store is unavailable ({exc}) after {counts()}; run the import again: "
              "what was applied is recognised and skipped", file=sys.stderr)
        return 1
    finally:
        if errors_file:
            errors_file.close()
    print(counts())
    for refusal in report.errors:
        print(f"line {refusal.line}: " + (f"{refusal.field}: " if refusal.field else "") + refusal.reason)
    if report.refused > len(report.errors):
        more = f" (every one in {args.errors})" if args.errors else " (--errors FILE lists every one)"
        print(f"… and {report.refused - len(report.errors)} more refused{more}")
    return 0 if report.refused == 0 else 1


def run_sign(args) -> int:
    from engine.ingest.identity import sign_user_id

    secret = args.secret or Settings.from_env().site_secret
    if not secret:
        print("attimo: set ATTIMO_SITE_SECRET or pass --secret", file=sys.stderr)
        return 1
    print(sign_user_id(secret, args.user_id, int(time.time()) if args.timestamped else None))
    return 0


def run_serve(args) -> int:
    settings = Settings.from_env(
        host=args.host, port=args.port, workers=args.workers, redis_url=args.redis_url,
        server_token=args.server_token, site_key=args.site_key, site_secret=args.site_secret,
        catalog_path=args.catalog,
    )
    serve(settings)
    return 0


def serve(settings: Settings, extra_routes: list | None = None) -> None:
    import uvicorn

    from api.app import create_app
    from api.protocol import HeaderDeadlineProtocol

    common = dict(
        host=settings.host, port=settings.port, loop="uvloop", http=HeaderDeadlineProtocol,
        access_log=settings.access_log, log_level="info", timeout_graceful_shutdown=5,
        limit_concurrency=settings.limit_concurrency,
        # Never rewrite the client address from X-Forwarded-For (uvicorn trusts
        # 127.0.0.1 by default): api/ratelimit.py reads it from ATTIMO_TRUSTED_PROXIES only.
        proxy_headers=False,
    )
    if settings.workers == 1:
        app = create_app(settings, extra_routes)  # a bad catalog stops here, with its problems
        uvicorn.run(app, **common)
        return
    if settings.catalog_path:
        from engine.catalog.compile import load_catalog_file

        load_catalog_file(settings.catalog_path)  # refuse to start N workers on a bad catalog
    os.environ.update(settings.to_env())
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="attimo-metrics-"))
    uvicorn.run("api.app:create_app_from_env", factory=True, workers=settings.workers, **common)


def run_demo(args) -> int:
    from engine.demo.mail import DemoOutbox
    from engine.store.local_server import LocalRedis

    local = LocalRedis().start()
    outbox = DemoOutbox().start_smtp()
    try:
        # ATTIMO_* variables tune the demo too (budgets, caps, …); its Redis,
        # catalog, keys, tokens, address and message sinks are its own.
        base = f"http://{args.host}:{args.port}"
        settings = Settings.from_env(
            None,
            host=args.host, port=args.port, redis_url=local.url, catalog_path=args.catalog,
            key_prefix="attimo",
            server_token=DEMO_TOKEN, site_key=DEMO_SITE_KEY, site_secret=DEMO_SITE_SECRET,
            allowed_origins=(base,), public_url=base,
            smtp_host="127.0.0.1", smtp_port=outbox.smtp_port, smtp_tls="none",
            webhook_urls=tuple(f"{channel}={base}/demo/webhooks/{channel}"
                               for channel in ("push", "sms", "webhook", "sales", "operator", "audiences")),
            webhook_secret="demo-webhook-secret",
        )
        from engine.demo.seed import seed_demo_people, try_these

        asyncio.run(seed_demo_people(settings))
        print(try_these(settings), flush=True)
        print(f"Demo storefront: {base}/", flush=True)
        print(f"Console for marketers and ops: {base}/console (sign in with the server token "
              f"{settings.server_token})", flush=True)
        print(f"Sent emails and webhooks (local SMTP sink on port {outbox.smtp_port}): {base}/demo/outbox",
              flush=True)
        from api.routes.web import demo_outbox_routes, demo_routes

        serve(settings, demo_routes(settings) + demo_outbox_routes(outbox))
    finally:
        outbox.stop()
        local.stop()
        print("attimo demo: stopped, private Redis removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
