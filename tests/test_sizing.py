"""The sizing page: docs/sizing.md worked out from the benchmark history, and
its arithmetic on a small history made here."""

import math

import orjson

from benchmarks import history, sizing
from tests.conftest import ROOT


def test_docs_sizing_is_as_new_as_the_history():
    """docs/sizing.md quotes the latest figures: a run appended without
    `python -m benchmarks.sizing` fails here."""
    assert (ROOT / "docs" / "sizing.md").read_text() == sizing.render(history.read(history.HISTORY))


def run(benchmark: str, figures: dict, *, date: str, quick: bool = False, commit: str = "abc1234") -> dict:
    command = f"python -m benchmarks.{benchmark}" + (" --quick" if quick else "")
    return history.entry(f"benchmarks.{benchmark}", figures, command=command, quick=quick, date=date, at_commit=commit)


def measured() -> list[dict]:
    return [
        run("bench_decide", {"decide_cpu_us": 500.0, "decide_rps_max": 3000.0}, date="2026-01-02T00:00:00Z"),
        run("bench_ingest", {"ingest_events_per_s": 10_000.0, "bytes_per_person": 2000.0, "people_per_batch": 1},
            date="2026-01-02T00:00:00Z"),
        run("bench_stream", {"produce_kafka_events_per_s": 100_000.0, "worker_events_per_s": 20_000.0},
            date="2026-01-02T00:00:00Z"),
        run("bench_followups", {"scheduler_messages_per_s": 2000.0}, date="2026-01-02T00:00:00Z"),
    ]


def counts(runs: list[dict], target: sizing.Target | None = None) -> dict[str, int | None]:
    """Each row's count by its name before any parenthesis."""
    plan = sizing.plan(sizing.costs(runs), target or sizing.Target())
    return {row.what.split(" (")[0]: row.count for row in plan}


def test_each_count_is_the_load_over_the_measured_cost_at_the_stated_utilisation():
    got = counts(measured())
    # 50k decides/s at 500 µs of CPU each, 60 % of a core: ceil(25 / 0.6) = 42 (saturation gives 28).
    assert got["API processes for decide"] == math.ceil(50_000 * 500e-6 / 0.6) == 42
    # 200k events/s in batches of 2 = 100k requests/s; a produce request carries 20 events: 5000/s.
    assert got["API processes for ingest"] == math.ceil(100_000 / (5000 * 0.6)) == 34
    # a worker's 20k events/s were 10 events a record: 2000 records/s.
    assert got["`attimo worker` processes"] == math.ceil(100_000 / (2000 * 0.6)) == 84
    assert got["Kafka partitions of `attimo.events`"] == 256  # the power of two >= 2 x 84
    # memory: 100M x 2000 B x 1.5 = 300 GB over 25 GB = 12; load: (50k x 2 + 100k x 8) / 60k = 15.
    assert got["Redis Cluster primaries"] == 15
    assert got["Redis memory, GB"] == 600  # both copies
    # 5M a day at 10x the average rate = 578.7/s over 2000/s at 50 %: 0.58, but never fewer than two.
    assert got["`attimo scheduler` processes"] == 2


def test_memory_decides_redis_when_it_needs_more_primaries_than_the_load():
    got = counts(measured(), sizing.Target(people=1_000_000_000, decides_per_s=1000, events_per_s=2000))
    assert got["Redis Cluster primaries"] == math.ceil(1e9 * 2000 * 1.5 / 1e9 / 25) == 120
    assert got["API processes for decide"] == 2  # the minimum of each role


def test_large_batches_need_fewer_workers_and_partitions_grow_with_them():
    got = counts(measured(), sizing.Target(events_per_batch=10))  # the worker's own record size
    assert got["`attimo worker` processes"] == math.ceil(200_000 / (20_000 * 0.6)) == 17
    assert got["Kafka partitions of `attimo.events`"] == 64  # >= 34


def test_a_full_run_is_preferred_and_a_quick_one_is_said():
    runs = [run("bench_decide", {"decide_cpu_us": 500.0}, date="2026-01-01T00:00:00Z", commit="full111"),
            run("bench_decide", {"decide_cpu_us": 300.0}, date="2026-01-05T00:00:00Z", quick=True)]
    found = sizing.find(runs, "bench_decide", "decide_cpu_us")
    assert found.value == 500.0 and "(quick run)" not in found.source
    assert found.source == "`python -m benchmarks.bench_decide` · 2026-01-01 · full111"
    only_quick = sizing.find(runs[1:], "bench_decide", "decide_cpu_us")
    assert only_quick.value == 300.0 and only_quick.source.endswith("(quick run)")


def test_decide_cpu_is_derived_from_the_saturation_rate_when_not_measured():
    runs = [run("bench_decide", {"decide_rps_max": 2500.0}, date="2026-01-01T00:00:00Z")]
    found = sizing.costs(runs)
    assert found["decide_cpu_us"].value == 400.0 and "derived" in found["decide_cpu_us"].note
    assert counts(runs)["API processes for decide"] == math.ceil(50_000 * 400e-6 / 0.6) == 34
    assert counts(runs)["`attimo worker` processes"] is None  # not measured: said, not guessed


def test_check_fails_while_the_page_is_older_than_the_history(tmp_path, capsys):
    path, page = tmp_path / "history.jsonl", tmp_path / "sizing.md"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in measured()))
    args = ["--history", str(path), "--output", str(page)]
    assert sizing.main([*args, "--check"]) == 1  # no page yet
    assert sizing.main(args) == 0 and sizing.main([*args, "--check"]) == 0
    text = page.read_text()
    assert "| API processes for decide (a core each) | 42 |" in text
    assert "`python -m benchmarks.bench_decide` · 2026-01-02 · abc1234" in text
    history.append(run("bench_decide", {"decide_cpu_us": 250.0}, date="2026-02-01T00:00:00Z"), path)
    assert sizing.main([*args, "--check"]) == 1
    assert sizing.main(["--people", "1000", *args, "--check"]) == 1  # another target, another page
    capsys.readouterr()
    assert sizing.main(["--people", "1000", "--history", str(path), "--output", "-"]) == 0
    assert "by `python -m benchmarks.sizing --people 1000`" in capsys.readouterr().out


def test_the_batch_sizes_assumed_are_the_benchmarks_own():
    from benchmarks import bench_stream
    assert sizing.PRODUCE_BATCH == bench_stream.BATCH


def test_measured_figures_replace_the_assumed_and_the_renamed_ones():
    """A run that measured Redis's time per apply script sets the Redis load
    (here 30 µs: 3 simple commands' worth a batch instead of the assumed 8),
    and the produce figure under its newer name wins over the older one."""
    runs = measured() + [
        run("bench_ingest", {"redis_us_per_script": 30.0}, date="2026-01-03T00:00:00Z"),
        run("bench_stream", {"kafka_produce_events_per_s": 50_000.0}, date="2026-01-03T00:00:00Z"),
    ]
    got = counts(runs)
    # (50k x 2 + 100k x 3) = 400k ops/s over 60k = 6.7; memory still wants 12.
    assert got["Redis Cluster primaries"] == 12
    # 50k events/s in requests of 20: 2500 requests/s, 100k batches/s over 1500 = 66.7.
    assert got["API processes for ingest"] == 67


def test_redis_cpu_per_event_is_preferred_to_the_scripts_wall_time():
    """Where a run measured Redis's CPU per event (one apply a person), it sets
    the Redis load instead of INFO commandstats' time per script, which counts
    the moments Redis waited for the core it shares with the API."""
    runs = measured() + [
        run("bench_ingest", {"redis_us_per_script": 300.0, "ingest_redis_cpu_us": 30.0,
                             "ingest_cpu_us": 120.0}, date="2026-01-03T00:00:00Z"),
    ]
    assert sizing.apply_us(sizing.costs(runs)) == 30.0
    # As in the test above: 30 µs a batch keeps the Redis load under what memory wants.
    assert counts(runs)["Redis Cluster primaries"] == 12
    page = sizing.render(runs)
    assert "| CPU per event, inline: the API (`ingest_cpu_us`) | 120 µs" in page
    assert "| CPU per event, inline: Redis (`ingest_redis_cpu_us`) | 30 µs" in page
