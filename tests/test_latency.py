"""Percentiles read back from bucket counts, and the console's series built from
per-slot counts: known histograms, figures worked out by hand."""

from __future__ import annotations

import pytest

from engine.latency import (
    LATENCY_BUCKETS,
    OVERFLOW,
    STEP_MS,
    bucket_of,
    bucket_range,
    overview,
    quantile,
)


def counts(**by_bound: int) -> list[int]:
    """Per-bucket counts from {"b<index>": n}; "inf" for the overflow."""
    out = [0] * (OVERFLOW + 1)
    for name, n in by_bound.items():
        out[OVERFLOW if name == "inf" else int(name[1:])] = n
    return out


def test_a_time_falls_in_the_first_bucket_whose_bound_it_does_not_pass():
    assert bucket_of(0.0) == 0
    assert bucket_of(0.00025) == 0  # bounds are inclusive, as Prometheus's le
    assert bucket_of(0.0003) == 1
    assert bucket_of(0.05) == LATENCY_BUCKETS.index(0.05)
    assert bucket_of(1.0) == OVERFLOW - 1
    assert bucket_of(1.5) == OVERFLOW
    assert bucket_range(0.003) == (0.002, 0.005)
    assert bucket_range(3.0) == (1.0, float("inf"))


def test_the_percentile_is_interpolated_within_its_bucket():
    # 100 requests, all between 1 ms and 2 ms (bucket 3): the p50 is half way.
    assert quantile(0.5, counts(b3=100)) == pytest.approx(0.0015)
    assert quantile(0.99, counts(b3=100)) == pytest.approx(0.001 + 0.001 * 0.99)
    # 90 under 250 µs and 10 between 5 and 10 ms: p50 in the first bucket
    # (from 0), p95 half way through the 5-10 ms bucket, p99 at nine tenths.
    histogram = counts(b0=90, b5=10)
    assert quantile(0.5, histogram) == pytest.approx(0.00025 * 50 / 90)
    assert quantile(0.95, histogram) == pytest.approx(0.0075)
    assert quantile(0.99, histogram) == pytest.approx(0.005 + 0.005 * 0.9)
    assert quantile(1.0, histogram) == pytest.approx(0.01)


def test_a_rank_past_the_last_bound_reads_the_last_bound_and_none_without_counts():
    assert quantile(0.99, counts(b3=50, inf=50)) == 1.0
    assert quantile(0.5, counts()) is None


def test_empty_buckets_before_the_rank_do_not_move_it():
    # A rank exactly at the end of a bucket is that bucket's bound, not the next.
    assert quantile(0.5, counts(b2=50, b7=50)) == pytest.approx(0.001)
    assert quantile(0.51, counts(b2=50, b7=50)) == pytest.approx(0.025 + 0.025 * 1 / 50)


def test_the_overview_has_a_point_per_slot_rates_per_second_and_the_slot_under_way_by_its_seconds():
    first = 1_700_000_000_000
    now = first + 2 * STEP_MS + 4_000  # 4 s into the third slot
    slots = {
        first: {"decide:3": 100, "decide:n": 100, "fallbacks": 5, "events_applied": 30},
        first + 2 * STEP_MS: {"decide:5": 8, "decide:n": 8, "people:0": 2, "people:n": 2, "redis_errors": 2},
    }
    series = overview(slots, first, now)
    assert series["step_s"] == 10
    assert series["t"] == [first, first + STEP_MS, first + 2 * STEP_MS]
    decide = series["endpoints"]["decide"]
    assert decide["count"] == [100, 0, 8]
    assert decide["rate"] == [10.0, 0.0, 2.0]
    assert decide["p50"] == [1.5, None, 7.5]
    assert decide["p99"][0] == pytest.approx(1.99)
    assert series["endpoints"]["events"]["count"] == [0, 0, 0]  # always there, idle or not
    assert series["endpoints"]["people"]["count"] == [0, 0, 2]  # any endpoint counted shows
    assert series["fallbacks"] == [0.5, 0.0, 0.0]
    assert series["redis_errors"] == [0.0, 0.0, 0.5]
    assert series["events_applied"] == [3.0, 0.0, 0.0]
    assert series["thresholds"]["decide_p99_ms"] == 50
    # The window at once: 100 in 1-2 ms and 8 in 5-10 ms; the p99's rank, 106.92,
    # is 6.92 into the eight slower ones.
    assert decide["total"]["count"] == 108
    assert decide["total"]["p99"] == pytest.approx(5 + 5 * 6.92 / 8)
    assert series["totals"] == {"fallbacks": 5, "redis_errors": 2, "events_applied": 30}
