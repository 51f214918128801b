"""An exclusive lock between the processes and threads of a server (light: no science imports)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def folder_lock(folder: str | Path, lock_name: str):
    """An exclusive lock on ``folder/lock_name`` (``fcntl``; released when the block ends or the
    process dies). Each call opens the file anew, so threads of one process exclude each other too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / lock_name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
