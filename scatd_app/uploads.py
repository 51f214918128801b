"""What Streamlit's upload endpoint may keep in memory: only a signed-in session's files, and only so many.

Streamlit stores every file PUT to ``/_stcore/upload_file/<session>/<file>`` in memory for any
live session, before any page has asked for it: the login page's own session would do, so on a
lab network anyone could fill the server's memory without an account, one file after another.
:func:`install` wraps the in-memory store's ``add_file`` once per process so that a file is kept
only for a session :func:`allow`-ed by :mod:`scatd_app.auth` (signed in, or a server without a
login), and only while the session's files stay within :func:`session_budget_bytes` together;
anything else is answered 403 and nothing is stored. A session that logs out is
:func:`disallow`-ed and its files dropped. ``python -m scatd_app`` installs the guard before the
server listens; ``streamlit run app.py`` in its first page run, dropping whatever was kept before.

Without Streamlit's in-memory store (another Streamlit layout) nothing is wrapped and
:func:`install` returns False; ``tests/test_app_server.py`` and the browser test check that it
wraps the installed Streamlit (1.67 here).
"""

from __future__ import annotations

import sys
import threading

#: Files a session may hold at once: the pages' uploaders (data, bulk and target for training,
#: labels and the three GDSC files, a checkpoint and its gene list, a BioMart table).
MAX_FILES_PER_SESSION = 10
#: Of which this many may be as large as the upload limit: the data, the bulk and target of the
#: Train page and a checkpoint.
LARGE_FILES_PER_SESSION = 4

def _shared() -> tuple[set[str], threading.Lock]:
    """The sessions allowed to keep uploads, and their lock: one set per process, kept on
    Streamlit's upload store class. Streamlit imports the app's modules again when their files
    change (its file watcher, e.g. after a ``git pull`` under a running server); a set of this
    module's own would then start empty in the new import while the guard installed by the first
    import went on checking the old one, refusing every upload (403) of every user."""
    try:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager as holder
    except ImportError:  # no such store: nothing is wrapped, the set is this module's own
        holder = sys.modules[__name__]
    shared = getattr(holder, "_scatd_allowed_sessions", None)
    if shared is None:
        shared = (set(), threading.Lock())
        holder._scatd_allowed_sessions = shared
    return shared


def allow(session_id: str | None) -> None:
    """Let this Streamlit session keep uploads (it is signed in, or the server needs no login)."""
    if session_id:
        allowed, lock = _shared()
        with lock:
            allowed.add(str(session_id))


def disallow(session_id: str | None) -> None:
    """This session may no longer keep uploads (logged out), and what it holds is dropped."""
    if not session_id:
        return
    allowed, lock = _shared()
    with lock:
        allowed.discard(str(session_id))
    manager = _manager()
    if manager is not None:
        manager.remove_session_files(str(session_id))


def is_allowed(session_id: str) -> bool:
    allowed, lock = _shared()
    with lock:
        return str(session_id) in allowed


def current_session_id() -> str | None:
    """The Streamlit session id of the running script, or None outside a session (tests, CLI)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:
        return None
    ctx = get_script_run_ctx(suppress_warning=True)
    return getattr(ctx, "session_id", None)


def session_budget_bytes() -> int:
    """Bytes one session's uploads may hold together in the server's memory."""
    from streamlit import config

    return LARGE_FILES_PER_SESSION * int(config.get_option("server.maxUploadSize")) * (1 << 20)


def refusal(session_id: str, nbytes: int, held: dict[str, int]) -> str | None:
    """Why a file of ``nbytes`` may not be kept for ``session_id`` (whose files now hold ``held``:
    file id -> bytes, without the file being replaced), or None when it may."""
    if not is_allowed(session_id):
        return "Log in before uploading."
    if len(held) + 1 > MAX_FILES_PER_SESSION:
        return (f"This session already holds {len(held)} uploaded files; remove one from its page (the x next to "
                "it) before adding another.")
    if sum(held.values()) + nbytes > session_budget_bytes():
        return ("This session's uploads would take more memory than one session may hold; remove an upload you "
                "no longer need (the x next to it) and try again.")
    return None


def _manager():
    try:
        from streamlit.runtime import Runtime
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    except ImportError:
        return None
    if not Runtime.exists():
        return None
    manager = Runtime.instance().uploaded_file_mgr
    return manager if isinstance(manager, MemoryUploadedFileManager) else None


def install() -> bool:
    """Wrap Streamlit's in-memory upload store (once per process); whether it is wrapped."""
    try:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
        from starlette.exceptions import HTTPException
    except ImportError:
        return False
    original = MemoryUploadedFileManager.add_file
    if getattr(original, "_scatd_guard", False):
        return True

    def add_file(self, session_id, file):
        with self._lock:
            mine = self.file_storage.get(session_id, {})
            held = {k: len(f.data) for k, f in mine.items() if k != file.file_id}
        why = refusal(session_id, len(file.data), held)
        if why is not None:
            raise HTTPException(status_code=403, detail=why)
        original(self, session_id, file)

    add_file._scatd_guard = True
    add_file.__wrapped__ = original
    MemoryUploadedFileManager.add_file = add_file
    # Under ``streamlit run app.py`` this runs in the first page run, after the server started
    # listening: a file kept before then cannot be a signed-in user's (none has run a page yet).
    manager = _manager()
    if manager is not None:
        for session_id in list(manager.file_storage):
            if not is_allowed(session_id):
                manager.remove_session_files(session_id)
    return True
