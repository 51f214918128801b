"""One queue for the server's heavy computations, so a lab's users share the machine fairly.

At most ``server.max_jobs`` computations (prediction, attributions, UMAP, training, the demo
build) run at once, process-wide; the others wait in arrival order, and each waiting page shows
its position. A user who leaves or presses Cancel while waiting is removed from the queue (the
page's run is interrupted, which runs the ``finally`` below).

When the last running computation ends and nobody waits, the memory the computations freed is
given back to the system (:func:`release_free_memory`): glibc keeps freed heap pages for reuse,
so after a 10k-cell prediction and UMAP a server otherwise held ~180 MB more than its sessions'
data, per walk, until it was restarted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager
from typing import Callable

import streamlit as st

from scatd_core.config import settings


_LIBC: ctypes.CDLL | None = None


def release_free_memory() -> bool:
    """Return heap memory that is free to the system (glibc's ``malloc_trim``; ~15 ms after a
    10k-cell walk). Whether anything was returned; False where the C library has no such call."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):
        return False


class JobQueue:
    """First come, first served, ``slots`` at a time."""

    def __init__(self, slots: int):
        self.slots = max(1, int(slots))
        self.running = 0
        self.ended = 0  # computations that held a slot and ended (their memory freed since)
        self.waiting: list[object] = []
        self._cond = threading.Condition()

    def position(self, ticket) -> int:
        """1-based place among the waiting (0 when not waiting)."""
        with self._cond:
            return self.waiting.index(ticket) + 1 if ticket in self.waiting else 0

    @contextmanager
    def slot(self, on_wait: Callable[[int, int], None] | None = None, poll_seconds: float = 0.5):
        """Wait for a free slot (calling ``on_wait(position, running)`` while waiting), then hold it."""
        ticket = object()
        with self._cond:
            self.waiting.append(ticket)
        acquired = False
        try:
            while True:
                with self._cond:
                    first = self.waiting[0] is ticket
                    if first and self.running < self.slots:
                        self.waiting.pop(0)
                        self.running += 1
                        acquired = True
                        self._cond.notify_all()
                        break
                    position, running = self.waiting.index(ticket) + 1, self.running
                if on_wait is not None:
                    on_wait(position, running)  # a Streamlit call: where a Cancel interrupts the wait
                with self._cond:
                    self._cond.wait(poll_seconds)
            yield
        finally:
            with self._cond:
                if acquired:
                    self.running -= 1
                    self.ended += 1
                elif ticket in self.waiting:
                    self.waiting.remove(ticket)
                idle = acquired and self._idle()
                self._cond.notify_all()
            if idle:
                release_free_memory()


    def free(self) -> bool:
        """Whether a computation would start now: a slot is free and nobody is waiting."""
        with self._cond:
            return self.running < self.slots and not self.waiting

    def contended(self) -> bool:
        """Whether a computation is waiting for a slot."""
        with self._cond:
            return bool(self.waiting)

    @contextmanager
    def slot_if_free(self):
        """Hold a slot if one is free and nobody is waiting (yields ``True``), else yield
        ``False`` at once: for work started ahead of a request, which must never make a requested
        computation wait longer than it takes to notice :meth:`contended` and stop."""
        with self._cond:
            held = self.running < self.slots and not self.waiting
            if held:
                self.running += 1
        try:
            yield held
        finally:
            if held:
                with self._cond:
                    self.running -= 1
                    self.ended += 1
                    idle = self._idle()
                    self._cond.notify_all()
                if idle:
                    release_free_memory()

    def _idle(self) -> bool:  # call with the lock held
        return self.running == 0 and not self.waiting


@st.cache_resource(show_spinner=False)
def queue() -> JobQueue:
    """The server's queue (one per process)."""
    return JobQueue(settings()["max_jobs"])


@contextmanager
def computing(what: str, *, cancel_button: bool = True):
    """Run the block when a slot is free; meanwhile show the place in the queue and a Cancel button
    (pressing it reruns the page, which interrupts the wait and leaves the queue). Inside
    :func:`scatd_app.ui.long_run`, whose own Cancel does the same, ``cancel_button=False``. A
    session logged out (in another of its tabs) or expired meanwhile leaves the queue too."""
    from scatd_app import session
    from scatd_core.errors import Cancelled

    note, cancel = st.empty(), st.empty()
    drawn = []
    logged_out = session.stop_on_logout()

    def waiting(position: int, running: int) -> None:
        if logged_out():
            raise Cancelled(session.LOGGED_OUT_STOP)
        now = "the running computation" if running == 1 else f"one of the {running} running computations"
        note.info(f"Waiting for the server: {what} starts when {now} "
                  f"finishes. You are number {position} in the queue.", icon=":material/hourglass_top:")
        if cancel_button and not drawn:
            drawn.append(cancel.button("Cancel", key="btn_cancel_wait", icon=":material/close:"))

    with queue().slot(waiting):
        note.empty()
        cancel.empty()
        yield
