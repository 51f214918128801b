"""Checks of the server's configuration before the app serves anyone.

``python -m scatd_app`` prints every configuration problem to its terminal and refuses to start
when one of them must stop it (:attr:`scatd_core.config.Settings.fatal`: a login setting that is
not understood; with ``auth.mode = "oidc"``, a sign-in that cannot work: Authlib missing, or a key
missing from the ``[auth]`` section of Streamlit's secrets, see :mod:`scatd_core.oidc_setup`) or
when a folder it writes in for every user (``paths.home``, ``paths.work_dir``) cannot be written. ``streamlit run app.py`` prints the same once per server process, and its page
then shows only an administrator's message (no page, no user data, no path) until it is fixed.
"""

from __future__ import annotations

import sys
import threading

from scatd_core.config import settings, unwritable_folders

_REPORTED: set[str] = set()
_FOLDERS_OK = False  # once the folders were writable, they are not checked again in this process
_OIDC_OK = False  # once the OIDC sign-in was found complete, it is not checked again in this process
_LOCK = threading.Lock()


def report(conf=None, stream=None) -> None:
    """Print each configuration problem once per server process (to stderr: the server's log); one
    that stops the server (:func:`refusals`) is said by the refusal, not twice."""
    from scatd_core.oidc_access import startup_lines

    conf = conf or settings()
    stream = stream or sys.stderr
    with _LOCK:  # with OIDC also who may sign in, when nobody (or everyone) may
        new = [p for p in [*conf.problems, *startup_lines(conf)] if p not in _REPORTED and p not in conf.fatal]
        _REPORTED.update(new)
    for problem in new:
        print(f"scATD Studio: configuration: {problem}", file=stream, flush=True)


def refusals(conf=None, secrets_files=None) -> list[str]:
    """Why the server must not serve (for the administrator at the server; may name paths, never a
    secret): a login setting not understood, an OIDC sign-in that cannot work (:func:`oidc_refusals`)."""
    conf = conf or settings()
    return list(conf.fatal) + oidc_refusals(conf, secrets_files)


def secrets_files(args=None) -> list:
    """The files Streamlit reads its secrets from: ``--secrets.files`` in ``args`` (the server's
    command line), else Streamlit's ``secrets.files`` when set (``.streamlit/config.toml``), else
    its defaults (:func:`scatd_core.oidc_setup.default_secrets_files`)."""
    from pathlib import Path

    from scatd_core.oidc_setup import default_secrets_files

    args = list(args or ())
    given = [a.split("=", 1)[1] for a in args if a.startswith("--secrets.files=")]
    given += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--secrets.files"]
    if given:
        return [Path(p) for p in given]
    try:
        from streamlit import config

        if config.is_manually_set("secrets.files"):
            return [Path(p) for p in config.get_option("secrets.files")]
    except Exception:  # no Streamlit configuration to read (tests, another layout): its defaults
        pass
    return default_secrets_files()


def oidc_refusals(conf=None, files=None) -> list[str]:
    """With ``auth.mode = "oidc"``: what keeps the sign-in from working (Authlib, the ``[auth]``
    keys of Streamlit's secrets), one line each; nothing in another mode, or once found complete."""
    global _OIDC_OK
    conf = conf or settings()
    if conf["auth_mode"] != "oidc" or (_OIDC_OK and files is None):
        return []
    from scatd_core.oidc_setup import setup_problems

    lines = setup_problems(secrets_files() if files is None else files)
    _OIDC_OK = not lines and files is None
    return lines


def folder_refusals(conf=None) -> list[str]:
    """The folders the server cannot write in (see :func:`scatd_core.config.unwritable_folders`)."""
    global _FOLDERS_OK
    if _FOLDERS_OK:
        return []
    lines = unwritable_folders(conf or settings())
    _FOLDERS_OK = not lines
    return lines


def page_refuses() -> bool:
    """In ``app.py``: show an administrator's message instead of the app when the server must not
    serve; ``True`` then (the caller stops). The paths and values stay in the server's log."""
    conf = settings()
    report(conf)
    why = list(conf.fatal)
    oidc = [] if why else oidc_refusals(conf)
    folders = [] if why or oidc else folder_refusals(conf)
    if not why and not oidc and not folders:
        return False
    import streamlit as st

    for line in why + oidc + folders:
        print(f"scATD Studio: will not serve: {line}", file=sys.stderr, flush=True)
    st.title("scATD Studio")
    if oidc:
        st.error("scATD Studio is not available: its sign-in (OpenID Connect) is not set up completely on this "
                 "server, so nobody could sign in. The administrator can see what is missing with `scatd doctor` "
                 "on the server (or in the server's log).", icon=":material/lock:")
        return True
    if folders:
        st.error("scATD Studio is not available: the server cannot store files in its data folder (it is not "
                 "writable by the account that runs the server), so no data could be uploaded or demo opened. "
                 "The administrator can see which folder and how to fix it with `scatd doctor` on the server "
                 "(or in the server's log).", icon=":material/folder_off:")
        return True
    st.error("scATD Studio is not available: the server's configuration has a login setting that is not "
             "understood, so the app will not open rather than run without the login it should have. The "
             "administrator can see what to fix with `scatd doctor` on the server (or in the server's log).",
             icon=":material/lock:")
    return True
