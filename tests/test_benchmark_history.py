"""The benchmark history: each run's figures appended with its commit, date,
machine, targets and floors, and served to the console."""

import os
import subprocess
import sys

import orjson

from benchmarks import history
from tests.conftest import ROOT


def test_a_run_is_appended_with_its_targets_and_floors(tmp_path):
    path = tmp_path / "history.jsonl"
    script = ("from benchmarks.report import print_figures; "
              "print_figures({'export_rows_per_s': 150000.0, 'export_floor_rows_per_s': 800000.0, 'rows': 3})")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ATTIMO_BENCHMARK_HISTORY": str(path)})
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout.splitlines()[-1]) == {"export_rows_per_s": 150000.0,
                                                          "export_floor_rows_per_s": 800000.0, "rows": 3}
    [run] = history.read(path)
    assert run["figures"]["export_rows_per_s"] == 150000.0 and run["commit"] not in ("", "unknown")
    assert run["targets"] == {"export_rows_per_s": [">=", 100000]}
    assert run["floors"] == {"export_rows_per_s": "export_floor_rows_per_s"}
    assert run["machine"]["cores"] == os.cpu_count() and run["date"].endswith("Z")


def test_the_console_reads_the_history_kept_beside_the_code(clean_api):
    with clean_api.server() as client:
        runs = client.get("/v1/ops/benchmarks").json()["runs"]
        assert {"benchmarks.bench_decide", "benchmarks.bench_audiences"} <= {run["benchmark"] for run in runs}
        only = client.get("/v1/ops/benchmarks", params={"benchmark": "benchmarks.bench_decide"}).json()["runs"]
        assert only and {run["benchmark"] for run in only} == {"benchmarks.bench_decide"}
    with clean_api.browser() as client:
        assert client.get("/v1/ops/benchmarks").status_code == 403


def test_the_readme_table_of_latest_figures_is_as_new_as_the_history():
    """benchmarks/README.md quotes the latest figures from the history: a run
    appended without `python -m benchmarks.history --table` fails here."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    quoted = readme.split(history.TABLE_START, 1)[1].split(history.TABLE_END, 1)[0].strip()
    assert quoted == history.table(history.read(history.HISTORY)).strip()
    assert "`p99_over_floor`" in quoted and "**not met**" in quoted  # targets judged, misses said
