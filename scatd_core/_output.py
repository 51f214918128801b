"""Files the user names for results: what the report folder holds, and OS errors while writing
them as :class:`~scatd_core.errors.ScatdError` (light: no science imports)."""

from __future__ import annotations

import hashlib
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
