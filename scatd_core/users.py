"""The users of a lab server: names, roles and argon2 password hashes in one TOML file.

The file is ``auth.users_file`` of :mod:`scatd_core.config` (default ``<home>/users.toml``),
managed with ``scatd users add/remove/list`` and read by the app's login. Only hashes are stored
(argon2id, the `argon2-cffi` defaults); the file is written atomically with mode 0600.

::

    [users.alice]
    hash = "$argon2id$v=19$m=65536,t=3,p=4$..."
    admin = true
    created = "2026-11-30T10:00:00+00:00"
    updated = "2026-12-01T09:00:00+00:00"   # when the password or role last changed (absent until then)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scatd_core._words import counted
from scatd_core._lock import folder_lock
from scatd_core.config import settings
from scatd_core.errors import InputError, ScatdError

#: User names: letters, digits, '.', '_', '-', '@' (e-mail addresses work), 1-64 characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD_LENGTH = 10


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False
    #: Which password hash the user logged in with (a digest of it; empty without a password login):
    #: a session whose password was replaced since then is logged out (:func:`recheck`).
    login_stamp: str = field(default="", compare=False, repr=False)


def users_file() -> Path:
    return settings()["auth_users_file"]


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def load_users(path: Path | None = None) -> dict[str, dict]:
    """``{name: {"hash", "admin", "created"}}`` (empty when the file does not exist)."""
    path = Path(path) if path else users_file()
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"The users file {path} cannot be read by this account ({_account()}): "
                         f"{exc.strerror or exc}.",
                         f"It holds the accounts: keep it. Give it to the account that runs the server, e.g. "
                         f"`chown {_service_account() or 'SERVICE_USER'} {path}` (mode 0600 stays), and run "
                         f"`scatd users` and `scatd doctor` as that account (`sudo -u ACCOUNT scatd ...`).") from None
    try:
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"The users file {path} is not valid TOML ({exc}).",
                         "It holds the accounts: keep it. Correct the line named above with a text editor, or "
                         "put back a copy from a backup; `scatd doctor` says when it can be read again.") from None
    users = data.get("users", {})
    return {str(k): dict(v) for k, v in users.items() if isinstance(v, dict) and "hash" in v}


def _account() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _service_account() -> str | None:
    """The account the server runs as (``server.service_user``, else the installed unit's ``User=``)."""
    from scatd_core.doctor import _service_user

    return _service_user(settings())[0]


def _new_owner(path: Path) -> tuple[int, int] | None:
    """Whom the users file is given to when root writes it: its present owner and group (a write
    by root never takes the file from the server's account), or for a new file the service account
    (:func:`_service_account`); ``None`` when not root, or neither is known."""
    if os.geteuid() != 0:
        return None
    try:
        st = path.stat()
        return st.st_uid, st.st_gid
    except FileNotFoundError:
        pass
    name = _service_account()
    if not name:
        return None
    import pwd

    try:
        account = pwd.getpwnam(name)
    except KeyError:
        return None
    return account.pw_uid, account.pw_gid


def ownership_note(path: Path | None = None) -> str | None:
    """What to tell root after writing the users file: a root-owned file (mode 0600) only root can
    read, so a server running as another account cannot log anyone in. ``None`` otherwise."""
    path = Path(path) if path else users_file()
    try:
        st = path.stat()
    except OSError:
        return None
    if os.geteuid() != 0 or st.st_uid != 0 or st.st_mode & 0o044:
        return None
    service = _service_account()
    if service == "root":
        return None
    import pwd

    who = service or "SERVICE_USER"
    if not service:
        why = ("no service account is named (server.service_user / SCATD_SERVICE_USER, or an installed "
               "scatd-studio.service)")
    else:
        try:
            pwd.getpwnam(service)
            why = f"it was root's already, and root's changes keep the file's owner; the server runs as {service}"
        except KeyError:
            why = f"there is no account {service} on this machine"
    return (f"{path} belongs to root and only root can read it; {why}: a server running as another account "
            f"cannot read it, so nobody can log in. Give it to that account: `chown {who} {path}` (later changes "
            f"by root keep its owner), or run `sudo -u {who} scatd users ...`.")


def _save(users: dict[str, dict], path: Path) -> None:
    """Write the users file whole (mode 0600; a temporary file renamed over it). Run as root, the
    file keeps its owner and group, and a new one is given to the service account when one is
    named: root's `scatd users add` must not leave a file the server cannot read."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    owner = _new_owner(path)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(tomli_w.dumps({"users": users}).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_name(name: str) -> None:
    """Raise :class:`InputError` unless ``name`` is a valid user name."""
    if not NAME_PATTERN.match(name or ""):
        raise InputError(f"{name!r} is not a valid user name.", "Use 1-64 letters, digits, '.', '_', '-' or '@'.")


def check_distinct(name: str, users: dict[str, dict]) -> None:
    """Refuse a new ``name`` that differs from an existing user's only by upper/lower case (``ALICE``
    beside ``alice``): colleagues could not tell the two accounts apart. Logins still match names exactly."""
    if name in users:
        return
    same = sorted(other for other in users if other.casefold() == name.casefold())
    if same:
        raise InputError(f"There is already a user {same[0]}: {name} differs from it only by upper/lower case, "
                         "so the two accounts could not be told apart; nothing was changed.",
                         f"Choose another name, or to set a new password for {same[0]} use "
                         f"`scatd users add {same[0]} --replace` (names are matched exactly at login).")


def add_user(name: str, password: str, *, admin: bool | None = None, path: Path | None = None,
             replace: bool = False) -> User:
    """Add (or with ``replace`` update) a user with an argon2 hash of ``password``.

    ``admin=None`` keeps an updated user's role (a new user is not an admin); an updated user keeps
    the time it was created."""
    path = Path(path) if path else users_file()
    check_name(name)
    if not (password or "").strip():
        raise InputError("The password is blank (only spaces or tabs); nothing was changed.",
                         f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters, not all of them spaces.")
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise InputError(f"The password is too short ({len(password)} characters; at least {MIN_PASSWORD_LENGTH} are "
                         "needed); nothing was changed.",
                         f"Choose one of at least {MIN_PASSWORD_LENGTH} characters: a few words in a row are long and "
                         "easy to remember.")
    check_distinct(name, load_users(path))  # before the slow hash; checked again under the lock
    hashed = _argon2(_hasher().hash, password)  # before the lock: it takes a while
    with _locked(path):
        users = load_users(path)
        check_distinct(name, users)
        old = users.get(name)
        if old is not None and not replace:
            raise InputError(f"User {name} already exists.", "Use --replace to set a new password.")
        old = old or {}
        if old and _same_password(old, password):  # the same password again: the same hash, so the
            hashed = old["hash"]                   # user's sessions stay logged in (a role change only)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        entry = {"hash": hashed, "admin": bool(old.get("admin") if admin is None else admin),
                 "created": old.get("created", now)}
        if old:
            entry["updated"] = now
        users[name] = entry
        _save(users, path)
    return User(name, entry["admin"])


def _same_password(entry: dict, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return bool(_argon2(_hasher().verify, entry["hash"], password))
    except (VerificationError, InvalidHashError):
        return False


def set_role(name: str, admin: bool, path: Path | None = None) -> User:
    """Make ``name`` an administrator or not, keeping its password: its sessions stay logged in
    and have the new role at their next action (:func:`recheck`)."""
    path = Path(path) if path else users_file()
    with _locked(path):
        users = load_users(path)
        if name not in users:
            raise InputError(f"There is no user {name}.", f"Users: {', '.join(sorted(users)) or 'none'}.")
        entry = users[name]
        if bool(entry.get("admin")) != bool(admin):
            entry["admin"] = bool(admin)
            entry["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            _save(users, path)
    return User(name, bool(admin))


def remove_user(name: str, path: Path | None = None) -> None:
    path = Path(path) if path else users_file()
    with _locked(path):
        users = load_users(path)
        if name not in users:
            raise InputError(f"There is no user {name}.", f"Users: {', '.join(sorted(users)) or 'none'}.")
        del users[name]
        _save(users, path)


@dataclass
class UserData:
    """What a user leaves behind when the account is removed (nothing of it is removed with it): their
    saved panels (``<home>/panels/<name>.json``, private to the name), the records of panel training
    that resume their models (``<home>/train-panel/*.json``) and the models of the shared library
    recorded as trained or imported by them. A new account given the same name would get the saved
    panels, and be recorded as these models' maker. The command line's saved panels of the same name
    (``<home>/panels/cli/<name>.json``) are not the user's: they are the operating-system account's of
    that name, another identity (``cli_panels_file`` names them only so as to say they are kept)."""

    name: str
    panels_file: Path | None = None  # None: there is none
    panels: list[str] = field(default_factory=list)
    cli_panels_file: Path | None = None  # the OS account's of the same name (not the user's); None: none
    states: dict[Path, list[str]] = field(default_factory=dict)  # state file: its drugs resuming their models
    models: list[Path] = field(default_factory=list)  # library folders

    def __bool__(self) -> bool:
        return bool(self.panels_file or self.states or self.models)

    def lines(self) -> list[str]:
        out = []
        if self.panels_file:
            out.append(f"saved panels: {len(self.panels)} ({', '.join(self.panels) or 'none readable'}) in "
                       f"{self.panels_file}")
        if self.states:
            out.append(f"panel training records that resume their models: "
                       f"{counted(sum(map(len, self.states.values())), 'drug')} in "
                       f"{', '.join(map(str, sorted(self.states)))}")
        if self.models:
            out.append(f"models in the shared library trained or imported by {self.name}: {len(self.models)}: "
                       + ", ".join(p.name for p in self.models))
        return out


def user_data(name: str, library: Path | None = None) -> UserData:
    """What of ``name`` is kept on the server beside the account (:class:`UserData`)."""
    import json

    from scatd_core.bundle import list_library, made_on_command_line, maker
    from scatd_core.panel import list_panels, panels_file
    from scatd_core.train._panel import state_path

    found = UserData(name)
    path = panels_file(name)
    if path.is_file():
        found.panels_file = path
        with contextlib.suppress(InputError):
            found.panels = sorted(list_panels(name))
    path = panels_file(name, cli=True)  # the OS account's of that name: never deleted with the user
    if path.is_file():
        found.cli_panels_file = path
    try:
        entries = list_library(library)
    except (OSError, ScatdError):
        entries = []
    # a model made with the server's command line is the lab's, whichever system account made it: never
    # an app login's, even one of the same name (its removal with --delete-models would delete lab models)
    found.models = sorted(Path(e.path) for e in entries
                          if e.ok and maker(e.bundle) == name and not made_on_command_line(e.bundle))
    theirs = {str(p.resolve()) for p in found.models}
    folder = state_path("x").parent
    for state in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            drugs = json.loads(state.read_text(encoding="utf-8")).get("drugs", {})
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        mine = [d for d, e in drugs.items() if isinstance(e, dict) and str(e.get("path")) in theirs]
        if mine:
            found.states[state] = mine
    return found


def delete_user_data(found: UserData, *, models: bool = False) -> list[str]:
    """Delete ``found``'s saved panels (the app login's, with its lock file; never the command line's of
    the same name, which are the operating-system account's) and panel training records, and with
    ``models`` the models too (other users may be using them: only when asked). Returns what was
    deleted, in words."""
    import json

    from scatd_core.bundle import remove_bundle
    from scatd_core.panel import _locked as panels_locked
    from scatd_core.train._panel import _write_state

    done = []
    if path := found.panels_file:
        with panels_locked(path):
            path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)  # named after the user too
        done.append(f"deleted the saved panels {path}")
    for state, drugs in found.states.items():
        try:
            left = json.loads(state.read_text(encoding="utf-8")).get("drugs", {})
        except (OSError, ValueError):
            continue
        for drug in drugs:
            left.pop(drug, None)
        if left:
            _write_state(state, left)
        else:
            state.unlink(missing_ok=True)
        done.append(f"deleted the panel training records of {', '.join(drugs)} in {state}")
    if models:
        for folder in found.models:
            remove_bundle(folder)
            done.append(f"deleted the model {folder}")
    return done


@contextlib.contextmanager
def _locked(path: Path):
    """The users file's lock: read, change and write it as one step, so concurrent `scatd users`
    commands never lose each other's change. A file this account cannot write is an
    :class:`InputError` naming it and what to do, not a crash."""
    try:
        with folder_lock(path.parent, f".{path.name}.lock"):
            yield
    except OSError as exc:
        raise InputError(f"The users file {path} cannot be written by this account: {exc.strerror or exc}; "
                         f"nothing was changed.",
                         "Run `scatd users` as the account that runs the server (or as root), or set "
                         "auth.users_file (SCATD_USERS_FILE) to a file in a folder this account can write.") from None


def list_users(path: Path | None = None) -> list[User]:
    return [User(name, bool(entry.get("admin"))) for name, entry in sorted(load_users(path).items())]


def verify(name: str, password: str, path: Path | None = None) -> User | None:
    """The user when ``password`` is right, else ``None`` (constant work for unknown names too)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    users = load_users(path)
    entry = users.get(name)
    stored = entry["hash"] if entry else _DUMMY_HASH.get()
    try:
        _argon2(_hasher().verify, stored, password or "")
    except (VerificationError, InvalidHashError):
        return None
    return User(name, bool(entry.get("admin")), _stamp(entry)) if entry else None


def _stamp(entry: dict) -> str:
    return hashlib.sha256(str(entry["hash"]).encode()).hexdigest()[:16]


def recheck(user: User, path: Path | None = None) -> tuple[User | None, str]:
    """A logged-in ``user`` as the users file has it now: ``(user, "")`` with its current role, or
    ``(None, why)`` when the account was removed, its password replaced (``scatd users add
    --replace``) or the file cannot be read. Cheap enough for every run of every session: the file
    is read again only when it changed."""
    path = Path(path) if path else users_file()
    try:
        entry = _cached_users(path).get(user.name)
    except InputError as exc:
        return None, f"You were logged out: {exc.message}"
    if entry is None:
        return None, "You were logged out: your account was removed by an administrator."
    if _stamp(entry) != user.login_stamp:
        return None, "You were logged out: your password was changed. Log in with the new one."
    admin = bool(entry.get("admin"))
    return (user if admin == user.admin else User(user.name, admin, user.login_stamp)), ""


_CACHE: dict[Path, tuple[tuple, dict[str, dict]]] = {}
_CACHE_LOCK = threading.Lock()


def _cached_users(path: Path) -> dict[str, dict]:
    """:func:`load_users`, read again only when the file changed (every write replaces it, so its
    inode, size or times change); not to be modified."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _CACHE_LOCK:
        cached = _CACHE.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    users = load_users(path)  # read after the stat: never older than the key it is kept under
    with _CACHE_LOCK:
        _CACHE[path] = (key, users)
    return users


def log_in(name: str, password: str, throttle: LoginThrottle, client: str) -> tuple[User | None, float]:
    """``(user, 0)`` for the right password, ``(None, 0)`` for a wrong one, ``(None, seconds)`` while
    the name or the client address is locked out (nothing verified then).

    The attempt is counted before the password is verified, in one step with the lock-out check,
    so concurrent attempts (each browser session runs in its own thread) cannot all pass the check
    before any failure is recorded; a right password clears the count again."""
    keys = (f"user:{name}", f"ip:{client}")
    wait = throttle.attempt(*keys)
    if wait > 0:
        return None, wait
    user = verify(name, password)
    if user is not None:
        throttle.succeeded(*keys)
    return user, 0.0


#: argon2 computations running at once, whoever asks (each holds 64 MiB, argon2-cffi's default
#: memory cost; a login form needs no account to ask for one): the others wait their turn.
MAX_CONCURRENT_HASHES = 2
_HASH_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)


def _argon2(call, *args):
    with _HASH_SLOTS:
        return call(*args)


class _Dummy:
    """A hash to verify against for unknown names, so a wrong name costs as long as a wrong password."""

    def __init__(self) -> None:
        self._hash: str | None = None

    def get(self) -> str:
        if self._hash is None:
            self._hash = _argon2(_hasher().hash, os.urandom(16).hex())
        return self._hash


_DUMMY_HASH = _Dummy()


class LoginThrottle:
    """Failed logins per user name and per client address; too many within the window lock that
    name or address out until the window has passed (shared by every session of the server)."""

    def __init__(self, max_failures: int, window_seconds: float):
        self.max_failures, self.window = int(max_failures), float(window_seconds)
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    #: Above this many names and addresses on record, those without a failure in the window are
    #: dropped, so names tried at random cannot grow the table without bound.
    MAX_KEYS = 10_000

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def _prune(self, now: float) -> None:
        if len(self._failures) > self.MAX_KEYS:
            for key in list(self._failures):
                self._recent(key, now)

    def attempt(self, *keys: str) -> float:
        """Count one attempt for these keys unless one of them is locked out: 0 when the attempt
        may go ahead (it counts as a failure until :meth:`succeeded`), else the seconds until one may.
        Checked and counted in one step under the lock, so concurrent attempts cannot overtake it."""
        now = time.monotonic()
        with self._lock:
            recent = [self._recent(key, now) for key in keys]
            waits = [self.window - (now - times[0]) for times in recent if len(times) >= self.max_failures]
            if waits:
                return max(waits)
            for key, times in zip(keys, recent):
                times.append(now)
                self._failures[key] = times
            self._prune(now)
        return 0.0

    def locked(self, *keys: str) -> float:
        """The seconds until these keys may try again (0: not locked out), counting nothing."""
        now = time.monotonic()
        with self._lock:
            recent = [self._recent(key, now) for key in keys]
            return max([self.window - (now - times[0]) for times in recent if len(times) >= self.max_failures],
                       default=0.0)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
