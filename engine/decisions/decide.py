"""Deciding, as a pure function of (catalog, profile, context, now): eligibility
(dates, caps, budgets and discount guardrails, hold-out, exclusions, conditions), then arbitration: the catalog's
rank order (priority, then declared score) for most placements, or expected
value for those that ask for it (engine/decisions/arbitration.py); one offer per
placement, no offer or offer group twice in one answer. Nothing here touches Redis."""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from engine.catalog.learning import ALL
from engine.catalog.model import Catalog, Offer, atoms_of
from engine.catalog.rules import Facts
from engine.decisions.arbitration import Candidate, assign
from engine.decisions.budgets import Budgets
from engine.decisions.learning import SAMPLES, Model, beta_interval
from engine.events import KNOWN
from engine.profile import Profile

HELD_OUT = "in hold-out group"
NOT_IN_ARM = "not in this person's experiment arm"


@dataclass(slots=True)
class Decision:
    placements: dict[str, dict | None]
    explain: dict | None = None
    bucket: str = ALL  # the context bucket learning saw (engine/catalog/learning.py)
    # Per expected-value placement: (placement, candidate offer ids, chosen id or
    # None, the probability it had, or None when several were filled together):
    # the decision log's entry (engine/outcomes/log.py).
    logged: list[tuple] = field(default_factory=list)
    # (what, group): ("h:<offer>", "t") a hold-out offer shown, ("h:<offer>", "c")
    # one decide would have shown but held out (its uplift is measured from
    # both); ("e:<experiment>", arm) a person's arm of an experiment that ran.
    exposures: list[tuple[str, str]] = field(default_factory=list)


def in_holdout(offer: Offer, person: str) -> bool:
    """A deterministic share of people never gets this offer: the control group
    against which its uplift is measured. Same person, same answer, every time."""
    bucket = zlib.crc32(f"{offer.id}\x00{person}".encode()) % 10_000
    return bucket < offer.holdout_pct * 100


def why_not(offer: Offer, facts: Facts, person: str, taken_offers: set, taken_groups: set) -> str | None:
    """None when the offer is eligible now, else the first reason it is not. The
    hold-out comes last: held out means it would have been shown otherwise."""
    now = facts.now_ms
    if offer.start_ms is not None and now < offer.start_ms:
        return "not started"
    if offer.end_ms is not None and now > offer.end_ms:
        return "ended"
    if offer.id in taken_offers:
        return "already chosen for another placement"
    if offer.group is not None and offer.group in taken_groups:
        return f"group {offer.group!r} already chosen"
    if offer.cap_feature is not None and facts.window(offer.cap_feature, offer.cap_buckets) >= offer.cap_limit:
        return f"impression cap {offer.cap_limit} reached"
    if (budgets := facts.budgets) is not None:
        if offer.budget is not None and budgets.spent.get(offer.id, 0.0) >= offer.budget.amount:
            return "budget spent"
        if offer.code_pool is not None and offer.code_pool in budgets.empty_pools:
            return "code pool empty"
    if offer.code_pool is not None and not person.startswith(KNOWN):
        # A visitor is a fresh anonymous id away from another code: pooled codes
        # go only to people the site signed, one each.
        return "single-use codes go to signed-in people"
    catalog = facts.catalog
    if offer.kind == "discount" and catalog.discount_limit is not None and catalog.discount_limit.reached(facts):
        return "discount limit reached"
    if offer.promotional and any(limit.reached(facts) for limit in catalog.onsite_limits):
        return "on-site pressure cap reached"
    if offer.exclude is not None and offer.exclude(facts):
        return "excluded"
    if not offer.when(facts):
        return "conditions not met"
    if offer.holdout_pct and in_holdout(offer, person):
        return HELD_OUT
    return None


def decide(
    catalog: Catalog,
    profile: Profile,
    person: str,
    placements: list[str],
    context: dict,
    now_ms: int,
    explain: bool = False,
    model: Model | None = None,
    rng: random.Random | None = None,
    *,
    budgets: Budgets | None = None,
) -> Decision:
    """`model`: the learned propensities for this catalog (engine/decisions/learning.py);
    without it expected-value placements use the declared ones. `rng` draws
    Thompson samples and explorations (tests give a seeded one). `budgets`: the
    process's snapshot of what budgeted offers have spent and which code pools
    are empty (engine/decisions/budgets.py); None, no budgets."""
    facts = Facts(catalog, profile, context, now_ms, budgets=budgets)
    atoms = atoms_of(catalog, profile, context)
    offers = catalog.offers
    taken_offers: set[str] = set()
    taken_groups: set[str] = set()
    chosen: dict[str, dict | None] = {}
    explanation: dict | None = {} if explain else None
    decision = Decision(chosen, explanation)

    by_value = []  # expected-value placements: filled together, after the others
    for name in placements:
        placement = catalog.placements.get(name)
        if placement is None:
            chosen[name] = None
            if explanation is not None:
                explanation[name] = {"error": "no such placement in the catalog"}
            continue
        arbitration, allowed = placement.arbitration, None
        experiment = catalog.experiments.get(name) if catalog.experiments else None
        if experiment is not None:
            arm = experiment.arm_of(person)
            decision.exposures.append((f"e:{experiment.id}", arm.id))
            arbitration, allowed = arm.arbitration or arbitration, arm.offers
            if explanation is not None:
                explanation.setdefault("_experiments", {})[experiment.id] = arm.id
        if arbitration == "expected_value":
            chosen[name] = None  # keeps the request's order in the answer
            by_value.append((placement, allowed))
            continue
        candidates = placement.ranks if explanation is not None else _candidates(placement, atoms)
        pick = None
        held = None  # the hold-out offer this person would have been shown here
        report = []
        for rank in candidates:
            offer = offers[rank]
            reason = NOT_IN_ARM if allowed is not None and offer.id not in allowed else why_not(
                offer, facts, person, taken_offers, taken_groups)
            if reason is None and pick is None:
                pick = offer
                if explanation is None:
                    break
            elif reason is HELD_OUT and pick is None and held is None:
                held = offer
            if explanation is not None:
                report.append({
                    "offer": offer.id,
                    "priority": offer.priority,
                    "score": offer.score,
                    "eligible": reason is None,
                    **({"reason": reason} if reason else {}),
                    **({"chosen": True} if pick is offer else {}),
                })
        if held is not None:
            decision.exposures.append((f"h:{held.id}", "c"))
        if pick is not None:
            _take(pick, taken_offers, taken_groups, decision)
        chosen[name] = pick.answer() if pick is not None else None
        if explanation is not None:
            explanation[name] = {"offers": report}
    if catalog.learning is not None:  # every decision id names it: what its impressions teach
        decision.bucket = catalog.learning.bucket_of(facts)
    if by_value:
        learning = catalog.learning
        _fill_by_value(by_value, offers, facts, person, atoms, taken_offers, taken_groups, decision,
                       model if learning is not None and model is not None and model.digest == catalog.digest
                       else None, rng or _RANDOM)
    if explanation is not None:
        explanation["_person"] = {"score": facts.score(), "segments": [
            sid for sid in catalog.segments if facts.in_segment(sid)
        ], **({"bucket": decision.bucket} if catalog.learning is not None else {})}
    return decision


_RANDOM = random.Random()


def _take(offer: Offer, taken_offers: set, taken_groups: set, decision: Decision) -> None:
    taken_offers.add(offer.id)
    if offer.group is not None:
        taken_groups.add(offer.group)
    if offer.holdout_pct:
        decision.exposures.append((f"h:{offer.id}", "t"))


def _fill_by_value(placements: list, offers: list[Offer], facts: Facts, person: str, atoms: list[tuple],
                   taken_offers: set, taken_groups: set, decision: Decision, model: Model | None,
                   rng: random.Random) -> None:
    """Expected-value placements: in each, the eligible offers of the highest
    priority tier, valued at propensity × worth × lever; then one assignment of
    offers to all of them that earns the most in total (engine/decisions/arbitration.py).

    With a learned model the propensity is one Thompson draw from the offer's
    posterior in the request's bucket (one draw column for the whole request),
    and with the catalog's exploration share every candidate is valued at
    random instead. Offers held out for this person take part once, to learn
    what decide would have shown, and never in the answer."""
    now_ms = facts.now_ms
    explanation = decision.explain
    learning = facts.catalog.learning
    draws = model.draws_of(decision.bucket) if model is not None else None
    column = rng.randrange(SAMPLES) if draws is not None else 0
    explore = learning is not None and draws is not None and rng.random() < learning.exploration
    slots: dict[str, list[Candidate]] = {}
    held: dict[str, list[Candidate]] = {}
    reports: dict[str, list[tuple[Offer, dict]]] = {}
    for placement, allowed in placements:
        ranks = placement.ranks if explanation is not None else _candidates(placement, atoms)
        eligible, kept_out, report = [], [], []
        top = None
        for rank in ranks:
            offer = offers[rank]
            if top is not None and offer.priority < top and explanation is None:
                break  # offers come in rank order: past the top tier nothing can be chosen
            reason = NOT_IN_ARM if allowed is not None and offer.id not in allowed else why_not(
                offer, facts, person, taken_offers, taken_groups)
            if reason is None:
                eligible.append(offer)
            elif reason is HELD_OUT:
                kept_out.append(offer)
            if top is None and (reason is None or reason is HELD_OUT):
                top = offer.priority
            if explanation is not None:
                report.append((offer, {"offer": offer.id, "priority": offer.priority, "eligible": reason is None,
                                       **({"reason": reason} if reason else {})}))
        slots[placement.name] = _valued([o for o in eligible if o.priority == top], model, draws, column,
                                        explore, rng, now_ms)
        held[placement.name] = _valued([o for o in kept_out if o.priority == top], model, draws, column,
                                       explore, rng, now_ms)
        reports[placement.name] = report
    if any(held.values()):  # what would have been shown, were nobody held out
        held_ids = {c.offer.id for candidates in held.values() for c in candidates}
        with_held = {name: sorted(slots[name] + held[name], key=_best_first) for name in slots}
        for pick in assign(with_held).values():
            if pick is not None and pick.offer.id in held_ids:
                decision.exposures.append((f"h:{pick.offer.id}", "c"))
    picks = assign(slots)
    for name, pick in picks.items():
        decision.placements[name] = pick.offer.answer() if pick is not None else None
        if pick is not None:
            _take(pick.offer, taken_offers, taken_groups, decision)
        # Filled together, several placements' choices depend on one another:
        # the chance of each is not known, and the log says so (None).
        probability = _probability(slots[name], pick, model, draws, learning, now_ms) if len(slots) == 1 else None
        decision.logged.append((name, [c.offer.id for c in slots[name]],
                                pick.offer.id if pick is not None else None, probability))
        if explanation is not None:
            _explain_values(explanation, name, reports[name], slots[name], pick, probability, model,
                            decision.bucket, now_ms)


def _best_first(candidate: Candidate) -> tuple:
    return (-candidate.value, candidate.offer.rank)


def _valued(eligible: list[Offer], model: Model | None, draws, column: int, explore: bool,
            rng: random.Random, now_ms: int) -> list[Candidate]:
    """Each offer with its value in this request, best first."""
    out = []
    for offer in eligible:
        factors = offer.economics
        if explore:
            value = rng.random()
        else:
            row = model.index.get(offer.id) if model is not None else None
            propensity = float(draws[row, column]) if row is not None else factors.propensity
            value = propensity * factors.worth * factors.lever_at(now_ms)
        out.append(Candidate(offer, value))
    out.sort(key=_best_first)
    return out


def _probability(candidates: list[Candidate], pick: Candidate | None, model: Model | None, draws, learning,
                 now_ms: int) -> float:
    """The chance this placement's offer had of being chosen, for the decision
    log: the share of posterior draw columns in which it is the best of the
    candidates, mixed with the exploration share. Exact for one placement; for
    several, the joint assignment is left out (each placement alone)."""
    if pick is None:
        return 1.0
    if draws is None or learning is None or not candidates:
        return 1.0
    k = len(candidates)
    if k == 1:
        return 1.0
    index = model.index
    weights = np.array([c.offer.economics.worth * c.offer.economics.lever_at(now_ms) for c in candidates])
    rows = [index.get(c.offer.id) for c in candidates]
    if None in rows:  # an offer the snapshot does not know: its declared propensity, every column
        values = np.vstack([draws[row] if row is not None else np.full(SAMPLES, c.offer.economics.propensity)
                            for c, row in zip(candidates, rows, strict=True)])
    else:
        values = draws[rows]
    wins = int(np.count_nonzero(np.argmax(values * weights[:, None], axis=0) == candidates.index(pick))) / SAMPLES
    return (1 - learning.exploration) * wins + learning.exploration / k


def _explain_values(explanation: dict, name: str, report: list, candidates: list[Candidate],
                    pick: Candidate | None, probability: float, model: Model | None, bucket: str,
                    now_ms: int) -> None:
    considered = {c.offer.id: c for c in candidates}
    for offer, row in report:
        if offer.id in considered:
            row.update(offer.economics.factors(now_ms))
            posterior = model.posterior(offer.id, bucket) if model is not None else None
            if posterior is not None:
                mean, low, high = (float(v) for v in beta_interval(*posterior))
                row.update(propensity=round(mean, 6), propensity_ci95=[round(low, 6), round(high, 6)],
                           expected_value=mean * row["worth"] * row["lever"],
                           sampled_value=considered[offer.id].value)
                increment = model.incremental.get((offer.id, bucket))
                if increment is not None:  # a discount: valued at the conversions it adds
                    treated, held = increment
                    row.update(conversion_rate=round(treated, 6), conversion_rate_held_out=round(held, 6),
                               incremental_propensity=round(treated - held, 6),
                               expected_value=(treated - held) * row["worth"] * row["lever"])
        elif row["eligible"]:
            row.update(eligible=False, reason="a higher priority tier is eligible")
        if pick is not None and offer is pick.offer:
            row.update(chosen=True, probability=None if probability is None else round(probability, 6))
    explanation[name] = {"arbitration": "expected_value", "offers": [row for _, row in report]}


def _candidates(placement, atoms: list[tuple]) -> Iterable[int]:
    """The offers of a placement a person could get, in rank order: those no index
    narrows, plus those indexed under an atom this person or request presents.
    Each list is already in rank order, so they are merged lazily: the walk
    usually stops at one of the first few, whatever the catalog's size."""
    by_atom = placement.by_atom
    found = [by_atom[a] for a in atoms if a in by_atom] if by_atom else None
    if not found:
        return placement.always
    return _unique_sorted(heapq.merge(placement.always, *found))


def _unique_sorted(ranks: Iterable[int]) -> Iterator[int]:
    last = -1
    for rank in ranks:
        if rank != last:
            last = rank
            yield rank
