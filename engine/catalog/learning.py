"""What the catalog says about learning propensities, compiled:

    learning:
      reward: click          # or conversion: a server-sent purchase after a verified impression
      half_life: 3d          # older evidence fades, so the model follows a change
      exploration: 0.05      # at least this share of decisions is chosen uniformly
      prior_weight: 20       # the impressions an offer's declared propensity counts for
      buckets:               # the few features that make a context bucket
        - {context: device, values: [mobile, desktop]}
        - {trait: plan, values: [free, pro]}
        - {segment: crm_buyers}

A bucket is named by the features' values in order (`mobile|pro|1`); a value
outside a feature's list is `other`, so a browser naming any device it likes
adds one bucket, never a new one per request. The model counts per offer and
bucket (engine/decisions/learning.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.catalog.rules import Compiler
from engine.catalog.windows import parse_duration

REWARDS = ("click", "conversion")
MAX_BUCKET_FEATURES = 4
MAX_BUCKETS = 64
MAX_VALUES = 16
OTHER = "other"
ALL = "*"  # the bucket of a catalog that names no features
DEFAULT_HALF_LIFE_MS = 3 * 86_400_000
LEARNING_FIELDS = ("reward", "half_life", "exploration", "prior_weight", "buckets")


@dataclass(frozen=True, slots=True)
class BucketFeature:
    source: str  # context | trait | segment
    name: str
    values: tuple[str, ...] = ()  # for a segment: empty (in it or not)

    def value(self, facts) -> str:
        if self.source == "segment":
            return "1" if facts.in_segment(self.name) else "0"
        raw = facts.context.get(self.name) if self.source == "context" else facts.traits.get(self.name)
        if raw is None:
            return OTHER
        value = label(raw)
        return value if value in self.values else OTHER


@dataclass(frozen=True, slots=True)
class Learning:
    reward: str = "click"
    half_life_ms: int = DEFAULT_HALF_LIFE_MS
    exploration: float = 0.05
    prior_weight: float = 20.0
    buckets: tuple[BucketFeature, ...] = ()

    def bucket_of(self, facts) -> str:
        if not self.buckets:
            return ALL
        return "|".join(feature.value(facts) for feature in self.buckets)


def label(value: Any) -> str:
    """A feature value as a bucket names it: 1 and 1.0 alike, true apart from 1."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def compile_learning(spec: Any, compiler: Compiler) -> Learning | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        compiler.problem("learning", "a mapping: reward, half_life, exploration, prior_weight, buckets")
        return None
    for key in spec:
        if key not in LEARNING_FIELDS:
            compiler.problem(f"learning.{key}", f"unknown field; expected {', '.join(LEARNING_FIELDS)}")
    reward = spec.get("reward", "click")
    if reward not in REWARDS:
        compiler.problem("learning.reward", f"one of {', '.join(REWARDS)}")
    half_life_ms = DEFAULT_HALF_LIFE_MS
    if "half_life" in spec:
        try:
            half_life_ms = parse_duration(spec["half_life"])
        except ValueError as exc:
            compiler.problem("learning.half_life", str(exc))
    exploration = _fraction(spec.get("exploration", 0.05), "learning.exploration", compiler, 0.0, 1.0)
    prior_weight = _fraction(spec.get("prior_weight", 20), "learning.prior_weight", compiler, 0.0, 1e6)
    return Learning(reward, half_life_ms, exploration, prior_weight, _buckets(spec.get("buckets", []), compiler))


def _buckets(spec: Any, compiler: Compiler) -> tuple[BucketFeature, ...]:
    if not isinstance(spec, list):
        compiler.problem("learning.buckets", "a list of {context|trait: name, values: [...]} or {segment: id}")
        return ()
    if len(spec) > MAX_BUCKET_FEATURES:
        compiler.problem("learning.buckets", f"at most {MAX_BUCKET_FEATURES} features")
        return ()
    features, count = [], 1
    for i, item in enumerate(spec):
        path = f"learning.buckets[{i}]"
        sources = [s for s in ("context", "trait", "segment") if isinstance(item, dict) and s in item]
        if len(sources) != 1 or not isinstance(item[sources[0]], str):
            compiler.problem(path, "one of context: <field>, trait: <name> or segment: <id>")
            continue
        source, name = sources[0], item[sources[0]]
        extra = set(item) - {source, "values"}
        if extra:
            compiler.problem(f"{path}.{sorted(extra)[0]}", "unknown field; expected values")
        if source == "segment":
            if name not in compiler.segment_ids:
                compiler.problem(f"{path}.segment", f"no segment {name!r} in the catalog")
            features.append(BucketFeature(source, name))
            count *= 2
            continue
        values = item.get("values")
        if (not isinstance(values, list) or not values or len(values) > MAX_VALUES
                or not all(isinstance(v, str | int | bool) and "|" not in str(v) for v in values)):
            compiler.problem(f"{path}.values", f"a list of 1 to {MAX_VALUES} values without | (others count as {OTHER!r})")
            continue
        features.append(BucketFeature(source, name, tuple(label(v) for v in values)))
        count *= len(values) + 1
    if count > MAX_BUCKETS:
        compiler.problem("learning.buckets", f"{count} buckets; at most {MAX_BUCKETS} (fewer features or values)")
    return tuple(features)


def _fraction(value: Any, path: str, compiler: Compiler, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        compiler.problem(path, f"a number from {low:g} to {high:g}")
        return low
    return float(value)
