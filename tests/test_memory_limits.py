"""The memory limit the server reads from its own cgroup (fake /sys/fs/cgroup and /proc/self/cgroup)."""

from __future__ import annotations

from pathlib import Path

from scatd_core._memory import _cgroup_limit

GB = 1 << 30


def _tree(tmp_path: Path, proc: str, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "sys" / "fs" / "cgroup"
    for rel, value in limits.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(value + "\n")
    root.mkdir(parents=True, exist_ok=True)
    cgroup = tmp_path / "proc" / "self" / "cgroup"
    cgroup.parent.mkdir(parents=True)
    cgroup.write_text(proc)
    return root, cgroup


def test_a_systemd_units_memory_max_is_read_from_the_processs_own_cgroup_v2(tmp_path):
    root, proc = _tree(tmp_path, "0::/system.slice/scatd-studio.service\n", {
        "memory.max": "max",  # the top of the tree: no limit (the machine's 128 GB)
        "system.slice/memory.max": "max",
        "system.slice/scatd-studio.service/memory.max": str(24 * GB)})
    assert _cgroup_limit(root, proc) == 24 * GB


def test_the_smallest_limit_of_the_ancestors_wins(tmp_path):
    root, proc = _tree(tmp_path, "0::/lab.slice/scatd.service\n", {
        "lab.slice/memory.max": str(16 * GB), "lab.slice/scatd.service/memory.max": str(24 * GB)})
    assert _cgroup_limit(root, proc) == 16 * GB


def test_cgroup_v1_memory_controller_is_followed(tmp_path):
    root, proc = _tree(tmp_path, "12:pids:/system.slice/x.service\n4:cpuset,memory:/system.slice/x.service\n"
                                 "1:name=systemd:/system.slice/x.service\n", {
        "memory/memory.limit_in_bytes": str(2**63 - 4096),  # v1's "no limit"
        "memory/system.slice/x.service/memory.limit_in_bytes": str(8 * GB)})
    assert _cgroup_limit(root, proc) == 8 * GB


def test_a_containers_own_limit_at_the_top_is_kept(tmp_path):
    # inside a container /proc/self/cgroup may name a path from the host's tree that is not mounted here
    root, proc = _tree(tmp_path, "0::/docker/0123abcd\n", {"memory.max": str(4 * GB)})
    assert _cgroup_limit(root, proc) == 4 * GB
    root, proc = _tree(tmp_path / "none", "0::/\n", {"memory.max": "max"})
    assert _cgroup_limit(root, proc) is None
    assert _cgroup_limit(tmp_path / "missing", tmp_path / "missing" / "cgroup") is None
