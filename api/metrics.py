"""Prometheus metrics: latency per endpoint, events applied and deduplicated,
decisions and fallbacks per placement and offer, Redis errors. With several
uvicorn workers the CLI sets PROMETHEUS_MULTIPROC_DIR and /metrics aggregates
every worker's files."""

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

# Buckets fit a millisecond service: 250 µs to 1 s.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

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
