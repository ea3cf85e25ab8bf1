"""The pure transitions of a person's journey state: what a batch of events or a
fired timer does to it, as a list of actions for engine/followups/journey_runner.py to
carry out against Redis. The journeys themselves are compiled by
engine/catalog/journeys.py."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import orjson

from engine.catalog import windows
from engine.catalog.journeys import JOURNEY_CHANNEL, Journey, Journeys, Step
from engine.catalog.rules import Facts
from engine.catalog.templates import TemplateRenderError, render
from engine.followups.message import Message

MAX_STEPS_AT_ONCE = 100
RECENT_RUNS = 50  # run ids remembered per person: a redelivered trigger is a no-op
INBOX_EXPIRES_DEFAULT = "30d"


# -- the state of one person's journeys --------------------------------------------
#
# {"a": {journey: run}, "e": {journey: [last entry ms, 1 if held out]}, "r": [run ids],
#  "s": {score journey: [behaviour points, ms, trait points] when last seen passing}}
# run = {"run": id, "pc": step, "at": entry ms, "vars": trigger event properties,
#        "until": ms the wait ends (0 when not waiting), "held": 1 if held out,
#        "v": the catalog version it entered with, "jd": the journey's digest then}


def new_state() -> dict:
    return {"a": {}, "e": {}, "r": [], "s": {}}


def decode_state(raw: bytes | None) -> dict:
    if not raw:
        return new_state()
    state = orjson.loads(raw)
    for key, empty in (("a", {}), ("e", {}), ("r", []), ("s", {})):
        state.setdefault(key, empty)
    return state


def encode_state(state: dict) -> bytes:
    return orjson.dumps(state)


def run_id(journey: str, key: str) -> str:
    return hashlib.blake2b(f"{journey}|{key}".encode(), digest_size=8).hexdigest()


def held_out(person: str, journey: Journey) -> bool:
    """A deterministic share of entrants gets nothing: hash of person and journey."""
    if journey.holdout_pct <= 0:
        return False
    digest = hashlib.blake2b(f"{journey.id}|{person}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < journey.holdout_pct * 100


@dataclass(slots=True)
class Actions:
    """What a transition asks the runner to do."""

    messages: list[Message] = field(default_factory=list)  # sends, timers and operator alerts, to schedule
    traits: list[tuple[str, dict]] = field(default_factory=list)  # (event id, traits)
    outcomes: list[dict] = field(default_factory=list)  # why something was not sent
    log: list[str] = field(default_factory=list)  # entered / exited / held out, for tests and logs
    entries: list[tuple[str, str, bool]] = field(default_factory=list)  # (journey, run id, held out): KPIs
    exposures: list[tuple[str, str]] = field(default_factory=list)  # ("e:<experiment>", arm) of tested journeys
    # The journey funnel: (journey, step, +1 or -1) as runs start and stop
    # waiting at a step, and (journey, run id, "finished" | "exited" | "ended") as runs end.
    waits: list[tuple[str, int, int]] = field(default_factory=list)
    ended: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Transition:
    """One person at one moment: the facts conditions read and the state to change."""

    book: Journeys
    person: str
    facts: Facts
    state: dict
    now: int
    actions: Actions = field(default_factory=Actions)
    # The journeys of earlier catalog versions some run entered with, by
    # version (the runner loads them); the channel told when a run cannot go on.
    books: dict[int, Journeys] = field(default_factory=dict)
    alert_channel: str = ""

    # -- events ----------------------------------------------------------------

    def on_events(self, events: list, entered_segments: set[str]) -> None:
        """In event time order: each event first ends or wakes the runs it concerns
        (a purchase ends cart abandonment even while it waits), then starts the
        journeys it triggers, so a cart and its purchase in one batch send
        nothing. Segments entered and score crossings are the batch's end state."""
        book, active = self.book, self.state["a"]
        # Runs the batch's end state exits end first: they free their exclusive
        # group for a journey this batch triggers.
        self.check_exit_conditions()
        for event in sorted(events, key=lambda e: e.ts):
            for jid in list(active):
                journey, journeys = self._journey(jid)
                if journey is None:
                    continue
                if any(m.matches(event) for m in journey.exit_events):
                    self._end(jid, f"exit: {event.type}")
                    continue
                run = active[jid]
                step = journey.steps[run["pc"]] if 0 <= run["pc"] < len(journey.steps) else None
                if step is not None and step.kind == "wait_for" and run.get("until") and step.matcher.matches(event):
                    self._stop_waiting(jid, run)
                    self._advance(journey, run, step.then_pc, journeys)
            self.enter([(journey, f"event:{event.id}", event.properties)
                        for kind in (event.type, "*") for journey in book.by_event.get(kind, ())
                        if journey.matcher.matches(event)])
        last_id = events[-1].id if events else "-"
        candidates = [(journey, f"segment:{segment}:{last_id}", {})
                      for segment in entered_segments for journey in book.by_segment.get(segment, ())]
        if book.scored:
            candidates.extend((journey, f"score:{last_id}", {"score": self.facts.score()})
                              for journey in self._score_crossings())
        self.enter(candidates)
        self.check_exit_conditions()

    def _score_crossings(self) -> list[Journey]:
        """Score journeys whose threshold the score crossed: it passes now and did
        not pass just before this batch. "Just before" is the score last seen
        passing (kept in the state as behaviour and trait points) decayed to now:
        a lead who stays hot through new activity crosses once, one who cooled
        below the threshold and heats up again crosses again. A person is only
        looked at while passing, so a stale entry means they cooled meanwhile."""
        scoring, facts, seen = self.facts.catalog.scoring, self.facts, self.state["s"]
        score = facts.score()
        behaviour = scoring.behaviour_points(facts.profile.s, self.now)
        crossed = []
        for journey in self.book.scored:
            last = seen.get(journey.id)
            if not journey.score_test(score):
                seen.pop(journey.id, None)
                continue
            if last is None or not journey.score_test(scoring.behaviour_points(last[:2], self.now) + last[2]):
                crossed.append(journey)
            seen[journey.id] = [round(behaviour, 4), self.now, round(score - behaviour, 4)]
        return crossed

    def check_exit_conditions(self) -> None:
        for jid in list(self.state["a"]):
            journey, _ = self._journey(jid)
            if journey is not None and any(test(self.facts) for test in journey.exit_tests):
                self._end(jid, "exit condition")

    def _journey(self, jid: str) -> tuple[Journey | None, Journeys | None]:
        """The journey a run goes on with, and its book: the catalog's, unless
        the journey changed since the run entered, then the version it entered
        with. A run whose journey was removed, or whose version is no longer
        kept, ends here with the reason (and the operator is told of the latter)."""
        run = self.state["a"][jid]
        current = self.book.by_id.get(jid)
        if current is None:
            self._end(jid, "journey removed from the catalog")
            return None, None
        if run.get("jd") in (None, current.digest):
            return current, self.book
        entered = self.books.get(run.get("v"))
        journey = entered.by_id.get(jid) if entered is not None else None
        if journey is not None and journey.digest == run["jd"]:
            return journey, entered
        self._stranded(jid, f"journey changed while the run waited and catalog version {run.get('v')}, "
                            "which it entered with, is no longer kept")
        return None, None

    def _stranded(self, jid: str, reason: str) -> None:
        """End a run that cannot go on, with the reason in the person's outcomes,
        and an alert for the operator channel (once per run: its id derives from the run's)."""
        run = self.state["a"].get(jid)
        if run is None:
            return
        self._end(jid, reason)
        self.actions.outcomes.append({"id": f"jr:{run['run']}", "channel": JOURNEY_CHANNEL, "journey": jid,
                                      "at": self.now, "status": "ended", "reason": reason})
        if self.alert_channel:
            self.actions.messages.append(Message(
                id=f"alert:jr:{run['run']}", person=self.person, channel=self.alert_channel, due_ms=self.now,
                template="journey_stranded", purpose="operations",
                body={"alert": "journey_stranded", "journey": jid, "run": run["run"], "reason": reason,
                      "text": f"journey {jid}: the run of {self.person} ended: {reason}"}))

    # -- entering --------------------------------------------------------------

    def enter(self, candidates: list[tuple[Journey, str, dict]]) -> None:
        """Highest priority first; at most one journey of an exclusive group."""
        state, active = self.state, self.state["a"]
        taken: set[str] = set()
        for journey, key, variables in sorted(candidates, key=lambda c: (-c[0].priority, c[0].order)):
            if journey.id in taken:
                continue
            if not self._may_enter(journey):
                continue
            rid = run_id(journey.id, key)
            if rid in state["r"]:
                continue
            if journey.when is not None and not journey.when(self.facts):
                continue
            if not self._in_arm(journey):
                continue
            if journey.group is not None and not self._claim_group(journey):
                continue
            taken.add(journey.id)
            state["r"] = (state["r"] + [rid])[-RECENT_RUNS:]
            held = held_out(self.person, journey)
            state["e"][journey.id] = [self.now, 1 if held else 0]
            self.actions.entries.append((journey.id, rid, held))
            self.actions.log.append(f"{'held out' if held else 'entered'}: {journey.id}")
            run = active[journey.id] = {"run": rid, "pc": journey.start_pc, "at": self.now,
                                        "vars": variables, "until": 0, "v": self.facts.catalog.version,
                                        "jd": journey.digest}
            if held:
                # The control group walks the journey without being touched: it
                # holds the exclusive group's place and meets the same waits and
                # exits, so it stays comparable with the people treated.
                run["held"] = 1
            self._advance(journey, run, journey.start_pc)

    def _in_arm(self, journey: Journey) -> bool:
        """A journey an experiment tests: the person is exposed to their arm,
        and enters only if the arm lists it."""
        experiment = self.facts.catalog.journey_experiments.get(journey.id)
        if experiment is None:
            return True
        arm = experiment.arm_of(self.person)
        self.actions.exposures.append((f"e:{experiment.id}", arm.id))
        if journey.id in arm.journeys:
            return True
        self.actions.log.append(f"not in arm {arm.id} of {experiment.id}: {journey.id}")
        return False

    def _may_enter(self, journey: Journey) -> bool:
        if journey.id in self.state["a"]:
            return False
        last = self.state["e"].get(journey.id)
        if last is None or journey.reentry == "always":
            return True
        if journey.reentry == "never":
            return False
        return self.now - last[0] >= journey.reentry

    def _claim_group(self, journey: Journey) -> bool:
        """A journey of the same group already running keeps its place unless this
        one has a higher priority, which replaces it."""
        for jid in list(self.state["a"]):
            other = self.book.by_id.get(jid)
            if other is None or other.group != journey.group:
                continue
            if other.priority >= journey.priority:
                return False
            self._end(jid, f"replaced by {journey.id} (higher priority in group {journey.group})")
        return True

    # -- timers ----------------------------------------------------------------

    def on_timer(self, body: dict) -> None:
        """A wait ended or a wait_for timed out; a stale timer (the run moved on,
        ended, or was replaced) changes nothing."""
        jid = body.get("journey")
        run = self.state["a"].get(jid)
        if run is None or run["run"] != body.get("run") or run["pc"] != body.get("pc"):
            return
        if not run.get("until"):
            return
        journey, journeys = self._journey(jid)
        if journey is None:
            return
        self._stop_waiting(jid, run)
        if not 0 <= run["pc"] < len(journey.steps):  # a run from before versions were kept
            self._stranded(jid, f"step {run['pc'] + 1} no longer exists: the journey was shortened")
            return
        step = journey.steps[run["pc"]]
        self.check_exit_conditions()
        if jid in self.state["a"]:
            self._advance(journey, run, step.else_pc if step.kind == "wait_for" else step.next_pc, journeys)

    def on_idle(self, journey: Journey, last_seen_ms: int) -> None:
        self.enter([(journey, f"idle:{last_seen_ms}", {"last_seen": last_seen_ms})])

    # -- running steps ---------------------------------------------------------

    def _advance(self, journey: Journey, run: dict, pc: int, journeys: Journeys | None = None) -> None:
        """Run steps from `pc` until a wait or the end; `journeys`: the book of
        the version the run goes on with (its templates)."""
        journeys = journeys or self.book
        for _ in range(MAX_STEPS_AT_ONCE):
            if pc < 0:
                self._end(journey.id, "finished")
                return
            if pc >= len(journey.steps):
                self._stranded(journey.id, f"step {pc + 1} no longer exists: the journey was shortened")
                return
            if any(test(self.facts) for test in journey.exit_tests):
                self._end(journey.id, "exit condition")
                return
            step = journey.steps[pc]
            run["pc"] = pc
            if step.kind in ("wait", "wait_for"):
                run["until"] = self.now + step.duration_ms
                self.actions.waits.append((journey.id, pc, 1))
                self.actions.messages.append(Message(
                    id=f"jt:{run['run']}:{pc}", person=self.person, channel=JOURNEY_CHANNEL,
                    due_ms=run["until"], template=journey.id, purpose="journey",
                    body={"journey": journey.id, "run": run["run"], "pc": pc}))
                return
            if step.kind == "exit":
                self._end(journey.id, "exit step")
                return
            if step.kind == "if":
                pc = step.then_pc if step.test(self.facts) else step.else_pc
                continue
            if run.get("held"):
                pass  # held out: sends and traits are what the control group goes without
            elif step.kind == "set_trait":
                self.actions.traits.append((f"jt:{run['run']}:{pc}", step.traits))
            else:
                self._message(journey, run, step, pc, journeys)
            pc = step.next_pc
        self._end(journey.id, "too many steps at once")

    def _stop_waiting(self, jid: str, run: dict) -> None:
        if run.get("until"):
            self.actions.waits.append((jid, run["pc"], -1))
        run["until"] = 0

    def _end(self, jid: str, reason: str) -> None:
        run = self.state["a"].get(jid)
        if run is None:
            return
        self._stop_waiting(jid, run)
        del self.state["a"][jid]
        self.actions.log.append(f"ended: {jid}: {reason}")
        kind = "finished" if reason in ("finished", "exit step") else "exited" if reason.startswith("exit") else "ended"
        self.actions.ended.append((jid, run["run"], kind))

    def _message(self, journey: Journey, run: dict, step: Step, pc: int, journeys: Journeys) -> None:
        template = journeys.templates[step.template]
        message_id = f"j:{run['run']}:{pc}"
        values = template_values(self.person, self.facts, template, journeys.offers.get(step.offer) or {},
                                 event=run.get("vars") or {}, journey=journey.id)
        body = message_body(template, step.channel, values, {"journey": journey.id}, notify=step.kind == "notify")
        if isinstance(body, str):
            self.actions.outcomes.append({"id": message_id, "channel": step.channel, "template": step.template,
                                          "journey": journey.id, "at": self.now, "status": "dropped",
                                          "reason": body})
            return
        self.actions.messages.append(Message(
            id=message_id, person=self.person, channel=step.channel, due_ms=self.now,
            template=step.template, purpose=step.purpose, body=body))


def template_values(person: str, facts: Facts, template, offer: dict, **origin) -> dict:
    """What a message's templates can read: `person`, `traits`, `score`,
    `offer`, `rules` (for templates naming them) and the origin (`journey` and
    the trigger `event`, or `broadcast`)."""
    values = {"person": person, "traits": dict(facts.traits), "event": {}, "score": facts.score(),
              "offer": offer, **origin}
    if template.reads_rules:
        # The catalog's named rules on the profile now: a content email picks
        # what to say from what the person did over the rules' windows.
        values["rules"] = {name: bool(test(facts)) for name, test in facts.catalog.rules.items()}
    return values


def message_body(template, channel: str, values: dict, origin: dict, notify: bool = False) -> dict | str:
    """The body the channel sends, or why there is none (the reason it is
    dropped). Email is rendered when sent (its links are signed then) and goes
    to the `email` trait; the other channels are rendered now, SMS to the
    `phone` trait. `origin` ({"journey": id} or {"broadcast": id}) says whose
    KPIs the message counts for."""
    traits = values["traits"]
    if channel == "email":
        to = traits.get("email")
        if not isinstance(to, str) or "@" not in to:
            return "no email address trait"
        body = {"to": to, "subject": template.subject, "text": template.text, "values": values}
        if template.html:
            body["html"] = template.html
        return body
    try:
        body = {"title": render(template.subject, values), "text": render(template.text, values), **origin}
        if channel == "sms":  # the gateway needs the number; the suppression list may name it
            phone = traits.get("phone")
            if not isinstance(phone, str) or not phone:
                return "no phone trait"
            body["to"] = phone
        if template.html:
            body["html"] = render(template.html, values, html=True)
    except TemplateRenderError as exc:
        return str(exc)
    if channel == "inbox":
        body["expires_ms"] = template.expires_ms or windows.parse_duration(INBOX_EXPIRES_DEFAULT)
    if notify:
        body["traits"] = values["traits"]
        body["score"] = values["score"]
    return body
