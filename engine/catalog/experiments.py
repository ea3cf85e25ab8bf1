"""Experiments, as the catalog declares them:

    experiments:
      - id: hero_test
        placement: home_hero
        metric: conversion            # click | conversion | revenue
        guardrails: [unsubscribes, discount_cost]
        arms:                         # the first is the control unless `control:` names one
          - {id: control, weight: 40, arbitration: priority}
          - {id: learning, weight: 40, arbitration: expected_value}
          - {id: two_offers, weight: 20, offers: [crm_trial, crm_demo]}

      - id: welcome_test              # journeys instead of (or as well as) a placement
        metric: conversion
        arms:
          - {id: control, weight: 50, journeys: []}          # enters none of the journeys tested
          - {id: welcome, weight: 50, journeys: [welcome]}

A person's arm is a hash of the experiment and the person: the same arm on every
decide, in every process, with no state. An arm may set the placement's
arbitration and may narrow the offers it can show; an arm with neither shows
what the placement would show anyway. One experiment per placement. Journeys an
experiment's arms list are tested: a person whose trigger fires for one is
exposed to their arm, and enters it only if their arm lists it."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from engine.catalog.arbitration import ARBITRATIONS
from engine.catalog.rules import Compiler

METRICS = ("click", "conversion", "revenue")
GUARDRAILS = ("unsubscribes", "discount_cost")
EXPERIMENT_FIELDS = ("id", "placement", "metric", "guardrails", "arms", "control", "description")
ARM_FIELDS = ("id", "weight", "arbitration", "offers", "journeys", "description")
MAX_ARMS = 8
SPLIT = 10_000


@dataclass(frozen=True, slots=True)
class Arm:
    id: str
    weight: float
    arbitration: str | None = None  # None: the placement's own
    offers: frozenset[str] | None = None  # None: every offer of the placement
    journeys: frozenset[str] = frozenset()  # the tested journeys this arm's people enter


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    placement: str | None
    metric: str
    guardrails: tuple[str, ...]
    arms: tuple[Arm, ...]
    control: str
    bounds: tuple[int, ...]  # cumulative share of SPLIT at which each arm ends
    journeys: frozenset[str] = frozenset()  # every journey an arm lists: the ones tested

    def arm_of(self, person: str) -> Arm:
        slot = zlib.crc32(f"{self.id}\x00{person}".encode()) % SPLIT
        for arm, bound in zip(self.arms, self.bounds, strict=True):
            if slot < bound:
                return arm
        return self.arms[-1]

    def shares(self) -> dict[str, float]:
        total = sum(arm.weight for arm in self.arms)
        return {arm.id: arm.weight / total for arm in self.arms}


def compile_experiments(spec: Any, compiler: Compiler, placements: dict, offer_ids: set[str],
                        journey_ids: set[str]) -> list[Experiment]:
    if spec is None:
        return []
    if not isinstance(spec, list):
        compiler.problem("experiments", "a list of experiments")
        return []
    out: list[Experiment] = []
    by_placement: dict[str, str] = {}
    by_journey: dict[str, str] = {}
    seen: set[str] = set()
    for i, item in enumerate(spec):
        path = f"experiments[{i}]"
        if not _named(item, path, EXPERIMENT_FIELDS, seen, "experiment", compiler):
            continue
        experiment = _experiment(item, path, compiler, placements, offer_ids, journey_ids)
        if experiment is None:
            continue
        if experiment.placement is not None and experiment.placement in by_placement:
            compiler.problem(f"{path}.placement", f"placement {experiment.placement!r} already runs "
                                                  f"experiment {by_placement[experiment.placement]!r}")
            continue
        clash = next((j for j in experiment.journeys if j in by_journey), None)
        if clash is not None:
            compiler.problem(f"{path}.arms", f"journey {clash!r} is already tested by experiment {by_journey[clash]!r}")
            continue
        if experiment.placement is not None:
            by_placement[experiment.placement] = experiment.id
        by_journey.update(dict.fromkeys(experiment.journeys, experiment.id))
        out.append(experiment)
    return out


def _experiment(item: dict, path: str, compiler: Compiler, placements: dict, offer_ids: set[str],
                journey_ids: set[str]) -> Experiment | None:
    placement = item.get("placement")
    tests_journeys = isinstance(item.get("arms"), list) and any(
        isinstance(arm, dict) and "journeys" in arm for arm in item["arms"])
    if placement is None and not tests_journeys:
        compiler.problem(f"{path}.placement", "a placement of the catalog (or arms that list journeys)")
        return None
    if placement is not None and placement not in placements:
        compiler.problem(f"{path}.placement", "a placement of the catalog")
        return None
    metric = item.get("metric", "conversion")
    if metric not in METRICS:
        compiler.problem(f"{path}.metric", f"one of {', '.join(METRICS)}")
    guardrails = item.get("guardrails", [])
    if not isinstance(guardrails, list) or any(g not in GUARDRAILS for g in guardrails):
        compiler.problem(f"{path}.guardrails", f"a list of {', '.join(GUARDRAILS)}")
        guardrails = []
    arms = _arms(item.get("arms"), f"{path}.arms", compiler, offer_ids, journey_ids)
    if len(arms) < 2:
        return None
    control = item.get("control", arms[0].id)
    if control not in {arm.id for arm in arms}:
        compiler.problem(f"{path}.control", "the id of one of its arms")
        return None
    total = sum(arm.weight for arm in arms)
    bounds, running = [], 0.0
    for arm in arms:
        running += arm.weight
        bounds.append(round(SPLIT * running / total))
    journeys = frozenset(j for arm in arms for j in arm.journeys)
    return Experiment(item["id"], placement, metric, tuple(guardrails), tuple(arms), control, tuple(bounds), journeys)


def _arms(spec: Any, path: str, compiler: Compiler, offer_ids: set[str], journey_ids: set[str]) -> list[Arm]:
    if not isinstance(spec, list) or not 2 <= len(spec) <= MAX_ARMS:
        compiler.problem(path, f"a list of 2 to {MAX_ARMS} arms")
        return []
    arms, ids = [], set()
    for i, arm in enumerate(spec):
        where = f"{path}[{i}]"
        if not _named(arm, where, ARM_FIELDS, ids, "arm", compiler):
            continue
        weight = arm.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            compiler.problem(f"{where}.weight", "a positive share of the traffic")
            weight = 1
        arbitration = arm.get("arbitration")
        if arbitration is not None and arbitration not in ARBITRATIONS:
            compiler.problem(f"{where}.arbitration", f"one of {', '.join(ARBITRATIONS)}")
            arbitration = None
        offers = arm.get("offers")
        if offers is not None:
            if not isinstance(offers, list) or not all(isinstance(o, str) and o in offer_ids for o in offers):
                compiler.problem(f"{where}.offers", "a list of the catalog's offer ids")
                offers = None
            else:
                offers = frozenset(offers)
        journeys = arm.get("journeys", [])
        if not isinstance(journeys, list) or not all(isinstance(j, str) and j in journey_ids for j in journeys):
            compiler.problem(f"{where}.journeys", "a list of the catalog's journey ids")
            journeys = []
        arms.append(Arm(arm["id"], float(weight), arbitration, offers, frozenset(journeys)))
    return arms


def _named(item: Any, path: str, fields: tuple[str, ...], seen: set[str], what: str, compiler: Compiler) -> bool:
    """An experiment or arm has an id (without |: counters join ids with it),
    once, and only known fields; False when it cannot be read further."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"] or "|" in item["id"]:
        compiler.problem(path, f"an {what} needs an id (without |)")
        return False
    for key in item:
        if key not in fields:
            compiler.problem(f"{path}.{key}", f"unknown field; expected {', '.join(fields)}")
    if item["id"] in seen:
        compiler.problem(f"{path}.id", f"{what} {item['id']!r} declared twice")
    seen.add(item["id"])
    return True
