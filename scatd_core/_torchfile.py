"""What a PyTorch checkpoint unpacks to, checked before ``torch.load`` allocates any of it.

``torch.save`` writes a zip archive whose members (one per tensor storage) are stored
uncompressed, so it unpacks to about its own size. ``torch.load`` also reads archives whose
members were compressed afterwards, allocating each member's declared size: a 200 KB file can
hold a 200 MB tensor. A legacy (pickle) checkpoint holds its tensors as they are.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from scatd_core._memory import size_text
from scatd_core.errors import CheckpointError

#: The most records in a torch.save archive (one per tensor storage, plus a few): real
#: checkpoints have hundreds; zipfile and torch build an object for each before reading any.
MAX_CHECKPOINT_RECORDS = 100_000


def load_safetensors(path) -> dict:
    """The tensors of a safetensors file, held in this process's memory.

    ``safetensors.torch.load_file`` maps the file and hands back tensors that read it: a file
    truncated or rewritten in place while its model is in use (an administrator's ``cp`` over a
    model's weights, a copy still being synced) would then stop the whole server, every user's
    session with it, with SIGBUS. Each tensor is copied out of the mapping at once, and the mapping
    is let go; the same values, bit for bit."""
    from safetensors.torch import load_file

    mapped = load_file(str(path), device="cpu")
    return {key: tensor.clone() for key, tensor in mapped.items()}


def check_checkpoint_size(path: Path, name: str, cap: int) -> None:
    """Refuse ``path`` (a ``torch.save`` zip archive or a legacy pickle; ``name`` in messages)
    when what it unpacks to exceeds ``cap`` bytes: the declared sizes of the archive's members,
    or the legacy file's own size. Raises :class:`~scatd_core.errors.CheckpointError`."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        zipped = fh.read(2) == b"PK"
        end = zipfile._EndRecData(fh) if zipped else None  # the end record: how many members, before parsing them
    limit_hint = ("Ask the administrator to raise limits.max_decompressed_mb in the configuration file, or "
                  "SCATD_MAX_DECOMPRESSED_MB (for a checkpoint uploaded in the app, limits.max_upload_mb or "
                  "SCATD_MAX_UPLOAD_MB), or to place the file in the import folder.")
    if not zipped:
        if size > cap:
            raise CheckpointError(f"{name} is {size_text(size)}, over the limit of {size_text(cap)} for a checkpoint.",
                                  limit_hint)
        return
    if end and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_CHECKPOINT_RECORDS:
        raise CheckpointError(f"{name} holds {end[zipfile._ECD_ENTRIES_TOTAL]:,} records, over the limit of "
                              f"{MAX_CHECKPOINT_RECORDS:,}; a checkpoint holds one per tensor.",
                              "Check that this is the model's .pth file (torch.save of its state_dict).")
    try:
        with zipfile.ZipFile(path) as zf:
            content = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{name} is not a readable PyTorch checkpoint (a damaged zip archive).",
                              "Check that the file is a complete .pth download.") from None
    if content > cap:
        compressed = content > 2 * size
        raise CheckpointError(
            f"{name} unpacks to {size_text(content)}" + (f" (from {size_text(size)} on disk)" if compressed else "")
            + f", over the limit of {size_text(cap)} for a checkpoint.",
            "torch.save stores tensors uncompressed; this archive was compressed afterwards. Save the model again "
            "with torch.save(model.state_dict(), path)." if compressed else limit_hint)


#: The largest safetensors header read to recognise one (real headers are a few kB to a few MB).
MAX_SAFETENSORS_HEADER = 100 << 20


def safetensors_names(path: Path) -> list[str] | None:
    """The tensor names of a safetensors file, from its header alone (8 bytes giving the length of a
    JSON object, then the object), or ``None`` when ``path`` is not one. No tensor is read."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
                return None
            text = fh.read(n)
    except OSError:
        return None
    if not text.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(text)
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    return [str(k) for k in header if k != "__metadata__"]


def safetensors_problem(path: Path, name: str, hint: str) -> CheckpointError | None:
    """A file given as a PyTorch checkpoint that is a safetensors file (e.g. renamed ``.pth``),
    named as one with ``hint`` (how to use it where it came from), else ``None``."""
    names = safetensors_names(path)
    if names is None:
        return None
    return CheckpointError(f"{name} is a safetensors file ({len(names):,} tensors), not a PyTorch checkpoint "
                           "(torch.save archive or pickle), whatever its name says.", hint)


#: How to import a safetensors state dict as an scATD checkpoint, for :func:`safetensors_problem`.
SAFETENSORS_IMPORT_HINT = (
    "Checkpoints are imported from torch.save .pth files. If it is the weights.safetensors of an scATD Studio "
    "model folder, copy the whole folder (with its manifest.json) into the model library instead; otherwise convert "
    "it once in Python: from safetensors.torch import load_file; torch.save(load_file('IN.safetensors'), "
    "'OUT.pth'), and import OUT.pth.")
