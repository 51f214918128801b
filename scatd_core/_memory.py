"""The memory this process may use and the memory it uses now (Linux ``/proc`` and cgroups).

A lab server reads every user's dataset into its own memory; the server's budget
(``server.memory_mb``, :func:`scatd_core.config.server_memory_bytes`) less what the process holds
now (:func:`rss_bytes`) is what a new dataset may take (the app's Data page; larger h5ad files
are then read from disk, other formats wait until memory is free). Part of what the process holds
is the server's own: its libraries and compiled kernels, measured once at start-up before any
user's data exist (:func:`note_idle_footprint`), so that messages can tell what the sessions use
from what the idle server needs.
"""

from __future__ import annotations

import os
from pathlib import Path

#: where the cgroup file systems are mounted, and where this process's own cgroups are named
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _meminfo_bytes(field: str, path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) << 10  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_limit(path: Path) -> int | None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() and int(raw) < 1 << 60 else None  # "max" or v1's ~2**63: no limit


def _own_cgroups(proc_cgroup: Path) -> list[tuple[str, str]]:
    """This process's memory cgroups from ``/proc/self/cgroup``: ``("v2", path)`` for the unified
    hierarchy (``0::/path``), ``("v1", path)`` for the v1 memory controller (``N:...memory...:/path``)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found.append(("v2", path))
        elif "memory" in controllers.split(","):
            found.append(("v1", path))
    return found


def _cgroup_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> int | None:
    """The smallest memory limit of this process's cgroup and its ancestors (a systemd unit's
    ``MemoryMax=`` is in ``system.slice/NAME.service/memory.max``, a slice's above it), v2 or v1;
    the top of the tree as well (a container's own, where ``/proc/self/cgroup`` names a path from
    outside it). ``None`` where no limit is set or none can be read."""
    files = {root / "memory.max", root / "memory" / "memory.limit_in_bytes"}
    for kind, path in _own_cgroups(proc_cgroup):
        base, name = (root, "memory.max") if kind == "v2" else (root / "memory", "memory.limit_in_bytes")
        parts = [p for p in path.strip().split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):
            files.add(base.joinpath(*parts[:depth], name))
    limits = [v for v in map(_read_limit, sorted(files)) if v is not None]
    return min(limits) if limits else None


def machine_bytes() -> int | None:
    """The memory this process can have: the machine's, or its cgroup's limit when lower (a
    container's, a systemd unit's ``MemoryMax=``: :func:`_cgroup_limit`). ``None`` where neither can be read."""
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


#: What the server process holds when idle (its libraries and compiled kernels; about 0.6 GB after
#: the imports, 0.8 GB once warmed up, CPU PyTorch on Python 3.11), where it was not measured:
#: ``scatd doctor`` runs in another process than the server.
TYPICAL_IDLE_BYTES = 800 << 20
_IDLE_BYTES: int | None = None


def note_idle_footprint() -> int | None:
    """Measure this process's resident memory now as the server's idle footprint (call it when the
    libraries are loaded and no user's data exist yet: the app's start-up); a later measurement
    (after the warm-up) replaces an earlier one only when larger. Returns the footprint kept."""
    global _IDLE_BYTES
    now = rss_bytes()
    if now is not None:
        _IDLE_BYTES = max(now, _IDLE_BYTES or 0)
    return _IDLE_BYTES


def idle_footprint() -> int | None:
    """The server's idle footprint measured at start-up (:func:`note_idle_footprint`), or ``None``
    where it was not (a script, a test, the command line)."""
    return _IDLE_BYTES
