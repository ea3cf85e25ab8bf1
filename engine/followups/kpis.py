"""KPIs per journey, channel and offer (SCENARIOS 14): entrants and the
hold-out, sends, opens, clicks, unsubscribes, converters and revenue, and the
uplift of the treated group over the hold-out; per offer, impressions, clicks,
converters, revenue and, for discounts, their cost and ROI.

Counts are HyperLogLogs of ids (run ids, message ids, person ids): adding the
same id twice changes nothing, so a redelivered batch, a retried send or a
pixel loaded twice never counts twice, and each count costs at most 12 KB
whatever the volume (standard error 0.81 %; exact for the small counts of a
test). Revenue is a sum, counted once per purchase event id (a marker key that
lives as long as the event dedupe). Every KPI key is under one hash tag,
`{kpi}`, so the revenue script touches one Redis Cluster slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from engine.catalog.broadcasts import broadcast_of
from engine.clock import now_ms
from engine.decisions.budgets import utc_day
from engine.followups.transitions import decode_state
from engine.store.client import run_scripts
from engine.store.keys import SPENT_DAY_TTL_S, Keys

PURCHASE = "purchase"
REVENUE_PROPERTIES = ("revenue", "value", "total")  # the first numeric one is the purchase's revenue
ATTRIBUTION_MS = 7 * 86_400_000  # a purchase counts for the journeys entered in the 7 days before it

# KEYS[1] once-marker of the purchase event, KEYS[2] the journey's or offer's
# money hash, KEYS[3] the same for the day
# ARGV[1] marker TTL s, ARGV[2] day key TTL s, then pairs: field, amount
# Adds the amounts once per purchase event and journey (or offer). Returns 1 if added.
ADD_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
return 1
"""

# KEYS[1] once-marker of the redemption, KEYS[2] the offer's money hash,
# KEYS[3] the offer's spend of the day (engine/decisions/budgets.py reads it),
# KEYS[4] the offer's money hash of the day
# ARGV[1] marker TTL s, ARGV[2] spend key TTL s, ARGV[3] the discount's cost,
# ARGV[4] day money TTL s, then pairs for KEYS[2] and KEYS[4]: field, amount
# A redeemed discount: its cost to the day's spend and the money, once. Returns 1 if added.
SPEND_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBYFLOAT', KEYS[4], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
redis.call('INCRBYFLOAT', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
return 1
"""

# KEYS: HyperLogLogs (all under {kpi}: one slot), in groups of ARGV[i] keys.
# Returns each group's count (of the union: one person seen on two days is one),
# in order: redis-py refuses PFCOUNT in a cluster pipeline, one script call does not.
COUNT_ALL = """
local out, at = {}, 1
for i, size in ipairs(ARGV) do
  out[i] = redis.call('PFCOUNT', unpack(KEYS, at, at + tonumber(size) - 1))
  at = at + tonumber(size)
end
return out
"""

JOURNEY_COUNTS = ("entered", "held_out", "sent", "dropped", "opened", "clicked", "converted", "converted_control",
                  "finished", "exited", "ended")
# A broadcast's: a journey's, plus what only a whole campaign shows (dead
# letters, and unsubscribes within the attribution window after it).
BROADCAST_COUNTS = JOURNEY_COUNTS + ("dead_letter", "unsubscribed")
CHANNEL_COUNTS = ("sent", "dropped", "dead_letter", "opened", "clicked", "unsubscribed")
OFFER_COUNTS = ("impressions", "viewers", "clicks", "clickers", "converted", "redeemed")
IMPRESSION, CLICK = "impression", "click"  # what the snippet sends for a filled slot
COUPON_PROPERTIES = ("code", "coupon")  # a purchase that names an offer's code used its discount


MAX_AMOUNT = 1e9  # one purchase's revenue above this (or negative) counts as 0
# A pooled code is single-use for ever: its redemption's marker outlives any
# retry of the same order, so the cost is never counted twice.
REDEEMED_ONCE_TTL_S = 400 * 86_400
DAILY_KPI_TTL_S = 400 * 86_400  # a day's counts and sums, for date ranges
MAX_RANGE_DAYS = 400
MAX_DAILY_DAYS = 92  # a range read day by day (`by=day`): a quarter, a report a day


def revenue_of(properties: dict) -> float:
    for name in REVENUE_PROPERTIES:
        value = properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) if 0 <= value <= MAX_AMOUNT else 0.0
    return 0.0


def message_journey(body: dict) -> str | None:
    """The journey a queued message belongs to (webhooks carry it in the body,
    emails among their template values)."""
    journey = body.get("journey") or (body.get("values") or {}).get("journey")
    return journey if isinstance(journey, str) else None


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class KpiTally:
    """A batch's KPI writes merged before they are queued: the methods below
    take it in place of a pipeline, and `into` queues one PFADD a count with
    every id, one EXPIRE a day key and one HINCRBY a waiting step, where a
    journey's batch of a hundred people would otherwise queue about twenty
    commands a person (the same keys each time). The result in Redis is the
    same: a HyperLogLog does not care how its ids arrive, and increments add."""

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}
        self._expiries: dict[str, int] = {}
        self._increments: dict[tuple[str, str], int] = {}

    def pfadd(self, key: str, *ids: str) -> None:
        self._ids.setdefault(key, []).extend(ids)

    def expire(self, key: str, seconds: int) -> None:
        self._expiries[key] = seconds

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self._increments[key, field] = self._increments.get((key, field), 0) + amount

    def into(self, pipe) -> None:
        for key, ids in self._ids.items():
            pipe.pfadd(key, *ids)
        for key, seconds in self._expiries.items():
            pipe.expire(key, seconds)
        for (key, field), amount in self._increments.items():
            if amount:  # a run that started and stopped at a step within the batch
                pipe.hincrby(key, field, amount)


@dataclass
class KpiStore:
    redis: object
    keys: Keys
    once_ttl_s: int = 86_400
    clock: Callable[[], int] = now_ms  # the day a count or a sum is kept under

    def __post_init__(self) -> None:
        self._add_once = self.redis.register_script(ADD_ONCE)
        self._count_all = self.redis.register_script(COUNT_ALL)
        self._spend_once = self.redis.register_script(SPEND_ONCE)

    # -- writing: each method queues commands into a pipeline the caller runs ----
    # (or into a KpiTally, which merges a batch's before they reach one)

    def count(self, pipe, scope: str, name: str, metric: str, *ids: str) -> None:
        """The ids into the total and into the day's count (a date range reads those)."""
        if ids:
            pipe.pfadd(self.keys.kpi(scope, name, metric), *ids)
            day = self.keys.kpi(scope, name, f"{metric}@{utc_day(self.clock())}")
            pipe.pfadd(day, *ids)
            pipe.expire(day, DAILY_KPI_TTL_S)

    def entry(self, pipe, journey: str, run_id: str, held_out: bool) -> None:
        self.count(pipe, "j", journey, "held_out" if held_out else "entered", run_id)

    def waiting(self, pipe, journey: str, step: int, change: int) -> None:
        """Runs now waiting at a journey's step (+1 as one starts, -1 as it stops)."""
        pipe.hincrby(self.keys.kpi("j", journey, "waiting"), str(step), change)

    def outcome(self, pipe, channel: str, journey: str | None, status: str, message_id: str) -> None:
        if status not in ("sent", "dropped", "dead_letter"):
            return
        self.count(pipe, "c", channel, status, message_id)
        if journey is not None and status in ("sent", "dropped"):
            self.count(pipe, "j", journey, status, message_id)
            if status == "sent":
                self.count(pipe, "j", journey, f"sent:{channel}", message_id)
        broadcast = broadcast_of(message_id)
        if broadcast is not None:
            self.count(pipe, "b", broadcast, status, message_id)
            if status == "sent":
                self.count(pipe, "b", broadcast, f"sent:{channel}", message_id)

    def engagement(self, pipe, kind: str, journey: str | None, message_id: str) -> None:
        """An email opened or clicked (kind "opened" / "clicked"), from a signed
        link only (never from an event a client sent): counted once per message."""
        self.count(pipe, "c", "email", kind, message_id)
        if journey is not None:
            self.count(pipe, "j", journey, kind, message_id)
        broadcast = broadcast_of(message_id)  # the id is signed into the link: nobody else's to claim
        if broadcast is not None:
            self.count(pipe, "b", broadcast, kind, message_id)

    def broadcast_entry(self, pipe, tally: KpiTally, broadcast: str, person: str, held_out: bool, due_ms: int,
                        now_ms: int) -> None:
        """A member the broadcast is queued for (or held out of): counted by
        person (into `tally`), and remembered with their due time (the first
        one: a walk done again changes nothing) so a purchase or an unsubscribe
        in the ATTRIBUTION_MS after counts for the broadcast, in the right group."""
        self.count(tally, "b", broadcast, "held_out" if held_out else "entered", person)
        key = self.keys.broadcasts_received(person)
        pipe.hsetnx(key, broadcast, f"{'c' if held_out else 't'}|{due_ms}")
        pipe.pexpire(key, max(due_ms - now_ms, 0) + ATTRIBUTION_MS)

    async def record_unsubscribe(self, person: str, channel: str, now_ms: int) -> None:
        """An unsubscribe (the signed link): for the channel, and for each
        broadcast sent to the person in the ATTRIBUTION_MS before."""
        received = await self.redis.hgetall(self.keys.broadcasts_received(person))
        pipe = self.redis.pipeline(transaction=False)
        self.count(pipe, "c", channel, "unsubscribed", person)
        for broadcast, (at_ms, held) in _received(received).items():
            if not held and 0 <= now_ms - at_ms <= ATTRIBUTION_MS:
                self.count(pipe, "b", broadcast, "unsubscribed", person)
        await pipe.execute()

    def purchase_calls(self, journey: str, control: bool, person: str, event_id: str,
                       revenue: float, pipe, scope: str = "j") -> tuple:
        """Queue the converter into `pipe`; returns the once-only revenue call.
        `scope` "b": `journey` is a broadcast."""
        self.count(pipe, scope, journey, "converted_control" if control else "converted", person)
        token = f"{journey}|{event_id}" if scope == "j" else f"{scope}:{journey}|{event_id}"
        return (self._add_once, [self.keys.kpi_once(token), *self._money_keys(scope, journey, "revenue")],
                [self.once_ttl_s, DAILY_KPI_TTL_S, "revenue_control" if control else "revenue", repr(revenue)])

    def _day_keys(self, scope: str, name: str, metric: str, days: list[str] | None) -> list[str]:
        if days is None:
            return [self.keys.kpi(scope, name, metric)]
        return [self.keys.kpi(scope, name, f"{metric}@{day}") for day in days]

    def _money_keys(self, scope: str, name: str, metric: str) -> list[str]:
        """The total's key and the day's."""
        return [self.keys.kpi(scope, name, metric), self.keys.kpi(scope, name, f"{metric}@{utc_day(self.clock())}")]

    async def record_batch(self, by_person: dict[str, list], offers: dict,
                           earned: Callable[[str, object], str | None]) -> None:
        """After a batch is applied: impressions and clicks of the catalog's
        offers (`offers`: id -> Offer; others are ignored, so a client cannot
        mint KPI keys), then purchases. A purchase counts for every journey the
        person entered (or was held out of) and every offer they saw or clicked
        in the ATTRIBUTION_MS before it, and for a discount offer whose code it
        names. A redelivered batch changes nothing. A batch without impressions,
        clicks or purchases costs nothing.

        Numbers are earned, not sent: an impression or click counts only when
        `earned(person, event)` names what it counts as: one per decision id
        issued to this person for this offer (engine/decisions/ids.py), so a
        replayed id adds nothing, or the event itself when a server sent it;
        None, nothing. A purchase adds
        revenue and conversions only when a server sent it (`event.trusted`).
        A browser's purchase is counted apart, as unverified."""
        pipe, tally = self.redis.pipeline(transaction=False), KpiTally()
        buyers: dict[str, list] = {}
        for person, events in by_person.items():
            seen: dict[str, int] = {}
            for event in events:
                if event.type == PURCHASE:
                    if event.trusted:
                        buyers.setdefault(person, []).append(event)
                    else:
                        self.count(tally, "g", "purchases", "unverified", event.id)
                elif (event.type in (IMPRESSION, CLICK) and isinstance(offer := event.properties.get("offer"), str)
                      and offer in offers and (counted := earned(person, event)) is not None):
                    who = ("impressions", "viewers") if event.type == IMPRESSION else ("clicks", "clickers")
                    self.count(tally, "o", offer, who[0], counted)
                    self.count(tally, "o", offer, who[1], person)
                    seen[offer] = max(seen.get(offer, 0), event.ts)
            if seen:
                pipe.hset(self.keys.offers_seen(person), mapping=seen)
                pipe.pexpire(self.keys.offers_seen(person), ATTRIBUTION_MS)
        if buyers:
            await self._record_purchases(buyers, offers, pipe, tally)
            return
        tally.into(pipe)
        if len(pipe):
            await pipe.execute()

    async def _record_purchases(self, buyers: dict[str, list], offers: dict, pipe, tally: KpiTally) -> None:
        read = self.redis.pipeline(transaction=False)
        for person in buyers:
            read.get(self.keys.journeys(person))
            read.hgetall(self.keys.offers_seen(person))
            read.hgetall(self.keys.broadcasts_received(person))
        answers = iter(await read.execute())
        revenue_calls = []
        for person, bought in buyers.items():
            raw, seen, received = next(answers), next(answers), next(answers)
            campaigns = [("j", journey, entered_at, bool(held))
                         for journey, (entered_at, held) in decode_state(raw)["e"].items()]
            campaigns += [("b", broadcast, at_ms, held) for broadcast, (at_ms, held) in _received(received).items()]
            for scope, name, entered_at, held in campaigns:
                for event in bought:
                    if 0 <= event.ts - entered_at <= ATTRIBUTION_MS:
                        revenue_calls.append(self.purchase_calls(name, held, person, event.id,
                                                                 revenue_of(event.properties), tally, scope))
            seen_at = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in seen.items()}
            for event in bought:
                for offer, saw in _credited_offers(offers, seen_at, event):
                    revenue_calls.append(self.offer_purchase_call(offers[offer], saw, person, event, tally))
        tally.into(pipe)
        await pipe.execute()
        if revenue_calls:
            await run_scripts(self.redis, revenue_calls)

    def offer_purchase_call(self, offer, saw: bool, person: str, event, pipe) -> tuple:
        """Queue the converter (a person who saw or clicked it) and the redemption
        (a purchase naming its code) into `pipe`; returns the once-only call
        adding the revenue and, for a redemption, the discount's cost."""
        if saw:
            self.count(pipe, "o", offer.id, "converted", person)
        revenue = revenue_of(event.properties)
        once = self.keys.kpi_once(f"o:{offer.id}|{event.id}")
        money, money_day = self._money_keys("o", offer.id, "money")
        if _used_code(offer, event.properties):
            self.count(pipe, "o", offer.id, "redeemed", event.id)
            cost = discount_cost(offer, revenue)
            return (self._spend_once, [once, money, self.keys.offer_spent_on(offer.id, utc_day(event.ts)), money_day],
                    [self.once_ttl_s, SPENT_DAY_TTL_S, repr(cost), DAILY_KPI_TTL_S, "revenue", repr(revenue),
                     "discount_cost", repr(cost)])
        return (self._add_once, [once, money, money_day], [self.once_ttl_s, DAILY_KPI_TTL_S, "revenue", repr(revenue)])

    async def record_redemption(self, offer, pool: str, code: str, amount: float, now_ms: int) -> None:
        """A pooled code redeemed through the API (POST /v1/codes/redeem): the
        discount's cost on `amount` (the order's revenue) to the offer's spend
        and KPIs, once per code, however often the same order is retried. The
        revenue itself comes with the server's purchase event, not from here."""
        cost = discount_cost(offer, amount)
        pipe = self.redis.pipeline(transaction=False)
        self.count(pipe, "o", offer.id, "redeemed", f"code:{pool}:{code}")
        await pipe.execute()
        if cost > 0:
            money, money_day = self._money_keys("o", offer.id, "money")
            await self._spend_once(
                keys=[self.keys.kpi_once(f"o:{offer.id}|code:{pool}:{code}"), money,
                      self.keys.offer_spent_on(offer.id, utc_day(now_ms)), money_day],
                args=[REDEEMED_ONCE_TTL_S, SPENT_DAY_TTL_S, repr(cost), DAILY_KPI_TTL_S, "discount_cost", repr(cost)])

    # -- reading ----------------------------------------------------------------

    async def report(self, journeys: list[str], channels: list[str], offers: list[str] = (),
                     broadcasts: list[str] = (), days: list[str] | None = None) -> dict:
        """Totals, or with `days` (YYYY-MM-DD, from days_between) what those days
        counted: distinct ids over the range, sums added."""
        count_keys, money_keys = [], []

        def counted(scope: str, name: str, metric: str) -> None:
            count_keys.append(self._day_keys(scope, name, metric, days))

        def summed(scope: str, name: str, metric: str) -> None:
            money_keys.append(self._day_keys(scope, name, metric, days))

        for broadcast in broadcasts:
            for metric in (*BROADCAST_COUNTS, *(f"sent:{channel}" for channel in channels)):
                counted("b", broadcast, metric)
            summed("b", broadcast, "revenue")
        for journey in journeys:
            for metric in (*JOURNEY_COUNTS, *(f"sent:{channel}" for channel in channels)):
                counted("j", journey, metric)
            summed("j", journey, "revenue")
        for channel in channels:
            for metric in CHANNEL_COUNTS:
                counted("c", channel, metric)
        for offer in offers:
            for metric in OFFER_COUNTS:
                counted("o", offer, metric)
            summed("o", offer, "money")
        counted("g", "purchases", "unverified")
        pipe = self.redis.pipeline(transaction=False)
        for group in money_keys:
            for key in group:
                pipe.hgetall(key)
        for journey in journeys:
            pipe.hgetall(self.keys.kpi("j", journey, "waiting"))
        flat = [key for group in count_keys for key in group]
        [found_counts] = await run_scripts(self.redis, [(self._count_all, flat, [len(g) for g in count_keys])])
        raw_sums = iter(await pipe.execute())
        counts = iter(found_counts)
        sums = iter([_added(next(raw_sums) for _ in group) for group in money_keys])
        waiting = {journey: {int(step): int(n) for step, n in next(raw_sums).items() if int(n) > 0}
                   for journey in journeys}
        out: dict = {"journeys": {}, "channels": {}, "offers": {}, "broadcasts": {}}
        for broadcast in broadcasts:
            found = {metric: next(counts) for metric in BROADCAST_COUNTS}
            by_channel = {channel: n for channel in channels if (n := next(counts))}
            report = _journey_report(found, by_channel, next(sums))
            out["broadcasts"][broadcast] = {**report, "dead_letter": found["dead_letter"],
                                            "unsubscribed": found["unsubscribed"],
                                            "unsubscribe_rate": _rate(found["unsubscribed"], found["sent"])}
        for journey in journeys:
            found = {metric: next(counts) for metric in JOURNEY_COUNTS}
            by_channel = {channel: n for channel in channels if (n := next(counts))}
            out["journeys"][journey] = {**_journey_report(found, by_channel, next(sums)),
                                        "waiting": waiting[journey]}  # step index -> runs waiting there now
        for channel in channels:
            found = {metric: next(counts) for metric in CHANNEL_COUNTS}
            out["channels"][channel] = {**found, "open_rate": _rate(found["opened"], found["sent"]),
                                        "click_rate": _rate(found["clicked"], found["sent"]),
                                        "unsubscribe_rate": _rate(found["unsubscribed"], found["sent"])}
        for offer in offers:
            found = {metric: next(counts) for metric in OFFER_COUNTS}
            out["offers"][offer] = _offer_report(found, next(sums))
        # Purchases a browser sent: kept apart, never in revenue, conversions or ROI.
        out["unverified_purchases"] = next(counts)
        return out

    async def offers_by_day(self, offers: list[str], days: list[str]) -> list[dict]:
        """Each day's offer figures, the day alone ({"day", "offers"}), in order:
        what a chart of the range draws. At most MAX_DAILY_DAYS days."""
        if len(days) > MAX_DAILY_DAYS:
            raise ValueError(f"a range read by day is at most {MAX_DAILY_DAYS} days")
        return [{"day": day, "offers": (await self.report([], [], offers, days=[day]))["offers"]} for day in days]


def _received(raw: dict) -> dict[str, tuple[int, bool]]:
    """Keys.broadcasts_received: broadcast -> (due ms, held out)."""
    out = {}
    for name, value in raw.items():
        group, _, at = (value.decode() if isinstance(value, bytes) else value).partition("|")
        out[name.decode() if isinstance(name, bytes) else name] = (int(at), group == "c")
    return out


def _added(raws) -> dict[str, float]:
    """Money hashes (a total, or one a day) summed field by field."""
    total: dict[str, float] = {}
    for raw in raws:
        for name, value in _money(raw).items():
            total[name] = total.get(name, 0.0) + value
    return total


def days_between(first: str, last: str) -> list[str]:
    """Every UTC day from `first` to `last` (YYYY-MM-DD), both included;
    ValueError naming what is wrong."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    if end < start:
        raise ValueError("to is before from")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise ValueError(f"a range is at most {MAX_RANGE_DAYS} days")
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def _money(raw: dict) -> dict[str, float]:
    return {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in raw.items()}


def discount_cost_of(offers: dict, properties: dict) -> float:
    """What a purchase's discounts cost: for each discount offer whose code it
    names, its percentage of the revenue."""
    if not any(properties.get(name) for name in COUPON_PROPERTIES):
        return 0.0
    revenue = revenue_of(properties)
    return sum(discount_cost(offer, revenue) for offer in offers.values() if _used_code(offer, properties))


def discount_cost(offer, revenue: float) -> float:
    """What a discount gave away on a purchase: its value is a percentage."""
    return revenue * (offer.value or 0) / 100


def _used_code(offer, properties: dict) -> bool:
    code = offer.content.get("code") if isinstance(offer.content, dict) else None
    return (offer.kind == "discount" and isinstance(code, str) and code != ""
            and any(properties.get(name) == code for name in COUPON_PROPERTIES))


def _credited_offers(offers: dict, seen_at: dict[str, int], purchase) -> list[tuple[str, bool]]:
    """The offers a purchase counts for, and whether the buyer saw (or clicked)
    each in the attribution window before it; a discount whose code the
    purchase names counts too, seen or not."""
    credited = {offer_id: True for offer_id, at in seen_at.items()
                if offer_id in offers and 0 <= purchase.ts - at <= ATTRIBUTION_MS}
    if any(purchase.properties.get(name) for name in COUPON_PROPERTIES):  # the only case worth a scan
        for offer_id, offer in offers.items():
            if offer_id not in credited and _used_code(offer, purchase.properties):
                credited[offer_id] = False
    return list(credited.items())


def _offer_report(counts: dict, money: dict) -> dict:
    revenue, cost = money.get("revenue", 0.0), money.get("discount_cost", 0.0)
    return {
        **counts,
        "click_through_rate": _rate(counts["clicks"], counts["impressions"]),
        "conversion_rate": _rate(counts["converted"], counts["viewers"]),
        "revenue": round(revenue, 2), "discount_cost": round(cost, 2),
        # ROI of the discount: what it brought in over what it gave away.
        "roi": round((revenue - cost) / cost, 4) if cost else None,
    }


def _journey_report(counts: dict, by_channel: dict, money: dict) -> dict:
    treated, control = counts["entered"], counts["held_out"]
    treated_rate = _rate(counts["converted"], treated)
    control_rate = _rate(counts["converted_control"], control)
    revenue, revenue_control = money.get("revenue", 0.0), money.get("revenue_control", 0.0)
    return {
        "entered": treated, "held_out": control,
        "sent": counts["sent"], "sent_by_channel": by_channel, "dropped": counts["dropped"],
        "opened": counts["opened"], "clicked": counts["clicked"],
        "open_rate": _rate(counts["opened"], by_channel.get("email", 0)),
        "click_rate": _rate(counts["clicked"], by_channel.get("email", 0)),
        "converted": counts["converted"], "converted_control": counts["converted_control"],
        "conversion_rate": treated_rate, "conversion_rate_control": control_rate,
        # Uplift: what the journey adds over doing nothing, in conversion-rate points.
        "uplift": round(treated_rate - control_rate, 4) if treated_rate is not None and control_rate is not None
        else None,
        "revenue": round(revenue, 2), "revenue_control": round(revenue_control, 2),
        "revenue_per_entrant": round(revenue / treated, 2) if treated else None,
        "revenue_per_entrant_control": round(revenue_control / control, 2) if control else None,
        # How runs ended: at the last step, by an exit, or otherwise (removed, replaced, stranded).
        "finished": counts["finished"], "exited": counts["exited"], "ended": counts["ended"],
    }
