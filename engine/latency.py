"""Latency histograms as plain counts: the buckets every process shares, where a
time falls among them, percentiles read back from the counts, and the console's
series built from the per-slot counts every API process adds to in Redis
(engine/store/ops_series.py). No I/O here."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

# Buckets fit a millisecond service: 250 µs to 1 s. Upper bounds, inclusive
# (Prometheus `le`); a time past the last one falls in the overflow bucket,
# index len(LATENCY_BUCKETS).
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OVERFLOW = len(LATENCY_BUCKETS)

STEP_S = 10  # the console's resolution: one slot of counts per 10 seconds
STEP_MS = STEP_S * 1000

# What the console draws as the line not to cross, and what
# deploy/prometheus/alerts.yml fires on: the same figures, documented in
# docs/operations.md#console-figures-and-grafana.
THRESHOLDS = {
    "decide_p99_ms": 50,  # decide's Redis budget: past it decide answers the fallback
    "fallbacks_per_s": 1.0,
    "redis_errors_per_s": 1.0,
    "due_lateness_ms": 60_000,  # the oldest due message waited a minute past its time
    "kafka_lag_records": 10_000,
}

# The endpoints timed (the `endpoint` label of attimo_request_seconds), always
# in the overview so a chart keeps its lines when one is idle.
ENDPOINTS = ("decide", "events", "segment")


def bucket_of(seconds: float) -> int:
    """The index of the first bucket whose upper bound is >= seconds."""
    return bisect_left(LATENCY_BUCKETS, seconds)


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram of per-bucket counts
    (len(bounds) + 1 of them, the last the overflow), interpolated linearly
    within the bucket the rank falls in, from its lower bound (the previous
    bound, 0 for the first) to its upper bound: what Prometheus's
    histogram_quantile does, so both show the same figure. A rank in the
    overflow bucket answers the last bound (the histogram knows no more).
    None without any count."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


def bucket_range(seconds: float) -> tuple[float, float]:
    """The bucket `seconds` falls in, as (lower, upper) bounds: the resolution
    of any figure read back from the histogram."""
    i = bucket_of(seconds)
    if i >= OVERFLOW:
        return LATENCY_BUCKETS[-1], float("inf")
    return (LATENCY_BUCKETS[i - 1] if i > 0 else 0.0), LATENCY_BUCKETS[i]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def overview(slots: Mapping[int, Mapping[str, int]], first_slot_ms: int, now_ms: int,
             endpoints: Sequence[str] = ENDPOINTS) -> dict:
    """The console's series from per-slot counts ({slot start ms: {field: count}},
    fields as OpsCounts.fields writes them), one point per slot from
    `first_slot_ms` to the slot under way. Rates are per second; the slot under
    way is divided by the seconds it has run so far (its last second may not
    be flushed yet: it reads up to a second low). Percentiles are in ms, None
    for a slot without requests. `total`, per endpoint, and `totals`: the whole
    window at once (its buckets added up), the console's headline figures."""
    current_slot_ms = now_ms - now_ms % STEP_MS
    times = list(range(first_slot_ms, current_slot_ms + 1, STEP_MS))
    seen = {field.partition(":")[0] for counts in slots.values() for field in counts if ":" in field}
    names = list(endpoints) + sorted(seen - set(endpoints))
    series = {name: {"rate": [], "count": [], "p50": [], "p95": [], "p99": []} for name in names}
    window = {name: [0] * (OVERFLOW + 1) for name in names}
    totals = {"fallbacks": [], "redis_errors": [], "events_applied": []}
    for t in times:
        counts = slots.get(t, {})
        seconds = STEP_S if t < current_slot_ms else max(1.0, (now_ms - t) / 1000)
        for name in names:
            buckets = [counts.get(f"{name}:{i}", 0) for i in range(OVERFLOW + 1)]
            window[name] = [a + b for a, b in zip(window[name], buckets, strict=True)]
            line = series[name]
            n = counts.get(f"{name}:n", 0)
            line["count"].append(n)
            line["rate"].append(round(n / seconds, 3))
            for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                line[label].append(_ms(quantile(q, buckets)))
        for field, values in totals.items():
            values.append(round(counts.get(field, 0) / seconds, 3))
    for name, buckets in window.items():
        series[name]["total"] = {"count": sum(buckets), **{label: _ms(quantile(q, buckets)) for label, q in
                                                            (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}}
    return {"step_s": STEP_S, "t": times, "endpoints": series, **totals,
            "totals": {field: sum(slots.get(t, {}).get(field, 0) for t in times) for field in totals},
            "thresholds": dict(THRESHOLDS)}
