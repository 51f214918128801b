"""OIDC sign-in on a lab server (auth.mode = "oidc"): installed (Authlib) and configured (the [auth]
keys of Streamlit's secrets) before the server starts; a sign-in that ends on the server's side
(its age, Log out, an administrator's sign-out) although Streamlit's cookie lasts 30 days; a logout
that ends every session's download links; secrets kept out of git and of the Docker image."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECRET_VALUES = ("s3cr3t-cookie-value-0123456789abcdef", "s3cr3t-client-value")
COMPLETE = {
    "redirect_uri": "https://lab.example.org/oauth2callback",
    "cookie_secret": SECRET_VALUES[0],
    "client_id": "scatd-lab",
    "client_secret": SECRET_VALUES[1],
    "server_metadata_url": "https://idp.example.org/.well-known/openid-configuration",
}


def _toml(auth: dict) -> str:
    return "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in auth.items())


@pytest.fixture
def oidc_server(tmp_path, monkeypatch):
    """auth.mode = "oidc", the start folder and home folder in tmp_path (where Streamlit looks for
    .streamlit/secrets.toml, with the checkout's, which has none); returns the secrets file's path."""
    monkeypatch.setenv("SCATD_AUTH", "oidc")
    monkeypatch.setenv("SCATD_AUTH_ADMINS", "boss@lab.org")
    # who may sign in (helper 'oidcid' adds the allow-list; harmless where the keys do not exist)
    monkeypatch.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ".streamlit"
    folder.mkdir()
    assert not (REPO / ".streamlit" / "secrets.toml").exists()
    return folder / "secrets.toml"


@pytest.fixture
def authlib_installed(monkeypatch):
    """Authlib as Streamlit imports it (``authlib.integrations.starlette_client``), without installing it."""
    pkg = types.ModuleType("authlib")
    pkg.__version__ = "1.9.10"
    pkg.__path__ = []
    integrations = types.ModuleType("authlib.integrations")
    integrations.__path__ = []
    client = types.ModuleType("authlib.integrations.starlette_client")
    integrations.starlette_client = client
    pkg.integrations = integrations
    for name, module in (("authlib", pkg), ("authlib.integrations", integrations),
                         ("authlib.integrations.starlette_client", client)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def authlib_missing(monkeypatch):
    for name in ("authlib", "authlib.integrations", "authlib.integrations.starlette_client"):
        monkeypatch.setitem(sys.modules, name, None)  # `import authlib` raises ImportError


def _serve(monkeypatch, args=()) -> tuple[int, list]:
    import streamlit.web.cli

    from scatd_app import preflight, ui, uploads
    from scatd_app.__main__ import main as serve

    started = []
    monkeypatch.setattr(preflight, "_REPORTED", set())
    monkeypatch.setattr(streamlit.web.cli, "main", lambda *a, **k: started.append(a) or 0)
    monkeypatch.setattr(ui, "start_up", lambda **k: None)
    monkeypatch.setattr(uploads, "install", lambda: True)
    return serve(list(args)), started


def _login_items(capsys=None) -> list[dict]:
    from scatd_core.config import settings
    from scatd_core.doctor import _login

    return _login(settings())


# ------------------------------------------------------------------------------ installation, secrets


def test_without_authlib_the_oidc_server_does_not_start_and_doctor_fails(oidc_server, authlib_missing, monkeypatch,
                                                                        capsys):
    """QA: Authlib was not in requirements.txt; mode=oidc + "Log in" showed Streamlit's redacted
    error (StreamlitMissingAuthlibError) while `scatd doctor` said ok."""
    oidc_server.write_text(_toml(COMPLETE))
    rc, started = _serve(monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and not started
    assert "Authlib is not installed" in err and "pip install -r requirements.txt" in err
    items = [i for i in _login_items() if i["what"] == "Authlib"]
    assert [i["status"] for i in items] == ["problem"] and "Authlib>=1.3.2" in items[0]["detail"]
    requirements = (REPO / "requirements.txt").read_text().lower().splitlines()
    assert "authlib>=1.3.2" in requirements and any(line.startswith("httpx") for line in requirements)


def test_authlib_is_checked_only_in_oidc_mode(tmp_path, authlib_missing, monkeypatch, capsys):
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.chdir(tmp_path)
    rc, started = _serve(monkeypatch)
    assert rc == 0 and started and "Authlib" not in capsys.readouterr().err
    assert not [i for i in _login_items() if i["what"] in ("Authlib", "secrets")]


@pytest.mark.parametrize("case", ["no file", "no [auth]", "missing cookie_secret", "empty client_secret",
                                  "wrong callback"])
def test_an_incomplete_auth_section_stops_the_server_naming_the_key_never_a_value(
        case, oidc_server, authlib_installed, monkeypatch, capsys):
    """QA: mode=oidc without .streamlit/secrets.toml (or with keys missing) started silently and
    every page showed Streamlit's redacted error."""
    auth = dict(COMPLETE)
    expected = {"no file": "no [auth] section was found", "no [auth]": "no [auth] section was found",
                "missing cookie_secret": "[auth] cookie_secret is missing",
                "empty client_secret": "[auth] client_secret is empty",
                "wrong callback": "does not end in /oauth2callback"}[case]
    if case == "missing cookie_secret":
        del auth["cookie_secret"]
    elif case == "empty client_secret":
        auth["client_secret"] = ""
    elif case == "wrong callback":
        auth["redirect_uri"] = "https://lab.example.org/callback"
    if case == "no [auth]":
        oidc_server.write_text('[other]\nkey = "value"\n')
    elif case != "no file":
        oidc_server.write_text(_toml(auth))
    rc, started = _serve(monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and not started and expected in err and "will not start" in err
    assert not any(value in err for value in SECRET_VALUES)
    problems = [i["detail"] for i in _login_items() if i["status"] == "problem"]
    assert any(expected in p for p in problems) and not any(v in p for p in problems for v in SECRET_VALUES)


def test_a_complete_auth_section_starts_and_doctor_says_what_to_tighten(oidc_server, authlib_installed, monkeypatch,
                                                                       capsys):
    oidc_server.write_text(_toml(COMPLETE))
    oidc_server.chmod(0o644)
    rc, started = _serve(monkeypatch)
    assert rc == 0 and started and "auth]" not in capsys.readouterr().err
    items = _login_items()
    assert not [i for i in items if i["status"] == "problem"]
    assert any(i["what"] == "secrets" and i["status"] == "warning" and "chmod 600" in i["detail"] for i in items)
    assert any(i["what"] == "sign-in length" and "12 hour" in i["detail"] for i in items)
    oidc_server.chmod(0o600)
    assert not [i for i in _login_items() if i["what"] == "secrets" and i["status"] == "warning"]


def test_streamlit_run_shows_only_an_admin_message_when_the_sign_in_is_not_set_up(oidc_server, authlib_installed,
                                                                                 monkeypatch):
    """`streamlit run app.py` (no start-up check): the page says the sign-in is not set up, with no
    "Log in" button (which would end in Streamlit's error), no path and no key value."""
    from streamlit.testing.v1 import AppTest

    from scatd_app import preflight

    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setattr(preflight, "_OIDC_OK", False, raising=False)
    oidc_server.write_text(_toml({k: v for k, v in COMPLETE.items() if k != "client_id"}))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    shown = " ".join(e.value for e in at.error)
    assert "sign-in (OpenID Connect) is not set up" in shown and "scatd doctor" in shown
    assert str(oidc_server.parent) not in shown and not at.button and not at.exception


# ------------------------------------------------------------------------------ the sign-in's end


class _FakeUser(dict):
    """``st.user`` as Streamlit fills it from its cookie: the ID token's claims."""

    @property
    def is_logged_in(self) -> bool:
        return bool(self)

    def to_dict(self) -> dict:
        return dict(self)


def _claims(email="alice@lab.org", iat=None, nonce="n1", **more) -> dict:
    now = int(time.time())
    claims = {"iss": "https://idp.example.org", "sub": "sub-" + email, "aud": "scatd-lab", "email": email,
              "email_verified": True, "iat": now - 60 if iat is None else iat, "exp": now + 3600, "nonce": nonce}
    claims.update(more)
    return {k: v for k, v in claims.items() if v is not None}


def _browser_tab(monkeypatch, claims: dict, session_id: str = "tab"):
    """One session of the app (``st`` in scatd_app.auth): its own session state, ``st.user`` and
    Streamlit session id; ``logouts`` counts st.logout() calls."""
    from types import SimpleNamespace

    from scatd_app import auth, uploads

    tab = SimpleNamespace(session_state={}, user=_FakeUser(claims), query_params={}, logouts=[],
                          context=SimpleNamespace(ip_address="10.0.0.7"))
    tab.logout = lambda: tab.logouts.append(1)
    tab.login = lambda *a: None

    def enter():
        monkeypatch.setattr(auth, "st", tab)
        monkeypatch.setattr(uploads, "current_session_id", lambda: session_id)
        return tab

    tab.enter = enter
    return tab


def test_a_sign_in_older_than_max_login_hours_is_refused_with_a_message(oidc_server, monkeypatch, caplog):
    """QA: an expired ID token still opened the app (Streamlit's cookie lasts 30 days)."""
    from scatd_app import auth

    monkeypatch.setenv("SCATD_AUTH_MAX_LOGIN_HOURS", "2")
    fresh = _browser_tab(monkeypatch, _claims()).enter()
    user = auth._resolve()
    assert user is not None and user.name == "alice@lab.org" and user.admin is False
    old = _browser_tab(monkeypatch, _claims(iat=int(time.time()) - 3 * 3600, nonce="n0")).enter()
    with caplog.at_level("WARNING", logger="scatd.auth"):
        assert auth._resolve() is None
    assert "expired" in old.session_state[auth.LOGGED_OUT] and "2 hours" in old.session_state[auth.LOGGED_OUT]
    assert auth.USER not in old.session_state and "the sign-in is expired" in caplog.text
    assert "s3cr3t" not in caplog.text and fresh.session_state[auth.USER].name == "alice@lab.org"


def test_a_sign_in_without_iat_lasts_from_when_the_server_first_saw_it(oidc_server, monkeypatch):
    from scatd_app import auth
    from scatd_core import logins

    monkeypatch.setenv("SCATD_AUTH_MAX_LOGIN_HOURS", "1")
    claims = _claims(iat=None)
    del claims["iat"]
    _browser_tab(monkeypatch, claims).enter()
    assert auth._resolve() is not None
    record = json.loads(logins.records_file().read_text())
    assert list(record["seen"].values())[0] <= time.time()
    later = time.time() + 2 * 3600
    assert logins.refusal(claims, "alice@lab.org", 1, now=later)[0] == logins.EXPIRED


def test_log_out_ends_the_sign_in_in_every_tab_and_for_a_copied_cookie(oidc_server, monkeypatch, caplog):
    """QA: after Log out, a copy of the `_streamlit_user` cookie (or another tab) still opened the
    app as that user. A new sign-in of the same person is accepted. The replayed cookie is logged as
    refused only, never first as a login (QA: the journal showed a login, then the refusal)."""
    import logging

    from scatd_app import auth

    caplog.set_level(logging.INFO, logger="scatd.auth")

    claims = _claims()
    first = _browser_tab(monkeypatch, claims, "tab-1").enter()
    assert auth._resolve() is not None
    other = _browser_tab(monkeypatch, claims, "tab-2").enter()
    assert auth._resolve() is not None
    first.enter()
    auth.logout()
    assert first.logouts == [1] and auth.USER not in first.session_state
    other.enter()
    assert auth._resolve() is None and "logged out" in other.session_state[auth.LOGGED_OUT]
    caplog.clear()
    copied = _browser_tab(monkeypatch, dict(claims), "tab-3").enter()  # the cookie, replayed elsewhere
    assert auth._resolve() is None and auth.LOGGED_OUT in copied.session_state
    said = [r.getMessage() for r in caplog.records if r.name == "scatd.auth"]
    assert said and all("logged in" not in m for m in said) and any("login refused" in m for m in said), said
    again = _browser_tab(monkeypatch, _claims(nonce="n2", iat=int(time.time())), "tab-4").enter()
    assert auth._resolve() is not None and again.session_state[auth.USER].name == "alice@lab.org"
    from scatd_core import logins

    path = logins.records_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "alice" not in path.read_text() and "n1" not in path.read_text()  # hashes only


def test_an_administrator_signs_a_person_out_everywhere(oidc_server, monkeypatch, capsys):
    from scatd_app import auth
    from scatd_core.cli import main

    before = _browser_tab(monkeypatch, _claims()).enter()
    assert auth._resolve() is not None
    assert main(["users", "signout", "Alice@Lab.org"]) == 0
    out = capsys.readouterr()
    assert "Signed Alice@Lab.org out everywhere" in out.out and "sign in again" in out.err
    assert auth._resolve() is None and "administrator signed you out" in before.session_state[auth.LOGGED_OUT]
    _browser_tab(monkeypatch, _claims(email="bob@lab.org")).enter()
    assert auth._resolve() is not None  # only alice
    _browser_tab(monkeypatch, _claims(nonce="n9", iat=int(time.time()))).enter()
    assert auth._resolve() is not None  # her next sign-in (even in the same second: iat is in whole seconds)
    monkeypatch.setenv("SCATD_AUTH", "password")
    assert main(["users", "signout", "alice@lab.org"]) != 0
    assert "does not sign in with OIDC" in capsys.readouterr().err


def test_an_unreadable_record_refuses_sign_ins_and_doctor_says_so(oidc_server, authlib_installed, monkeypatch):
    from scatd_app import auth
    from scatd_core import logins

    logins.records_file().write_text("{not json")
    tab = _browser_tab(monkeypatch, _claims()).enter()
    assert auth._resolve() is None and "cannot check sign-ins" in tab.session_state[auth.LOGGED_OUT]
    item = [i for i in _login_items() if i["what"] == "ended sign-ins"]
    assert item[0]["status"] == "problem" and "not valid JSON" in item[0]["detail"]


def test_old_records_are_pruned(tmp_path):
    from scatd_core import logins

    now = time.time()
    logins.revoke(_claims(nonce="old"), now=now - logins.KEEP_SECONDS - 10, home=tmp_path)
    logins.revoke(_claims(nonce="new"), now=now, home=tmp_path)
    record = json.loads(logins.records_file(tmp_path).read_text())
    assert list(record["revoked"]) == [logins.login_id(_claims(nonce="new"))]


def test_records_are_kept_as_long_as_streamlit_accepts_a_cookie_and_every_section_is_pruned(tmp_path):
    """Guard: <home>/oidc-logins.json is pruned on each write (under its lock), but never of an entry
    whose cookie Streamlit would still accept (30 days, and a day's grace when it decodes it): a
    pruned "logged out" would let a copied cookie in again."""
    from streamlit.web.server.starlette import starlette_app_utils

    from scatd_core import logins

    accepted = starlette_app_utils._DEFAULT_SIGNED_VALUE_MAX_AGE_DAYS * 86400
    assert logins.KEEP_SECONDS >= accepted
    now = time.time()
    old = now - logins.KEEP_SECONDS - 10
    logins.revoke(_claims(nonce="kept"), now=now - accepted, home=tmp_path)
    logins.sign_out_everywhere("old@lab.org", now=old, home=tmp_path)
    logins.refusal({"sub": "no-iat", "nonce": "x"}, "someone@lab.org", 12, now=old, home=tmp_path)  # "seen" then
    before = json.loads(logins.records_file(tmp_path).read_text())
    assert len(before["seen"]) == 1 and len(before["not_before"]) == 1
    logins.revoke(_claims(nonce="new"), now=now, home=tmp_path)
    record = json.loads(logins.records_file(tmp_path).read_text())
    assert sorted(record["revoked"]) == sorted(logins.login_id(_claims(nonce=n)) for n in ("kept", "new"))
    assert record["not_before"] == {} and record["seen"] == {}


# ------------------------------------------------------------------------------ logout and download links


def test_log_out_ends_the_download_links_of_every_session_of_that_login(oidc_server, monkeypatch):
    """QA: Log out dropped only the current session's media: a link made in another tab of the same
    login stayed served. Now every session of that login name loses its links at once; another
    user's stay."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    from scatd_app import auth, uploads

    assert uploads.install()
    manager = MediaFileManager(MemoryMediaFileStorage("/media"))
    monkeypatch.setattr(uploads, "_media_manager", lambda: manager)
    who = {"sid": ""}
    monkeypatch.setattr("streamlit.runtime.media_file_manager._get_session_id", lambda: who["sid"])
    claims = _claims()
    tabs = {sid: _browser_tab(monkeypatch, claims if sid != "bob-tab" else _claims("bob@lab.org"), sid)
            for sid in ("alice-tab-1", "alice-tab-2", "bob-tab")}
    links = {}
    try:
        for sid, tab in tabs.items():
            tab.enter()
            assert auth.resolve() is not None
            who["sid"] = sid
            links[sid] = manager.add(f"{sid} predictions".encode(), "text/csv", "1.2", file_name="p.csv",
                                     is_for_static_download=True)
        assert all(uploads.media_servable(url) for url in links.values())
        tabs["alice-tab-1"].enter()
        auth.logout()
        assert not uploads.media_servable(links["alice-tab-2"])  # the other tab's link is dead
        assert manager.read_file(links["alice-tab-2"].rsplit("/", 1)[-1]) is None  # deleted, not hidden
        assert not uploads.is_allowed("alice-tab-2") and uploads.media_servable(links["bob-tab"])
    finally:
        for sid in tabs:
            uploads.disallow(sid)


# ------------------------------------------------------------------------------ secrets out of git and images


def test_the_secrets_file_stays_out_of_git_and_of_the_docker_images():
    """QA: .gitignore lacked .streamlit/secrets.toml, and the Dockerfiles' `COPY .streamlit` would bake
    the client secret and the cookie secret into the image."""
    import re

    assert ".streamlit/secrets.toml" in (REPO / ".gitignore").read_text().splitlines()
    assert ".streamlit/secrets.toml" in (REPO / ".dockerignore").read_text().splitlines()
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (REPO / "deploy" / name).read_text()
        copied = re.findall(r"^COPY\s+(.+)\s+\S+\s*$", text, flags=re.M)
        assert not any(part in (".streamlit", ".streamlit/", ".") for line in copied for part in line.split()), name
        assert "secrets.toml" in text  # says how to mount it
    admin = (REPO / "docs" / "admin.md").read_text()
    for said in ("/opt/scatd-studio/.streamlit/secrets.toml", "chmod 600", "/oauth2callback", "Authlib",
                 "30 days", "max_login_hours", "scatd users signout"):
        assert said in admin, said


def test_a_sign_in_issued_in_the_future_still_ends_at_a_sign_out(oidc_server):
    """QA: an ID token whose iat was ahead of the server's clock (the provider's clock fast) outlasted
    `scatd users signout`: it counts from when the server first saw it instead."""
    from scatd_core import logins

    now = time.time()
    ahead = _claims(email="zed@lab.org", iat=int(now + 600), nonce="z1")
    assert logins.refusal(ahead, "zed@lab.org", 12, now=now) is None  # first seen now
    logins.sign_out_everywhere("zed@lab.org", now=now + 5)
    assert logins.refusal(ahead, "zed@lab.org", 12, now=now + 10)[0] == logins.SIGNED_OUT
    later = _claims(email="zed@lab.org", iat=int(now + 900), nonce="z2")  # a new sign-in after the sign-out
    assert logins.refusal(later, "zed@lab.org", 12, now=now + 20) is None


# ------------------------------------------------------------------------------ behind a reverse proxy


def test_the_login_log_names_the_client_a_trusted_proxy_forwards_never_an_untrusted_header(
        oidc_server, monkeypatch, caplog):
    """QA: behind nginx on 127.0.0.1 the log said "logged in with OIDC from unknown" (Streamlit's
    ip_address is None for a loopback peer). The proxy's X-Forwarded-For / X-Real-IP is used only
    when server.trusted_proxies names the connection's address."""
    import logging

    import streamlit.runtime.context as st_context

    from scatd_app import auth
    from scatd_core.client_address import client_address

    caplog.set_level(logging.INFO, logger="scatd.auth")
    peer = {"ip": "127.0.0.1"}
    monkeypatch.setattr(st_context, "_get_client_context", lambda: types.SimpleNamespace(remote_ip=peer["ip"]))
    monkeypatch.setenv("SCATD_TRUSTED_PROXIES", "127.0.0.1")

    def sign_in(email, headers):
        tab = _browser_tab(monkeypatch, _claims(email=email), email).enter()
        tab.context = types.SimpleNamespace(ip_address=None, headers=headers)
        caplog.clear()
        assert auth._resolve() is not None
        return " ".join(r.getMessage() for r in caplog.records if r.name == "scatd.auth")

    assert "from 10.0.0.9" in sign_in("alice@lab.org", {"X-Forwarded-For": "10.0.0.9"})
    assert "from 10.0.0.8" in sign_in("bob@lab.org", {"X-Real-IP": "10.0.0.8"})
    # a client's own X-Forwarded-For comes before the address nginx appends: never believed
    assert "from 10.0.0.5" in sign_in("carol@lab.org", {"X-Forwarded-For": "6.6.6.6, 10.0.0.5"})
    peer["ip"] = "10.0.0.4"  # a direct connection, not from the proxy: its header is not believed
    assert "from 10.0.0.4" in sign_in("dan@lab.org", {"X-Forwarded-For": "6.6.6.6"})
    monkeypatch.delenv("SCATD_TRUSTED_PROXIES")
    peer["ip"] = "127.0.0.1"  # no trusted proxy set: the connection's address, even on loopback
    assert "from 127.0.0.1" in sign_in("erin@lab.org", {"X-Forwarded-For": "10.0.0.9"})
    assert client_address("10.0.0.4", {"X-Forwarded-For": "1.2.3.4"}, ["10.0.0.0/24"]) == "1.2.3.4"
    assert client_address("127.0.0.1", {"X-Forwarded-For": "not-an-address"}, ["127.0.0.1"]) == "127.0.0.1"
    assert client_address(None, {}, ["127.0.0.1"]) == "unknown"


# ------------------------------------------------------------------------------ across the sign-in's redirects


def _in_browser(tab, cookie: str):
    """``tab`` in one browser: Streamlit's XSRF cookie, which its login and logout redirects keep."""
    tab.context = types.SimpleNamespace(ip_address="10.0.0.7", headers={}, cookies={"_streamlit_xsrf": cookie})
    return tab


def _login_page_text(tab) -> tuple[str, dict]:
    """What the login page draws in ``tab`` (the texts) and its buttons' callbacks by label."""
    from scatd_app import auth

    shown, clicks = [], {}
    for name in ("title", "error", "warning", "info", "markdown", "caption", "success"):
        setattr(tab, name, lambda body="", *a, **k: shown.append(str(body)))

    def button(label, *a, on_click=None, **k):
        clicks[label] = on_click
        return False

    tab.button = button
    auth.login_page()
    return " ".join(shown), clicks


def test_after_an_oidc_log_out_the_login_page_says_you_have_logged_out_once(oidc_server, monkeypatch):
    """QA: after "Log out" with OIDC the login page said nothing (Streamlit's logout sends the
    browser to its logout address and back, in a new session)."""
    from scatd_app import auth

    getattr(auth, "_notes", types.SimpleNamespace(clear=lambda: None)).clear()  # one per server
    said = "You have logged out."
    tab = _in_browser(_browser_tab(monkeypatch, _claims(), "tab-1"), "browser-1").enter()
    assert auth._resolve() is not None
    auth.logout()
    assert tab.logouts == [1]
    tab.user = _FakeUser()  # st.logout() empties st.user; this session draws once more before the browser leaves
    assert auth._resolve() is None and said in _login_page_text(tab)[0]
    elsewhere = _in_browser(_browser_tab(monkeypatch, {}, "tab-x"), "browser-2").enter()  # another browser
    assert auth._resolve() is None and said not in _login_page_text(elsewhere)[0]
    back = _in_browser(_browser_tab(monkeypatch, {}, "tab-2"), "browser-1").enter()  # where the logout returns
    assert auth._resolve() is None
    assert said in _login_page_text(back)[0]
    assert said not in _login_page_text(back)[0]  # once


def test_the_page_asked_for_before_an_oidc_sign_in_is_opened_after_it_and_only_an_app_page(oidc_server,
                                                                                            monkeypatch):
    """QA: a bookmarked /cells led to the sign-in, which came back to the Data page (Streamlit's
    callback returns every browser to the home page, in a new session)."""
    from scatd_app import auth

    auth._notes.clear()

    def sign_in(asked: str, cookie: str, back_in: str = ""):
        before = _in_browser(_browser_tab(monkeypatch, {}, f"{cookie}-before"), cookie).enter()
        auth.asked_for(asked)  # app.py: the address of the page asked for
        assert auth._resolve() is None
        logins = []
        before.login = lambda *a: logins.append(a)
        _login_page_text(before)[1]["Log in"]()  # the button's callback
        assert logins == [()]
        _in_browser(_browser_tab(monkeypatch, _claims(nonce=cookie), f"{cookie}-after"), back_in or cookie).enter()
        assert auth._resolve() is not None
        return auth.page_after_sign_in()

    assert sign_in("cells", "browser-3") == "app_pages/4_Cells.py"
    assert auth.page_after_sign_in() is None  # once: later clicks stay where they are
    assert sign_in("train", "browser-4") == "app_pages/7_Train.py"
    assert sign_in("cells", "browser-6", back_in="browser-7") is None  # another browser's page is not its own
    for asked in ("https://evil.example.org/", "//evil.example.org", "../etc", "", "Cells "):  # no open redirect
        assert sign_in(asked, "browser-5") is None, asked


def test_a_note_to_a_browser_is_read_once_within_its_time_and_the_notes_stay_bounded():
    from scatd_core.browser_notes import BrowserNotes

    notes = BrowserNotes(ttl=60, max_browsers=3)
    notes.put("b1", "page", "cells", now=1000)
    assert notes.take("b1", "page", now=1061) is None  # too late: a sign-in of another day goes home
    notes.put("b1", "page", "cells", now=1000)
    assert notes.take("b2", "page", now=1001) is None and notes.take("b1", "page", now=1001) == "cells"
    assert notes.take("b1", "page", now=1002) is None  # once
    for i in range(5):
        notes.put(f"x{i}", "page", "data", now=2000 + i)
    assert len(notes._notes) == 3 and notes.take("x0", "page", now=2005) is None  # the oldest went first
    notes.put(None, "page", "data")  # no browser key (no XSRF cookie): nothing kept
    assert notes.take(None, "page") is None
