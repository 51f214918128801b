"""Who is using the app: a login when the server is reachable from the network, none on localhost.

``auth.mode`` (see :mod:`scatd_core.config`): ``auto`` asks for a password when Streamlit listens
beyond localhost (``server.address`` other than localhost/127.0.0.1/::1), ``password`` always,
``oidc`` uses Streamlit's built-in OpenID Connect login (``st.login``, configured in
``.streamlit/secrets.toml``), ``none`` never. Passwords are checked against the argon2 hashes of
the users file; failed attempts are counted per user name and per client address, and too many
lock both out for ``auth.lockout_minutes`` (shared by every session of the server).
"""

from __future__ import annotations

import getpass
import logging

import streamlit as st

from scatd_app import uploads
from scatd_app.session import QUERY_KEY
from scatd_app.ui import md
from scatd_core.config import settings
from scatd_core.users import LoginThrottle, User, list_users, log_in, recheck

USER = "user"  # session key: the logged-in scatd_core.users.User
LOGGED_OUT = "logged_out"  # session key: why this session was logged out (shown by the login form)
LOCAL_ADDRESSES = ("localhost", "127.0.0.1", "::1")


def listens_locally() -> bool:
    from streamlit import config

    return str(config.get_option("server.address") or "") in LOCAL_ADDRESSES


def mode() -> str:
    """The effective mode: ``password``, ``oidc`` or ``none``."""
    wanted = settings()["auth_mode"]
    if wanted == "auto":
        return "none" if listens_locally() else "password"
    return wanted


@st.cache_resource(show_spinner=False)
def _throttle() -> LoginThrottle:
    conf = settings()
    return LoginThrottle(conf["auth_max_failures"], conf["auth_lockout_minutes"] * 60)


def _client() -> str:
    try:
        return str(st.context.ip_address or "unknown")
    except Exception:  # older Streamlit, or no request context (tests)
        return "unknown"


def _log() -> logging.Logger:
    """The logger of logins (``scatd.auth``): INFO and above to standard error, which the shipped
    systemd unit sends to the journal (``journalctl -u scatd-studio``). A handler is added only
    where none would receive its records (Streamlit configures its own loggers only)."""
    log = logging.getLogger("scatd.auth")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    return log


def attempt_login(name: str, password: str, throttle: LoginThrottle, client: str) -> tuple[User | None, float]:
    """:func:`scatd_core.users.log_in`, logged: the user name as typed (quoted, cut at 80 characters:
    it cannot forge a log line), the outcome and the client address; never the password."""
    user, wait = log_in(name, password, throttle, client)
    shown = repr(str(name or "")[:80])
    if user is not None:
        _log().info("login: user %s logged in from %s", shown, client)
    elif wait > 0:
        _log().warning("login refused: user %s from %s is locked out for %d more second(s) (too many failed "
                       "attempts); the password was not checked", shown, client, round(wait))
    else:
        locked = throttle.locked(f"user:{name}", f"ip:{client}")
        _log().warning("login failed: user %s from %s: wrong user name or password%s", shown, client,
                       f"; now locked out for {round(locked)} second(s) (too many failed attempts)" if locked else "")
    return user, wait


def current_user() -> User | None:
    return st.session_state.get(USER)


def _password_form() -> None:
    st.title("scATD Studio")
    conf = settings()
    try:
        users = list_users()
    except Exception:  # a broken users file: say so, never a traceback, nor the server's path to it
        logging.getLogger("scatd").exception("the users file cannot be read")
        st.error("The login cannot work: the server's users file cannot be read. The administrator can see why "
                 "with `scatd doctor` on the server.", icon=":material/error:")
        return
    if not users:
        st.warning("This server is reachable from the network, so it needs a login, but no user account exists "
                   "yet. An administrator creates one on the server with `scatd users add NAME --admin`.",
                   icon=":material/lock:")
        return
    if why := st.session_state.pop(LOGGED_OUT, None):
        st.warning(md(why), icon=":material/logout:")
    with st.form("login"):
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        user, wait = attempt_login(name, password, _throttle(), _client())
        if wait > 0:
            st.error(f"Too many failed attempts. Try again in {max(1, round(wait / 60))} minute(s).",
                     icon=":material/lock_clock:")
            return
        if user is None:
            st.error("Wrong user name or password.", icon=":material/error:")
            return
        st.session_state[USER] = user
        st.rerun()
    failures, minutes = conf["auth_max_failures"], conf["auth_lockout_minutes"]
    st.caption(f"Accounts are managed by the administrator (`scatd users`); {failures} failed "
               f"attempt{'' if failures == 1 else 's'} lock an account or address for {minutes} "
               f"minute{'' if minutes == 1 else 's'}.")


def login_page() -> None:
    """The only page registered before a login (so no other page can be reached by its address)."""
    if mode() == "oidc":
        st.title("scATD Studio")
        st.button("Log in", type="primary", on_click=st.login)
    else:
        _password_form()


def oidc_user(claims, admins) -> User:
    """The user an OpenID Connect login names: its e-mail address when the identity provider
    vouches for it (``email_verified`` absent or true), the only name ``auth.admins`` can match;
    otherwise the provider's subject id (``sub``), never an administrator. A display name is never
    the identity: anyone can give themselves an administrator's address as their name, and the
    session owner (who may resume a session) is this identity."""
    email = claims.get("email")
    verified = claims.get("email_verified", True)
    if email and verified not in (False, "false", "False", 0):
        return User(str(email), str(email) in admins)
    subject = claims.get("sub") or claims.get("name") or "user"
    return User(f"oidc:{subject}", False)


def resolve() -> User | None:
    """The user of this session, or ``None`` while a login is needed (nothing is drawn).

    Without a login (localhost) the person at the machine is the only user and administers it.
    Only a session with a user may keep uploads (:mod:`scatd_app.uploads`).
    """
    user = _resolve()
    if user is None:
        uploads.disallow(uploads.current_session_id())
    else:
        uploads.allow(uploads.current_session_id())
    return user


def _resolve() -> User | None:
    how = mode()
    if how == "none":
        user = User(getpass.getuser() or "local", admin=True)
    elif how == "oidc":
        if not st.user.is_logged_in:
            return None
        user = oidc_user(st.user, settings()["auth_admins"])
    else:
        user = current_user()
        if user is None:
            return None
        was = user.name
        user, why = recheck(user)  # removed, password replaced or role changed since the login
        if user is None:
            _log().info("logout: user %r's session ended: %s", was, why)
            _forget_session(why)
            return None
    st.session_state[USER] = user
    return user


def _forget_session(why: str = "") -> None:
    """Log this browser session out and drop everything it held (data, results, widget values, its
    uploads, the copy kept for a reload and its working folder), so whoever logs in next in the
    same browser tab, or opens its address again, starts afresh and sees nothing of it."""
    from scatd_app import session

    session.forget()
    uploads.disallow(uploads.current_session_id())
    st.session_state.clear()
    st.query_params.pop(QUERY_KEY, None)
    if why:
        st.session_state[LOGGED_OUT] = why


def logout() -> None:
    user = current_user()
    if user is not None:
        _log().info("logout: user %r logged out from %s", user.name, _client())
    _forget_session()
    if mode() == "oidc":
        st.logout()
