"""Shared by the benchmark scripts: package versions, how much CPU other processes took
during a measurement, and the peak memory of a single call."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

__all__ = [
    "BUSY_LIMIT",
    "OtherLoad",
    "PeakMemory",
    "pin_allocator",
    "version",
    "versions",
    "warn_if_busy",
]

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


# glibc mallopt() parameters (malloc.h) and its steady state: the dynamic mmap threshold climbs,
# as large blocks are freed, to at most 32 MiB (64-bit), and the trim threshold follows at twice
# that value.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
_STEADY_TRIM_THRESHOLD = 2 * _STEADY_MMAP_THRESHOLD


def pin_allocator() -> bool:
    """Pin glibc's malloc thresholds to the values its dynamic policy reaches after warm-up, so
    every timed call runs under the same allocator policy, whatever ran before it in the
    process. Returns False where glibc's ``mallopt`` is not available (nothing changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP_THRESHOLD) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, _STEADY_TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak memory of the tensors one call allocates, above what was live before it.

    ``measure(fn)`` runs ``fn()`` once and returns that peak in bytes, or None when it cannot be
    measured here (then ``reason`` says why).

    CPU: torch's profiler records every allocation and release of the CPU allocator during the
    call (``profile_memory=True``); the largest running sum is the call's peak tensor memory,
    the CPU counterpart of CUDA's ``max_memory_allocated``. It counts tensor storage only (not
    the Python heap, library scratch space or pages the allocator keeps), so it does not depend
    on what the process did before. (The resident set's high-water mark, used before, read the
    same MAF sampling call as 109 MB in a fresh process and up to 2.5x that late in a grid run.)

    CUDA (``device`` of type ``cuda``): ``torch.cuda.reset_peak_memory_stats`` and
    ``max_memory_allocated`` minus the memory allocated before the call.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        try:
            from torch._C._profiler import _EventType  # noqa: F401
        except ImportError as exc:
            self.reason = f"torch profiler allocation events not available ({exc})"

    @property
    def available(self) -> bool:
        """True when CPU peak memory can be measured."""
        return self.reason is None

    def measure(self, fn: Callable[[], object], device: Any = None) -> int | None:
        """Run ``fn()`` once; return the peak memory it added, in bytes (None if unknown)."""
        if device is not None and str(device).startswith("cuda"):
            return self._measure_cuda(fn, device)
        if self.reason is not None:
            return None
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.typed[0] == _EventType.Allocation:
                sizes.append((node.start_time_ns, node.typed[1].alloc_size))  # < 0: released
        sizes.sort()
        live = peak = 0
        for _, size in sizes:
            live += size
            peak = max(peak, live)
        return peak

    @staticmethod
    def _measure_cuda(fn: Callable[[], object], device: Any) -> int:
        import torch

        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0)


def versions(*packages: str) -> str:
    """``"pkg 1.2, other 3.4"`` for the header lines of the benchmark scripts."""
    return ", ".join(f"{package} {version(package)}" for package in packages)


def warn_if_busy(busiest: float | None) -> None:
    """Print a warning when other processes took more than ``BUSY_LIMIT`` cores while timing."""
    if busiest is not None and busiest > BUSY_LIMIT:
        print(
            f"WARNING: other processes used up to {busiest:.2f} CPU cores while timing. "
            "Multi-threaded torch ops stall when a core is taken away, so these timings are "
            "unreliable: rerun on an idle machine (or compare with --threads 1)."
        )
