"""The contact policy, applied when a message is about to go out: consent per
channel and purpose, frequency caps, quiet hours in the person's time zone, no
repeat of a template within a window, the suppression list. `judge` is a pure
function of the policy, the person's contact state, the message and the time;
`ContactStore` is the thin Redis adapter that decides and records atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from engine.due_queue import Message
from engine.keys import CONTACT_HISTORY_MAX, CONTACT_OUTCOMES_MAX, CONTACT_STATE_TTL_S, Keys
from engine.redis_client import COMPARE_AND_SET, run_scripts

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
HISTORY_KEEP_MS = 8 * DAY_MS  # the longest look-back any rule needs, plus a day

# Channels that reach the person and so need their consent; operator alerts
# (sales, support) go to staff and are not contact with the person.
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

    def encode(self) -> bytes:
        return orjson.dumps({"consent": self.consent, "tz": self.tz, "sends": self.sends, "at": self.consent_at})

    @classmethod
    def decode(cls, raw: bytes | None) -> ContactState:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(data.get("consent", {}), data.get("tz"), data.get("sends", []), data.get("at", {}))


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


def set_consent(state: ContactState, channel: str, purpose: str, granted: bool, at_ms: int | None = None) -> bool:
    """Record a choice made at `at_ms` (None: after every other, as an
    unsubscribe link is). A choice older than the one in force for that purpose
    changes nothing (False): replaying an old opt-in never undoes a later
    unsubscribe. Withdrawing "*" (every purpose: an unsubscribe) also withdraws
    each purpose given before it, which would otherwise win over "*"."""
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


def message_addresses(message: Message) -> tuple[str, ...]:
    """What the suppression list may name for a message besides its person: its
    `to` as written and normalised (an entry for every channel) and, normalised,
    as "<channel>:<address>" (an entry for that channel, put by the API)."""
    to = message.body.get("to")
    if not isinstance(to, str) or not to:
        return ()
    normal = suppression_address(message.channel, to)
    if normal is None:
        return (to,)
    return tuple(dict.fromkeys((to, normal, f"{message.channel}:{normal}")))


class ContactStore:
    """Reads and writes a person's contact state; a verdict that allows a send is
    recorded in the same optimistic transaction, so concurrent senders cannot
    both pass a cap."""

    def __init__(self, redis: Redis, keys: Keys | None = None, *, ttl_s: int = CONTACT_STATE_TTL_S):
        self.redis = redis
        self.keys = keys or Keys()
        self.ttl_s = ttl_s
        self._cas = redis.register_script(COMPARE_AND_SET)

    async def load(self, person: str) -> ContactState:
        return ContactState.decode(await self.redis.get(self.keys.contact(person)))

    async def update(self, person: str, change) -> ContactState:
        """Apply `change(state)` atomically (consent events, time zone)."""
        key = self.keys.contact(person)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    state = ContactState.decode(await pipe.get(key))
                    change(state)
                    pipe.multi()
                    pipe.set(key, state.encode(), ex=self.ttl_s)
                    await pipe.execute()
                    return state
                except WatchError:
                    continue

    async def absorb(self, person: str, anonymous: str) -> bool:
        """After an identity merge: the anonymous visitor's consent, time zone and
        send history join the known person's, once (the anonymous state is
        deleted after; a crash in between folds the same state again, which
        changes nothing). False if the visitor had no contact state."""
        raw = await self.redis.get(self.keys.contact(anonymous))
        if not raw:
            return False
        visitor = ContactState.decode(raw)
        await self.update(person, lambda state: absorb(state, visitor))
        await self.redis.delete(self.keys.contact(anonymous))
        return True

    async def set_consent(self, person: str, channel: str, purpose: str, granted: bool,
                          at_ms: int | None = None) -> bool:
        """set_consent() atomically; False if a later choice was already in force."""
        applied = []
        await self.update(person, lambda s: applied.append(set_consent(s, channel, purpose, granted, at_ms)))
        return applied[-1]

    async def set_tz(self, person: str, tz: str) -> None:
        def change(state: ContactState) -> None:
            state.tz = tz
        await self.update(person, change)

    async def suppress(self, who: str) -> None:
        await self.redis.sadd(self.keys.suppressed(), who)

    async def suppress_address(self, channel: str, address: str) -> bool:
        """Suppress a normalised address on one channel (suppression_address);
        False if it already was. The send-time check reads the entry in the
        suppression set (sent first); the channel's index only lists it."""
        pipe = self.redis.pipeline(transaction=False)  # two slots on a Cluster: no MULTI
        pipe.sadd(self.keys.suppressed(), f"{channel}:{address}")
        pipe.zadd(self.keys.suppressed_on(channel), {address: 0})
        added, _ = await pipe.execute()
        return bool(added)

    async def unsuppress_address(self, channel: str, address: str) -> bool:
        """Lift an address's suppression on one channel; False if it had none."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(self.keys.suppressed(), f"{channel}:{address}")
        pipe.zrem(self.keys.suppressed_on(channel), address)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def suppressed_addresses(self, channel: str, after: str, limit: int) -> tuple[list[str], int]:
        """A page of a channel's suppressed addresses in order, those after
        `after` ("" from the start), and how many the channel has."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebylex(self.keys.suppressed_on(channel), f"({after}" if after else "-", "+", 0, limit)
        pipe.zcard(self.keys.suppressed_on(channel))
        page, total = await pipe.execute()
        return [address.decode() for address in page], total

    async def check_and_reserve(self, policy: ContactPolicy, *, person: str, channel: str,
                                purpose: str, template: str, now_ms: int, message_id: str = "",
                                addresses: tuple[str, ...] = ()) -> Verdict:
        """Judge a message and, if allowed, count it as sent, in one transaction."""
        key = self.keys.contact(person)
        candidates = (person, *addresses)
        flags = await self.redis.smismember(self.keys.suppressed(), candidates)
        suppressed = any(flags)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    state = ContactState.decode(await pipe.get(key))
                    verdict = judge(policy, state, channel=channel, purpose=purpose,
                                    template=template, now_ms=now_ms, suppressed=suppressed,
                                    message_id=message_id)
                    if verdict.action != "allow" or channel not in PERSONAL_CHANNELS:
                        await pipe.unwatch()
                        return verdict
                    record_send(state, channel=channel, template=template, now_ms=now_ms,
                                message_id=message_id)
                    pipe.multi()
                    pipe.set(key, state.encode(), ex=self.ttl_s)
                    await pipe.execute()
                    return verdict
                except WatchError:
                    continue

    async def check_and_reserve_many(self, policy: ContactPolicy, messages: list[Message],
                                     now_ms: int) -> list[Verdict]:
        """check_and_reserve for a scheduler's batch in two round trips instead of
        about five per message: read every state (and the suppression list) at
        once, judge each message in order against its person's state as the
        earlier ones changed it, then write each changed state by compare-and-set.
        A person whose state changed meanwhile is judged again, one message at a
        time, through check_and_reserve."""
        if not messages:
            return []
        people = list(dict.fromkeys(m.person for m in messages))
        addresses = {m.id: message_addresses(m) for m in messages}
        candidates = list(dict.fromkeys([*people, *(a for found in addresses.values() for a in found)]))
        pipe = self.redis.pipeline(transaction=False)
        pipe.smismember(self.keys.suppressed(), candidates)
        for person in people:
            pipe.get(self.keys.contact(person))
        flags, *raws = await pipe.execute()
        suppressed = {c for c, flag in zip(candidates, flags, strict=True) if flag}
        read = dict(zip(people, raws, strict=True))
        states = {person: ContactState.decode(raw) for person, raw in read.items()}
        verdicts, changed = [], {}
        for m in messages:
            state = states[m.person]
            verdict = judge(policy, state, channel=m.channel, purpose=m.purpose, template=m.template,
                            now_ms=now_ms, message_id=m.id,
                            suppressed=m.person in suppressed or any(a in suppressed for a in addresses[m.id]))
            if verdict.action == "allow" and m.channel in PERSONAL_CHANNELS:
                record_send(state, channel=m.channel, template=m.template, now_ms=now_ms, message_id=m.id)
                changed[m.person] = state
            verdicts.append(verdict)
        if not changed:
            return verdicts
        written = await run_scripts(self.redis, [
            (self._cas, [self.keys.contact(person)], [read[person] or b"", state.encode(), self.ttl_s])
            for person, state in changed.items()])
        raced = {person for person, ok in zip(changed, written, strict=True) if not ok}
        for n, m in enumerate(messages):
            if m.person in raced:
                verdicts[n] = await self.check_and_reserve(
                    policy, person=m.person, channel=m.channel, purpose=m.purpose, template=m.template,
                    now_ms=now_ms, message_id=m.id, addresses=addresses[m.id])
        return verdicts

    def outcome_commands(self, pipe, person: str, outcome: dict) -> None:
        """Queue the commands that keep one outcome into `pipe` (batched writes)."""
        key = self.keys.contact_outcomes(person)
        pipe.lpush(key, orjson.dumps(outcome))
        pipe.ltrim(key, 0, CONTACT_OUTCOMES_MAX - 1)
        pipe.expire(key, self.ttl_s)

    async def record_outcome(self, person: str, outcome: dict) -> None:
        """Keep the person's recent message outcomes (sent, delayed, dropped...)."""
        pipe = self.redis.pipeline(transaction=True)
        self.outcome_commands(pipe, person, outcome)
        await pipe.execute()

    async def outcomes(self, person: str) -> list[dict]:
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.keys.contact_outcomes(person), 0, -1)]

