"""What a probe reports, and the checks every backbone file goes through before it is read.

A probe never loads weights: it looks at file names, sizes, the first bytes (Git LFS pointers),
JSON configs, safetensors headers and, for pickled checkpoints, the restricted
``torch.load(weights_only=True, mmap=True)`` that maps tensors without reading them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from scatd_core._cache import StampedLRU
from scatd_core.errors import CheckpointError

#: A Git LFS pointer is a small text file that starts with this line (a clone without ``git lfs``).
LFS_SIGNATURE = b"version https://git-lfs.github.com/spec/v1"
_LFS_MAX_BYTES = 1024


@dataclass
class Problem:
    """One thing wrong with a backbone's files: a code, what is wrong, and what to do."""

    code: str
    message: str
    hint: str
    #: The sentence at the end of ``message`` that says which files are already there (``""``:
    #: none), left out where those files are listed on their own (the Model page ticks them).
    found: str = ""

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint, "found": self.found}

    def error(self) -> CheckpointError:
        """The problem raised; its ``code`` goes with it, so a probe that catches it keeps it."""
        error = CheckpointError(self.message, self.hint)
        error.code = self.code
        return error


@dataclass
class Probe:
    """The state of one backbone's files (see :func:`scatd_core.foundation.probe`).

    ``available`` is True when every required file is present and consistent; ``problems``
    lists each problem with its message and hint otherwise.
    """

    backbone: str
    name: str
    location: str
    configured_by: str
    available: bool = False
    version: str | None = None
    embedding_dim: int | None = None
    files: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    #: What works but is limited (e.g. an optional file missing): shown, but the backbone is usable.
    warnings: list[str] = field(default_factory=list)
    #: Those of ``warnings`` that concern the embeddings made (a model or gene list other than the
    #: published one): recorded with them, so each prediction made from them repeats the warning.
    embedding_warnings: list[str] = field(default_factory=list)

    def warn(self, message: str, about_embeddings: bool = False) -> None:
        self.warnings.append(message)
        if about_embeddings:
            self.embedding_warnings.append(message)

    def add(self, code: str, message: str, hint: str, found: str = "") -> None:
        """A problem; ``found``, when given, is said at the end of ``message`` (see :attr:`Problem.found`)."""
        self.problems.append(Problem(code, f"{message} {found}" if found else message, hint, found))

    def require(self) -> None:
        """Raise every problem as one :class:`~scatd_core.errors.CheckpointError`: the messages
        one after the other, then the warnings (each "Warning: ..."), so that fixing the errors
        brings no surprise on the next try; and what to do about each error (each hint once)."""
        if self.problems:
            message = " ".join(p.message for p in self.problems) + "".join(f" Warning: {w}" for w in self.warnings)
            hints = list(dict.fromkeys(p.hint for p in self.problems if p.hint))
            raise CheckpointError(f"{self.name}: {message}", " ".join(hints) or None)

    def summary(self) -> str:
        """One line: the version and embedding size, or every problem with what to do."""
        warnings = "".join(f" Warning: {w}" for w in self.warnings)
        if self.available:
            return f"{self.version}; {self.embedding_dim:,}-d cell embeddings ({self.location}){warnings}"
        return " ".join(f"{p.message} What to do: {p.hint}" for p in self.problems) + warnings

    def to_dict(self) -> dict:
        """JSON-safe form (what ``scatd doctor`` and the Model page show); ``ok`` and ``detail``
        repeat ``available`` and :meth:`summary` for one-line listings."""
        return {"backbone": self.backbone, "name": self.name, "available": self.available,
                "version": self.version, "embedding_dim": self.embedding_dim, "location": self.location,
                "configured_by": self.configured_by, "files": {k: str(v) for k, v in self.files.items()},
                "problems": [p.to_dict() for p in self.problems], "details": dict(self.details),
                "warnings": list(self.warnings),
                "ok": self.available, "detail": self.summary()}


def lfs_pointer_size(path: Path) -> int | None:
    """The size announced by a Git LFS pointer file, or ``None`` when ``path`` is not one.

    Returns -1 for a pointer without a readable ``size`` line.
    """
    try:
        if path.stat().st_size > _LFS_MAX_BYTES:
            return None
        head = path.read_bytes()
    except OSError:
        return None
    if not head.startswith(LFS_SIGNATURE):
        return None
    match = re.search(rb"^size (\d+)", head, flags=re.MULTILINE)
    return int(match.group(1)) if match else -1


def lfs_problem(path: Path, size: int) -> Problem:
    real = f" (the real file is {size / 1e6:,.1f} MB)" if size > 0 else ""
    return Problem("lfs_pointer",
                   f"{path.name} is a Git LFS pointer, not the file itself{real}: the folder was cloned without "
                   "Git LFS.",
                   f"In the cloned repository run `git lfs install && git lfs pull`, or download {path.name} "
                   f"directly, and put it at {path}.")


def account() -> str:
    """The account this process reads files as (its effective user), by name where it has one."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # no name for this uid (a container)
        return f"uid {os.geteuid()}"


def unreadable_problem(path: Path, what: str) -> Problem | None:
    """The problem with a file that is there but that this account may not read (its permissions,
    its owner, an ACL), or None: said as such, not as a corrupt file to download again."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        who = account()
        return Problem("unreadable_file",
                       f"{what} {path} exists, but this server's account ({who}) is not allowed to read it.",
                       f"Let that account read it (as the file's owner or root): `chmod a+r {path}`, or give the "
                       f"file to it: `chown {who} {path}`. The file itself need not be replaced.")
    except OSError:  # not there, a folder, ...: said by the checks that look at the file
        return None
    os.close(fd)
    return None


def blocked_folder(path: Path) -> Path:
    """The folder that kept this account from ``path`` (a :class:`PermissionError`'s file): the
    folder above the first one on the way that it may not look into, else ``path`` itself (a
    folder it may enter but not list)."""
    path = Path(path)
    for step in [*reversed(path.parents), path]:
        try:
            os.stat(step)
        except PermissionError:
            return step.parent
        except OSError:
            break
    return path


def unreachable_problem(exc: PermissionError, name: str) -> Problem:
    """A folder of ``name``'s files that this account may not open (a probe stopped by ``exc``)."""
    folder, who = blocked_folder(Path(exc.filename or ".")), account()
    return Problem("unreadable_folder",
                   f"The folder {folder} exists, but this server's account ({who}) is not allowed to open it, so "
                   f"the {name} files in it cannot be checked.",
                   f"Let that account open it and read the files in it (as the folder's owner or root): "
                   f"`chmod -R a+rX {folder}`, or give it to the account: `chown -R {who} {folder}`.")


def check_file(path: Path, what: str, hint: str) -> Problem | None:
    """The problem with a file that must exist and hold data (missing, unreadable by this account,
    empty, LFS pointer), or None."""
    if not path.is_file():
        return Problem("missing_file", f"{what} not found: {path}", hint)
    problem = unreadable_problem(path, what)
    if problem is not None:
        return problem
    size = lfs_pointer_size(path)
    if size is not None:
        return lfs_problem(path, size)
    if path.stat().st_size == 0:
        return Problem("empty_file", f"{what} {path.name} is empty (0 bytes).",
                       "The download or copy was interrupted; fetch the file again.")
    return None


def file_state(path: Path) -> tuple:
    """``(path, size, mtime)``: what a cached probe or model depends on."""
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)


def access_state(path: Path) -> tuple:
    """:func:`file_state` and what decides who may read ``path``: its mode, owner and group, and its
    ctime (which a ``chmod``, ``chown`` or ``setfacl`` moves on): a file or folder that could not be
    read, fixed by one of these, is probed again at the next look."""
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)


class ProbeCache(StampedLRU):
    """The probes made last, per place looked at (``where``: the folder, the settings), each with the
    state of the files it read (``state``): a probe is made again when that state changed, and
    replaces the old one; at most ``size`` places kept (:class:`scatd_core._cache.StampedLRU`)."""


def torch_load_tensors(path: Path, what: str, safetensors_hint: str | None = None):
    """``torch.load(path, weights_only=True)``, memory-mapped when the format allows.

    Never a general unpickler: a file that needs any Python object besides tensors and plain
    containers is refused with :class:`~scatd_core.errors.CheckpointError`, and no code in it runs;
    nor one that unpacks to more than the decompression limit (``SCATD_MAX_DECOMPRESSED_MB``).
    """
    import torch

    from scatd_core._torchfile import check_checkpoint_size, safetensors_problem
    from scatd_core.config import limits

    problem = check_file(path, what, f"Check the path {path}.")
    if problem is not None:
        raise problem.error()
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # a torch.save zip archive, or a legacy pickle
        problem = safetensors_problem(path, path.name, safetensors_hint or f"Give the {what} as a torch.save file.")
        if problem is not None:
            raise problem
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle).",
                              f"Check that {path} is the {what} itself.")
    check_checkpoint_size(path, path.name, limits().max_decompressed_bytes)
    try:
        # mmap maps the tensors instead of reading them: a probe of a GB-sized file stays cheap
        return torch.load(path, map_location="cpu", weights_only=True, mmap=magic == b"PK")
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[: ]+([\w.]+)", text)
            name = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path.name} holds Python objects besides tensors and plain data{name}; scATD Studio never runs "
                "code from a model file.",
                "Re-save it with plain Python types (dicts, lists, numbers, strings and tensors) in the environment "
                "it came from; see README, 'Backbone files'.") from None
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (corrupt or truncated).",
                              f"Download {path.name} again.") from None
