"""The journey transitions as pure functions of (catalog, person, facts, state,
now): no Redis, no clock, no scheduler. What a batch of events or a fired timer
does to one person's journey state, and the actions it asks the runner for."""

from __future__ import annotations

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.catalog.journeys import JOURNEY_CHANNEL
from engine.catalog.rules import Facts
from engine.events import Event
from engine.followups.transitions import Transition, decode_state, encode_state, new_state
from engine.profile import Profile

T0 = 1_780_000_000_000
MINUTE = 60_000
DAY = 86_400_000

CATALOG = compile_catalog(parse_catalog_text("""
templates:
  reminder: {subject: "Still thinking about {{ event.product }}?", text: "Come back"}
  promo: {subject: "Promo", text: "Promo {{ journey }}"}
journeys:
  - id: cart
    trigger: {event: add_to_cart}
    exit:
      - event: purchase
    steps:
      - wait: 30m
      - send: {channel: email, template: reminder}
  - id: low
    trigger: {event: form_submit}
    group: campaign
    priority: 10
    steps:
      - wait: 1d
      - send: {channel: push, template: promo}
  - id: high
    trigger: {event: form_submit, where: {form: trial}}
    group: campaign
    priority: 20
    steps:
      - send: {channel: push, template: promo}
      - set_trait: {trial_offered: true}
"""))
BOOK = CATALOG.journeys
EMAIL = {"email": "ada@example.com"}


def transition(state: dict, now: int = T0, traits: dict | None = None) -> Transition:
    facts = Facts(CATALOG, Profile(t=traits if traits is not None else dict(EMAIL)), {}, now)
    return Transition(BOOK, "u-ada", facts, state, now)


def event(eid: str, kind: str, ts: int = T0, **properties) -> Event:
    return Event(eid, kind, "u-ada", ts, properties)


def test_a_trigger_enters_the_journey_and_arms_its_first_wait():
    state = new_state()
    step = transition(state)
    step.on_events([event("e1", "add_to_cart", product="lamp")], set())
    assert step.actions.log == ["entered: cart"]
    [timer] = step.actions.messages
    assert (timer.channel, timer.due_ms, timer.body["journey"]) == (JOURNEY_CHANNEL, T0 + 30 * MINUTE, "cart")
    assert state["a"]["cart"]["until"] == T0 + 30 * MINUTE


def test_the_timer_sends_the_message_with_the_trigger_events_values():
    state = new_state()
    first = transition(state)
    first.on_events([event("e1", "add_to_cart", product="lamp")], set())
    [timer] = first.actions.messages
    fired = transition(state, T0 + 30 * MINUTE)
    fired.on_timer(timer.body)
    [email] = fired.actions.messages
    assert email.channel == "email" and email.body["to"] == "ada@example.com"
    assert email.body["values"]["event"] == {"product": "lamp"}
    assert "cart" not in state["a"] and "ended: cart: finished" in fired.actions.log


def test_a_stale_timer_changes_nothing():
    state = new_state()
    transition(state).on_events([event("e1", "add_to_cart")], set())
    before = encode_state(state)
    stale = transition(state, T0 + DAY)
    stale.on_timer({"journey": "cart", "run": "not-this-run", "pc": 0})
    assert encode_state(state) == before and stale.actions.messages == []


def test_a_cart_and_its_purchase_in_one_batch_send_nothing():
    state = new_state()
    step = transition(state)
    step.on_events([event("e2", "purchase", T0 + 1), event("e1", "add_to_cart", T0)], set())
    assert "cart" not in state["a"]
    assert step.actions.log == ["entered: cart", "ended: cart: exit: purchase"]


def test_the_same_trigger_delivered_twice_enters_once():
    state = new_state()
    transition(state).on_events([event("e1", "add_to_cart")], set())
    state["a"].clear()  # the run finished meanwhile
    again = transition(state, T0 + 1)
    again.on_events([event("e1", "add_to_cart")], set())
    assert again.actions.log == [] and again.actions.messages == []


def test_the_higher_priority_journey_of_a_group_wins_and_replaces_the_lower():
    state = new_state()
    transition(state).on_events([event("f1", "form_submit", form="webinar")], set())
    assert list(state["a"]) == ["low"]
    step = transition(state, T0 + MINUTE)
    step.on_events([event("f2", "form_submit", form="trial")], set())
    assert "ended: low: replaced by high (higher priority in group campaign)" in step.actions.log
    assert [m.channel for m in step.actions.messages] == ["push"]
    assert step.actions.traits == [(f"jt:{step.actions.entries[0][1]}:1", {"trial_offered": True})]


def test_an_email_step_without_an_address_is_an_outcome_not_a_message():
    state = new_state()
    transition(state, traits={}).on_events([event("e1", "add_to_cart")], set())
    fired = transition(state, T0 + 30 * MINUTE, traits={})
    fired.on_timer({"journey": "cart", "run": state["a"]["cart"]["run"], "pc": 0})
    assert fired.actions.messages == []
    assert fired.actions.outcomes[0]["reason"] == "no email address trait"


def test_the_state_round_trips_through_its_stored_form():
    state = new_state()
    transition(state).on_events([event("e1", "add_to_cart")], set())
    assert decode_state(encode_state(state)) == state
    assert decode_state(None) == new_state()
