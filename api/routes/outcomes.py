"""What decisions earned, for marketers (server token, read scope): each
experiment's arms with their effects and the sample-ratio check, and the
learned propensities with their intervals."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.http import caller_of, json_response, services_of
from engine.clock import now_ms
from engine.decisions.learning import model_report
from engine.errors import EventRejected, StoreUnavailable
from engine.ingest.identity import READ, require


async def list_experiments(request: Request) -> Response:
    """
    summary: The catalog's experiments (server token).
    security: [{serverToken: []}]
    responses:
      200: {description: '{"experiments": [{"id", "placement", "metric", "arms": [ids], "shares"}]}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
    """
    require(caller_of(request), READ)
    catalog = services_of(request).holder.current
    return json_response({"experiments": [
        {"id": e.id, "placement": e.placement, "metric": e.metric, "control": e.control,
         "journeys": sorted(e.journeys), "arms": [arm.id for arm in e.arms], "shares": e.shares()}
        for e in catalog.experiments_by_id.values()]})


async def get_experiment(request: Request) -> Response:
    """
    summary: One experiment's results (server token).
    description: 'Per arm: exposures (people whose decide ran the experiment), conversions, clicks, the primary
      metric''s rate, revenue, unsubscribes and discount cost. Per arm against the control: the difference
      in the primary metric with a 95 % interval that stays valid however often it is read (mSPRT), and the
      guardrails. `srm`: the chi-square p-value of exposures against the declared split; `mismatch` below 0.001.'
    security: [{serverToken: []}]
    parameters:
      - {name: experiment_id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: '{"id", "metric", "arms": {arm: {...}}, "effects": {arm: {"difference", "ci95", ...}}, "srm"}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      404: {description: No such experiment in the catalog in force}
    """
    require(caller_of(request), READ)
    services = services_of(request)
    try:
        report = await services.runtime.decision_log.exposures.experiment(
            services.holder.current, request.path_params["experiment_id"])
    except RedisError as exc:
        raise StoreUnavailable("the KPI store is unavailable") from exc
    if report is None:
        return json_response({"error": "no such experiment in the catalog in force"}, 404)
    return json_response(report)


async def get_model(request: Request) -> Response:
    """
    summary: The learned propensities this process decides with (server token).
    description: 'Per offer of an expected-value placement (or of `?placement=`) and per context bucket with
      evidence: the posterior mean propensity, its 95 % interval, and the faded impressions and rewards behind
      it; `age_ms`: how old the snapshot is (refreshed every second).'
    security: [{serverToken: []}]
    parameters:
      - {name: placement, in: query, schema: {type: string}}
    responses:
      200: {description: '{"learning": {...}|null, "age_ms", "offers": {id: {bucket: {"mean", "ci95", "impressions", "rewards"}}}}'}
      401: {description: Missing token}
      403: {description: Not a token with the read scope}
      422: {description: No such placement}
    """
    require(caller_of(request), READ)
    services = services_of(request)
    catalog = services.holder.current
    placement = request.query_params.get("placement")
    if placement is not None and placement not in catalog.placements:
        raise EventRejected("no such placement in the catalog", "placement")
    model = services.runtime.models.for_catalog(catalog)
    report = ({"learning": None, "age_ms": None, "offers": {}} if catalog.learning is None or model is None
              else model_report(model, catalog, placement, now_ms()))
    return json_response({**report, "decision_log_dropped": services.runtime.decision_log.dropped})


ROUTES = [
    Route("/v1/experiments", list_experiments, methods=["GET"]),
    Route("/v1/experiments/{experiment_id}", get_experiment, methods=["GET"]),
    Route("/v1/model", get_model, methods=["GET"]),
]
