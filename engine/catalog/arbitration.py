"""How a placement chooses among the offers eligible for it, as the catalog
says it:

    placements:
      home_hero: {arbitration: expected_value}   # or priority, the default
    offers:
      - id: crm_trial
        worth: 120         # what a conversion is worth (money or points); for a
                           # discount, the margin left after the discount's cost
        propensity: 0.03   # the chance a showing converts, before anything is learnt
        lever: {factor: 1.5, start: 2026-05-01, end: 2026-05-31}   # or just 1.5

`priority` walks offers in the marketer's order (priority, then score, then
id). `expected_value` keeps the eligible offers of the highest priority tier
and ranks them by propensity × worth × lever; several such placements in one
request are filled together, to the largest total (engine/decisions/arbitration.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.catalog.rules import Compiler

ARBITRATIONS = ("priority", "expected_value")
ECONOMICS_FIELDS = ("worth", "propensity", "lever")
DEFAULT_PROPENSITY = 0.01


@dataclass(frozen=True, slots=True)
class Economics:
    """An offer's factors in expected-value arbitration."""

    worth: float = 1.0
    propensity: float = DEFAULT_PROPENSITY
    lever: float = 1.0
    lever_start_ms: int | None = None
    lever_end_ms: int | None = None

    def lever_at(self, now_ms: int) -> float:
        if self.lever_start_ms is not None and now_ms < self.lever_start_ms:
            return 1.0
        if self.lever_end_ms is not None and now_ms > self.lever_end_ms:
            return 1.0
        return self.lever

    def factors(self, now_ms: int) -> dict[str, float]:
        lever = self.lever_at(now_ms)
        return {"propensity": self.propensity, "worth": self.worth, "lever": lever,
                "expected_value": self.propensity * self.worth * lever}


NO_ECONOMICS = Economics()


def placement_arbitration(body: Any, path: str, compiler: Compiler) -> str:
    arbitration = body.get("arbitration", "priority") if isinstance(body, dict) else "priority"
    if arbitration not in ARBITRATIONS:
        compiler.problem(f"{path}.arbitration", f"one of {', '.join(ARBITRATIONS)}")
        return "priority"
    return arbitration


def offer_economics(item: dict, path: str, compiler: Compiler,
                    moment: Callable[..., int | None]) -> Economics:
    """The offer's worth, propensity and lever; `moment` reads a date the way
    the offer's start and end are read."""
    if not any(name in item for name in ECONOMICS_FIELDS):
        return NO_ECONOMICS
    worth = _bounded(item.get("worth", 1.0), f"{path}.worth", compiler, 0.0, 1e12, "a number ≥ 0")
    propensity = _bounded(item.get("propensity", DEFAULT_PROPENSITY), f"{path}.propensity", compiler,
                          0.0, 1.0, "a probability from 0 to 1")
    lever, start_ms, end_ms = 1.0, None, None
    spec = item.get("lever", 1.0)
    if isinstance(spec, dict):
        for key in spec:
            if key not in ("factor", "start", "end"):
                compiler.problem(f"{path}.lever.{key}", "unknown field; expected factor, start, end")
        lever = _bounded(spec.get("factor", 1.0), f"{path}.lever.factor", compiler, 0.0, 1000.0, "a factor ≥ 0")
        start_ms = moment(spec.get("start"), f"{path}.lever.start", compiler, end=False)
        end_ms = moment(spec.get("end"), f"{path}.lever.end", compiler, end=True)
    else:
        lever = _bounded(spec, f"{path}.lever", compiler, 0.0, 1000.0, "a factor ≥ 0, or {factor, start, end}")
    return Economics(worth, propensity, lever, start_ms, end_ms)


def _bounded(value: Any, path: str, compiler: Compiler, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        compiler.problem(path, what)
        return low if low > 0 else 1.0
    return float(value)
