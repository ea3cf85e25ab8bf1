"""A person's export: everything Attimo holds about one person as one JSON
document (`GET /v1/people/{id}/export`, its shape in docs/api.md). `read_held`
reads it from Redis (a round trip for the person's own keys, one slot, then one
each for the due queue, the suppression list, code pools and dead letters);
`export_document` shapes it, with no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from engine.catalog.model import Catalog
from engine.decisions.person_view import journeys_view, person_view
from engine.followups.contacts import person_names
from engine.followups.due_queue import DueQueue
from engine.policy import ContactState, suppression_address
from engine.profile import Profile, decode_profile
from engine.store.keys import Keys

# The traits that hold an address the suppression list may name, and its channel.
ADDRESS_TRAITS = (("email", "email"), ("sms", "phone"))


@dataclass(frozen=True, slots=True)
class Held:
    """What Redis holds about one person, as read."""

    person: str
    profile: Profile
    contact: ContactState
    outcomes: list[dict]
    journeys: dict
    inbox: list[dict]
    devices: dict[str, dict]
    offers_seen: dict[str, int]
    exposures: dict[str, str]
    merged: list[str]
    event_ids: int  # applied event ids kept for dedupe (hashes: only their number means anything)
    merge_staged: bool
    learned: int  # impressions, clicks and purchases that taught the model (markers)
    pending: list[dict]
    dead_letters: list[dict]
    codes: dict[str, str]  # pool -> the code kept for them
    suppressed: frozenset[str]  # the names and addresses of theirs the suppression list holds
    contact_kept: bool = False  # a contact state is stored (even one with no consent)

    def is_empty(self) -> bool:
        return not (self.profile.v or self.contact_kept or self.outcomes or self.journeys.get("a")
                    or self.journeys.get("e") or self.inbox or self.devices or self.offers_seen
                    or self.exposures or self.merged or self.event_ids or self.merge_staged or self.learned
                    or self.pending or self.dead_letters or self.codes)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


def address_candidates(traits: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Per channel, the address a trait holds (normalised) and how the
    suppression list may name it (as written, normalised, and
    "<channel>:<normalised>"), as the send-time check reads it
    (engine/followups/contacts.py message_addresses)."""
    found = {}
    for channel, trait in ADDRESS_TRAITS:
        raw = traits.get(trait)
        normal = suppression_address(channel, raw) if isinstance(raw, str) and raw else None
        if normal is not None:
            found[channel] = (normal, tuple(dict.fromkeys((raw, normal, f"{channel}:{normal}"))))
    return found


async def read_held(redis, keys: Keys, queue: DueQueue, person: str, channels: Sequence[str],
                    pools: Sequence[str]) -> Held:
    pipe = redis.pipeline(transaction=False)  # the person's keys: one slot
    pipe.get(keys.profile(person))
    pipe.get(keys.contact(person))
    pipe.lrange(keys.contact_outcomes(person), 0, -1)
    pipe.get(keys.journeys(person))
    pipe.get(keys.inbox(person))
    pipe.hgetall(keys.devices(person))
    pipe.hgetall(keys.offers_seen(person))
    pipe.hgetall(keys.exposures(person))
    pipe.smembers(keys.merged(person))
    pipe.zcard(keys.dedupe(person))
    pipe.exists(keys.merge_staging(person))
    pipe.zcard(keys.learned(person))
    (profile, contact, outcomes, journeys, inbox, devices, seen, exposures, merged, event_ids, staged,
     learned) = await pipe.execute()
    profile = decode_profile(profile)
    merged = sorted(_text(m) for m in merged)
    everyone = [person, *merged]
    pending = []
    for someone in everyone:  # a timer queued for the visitor before they logged in is theirs too
        pending += [{**m, "person": someone} for m in await queue.pending_for(someone, channels, bodies=True)]
    candidates = [*person_names(person), *(c for _, names in address_candidates(profile.t).values() for c in names)]
    flags = await redis.smismember(keys.suppressed(), candidates)
    codes = {}
    for pool in pools:
        code = await redis.hget(keys.pool_given(pool), person)
        if code is not None:
            codes[pool] = _text(code)
    return Held(
        person=person, profile=profile, contact=ContactState.decode(contact),
        outcomes=[orjson.loads(raw) for raw in outcomes],
        journeys=orjson.loads(journeys) if journeys else {}, inbox=orjson.loads(inbox) if inbox else [],
        devices={_text(token): orjson.loads(raw) for token, raw in devices.items()},
        offers_seen={_text(offer): int(ms) for offer, ms in seen.items()},
        exposures={_text(f): _text(v) for f, v in exposures.items()}, merged=merged, event_ids=event_ids,
        merge_staged=bool(staged), learned=learned, pending=sorted(pending, key=lambda m: m["due_ms"]),
        dead_letters=await _dead_letters(redis, keys, set(everyone)), codes=codes,
        suppressed=frozenset(c for c, flag in zip(candidates, flags, strict=True) if flag),
        contact_kept=contact is not None)


async def _dead_letters(redis, keys: Keys, people: set[str]) -> list[dict]:
    """Their dead-lettered messages (the list is capped at DEAD_LETTERS_MAX)."""
    found = []
    for raw in await redis.lrange(keys.dead_letters(), 0, -1):
        try:
            entry = orjson.loads(raw)
            if entry["message"]["person"] in people:
                found.append(entry)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return found


# -- the document, pure ----------------------------------------------------------------


def export_document(catalog: Catalog, held: Held, now_ms: int) -> dict:
    view = person_view(catalog, held.person, held.profile, now_ms)
    profile = {key: view[key] for key in ("traits", "features", "score", "segments", "recorded_segments",
                                          "impressions", "first_seen", "last_seen", "version")}
    profile["counters"] = counters(catalog, held.profile)
    return {
        "person": held.person,
        "exported_at": _iso(now_ms),
        "merged_ids": held.merged,
        "profile": profile,
        "consent": consent(held.contact),
        "devices": [{"token": token, "platform": device.get("platform"), "registered": _iso(device.get("at"))}
                    for token, device in sorted(held.devices.items())],
        "inbox": [{**item, "at": _iso(item.get("at")), "expires": _iso(item.get("expires"))}
                  for item in held.inbox],
        "messages": {
            "pending": [{**m, "due": _iso(m["due_ms"])} for m in held.pending],
            "recent": held.outcomes,
            "dead_letters": held.dead_letters,
        },
        "journeys": journeys(held.journeys),
        **exposures(held.exposures),
        "offers_seen": {offer: _iso(ms) for offer, ms in sorted(held.offers_seen.items())},
        "discount_codes": held.codes,
        "suppression": suppression(held),
        "kept_for_bookkeeping": {"event_ids": held.event_ids, "learning_markers": held.learned,
                                 "merge_staged": held.merge_staged},
    }


def counters(catalog: Catalog, profile: Profile) -> dict:
    """Each windowed counter as stored (its buckets, newest first) with its
    total over the buckets kept, and what it counts when the catalog in force
    still names it."""
    out = {}
    for fid, ring in sorted(profile.w.items()):
        if not isinstance(ring, list) or not ring:
            continue
        feature = catalog.features.get(fid)
        entry = {"buckets": ring[1:], "newest_bucket": ring[0], "total": sum(ring[1:])}
        if feature is not None:
            entry.update({"event": feature.event_type, "where": feature.where_spec, "sum_of": feature.sum_of,
                          "bucket_ms": feature.resolution_ms,
                          "newest_bucket_start": _iso(ring[0] * feature.resolution_ms)})
        out[fid] = entry
    return out


def consent(state: ContactState) -> dict:
    return {
        "channels": {channel: {purpose: {"granted": granted, "at": _iso(state.consent_at.get(channel, {}).get(purpose))}
                               for purpose, granted in sorted(purposes.items())}
                     for channel, purposes in sorted(state.consent.items())},
        "history": [{"recorded": _iso(h[0]), "channel": h[1], "purpose": h[2], "granted": h[3], "source": h[4],
                     "choice_at": _iso(h[5])} for h in state.history],
        "time_zone": state.tz,
        "recent_sends": [{"at": _iso(s[0]), "channel": s[1], "template": s[2],
                          "message_id": s[3] if len(s) > 3 else None} for s in state.sends],
    }


def journeys(state: dict) -> dict:
    view = journeys_view({"a": state.get("a", {}), "e": state.get("e", {})})
    for jid, run in state.get("a", {}).items():
        view["active"][jid].update({"run": run.get("run"), "trigger": run.get("vars", {})})
    view["recent_runs"] = state.get("r", [])
    return view


def exposures(fields: dict[str, str]) -> dict:
    """The experiments' arms and hold-out groups decisions put the person in,
    what each was credited with, their last verified impression per offer, and
    the purchases of the last hour kept to credit exposures written after them."""
    experiments, holdouts, impressions, purchases = {}, {}, {}, {}
    for name, value in sorted(fields.items()):
        kind, _, what = name.partition(":")
        parts = value.split("|")
        if name.startswith("p>") and len(parts) >= 2:
            purchases[name[2:]] = {"at": _iso(int(parts[0])), "revenue": float(parts[1]),
                                   **({"discount_cost": float(parts[2])} if len(parts) > 2 else {})}
            continue
        if ">" in name or len(parts) < 2:
            continue  # a credit marker: read with its exposure
        if kind == "e":
            experiments[what] = {"arm": parts[0], "at": _iso(int(parts[1])), **_credits(fields, name)}
        elif kind == "h":
            holdouts[what] = {"group": "treated" if parts[0] == "t" else "held_out", "at": _iso(int(parts[1])),
                              **_credits(fields, name)}
        elif kind == "s":
            impressions[what] = {"at": _iso(int(parts[0]))}
    return {"experiments": experiments, "holdouts": holdouts, "verified_impressions": impressions,
            "recent_purchases": purchases}


def _credits(fields: dict[str, str], exposure: str) -> dict:
    return {"converted": f"c>{exposure}" in fields, "clicked": f"k>{exposure}" in fields,
            "unsubscribed": f"u>{exposure}" in fields, "revenue": float(fields.get(f"rv>{exposure}", 0))}


def suppression(held: Held) -> dict:
    """Whether the suppression list names the person (by id) and each address
    their traits hold, and how."""
    found = address_candidates(held.profile.t)
    return {
        "person": any(name in held.suppressed for name in person_names(held.person)),
        **{channel: {"address": normal, "suppressed": any(n in held.suppressed for n in names)}
           for channel, (normal, names) in found.items()},
    }
