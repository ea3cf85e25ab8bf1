"""Propensity learnt online, the part decide reads: a snapshot of the Beta
posteriors of rewards (clicks, or conversions) per verified impression, per
offer and context bucket, faded with the catalog's half-life and starting from
each offer's declared propensity; with SAMPLES posterior draws per offer and
bucket made when the snapshot is taken. Decide picks one draw column at random
for a request (Thompson sampling: each offer's draw is an independent sample
of its posterior), so it stays one Redis read for the person and a few
microseconds of numpy; the same columns give the probability the chosen offer
had. engine/outcomes/learning.py counts the evidence and refreshes the snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.catalog.learning import Learning

SAMPLES = 64  # posterior draws per offer and bucket in a snapshot
PRIOR_FLOOR = 0.01
MIN_HELD_OUT = 30  # held-out exposures in a bucket before a discount is valued by what it adds there  # keeps a Beta proper when the catalog gives its prior no weight


@dataclass
class Model:
    """One snapshot of the learned propensities, for one catalog: the Beta
    posteriors (prior + faded counts) per bucket, and SAMPLES draws of each,
    made the first time a bucket is asked for after the snapshot was taken
    (so a refresh costs a few hundred microseconds at once, not the draws of
    every bucket)."""

    digest: str
    taken_ms: int
    learning: Learning
    index: dict[str, int]  # offer id -> row
    prior: tuple[np.ndarray, np.ndarray]  # alpha, beta of every row before evidence
    posteriors: dict[str, tuple[np.ndarray, np.ndarray]]  # bucket -> alpha, beta
    counts: dict = field(default_factory=dict)
    # (offer, bucket) -> (treated rate, hold-out rate): discounts ranked by the
    # conversions they add, not the ones they get.
    incremental: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # bucket -> {row: (alpha, beta) treated, (alpha, beta) held out}
    increments: dict[str, dict[int, tuple]] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    _draws: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, catalog, counts: dict[str, dict[str, tuple]], taken_ms: int,
              rng: np.random.Generator | None = None, holdouts: dict[str, dict[str, float]] | None = None) -> Model:
        """`counts`: per offer and bucket, faded (impressions, rewards).
        `holdouts`: per discount offer with a hold-out, its exposure counters
        (engine/outcomes/exposures.py) when the catalog learns conversions."""
        learning = catalog.learning
        offers = list(catalog.learnable.values())
        index = {offer.id: i for i, offer in enumerate(offers)}
        weight = learning.prior_weight
        # Two levels: an offer's evidence in every bucket, from its declared
        # propensity; then each bucket, from that. A bucket with little
        # evidence leans on what the offer does everywhere, so learning does
        # not wait for every bucket to fill (the buckets multiply fast).
        shown_all = np.array([sum(s for s, _ in counts.get(o.id, {}).values()) for o in offers])
        rewards_all = np.array([sum(r for _, r in counts.get(o.id, {}).values()) for o in offers])
        overall_a, overall_b = _posterior(
            np.array([o.economics.propensity for o in offers]), weight, shown_all, rewards_all, learning.reward)
        prior_a, prior_b = _posterior(overall_a / (overall_a + overall_b), weight, 0.0, 0.0, learning.reward)
        buckets = {bucket for by_bucket in counts.values() for bucket in by_bucket}
        posteriors = {}
        for bucket in buckets:
            found = [counts.get(o.id, {}).get(bucket, (0.0, 0.0)) for o in offers]
            posteriors[bucket] = _posterior(overall_a / (overall_a + overall_b), weight,
                                            np.array([f[0] for f in found]), np.array([f[1] for f in found]),
                                            learning.reward)
        model = cls(catalog.digest, taken_ms, learning, index, (prior_a, prior_b), posteriors, counts,
                    rng=rng or np.random.default_rng())
        if learning.reward == "conversion" and holdouts:
            model._rank_discounts_by_increment(offers, holdouts)
        return model

    def _rank_discounts_by_increment(self, offers: list, holdouts: dict) -> None:
        """A discount with a hold-out is valued, in each bucket where its
        held-out people number MIN_HELD_OUT or more, at the conversion rate it
        adds: a draw of the treated rate minus a draw of the hold-out's (each a
        Beta of conversions per decide-time exposure, both from the offer's
        pooled rate, so an increment starts at 0). Who buys anyway is worth
        nothing to a discount."""
        weight = self.learning.prior_weight
        prior_a, prior_b = self.prior
        for offer in offers:
            raw = holdouts.get(offer.id)
            if offer.kind != "discount" or not offer.holdout_pct or not raw:
                continue
            row = self.index[offer.id]
            mean = prior_a[row] / (prior_a[row] + prior_b[row])
            buckets = {name.split("|", 2)[2] for name in raw if name.count("|") >= 2}
            for bucket in buckets:
                t_n, t_c = raw.get(f"t|exposed|{bucket}", 0.0), raw.get(f"t|converted|{bucket}", 0.0)
                c_n, c_c = raw.get(f"c|exposed|{bucket}", 0.0), raw.get(f"c|converted|{bucket}", 0.0)
                if c_n < MIN_HELD_OUT:
                    continue
                treated = _posterior(mean, weight, t_n, t_c, "conversion")
                held = _posterior(mean, weight, c_n, c_c, "conversion")
                self.increments.setdefault(bucket, {})[row] = (treated, held)
                self.incremental[(offer.id, bucket)] = (float(treated[0] / sum(treated)), float(held[0] / sum(held)))

    def draws_of(self, bucket: str) -> np.ndarray:
        """SAMPLES posterior draws of every offer in `bucket`: (offers, SAMPLES)."""
        draws = self._draws.get(bucket)
        if draws is None:
            alpha, beta = self.posteriors.get(bucket, self.prior)
            draws = self.rng.beta(alpha[:, None], beta[:, None], size=(len(alpha), SAMPLES)) if len(alpha) \
                else np.zeros((0, SAMPLES))
            for row, (treated, held) in self.increments.get(bucket, {}).items():
                draws[row] = self.rng.beta(*treated, SAMPLES) - self.rng.beta(*held, SAMPLES)
            self._draws[bucket] = draws
        return draws

    def posterior(self, offer: str, bucket: str) -> tuple[float, float] | None:
        row = self.index.get(offer)
        if row is None:
            return None
        alpha, beta = self.posteriors.get(bucket, self.prior)
        return float(alpha[row]), float(beta[row])


def _posterior(mean, weight: float, shown, rewards, reward: str) -> tuple:
    """Beta(alpha, beta) from a prior `mean` worth `weight` observations and
    the faded evidence; a click needs an impression, a conversion need not."""
    if reward == "click":
        rewards = np.minimum(rewards, shown)
    return (PRIOR_FLOOR + mean * weight + rewards,
            PRIOR_FLOOR + (1 - mean) * weight + np.maximum(shown - rewards, 0.0))


def beta_interval(alpha, beta):
    """Mean and central 95 % interval of Beta posteriors (numbers or arrays)."""
    from scipy.special import betaincinv  # only where an interval is reported

    return alpha / (alpha + beta), betaincinv(alpha, beta, 0.025), betaincinv(alpha, beta, 0.975)


def model_report(model: Model, catalog, placement: str | None, now: int) -> dict:
    """What GET /v1/model shows: the learning settings, the snapshot's age, and
    per offer (of `placement`, or every learnable one) its prior and, per
    bucket with evidence, the posterior mean, its 95 % interval and the faded
    counts behind it."""
    wanted = [(offer.id, model.index[offer.id]) for offer in catalog.learnable.values()
              if placement is None or placement in offer.placements]
    rows = [row for _, row in wanted]
    offers = {offer: {"prior": None, "buckets": {}} for offer, _ in wanted}
    for bucket, (alpha, beta) in [(None, model.prior), *sorted(model.posteriors.items())]:
        means, lows, highs = (np.round(v, 6).tolist() for v in beta_interval(alpha[rows], beta[rows]))
        for i, (offer, _) in enumerate(wanted):
            figures = {"mean": means[i], "ci95": [lows[i], highs[i]]}
            if bucket is None:
                offers[offer]["prior"] = figures
                continue
            shown, rewards = model.counts.get(offer, {}).get(bucket, (0.0, 0.0))
            offers[offer]["buckets"][bucket] = {**figures, "impressions": round(shown, 2),
                                                "rewards": round(rewards, 2)}
    learning = catalog.learning
    return {"learning": {"reward": learning.reward, "half_life_ms": learning.half_life_ms,
                         "exploration": learning.exploration, "prior_weight": learning.prior_weight,
                         "buckets": [f"{f.source}:{f.name}" for f in learning.buckets]},
            "age_ms": now - model.taken_ms, "offers": offers}
