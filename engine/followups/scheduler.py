"""The follow-up scheduler: claims due messages with a lease, applies the contact
policy at send time, records the idempotency key, sends through the channel and
acknowledges. Time comes from an injected clock so tests move it at will.
Its Prometheus metrics (lateness, queue depth, dead letters) are exported by the
process it runs in: `attimo serve`'s /metrics when embedded."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from prometheus_client import Counter, Gauge, Histogram

from engine.catalog.journeys import JOURNEY_CHANNEL
from engine.clock import now_ms
from engine.errors import AddressRefused, PermanentSendError, SendError
from engine.followups.contacts import ContactStore
from engine.followups.due_queue import LEASE_LOST, NOT_IN_FLIGHT, Claimed, Delay, DueQueue
from engine.followups.journey_runner import Reschedule
from engine.followups.kpis import KpiStore, KpiTally, message_journey
from engine.followups.message import Message
from engine.policy import Caps, ContactPolicy
from engine.settings import Settings
from engine.store.client import Commands, run_commands
from engine.store.coalesce import Coalesced
from engine.store.keys import DEAD_LETTERS_MAX

if TYPE_CHECKING:
    from engine.catalog.model import Catalog, CatalogHolder

log = logging.getLogger("attimo.scheduler")

Clock = Callable[[], int]  # epoch ms
Sender = Callable[[Message, dict], Awaitable[object]]

RETRY_BASE_MS = 30_000  # a failed send is retried through the queue, doubling each time
MAX_SEND_ATTEMPTS = 5
QUEUE_REPORT_S = 5.0  # how often the queue gauges are read

LATENESS_SECONDS = Histogram(
    "attimo_scheduler_lateness_seconds", "From when a message was due in the queue to its claim",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0))
# Every scheduler reads the same queue: with several API workers the largest report stands.
QUEUE_DEPTH = Gauge("attimo_scheduler_queue_depth", "Messages waiting in the due queue, due now or later",
                    multiprocess_mode="livemax")
OLDEST_OVERDUE = Gauge("attimo_scheduler_oldest_overdue_seconds",
                       "How long past its due time the oldest overdue message has waited (0: none)",
                       multiprocess_mode="livemax")
SENT = Counter("attimo_scheduler_sent_total", "Messages sent")
DEAD_LETTERED = Counter("attimo_scheduler_dead_lettered_total", "Messages that failed for good, dead-lettered")


@dataclass
class SchedulerStats:
    claimed: int = 0
    sent: int = 0
    dropped: int = 0
    delayed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    redelivered: int = 0  # a send of this id had started before: a possible duplicate
    cancelled: int = 0
    lease_lost: int = 0  # a claim waited past its lease before its send began: not sent by this one
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Settle:
    """Writes that end messages: acks, delays back to due, outcomes, dead letters."""

    acks: list[Message] = field(default_factory=list)
    delays: list[Delay] = field(default_factory=list)
    outcomes: list[tuple[str, dict]] = field(default_factory=list)  # person, outcome
    dead: list[bytes] = field(default_factory=list)  # dead-letter entries
    alerts: list[Message] = field(default_factory=list)  # operator alerts to queue
    suppress: list[tuple[str, str]] = field(default_factory=list)  # (channel, address) that bounced

    def __bool__(self) -> bool:
        return bool(self.acks or self.delays or self.outcomes or self.dead or self.alerts or self.suppress)

    def extend(self, other: _Settle) -> None:
        self.acks += other.acks
        self.delays += other.delays
        self.outcomes += other.outcomes
        self.dead += other.dead
        self.alerts += other.alerts
        self.suppress += other.suppress


class Scheduler:
    """Works in batches: one claim, one read of the contact states and one
    compare-and-set of the changed ones; then each message is marked begun, sent
    and acknowledged with its outcome, the marks and acks of messages that reach
    that point together sharing a round trip (Coalesced). `run` claims the next
    batch while earlier ones are still sending."""

    def __init__(self, queue: DueQueue, contacts: ContactStore, policy: ContactPolicy,
                 senders: dict[str, Sender], *, clock: Clock = now_ms,
                 lease_ms: int = 60_000, batch: int = 100, concurrency: int = 32, overlap: int = 3,
                 alert_channel: str = "", catalogs: CatalogHolder | None = None,
                 kpis: KpiStore | None = None):
        self.queue = queue
        self.contacts = contacts
        self.policy = policy  # from settings: what the catalog's contact_policy leaves out
        self.catalogs = catalogs  # None: the settings' policy alone
        self._catalog_policy: tuple[Catalog, ContactPolicy] | None = None  # the last one built, and for what
        self.senders = senders
        self.clock = clock
        self.lease_ms = lease_ms
        self.batch = batch
        self.overlap = overlap  # batches in hand at once in `run`
        self.alert_channel = alert_channel  # where delivery failures are reported ("" = nowhere)
        self.limit = asyncio.Semaphore(concurrency)
        self.stats = SchedulerStats()
        self.kpis = kpis or KpiStore(queue.redis, queue.keys)
        # Each send is marked begun right before it starts and acknowledged as
        # soon as it is done (the shorter that gap, the fewer duplicates a crash
        # causes), and both cost few round trips: see Coalesced.
        self.begin = Coalesced(lambda items: self.queue.begin_send_many(items, self.clock(), self.lease_ms))
        self.commit = Coalesced(self._settle_parts)

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many items were claimed."""
        now = self.clock()
        claimed = await self.queue.claim(now, self.batch, self.lease_ms)
        self._claimed(claimed, now)
        if claimed:
            await self.process_batch(claimed)
        return len(claimed)

    async def run(self, stop: asyncio.Event, poll_ms: float = 100.0) -> None:
        """Loop until `stop` is set, with up to `overlap` batches in hand; sleeps
        only when nothing was due. Batches in hand finish before it returns."""
        running: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                if len(running) < self.overlap:
                    now = self.clock()
                    claimed = await self.queue.claim(now, self.batch, self.lease_ms)
                    self._claimed(claimed, now)
                    if claimed:
                        running.add(asyncio.create_task(self.process_batch(claimed)))
                        continue
                waits = [*running, asyncio.ensure_future(stop.wait())]
                done, _ = await asyncio.wait(waits, timeout=poll_ms / 1000 if len(running) < self.overlap else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                waits[-1].cancel()
                for task in done & running:
                    running.discard(task)
                    task.result()  # a batch that failed (Redis down) ends the loop with its error
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _claimed(self, claimed: list[Claimed], now: int) -> None:
        self.stats.claimed += len(claimed)
        for item in claimed:
            LATENESS_SECONDS.observe(max(0, now - item.due_at_ms) / 1000)

    async def process(self, item: Claimed) -> str:
        """One claimed item on its own; returns what happened to it."""
        [status] = await self.process_batch([item])
        return status

    def current_policy(self) -> ContactPolicy:
        """The catalog in force's contact_policy over the settings' policy: a
        catalog reload changes the policy from the next batch on."""
        catalog = self.catalogs.current if self.catalogs is not None else None
        if catalog is None or not catalog.contact_policy:
            return self.policy
        if self._catalog_policy is None or self._catalog_policy[0] is not catalog:
            self._catalog_policy = (catalog, dataclasses.replace(self.policy, **catalog.contact_policy))
        return self._catalog_policy[1]

    async def process_batch(self, claimed: list[Claimed]) -> list[str]:
        settle = _Settle()  # what the batch decided before sending: drops, delays, dead letters
        status: list[str | None] = [None] * len(claimed)
        for n, item in enumerate(claimed):
            if item.message.channel not in self.senders:
                status[n] = self._dead_letter(item.message, f"no channel configured for {item.message.channel}",
                                              settle)
        # The policy passed before a crash if a send had begun: the receiver
        # dedupes on the idempotency key, so sending again is safe.
        judged = [n for n, item in enumerate(claimed) if status[n] is None and item.sent_before_ms is None
                  and item.message.channel != JOURNEY_CHANNEL]
        verdicts = await self.contacts.check_and_reserve_many(
            self.current_policy(), [claimed[n].message for n in judged], self.clock())
        for n, verdict in zip(judged, verdicts, strict=True):
            message = claimed[n].message
            if verdict.action == "drop":
                self.stats.dropped += 1
                self._outcome(message, "dropped", verdict.reason, settle)
                settle.acks.append(message)
                status[n] = "dropped"
            elif verdict.action == "delay":
                self.stats.delayed += 1
                self._outcome(message, "delayed", verdict.reason, settle, until=verdict.until_ms)
                settle.delays.append(Delay(message, verdict.until_ms))
                status[n] = "delayed"
        sending = [n for n in range(len(claimed)) if status[n] is None]
        sent = await asyncio.gather(self._commit(settle), *(self._send(claimed[n]) for n in sending))
        for n, result in zip(sending, sent[1:], strict=True):
            status[n] = result
        return status

    async def _commit(self, settle: _Settle) -> None:
        if settle:
            await self.commit(settle)

    async def _send(self, item: Claimed) -> str:
        settle = _Settle()
        async with self.limit:
            status = await self._send_one(item, settle)
        await self._commit(settle)
        return status

    async def _send_one(self, item: Claimed, settle: _Settle) -> str:
        message = item.message
        mark = await self.begin(item)
        if mark == NOT_IN_FLIGHT:  # cancelled (an unsubscribe) or acked by another scheduler meanwhile
            self.stats.cancelled += 1
            return "cancelled"
        if mark == LEASE_LOST:  # waited for a send slot past the lease: another scheduler has it, or will
            self.stats.lease_lost += 1
            return "lease_lost"
        if mark > 0:
            self.stats.redelivered += 1
        try:
            await self.senders[message.channel](message, message.body.get("values", {}))
        except Reschedule as again:  # an inactivity timer that activity pushed forward
            settle.delays.append(Delay(message, again.until_ms, clear_send_mark=True))
            return "rescheduled"
        except AddressRefused as exc:  # a hard bounce: never again to this address
            settle.suppress.append((exc.channel, exc.address))
            return self._dead_letter(message, str(exc), settle)
        except PermanentSendError as exc:
            return self._dead_letter(message, str(exc), settle)
        except Exception as exc:  # noqa: BLE001 - any failure of a channel is retried, then dead-lettered
            reason = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
            if item.attempts >= MAX_SEND_ATTEMPTS:
                return self._dead_letter(message, reason, settle)
            self.stats.retried += 1
            self._outcome(message, "retrying", reason, settle)
            settle.delays.append(Delay(message, self.clock() + RETRY_BASE_MS * 2 ** (item.attempts - 1),
                                       clear_send_mark=True, failed_send=True))
            return "retrying"
        self.stats.sent += 1
        SENT.inc()
        self._outcome(message, "sent", "ok", settle)
        settle.acks.append(message)
        return "sent"

    def _outcome(self, message: Message, status: str, reason: str, settle: _Settle, **extra) -> None:
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        if message.channel == JOURNEY_CHANNEL:
            return  # a journey's own timer, not a message to the person
        journey = message_journey(message.body)
        settle.outcomes.append((message.person, {
            "id": message.id, "channel": message.channel, "template": message.template,
            **({"journey": journey} if journey else {}),
            "status": status, "reason": reason, "at": self.clock(), **extra}))

    def _dead_letter(self, message: Message, reason: str, settle: _Settle) -> str:
        self.stats.dead_lettered += 1
        DEAD_LETTERED.inc()
        settle.dead.append(orjson.dumps({"message": orjson.loads(message.encode()), "reason": reason,
                                         "at": self.clock()}))
        self._outcome(message, "dead_letter", reason, settle)
        settle.acks.append(message)
        alert = self._delivery_alert(message, reason)
        if alert is not None:
            settle.alerts.append(alert)
        return "dead_letter"

    def _delivery_alert(self, message: Message, reason: str) -> Message | None:
        """A message that failed for good is a human's problem (SCENARIOS 12):
        queue an alert for the operator channel, once per failed message (its id
        derives from the failed one). An alert that fails itself raises none."""
        if (not self.alert_channel or self.alert_channel not in self.senders
                or message.channel in (self.alert_channel, JOURNEY_CHANNEL)):
            return None
        return Message(id=f"alert:{message.id}", person=message.person, channel=self.alert_channel,
                       due_ms=self.clock(), template="delivery_failed", purpose="operations",
                       body={"alert": "delivery_failed", "failed_message": message.id,
                             "failed_channel": message.channel, "failed_template": message.template,
                             "reason": reason,
                             "text": f"{message.channel} message {message.id} to {message.person} "
                                     f"failed for good: {reason}"})

    async def _settle_parts(self, parts: list[_Settle]) -> list[None]:
        """Outcomes and dead letters, then acks and delays, in one or two round
        trips. A dead letter is written before its ack (never acked and lost);
        without one both go at once."""
        settle = _Settle()
        for part in parts:
            settle.extend(part)
        writes = []
        if settle.outcomes or settle.dead or settle.suppress:
            commands, tally = Commands(), KpiTally()
            for channel, address in settle.suppress:
                self.contacts.suppress_commands(commands, channel, address)
            for person, outcome in settle.outcomes:
                self.contacts.outcome_commands(commands, person, outcome)
                self.kpis.outcome(tally, outcome["channel"], outcome.get("journey"), outcome["status"],
                                  outcome["id"])
            tally.into(commands)
            if settle.dead:
                key = self.queue.keys.dead_letters()
                commands.lpush(key, *settle.dead)
                commands.ltrim(key, 0, DEAD_LETTERS_MAX - 1)
            writes.append(run_commands(self.queue.redis, commands.stack))
        if settle.dead and writes:
            await writes.pop()
        writes.append(self.queue.settle(settle.acks, settle.delays, self.clock(), schedule=settle.alerts))
        await asyncio.gather(*writes)
        return [None] * len(parts)


async def report_queue(queue: DueQueue, clock: Clock = now_ms) -> dict[str, int]:
    """Set the queue gauges from one read of every shard."""
    figures = await queue.depth_and_lateness(clock())
    QUEUE_DEPTH.set(figures["depth"])
    OLDEST_OVERDUE.set(figures["lateness_ms"] / 1000)
    return figures


def policy_from_settings(settings: Settings) -> ContactPolicy:
    """The contact policy from ATTIMO_CONTACT_CAPS, ATTIMO_QUIET_HOURS ...: what
    applies where the catalog has no contact_policy section (or leaves a key out)."""
    caps = {channel: Caps(day, week) for channel, day, week in settings.contact_caps}
    quiet_start, quiet_end = settings.quiet_hours or (None, None)
    return ContactPolicy(channel_caps={k: v for k, v in caps.items() if k != "total"},
                         total_caps=caps.get("total", Caps()), quiet_start_hour=quiet_start,
                         quiet_end_hour=quiet_end, quiet_action=settings.quiet_action,
                         repeat_window_ms=settings.repeat_window_s * 1000)
