"""Shared helpers: result rows, machine snapshots, process metrics, the test stack."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    """One line of the result table: a figure, its same-run baseline, and the ratio."""

    bench: str
    case: str
    metric: str
    value: float | None
    baseline: float | None = None
    unit: str = ""
    #: "value/baseline" or "baseline/value": how the ratio is formed (the latter for "x less" figures).
    ratio_kind: str = "value/baseline"
    target: str = ""
    passed: bool | None = None
    backend: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None:
            return None
        num, den = (
            (self.value, self.baseline)
            if self.ratio_kind == "value/baseline"
            else (self.baseline, self.value)
        )
        if den == 0:
            return None
        return num / den

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """VmHWM of this process (peak resident set), in MB (10^6 bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def _proc_stat() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class MachineMeter:
    """How busy the whole machine was between start() and stop() (all processes, in cores)."""

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None
        self.cores_busy: float | None = None

    def start(self) -> MachineMeter:
        busy, total = _proc_stat()
        self._start = (busy, total, time.monotonic())
        return self

    def stop(self) -> float:
        assert self._start is not None
        busy, total = _proc_stat()
        b0, t0, _ = self._start
        ncpu = os.cpu_count() or 1
        self.cores_busy = (busy - b0) / (total - t0) * ncpu if total > t0 else 0.0
        return self.cores_busy


def machine_snapshot() -> dict[str, Any]:
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    load = os.getloadavg()
    meter = MachineMeter().start()
    time.sleep(1.0)
    busy = meter.stop()
    return {
        "cores": os.cpu_count(),
        "mem_gib": round(mem_total / 1024**3, 1),
        "loadavg": [round(x, 2) for x in load],
        "cores_busy_1s": round(busy, 2),
        "python": sys.version.split()[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
