"""What the outcome benchmark leaves in benchmarks/results/: outcomes.md (the
figures, each policy's result, each seed's uplift, and why a figure is null)
and three plots: cumulative conversions, regret against the contextual oracle,
and the uplift estimates with their intervals against the truth."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from benchmarks.outcome_figures import (  # noqa: E402
    WARMUP_SHARE,
    UpliftSeed,
    conversions,
    regret,
    reward_per_decision,
    scored,
)
from benchmarks.report import RESULTS_DIR, command_line, rounded  # noqa: E402
from benchmarks.shop_world import DRIFT_AT, Visits, World  # noqa: E402


def write_outcomes_report(figures: Mapping[str, Any], world: World, visits: Visits,
                          policies: Mapping[str, np.ndarray], seeds: list[UpliftSeed],
                          nulls: Mapping[str, str], notes: list[str], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        _plot_conversions(world, visits, policies, results_dir / "outcomes_conversions.png"),
        _plot_regret(world, visits, policies, results_dir / "outcomes_regret.png"),
        _plot_uplift(seeds, results_dir / "outcomes_uplift.png"),
    ]
    sections = [
        "# Outcomes: Attimo's learning against oracles, a marketer and chance",
        "",
        f"- when: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `{command_line()}`",
        *(f"- {note}" for note in notes),
        "",
        "## Figures",
        "",
        "```json",
        orjson.dumps(rounded(figures)).decode(),
        "```",
    ]
    if nulls:
        sections += ["", "Null figures and why:", "", *(f"- `{key}`: {reason}" for key, reason in nulls.items())]
    sections += ["", "## Policies", "", _policy_table(world, visits, policies), "",
                 "## Hold-out uplift per seed", "", _uplift_table(seeds), ""]
    sections += [f"![{plot.stem}]({plot.name})" for plot in plots]
    path = results_dir / "outcomes.md"
    path.write_text("\n".join(sections) + "\n")
    return path


def _policy_table(world: World, visits: Visits, policies: Mapping[str, np.ndarray]) -> str:
    counted = scored(visits)
    oracle_value = world.value(visits, policies["contextual oracle"])[counted].sum()
    rows = ["| policy | value after warm-up | share of contextual oracle | purchases (all visits) | "
            "conversions per decision | nothing shown |", "|---|---|---|---|---|---|"]
    for name, shown in policies.items():
        value = world.value(visits, shown)[counted].sum()
        rows.append(f"| {name} | {value:.1f} | {value / oracle_value:.3f} | {conversions(world, visits, shown)[-1]} | "
                    f"{reward_per_decision(world, visits, shown):.5f} | {int((shown < 0).sum())} |")
    return "\n".join(rows)


def _uplift_table(seeds: list[UpliftSeed]) -> str:
    rows = ["| seed | truth | estimate | ci95 | holds the truth | treated | control |", "|---|---|---|---|---|---|---|"]
    for s in seeds:
        interval = f"[{s.ci95[0]:.4f}, {s.ci95[1]:.4f}]" if s.ci95 else "–"
        estimate = f"{s.estimate:.4f}" if s.estimate is not None else "–"
        rows.append(f"| {s.seed} | {s.truth:.4f} | {estimate} | {interval} | "
                    f"{'–' if s.covered is None else s.covered} | {s.treated or '–'} | {s.control or '–'} |")
    return "\n".join(rows)


def _marks(axes, n_visits: int) -> None:
    axes.axvline(WARMUP_SHARE * n_visits, color="grey", linestyle=":", linewidth=1, label="end of warm-up")
    axes.axvline(DRIFT_AT * n_visits, color="grey", linestyle="--", linewidth=1, label="drift")


def _plot_conversions(world: World, visits: Visits, policies: Mapping[str, np.ndarray], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, shown in policies.items():
        axes.plot(conversions(world, visits, shown), label=name)
    _marks(axes, len(visits))
    axes.set_xlabel("visits")
    axes.set_ylabel("purchases so far")
    axes.set_title("Cumulative conversions per policy (same visitors, same coin flips)")
    return _save(figure, axes, path)


def _plot_regret(world: World, visits: Visits, policies: Mapping[str, np.ndarray], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    oracle = policies["contextual oracle"]
    for name, shown in policies.items():
        if name != "contextual oracle":
            axes.plot(regret(world, visits, shown, oracle), label=name)
    _marks(axes, len(visits))
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel("visits")
    axes.set_ylabel("expected conversion value given up")
    axes.set_title("Regret against the contextual oracle (below 0: the persona oracle sees more)")
    return _save(figure, axes, path)


def _plot_uplift(seeds: list[UpliftSeed], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(8, 5))
    x = np.arange(len(seeds))
    axes.scatter(x, [s.truth for s in seeds], marker="_", s=400, color="black", label="truth", zorder=3)
    known = [(i, s) for i, s in enumerate(seeds) if s.estimate is not None and s.ci95 is not None]
    if known:
        axes.errorbar([i for i, _ in known], [s.estimate for _, s in known],
                      yerr=np.array([[s.estimate - s.ci95[0], s.ci95[1] - s.estimate] for _, s in known]).T,
                      fmt="o", capsize=4, label="estimate, 95 % interval")
    else:
        axes.text(0.5, 0.9, "no uplift was reported", transform=axes.transAxes, ha="center")
    axes.set_xticks(x, [str(s.seed) for s in seeds])
    axes.set_xlabel("seed")
    axes.set_ylabel("uplift in purchase probability")
    axes.set_title("Hold-out uplift of the checkout offer: estimates against the truth")
    return _save(figure, axes, path)


def _save(figure, axes, path: Path) -> Path:
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
