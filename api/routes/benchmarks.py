"""The benchmark history (server token, read scope): every run's figures with
its commit, date and machine, each against its floor and target, for the
console's Benchmarks page. Written by benchmarks/history.py."""

from __future__ import annotations

from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.ingest.identity import ADMIN, READ, require_one_of

BESIDE_THE_CODE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "history.jsonl"
RUNS_MAX = 2000


async def get_benchmarks(request: Request) -> Response:
    """
    summary: Every benchmark run's figures over time (server token, read or admin scope).
    description: 'Each run: `benchmark`, `quick`, `command`, `date`, `commit` ("+" when the tree had
      changes), `machine`, `figures`, `targets` ({figure: [comparison, value]}) and `floors` ({figure:
      the floor figure of the same run}). Oldest first; `?benchmark=` keeps one. Empty when no history file.'
    security: [{serverToken: []}]
    parameters:
      - {name: benchmark, in: query, schema: {type: string}}
    responses:
      200: {description: '{"runs": [...], "path"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read or admin scope}
    """
    require_one_of(caller_of(request), READ, ADMIN)
    configured = services_of(request).settings.benchmark_history
    path = Path(configured) if configured else BESIDE_THE_CODE
    wanted = request.query_params.get("benchmark")
    runs = []
    if path.is_file():
        for line in path.read_bytes().splitlines()[-RUNS_MAX:]:
            try:
                run = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a benchmark killed while writing
            if isinstance(run, dict) and (wanted is None or run.get("benchmark") == wanted):
                runs.append(run)
    return json_response({"runs": runs, "path": str(path)})


ROUTES = [Route("/v1/ops/benchmarks", get_benchmarks, methods=["GET"])]
