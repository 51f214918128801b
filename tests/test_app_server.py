"""The app on a shared lab server (AppTest): login, per-session isolation, resuming after a reload,
escaped user strings, the job queue."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from _app_helpers import BUNDLE_FOLDER, make_bundle, make_dataset, trained_library  # noqa: F401 (fixture)
from test_app_pages import APP, goto, h5ad_bytes, ok, run_prediction, text, upload
from scatd_app import state, ui
from scatd_core.users import User


@pytest.fixture(autouse=True)
def _no_component_scan(monkeypatch):
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])


@pytest.fixture
def with_library(trained_library, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(trained_library))
    return trained_library


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    return at

def _upload_refused_for_memory(monkeypatch, n_cells: int = 40) -> tuple[AppTest, bytes]:
    """A session whose CSV upload of ``n_cells`` cells (the bytes returned too) was refused for memory
    (nothing free under server.memory_mb): the file kept, Try again and Forget it offered."""
    import pandas as pd

    from scatd_core import _memory

    adata = make_dataset(n_cells, seed=3)
    table = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names).to_csv().encode()
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 1000 << 20)  # nothing free
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 << 20)
    at = _app()
    goto(at, "1_Data")
    at.file_uploader[0].upload("cells.csv", table)
    at.run()
    assert "Your file is kept" in text(at.error)
    return at, table



def test_password_login_gates_every_page_and_throttles(with_library, tmp_path, monkeypatch):
    from scatd_core import users

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_AUTH_MAX_FAILURES", "3")
    monkeypatch.setenv("SCATD_AUTH_LOCKOUT_MINUTES", "1")
    from scatd_app import auth

    auth._throttle.clear()  # one per server, made with the settings of its first login (an earlier test's)
    at = _app()
    assert "no user account exists" in text(at.warning) and not at.exception
    users.add_user("alice", "a long enough password", admin=False)
    at = _app()
    assert "3 failed attempts within 1 minute lock an account or address until 1 minute after the first of them." \
        in text(at.caption)  # not "1 minutes"
    assert [t.label for t in at.text_input] == ["User name", "Password"] and not at.sidebar.markdown
    for _ in range(3):
        at.text_input(key="login_name").set_value("alice")
        at.text_input(key="login_password").set_value("wrong password!")
        at.get("form_submit_button")[0].click()
        at.run()
        assert "Wrong user name or password" in text(at.error)
    at.text_input(key="login_password").set_value("a long enough password")
    at.get("form_submit_button")[0].click()
    at.run()
    assert "Too many failed attempts" in text(at.error)  # even the right password, while locked out

    auth._throttle.clear()  # the lock-out lasts auth.lockout_minutes; a new server starts afresh
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.text_input(key="login_name").set_value("alice")
    at.text_input(key="login_password").set_value("a long enough password")
    at.get("form_submit_button")[0].click()
    at.run()
    ok(at)
    assert "Logged in as alice" in text(at.caption) and "Try the demo" in [b.label for b in at.button]
    goto(at, "8_Models")
    assert "Remove a model" not in [h.value for h in at.subheader]  # only administrators remove models
    assert at.checkbox(key="import_replace").disabled


def test_a_broken_users_file_stops_the_login_without_naming_its_path(tmp_path, monkeypatch):
    users_file = tmp_path / "secret_place" / "users.toml"
    users_file.parent.mkdir()
    users_file.write_text("this is [not toml")
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(users_file))
    at = _app()
    assert "The login cannot work" in text(at.error) and "scatd doctor" in text(at.error)
    assert "secret_place" not in text(at.error) and not at.text_input and not at.exception


def test_a_login_setting_that_is_not_understood_shows_only_an_admin_message(tmp_path, monkeypatch):
    """`streamlit run app.py` with `[auth] mode = "passwd"`: no page, no login form, no user data;
    an administrator's message without the configuration's path."""
    secret = tmp_path / "secret_place"
    secret.mkdir()
    (secret / "config.toml").write_text('[auth]\nmode = "passwd"\n')
    monkeypatch.setenv("SCATD_CONFIG", str(secret / "config.toml"))
    monkeypatch.delenv("SCATD_AUTH", raising=False)
    at = _app()
    assert "login setting that is not understood" in text(at.error) and "scatd doctor" in text(at.error)
    assert "secret_place" not in text(at.error) and "passwd" not in text(at.error)
    assert not at.text_input and not at.button and not at.sidebar.markdown and not at.exception


def test_a_data_folder_the_server_cannot_write_shows_only_an_admin_message(tmp_path, monkeypatch):
    from scatd_app import preflight

    (tmp_path / "secret_place").write_text("a file, not a folder")
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "secret_place" / "work"))
    monkeypatch.setattr(preflight, "_FOLDERS_OK", False, raising=False)
    at = _app()
    assert "cannot store files" in text(at.error) and "scatd doctor" in text(at.error)
    assert "secret_place" not in text(at.error) and not at.button and not at.exception


@pytest.fixture
def oidc(monkeypatch):
    """``auth.mode = "oidc"`` with admin@lab.org as administrator and no allow-list (each test sets
    its own), no configuration file."""
    monkeypatch.setenv("SCATD_AUTH", "oidc")
    monkeypatch.setenv("SCATD_AUTH_ADMINS", "admin@lab.org")
    for name in ("SCATD_CONFIG", "SCATD_AUTH_ALLOWED_EMAILS", "SCATD_AUTH_ALLOWED_DOMAINS", "SCATD_AUTH_PROVIDER_NAME"):
        monkeypatch.delenv(name, raising=False)
    from scatd_app import preflight

    monkeypatch.setattr(preflight, "_OIDC_OK", True)  # Authlib and the [auth] secrets: tests/test_oidc_deploy.py
    return monkeypatch


def _read(elements) -> str:
    """The elements' text as the person reads it (without :func:`scatd_app.ui.md`'s escapes)."""
    return text(elements).replace("\\", "").replace(ui.LINK_BREAK, "")


def _oidc_app(**claims) -> AppTest:
    """The app as a browser signed in at the identity provider with these ID-token claims sees it
    (``is_logged_in=False``: not signed in)."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.user = {"is_logged_in": True, **claims}
    at.run()
    return ok(at)


def test_an_oidc_identity_is_a_verified_email_and_a_display_name_is_never_an_admin(oidc):
    from scatd_app.auth import oidc_user
    from scatd_core.config import settings

    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org")
    conf = settings()
    assert oidc_user({"email": "admin@lab.org", "email_verified": True}, conf) == User("admin@lab.org", True)
    assert oidc_user({"email": "amy@lab.org", "email_verified": True, "name": "admin@lab.org"}, conf).admin is False
    for claim in ({}, {"email_verified": False}, {"email_verified": "FALSE"}, {"email_verified": "false"},
                  {"email_verified": 1}, {"email_verified": "yes"}, {"email_verified": None}):
        # an address the provider does not vouch for is no identity: refused, never admin@lab.org
        assert oidc_user({"email": "admin@lab.org", "sub": "abc123", **claim}, conf) is None, claim
    assert oidc_user({"email": "admin@lab.org", "email_verified": "True", "sub": "abc123"}, conf).admin
    assert oidc_user({"name": "admin@lab.org", "sub": "xyz"}, conf) is None  # no e-mail: never the display name
    oidc.setenv("SCATD_AUTH_ALLOWED_EMAILS", "oidc:xyz")  # a subject id is admitted only by name
    assert oidc_user({"name": "admin@lab.org", "sub": "xyz"}, settings()) == User("oidc:xyz", False)
    assert oidc_user({"sub": "XYZ"}, settings()) is None  # subject ids are compared exactly


def test_oidc_sign_in_fails_closed_without_an_allow_list(oidc, caplog):
    """QA: with auth.mode = "oidc" and no allow-list, anyone the identity provider accepted had the
    whole app (against Google: anyone in the world). Now nobody gets in until the administrator says
    who may; allowed_domains = ["*"] is how to let everyone in, and it has to be written."""
    import logging

    caplog.set_level(logging.INFO, logger="scatd.auth")
    at = _oidc_app(email="alice@lab.org", email_verified=True, sub="a1")
    assert "Nobody can sign in to this server yet" in _read(at.error) and "admin@lab.org" in _read(at.error)
    assert "Logged in as" not in _read(at.caption) and [b.label for b in at.button] == ["Log out"]
    refused = [r.getMessage() for r in caplog.records if r.name == "scatd.auth"]
    assert len(refused) == 1 and refused[0].startswith("login refused: OIDC identity 'alice@lab.org' from ")
    assert "neither auth.allowed_emails nor auth.allowed_domains is set" in refused[0]

    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org")
    at = _oidc_app(email="mallory@evil.org", email_verified=True, sub="m1")
    assert "This account (mallory@evil.org) is not allowed on this server" in _read(at.error)
    assert "Ask an administrator of this server (admin@lab.org)" in _read(at.error)
    assert "Logged in as" not in _read(at.caption) and not at.file_uploader
    alice = _oidc_app(email="alice@lab.org", email_verified=True, sub="a1")
    assert "Logged in as alice@lab.org" in _read(alice.caption) and "(admin)" not in _read(alice.caption)
    said = [r.getMessage() for r in caplog.records if r.name == "scatd.auth"]
    assert "not in auth.allowed_emails and its domain not in auth.allowed_domains" in said[-2]
    assert said[-1].startswith("login: user 'alice@lab.org' logged in with OIDC from ")
    alice.run()
    assert len([r for r in caplog.records if r.name == "scatd.auth"]) == len(said)  # once per sign-in, not per click

    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "*")
    at = _oidc_app(email="mallory@evil.org", email_verified=True, sub="m1")
    assert "Logged in as mallory@evil.org" in _read(at.caption)

    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "uni.edu")  # taken off the list while signed in: out at the next click
    alice.session_state[state.DATA_NAME] = "alice_patient.h5ad"
    alice.run()
    assert "This account (alice@lab.org) is not allowed" in _read(alice.error) and "Logged in as" not in _read(
        alice.caption)
    assert state.DATA_NAME not in alice.session_state


def test_log_out_on_the_refusal_of_an_oidc_identity_says_you_have_logged_out(oidc, monkeypatch):
    """QA: "Log out" on the screen of an identity this server refuses led to the bare login page, with
    no word: the person could not tell whether anything happened. As after the app's own Log out, the
    login page says so, in that tab and on the page Streamlit's logout returns the browser to (once),
    and what to do next."""
    from scatd_app import auth

    auth._notes.clear()  # one per server
    monkeypatch.setattr(auth, "_browser", lambda: "browser-1")  # one browser (Streamlit's XSRF cookie)
    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org")
    at = _oidc_app(email="mallory@evil.org", email_verified=True, sub="m1")
    assert "This account (mallory@evil.org) is not allowed on this server" in _read(at.error)
    at.button(key="btn_oidc_refused_logout").click().run()
    ok(at)
    said = "You have logged out. You can now log in with another account."
    assert said in _read(at.warning), _read(at.warning)
    assert "not allowed" not in _read(at.error) and [b.label for b in at.button] == ["Log in"]
    back = _oidc_app(is_logged_in=False)  # where Streamlit's logout returns the browser: a new session
    assert said in _read(back.warning), _read(back.warning)
    back.run()
    assert "logged out" not in _read(back.warning)  # said once

    oidc.delenv("SCATD_AUTH_ALLOWED_DOMAINS")  # nobody may sign in: another account would not help either
    at = _oidc_app(email="alice@lab.org", email_verified=True, sub="a1")
    at.button(key="btn_oidc_refused_logout").click().run()
    ok(at)
    assert "You have logged out." in _read(at.warning) and "another account" not in _read(at.warning)
    assert "Nobody can sign in yet" in _read(at.warning)


def test_an_unconfirmed_email_never_signs_in_and_case_does_not_make_another_user(oidc):
    """QA (nOAuth): an account claiming admin@lab.org without email_verified, or with "FALSE", came
    in as the administrator; ADMIN@lab.org was not the admin and Alice@ and alice@ were two users."""
    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org")
    for claim in ({}, {"email_verified": "FALSE"}):
        at = _oidc_app(email="admin@lab.org", sub="evil", **claim)
        assert "did not confirm that the e-mail address admin@lab.org belongs to you" in _read(at.error)
        assert "Logged in as" not in _read(at.caption)
    at = _oidc_app(email="ADMIN@Lab.org", email_verified="TRUE", sub="boss")
    assert "Logged in as admin@lab.org (admin)" in _read(at.caption)
    at = _oidc_app(email="Alice@LAB.org", email_verified=True, sub="a1")
    assert "Logged in as alice@lab.org" in _read(at.caption)  # one user, alice@lab.org's saved data


def test_the_oidc_login_page_names_the_provider_and_who_may_sign_in(oidc):
    oidc.setenv("SCATD_AUTH_PROVIDER_NAME", "Lab Sign-In")
    oidc.setenv("SCATD_AUTH_ALLOWED_DOMAINS", "lab.org,uni.edu")
    oidc.setenv("SCATD_AUTH_ALLOWED_EMAILS", "guest@gmail.com")
    at = _oidc_app(is_logged_in=False)
    assert "Log in with your **Lab Sign-In** account." in _read(at.markdown)
    assert [b.label for b in at.button] == ["Log in"]
    assert ("confirmed e-mail address ending in @lab.org, @uni.edu may sign in, and a few others"
            in _read(at.caption))
    assert "guest@gmail.com" not in _read(at.caption)  # single addresses are never shown to strangers
    oidc.delenv("SCATD_AUTH_ALLOWED_DOMAINS")
    oidc.delenv("SCATD_AUTH_ALLOWED_EMAILS")
    at = _oidc_app(is_logged_in=False)
    assert "Nobody can sign in yet" in _read(at.warning) and not at.button


def _logged_in(name: str, password: str) -> AppTest:
    at = _app()
    at.text_input(key="login_name").set_value(name)
    at.text_input(key="login_password").set_value(password)
    at.get("form_submit_button")[0].click()
    at.run()
    ok(at)
    return at


def test_a_page_asked_for_before_the_login_shows_the_login_then_that_page(tmp_path, monkeypatch):
    """A reload of /data?s=... before a login: every page's address shows the login form (not
    "Page not found"), and the login leads to the page asked for, not to the Overview."""
    from scatd_core import users

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("alice", "a long enough password", admin=False)
    at = _app()
    before = {info.get("url_pathname") for info in at._registered_pages.values()}
    assert {Path(p).stem.split("_", 1)[1].lower() for p, *_ in ui.ANALYSIS_PAGES + ui.MODEL_PAGES} <= before
    # the address /data, as a reload asks for it (AppTest's switch_page matches only script files)
    at._page_hash = next(h for h, info in at._registered_pages.items() if info.get("url_pathname") == "data")
    at.run()
    ok(at)
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    at._page_hash = ""  # from now on the page the server settled on, as a browser keeps it
    at.text_input(key="login_name").set_value("alice")
    at.text_input(key="login_password").set_value("a long enough password")
    at.get("form_submit_button")[0].click()
    at.run()
    ok(at)
    assert at.file_uploader, "the Data page (its upload) after the login"
    assert "Which cells of a tumour" not in "".join(str(m.value) for m in at.markdown)

def test_a_removed_demoted_or_new_password_user_loses_the_live_session(with_library, tmp_path, monkeypatch):
    """The users file is checked on every run: a removed account or a replaced password logs the
    session out (forgetting its data), a changed role takes effect at once."""
    from scatd_core import users

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("bob", "bob's long password", admin=True)
    users.add_user("carol", "carol's long password", admin=True)
    bob, carol = _logged_in("bob", "bob's long password"), _logged_in("carol", "carol's long password")
    goto(bob, "8_Models")
    assert "Remove a model" in [h.value for h in bob.subheader] and "Logged in as bob (admin)" in text(bob.caption)
    bob.session_state[state.DATA_NAME] = "bob_patient.h5ad"

    users.remove_user("bob")
    bob.run()
    ok(bob)
    assert "your account was removed" in text(bob.warning) and "Logged in as" not in text(bob.caption)
    assert [t.label for t in bob.text_input] == ["User name", "Password"]
    assert state.DATA_NAME not in bob.session_state  # the next login in this tab sees nothing of bob's

    entries = users.load_users()
    entries["carol"]["admin"] = False  # a role changed by hand
    users._save(entries, tmp_path / "users.toml")
    goto(carol, "8_Models")
    assert "Logged in as carol" in text(carol.caption) and "(admin)" not in text(carol.caption)
    assert "Remove a model" not in [h.value for h in carol.subheader]

    users.add_user("carol", "a new long password", replace=True)
    carol.run()
    assert "your password was changed" in text(carol.warning) and "Logged in as" not in text(carol.caption)
    carol = _logged_in("carol", "a new long password")
    assert "Logged in as carol" in text(carol.caption)
    carol.session_state[state.DATA_NAME] = "carol_patient.h5ad"
    carol.button(key="btn_logout").click().run()
    assert [t.label for t in carol.text_input] == ["User name", "Password"]
    assert "You have logged out." in text(carol.warning)  # said, as after an OIDC log-out
    assert state.DATA_NAME not in carol.session_state  # logging out forgets the session's data too


def test_two_sessions_with_the_same_bytes_share_nothing(with_library):
    data = h5ad_bytes(make_dataset(60, seed=3))
    first, second = _app(), _app()
    upload(first, "patient_A.h5ad", data)
    upload(second, "patient_B.h5ad", data)
    run_prediction(first)
    assert first.session_state[state.DATA_NAME] == "patient_A.h5ad"
    assert second.session_state[state.DATA_NAME] == "patient_B.h5ad"
    assert first.session_state[state.ADATA] is not second.session_state[state.ADATA]
    assert state.PREDICTION not in second.session_state  # no result leaks across
    goto(second, "4_Cells")
    # no result of the first session's: the Cells page asks for (or points to) the second's own prediction
    # (started ahead for its own data and model, perhaps done by now)
    said = text(second.info)
    assert any(w in said for w in ("Run a prediction first", "computing in the background",
                                   "computed in the background")), said
    assert state.PREDICTION not in second.session_state and not second.get("plotly_chart")
    assert "patient_A" not in "".join(str(m.value) for m in second.markdown)
    assert first.session_state["session_id"] != second.session_state["session_id"]


def test_a_reload_resumes_the_session_and_a_lost_one_says_so(with_library):
    at = _app()
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(50, seed=4)))
    run_prediction(at)
    # what the user stopped stays stopped after a reload: not started again on their behalf
    at.session_state[state.AHEAD_DECLINED], at.session_state[state.UMAP_DECLINED] = "stopped-run", "stopped-umap"
    at.run()
    token = at.query_params["s"][0] if isinstance(at.query_params["s"], list) else at.query_params["s"]
    reloaded = AppTest.from_file(APP, default_timeout=300)
    reloaded.query_params["s"] = token
    reloaded.run()
    ok(reloaded)
    assert reloaded.session_state[state.DATA_NAME] == "tumour.h5ad"
    assert reloaded.session_state[state.AHEAD_DECLINED] == "stopped-run"
    assert reloaded.session_state[state.UMAP_DECLINED] == "stopped-umap"
    assert reloaded.session_state[state.ADATA] is at.session_state[state.ADATA]
    assert reloaded.session_state[state.PREDICTION] == at.session_state[state.PREDICTION]
    goto(reloaded, "4_Cells")
    assert "Run a prediction first" not in text(reloaded.info)
    # the upload waits in the session's folder: another orientation reads it again after the reload
    n_genes = at.session_state[state.ADATA].n_vars
    goto(reloaded, "1_Data")
    reloaded.radio(key="data_orientation").set_value("genes_x_cells").run()
    ok(reloaded)
    assert reloaded.session_state[state.ADATA].n_obs == n_genes and state.PREDICTION not in reloaded.session_state

    lost = AppTest.from_file(APP, default_timeout=300)
    lost.query_params["s"] = "an-expired-or-unknown-token"
    lost.run()
    assert "could not be restored" in text(lost.warning) and state.ADATA not in lost.session_state


def test_logging_out_forgets_the_session_its_reload_copy_and_its_files(with_library, tmp_path, monkeypatch):
    """After "Log out", the session's address (browser history) resumes nothing, even for the same
    user logging in again, and its working folder (the upload) is gone."""
    from scatd_core import users
    from scatd_core.config import work_dir

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    users.add_user("alice", "a long enough password", admin=False)
    at = _logged_in("alice", "a long enough password")
    upload(at, "tumour.h5ad", h5ad_bytes(make_dataset(40, seed=4)))
    token = at.query_params["s"][0] if isinstance(at.query_params["s"], list) else at.query_params["s"]
    mine = work_dir() / "sessions" / at.session_state["session_id"]
    assert any(mine.iterdir())  # the upload waits in the session's folder
    at.button(key="btn_logout").click()
    at.run()
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert not mine.exists()
    again = AppTest.from_file(APP, default_timeout=300)
    again.query_params["s"] = token
    again.run()
    # before the login: said to have ended, never "continue where you were" (QA: promised, then not kept)
    assert "The session at this address has ended" in text(again.warning)
    assert "continue where you were" not in text(again.info) and "alice" not in text(again.warning)
    again.text_input(key="login_name").set_value("alice")
    again.text_input(key="login_password").set_value("a long enough password")
    again.get("form_submit_button")[0].click()
    again.run()
    ok(again)
    # the same user is told it was their logout, not a restart or an idle timeout
    assert "That session was logged out: its data were removed" in text(again.warning)
    assert "server was restarted" not in text(again.warning) and state.ADATA not in again.session_state


def test_an_address_from_before_a_server_restart_says_the_server_was_restarted(tmp_path, monkeypatch):
    """QA (40_after_restart_login.png): after a restart, a user's old ?s= address and login gave the
    generic 'could not be restored: the server was restarted, it was idle ..., or it belongs to another
    login', while README says a restarted server says so. Each token carries the id of the server
    process that made it (random per start, not a secret): one from an earlier start is said to be
    from before the restart; any other unknown token still gets the one neutral sentence."""
    import datetime as dt

    from scatd_app import session
    from scatd_core import users

    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    users.add_user("alice", "a long enough password", admin=False)
    users.add_user("bob", "another long password", admin=False)
    at = _logged_in("alice", "a long enough password")
    token = at.query_params["s"][0] if isinstance(at.query_params["s"], list) else at.query_params["s"]
    assert token.startswith(session.INSTANCE + ".")

    def reopen(address: str, name: str, password: str) -> str:
        again = _app()
        again.query_params["s"] = address
        again.run()
        again.text_input(key="login_name").set_value(name)
        again.text_input(key="login_password").set_value(password)
        again.get("form_submit_button")[0].click()
        again.run()
        ok(again)
        assert state.ADATA not in again.session_state
        return text(again.warning)

    # the server restarts: a new process, a new id and start time; the kept sessions are gone
    monkeypatch.setattr(session, "INSTANCE", "0123abcd")
    monkeypatch.setattr(session, "STARTED", dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=5))
    session.store.clear()  # Streamlit's cached store: a fresh, empty one, as a new process has
    said = reopen(token, "alice", "a long enough password")
    assert "The session at this address could not be restored: the server was restarted since (at 00:05 UTC)" in said
    assert "idle" not in said and "another login" not in said, said
    # the same words for any login (a session from before the restart is gone whoever's it was)
    assert "the server was restarted since (at 00:05 UTC)" in reopen(token, "bob", "another long password")
    # a token of this server that it does not hold (expired, another login's) or a made-up one: neutral
    for other in (f"0123abcd.{'x' * 32}", "an-expired-or-unknown-token"):
        neutral = reopen(other, "alice", "a long enough password")
        assert "it was idle for more than" in neutral and "the server was restarted since" not in neutral, neutral
    # an earlier version's token (no process id) is from before the upgrade's restart; a start on
    # another day is dated
    assert session.made_before_restart("A" * 32) and not session.made_before_restart("A" * 31)
    monkeypatch.setattr(session, "STARTED", dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc))
    assert "restarted since (at 2026-01-02 03:04 UTC)" in session.lost_text("restarted", 60)


def test_a_lost_session_says_it_was_logged_out_only_to_its_own_user():
    """After a logout, its user is told so; anyone else opening that address, or another user's
    live session's, gets one neutral sentence (nothing says whether another user's session exists)."""
    from scatd_app import session

    store = session.SessionStore()
    store.put("alices", "alice", {"x": 1})
    store.put("bobs", "bob", {"x": 2})
    store.forget("alices", "alice")  # alice logged out
    assert store.take("alices", "alice") is None and store.logged_out("alices", "alice")
    assert not store.logged_out("alices", "bob")  # bob learns nothing of alice's session
    assert store.take("bobs", "alice") is None and not store.logged_out("bobs", "alice")
    assert not store.logged_out("never-seen", "alice")
    neutral = session.lost_text("lost", 60)
    assert "could not be restored" in neutral and "60 minutes" in neutral
    assert "logged out" in neutral and "another login" in neutral
    assert "That session was logged out: its data were removed" in session.lost_text("logged_out", 60)
    for n in range(session.MAX_LOGGED_OUT + 1):  # bounded: the oldest are forgotten
        store.forget(f"t{n}", "carol")
    assert not store.logged_out("alices", "alice") and store.logged_out(f"t{session.MAX_LOGGED_OUT}", "carol")

def test_kept_sessions_are_bounded_by_the_bytes_their_data_hold():
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from scatd_app import session

    x = sp.random(300, 200, density=0.1, format="csr", dtype=np.float32, random_state=0)
    latent = np.zeros((300, 16), dtype=np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame({"p": np.zeros(300)}, index=[f"c{i}" for i in range(300)]))
    adata.obsm["X_scatd"] = latent
    adata.uns["ranking"] = pd.DataFrame({"score": np.zeros(50)})
    tables = [adata.obs, adata.var, adata.uns["ranking"]]
    expected = (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes + latent.nbytes
                + sum(int(t.memory_usage(index=True, deep=False).sum()) for t in tables))
    held = session.held_bytes({"adata": adata, "same": latent, "name": "x.h5ad", "model": object()})
    assert held == expected  # each array once; names and other objects count nothing
    assert session.held_bytes(latent[:10]) == latent[:10].nbytes

    mb = 1 << 20
    store = session.SessionStore(budget_bytes=100 * mb)
    for token in ("a", "b", "c"):
        store.put(token, "u", {"x": np.zeros(40 * mb, dtype=np.uint8)})
        time.sleep(0.01)
    assert store.take("a", "u") is None and store.take("b", "u") and store.take("c", "u")  # the longest idle went
    assert store.held() == 80 * mb
    store.take("b", "u")  # b is used again: c is now the longest idle
    store.put("d", "u", {"x": np.zeros(40 * mb, dtype=np.uint8)})
    assert store.take("c", "u") is None and store.take("b", "u") and store.take("d", "u")
    store.put("e", "u", {"x": np.zeros(150 * mb, dtype=np.uint8)})  # over the budget alone: kept, alone
    assert store.take("e", "u") and store.take("b", "u") is None and store.take("d", "u") is None


def test_the_kept_sessions_budget_comes_from_the_configuration(monkeypatch):
    from scatd_app import session

    monkeypatch.setenv("SCATD_KEPT_SESSIONS_MB", "3")
    session.store.clear()
    try:
        assert session.store().budget_bytes == 3 << 20
    finally:
        session.store.clear()
    monkeypatch.setenv("SCATD_KEPT_SESSIONS_MB", "-1")  # unusable: the default, listed as a problem
    from scatd_core.config import settings

    assert settings()["kept_sessions_mb"] == 8192 and any("SCATD_KEPT_SESSIONS_MB" in p for p in settings().problems)


def test_a_reload_after_the_kept_memory_went_to_other_sessions_says_so(with_library, monkeypatch):
    from scatd_app import session

    tiny = session.SessionStore(budget_bytes=1)  # every session's data is over it: only the latest is kept
    monkeypatch.setattr(session, "store", lambda: tiny)
    first = _app()
    upload(first, "tumour.h5ad", h5ad_bytes(make_dataset(50, seed=4)))
    token = first.query_params["s"][0] if isinstance(first.query_params["s"], list) else first.query_params["s"]
    second = _app()
    upload(second, "other.h5ad", h5ad_bytes(make_dataset(40, seed=5)))
    reloaded = AppTest.from_file(APP, default_timeout=300)
    reloaded.query_params["s"] = token
    reloaded.run()
    assert "needed the memory" in text(reloaded.warning) and state.ADATA not in reloaded.session_state
    assert first.session_state[state.DATA_NAME] == "tumour.h5ad"  # the open session itself keeps its data


def test_a_new_dataset_may_take_what_the_servers_memory_budget_leaves(monkeypatch):
    """``server.memory_mb`` less the process's resident memory is what a new dataset may take
    when it is less than the per-dataset limit; when short, the longest-idle kept sessions (not
    the reader's own) are let go first and freed memory is given back, then it is measured again."""
    import numpy as np

    from scatd_app import jobs, session
    from scatd_core import _memory

    mb, real_rss = 1 << 20, _memory.rss_bytes
    kept = session.SessionStore()
    monkeypatch.setattr(session, "store", lambda: kept)
    for token in ("a", "b", "mine", "c"):
        kept.put(token, "u", {"x": np.zeros(int(1.5 * mb), dtype=np.uint8)})
        time.sleep(0.01)
    trims = []
    monkeypatch.setattr(jobs, "release_free_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(_memory, "_IDLE_BYTES", None)  # no start-up measured (an AppTest's would be)
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "100")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "40")
    measured = iter([62 * mb, 58 * mb])  # 38 MB free, 2 short; then 42 MB free
    monkeypatch.setattr(_memory, "rss_bytes", lambda: next(measured))
    assert session.room_for_a_dataset("mine") == {}  # the limit fits once the idle sessions have gone
    assert kept.take("a", "u") is None and kept.take("b", "u") is None  # 3 MB let go: enough
    # freed memory given back (at least once: an earlier test's background computation ending
    # in the meantime gives it back too)
    assert kept.take("mine", "u") and kept.take("c", "u") and trims

    monkeypatch.setattr(_memory, "rss_bytes", lambda: 99 * mb)  # still short: what is free, and why
    room = session.room_for_a_dataset("mine")
    assert room["max_dataset_bytes"] == mb and kept.take("mine", "u")
    assert room["limit_reason"].startswith("the 1.0 MB this server has free for a new dataset now (of its 100 MB,")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 150 * mb)  # over its budget: nothing fits
    room = session.room_for_a_dataset()
    assert room["max_dataset_bytes"] == 1 and "free for a new dataset now: none (of its 100 MB" in room["limit_reason"]
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 10 * mb)
    assert session.room_for_a_dataset() == {}  # plenty free: the per-dataset limit as configured
    monkeypatch.setattr(_memory, "rss_bytes", lambda: None)  # not measurable here: the limit as configured
    assert session.room_for_a_dataset() == {}

    monkeypatch.delenv("SCATD_SERVER_MEMORY_MB")  # the default: 80 % of the machine's (or container's) memory
    from scatd_core.config import server_memory_bytes

    assert server_memory_bytes() == int(0.8 * _memory.machine_bytes()) > 0
    assert 0 < real_rss() < _memory.machine_bytes()


def test_the_memory_message_tells_the_servers_own_footprint_from_what_the_sessions_use(monkeypatch):
    """QA: with a small ``server.memory_mb`` every dataset was refused, forever, "other sessions and
    computations use it all", though the server's own libraries (~0.8 GB, there before any user)
    took it. The idle footprint is measured once at start-up and the message counts the sessions'
    use above it, and says when the budget is below what the idle server needs."""
    import numpy as np

    from scatd_app import jobs, session
    from scatd_core import _memory

    mb = 1 << 20
    monkeypatch.setattr(session, "store", lambda: session.SessionStore())
    monkeypatch.setattr(jobs, "release_free_memory", lambda: True)
    monkeypatch.setattr(_memory, "_IDLE_BYTES", None)
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "400")
    rss = {"now": 800 * mb}
    monkeypatch.setattr(_memory, "rss_bytes", lambda: rss["now"])
    assert _memory.note_idle_footprint() == 800 * mb  # at start-up: the libraries, no user's data yet
    rss["now"] = 700 * mb
    assert _memory.note_idle_footprint() == 800 * mb and _memory.idle_footprint() == 800 * mb  # the larger kept

    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "500")  # below the idle server itself: nobody's fault but the setting
    why = session.room_for_a_dataset()["limit_reason"]
    assert "whatever the other users do: server.memory_mb, 500 MB, is less than the server itself holds when idle, " \
           "800 MB (its libraries" in why
    assert "ask the administrator to raise it" in why and "sessions" not in why
    # and what to do says the same, not "try again when other analyses on this server have finished"
    from scatd_core.errors import MemoryShortage
    from scatd_core.io import _common

    room = session.room_for_a_dataset()
    opts = _common.make_options("auto", None, None, "auto", "big.h5ad", room["max_dataset_bytes"],
                                room["limit_reason"], False, room.get("limit_advice"))
    with pytest.raises(MemoryShortage) as refused:
        _common.check_memory(300 * mb, "its matrix", opts)
    said = str(refused.value)
    assert "once the administrator has raised server.memory_mb" in said and "have finished" not in said, said

    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    rss["now"] = 900 * mb  # the process holds 100 MB above the idle 800 MB, the sessions' data 100 MB of it
    kept = session.SessionStore()
    kept.put("t", "u", {"x": np.zeros(100 * mb, dtype=np.uint8)})
    monkeypatch.setattr(session, "store", lambda: kept)
    monkeypatch.setattr(jobs, "queue", lambda: jobs.JobQueue(1))  # no computation runs
    room = session.room_for_a_dataset("t")
    assert room["max_dataset_bytes"] == 100 * mb
    assert room["limit_reason"] == (
        "the 100 MB this server has free for a new dataset now (server.memory_mb is 1,000 MB; the server itself "
        "holds 800 MB of it when idle (its libraries, measured at start-up), which leaves 200 MB for the users' "
        "data, and the users' data (in open tabs, and kept for a reload of closed ones; yours included) hold 100 MB)")
    rss["now"] = 1100 * mb
    assert session.room_for_a_dataset()["limit_reason"].startswith(
        "the memory this server has free for a new dataset now: none (server.memory_mb is 1,000 MB;")


def test_a_memory_refusal_when_only_this_user_holds_memory_says_what_they_can_do(monkeypatch):
    """QA: with server.memory_mb nearly used by one user's own data (no other session held any), the
    refusal still ended "try again when other analyses on this server have finished": no analysis
    would ever finish. It now says what frees the user's own memory, or to ask for a larger
    server.memory_mb; with another login's data in memory, or a computation running, it says to wait."""
    import numpy as np

    from scatd_app import jobs, session
    from scatd_core import _memory
    from scatd_core.errors import MemoryShortage
    from scatd_core.io import _common

    mb = 1 << 20
    store = session.SessionStore()
    line = jobs.JobQueue(1)
    monkeypatch.setattr(session, "store", lambda: store)
    monkeypatch.setattr(jobs, "queue", lambda: line)
    monkeypatch.setattr(jobs, "release_free_memory", lambda: True)
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 * mb)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 990 * mb)  # 10 MB free of 1,000
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "400")
    monkeypatch.setattr(session.st, "session_state", {session.OWNER: "alice", session.TOKEN: "alice-1"})
    store.put("alice-1", "alice", {session.SESSION_ID: "s1", state.ADATA: np.zeros(3 * mb, dtype=np.uint8)})
    store.put("alice-2", "alice", {session.SESSION_ID: "s2", state.ADATA: np.zeros(2 * mb, dtype=np.uint8)})

    def refused() -> str:
        room = session.room_for_a_dataset("alice-1")
        opts = _common.make_options("auto", None, None, "auto", "big.csv", room["max_dataset_bytes"],
                                    room["limit_reason"], False, room.get("limit_advice"))
        with pytest.raises(MemoryShortage) as err:
            _common.check_memory(300 * mb, "its values", opts)
        return err.value.hint

    assert session.waiting_advice() == (  # the Biomarkers page's: its data stay (no "log out here")
        "No other user's analysis holds memory on this server now, so waiting will not make room: log out in your "
        "other scATD Studio tabs (that removes their data, 2.0 MB), or ask the administrator to raise server.memory_mb.")
    hint = refused()
    assert hint.startswith("Your file is kept: no other user's analysis holds memory on this server now, so "
                           "waiting will not make room: log out in your other scATD Studio tabs (that removes their "
                           "data, 2.0 MB), or log out here and back in, which removes this tab's earlier data and "
                           "results (3.0 MB) and this kept file too, then upload the file again, or ask the "
                           "administrator to raise server.memory_mb"), hint
    assert "have finished" not in hint
    line.running = 1  # a computation runs (whoever's): it will end and give its memory back
    assert refused().startswith("Your file is kept: try again when other analyses on this server have finished")
    line.running = 0
    store.put("bob-1", "bob", {session.SESSION_ID: "s3", state.ADATA: np.zeros(mb, dtype=np.uint8)})
    assert session.waiting_advice() == "Try again when other analyses on this server have finished."
    assert refused().startswith("Your file is kept: try again when other analyses on this server have finished")


def test_a_memory_refusal_tells_a_closed_tabs_reload_copy_from_a_tab_to_log_out_of(monkeypatch):
    """QA: alice uploaded a file, closed her browser, logged in again and uploaded it again: refused,
    "log out in your other scATD Studio tabs (that removes their data, 37 MB)" though no other tab was
    open (the 37 MB were the closed tab's copy kept for a reload, let go by that very refusal); the
    next refusal said "the sessions open now (yours included) use 268 MB" though no session held
    those. A closed tab's copy is said as that, let go for her, and memory no user's data hold is
    said to be the server program's, not blamed on the sessions."""
    import numpy as np

    from scatd_app import jobs, session
    from scatd_core import _memory
    from scatd_core.errors import MemoryShortage
    from scatd_core.io import _common

    mb = 1 << 20
    store = session.SessionStore()
    monkeypatch.setattr(session, "store", lambda: store)
    monkeypatch.setattr(jobs, "queue", lambda: jobs.JobQueue(1))
    monkeypatch.setattr(jobs, "release_free_memory", lambda: True)
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 * mb)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 990 * mb)  # 10 MB free of 1,000; the data hold little
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "400")
    open_tabs = {"tab-new"}  # as Streamlit answers: the first browser was closed
    monkeypatch.setattr(session, "_connected", lambda browsers: {b for b in browsers if b in open_tabs})
    monkeypatch.setattr(session.st, "session_state", {session.OWNER: "alice", session.TOKEN: "alice-new"})
    store.put("alice-old", "alice", {session.SESSION_ID: "s-old", state.ADATA: np.zeros(3 * mb, dtype=np.uint8)})
    store.attach("tab-old", "s-old", "alice")
    store.put("alice-new", "alice", {session.SESSION_ID: "s-new"})
    store.attach("tab-new", "s-new", "alice")

    def refused() -> MemoryShortage:
        room = session.room_for_a_dataset("alice-new")
        opts = _common.make_options("auto", None, None, "auto", "big.csv", room["max_dataset_bytes"],
                                    room["limit_reason"], False, room.get("limit_advice"))
        with pytest.raises(MemoryShortage) as err:
            _common.check_memory(300 * mb, "its values", opts)
        return err.value

    first = refused()
    assert "log out in your other" not in first.hint, first.hint
    assert ("waiting will not make room: the data kept for a reload of a tab of yours that was closed (3.0 MB) "
            "were let go to make room (that tab can no longer be restored by a reload), and that was not enough; "
            "ask the administrator to raise server.memory_mb") in first.hint, first.hint
    assert store.take("alice-old", "alice") is None and store.take("alice-new", "alice") is not None
    said = str(first)
    assert "the users' data (in open tabs, and kept for a reload of closed ones; yours included) hold 0 kB; the " \
           "server program holds 390 MB more that no user's data use: memory freed earlier (data let go, " \
           "computations ended) that it has not given back to the system yet" in said, said
    assert "sessions open now" not in said
    second = refused()  # nothing of hers left to let go: said no more
    assert "closed" not in second.hint and "log out" not in second.hint and "390 MB more" in str(second)

    # another tab of hers still open: a tab to log out of, and its copy is not let go (its page holds the data)
    store.put("alice-2", "alice", {session.SESSION_ID: "s-2", state.ADATA: np.zeros(2 * mb, dtype=np.uint8)})
    store.attach("tab-2", "s-2", "alice")
    open_tabs.add("tab-2")
    assert "log out in your other scATD Studio tabs (that removes their data, 2.0 MB)" in refused().hint
    assert store.take("alice-2", "alice") is not None
    # the Biomarkers page's advice: a closed tab's copy is let go there too, and said so
    open_tabs.discard("tab-2")
    assert session.waiting_advice() == (
        "The data kept for a reload of a tab of yours that was closed (2.0 MB) were let go to make room (that tab "
        "can no longer be restored by a reload): try again.")
    assert store.take("alice-2", "alice") is None


def test_an_upload_the_server_has_no_memory_for_waits_and_is_read_later(with_library, monkeypatch):
    """The Data page: an upload that does not fit in the server's free memory is kept and said
    so, with a button to try again; an h5ad is read from disk instead, and says why."""
    import numpy as np
    import pandas as pd

    from scatd_core import _memory

    adata = make_dataset(60, seed=3)
    table = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names).to_csv().encode()
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 1000 << 20)  # nothing free
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 << 20)  # the server's own, measured at start-up
    at = _app()
    goto(at, "1_Data")
    at.file_uploader[0].upload("cells.csv", table)
    at.run()
    assert not at.exception and state.ADATA not in at.session_state
    # what the whole file needs (its 60 rows counted), not "at least" what its first rows took
    said = text(at.error).replace("\\", "")  # as markdown: parentheses escaped
    assert "of memory once read (its 60 rows of 1,900 values), more than the memory this server has free for a new " \
           "dataset now" in said and "at least" not in said
    assert ("none (server.memory_mb is 1,000 MB; the server itself holds 600 MB of it when idle"
            in text(at.error).replace("\\", ""))
    assert "Your file is kept" in text(at.error)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 100 << 20)  # memory freed: the same upload is read
    at.button(key="btn_data_read_again").click()
    at.run()
    ok(at)
    assert at.session_state[state.ADATA].n_obs == 60 and not at.session_state[state.ADATA].isbacked

    x_bytes = sum(a.nbytes for a in (adata.X.data, adata.X.indices, adata.X.indptr))
    monkeypatch.setattr(_memory, "rss_bytes", lambda: (1000 << 20) - x_bytes // 2)  # room for obs, not X
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    read = at.session_state[state.ADATA]
    assert read.isbacked and read.n_obs == 60 and np.isfinite(read.X[:5].toarray()).all()
    assert "in memory it would take more than the " in text(at.warning)  # "Read from disk (backed)"
    assert " kB this server has free for a new dataset now (server.memory_mb is 1,000 MB" in text(at.warning).replace(
        "\\", "")


def test_try_again_while_memory_is_still_short_says_so_again_without_crashing(with_library, monkeypatch):
    """QA: after a memory refusal, "Try again" clicked while the memory was still short crashed the
    Data page (StreamlitValueAssignmentNotAllowedError): its key started with "data_", a kept prefix,
    so the button's value was set again each run, which Streamlit forbids for buttons."""
    from scatd_core import _memory

    at, _ = _upload_refused_for_memory(monkeypatch, n_cells=60)
    again = [b for b in at.button if b.label == "Try again"]
    for _ in range(2):  # still no memory: refused again, the button drawn again
        again[0].click()
        at.run()
        assert not at.exception, at.exception
        assert "read-only" not in text(at.error) and "Your file is kept" in text(at.error)
        assert state.ADATA not in at.session_state
        again = [b for b in at.button if b.label == "Try again"]
        assert again, text(at.error)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 100 << 20)  # memory freed: read
    again[0].click()
    at.run()
    ok(at)
    assert at.session_state[state.ADATA].n_obs == 60


def test_the_first_memory_refusal_offers_forget_it_too_and_its_advice_keeps_the_file(with_library, monkeypatch):
    """QA r1: the first refusal for memory offered only "Try again" (Forget it only on a return to the
    page), and its advice said the file is kept yet told the user to upload it again. Forget it is
    offered at once: it deletes the kept copy, says so, and the file is not read again."""
    at, _ = _upload_refused_for_memory(monkeypatch)
    said = text(at.error).replace("\\", "")
    assert "Your file is kept: click Try again once memory is free, or Forget it to delete the server's copy. " \
           "Meanwhile: " in said, said
    copy = Path(at.session_state[state.UPLOAD]["path"])
    assert copy.is_file() and at.button(key="btn_data_read_again")
    at.button(key="btn_data_forget_upload").click()
    at.run()
    ok(at)
    assert not copy.exists() and state.UPLOAD not in at.session_state and state.ADATA not in at.session_state
    assert "cells.csv was forgotten" in text(at.info).replace("\\", "")
    assert not [b for b in at.button if b.label in ("Try again", "Forget it")] and "is kept" not in text(at.error)
    at.run()  # not read again on the next run
    ok(at)
    assert state.UPLOAD not in at.session_state and "Your file is kept" not in text(at.error)


def test_forget_it_at_the_first_memory_refusal_empties_the_uploader(with_library, monkeypatch):
    """QA: after "Forget it" the server's copy was deleted but the uploader still showed the file's
    chip (name and size), as if it were still there. Forget it gives a fresh, empty uploader; a new
    file can then be uploaded and is read."""
    from scatd_core import _memory

    at, table = _upload_refused_for_memory(monkeypatch)
    before = at.file_uploader[0].key
    at.button(key="btn_data_forget_upload").click()
    at.run()
    ok(at)
    uploader = at.file_uploader[0]
    assert uploader.key != before and not uploader.value, (before, uploader.key, uploader.value)  # no chip left
    assert "cells.csv was forgotten" in text(at.info).replace("\\", "")
    at.run()  # said once, the uploader still empty
    ok(at)
    assert not at.file_uploader[0].value and "was forgotten" not in text(at.info)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 100 << 20)  # memory freed: the same file uploaded again
    at.file_uploader[0].upload("cells.csv", table)
    at.run()
    ok(at)
    assert at.session_state[state.ADATA].n_obs == 40


def _kept_button_page():
    import streamlit as st

    from scatd_app import state

    state.keep_widget_state()
    st.checkbox("kept", key="data_kept_box")
    st.button("Again", key="data_button")
    st.file_uploader("File", key="data_uploader")


def test_kept_widget_state_leaves_buttons_and_uploaders_alone():
    """A button or uploader whose key has a kept prefix is not set again (Streamlit forbids it);
    a checkbox's value is still kept."""
    at = AppTest.from_function(_kept_button_page)
    at.run()
    at.checkbox(key="data_kept_box").check()
    at.run()
    for _ in range(2):
        at.button(key="data_button").click()
        at.run()
        assert not at.exception, at.exception
    assert at.checkbox(key="data_kept_box").value is True


_BUTTON_LIKE = {"button", "download_button", "form_submit_button", "file_uploader", "camera_input",
                "audio_input", "chat_input"}
#: the app's helpers that pass a key on to a button: (function, positional index of the key, keyword)
_KEY_HELPERS = {"demo_button": (0, "key"), "long_run": (2, "cancel_key"), "data_download": (None, "key")}


def test_no_button_or_uploader_key_starts_with_a_kept_prefix():
    """Static: every key given to a button-like widget (directly or through a helper) starts with
    ``btn_`` / ``upload_``, never with a prefix that state.keep_widget_state() sets each run."""
    import ast

    root = Path(__file__).resolve().parents[1]
    files = [root / "app.py", *sorted((root / "app_pages").glob("*.py")), *sorted((root / "scatd_app").glob("*.py"))]
    keys, bad = [], []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in _BUTTON_LIKE:
                where = [kw.value for kw in node.keywords if kw.arg == "key"]
            elif name in _KEY_HELPERS:
                index, keyword = _KEY_HELPERS[name]
                where = [kw.value for kw in node.keywords if kw.arg == keyword]
                if index is not None and len(node.args) > index:
                    where.append(node.args[index])
            else:
                continue
            for value in where:
                if isinstance(value, ast.JoinedStr) and value.values:
                    value = value.values[0]  # an f-string: its fixed start
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    keys.append(value.value)
                    if value.value.startswith(state.KEPT_WIDGET_PREFIXES) or value.value in state.KEPT_WIDGET_KEYS:
                        bad.append(f"{path.name}:{node.lineno} {value.value}")
    assert "btn_demo" in keys and "btn_cancel_predict" in keys and "btn_dl_h5ad" in keys  # the scan sees them
    assert not bad, bad
    source = Path(ui.__file__).read_text()  # the Data page's computed keys
    assert 'return f"upload_cell_metadata_' in source and 'return f"upload_data_' in source


def test_an_unreadable_upload_leaves_nothing_on_disk_and_is_read_once(with_library, tmp_path, monkeypatch):
    """Refused uploads used to pile up in the session's folder until a later upload was read (at
    2 GB each, one user could fill the server's disk); and every click re-read the bad file."""
    from scatd_core import io
    from scatd_core.config import work_dir

    monkeypatch.setenv("SCATD_WORK_DIR", str(tmp_path / "work"))
    reads = []
    real = io.read
    monkeypatch.setattr(io, "read", lambda *a, **k: reads.append(1) or real(*a, **k))
    at = _app()
    upload(at, "good.h5ad", h5ad_bytes(make_dataset(40, seed=4)))
    mine = work_dir() / "sessions" / at.session_state["session_id"]
    good = sorted(p.name for p in mine.glob(io.UPLOAD_FOLDER_PREFIX + "*"))
    assert len(good) == 1 and len(reads) == 1
    for i in range(3):
        goto(at, "1_Data")
        at.file_uploader[0].upload(f"junk{i}.h5ad", b"not an HDF5 file " * 1000)
        at.run()
        assert "junk" in text(at.error) and not at.exception
        assert sorted(p.name for p in mine.glob(io.UPLOAD_FOLDER_PREFIX + "*")) == good  # only the data's own
    assert len(reads) == 4
    at.run()
    at.run()
    assert len(reads) == 4 and "junk2.h5ad" in text(at.error)  # the error again, without reading again
    assert at.session_state[state.DATA_NAME] == "good.h5ad"  # the session's data is still the good file
    assert at.session_state[state.UPLOAD]["name"] == "good.h5ad"


def test_user_strings_are_escaped_in_markdown(with_library, tmp_path):
    make_bundle(with_library / "evil", make_dataset(40, seed=1), steps=2, drug="<img src=x onerror=alert(1)>:red[x]")
    at = _app()
    upload(at, "<b>bold</b>.h5ad", h5ad_bytes(make_dataset(40, seed=2)))
    at.session_state[state.BUNDLE_PATH] = str(with_library / "evil")
    at.run()
    shown = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "<img" not in shown and "&lt;img" in shown and "\\:red\\[x\\]" in shown
    assert "<b>bold</b>" not in shown and "&lt;b&gt;bold" in shown


def _shown_markdown(at: AppTest) -> list[str]:
    """Every string the page renders as markdown: text elements, widget labels and help, radio
    options, metric labels and values (selectbox options are plain text: not included)."""
    shown = []
    for kind in ("markdown", "caption", "warning", "error", "info", "success", "subheader", "title", "header"):
        shown += [str(e.value) for e in getattr(at, kind)]
    for kind in ("radio", "selectbox", "multiselect", "checkbox", "toggle", "button", "text_input", "number_input",
                 "slider"):
        for widget in getattr(at, kind):
            shown += [str(widget.label), str(getattr(widget, "help", "") or "")]
            if kind == "radio":
                shown += [str(o) for o in widget.options]
    shown += [str(m.label) for m in at.metric] + [str(m.value) for m in at.metric]
    return shown


def test_names_from_the_data_never_become_markdown(with_library):
    """Links, images and headings hidden in a file name, a column name and the values of a label
    column are shown as typed on the Data and Train pages: no raw '](' anywhere."""
    import numpy as np

    genes = [f"GENE{i}" for i in range(30)]
    link, image, column = ("[click](https://evil.example/phish)", "![t](https://evil.example/pixel.png)",
                           "[c](https://evil.example/col)")
    rng = np.random.default_rng(0)
    rows = ["cell," + ",".join(genes) + ",response," + column]
    for i in range(40):
        rows.append(f"c{i}," + ",".join(str(v) for v in rng.poisson(2, 30)) + "," + (image if i % 2 else link)
                    + "," + ("a" if i % 3 else "b"))
    at = _app()
    upload(at, "[f](https://evil.example/file)**bold**.csv", ("\n".join(rows) + "\n").encode())
    at.selectbox(key=state.LABEL_COLUMN).set_value(column).run()
    ok(at)
    assert at.radio(key=f"label_resistant_{column}").options  # the question is asked
    at.selectbox(key=state.LABEL_COLUMN).set_value("response").run()
    ok(at)
    question = at.radio(key="label_resistant_response")
    assert sorted(question.options) == sorted([ui.md(link), ui.md(image)])
    question.set_value(link).run()
    ok(at)
    assert at.session_state["label_resistant_response"] == link  # the value itself, not its escaped form
    shown = _shown_markdown(at)
    goto(at, "7_Train")
    at.selectbox(key="train_label_column").set_value(column).run()
    ok(at)
    at.selectbox(key="train_few_shot_column").set_value("response").run()
    ok(at)
    shown += _shown_markdown(at)
    assert any("evil.example" in s for s in shown)  # the names are shown ...
    assert not [s for s in shown if "](" in s]  # ... as text, never as a link or an image


HOSTILE = ["![t](https://evil.example/pixel.png)", "[click](https://evil.example/phish)", "text\n===", "x\r\n---",
           "- item", "12. item", "3) item", "# heading", "> quote", "**bold** _it_ `code` ~~del~~",
           "| a | b |\n|---|---|", "```\ncode\n```", "    indented", "\tindented", "<img src=x onerror=alert(1)>",
           "[ref]: https://evil.example", "&lt;b&gt; &amp;", "a\\*b\\", ":red[x] :material/home: $x^2$",
           "line\u2028sep\rcr\x0bvt", "<https://evil.example>", "***", "+ plus", "= eq", "+++"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_md_shows_hostile_names_as_typed(hostile):
    """ui.md's output, alone, at the start of a line after another line (a setext heading's place)
    or inside a sentence, renders as one paragraph of plain text: the name as typed, its line
    breaks as spaces, with no link, image, heading, list, code, table or emphasis."""
    import html
    import re

    markdown_it = pytest.importorskip("markdown_it")
    render = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render
    shown = re.sub(r"[\r\n\v\f\u2028]+", " ", hostile)
    for before, after in (("", ""), ("Title\n", ""), ("the value '", "' is")):
        out = render(before + ui.md(hostile) + after).strip()
        assert out.startswith("<p>") and out.endswith("</p>"), out
        inner = out[3:-4]
        assert "<" not in inner, out  # no element at all: every < of the name is &lt;
        text = html.unescape(inner).replace("\n", " ").replace(ui.LINK_BREAK, "")  # an invisible link breaker
        expected = (before.replace("\n", " ") + shown + after)
        assert text.split() == expected.split(), out  # the same words (white space may collapse)


@pytest.mark.parametrize("name", ["[c](https://evil.example/col)", "see http://evil.example", "www.evil.example",
                                  "FTP://evil.example", "x@evil.example", "<https://evil.example>"])
def test_md_leaves_no_text_that_gfm_turns_into_a_link(name):
    """Streamlit renders GitHub-flavoured markdown, which makes links of plain URLs, www. names and
    e-mail addresses after escapes are resolved (a name in a read warning showed as a live link in
    the browser). GFM's own patterns (mdast-util-gfm-autolink-literal) find nothing in ui.md's text."""
    import html
    import re

    text = re.sub(r"\\(.)", r"\1", html.unescape(ui.md(name)))  # the text once escapes are resolved
    assert not re.search(r"(?i)(https?://|ftp://|www(?=\.))[-.\w]+", text), text
    assert not re.search(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+", text), text
    assert text.replace(ui.LINK_BREAK, "") == name  # and it reads as typed


def test_the_queue_runs_at_most_n_jobs_and_keeps_order():
    """Deterministic under any load: each job arrives only once the previous one is running or
    queued, and the first two hold their slots until all six have arrived."""
    from scatd_app.jobs import JobQueue

    q = JobQueue(slots=2)
    running, peak, order, positions = [], [0], [], {}
    lock = threading.Lock()
    all_arrived = threading.Event()

    def job(i):
        def waiting(position, n_running):
            positions.setdefault(i, position)
        with q.slot(waiting, poll_seconds=0.01):
            with lock:
                running.append(i)
                order.append(i)
                peak[0] = max(peak[0], len(running))
            all_arrived.wait(timeout=60)
            time.sleep(0.02)
            with lock:
                running.remove(i)

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=job, args=(i,)))
        threads[-1].start()
        deadline = time.monotonic() + 60
        while q.running + len(q.waiting) < i + 1 and time.monotonic() < deadline:  # arrival order 0, 1, 2 ...
            time.sleep(0.005)
    all_arrived.set()
    for t in threads:
        t.join()
    assert peak[0] == 2 and order == list(range(6))
    assert positions == {2: 1, 3: 2, 4: 3, 5: 4}  # later arrivals saw their place in the queue
    assert q.running == 0 and q.waiting == []


def test_the_queue_gives_freed_memory_back_when_the_last_computation_ends(monkeypatch):
    from scatd_app import jobs

    calls = []
    monkeypatch.setattr(jobs, "release_free_memory", lambda: calls.append(1) or True)
    q = jobs.JobQueue(slots=2)
    with q.slot():
        with q.slot():
            pass
        assert calls == []  # another computation still runs
        with q.slot_if_free() as held:
            assert held
        assert calls == []
    assert calls == [1]  # the last one ended, nobody waits
    with q.slot_if_free() as held:
        assert held
    assert calls == [1, 1]
    monkeypatch.undo()
    assert jobs.release_free_memory() in (True, False)  # glibc's malloc_trim here; never raises


def test_deploy_files_copy_what_exists_and_start_the_app_loaded():
    """The Docker images copy every folder the app needs and nothing that is gone (they copied
    `pages/` after the pages moved to `app_pages/`), and the images and the systemd unit start the
    app with `python -m scatd_app` (loaded before it listens)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (repo / "deploy" / name).read_text()
        sources = [part for line in re.findall(r"^COPY\s+(.+)\s+\S+\s*$", text, flags=re.M) for part in line.split()]
        assert sources and all((repo / part).exists() for part in sources), (name, sources)
        assert {"app.py", "app_pages", "scatd_app", "scatd_core", ".streamlit/config.toml", "pyproject.toml"} <= set(
            sources)  # the settings, never .streamlit/secrets.toml (tests/test_oidc_deploy.py)
        assert re.search(r'^CMD \["python", "-m", "scatd_app"', text, flags=re.M), name
    assert re.search(r"^ExecStart=\S+/python -m scatd_app ", (repo / "deploy" / "scatd-studio.service").read_text(),
                     flags=re.M)


def test_release_upload_lets_go_of_streamlits_in_memory_copy(monkeypatch):
    """What the Data page calls once an upload is read: Streamlit's copy of the bytes is dropped
    from the server's memory, once; other sessions' files are untouched."""
    from types import SimpleNamespace

    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from scatd_app import session, uploads

    manager = MemoryUploadedFileManager("/upload")
    for sid in ("mine", "theirs"):
        uploads.allow(sid)  # signed in (the app may have wrapped the store in this process)
        manager.add_file(sid, UploadedFileRec("f1", "cells.h5ad", "application/octet-stream", b"x" * 1000))
    ctx = SimpleNamespace(uploaded_file_mgr=manager, session_id="mine")
    monkeypatch.setattr("streamlit.runtime.scriptrunner.get_script_run_ctx", lambda: ctx)
    assert session.release_upload("f1") is True
    assert manager.get_files("mine", ["f1"]) == [] and len(manager.get_files("theirs", ["f1"])) == 1
    assert session.release_upload("f1") is False  # nothing left to drop
    monkeypatch.setattr("streamlit.runtime.scriptrunner.get_script_run_ctx", lambda: None)
    assert session.release_upload("f1") is False  # outside a script run: nothing to do


def test_uploads_are_kept_only_for_signed_in_sessions_and_bounded_per_session(monkeypatch):
    """Streamlit keeps any file PUT for any live session, the login page's included: the wrapped
    store refuses (403, nothing kept) a session without a user, a session's eleventh file, and
    files beyond the session's memory budget; replacing a file does not count it twice."""
    from starlette.exceptions import HTTPException
    from streamlit import config
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from scatd_app import uploads

    assert uploads.install() and uploads.install()  # once per process, idempotent
    monkeypatch.setattr(config, "get_option", lambda key: 1 if key == "server.maxUploadSize" else None)
    budget = uploads.session_budget_bytes()
    assert budget == uploads.LARGE_FILES_PER_SESSION << 20
    manager = MemoryUploadedFileManager("/upload")

    def put(sid, fid, nbytes):
        manager.add_file(sid, UploadedFileRec(fid, "x.h5ad", "application/octet-stream", b"x" * nbytes))

    with pytest.raises(HTTPException) as refused:
        put("anonymous", "junk", 1000)
    assert refused.value.status_code == 403 and "Log in" in refused.value.detail
    assert manager.file_storage.get("anonymous", {}) == {}
    uploads.allow("alice")
    try:
        put("alice", "data", budget // 2)
        put("alice", "data", budget // 2)  # the same file again: replaced, not added
        put("alice", "bulk", budget // 2)
        with pytest.raises(HTTPException, match="more memory"):
            put("alice", "target", 1)
        assert set(manager.file_storage["alice"]) == {"data", "bulk"}
        manager.remove_file("alice", "bulk")
        for i in range(uploads.MAX_FILES_PER_SESSION - 1):
            put("alice", f"small{i}", 10)
        with pytest.raises(HTTPException, match="already holds 10"):
            put("alice", "one_more", 10)
        uploads.disallow("alice")  # logged out
        with pytest.raises(HTTPException, match="Log in"):
            put("alice", "small0", 10)
    finally:
        uploads.disallow("alice")


def test_the_upload_guard_sees_sessions_allowed_after_the_app_modules_were_imported_again():
    """Streamlit imports the app's modules again when their files change (its file watcher, e.g. a
    git pull under a running server). The guard installed by the first import must see the sessions
    the new import allows; QA: with a set per import, every user's upload was refused (403)."""
    import importlib.util

    from starlette.exceptions import HTTPException
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    from scatd_app import uploads

    assert uploads.install()
    spec = importlib.util.spec_from_file_location("scatd_app_uploads_again", uploads.__file__)
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)  # what the file watcher's re-import gives the pages
    manager = MemoryUploadedFileManager("/upload")
    record = UploadedFileRec("f", "x.h5ad", "application/octet-stream", b"x" * 10)
    with pytest.raises(HTTPException):
        manager.add_file("bob", record)
    again.allow("bob")  # the re-imported auth allows the session...
    try:
        manager.add_file("bob", record)  # ...and the guard installed before the re-import sees it
        assert uploads.is_allowed("bob") and "f" in manager.file_storage["bob"]
        again.install()  # installing again keeps one guard
        assert not getattr(MemoryUploadedFileManager.add_file.__wrapped__, "_scatd_guard", False)
    finally:
        again.disallow("bob")
    assert not uploads.is_allowed("bob")


_FREEZE_PROBE = """
import gc, sys, weakref
from scatd_app import ui
thread = ui.start_up(wait=sys.argv[1] == "before-listening")
frozen_libraries = gc.get_freeze_count()

class Data:  # a user's upload: an object in a reference cycle, as an AnnData is
    pass

data = Data(); data.me = data
gone = []
ref = weakref.ref(data, lambda r: gone.append(1))
thread.join()
del data
gc.collect()
print(frozen_libraries, gc.get_freeze_count(), bool(gone))
"""


def test_the_start_up_freezes_the_libraries_never_a_users_data(tmp_path):
    """``gc.freeze()`` keeps Streamlit's collection after each page run from walking the libraries'
    objects; what it freezes is never collected again. The libraries are frozen once imported;
    the compiled kernels too when the server loads before it listens; never what a session made
    meanwhile (under ``streamlit run app.py`` the first user works during the warm-up)."""
    counts = {}
    probes = {how: subprocess.Popen([sys.executable, "-c", _FREEZE_PROBE, how],
                                    env={**os.environ, "SCATD_HOME": str(tmp_path / how)}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
              for how in ("first-page", "before-listening")}  # side by side: each is mostly one busy thread
    for how, probe in probes.items():
        out, err = probe.communicate(timeout=300)
        assert probe.returncode == 0, err[-2000:]
        libraries, after, collected = out.split()
        counts[how] = int(libraries), int(after)
        assert collected == "True"  # made during (or after) the warm-up: still collected
    first_page, before_listening = counts["first-page"], counts["before-listening"]
    assert first_page[0] > 300_000 and first_page[1] <= first_page[0]  # nothing frozen after the imports
    assert before_listening[0] > first_page[0] + 50_000  # the kernels too: no session exists yet


def test_a_process_that_ends_during_the_start_up_warm_up_exits_cleanly(tmp_path):
    """The warm-up thread runs compiled code (numba, torch); a process that ends while it runs (a
    server stopped at once, a short test run) used to abort ("terminate called without an active
    exception", exit status 134). It now waits for the warm-up and exits normally."""
    env = {**os.environ, "SCATD_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", "from scatd_app import ui; ui.start_up()"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "terminate called" not in res.stderr


def _asgi(route, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """Drive one Starlette route as the server would: (status, body read by then, sent body)."""
    import asyncio

    from starlette.exceptions import HTTPException

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    _, child = route.matches(scope)
    scope.update(child)
    chunks, sent, read = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""], [], []

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        read.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(route.handle(scope, receive, send))
    except HTTPException as exc:  # what Starlette's exception middleware answers
        return exc.status_code, sum(read), exc.detail.encode()
    return sent[0]["status"], sum(read), b"".join(m.get("body", b"") for m in sent[1:])


def test_an_upload_is_refused_from_its_headers_before_any_of_its_body_is_read(monkeypatch):
    """QA: a 300 MB PUT from the login page's session was read wholly into the server's memory
    before its 403. Streamlit's upload route now refuses a session without a user from the
    headers, reading nothing; a Content-Length beyond what the session may still hold is refused
    by its length (its body thrown away, so the browser reads why); a body without a length is cut
    off once past it; a signed-in session's upload is kept as before."""
    from types import SimpleNamespace

    from streamlit import config
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.web.server.starlette.starlette_routes import create_upload_routes

    from scatd_app import uploads

    assert uploads.install()
    manager = MemoryUploadedFileManager("/_stcore/upload_file")
    monkeypatch.setattr(uploads, "_manager", lambda: manager)
    monkeypatch.setattr(config, "get_option", lambda key: 1 if key == "server.maxUploadSize" else None)
    monkeypatch.setattr("streamlit.web.server.starlette.starlette_routes.is_xsrf_enabled", lambda: False)
    put = next(r for r in create_upload_routes(SimpleNamespace(is_active_session=lambda sid: True), manager, None)
               if "PUT" in r.methods)
    boundary = "b0undary"

    def form(nbytes: int) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.h5ad\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * nbytes + \
            f"\r\n--{boundary}--\r\n".encode()

    def upload(sid: str, fid: str, body: bytes, length: bool = True):
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        if length:
            headers["content-length"] = str(len(body))
        return _asgi(put, "PUT", f"/_stcore/upload_file/{sid}/{fid}", body, headers)

    status, read, detail = upload("anonymous", "junk", form(900_000))
    assert (status, read) == (403, 0) and b"Log in before uploading" in detail
    uploads.allow("alice")
    try:
        for fid in ("data", "bulk", "target", "ckpt"):  # 4 x 1 MiB may be held together
            assert upload("alice", fid, form(1_000_000))[:2] == (204, len(form(1_000_000)))
        status, read, detail = upload("alice", "labels", form(1_000_000))
        assert status == 403 and b"more memory" in detail  # said by its length; the body thrown away
        status, read, detail = upload("alice", "labels", form(1_000_000), length=False)
        assert status == 403 and read < 500_000 and b"more memory" in detail  # cut off as it streams
        assert set(manager.file_storage["alice"]) == {"data", "bulk", "target", "ckpt"}
    finally:
        uploads.disallow("alice")


def test_a_download_link_is_served_only_while_a_session_holding_it_is_signed_in(monkeypatch):
    """QA: /media/<id>.csv (a download button's file) answered 200 with no cookie, to anyone, and
    after its user logged out. It is now served while a session that made it is signed in (also
    while Streamlit redraws the button, between its runs); a logout deletes the session's files at
    once, unless a session still signed in holds the same file (the same bytes and name)."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.web.server.starlette.starlette_routes import create_media_routes

    from scatd_app import uploads

    assert uploads.install()
    storage = MemoryMediaFileStorage("/media")
    manager = MediaFileManager(storage)
    monkeypatch.setattr(uploads, "_media_manager", lambda: manager, raising=False)  # (none before the fix)
    get = next(r for r in create_media_routes(storage, None) if "GET" in r.methods)
    who = {"sid": "alice-tab"}
    monkeypatch.setattr(uploads, "current_session_id", lambda: who["sid"])
    monkeypatch.setattr("streamlit.runtime.media_file_manager._get_session_id", lambda: who["sid"])

    def download(name: str, data: bytes, coordinates: str = "1.2") -> str:
        return manager.add(data, "text/csv", coordinates, file_name=name, is_for_static_download=True)

    def fetch(url: str) -> int:
        return _asgi(get, "GET", url)[0]

    uploads.allow("alice-tab")
    try:
        mine = download("alice_predictions.csv", b"cell,prob\nc1,0.9\n")
        status, _, body = _asgi(get, "GET", mine)
        assert status == 200 and body == b"cell,prob\nc1,0.9\n"
        manager.clear_session_refs("alice-tab")  # Streamlit's next run starts: the click still downloads
        assert fetch(mine) == 200
        assert fetch("/media/" + "0" * 32 + ".csv") == 404
        uploads.disallow("alice-tab")  # she logs out
        assert fetch(mine) == 404 and manager.read_file(mine.rsplit("/", 1)[-1]) is None  # deleted, not hidden

        uploads.allow("alice-tab")
        uploads.allow("bob-tab")
        shared = download("demo_predictions.csv", b"the demo's table")
        who["sid"] = "bob-tab"
        assert download("demo_predictions.csv", b"the demo's table") == shared  # the same file for both
        uploads.disallow("alice-tab")
        assert fetch(shared) == 200  # bob is still signed in and holds it
        uploads.disallow("bob-tab")
        assert fetch(shared) == 404
        assert not any(s in uploads._owners()[0] for s in ("alice-tab", "bob-tab"))
    finally:
        uploads.disallow("alice-tab")
        uploads.disallow("bob-tab")


def test_a_file_kept_after_a_memory_refusal_is_offered_again_on_return_and_deleted_when_forgotten(
        with_library, monkeypatch):
    """QA at 100k cells: "Your file is kept ... Try again" went once the user left the Data page and
    came back (the uploader empty, no Try again), and the kept copy sat unreachable in the session
    folder. It is offered again (its name and size, Try again, Forget it); Forget it deletes it."""
    from scatd_core import _memory

    at, table = _upload_refused_for_memory(monkeypatch)
    copy = Path(at.session_state[state.UPLOAD]["path"])
    assert copy.is_file()
    goto(at, "2_Model")
    goto(at, "1_Data")
    said = text(at.warning).replace("\\", "")
    assert "Your file cells.csv (" in said and "is kept: there was not enough free memory to read it" in said, said
    assert at.button(key="btn_data_read_again") and at.button(key="btn_data_forget_waiting")
    at.button(key="btn_data_read_again").click()  # still no memory: refused again, still offered
    at.run()
    ok(at)
    assert "Your file is kept" in text(at.error) and copy.is_file() and state.ADATA not in at.session_state
    goto(at, "2_Model")
    goto(at, "1_Data")
    at.button(key="btn_data_forget_waiting").click()
    at.run()
    ok(at)
    assert not copy.exists() and state.UPLOAD not in at.session_state
    assert "cells.csv was forgotten" in text(at.info).replace("\\", "")
    # QA r1: the buttons stayed on screen for the deleted file
    assert not [b for b in at.button if b.label in ("Try again", "Forget it")]
    goto(at, "1_Data")
    assert "is kept" not in text(at.warning) and not [b for b in at.button if b.label in ("Try again", "Forget it")]

    # refused, then replaced by another file (still refused): the first copy goes
    at.file_uploader[0].upload("cells2.csv", table)
    at.run()
    assert "Your file is kept" in text(at.error)
    first = Path(at.session_state[state.UPLOAD]["path"])
    at.file_uploader[0].upload("cells3.csv", table)
    at.run()
    assert "Your file is kept" in text(at.error) and not first.exists()
    assert Path(at.session_state[state.UPLOAD]["path"]).is_file()
    # left, and read on return once memory is free
    goto(at, "2_Model")
    goto(at, "1_Data")
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 100 << 20)
    at.button(key="btn_data_read_again").click()
    at.run()
    ok(at)
    assert at.session_state[state.ADATA].n_obs == 40 and ui.WAITING_UPLOAD not in at.session_state


def test_a_memory_refusal_names_this_sessions_own_background_prediction_and_only_freed_memory_freed(monkeypatch):
    """QA at 100k cells: a refusal said "try again when other analyses on this server have finished" and
    "522 MB used by the computations running now" when the only computation was this session's own
    prediction, started by the app in the background; on a fresh server it blamed "memory freed
    earlier (data let go, computations ended)" though nothing had been loaded; and "cells.." ended it."""
    import concurrent.futures
    import types

    from scatd_app import jobs, session
    from scatd_core import _memory
    from scatd_core.errors import MemoryShortage
    from scatd_core.io import _common

    mb = 1 << 20
    store = session.SessionStore()
    line = jobs.JobQueue(1)
    monkeypatch.setattr(session, "store", lambda: store)
    monkeypatch.setattr(jobs, "queue", lambda: line)
    monkeypatch.setattr(jobs, "release_free_memory", lambda: True)
    monkeypatch.setattr(_memory, "idle_footprint", lambda: 600 * mb)
    monkeypatch.setattr(_memory, "rss_bytes", lambda: 990 * mb)  # 10 MB free of 1,000; no user's data hold any
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "1000")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "400")
    ss = {session.OWNER: "alice", session.TOKEN: "alice-1"}
    monkeypatch.setattr(session.st, "session_state", ss)
    store.put("alice-1", "alice", {session.SESSION_ID: "s1"})

    def refused(hint: str | None = None) -> MemoryShortage:
        room = session.room_for_a_dataset("alice-1")
        opts = _common.make_options("auto", None, None, "auto", "big.h5ad", room["max_dataset_bytes"],
                                    room["limit_reason"], False, room.get("limit_advice"))
        with pytest.raises(MemoryShortage) as err:
            _common.check_memory(300 * mb, "its values", opts, hint)
        return err.value

    fresh = str(refused())
    assert "390 MB more that no user's data use: libraries it loaded since start-up" in fresh, fresh
    assert "freed earlier" not in fresh
    line.ended = 1  # a computation has ended since: its memory may not have been given back
    assert "memory freed earlier (data let go, computations ended)" in str(refused())

    running = concurrent.futures.Future()
    assert running.set_running_or_notify_cancel()
    ss[state.PREDICT_AHEAD] = types.SimpleNamespace(future=running, embedding=None)
    line.running = 1  # the only computation: this session's own, started by the app
    own = refused("Remove the layers, or upload fewer cells.")
    said = str(own)
    assert "used by your prediction running in the background (the app started it by itself on your data)" in said
    assert "computations running now" not in said and "other analyses" not in said, said
    assert own.hint.startswith("Your file is kept: your prediction is running in the background (the app started "
                               "it by itself on your data) and holds memory: wait for it to finish"), own.hint
    assert own.hint.endswith("then try again; or: remove the layers, or upload fewer cells."), own.hint
    assert ".." not in said
    line.running = 2  # another user's computation too: waiting for it helps
    assert refused().hint.startswith("Your file is kept: try again when other analyses on this server have finished")
    assert "used by the computations running now (your prediction in the background among them)" in str(refused())


_LAUNCH_TO_THE_SERVER = r"""
import sys
import streamlit.web.bootstrap
from scatd_app import ui, uploads
from scatd_app.__main__ import main

ui.start_up = lambda **k: None  # the libraries' warm-up: not what is tested
uploads.install = lambda: True
streamlit.web.bootstrap.run = lambda *a, **k: print("SERVER WOULD START", file=sys.stderr)
sys.exit(main(sys.argv[1:]))
"""


def test_the_launcher_never_logs_that_streamlit_must_be_restarted(tmp_path):
    """QA: every `python -m scatd_app --server.port 8777 ...` logged "An update to the [server] config option
    section was detected. To have these changes be reflected, please restart streamlit.": the launcher's
    checks read Streamlit's configuration before `streamlit run` parsed it with the command's options,
    so the server options seemed to change. The launcher now parses it once as `streamlit run` will."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SCATD_HOME": str(tmp_path), "SCATD_AUTH": "none", "PYTHONPATH": str(repo)}
    env.pop("SCATD_MODEL_LIBRARY", None)
    done = subprocess.run([sys.executable, "-c", _LAUNCH_TO_THE_SERVER, "--server.headless", "true", "--server.port",
                           "8777", "--server.address", "127.0.0.1", "--server.maxUploadSize", "300"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert "SERVER WOULD START" in said, said
    assert "config option section was detected" not in said and "restart streamlit" not in said, said
