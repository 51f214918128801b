"""Who is using the app: a login when the server is reachable from the network, none on localhost.

``auth.mode`` (see :mod:`scatd_core.config`): ``auto`` asks for a password when Streamlit listens
beyond localhost (``server.address`` other than localhost/127.0.0.1/::1), ``password`` always,
``oidc`` uses Streamlit's built-in OpenID Connect login (``st.login``, configured in
``.streamlit/secrets.toml``; who may sign in, and as whom: :mod:`scatd_core.oidc_access`),
``none`` never. An OIDC sign-in lasts at most ``auth.max_login_hours``
and ends at "Log out" on the server's side too (:mod:`scatd_core.logins`): Streamlit's own cookie
would last 30 days and survive a logout. Its redirects come back to the home page in a new session:
the page asked for and "You have logged out." cross them as notes to the browser
(:mod:`scatd_core.browser_notes`). Passwords are checked against the argon2 hashes of
the users file; failed attempts are counted per user name and per client address, and too many
within ``auth.lockout_minutes`` lock both out until ``auth.lockout_minutes`` after the first of them
(shared by every session of the server).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import math
from pathlib import Path

import streamlit as st

from scatd_app import uploads
from scatd_app.session import QUERY_KEY, ended_text
from scatd_app.ui import ANALYSIS_PAGES, MODEL_PAGES, md
from scatd_core._words import counted
from scatd_core import logins
from scatd_core.config import settings
from scatd_core.users import LoginThrottle, User, list_users, log_in, recheck

USER = "user"  # session key: the logged-in scatd_core.users.User
LOGGED_OUT = "logged_out"  # session key: why this session was logged out (shown by the login form)
OIDC_REFUSED = "oidc_refused"  # session key: why this OIDC identity may not come in (shown by the login page)
_REFUSED = "oidc_ended_logged"  # session key: the ended OIDC sign-in already logged as refused in this session
ASKED_PAGE = "login_asked_page"  # session key: the address (url path) of the page asked for before a login
_LEAVING = "oidc_leaving"  # session key: this session logged out and is being sent to Streamlit's logout
YOU_LOGGED_OUT = "You have logged out."
#: The app's pages by address (``/cells``): the only pages a sign-in returns to.
PAGES = {Path(path).stem.split("_", 1)[1].lower(): path for path, _, _ in (*ANALYSIS_PAGES, *MODEL_PAGES)}
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


@st.cache_resource(show_spinner=False)
def _notes():
    """Notes to a browser across the OIDC redirects (:mod:`scatd_core.browser_notes`), one per server."""
    from scatd_core.browser_notes import BrowserNotes

    return BrowserNotes()


def _browser() -> str | None:
    """This browser's key for :func:`_notes`: a hash of the token in Streamlit's XSRF cookie (the
    same before and after the sign-in's redirects), or ``None`` without one (no note is kept then)."""
    try:
        raw = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # no request context
        return None
    if not raw:
        return None
    token = None
    try:
        from streamlit.web.server.starlette.starlette_app_utils import decode_xsrf_token_string

        token, _ = decode_xsrf_token_string(str(raw))  # the token, without the mask that changes
    except Exception:  # another Streamlit: the cookie as it is
        pass
    return hashlib.sha256(b"scatd-browser\0" + (token or str(raw).encode())).hexdigest()


def asked_for(url_path: str) -> None:
    """Remember the page this session's address names before an OIDC login (``cells`` for ``/cells``)."""
    if mode() == "oidc":
        st.session_state[ASKED_PAGE] = url_path


def _log_in() -> None:
    """"Log in" with OIDC: the page asked for is kept for this browser (the sign-in comes back to the
    home page, in a new session), then Streamlit sends the browser to the identity provider."""
    if (asked := st.session_state.get(ASKED_PAGE)) in PAGES:
        _notes().put(_browser(), "page", asked)
    st.login()


def page_after_sign_in() -> str | None:
    """The page (its file, for ``st.switch_page``) the person asked for before signing in with
    OIDC, once, and only one of the app's own pages; else ``None``."""
    if mode() != "oidc":
        return None
    asked = _notes().take(_browser(), "page")
    return PAGES.get(asked) if asked else None


def logout_notice() -> str | None:
    """"You have logged out." on the login page after an OIDC "Log out", once: in the session that
    logged out (until the browser leaves) and in the new one Streamlit's logout comes back to."""
    if leaving := st.session_state.get(_LEAVING):
        return leaving if isinstance(leaving, str) else YOU_LOGGED_OUT
    return _notes().take(_browser(), "logged_out")


def _peer() -> str | None:
    """The address of this session's connection, loopback included (``st.context.ip_address`` says
    ``None`` for ``127.0.0.1``: the address of a reverse proxy on this machine)."""
    try:
        from streamlit.runtime.context import _get_client_context

        found = _get_client_context()
        if found is not None and found.remote_ip:
            return str(found.remote_ip)
    except Exception:  # another Streamlit: its public field
        pass
    try:
        return st.context.ip_address
    except Exception:  # no request context (tests)
        return None


def _client() -> str:
    """The client's address (:func:`scatd_core.client_address.client_address`): a trusted reverse
    proxy's ``X-Forwarded-For`` / ``X-Real-IP`` (``server.trusted_proxies``), else the connection's;
    never an address uvicorn took from the header for a proxy scATD does not trust."""
    from scatd_core.client_address import client_address, uvicorn_trust

    try:
        headers = st.context.headers
    except Exception:  # no request context (tests)
        headers = {}
    return client_address(_peer(), headers, settings()["trusted_proxies"], forwarded_allow_ips=uvicorn_trust())


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
        _log().warning("login refused: user %s from %s is locked out for %s more (too many failed "
                       "attempts); the password was not checked", shown, client, counted(round(wait), "second"))
    else:
        locked = throttle.locked(f"user:{name}", f"ip:{client}")
        _log().warning("login failed: user %s from %s: wrong user name or password%s", shown, client,
                       f"; now locked out for {counted(round(locked), 'second')} (too many failed attempts)" if locked else "")
    return user, wait


def lockout_text(wait_seconds: float) -> str:
    """What a locked-out login is told: how many whole minutes to wait, rounded up (at least one):
    89 s left is "2 minutes", never a minute that ends before the lockout does."""
    minutes = max(1, math.ceil(wait_seconds / 60))
    return f"Too many failed attempts: try again in {minutes} minute{'' if minutes == 1 else 's'}."


def lockout_rule(failures: int, minutes: int) -> str:
    """How the lock-out works, as :class:`scatd_core.users.LoginThrottle` counts: the failed attempts
    of the last ``minutes`` count, and a lock-out ends ``minutes`` after the first of them, not after
    the last (the error of a locked-out login says the time actually left)."""
    span = counted(minutes, "minute")
    if failures == 1:
        return f"1 failed attempt locks an account or address for {span}."
    return (f"{failures} failed attempts within {span} lock an account or address until {span} after the "
            "first of them.")


#: The login form of an address that names a session still kept on the server (``?s=``: a reload,
#: a bookmark); one that has ended says so instead (:func:`scatd_app.session.ended_text`).
RESUME_HINT = ("Log in to continue where you were: a session kept on the server (its data and results) is "
               "resumed for its own user after the login.")


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
    if why := st.session_state.pop(LOGGED_OUT, None):  # also when the account removed was the last one
        st.warning(md(why), icon=":material/logout:")
    if not users:
        st.warning("This server is reachable from the network, so it needs a login, but no user account exists "
                   "yet. An administrator creates one on the server with `scatd users add NAME --admin`.",
                   icon=":material/lock:")
        return
    if token := st.query_params.get(QUERY_KEY):  # a reload, a bookmark: whose session it is is not said here
        if ended := ended_text(token, conf["session_ttl_minutes"]):  # never promise what no login can resume
            st.warning(ended, icon=":material/history_toggle_off:")
        else:
            st.info(RESUME_HINT, icon=":material/history:")
    with st.form("login"):
        # password managers fill in the saved password ("new-password", Streamlit's default, makes one up)
        name = st.text_input("User name", key="login_name", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        throttle, client = _throttle(), _client()
        user, wait = attempt_login(name, password, throttle, client)
        if wait > 0:
            st.error(lockout_text(wait), icon=":material/lock_clock:")
            return
        if user is None:
            locked = throttle.locked(f"user:{name}", f"ip:{client}")  # this failure may have started a lock-out
            st.error("Wrong user name or password." + (f" {lockout_text(locked)}" if locked else ""),
                     icon=":material/error:")
            return
        st.session_state[USER] = user
        st.rerun()
    st.caption(f"Accounts are managed by the administrator (`scatd users`). "
               f"{lockout_rule(conf['auth_max_failures'], conf['auth_lockout_minutes'])}")


def login_page() -> None:
    """The only page registered before a login (so no other page can be reached by its address)."""
    if mode() == "oidc":
        _oidc_page()
    else:
        _password_form()


def _metadata_url() -> str | None:
    """The identity provider's metadata address (``[auth] server_metadata_url`` of the secrets), or
    ``None``; only its host is ever shown."""
    try:
        from streamlit.auth_util import get_secrets_auth_section

        return get_secrets_auth_section().get("server_metadata_url")
    except Exception:  # no secrets file, or another Streamlit: the page names no host then
        return None


def _oidc_page() -> None:
    """The login page with OIDC: which provider, who may sign in; an identity this server refuses
    sees why and whom to ask, and logs out from there (to sign in with another account)."""
    from scatd_core.oidc_access import contact, policy, provider_name, who_may_sign_in

    conf = settings()
    provider = md(provider_name(conf, _metadata_url()))
    st.title("scATD Studio")
    if refused := st.session_state.get(OIDC_REFUSED):
        st.error(md(refused), icon=":material/block:")
        st.button("Log out", type="primary", on_click=_log_out_refused, key="btn_oidc_refused_logout")
        st.caption(f"Logging out here ends this sign-in, so that you can log in with another {provider} account.")
        return
    if why := st.session_state.get(LOGGED_OUT):  # kept: each run of an ended sign-in says it again
        st.warning(md(why), icon=":material/logout:")
    elif notice := logout_notice():
        st.warning(notice, icon=":material/logout:")
    if policy(conf).empty:
        st.warning(md(f"{who_may_sign_in(conf)} Ask {contact(conf)} to allow your e-mail address."),
                   icon=":material/lock:")
        return
    st.markdown(f"Log in with your **{provider}** account.")
    st.button("Log in", type="primary", on_click=_log_in)
    st.caption(md(who_may_sign_in(conf)))


def oidc_user(claims, conf=None) -> User | None:
    """The user an OpenID Connect login names, when this server admits it, else ``None``
    (:func:`scatd_core.oidc_access.decide`: a verified e-mail address in lower case, or the
    provider's subject id; a display name is never the identity)."""
    from scatd_core.oidc_access import decide

    return decide(claims, conf or settings()).user


def _oidc_resolve() -> User | None:
    """The user of this OIDC session, or ``None`` when this server refuses the identity (said on the
    login page, logged once per session; a session admitted before, e.g. until the allow-list
    changed, is logged out and forgets its data). Each new sign-in is logged, never a token."""
    from scatd_core.oidc_access import decide

    decision = decide(st.user, settings())
    ss = st.session_state
    shown = repr(decision.identity[:80] or "(no identity)")
    if decision.user is None:
        if ss.get(USER) is not None:
            _log().info("logout: the session of user %s ended: no longer allowed to sign in", shown)
            _forget_session()
        if ss.get(OIDC_REFUSED) != decision.message:
            _log().warning("login refused: OIDC identity %s from %s: %s", shown, _client(), decision.reason)
        ss[OIDC_REFUSED] = decision.message
        return None
    ss.pop(OIDC_REFUSED, None)
    if _oidc_login_ended(decision.user):  # before "logged in" is logged: a logged-out cookie never reads as a login
        return None
    before = ss.get(USER)
    if before is None or before.name != decision.user.name:
        _log().info("login: user %s logged in with OIDC from %s%s", shown, _client(),
                    " (admin)" if decision.user.admin else "")
    return decision.user


def resolve() -> User | None:
    """The user of this session, or ``None`` while a login is needed (nothing is drawn).

    Without a login (localhost) the person at the machine is the only user and administers it.
    Only a session with a user may keep uploads (:mod:`scatd_app.uploads`).
    """
    user = _resolve()
    if user is None:
        uploads.disallow(uploads.current_session_id())
    else:
        uploads.allow(uploads.current_session_id(), user.name, user.login_stamp)
    return user


def _resolve() -> User | None:
    how = mode()
    if how == "none":
        user = User(getpass.getuser() or "local", admin=True)
    elif how == "oidc":
        if not st.user.is_logged_in:
            st.session_state.pop(OIDC_REFUSED, None)
            return None
        user = _oidc_resolve()
        if user is None:
            return None
    else:
        user = current_user()
        if user is None:
            return None
        was = user.name
        user, why = recheck(user)  # removed, password replaced or role changed since the login
        if user is None:
            _log().info("logout: the session of user %r ended: %s", was, why)
            _forget_session(why)
            return None
    st.session_state[USER] = user
    return user


def _claims() -> dict:
    """The claims of this session's OIDC sign-in (``st.user``, as Streamlit read them from its cookie)."""
    try:
        return dict(st.user.to_dict())
    except AttributeError:  # a plain mapping (tests)
        return dict(st.user)


def _oidc_login_ended(user: User) -> bool:
    """Whether this session's OIDC sign-in no longer counts (:func:`scatd_core.logins.refusal`: older
    than ``auth.max_login_hours``, logged out in another tab, a copied cookie of a logged-out
    sign-in, signed out by an administrator); the session is then forgotten and the login page says
    why. The browser keeps Streamlit's cookie until the next "Log in" replaces it: it is refused at
    every request meanwhile. Logged once per session."""
    claims = _claims()
    found = logins.refusal(claims, user.name, settings()["auth_max_login_hours"])
    if found is None:
        return False
    kind, why = found
    lid = logins.login_id(claims)
    if st.session_state.get(_REFUSED) != lid:
        _log().warning("login refused: user %r from %s: the sign-in is %s", user.name, _client(), kind)
    _forget_session(why)
    st.session_state[_REFUSED] = lid
    return True


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


def logout(said: str = YOU_LOGGED_OUT) -> None:
    """Log this session out; its user's other sessions lose their download links and uploads at once
    (:func:`scatd_app.uploads.disallow_login`). With OIDC the sign-in itself ends on the server
    (:func:`scatd_core.logins.revoke`): its cookie, in another tab or copied, no longer opens the app.
    The login page then says ``said``."""
    user = current_user()
    oidc = mode() == "oidc"
    if user is not None:
        _log().info("logout: user %r logged out from %s", user.name, _client())
    if oidc and st.user.is_logged_in:
        try:
            logins.revoke(_claims())
        except logins.RecordError as exc:
            _log().error("logout: the sign-in of %r could not be recorded as ended (%s): a copy of its cookie "
                         "still opens the app until auth.max_login_hours", getattr(user, "name", "?"), exc)
    _forget_session()
    if user is not None:
        uploads.disallow_login(user.name)
    if oidc:
        _notes().put(_browser(), "logged_out", said)  # said by the page Streamlit's logout returns to
        st.session_state[_LEAVING] = said
        st.logout()
    else:
        st.session_state[LOGGED_OUT] = said


def _log_out_refused() -> None:
    """"Log out" on the login page of an OIDC identity this server refuses: as :func:`logout` (the
    sign-in ends; the login page says so, also after Streamlit's logout redirect), with what to do next.
    It used to call ``st.logout`` alone, and the login page said nothing."""
    from scatd_core.oidc_access import policy

    logout(YOU_LOGGED_OUT + ("" if policy(settings()).empty else " You can now log in with another account."))
