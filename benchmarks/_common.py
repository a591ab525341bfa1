"""Shared by the benchmark scripts: package versions, and how much CPU other processes took
during a measurement."""

from __future__ import annotations

import os
import time
from importlib import metadata

__all__ = ["BUSY_LIMIT", "OtherLoad", "version"]

BUSY_LIMIT = 0.1  # CPU cores used by other processes above which timings are flagged


class OtherLoad:
    """CPU time used by *other* processes since creation (Linux ``/proc/stat``; else None)."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = sum(ticks[3:5])  # idle + iowait
        busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # without guest time
        own = sum(os.times()[:4])
        return busy, own, time.perf_counter()

    def cores(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(busy - own, 0.0) / wall if wall > 0 else None


def version(dist: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
