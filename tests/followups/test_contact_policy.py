"""The contact policy as pure functions: consent, caps, quiet hours, repeats,
suppression; each verdict with its reason. And the catalog's contact_policy
section that sets quiet hours, caps and the no-repeat window."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine.catalog.compile import compile_catalog, parse_catalog_text
from engine.errors import CatalogError, StoreContention
from engine.followups.contacts import ContactStore
from engine.followups.message import Message
from engine.policy import (
    CONSENT_HISTORY_MAX,
    DAY_MS,
    Caps,
    ContactPolicy,
    ContactState,
    absorb,
    consent_given,
    judge,
    quiet_until,
    record_send,
    set_consent,
)
from engine.store.client import MAX_OPTIMISTIC_ATTEMPTS
from engine.store.keys import Keys

NOON_UTC = int(datetime(2026, 6, 1, 12, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)


def opted_in(*channels: str) -> ContactState:
    state = ContactState()
    for channel in channels:
        set_consent(state, channel, "*", True)
    return state


def verdict(policy, state, channel="email", template="t1", now=NOON_UTC, **kw):
    return judge(policy, state, channel=channel, purpose="marketing", template=template, now_ms=now, **kw)


def test_email_is_never_sent_without_an_opt_in():
    policy = ContactPolicy(opt_in_channels=frozenset())
    v = verdict(policy, ContactState())
    assert v.action == "drop" and "opt-in" in v.reason
    assert verdict(policy, ContactState(), channel="push").action == "allow"


def test_consent_is_per_channel_and_purpose():
    state = opted_in("email")
    set_consent(state, "email", "marketing", False)
    assert verdict(ContactPolicy(), state).reason.startswith("no consent: email opted out")
    assert judge(ContactPolicy(), state, channel="email", purpose="transactional", template="t",
                 now_ms=NOON_UTC).action == "allow"


def test_operator_alerts_need_no_consent():
    assert verdict(ContactPolicy(), ContactState(), channel="operator").action == "allow"


def test_channel_cap_per_day_then_week():
    policy = ContactPolicy(channel_caps={"email": Caps(per_day=2, per_week=3)})
    state = opted_in("email")
    record_send(state, channel="email", template="a", now_ms=NOON_UTC - 3 * DAY_MS)
    record_send(state, channel="email", template="b", now_ms=NOON_UTC - 1000)
    assert verdict(policy, state).action == "allow"
    record_send(state, channel="email", template="c", now_ms=NOON_UTC - 500)
    assert verdict(policy, state).reason == "email cap: 2 per day reached"
    assert verdict(policy, state, now=NOON_UTC + DAY_MS).reason == "email cap: 3 per week reached"
    assert verdict(policy, state, now=NOON_UTC + 5 * DAY_MS).action == "allow"


def test_cross_channel_cap():
    policy = ContactPolicy(total_caps=Caps(per_day=2))
    state = opted_in("email", "sms")
    record_send(state, channel="email", template="a", now_ms=NOON_UTC - 10)
    record_send(state, channel="push", template="b", now_ms=NOON_UTC - 5)
    assert verdict(policy, state, channel="sms").reason == "cross-channel cap: 2 per day reached"


def test_same_template_not_repeated_within_the_window():
    policy = ContactPolicy(repeat_window_ms=DAY_MS)
    state = opted_in("email")
    record_send(state, channel="email", template="welcome", now_ms=NOON_UTC - 1000)
    assert verdict(policy, state, template="welcome").reason.startswith("repeat")
    assert verdict(policy, state, template="other").action == "allow"
    assert verdict(policy, state, template="welcome", now=NOON_UTC + DAY_MS).action == "allow"


def test_suppressed_people_get_nothing():
    assert verdict(ContactPolicy(), opted_in("email"), suppressed=True).reason == "suppressed"


def test_quiet_hours_delay_to_the_morning_in_the_persons_zone():
    policy = ContactPolicy(quiet_start_hour=21, quiet_end_hour=8)
    state = opted_in("email")
    state.tz = "America/New_York"  # 12:00 UTC is 08:00 in New York in June: allowed
    assert verdict(policy, state).action == "allow"
    state.tz = "Asia/Tokyo"  # 12:00 UTC is 21:00 in Tokyo: quiet until 08:00 there
    v = verdict(policy, state)
    assert v.action == "delay" and v.reason == "quiet hours"
    assert datetime.fromtimestamp(v.until_ms / 1000, ZoneInfo("Asia/Tokyo")).hour == 8
    assert v.until_ms == NOON_UTC + 11 * 3_600_000


def test_quiet_hours_can_drop_instead():
    policy = ContactPolicy(quiet_start_hour=9, quiet_end_hour=17, quiet_action="drop")
    assert verdict(policy, opted_in("email")).reason == "quiet hours"


def test_quiet_hours_within_one_day_and_outside():
    policy = ContactPolicy(quiet_start_hour=13, quiet_end_hour=15)
    assert quiet_until(policy, "UTC", NOON_UTC) is None
    assert quiet_until(policy, "UTC", NOON_UTC + 3_600_000) == NOON_UTC + 3 * 3_600_000


def test_send_history_stays_bounded():
    state = ContactState()
    for i in range(1000):
        record_send(state, channel="push", template="t", now_ms=NOON_UTC + i)
    assert len(state.sends) == 200
    record_send(state, channel="push", template="t", now_ms=NOON_UTC + 30 * DAY_MS)
    assert len(state.sends) == 1


def test_a_redelivered_message_does_not_count_against_its_own_cap():
    policy = ContactPolicy(channel_caps={"email": Caps(per_day=1)})
    state = opted_in("email")
    record_send(state, channel="email", template="t1", now_ms=NOON_UTC - 10, message_id="m-1")
    assert judge(policy, state, channel="email", purpose="marketing", template="t1", now_ms=NOON_UTC,
                 message_id="m-1").action == "allow"
    assert verdict(policy, state, template="t2").reason == "email cap: 1 per day reached"


def test_a_visitors_consent_follows_them_into_the_known_person():
    known, visitor = ContactState(), opted_in("email")
    visitor.tz = "Europe/Rome"
    absorb(known, visitor)
    assert consent_given(known, "email", "marketing") is True and known.tz == "Europe/Rome"


def test_on_merge_a_withdrawal_on_either_side_wins():
    known, visitor = opted_in("email", "sms"), ContactState()
    set_consent(visitor, "email", "*", False)  # unsubscribed while logged out
    set_consent(visitor, "sms", "newsletter", False)
    absorb(known, visitor)
    assert consent_given(known, "email", "marketing") is False
    assert consent_given(known, "sms", "newsletter") is False and consent_given(known, "sms", "marketing") is True
    known, visitor = ContactState(), ContactState()
    set_consent(known, "email", "*", False)
    set_consent(visitor, "email", "marketing", True)  # an opt-in does not undo the known unsubscribe
    absorb(known, visitor)
    assert consent_given(known, "email", "marketing") is False


def test_each_consent_change_is_kept_with_its_source_and_time_and_a_stale_one_is_not():
    state = ContactState()
    assert set_consent(state, "email", "marketing", True, 1_000, recorded_ms=1_500)
    assert set_consent(state, "email", "*", False, None, source="unsubscribe link", recorded_ms=2_000)
    assert not set_consent(state, "email", "marketing", True, 900, recorded_ms=2_500)  # older: changes nothing
    assert state.history == [[1_500, "email", "marketing", True, "event", 1_000],
                             [2_000, "email", "*", False, "unsubscribe link", 1_001]]
    assert ContactState.decode(state.encode()).history == state.history


def test_the_consent_history_keeps_the_latest_changes_only():
    state = ContactState()
    for n in range(CONSENT_HISTORY_MAX + 7):
        set_consent(state, "sms", "*", n % 2 == 0, n)
    assert len(state.history) == CONSENT_HISTORY_MAX
    assert state.history[0][0] == 7 and state.history[-1][0] == CONSENT_HISTORY_MAX + 6


def test_a_visitors_consent_history_joins_the_known_persons_once():
    known, visitor = ContactState(), ContactState()
    set_consent(known, "email", "marketing", True, 3_000)
    set_consent(visitor, "sms", "*", True, 1_000)
    absorb(known, visitor)
    absorb(known, visitor)  # a fold repeated after a crash
    assert [h[:4] for h in known.history] == [[1_000, "sms", "*", True], [3_000, "email", "marketing", True]]


# -- the catalog's contact_policy section (engine/catalog/compile.py) ------------------------

def catalog_policy(section: str) -> dict:
    return compile_catalog(parse_catalog_text(f"placements: []\noffers: []\ncontact_policy:\n{section}")).contact_policy


def catalog_problems(section: str) -> list[tuple[str, str]]:
    with pytest.raises(CatalogError) as failure:
        catalog_policy(section)
    return failure.value.problems


def test_the_catalogs_contact_policy_sets_the_fields_it_names():
    fields = catalog_policy("""
  quiet_hours: {start: 21, end: 8, action: drop}
  caps:
    email: {day: 1, week: 3}
    push: {week: 10}
    total: {day: 3}
  no_repeat: 7d
""")
    policy = replace(ContactPolicy(opt_in_channels=frozenset({"email"})), **fields)
    assert policy == ContactPolicy(opt_in_channels=frozenset({"email"}), quiet_start_hour=21, quiet_end_hour=8,
                                   quiet_action="drop", channel_caps={"email": Caps(1, 3), "push": Caps(None, 10)},
                                   total_caps=Caps(per_day=3), repeat_window_ms=7 * DAY_MS)
    assert verdict(policy, opted_in("email"), now=NOON_UTC + 10 * 3_600_000).reason == "quiet hours"  # 22:00


def test_a_catalog_key_left_out_keeps_the_setting_and_off_turns_one_off():
    assert catalog_policy("  quiet_hours: {start: 22, end: 7}\n") == {
        "quiet_start_hour": 22, "quiet_end_hour": 7, "quiet_action": "delay"}
    assert catalog_policy("  quiet_hours: off\n  caps: off\n  no_repeat: off\n") == {
        "quiet_start_hour": None, "quiet_end_hour": None, "channel_caps": {}, "total_caps": Caps(),
        "repeat_window_ms": 0}
    assert compile_catalog(parse_catalog_text("placements: []\noffers: []\n")).contact_policy == {}


def test_every_problem_in_the_catalogs_contact_policy_is_named_with_its_path():
    problems = dict(catalog_problems("""
  quiet_hours: {start: 25, end: 8, action: later, from: 1}
  caps:
    email: {day: -1, month: 3}
    operator: {day: 1}
    push: 3
  no_repeat: 30d
  timezone: UTC
"""))
    assert problems == {
        "contact_policy.timezone": "unknown field; expected quiet_hours, caps, no_repeat",
        "contact_policy.quiet_hours.from": "unknown field; expected start, end, action",
        "contact_policy.quiet_hours.start": "an hour from 0 to 23 (in the person's time zone)",
        "contact_policy.quiet_hours.action": "delay (to the end of the quiet hours) or drop",
        "contact_policy.caps.email.day": "a whole number of messages, 0 or more",
        "contact_policy.caps.email.month": "unknown field; expected day, week",
        "contact_policy.caps.operator": "caps apply to email, inbox, push, sms, webhook, total or onsite",
        "contact_policy.caps.push": "{day: n, week: n}, either or both",
        "contact_policy.no_repeat": "at most 7d: messages are judged against the sends of the last week",
    }
    assert catalog_problems("  quiet_hours: {start: 8, end: 8}\n") == [
        ("contact_policy.quiet_hours", "start and end are the same hour; for no quiet hours write quiet_hours: off")]
    assert catalog_problems("  no_repeat: soon\n") == [
        ("contact_policy.no_repeat", "a duration is written like 30m, 12h, 7d or 2w, not 'soon', or off")]
    assert catalog_problems("  [quiet]\n") == [("contact_policy", "a mapping with quiet_hours, caps and no_repeat")]


async def test_a_contact_state_that_keeps_changing_gives_up_with_a_named_error(redis, redis_sync_client):
    """The WATCH loop is bounded: another writer changing the state on every
    attempt ends in StoreContention (a 503 at the API), not a spin for ever."""
    key = Keys().contact("u-busy")
    attempts = []

    def change(state):
        attempts.append(1)
        redis_sync_client.set(key, ContactState().encode())  # someone else writes meanwhile

    with pytest.raises(StoreContention):
        await ContactStore(redis).update("u-busy", change)
    assert len(attempts) == MAX_OPTIMISTIC_ATTEMPTS


async def test_a_person_suppressed_by_bare_id_before_the_two_spaces_stays_suppressed(redis):
    contacts = ContactStore(redis)
    await contacts.suppress("u-old")  # an entry made when people were named bare
    verdict = await contacts.check_and_reserve(ContactPolicy(), person="u:u-old", channel="email",
                                               purpose="transactional", template="t", now_ms=0, message_id="m1")
    [batched] = await contacts.check_and_reserve_many(
        ContactPolicy(), [Message(id="m2", person="u:u-old", channel="email", due_ms=0, purpose="transactional")], 0)
    assert (verdict.action, batched.action) == ("drop", "drop")
