"""Segments kept as audiences: which ones the pipeline tracks (`track: true`),
where their changes go (`destinations:` webhooks and customer-list exports),
and when time alone can change a person's segments, so a window emptying or an
idle spell moves them out (or in) without an event and without a scan of every
profile. Pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from engine.catalog.rules import Compiler
from engine.catalog.windows import MINUTE_MS, parse_duration

SEGMENT_FIELDS = ("id", "description", "when", "track", "destinations")
DESTINATION_KINDS = ("webhook", "export")
WEBHOOK_FIELDS = ("url", "channel", "batch", "attempts", "include_person")
EXPORT_FIELDS = ("format", "shape", "every")
FORMATS = ("csv", "jsonl")
# Column names of a customer-list file: Google Customer Match's template,
# Meta Custom Audiences', or Attimo's own with the person id.
SHAPES = ("plain", "google", "meta")
DESTINATION_ID = re.compile(r"[a-z0-9_\-]{1,64}")
MAX_BATCH = 5000
MAX_ATTEMPTS = 50
MIN_EXPORT_EVERY_MS = 5 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one tracked segment's people go. `webhook`: every entry and exit,
    batched, signed and retried; `export`: the whole segment as a customer
    list, on demand and, with `every_ms`, on a schedule into ATTIMO_EXPORT_DIR."""

    id: str
    segment: str
    kind: str
    url: str | None = None
    channel: str | None = None  # a webhook channel of ATTIMO_WEBHOOK_URLS, instead of a url
    batch: int = 500
    attempts: int = 12
    include_person: bool = False
    format: str = "csv"
    shape: str = "plain"
    every_ms: int = 0


@dataclass(frozen=True, slots=True)
class Audiences:
    tracked: frozenset[str] = frozenset()
    destinations: tuple[Destination, ...] = ()
    # What time alone can change in a segment (rules.Compiler.clock): ("window",
    # feature id, buckets), ("idle", ms after last seen), ("score", threshold), ("hour",).
    clock: frozenset = frozenset()

    def of_segment(self, segment: str) -> list[Destination]:
        return [d for d in self.destinations if d.segment == segment]

    @property
    def webhooks(self) -> list[Destination]:
        return [d for d in self.destinations if d.kind == "webhook"]


def compile_audiences(segment_specs: list[tuple[str, dict]], compiler: Compiler) -> Audiences:
    tracked, destinations, seen = set(), [], set()
    for path, seg in segment_specs:
        for key in seg:
            if key not in SEGMENT_FIELDS:
                compiler.problem(f"{path}.{key}", f"unknown field; expected {', '.join(SEGMENT_FIELDS)}")
        track = seg.get("track", False)
        if not isinstance(track, bool):
            compiler.problem(f"{path}.track", "true or false")
            track = False
        specs = seg.get("destinations", [])
        if not isinstance(specs, list):
            compiler.problem(f"{path}.destinations", "a list of destinations, each with an id and webhook or export")
            specs = []
        if specs and not track:
            compiler.problem(f"{path}.destinations", "only a tracked segment (track: true) has destinations")
        if track:
            tracked.add(seg["id"])
        for i, spec in enumerate(specs):
            made = _destination(spec, seg["id"], f"{path}.destinations[{i}]", compiler)
            if made is None:
                continue
            if made.id in seen:
                compiler.problem(f"{path}.destinations[{i}].id", f"duplicate destination id {made.id!r}")
                continue
            seen.add(made.id)
            destinations.append(made)
    return Audiences(frozenset(tracked), tuple(destinations), frozenset(compiler.clock or ()))


def _destination(spec: Any, segment: str, path: str, compiler: Compiler) -> Destination | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
        compiler.problem(path, "a destination is {id, webhook: {url, …}} or {id, export: {format, …}}")
        return None
    if not DESTINATION_ID.fullmatch(spec["id"]):
        compiler.problem(f"{path}.id", "1 to 64 of a-z 0-9 _ -")
        return None
    kinds = [k for k in DESTINATION_KINDS if k in spec]
    extra = set(spec) - {"id", *DESTINATION_KINDS}
    if extra:
        compiler.problem(f"{path}.{sorted(extra)[0]}", "unknown field; expected id and webhook or export")
    if len(kinds) != 1 or not isinstance(spec[kinds[0]], dict):
        compiler.problem(path, "exactly one of webhook: {url, …} or export: {format, …}")
        return None
    kind, body = kinds[0], spec[kinds[0]]
    allowed = WEBHOOK_FIELDS if kind == "webhook" else EXPORT_FIELDS
    for key in body:
        if key not in allowed:
            compiler.problem(f"{path}.{kind}.{key}", f"unknown field; expected {', '.join(allowed)}")
    problems = len(compiler.problems)
    if kind == "webhook":
        url, channel = body.get("url"), body.get("channel")
        if (url is None) == (channel is None):
            compiler.problem(f"{path}.webhook", "url: <an http(s) URL> or channel: <a channel of ATTIMO_WEBHOOK_URLS>")
        elif url is not None:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                compiler.problem(f"{path}.webhook.url", "an absolute http(s) URL")
        elif not isinstance(channel, str) or not DESTINATION_ID.fullmatch(channel):
            compiler.problem(f"{path}.webhook.channel", "the name of a webhook channel (a-z 0-9 _ -)")
        batch = _whole(body.get("batch", 500), f"{path}.webhook.batch", 1, MAX_BATCH, compiler)
        attempts = _whole(body.get("attempts", 12), f"{path}.webhook.attempts", 1, MAX_ATTEMPTS, compiler)
        include = body.get("include_person", False)
        if not isinstance(include, bool):
            compiler.problem(f"{path}.webhook.include_person", "true or false")
        if len(compiler.problems) > problems:
            return None
        return Destination(spec["id"], segment, kind, url=url, channel=channel, batch=batch, attempts=attempts,
                           include_person=include)
    fmt, shape = body.get("format", "csv"), body.get("shape", "plain")
    if fmt not in FORMATS:
        compiler.problem(f"{path}.export.format", f"one of {', '.join(FORMATS)}")
    if shape not in SHAPES:
        compiler.problem(f"{path}.export.shape", f"one of {', '.join(SHAPES)}")
    every_ms = 0
    if "every" in body:
        try:
            every_ms = parse_duration(body["every"])
        except ValueError as exc:
            compiler.problem(f"{path}.export.every", str(exc))
        else:
            if every_ms < MIN_EXPORT_EVERY_MS:
                compiler.problem(f"{path}.export.every", "at least 5m")
    if len(compiler.problems) > problems:
        return None
    return Destination(spec["id"], segment, kind, format=fmt, shape=shape, every_ms=every_ms)


def _whole(value: Any, path: str, low: int, high: int, compiler: Compiler) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        compiler.problem(path, f"a whole number from {low} to {high}")
        return low
    return value


def next_change_ms(catalog, profile, now_ms: int) -> int | None:
    """The earliest moment after `now_ms` when time alone could change this
    person's segments, or None when nothing in them moves with time. Never
    late, sometimes early: a recheck that finds nothing changed costs one read."""
    clock = catalog.audiences.clock
    if not clock:
        return None
    soonest = math.inf
    score_parts = None
    for source in clock:
        kind = source[0]
        if kind == "window":
            feature = catalog.features.get(source[1])
            ring = profile.w.get(source[1]) if feature is not None else None
            if ring:
                soonest = min(soonest, _window_moves(ring, now_ms, feature.resolution_ms, source[2]))
        elif kind == "idle":
            if profile.ls and profile.ls + source[1] > now_ms:
                soonest = min(soonest, profile.ls + source[1])
        elif kind == "score":
            if score_parts is None:
                behaviour = catalog.scoring.behaviour_points(profile.s, now_ms)
                score_parts = (behaviour, catalog.scoring.score(profile, now_ms) - behaviour)
            soonest = min(soonest, _score_crosses(score_parts, source[1], catalog.scoring.half_life_ms, now_ms))
        elif kind == "hour":
            moment = datetime.fromtimestamp(now_ms / 1000, UTC).replace(minute=0, second=0, microsecond=0)
            soonest = min(soonest, int((moment + timedelta(hours=1)).timestamp() * 1000))
    return None if soonest == math.inf else int(soonest)


def _window_moves(ring: list, now_ms: int, resolution_ms: int, buckets: int) -> float:
    """When the oldest non-zero bucket still inside a window of `buckets` falls out."""
    newest = ring[0]
    oldest_inside = now_ms // resolution_ms - buckets + 1
    found = math.inf
    for age, value in enumerate(ring[1:]):
        bucket = newest - age
        if bucket < oldest_inside:
            break
        if value:
            found = (bucket + buckets) * resolution_ms
    return found


def _score_crosses(parts: tuple[float, float], threshold: float, half_life_ms: int, now_ms: int) -> float:
    """When a score whose behaviour part halves every `half_life_ms` falls to
    `threshold` (trait points stay); inf when it never will."""
    behaviour, fixed = parts
    target = threshold - fixed
    if not half_life_ms or behaviour <= 0 or target <= 0 or behaviour <= target:
        return math.inf
    return now_ms + math.ceil(half_life_ms * math.log2(behaviour / target)) + 1
