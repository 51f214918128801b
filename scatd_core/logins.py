"""How long an OpenID Connect sign-in lasts on this server, and how it ends (``auth.mode = "oidc"``).

Streamlit keeps an OIDC sign-in in a signed cookie (``_streamlit_user``) that it accepts for 30
days: through restarts and a closed browser, and Streamlit's "Log out" only deletes it from the
browser that logged out, so a copy of it signs in again. The server therefore decides, at every
click (:func:`refusal`, called by :mod:`scatd_app.auth`), whether a sign-in still counts:

* **its age**: at most ``auth.max_login_hours`` (default 12) since the identity provider issued it
  (the ID token's ``iat`` claim; without one, since this server first saw that sign-in). Not the
  ``auth_time`` claim: that is when the person last typed a password at the provider, which a
  provider's own single sign-on may keep for days, so every new sign-in would be refused at once.
  Not the ID token's ``exp`` either: typically one hour, far shorter than a day's work;
* **Log out**: :func:`revoke` records that sign-in (a hash of the claims that identify it: issuer,
  subject, audience, ``iat``, ``nonce``...) as ended, so its cookie, in another tab or copied, is
  refused from then on;
* **an administrator's "sign out everywhere"** (``scatd users signout NAME``,
  :func:`sign_out_everywhere`): every sign-in of that name issued before then is refused; a new
  sign-in is accepted.

The record is one JSON file, ``<home>/oidc-logins.json`` (mode 0600, written atomically under a
lock shared by the server's processes and ``scatd``), with times in seconds since the epoch;
entries older than :data:`KEEP_SECONDS` (beyond which Streamlit refuses the cookie itself) are
pruned whenever it is written. It holds hashes and the names signed out, never a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from scatd_core._words import counted
from scatd_core._lock import folder_lock

FILE_NAME = "oidc-logins.json"
_LOCK_NAME = ".oidc-logins.lock"
#: Streamlit accepts its sign-in cookie for 30 days and a day's grace: older records are pruned.
KEEP_SECONDS = 32 * 86400
#: The claims that identify one sign-in (one cookie): different for every sign-in of a person.
ID_CLAIMS = ("iss", "sub", "aud", "iat", "auth_time", "exp", "nonce", "sid", "jti")
#: What Streamlit adds to ``st.user`` that is not a claim of the identity.
NOT_CLAIMS = ("is_logged_in", "tokens")

EXPIRED, LOGGED_OUT, SIGNED_OUT, UNCHECKABLE = "expired", "logged out", "signed out by an administrator", "uncheckable"

_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple, dict]] = {}


class RecordError(Exception):
    """The record of ended sign-ins cannot be read or written (its message names the file)."""


def records_file(home: Path | None = None) -> Path:
    if home is None:
        from scatd_core.config import scatd_home

        home = scatd_home()
    return Path(home) / FILE_NAME


def _claims(claims: Mapping) -> dict:
    return {str(k): v for k, v in dict(claims).items() if k not in NOT_CLAIMS}


def login_id(claims: Mapping) -> str:
    """A hash that names one sign-in (the same for every tab and copy of its cookie, different for
    each new sign-in): of the identifying claims, or of all of them when a provider sends none of
    ``iat``, ``nonce``, ``exp``, ``jti``."""
    data = _claims(claims)
    chosen = {k: data[k] for k in ID_CLAIMS if k in data}
    if not any(k in chosen for k in ("iat", "nonce", "exp", "jti")):
        chosen = data
    text = json.dumps(chosen, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(b"scatd-oidc-login\0" + text.encode()).hexdigest()


def issued_at(claims: Mapping) -> float | None:
    """When the identity provider issued this sign-in (``iat``, seconds), or ``None``."""
    value = dict(claims).get("iat")
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _name_key(name: str) -> str:
    return str(name).strip().casefold()


def _empty() -> dict:
    return {"revoked": {}, "seen": {}, "not_before": {}}


def _read(path: Path) -> dict:
    """The record (cached while the file is unchanged); empty when there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return _empty()
    except OSError as exc:
        raise RecordError(f"{path} cannot be examined: {exc.strerror or exc}") from None
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordError(f"{path} cannot be read by this account: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} does not hold a record of sign-ins (not a JSON object)")
    record = _empty()
    for section in record:
        found = data.get(section, {})
        if isinstance(found, dict):
            record[section] = {str(k): float(v) for k, v in found.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with _cache_lock:
        _cache[str(path)] = (key, record)
    return record


def _update(path: Path, change, now: float) -> dict:
    """Apply ``change(record)`` under the lock, prune old entries and write the file atomically (0600)."""
    path = Path(path)
    try:
        with folder_lock(path.parent, _LOCK_NAME):
            try:
                record = {k: dict(v) for k, v in _read(path).items()}
            except RecordError:
                record = _empty()  # a damaged record is replaced (doctor says so before)
            change(record)
            for section in record.values():
                for k in [k for k, t in section.items() if t < now - KEEP_SECONDS]:
                    del section[k]
            owner = _owner_for_root(path)
            fd, tmp = tempfile.mkstemp(prefix=".oidc-logins-", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    os.fchmod(fh.fileno(), 0o600)
                    if owner is not None:
                        os.fchown(fh.fileno(), *owner)
                    json.dump(record, fh, sort_keys=True)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
    except OSError as exc:
        raise RecordError(f"{path} cannot be written by this account: {exc.strerror or exc}") from None
    return record


def _owner_for_root(path: Path) -> tuple[int, int] | None:
    """Whom the record is given to when root writes it (``sudo scatd users signout``): the file's
    owner, or for a new file the data folder's, so the server's account can still read it (a
    record it cannot read refuses every sign-in). ``None`` when not root."""
    if os.geteuid() != 0:
        return None
    for candidate in (path, path.parent):
        try:
            st = candidate.stat()
            return st.st_uid, st.st_gid
        except OSError:
            continue
    return None


def refusal(claims: Mapping, name: str, max_hours: int, *, now: float | None = None,
            home: Path | None = None) -> tuple[str, str] | None:
    """Why this sign-in no longer counts, as ``(kind, sentence for the user)``, or ``None`` when it
    does. ``kind`` is :data:`EXPIRED`, :data:`LOGGED_OUT`, :data:`SIGNED_OUT` or
    :data:`UNCHECKABLE` (the record cannot be read: refused, fail closed). A sign-in without an
    ``iat`` claim, or with one later than now, is recorded as seen now, the first time."""
    now = time.time() if now is None else now
    path = records_file(home)
    try:
        record = _read(path)
    except RecordError:
        return UNCHECKABLE, ("The server cannot check sign-ins at the moment (its record of ended sign-ins cannot "
                             "be read), so nobody is let in. The administrator can see why with `scatd doctor` on "
                             "the server.")
    lid = login_id(claims)
    if lid in record["revoked"]:
        return LOGGED_OUT, ("This sign-in was logged out (in this tab or another), so it no longer opens the app. "
                            "Log in again to go on.")
    started = issued_at(claims)
    if started is None or started > now:  # no iat, or one in the future (the provider's clock ahead): from when
        # this server first saw the sign-in (a future iat would outlast a sign-out made after it was issued)
        started = record["seen"].get(lid)
        if started is None:
            started = now
            try:
                _update(path, lambda r: r["seen"].setdefault(lid, now), now)
            except RecordError:
                return UNCHECKABLE, ("The server cannot check sign-ins at the moment (its record of sign-ins cannot be "
                                     "written), so nobody is let in. The administrator can see why with `scatd "
                                     "doctor` on the server.")
    not_before = record["not_before"].get(_name_key(name))
    if not_before is not None and started < not_before:
        return SIGNED_OUT, ("An administrator signed you out of this server. Log in again to go on.")
    if now - started > max_hours * 3600:
        return EXPIRED, (f"Your sign-in has expired: this server asks everyone to sign in again after {max_hours} "
                         f"hour{'' if max_hours == 1 else 's'}. Log in again to go on.")
    return None


def revoke(claims: Mapping, *, now: float | None = None, home: Path | None = None) -> None:
    """Record this sign-in as logged out: its cookie (any tab, any copy) is refused from now on."""
    now = time.time() if now is None else now
    lid = login_id(claims)
    _update(records_file(home), lambda r: r["revoked"].__setitem__(lid, now), now)


def sign_out_everywhere(name: str, *, now: float | None = None, home: Path | None = None) -> float:
    """Refuse every sign-in of ``name`` (an e-mail address: any case) issued before now; returns that
    time, in whole seconds as ``iat`` is (a sign-in issued in the same second counts as after it)."""
    now = time.time() if now is None else now
    key, since = _name_key(name), float(int(now))
    _update(records_file(home), lambda r: r["not_before"].__setitem__(key, since), now)
    return since


def doctor_item(home: Path) -> dict:
    """``scatd doctor``'s line about the record (readable, how many sign-ins ended)."""
    path = records_file(home)
    try:
        record = _read(path)
    except RecordError as exc:
        return {"what": "ended sign-ins", "status": "problem",
                "detail": f"{exc}: the server refuses every sign-in until it can read it. Move it away (the "
                          f"ended sign-ins it recorded are then forgotten) or give it back to the server's account"}
    if not path.exists():
        return {"what": "ended sign-ins", "status": "ok", "detail": f"none recorded yet ({path})"}
    return {"what": "ended sign-ins", "status": "ok",
            "detail": f"{len(record['revoked'])} logged out, {counted(len(record['not_before']), 'name')} signed out by an "
                      f"administrator, in the last {KEEP_SECONDS // 86400} days ({path})"}
