"""The outcome benchmark's figures, from what each policy showed at each visit:
its share of the contextual oracle's conversion value, its regret, what its
discounts cost per conversion they added, the hold-out uplift against the
truth and the off-policy estimate against the real result. Pure functions
of the world, the visits and the answers.

Value is counted in expectation (the hidden purchase probability of what was
shown, times its worth), not from the coin flips: every policy meets the same
visitors, so the expectation leaves only the difference their choices make."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.shop_world import ARBITRATED, HOLDOUT_OFFER, OFFERS, PLACEMENTS, Visits, World

WARMUP_SHARE = 0.2  # shares leave out the first 20 % of the traffic, while a learner finds its feet
DISCOUNT_PCT = np.array([offer.discount_pct for offer in OFFERS])
PRICE = np.array([offer.price for offer in OFFERS])


def scored(visits: Visits) -> np.ndarray:
    """The visits the shares count: after the warm-up, where a policy chooses."""
    arbitrated = np.isin(visits.placement, [PLACEMENTS.index(name) for name in ARBITRATED])
    return arbitrated & (np.arange(len(visits)) >= WARMUP_SHARE * len(visits))


def share(world: World, visits: Visits, shown: np.ndarray, oracle: np.ndarray) -> float:
    counted = scored(visits)
    return float(world.value(visits, shown)[counted].sum() / world.value(visits, oracle)[counted].sum())


def regret(world: World, visits: Visits, shown: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """Conversion value given up against the oracle, cumulated visit by visit."""
    return np.cumsum(world.value(visits, oracle) - world.value(visits, shown))


def conversions(world: World, visits: Visits, shown: np.ndarray) -> np.ndarray:
    """The purchases that happened (the visit's own coin flip), cumulated."""
    _, buy = world.rates(visits, np.arange(len(visits)), shown)
    return np.cumsum(visits.u_buy < buy)


def reward_per_decision(world: World, visits: Visits, shown: np.ndarray) -> float:
    """A policy's conversions per decision, in expectation: what an off-policy
    estimate of it should find."""
    _, buy = world.rates(visits, np.arange(len(visits)), shown)
    return float(buy.mean())


def discount_cost_per_incremental_conversion(world: World, visits: Visits, shown: np.ndarray) -> float | None:
    """What the discounts a policy showed gave away (price x discount on every
    purchase they took, wanted or not) over the purchases they added beyond
    showing nothing; None when it showed no discount that added any."""
    idx = np.flatnonzero((shown >= 0) & (DISCOUNT_PCT[np.maximum(shown, 0)] > 0))
    if idx.size == 0:
        return None
    _, buy = world.rates(visits, idx, shown[idx])
    _, without = world.rates(visits, idx, np.full(idx.size, -1))
    cost = (buy * PRICE[shown[idx]] * DISCOUNT_PCT[shown[idx]] / 100).sum()
    added = (buy - without).sum()
    return float(cost / added) if added > 0 else None


def true_uplift(world: World, visits: Visits) -> float:
    """What showing the hold-out offer adds to a checkout visitor's purchase
    probability, averaged over the visitors of this seed."""
    idx = np.arange(len(visits))
    _, treated = world.rates(visits, idx, np.full(len(visits), HOLDOUT_OFFER))
    _, control = world.rates(visits, idx, np.full(len(visits), -1))
    return float((treated - control).mean())


@dataclass(frozen=True)
class UpliftSeed:
    """One seed's hold-out: the API's estimate and interval, and the truth."""

    seed: int
    truth: float
    estimate: float | None = None
    ci95: tuple[float, float] | None = None
    treated: int | None = None
    control: int | None = None

    @property
    def covered(self) -> bool | None:
        return None if self.ci95 is None else self.ci95[0] <= self.truth <= self.ci95[1]


def uplift_rel_error(seeds: list[UpliftSeed]) -> float | None:
    """The mean estimate's distance from the mean truth, relative: each seed's
    estimate is unbiased but noisy (a 10 % hold-out is small), so the seeds
    are pooled rather than each judged alone."""
    estimates = [s.estimate for s in seeds if s.estimate is not None]
    if not estimates:
        return None
    truth = float(np.mean([s.truth for s in seeds if s.estimate is not None]))
    return abs(float(np.mean(estimates)) - truth) / truth


def ci_coverage(seeds: list[UpliftSeed]) -> float | None:
    covered = [s.covered for s in seeds if s.covered is not None]
    return float(np.mean(covered)) if covered else None
