"""The outcome benchmark's shop (benchmarks/shop_world.py) keeps the promises its
figures rest on: rates in range, a 20 % gap at the top, a persona only partly
visible, oracles that show only what the catalog allows, a real drift, and
catalogs the engine compiles."""

import numpy as np

from benchmarks.shop_world import (
    ARBITRATED,
    OFFERS,
    PLACEMENTS,
    PLAN_FIDELITY,
    World,
    browsing_visits,
    catalog_yaml,
)
from engine.catalog.compile import compile_catalog, parse_catalog_text

WORLD = World(19)


def test_hidden_rates_stay_between_two_per_mille_and_five_percent():
    assert WORLD.buy.min() >= 0.002 and WORLD.buy.max() <= 0.05
    assert WORLD.click.min() >= 0.002 and WORLD.click.max() <= 0.05


def test_the_best_offer_earns_about_a_fifth_more_than_the_second():
    value = WORLD.buy[0] * WORLD.worth  # [persona, device, offer]
    gaps = []
    for placement in range(len(ARBITRATED)):
        top_two = np.sort(value[..., WORLD.placement_of == placement], axis=-1)[..., -2:]
        gaps += list((top_two[..., 1] / top_two[..., 0]).ravel())
    assert 1.15 <= np.median(gaps) <= 1.25


def test_plan_and_device_reveal_the_persona_only_in_part():
    visits = browsing_visits(0, 20_000, 2.5)
    best_guess = WORLD.posterior[visits.plan[visits.person], visits.device].argmax(axis=-1)
    assert abs((best_guess == visits.persona[visits.person]).mean() - PLAN_FIDELITY) < 0.05


def test_oracles_and_chance_show_only_eligible_offers_of_the_visited_placement():
    visits = browsing_visits(0, 2000, 2.5)
    plan = visits.plan[visits.person]
    for shown in (WORLD.context_oracle(visits), WORLD.persona_oracle(visits), WORLD.random_policy(visits, 1)):
        assert (WORLD.placement_of[shown] == visits.placement).all()
        assert WORLD.eligible[plan, visits.device, shown].all()


def test_the_drift_swaps_what_two_offers_earn():
    a, b = WORLD.drift_pair
    before, after = WORLD.buy[0] * WORLD.worth, WORLD.buy[1] * WORLD.worth
    assert np.allclose(after[..., a], np.clip(before[..., b], 0.002 * WORLD.worth[a], 0.05 * WORLD.worth[a]))
    assert not np.allclose(before[..., a], after[..., a])


def test_the_persona_oracle_earns_more_than_the_contextual_one_and_chance_less():
    visits = browsing_visits(0, 5000, 2.5)
    oracle = WORLD.value(visits, WORLD.context_oracle(visits)).sum()
    assert WORLD.value(visits, WORLD.persona_oracle(visits)).sum() > oracle
    assert WORLD.value(visits, WORLD.random_policy(visits, 1)).sum() < 0.8 * oracle


def test_both_api_catalogs_compile_with_every_offer_and_the_hold_out():
    for arbitration in ("priority", "expected_value"):
        catalog = compile_catalog(parse_catalog_text(catalog_yaml(arbitration)))
        assert set(catalog.offers_by_id) == {offer.id for offer in OFFERS}
        assert set(catalog.placements) == set(PLACEMENTS)
        assert [o.holdout_pct for o in catalog.offers_by_id.values() if o.holdout_pct] == [10]
