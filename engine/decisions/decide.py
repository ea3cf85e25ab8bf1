"""Deciding, as a pure function of (catalog, profile, context, now): eligibility
(dates, caps, budgets and discount guardrails, hold-out, exclusions, conditions), then arbitration: the catalog's
rank order (priority, then declared score) for most placements, or expected
value for those that ask for it (engine/decisions/arbitration.py); one offer per
placement, no offer or offer group twice in one answer. Nothing here touches Redis."""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engine.catalog.model import Catalog, Offer, atoms_of
from engine.catalog.rules import Facts
from engine.decisions.arbitration import Candidate, assign
from engine.decisions.budgets import Budgets
from engine.profile import Profile


@dataclass(slots=True)
class Decision:
    placements: dict[str, dict | None]
    explain: dict | None = None


def in_holdout(offer: Offer, person: str) -> bool:
    """A deterministic share of people never gets this offer: the control group
    against which its uplift is measured. Same person, same answer, every time."""
    bucket = zlib.crc32(f"{offer.id}\x00{person}".encode()) % 10_000
    return bucket < offer.holdout_pct * 100


def why_not(offer: Offer, facts: Facts, person: str, taken_offers: set, taken_groups: set) -> str | None:
    """None when the offer is eligible now, else the first reason it is not."""
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
    catalog = facts.catalog
    if offer.kind == "discount" and catalog.discount_limit is not None and catalog.discount_limit.reached(facts):
        return "discount limit reached"
    if offer.promotional and any(limit.reached(facts) for limit in catalog.onsite_limits):
        return "on-site pressure cap reached"
    if offer.holdout_pct and in_holdout(offer, person):
        return "in hold-out group"
    if offer.exclude is not None and offer.exclude(facts):
        return "excluded"
    if not offer.when(facts):
        return "conditions not met"
    return None


def decide(
    catalog: Catalog,
    profile: Profile,
    person: str,
    placements: list[str],
    context: dict,
    now_ms: int,
    explain: bool = False,
    budgets: Budgets | None = None,
) -> Decision:
    """`budgets`: the process's snapshot of what budgeted offers have spent and
    which code pools are empty (engine/decisions/budgets.py); None, no budgets."""
    facts = Facts(catalog, profile, context, now_ms, budgets=budgets)
    atoms = atoms_of(catalog, profile, context)
    offers = catalog.offers
    taken_offers: set[str] = set()
    taken_groups: set[str] = set()
    chosen: dict[str, dict | None] = {}
    explanation: dict | None = {} if explain else None

    by_value = []  # expected-value placements: filled together, after the others
    for name in placements:
        placement = catalog.placements.get(name)
        if placement is None:
            chosen[name] = None
            if explanation is not None:
                explanation[name] = {"error": "no such placement in the catalog"}
            continue
        if placement.arbitration == "expected_value":
            chosen[name] = None  # keeps the request's order in the answer
            by_value.append(placement)
            continue
        candidates = placement.ranks if explanation is not None else _candidates(placement, atoms)
        pick = None
        report = []
        for rank in candidates:
            offer = offers[rank]
            reason = why_not(offer, facts, person, taken_offers, taken_groups)
            if reason is None and pick is None:
                pick = offer
                if explanation is None:
                    break
            if explanation is not None:
                report.append({
                    "offer": offer.id,
                    "priority": offer.priority,
                    "score": offer.score,
                    "eligible": reason is None,
                    **({"reason": reason} if reason else {}),
                    **({"chosen": True} if pick is offer else {}),
                })
        if pick is not None:
            taken_offers.add(pick.id)
            if pick.group is not None:
                taken_groups.add(pick.group)
        chosen[name] = pick.answer() if pick is not None else None
        if explanation is not None:
            explanation[name] = {"offers": report}
    if by_value:
        _fill_by_value(by_value, offers, facts, person, atoms, taken_offers, taken_groups, now_ms, chosen,
                       explanation)
    if explanation is not None:
        explanation["_person"] = {"score": facts.score(), "segments": [
            sid for sid in catalog.segments if facts.in_segment(sid)
        ]}
    return Decision(chosen, explanation)


def _fill_by_value(placements: list, offers: list[Offer], facts: Facts, person: str, atoms: list[tuple],
                   taken_offers: set, taken_groups: set, now_ms: int, chosen: dict,
                   explanation: dict | None) -> None:
    """Expected-value placements: in each, the eligible offers of the highest
    priority tier, ranked by propensity × worth × lever; then one assignment of
    offers to all of them that earns the most in total (engine/decisions/arbitration.py)."""
    slots: dict[str, list[Candidate]] = {}
    reports: dict[str, list[tuple[Offer, dict]]] = {}
    for placement in placements:
        ranks = placement.ranks if explanation is not None else _candidates(placement, atoms)
        eligible, report = [], []
        for rank in ranks:
            offer = offers[rank]
            reason = why_not(offer, facts, person, taken_offers, taken_groups)
            if reason is None:
                eligible.append(offer)
            if explanation is not None:
                report.append((offer, {"offer": offer.id, "priority": offer.priority, "eligible": reason is None,
                                       **({"reason": reason} if reason else {})}))
        top = max((offer.priority for offer in eligible), default=None)
        candidates = [Candidate(offer, offer.economics.factors(now_ms)["expected_value"])
                      for offer in eligible if offer.priority == top]
        candidates.sort(key=lambda c: (-c.value, c.offer.rank))
        slots[placement.name] = candidates
        reports[placement.name] = report
    for name, pick in assign(slots).items():
        chosen[name] = pick.offer.answer() if pick is not None else None
        if pick is not None:
            taken_offers.add(pick.offer.id)
            if pick.offer.group is not None:
                taken_groups.add(pick.offer.group)
        if explanation is not None:
            considered = {c.offer.id for c in slots[name]}
            for offer, row in reports[name]:
                if offer.id in considered:
                    row.update(offer.economics.factors(now_ms))
                elif row["eligible"]:
                    row.update(eligible=False, reason="a higher priority tier is eligible")
                if pick is not None and offer is pick.offer:
                    # Chosen for certain: nothing is sampled until propensities are learnt.
                    row.update(chosen=True, probability=1.0)
            explanation[name] = {"arbitration": "expected_value", "offers": [row for _, row in reports[name]]}


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
