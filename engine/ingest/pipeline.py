"""The transport-free batch pipeline: validated events in, profiles updated in
Redis. The API's inline path calls it before answering 202; a stream worker can
call it with the events of a consumed batch. Every person's profile and applied
ids are read in one round trip, the events applied here (engine/profile.py),
and the profiles written back in a second by compare-and-set, so dedupe and
every update stay atomic per person while Redis only compares and copies."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import msgspec

from engine.audiences.lookup import PeopleLookup
from engine.audiences.membership import ENTER, EXIT, Change, MembershipStore
from engine.catalog.audiences import next_change_ms
from engine.catalog.journeys import TRAIT_EVENT
from engine.catalog.model import Catalog, CatalogHolder
from engine.catalog.rules import SESSION_GAP_MS
from engine.decisions.ids import DecisionSigner, Ticket
from engine.events import (
    ADS_CHANNEL,
    ADVERTISING,
    ANONYMOUS,
    CONSENT,
    KNOWN,
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    SEGMENT_RECHECK,
    TIMEZONE_TRAIT,
    Event,
)
from engine.followups.journey_runner import JourneyRunner
from engine.followups.kpis import CLICK, IMPRESSION, PURCHASE, discount_cost_of, revenue_of
from engine.outcomes.exposures import EXPERIMENT, Credit, ExposureStore
from engine.outcomes.learning import LearningStore, Lesson
from engine.outcomes.log import DecisionLog
from engine.policy import CONTACT_TRAITS, SUPPRESSIBLE_CHANNELS, consent_given, suppression_address
from engine.profile import apply_ops, decode_profile, encode_profile, prune_rings
from engine.store.client import Commands, run_commands
from engine.store.people_index import PeopleIndex
from engine.store.profiles import ProfileStore

_encode = msgspec.msgpack.encode
log = logging.getLogger("attimo.pipeline")
BOUNCES = ("bounce", "complaint")
# Events that change a profile without being the person's activity.
PASSIVE = frozenset({TRAIT_EVENT, SEGMENT_RECHECK})


def event_id_hash(event_id: str) -> bytes:
    """8 bytes stored per applied event instead of the id itself (P7 counts bytes);
    a collision needs ~4 billion ids for one person within the dedupe window."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).digest()


@dataclass(slots=True)
class ApplyResult:
    accepted: int = 0
    duplicates: int = 0
    merged: int = 0
    conflicts: int = 0  # people whose profile another writer changed between the read and the write
    cancelled: int = 0  # queued messages cancelled by consent withdrawals
    segment_changes: dict[str, tuple[list, list]] = field(default_factory=dict)
    journey_actions: list = field(default_factory=list)  # engine.followups.transitions.Actions, one per person evaluated


# A person's rings are pruned against the catalog (features it dropped, buckets
# wholly outside their window) in one batch out of PRUNE_EVERY, chosen by the
# first event's id hash: repeatable, and a person who keeps sending is pruned
# about that often. Between prunes a ring still never grows past its length.
PRUNE_EVERY = 8


def event_ops(catalog: Catalog, event: Event) -> list:
    """What one event does to a profile, as data for the Lua script: [ts, traits
    to set | False, traits to unset | False, ring increments, score points,
    1 if it is the person's activity]."""
    props = event.properties
    increments = [
        [feature.fid, event.ts // feature.resolution_ms, amount, feature.length]
        for feature, amount in catalog.counted(event.type, props)
    ]
    to_set: dict | bool = False
    to_unset: list | bool = False
    if event.traits:
        to_set = {k: v for k, v in event.traits.items() if v is not None} or False
        to_unset = [k for k, v in event.traits.items() if v is None] or False
    points = catalog.scoring.event_points(event.type, props)
    return [event.ts, to_set, to_unset, increments, points, 0 if event.type in PASSIVE else 1]


class Pipeline:
    def __init__(self, store: ProfileStore, catalogs: CatalogHolder, decisions: DecisionSigner | None = None,
                 learning: LearningStore | None = None, decision_log: DecisionLog | None = None,
                 membership: MembershipStore | None = None, lookup: PeopleLookup | None = None,
                 **followup_stores):
        """`followup_stores` (queue, contacts, kpis, inbox): the process's own,
        from engine/runtime.py; without them the journey runner makes its own,
        and so for `learning`, `decision_log` and `lookup` (the email and phone
        index). `decisions` checks the decision ids impressions and clicks carry;
        without it only a server's count."""
        self.store = store
        self.catalogs = catalogs
        self.decisions = decisions
        self.journeys = JourneyRunner(self, **followup_stores)
        self.learning = learning or LearningStore(store.redis, store.keys)
        self.decision_log = decision_log or DecisionLog(store.redis, store.keys, ExposureStore(store.redis, store.keys))
        self.membership = membership or MembershipStore(store.redis, store.keys,
                                                        card_ttl_s=store.profile_ttl_ms // 1000)
        self.lookup = lookup or PeopleLookup(PeopleIndex(store.redis, store.keys), cards=self.membership.cards)

    async def apply(self, events: list[Event], now_ms: int, *, depth: int = 0) -> ApplyResult:
        """`depth` > 0: events a journey step made (set_trait), applied from inside a batch."""
        catalog = self.catalogs.current
        store = self.store
        by_person: dict[str, list[Event]] = defaultdict(list)
        merges: dict[tuple[str, str], None] = {}
        for event in events:
            by_person[event.person].append(event)
            # Only an anonymous profile into a known person (engine/ingest/identity.py
            # builds no other; a record from elsewhere gets no more).
            if event.merge_from and event.merge_from.startswith(ANONYMOUS) and event.person.startswith(KNOWN):
                merges[(event.person, event.merge_from)] = None

        people = list(by_person)
        pairs = list(merges)
        merging = {person for person, _ in pairs}
        replies, staged, conflicts = await self._write_profiles(catalog, by_person, pairs, now_ms)
        result = ApplyResult(conflicts=conflicts)
        segment_calls = {}  # person -> the write of their segments
        profiles = {}  # for journeys: duplicates too, so a redelivered batch finishes what a crash cut short
        evaluated = {}  # person -> profile, where segments are tracked
        current = {}  # person -> profile as this batch left it (where the catalog has a use for it)
        tracked = catalog.audiences.tracked
        for person, (accepted, duplicates, profile) in zip(people, replies, strict=False):
            result.accepted += accepted
            result.duplicates += duplicates
            if profile is not None and catalog.journeys:
                profiles[person] = profile
            if profile is not None:  # duplicates too: a retry after a crash before the segment write records it
                current[person] = profile
                if tracked:
                    evaluated[person] = profile
                segments = catalog.segments_of(profile, now_ms)
                if segments != profile.g:
                    result.segment_changes[person] = (list(profile.g), segments)
                    segment_calls[person] = store.set_segments_call(person, profile.v, segments)
        merge_calls, unstage_calls, absorbed, indexed = [], [], [], []
        for (person, anonymous), value in zip(pairs, staged, strict=True):
            if not value:
                continue
            absorbed.append((person, anonymous))
            token, _, anonymous_profile = value.partition(b"|")
            merge_args = [now_ms, store.dedupe_ttl_ms, store.profile_ttl_ms, catalog.scoring.half_life_ms,
                          catalog.feature_table]
            merge_calls.append(store.merge_call(person, merge_args, token, anonymous_profile))
            unstage_calls.append(store.unstage_call(anonymous, value))
            if CONTACT_TRAITS & decode_profile(anonymous_profile).t.keys():  # the known person may take it on
                indexed.append(person)
        if merge_calls:
            merged = await store.run(merge_calls)
            result.merged = sum(merged)
            contacts = self.journeys.contacts
            for (person, anonymous), done in zip(absorbed, merged, strict=True):
                await contacts.absorb(person, anonymous)  # consent given before logging in follows the person
                await store.remember_merge(person, anonymous)  # so erasing the person finds it
                if done:  # the merged history may change the segments (and the version moved on)
                    profile = await store.fetch(person)
                    segments = catalog.segments_of(profile, now_ms)
                    segment_calls.pop(person, None)
                    if segments != profile.g:
                        old = result.segment_changes.get(person, (list(profile.g), None))[0]
                        result.segment_changes[person] = (old, segments)
                        segment_calls[person] = store.set_segments_call(person, profile.v, segments)
            await store.run(unstage_calls)
            if indexed:
                await self.lookup.sync(indexed)
        # Membership before the profile's own record of its segments: a batch
        # cut short in between is found changed again when retried.
        moved = await self._track(catalog, result, by_person, evaluated, now_ms) if tracked else {}
        if segment_calls:
            await store.run(list(segment_calls.values()))
        consents = [event for event in events if event.type == CONSENT]
        if consents:
            result.cancelled = await self._apply_consents(consents, now_ms)
            await self._advertising(catalog, consents, result, evaluated)
        bounced = [event for event in events if event.type in BOUNCES and event.trusted]
        if bounced:
            await self._suppress(bounced)
        zoned = [e for e in events if e.traits and e.traits.get(TIMEZONE_TRAIT)]
        zones = {e.person: e.traits[TIMEZONE_TRAIT] for e in sorted(zoned, key=lambda e: e.ts)}
        if zones:  # the contact policy reads it at send time (quiet hours)
            contacts = self.journeys.contacts
            for person, zone in zones.items():
                await contacts.set_tz(person, zone)
        # A round trip only when an email or phone trait moved; the profiles this
        # batch left are read from what the apply script returned (not a merged
        # person's: theirs changed after).
        await self.lookup.after_apply(events, current, merging)
        if profiles:
            # After consents: a welcome sent for a registration that came with its
            # opt-in finds the consent recorded. Same batch, so exits act at once.
            entered = {person: set(new) - set(old) for person, (old, new) in result.segment_changes.items()}
            seen = {person: by_person.get(person, []) + moved[person] for person in moved} if moved else {}
            result.journey_actions = await self.journeys.after_apply(
                catalog, {**by_person, **seen}, profiles, entered, now_ms, depth)
        if depth == 0:
            tickets = self._tickets(by_person, now_ms)
            await self.journeys.kpis.record_batch(
                by_person, catalog.offers_by_id, lambda person, event: _earned(event, tickets.get(event.id)))
            await self._outcomes(catalog, by_person, tickets, now_ms)
        return result

    async def _write_profiles(self, catalog: Catalog, by_person: dict[str, list[Event]],
                              pairs: list[tuple[str, str]], now_ms: int) -> tuple[list, list, int]:
        """Apply each person's events to their profile: read the profiles and
        which event ids were applied before (one round trip), apply in Python,
        write back what nobody changed meanwhile (one round trip); the rest,
        and the staging of the anonymous profiles to merge (`pairs`), in a
        third. Returns, per person in by_person's order, [accepted,
        duplicates, the profile as written or read (None when there is none,
        or the catalog has no use for it)]; the staged anonymous profiles in
        pairs' order; and how many writes lost their race."""
        store = self.store
        people = list(by_person)
        hashes = {person: [event_id_hash(e.id) for e in by_person[person]] for person in people}
        read = await store.read([(person, hashes[person]) for person in people])
        want_profile = bool(catalog.segments or catalog.journeys)
        replies, writes, written = [], [], []
        cutoff = now_ms - store.dedupe_ttl_ms  # ids applied before this have left the dedupe set
        for at, (person, (raw, scores)) in enumerate(zip(people, read, strict=True)):
            taken, ops = {}, []  # the ids accepted (a dict: in order, found at once)
            for event, id_hash, score in zip(by_person[person], hashes[person], scores, strict=True):
                if (score is not None and float(score) > cutoff) or id_hash in taken:
                    continue
                taken[id_hash] = None
                ops.append(event_ops(catalog, event))
            profile = None
            if ops:
                profile = decode_profile(raw)
                apply_ops(profile, ops, now_ms, catalog.scoring.half_life_ms, SESSION_GAP_MS)
                if hashes[person][0][0] % PRUNE_EVERY == 0:
                    prune_rings(profile, catalog.features, now_ms)
                profile.v += 1
                writes.append(store.write_call(person, raw, encode_profile(profile), now_ms, list(taken)))
                written.append(at)
            elif raw and want_profile:
                profile = decode_profile(raw)
            replies.append([len(ops), len(hashes[person]) - len(ops), profile if want_profile else None])
        # A profile written by someone else since it was read (another API
        # process, a worker, a merge) gets the batch applied by Lua, in Redis;
        # then the anonymous profiles to merge are staged, after every write
        # to them.
        lost = [at for at, done in zip(written, await store.run(writes), strict=True) if not done]
        retries = []
        if lost:
            params = _encode([now_ms, store.dedupe_ttl_ms, store.profile_ttl_ms, catalog.scoring.half_life_ms,
                              SESSION_GAP_MS, 1])
            retries = [store.apply_call(people[at], params, _encode([event_ops(catalog, e) for e in by_person[people[at]]]),
                                        catalog.feature_table, hashes[people[at]]) for at in lost]
        staging = [store.stage_call(anonymous, os.urandom(8).hex()) for _, anonymous in pairs]
        again = await store.run(retries + staging)
        for at, (accepted, duplicates, packed) in zip(lost, again, strict=False):
            replies[at] = [accepted, duplicates, decode_profile(packed) if packed and want_profile else None]
        staged = again[len(lost):]
        return replies, staged, len(lost)

    async def _track(self, catalog: Catalog, result: ApplyResult, by_person: dict[str, list[Event]],
                     evaluated: dict, now_ms: int) -> dict[str, list[Event]]:
        """Tracked segments' entries and exits into their member sets, and each
        evaluated person's next recheck (when time alone may move them). Returns
        the segment_entered / segment_exited events journeys see, with ids
        fixed by the profile version, so a retried batch starts nothing twice."""
        tracked = catalog.audiences.tracked
        changes, moved = [], defaultdict(list)
        journeys = bool(catalog.journeys.by_id)
        for person, (old, new) in result.segment_changes.items():
            was, now = set(old) & tracked, set(new) & tracked
            if was == now:
                continue
            rechecked = all(event.type == SEGMENT_RECHECK for event in by_person.get(person, ()))
            reason = "time" if rechecked else "event"
            version = evaluated[person].v if person in evaluated else 0
            for op, segments in ((ENTER, now - was), (EXIT, was - now)):
                kind = SEGMENT_ENTERED if op == ENTER else SEGMENT_EXITED
                for segment in sorted(segments):
                    changes.append(Change(person, segment, op, reason))
                    if journeys:
                        moved[person].append(Event(f"{kind}:{segment}:{person}:{version}", kind, person, now_ms,
                                                   {"segment": segment, "reason": reason}, trusted=True))
        when = {}
        for person, profile in evaluated.items():
            at = next_change_ms(catalog, profile, now_ms)
            segments = result.segment_changes[person][1] if person in result.segment_changes else profile.g
            if tracked.intersection(segments):  # a profile that expires leaves its segments then
                at = min(at or math.inf, now_ms + self.store.profile_ttl_ms)
            if at is not None or any(event.type == SEGMENT_RECHECK for event in by_person.get(person, ())):
                when[person] = at
        commands = Commands()
        self.membership.schedule(commands, when)
        # Both before the profile's own record of its segments (the caller's next
        # write), one round trip each, at once.
        await asyncio.gather(self.membership.record(changes), run_commands(self.store.redis, commands.stack))
        return moved

    async def _advertising(self, catalog: Catalog, consents: list[Event], result: ApplyResult,
                           evaluated: dict) -> None:
        """Advertising consent (channel ads) given or withdrawn reaches the
        audience card and the tracked segments' destinations."""
        people = {e.person for e in consents if e.properties["channel"] == ADS_CHANNEL
                  and e.properties.get("purpose", "*") in (ADVERTISING, "*")}
        for person in people:
            state = await self.journeys.contacts.load(person)
            granted = consent_given(state, ADS_CHANNEL, ADVERTISING) is True
            if person in result.segment_changes:
                segments = result.segment_changes[person][1]
            else:
                segments = evaluated[person].g if person in evaluated else []
            await self.membership.set_advertising(person, granted, sorted(catalog.audiences.tracked & set(segments)))

    def _tickets(self, by_person: dict[str, list[Event]], now_ms: int) -> dict[str, Ticket]:
        """The verified decision behind each impression and click that names its
        offer: issued to this person, for this offer, judged by the server's
        clock (a client's `ts` could make an old id look fresh)."""
        tickets = {}
        if self.decisions is None:
            return tickets
        for person, events in by_person.items():
            for event in events:
                if event.type in (IMPRESSION, CLICK):
                    ticket = self.decisions.read(event.properties.get("decision_id"), person, now_ms / 1000)
                    if ticket is not None and event.properties.get("offer") in ticket.offers:
                        tickets[event.id] = ticket
        return tickets

    async def _outcomes(self, catalog: Catalog, by_person: dict[str, list[Event]], tickets: dict[str, Ticket],
                        now_ms: int) -> None:
        """What decisions earned: the model's lessons (verified impressions and
        clicks, server purchases), the rewards in the decision log, and the
        conversions, clicks and unsubscribes of hold-out and experiment exposures."""
        lessons, credits = [], []
        for person, events in by_person.items():
            for event in events:
                ticket = tickets.get(event.id)
                if ticket is not None:
                    offer = event.properties["offer"]
                    kind = "i" if event.type == IMPRESSION else "c"
                    lessons.append(Lesson(person, kind, f"{ticket.nonce}:{offer}", offer, ticket.bucket, ticket.nonce))
                    if kind == "c" and (tested := _experiments_showing(catalog, offer)):
                        credits.append(Credit(person, now_ms, ("k",), only=tested))
                elif event.type == PURCHASE and event.trusted:
                    lessons.append(Lesson(person, "p", event.id))
                    credits.append(Credit(person, event.ts, ("c", f"r:{event.id}"), revenue_of(event.properties),
                                          discount_cost_of(catalog.offers_by_id, event.properties)))
                elif event.type == CONSENT and event.properties.get("granted") is False:
                    credits.append(Credit(person, event.ts, ("u",), prefix=EXPERIMENT))
        if lessons and catalog.learning is not None:
            rewards = await self.learning.teach(catalog.learning, lessons, catalog.learnable, now_ms)
            if rewards:
                pipe = self.store.redis.pipeline(transaction=False)
                self.decision_log.rewards(pipe, rewards, now_ms)
                await pipe.execute()
        await self.decision_log.exposures.credit(credits)

    async def _suppress(self, events: list[Event]) -> None:
        """`bounce` and `complaint` events a server sends (from its email or SMS
        provider's webhooks): the address never gets that channel again. A
        browser's are ignored: it could silence anyone's address."""
        contacts = self.journeys.contacts
        pipe = self.store.redis.pipeline(transaction=False)
        for event in events:
            channel = event.properties.get("channel", "email")
            raw = event.properties.get("address")
            address = suppression_address(channel, raw) if isinstance(raw, str) and channel in SUPPRESSIBLE_CHANNELS \
                else None
            if address is None:
                log.warning("%s %s: no %s address to suppress", event.type, event.id, channel)
                continue
            contacts.suppress_commands(pipe, channel, address)
        if len(pipe):
            await pipe.execute()

    async def _apply_consents(self, events: list[Event], now_ms: int) -> int:
        """Consent events set the contact state the scheduler judges at send time
        (after the profile write, so a retried batch sets it again: idempotent;
        each choice carries its event time, so a late replay of an older one
        changes nothing).
        Withdrawing every purpose of a channel (an unsubscribe) also cancels all
        that is queued on it at once; one purpose is enforced at send time."""
        contacts, queue = self.journeys.contacts, self.journeys.queue
        cancelled = 0
        for event in sorted(events, key=lambda e: e.ts):
            props = event.properties
            channel, purpose, granted = props["channel"], props.get("purpose", "*"), props["granted"]
            applied = await contacts.set_consent(event.person, channel, purpose, granted, event.ts)
            if applied and purpose == "*" and not granted:
                cancelled += await queue.cancel(event.person, channel, now_ms)
        return cancelled


def _earned(event: Event, ticket: Ticket | None) -> str | None:
    """What an impression or click counts as in the KPIs: the event, when a
    server sent it; else its decision and offer, when verified, so a replayed
    id counts once."""
    if event.trusted:
        return event.id
    if ticket is None:
        return None
    return f"{ticket.nonce}:{event.properties['offer']}"


def _experiments_showing(catalog: Catalog, offer: str) -> tuple[str, ...]:
    """The exposure fields of the experiments a click on `offer` counts for:
    those running on a placement the offer shows in."""
    placements = catalog.offers_by_id[offer].placements if offer in catalog.offers_by_id else ()
    return tuple(f"{EXPERIMENT}{e.id}" for e in catalog.experiments_by_id.values() if e.placement in placements)
