"""The contact policy, pure: consent per channel and purpose, frequency caps,
quiet hours in the person's time zone, no repeat of a template within a window,
address normalisation for the suppression list. `judge` is a function of the
policy, the person's contact state, the message and the time; the Redis side
that decides and records atomically is engine/followups/contacts.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
HISTORY_KEEP_MS = 8 * DAY_MS  # the longest look-back any rule needs, plus a day
CONTACT_HISTORY_MAX = 200  # recent sends kept in a person's contact state
CONSENT_HISTORY_MAX = 50  # consent changes kept in a person's contact state, the latest

# Channels that reach the person and so need their consent; operator alerts
# (sales, support) go to staff and are not contact with the person.
# Traits that hold a person's addresses: only a signed user or the server token
# may set them (a page could otherwise have Attimo write to any address).
CONTACT_TRAITS = frozenset({"email", "phone"})

PERSONAL_CHANNELS = frozenset({"email", "push", "sms", "webhook", "inbox"})


@dataclass(frozen=True, slots=True)
class Caps:
    per_day: int | None = None
    per_week: int | None = None


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    # Channels where only an explicit opt-in allows a send. Email is always one of them.
    opt_in_channels: frozenset[str] = frozenset({"email", "sms"})
    channel_caps: dict[str, Caps] = field(default_factory=dict)
    total_caps: Caps = Caps()  # across all personal channels
    quiet_start_hour: int | None = None  # e.g. 21: from 21:00 ...
    quiet_end_hour: int | None = None  # ... to 08:00, in the person's time zone
    quiet_action: str = "delay"  # or "drop"
    repeat_window_ms: int = 0  # same template to the same person at most once in it
    default_tz: str = "UTC"

    def requires_opt_in(self, channel: str) -> bool:
        return channel == "email" or channel in self.opt_in_channels


@dataclass(slots=True)
class ContactState:
    # consent[channel][purpose] = True (opt-in) / False (opt-out); purpose "*" = all
    consent: dict[str, dict[str, bool]] = field(default_factory=dict)
    tz: str | None = None
    sends: list[list] = field(default_factory=list)  # [ms, channel, template, id], oldest first
    # consent_at[channel][purpose] = event time of the choice in force: an older
    # choice arriving late (a client resending its batch) does not undo it.
    consent_at: dict[str, dict[str, int]] = field(default_factory=dict)
    # The consent changes that took effect, oldest first, at most CONSENT_HISTORY_MAX:
    # [recorded ms, channel, purpose, granted, source, the choice's own time]
    # (what a person's export shows: who changed what, when, and how).
    history: list[list] = field(default_factory=list)

    def encode(self) -> bytes:
        return orjson.dumps({"consent": self.consent, "tz": self.tz, "sends": self.sends, "at": self.consent_at,
                             **({"h": self.history} if self.history else {})})

    @classmethod
    def decode(cls, raw: bytes | None) -> ContactState:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(data.get("consent", {}), data.get("tz"), data.get("sends", []), data.get("at", {}),
                   data.get("h", []))


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "allow", "delay", "drop"
    reason: str
    until_ms: int | None = None  # for "delay"


ALLOW = Verdict("allow", "ok")


def consent_given(state: ContactState, channel: str, purpose: str) -> bool | None:
    by_purpose = state.consent.get(channel, {})
    for key in (purpose, "*"):
        if key in by_purpose:
            return by_purpose[key]
    return None


def quiet_until(policy: ContactPolicy, tz_name: str | None, now_ms: int) -> int | None:
    """The ms when quiet hours end if `now_ms` falls inside them, else None."""
    if policy.quiet_start_hour is None or policy.quiet_end_hour is None:
        return None
    try:
        tz = ZoneInfo(tz_name or policy.default_tz)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo(policy.default_tz)
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    start, end = policy.quiet_start_hour, policy.quiet_end_hour
    hour = local.hour
    inside = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not inside:
        return None
    end_day = local.date() if hour < end else local.date() + timedelta(days=1)
    # Wall-clock end in that zone (DST-safe: built from the date, not by adding hours).
    end_local = datetime(end_day.year, end_day.month, end_day.day, end, tzinfo=tz)
    return int(end_local.timestamp() * 1000)


def judge(policy: ContactPolicy, state: ContactState, *, channel: str, purpose: str,
          template: str, now_ms: int, suppressed: bool = False, message_id: str = "") -> Verdict:
    """Allow, delay until a time, or drop, with the reason, for one message now.
    A send already reserved by this same message id (a redelivery) does not count."""
    if channel not in PERSONAL_CHANNELS:
        return ALLOW
    if suppressed:
        return Verdict("drop", "suppressed")
    consent = consent_given(state, channel, purpose)
    if consent is False:
        return Verdict("drop", f"no consent: {channel} opted out for {purpose}")
    if consent is None and policy.requires_opt_in(channel):
        return Verdict("drop", f"no consent: {channel} needs an opt-in for {purpose}")
    recent = [s for s in state.sends if s[0] > now_ms - WEEK_MS
              and not (message_id and len(s) > 3 and s[3] == message_id)]
    if policy.repeat_window_ms and template and any(
            s[2] == template and s[0] > now_ms - policy.repeat_window_ms for s in recent):
        return Verdict("drop", f"repeat: template {template} sent within {policy.repeat_window_ms} ms")
    for caps, sends, label in (
            (policy.channel_caps.get(channel), [s for s in recent if s[1] == channel], f"{channel} cap"),
            (policy.total_caps, recent, "cross-channel cap")):
        if caps is None:
            continue
        if caps.per_day is not None and sum(s[0] > now_ms - DAY_MS for s in sends) >= caps.per_day:
            return Verdict("drop", f"{label}: {caps.per_day} per day reached")
        if caps.per_week is not None and len(sends) >= caps.per_week:
            return Verdict("drop", f"{label}: {caps.per_week} per week reached")
    until = quiet_until(policy, state.tz, now_ms)
    if until is not None:
        if policy.quiet_action == "drop":
            return Verdict("drop", "quiet hours")
        return Verdict("delay", "quiet hours", until)
    return ALLOW


def record_send(state: ContactState, *, channel: str, template: str, now_ms: int,
                message_id: str = "") -> None:
    """Add a send to the history, keeping it bounded in time and length."""
    state.sends = [s for s in state.sends if s[0] > now_ms - HISTORY_KEEP_MS
                   and not (message_id and len(s) > 3 and s[3] == message_id)]
    state.sends.append([now_ms, channel, template, message_id])
    del state.sends[:-CONTACT_HISTORY_MAX]


def set_consent(state: ContactState, channel: str, purpose: str, granted: bool, at_ms: int | None = None,
                *, source: str = "event", recorded_ms: int | None = None) -> bool:
    """Record a choice made at `at_ms` (None: after every other, as an
    unsubscribe link is). A choice older than the one in force for that purpose
    changes nothing (False): replaying an old opt-in never undoes a later
    unsubscribe. Withdrawing "*" (every purpose: an unsubscribe) also withdraws
    each purpose given before it, which would otherwise win over "*". A choice
    that takes effect joins the history, with where it came from (`source`)
    and when it was recorded (`recorded_ms`, else its own time)."""
    purposes = state.consent.setdefault(channel, {})
    times = state.consent_at.setdefault(channel, {})
    at = at_ms if at_ms is not None else max([0, *times.values()]) + 1
    if purpose in times and at < times[purpose]:
        return False
    if purpose == "*" and not granted:
        for given in purposes:
            if times.get(given, 0) <= at:
                purposes[given], times[given] = False, at
    purposes[purpose], times[purpose] = granted, at
    state.history.append([recorded_ms if recorded_ms is not None else at, channel, purpose, granted, source, at])
    del state.history[:-CONSENT_HISTORY_MAX]
    return True


def absorb(known: ContactState, anonymous: ContactState) -> None:
    """Fold what a visitor chose before logging in into the known person's state.
    With no times on the choices, a withdrawal on either side wins over an
    opt-in on the other: merging never creates consent the person withdrew."""
    for channel, purposes in anonymous.consent.items():
        mine = known.consent.setdefault(channel, {})
        unsubscribed = mine.get("*") is False or purposes.get("*") is False  # from the whole channel
        for purpose, granted in purposes.items():
            mine[purpose] = granted if purpose not in mine else (mine[purpose] and granted)
        if unsubscribed:
            for purpose in mine:
                mine[purpose] = False
        times = known.consent_at.setdefault(channel, {})
        for purpose, at in anonymous.consent_at.get(channel, {}).items():
            times[purpose] = max(times.get(purpose, 0), at)
    known.tz = known.tz or anonymous.tz
    # The visitor's choices were the person's: their history joins, once (a
    # fold repeated after a crash adds nothing).
    history = {orjson.dumps(h): h for h in known.history + anonymous.history}
    known.history = sorted(history.values(), key=lambda h: h[0])[-CONSENT_HISTORY_MAX:]
    seen = {s[3] for s in known.sends if len(s) > 3 and s[3]}
    sends = known.sends + [s for s in anonymous.sends if not (len(s) > 3 and s[3] in seen)]
    known.sends = sorted(sends, key=lambda s: s[0])[-CONTACT_HISTORY_MAX:]


# Channels whose messages name their recipient in `to`, and what names one: only
# these take address suppressions (push and inbox reach the person's id).
SUPPRESSIBLE_CHANNELS = {"email": "an email address", "sms": "a phone number"}
EMAIL_MAX_LENGTH = 254  # RFC 5321's longest path
PHONE_MAX_DIGITS = 15  # E.164


def suppression_address(channel: str, text: str) -> str | None:
    """The one form an address is suppressed and checked in, or None when `text`
    is not an address of the channel. Email: the address (also out of
    "Name <address>") in lower case: providers ignore case, and a suppression
    must not miss. Phone: digits with an optional leading +, without spaces,
    dots, dashes or parentheses."""
    text = text.strip()
    if channel == "email":
        if text.endswith(">") and "<" in text:
            text = text[text.rindex("<") + 1:-1].strip()
        local, at, domain = text.lower().partition("@")
        if (not at or not local or not domain or "@" in domain or len(text) > EMAIL_MAX_LENGTH
                or any(c.isspace() or c in "<>,;" for c in text)):
            return None
        return f"{local}@{domain}"
    if channel == "sms":
        phone = "".join(c for c in text if c not in " .-()")
        digits = phone.removeprefix("+")
        return phone if digits.isascii() and digits.isdigit() and 5 <= len(digits) <= PHONE_MAX_DIGITS else None
    return None
