"""Filling several expected-value placements at once: each offer (and each
offer group) at most once per answer, to the largest total expected value,
not greedily in the order the request named them. A greedy walk gives the hero
its best offer even when that offer was the side slot's only good one and the
hero had a close second; the total is what the page earns.

Placements are few (at most 20 a request) and each keeps only its best few
candidates, so a depth-first search with a bound (the best still reachable)
finishes at once; past a node budget the best assignment found so far stands,
and the search starts from the greedy one, so it is never worse."""

from __future__ import annotations

from dataclasses import dataclass

CANDIDATES_PER_PLACEMENT = 6
NODE_BUDGET = 20_000


@dataclass(frozen=True, slots=True)
class Candidate:
    offer: object  # engine.catalog.model.Offer
    value: float  # its expected value in this placement, now


def assign(slots: dict[str, list[Candidate]]) -> dict[str, Candidate | None]:
    """The best total: `slots` maps each placement to its eligible candidates,
    best first. Returns each placement's candidate, or None to keep its default."""
    if len(slots) == 1:  # nothing to share: the best candidate
        [(name, candidates)] = slots.items()
        return {name: candidates[0] if candidates else None}
    names = list(slots)
    options = [slots[name][:CANDIDATES_PER_PLACEMENT] for name in names]
    # The best a placement could still add, from here to the end: the bound.
    best_rest = [0.0] * (len(names) + 1)
    for i in range(len(names) - 1, -1, -1):
        best_rest[i] = best_rest[i + 1] + max((c.value for c in options[i]), default=0.0)

    best: list = _greedy(options)
    best_total = sum(c.value for c in best if c is not None)
    chosen: list = [None] * len(names)
    nodes = 0

    def search(i: int, total: float, offers: set, groups: set) -> None:
        nonlocal best, best_total, nodes
        nodes += 1
        if nodes > NODE_BUDGET or total + best_rest[i] <= best_total:
            return
        if i == len(names):
            best, best_total = list(chosen), total
            return
        for candidate in options[i]:
            offer = candidate.offer
            if offer.id in offers or (offer.group is not None and offer.group in groups):
                continue
            chosen[i] = candidate
            search(i + 1, total + candidate.value, offers | {offer.id},
                   groups | ({offer.group} if offer.group is not None else set()))
        chosen[i] = None
        search(i + 1, total, offers, groups)  # this placement keeps its default

    search(0, 0.0, set(), set())
    return dict(zip(names, best, strict=True))


def _greedy(options: list[list[Candidate]]) -> list:
    taken_offers: set = set()
    taken_groups: set = set()
    out = []
    for candidates in options:
        pick = next((c for c in candidates if c.offer.id not in taken_offers
                     and (c.offer.group is None or c.offer.group not in taken_groups)), None)
        if pick is not None:
            taken_offers.add(pick.offer.id)
            if pick.offer.group is not None:
                taken_groups.add(pick.offer.group)
        out.append(pick)
    return out
