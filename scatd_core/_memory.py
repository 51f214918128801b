"""The memory this process may use and the memory it uses now (Linux ``/proc`` and cgroups).

A lab server reads every user's dataset into its own memory; the server's budget
(``server.memory_mb``, :func:`scatd_core.config.server_memory_bytes`) less what the process holds
now (:func:`rss_bytes`) is what a new dataset may take (the app's Data page; larger h5ad files
are then read from disk, other formats wait until memory is free).
"""

from __future__ import annotations

import os
from pathlib import Path

#: cgroup files giving a container's memory limit (v2, then v1); "max" or a huge number: none.
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _meminfo_bytes(field: str, path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit(paths=_CGROUP_LIMITS) -> int | None:
    for path in paths:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 writes ~2**63 for "no limit"
            return int(raw)
    return None


def machine_bytes() -> int | None:
    """The memory this process can have: the machine's, or its container's (cgroup) limit when
    lower. ``None`` where neither can be read."""
    total = _meminfo_bytes("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    limit = _cgroup_limit()
    known = [v for v in (total, limit) if v]
    return min(known) if known else None


def rss_bytes(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's resident memory now (``VmRSS``), or ``None`` where it cannot be read."""
    return _meminfo_bytes("VmRSS", status)


def size_text(n_bytes: int) -> str:
    """A size for people: "473 kB", "2.5 MB", "4,096 MB"."""
    if n_bytes < 1 << 20:
        return f"{n_bytes / 1024:,.0f} kB"
    if n_bytes < 10 << 20:
        return f"{n_bytes / 2**20:.1f} MB"
    return f"{n_bytes / 2**20:,.0f} MB"
