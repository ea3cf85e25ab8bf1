"""The budget snapshot and the code pools against a real Redis, single and
cluster: spend written by verified redemptions and read back per day and per
campaign, pools that give each person one code for good and redeem it once."""

import asyncio

from engine.catalog.compile import compile_catalog
from engine.catalog.model import CatalogHolder
from engine.catalog.windows import DAY_MS
from engine.decisions.budgets import BudgetBook, utc_day
from engine.events import Event
from engine.followups.kpis import KpiStore
from engine.store.code_pools import AGAIN, NOT_GIVEN, NOT_YOURS, REDEEMED, UNKNOWN, USED, CodePools
from engine.store.keys import Keys

NOW = 1_764_000_000_000  # 2025-11-24T16:00Z
KEYS = Keys()

CATALOG = {"placements": ["hero"], "offers": [
    {"id": "ten_off", "kind": "discount", "placements": ["hero"], "value": 10, "content": {"code": "TEN"},
     "budget": {"amount": 30, "per": "day"}},
    {"id": "spring", "kind": "discount", "placements": ["hero"], "value": 20,
     "content": {"code_pool": "spring"}, "budget": {"amount": 100, "per": "campaign"}},
    {"id": "summer", "kind": "discount", "placements": ["hero"], "content": {"code_pool": "summer"}},
]}


def purchase(eid: str, ts: int, revenue: float, code: str) -> Event:
    return Event(eid, "purchase", "u:ada", ts, {"revenue": revenue, "code": code}, trusted=True)


async def test_a_purchase_naming_a_static_code_adds_its_cost_to_the_days_spend_once(redis):
    catalog = compile_catalog(CATALOG)
    kpis = KpiStore(redis, KEYS)
    book = BudgetBook(redis, KEYS, CatalogHolder(catalog), clock=lambda: NOW)
    batch = {"u:ada": [purchase("b1", NOW, 200, "TEN"), purchase("b2", NOW - DAY_MS, 500, "TEN")]}
    for _ in range(3):  # a redelivered batch counts once
        await kpis.record_batch(batch, catalog.offers_by_id, lambda person, event: None)
    assert float(await redis.get(KEYS.offer_spent_on("ten_off", utc_day(NOW)))) == 20.0
    assert float(await redis.get(KEYS.offer_spent_on("ten_off", utc_day(NOW - DAY_MS)))) == 50.0
    assert 0 < await redis.ttl(KEYS.offer_spent_on("ten_off", utc_day(NOW))) <= 3 * 86_400
    snapshot = await book.refresh()
    assert snapshot.spent == {"ten_off": 20.0, "spring": 0.0}  # today's, not yesterday's
    assert snapshot.empty_pools == {"spring", "summer"}  # nothing uploaded yet
    report = await kpis.report([], [], ["ten_off"])
    assert report["offers"]["ten_off"]["discount_cost"] == 70.0 and report["offers"]["ten_off"]["redeemed"] == 2


async def test_a_pooled_redemption_adds_to_the_campaign_spend_once_per_code(redis):
    catalog = compile_catalog(CATALOG)
    pools, kpis = CodePools(redis, KEYS), KpiStore(redis, KEYS)
    book = BudgetBook(redis, KEYS, CatalogHolder(catalog), clock=lambda: NOW)
    await pools.upload("spring", ["S1", "S2"])
    code = await pools.give("spring", "u:ada")
    assert await pools.redeem("spring", code, "u:ada", "order-1") == REDEEMED
    spring = catalog.offers_by_id["spring"]
    for _ in range(2):  # the API retried: counted once
        await kpis.record_redemption(spring, "spring", code, 250.0, NOW)
    snapshot = await book.refresh()
    assert snapshot.spent["spring"] == 50.0  # 20 % of 250
    assert snapshot.empty_pools == {"summer"}
    report = (await kpis.report([], [], ["spring"]))["offers"]["spring"]
    assert (report["discount_cost"], report["redeemed"]) == (50.0, 1)


async def test_a_catalog_without_budgets_or_pools_reads_nothing(redis):
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        {"id": "a", "kind": "discount", "placements": ["hero"], "content": {"code": "A"}}]})
    await redis.aclose()  # a read would fail
    snapshot = await BudgetBook(redis, KEYS, CatalogHolder(catalog), clock=lambda: NOW).refresh()
    assert snapshot.spent == {} and snapshot.empty_pools == frozenset() and snapshot.read_at_ms == NOW


async def test_each_person_gets_one_code_for_good_and_no_code_goes_twice(redis):
    pools = CodePools(redis, KEYS)
    assert await pools.upload("spring", [f"C{i}" for i in range(20)] + ["C0"]) == {
        "pool": "spring", "added": 20, "already_in_pool": 0, "available": 20}
    people = [f"u:p{i}" for i in range(50)]
    codes = await asyncio.gather(*(pools.give("spring", person) for person in people))
    given = [code for code in codes if code is not None]
    assert len(given) == 20 and len(set(given)) == 20
    again = await asyncio.gather(*(pools.give("spring", person) for person in people))
    assert again == codes  # kept for them; those who got none still get none
    # Uploading codes already given adds nothing; new ones are given next.
    assert (await pools.upload("spring", ["C1", "C2", "NEW"]))["added"] == 1
    assert await pools.give("spring", people[codes.index(None)]) == "NEW"
    assert await pools.status("spring") == {"pool": "spring", "available": 0, "given": 21, "redeemed": 0}


async def test_a_code_is_redeemed_once_by_its_owner(redis):
    pools = CodePools(redis, KEYS)
    await pools.upload("spring", ["ADA1", "SPARE"])
    code = await pools.give("spring", "u:ada")
    assert code == await pools.give("spring", "u:ada")
    spare = "SPARE" if code == "ADA1" else "ADA1"
    assert await pools.redeem("spring", code, "u:bob", "o1") == NOT_YOURS
    assert await pools.redeem("spring", code, "u:ada", "o1") == REDEEMED
    assert await pools.redeem("spring", code, "u:ada", "o1") == AGAIN
    assert await pools.redeem("spring", code, "u:ada", "o2") == USED
    assert await pools.redeem("spring", spare, "u:ada", "o3") == NOT_GIVEN
    assert await pools.redeem("spring", "NOPE", "u:ada", "o4") == UNKNOWN
    assert await pools.find(code, ["summer", "spring"]) == "spring"
    assert await pools.find(spare, ["summer", "spring"]) == "spring"
    assert await pools.find("NOPE", ["summer", "spring"]) is None
    assert (await pools.status("spring"))["redeemed"] == 1
