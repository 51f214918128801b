"""Files the user names for results: what the report folder holds, and OS errors while writing
them as :class:`~scatd_core.errors.ScatdError` (light: no science imports)."""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from scatd_core.errors import ScatdError

def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read 1 MiB at a time (a model's weights, a data or label file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: What :func:`scatd_core.export.write_report` writes into its folder.
REPORT_FILES = ("predictions.csv", "metrics.csv", "biomarkers.csv", "annotated.h5ad", "report.html")


@contextmanager
def writing(path: str | Path):
    """An ``OSError`` inside the block (no space, no permission, a folder in the way) becomes a
    ScatdError naming ``path`` and the operating system's reason."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and Path(str(exc.filename)) != Path(path) else ""
        raise ScatdError(f"Cannot write {path}: {reason}{where}.",
                         "Check the path, the free disk space and the permissions, then run again.") from None


def _part_path(path: Path) -> Path:
    """A temporary name beside ``path`` (same folder, so the final rename stays on one file system)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


@contextmanager
def replacing(path: str | Path):
    """Write ``path`` through a temporary file beside it: the block writes the yielded path, which
    is renamed to ``path`` only once the block has finished. A run that fails or is stopped half
    way leaves no half-written file under the user's name (and an earlier file there as it was);
    the temporary file is removed. An OS error names ``path``, not the temporary file."""
    path = Path(path)
    tmp = _part_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass  # renamed into place (or never written)


def write_file(path: str | Path, content: bytes | str) -> Path:
    """``content`` (text as UTF-8) into ``path`` through :func:`replacing`; the folder is made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)
    return path
