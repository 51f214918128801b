"""Each browser session's own working folder, its resumable state, and their clean-up.

- **Working folder**: ``<work_dir>/sessions/<session id>/`` holds this session's uploads (read
  from disk when large); nothing else ever reads it, and it is removed when the session has been
  idle longer than ``server.session_ttl_minutes`` (or replaced by new data).
- **Uploads on disk, not in memory**: Streamlit keeps every uploaded file's bytes in the
  server's memory for as long as the page shows the upload. The Data page writes its upload
  to the working folder (:func:`keep_upload`), reads it from there, and once it has been read
  lets go of Streamlit's copy (:func:`release_upload`); the file on disk serves a new reading
  (another orientation, also after a reload) and backed reading.
- **Resume after a reload**: the session's values (its AnnData, choices and results, kept by
  reference, not copied) stay in a process-wide store under an unguessable token that the page
  keeps in its URL (``?s=...``). A reload or a dropped connection opens a new Streamlit session
  with the same URL, which takes the values back: only for the same user when there is a login.
  A server restart, or more idle time than the TTL, ends it, and the page says so. The kept
  sessions are bounded in number (:data:`MAX_KEPT`) and in the bytes their data hold together
  (``server.kept_sessions_mb``): beyond either, the longest idle are let go first.
- **Idle, not open**: a session counts as idle only while no browser tab shows it and it computes
  nothing. The clean-up (:func:`sweep`) asks Streamlit which sessions still have their tab
  connected and resets their clock; a long computation resets it at its progress reports
  (:func:`keep_alive`). So an open tab left alone, or a training longer than the TTL, keeps its
  working folder and its reload copy.
- **Work started ahead ends with the session**: a prediction or UMAP computing in the background
  for a session (:func:`own`) is stopped when the user logs out and when the session expires; so
  is a training or prediction running in the page, at its next progress report (:func:`stop_on_logout`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import secrets
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import streamlit as st

from scatd_app import state
from scatd_core import io
from scatd_core.config import settings, work_dir

SESSION_ID = "session_id"
OWNER = "session_owner"
TOKEN = "session_token"
RESUMED = "session_resumed"        # "resumed" | "logged_out" | "restarted" | "lost": what happened as this browser session began
QUERY_KEY = "s"
#: This server process's id, random at each start (not a secret): each session token begins with it
#: (``INSTANCE.<32 random characters>``), so an address from before a restart is told from one that
#: expired or is another login's (a restart ends every session, whoever's it was).
INSTANCE = secrets.token_hex(4)
#: When this server process started (for "the server was restarted since ...").
STARTED = _dt.datetime.now(_dt.timezone.utc)
#: A token this app makes: this version's (with the process id) or an earlier version's (32 characters alone).
_TOKEN_FORM = re.compile(r"(?:([0-9a-f]{8})\.)?[A-Za-z0-9_-]{32}")
#: At most this many idle sessions are kept for resuming (the oldest go first).
MAX_KEPT = 64
#: At most this many browser tabs are remembered for asking Streamlit whether they are still open.
MAX_TABS = 4096
#: At most this many logged-out sessions are remembered, to tell their owner why the address resumes nothing.
MAX_LOGGED_OUT = 4096
#: Session keys kept for a reload besides the widget values (state.KEPT_WIDGET_PREFIXES).
KEPT_KEYS = (state.ADATA, state.DATA_NAME, state.DATA_TOKEN, state.IS_DEMO, state.LABEL_COLUMN,
             state.SAMPLE_COLUMN, state.BUNDLE_PATH, state.PREDICTION, state.INPUTS, state.EMBEDDING,
             state.BIOMARKERS, state.UMAP_DECLINED, state.AHEAD_DECLINED, state.QC_METRICS, state.PANEL, state.PANEL_MARKERS, "data_upload", state.CELL_METADATA, SESSION_ID,
             state.PREDICT_RUNNING, state.EXPLAIN_RUNNING, state.PANEL_RUNNING, state.EMBED_RUNNING)


@dataclass
class _Record:
    owner: str
    values: dict
    nbytes: int = 0
    touched: float = field(default_factory=time.monotonic)


def held_bytes(value, seen: set | None = None) -> int:
    """Bytes of the data ``value`` holds: AnnData (its matrices, tables and ``uns``), arrays,
    sparse matrices, tables and tensors, in dicts, lists and tuples; each object once, other
    objects (models, settings) not counted. Backed data count nothing (their X is on disk)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    seen = set() if seen is None else seen
    if value is None or id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return 0 if value.base is not None and id(value.base) in seen else int(value.nbytes)
    if sp.issparse(value):
        return sum(held_bytes(getattr(value, name, None), seen) for name in ("data", "indices", "indptr", "row",
                                                                                "col", "offsets"))
    if isinstance(value, (pd.DataFrame, pd.Series, pd.Index)):
        usage = value.memory_usage(index=True, deep=False)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if isinstance(value, ad.AnnData):
        total = 0 if value.isbacked else held_bytes(value.X, seen)
        for mapping in (value.layers, value.obsm, value.varm, value.obsp, value.varp):
            total += sum(held_bytes(v, seen) for v in mapping.values())
        return total + held_bytes(value.obs, seen) + held_bytes(value.var, seen) + held_bytes(value.uns, seen)
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    if isinstance(value, torch.Tensor):
        return int(value.element_size() * value.nelement())
    return 0


class Holders(NamedTuple):
    """Who holds the sessions' memory (:meth:`SessionStore.memory_of`), for a refusal's advice."""
    others: bool        # another login's session may hold data
    here: int           # bytes the asking session's own data hold
    open: int           # bytes the owner's other sessions hold that a browser tab shows (or may: not known)
    closed: int         # bytes the owner's copies kept only for a reload of a tab that was closed hold
    tabs_known: bool    # whether Streamlit said which tabs are open (else every session counts as open)


class SessionStore:
    """Resumable sessions by token, in this process's memory: bounded in number (``MAX_KEPT``),
    idle time (the TTL sweep) and the bytes their data hold together (``budget_bytes``; the
    longest idle are let go first, never the session being kept)."""

    #: Every store of this process (weakly): :func:`cancel_all_work` reaches them without Streamlit.
    _all: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, budget_bytes: int | None = None) -> None:
        SessionStore._all.add(self)
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self.budget_bytes = budget_bytes
        self._browsers: dict[str, str] = {}  # Streamlit's session id (one browser tab) -> our session id
        self._work: dict[str, weakref.WeakSet] = {}  # our session id -> its work started in the background
        self._logged_out: dict[str, str] = {}  # token -> its owner, of the sessions logged out (the latest)
        self._owners: dict[str, str] = {}  # our session id -> its login (the most recently seen last)
        self.most_held = 0  # the most the kept sessions' data held together: more than now = some were freed

    def put(self, token: str, owner: str, values: dict) -> None:
        nbytes = held_bytes(values)
        with self._lock:
            self._records[token] = _Record(owner, values, nbytes)
            while len(self._records) > MAX_KEPT or (
                    self.budget_bytes is not None and len(self._records) > 1
                    and sum(r.nbytes for r in self._records.values()) > self.budget_bytes):
                oldest = min((t for t in self._records if t != token), key=lambda t: self._records[t].touched)
                self._records.pop(oldest)
            self.most_held = max(self.most_held, sum(r.nbytes for r in self._records.values()))

    def freed_some(self) -> bool:
        """Whether the sessions' data ever held more than they hold now (some were let go or replaced)."""
        return self.most_held > self.held() + (1 << 20)

    def held(self) -> int:
        """Bytes the kept sessions' data hold together (as :func:`held_bytes` counts them)."""
        with self._lock:
            return sum(r.nbytes for r in self._records.values())

    def take(self, token: str, owner: str) -> dict | None:
        with self._lock:
            record = self._records.get(token)
            if record is None or record.owner != owner:
                return None
            record.touched = time.monotonic()
            return dict(record.values)

    def sweep(self, ttl_seconds: float) -> list[str]:
        """Forget sessions idle longer than ``ttl_seconds``; returns the session ids forgotten."""
        now = time.monotonic()
        with self._lock:
            gone = [t for t, r in self._records.items() if now - r.touched > ttl_seconds]
            ids = [str(self._records[t].values.get(SESSION_ID)) for t in gone]
            for t in gone:
                del self._records[t]
            self._last_sweep = now
        return ids

    def let_go(self, nbytes: int, keep: str | None = None) -> list[_Record]:
        """Forget the longest-idle kept sessions (never ``keep``) until those forgotten held at
        least ``nbytes`` together; returns those forgotten. Only the copies of sessions no browser
        tab shows free memory: where Streamlit says which tabs are open (:meth:`connected_ids`),
        the copies of open tabs are kept (their pages hold the same data, and a reload of them
        would be lost for nothing); where it cannot say, any copy may go (an open page keeps its
        data; only a reload of it is lost, and says why)."""
        shown = self.connected_ids() or set()
        with self._lock:
            gone, freed = [], 0
            for token in sorted((t for t in self._records if t != keep), key=lambda t: self._records[t].touched):
                if freed >= nbytes:
                    break
                if str(self._records[token].values.get(SESSION_ID)) in shown:
                    continue
                gone.append(self._records.pop(token))
                freed += gone[-1].nbytes
            return gone

    def let_go_closed(self, owner: str, keep: str | None = None) -> int:
        """Forget ``owner``'s copies kept only for a reload of a tab that was closed (never ``keep``;
        none where Streamlit cannot say which tabs are open); the bytes they held."""
        shown = self.connected_ids()
        if shown is None:
            return 0
        with self._lock:
            gone = [t for t, r in self._records.items()
                    if t != keep and r.owner == owner and str(r.values.get(SESSION_ID)) not in shown]
            return sum(self._records.pop(t).nbytes for t in gone)

    def forget(self, token: str, owner: str | None = None) -> None:
        """Drop the kept copy of one session (logged out): a reload of its address starts afresh,
        and tells its ``owner`` (only them: :meth:`logged_out`) why."""
        with self._lock:
            record = self._records.pop(token, None)
            owner = owner or (record.owner if record else None)
            if owner:
                self._logged_out.pop(token, None)
                self._logged_out[token] = owner
                while len(self._logged_out) > MAX_LOGGED_OUT:
                    del self._logged_out[next(iter(self._logged_out))]

    def kept(self, token: str) -> bool:
        """Whether a copy of the session at ``token`` is kept (whoever's it is): a login can only
        resume one of these; any other address's session has ended (or never was)."""
        with self._lock:
            return token in self._records

    def logged_out(self, token: str, owner: str) -> bool:
        """Whether ``owner`` logged out of the session at ``token`` (since this server started).
        Another login learns nothing: for them this is false, as for a token never seen."""
        with self._lock:
            return self._logged_out.get(token) == owner

    def live_ids(self) -> set[str]:
        with self._lock:
            return {str(r.values.get(SESSION_ID)) for r in self._records.values()}

    def touch(self, session_id: str) -> None:
        """Reset the idle clock of the copy kept for ``session_id`` (it is in use)."""
        now = time.monotonic()
        with self._lock:
            for record in self._records.values():
                if str(record.values.get(SESSION_ID)) == session_id:
                    record.touched = now

    def attach(self, browser_id: str, session_id: str, owner: str | None = None) -> None:
        """Streamlit's session ``browser_id`` (a browser tab) shows our session ``session_id`` (of ``owner``)."""
        with self._lock:
            self._browsers.pop(browser_id, None)  # the most recently seen last
            self._browsers[browser_id] = session_id
            if owner is not None:
                self._owners.pop(session_id, None)
                self._owners[session_id] = owner
                while len(self._owners) > MAX_TABS:
                    del self._owners[next(iter(self._owners))]
            while len(self._browsers) > MAX_TABS:  # where Streamlit cannot say which tabs closed
                del self._browsers[next(iter(self._browsers))]

    def connected_ids(self) -> set[str] | None:
        """Our session ids that a browser tab still shows (Streamlit has it connected), forgetting
        the tabs Streamlit no longer has; ``None`` where this Streamlit cannot say."""
        with self._lock:
            browsers = dict(self._browsers)
        connected = _connected(browsers)
        if connected is None:
            return None
        with self._lock:
            for browser in set(browsers) - connected:
                if self._browsers.get(browser) == browsers[browser]:
                    del self._browsers[browser]  # a tab that comes back attaches again on its next run
        return {browsers[b] for b in connected}

    def memory_of(self, owner: str, token: str | None) -> Holders:
        """Who holds the sessions' memory, for a refusal's advice (:class:`Holders`): whether another
        login's session may hold data (its kept copy holds some, or a browser tab shows a session of
        another login, or of a login not known, whose copy holds some or is not kept), the bytes
        ``owner``'s session at ``token`` holds, and those ``owner``'s other sessions hold, told apart:
        shown in a browser tab (a tab to log out of), or kept only for a reload of a tab that was
        closed (no tab to log out of). Where Streamlit cannot say which tabs are open, all count as open."""
        connected = self.connected_ids()
        with self._lock:
            records = dict(self._records)
            owners = dict(self._owners)
        others = any(r.owner != owner and r.nbytes > 0 for r in records.values())
        here = records[token].nbytes if token in records else 0
        mine = [r for t, r in records.items() if r.owner == owner and t != token]
        closed = 0 if connected is None else sum(r.nbytes for r in mine
                                                 if str(r.values.get(SESSION_ID)) not in connected)
        if not others:
            by_id = {str(r.values.get(SESSION_ID)): r for r in records.values()}
            for sid in connected or ():
                if owners.get(sid) != owner and (sid not in by_id or by_id[sid].nbytes > 0):
                    others = True
                    break
        return Holders(others, here, sum(r.nbytes for r in mine) - closed, closed, connected is not None)

    def own(self, session_id: str, work) -> None:
        """``work`` (with a ``cancel()``: a computation started in the background) belongs to
        ``session_id``: :meth:`cancel_work` stops it. Held weakly: nothing is kept alive here."""
        with self._lock:
            for sid in [sid for sid, items in self._work.items() if not items]:
                del self._work[sid]  # their work is over and gone
            self._work.setdefault(session_id, weakref.WeakSet()).add(work)

    def cancel_work(self, session_id: str) -> int:
        """Stop the background work of ``session_id``; how many were stopped."""
        with self._lock:
            work = list(self._work.pop(session_id, ()))
        for item in work:
            item.cancel()
        return len(work)

    def cancel_all_work(self) -> int:
        """Stop the background work of every session (the server is stopping); how many were stopped."""
        with self._lock:
            work = [item for items in self._work.values() for item in items]
            self._work.clear()
        for item in work:
            item.cancel()
        return len(work)


def _connected(browsers) -> set[str] | None:
    """Which of Streamlit's session ids in ``browsers`` Streamlit still has connected to a
    browser tab (its public ``Runtime.is_active_session``), or ``None`` where it cannot say: no
    Streamlit server in this process (a test, a script), or a Streamlit without that call."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return None
        is_active = Runtime.instance().is_active_session
        connected = set()
        for browser in browsers:
            answer = is_active(browser)
            if not isinstance(answer, bool):  # not Streamlit's own runtime (a test's stand-in)
                return None
            if answer:
                connected.add(browser)
        return connected
    except Exception:  # another Streamlit layout: the idle clocks alone decide, as they did before
        logging.getLogger("scatd").debug("cannot ask Streamlit which sessions are connected", exc_info=True)
        return None


@st.cache_resource(show_spinner=False)
def store() -> SessionStore:
    return SessionStore(settings()["kept_sessions_mb"] << 20)


def free_memory() -> int | None:
    """Bytes the server's memory budget (``server.memory_mb``) leaves free now (less than 0: over
    it), or ``None`` where the machine or this process cannot be measured."""
    from scatd_core._memory import rss_bytes
    from scatd_core.config import server_memory_bytes

    budget, used = server_memory_bytes(), rss_bytes()
    return None if budget is None or used is None else budget - used


def memory_use(free: int, budget: int) -> str:
    """Where the server's memory ``budget`` (``server.memory_mb``) went, when ``free`` bytes of it are
    left: what the server holds for itself when idle (measured at start-up: its libraries, never a
    session's), what the users' data hold (:meth:`SessionStore.held`: open tabs' and those kept for a
    reload) and what the process holds besides (computations running, memory freed but not given back
    to the system: never counted as a session's), so that a budget too small for the server itself is
    said to be that, not blamed on other users. For messages, in parentheses after the amount free."""
    from scatd_core._memory import idle_footprint, size_text

    idle = idle_footprint()
    if idle is None:  # not measured (no app start-up in this process): the whole process counts
        return (f"of its {size_text(budget)}, server.memory_mb; the server itself, the sessions' data and "
                "computations use the rest")
    if budget <= idle:
        return (f"whatever the other users do: server.memory_mb, {size_text(budget)}, is less than the server "
                f"itself holds when idle, {size_text(idle)} (its libraries, measured at start-up); ask the "
                "administrator to raise it (`scatd doctor` says to what)")
    from scatd_app import jobs

    above_idle = max(0, budget - max(free, 0) - idle)
    data = min(store().held(), above_idle)  # what the sessions' data hold (open tabs' and those kept for a reload)
    said = (f"server.memory_mb is {size_text(budget)}; the server itself holds {size_text(idle)} of it when idle "
            f"(its libraries, measured at start-up), which leaves {size_text(budget - idle)} for the users' data, "
            f"and the users' data (in open tabs, and kept for a reload of closed ones; yours included) hold "
            f"{size_text(data)}")
    rest = above_idle - data
    if rest < 1 << 20:
        return said
    line = jobs.queue()
    freed = store().freed_some() or line.ended > 0
    mine = own_background()
    if line.running or line.waiting:
        if mine and line.running <= 1 and not line.waiting:  # the only computation is this session's own
            why = f"used by your {mine} running in the background (the app started it by itself on your data)"
        else:
            why = "used by the computations running now" + (f" (your {mine} in the background among them)"
                                                             if mine else "")
        why += ", or freed earlier and not given back to the system yet" if freed else ""
    elif freed:
        why = "memory freed earlier (data let go, computations ended) that it has not given back to the system yet"
    else:  # nothing was loaded or computed yet: not memory freed
        why = "libraries it loaded since start-up, and files being uploaded or read"
    return f"{said}; the server program holds {size_text(rest)} more that no user's data use: {why}"


def own_background() -> str | None:
    """What of this session's own work the app started by itself runs in the background now (the
    prediction computed ahead, :func:`scatd_app.ui.start_prediction_ahead`, or its UMAP), as words;
    ``None`` when none runs."""
    ahead = st.session_state.get(state.PREDICT_AHEAD)
    if ahead is None:
        return None
    future = getattr(ahead, "future", None)
    if future is not None and future.running():
        return "prediction"
    umap = getattr(ahead, "embedding", None)
    if umap is not None and umap.future is not None and umap.future.running():
        return "prediction's UMAP"
    return None


def _shortage_reason(free: int, budget: int) -> str:
    """Why a new dataset may take only ``free`` bytes now (:func:`memory_use`)."""
    from scatd_core._memory import size_text

    if free <= 0:
        return f"the memory this server has free for a new dataset now: none ({memory_use(free, budget)})"
    return f"the {size_text(free)} this server has free for a new dataset now ({memory_use(free, budget)})"


def room_for_a_dataset(keep_token: str | None = None) -> dict:
    """What a new dataset of this session may take in memory now, as keyword arguments of
    :func:`scatd_core.io.read`: nothing when the per-dataset limit (``limits.max_dataset_mb``)
    fits in what the server's memory budget (``server.memory_mb``) leaves free; else the bytes
    left and why (:func:`_shortage_reason`: the server's own idle footprint apart from what the
    sessions use). When short, the longest-idle kept sessions of the server are let go first
    (their reload copies; never ``keep_token``'s, nor where Streamlit says which tabs are open,
    those of open tabs: :meth:`SessionStore.let_go`), and so are all of this user's copies kept
    for a reload of a tab they closed; freed heap memory is given back to the system, then the
    process is measured again."""
    import gc

    from scatd_app import jobs
    from scatd_core.config import limits, server_memory_bytes

    free, limit = free_memory(), limits().max_dataset_bytes
    if free is None or free >= limit:
        return {}
    owner = st.session_state.get(OWNER)
    before = store().memory_of(owner, keep_token) if owner is not None else None
    released = bool(store().let_go(limit - free, keep=keep_token))
    if owner is not None and store().let_go_closed(owner, keep=keep_token):
        released = True
    if released:
        gc.collect()
    jobs.release_free_memory()
    free = free_memory()
    if free is None or free >= limit:
        return {}
    budget = server_memory_bytes()
    room = {"max_dataset_bytes": max(1, free), "limit_reason": _shortage_reason(free, budget)}
    advice = None
    if before is not None:
        after = store().memory_of(owner, keep_token)
        # where Streamlit cannot say which tabs are open, another login's open page still holds what its
        # let-go copy held: whether others hold memory is asked before the copies went
        others = after.others if after.tabs_known else before.others
        advice = own_memory_advice(keep_token, holders=before._replace(others=others), released=before.closed)
    if not _waiting_helps(budget):  # a setting problem: no one's analysis finishing will make room
        room["limit_advice"] = ("try again once the administrator has raised server.memory_mb (waiting for other "
                                "analyses to finish will not make room)")
    elif advice:
        room["limit_advice"] = advice
    return room


def waiting_advice() -> str:
    """The end of a refusal for memory, as a sentence: wait for the other analyses, or, when no other
    login holds memory (:func:`own_memory_advice`), what this user can do. For a computation on this
    tab's data (the Biomarkers page): logging out here would remove those data, so it is not offered.
    This user's copies kept for a reload of a tab they closed are let go first (they make room)."""
    import gc

    from scatd_app import jobs
    from scatd_core._memory import size_text

    ss = st.session_state
    released = store().let_go_closed(ss[OWNER], keep=ss.get(TOKEN)) if ss.get(OWNER) is not None else 0
    if released:
        gc.collect()
        jobs.release_free_memory()
        return (f"The data kept for a reload of a tab of yours that was closed ({size_text(released)}) were let go "
                "to make room (that tab can no longer be restored by a reload): try again.")
    own = own_memory_advice(here=False)
    if own is None:
        return "Try again when other analyses on this server have finished."
    return own[0].upper() + own[1:] + "."


def own_memory_advice(keep_token: str | None = None, *, here: bool = True, holders: Holders | None = None,
                      released: int = 0) -> str | None:
    """What this session's user can do about a refusal for memory when no other login's session holds
    any (``holders``, :meth:`SessionStore.memory_of`, asked now when not given) and no computation
    runs or waits: waiting for "other analyses" would then never make room, so it says what frees the
    user's own memory: logging out in their other open tabs, and (``here``) in this one; the data
    kept for a reload of a tab they closed are no tab to log out of: ``released``, the bytes of them
    let go to make room, is said as that; and that the administrator can raise ``server.memory_mb``.
    ``None`` when others may hold memory (waiting helps)."""
    from scatd_app import jobs
    from scatd_core._memory import size_text

    ss = st.session_state
    owner = ss.get(OWNER)
    if owner is None:
        return None
    token = keep_token if keep_token is not None else ss.get(TOKEN)
    holders = holders if holders is not None else store().memory_of(owner, token)
    line = jobs.queue()
    mine = own_background()
    if mine and not holders.others and line.running <= 1 and not line.waiting:  # the only computation is its own
        return (f"your {mine} is running in the background (the app started it by itself on your data) and holds "
                "memory: wait for it to finish (the Predict page shows how far it is) or stop it (Run prediction "
                "there, then Cancel), then try again")
    if holders.others or line.running or line.waiting:
        return None
    ways = []
    if holders.open:
        ways.append(f"log out in your other scATD Studio tabs (that removes their data, {size_text(holders.open)})")
    if here and holders.here:  # a new upload: this tab's earlier data can go
        ways.append(f"log out here and back in, which removes this tab's earlier data and results "
                    f"({size_text(holders.here)}) and this kept file too, then upload the file again")
    ways.append("ask the administrator to raise server.memory_mb")
    done = ""
    if released:
        done = (f"the data kept for a reload of a tab of yours that was closed ({size_text(released)}) were let go "
                "to make room (that tab can no longer be restored by a reload), and that was not enough; ")
    return ("no other user's analysis holds memory on this server now, so waiting will not make room: " + done
            + ", or ".join(ways))


def _waiting_helps(budget: int) -> bool:
    """Whether a dataset refused for memory could fit once the other sessions are gone: not when the
    budget (``server.memory_mb``) leaves no room above the server's idle footprint (measured at start-up)."""
    from scatd_core._memory import idle_footprint

    idle = idle_footprint()
    return idle is None or budget > idle


def _kept(ss) -> dict:
    return {k: ss[k] for k in list(ss.keys())
            if k in KEPT_KEYS or str(k).startswith(state.KEPT_WIDGET_PREFIXES)}


def begin(owner: str) -> None:
    """Start (or resume) this browser session; call once per run, before the page."""
    ss = st.session_state
    if SESSION_ID not in ss:
        token = st.query_params.get(QUERY_KEY)
        values = store().take(token, owner) if token else None
        if values:
            for key, value in values.items():
                ss[key] = value
            ss[RESUMED] = "resumed"
        else:
            if token:
                ss[RESUMED] = ("logged_out" if store().logged_out(token, owner) else
                               "restarted" if made_before_restart(token) else "lost")
            token = f"{INSTANCE}.{secrets.token_urlsafe(24)}"
            ss[SESSION_ID] = uuid.uuid4().hex
        ss[TOKEN] = token
    ss[OWNER] = owner
    browser = _browser_id()
    if browser:
        store().attach(browser, str(ss[SESSION_ID]), owner)
    mine = work_dir() / "sessions" / str(ss[SESSION_ID])
    if mine.is_dir():
        mine.touch()  # in use: the sweep keeps it
    if st.query_params.get(QUERY_KEY) != ss[TOKEN]:
        st.query_params[QUERY_KEY] = ss[TOKEN]
    sweep()


def _browser_id() -> str | None:
    """Streamlit's id of this run's session (one browser tab), or ``None`` outside a session."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # another Streamlit layout
        return None
    session_id = getattr(get_script_run_ctx(), "session_id", None)
    return session_id if isinstance(session_id, str) and session_id else None


def save(owner: str) -> None:
    """Keep this session's values for a reload (by reference: nothing is copied)."""
    ss = st.session_state
    if TOKEN in ss:
        store().put(ss[TOKEN], owner, _kept(ss))


def save_now() -> None:
    """Keep this session's values for a reload now, in the middle of a run (e.g. as a long
    computation starts: a reload while it runs resumes with its settings and says it stopped)."""
    ss = st.session_state
    if OWNER in ss:
        save(ss[OWNER])


def made_before_restart(token: str) -> bool:
    """Whether ``token`` was made by an earlier run of this server: one of this app's tokens with
    another process's id, or an earlier version's (without one: made before an upgrade's restart).
    That tells nothing of anyone's session: a restart ends them all. A made-up address is not one."""
    form = _TOKEN_FORM.fullmatch(token)
    return form is not None and form.group(1) != INSTANCE


def lost_text(what: str, ttl_minutes: int) -> str:
    """Why the session at this address was not resumed: after this user's own logout, said so; an
    address from before a server restart, said so (every session ended with it, whoever's it was);
    otherwise every reason in one sentence, another login's address among them, so that nobody
    learns from it whether another user's session exists."""
    if what == "logged_out":
        return ("That session was logged out: its data were removed, so it cannot be restored. "
                "Upload your data again.")
    if what == "restarted":
        now = _dt.datetime.now(_dt.timezone.utc)
        when = STARTED.strftime("%H:%M UTC" if STARTED.date() == now.date() else "%Y-%m-%d %H:%M UTC")
        return (f"The session at this address could not be restored: the server was restarted since (at {when}), "
                "and a restart ends every session. Upload your data again.")
    minutes = f"{ttl_minutes} minute{'' if ttl_minutes == 1 else 's'}"
    return (f"The session at this address could not be restored: the server was restarted, it was idle for more "
            f"than {minutes}, the server needed the memory its data held for more recent sessions, it was logged "
            "out, or it belongs to another login (a session opens only with the login that started it). "
            "Upload your data again.")


def ended_text(token: str, ttl_minutes: int) -> str | None:
    """What the login form of an address naming a session (``?s=``) says when the server already
    knows that no login can resume it, else ``None`` (a copy is kept: it is resumed for its own
    user). Nothing about whose session it was or its data: a made-up address and one whose session
    was logged out, idle too long or let go get the same sentence; an address from before a restart
    says so (a restart ends every session, whoever's)."""
    sweep()  # a session idle past the limit is let go now, not resumed by the login
    if store().kept(token):
        return None
    if made_before_restart(token):
        now = _dt.datetime.now(_dt.timezone.utc)
        when = STARTED.strftime("%H:%M UTC" if STARTED.date() == now.date() else "%Y-%m-%d %H:%M UTC")
        return (f"The session at this address has ended: the server was restarted since (at {when}), and a restart "
                "ends every session. Its data are not kept on the server. Log in to start a new session, then "
                "upload your data again.")
    minutes = f"{ttl_minutes} minute{'' if ttl_minutes == 1 else 's'}"
    return (f"The session at this address has ended (it was logged out, idle for more than {minutes}, or the "
            "server was restarted or needed its memory for more recent sessions). Its data are not kept on the "
            "server. Log in to start a new session, then upload your data again.")


def notice() -> None:
    """Tell the user, once, that their session was resumed or could not be."""
    what = st.session_state.pop(RESUMED, None)
    ttl = settings()["session_ttl_minutes"]
    if what == "resumed":
        st.toast("Your session was resumed where you left it.", icon=":material/history:")
    elif what in ("lost", "logged_out", "restarted"):
        st.warning(lost_text(what, ttl), icon=":material/history_toggle_off:")


def forget() -> None:
    """Forget this session: its work started in the background (stopped), its copy kept for a
    reload and its working folder (uploads, files written for a computation). The values in
    ``st.session_state`` are the caller's to clear."""
    ss = st.session_state
    if ss.get(SESSION_ID):
        store().cancel_work(str(ss[SESSION_ID]))
    if ss.get(TOKEN):
        store().forget(ss[TOKEN], ss.get(OWNER))
    if ss.get(SESSION_ID):
        shutil.rmtree(work_dir() / "sessions" / str(ss[SESSION_ID]), ignore_errors=True)


def cancel_all_work() -> int:
    """Stop every session's work started in the background (the server is stopping): each stops at
    its next batch or layout epochs instead of holding the process's exit until it ends (Python
    joins the worker threads before it exits). Needs no Streamlit runtime; how many were stopped."""
    return sum(s.cancel_all_work() for s in list(SessionStore._all))


def own(work) -> None:
    """``work`` (a computation started in the background for this session, with a ``cancel()``)
    is stopped when the user logs out or the session expires."""
    session_id = st.session_state.get(SESSION_ID)
    if session_id:
        store().own(str(session_id), work)


#: What a computation stopped by a logout or a session expiry says (in a tab of the session still open).
LOGGED_OUT_STOP = ("Stopped: this session was logged out (or closed after being idle), so its computation was "
                   "ended and nothing was saved.")


class LogoutStop:
    """A computation running in a page's own run, stopped with the session: :func:`stop_on_logout`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def stop_on_logout() -> LogoutStop:
    """A flag (call it) that turns true when this session is logged out (in any of its tabs) or
    expires: a training or prediction run in the page polls it (its ``should_stop``, its progress
    reports) and stops. Session state cannot say it: a logout clears it, and another tab's logout
    or the clean-up never sees this tab's. Held weakly by the session, as :func:`own` holds work."""
    flag = LogoutStop()
    own(flag)
    return flag


def keep_alive(every_seconds: float = 10.0):
    """A function for a long computation's progress reports (taken in the page's run; callable
    from any thread): a call resets this session's idle clock, its reload copy's and its working
    folder's (at most once in ``every_seconds`` per session), so a training longer than
    ``server.session_ttl_minutes`` keeps its files even with its tab closed meanwhile."""
    session_id = st.session_state.get(SESSION_ID)
    if not session_id:
        return lambda: None
    session_id = str(session_id)
    kept, where = store(), work_dir() / "sessions" / session_id

    def touch() -> None:
        now = time.monotonic()
        if now - _LAST_KEPT_ALIVE.get(session_id, float("-inf")) < every_seconds:
            return
        _LAST_KEPT_ALIVE[session_id] = now
        kept.touch(session_id)
        try:
            os.utime(where)
        except OSError:  # no folder (yet): nothing on disk to keep
            pass

    return touch


#: When :func:`keep_alive` last reset each session's clock (``time.monotonic()``).
_LAST_KEPT_ALIVE: dict[str, float] = {}


def folder() -> Path:
    """This session's working folder (created on demand, touched on every use), and the folder of
    all of them: this account's only (0700), whatever the umask, so another account on the server
    sees neither the sessions nor their uploads."""
    root = work_dir() / "sessions"
    if not root.is_dir() or root.stat().st_mode & 0o077:
        io.private_folder(root)
    path = io.private_folder(root / st.session_state[SESSION_ID])
    path.touch()
    return path


def sweep(every_seconds: float = 60.0) -> None:
    """Forget idle sessions, stop their background work and delete working folders no live
    session owns (at most once a minute). A session a browser tab still shows is not idle."""
    s = store()
    if time.monotonic() - s._last_sweep < every_seconds:
        return
    ttl = settings()["session_ttl_minutes"] * 60
    root = work_dir() / "sessions"
    connected = s.connected_ids() or set()
    for session_id in connected:  # open in a tab: in use now, however long since its last page run
        s.touch(session_id)
        try:
            os.utime(root / session_id)
        except OSError:
            pass
    expired = s.sweep(ttl)
    live = s.live_ids() | connected | {str(st.session_state.get(SESSION_ID))}
    for session_id in set(expired) - live:
        s.cancel_work(session_id)  # e.g. a prediction ahead for a tab closed long ago
        _LAST_KEPT_ALIVE.pop(session_id, None)
    if expired:  # their data are garbage now: collected and the freed memory given back to the system
        import gc

        from scatd_app import jobs

        gc.collect()
        jobs.release_free_memory()
    if not root.is_dir():
        return
    now = time.time()
    for path in root.iterdir():
        try:
            idle = now - path.stat().st_mtime > ttl
        except OSError:  # removed meanwhile
            continue
        if path.name not in live and idle:
            shutil.rmtree(path, ignore_errors=True)


def keep_upload(uploaded) -> dict:
    """This upload (a Streamlit ``UploadedFile``) written to the session's working folder, once
    per upload: ``{"id", "name", "path"}``, also kept as ``state.UPLOAD``. Raises ``InputError``
    (too large, unsupported type, disk full), keeping nothing."""
    ss = st.session_state
    kept = ss.get(state.UPLOAD)
    if kept and kept["id"] == uploaded.file_id and Path(kept["path"]).is_file():
        return kept
    path = io.store_upload(uploaded.getbuffer(), uploaded.name, folder())
    ss[state.UPLOAD] = {"id": uploaded.file_id, "name": uploaded.name, "path": str(path)}
    return ss[state.UPLOAD]


def drop_upload(upload: dict, previous: dict | None) -> None:
    """Delete an upload of this session that could not be read (its folder), and make ``previous``
    (the upload the session's data came from, if any) the kept one again."""
    where = Path(upload["path"]).parent
    if where.name.startswith(io.UPLOAD_FOLDER_PREFIX) and where.parent == folder():
        shutil.rmtree(where, ignore_errors=True)
    if previous is None:
        st.session_state.pop(state.UPLOAD, None)
    else:
        st.session_state[state.UPLOAD] = previous


def forget_other_uploads() -> None:
    """Delete the upload files of this session other than the kept one (call once the kept one is
    the session's data: a backed dataset reads from its file)."""
    kept = st.session_state.get(state.UPLOAD)
    mine = folder()
    keep = Path(kept["path"]).parent if kept else None
    for path in mine.glob(io.UPLOAD_FOLDER_PREFIX + "*"):
        if path != keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def release_upload(file_id: str) -> bool:
    """Drop Streamlit's in-memory copy of an upload of this session (the page's uploader then gives
    None; the file on disk stays). Whether a copy was dropped."""
    try:
        from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # another Streamlit layout: keep the copy, as Streamlit does
        return False
    ctx = get_script_run_ctx()
    manager = getattr(ctx, "uploaded_file_mgr", None)
    if ctx is None or not isinstance(manager, MemoryUploadedFileManager):
        return False
    if not manager.get_files(ctx.session_id, [file_id]):
        return False
    manager.remove_file(ctx.session_id, file_id)
    return True
