"""Carries out journeys against Redis: after the pipeline applies a batch it
evaluates triggers, exits and awaited events for the people in it (one
optimistic transaction on each person's journey state), schedules waits and
sends into the due queue, and arms one inactivity timer per idle journey for
each person with a contact address (a timer per anonymous visitor would cost
memory for people no message can reach). The scheduler hands fired timers back
here (`fire`). The decisions are the pure transitions of
engine/followups/transitions.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine.catalog.journeys import JOURNEY_CHANNEL, TRAIT_EVENT, Journey, Journeys
from engine.catalog.rules import Facts
from engine.errors import StoreContention
from engine.events import SEGMENT_RECHECK, Event
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import DueQueue
from engine.followups.inbox import InboxStore
from engine.followups.kpis import KpiStore, KpiTally
from engine.followups.message import Message
from engine.followups.transitions import Actions, Transition, decode_state, encode_state
from engine.policy import CONTACT_TRAITS, ContactState
from engine.store.client import (
    COMPARE_AND_SET,
    MAX_OPTIMISTIC_ATTEMPTS,
    Commands,
    run_commands,
    run_scripts,
)
from engine.store.keys import JOURNEY_STATE_TTL_S

BOOKS_KEPT = 16  # earlier catalog versions' journeys kept in a process
log = logging.getLogger("attimo.journeys")

MAX_DEPTH = 3  # set_trait -> new events -> journeys -> set_trait ... stops here


class Reschedule(Exception):  # noqa: N818 - a signal to the scheduler, not a failure
    """Raised by a timer handler: put this due item back in the queue until `until_ms`."""

    def __init__(self, until_ms: int):
        super().__init__(f"not yet: until {until_ms}")
        self.until_ms = until_ms


def idle_timer(journey: Journey, person: str, last_seen_ms: int) -> Message:
    """One timer per person per inactivity journey; its id never changes, so each
    activity moves the same item forward instead of adding one."""
    return Message(id=f"ji:{journey.id}:{person}", person=person, channel=JOURNEY_CHANNEL,
                   due_ms=last_seen_ms + journey.idle_ms, template=journey.id, purpose="journey",
                   body={"idle": journey.id})


class JourneyRunner:
    """Stores come from the process's composition root (engine/runtime.py); a
    runner built without them (tests) makes its own on the profile store's Redis."""

    def __init__(self, pipeline, *, queue: DueQueue | None = None, contacts: ContactStore | None = None,
                 kpis: KpiStore | None = None, inbox: InboxStore | None = None):
        self.pipeline = pipeline
        store = pipeline.store
        self.store = store
        self.redis = store.redis
        self.keys = store.keys
        self.queue = queue or DueQueue(self.redis, self.keys)
        self.contacts = contacts or ContactStore(self.redis, self.keys)
        self.kpis = kpis or KpiStore(self.redis, self.keys, once_ttl_s=store.dedupe_ttl_ms // 1000)
        self.inbox = inbox or InboxStore(self.redis, self.keys)
        self._cas = self.redis.register_script(COMPARE_AND_SET)
        # Set by the composition root: the channel told when a run cannot go on
        # (ATTIMO_ALERT_CHANNEL), and how to get an earlier catalog version
        # (CatalogStore.catalog_of) for runs that entered a journey since edited.
        self.alert_channel = ""
        self.versions: Callable[[int], Awaitable[Any]] | None = None
        self._books: dict[int, Journeys] = {}

    # -- after a batch is applied ------------------------------------------------

    async def after_apply(self, catalog, by_person: dict[str, list[Event]], profiles: dict,
                          entered: dict[str, set[str]], now_ms: int, depth: int) -> list[Actions]:
        book = catalog.journeys
        timers: list[Message] = []
        work: list[tuple[str, Callable[[dict], Actions]]] = []
        facts_of = {person: Facts(catalog, profile, {}, now_ms) for person, profile in profiles.items()}
        states = None  # person -> journey state as read, when read with the contacts
        if book.consent_gates:  # a trigger's `when` or an exit reads it: before choosing whom to look at
            # With everyone's journey state, which _transact_many would read next:
            # one round trip for both.
            states = await self._load_contacts(list(facts_of.items()), with_states=True)
        for person, profile in profiles.items():
            events = by_person.get(person, [])
            if (book.idle and profile.ls and not CONTACT_TRAITS.isdisjoint(profile.t)
                    and any(e.type not in (TRAIT_EVENT, SEGMENT_RECHECK) for e in events)):
                timers.extend(idle_timer(j, person, profile.ls) for j in book.idle)
            segments = entered.get(person, set())
            facts = facts_of[person]
            if (any(book.might_act(e, facts) for e in events)
                    or any(s in book.by_segment for s in segments)
                    or any(j.score_test(facts.score()) for j in book.scored)
                    # An exit condition that holds after this batch (a trait set, a
                    # count reached) ends the run now, not at its next timer.
                    or any(test(facts) for test in book.exit_tests)):
                work.append((person, lambda state, p=person, f=facts, e=events, s=segments:
                             self._on_events(book, p, f, state, e, s, now_ms)))
        if timers:
            await self.queue.arm_many(timers)
        if book.reads_consent and not book.consent_gates and work:  # a step's `if` reads it
            await self._load_contacts([(person, facts_of[person]) for person, _ in work])
        return await self._transact_many(work, now_ms, depth, states)

    async def _load_contacts(self, people: list[tuple[str, Facts]],
                             with_states: bool = False) -> dict[str, bytes | None] | None:
        """The contact states `consent` conditions read, in one round trip;
        `with_states`: each person's journey state too, returned as read."""
        commands = [("GET", self.keys.contact(person)) for person, _ in people]
        if with_states:
            commands += [("GET", self.keys.journeys(person)) for person, _ in people]
        raws = await run_commands(self.redis, commands)
        for (_, facts), raw in zip(people, raws[:len(people)], strict=True):
            facts.contact = ContactState.decode(raw)
        if with_states:
            return {person: raw for (person, _), raw in zip(people, raws[len(people):], strict=True)}
        return None

    def _transition(self, book: Journeys, person: str, facts: Facts, state: dict, now_ms: int) -> Transition:
        return Transition(book, person, facts, state, now_ms, books=self._books, alert_channel=self.alert_channel)

    def _on_events(self, book, person, facts, state, events, segments, now_ms) -> Actions:
        transition = self._transition(book, person, facts, state, now_ms)
        transition.on_events(events, segments)
        return transition.actions

    async def _load_versions(self, book: Journeys, states: list[dict]) -> None:
        """The journeys of the catalog versions that runs in `states` entered,
        where their journey changed since: loaded (compiled once per process)
        before the transitions, which are pure, run."""
        if self.versions is None:
            return
        wanted = {run.get("v") for state in states for jid, run in state["a"].items()
                  if run.get("jd") is not None and jid in book.by_id and book.by_id[jid].digest != run["jd"]}
        for version in wanted - self._books.keys():
            if isinstance(version, int) and version > 0:
                catalog = await self.versions(version)
                if catalog is not None:
                    if len(self._books) >= BOOKS_KEPT:
                        self._books.pop(next(iter(self._books)))
                    self._books[version] = catalog.journeys

    # -- a timer fired in the scheduler ------------------------------------------

    async def fire(self, message: Message, now_ms: int) -> Actions:
        catalog = self.pipeline.catalogs.current
        book = catalog.journeys
        person = message.person
        profile = await self.store.fetch(person)
        facts = Facts(catalog, profile, {}, now_ms)
        if book.reads_consent:
            await self._load_contacts([(person, facts)])
        idle = message.body.get("idle")
        if idle is not None:
            journey = book.by_id.get(idle)
            if journey is None or journey.trigger != "inactive_for" or not profile.ls:
                return Actions()
            due = profile.ls + journey.idle_ms
            if due > now_ms:  # active since the timer was set: wait again from the last activity
                raise Reschedule(due)

            def compute(state) -> Actions:
                transition = self._transition(book, person, facts, state, now_ms)
                transition.on_idle(journey, profile.ls)
                return transition.actions
        else:
            def compute(state) -> Actions:
                transition = self._transition(book, person, facts, state, now_ms)
                transition.on_timer(message.body)
                return transition.actions
        return await self._transact(person, now_ms, 0, compute)

    # -- one person's state, changed atomically ----------------------------------

    async def _transact_many(self, work: list[tuple[str, Callable[[dict], Actions]]], now_ms: int,
                             depth: int, read: dict[str, bytes | None] | None = None) -> list[Actions]:
        """_transact for many people at once in three round trips (read every
        state; schedule every message; compare-and-set every changed state)
        instead of three per person (two when the states were `read` already,
        with the contacts). A person whose state changed meanwhile goes through
        _transact again on their own."""
        if not work:
            return []
        if read is not None:
            raws = [read[person] for person, _ in work]
        else:
            raws = await run_commands(self.redis, [("GET", self.keys.journeys(person)) for person, _ in work])
        states = [decode_state(raw) for raw in raws]
        await self._load_versions(self.pipeline.catalogs.current.journeys, states)
        results: list[Actions] = []
        changed: list[tuple[int, bytes | None, bytes]] = []  # index, state read, state to write
        for n, ((_, compute), raw, state) in enumerate(zip(work, raws, states, strict=True)):
            before = encode_state(state)
            results.append(compute(state))
            after = encode_state(state)
            if after != before:
                changed.append((n, raw, after))
        # Scheduling first: a crash before the states are written loses nothing,
        # the retried batch computes the same message ids.
        await self.queue.schedule_many([m for n, _, _ in changed for m in results[n].messages])
        written = await self._compare_and_set([(work[n][0], raw, after) for n, raw, after in changed])
        raced = {n for (n, _, _), ok in zip(changed, written, strict=True) if not ok}
        for n in raced:
            person, compute = work[n]
            results[n] = await self._transact(person, now_ms, depth, compute,
                                              tried={m.id: m for m in results[n].messages})
        await self._finish([(work[n][0], results[n]) for n in range(len(work)) if n not in raced], now_ms, depth)
        return results

    async def _compare_and_set(self, writes: list[tuple[str, bytes | None, bytes]]) -> list[int]:
        """Several compare-and-sets of journey states in one round trip."""
        return await run_scripts(self.redis, [(self._cas, [self.keys.journeys(person)],
                                               [raw or b"", after, JOURNEY_STATE_TTL_S])
                                              for person, raw, after in writes])

    async def _transact(self, person: str, now_ms: int, depth: int, compute: Callable[[dict], Actions],
                        tried: dict[str, Message] | None = None) -> Actions:
        """Read the state, compute, schedule what it asks (message ids are
        deterministic, so scheduling again is a no-op), then write the state if it
        is still the one read (compare-and-set: no connection held meanwhile, so a
        small pool never deadlocks). Scheduling first means a crash in between
        loses nothing: the retried batch computes the same ids. Messages of an
        attempt that lost a race (`tried`) and that the winning attempt does not
        repeat are discarded."""
        key = self.keys.journeys(person)
        tried = dict(tried or {})
        for _ in range(MAX_OPTIMISTIC_ATTEMPTS):
            raw = await self.redis.get(key)
            state = decode_state(raw)
            await self._load_versions(self.pipeline.catalogs.current.journeys, [state])
            before = encode_state(state)
            actions = compute(state)
            after = encode_state(state)
            if after == before:
                break
            await self.queue.schedule_many(actions.messages)
            if await self._cas(keys=[key], args=[raw or b"", after, JOURNEY_STATE_TTL_S]):
                break
            tried.update((m.id, m) for m in actions.messages)
        else:
            raise StoreContention(f"{key} kept changing: gave up after {MAX_OPTIMISTIC_ATTEMPTS} attempts")
        kept = {m.id for m in actions.messages}
        discarded = [message for message_id, message in tried.items() if message_id not in kept]
        if discarded:
            await self.queue.settle(discarded, [], now_ms)
        await self._finish([(person, actions)], now_ms, depth)
        return actions

    async def _finish(self, done: list[tuple[str, Actions]], now_ms: int, depth: int) -> None:
        """After the states are written: outcomes and KPIs in one round trip,
        the exposures, logs, and the traits the journeys set, applied as one
        batch through the pipeline; the three at once (none reads what another
        writes, and a batch retried after a failure of any repeats none of them:
        the states written say what happened)."""
        writes = [self._write_outcomes(done)]
        events = []
        for person, actions in done:
            for line in actions.log:
                log.info("%s: %s", person, line)
            if actions.traits and depth >= MAX_DEPTH:
                log.warning("%s: set_trait not applied, journeys nested %d deep", person, depth)
            elif actions.traits:
                events += [Event(eid, TRAIT_EVENT, person, now_ms, {}, traits) for eid, traits in actions.traits]
        exposed = {person: (now_ms, "*", actions.exposures) for person, actions in done if actions.exposures}
        if exposed:
            writes.append(self.pipeline.decision_log.exposures.expose(exposed))
        if events:
            writes.append(self.pipeline.apply(events, now_ms, depth=depth + 1))
        await asyncio.gather(*writes)

    async def _write_outcomes(self, done: list[tuple[str, Actions]]) -> None:
        outcomes = [(person, outcome) for person, actions in done for outcome in actions.outcomes]
        entries = [entry for _, actions in done for entry in actions.entries]
        waits = [wait for _, actions in done for wait in actions.waits]
        ended = [end for _, actions in done for end in actions.ended]
        if outcomes or entries or waits or ended:
            commands, tally = Commands(), KpiTally()
            for person, outcome in outcomes:
                self.contacts.outcome_commands(commands, person, outcome)
                self.kpis.outcome(tally, outcome["channel"], outcome.get("journey"), outcome["status"], outcome["id"])
            for journey, run, held in entries:
                self.kpis.entry(tally, journey, run, held)
            for journey, step, change in waits:
                self.kpis.waiting(tally, journey, step, change)
            for journey, run, kind in ended:
                self.kpis.count(tally, "j", journey, kind, run)
            tally.into(commands)
            await run_commands(self.redis, commands.stack)

    async def state(self, person: str) -> dict:
        return decode_state(await self.redis.get(self.keys.journeys(person)))


def internal_senders(runner: JourneyRunner, clock: Callable[[], int]) -> dict:
    """The scheduler's senders that stay inside Attimo: journey timers and the inbox."""
    inbox = runner.inbox

    async def advance(message: Message, values: dict) -> None:
        await runner.fire(message, clock())

    async def deliver(message: Message, values: dict) -> None:
        await inbox.add(message, clock())

    return {JOURNEY_CHANNEL: advance, "inbox": deliver}
