"""Off-policy evaluation: what another catalog's arbitration would have earned
on the traffic the decision log holds, before it is published.

Each logged decision of an expected-value placement says which offers were
candidates (eligible, highest priority tier), which was chosen and the chance
it had; the log's rewards say which decisions earned one. The other catalog's
choice among the same candidates is replayed (its priority order, or its
expected value with its own worth, lever and propensity — learned from the
current counts when it learns, else declared); a candidate it does not have
for that placement cannot be chosen, and a decision where it has none earns 0.

Two estimates of the reward per decision, each with a 95 % interval (normal,
over decisions):
- IPS: the logged reward, weighted by 1 / the chance the logged offer had,
  where the other catalog would have chosen the same; unbiased because
  exploration gives every candidate a chance.
- Doubly robust: a direct estimate (the mean reward of that offer in that
  bucket in the log) corrected by the weighted error where the choices agree;
  as unbiased, with a smaller variance when the direct estimate is good.

What it can compare: the other catalog chooses among the logged candidates
only (the logging catalog's eligible offers of the top priority tier), with the
mean of its propensities (not its own Thompson draws); an offer it adds, or
raises from a lower tier, cannot be chosen, and conditions it changes are not
replayed. Decisions that filled several placements together are left out (the
chance of each choice is not known), and so are those younger than the reward
window."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from engine.catalog.model import Catalog
from engine.decisions.learning import Model
from engine.outcomes.log import DECISION, REWARD, read_log
from engine.outcomes.stats import Z95

PRIOR_REWARDS = 1.0  # pseudo-decisions each (bucket, offer) direct estimate starts from
# A decision's reward may come this long after it (a conversion within a day of
# its impression; the impression within the decision id's day): younger
# decisions are left out, or they would count as unrewarded.
REWARD_WINDOW_MS = 2 * 86_400_000


@dataclass(frozen=True, slots=True)
class Logged:
    at_ms: int
    bucket: str
    placement: str
    candidates: tuple[str, ...]
    chosen: str
    probability: float
    reward: float


async def logged_decisions(redis, keys) -> list[Logged]:
    """Every logged choice of one expected-value placement, with the reward it
    earned (1 or 0)."""
    decisions, rewarded = [], set()
    async for kind, entry in read_log(redis, keys):
        if kind == DECISION:  # a flush's decisions of one shard
            for at, nonce, bucket, placements in entry:
                decisions.extend((nonce, at, bucket, *placement) for placement in placements)
        elif kind == REWARD:
            _, nonce, offer, _ = entry
            rewarded.add((nonce, offer))
    return [Logged(at, bucket, placement, tuple(candidates), chosen, probability,
                   1.0 if (nonce, chosen) in rewarded else 0.0)
            for nonce, at, bucket, placement, candidates, chosen, probability in decisions if chosen is not None]


def target_choice(target: Catalog, model: Model | None, row: Logged) -> str | None:
    """What the other catalog would have shown for this logged decision."""
    placement = target.placements.get(row.placement)
    if placement is None:
        return None
    offers = [target.offers_by_id[o] for o in row.candidates
              if o in target.offers_by_id and row.placement in target.offers_by_id[o].placements]
    if not offers:
        return None
    if placement.arbitration != "expected_value":
        return min(offers, key=lambda o: o.rank).id
    return max(offers, key=lambda o: (_propensity(model, o, row.bucket) * o.economics.worth
                                      * o.economics.lever_at(row.at_ms), -o.rank)).id


def _propensity(model: Model | None, offer, bucket: str) -> float:
    posterior = model.posterior(offer.id, bucket) if model is not None else None
    if posterior is None:
        return offer.economics.propensity
    alpha, beta = posterior
    return alpha / (alpha + beta)


def settled(rows: list[Logged], window_ms: int) -> tuple[list[Logged], dict]:
    """The rows an estimate may use: a known probability (one placement filled
    alone) and old enough that their reward had time to arrive (`window_ms`
    before the newest row); and how many were left out, and why."""
    newest = max((row.at_ms for row in rows), default=0)
    kept = [row for row in rows if row.probability is not None and row.at_ms <= newest - window_ms]
    return kept, {"joint_placements": sum(row.probability is None for row in rows),
                  "reward_pending": sum(row.probability is not None and row.at_ms > newest - window_ms
                                        for row in rows)}


def estimate(rows: list[Logged], target: Catalog, model: Model | None) -> dict:
    n = len(rows)
    if not n:
        return {"logged": {"decisions": 0, "reward_rate": None}, "ips": None, "dr": None, "match_rate": None}
    overall = sum(r.reward for r in rows) / n
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        cell = sums[(row.bucket, row.chosen)]
        cell[0] += row.reward
        cell[1] += 1

    def direct(bucket: str, offer: str | None) -> float:
        if offer is None:
            return 0.0
        rewards, count = sums.get((bucket, offer), (0.0, 0.0))
        return (rewards + PRIOR_REWARDS * overall) / (count + PRIOR_REWARDS)

    ips, dr, matched = [], [], 0
    for row in rows:
        choice = target_choice(target, model, row)
        same = choice == row.chosen
        matched += same
        weight = 1.0 / row.probability if same and row.probability > 0 else 0.0
        ips.append(weight * row.reward)
        dr.append(direct(row.bucket, choice) + weight * (row.reward - direct(row.bucket, row.chosen)))
    return {"logged": {"decisions": n, "reward_rate": round(overall, 6)},
            "ips": _mean_interval(ips), "dr": _mean_interval(dr), "match_rate": round(matched / n, 6)}


async def evaluate(redis, keys, target: Catalog, learning_store=None, now: int = 0,
                   reward_window_ms: int = REWARD_WINDOW_MS) -> dict:
    """The other catalog's estimated reward per decision on the logged traffic."""
    rows, left_out = settled(await logged_decisions(redis, keys), reward_window_ms)
    model = None
    if target.learning is not None and learning_store is not None:
        offers = list(target.learnable)
        model = Model.build(target, await learning_store.counts(offers, now, target.learning.half_life_ms), now)
    found = estimate(rows, target, model)
    return {"logged": {**found.pop("logged"), "left_out": left_out}, "target": {"digest": target.digest, **found}}


def _mean_interval(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(variance / n)
    return {"value": round(mean, 6), "ci95": [round(mean - half, 6), round(mean + half, 6)]}
