"""The simulated shop talking to a real Attimo API: its visitors' browsers
(site key, signed user ids) ask for a decision and report impressions and
clicks, its backend (server token) reports purchases and reads KPIs and the
model. One `drive` plays a policy's share of the visits at a paced rate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
import numpy as np

from benchmarks.shop_world import DEVICES, OFFERS, PLACEMENTS, PLANS, Visits, World
from engine.ingest.identity import sign_user_id
from engine.testing.processes import SITE_KEY, SITE_SECRET, TOKEN

OFFER_INDEX = {offer.id: i for i, offer in enumerate(OFFERS)}
NO_OFFER_BASKET = 40.0  # revenue of a purchase no offer led to
MAX_BATCH = 500  # the API's limit of events a request
FLUSH_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Population:
    """A policy's own people: the simulated persons under an id prefix of its own,
    each with the signature the shop's backend would give its browser."""

    ids: list[str]
    sigs: list[str]

    @classmethod
    def named(cls, prefix: str, n_people: int) -> Population:
        ids = [f"{prefix}-{i}" for i in range(n_people)]
        return cls(ids, [sign_user_id(SITE_SECRET, user_id) for user_id in ids])


class ShopApi:
    """One API as the shop sees it. Answers that are not 2xx raise, except on
    the read endpoints, whose absence the benchmark reports as a null figure."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession):
        self.base_url = base_url
        self.session = session
        self.browser_headers = {"X-Attimo-Key": SITE_KEY}
        self.server_headers = {"Authorization": f"Bearer {TOKEN}"}

    async def decide(self, user_id: str, sig: str, placement: str, device: str) -> tuple[str, str | None]:
        body = {"user_id": user_id, "user_sig": sig, "placements": [placement], "context": {"device": device}}
        async with self.session.post(f"{self.base_url}/v1/decide", json=body, headers=self.browser_headers) as answer:
            answer.raise_for_status()
            decision = await answer.json()
        chosen = decision["placements"].get(placement)
        return decision["decision_id"], chosen["offer"] if chosen else None

    async def send(self, events: list[dict], *, server: bool) -> None:
        headers = self.server_headers if server else self.browser_headers
        for start in range(0, len(events), MAX_BATCH):
            body = {"events": events[start:start + MAX_BATCH]}
            async with self.session.post(f"{self.base_url}/v1/events", json=body, headers=headers) as answer:
                if answer.status != 202:
                    raise RuntimeError(f"POST /v1/events answered {answer.status}: {(await answer.text())[:300]}")

    async def read(self, path: str) -> tuple[int, dict | None]:
        """A server-token GET: its status and JSON body (None if not JSON)."""
        async with self.session.get(f"{self.base_url}{path}", headers=self.server_headers) as answer:
            try:
                return answer.status, await answer.json(content_type=None)
            except ValueError:
                return answer.status, None

    async def identify(self, people: Population, plans: np.ndarray) -> None:
        """Each person's plan, as the shop's CRM would send it."""
        await self.send([{"id": f"{user_id}-plan", "type": "identify", "user_id": user_id,
                          "traits": {"plan": PLANS[plan]}} for user_id, plan in zip(people.ids, plans, strict=True)],
                        server=True)


class EventBatches:
    """Events leave in batches every FLUSH_INTERVAL_S: the browsers' first,
    then the backend's purchases, so a purchase reaches the API after the
    impression that led to it, as it would on a real site."""

    def __init__(self, api: ShopApi):
        self.api = api
        self.browser: list[dict] = []
        self.server: list[dict] = []
        self.sent = 0

    async def flush(self) -> None:
        browser, server = self.browser, self.server
        self.browser, self.server = [], []
        if browser:
            await self.api.send(browser, server=False)
        if server:
            await self.api.send(server, server=True)
        self.sent += len(browser) + len(server)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()
        await self.flush()


@dataclass
class Drive:
    """What one policy showed at each visit (-1: nothing) and how it went."""

    shown: np.ndarray
    errors: int = 0
    seconds: float = 0.0


async def drive(api: ShopApi, world: World, visits: Visits, people: Population, rate: float,
                concurrency: int = 32) -> Drive:
    """Visit i starts at t0 + i/rate (or when one of `concurrency` browsers is
    free): decide, then the impression, a click and a purchase as the hidden
    rates and the visit's own coin flips say."""
    result = Drive(np.full(len(visits), -1))
    batches = EventBatches(api)
    stop = asyncio.Event()
    flusher = asyncio.create_task(batches.run(stop))
    free = asyncio.Semaphore(concurrency)
    tasks = set()
    started = time.perf_counter()
    for i in range(len(visits)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await free.acquire()
        task = asyncio.create_task(_visit(api, world, visits, people, i, result, batches))
        tasks.add(task)
        task.add_done_callback(lambda done: (tasks.discard(done), free.release()))
    await asyncio.gather(*tasks)
    stop.set()
    await flusher
    result.seconds = time.perf_counter() - started
    return result


async def _visit(api: ShopApi, world: World, visits: Visits, people: Population, i: int, result: Drive,
                 batches: EventBatches) -> None:
    person = visits.person[i]
    user_id, sig = people.ids[person], people.sigs[person]
    placement = PLACEMENTS[visits.placement[i]]
    try:
        decision_id, offer_id = await api.decide(user_id, sig, placement, DEVICES[visits.device[i]])
    except (aiohttp.ClientError, KeyError, ValueError):
        result.errors += 1
        return
    shown = OFFER_INDEX[offer_id] if offer_id is not None else -1
    result.shown[i] = shown
    click_p, buy_p = world.rates(visits, np.array([i]), np.array([shown]))
    if shown >= 0:
        offer = OFFERS[shown]
        seen = {"offer": offer.id, "decision_id": decision_id, "placement": placement}
        signed = {"user_id": user_id, "user_sig": sig}
        batches.browser.append({"id": f"{user_id}-{i}-imp", "type": "impression", **signed, "properties": seen})
        if visits.u_click[i] < click_p[0]:
            batches.browser.append({"id": f"{user_id}-{i}-click", "type": "click", **signed, "properties": seen})
    if visits.u_buy[i] < buy_p[0]:
        bought = {"revenue": NO_OFFER_BASKET}
        if shown >= 0:
            bought = {"revenue": OFFERS[shown].price, "offer": OFFERS[shown].id}
            if OFFERS[shown].code:
                bought["code"] = OFFERS[shown].code
        batches.server.append({"id": f"{user_id}-{i}-buy", "type": "purchase", "user_id": user_id,
                               "properties": bought})


async def sample_staleness(api: ShopApi, into: list[float], stop: asyncio.Event, every_s: float = 0.5) -> str | None:
    """Read the learned model's snapshot age every `every_s` until `stop`;
    returns why no age could be read, or None."""
    reason = None
    while not stop.is_set():
        status, body = await api.read("/v1/model?placement=home_hero")
        age = snapshot_age_ms(body) if status == 200 else None
        if age is None:
            reason = (f"GET /v1/model answered {status}" if status != 200
                      else f"GET /v1/model has no snapshot age (keys: {sorted(body or {})[:8]})")
        else:
            into.append(age)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return None if into else reason


def snapshot_age_ms(body: dict | None) -> float | None:
    """The spec names a snapshot age without fixing its key: look where it is
    likely to be, in milliseconds or seconds."""
    if not isinstance(body, dict):
        return None
    places = [body, body.get("snapshot") if isinstance(body.get("snapshot"), dict) else {}]
    for place in places:
        for key, scale in (("snapshot_age_ms", 1), ("age_ms", 1), ("snapshot_age_s", 1000), ("age_s", 1000)):
            value = place.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value) * scale
    return None
