"""Files the user names for results: what the report folder holds, and OS errors while writing
them as :class:`~scatd_core.errors.ScatdError` (light: no science imports)."""

from __future__ import annotations

import hashlib
import os
import sys
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
        if _swap_in(stage, folder, names, written):
            for n in written:
                _record(folder / n)
            return
        for n in written:  # the folder holds other files too: the report's moved in one by one
            os.replace(stage / n, folder / n)
            _record(folder / n)
        for n in names:
            old = folder / n
            if n not in written and old.is_file() and not old.is_symlink():
                old.unlink()
        return
    linked: list[Path] = []
    there = [folder / n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not there and _swap_in(stage, folder, names, written):
        for n in written:
            _own(folder / n)
            _record(folder / n)
        return
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


#: The note a run holding a report folder (:func:`holding_folder`) leaves in it while it runs.
RUNNING_NOTE = ".scatd-report.running"


def _ours(name: str) -> bool:
    """An entry of a report folder that scATD Studio made while writing it (a stage, the running note)."""
    return name == RUNNING_NOTE or (name.startswith(".scatd-writing-") and name.endswith(".part"))


def _swap_in(stage: Path, folder: Path, names: tuple[str, ...], written: list[str]) -> bool:
    """Replace ``folder`` as a whole by a folder holding the report files written in ``stage``, when
    it holds nothing but report files (``names``) and scATD Studio's own entries: the stage is moved
    beside it (its permissions made the folder's), the folder renamed away, the new one renamed in
    and the earlier one removed. A reader sees the earlier report or the new one, never a mix;
    only for the instant between the two renames is there no folder at all. ``False`` (nothing
    changed) where that cannot be done: the folder holds other files (the user's, ``ray/``
    parts), is a link or a mount point, or its parent folder cannot be written; the files are then
    moved in one by one. A process killed between the renames leaves both folders beside it under
    hidden names (``.NAME.scatd-new-*``: the new report, ``.NAME.scatd-old-*``: the earlier one)."""
    import shutil
    import stat

    try:
        here = Path.cwd().resolve()
        if folder.is_symlink() or os.path.ismount(folder) or folder.resolve() in (here, *here.parents):
            return False  # never the working folder of this process (or one above it)
        entries = os.listdir(folder)
    except OSError:
        return False
    if any(not (n in names or _ours(n)) for n in entries) or any(
            n not in written and n not in names for n in os.listdir(stage)):
        return False
    tag = uuid.uuid4().hex[:8]
    new, old = (folder.with_name(f".{folder.name}.scatd-{what}-{tag}") for what in ("new", "old"))
    try:
        os.rename(stage, new)
    except OSError:  # the parent folder cannot be written: file by file
        return False
    try:
        os.chmod(new, stat.S_IMODE(folder.stat().st_mode))
        os.rename(folder, old)
    except BaseException:
        os.rename(new, stage)
        if isinstance(sys.exc_info()[1], OSError):
            return False
        raise
    try:
        os.rename(new, folder)
    except BaseException:  # the earlier report back in place, this run's in its stage
        os.rename(old, folder)
        os.rename(new, stage)
        raise
    for name in os.listdir(old):  # the earlier report and scATD Studio's own entries; anything else is kept
        if name in names or _ours(name):
            shutil.rmtree(old / name) if (old / name).is_dir() and not (old / name).is_symlink() else \
                (old / name).unlink()
    try:
        old.rmdir()
    except OSError:  # a file that appeared in the instant of the swap: kept, beside the report
        os.rename(old, folder.with_name(f"{folder.name}.earlier-{tag}"))
    return True


@contextmanager
def holding_folder(folder: str | Path, option: str = "--out", command: str = "scatd report"):
    """The block (one run of ``command``) holds ``folder``, the output folder it writes: a second run
    into the same folder is refused at once (:class:`ScatdError` naming the run that holds it), not
    after its work. An exclusive ``flock`` on the folder itself (released when the block ends or
    the process dies), and a note in it (:data:`RUNNING_NOTE`: process, account, machine, start)
    that names the holder; both gone when the block ends. A folder the block made is removed
    again when it is left empty. On a file system without ``flock`` (some NFS) nothing is held."""
    import fcntl
    import json
    import socket
    import time

    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        while True:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = None
                raise _busy_error(folder, option, command) from None
            except OSError:  # no flock here: nothing held
                break
            try:  # the folder under that name still the one locked (not swapped meanwhile)
                here, held = os.stat(folder), os.fstat(fd)
                if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
                    break
            except FileNotFoundError:
                folder.mkdir(parents=True, exist_ok=True)
            os.close(fd)
            fd = None
        note = {"pid": os.getpid(), "account": _account(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            (folder / RUNNING_NOTE).write_text(json.dumps(note), encoding="utf-8")
        except OSError:
            pass  # the lock holds without it; a refused run then cannot name this one
        yield
    finally:
        if fd is not None:
            try:  # the note, unless the folder was swapped (a new run's note may be there)
                here, held = os.stat(folder), os.fstat(fd)
                if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
                    (folder / RUNNING_NOTE).unlink(missing_ok=True)
            except OSError:
                pass
            os.close(fd)  # releases the lock
        if made:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass


def _account() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def _busy_error(folder: Path, option: str, command: str) -> ScatdError:
    import json

    try:
        note = json.loads((folder / RUNNING_NOTE).read_text(encoding="utf-8"))
        who = (f" (process {note['pid']} of {note['account']} on {note['host']}, started {note['started']})")
        stop = f" (or stop it: `kill {note['pid']}` on {note['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        who, stop = "", ""
    return ScatdError(f"{folder} is being written by another `{command}`{who}; nothing was run.",
                      f"Wait for it to finish{stop}, then run again (with --overwrite to replace its report); "
                      f"or give another {option} folder.")


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
