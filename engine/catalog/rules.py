"""The condition language: catalog YAML → compiled predicates.

A condition is a mapping with one of the keys all / any / not / trait / context /
event / score / segment / rule / inactive_for / returning_after. It compiles to a
plain closure over `Facts` plus, where possible, a set of index atoms: values one
of which must hold for the condition to be true, so decide only evaluates the
offers a person could possibly get. Nothing here evaluates text as code."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from engine.catalog import windows
from engine.catalog.windows import Feature
from engine.policy import consent_given

Test = Callable[[Any], bool]
Predicate = Callable[["Facts"], bool]
Atom = tuple  # ("t", trait, normalized value) or ("c", context key, normalized value)

SESSION_GAP_MS = 30 * windows.MINUTE_MS
DEFAULT_INTERACTION_WINDOW = "365d"

COMPARISONS = (
    "equals", "in", "not_in", "between", "at_least", "at_most",
    "above", "below", "exists", "prefix", "contains",
)  # fmt: skip
CONDITION_KINDS = (
    "all", "any", "not", "trait", "context", "event", "score",
    "segment", "rule", "inactive_for", "returning_after", "consent",
)  # fmt: skip
CONSENT_NAME = re.compile(r"[a-z0-9_]{1,32}")


def normalized(value: Any) -> tuple:
    """Type-tagged value for equality and index keys: 1, 1.0 match; True and 1 do not."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    return ("x", repr(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Facts:
    """What conditions read about one person at one moment: traits, rings of
    windowed counters, score, segments and the request context."""

    __slots__ = ("catalog", "profile", "context", "now_ms", "contact", "budgets", "_score", "_segments")

    def __init__(self, catalog, profile, context: dict, now_ms: int, contact=None, budgets=None):
        self.catalog = catalog
        self.profile = profile
        self.context = context
        self.now_ms = now_ms
        # The contact state (engine/followups/contacts.py) where journeys read it:
        # `consent` conditions; None elsewhere.
        self.contact = contact
        # What the offers have spent and which code pools are empty
        # (engine/decisions/budgets.py) where decide reads them; None: no budgets.
        self.budgets = budgets
        self._score: float | None = None
        self._segments: dict[str, bool] = {}

    @property
    def traits(self) -> dict:
        return self.profile.t

    def window(self, feature: Feature, buckets: int) -> float:
        ring = self.profile.w.get(feature.fid)
        return windows.window_total(ring, self.now_ms, feature.resolution_ms, buckets)

    def score(self) -> float:
        if self._score is None:
            self._score = self.catalog.scoring.score(self.profile, self.now_ms)
        return self._score

    def in_segment(self, segment_id: str) -> bool:
        known = self._segments.get(segment_id)
        if known is None:
            # A segment the catalog no longer has (a journey run going on with
            # the version it entered with) holds for nobody.
            test = self.catalog.segments.get(segment_id)
            known = self._segments[segment_id] = test(self) if test is not None else False
        return known

    def context_value(self, name: str) -> Any:
        value = self.context.get(name)
        if value is None and name in ("hour", "weekday"):
            moment = datetime.fromtimestamp(self.now_ms / 1000, _zone(self.context.get("timezone")))
            value = moment.hour if name == "hour" else moment.strftime("%a").lower()
        return value


@lru_cache(maxsize=512)
def _zone(name: str | None):
    if not isinstance(name, str):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


@dataclass(slots=True)
class Compiled:
    test: Predicate
    atoms: frozenset | None = None  # None: cannot be narrowed by an index


@dataclass
class Compiler:
    """Compiles conditions, collecting every problem with its path instead of
    stopping at the first, and sharing windowed features between conditions."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    features: dict[str, Feature] = field(default_factory=dict)
    rule_specs: dict[str, Any] = field(default_factory=dict)
    segment_ids: set[str] = field(default_factory=set)
    # What each windowed condition reads, for the people endpoint: label → (feature, buckets)
    window_uses: dict[str, tuple[Feature, int]] = field(default_factory=dict)
    # `consent` conditions read the contact state, which only journeys load.
    allow_consent: bool = False
    reads_consent: bool = False
    # While segments compile: what time alone can change in them (a window
    # emptying, an idle spell, a score fading, the hour), so membership is
    # rechecked when one of them moves (engine/catalog/audiences.py). None: not collected.
    clock: set | None = None
    _rules: dict[str, Compiled] = field(default_factory=dict)
    _rules_in_progress: set[str] = field(default_factory=set)

    def problem(self, path: str, reason: str) -> None:
        self.problems.append((path, reason))

    # -- comparisons ---------------------------------------------------------

    def comparison(self, spec: dict, path: str, allowed=COMPARISONS) -> tuple[Test, set | None]:
        """{equals: x} / {in: [..]} / {between: [a, b]} / ... → a test of one value
        and, for equals / in / contains, the values that can make it true."""
        tests: list[Test] = []
        atoms: set | None = None
        problems_before = len(self.problems)
        for op, arg in spec.items():
            if op not in allowed:
                self.problem(f"{path}.{op}", f"unknown comparison; use one of {', '.join(allowed)}")
                continue
            made = self._one_comparison(op, arg, f"{path}.{op}")
            if made is None:
                continue
            tests.append(made)
            if op in ("equals", "contains"):
                atoms = {normalized(arg)}
            elif op == "in":
                atoms = {normalized(v) for v in arg}
        if not tests:
            if len(self.problems) == problems_before:
                self.problem(path, f"needs a comparison: one of {', '.join(allowed)}")
            return (lambda value: False), None
        if len(tests) == 1:
            return tests[0], atoms
        return (lambda value: all(t(value) for t in tests)), atoms

    def _one_comparison(self, op: str, arg: Any, path: str) -> Test | None:
        if op == "equals":
            if isinstance(arg, dict | list):
                self.problem(path, "equals takes a single value")
                return None
            if isinstance(arg, str):  # the common case, without tagging every value read
                return lambda value: value == arg and isinstance(value, str)
            if isinstance(arg, bool):
                return lambda value: value is arg
            key = normalized(arg)
            return lambda value: value is not None and normalized(value) == key
        if op in ("in", "not_in"):
            if not isinstance(arg, list) or not arg:
                self.problem(path, f"{op} takes a non-empty list of values")
                return None
            keys = frozenset(normalized(v) for v in arg)
            if op == "in":
                if all(isinstance(v, str) for v in arg):
                    names = frozenset(arg)
                    return lambda value: isinstance(value, str) and value in names
                return lambda value: value is not None and normalized(value) in keys
            return lambda value: value is None or normalized(value) not in keys
        if op == "between":
            if not (isinstance(arg, list) and len(arg) == 2 and all(map(_is_number, arg))):
                self.problem(path, "between takes [low, high], two numbers")
                return None
            low, high = arg
            if low > high:
                self.problem(path, f"between: low {low} is above high {high}")
            return lambda value: _is_number(value) and low <= value <= high
        if op in ("at_least", "at_most", "above", "below"):
            if not _is_number(arg):
                self.problem(path, f"{op} takes a number")
                return None
            return {
                "at_least": lambda value: _is_number(value) and value >= arg,
                "at_most": lambda value: _is_number(value) and value <= arg,
                "above": lambda value: _is_number(value) and value > arg,
                "below": lambda value: _is_number(value) and value < arg,
            }[op]
        if op == "exists":
            if not isinstance(arg, bool):
                self.problem(path, "exists takes true or false")
                return None
            return lambda value: (value is not None) == arg
        if op == "prefix":
            if not isinstance(arg, str):
                self.problem(path, "prefix takes a string")
                return None
            return lambda value: isinstance(value, str) and value.startswith(arg)
        if op == "contains":
            if isinstance(arg, dict | list):
                self.problem(path, "contains takes a single value")
                return None
            key = normalized(arg)

            def contains(value: Any) -> bool:
                if isinstance(value, list):
                    return any(normalized(item) == key for item in value)
                return isinstance(value, str) and isinstance(arg, str) and arg in value

            return contains
        raise AssertionError(op)

    def property_filter(self, spec: Any, path: str) -> Callable[[dict], bool] | None:
        """`where: {category: crm, path: {prefix: /pricing}}` → test of event properties."""
        if spec is None:
            return None
        if not isinstance(spec, dict) or not spec:
            self.problem(path, "where takes a mapping of property → value or comparison")
            return None
        tests = []
        for name, want in spec.items():
            if isinstance(want, dict):
                test, _ = self.comparison(want, f"{path}.{name}")
            else:
                test, _ = self.comparison({"equals": want}, f"{path}.{name}")
            tests.append((name, test))
        if len(tests) == 1:
            (name, test), = tests
            return lambda props: test(props.get(name))

        def every_test(props: dict) -> bool:  # a loop: all() over a generator costs a frame a test
            for name, test in tests:  # noqa: SIM110
                if not test(props.get(name)):
                    return False
            return True

        return every_test

    # -- conditions ----------------------------------------------------------

    def condition(self, spec: Any, path: str) -> Compiled:
        if not isinstance(spec, dict):
            self.problem(path, "a condition is a mapping, e.g. {trait: age, at_least: 18}")
            return Compiled(lambda facts: False)
        kinds = [k for k in CONDITION_KINDS if k in spec]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else ", ".join(map(str, spec)) or "nothing"
            self.problem(path, f"a condition has exactly one of {', '.join(CONDITION_KINDS)}; found {found}")
            return Compiled(lambda facts: False)
        kind = kinds[0]
        return getattr(self, f"_{kind}")(spec, path)

    def _ticks(self, sources) -> None:
        if self.clock is not None:
            self.clock.update(sources)

    def _extra_keys(self, spec: dict, allowed: tuple, path: str) -> None:
        for key in spec:
            if key not in allowed:
                self.problem(f"{path}.{key}", f"not understood here; expected {', '.join(allowed)}")

    def _all(self, spec: dict, path: str) -> Compiled:
        parts = self._children(spec, "all", path)
        tests = tuple(p.test for p in parts)
        indexed = [p.atoms for p in parts if p.atoms is not None]
        atoms = min(indexed, key=len) if indexed else None
        if len(tests) == 1:
            return Compiled(tests[0], atoms)
        return Compiled(lambda facts: all(t(facts) for t in tests), atoms)

    def _any(self, spec: dict, path: str) -> Compiled:
        parts = self._children(spec, "any", path)
        tests = tuple(p.test for p in parts)
        atoms = None
        if parts and all(p.atoms is not None for p in parts):
            atoms = frozenset().union(*(p.atoms for p in parts))
        return Compiled(lambda facts: any(t(facts) for t in tests), atoms)

    def _children(self, spec: dict, kind: str, path: str) -> list[Compiled]:
        self._extra_keys(spec, (kind,), path)
        items = spec[kind]
        if not isinstance(items, list) or not items:
            self.problem(f"{path}.{kind}", f"{kind} takes a non-empty list of conditions")
            return []
        return [self.condition(item, f"{path}.{kind}[{i}]") for i, item in enumerate(items)]

    def _not(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("not",), path)
        inner = self.condition(spec["not"], f"{path}.not").test
        return Compiled(lambda facts: not inner(facts))

    def _trait(self, spec: dict, path: str) -> Compiled:
        name = spec["trait"]
        if not isinstance(name, str) or not name:
            self.problem(f"{path}.trait", "trait takes a trait name")
            return Compiled(lambda facts: False)
        test, values = self.comparison(_without(spec, "trait"), path)
        atoms = frozenset(("t", name, v) for v in values) if values else None
        return Compiled(lambda facts: test(facts.profile.t.get(name)), atoms)

    def _context(self, spec: dict, path: str) -> Compiled:
        name = spec["context"]
        if not isinstance(name, str) or not name:
            self.problem(f"{path}.context", "context takes a context field name (path, category, device…)")
            return Compiled(lambda facts: False)
        test, values = self.comparison(_without(spec, "context"), path)
        if name in ("hour", "weekday"):
            self._ticks([("hour",)])
            return Compiled(lambda facts: test(facts.context_value(name)))
        atoms = frozenset(("c", name, v) for v in values) if values else None
        return Compiled(lambda facts: test(facts.context.get(name)), atoms)

    def _consent(self, spec: dict, path: str) -> Compiled:
        """{consent: email} or {consent: {channel: email, purpose: marketing}}: the
        person opted in (explicitly) for that channel and purpose."""
        self._extra_keys(spec, ("consent",), path)
        if not self.allow_consent:
            self.problem(f"{path}.consent", "consent conditions work in journeys only "
                                            "(deciding an offer does not read the contact state)")
            return Compiled(lambda facts: False)
        arg = spec["consent"]
        arg = {"channel": arg} if isinstance(arg, str) else arg
        if not isinstance(arg, dict) or set(arg) - {"channel", "purpose"} or "channel" not in arg:
            self.problem(f"{path}.consent", "consent takes a channel, or {channel, purpose}")
            return Compiled(lambda facts: False)
        channel, purpose = arg["channel"], arg.get("purpose", "marketing")
        for name, value in (("channel", channel), ("purpose", purpose)):
            if not isinstance(value, str) or not CONSENT_NAME.fullmatch(value):
                self.problem(f"{path}.consent.{name}", "1 to 32 of a-z 0-9 _")
                return Compiled(lambda facts: False)
        self.reads_consent = True
        return Compiled(lambda facts: facts.contact is not None
                        and consent_given(facts.contact, channel, purpose) is True)

    def _score(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("score",), path)
        if not isinstance(spec["score"], dict):
            self.problem(f"{path}.score", "score takes a comparison, e.g. {at_least: 50}")
            return Compiled(lambda facts: False)
        test, _ = self.comparison(spec["score"], f"{path}.score")
        self._ticks(("score", value) for value in _numbers(spec["score"]))
        return Compiled(lambda facts: test(facts.score()))

    def _segment(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("segment",), path)
        segment_id = spec["segment"]
        if segment_id not in self.segment_ids:
            self.problem(f"{path}.segment", f"no segment named {segment_id!r}")
            return Compiled(lambda facts: False)
        return Compiled(lambda facts: facts.in_segment(segment_id))

    def _rule(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("rule",), path)
        return self.named_rule(spec["rule"], f"{path}.rule")

    def named_rule(self, name: Any, path: str) -> Compiled:
        if name in self._rules:
            return self._rules[name]
        if name not in self.rule_specs:
            self.problem(path, f"no rule named {name!r}")
            return Compiled(lambda facts: False)
        if name in self._rules_in_progress:
            self.problem(path, f"rule {name!r} refers to itself")
            return Compiled(lambda facts: False)
        self._rules_in_progress.add(name)
        compiled = self.condition(self.rule_specs[name], f"rules.{name}")
        self._rules_in_progress.discard(name)
        self._rules[name] = compiled
        return compiled

    def _inactive_for(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("inactive_for",), path)
        idle = self._duration(spec["inactive_for"], f"{path}.inactive_for")
        self._ticks([("idle", idle)])
        return Compiled(lambda facts: facts.now_ms - facts.profile.ls >= idle)

    def _returning_after(self, spec: dict, path: str) -> Compiled:
        """True during the first session after an absence of at least the duration."""
        self._extra_keys(spec, ("returning_after",), path)
        gap = self._duration(spec["returning_after"], f"{path}.returning_after")
        self._ticks([("idle", SESSION_GAP_MS + 1)])

        def returning(facts: Facts) -> bool:
            profile = facts.profile
            return profile.gap >= gap and facts.now_ms - profile.ls <= SESSION_GAP_MS

        return Compiled(returning)

    def _event(self, spec: dict, path: str) -> Compiled:
        self._extra_keys(spec, ("event", "where", "within", "count", "sum"), path)
        event_type = spec["event"]
        if not isinstance(event_type, str) or not event_type:
            self.problem(f"{path}.event", "event takes an event type, or * for any event")
            return Compiled(lambda facts: False)
        within = spec.get("within", DEFAULT_INTERACTION_WINDOW)
        window_ms = self._duration(within, f"{path}.within")
        if window_ms > windows.MAX_WINDOW_MS:
            self.problem(f"{path}.within", "windows are at most 366d")
            window_ms = windows.MAX_WINDOW_MS
        if "count" in spec and "sum" in spec:
            self.problem(path, "use count or sum, not both")
        sum_of = None
        if "sum" in spec:
            measure = spec["sum"]
            if not isinstance(measure, dict) or not isinstance(measure.get("of"), str):
                self.problem(f"{path}.sum", "sum takes {of: property, <comparison>}, e.g. {of: seconds, above: 120}")
                return Compiled(lambda facts: False)
            sum_of = measure["of"]
            test, _ = self.comparison(_without(measure, "of"), f"{path}.sum")
        else:
            count = spec.get("count", {"at_least": 1})
            if _is_number(count):
                count = {"at_least": count}
            if not isinstance(count, dict):
                self.problem(f"{path}.count", "count takes a comparison, e.g. {at_least: 3}")
                return Compiled(lambda facts: False)
            test, _ = self.comparison(count, f"{path}.count")
        feature, buckets = self.feature(event_type, spec.get("where"), sum_of, window_ms, path)
        where = spec.get("where")
        label = " ".join(filter(None, (
            event_type,
            f"where {orjson.dumps(where).decode()}" if where else "",
            f"sum of {sum_of}" if sum_of else "count",
            f"within {within}",
        )))
        self.window_uses[label] = (feature, buckets)
        self._ticks([("window", feature.fid, buckets)])
        return Compiled(lambda facts: test(facts.window(feature, buckets)))

    def feature(
        self, event_type: str, where: Any, sum_of: str | None, window_ms: int, path: str
    ) -> tuple[Feature, int]:
        """The shared counter for (event, where, sum) at the window's resolution,
        lengthened to cover this window."""
        resolution = windows.resolution_for(window_ms)
        where_spec = where if isinstance(where, dict) else {}
        fid = windows.feature_id(event_type, where_spec, sum_of, resolution)
        feature = self.features.get(fid)
        if feature is None:
            feature = Feature(fid, event_type, where_spec, sum_of, resolution)
            feature.matches = self.property_filter(where, f"{path}.where")
            self.features[fid] = feature
        buckets = windows.buckets_for(window_ms, resolution)
        feature.length = max(feature.length, buckets)
        return feature, buckets

    def _duration(self, text: Any, path: str) -> int:
        try:
            return windows.parse_duration(text)
        except ValueError as exc:
            self.problem(path, str(exc))
            return windows.DAY_MS


def _numbers(spec: Any) -> list[float]:
    """The numbers a comparison names (the thresholds a fading score may cross)."""
    values = spec.values() if isinstance(spec, dict) else [spec]
    found = []
    for value in values:
        if isinstance(value, list):
            found.extend(v for v in value if _is_number(v))
        elif _is_number(value):
            found.append(value)
    return found


def _without(spec: dict, key: str) -> dict:
    return {k: v for k, v in spec.items() if k != key}


def always(facts: Facts) -> bool:
    return True
