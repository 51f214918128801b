"""The data file a distributed run reads by its path, and what to say when it is gone.

The driver reads the dataset backed, but every Ray worker opens the h5ad anew by its path (and
the driver opens it again for a look at its keys): when the file was moved, deleted or made
unreadable after it was read (in the app: the session's working folder removed), the run stops
with :func:`data_file_error`, which names the file, says what happened and what to do, instead of
an HDF5/OS error or Ray's traceback. What to do is true to the resume check: a run's parts record
the file's path, size and modification time, so only the very same file put back at its path
(``mv``, or ``cp -p``, which keeps the time) keeps the shards already finished. Plain Python (no Ray), used on both sides.
"""

from __future__ import annotations

import os
from pathlib import Path

from scatd_core.errors import InputError

#: ``problem`` of a :func:`data_file_error`: what is wrong with the file.
MISSING, NOT_ALLOWED, UNREADABLE = "missing", "permission", "unreadable"


def data_file_error(path, exc: BaseException | None = None) -> InputError:
    """The error for the data file ``path`` that could not be opened or read (``exc``: why).

    Its ``data_file`` is the path and its ``problem`` one of :data:`MISSING`,
    :data:`NOT_ALLOWED`, :data:`UNREADABLE` (so the app can say it in its own words)."""
    path = str(path)
    resume = "run the same command again: the shards already finished are kept"
    # A run resumes only on the very file it started on: its parts record the file's path, size and
    # modification time (to the nanosecond), so a file copied back without its time, written again or
    # given at another path is another run, and its finished shards cannot be used.
    same = ("The finished shards are kept only for the very same file at the same path: a file changed or written "
            "again, a copy that does not keep the modification time (cp without -p) or the file given at another "
            "path is another run, started from the first shard.")
    if isinstance(exc, FileNotFoundError) or not os.path.exists(path):
        problem = MISSING
        err = InputError(f"The data file {path} is gone: the Ray workers open it by this path, and no file is there "
                         "any more (it was moved, renamed or deleted after it was read).",
                         f"Put the same file back at that path unchanged (move it back with mv, or copy it with cp -p, "
                         f"which keeps its modification time) and {resume}. {same} On a Ray cluster the file must be "
                         "at the same path on every node (e.g. a shared disk).")
    elif isinstance(exc, PermissionError) or not os.access(path, os.R_OK):
        problem = NOT_ALLOWED
        err = InputError(f"The Ray workers may not read the data file {path} (permission denied).",
                         f"Make the file (and its folder) readable for the account the Ray workers run as, and "
                         f"{resume}.")
    else:
        problem = UNREADABLE
        detail = next((line.strip() for line in str(exc or "").splitlines() if line.strip()), "")
        err = InputError(f"The Ray workers could not read the data file {path} as an h5ad"
                         + (f" ({detail[:200]})" if detail else "") + ": it was changed or overwritten after it was "
                         "read, or is damaged.",
                         f"Restore the very same file (mv it back, or cp -p from a copy of it) and {resume}. {same}")
    err.data_file, err.problem = path, problem  # kept when Ray sends the error back (pickled with its __dict__)
    return err


def parts_error(folder, exc: BaseException | None = None) -> InputError:
    """The error for a run's parts folder that cannot be written or read any more (``exc``: why);
    its ``parts_folder`` is the folder and its ``problem`` one of :data:`MISSING`,
    :data:`NOT_ALLOWED`, :data:`UNREADABLE` (another problem, e.g. a full disk)."""
    import errno

    folder = str(folder)
    if not os.path.isdir(folder):
        problem, why = MISSING, "the folder was removed while the run went on"
    elif isinstance(exc, PermissionError):
        problem, why = NOT_ALLOWED, "not allowed to write there"
    else:
        problem = UNREADABLE
        why = "the disk is full" if getattr(exc, "errno", None) == errno.ENOSPC else \
            (getattr(exc, "strerror", None) or str(exc or "unknown error"))
    err = InputError(f"Could not keep the results of this run in {folder}: {why}.",
                     "Check that the folder can be written (and that the disk has room), and run the same command "
                     "again: the shards already finished, if the folder is still there, are kept.")
    err.parts_folder, err.problem = folder, problem
    return err


def open_h5(path, mode: str = "r"):
    """``h5py.File(path)``, a file that cannot be opened raising :func:`data_file_error`."""
    import h5py

    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise data_file_error(path, exc) from None


def stat_data_file(path) -> os.stat_result:
    """``os.stat`` of the data file, raising :func:`data_file_error` when it is gone."""
    try:
        return Path(path).stat()
    except OSError as exc:
        raise data_file_error(path, exc) from None


def is_data_file_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a :func:`data_file_error` or a :func:`parts_error`."""
    return isinstance(exc, InputError) and (hasattr(exc, "data_file") or hasattr(exc, "parts_folder"))


def in_app_words(exc: InputError, task: str, copy: bool) -> InputError:
    """:func:`data_file_error` as the app says it (``task``: "prediction", "gene ranking"): no
    server path; ``copy``: the file is the session's own copy of the data (written again by the
    next run), not the uploaded file itself."""
    what = "the copy of the data it reads" if copy else "the uploaded data file"
    again = ("Run the " + task + " again: the data are copied to the working folder anew. If this message comes "
             "back, load the data again on the Data page." if copy else
             "Load the data again on the Data page, then run the " + task + " again.")
    problem = getattr(exc, "problem", UNREADABLE)
    if hasattr(exc, "parts_folder"):
        where = {MISSING: "this session's working folder on the server was removed while it ran (e.g. when the "
                          "session expired or the server's temporary files were cleaned up)",
                 NOT_ALLOWED: "the server may not write to this session's working folder"}.get(
            problem, "the server could not write to this session's working folder (its disk may be full)")
        err = InputError(f"The {task} on Ray could not keep its results: {where}.",
                         f"Run the {task} again." if problem == MISSING else
                         "Tell the server's administrator; nothing was changed.")
        err.parts_folder, err.problem = exc.parts_folder, problem
        return err
    if problem == MISSING:
        message = (f"The {task} on Ray could not read {what}: this session's working folder on the server no longer "
                   "holds it (the folder was removed, e.g. when the session expired or the server's temporary files "
                   "were cleaned up).")
    elif problem == NOT_ALLOWED:
        message = f"The {task} on Ray could not read {what}: the Ray workers may not read this session's working folder."
        again = "Tell the server's administrator: the Ray workers need read access to the app's working folder."
    else:
        message = f"The {task} on Ray could not read {what}: it was changed or damaged in this session's working folder."
    err = InputError(message, again)
    err.data_file, err.problem = exc.data_file, problem
    return err


__all__ = ["data_file_error", "parts_error", "open_h5", "stat_data_file", "is_data_file_error", "in_app_words", "MISSING",
           "NOT_ALLOWED", "UNREADABLE"]


def matrix_in_file(adata, where: str) -> str | None:
    """Where in the h5ad the workers read the matrix a model reads (:mod:`scatd_core.matrices`, e.g. the
    raw counts :func:`~scatd_core.foundation._embed.counts_source` chose): ``"layers['counts']"`` is
    ``"layers/counts"``, ``"adata.raw"`` is ``"raw/X"``; ``None`` for X. Raises when the file does not hold
    it (a matrix added to the data after they were read)."""
    if where == "X":
        return None
    path = "raw/X" if where == "adata.raw" else "layers/" + where[len("layers['"):-len("']")]
    with open_h5(adata.filename) as f:
        if path in f:
            return path
    raise InputError(f"The matrix {where} is not in the file {Path(adata.filename).name}, from which the Ray "
                     "workers read the cells (it was added after the file was read).",
                     "Save the data with it (adata.write_h5ad) and give that file, or run without the Ray engine.")
