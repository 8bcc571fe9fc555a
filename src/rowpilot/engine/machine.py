"""The machine a run is on: CPUs, memory, and this process's resident memory.

On Linux everything comes from ``/proc`` (and the cgroup's memory limit, so a container is
not mistaken for its host): a read and a parse, cheap enough to do every second. Elsewhere
the fallbacks are coarser: ``os.sysconf`` for memory, and ``resource.getrusage`` for the
resident size, which is the *peak* so far rather than the current size (a cap that the
peak has passed then admits one item at a time; see ``_sizing.MemoryGate``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

_MB = 1024.0 * 1024.0
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Machine:
    """What sizing needs to know of the machine; None where it cannot be read."""

    os: str
    cpus: int
    total_mb: float | None
    available_mb: float | None


def read_machine() -> Machine:
    total, available = memory_mb()
    return Machine(os=platform.platform(), cpus=cpu_count(), total_mb=total, available_mb=available)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def memory_mb() -> tuple[float | None, float | None]:
    """(total, available) memory in MB: the tighter of the machine's and the cgroup's."""
    total, available = _meminfo()
    if total is None:
        total, available = _sysconf_memory()
    limit, used = _cgroup_memory()
    if limit is not None:
        total = limit if total is None else min(total, limit)
        if used is not None:
            room = max(0.0, limit - used)
            available = room if available is None else min(available, room)
    return total, available


def rss_mb() -> float:
    """This process's resident memory in MB (on other systems than Linux: its peak)."""
    try:
        fields = Path("/proc/self/statm").read_text(encoding="ascii").split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / _MB
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # Linux and the BSDs report kilobytes, macOS bytes.
    return peak / _MB if sys.platform == "darwin" else peak / 1024.0


def _meminfo() -> tuple[float | None, float | None]:
    try:
        lines = Path("/proc/meminfo").read_text(encoding="ascii").splitlines()
    except OSError:
        return None, None
    values: dict[str, float] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) / 1024.0  # kB
    return values.get("MemTotal"), values.get("MemAvailable")


def _sysconf_memory() -> tuple[float | None, float | None]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page / _MB
    except (ValueError, OSError, AttributeError):
        return None, None
    try:
        available: float | None = os.sysconf("SC_AVPHYS_PAGES") * page / _MB
    except (ValueError, OSError):
        available = None
    return total, available


def _cgroup_memory() -> tuple[float | None, float | None]:
    """cgroup v2's memory.max and memory.current in MB; (None, None) without a limit."""
    try:
        limit_text = (_CGROUP / "memory.max").read_text(encoding="ascii").strip()
    except OSError:
        return None, None
    if not limit_text.isdigit():
        return None, None  # "max": no limit
    try:
        used: float | None = int((_CGROUP / "memory.current").read_text(encoding="ascii")) / _MB
    except (OSError, ValueError):
        used = None
    return int(limit_text) / _MB, used
