"""The catalog's `contact_policy` section: quiet hours, frequency caps and the
no-repeat window, checked (every problem with its path) into the ContactPolicy
fields they set; engine/followups/scheduler.py lays them over the ATTIMO_* settings.
Its on-site cap (`caps.onsite`: promotional offers shown per person) is the
same pressure budget seen from the site: decide enforces it, not the scheduler."""

from __future__ import annotations

from typing import Any

from engine.catalog import windows
from engine.catalog.rules import Compiler
from engine.policy import DAY_MS, PERSONAL_CHANNELS, WEEK_MS, Caps

CONTACT_POLICY_FIELDS = ("quiet_hours", "caps", "no_repeat")
QUIET_ACTIONS = ("delay", "drop")
ONSITE = "onsite"  # caps.onsite: promotional impressions on the site, not messages


def contact_policy_fields(spec: Any, compiler: Compiler) -> dict[str, Any]:
    """contact_policy: quiet hours, frequency caps and the no-repeat window, as
    the ContactPolicy fields they set. Each key given replaces its ATTIMO_*
    setting (`off` turns it off); a key left out keeps the setting."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        compiler.problem("contact_policy", "a mapping with quiet_hours, caps and no_repeat")
        return {}
    for key in spec:
        if key not in CONTACT_POLICY_FIELDS:
            compiler.problem(f"contact_policy.{key}", f"unknown field; expected {', '.join(CONTACT_POLICY_FIELDS)}")
    fields: dict[str, Any] = {}
    if "quiet_hours" in spec:
        fields.update(_quiet_hours(spec["quiet_hours"], "contact_policy.quiet_hours", compiler))
    if "caps" in spec:
        fields.update(_contact_caps(spec["caps"], "contact_policy.caps", compiler))
    if "no_repeat" in spec:
        fields.update(_no_repeat(spec["no_repeat"], "contact_policy.no_repeat", compiler))
    return fields


def _quiet_hours(spec: Any, path: str, compiler: Compiler) -> dict[str, Any]:
    """{start: 21, end: 8, action: delay}: hours in the person's time zone."""
    if spec is None or spec is False or spec == "off":
        return {"quiet_start_hour": None, "quiet_end_hour": None}
    if not isinstance(spec, dict):
        compiler.problem(path, "{start: 21, end: 8, action: delay}, or off")
        return {}
    for key in spec:
        if key not in ("start", "end", "action"):
            compiler.problem(f"{path}.{key}", "unknown field; expected start, end, action")
    hours = {}
    for key in ("start", "end"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
            compiler.problem(f"{path}.{key}", "an hour from 0 to 23 (in the person's time zone)")
        else:
            hours[key] = value
    action = spec.get("action", "delay")
    if action not in QUIET_ACTIONS:
        compiler.problem(f"{path}.action", "delay (to the end of the quiet hours) or drop")
    if len(hours) == 2 and hours["start"] == hours["end"]:
        compiler.problem(path, "start and end are the same hour; for no quiet hours write quiet_hours: off")
    return {"quiet_start_hour": hours.get("start"), "quiet_end_hour": hours.get("end"), "quiet_action": action}


def _contact_caps(spec: Any, path: str, compiler: Compiler) -> dict[str, Any]:
    """{email: {day: 1, week: 3}, total: {day: 3}}: messages per person per
    channel, and on every channel together (total)."""
    if spec is None or spec is False or spec == "off":
        return {"channel_caps": {}, "total_caps": Caps()}
    if not isinstance(spec, dict):
        compiler.problem(path, "a mapping channel → {day: n, week: n}, with total for every channel together")
        return {}
    channels: dict[str, Caps] = {}
    total = Caps()
    for channel, limits in spec.items():
        where = f"{path}.{channel}"
        if channel == ONSITE:
            continue  # onsite_caps: decide's, not the scheduler's
        if channel != "total" and channel not in PERSONAL_CHANNELS:
            compiler.problem(where, f"caps apply to {', '.join(sorted(PERSONAL_CHANNELS))}, total or {ONSITE}")
            continue
        if not isinstance(limits, dict) or not limits:
            compiler.problem(where, "{day: n, week: n}, either or both")
            continue
        counts = {}
        for key, value in limits.items():
            if key not in ("day", "week"):
                compiler.problem(f"{where}.{key}", "unknown field; expected day, week")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                compiler.problem(f"{where}.{key}", "a whole number of messages, 0 or more")
            else:
                counts[key] = value
        caps = Caps(per_day=counts.get("day"), per_week=counts.get("week"))
        if channel == "total":
            total = caps
        else:
            channels[channel] = caps
    return {"channel_caps": channels, "total_caps": total}


def onsite_caps(spec: Any, compiler: Compiler) -> list[tuple[int, int]]:
    """contact_policy.caps.onsite: {day: 5, week: 20}: promotional offers shown
    to one person on the site, as (window ms, limit): rolling 24 hours, 7 days."""
    caps = spec.get("caps") if isinstance(spec, dict) else None
    limits = caps.get(ONSITE) if isinstance(caps, dict) else None
    if limits is None:
        return []
    path = f"contact_policy.caps.{ONSITE}"
    if not isinstance(limits, dict) or not limits:
        compiler.problem(path, "{day: n, week: n}, either or both: promotional offers shown per person")
        return []
    found = []
    for key, value in limits.items():
        if key not in ("day", "week"):
            compiler.problem(f"{path}.{key}", "unknown field; expected day, week")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            compiler.problem(f"{path}.{key}", "a whole number of promotional impressions, 0 or more")
        else:
            found.append((DAY_MS if key == "day" else WEEK_MS, value))
    return found


def _no_repeat(spec: Any, path: str, compiler: Compiler) -> dict[str, Any]:
    """7d: the same template to the same person at most once in that window."""
    if spec is None or spec is False or spec == "off" or spec == 0:
        return {"repeat_window_ms": 0}
    try:
        window_ms = windows.parse_duration(spec)
    except ValueError as exc:
        compiler.problem(path, f"{exc}, or off")
        return {}
    if window_ms > WEEK_MS:
        compiler.problem(path, "at most 7d: messages are judged against the sends of the last week")
        return {}
    return {"repeat_window_ms": window_ms}
