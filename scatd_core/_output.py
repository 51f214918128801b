"""Files the user names for results: what the report folder holds, and OS errors while writing
them as :class:`~scatd_core.errors.ScatdError` (light: no science imports)."""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
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
        named = Path(str(exc.filename)) if exc.filename else None
        if named is not None and Path(path) in named.parents:  # a file of the folder ``path``: that file
            path, named = named, None
        where = f" ({named})" if named is not None and named != Path(path) else ""
        raise ScatdError(f"Cannot write {path}: {reason}{where}.",
                         "Check the path, the free disk space and the permissions, then run again.") from None


def _part_path(path: Path) -> Path:
    """A temporary name beside ``path`` (same folder, so the final rename stays on one file system)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


#: The files a command of the ``scatd`` CLI was given to write, ``{absolute path: overwrite}``
#: (:func:`user_outputs`, :func:`claim`); ``None`` outside such a command (the app, the library).
_CLAIMED: ContextVar[dict | None] = ContextVar("scatd_claimed_outputs", default=None)
#: The files a CLI command has put in place so far, in order (:func:`user_outputs`).
_WRITTEN: ContextVar[list | None] = ContextVar("scatd_written_outputs", default=None)


@contextmanager
def user_outputs():
    """The block (one CLI command) records the output files it was given (:func:`claim`): one of
    them claimed without ``overwrite`` is never replaced, not even by a file that appeared while
    the command was computing (another run writing the same name): see :func:`put_in_place`.
    Yields the list of the files put in place so far (what an interrupted command leaves)."""
    written: list[Path] = []
    token, token_written = _CLAIMED.set({}), _WRITTEN.set(written)
    try:
        yield written
    finally:
        _CLAIMED.reset(token)
        _WRITTEN.reset(token_written)


def _record(path: Path) -> None:
    """``path``, an output the user named (:func:`claim`), now holds this run's file."""
    written, claimed = _WRITTEN.get(), _CLAIMED.get()
    if written is not None and claimed and _key(path) in claimed and path not in written:
        written.append(path)


def _key(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def claim(path: str | Path, overwrite: bool) -> None:
    """Within :func:`user_outputs`: ``path`` is an output the user named; without ``overwrite``
    (``--overwrite``) a file there is never replaced. Outside it: nothing."""
    claimed = _CLAIMED.get()
    if claimed is not None:
        claimed[_key(path)] = bool(overwrite)  # the last check of it decides


def keeps_existing(path: str | Path) -> bool:
    """Whether a file at ``path`` must be kept: an output claimed without ``--overwrite``."""
    claimed = _CLAIMED.get()
    return claimed is not None and claimed.get(_key(path)) is False


def _own(path: Path) -> None:
    """``path`` now holds this run's file: the run may replace it (e.g. ``scatd demo --panel`` writes
    its annotated.h5ad again with the panel's columns)."""
    claimed = _CLAIMED.get()
    if claimed is not None and _key(path) in claimed:
        claimed[_key(path)] = True


def _kept_name(path: Path) -> Path:
    """A visible name beside ``path`` for results that were not put under it (``p.csv``: ``p.new-1a2b3c.csv``)."""
    return path.with_name(f"{path.stem}.new-{uuid.uuid4().hex[:6]}{path.suffix}")


def appeared_error(path: Path, kept: Path) -> ScatdError:
    return ScatdError(f"{path} appeared while this run was writing (another run?); nothing was replaced.",
                      f"Your results are in {kept}; rename it, or rerun with --overwrite to replace {path}.")


def _link_exclusive(tmp: Path, path: Path) -> None:
    """``tmp`` under the name ``path`` only if nothing is there (``FileExistsError`` otherwise), atomically."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: reserve the name, then rename over the reservation
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def put_in_place(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path``. For an output claimed without ``--overwrite``
    (:func:`keeps_existing`) a file that appeared there meanwhile is kept as it is: the results
    are renamed to a visible name beside it and the error says where they are."""
    if not keeps_existing(path):
        os.replace(tmp, path)
        _record(path)
        return
    try:
        _link_exclusive(tmp, path)
    except FileExistsError:
        kept = _kept_name(path)
        os.replace(tmp, kept)
        raise appeared_error(path, kept) from None
    _own(path)
    _record(path)


@contextmanager
def replacing(path: str | Path):
    """Write ``path`` through a temporary file beside it: the block writes the yielded path, which
    is renamed to ``path`` only once the block has finished (:func:`put_in_place`). A run that
    fails or is stopped half way leaves no half-written file under the user's name (and an
    earlier file there as it was); the temporary file is removed. An OS error names ``path``, not
    the temporary file."""
    path = Path(path)
    tmp = _part_path(path)
    try:
        yield tmp
        put_in_place(tmp, path)
    except OSError as exc:
        if exc.filename is not None and str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass  # renamed into place (or never written)


@contextmanager
def written_as(tmp: Path, path: str | Path):
    """:func:`writing` for ``path`` while its temporary file ``tmp`` (:func:`replacing_together`) is
    written: an OS error names ``path``, not the temporary file."""
    with writing(path):
        try:
            yield
        except OSError as exc:
            if exc.filename is not None and str(exc.filename) == str(tmp):
                exc.filename = str(path)
            raise


@contextmanager
def replacing_together(paths):
    """Write several files as a set (``scatd predict``'s --output and --h5ad): the block writes the
    yielded temporary files (one beside each path); they are renamed to their paths only once the
    block has written them all. A run that fails or is stopped half way (disk full, Ctrl+C) leaves
    none of them new (the earlier files as they were) and no temporary file. An output claimed
    without ``--overwrite`` (:func:`keeps_existing`) that appeared meanwhile is checked before any
    is renamed: nothing is replaced and this run's files are kept under visible names beside theirs.
    What remains: the renames themselves are one per file, so a reader looking in the instant
    between them sees the first new and the second not yet."""
    paths = [Path(p) for p in paths]
    tmps = [_part_path(p) for p in paths]
    try:
        yield tmps
        appeared = [p for p in paths if keeps_existing(p) and (p.exists() or p.is_symlink())]
        if appeared:
            kept = []
            for tmp, path in zip(tmps, paths):
                if tmp.exists():
                    kept.append(_kept_name(path))
                    os.replace(tmp, kept[-1])
            raise ScatdError(f"{appeared[0]} appeared while this run was writing (another run?); nothing was "
                             "replaced.", f"Your results are in {' and '.join(map(str, kept))}; rename "
                             f"{'it' if len(kept) == 1 else 'them'}, or rerun with --overwrite to replace "
                             f"{appeared[0]}.")
        for tmp, path in zip(tmps, paths):
            if tmp.exists():
                with writing(path):
                    put_in_place(tmp, path)
    except OSError as exc:  # named as the user's file, not the temporary one
        for tmp, path in zip(tmps, paths):
            if exc.filename is not None and str(exc.filename) == str(tmp):
                exc.filename = str(path)
        raise
    finally:
        for tmp in tmps:
            try:
                tmp.unlink()
            except OSError:
                pass  # renamed into place (or never written)


@contextmanager
def staged_folder(folder: str | Path, names: tuple[str, ...] = REPORT_FILES):
    """Write a set of files (``names``, e.g. a report) into ``folder`` as a whole: the block writes
    them into the yielded temporary folder (inside ``folder``, hidden), and they are moved in
    together once the block has finished (:func:`move_in`). A run that fails or is stopped half
    way leaves none of them (an earlier report there as it was) and no temporary folder; a
    ``folder`` this call made is removed again when it stays empty."""
    import shutil
    import tempfile

    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".scatd-writing-", suffix=".part", dir=folder))
    done = False
    try:
        yield stage
        move_in(stage, folder, names)
        done = True
    except OSError as exc:  # named as the file of the folder, not the temporary one
        if exc.filename is not None and stage in Path(str(exc.filename)).parents:
            exc.filename = str(folder / Path(str(exc.filename)).relative_to(stage))
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not done:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


def move_in(stage: Path, folder: Path, names: tuple[str, ...]) -> None:
    """The files of ``names`` written in ``stage`` into ``folder``; one of ``names`` there that
    this run did not write is removed (an earlier run's, e.g. a ranking this run did not make).
    Claimed without ``--overwrite`` (:func:`keeps_existing`): only into a folder holding none of
    ``names``; one that appeared meanwhile (another run) leaves the folder as it was and this
    run's files in a visible folder beside it, said by the error."""
    written = [n for n in names if (stage / n).exists()]
    if not any(keeps_existing(folder / n) for n in names):
        for n in written:
            os.replace(stage / n, folder / n)
            _record(folder / n)
        for n in names:
            old = folder / n
            if n not in written and old.is_file() and not old.is_symlink():
                old.unlink()
        return
    linked: list[Path] = []
    there = [folder / n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    try:
        if there:
            raise FileExistsError
        for n in written:
            there = [folder / n]
            _link_exclusive(stage / n, folder / n)
            linked.append(folder / n)
    except FileExistsError:
        for path in linked:  # this run's files out again: the folder holds the other run's only
            path.unlink()
        kept = _kept_name(folder)
        try:
            os.rename(stage, kept)
        except OSError:  # e.g. the folder is a mount point: its own results stay inside it
            kept = folder / kept.name
            os.rename(stage, kept)
        raise appeared_error(there[0], kept) from None
    for n in written:
        _own(folder / n)
        _record(folder / n)


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
