"""Discount guardrails through a real `attimo serve` and Redis: code pools
uploaded and reported, one code per person kept for them in decide's answer,
redemptions refused when used before or given to someone else, and a budget
spent by verified redemptions that makes its offer ineligible with the reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from api.routes.decide import give_codes
from engine.catalog.compile import compile_catalog
from engine.decisions.budgets import Budgets
from engine.decisions.decide import decide as decide_now
from engine.profile import Profile
from engine.testing.processes import TOKEN, start_api, stop_api, wait_until

READ_TOKEN, INGEST_TOKEN = "read-only-token", "ingest-only-token"

CATALOG = """
placements: [hero, side]
offers:
  - id: spring
    kind: discount
    placements: [hero]
    priority: 9
    value: 20
    content: {title: Spring sale, code_pool: spring}
    budget: {amount: 60, per: campaign}
  - id: ten_off
    kind: discount
    placements: [side]
    priority: 5
    value: 10
    content: {title: 10 % off, code: TEN}
    budget: {amount: 30, per: day}
  - {id: guide, kind: content, placements: [hero, side], content: {title: Guide}}
"""


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    api = start_api(redis_server.url, tmp_path_factory.mktemp("codes"), ATTIMO_KEY_PREFIX="codes-test",
                    ATTIMO_READ_TOKEN=READ_TOKEN, ATTIMO_INGEST_TOKEN=INGEST_TOKEN)
    yield api
    stop_api(api)


@pytest.fixture
def api(server, redis_sync_client):
    """Empty Redis, this module's catalog in force."""
    server.post_catalog(CATALOG)
    return server


def upload(api, pool: str, codes, token: str = TOKEN):
    with api.client(Authorization=f"Bearer {token}") as client:
        if isinstance(codes, str):
            return client.put(f"/v1/admin/codes/{pool}", content=codes, headers={"Content-Type": "text/plain"})
        return client.put(f"/v1/admin/codes/{pool}", json=codes)


def status(api, pool: str) -> dict:
    with api.client(Authorization=f"Bearer {READ_TOKEN}") as client:
        answer = client.get(f"/v1/admin/codes/{pool}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def decide(api, user: str, placement: str = "hero", explain: bool = False) -> dict:
    with api.server() as client:
        answer = client.post("/v1/decide" + ("?explain=1" if explain else ""),
                             json={"placements": [placement], "user_id": user})
    assert answer.status_code == 200, answer.text
    return answer.json()


def offer_of(api, user: str, placement: str = "hero") -> dict | None:
    return decide(api, user, placement)["placements"][placement]


def reason(api, user: str, offer: str, placement: str = "hero") -> str | None:
    rows = decide(api, user, placement, explain=True)["explain"][placement]["offers"]
    return next(row.get("reason") for row in rows if row["offer"] == offer)


def redeem(api, token: str = INGEST_TOKEN, **body):
    with api.client(Authorization=f"Bearer {token}") as client:
        return client.post("/v1/codes/redeem", json=body)


def purchase(api, event_id: str, user: str, revenue: float, code: str) -> None:
    with api.server() as client:
        answer = client.post("/v1/events", json={"events": [{
            "id": event_id, "type": "purchase", "user_id": user, "properties": {"revenue": revenue, "code": code}}]})
    assert answer.status_code == 202, answer.text


def test_each_person_gets_their_own_code_and_the_same_one_on_every_decide(api):
    # Nothing uploaded yet: the snapshot says so (an explain hands no code out, so it asks nothing else).
    wait_until(lambda: reason(api, "ada", "spring") == "code pool empty", what="the snapshot to see the pool")
    answer = upload(api, "spring", "SPRING-A1\nSPRING-B2\n\nSPRING-A1\n")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"pool": "spring", "offer": "spring", "added": 2, "already_in_pool": 0, "available": 2}
    ada = wait_until(lambda: (found := offer_of(api, "ada")) and found["offer"] == "spring" and found,
                     what="the snapshot to see the upload")
    assert ada["offer"] == "spring" and ada["content"]["code"] in ("SPRING-A1", "SPRING-B2")
    assert ada["content"]["title"] == "Spring sale" and "code_pool" not in ada["content"]
    assert offer_of(api, "ada") == ada
    bob = offer_of(api, "bob")
    assert bob["offer"] == "spring" and bob["content"]["code"] != ada["content"]["code"]
    # The pool is empty now: the next person gets the next offer at once, then
    # the snapshot says why.
    assert offer_of(api, "carl")["offer"] == "guide"
    wait_until(lambda: reason(api, "carl", "spring") == "code pool empty", what="the snapshot to see the pool empty")
    assert status(api, "spring") == {"pool": "spring", "offer": "spring", "available": 0, "given": 2, "redeemed": 0}
    assert upload(api, "spring", ["SPRING-A1", "SPRING-C3"]).json()["added"] == 1  # given codes are not re-added


def test_a_code_is_redeemed_once_by_the_person_it_was_given_to(api):
    upload(api, "spring", ["S-1", "S-2", "S-UNGIVEN"])
    code = wait_until(lambda: (offer_of(api, "ada") or {}).get("content", {}).get("code"), what="a code for ada")
    other = offer_of(api, "bob")["content"]["code"]
    ungiven = ({"S-1", "S-2", "S-UNGIVEN"} - {code, other}).pop()

    first = redeem(api, code=code, user_id="ada", order_id="order-1", amount=100)
    assert first.status_code == 200, first.text
    assert first.json() == {"redeemed": True, "code": code, "pool": "spring", "offer": "spring",
                            "order_id": "order-1", "repeated": False}
    again = redeem(api, code=code, user_id="ada", order_id="order-1", amount=100)
    assert again.status_code == 200 and again.json()["repeated"] is True
    used = redeem(api, code=code, user_id="ada", order_id="order-2")
    assert (used.status_code, used.json()["error"]) == (409, "the code was already used by another order")
    stolen = redeem(api, code=other, user_id="ada", order_id="order-3")
    assert (stolen.status_code, stolen.json()["error"]) == (409, "the code was given to someone else")
    guessed = redeem(api, code=ungiven, user_id="ada", order_id="order-4")
    assert (guessed.status_code, guessed.json()["error"]) == (409, "the code was never given to anyone")
    assert redeem(api, code="NO-SUCH", user_id="ada", order_id="order-5").status_code == 404
    assert status(api, "spring")["redeemed"] == 1
    with api.server() as client:
        kpis = client.get("/v1/kpis").json()["offers"]["spring"]
    assert (kpis["redeemed"], kpis["discount_cost"]) == (1, 20.0)  # 20 % of 100, counted once


def test_a_discount_whose_budget_is_spent_stops_within_a_second(api):
    assert offer_of(api, "ada", "side")["offer"] == "ten_off"
    purchase(api, "buy-1", "ada", 200, "TEN")  # 10 % of 200: 20 of 30 spent today
    purchase(api, "buy-1", "ada", 200, "TEN")  # the same event again counts once
    purchase(api, "buy-2", "bob", 99, "NOT-TEN")  # no code of the offer: no cost
    with api.server() as client:
        assert client.get("/v1/kpis").json()["offers"]["ten_off"]["discount_cost"] == 20.0
    assert offer_of(api, "carl", "side")["offer"] == "ten_off"
    purchase(api, "buy-3", "bob", 100, "TEN")  # 30 of 30
    wait_until(lambda: reason(api, "carl", "ten_off", "side") == "budget spent", what="the budget to be spent")
    assert offer_of(api, "carl", "side")["offer"] == "guide"


def test_a_pooled_redemption_spends_the_campaign_budget(api):
    upload(api, "spring", [f"P-{i}" for i in range(10)])
    codes = {}
    for user in ("ada", "bob"):
        codes[user] = wait_until(lambda user=user: (offer_of(api, user) or {}).get("content", {}).get("code"),
                                 what="a code")
    for n, user in enumerate(codes):
        assert redeem(api, code=codes[user], user_id=user, order_id=f"o{n}", amount=150).status_code == 200
    # 2 x 20 % of 150 = 60: the campaign's 60 is spent.
    wait_until(lambda: reason(api, "carl", "spring") == "budget spent", what="the campaign budget to be spent")


@pytest.mark.parametrize(("body", "field"), [
    ("bad code!\n", "line 1"),
    (["OK", "x" * 65], "codes[1]"),
    ([], "body"),
    ({"codes": ["A"]}, "body"),
    ([f"C{i}" for i in range(10_001)], "body"),
])
def test_a_bad_upload_is_422_naming_the_part(api, body, field):
    answer = upload(api, "spring", body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field


def test_codes_need_the_right_token_and_scope(api):
    assert upload(api, "spring", ["A1"], token=READ_TOKEN).status_code == 403
    assert upload(api, "has space", ["A1"]).status_code == 422
    with api.browser() as client:
        assert client.get("/v1/admin/codes/spring").status_code == 403
        assert client.post("/v1/codes/redeem", json={"code": "A1", "user_id": "ada", "order_id": "o"}).status_code \
            == 403
    assert redeem(api, token=READ_TOKEN, code="A1", user_id="ada", order_id="o").status_code == 403
    both = redeem(api, code="A1", user_id="ada", anonymous_id="x", order_id="o")
    assert (both.status_code, both.json()["field"]) == (422, "user_id")
    assert redeem(api, code="A1", user_id="ada", order_id="o", amount=-5).status_code == 422


def test_erasing_a_person_forgets_their_code_which_stays_used(api):
    upload(api, "spring", ["E-1", "E-2"])
    code = wait_until(lambda: (offer_of(api, "ada") or {}).get("content", {}).get("code"), what="a code for ada")
    with api.server() as client:
        answer = client.delete("/v1/people/ada")
    assert answer.status_code == 200 and answer.json()["codes"] == 1
    assert redeem(api, code=code, user_id="ada", order_id="o1").status_code == 409  # nobody's now
    assert offer_of(api, "ada")["content"]["code"] != code  # a new person to the pool: the other code
    assert status(api, "spring")["available"] == 0


async def test_the_code_goes_into_a_copy_of_the_answer_never_the_offers_own_content():
    catalog = compile_catalog({"placements": ["hero"], "offers": [
        {"id": "spring", "kind": "discount", "placements": ["hero"], "content": {"title": "S", "code_pool": "p"}}]})

    async def give(pool, person):
        return f"{pool}-{person}"

    services = SimpleNamespace(budgets=SimpleNamespace(current=Budgets()), decide_budget_s=1.0,
                               codes=SimpleNamespace(give=give))
    for person in ("u:ada", "u:bob"):
        decision = decide_now(catalog, Profile(), person, ["hero"], {}, 0, budgets=Budgets())
        decision = await give_codes(services, catalog, decision, person, None)
        assert decision.placements["hero"]["content"] == {"title": "S", "code": f"p-{person}"}
    assert catalog.offers_by_id["spring"].content == {"title": "S"}
