"""Attimo's settings: one frozen object built from ATTIMO_* environment variables
and command-line flags, then passed down explicitly. No other module reads the
environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

import limits

from engine.errors import SettingsError

# Request limits enforced before anything reaches Redis.
MAX_BODY_BYTES = 512 * 1024
MAX_EVENTS_PER_BATCH = 500
MAX_DEPTH = 5
MAX_STRING_LENGTH = 4096
MAX_PROPERTIES = 100
MAX_PLACEMENTS_PER_DECIDE = 20


def _split_csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    catalog_path: str | None = None
    server_token: str | None = None
    site_key: str | None = None
    site_secret: str | None = None
    # While the site secret is rotated: signatures made with this one still count.
    site_secret_previous: str | None = None
    # A timestamped user_sig (<unix seconds>.<hex>) is refused once this old.
    signature_max_age_s: int = 7 * 86_400
    # Server tokens of one scope each; ATTIMO_SERVER_TOKEN has all three.
    ingest_token: str | None = None
    read_token: str | None = None
    admin_token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    key_prefix: str = "attimo"
    # Redis budget for the decide read; past it decide answers the fallback.
    redis_budget_ms: float = 50.0
    # Budget for applying an event batch; past it events answer 503.
    apply_budget_ms: float = 2000.0
    redis_pool_size: int = 64
    redis_pool_timeout_ms: float = 100.0
    dedupe_ttl_s: int = 86_400
    profile_ttl_s: int = 400 * 86_400
    catalog_poll_s: float = 2.0
    # Entries kept per shard of the decision log (8 shards): what `attimo
    # evaluate` can replay. An entry holds the decisions one process flushed
    # in 0.2 s (about 150 bytes each), or one reward.
    decision_log_max: int = 100_000
    access_log: bool = False
    # A request's headers and its body must each arrive within this deadline;
    # past it the connection is closed (headers) or the answer is 408 (body).
    read_timeout_ms: float = 5_000.0
    # Connections and requests one process takes at once; past it uvicorn
    # answers 503 at once instead of running out of file descriptors.
    limit_concurrency: int = 1000
    # Rate limits of public (site-key) calls, shared by every process through
    # Redis (api/ratelimit.py): POST /v1/events and /v1/decide together per
    # client IP, and the anonymous profiles one IP may create. "off" turns one off.
    rate_limit: str = "600/minute"
    new_profile_limit: str = "60/minute"
    # Peers whose X-Forwarded-For names the client (IPs or CIDRs); none by default.
    trusted_proxies: tuple[str, ...] = ()
    # Test-only: sleep this long in /v1/decide before answering (0 = off); the
    # browser tests use it to pass the snippet's time budget.
    decide_delay_ms: float = 0.0
    # Serve the static demo storefront pages (never the demo-only endpoints).
    storefront: bool = False
    # The snippet's time budget on the storefront pages (data-budget).
    snippet_budget_ms: int = 300

    # Kafka mode (engine/stream/event_log.py, engine/stream/worker.py): with brokers set, the API
    # produces accepted events to the topic and `attimo worker` applies them.
    kafka_brokers: tuple[str, ...] = ()
    kafka_topic: str = "attimo.events"
    kafka_dlq_topic: str = "attimo.events.dlq"
    kafka_partitions: int = 8
    kafka_linger_ms: int = 0
    # Idempotent producer (needs InitProducerId: Apache Kafka and Redpanda have it,
    # Tansu's memory engine answers it with an error). Without it a producer
    # retry can write a record twice; the worker's event-id dedupe absorbs that.
    kafka_idempotent: bool = True
    worker_batch: int = 100  # records taken at a time (each is one person's batch)
    worker_batch_wait_ms: float = 10.0  # how long a worker waits to fill a batch
    # aiokafka's fetch wait; faust hard-codes 1500 ms, which delays every quiet
    # partition's records by up to that much. Measured 202-to-Redis p99 at 1k
    # events/s on Tansu: 1500 ms -> 757 ms, 100 -> 59, 10 -> 17, 1 -> 16.
    worker_fetch_wait_ms: int = 10
    # How long a killed worker's partitions wait before others take them.
    # Measured restart-after-SIGKILL to first apply: 2 s -> 3 s, 6 s -> 13.5 s,
    # 10 s -> 20 s. 6 s is Apache Kafka's default group.min.session.timeout.ms,
    # the lowest every broker accepts as shipped; Tansu takes 2.
    worker_session_timeout_s: float = 6.0
    worker_group: str = "attimo-worker"
    worker_metrics_port: int = 0  # Prometheus /metrics of `attimo worker` (0: off)

    # Follow-ups (engine/followups/scheduler.py, docs/followups.md).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_tls: str = "none"  # none, starttls, implicit
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "Attimo <noreply@localhost>"
    public_url: str = "http://127.0.0.1:8000"  # base of tracking and unsubscribe links
    tracking_secret: str | None = None
    link_ttl_days: int = 90  # open and click links in emails stop working after this
    # channel=URL pairs, e.g. push=https://...,sms=https://... (absolute http(s) URLs)
    webhook_urls: tuple[tuple[str, str], ...] = ()
    webhook_secret: str | None = None
    webhook_attempts: int = 5
    webhook_backoff_ms: float = 200.0
    # "embedded": `attimo serve` and `attimo demo` run a scheduler in each process
    # (claims are leased, so several never send one message twice); "off": run
    # `attimo scheduler` on its own.
    scheduler: str = "embedded"
    scheduler_batch: int = 100
    scheduler_lease_ms: int = 60_000
    scheduler_poll_ms: float = 100.0
    scheduler_concurrency: int = 32
    scheduler_metrics_port: int = 0  # Prometheus /metrics of `attimo scheduler` (0: off)
    # (channel, per day, per week) from channel:day/week, e.g. email:1/3,total:4/10
    contact_caps: tuple[tuple[str, int | None, int | None], ...] = ()
    quiet_hours: tuple[int, int] | None = None  # (start, end) hours from e.g. 21-8, in the person's time zone
    quiet_action: str = "delay"  # delay or drop
    repeat_window_s: int = 0
    # A message dead-lettered after its retries is reported on this webhook
    # channel (when one is configured for it); "" turns the alerts off.
    alert_channel: str = "operator"
    # The country a phone number written without its +code is read in
    # (ISO 3166 alpha-2, e.g. "GB"), for the lookup index and ad-platform
    # exports; unset, such a number is not matched.
    phone_region: str | None = None
    # Where scheduled segment exports (a destination's `export: {every: …}`)
    # are written, one folder per destination; unset, only on-demand exports.
    export_dir: str | None = None
    # The benchmark history the console charts (benchmarks/history.py writes
    # it); unset: benchmarks/results/history.jsonl beside the code, if there.
    benchmark_history: str | None = None

    # Each field and the environment variable that sets it.
    ENV: ClassVar[dict[str, str]] = {
        "redis_url": "ATTIMO_REDIS_URL",
        "catalog_path": "ATTIMO_CATALOG",
        "server_token": "ATTIMO_SERVER_TOKEN",
        "site_key": "ATTIMO_SITE_KEY",
        "site_secret": "ATTIMO_SITE_SECRET",
        "site_secret_previous": "ATTIMO_SITE_SECRET_PREVIOUS",
        "signature_max_age_s": "ATTIMO_SIGNATURE_MAX_AGE_S",
        "ingest_token": "ATTIMO_INGEST_TOKEN",
        "read_token": "ATTIMO_READ_TOKEN",
        "admin_token": "ATTIMO_ADMIN_TOKEN",
        "allowed_origins": "ATTIMO_ALLOWED_ORIGINS",
        "host": "ATTIMO_HOST",
        "port": "ATTIMO_PORT",
        "workers": "ATTIMO_WORKERS",
        "key_prefix": "ATTIMO_KEY_PREFIX",
        "redis_budget_ms": "ATTIMO_REDIS_BUDGET_MS",
        "apply_budget_ms": "ATTIMO_APPLY_BUDGET_MS",
        "redis_pool_size": "ATTIMO_REDIS_POOL_SIZE",
        "redis_pool_timeout_ms": "ATTIMO_REDIS_POOL_TIMEOUT_MS",
        "dedupe_ttl_s": "ATTIMO_DEDUPE_TTL_S",
        "profile_ttl_s": "ATTIMO_PROFILE_TTL_S",
        "catalog_poll_s": "ATTIMO_CATALOG_POLL_S",
        "decision_log_max": "ATTIMO_DECISION_LOG_MAX",
        "access_log": "ATTIMO_ACCESS_LOG",
        "read_timeout_ms": "ATTIMO_READ_TIMEOUT_MS",
        "limit_concurrency": "ATTIMO_LIMIT_CONCURRENCY",
        "rate_limit": "ATTIMO_RATE_LIMIT",
        "new_profile_limit": "ATTIMO_NEW_PROFILE_LIMIT",
        "trusted_proxies": "ATTIMO_TRUSTED_PROXIES",
        "decide_delay_ms": "ATTIMO_DECIDE_DELAY_MS",
        "storefront": "ATTIMO_STOREFRONT",
        "snippet_budget_ms": "ATTIMO_SNIPPET_BUDGET_MS",
        "kafka_brokers": "ATTIMO_KAFKA_BROKERS",
        "kafka_topic": "ATTIMO_KAFKA_TOPIC",
        "kafka_dlq_topic": "ATTIMO_KAFKA_DLQ_TOPIC",
        "kafka_partitions": "ATTIMO_KAFKA_PARTITIONS",
        "kafka_linger_ms": "ATTIMO_KAFKA_LINGER_MS",
        "kafka_idempotent": "ATTIMO_KAFKA_IDEMPOTENT",
        "worker_batch": "ATTIMO_WORKER_BATCH",
        "worker_batch_wait_ms": "ATTIMO_WORKER_BATCH_WAIT_MS",
        "worker_fetch_wait_ms": "ATTIMO_WORKER_FETCH_WAIT_MS",
        "worker_session_timeout_s": "ATTIMO_WORKER_SESSION_TIMEOUT_S",
        "worker_group": "ATTIMO_WORKER_GROUP",
        "worker_metrics_port": "ATTIMO_WORKER_METRICS_PORT",
        "smtp_host": "ATTIMO_SMTP_HOST",
        "smtp_port": "ATTIMO_SMTP_PORT",
        "smtp_tls": "ATTIMO_SMTP_TLS",
        "smtp_username": "ATTIMO_SMTP_USERNAME",
        "smtp_password": "ATTIMO_SMTP_PASSWORD",
        "smtp_from": "ATTIMO_SMTP_FROM",
        "public_url": "ATTIMO_PUBLIC_URL",
        "tracking_secret": "ATTIMO_TRACKING_SECRET",
        "link_ttl_days": "ATTIMO_LINK_TTL_DAYS",
        "webhook_urls": "ATTIMO_WEBHOOK_URLS",
        "webhook_secret": "ATTIMO_WEBHOOK_SECRET",
        "webhook_attempts": "ATTIMO_WEBHOOK_ATTEMPTS",
        "webhook_backoff_ms": "ATTIMO_WEBHOOK_BACKOFF_MS",
        "scheduler": "ATTIMO_SCHEDULER",
        "scheduler_batch": "ATTIMO_SCHEDULER_BATCH",
        "scheduler_lease_ms": "ATTIMO_SCHEDULER_LEASE_MS",
        "scheduler_poll_ms": "ATTIMO_SCHEDULER_POLL_MS",
        "scheduler_concurrency": "ATTIMO_SCHEDULER_CONCURRENCY",
        "scheduler_metrics_port": "ATTIMO_SCHEDULER_METRICS_PORT",
        "contact_caps": "ATTIMO_CONTACT_CAPS",
        "quiet_hours": "ATTIMO_QUIET_HOURS",
        "quiet_action": "ATTIMO_QUIET_ACTION",
        "repeat_window_s": "ATTIMO_REPEAT_WINDOW_S",
        "alert_channel": "ATTIMO_ALERT_CHANNEL",
        "phone_region": "ATTIMO_PHONE_REGION",
        "export_dir": "ATTIMO_EXPORT_DIR",
        "benchmark_history": "ATTIMO_BENCHMARK_HISTORY",
    }

    def __post_init__(self) -> None:
        # Compound values given as text (a flag, a test, from_env) are parsed
        # here, so every Settings object holds them typed and checked.
        for name, parse in _COMPOUND.items():
            value = getattr(self, name)
            if isinstance(value, str) or (isinstance(value, tuple) and any(isinstance(v, str) for v in value)):
                object.__setattr__(self, name, parse(self.ENV[name], value))
        self.validate()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ATTIMO_* variables; keyword overrides (flags) win.
        A value that does not parse raises SettingsError naming its variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(var, raw, types[name]) if name not in _COMPOUND else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        if self.workers < 1:
            raise SettingsError("ATTIMO_WORKERS must be at least 1")
        if self.site_key and not self.site_secret:
            raise SettingsError("ATTIMO_SITE_KEY needs ATTIMO_SITE_SECRET to verify signed user ids")
        tokens = [getattr(self, name) for name in ("server_token", "ingest_token", "read_token", "admin_token")]
        given = [token for token in tokens if token]
        if len(set(given)) != len(given):
            raise SettingsError("ATTIMO_SERVER_TOKEN, ATTIMO_INGEST_TOKEN, ATTIMO_READ_TOKEN and "
                                "ATTIMO_ADMIN_TOKEN must differ from each other")
        choices = {"smtp_tls": ("none", "starttls", "implicit"), "scheduler": ("embedded", "off"),
                   "quiet_action": ("delay", "drop")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{self.ENV[name]} must be one of {', '.join(allowed)}, "
                                    f"not {getattr(self, name)!r}")
        at_least_one = ("redis_pool_size", "limit_concurrency", "link_ttl_days", "kafka_partitions", "worker_batch", "webhook_attempts",
                        "scheduler_batch", "scheduler_lease_ms", "scheduler_concurrency")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise SettingsError(f"{self.ENV[name]} must be at least 1, not {getattr(self, name)}")
        positive = ("signature_max_age_s", "read_timeout_ms", "redis_budget_ms", "apply_budget_ms", "redis_pool_timeout_ms", "dedupe_ttl_s",
                    "profile_ttl_s", "catalog_poll_s", "decision_log_max", "scheduler_poll_ms", "worker_session_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"{self.ENV[name]} must be more than 0, not {getattr(self, name)}")
        not_negative = ("decide_delay_ms", "kafka_linger_ms", "worker_batch_wait_ms", "worker_fetch_wait_ms",
                        "worker_metrics_port", "scheduler_metrics_port", "webhook_backoff_ms", "repeat_window_s", "snippet_budget_ms")
        for name in not_negative:
            if getattr(self, name) < 0:
                raise SettingsError(f"{self.ENV[name]} must not be negative, not {getattr(self, name)}")
        for name in ("port", "smtp_port"):
            if not 0 < getattr(self, name) < 65536:
                raise SettingsError(f"{self.ENV[name]} must be a TCP port (1 to 65535), not {getattr(self, name)}")
        if self.phone_region is not None and not (len(self.phone_region) == 2 and self.phone_region.isalpha()
                                                  and self.phone_region.isupper()):
            raise SettingsError(f"ATTIMO_PHONE_REGION must be a two-letter country code such as GB, "
                                f"not {self.phone_region!r}")
        if not _is_http_url(self.public_url):
            raise SettingsError(f"ATTIMO_PUBLIC_URL must be an absolute http(s) URL, not {self.public_url!r}")

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        env = {}
        for name, var in self.ENV.items():
            value = getattr(self, name)
            if value is None:
                continue
            if name in _FORMAT:
                value = _FORMAT[name](value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[var] = str(value)
        return env


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _parse(var: str, raw: str, type_name: str) -> object:
    text = raw.strip()
    try:
        if "tuple" in type_name:
            return _split_csv(raw)
        if type_name.startswith("bool"):
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise SettingsError(f"{var}={raw!r} is not a boolean: write one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
        if type_name.startswith("int"):
            return int(text)
        if type_name.startswith("float"):
            return float(text)
    except ValueError as exc:
        kind = "whole number" if type_name.startswith("int") else "number"
        raise SettingsError(f"{var}={raw!r} is not a {kind}") from exc
    return raw


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _quiet_hours(var: str, raw: str) -> tuple[int, int] | None:
    text = raw.strip()
    if text.lower() in ("", "off"):
        return None
    start, dash, end = text.partition("-")
    if dash and start.strip().isdigit() and end.strip().isdigit():
        hours = int(start), int(end)
        if all(0 <= h <= 23 for h in hours) and hours[0] != hours[1]:
            return hours
    raise SettingsError(f"{var}={raw!r}: write START-END in whole hours 0-23 with START != END, e.g. 21-8")


def _pairs(var: str, raw: str | tuple, parse_one) -> tuple:
    """A comma-separated list (or a tuple of items, some already parsed): each
    text item parsed by `parse_one(var, item)`."""
    items = _split_csv(raw) if isinstance(raw, str) else raw
    return tuple(parse_one(var, item) if isinstance(item, str) else item for item in items)


def _cap(var: str, item: str) -> tuple[str, int | None, int | None]:
    channel, colon, limits = item.partition(":")
    day, slash, week = limits.partition("/")
    numbers = [n.strip() for n in (day, week)]
    if not (colon and slash and channel.strip() and all(n == "" or n.isdigit() for n in numbers)):
        raise SettingsError(f"{var}: {item!r} is not channel:DAY/WEEK (either number may be empty), "
                            "e.g. email:1/3,total:4/10")
    return (channel.strip(), *(int(n) if n else None for n in numbers))


def _webhook(var: str, item: str) -> tuple[str, str]:
    channel, eq, url = item.partition("=")
    if not (eq and channel.strip() and _is_http_url(url.strip())):
        raise SettingsError(f"{var}: {item!r} is not channel=URL with an absolute http(s) URL, "
                            "e.g. push=https://push.example/send")
    return channel.strip(), url.strip()


def _rate(var: str, raw: str) -> str:
    """A rate such as 600/minute or 10 per second (limits' notation), or off."""
    text = raw.strip()
    if text.lower() == "off":
        return "off"
    try:
        item = limits.parse(text)
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise SettingsError(f"{var}={raw!r}: write a rate such as 600/minute (at least 1 per "
                            "second, minute, hour or day), or off")
    return text


def _network(var: str, item: str) -> str:
    try:
        return str(ipaddress.ip_network(item.strip(), strict=False))
    except ValueError:
        raise SettingsError(f"{var}: {item!r} is not an IP address or CIDR network, "
                            "e.g. 10.0.0.0/8,127.0.0.1") from None


_COMPOUND = {
    "rate_limit": _rate,
    "new_profile_limit": _rate,
    "trusted_proxies": lambda var, raw: _pairs(var, raw, _network),
    "quiet_hours": _quiet_hours,
    "contact_caps": lambda var, raw: _pairs(var, raw, _cap),
    "webhook_urls": lambda var, raw: _pairs(var, raw, _webhook),
}
_FORMAT = {
    "quiet_hours": lambda hours: f"{hours[0]}-{hours[1]}",
    "contact_caps": lambda caps: ",".join(f"{c}:{'' if d is None else d}/{'' if w is None else w}"
                                          for c, d, w in caps),
    "webhook_urls": lambda urls: ",".join(f"{c}={u}" for c, u in urls),
}
