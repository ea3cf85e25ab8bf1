"""What the Kafka workers of bench_stream applied, read from Redis (each
event's apply time, the score of its id in the person's dedupe set) and from
the workers' Prometheus metrics (how many so far): the figures P4, P5 and the
scale-out comparison are made of."""

from __future__ import annotations

import httpx
import numpy as np
import redis as redis_sync

from engine.events import Event
from engine.ingest.pipeline import event_id_hash
from engine.store.keys import Keys
from engine.testing.processes import wait_until


def apply_times(client: redis_sync.Redis, keys: Keys, sent: dict[str, list[str]]) -> np.ndarray:
    """The apply time (epoch ms) of each event sent, person by person (`sent`:
    person -> event ids), NaN where not applied yet: its score in the person's
    dedupe set, the worker's clock when it began applying the batch of records
    that held it. Read by id: the demo catalog's journeys add events of their
    own (a set_trait) to the same sets, so counting members would finish early."""
    pipe = client.pipeline(transaction=False)
    for person, ids in sent.items():
        pipe.zmscore(keys.dedupe(person), [event_id_hash(event_id) for event_id in ids])
    return np.array([[np.nan if score is None else score for score in scores] for scores in pipe.execute()],
                    dtype=np.float64)


def all_applied(client: redis_sync.Redis, keys: Keys, sent: dict[str, list[str]]) -> tuple[np.ndarray] | None:
    """(apply times,) once every event sent is applied (a tuple: wait_until wants a truth value)."""
    times = apply_times(client, keys, sent)
    return None if np.isnan(times).any() else (times,)


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    wait_until(check, timeout_s, interval_s, what, error=TimeoutError)


def events_applied(ports: list[int]) -> list[float]:
    """Each worker's events applied so far, from its Prometheus metrics (cheaper
    to poll than the dedupe sets, which would take Redis time from the workers)."""
    counts = []
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            counts.append(0.0)
            continue
        counts.append(next((float(line.split()[1]) for line in text.splitlines()
                            if line.startswith("attimo_worker_events_applied_total ")), 0.0))
    return counts


def drain_rate(client: redis_sync.Redis, keys: Keys, events: list[Event], ports: list[int], before: float) -> float:
    """Wait until the workers applied as many more events as `events` than
    `before`, then read each one's apply time: events over the span from the
    first to the last."""
    wait_for(lambda: sum(events_applied(ports)) - before >= len(events), 300, "the workers to drain", 0.25)
    sent: dict[str, list[str]] = {}
    for event in events:
        sent.setdefault(event.person, []).append(event.id)
    [times] = wait_until(lambda: all_applied(client, keys, sent), 60, 0.5, "every event in Redis", error=TimeoutError)
    return times.size / max((times.max() - times.min()) / 1000, 1e-3)
