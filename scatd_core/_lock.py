"""An exclusive lock between the processes and threads of a server (light: no science imports)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def folder_lock(folder: str | Path, lock_name: str):
    """An exclusive lock on ``folder/lock_name`` (``fcntl``; released when the block ends or the
    process dies). Each call opens the file anew, so threads of one process exclude each other too.

    A lock file another account made (its permissions let this one read it only) is opened for
    reading: ``flock`` needs no write access, so accounts sharing a folder share its lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(folder / lock_name, "a")
    except PermissionError:
        try:
            fh = open(folder / lock_name, "r")
        except FileNotFoundError:  # none yet, and this account may not make it
            raise PermissionError(f"this account may not make the lock file {lock_name}") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
