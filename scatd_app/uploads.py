"""What Streamlit's upload endpoint may keep in memory: only a signed-in session's files, and only so many.

Streamlit stores every file PUT to ``/_stcore/upload_file/<session>/<file>`` in memory for any
live session, before any page has asked for it: the login page's own session would do, so on a
lab network anyone could fill the server's memory without an account, one file after another.
:func:`install` wraps the in-memory store's ``add_file`` once per process so that a file is kept
only for a session :func:`allow`-ed by :mod:`scatd_app.auth` (signed in, or a server without a
login), and only while the session's files stay within :func:`session_budget_bytes` together;
anything else is answered 403 and nothing is stored. A session that logs out is
:func:`disallow`-ed and its files dropped, and so is every other session of the same login name
(:func:`disallow_login`: other tabs, another browser signed in as the same person). ``python -m scatd_app`` installs the guard before the
server listens; ``streamlit run app.py`` in its first page run, dropping whatever was kept before.

The refusal comes before the body is read: Streamlit (1.67, Starlette) parses an upload's whole
body, and reads the file into memory, before ``add_file`` runs, so :func:`install` also wraps
Starlette's route dispatch (``Route.handle``, a class attribute: the server already listening under
``streamlit run`` is covered too) for Streamlit's own upload route: once the headers are in, a
session that may not keep uploads is answered 403 before any of the body is read (the connection
is closed with the body unsent), and a ``Content-Length`` beyond what the session may still hold
is answered 403 after its body is read and thrown away as it comes (nothing kept, so that the
browser shows why); an allowed upload without a length is cut off (403) as soon as it passes
that. Streamlit's own handler then reads and parses an allowed body as before.

Download links (``/media/<id>.csv``, made by ``st.download_button``) are served only while a
session that holds the file is allowed: the same wrapper answers 404 for any other, and
:func:`disallow` (logout, an expired or removed account) deletes the session's files from
Streamlit's media store at once, so a link copied before the logout is dead. A session signed in
with a password is checked against the users file at every upload and download (:func:`is_allowed`):
``scatd users remove NAME``, or ``scatd users add NAME --replace`` with a new password, ends its
uploads and links at once, not at its next page run, and asks Streamlit to run that session's page
again (:func:`rerun_session`), so its login form says why at once: Streamlit's uploader itself shows
a refused upload only as "AxiosError: Request failed with status code 403", whatever the answer says.

Without Streamlit's in-memory store (another Streamlit layout) nothing is wrapped and
:func:`install` returns False; ``tests/test_app_server.py`` and the browser test check that it
wraps the installed Streamlit (1.67 here).
"""

from __future__ import annotations

import os
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


def _session_map(attr: str) -> dict[str, str]:
    """A dict kept on Streamlit's upload manager class under ``attr`` (guarded by :func:`_shared`'s
    lock; kept on the same class, for the same reason), made empty on first use."""
    try:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager as holder
    except ImportError:
        holder = sys.modules[__name__]
    held = getattr(holder, attr, None)
    if held is None:
        held = {}
        setattr(holder, attr, held)
    return held


def _logins() -> dict[str, str]:
    """Session id -> the login name it is signed in as."""
    return _session_map("_scatd_session_logins")


def _stamps() -> dict[str, str]:
    """Session id -> which password its login signed in with (``User.login_stamp``), for the sessions
    signed in with a password."""
    return _session_map("_scatd_session_stamps")


def allow(session_id: str | None, login: str | None = None, stamp: str = "") -> None:
    """Let this Streamlit session keep uploads (it is signed in, as ``login``, or the server needs no
    login). ``stamp``, for a password login (``User.login_stamp``): the session is refused at once,
    without waiting for its next page run, when the users file no longer has that account with that
    password (:func:`is_allowed`)."""
    if session_id:
        allowed, lock = _shared()
        names, stamps = _logins(), _stamps()
        with lock:
            allowed.add(str(session_id))
            if login is not None:
                names[str(session_id)] = str(login)
            if login is not None and stamp:
                stamps[str(session_id)] = str(stamp)
            else:
                stamps.pop(str(session_id), None)


def disallow(session_id: str | None) -> None:
    """This session may no longer keep uploads (logged out), and what it holds is dropped."""
    if session_id:
        _disallow_all([str(session_id)])


def sessions_of(login: str) -> set[str]:
    """The sessions signed in as ``login`` now."""
    allowed, lock = _shared()
    names = _logins()
    with lock:
        return {sid for sid, name in names.items() if name == str(login)}


def disallow_login(login: str) -> set[str]:
    """A logout: every session signed in as ``login`` (its other tabs, another browser of the same
    person) may no longer keep uploads, and their uploads and download links are dropped at once,
    so no link made before the logout is served. A session still signed in that way is allowed again
    at its next run (:func:`scatd_app.auth.resolve`); its links are made again as it draws them.
    Returns the sessions dropped."""
    sessions = sessions_of(login)
    _disallow_all(sorted(sessions))
    return sessions


def _disallow_all(session_ids: list[str]) -> None:
    """Disallow these sessions first, all of them, then drop what each holds: a download file only
    they hold goes, even if one of them drew it for another."""
    allowed, lock = _shared()
    names, stamps = _logins(), _stamps()
    with lock:
        for sid in session_ids:
            allowed.discard(sid)
            names.pop(sid, None)
            stamps.pop(sid, None)
    media = _media_manager()
    if media is not None:
        for sid in session_ids:
            media.clear_session_refs(sid)
    manager = _manager()
    for sid in session_ids:
        if manager is not None:
            manager.remove_session_files(sid)
        drop_media(sid)


def is_allowed(session_id: str) -> bool:
    """Whether this session may keep uploads and be served its download links now. A session signed
    in with a password is checked against the users file each time (read again only when the file
    changed): once its account is removed or its password replaced (``scatd users remove`` /
    ``add --replace``), it is refused at once and what it holds is dropped, without waiting for its
    next page run (which logs it out)."""
    sid = str(session_id)
    allowed, lock = _shared()
    with lock:
        if sid not in allowed:
            return False
        login, stamp = _logins().get(sid), _stamps().get(sid)
    if not login or not stamp:  # no password login (none needed, or OIDC): nothing to check here
        return True
    from scatd_core.users import User, recheck

    try:
        if recheck(User(login, login_stamp=stamp))[0] is not None:
            return True
    except OSError:  # the users file's folder cannot be read: refused, as the login itself would be
        return False
    _disallow_all([sid])
    rerun_session(sid)  # its page says why and shows the login form, not the uploader's bare "403"
    return False


def rerun_session(session_id: str) -> bool:
    """Ask Streamlit to run the page of ``session_id`` again now (whether it was asked). Called when
    that session's password login has just ended (account removed, password replaced) while it
    uploads a file or fetches a download: Streamlit's uploader shows a refused upload only as
    "AxiosError: Request failed with status code 403" (its frontend shows the error's own text, never
    the answer's body), and a refused upload starts no page run. The run asked for here logs the
    session out (:func:`scatd_app.auth.resolve`) and its login form says why. Nothing happens outside a
    Streamlit server, or for a session without a browser tab connected."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return False
        runtime = Runtime.instance()
        app_session = runtime.get_app_session(str(session_id))
        if app_session is None:
            return False
        try:  # AppSession's methods belong on the server's event loop
            loop = runtime._get_async_objs().eventloop
        except Exception:  # another Streamlit layout, or no loop yet: call it here
            loop = None
        import asyncio

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            app_session.request_rerun(None)
        else:
            loop.call_soon_threadsafe(app_session.request_rerun, None)
        return True
    except Exception:  # never let the courtesy break the refusal itself
        import logging

        logging.getLogger("scatd").debug("cannot ask session %s to run its page again", session_id, exc_info=True)
        return False


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
        _install_media_owners()
        _install_route_guard()
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
    _install_media_owners()
    _install_route_guard()
    # Under ``streamlit run app.py`` this runs in the first page run, after the server started
    # listening: a file kept before then cannot be a signed-in user's (none has run a page yet).
    manager = _manager()
    if manager is not None:
        for session_id in list(manager.file_storage):
            if not is_allowed(session_id):
                manager.remove_session_files(session_id)
    return True


# ------------------------------------------------------------------------------------------------
# Before the body: Streamlit's upload route, and its download links (/media)
# ------------------------------------------------------------------------------------------------

#: What a multipart body may add to the file it carries (boundaries, the part's headers and its
#: file name): a Content-Length is compared with what the session may still hold less this.
MULTIPART_MARGIN = 64 << 10
_STREAMLIT_ROUTES = "streamlit.web.server.starlette.starlette_routes"


def _held(session_id: str, file_id: str) -> dict[str, int]:
    """The session's uploads kept now (file id -> bytes), without ``file_id`` (being replaced)."""
    manager = _manager()
    if manager is None:
        return {}
    with manager._lock:
        mine = manager.file_storage.get(session_id, {})
        return {k: len(f.data) for k, f in mine.items() if k != file_id}


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # Streamlit answers 400 for it
    return None


def upload_refusal_before_body(scope) -> tuple[str | None, int]:
    """For a PUT to Streamlit's upload route, from its headers alone: why it is refused (or None),
    and how many body bytes may then arrive before it is (what the session may still hold)."""
    params = scope.get("path_params") or {}
    session_id, file_id = str(params.get("session_id", "")), str(params.get("file_id", ""))
    held = _held(session_id, file_id)
    length = _content_length(scope)
    why = refusal(session_id, max(0, (length or 0) - MULTIPART_MARGIN), held)
    return why, max(0, session_budget_bytes() - sum(held.values())) + MULTIPART_MARGIN


def _bounded(receive, limit: int):
    """``receive`` that refuses (403) a body growing past ``limit`` bytes (one sent without a
    Content-Length, or longer than it said), chunk by chunk, before the whole body is in memory."""
    from starlette.exceptions import HTTPException

    got = 0

    async def bounded_receive():
        nonlocal got
        message = await receive()
        if message.get("type") == "http.request":
            got += len(message.get("body", b""))
            if got > limit:
                raise HTTPException(status_code=403, detail=(
                    "This session's uploads would take more memory than one session may hold; remove an upload "
                    "you no longer need (the x next to it) and try again."))
        return message

    return bounded_receive


async def _drain(receive) -> None:
    """Read a refused upload's body and keep none of it, up to Streamlit's own cap on one upload's
    body: a signed-in user's browser, which sends the whole file before it reads the answer, then
    shows why (over the session's budget) rather than a connection closed under it. A session
    without a user gets no such courtesy: the connection is closed with its body unread."""
    from streamlit import config

    cap, got = (int(config.get_option("server.maxUploadSize")) + 1) << 20, 0
    while got <= cap:
        message = await receive()
        if message.get("type") != "http.request" or not message.get("more_body", False):
            return
        got += len(message.get("body", b""))


def _streamlit_route(route) -> str | None:
    """``"upload"`` or ``"media"`` for Streamlit's own upload and media routes, else None."""
    endpoint = getattr(route, "endpoint", None)
    if getattr(endpoint, "__module__", None) != _STREAMLIT_ROUTES:
        return None
    name = getattr(endpoint, "__qualname__", "")
    if name.endswith("._upload_put"):
        return "upload"
    if name.endswith("._media_endpoint"):
        return "media"
    return None


def _install_route_guard() -> bool:
    """Wrap Starlette's ``Route.handle`` (once per process) so that Streamlit's upload route refuses
    before reading the body and its media route serves only files an allowed session holds."""
    try:
        from starlette.exceptions import HTTPException
        from starlette.routing import Route
    except ImportError:
        return False
    original = Route.handle
    if getattr(original, "_scatd_guard", False):
        return True

    async def handle(self, scope, receive, send):
        kind = _streamlit_route(self)
        method = scope.get("method")
        if kind == "upload" and method == "PUT":
            why, limit = upload_refusal_before_body(scope)
            if why is not None:
                if is_allowed(str((scope.get("path_params") or {}).get("session_id", ""))):
                    await _drain(receive)  # so that the browser reads why (not a reset connection)
                raise HTTPException(status_code=403, detail=why)
            receive = _bounded(receive, limit)
        elif kind == "media" and method in ("GET", "HEAD"):
            if not media_servable(str((scope.get("path_params") or {}).get("file_id", ""))):
                raise HTTPException(status_code=404, detail="File not found")
        await original(self, scope, receive, send)

    handle._scatd_guard = True
    handle.__wrapped__ = original
    Route.handle = handle
    return True


def _media_manager():
    try:
        from streamlit.runtime import Runtime
    except ImportError:
        return None
    if not Runtime.exists():
        return None
    return getattr(Runtime.instance(), "media_file_mgr", None)


def _owners() -> tuple[dict[str, set[str]], threading.Lock]:
    """Session id -> the media file ids it made (download buttons' files), with their lock: one per
    process, kept on Streamlit's media manager class (as :func:`_shared`). Streamlit forgets a
    session's references at the start of each of its runs, before drawing the button again; a
    download clicked meanwhile must still find whose the file is."""
    try:
        from streamlit.runtime.media_file_manager import MediaFileManager as holder
    except ImportError:
        holder = sys.modules[__name__]
    shared = getattr(holder, "_scatd_media_owners", None)
    if shared is None:
        shared = ({}, threading.Lock())
        holder._scatd_media_owners = shared
    return shared


def _file_id(name_or_url: str) -> str:
    """``/media/<id>.csv`` or ``<id>.csv`` -> ``<id>``."""
    return os.path.splitext(str(name_or_url).rsplit("/", 1)[-1])[0]


def _own(session_id: str | None, url: str) -> None:
    if session_id and isinstance(url, str):
        owners, lock = _owners()
        with lock:
            owners.setdefault(str(session_id), set()).add(_file_id(url))


def _holders(file_id: str) -> set[str]:
    """The sessions holding a media file: those that made it, and those Streamlit has it drawn for."""
    owners, lock = _owners()
    with lock:
        holders = {sid for sid, ids in owners.items() if file_id in ids}
    manager = _media_manager()
    refs = getattr(manager, "_files_by_session_and_coord", None)
    if refs is not None:
        with manager._lock:
            holders |= {sid for sid, by_coord in refs.items() if file_id in by_coord.values()}
    return holders


def media_servable(name: str) -> bool:
    """Whether ``/media/<name>`` may be served: a session holding the file is allowed (signed in,
    or every session on a server without a login)."""
    return any(is_allowed(sid) for sid in _holders(_file_id(name)))


def drop_media(session_id: str) -> None:
    """Delete the media files (download links) this session made from Streamlit's store, at once,
    unless another session allowed now holds the same file (the same bytes and name)."""
    owners, lock = _owners()
    with lock:
        mine = owners.pop(session_id, set())
    manager = _media_manager()
    if manager is None:
        return
    manager.clear_session_refs(session_id)
    if not mine:  # the login page's runs: nothing made, nothing to delete
        return
    refs = getattr(manager, "_files_by_session_and_coord", None)
    metadata = getattr(manager, "_file_metadata", None)
    if refs is None or metadata is None or not hasattr(manager, "_delete_file"):
        manager.remove_orphaned_files()  # another Streamlit layout: its own clean-up (links 404 all the same)
        return
    with lock:
        others = {sid: set(ids) for sid, ids in owners.items()}
    kept = {fid for sid, ids in others.items() if is_allowed(sid) for fid in ids}
    with manager._lock:
        kept |= {fid for by_coord in refs.values() for fid in by_coord.values()}
        for fid in mine - kept:
            if fid in metadata:
                manager._delete_file(fid)


def _install_media_owners() -> bool:
    """Record which session made each media file (``MediaFileManager.add`` and a deferred
    download's ``execute_deferred``), and forget a file's owners when Streamlit deletes it."""
    try:
        from streamlit.runtime.media_file_manager import MediaFileManager
        from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    except ImportError:
        return False
    if getattr(MediaFileManager.add, "_scatd_guard", False):
        return True
    add, execute_deferred = MediaFileManager.add, MediaFileManager.execute_deferred
    delete_file = MemoryMediaFileStorage.delete_file

    def add_owned(self, *args, **kwargs):
        url = add(self, *args, **kwargs)
        _own(current_session_id(), url)
        return url

    def execute_deferred_owned(self, file_id):
        with self._lock:
            entry = getattr(self, "_deferred_callables", {}).get(file_id) or {}
        url = execute_deferred(self, file_id)
        _own(entry.get("session_id"), url)
        return url

    def delete_file_unowned(self, file_id):
        delete_file(self, file_id)
        owners, lock = _owners()
        with lock:
            for sid in [sid for sid, ids in owners.items() if file_id in ids]:
                owners[sid].discard(file_id)
                if not owners[sid]:
                    del owners[sid]

    for new, old in ((add_owned, add), (execute_deferred_owned, execute_deferred), (delete_file_unowned, delete_file)):
        new._scatd_guard = True
        new.__wrapped__ = old
    MemoryMediaFileStorage.delete_file = delete_file_unowned
    MediaFileManager.execute_deferred = execute_deferred_owned
    MediaFileManager.add = add_owned
    return True
