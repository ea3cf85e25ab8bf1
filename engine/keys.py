"""Every Redis key Attimo writes, on one screen: its shape, its type and its TTL.

Per-person keys carry the hash tag {u:<person>} so one person's keys share a
Redis Cluster slot and every script touches a single slot."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "attimo"

    # STRING, msgpack map: traits, windowed counters, score, segments, last seen,
    # version. TTL: ATTIMO_PROFILE_TTL_S, renewed on every write.
    def profile(self, person: str) -> str:
        return f"{self.prefix}:{{u:{person}}}:p"

    # ZSET, member = 8-byte hash of an applied event id, score = arrival second.
    # Trimmed to ATTIMO_DEDUPE_TTL_S on every write; the key expires with it.
    def dedupe(self, person: str) -> str:
        return f"{self.prefix}:{{u:{person}}}:d"

    # STRING, msgpack [token, profile]: an anonymous profile taken out for a merge
    # into a known person, kept until the merge is confirmed. TTL: 30 days.
    def merge_staging(self, person: str) -> str:
        return f"{self.prefix}:{{u:{person}}}:m"

    # STRING: the catalog source in force (JSON), written by reload/admin.
    # HASH fields `version`, `digest`. No TTL. Global, read at start-up and polled.
    def catalog_source(self) -> str:
        return f"{self.prefix}:catalog:source"

    def catalog_version(self) -> str:
        return f"{self.prefix}:catalog:version"


MERGE_STAGING_TTL_S = 30 * 86_400
