"""Turns load results into what a benchmark leaves behind: a Markdown table and PNG
plots under benchmarks/results/, and the JSON figures line that ends its stdout."""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from benchmarks import history
from benchmarks.results import LoadResult  # noqa: E402
from benchmarks.saturation import SaturationResult  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Series are told apart by colour, percentiles by line style.
PERCENTILE_STYLES = (("p50", 50.0, ":"), ("p99", 99.0, "-"), ("p999", 99.9, "--"))


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def _errors_cell(errors: Mapping[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items()) if count)
    return f"{total} ({kinds})"


def _row(series_name: str, result: LoadResult) -> list[str]:
    return [
        series_name,
        f"{result.rate:.0f}",
        f"{result.achieved_rps:.0f}",
        _ms(result.p50_ms),
        _ms(result.p99_ms),
        _ms(result.p999_ms),
        _ms(result.max_ms),
        _errors_cell(result.errors),
        _ms(result.send_lag_p99_ms),
        f"{result.cpu_steal_s:.2f}",
    ]


_HEADER = [
    "series",
    "offered req/s",
    "achieved rps",
    "p50 ms",
    "p99 ms",
    "p999 ms",
    "max ms",
    "errors",
    "generator lag p99 ms",
    "cpu steal s",
]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(series: Mapping[str, Sequence[LoadResult]]) -> str:
    """One row per fixed-rate run, series after series."""
    return _table(_HEADER, (_row(name, r) for name, runs in series.items() for r in runs))


def saturation_table(searches: Mapping[str, SaturationResult]) -> str:
    """Every step of every search, in the order tried, with its verdict."""
    rows = (
        [*_row(name, step), "pass" if ok else "fail"]
        for name, search in searches.items()
        for step, ok in zip(search.steps, search.passed, strict=True)
    )
    return _table([*_HEADER, "step"], rows)


def plot_latency_vs_rate(
    series: Mapping[str, Sequence[LoadResult]],
    path: Path,
    *,
    title: str,
    searches: Mapping[str, SaturationResult] | None = None,
) -> Path:
    """p50/p99/p999 against offered rate, one colour per series, log latency;
    a vertical line marks each series' saturation rate when known."""
    figure, axes = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, runs) in zip(colours, series.items(), strict=False):
        runs = sorted(runs, key=lambda r: r.rate)
        rates = [r.rate for r in runs]
        for label, q, style in PERCENTILE_STYLES:
            axes.plot(
                rates,
                [r.percentile(q) for r in runs],
                style,
                marker="o",
                markersize=3,
                color=colour,
                label=f"{name} {label}",
            )
        if searches and name in searches and searches[name].max_rps > 0:
            axes.axvline(searches[name].max_rps, color=colour, alpha=0.4, linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (req/s)")
    axes.set_ylabel("latency from intended send (ms)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=max(1, len(series)))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_latency_ccdf(results: Mapping[str, LoadResult], path: Path, *, title: str) -> Path:
    """Fraction of requests slower than x, log-log: the tail stays readable down
    to p999, where a histogram would flatten it to nothing."""
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, result in results.items():
        latencies = np.sort(result.latencies_ms)
        if latencies.size == 0:
            continue
        slower = 1.0 - np.arange(1, latencies.size + 1) / latencies.size
        axes.step(latencies[:-1], slower[:-1], where="post", label=f"{name} @ {result.rate:.0f} req/s")
    for label, q, _ in PERCENTILE_STYLES:
        axes.axhline(1 - q / 100, color="grey", alpha=0.5, linewidth=0.8)
        axes.annotate(label, (0, 1 - q / 100), xycoords=("axes fraction", "data"), fontsize="small")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("latency from intended send (ms)")
    axes.set_ylabel("fraction of requests slower")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def nearest_run(runs: Sequence[LoadResult], rate: float) -> LoadResult:
    return min(runs, key=lambda r: abs(r.rate - rate))


def write_report(
    name: str,
    series: Mapping[str, Sequence[LoadResult]],
    *,
    title: str,
    figures: Mapping[str, Any] | None = None,
    searches: Mapping[str, SaturationResult] | None = None,
    ccdf_rate: float | None = None,
    notes: Sequence[str] = (),
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write <name>.md with its plots <name>_latency_vs_rate.png and
    <name>_ccdf.png (at the run nearest `ccdf_rate` in each series) into
    `results_dir`; return the Markdown file's path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    rate_plot = plot_latency_vs_rate(
        series,
        results_dir / f"{name}_latency_vs_rate.png",
        title=f"{title}: latency vs offered rate",
        searches=searches,
    )
    sections = [
        f"# {title}",
        "",
        f"- when: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command_line()}`",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.platform(terse=True)}",
        *(f"- {note}" for note in notes),
        "",
        "Latency runs from each request's intended send time on an open-loop "
        "schedule, so a stall is charged to latency. `generator lag` is how late "
        "the load generator itself sent; `cpu steal` is time the hypervisor took "
        "from the VM during the run (both explain noisy tails).",
    ]
    if figures:
        sections += ["", "## Figures", "", "```json", orjson.dumps(figures).decode(), "```"]
    sections += ["", "## Fixed-rate runs", "", markdown_table(series), "", f"![latency vs rate]({rate_plot.name})"]
    if ccdf_rate is not None:
        at_rate = {label: nearest_run(runs, ccdf_rate) for label, runs in series.items() if runs}
        ccdf_plot = plot_latency_ccdf(
            at_rate, results_dir / f"{name}_ccdf.png", title=f"{title}: latency tail near {ccdf_rate:.0f} req/s"
        )
        sections += ["", f"![latency tail]({ccdf_plot.name})"]
    if searches:
        summary = ", ".join(
            f"{label} {search.max_rps:.0f} req/s" for label, search in searches.items()
        )
        sections += ["", "## Saturation searches", "", f"Highest passing rate: {summary}.", "", saturation_table(searches)]
    path = results_dir / f"{name}.md"
    path.write_text("\n".join(sections) + "\n")
    return path


def command_line() -> str:
    """How this benchmark was started, as someone would type it again."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    start = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*start, *sys.argv[1:]])


def rounded(figures: Mapping[str, Any], digits: int = 3) -> dict[str, Any]:
    """Floats to `digits` decimals, so the figures line reads at a glance."""
    return {
        key: round(float(value), digits) if isinstance(value, float | np.floating) else value
        for key, value in figures.items()
    }


def print_figures(figures: Mapping[str, Any]) -> None:
    """The benchmark's last line on stdout: its figures as one JSON object; the
    same figures appended to the history (benchmarks/history.py)."""
    figures = rounded(figures)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    history.append(history.entry(name, orjson.loads(orjson.dumps(figures, option=orjson.OPT_SERIALIZE_NUMPY)),
                                 command=command_line(), quick="--quick" in sys.argv))
    sys.stdout.flush()
    print(orjson.dumps(figures, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)
