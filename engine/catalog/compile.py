"""The catalog compiler: the text read safely (engine/catalog/loader.py),
validated (every problem at once, with its path) and compiled to closures,
index tables and numpy arrays (engine/catalog/model.py holds the result)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog import windows
from engine.catalog.arbitration import offer_economics, placement_arbitration
from engine.catalog.audiences import compile_audiences
from engine.catalog.broadcasts import compile_broadcasts
from engine.catalog.contact_policy import contact_policy_fields, onsite_caps
from engine.catalog.experiments import compile_experiments
from engine.catalog.journeys import compile_journeys
from engine.catalog.learning import compile_learning
from engine.catalog.loader import parse_catalog_text, plain_json_problem
from engine.catalog.model import (
    Budget,
    Catalog,
    Offer,
    Placement,
    Scoring,
    WindowLimit,
    offer_for_templates,
)
from engine.catalog.rules import Compiler, always, normalized
from engine.catalog.windows import Feature
from engine.errors import CatalogError
from engine.events import CODE_POOL_NAME

log = logging.getLogger("attimo.catalog")

OFFER_KINDS = ("content", "banner", "discount")
TOP_LEVEL = ("version", "placements", "offers", "segments", "rules", "scoring", "protected_traits",
             "journeys", "templates", "contact_policy", "learning",
             "experiments", "discounts", "broadcasts")
OFFER_FIELDS = (
    "id", "kind", "placements", "content", "product_line", "value", "priority", "score",
    "cap", "start", "end", "when", "exclude", "holdout", "group", "description", "worth", "propensity", "lever",
    "budget", "promotional",
)  # fmt: skip
LIFETIME_CAP_WINDOW = "366d"
IMPRESSION = "impression"
BUDGET_PERIODS = ("day", "campaign")
PROMOTIONAL_KINDS = ("discount", "banner")  # promotional unless the offer says promotional: false


# -- loading ---------------------------------------------------------------------


def load_catalog_file(path: str | Path) -> tuple[Catalog, str]:
    """Read, validate and compile a catalog file; returns it with its source text."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(str(path), [("(file)", f"cannot read: {exc.strerror}")]) from None
    return compile_catalog(parse_catalog_text(text, str(path)), str(path)), text


def feature_table(table: dict[str, tuple[int, int]]) -> bytes:
    """The rings the apply and merge scripts may keep, as ",<fid>:<resolution
    ms>:<length>,…,": the scripts look up the few rings a profile holds with a
    plain string search. Unpacking the whole table as msgpack cost a pruning
    call about 55 µs of Redis time with a catalog of 88 features, more than
    the rest of the script. Feature ids are base64url, never "," or ":"."""
    return ("," + "".join(f"{fid}:{resolution}:{length}," for fid, (resolution, length) in table.items())).encode()


def compile_catalog(spec: dict, source: str = "catalog") -> Catalog:
    """Validate everything, then compile; raises CatalogError listing every problem.
    A shape the validation missed is still a problem, never a 500 or a traceback."""
    try:
        return _compile(spec, source)
    except CatalogError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        # A gap in the validation: said plainly here, the stack only at debug.
        log.warning("catalog %s: a shape got past validation: %r", source, exc)
        log.debug("catalog %s: where it failed", source, exc_info=True)
        raise CatalogError(source, [("(catalog)", f"cannot be compiled: {type(exc).__name__}: {exc}")]) from exc


def _compile(spec: dict, source: str) -> Catalog:
    compiler = Compiler()
    for key in spec:
        if key not in TOP_LEVEL:
            compiler.problem(key, f"unknown section; expected {', '.join(TOP_LEVEL)}")

    protected = spec.get("protected_traits") or []
    if not isinstance(protected, list) or not all(isinstance(t, str) for t in protected):
        compiler.problem("protected_traits", "a list of trait names")
        protected = []

    rule_specs = spec.get("rules") or {}
    if not isinstance(rule_specs, dict):
        compiler.problem("rules", "a mapping of rule name → condition")
        rule_specs = {}
    compiler.rule_specs = rule_specs

    segment_specs = _named_list(spec.get("segments"), "segments", compiler)
    compiler.segment_ids = {s["id"] for _, s in segment_specs}
    segments = {}
    compiler.clock = set()
    for path, seg in segment_specs:
        if "when" not in seg:
            compiler.problem(path, "a segment needs when: <condition>")
            continue
        segments[seg["id"]] = compiler.condition(seg["when"], f"{path}.when").test
    audiences = compile_audiences(segment_specs, compiler)
    compiler.clock = None
    _check_segment_cycles(segment_specs, compiler)
    rules = {name: compiler.named_rule(name, f"rules.{name}").test for name in rule_specs}

    placements = _placements(spec.get("placements"), compiler)
    scoring = _scoring(spec.get("scoring"), compiler)
    offers = _offers(spec.get("offers"), placements, compiler)
    journeys = compile_journeys(spec.get("journeys"), spec.get("templates"), compiler,
                                {o.id: offer_for_templates(o.answer()) for o in offers})
    broadcasts = compile_broadcasts(spec.get("broadcasts"), compiler, journeys.templates, audiences.tracked)
    contact_policy = contact_policy_fields(spec.get("contact_policy"), compiler)
    learning = compile_learning(spec.get("learning"), compiler)
    experiments = compile_experiments(spec.get("experiments"), compiler, placements, {o.id for o in offers},
                                      set(journeys.by_id))
    discount_limit = _discount_limit(spec.get("discounts"), offers, compiler)
    onsite_limits = _onsite_limits(spec.get("contact_policy"), offers, compiler)

    if compiler.problems:
        raise CatalogError(source, compiler.problems)

    offers = _rank(offers)
    for offer in offers:
        for name in offer.placements:
            placement = placements[name]
            placement.ranks.append(offer.rank)
            if offer.atoms is None:
                placement.always.append(offer.rank)
            else:
                for atom in offer.atoms:
                    placement.by_atom.setdefault(atom, []).append(offer.rank)

    features_by_type: dict[str, list[Feature]] = defaultdict(list)
    for feature in compiler.features.values():
        features_by_type[feature.event_type].append(feature)
    feature_index = {kind: _index_features(features) for kind, features in features_by_type.items()}
    table = {fid: (f.resolution_ms, f.length) for fid, f in compiler.features.items()}

    return Catalog(
        digest=_digest(spec),
        placements=placements,
        offers=offers,
        offers_by_id={o.id: o for o in offers},
        segments=segments,
        audiences=audiences,
        features=compiler.features,
        features_by_type=dict(features_by_type),
        feature_index=feature_index,
        scoring=scoring,
        protected_traits=frozenset(protected),
        rules=rules,
        window_uses=compiler.window_uses,
        feature_table=feature_table(table),
        indexed_traits=frozenset(n for p in placements.values() for k, n, _ in p.by_atom if k == "t"),
        indexed_context=frozenset(n for p in placements.values() for k, n, _ in p.by_atom if k == "c"),
        journeys=journeys,
        broadcasts=broadcasts,
        contact_policy=contact_policy,
        learning=learning,
        learnable=_learnable(offers, placements, experiments),
        experiments_by_id={e.id: e for e in experiments},
        experiments={e.placement: e for e in experiments if e.placement is not None},
        journey_experiments={j: e for e in experiments for j in e.journeys},
        discount_limit=discount_limit,
        onsite_limits=onsite_limits,
        budgeted=tuple(o for o in offers if o.budget is not None),
        code_pools={o.code_pool: o.id for o in offers if o.code_pool is not None},
    )


def _index_features(features: list[Feature]) -> tuple[list[Feature], dict[str, dict[tuple, list[Feature]]]]:
    scanned: list[Feature] = []
    by_property: dict[str, dict[tuple, list[Feature]]] = defaultdict(lambda: defaultdict(list))
    for feature in features:
        if len(feature.where_spec) == 1:
            (name, want), = feature.where_spec.items()
            if want is not None and not isinstance(want, dict | list):
                by_property[name][normalized(want)].append(feature)
                continue
        scanned.append(feature)
    return scanned, {name: dict(by_value) for name, by_value in by_property.items()}


def _digest(spec: dict) -> str:
    canonical = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def _named_list(items: Any, section: str, compiler: Compiler) -> list[tuple[str, dict]]:
    """A list of mappings each with a unique string id."""
    if items is None:
        return []
    if not isinstance(items, list):
        compiler.problem(section, "a list of entries, each with an id")
        return []
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        path = f"{section}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            compiler.problem(path, "each entry is a mapping with an id (a string)")
            continue
        if item["id"] in seen:
            compiler.problem(f"{path}.id", f"duplicate id {item['id']!r}")
            continue
        seen.add(item["id"])
        out.append((f"{section}[{i}]", item))
    return out


def _check_segment_cycles(segment_specs: list, compiler: Compiler) -> None:
    refs = {seg["id"]: set(_segment_refs(seg.get("when"))) for _, seg in segment_specs}

    def visit(sid: str, trail: tuple) -> None:
        if sid in trail:
            compiler.problem(f"segments.{sid}", "segment refers to itself: " + " → ".join(trail + (sid,)))
            return
        for ref in refs.get(sid, ()):
            visit(ref, trail + (sid,))

    for sid in refs:
        visit(sid, ())


def _segment_refs(spec: Any):
    if isinstance(spec, dict):
        if isinstance(spec.get("segment"), str):
            yield spec["segment"]
        for value in spec.values():
            yield from _segment_refs(value)
    elif isinstance(spec, list):
        for item in spec:
            yield from _segment_refs(item)


def _placements(spec: Any, compiler: Compiler) -> dict[str, Placement]:
    if spec is None:
        return {}
    if isinstance(spec, list) and all(isinstance(p, str) for p in spec):
        return {name: Placement(name) for name in spec}
    if isinstance(spec, dict):
        out = {}
        for name, body in spec.items():
            description = body.get("description", "") if isinstance(body, dict) else ""
            out[str(name)] = Placement(str(name), description,
                                       arbitration=placement_arbitration(body, f"placements.{name}", compiler))
        return out
    compiler.problem("placements", "a list of placement names, or a mapping name → {description}")
    return {}


def _scoring(spec: Any, compiler: Compiler) -> Scoring:
    scoring = Scoring()
    if spec is None:
        return scoring
    if not isinstance(spec, dict):
        compiler.problem("scoring", "a mapping with half_life, events and traits")
        return scoring
    if "half_life" in spec:
        try:
            scoring.half_life_ms = windows.parse_duration(spec["half_life"])
        except ValueError as exc:
            compiler.problem("scoring.half_life", str(exc))
    for i, rule in enumerate(spec.get("events") or []):
        path = f"scoring.events[{i}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("event"), str):
            compiler.problem(path, "{event: type, where: {...}, points: n}")
            continue
        points = _number(rule.get("points"), f"{path}.points", compiler)
        matches = compiler.property_filter(rule.get("where"), f"{path}.where")
        scoring.event_rules.setdefault(rule["event"], []).append((matches, points))
    for i, rule in enumerate(spec.get("traits") or []):
        path = f"scoring.traits[{i}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("trait"), str):
            compiler.problem(path, "{trait: name, <comparison>, points: n}")
            continue
        points = _number(rule.get("points"), f"{path}.points", compiler)
        comparison = {k: v for k, v in rule.items() if k not in ("trait", "points")}
        test, _ = compiler.comparison(comparison, path)
        scoring.trait_rules.append((rule["trait"], test, points))
    return scoring


def _number(value: Any, path: str, compiler: Compiler) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) <= 1e15:
        compiler.problem(path, "a number (finite, at most 10^15 either way)")
        return 0.0
    return float(value)


def _offers(spec: Any, placements: dict[str, Placement], compiler: Compiler) -> list[Offer]:
    offers = []
    pool_owners: dict[str, str] = {}
    for path, item in _named_list(spec, "offers", compiler):
        for key in item:
            if key not in OFFER_FIELDS:
                compiler.problem(f"{path}.{key}", f"unknown offer field; expected {', '.join(OFFER_FIELDS)}")
        kind = item.get("kind")
        if kind not in OFFER_KINDS:
            compiler.problem(f"{path}.kind", f"one of {', '.join(OFFER_KINDS)}")
        names = item.get("placements")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            compiler.problem(f"{path}.placements", "a non-empty list of placement names")
            names = []
        if not all(isinstance(n, str) for n in names):
            compiler.problem(f"{path}.placements", "placement names are text")
            names = [n for n in names if isinstance(n, str)]
        for name in names:
            if name not in placements:
                compiler.problem(f"{path}.placements", f"no placement named {name!r}")
        content = item.get("content", {})
        if (why := plain_json_problem(content)) is not None:
            compiler.problem(f"{path}.content", why)
            content = {}
        for name_field in ("group", "product_line"):
            if item.get(name_field) is not None and not isinstance(item[name_field], str):
                compiler.problem(f"{path}.{name_field}", "a name (text)")
        when = compiler.condition(item["when"], f"{path}.when") if "when" in item else None
        exclude = compiler.condition(item["exclude"], f"{path}.exclude").test if "exclude" in item else None
        holdout = item.get("holdout", 0)
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout <= 100:
            compiler.problem(f"{path}.holdout", "a percentage between 0 and 100")
            holdout = 0
        value = item.get("value")
        if value is not None:
            value = _number(value, f"{path}.value", compiler)
        offer = Offer(
            rank=0,
            id=item["id"],
            kind=kind,
            placements=tuple(n for n in names if n in placements),
            content=content,
            product_line=item.get("product_line") if isinstance(item.get("product_line"), str) else None,
            value=value,
            priority=_number(item.get("priority", 0), f"{path}.priority", compiler),
            score=_number(item.get("score", 0), f"{path}.score", compiler),
            start_ms=_moment(item.get("start"), f"{path}.start", compiler, end=False),
            end_ms=_moment(item.get("end"), f"{path}.end", compiler, end=True),
            when=when.test if when else always,
            exclude=exclude,
            holdout_pct=float(holdout),
            group=item.get("group") if isinstance(item.get("group"), str) else None,
            atoms=when.atoms if when else None,
            economics=offer_economics(item, path, compiler, _moment),
        )
        if offer.start_ms and offer.end_ms and offer.start_ms > offer.end_ms:
            compiler.problem(f"{path}.end", "ends before it starts")
        if "cap" in item:
            _cap(offer, item["cap"], f"{path}.cap", compiler)
        _guardrail_fields(offer, item, path, compiler)
        if offer.code_pool is not None:
            # A redeemed code names its pool, and the pool its offer: one offer per pool.
            owner = pool_owners.setdefault(offer.code_pool, offer.id)
            if owner != offer.id:
                compiler.problem(f"{path}.content.code_pool", f"pool {offer.code_pool!r} already belongs to offer "
                                                               f"{owner!r}")
        offers.append(offer)
    return offers


def _guardrail_fields(offer: Offer, item: dict, path: str, compiler: Compiler) -> None:
    """budget: {amount: 500, per: day}, content.code_pool, promotional: true."""
    promotional = item.get("promotional", offer.kind in PROMOTIONAL_KINDS)
    if not isinstance(promotional, bool):
        compiler.problem(f"{path}.promotional", "true or false")
        promotional = False
    offer.promotional = promotional
    if "budget" in item:
        offer.budget = _budget(item["budget"], f"{path}.budget", compiler)
        if offer.kind != "discount":
            compiler.problem(f"{path}.budget", "only a discount has a budget: its cost is counted from redemptions")
    content = offer.content
    if isinstance(content, dict) and "code_pool" in content:
        pool = content["code_pool"]
        where = f"{path}.content.code_pool"
        if offer.kind != "discount":
            compiler.problem(where, "only a discount gives codes")
        elif not isinstance(pool, str) or not CODE_POOL_NAME.fullmatch(pool):
            compiler.problem(where, "a pool name: 1 to 64 letters, digits or _ . -")
        elif "code" in content:
            compiler.problem(where, "a static code or a code pool, not both")
        else:
            offer.code_pool = pool
            # The person's own code takes the pool's place in every answer.
            offer.content = {k: v for k, v in content.items() if k != "code_pool"}


def _budget(spec: Any, path: str, compiler: Compiler) -> Budget | None:
    if not isinstance(spec, dict) or set(spec) - {"amount", "per"} or "amount" not in spec:
        compiler.problem(path, "{amount: 500, per: day} (per: day or campaign)")
        return None
    amount = _number(spec["amount"], f"{path}.amount", compiler)
    if amount < 0:
        compiler.problem(f"{path}.amount", "0 or more")
    per = spec.get("per", "campaign")
    if per not in BUDGET_PERIODS:
        compiler.problem(f"{path}.per", "day (each UTC day) or campaign (the offer's whole life)")
        return None
    return Budget(amount, per)


def _discount_limit(spec: Any, offers: list[Offer], compiler: Compiler) -> WindowLimit | None:
    """discounts: {per_person: 2, within: 30d}: impressions of any discount offer."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - {"per_person", "within"}:
        compiler.problem("discounts", "{per_person: 2, within: 30d}")
        return None
    limit = spec.get("per_person")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        compiler.problem("discounts.per_person", "a whole number of discounts shown, 0 or more")
        return None
    try:
        window_ms = windows.parse_duration(spec.get("within", "30d"))
    except ValueError as exc:
        compiler.problem("discounts.within", str(exc))
        return None
    if window_ms > windows.MAX_WINDOW_MS:
        compiler.problem("discounts.within", "at most 366d")
        return None
    ids = [o.id for o in offers if o.kind == "discount"]
    return WindowLimit(*_impressions_of_set("discount", ids, window_ms, compiler), limit)


def _onsite_limits(spec: Any, offers: list[Offer], compiler: Compiler) -> tuple[WindowLimit, ...]:
    """contact_policy.caps.onsite: {day: 5, week: 20}: promotional impressions."""
    caps = onsite_caps(spec, compiler)
    ids = [o.id for o in offers if o.promotional]
    return tuple(WindowLimit(*_impressions_of_set("promotional", ids, window_ms, compiler), limit)
                 for window_ms, limit in caps)


def _impressions_of_set(name: str, offer_ids: list[str], window_ms: int, compiler: Compiler) -> tuple[Feature, int]:
    """A hidden counter of impressions of any offer in a set the catalog derives
    (every discount, every promotional offer). Its id comes from the set's name,
    not its members, so a person's count goes on when offers join or leave."""
    resolution = windows.resolution_for(window_ms)
    where_spec = {"offer": {"of_set": name}}  # never parsed: the id's source only
    fid = windows.feature_id(IMPRESSION, where_spec, None, resolution)
    feature = compiler.features.get(fid)
    if feature is None:
        feature = compiler.features[fid] = Feature(fid, IMPRESSION, where_spec, None, resolution)
    members = frozenset(offer_ids)
    feature.matches = lambda props: isinstance(offer := props.get("offer"), str) and offer in members
    buckets = windows.buckets_for(window_ms, resolution)
    feature.length = max(feature.length, buckets)
    return feature, buckets


def _cap(offer: Offer, spec: Any, path: str, compiler: Compiler) -> None:
    """cap: 3 (a lifetime of a year) or cap: {impressions: 3, within: 7d}."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"impressions": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("impressions"), int) or spec["impressions"] < 1:
        compiler.problem(path, "cap takes a number, or {impressions: n, within: 7d}")
        return
    try:
        window_ms = windows.parse_duration(spec.get("within", LIFETIME_CAP_WINDOW))
    except ValueError as exc:
        compiler.problem(f"{path}.within", str(exc))
        return
    offer.cap_limit = spec["impressions"]
    offer.cap_feature, offer.cap_buckets = compiler.feature(
        IMPRESSION, {"offer": offer.id}, None, min(window_ms, windows.MAX_WINDOW_MS), path
    )


def _moment(value: Any, path: str, compiler: Compiler, *, end: bool) -> int | None:
    """Offer start/end: a date (the whole day, UTC) or an ISO 8601 date-time."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            compiler.problem(path, "a date (2026-03-01) or an ISO 8601 date-time")
            return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime.combine(value, time.max if end else time.min, UTC)
    else:
        compiler.problem(path, "a date (2026-03-01) or an ISO 8601 date-time")
        return None
    return int(moment.timestamp() * 1000)


def _rank(offers: list[Offer]) -> list[Offer]:
    """Arbitration order once, with numpy: priority desc, then declared score
    desc, then id, so decide walks candidates by rank and stops at the first eligible."""
    if not offers:
        return []
    priority = np.array([o.priority for o in offers])
    score = np.array([o.score for o in offers])
    ids = np.array([o.id for o in offers])
    order = np.lexsort((ids, -score, -priority))
    ranked = [offers[i] for i in order]
    for rank, offer in enumerate(ranked):
        offer.rank = rank
    return ranked


def _learnable(offers: list[Offer], placements: dict, experiments: list) -> dict[str, Offer]:
    """The offers of expected-value placements (or of placements where an
    experiment's arm chooses by expected value), in rank order: the only ones
    a model is kept for."""
    names = {name for name, p in placements.items() if p.arbitration == "expected_value"}
    names |= {e.placement for e in experiments if any(a.arbitration == "expected_value" for a in e.arms)}
    return {offer.id: offer for offer in offers if names.intersection(offer.placements)}


def empty_catalog() -> Catalog:
    return compile_catalog({"placements": [], "offers": []}, "empty")
