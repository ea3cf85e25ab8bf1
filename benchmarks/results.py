"""What one fixed-rate run measured (LoadResult): counts, errors, the latency
of every 2xx from its intended send time, the generator's own lateness, its
percentiles and the summary a benchmark prints; and the CPU time the
hypervisor stole meanwhile."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    """One fixed-rate run. Latencies are of 2xx responses, in ms, from the
    intended send time; `send_lag_ms` is how late the generator itself was."""

    rate: float
    duration: float
    connections: int
    sent: int
    completed: int
    errors: dict[str, int]
    latencies_ms: np.ndarray
    send_lag_ms: np.ndarray
    elapsed: float
    cpu_steal_s: float  # stolen by the hypervisor from all cores during the run

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rps(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else math.nan

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    @property
    def p999_ms(self) -> float:
        return self.percentile(99.9)

    @property
    def max_ms(self) -> float:
        return float(self.latencies_ms.max()) if self.latencies_ms.size else math.nan

    @property
    def send_lag_p99_ms(self) -> float:
        return float(np.percentile(self.send_lag_ms, 99)) if self.send_lag_ms.size else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 1),
            "duration_s": self.duration,
            "sent": self.sent,
            "completed": self.completed,
            "achieved_rps": round(self.achieved_rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "send_lag_p99_ms": round(self.send_lag_p99_ms, 3),
            "cpu_steal_s": round(self.cpu_steal_s, 3),
            "errors": dict(self.errors),
        }


def cpu_steal_seconds() -> float:
    """Time the hypervisor has taken from this VM's cores since boot (Linux):
    a run that lost much of it has noisy tails, whoever it measured."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan
