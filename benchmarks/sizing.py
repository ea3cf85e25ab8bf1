"""How many processes, partitions and Redis primaries a target load needs,
worked out from the measured per-unit costs in benchmarks/results/history.jsonl
and written to docs/sizing.md, so the sizing moves when a benchmark does.

    python -m benchmarks.sizing            # rewrite docs/sizing.md
    python -m benchmarks.sizing --check    # exit 1 if docs/sizing.md is not what the history gives now
    python -m benchmarks.sizing --people 20000000 --decides 5000 --events 40000 --output -   # another target, printed

Each figure is the median over the latest three full runs that have it (one
run's saturation figure moves by half on a shared VM); quick runs are used only
when no full run has the figure, and the page says so beside it. The page
carries no date of its own (only its sources'), so the same history always
gives the same page and a test can tell when it is stale.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import history

DOC = history.ROOT / "docs" / "sizing.md"

RECENT = 3  # runs a figure is the median of

# The target, overridden by the flags of the same names.
PEOPLE = 100_000_000
DECIDES_PER_S = 50_000
EVENTS_PER_S = 200_000
FOLLOWUPS_PER_DAY = 5_000_000

# Assumptions: each is said on the page, with why.
UTILISATION = 0.6  # of a process or Redis core at peak: room for spikes, failover and steal
SCHEDULER_UTILISATION = 0.5  # P9 measures lateness at half a scheduler's capacity (p99 ~0.1 s; 0.55 s at 80 %)
FOLLOWUP_PEAK = 10.0  # the busiest hour against the day's average rate
EVENTS_PER_BATCH = 2  # a browser's batch: a page view and an impression or so, of one person
MIN_PROCESSES = 2  # of each role, so one can fail or be redeployed
MIN_PRIMARIES = 3  # the smallest Redis Cluster
REPLICAS = 1  # per primary
MEMORY_HEADROOM = 1.5  # fragmentation, growth, and a fork's copy-on-write while saving
USABLE_GB_PER_PRIMARY = 25.0  # dataset per primary that still restarts and resyncs in minutes
REDIS_OPS_PER_CORE = 100_000  # simple commands a second (GET, HSET) on one Redis core
OPS_PER_DECIDE = 2  # the person's read, and a browser caller's rate-limit hit
REDIS_US_PER_APPLY = 80.0  # Redis time of one person's apply, where no run measured it (an earlier profile)
RECORDS_PER_PARTITION = 10_000  # records a second one partition takes comfortably (~10 MB/s at ~1 KB)
PARTITION_GROWTH = 2  # partitions over today's workers: workers can be added without repartitioning

# Events per batch the throughput figures were measured with: one person's
# batch is one request, one Kafka record and one read and write in Redis, and costs
# about the same whatever its size (benchmarks/README.md, P3: 20 people of
# one event a batch ingest at a third of one person's 20 events).
PRODUCE_BATCH = 20  # benchmarks/bench_stream.py BATCH: 20 events of one person a request
WORKER_BATCH = 10  # benchmarks/bench_stream.py P4: 10 page views a person, one record a person
INGEST_EVENTS_PER_REQUEST = 20  # benchmarks/bench_ingest.py: 20 events a request over people_per_batch people


@dataclass(frozen=True)
class Target:
    people: int = PEOPLE
    decides_per_s: float = DECIDES_PER_S
    events_per_s: float = EVENTS_PER_S
    followups_per_day: float = FOLLOWUPS_PER_DAY
    events_per_batch: float = EVENTS_PER_BATCH


@dataclass(frozen=True)
class Figure:
    """One measured value and the history entry it came from."""

    value: float
    run: dict[str, Any]
    note: str = ""

    @property
    def source(self) -> str:
        quick = " (quick run)" if self.run.get("quick") else ""
        return f"`{self.run.get('command') or self.run['benchmark']}` · {self.run['date'][:10]} · {self.run['commit']}{quick}"


@dataclass(frozen=True)
class Row:
    what: str
    count: int | None
    how: str


def find(runs: list[dict[str, Any]], benchmark: str, key: str) -> Figure | None:
    """The median of `key` over the latest RECENT full runs of `benchmark` that
    have it (a saturation figure moves by half from one run to the next on a
    shared VM), else over the latest quick ones; its source is the latest."""
    having = [r for r in runs if r["benchmark"] == f"benchmarks.{benchmark}" and _number(r["figures"].get(key))]
    full = [r for r in having if not r.get("quick")]
    recent = sorted(full or having, key=lambda r: r["date"])[-RECENT:]
    if not recent:
        return None
    value = statistics.median(float(r["figures"][key]) for r in recent)
    return Figure(value, recent[-1], f"median of {len(recent)} runs" if len(recent) > 1 else "")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def costs(runs: list[dict[str, Any]]) -> dict[str, Figure | None]:
    """The per-unit costs the sizing rests on, each with its source."""
    found = {
        "decide_cpu_us": find(runs, "bench_decide", "decide_cpu_us"),
        "decide_rps_max": find(runs, "bench_decide", "decide_rps_max"),
        "ingest_events_per_s": find(runs, "bench_ingest", "ingest_events_per_s"),
        # Named produce_kafka_events_per_s before 2026-12-01: the newer name wins when both exist.
        "produce_events_per_s": (find(runs, "bench_stream", "kafka_produce_events_per_s")
                                 or find(runs, "bench_stream", "produce_kafka_events_per_s")),
        "worker_events_per_s": find(runs, "bench_stream", "worker_events_per_s"),
        "bytes_per_person": find(runs, "bench_ingest", "bytes_per_person"),
        # Redis's time per person applied: every command of it since 2026-12-02
        # (a read, then a compare-and-set), the one apply script's before.
        "redis_us_per_person": find(runs, "bench_ingest", "redis_us_per_person"),
        "redis_us_per_script": find(runs, "bench_ingest", "redis_us_per_script"),
        # CPU time per event of the API and of Redis at a fixed rate (/proc; since 2026-12-02).
        "ingest_cpu_us": find(runs, "bench_ingest", "ingest_cpu_us"),
        "ingest_redis_cpu_us": find(runs, "bench_ingest", "ingest_redis_cpu_us"),
        "scheduler_messages_per_s": find(runs, "bench_followups", "scheduler_messages_per_s"),
    }
    rps = found["decide_rps_max"]
    if found["decide_cpu_us"] is None and rps is not None:
        # Saturation shares its core with Redis, so this overstates the API's own CPU: the safe side.
        found["decide_cpu_us"] = Figure(1e6 / rps.value, rps.run, "derived: 1e6 ÷ `decide_rps_max`")
    return found


def apply_us(found: dict[str, Figure | None]) -> float:
    """Redis time of one person's apply: Redis's CPU per event where a run
    measured it (bench_ingest's batches carry one event a person, so that is
    one apply), else the script's time from INFO commandstats, which counts
    the moments Redis waited for its shared core too, else assumed."""
    for key in ("ingest_redis_cpu_us", "redis_us_per_person", "redis_us_per_script"):
        measured = found.get(key)
        if measured is not None:
            return measured.value
    return REDIS_US_PER_APPLY


def ceil(x: float) -> int:
    """Round up, forgiving float dust (33.000000001 is 33)."""
    return math.ceil(round(x, 6))


def power_of_two(n: float) -> int:
    return 1 << max(0, ceil(n) - 1).bit_length()


def num(x: float) -> str:
    """Whole numbers with thin thousands separators; small ones to 3 figures."""
    return f"{round(x):,}".replace(",", " ") if abs(x) >= 100 else f"{x:.3g}"


def pct(x: float) -> str:
    return f"{x * 100:g} %"


def plan(found: dict[str, Figure | None], target: Target) -> list[Row]:
    """The table for the target: each count rounded up, at the stated utilisation."""
    rows: list[Row] = []
    u = UTILISATION
    batches_per_s = target.events_per_s / target.events_per_batch
    batches = f"{num(target.events_per_s)} events/s ÷ {target.events_per_batch:g} a batch = {num(batches_per_s)} batches/s"

    cpu, rps = found["decide_cpu_us"], found["decide_rps_max"]
    if cpu is None:
        rows.append(Row("API processes for decide (a core each)", None, "not measured: run `bench_decide`"))
    else:
        by_cpu = target.decides_per_s * cpu.value * 1e-6 / u
        how = f"{num(target.decides_per_s)} decides/s × {num(cpu.value)} µs ÷ {pct(u)} = {by_cpu:.1f} cores"
        by_rps = 0.0
        if rps is not None:
            by_rps = target.decides_per_s / (rps.value * u)
            how += f"; by saturation {num(target.decides_per_s)} ÷ ({num(rps.value)}/s × {pct(u)}) = {by_rps:.1f}; the larger"
        rows.append(Row("API processes for decide (a core each)", max(MIN_PROCESSES, ceil(by_cpu), ceil(by_rps)), how))

    produce = found["produce_events_per_s"]
    if produce is None:
        rows.append(Row("API processes for ingest (Kafka mode)", None, "not measured: run `bench_stream`"))
    else:
        per_process = produce.value / PRODUCE_BATCH
        need = batches_per_s / (per_process * u)
        rows.append(Row("API processes for ingest (Kafka mode: the API only produces)", max(MIN_PROCESSES, ceil(need)),
                        f"{batches} ÷ ({num(per_process)} requests/s × {pct(u)}) = {need:.1f}"))

    worker = found["worker_events_per_s"]
    workers = None
    if worker is None:
        rows.append(Row("`attimo worker` processes", None, "not measured: run `bench_stream`"))
    else:
        per_worker = worker.value / WORKER_BATCH
        need = batches_per_s / (per_worker * u)
        workers = max(MIN_PROCESSES, ceil(need))
        rows.append(Row("`attimo worker` processes", workers,
                        f"{num(batches_per_s)} records/s ÷ ({num(per_worker)} records/s × {pct(u)}) = {need:.1f}"))

    by_rate = batches_per_s / RECORDS_PER_PARTITION
    wanted = max(PARTITION_GROWTH * (workers or 0), by_rate)
    rows.append(Row("Kafka partitions of `attimo.events`", power_of_two(wanted),
                    f"the power of two ≥ max({PARTITION_GROWTH} × {workers or 0} workers, {num(batches_per_s)} records/s "
                    f"÷ {num(RECORDS_PER_PARTITION)} a partition = {by_rate:.1f})"))

    size = found["bytes_per_person"]
    ops_per_batch = apply_us(found) * 1e-6 * REDIS_OPS_PER_CORE
    ops = target.decides_per_s * OPS_PER_DECIDE + batches_per_s * ops_per_batch
    by_ops = ops / (REDIS_OPS_PER_CORE * u)
    ops_how = (f"by load ({num(target.decides_per_s)} × {OPS_PER_DECIDE} + {num(batches_per_s)} × {ops_per_batch:g}) "
               f"= {num(ops)} ops/s ÷ ({num(REDIS_OPS_PER_CORE)} × {pct(u)}) = {by_ops:.1f}")
    if size is None:
        rows.append(Row("Redis Cluster primaries", max(MIN_PRIMARIES, ceil(by_ops)),
                        ops_how + "; memory not measured: run `bench_ingest`"))
    else:
        data_gb = target.people * size.value * MEMORY_HEADROOM / 1e9
        by_memory = data_gb / USABLE_GB_PER_PRIMARY
        primaries = max(MIN_PRIMARIES, ceil(by_memory), ceil(by_ops))
        rows.append(Row("Redis Cluster primaries (each with a replica)", primaries,
                        f"by memory {num(data_gb)} GB ÷ {USABLE_GB_PER_PRIMARY:g} GB = {by_memory:.1f}; {ops_how}; the larger"))
        total = data_gb * (1 + REPLICAS)
        rows.append(Row("Redis memory, GB (primaries and replicas)", ceil(total),
                        f"{num(target.people)} people × {num(size.value)} B × (1 + {REPLICAS} replica) × "
                        f"{MEMORY_HEADROOM:g} headroom; {num(data_gb / primaries)} GB a primary"))

    scheduler = found["scheduler_messages_per_s"]
    if scheduler is None:
        rows.append(Row("`attimo scheduler` processes", None, "not measured: run `bench_followups`"))
    else:
        peak = target.followups_per_day / 86_400 * FOLLOWUP_PEAK
        need = peak / (scheduler.value * SCHEDULER_UTILISATION)
        rows.append(Row("`attimo scheduler` processes", max(MIN_PROCESSES, ceil(need)),
                        f"{num(target.followups_per_day)}/day ÷ 86 400 s × {FOLLOWUP_PEAK:g} peak = {num(peak)}/s "
                        f"÷ ({num(scheduler.value)}/s × {pct(SCHEDULER_UTILISATION)}) = {need:.2f}"))
    return rows


def _cost_rows(found: dict[str, Figure | None]) -> list[tuple[str, str, str]]:
    """(cost, value, source) for the costs table; a figure no run has is said so."""
    def cell(key: str, unit: str, detail: Callable[[Figure], str] | None = None) -> tuple[str, str]:
        figure = found[key]
        if figure is None:
            return "not measured", "—"
        note = "; ".join(n for n in (figure.note, detail(figure) if detail else "") if n)
        return f"{num(figure.value)}{unit}" + (f" ({note})" if note else ""), figure.source

    def per_request(f: Figure) -> str:
        people = f.run["figures"].get("people_per_batch") or 1
        return f"{INGEST_EVENTS_PER_REQUEST} events of " + ("one person" if people == 1 else f"{people} people") + " a request"

    ingest = found["ingest_events_per_s"]
    return [
        ("CPU per decide (`decide_cpu_us`)", *cell("decide_cpu_us", " µs")),
        ("decides/s per API process (`decide_rps_max`)", *cell("decide_rps_max", "/s")),
        ("events/s per API process, inline (`ingest_events_per_s`)", *cell("ingest_events_per_s", "/s", per_request)),
        ("CPU per event, inline: the API (`ingest_cpu_us`)",
         *(cell("ingest_cpu_us", " µs", lambda f: "measured below saturation; Redis's own CPU is the next row")
           if found.get("ingest_cpu_us") is not None else
           ("not measured", "—") if ingest is None else
           (f"{num(1e6 / ingest.value)} µs (derived: 1e6 ÷ `ingest_events_per_s`, one core at saturation)",
            ingest.source))),
        ("CPU per event, inline: Redis (`ingest_redis_cpu_us`)", *cell("ingest_redis_cpu_us", " µs")),
        ("events/s per API process, Kafka mode (`kafka_produce_events_per_s`)",
         *cell("produce_events_per_s", "/s", lambda f:
               f"{PRODUCE_BATCH} events a request: {num(f.value / PRODUCE_BATCH)} requests/s")),
        ("events/s per `attimo worker` (`worker_events_per_s`)",
         *cell("worker_events_per_s", "/s", lambda f:
               f"{WORKER_BATCH} events a record: {num(f.value / WORKER_BATCH)} records/s")),
        ("records/s per Kafka partition", f"{num(RECORDS_PER_PARTITION)}/s", "assumed, not measured"),
        redis_apply_row(found, cell),
        ("bytes per person in Redis (`bytes_per_person`)", *cell("bytes_per_person", " B")),
        ("messages/s per `attimo scheduler` (`scheduler_messages_per_s`)", *cell("scheduler_messages_per_s", "/s")),
    ]


def redis_apply_row(found: dict[str, Figure | None], cell) -> tuple[str, str, str]:
    for key in ("redis_us_per_person", "redis_us_per_script"):
        if found.get(key) is not None:
            return (f"Redis time per person's apply (`{key}`)", *cell(key, " µs"))
    return ("Redis time per person's apply", f"{REDIS_US_PER_APPLY:g} µs", "assumed: no run measured it")


def command(target: Target) -> str:
    """The command that writes this page: the flags that differ from the defaults."""
    flags = [(f"--{name}", getattr(target, field)) for name, field in
             (("people", "people"), ("decides", "decides_per_s"), ("events", "events_per_s"),
              ("followups-per-day", "followups_per_day"), ("events-per-batch", "events_per_batch"))
             if getattr(target, field) != getattr(Target(), field)]
    def plain(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    return " ".join(["python -m benchmarks.sizing", *(f"{flag} {plain(value)}" for flag, value in flags)])


def render(runs: list[dict[str, Any]], target: Target = Target()) -> str:
    """docs/sizing.md for these runs: the same runs give the same text."""
    found = costs(runs)
    lines = [
        "# Sizing",
        "",
        "How many API processes, workers, schedulers, Kafka partitions and Redis primaries a",
        "load needs, worked out from the per-unit costs the benchmarks measured. Generated",
        f"from `benchmarks/results/history.jsonl` by `{command(target)}`; do not edit by hand",
        "(a test fails when this page is older than the history).",
        "",
        "## Measured per-unit costs",
        "",
        f"Each figure is the median over the latest {RECENT} full runs that have it (quick runs only",
        "where no full run has it, marked so). Source: the latest of them: command · date · commit.",
        "",
        "| cost | value | source |",
        "|---|---|---|",
        *(f"| {what} | {value} | {source} |" for what, value, source in _cost_rows(found)),
        "",
        f"## For {num(target.people)} people, {num(target.decides_per_s)} decides/s, "
        f"{num(target.events_per_s)} events/s, {num(target.followups_per_day)} follow-ups a day",
        "",
        "| what | count | how |",
        "|---|---|---|",
        *(f"| {row.what} | {'—' if row.count is None else num(row.count)} | {row.how} |"
          for row in plan(found, target)),
        "",
        "## Assumptions",
        "",
        f"- **Utilisation**: every API process, worker and Redis core planned at {pct(UTILISATION)} of what it",
        "  measured, for spikes, a failed peer's share and redeploys. The figures come from a 2-core VM",
        "  whose hypervisor steals CPU at times, with Redis on the same core as the process measured:",
        "  that is not a production core, which usually does more. Re-measure on the machines you will",
        "  run, and size from those runs.",
        f"- **At least {MIN_PROCESSES} of each process and {MIN_PRIMARIES} Redis primaries**, whatever the load asks:",
        "  one can fail or be redeployed, and a Redis Cluster needs three primaries.",
        f"- **Batches**: {target.events_per_batch:g} events of one person a batch (a browser sends a page view and",
        "  an impression or so together). One person's batch is one request, one Kafka record and one",
        "  read and write in Redis, and costs about the same whatever its size (P3: 20 people of one event a batch",
        "  ingest at about a third of one person's 20 events), so the measured events/s are turned into",
        f"  batches/s at the size they were measured with ({PRODUCE_BATCH} events a request for produce, "
        f"{WORKER_BATCH} a record",
        "  for the worker) and the load into batches at this size. That is pessimistic for large",
        "  batches: `--events-per-batch` sets it.",
        f"- **Decide**: one API process a core, at the larger of the CPU time ({pct(UTILISATION)} of a core) and",
        "  the saturation rate. The CPU time per request is what steal barely moves; the saturation rate",
        "  shares its core with Redis.",
        "- **Ingest in Kafka mode**: the API only produces; `attimo worker` applies. Inline mode would need",
        "  the API processes to do the workers' share as well.",
        f"- **Kafka partitions**: at least {PARTITION_GROWTH}× the workers, so workers can be added without",
        f"  repartitioning (a person's events stay in one partition), and at most {num(RECORDS_PER_PARTITION)}",
        "  records/s each (about 10 MB/s at 1 KB a record); rounded up to a power of two.",
        "- **Redis memory**: people × bytes per person (P7: 30 traits, 5 windowed features, a month",
        f"  at 20 events a day) × {MEMORY_HEADROOM:g} for fragmentation, growth and copy-on-write while saving,",
        f"  × (1 + {REPLICAS}) for a replica of each primary; {USABLE_GB_PER_PRIMARY:g} GB of data a primary, so",
        "  that a restart or a resync takes minutes.",
        f"- **Redis load**: {num(REDIS_OPS_PER_CORE)} simple commands/s a primary (one core); a decide is "
        f"{OPS_PER_DECIDE} (the",
        "  person's read and a browser caller's rate-limit hit; the decision log is written in batches);",
        f"  a batch's apply (a read, then a compare-and-set write) takes about {apply_us(found):.3g} µs of Redis time, "
        f"{apply_us(found) * 1e-6 * REDIS_OPS_PER_CORE:.3g} simple commands' worth (measured with Redis",
        "  sharing one core with the API, which makes it dearer: the safe side).",
        "  Primaries are the larger of the count by memory and by load.",
        f"- **Follow-ups**: the busiest hour sends at {FOLLOWUP_PEAK:g}× the day's average rate; a scheduler is",
        f"  planned at {pct(SCHEDULER_UTILISATION)} of its measured capacity, where P9 measures its lateness.",
        "  Schedulers share the due queue by leased shards, so any number can run.",
        "",
        "## How to re-measure",
        "",
        "```sh",
        "python -m benchmarks.bench_decide      # decide_cpu_us, decide_rps_max",
        "python -m benchmarks.bench_ingest      # ingest_events_per_s, bytes_per_person",
        "python -m benchmarks.bench_stream      # produce_kafka_events_per_s, worker_events_per_s",
        "python -m benchmarks.bench_followups   # scheduler_messages_per_s",
        "python -m benchmarks.sizing            # this page, from the runs just appended",
        "```",
        "",
        "Each run appends its figures to `benchmarks/results/history.jsonl`",
        "([benchmarks/README.md](../benchmarks/README.md)); `python -m benchmarks.sizing --check`",
        "exits 1 while this page is older than them.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=PEOPLE)
    parser.add_argument("--decides", type=float, default=DECIDES_PER_S, help="decides a second at peak")
    parser.add_argument("--events", type=float, default=EVENTS_PER_S, help="events a second at peak")
    parser.add_argument("--followups-per-day", type=float, default=FOLLOWUPS_PER_DAY)
    parser.add_argument("--events-per-batch", type=float, default=EVENTS_PER_BATCH,
                        help="events of one person a request (and a Kafka record)")
    parser.add_argument("--history", type=Path, default=history.HISTORY, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(DOC),
                        help="where to write the page; - prints it (another target without touching docs/sizing.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from what would be written")
    args = parser.parse_args(argv)
    target = Target(args.people, args.decides, args.events, args.followups_per_day, args.events_per_batch)
    text = render(history.read(args.history), target)
    if args.output == "-":
        print(text, end="")
        return 0
    args.output = Path(args.output)
    old = args.output.read_text() if args.output.exists() else None
    if args.check:
        if old == text:
            print(f"{args.output} is up to date")
            return 0
        why = "does not exist" if old is None else "differs from what the history gives now"
        changed = [] if old is None else sorted(set(text.splitlines()) - set(old.splitlines()))
        print(f"{args.output} {why}; run `{command(target)}`", file=sys.stderr)
        for line in changed[:10]:
            print(f"  now: {line}", file=sys.stderr)
        return 1
    if old != text:
        args.output.write_text(text)
    print(f"{args.output} " + ("written" if old != text else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
