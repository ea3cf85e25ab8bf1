"""The statistics the reports quote: an experiment's interval stays valid when
read every day (A/A false positives at most 5 %, where a fixed-sample interval
read as often is wrong far more), a skewed split is flagged, and a hold-out
uplift's interval holds the truth about 95 % of the time."""

from __future__ import annotations

import math

import numpy as np

from engine.outcomes.stats import Z95, proportion_effect, sample_ratio, uplift_interval


def _aa_runs(rng, runs: int, days: int, per_day: int, rate: float):
    """Cumulative (successes, exposures) of two identical arms, per run and day."""
    a = rng.binomial(per_day, rate, size=(runs, days)).cumsum(axis=1)
    b = rng.binomial(per_day, rate, size=(runs, days)).cumsum(axis=1)
    n = per_day * np.arange(1, days + 1)
    return a, b, n


def test_the_sequential_interval_read_daily_keeps_a_a_false_positives_at_most_5_percent():
    rng = np.random.default_rng(2026)
    runs, days = 400, 30
    a, b, n = _aa_runs(rng, runs, days, 300, 0.05)
    sequential = naive = 0
    for run in range(runs):
        flagged_sequential = flagged_naive = False
        for day in range(days):
            effect = proportion_effect(int(b[run, day]), int(n[day]), int(a[run, day]), int(n[day]))
            low, high = effect["ci95"]
            flagged_sequential |= low > 0 or high < 0
            p, p0 = b[run, day] / n[day], a[run, day] / n[day]
            half = Z95 * math.sqrt(p * (1 - p) / n[day] + p0 * (1 - p0) / n[day])
            flagged_naive |= abs(p - p0) > half
        sequential += flagged_sequential
        naive += flagged_naive
    assert sequential / runs <= 0.05
    assert naive / runs > 0.15  # the peeking problem the sequential interval is there for


def test_the_sequential_interval_finds_a_real_effect():
    effect = proportion_effect(700, 10_000, 500, 10_000)
    assert effect["ci95"][0] > 0 and effect["p_always_valid"] < 0.05


def test_a_skewed_split_is_flagged_and_a_fair_one_is_not():
    shares = {"control": 0.5, "treatment": 0.5}
    assert sample_ratio({"control": 5_000, "treatment": 5_500}, shares)["mismatch"] is True
    assert sample_ratio({"control": 5_000, "treatment": 5_040}, shares)["mismatch"] is False
    assert sample_ratio({"control": 7_020, "treatment": 2_980}, {"control": 0.7, "treatment": 0.3})["mismatch"] is False


def test_the_uplift_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    treated_rate, control_rate, covered, trials = 0.012, 0.008, 0, 2_000
    for _ in range(trials):
        treated, control = 9_000, 1_000
        result = uplift_interval(int(rng.binomial(treated, treated_rate)), treated,
                                 int(rng.binomial(control, control_rate)), control)
        low, high = result["ci95"]
        covered += low <= treated_rate - control_rate <= high
    assert 0.93 <= covered / trials <= 0.98


def test_an_empty_group_gives_no_uplift_rather_than_a_wrong_one():
    assert uplift_interval(5, 100, 0, 0)["uplift"] is None
