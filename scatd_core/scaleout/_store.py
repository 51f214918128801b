"""The parts of a distributed run on disk: one checksummed file per shard, so a run resumes.

A run writes into ``<output>.parts/``: ``run.json`` (what the run is: input file, model,
parameters), ``statistics.npz`` (the dataset statistics of the first pass, when the model needs
them) and ``shard-000012.npz`` per shard, each next to a ``.sha256`` of its bytes. Files are
written to a temporary name and renamed, the checksum last: a shard counts as done only when its
checksum file exists and matches, so a run killed mid-write recomputes that shard. Started again
with the same output, the run skips the shards already done; parts of a different run (another
input, model or parameters) are refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from scatd_core.errors import InputError
from scatd_core.scaleout._files import parts_error

#: The parts' layout; parts of another format (an earlier version's) are not resumed: the run
#: says to delete them. 2: the cells' reasons gained ``missing_values``; embedding parts hold the
#: rows of the cells left out for faulty values.
FORMAT = 2


def remove_opened() -> tuple[int, int]:
    """Delete the parts folders this process opened (each holding its ``run.json``), and a parent
    left empty named ``ray`` (``scatd report``'s); returns (folders, bytes) removed."""
    import shutil

    folders, nbytes = 0, 0
    while OPENED:
        folder = OPENED.pop()
        if not (folder / "run.json").is_file():
            continue
        nbytes += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        folders += 1
        if folder.parent.name == "ray":
            try:
                folder.parent.rmdir()  # only when empty
            except OSError:
                pass
    return folders, nbytes


def parts_dir(output: str | Path) -> Path:
    """Where the parts of the run writing ``output`` are kept."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


#: Every parts folder this process opened (:class:`ShardStore`), for a command that removes them
#: once its outputs are written (``scatd ... --engine ray`` without ``--keep-parts``).
OPENED: list[Path] = []


class ShardStore:
    """The folder of one run's parts (see the module docstring)."""

    def __init__(self, folder: str | Path, fingerprint: dict, related: tuple = ()):
        """``related``: folders of parts made from this run's results (the predictions made from
        embeddings), named with this one when it is refused, since they are stale too."""
        self.folder = Path(folder)
        self.fingerprint = {"format": FORMAT, **fingerprint}
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.folder.resolve() not in OPENED:
            OPENED.append(self.folder.resolve())
        run = self.folder / "run.json"
        if run.exists():
            try:
                previous = json.loads(run.read_text())
            except (OSError, ValueError):
                previous = None
            if previous != json.loads(json.dumps(self.fingerprint)):
                changed = sorted(k for k in set(self.fingerprint) | set(previous or {})
                                 if (previous or {}).get(k) != json.loads(json.dumps(self.fingerprint)).get(k))
                stale = [str(Path(r)) for r in related if Path(r).exists()]
                raise InputError(
                    f"{self.folder} holds the parts of a different run (changed: {', '.join(changed) or 'run.json'}).",
                    (f"Delete that folder and {' and '.join(stale)} (made from its results) to start afresh"
                     if stale else "Delete that folder to start afresh") + ", or write to another --output.")
        else:
            _atomic_write(run, json.dumps(self.fingerprint, indent=1, sort_keys=True).encode())

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.npz"

    def save(self, name: str, data: bytes) -> None:
        """Store a part's bytes (:func:`pack`), then their checksum."""
        try:
            _atomic_write(self._path(name), data)
            _atomic_write(self.folder / f"{name}.sha256", hashlib.sha256(data).hexdigest().encode())
        except OSError as exc:  # the folder removed (the app's working folder), the disk full
            raise parts_error(self.folder, exc) from None

    def done(self, name: str) -> bool:
        """Whether ``name`` was written completely and its bytes match their checksum."""
        path, check = self._path(name), self.folder / f"{name}.sha256"
        if not (path.exists() and check.exists()):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == check.read_text().strip()

    def load(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of a part; :class:`InputError` when it is missing or its checksum fails."""
        path = self._path(name)
        if not self.folder.is_dir():
            raise parts_error(self.folder)
        data = path.read_bytes() if path.exists() else b""
        check = self.folder / f"{name}.sha256"
        if not check.exists() or hashlib.sha256(data).hexdigest() != check.read_text().strip():
            raise InputError(f"{path} is missing or damaged (its checksum does not match).",
                             "Run the same command again: damaged shards are recomputed.")
        return unpack(data)


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """Arrays as ``.npz`` bytes (what workers send back and the store keeps)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"
