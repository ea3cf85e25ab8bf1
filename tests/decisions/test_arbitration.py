"""Expected-value arbitration: among the eligible offers of the highest priority
tier, propensity × worth × lever wins; several such placements are filled to
the largest total, not greedily; the default stays the marketer's order; and
explain shows every factor."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.decisions.arbitration import Candidate, assign
from engine.decisions.decide import decide
from engine.errors import CatalogError
from engine.profile import Profile

NOW = 1_780_000_000_000  # 2026-05-28
CATALOG = """
placements:
  hero: {arbitration: expected_value}
  side: {arbitration: expected_value}
  banner: {}
offers:
  # The hero's best, and the side's only good one: greedy would give it to the hero.
  - {id: star, kind: content, placements: [hero, side], worth: 100, propensity: 0.05}
  - {id: hero_second, kind: content, placements: [hero], worth: 100, propensity: 0.045}
  - {id: side_poor, kind: content, placements: [side], worth: 10, propensity: 0.01}
  # Declared first by priority order but worth little: only expected value tells.
  - {id: cheap, kind: banner, placements: [banner], score: 9, worth: 1}
  - {id: dear, kind: banner, placements: [banner], score: 1, worth: 50}
  - {id: boosted, kind: content, placements: [hero], worth: 10, propensity: 0.01,
     lever: {factor: 100, start: 2026-05-01, end: 2026-05-31}}
  - {id: urgent, kind: content, placements: [side], priority: 10, worth: 1, propensity: 0.001,
     when: {context: page, equals: checkout}}
"""


def run(placements, context=None, explain=False, now=NOW):
    catalog = compile_catalog(parse_catalog_text(CATALOG))
    return decide(catalog, Profile(), "a:v", list(placements), context or {}, now, explain)


def offers(decision) -> dict:
    return {name: (chosen or {}).get("offer") for name, chosen in decision.placements.items()}


def test_placements_are_filled_to_the_largest_total_not_greedily():
    # Greedy: hero=star (5.0), side=side_poor (0.1): 5.1. Best: hero=hero_second (4.5), side=star (5.0).
    after_lever = run(["hero", "side"], now=NOW + 10 * 86_400_000)  # past the lever's month
    assert offers(after_lever) == {"hero": "hero_second", "side": "star"}


def test_a_lever_counts_only_between_its_dates():
    assert offers(run(["hero"])) == {"hero": "boosted"}  # 0.01 × 10 × 100 = 10 beats star's 5
    assert offers(run(["hero"], now=NOW + 10 * 86_400_000)) == {"hero": "star"}


def test_the_highest_priority_tier_comes_first_then_value():
    assert offers(run(["side"], {"page": "checkout"})) == {"side": "urgent"}


def test_priority_arbitration_is_unchanged_by_worth():
    assert offers(run(["banner"])) == {"banner": "cheap"}  # the marketer's order: score 9 first


def test_explain_shows_each_factor_and_the_chosen_offers_probability():
    decision = run(["hero", "side"], explain=True, now=NOW + 10 * 86_400_000)
    side = {row["offer"]: row for row in decision.explain["side"]["offers"]}
    assert decision.explain["side"]["arbitration"] == "expected_value"
    assert side["star"] == {"offer": "star", "priority": 0.0, "eligible": True, "propensity": 0.05, "worth": 100.0,
                            "lever": 1.0, "expected_value": pytest.approx(5.0), "chosen": True,
                            "probability": None}  # filled with the hero: its chance alone is not known
    assert side["urgent"]["reason"] == "conditions not met"
    hero = {row["offer"]: row for row in decision.explain["hero"]["offers"]}
    assert hero["boosted"]["lever"] == 1.0 and "chosen" not in hero["star"]


def test_the_assignment_search_beats_greedy_and_never_reuses_an_offer_or_group():
    @dataclass(frozen=True)
    class Item:  # what the search reads of an offer: its id and group
        id: str
        group: str | None = None

    a, b, c, d = Item("a"), Item("b", "g"), Item("c", "g"), Item("d")
    slots = {"one": [Candidate(a, 5.0), Candidate(b, 4.0)],
             "two": [Candidate(a, 6.0), Candidate(c, 3.0)],
             "three": [Candidate(b, 2.0), Candidate(d, 0.5)]}
    best = assign(slots)
    picked = [best[name].offer.id for name in ("one", "two", "three")]
    assert picked == ["b", "a", "d"] and sum(best[n].value for n in best) == 10.5  # greedy: a, c, d = 8.5
    assert assign({"x": []}) == {"x": None}


@pytest.mark.parametrize(("spec", "path"), [
    ("placements:\n  hero: {arbitration: learned}\n", "placements.hero.arbitration"),
    ("placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], propensity: 2}\n",
     "offers[0].propensity"),
    ("placements: [hero]\noffers:\n  - {id: o, kind: content, placements: [hero], lever: {factor: 2, when: x}}\n",
     "offers[0].lever.when"),
])
def test_bad_arbitration_settings_are_problems_with_their_path(spec, path):
    with pytest.raises(CatalogError) as refused:
        compile_catalog(parse_catalog_text(spec))
    assert any(p == path for p, _ in refused.value.problems)
