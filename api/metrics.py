"""Prometheus metrics: latency per endpoint, events applied and deduplicated,
decisions and fallbacks per placement and offer, Redis errors. With several
uvicorn workers the CLI sets PROMETHEUS_MULTIPROC_DIR and /metrics aggregates
every worker's files. The figures the console needs across processes (times,
fallbacks, Redis errors, events applied) are also counted in OPS, which the
app flushes to Redis every second (engine/store/ops_series.py)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from engine.latency import LATENCY_BUCKETS
from engine.store.ops_series import OpsCounts

OPS = OpsCounts()  # this process's share of the console's figures, until the next flush

REQUEST_SECONDS = Histogram(
    "attimo_request_seconds", "Time to answer, per endpoint", ["endpoint"], buckets=LATENCY_BUCKETS
)
EVENTS_APPLIED = Counter("attimo_events_applied_total", "Events applied to profiles")
EVENTS_QUEUED = Counter("attimo_events_queued_total", "Events acknowledged by the Kafka broker (Kafka mode)")
EVENTS_DUPLICATE = Counter("attimo_events_duplicate_total", "Events ignored as already applied")
EVENTS_REJECTED = Counter("attimo_events_rejected_total", "Event batches refused", ["status"])
DECISIONS = Counter(
    "attimo_decisions_total", "Offers chosen per placement (offer=none: keep the default)",
    ["placement", "offer"],
)
FALLBACKS = Counter("attimo_decide_fallbacks_total", "Decides answered without the profile", ["reason"])
REDIS_ERRORS = Counter("attimo_redis_errors_total", "Redis failures and budget overruns", ["op", "kind"])
RATE_LIMITED = Counter("attimo_rate_limited_total", "Public requests answered 429", ["limit"])
MERGES = Counter("attimo_profile_merges_total", "Anonymous profiles merged into known people")
WRITE_CONFLICTS = Counter("attimo_profile_write_conflicts_total",
                          "Profiles another writer changed between an apply's read and its write (applied again in Redis)")


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


UNKNOWN_PLACEMENT = "(unknown)"  # every placement the catalog does not name, under one label
_decision_counters: dict[tuple[str, str], Counter] = {}


def count_decision(placement: str, offer: str) -> None:
    """One decision counted; the labelled child is looked up once per pair."""
    counter = _decision_counters.get((placement, offer))
    if counter is None:
        counter = _decision_counters[(placement, offer)] = DECISIONS.labels(placement, offer)
    counter.inc()


class EndpointTimer:
    """One endpoint's answer times: its attimo_request_seconds child and the
    console's counts, both in memory."""

    __slots__ = ("_histogram", "name")

    def __init__(self, name: str):
        self.name = name
        self._histogram = REQUEST_SECONDS.labels(name)

    def observe(self, seconds: float) -> None:
        self._histogram.observe(seconds)
        OPS.observe(self.name, seconds)


def fallback(reason: str) -> None:
    """A decide answered without the profile (it is a Redis error too)."""
    FALLBACKS.labels(reason).inc()
    OPS.count("fallbacks")
    redis_error("decide", reason)


def redis_error(op: str, kind: str) -> None:
    REDIS_ERRORS.labels(op, kind).inc()
    OPS.count("redis_errors")


def events_applied(n: int) -> None:
    EVENTS_APPLIED.inc(n)
    OPS.count("events_applied", n)
