"""A person's profile as the engine sees it now: what `GET /v1/people/{id}`
shows an operator, computed from the stored profile and the catalog in force."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.catalog.model import Catalog
from engine.catalog.rules import Facts
from engine.profile import Profile


def _iso(ms: int) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None


def person_view(catalog: Catalog, person: str, profile: Profile, now_ms: int) -> dict:
    facts = Facts(catalog, profile, {}, now_ms)
    impressions = {
        offer.id: {"count": facts.window(offer.cap_feature, offer.cap_buckets), "cap": offer.cap_limit}
        for offer in catalog.offers
        if offer.cap_feature is not None and profile.w.get(offer.cap_feature.fid)
    }
    return {
        "person": person,
        "exists": profile.v > 0,
        "traits": profile.t,
        "features": {label: facts.window(f, buckets) for label, (f, buckets) in catalog.window_uses.items()},
        "score": facts.score(),
        "segments": [sid for sid in catalog.segments if facts.in_segment(sid)],
        "recorded_segments": profile.g,
        "impressions": impressions,
        "first_seen": _iso(profile.fs),
        "last_seen": _iso(profile.ls),
        "version": profile.v,
    }


def journeys_view(state: dict) -> dict:
    """A person's journeys: those in progress (at which step, waiting until when)
    and the last entry into each (held_out: in the control group, sent nothing)."""
    return {
        "active": {jid: {"step": run["pc"], "entered": _iso(run["at"]),
                         "waiting_until": _iso(run["until"]) if run.get("until") else None,
                         "held_out": bool(run.get("held"))}
                   for jid, run in state.get("a", {}).items()},
        "entered": {jid: {"at": _iso(at), "held_out": bool(held)}
                    for jid, (at, held) in state.get("e", {}).items()},
    }
