"""The statistics the reports quote, each with the reason it was chosen.

- Uplift of an offer over its hold-out: a difference of two conversion rates
  with the Agresti–Caffo interval (one success and one failure added to each
  group), which keeps its 95 % coverage at the small rates of a banner log where
  the plain Wald interval does not.
- Experiments: the always-valid interval of a mixture sequential probability
  ratio test (mSPRT, normal mixture): it may be read every day and stopped at
  any look without raising the false-positive rate above α, which a fixed-sample
  interval read daily does. Its mixing variance is set for MIXING_SAMPLE
  exposures per arm (where the interval is tightest).
- Sample-ratio mismatch: Pearson's χ² of exposures against the declared split;
  flagged below SRM_P, strict because it is checked on every report."""

from __future__ import annotations

import math

from scipy.stats import chi2

Z95 = 1.959963984540054
ALPHA = 0.05
MIXING_SAMPLE = 5_000
SRM_P = 0.001


def rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def uplift_interval(converted_t: int, treated: int, converted_c: int, control: int) -> dict:
    """Treated rate minus control rate, with its 95 % interval."""
    rate_t, rate_c = rate(converted_t, treated), rate(converted_c, control)
    out = {"treated": treated, "control": control, "converted_treated": converted_t,
           "converted_control": converted_c, "rate_treated": _round(rate_t), "rate_control": _round(rate_c),
           "uplift": None, "ci95": None}
    if rate_t is None or rate_c is None:
        return out
    pt, pc = (converted_t + 1) / (treated + 2), (converted_c + 1) / (control + 2)
    half = Z95 * math.sqrt(pt * (1 - pt) / (treated + 2) + pc * (1 - pc) / (control + 2))
    out["uplift"] = _round(rate_t - rate_c)
    out["ci95"] = [_round(pt - pc - half), _round(pt - pc + half)]
    return out


def always_valid(difference: float, variance: float, mixing_variance: float, alpha: float = ALPHA) -> dict:
    """The mSPRT interval and p-value for a difference whose estimate has
    `variance`: valid at every look, however many."""
    if variance <= 0 or mixing_variance <= 0:
        return {"difference": _round(difference), "ci95": None, "p_always_valid": None}
    v, t2 = variance, mixing_variance
    half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
    log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * difference ** 2 / (2 * v * (v + t2))
    p_value = min(1.0, math.exp(-log_lambda)) if log_lambda < 700 else 0.0
    return {"difference": _round(difference), "ci95": [_round(difference - half), _round(difference + half)],
            "p_always_valid": _round(p_value)}


def proportion_effect(successes: int, n: int, successes_control: int, n_control: int) -> dict:
    """An arm's rate minus the control's, always valid."""
    if not n or not n_control:
        return {"difference": None, "ci95": None, "p_always_valid": None}
    p, p0 = successes / n, successes_control / n_control
    variance = p * (1 - p) / n + p0 * (1 - p0) / n_control
    pooled = (successes + successes_control) / (n + n_control)
    return always_valid(p - p0, variance, 2 * pooled * (1 - pooled) / MIXING_SAMPLE)


def mean_effect(total: float, squares: float, n: int, total_control: float, squares_control: float,
                n_control: int) -> dict:
    """An arm's mean per exposure (revenue) minus the control's, always valid."""
    if not n or not n_control:
        return {"difference": None, "ci95": None, "p_always_valid": None}
    mean, mean0 = total / n, total_control / n_control
    var, var0 = max(squares / n - mean ** 2, 0.0), max(squares_control / n_control - mean0 ** 2, 0.0)
    return always_valid(mean - mean0, var / n + var0 / n_control, (var + var0) / MIXING_SAMPLE)


def sample_ratio(counts: dict[str, int], shares: dict[str, float]) -> dict:
    """Do the exposures match the declared split? χ² goodness of fit."""
    total = sum(counts.values())
    if total == 0 or len(shares) < 2:
        return {"p_value": None, "mismatch": False}
    statistic = sum((counts.get(arm, 0) - total * share) ** 2 / (total * share) for arm, share in shares.items())
    p_value = float(chi2.sf(statistic, len(shares) - 1))
    return {"p_value": _round(p_value), "mismatch": p_value < SRM_P}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
