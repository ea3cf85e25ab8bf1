"""Every Redis key Attimo writes, on one screen: its shape, its type and its TTL.

A person is `u:<user_id>` (known: the site signed the id, or the server said
it) or `a:<anonymous_id>` (a visitor); the two never share a key. Per-person
keys carry the person as their hash tag, {u:<user_id>} or {a:<anonymous_id>},
so one person's keys share a Redis Cluster slot and every script touches a
single slot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "attimo"

    # STRING, msgpack map: traits, windowed counters, score, segments, last seen,
    # version. TTL: ATTIMO_PROFILE_TTL_S, renewed on every write.
    def profile(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:p"

    # ZSET, member = 8-byte hash of an applied event id, score = when it was applied
    # (epoch ms: the now_ms the batch was applied with).
    # Trimmed to ATTIMO_DEDUPE_TTL_S on every write; the key expires with it.
    def dedupe(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:d"

    # STRING, msgpack [token, profile]: an anonymous profile taken out for a merge
    # into a known person, kept until the merge is confirmed. TTL: 30 days.
    def merge_staging(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:m"

    # STRING: the catalog source in force (YAML or JSON), written by reload/admin.
    # HASH fields `digest`, `file_digest`, `n` (its version number). No TTL. Global, read at start-up and
    # polled. Both share the tag {catalog}: they are written in one transaction,
    # which a Redis Cluster allows only within one slot.
    def catalog_source(self) -> str:
        return f"{self.prefix}:{{catalog}}:source"

    def catalog_version(self) -> str:
        return f"{self.prefix}:{{catalog}}:version"

    # Every published catalog, numbered from 1 (engine/catalog/publish.py):
    # STRING counter of the last number given; HASH n -> JSON of who published
    # it, when, with what message, and its size; HASH n -> its source text (a
    # journey run keeps the version it entered with until it ends). The newest
    # CATALOG_VERSIONS_KEPT are kept. Same tag as the source: one script
    # publishes all of them. No TTL.
    def catalog_counter(self) -> str:
        return f"{self.prefix}:{{catalog}}:counter"

    def catalog_versions(self) -> str:
        return f"{self.prefix}:{{catalog}}:versions"

    def catalog_texts(self) -> str:
        return f"{self.prefix}:{{catalog}}:texts"

    # --- Due queue (engine/followups/due_queue.py): DUE_SHARDS shards, tag {q:N}, a person's
    # messages always in shard crc32(person) % DUE_SHARDS. No TTL on the shard
    # keys: they empty as messages are acked; done is trimmed to DUE_DONE_KEEP_MS.
    # ZSET, member = message id (idempotency key), score = due ms.
    def due(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:due"

    # ZSET, member = message id, score = lease deadline ms (claimed, not acked).
    def due_inflight(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:inflight"

    # HASH, message id -> JSON payload, while queued or in flight.
    def due_messages(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:msg"

    # HASH, message id -> number of sends of it that failed so far.
    def due_attempts(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:attempts"

    # HASH, message id -> ms a send started (written before sending).
    def due_sent(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:sent"

    # ZSET, member = message id, score = ms acked or cancelled; trimmed by age.
    def due_done(self, shard: int) -> str:
        return f"{self.prefix}:{{q:{shard}}}:done"

    # SET of message ids queued for one person on one channel (cancel on
    # unsubscribe). TTL: last due time + DUE_DONE_KEEP_MS.
    def due_person_channel(self, shard: int, person: str, channel: str) -> str:
        return f"{self.prefix}:{{q:{shard}}}:pc:{channel}:{person}"

    # ZSET, member = message id, score = ms it was last scheduled (its due time if
    # later), acked or cancelled: every message of one person, on any channel,
    # the shard may still name (queued, in flight, or kept in done), so erasure
    # removes them from every hash and set of the shard without scanning it.
    # Trimmed like done (older than DUE_DONE_KEEP_MS on every ack and cancel).
    # TTL: the latest of those scores + DUE_DONE_KEEP_MS.
    def due_person(self, shard: int, person: str) -> str:
        return f"{self.prefix}:{{q:{shard}}}:pm:{person}"

    def of_person(self, person: str) -> tuple[str, ...]:
        """Every key kept about one person (all under their tag: one slot)."""
        return (self.profile(person), self.dedupe(person), self.merge_staging(person), self.contact(person),
                self.contact_outcomes(person), self.journeys(person), self.inbox(person), self.devices(person),
                self.offers_seen(person), self.exposures(person), self.learned(person), self.merged(person),
                self.audience_card(person), self.broadcasts_received(person))

    # STRING, JSON contact state of a person: consent per channel and purpose,
    # time zone, recent sends (bounded to engine.policy.CONTACT_HISTORY_MAX over 8 days),
    # the last CONSENT_HISTORY_MAX consent changes (when, what, from where).
    # TTL: CONTACT_STATE_TTL_S, renewed on every write.
    def contact(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:c"

    # LIST, newest first, JSON outcomes of recent messages (sent, delayed,
    # dropped, dead-letter, each with its reason). Capped to
    # CONTACT_OUTCOMES_MAX entries; TTL: CONTACT_STATE_TTL_S.
    def contact_outcomes(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:o"

    # STRING, JSON journey state of a person (engine/followups/transitions.py): runs in progress
    # with their step and wait deadline, last entry per journey, recent run ids.
    # TTL: JOURNEY_STATE_TTL_S, renewed on every write.
    def journeys(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:j"

    # HASH, offer id -> ms the person last saw or clicked it (engine/followups/kpis.py:
    # a purchase within the attribution window counts for the offer).
    # TTL: the attribution window, renewed on every impression.
    def offers_seen(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:os"

    # HASH of what decisions did to a person (engine/outcomes/learning.py and
    # exposures.py): `s:<offer>` -> "<ms>|<decision nonce>|<bucket>" of their last
    # verified impression (a conversion teaches that bucket), `h:<offer>` ->
    # "t|<ms>|<bucket>" or "c|…" (treated, or held out when decide would have
    # shown it), `e:<experiment>` -> "<arm>|<ms>|<bucket>", once-markers
    # `<tag>><field>` of what was credited, and `p><event id>` -> "<ms>|<revenue>|<cost>"
    # of purchases of the last hour (an exposure written after its purchase
    # still counts it). TTL: EXPOSURE_TTL_S, renewed on every write.
    def exposures(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:x"

    # SET of the anonymous ids merged into a known person: erasing the person
    # erases what is left under them too. TTL: the profile TTL, renewed on merge.
    def merged(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:mg"

    # ZSET, member "<kind>:<decision nonce>:<offer>", score ms: the impressions,
    # clicks and purchases that already taught the model, so a replayed decision
    # id teaches nothing. Kept a decision id's lifetime (older ones removed on
    # every write, and the key expires with them); at most LEARNED_MAX: past
    # it a person teaches nothing more until the oldest expire.
    def learned(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:l"

    # HASH, context bucket -> "<impressions> <rewards> <ms>", both counts faded
    # to <ms> with the catalog's half-life: the learned propensity of one offer.
    # Its own tag per offer, so offers spread over a cluster's slots. No TTL
    # (offers x at most 64 buckets); `attimo` never writes one for an offer not
    # in an expected-value placement.
    def model(self, offer: str) -> str:
        return f"{self.prefix}:{{m:{offer}}}:m"

    # STREAM, the decision log (engine/outcomes/log.py): field `d`, msgpack of the
    # decisions of expected-value placements one API process flushed (every
    # 0.2 s), or field `r`, one reward a decision earned; for off-policy
    # evaluation. DECISION_LOG_SHARDS shards, a person's entries in one;
    # trimmed to about ATTIMO_DECISION_LOG_MAX entries per shard.
    def decision_log(self, shard: int) -> str:
        return f"{self.prefix}:{{dlog:{shard}}}:s"

    # --- Audiences (engine/audiences/): a tracked segment's members in
    # SEGMENT_SHARDS shards, tag {sg:<segment>:<n>}, a person always in shard
    # crc32(person) % SEGMENT_SHARDS, so membership and its change record are
    # written by one script in one slot.
    # SET of person ids in the segment now. No TTL: people leave by exiting.
    def segment_members(self, segment: str, shard: int) -> str:
        return f"{self.prefix}:{{sg:{segment}:{shard}}}:m"

    # STREAM of that shard's entries and exits, fields s (segment), p (person),
    # o ("+" or "-"), r (reason: event, time, consent, expired, erased), and for
    # an erasure e and ph, the hashed email and phone it removes. Written only
    # when the set changed, so a retried batch records nothing twice; what the
    # webhook destinations deliver. Trimmed to about SEGMENT_CHANGES_MAX entries.
    def segment_changes(self, segment: str, shard: int) -> str:
        return f"{self.prefix}:{{sg:{segment}:{shard}}}:c"

    # ZSET, member = person, score = ms when time alone may next change their
    # segments (a window emptying, an idle spell): the recheck schedule, in
    # SEGMENT_SHARDS shards by person. A member is removed when rechecked and
    # nothing more is due. No TTL.
    def segment_rechecks(self, shard: int) -> str:
        return f"{self.prefix}:{{sgr:{shard}}}:z"

    # STRING "<email sha256>|<phone sha256>|<consent>": what audience
    # destinations match a person on, the SHA-256 of their normalised email and
    # E.164 phone ("" when none), consent "1" when they gave advertising consent
    # (channel ads, purpose advertising). One string so an export reads a chunk
    # with one MGET; also the person's list of lookup index entries (written
    # before the index, so erasure finds every one). Written when those traits
    # or that consent change. TTL: the profile TTL, renewed on write.
    def audience_card(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:ad"

    # --- Broadcasts (engine/followups/broadcasts.py): one tag per broadcast,
    # {bc:<broadcast>}. The messages themselves wait in the due queue, ids
    # `bc:<broadcast>:<person>`.
    # HASH, a broadcast's progress: `state` (scheduled when absent, running,
    # done, cancelled), `started`, `walked` (ms the segment walk ended),
    # `queued` (messages newly queued), `held_out`, `skipped` (no address),
    # `last_due` (latest due time queued), `finished`, `checked` (ms the queue
    # was last searched for its messages). No TTL: a broadcast done stays done.
    def broadcast_state(self, broadcast: str) -> str:
        return f"{self.prefix}:{{bc:{broadcast}}}:state"

    # STRING, the process walking the broadcast's segment (one at a time).
    # TTL: BROADCAST_LEASE_MS, renewed after each chunk of members.
    def broadcast_lease(self, broadcast: str) -> str:
        return f"{self.prefix}:{{bc:{broadcast}}}:lease"

    # HASH, broadcast -> "t|<ms>" (sent to, due then) or "c|<ms>" (held out):
    # a purchase or an unsubscribe within ATTRIBUTION_MS after counts for it,
    # in the treated or the control group. Written once per broadcast.
    # TTL: ATTRIBUTION_MS after the latest due time written.
    def broadcasts_received(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:bc"

    # HASH of one destination's progress: change-stream shard -> last stream id
    # delivered (or dead-lettered); `export` -> ms of the last scheduled export.
    # Its own tag. No TTL.
    def destination_state(self, destination: str) -> str:
        return f"{self.prefix}:{{dest:{destination}}}:state"

    # STRING, the process delivering for one destination (one at a time, so
    # changes arrive in order). TTL: DESTINATION_LEASE_MS, renewed while it works.
    def destination_lease(self, destination: str) -> str:
        return f"{self.prefix}:{{dest:{destination}}}:lease"

    # STRING, JSON list of a person's in-app inbox messages (newest first, each
    # with its expiry, read and dismissed flags), capped to INBOX_MAX.
    # TTL: the latest message expiry.
    def inbox(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:i"

    # HASH, push token -> JSON {platform, at}: a person's devices, capped to
    # DEVICES_MAX. TTL: CONTACT_STATE_TTL_S, renewed on every registration.
    def devices(self, person: str) -> str:
        return f"{self.prefix}:{{{person}}}:dv"

    # --- Lookup by email or phone (engine/store/people_index.py): IX_SHARDS shards,
    # tag {ix:N}, N taken from the identifier's hash, so the index spreads over a
    # cluster's slots. ZSET, every score 0 so it is read by lex range: members
    # "<e|p>:<hex SHA-256 of the normal email or phone>:<person>", one per person
    # an address names. No TTL: an entry leaves when the person's trait changes
    # (checked against the profile on write and on every read) and on erasure;
    # an entry left by a profile that expired goes when it is next looked up.
    def people_index(self, shard: int) -> str:
        return f"{self.prefix}:{{ix:{shard}}}:people"

    # SET of suppressed person ids or addresses (bounces, complaints, legal). No TTL.
    def suppressed(self) -> str:
        return f"{self.prefix}:suppressed"

    # ZSET, every score 0 so it pages in address order: the addresses suppressed
    # on one channel through the API (normalised: lower-case email, phone digits).
    # Each is also "<channel>:<address>" in suppressed(), which the send-time
    # check reads; this one is only the listing. No TTL.
    def suppressed_on(self, channel: str) -> str:
        return f"{self.prefix}:suppressed:{channel}"

    # LIST, newest first, JSON dead-lettered messages with the reason. Capped to 10k.
    def dead_letters(self) -> str:
        return f"{self.prefix}:deadletter"

    # --- The console's figures (engine/store/ops_series.py), tag {ops}: a
    # handful of keys, written once a second per process, read by one
    # pipeline. HASH of one 10-second slot (start, epoch seconds) that every
    # API process adds to with HINCRBY: `<endpoint>:<i>` requests whose time
    # fell in latency bucket i (engine/latency.py; i = 11 past 1 s),
    # `<endpoint>:n` requests, `fallbacks`, `redis_errors`, `events_applied`
    # (the Kafka workers add theirs too). TTL: OPS_SLOT_TTL_S.
    def ops_slot(self, slot_start_s: int) -> str:
        return f"{self.prefix}:{{ops}}:t:{slot_start_s}"

    # HASH, partition -> "<records not applied> <ms reported>": the Kafka
    # workers' lag, each writing its partitions every second. TTL: OPS_LAG_TTL_S,
    # renewed on every report.
    def ops_kafka_lag(self) -> str:
        return f"{self.prefix}:{{ops}}:kafka_lag"

    # HyperLogLog of ids (or, for metric "revenue" and "money", a HASH of sums):
    # one KPI of a journey (scope "j"), a broadcast ("b"), a channel ("c") or an
    # offer ("o"), engine/followups/kpis.py. No TTL. The same KPI for one UTC day
    # is metric "<metric>@<YYYY-MM-DD>" (what a date range reads), kept
    # DAILY_KPI_TTL_S (400 days).
    def kpi(self, scope: str, name: str, metric: str) -> str:
        return f"{self.prefix}:{{kpi}}:{scope}:{name}:{metric}"

    # STRING, a float: what a discount offer's verified redemptions cost on one
    # UTC day (YYYY-MM-DD): the spend its `budget: {per: day}` is held to. The
    # whole-life spend (`per: campaign`) is the `discount_cost` field of
    # kpi("o", offer, "money"). TTL: SPENT_DAY_TTL_S from the last redemption.
    def offer_spent_on(self, offer: str, day: str) -> str:
        return f"{self.prefix}:{{kpi}}:o:{offer}:spent:{day}"

    # STRING marker: this purchase's revenue was added to this journey.
    # TTL: the event dedupe TTL (a retried event comes within it).
    def kpi_once(self, token: str) -> str:
        return f"{self.prefix}:{{kpi}}:once:{token}"

    # --- Code pools (engine/store/code_pools.py): single-use discount codes, one
    # hash tag per pool, {codes:<pool>}, so one script hands out or redeems a
    # code atomically. No TTL: a pool lives as long as its codes may be redeemed.
    # SET of codes uploaded and not given to anyone yet.
    def pool_available(self, pool: str) -> str:
        return f"{self.prefix}:{{codes:{pool}}}:available"

    # HASH, person -> the code kept for them (the same on every decide).
    def pool_given(self, pool: str) -> str:
        return f"{self.prefix}:{{codes:{pool}}}:given"

    # HASH, code -> the person it was given to.
    def pool_owners(self, pool: str) -> str:
        return f"{self.prefix}:{{codes:{pool}}}:owners"

    # HASH, code -> the order id that redeemed it (once).
    def pool_redeemed(self, pool: str) -> str:
        return f"{self.prefix}:{{codes:{pool}}}:redeemed"


# Not built here: the rate limiter's counters (api/ratelimit.py), which the
# `limits` library names under "<prefix>:limits" (two integers a client IP and
# window, expiring with the window).

MERGE_STAGING_TTL_S = 30 * 86_400
DUE_SHARDS = 16
DUE_DONE_KEEP_MS = 7 * 86_400_000
CONTACT_STATE_TTL_S = 400 * 86_400
CONTACT_OUTCOMES_MAX = 50
DEAD_LETTERS_MAX = 10_000
JOURNEY_STATE_TTL_S = 400 * 86_400
INBOX_MAX = 50
DEVICES_MAX = 10
EXPOSURE_TTL_S = 30 * 86_400
LEARNED_MAX = 500
DECISION_LOG_SHARDS = 8
CATALOG_VERSIONS_KEPT = 500
SEGMENT_SHARDS = 16
SEGMENT_CHANGES_MAX = 200_000
DESTINATION_LEASE_MS = 15_000
IX_SHARDS = 64  # fixed: an index written with another count is not found again
BROADCAST_LEASE_MS = 30_000
SPENT_DAY_TTL_S = 3 * 86_400  # a day's spend outlives its day: read for the day, kept for a look back
OPS_SLOT_TTL_S = 2 * 3600  # the console shows at most the last 2 hours
OPS_LAG_TTL_S = 60
