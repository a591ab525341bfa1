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

__all__ = ["BUSY_LIMIT", "OtherLoad", "PeakMemory", "version", "versions", "warn_if_busy"]

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


# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# While measuring: blocks from 64 KiB up are mmapped, so freeing them returns them to the OS.
_MEASURE_MMAP_THRESHOLD = 64 * 1024
# While timing: glibc's steady state. Its dynamic mmap threshold climbs, as large blocks are
# freed, to at most 32 MiB (64-bit), and the trim threshold follows at twice that value.
_TIMING_MMAP_THRESHOLD = 32 * 1024 * 1024
_TIMING_TRIM_THRESHOLD = 2 * _TIMING_MMAP_THRESHOLD


class PeakMemory:
    """Peak memory that one call adds on top of what the process holds before it.

    ``measure(fn)`` runs ``fn()`` once and returns the peak extra memory in bytes, or None
    when it cannot be measured here (then ``reason`` says why).

    CPU (Linux with glibc): the peak resident set size (RSS) of the process during the call
    minus the RSS just before it. Before the call, ``gc.collect()`` drops unreachable tensors
    and ``malloc_trim(0)`` hands freed heap memory back to the OS, so the "before" RSS counts
    only live memory; writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's RSS
    high-water mark (``VmHWM``) to the current RSS, and after the call ``VmHWM`` is the
    peak. Around the call glibc's mmap threshold is lowered to 64 KiB, so every tensor buffer
    is its own mapping, unmapped when freed: the RSS then follows the live tensors and the
    high-water mark is their peak, not a peak inflated by heap fragmentation.

    That low threshold makes every allocation an ``mmap`` plus page faults, which slows torch
    code by up to ~1.7x, so it is only in force during ``measure``. The constructor (and
    ``measure`` on return) pins glibc's thresholds to the values its dynamic policy reaches
    after warm-up (mmap 32 MiB, trim 64 MiB), so timed calls run under the same allocator
    policy as an ordinary process, whether or not memory was measured before them. Create
    one instance per process, before timing anything.

    CUDA (``device`` of type ``cuda``): ``torch.cuda.reset_peak_memory_stats`` and
    ``max_memory_allocated`` minus the memory allocated before the call (tensors only, not
    the caching allocator's reserve).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._libc: Any = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError) as exc:
            self.reason = f"glibc mallopt/malloc_trim not available ({type(exc).__name__})"
            return
        try:
            self._reset_high_water_mark()
            self._status()
        except (OSError, KeyError, ValueError) as exc:
            self.reason = f"/proc/self peak-RSS interface not available ({type(exc).__name__})"
            return
        self._libc = libc
        if not self._set_thresholds(measuring=False):
            self._libc = None
            self.reason = "glibc rejected mallopt(M_MMAP_THRESHOLD)"

    @property
    def available(self) -> bool:
        """True when CPU peak memory can be measured."""
        return self.reason is None

    def measure(self, fn: Callable[[], object], device: Any = None) -> int | None:
        """Run ``fn()`` once; return the peak memory it added, in bytes (None if unknown)."""
        if device is not None and str(device).startswith("cuda"):
            return self._measure_cuda(fn, device)
        if self._libc is None:
            return None
        self._set_thresholds(measuring=True)
        try:
            gc.collect()
            self._libc.malloc_trim(0)
            self._reset_high_water_mark()
            before = self._status()["VmRSS"]
            fn()
            peak = self._status()["VmHWM"]
        finally:
            self._set_thresholds(measuring=False)
        return max(peak - before, 0)

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

    def _set_thresholds(self, measuring: bool) -> bool:
        if measuring:
            return self._libc.mallopt(_M_MMAP_THRESHOLD, _MEASURE_MMAP_THRESHOLD) == 1
        ok = self._libc.mallopt(_M_MMAP_THRESHOLD, _TIMING_MMAP_THRESHOLD) == 1
        return self._libc.mallopt(_M_TRIM_THRESHOLD, _TIMING_TRIM_THRESHOLD) == 1 and ok

    @staticmethod
    def _reset_high_water_mark() -> None:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")

    @staticmethod
    def _status() -> dict[str, int]:
        """VmRSS and VmHWM of this process, in bytes."""
        values = {}
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024  # reported in kB
        return {"VmRSS": values["VmRSS"], "VmHWM": values["VmHWM"]}


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
