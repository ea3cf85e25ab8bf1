"""Every benchmark run's figures, appended to benchmarks/results/history.jsonl
with the commit, date and machine, so a regression shows as a line going the
wrong way (the console's Benchmarks page, GET /v1/ops/benchmarks). Each entry
also says, for its figures that have one, the target and the floor figure it
is measured against (benchmarks/README.md defines them).

    python -m benchmarks.history --backfill   # add the figures of the result files not in it yet
    python -m benchmarks.history --table      # the latest figures' table in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HISTORY = RESULTS_DIR / "history.jsonl"
ROOT = RESULTS_DIR.parent.parent

# figure -> (comparison, value) it must meet; benchmarks/README.md says why.
TARGETS: dict[str, tuple[str, float]] = {
    "p99_over_floor": ("<=", 1.5), "cpu_over_floor": ("<=", 1.3), "rps_max_over_floor": (">=", 0.75), "p99_5000_over_50": ("<=", 1.5),
    "decide_in_process_5000_over_50": ("<=", 1.5),
    "ingest_events_per_s": (">=", 10_000), "batch_p99_ms": ("<=", 5.0), "worker_over_bare": (">=", 1.0),
    "freshness_p99_ms_at_half": ("<=", 100.0), "bytes_per_person": ("<=", 2048), "gzip_bytes": ("<=", 4096),
    "slot_over_floor_p99": ("<=", 1.5), "lateness_p99_ms": ("<=", 1000.0),
    "lateness_p99_ms_at_half": ("<=", 1000.0), "scheduler_over_floor": (">=", 0.5), "oracle_share": (">=", 0.9),
    "uplift_rel_error": ("<=", 0.10), "ci_coverage": (">=", 0.9), "ope_rel_error": ("<=", 0.10),
    "decide_p99_learning_over_priority": ("<=", 1.2), "model_staleness_p99_ms": ("<=", 1000.0),
    "segment_change_p99_ms": ("<=", 1000.0), "export_rows_per_s": (">=", 100_000), "tracking_ratio": (">=", 0.8),
    "import_rows_per_s": (">=", 20_000),
}
# figure -> the floor figure of the same run it is compared with
FLOORS: dict[str, str] = {
    "decide_p99_ms": "floor_p99_ms", "decide_rps_max": "floor_rps_max", "decide_cpu_us": "floor_cpu_us",
    "ingest_events_per_s": "floor_events_per_s", "worker_events_per_s": "bare_agent_events_per_s",
    "slot_filled_p99_ms": "floor_filled_p99_ms", "export_rows_per_s": "export_floor_rows_per_s",
    "pipeline_events_per_s_tracking": "pipeline_events_per_s_untracked", "import_rows_per_s": "import_floor_rows_per_s",
    "decide_p99_ms_learning": "decide_p99_ms_priority",
    "scheduler_messages_per_s": "scheduler_floor_messages_per_s",
    "workers_2_events_per_s": "workers_1_events_per_s",
    "p99_5000_offers_ms": "p99_50_offers_ms", "cpu_us_5000_offers": "cpu_us_50_offers",
    "decide_rps_max_2_workers": "decide_rps_max_1_worker_unpinned",
}


def commit() -> str:
    """The commit measured, with "+" when the work tree had changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+" if dirty else "")


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cores": os.cpu_count(), "cpu": model, "arch": platform.machine(), "python": platform.python_version(),
            "host": platform.node()}


def entry(benchmark: str, figures: Mapping[str, Any], *, command: str = "", quick: bool = False,
          date: str | None = None, at_commit: str | None = None) -> dict[str, Any]:
    numeric = {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        "benchmark": benchmark, "quick": quick, "command": command,
        "date": date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": at_commit or commit(), "machine": machine(), "figures": dict(figures),
        "targets": {k: list(TARGETS[k]) for k in numeric if k in TARGETS},
        "floors": {k: FLOORS[k] for k in numeric if k in FLOORS and FLOORS[k] in numeric},
    }


def history_path() -> Path:
    """ATTIMO_BENCHMARK_HISTORY, or results/history.jsonl (the API reads the same)."""
    return Path(os.environ.get("ATTIMO_BENCHMARK_HISTORY") or HISTORY)


def append(record: Mapping[str, Any], path: Path | None = None) -> None:
    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def read(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or history_path()
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


_FIGURES = re.compile(r"```json\n(\{.*?\})\n```", re.S)
_WHEN = re.compile(r"- when: (\d{4}-\d\d-\d\d \d\d:\d\d) UTC")
_COMMAND = re.compile(r"- command: `([^`]*)`")


def backfill(path: Path | None = None) -> int:
    """The figures of each result file (its JSON block), dated by the file or
    its last commit, for runs made before the history existed; a file already
    in the history (same benchmark, date and figures) is skipped."""
    known = {(r["benchmark"], orjson.dumps(r["figures"], option=orjson.OPT_SORT_KEYS)) for r in read(path)}
    added = 0
    for report in sorted(RESULTS_DIR.glob("*.md")):
        text = report.read_text()
        found = _FIGURES.search(text)
        if not found:
            continue
        figures = orjson.loads(found.group(1))
        said = _COMMAND.search(text)
        command = said.group(1) if said else ""
        benchmark = command.split()[2] if command.startswith("python -m ") else f"benchmarks.{report.stem}"
        if (benchmark, orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)) in known:
            continue
        when = _WHEN.search(text)
        log = subprocess.run(["git", "log", "-1", "--format=%h %cI", "--", str(report)], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
        date = (when.group(1).replace(" ", "T") + ":00Z") if when else (log[1] if len(log) > 1 else None)
        append(entry(benchmark, figures, command=command, quick="--quick" in command, date=date,
                     at_commit=log[0] if log else "unknown"), path)
        added += 1
    return added


README = RESULTS_DIR.parent / "README.md"
TABLE_START, TABLE_END = "<!-- latest figures: start -->", "<!-- latest figures: end -->"


def latest(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each benchmark's latest run (a full run over a later quick one only when
    no full run is newer: the table says which)."""
    found: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["date"]):
        found[run["benchmark"]] = run
    return dict(sorted(found.items()))


def _met(value: float, target: list) -> str:
    comparison, bound = target
    return "met" if (value <= bound if comparison == "<=" else value >= bound) else "**not met**"


def table(runs: list[dict[str, Any]]) -> str:
    """The latest run of each benchmark: every figure with a target, against
    it (and its floor figure where there is one)."""
    lines = ["| benchmark | run | figure | value | floor | target | |", "|---|---|---|---|---|---|---|"]
    for name, run in latest(runs).items():
        when = f"{run['date'][:10]} {run['commit']}" + (" (quick)" if run.get("quick") else "")
        figures = run["figures"]
        # The targets and floors as defined now (a figure defined after its run still shows).
        targets = {**run.get("targets", {}), **{k: list(v) for k, v in TARGETS.items() if k in figures}}
        floors = {**run.get("floors", {}), **{k: v for k, v in FLOORS.items() if k in figures}}
        for figure, target in sorted(targets.items()):
            value = figures.get(figure)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            floor_name = floors.get(figure)
            floor = f"{figures[floor_name]:g} (`{floor_name}`)" if floor_name in figures else ""
            lines.append(f"| `{name.removeprefix('benchmarks.')}` | {when} | `{figure}` | {value:g} | {floor} "
                         f"| {target[0]} {target[1]:g} | {_met(value, target)} |")
    return "\n".join(lines)


def write_table(readme: Path = README) -> bool:
    """Put the table between the markers of benchmarks/README.md; True if it changed."""
    text = readme.read_text()
    head, _, rest = text.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    new = f"{head}{TABLE_START}\n{table(read())}\n{TABLE_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backfill", action="store_true", help="add the result files' figures not in it yet")
    parser.add_argument("--table", action="store_true", help="rewrite the latest figures' table in the README")
    args = parser.parse_args()
    if args.backfill:
        print(f"added {backfill()} entries to {history_path()}")
    elif args.table:
        print("benchmarks/README.md " + ("updated" if write_table() else "already up to date"))
    else:
        for record in read():
            print(record["date"], record["benchmark"], record["commit"], len(record["figures"]), "figures")


if __name__ == "__main__":
    main()
