"""Demo people for `attimo demo`, seeded through the same pipeline as real
events, and the curl lines printed to try them."""

from __future__ import annotations

from engine.catalog.windows import DAY_MS, MINUTE_MS
from engine.clock import now_ms
from engine.events import Event
from engine.ingest.identity import known, sign_user_id
from engine.runtime import Runtime
from engine.settings import Settings


def demo_events(now_ms: int) -> list[Event]:
    def event(eid, person, kind, ago_ms, properties=None, traits=None):
        return Event(eid, kind, known(person), now_ms - ago_ms, properties or {}, traits)

    return [
        # Dana came often, then not for 40 days: her next visit gets "welcome back".
        event("seed-dana-1", "u-dana", "identify", 60 * DAY_MS, traits={
            "registered": True, "first_name": "Dana", "age": 31, "profession": "marketing",
        }),
        *[event(f"seed-dana-pv{i}", "u-dana", "page_view", (40 * DAY_MS) + i * MINUTE_MS,
                {"path": "/blog", "category": "crm"}) for i in range(5)],
        # Marco is a director who downloaded, submitted a form and read pricing: a hot lead.
        event("seed-marco-1", "u-marco", "identify", 5 * DAY_MS, traits={
            "registered": True, "first_name": "Marco", "role": "director", "education": "master",
        }),
        event("seed-marco-2", "u-marco", "download", 2 * DAY_MS, {"asset": "crm-buyers-guide"}),
        event("seed-marco-3", "u-marco", "form_submit", 2 * DAY_MS, {"form": "demo_request"}),
        # Sam read CRM pricing three times yesterday, bought nothing and agreed to
        # advertising: in the retargeting audience, sent to its webhook.
        event("seed-sam-1", "u-sam", "identify", 2 * DAY_MS, traits={
            "registered": True, "first_name": "Sam", "email": "Sam@Example.com"}),
        event("seed-sam-2", "u-sam", "consent", 2 * DAY_MS, {"channel": "ads", "purpose": "advertising",
                                                             "granted": True}),
        *[event(f"seed-sam-pv{i}", "u-sam", "page_view", DAY_MS - i * MINUTE_MS,
                {"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}) for i in range(3)],
        # Li is registered and keeps browsing analytics today.
        event("seed-li-1", "u-li", "identify", 3 * DAY_MS, traits={"registered": True, "first_name": "Li"}),
        *[event(f"seed-li-pv{i}", "u-li", "page_view", (i + 1) * 10 * MINUTE_MS,
                {"path": f"/analytics/{i}", "category": "analytics"}) for i in range(3)],
    ]


async def seed_demo_people(settings: Settings) -> None:
    runtime, _ = Runtime.from_catalog_file(settings, pool_size=4)
    try:
        now = now_ms()
        await runtime.pipeline.apply(demo_events(now), now)
    finally:
        await runtime.aclose()


def try_these(settings: Settings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    key = f"-H 'X-Attimo-Key: {settings.site_key}'"
    auth = f"-H 'Authorization: Bearer {settings.server_token}'"
    dana_sig = sign_user_id(settings.site_secret, "u-dana")
    return f"""
Attimo demo on {base}  (site key {settings.site_key}, server token {settings.server_token})

# 1. A new visitor: the default offers.
curl -s {base}/v1/decide {key} -d '{{"anonymous_id": "a-new", "placements": ["home_hero", "sidebar", "cart_banner"], "context": {{"category": "crm"}}}}'

# 2. The visitor reads the CRM pricing page three times (scenario 4) ...
curl -s {base}/v1/events {key} -d '{{"events": [
  {{"id": "e1", "type": "page_view", "anonymous_id": "a-new", "properties": {{"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}}}},
  {{"id": "e2", "type": "page_view", "anonymous_id": "a-new", "properties": {{"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}}}},
  {{"id": "e3", "type": "page_view", "anonymous_id": "a-new", "properties": {{"path": "/pricing/crm", "category": "crm", "page_type": "pricing"}}}}]}}'
#    ... and the trial banner now wins the hero (ask with the server token and ?explain=1 to see why):
curl -s {base}/v1/decide {key} -d '{{"anonymous_id": "a-new", "placements": ["home_hero", "sidebar"]}}'

# 3. Dana comes back after 40 days (scenario 3): a signed user id, then "welcome back".
curl -s {base}/v1/events {key} -d '{{"events": [{{"id": "dana-back-1", "type": "page_view", "user_id": "u-dana", "user_sig": "{dana_sig}", "properties": {{"path": "/"}}}}]}}'
curl -s {base}/v1/decide {key} -d '{{"user_id": "u-dana", "user_sig": "{dana_sig}", "placements": ["home_hero"]}}'

# 4. Marco is a hot lead (scenario 5); Li keeps browsing analytics (scenario 7).
curl -s {base}/v1/decide {auth} -d '{{"user_id": "u-marco", "placements": ["sidebar"]}}'
curl -s {base}/v1/decide {auth} -d '{{"user_id": "u-li", "placements": ["sidebar"]}}'

# 5. What the engine knows about a person, and the metrics.
curl -s {base}/v1/people/u-marco {auth}
curl -s {base}/metrics | grep attimo_

# 6. The cart strip learns what people click, in an experiment against the priority order.
curl -s '{base}/v1/decide?explain=1' {auth} -d '{{"anonymous_id": "a-new", "placements": ["cart_banner"], "context": {{"category": "crm", "device": "mobile"}}}}'
curl -s {base}/v1/experiments/cart_learning {auth}
attimo evaluate --catalog examples/catalog.yaml --redis-url {settings.redis_url}

Ctrl-C stops the API and the private Redis.
"""
