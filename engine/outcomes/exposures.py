"""Who was exposed to what, and what they did after: the counts behind each
hold-out offer's uplift and each experiment's arms.

An exposure is what decide did (intent to treat): a hold-out offer chosen
("t"), or one it would have chosen but held out ("c", logged as would-have-
shown), or a person's arm of an experiment that ran on a placement they asked
for. The first exposure of a person is kept in their exposures hash
(Keys.exposures) and counted once; a conversion (a server purchase within the
attribution window after it), a click or an unsubscribe is credited once per
person and exposure by a marker beside it, and revenue once per purchase. The
counters are HASHes under the {kpi} tag: exact, and read in one round trip.

Two steps, not one script: a person's hash and the counters live in different
Cluster slots. The first (per person, atomic) decides what is new; the second
adds it. A crash between them loses that count, never doubles one."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from engine.catalog.model import Catalog
from engine.outcomes.stats import mean_effect, proportion_effect, sample_ratio, uplift_interval
from engine.store.client import run_scripts
from engine.store.keys import EXPOSURE_TTL_S, Keys

ATTRIBUTION_MS = 7 * 86_400_000  # a purchase counts for the exposures of the week before it
HOLDOUT, EXPERIMENT = "h:", "e:"

# Both scripts answer, flat, quintuples: what (x exposed, c converted, k clicked,
# u unsubscribed, r revenue), the exposure's field, its group, its bucket, and
# for r "<revenue>|<discount cost>|<growth of the exposure's revenue squared>".
#
# "After" allows 5 s for the clocks of two processes; a purchase made before
# the decide (an order-confirmation page) is not what it earned.
#
# A person's recent purchases are kept too ("p><event id>" -> "<ms>|<revenue>|
# <cost>", for PENDING_MS): an exposure is written a moment after its decide (the
# decision log flushes every 0.2 s) and a purchase may be applied before that;
# the exposure then credits the purchase when it is written.
_CREDIT_ONE = """
local function credit(out, field, group, bucket, id, amounts, tags)
  for _, tag in ipairs(tags) do
    local marker = (tag == 'r' and ('r:' .. id) or tag) .. '>' .. field
    if redis.call('HSETNX', KEYS[1], marker, '1') == 1 then
      local said = ''
      if tag == 'r' then
        -- The exposure's revenue so far: its square's growth is what the
        -- arm's sum of squares needs (per exposure, not per purchase).
        local revenue = tonumber(string.match(amounts, '^([^|]*)'))
        local total = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'rv>' .. field, revenue))
        said = amounts .. '|' .. (total * total - (total - revenue) * (total - revenue))
      end
      out[#out + 1] = tag
      out[#out + 1] = field
      out[#out + 1] = group
      out[#out + 1] = bucket
      out[#out + 1] = said
    end
  end
end
"""

# KEYS[1] a person's exposures; ARGV[1] decide ms, [2] TTL s, [3] the decision's
# context bucket, [4] attribution window ms, [5] pending ms, then pairs: field,
# group. Keeps the first exposure of each field ("<group>|<ms>|<bucket>").
RECORD = _CREDIT_ONE + """
local now, window, pending = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
local purchases = nil
for i = 6, #ARGV, 2 do
  local field, group = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', KEYS[1], field, group .. '|' .. now .. '|' .. ARGV[3]) == 1 then
    out[#out + 1] = 'x'
    out[#out + 1] = field
    out[#out + 1] = group
    out[#out + 1] = ARGV[3]
    out[#out + 1] = ''
    if purchases == nil then
      purchases = {}
      local fields = redis.call('HGETALL', KEYS[1])
      for j = 1, #fields, 2 do
        if string.sub(fields[j], 1, 2) == 'p>' then
          local at, amounts = string.match(fields[j + 1], '^(%d+)|(.*)$')
          purchases[#purchases + 1] = {string.sub(fields[j], 3), tonumber(at), amounts}
        end
      end
    end
    for _, bought in ipairs(purchases) do
      if bought[2] >= now - 5000 and bought[2] - now <= window and bought[2] - now <= pending then
        credit(out, field, group, ARGV[3], bought[1], bought[3], {'c', 'r'})
      end
    end
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return out
"""

# KEYS[1] a person's exposures; ARGV[1] event ms, [2] window ms, [3] the
# exposures it may credit: a prefix (h:, e:, or empty for both), or "=" and
# the exact fields, one a line, [4] the purchase's event id or empty,
# [5] "<revenue>|<cost>", [6] pending ms, [7] TTL s, then tags (c, r, k, u).
# Each exposure made before the event within the window gets each tag once (a
# marker field "<tag>><field>", "r:<event id>><field>" for revenue).
CREDIT = _CREDIT_ONE + """
local at, window, prefix, id, amounts = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local tags = {}
for t = 8, #ARGV do tags[#tags + 1] = ARGV[t] end
local only = nil
if string.sub(prefix, 1, 1) == '=' then
  only = {}
  for name in string.gmatch(string.sub(prefix, 2), '[^\\n]+') do only[name] = true end
end
local out = {}
local exposed = false
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  local kind = string.sub(name, 1, 2)
  exposed = exposed or kind == 'h:' or kind == 'e:' or kind == 's:'
  local wanted = (kind == 'h:' or kind == 'e:') and (prefix == '' or kind == prefix)
  if only then wanted = only[name] == true end
  if wanted then
    local group, since, bucket = string.match(fields[i + 1], '^([^|]*)|(%d+)|?(.*)$')
    since = tonumber(since)
    if since and at >= since - 5000 and at - since <= window then
      credit(out, name, group, bucket, id, amounts, tags)
    end
  elseif kind == 'p>' then
    local was = tonumber(string.match(fields[i + 1], '^(%d+)'))
    if was and was < at - tonumber(ARGV[6]) then redis.call('HDEL', KEYS[1], name) end
  end
end
if id ~= '' then
  redis.call('HSET', KEYS[1], 'p>' .. id, at .. '|' .. amounts)
  -- A buyer never exposed keeps the purchase only as long as an exposure may still come.
  if exposed then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7])) else redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6])) end
end
return out
"""

PENDING_MS = 3_600_000  # how long a purchase waits for an exposure written after it


@dataclass(frozen=True, slots=True)
class Credit:
    """What one event credits: a purchase (tags c and r:<id>, with its revenue
    and discount cost), a click (k) or an unsubscribe (u)."""

    person: str
    at_ms: int
    tags: tuple[str, ...]
    revenue: float = 0.0
    discount_cost: float = 0.0
    prefix: str = ""  # the exposures it may credit: h:, e: or both
    only: tuple[str, ...] = ()  # or exactly these exposure fields


class ExposureStore:
    def __init__(self, redis, keys: Keys):
        self.redis = redis
        self.keys = keys
        self._record = redis.register_script(RECORD)
        self._credit = redis.register_script(CREDIT)

    def _counter(self, field: str) -> str:
        kind, name = field[:2], field[2:]
        return self.keys.kpi("h" if kind == HOLDOUT else "e", name, "itt" if kind == HOLDOUT else "arms")

    async def expose(self, exposures: dict[str, tuple[int, str, list[tuple[str, str]]]]) -> None:
        """`exposures`: per person, the decide's time and bucket and its (field,
        group) pairs. A hold-out offer's counts are kept per bucket too: what
        ranks a discount by the conversions it adds (engine/decisions/learning.py)."""
        calls = []
        for person, (at, bucket, pairs) in exposures.items():
            args = [at, EXPOSURE_TTL_S, bucket, ATTRIBUTION_MS, PENDING_MS]
            for field, group in dict(pairs).items():
                args += [field, group]
            calls.append((self._record, [self.keys.exposures(person)], args))
        await self._count(await run_scripts(self.redis, calls))

    async def credit(self, credits: list[Credit]) -> None:
        if not credits:
            return
        calls = []
        for c in credits:
            purchase = next((tag[2:] for tag in c.tags if tag.startswith("r:")), "")
            tags = [tag if not tag.startswith("r:") else "r" for tag in c.tags]
            which = "=" + "\n".join(c.only) if c.only else c.prefix
            calls.append((self._credit, [self.keys.exposures(c.person)],
                          [c.at_ms, ATTRIBUTION_MS, which, purchase, f"{c.revenue!r}|{c.discount_cost!r}",
                           PENDING_MS, EXPOSURE_TTL_S, *tags]))
        await self._count(await run_scripts(self.redis, calls))

    async def _count(self, replies: list) -> None:
        """Add what the scripts found new to the counters."""
        pipe = self.redis.pipeline(transaction=False)
        for fresh in replies:
            for i in range(0, len(fresh), 5):
                what, field, group, bucket, amounts = (_text(v) for v in fresh[i:i + 5])
                counter = self._counter(field)
                if what == "r":
                    revenue, cost, squared = (float(v) for v in amounts.split("|"))
                    pipe.hincrbyfloat(counter, f"{group}|revenue", revenue)
                    pipe.hincrbyfloat(counter, f"{group}|revenue2", squared)
                    if cost:
                        pipe.hincrbyfloat(counter, f"{group}|discount_cost", cost)
                    continue
                metric = CREDITED[what]
                pipe.hincrby(counter, f"{group}|{metric}", 1)
                if field.startswith(HOLDOUT) and metric in ("exposed", "converted") and bucket:
                    pipe.hincrby(counter, f"{group}|{metric}|{bucket}", 1)
        if len(pipe):
            await pipe.execute()

    # -- reading ----------------------------------------------------------------

    async def uplifts(self, offers: list[str]) -> dict[str, dict]:
        """Each hold-out offer's uplift over its hold-out, with its interval."""
        pipe = self.redis.pipeline(transaction=False)
        for offer in offers:
            pipe.hgetall(self.keys.kpi("h", offer, "itt"))
        out = {}
        for offer, raw in zip(offers, await pipe.execute(), strict=True):
            n = {k: int(float(v)) for k, v in _decoded(raw).items()}
            out[offer] = uplift_interval(n.get("t|converted", 0), n.get("t|exposed", 0),
                                         n.get("c|converted", 0), n.get("c|exposed", 0))
        return out

    async def experiment(self, catalog: Catalog, experiment_id: str) -> dict | None:
        """Per arm: exposures, conversions (or clicks), rate, revenue; each arm's
        effect on the primary metric against the control, always valid; the
        guardrails; and the sample-ratio check."""
        experiment = catalog.experiment(experiment_id)
        if experiment is None:
            return None
        raw = _decoded(await self.redis.hgetall(self.keys.kpi("e", experiment_id, "arms")))
        sums: dict[str, dict[str, float]] = defaultdict(dict)
        for name, value in raw.items():
            arm, _, metric = name.partition("|")
            sums[arm][metric] = float(value)
        arms = {}
        for arm in experiment.arms:
            got = sums.get(arm.id, {})
            exposed = int(got.get("exposed", 0))
            successes = int(got.get("clicked" if experiment.metric == "click" else "converted", 0))
            arms[arm.id] = {
                "exposures": exposed, "conversions": int(got.get("converted", 0)),
                "clicks": int(got.get("clicked", 0)),
                "rate": None if not exposed else round(successes / exposed, 6),
                "revenue": round(got.get("revenue", 0.0), 2),
                "revenue_per_exposure": None if not exposed else round(got.get("revenue", 0.0) / exposed, 4),
                "unsubscribes": int(got.get("unsubscribed", 0)),
                "discount_cost": round(got.get("discount_cost", 0.0), 2),
            }
        control = sums.get(experiment.control, {})
        effects = {}
        for arm in experiment.arms:
            if arm.id == experiment.control:
                continue
            effects[arm.id] = {"vs": experiment.control, **_effect(experiment.metric, sums.get(arm.id, {}), control)}
            for guardrail in experiment.guardrails:
                effects[arm.id][guardrail] = _guardrail(guardrail, sums.get(arm.id, {}), control)
        exposures = {arm: figures["exposures"] for arm, figures in arms.items()}
        return {"id": experiment.id, "placement": experiment.placement, "metric": experiment.metric,
                "control": experiment.control, "shares": experiment.shares(), "arms": arms, "effects": effects,
                "srm": sample_ratio(exposures, experiment.shares())}


CREDITED = {"x": "exposed", "c": "converted", "k": "clicked", "u": "unsubscribed"}


def _effect(metric: str, arm: dict, control: dict) -> dict:
    n, n0 = int(arm.get("exposed", 0)), int(control.get("exposed", 0))
    if metric == "revenue":
        return mean_effect(arm.get("revenue", 0.0), arm.get("revenue2", 0.0), n,
                           control.get("revenue", 0.0), control.get("revenue2", 0.0), n0)
    success = "clicked" if metric == "click" else "converted"
    return proportion_effect(int(arm.get(success, 0)), n, int(control.get(success, 0)), n0)


def _guardrail(name: str, arm: dict, control: dict) -> dict:
    n, n0 = int(arm.get("exposed", 0)), int(control.get("exposed", 0))
    if name == "unsubscribes":
        return proportion_effect(int(arm.get("unsubscribed", 0)), n, int(control.get("unsubscribed", 0)), n0)
    # discount cost per exposure; its variance is not kept, so the figure alone
    per, per0 = (arm.get("discount_cost", 0.0) / n if n else None), (
        control.get("discount_cost", 0.0) / n0 if n0 else None)
    return {"per_exposure": None if per is None else round(per, 4),
            "per_exposure_control": None if per0 is None else round(per0, 4)}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decoded(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
