"""Short notes to one browser across the OpenID Connect redirects (``auth.mode = "oidc"``).

Streamlit's "Log in" (``st.login``) and "Log out" (``st.logout``) send the browser away (to the
identity provider, to Streamlit's own logout address) and back to the app's home page, in a new
session: what the old session held is gone, and neither call takes a page to return to or a
message to show (Streamlit 1.67 makes the ``state`` parameter of the sign-in itself and sends
every browser back to ``/``). What must survive the trip (the page a person asked for before
signing in, "You have logged out.") is kept here, in the server's memory, under a key of the
browser (:func:`scatd_app.auth`: a hash of Streamlit's XSRF cookie, which the redirects leave as
it is), for a few minutes, and read once. A note holds nothing private: a page's address or a
fixed sentence.

Nothing here imports Streamlit.
"""

from __future__ import annotations

import threading
import time

#: How long a note waits for its browser to come back (a sign-in at the provider can take a while).
TTL_SECONDS = 15 * 60
#: At most this many browsers' notes are kept (the oldest go first): a flood of sessions cannot fill memory.
MAX_BROWSERS = 10_000


class BrowserNotes:
    """``put(browser, name, value)``, then ``take(browser, name)`` once, within ``ttl`` seconds."""

    def __init__(self, ttl: float = TTL_SECONDS, max_browsers: int = MAX_BROWSERS) -> None:
        self.ttl, self.max_browsers = ttl, max_browsers
        self._lock = threading.Lock()
        self._notes: dict[str, dict[str, tuple[float, str]]] = {}

    def _prune(self, now: float) -> None:
        for browser in [b for b, notes in self._notes.items()
                        if all(now - t > self.ttl for t, _ in notes.values())]:
            del self._notes[browser]
        while len(self._notes) > self.max_browsers:
            del self._notes[next(iter(self._notes))]

    def put(self, browser: str | None, name: str, value: str, *, now: float | None = None) -> None:
        if not browser:
            return
        now = time.time() if now is None else now
        with self._lock:
            notes = self._notes.pop(browser, {})
            notes[name] = (now, str(value))
            self._notes[browser] = notes  # the most recent last: the oldest are dropped first
            self._prune(now)

    def take(self, browser: str | None, name: str, *, now: float | None = None) -> str | None:
        """The note ``name`` left for ``browser`` within the last ``ttl`` seconds, removed; else ``None``."""
        if not browser:
            return None
        now = time.time() if now is None else now
        with self._lock:
            notes = self._notes.get(browser)
            found = notes.pop(name, None) if notes is not None else None
            if notes is not None and not notes:
                del self._notes[browser]
        if found is None or now - found[0] > self.ttl:
            return None
        return found[1]
