"""The compiled catalog as decide, the pipeline and the journeys read it: offers
in rank order, placements with their indexes, segments, windowed features,
scoring, journeys and the contact policy; and the holder that swaps a new one in
atomically. engine/catalog/compile.py builds it from the catalog's text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.catalog.arbitration import NO_ECONOMICS, Economics
from engine.catalog.audiences import Audiences
from engine.catalog.broadcasts import Broadcast
from engine.catalog.experiments import Experiment
from engine.catalog.journeys import Journeys
from engine.catalog.learning import Learning
from engine.catalog.rules import Facts, Predicate, normalized
from engine.catalog.windows import Feature


@dataclass(slots=True)
class Offer:
    rank: int  # position in arbitration order: priority desc, score desc, id
    id: str
    kind: str
    placements: tuple[str, ...]
    content: Any
    product_line: str | None
    value: float | None
    priority: float
    score: float
    start_ms: int | None
    end_ms: int | None
    when: Predicate
    exclude: Predicate | None
    holdout_pct: float
    group: str | None
    economics: Economics = NO_ECONOMICS  # worth, propensity, lever: expected-value arbitration
    cap_limit: int | None = None
    cap_feature: Feature | None = None
    cap_buckets: int = 0
    atoms: frozenset | None = None
    # Discount guardrails (docs/catalog.md): what the offer may cost, per UTC day
    # or for its whole life ("campaign"), counted from verified redemptions;
    # a pool of unique codes instead of one static code; promotional offers
    # count against the person's on-site pressure cap.
    budget: Budget | None = None
    code_pool: str | None = None
    promotional: bool = False

    def answer(self) -> dict:
        """What decide returns for this offer (built once, shared read-only)."""
        body = {"offer": self.id, "kind": self.kind, "content": self.content}
        if self.product_line is not None:
            body["product_line"] = self.product_line
        if self.value is not None:
            body["value"] = self.value
        return body



@dataclass(frozen=True, slots=True)
class Budget:
    amount: float  # money, as the discount's cost is counted: revenue x value / 100
    per: str  # "day" (UTC) or "campaign" (every redemption the offer ever had)


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """A hidden per-person counter of impressions and the count that stops
    more: the catalog's discounts per person and on-site pressure caps."""

    feature: Feature
    buckets: int
    limit: int

    def reached(self, facts: Facts) -> bool:
        return facts.window(self.feature, self.buckets) >= self.limit


@dataclass(slots=True)
class Placement:
    name: str
    description: str = ""
    always: list[int] = field(default_factory=list)  # ranks of offers no index narrows
    by_atom: dict[tuple, list[int]] = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list)  # every offer that can show here
    arbitration: str = "priority"  # or expected_value (engine/catalog/arbitration.py)



def offer_for_templates(answer: dict) -> dict:
    """An offer as templates see it: a whole number reads as one ("25% off", not
    "25.0% off")."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in answer.items()}



@dataclass(slots=True)
class Scoring:
    """Lead score = behavioural points (stored, decaying with a half-life) +
    trait points (computed from the traits as they are now)."""

    half_life_ms: int = 0
    event_rules: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)
    trait_rules: list[tuple[str, Any, float]] = field(default_factory=list)

    def event_points(self, event_type: str, properties: dict) -> float:
        points = 0.0
        for rules in (self.event_rules.get(event_type), self.event_rules.get("*")):
            for matches, value in rules or ():
                if matches is None or matches(properties):
                    points += value
        return points

    def behaviour_points(self, stored: list, now_ms: int) -> float:
        if not stored:
            return 0.0
        value, at_ms = stored
        if self.half_life_ms and now_ms > at_ms:
            value *= 0.5 ** ((now_ms - at_ms) / self.half_life_ms)
        return value

    def score(self, profile, now_ms: int) -> float:
        total = self.behaviour_points(profile.s, now_ms)
        traits = profile.t
        for name, test, points in self.trait_rules:
            if test(traits.get(name)):
                total += points
        return round(total, 4)



@dataclass
class Catalog:
    digest: str
    placements: dict[str, Placement]
    offers: list[Offer]  # in rank order
    offers_by_id: dict[str, Offer]
    segments: dict[str, Predicate]
    features: dict[str, Feature]
    features_by_type: dict[str, list[Feature]]
    scoring: Scoring
    protected_traits: frozenset[str]
    rules: dict[str, Predicate]
    window_uses: dict[str, tuple[Feature, int]] = field(default_factory=dict)
    # ",<fid>:<resolution_ms>:<length>,…" (compile.feature_table): the rings the Lua scripts may keep.
    feature_table: bytes = b""
    # Trait and context names some offer is indexed under: the only atoms worth
    # building for a request.
    indexed_traits: frozenset[str] = frozenset()
    indexed_context: frozenset[str] = frozenset()
    # Tracked segments, their destinations and what time changes in segments
    # (engine/catalog/audiences.py).
    audiences: Audiences = field(default_factory=Audiences)
    # Journeys and their message templates (engine/catalog/journeys.py).
    journeys: Journeys = field(default_factory=Journeys)
    # One message to a tracked segment at a time, by id (engine/catalog/broadcasts.py).
    broadcasts: dict[str, Broadcast] = field(default_factory=dict)
    # The ContactPolicy fields (engine/followups/contacts.py) the catalog's
    # contact_policy section sets; the scheduler takes the others from settings.
    contact_policy: dict[str, Any] = field(default_factory=dict)
    # How expected-value placements learn propensities (engine/catalog/learning.py); None: they do not.
    learning: Learning | None = None
    # The offers a learned model is kept for, by id, in rank order (compile.py _learnable).
    learnable: dict[str, Offer] = field(default_factory=dict)
    # Experiments (engine/catalog/experiments.py) by id, by the placement they
    # run on, and by the journey they test.
    experiments_by_id: dict[str, Experiment] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)
    journey_experiments: dict[str, Experiment] = field(default_factory=dict)
    # Guardrails read by decide's eligibility: impressions of any discount per
    # person in a window (`discounts`), promotional impressions per person per
    # day and week (`contact_policy.caps.onsite`).
    discount_limit: WindowLimit | None = None
    onsite_limits: tuple[WindowLimit, ...] = ()
    # Offers the budget snapshot (engine/decisions/budgets.py) watches: those
    # with a budget, and the code pools named by offers (pool -> offer id).
    budgeted: tuple[Offer, ...] = ()
    code_pools: dict[str, str] = field(default_factory=dict)
    # Its number among the published catalogs (engine/catalog/publish.py), set
    # when it is put in force; 0 when it was never published.
    version: int = 0

    # event type → (features whose filter must run, {property: {value: features}}):
    # a filter that is one equality is a dict lookup instead of a test per feature.
    feature_index: dict[str, tuple[list[Feature], dict[str, dict[tuple, list[Feature]]]]] = field(
        default_factory=dict)

    def experiment(self, experiment_id: str) -> Experiment | None:
        return self.experiments_by_id.get(experiment_id)

    def counted(self, event_type: str, properties: dict) -> list[tuple[Feature, float | int]]:
        """Every windowed feature one event counts for, with what it adds."""
        found = []
        for kind in (event_type, "*"):
            entry = self.feature_index.get(kind)
            if entry is None:
                continue
            scanned, by_property = entry
            for feature in scanned:
                amount = feature.amount(properties)
                if amount is not None:
                    found.append((feature, amount))
            for name, by_value in by_property.items():
                value = properties.get(name)
                if value is None:
                    continue
                for feature in by_value.get(normalized(value), ()):
                    amount = feature.measure(properties)
                    if amount is not None:
                        found.append((feature, amount))
        return found

    def facts(self, profile, context: dict, now_ms: int) -> Facts:
        return Facts(self, profile, context, now_ms)

    def segments_of(self, profile, now_ms: int) -> list[str]:
        facts = Facts(self, profile, {}, now_ms)
        return [sid for sid in self.segments if facts.in_segment(sid)]



def atoms_of(catalog: Catalog, profile, context: dict) -> list[tuple]:
    """Index atoms a person and a request present: the value (each element of a
    list) of every trait and context field some offer is indexed under."""
    atoms = []
    traits = profile.t
    for name in catalog.indexed_traits:
        value = traits.get(name)
        if value is None:
            continue
        if isinstance(value, list):
            atoms.extend(("t", name, normalized(item)) for item in value)
        else:
            atoms.append(("t", name, normalized(value)))
    for name in catalog.indexed_context:
        value = context.get(name)
        if value is not None:
            atoms.append(("c", name, normalized(value)))
    return atoms



class CatalogHolder:
    """The compiled catalog in force. Readers take `.current` once per request;
    a reload builds a new Catalog and swaps one reference, so a request never
    sees half of two catalogs."""

    def __init__(self, catalog: Catalog, source_text: str = "", version: int = 0):
        catalog.version = version
        self.current = catalog
        self.source_text = source_text

    @property
    def version(self) -> int:
        """The number of the catalog in force among those published (0: never published)."""
        return self.current.version

    def swap(self, catalog: Catalog, source_text: str, version: int = 0) -> None:
        catalog.version = version
        self.current = catalog
        self.source_text = source_text
