"""Journeys: the catalog's `journeys:` and `templates:` sections, validated (every
problem with its path) and compiled to a flat program of steps per journey.
What the steps do to a person is engine/followups/transitions.py; nothing here or there
touches Redis (engine/followups/journey_runner.py does)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.catalog import windows
from engine.catalog.rules import Compiler, Facts, Predicate

JOURNEY_FIELDS = ("id", "description", "trigger", "steps", "exit", "reentry", "group", "priority", "holdout")
TRIGGER_KINDS = ("event", "segment", "score", "inactive_for")
STEP_KINDS = ("wait", "wait_for", "if", "send", "set_trait", "notify", "exit")
SEND_CHANNELS = ("email", "push", "sms", "inbox", "webhook")
TEMPLATE_FIELDS = ("subject", "text", "html", "expires", "description")
JOURNEY_CHANNEL = "journey"  # due items that advance a journey: timers, not messages
TRAIT_EVENT = "journey_trait"  # the event a set_trait step applies


# -- compiled form -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventMatcher:
    """An event arriving: its type (or * for any) and a property filter."""

    type: str
    where: Callable[[dict], bool] | None = None

    def matches(self, event) -> bool:
        return (self.type in ("*", event.type)) and (self.where is None or self.where(event.properties))


@dataclass(slots=True)
class Step:
    kind: str
    next_pc: int = -1  # -1: the journey ends after this step
    duration_ms: int = 0  # wait, and the timeout of wait_for
    matcher: EventMatcher | None = None  # wait_for
    test: Predicate | None = None  # if
    then_pc: int = -1  # if true / the awaited event came
    else_pc: int = -1  # if false / timed out
    channel: str = ""  # send, notify
    template: str = ""
    purpose: str = "marketing"
    offer: str | None = None
    traits: dict | None = None  # set_trait


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    subject: str = ""
    text: str = ""
    html: str | None = None
    expires_ms: int = 0  # inbox messages

    @property
    def reads_rules(self) -> bool:
        """Uses `rules.<name>`: worth evaluating the catalog's named rules for it."""
        return any("rules" in part for part in (self.subject, self.text, self.html or ""))


@dataclass(slots=True)
class Journey:
    id: str
    order: int
    trigger: str  # event, segment, score, inactive_for
    steps: list[Step]
    start_pc: int
    matcher: EventMatcher | None = None  # event trigger
    when: Predicate | None = None  # extra condition on the profile at entry
    segment: str | None = None  # segment trigger: entering it
    score_test: Callable[[Any], bool] | None = None  # score trigger
    idle_ms: int = 0  # inactive_for trigger
    exit_events: list[EventMatcher] = field(default_factory=list)
    exit_tests: list[Predicate] = field(default_factory=list)
    reentry: str | int = "never"  # never, always, or ms since the last entry
    group: str | None = None
    priority: float = 0.0
    holdout_pct: float = 0.0
    # What the journey is, as written with the templates it sends: a run that
    # entered another digest keeps the catalog version it entered with.
    digest: str = ""


@dataclass
class Journeys:
    """Every journey of a catalog, indexed by what can start or move one."""

    all: list[Journey] = field(default_factory=list)
    by_id: dict[str, Journey] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)
    offers: dict[str, Any] = field(default_factory=dict)  # offer id -> content, for templates
    by_event: dict[str, list[Journey]] = field(default_factory=dict)  # trigger type ("*" too)
    by_segment: dict[str, list[Journey]] = field(default_factory=dict)
    scored: list[Journey] = field(default_factory=list)
    idle: list[Journey] = field(default_factory=list)
    watched: frozenset[str] = frozenset()  # event types any trigger, exit or wait_for names
    waited: dict[str, list[EventMatcher]] = field(default_factory=dict)  # exits and wait_fors by type
    reads_consent: bool = False  # some condition reads the contact state: load it for Facts
    # ... a trigger's `when` or an exit condition does: it decides whom to look at,
    # so it is loaded for everyone in a batch, not only for those looked at.
    consent_gates: bool = False
    exit_tests: tuple[Predicate, ...] = ()  # every journey's exit conditions: whom a batch must look at

    def __bool__(self) -> bool:
        return bool(self.all)

    def watches(self, event_type: str) -> bool:
        return event_type in self.watched or "*" in self.watched

    def might_act(self, event, facts: Facts) -> bool:
        """Could this event start, move or end a journey? Decided without reading
        the journey state, so most events (a page view nobody waits for) cost nothing."""
        if not self.watches(event.type):
            return False
        for kind in (event.type, "*"):
            for journey in self.by_event.get(kind, ()):
                if journey.matcher.matches(event) and (journey.when is None or journey.when(facts)):
                    return True
        return any(m.matches(event) for kind in (event.type, "*") for m in self.waited.get(kind, ()))


# -- compiling ---------------------------------------------------------------------


def compile_journeys(spec: Any, template_spec: Any, compiler: Compiler, offers: dict[str, Any]) -> Journeys:
    book = Journeys(offers=offers)
    book.templates = _templates(template_spec, compiler)
    if spec is None:
        return book
    if not isinstance(spec, list):
        compiler.problem("journeys", "a list of journeys, each with an id")
        return book
    seen: set[str] = set()
    compiler.allow_consent = True
    for i, item in enumerate(spec):
        path = f"journeys[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            compiler.problem(path, "each journey is a mapping with an id (a string)")
            continue
        if item["id"] in seen:
            compiler.problem(f"{path}.id", f"duplicate id {item['id']!r}")
            continue
        seen.add(item["id"])
        journey = _JourneyCompiler(compiler, book, path).journey(item, len(book.all))
        if journey is not None:
            journey.digest = _digest(item, template_spec, journey)
            book.all.append(journey)
    compiler.allow_consent = False
    book.reads_consent = compiler.reads_consent
    watched = set()
    for journey in book.all:
        book.by_id[journey.id] = journey
        if journey.trigger == "event":
            book.by_event.setdefault(journey.matcher.type, []).append(journey)
            watched.add(journey.matcher.type)
        elif journey.trigger == "segment":
            book.by_segment.setdefault(journey.segment, []).append(journey)
        elif journey.trigger == "score":
            book.scored.append(journey)
        else:
            book.idle.append(journey)
        for matcher in journey.exit_events + [s.matcher for s in journey.steps if s.matcher is not None]:
            book.waited.setdefault(matcher.type, []).append(matcher)
            watched.add(matcher.type)
    book.watched = frozenset(watched)
    book.exit_tests = tuple(test for journey in book.all for test in journey.exit_tests)
    return book


def _digest(item: dict, template_spec: Any, journey: Journey) -> str:
    used = sorted({step.template for step in journey.steps if step.template})
    templates = {name: template_spec.get(name) for name in used} if isinstance(template_spec, dict) else {}
    text = orjson.dumps([item, templates], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _templates(spec: Any, compiler: Compiler) -> dict[str, Template]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        compiler.problem("templates", "a mapping of template id -> {subject, text, html, expires}")
        return {}
    out = {}
    for name, body in spec.items():
        path = f"templates.{name}"
        if not isinstance(body, dict):
            compiler.problem(path, "a template is a mapping with subject, text and optionally html, expires")
            continue
        for key in body:
            if key not in TEMPLATE_FIELDS:
                compiler.problem(f"{path}.{key}", f"unknown template field; expected {', '.join(TEMPLATE_FIELDS)}")
        for key in ("subject", "text", "html"):
            source = body.get(key)
            if source is None:
                continue
            if not isinstance(source, str):
                compiler.problem(f"{path}.{key}", "a template text (Jinja2)")
                continue
            problem = template_problem(source, key == "html")
            if problem:
                compiler.problem(f"{path}.{key}", problem)
        if not body.get("text") and not body.get("html"):
            compiler.problem(path, "a template needs text (or html)")
        expires = 0
        if "expires" in body:
            try:
                expires = windows.parse_duration(body["expires"])
            except ValueError as exc:
                compiler.problem(f"{path}.expires", str(exc))
        out[str(name)] = Template(str(name), body.get("subject") or "", body.get("text") or "",
                                  body.get("html"), expires)
    return out


def template_problem(source: str, html: bool) -> str | None:
    """A syntax error found when the catalog is checked, not when a message is sent."""
    from jinja2 import TemplateSyntaxError

    from engine.catalog.templates import _compile

    try:
        _compile(source, html)
    except TemplateSyntaxError as exc:
        return f"template syntax: {exc.message} (line {exc.lineno})"
    return None


class _JourneyCompiler:
    def __init__(self, compiler: Compiler, book: Journeys, path: str):
        self.c = compiler
        self.book = book
        self.path = path
        self.program: list[Step] = []

    def journey(self, item: dict, order: int) -> Journey | None:
        c, path = self.c, self.path
        for key in item:
            if key not in JOURNEY_FIELDS:
                c.problem(f"{path}.{key}", f"unknown journey field; expected {', '.join(JOURNEY_FIELDS)}")
        journey = Journey(item["id"], order, "event", self.program, -1)
        self._trigger(item.get("trigger"), journey)
        steps = item.get("steps")
        if not isinstance(steps, list) or not steps:
            c.problem(f"{path}.steps", "a journey needs a non-empty list of steps")
        else:
            start, tails = self._block(steps, f"{path}.steps")
            journey.start_pc = start if start is not None else -1
            self._link(tails, -1)
        self._exits(item.get("exit"), journey)
        self._reentry(item.get("reentry", "never"), journey)
        group = item.get("group")
        if group is not None and (not isinstance(group, str) or not group):
            c.problem(f"{path}.group", "an exclusive group is a name")
            group = None
        journey.group = group
        priority = item.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            c.problem(f"{path}.priority", "a number")
            priority = 0
        journey.priority = float(priority)
        holdout = item.get("holdout", 0)
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout <= 100:
            c.problem(f"{path}.holdout", "a percentage between 0 and 100")
            holdout = 0
        journey.holdout_pct = float(holdout)
        return journey

    def _trigger(self, spec: Any, journey: Journey) -> None:
        c, path = self.c, f"{self.path}.trigger"
        if not isinstance(spec, dict):
            c.problem(path, "a trigger: {event: type, where, when} | {segment: id} | {score: {at_least: n}} "
                            "| {inactive_for: 30d}")
            return
        kinds = [k for k in TRIGGER_KINDS if k in spec]
        if len(kinds) != 1:
            c.problem(path, f"a trigger has exactly one of {', '.join(TRIGGER_KINDS)}")
            return
        kind = journey.trigger = kinds[0]
        allowed = {"event": ("event", "where", "when"), "segment": ("segment", "when"),
                   "score": ("score", "when"), "inactive_for": ("inactive_for", "when")}[kind]
        for key in spec:
            if key not in allowed:
                c.problem(f"{path}.{key}", f"not understood here; expected {', '.join(allowed)}")
        if "when" in spec:
            journey.when = self._gate(spec["when"], f"{path}.when")
        if kind == "event":
            journey.matcher = self._matcher(spec, path)
        elif kind == "segment":
            if not isinstance(spec["segment"], str):
                c.problem(f"{path}.segment", "the id of a segment (text)")
            elif spec["segment"] not in c.segment_ids:
                c.problem(f"{path}.segment", f"no segment named {spec['segment']!r}")
            else:
                journey.segment = spec["segment"]
        elif kind == "score":
            if not isinstance(spec["score"], dict):
                c.problem(f"{path}.score", "score takes a comparison, e.g. {at_least: 50}")
            else:
                journey.score_test, _ = c.comparison(spec["score"], f"{path}.score")
        else:
            journey.idle_ms = self._duration(spec["inactive_for"], f"{path}.inactive_for")

    def _matcher(self, spec: dict, path: str) -> EventMatcher:
        event_type = spec.get("event")
        if not isinstance(event_type, str) or not event_type:
            self.c.problem(f"{path}.event", "an event type, or * for any event")
            event_type = "*"
        return EventMatcher(event_type, self.c.property_filter(spec.get("where"), f"{path}.where"))

    def _duration(self, text: Any, path: str) -> int:
        try:
            return windows.parse_duration(text)
        except ValueError as exc:
            self.c.problem(path, str(exc))
            return windows.DAY_MS

    def _exits(self, spec: Any, journey: Journey) -> None:
        """exit: a list; `{event: purchase, where: …}` ends the journey when that
        event arrives, any other condition ends it when it holds before a step."""
        if spec is None:
            return
        path = f"{self.path}.exit"
        if isinstance(spec, dict):
            spec = [spec]
        if not isinstance(spec, list):
            self.c.problem(path, "a list of exits: {event: type, where} or a condition")
            return
        for i, item in enumerate(spec):
            item_path = f"{path}[{i}]"
            if isinstance(item, dict) and "event" in item:
                for key in item:
                    if key not in ("event", "where"):
                        self.c.problem(f"{item_path}.{key}", "an exit event takes event and where")
                journey.exit_events.append(self._matcher(item, item_path))
            else:
                journey.exit_tests.append(self._gate(item, item_path))

    def _gate(self, spec: Any, path: str) -> Predicate:
        """A condition that decides whether a person is looked at (a trigger's
        `when`, an exit): notes whether it reads the contact state."""
        before, self.c.reads_consent = self.c.reads_consent, False
        test = self.c.condition(spec, path).test
        if self.c.reads_consent:
            self.book.consent_gates = True
        self.c.reads_consent = before or self.c.reads_consent
        return test

    def _reentry(self, spec: Any, journey: Journey) -> None:
        if spec in ("never", "always"):
            journey.reentry = spec
        elif isinstance(spec, dict) and set(spec) == {"after"}:
            journey.reentry = self._duration(spec["after"], f"{self.path}.reentry.after")
        else:
            self.c.problem(f"{self.path}.reentry", "never (the default), always, or {after: 7d}")

    # Steps compile to a flat program; `tails` are (step, attribute) pairs still
    # to point at whatever follows the block they end.
    def _block(self, items: Any, path: str) -> tuple[int | None, list[tuple[Step, str]]]:
        if items is None:
            return None, []
        if not isinstance(items, list):
            self.c.problem(path, "a list of steps")
            return None, []
        start, pending = None, []
        for i, item in enumerate(items):
            step_path = f"{path}[{i}]"
            step = self._step(item, step_path)
            if step is None:
                continue
            pc = len(self.program)
            self.program.append(step)
            self._link(pending, pc)
            pending = []
            start = pc if start is None else start
            if step.kind in ("if", "wait_for"):
                then_start, then_tails = self._block(item.get("then"), f"{step_path}.then")
                else_start, else_tails = self._block(item.get("else"), f"{step_path}.else")
                pending += then_tails + else_tails
                if then_start is None:
                    pending.append((step, "then_pc"))
                else:
                    step.then_pc = then_start
                if else_start is None:
                    pending.append((step, "else_pc"))
                else:
                    step.else_pc = else_start
            elif step.kind != "exit":
                pending.append((step, "next_pc"))
        return start, pending

    @staticmethod
    def _link(tails: list[tuple[Step, str]], pc: int) -> None:
        for step, attribute in tails:
            setattr(step, attribute, pc)

    def _step(self, item: Any, path: str) -> Step | None:
        c = self.c
        if item == "exit":
            return Step("exit")
        if not isinstance(item, dict):
            c.problem(path, f"a step is a mapping with one of {', '.join(STEP_KINDS)}")
            return None
        kinds = [k for k in STEP_KINDS if k in item]
        if len(kinds) != 1:
            c.problem(path, f"a step has exactly one of {', '.join(STEP_KINDS)}")
            return None
        kind = kinds[0]
        allowed = {"wait": ("wait",), "wait_for": ("wait_for", "then", "else"), "if": ("if", "then", "else"),
                   "send": ("send",), "set_trait": ("set_trait",), "notify": ("notify",),
                   "exit": ("exit",)}[kind]
        for key in item:
            if key not in allowed:
                c.problem(f"{path}.{key}", f"not understood in a {kind} step; expected {', '.join(allowed)}")
        arg = item[kind]
        step = Step(kind)
        if kind == "wait":
            step.duration_ms = self._duration(arg, f"{path}.wait")
        elif kind == "wait_for":
            if not isinstance(arg, dict) or "event" not in arg or "timeout" not in arg:
                c.problem(f"{path}.wait_for", "wait_for takes {event: type, where: {…}, timeout: 3d}")
                return step
            for key in arg:
                if key not in ("event", "where", "timeout"):
                    c.problem(f"{path}.wait_for.{key}", "wait_for takes event, where and timeout")
            step.matcher = self._matcher(arg, f"{path}.wait_for")
            step.duration_ms = self._duration(arg["timeout"], f"{path}.wait_for.timeout")
        elif kind == "if":
            step.test = c.condition(arg, f"{path}.if").test
        elif kind in ("send", "notify"):
            self._message_step(step, arg, f"{path}.{kind}")
        elif kind == "set_trait":
            if not isinstance(arg, dict) or not arg or not all(isinstance(k, str) for k in arg):
                c.problem(f"{path}.set_trait", "set_trait takes a mapping of trait -> value (null removes it)")
            elif any(isinstance(v, dict | list) for v in arg.values()):
                c.problem(f"{path}.set_trait", "trait values set by a journey are plain values")
            else:
                step.traits = dict(arg)
        return step

    def _message_step(self, step: Step, arg: Any, path: str) -> None:
        c = self.c
        if not isinstance(arg, dict):
            c.problem(path, "takes {channel, template, purpose?, offer?}")
            return
        allowed = ("channel", "template", "purpose", "offer")
        for key in arg:
            if key not in allowed:
                c.problem(f"{path}.{key}", f"expected {', '.join(allowed)}")
        notify = step.kind == "notify"
        step.channel = arg.get("channel", "operator" if notify else None)
        if notify:
            if not isinstance(step.channel, str) or step.channel in SEND_CHANNELS:
                c.problem(f"{path}.channel", "an operator channel (a webhook name such as operator or sales), "
                                             "not a channel that reaches the person")
        elif step.channel not in SEND_CHANNELS:
            c.problem(f"{path}.channel", f"one of {', '.join(SEND_CHANNELS)}")
        step.template = arg.get("template")
        if step.template not in self.book.templates:
            c.problem(f"{path}.template", f"no template named {step.template!r} under templates")
        step.purpose = arg.get("purpose", "operations" if notify else "marketing")
        if not isinstance(step.purpose, str) or not step.purpose:
            c.problem(f"{path}.purpose", "a purpose name, e.g. marketing or transactional")
        step.offer = arg.get("offer")
        if step.offer is not None and step.offer not in self.book.offers:
            c.problem(f"{path}.offer", f"no offer named {step.offer!r}")
