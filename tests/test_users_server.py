"""The users of a lab server as its administrator meets them (QA as a new admin): root's `scatd users`
leaves a file the server's account can read, `scatd doctor` checks it as that account, a removed
user's data is said (and deleted when asked), and logins are logged."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from scatd_core.errors import InputError

NOBODY = 65534
PASSWORD = "a long password here"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another account (chown): needs root")


@pytest.fixture
def server_home(monkeypatch):
    """A 0755 home (pytest's folders are 0700: no other account gets through) with the users file in
    it, no service account named and no systemd unit installed."""
    from scatd_core import doctor

    folder = Path(tempfile.mkdtemp(prefix="scatd-users-"))
    folder.chmod(0o755)
    monkeypatch.setenv("SCATD_HOME", str(folder))
    monkeypatch.setenv("SCATD_USERS_FILE", str(folder / "users.toml"))
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(folder / "models"))
    monkeypatch.delenv("SCATD_SERVICE_USER", raising=False)
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.setattr(doctor, "UNIT_FILES", (folder / "none.service",))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class FastHasher:  # argon2's interface without its cost
    def hash(self, password):
        return f"fake${password}"

    def verify(self, stored, password):
        from argon2.exceptions import VerificationError

        if stored != f"fake${password}":
            raise VerificationError("wrong")
        return True


@pytest.fixture
def fast_hash(monkeypatch):
    from scatd_core import users

    monkeypatch.setattr(users, "_hasher", FastHasher)


# ----------------------------------------------------------------------------- 1. who owns the users file

@needs_root
def test_root_writing_the_users_file_keeps_its_owner_or_gives_it_to_the_service_account(server_home, monkeypatch,
                                                                                        fast_hash):
    """`scatd users add` as root made a root-owned 0600 file the server (as scatd) could not read, and
    every later change by root took it back from scatd."""
    from scatd_core import users

    path = server_home / "users.toml"
    monkeypatch.setenv("SCATD_SERVICE_USER", "nobody")
    users.add_user("alice", PASSWORD, admin=True)  # a new file: the service account's
    assert (path.stat().st_uid, oct(path.stat().st_mode & 0o777)) == (NOBODY, "0o600")
    assert users.ownership_note(path) is None
    monkeypatch.delenv("SCATD_SERVICE_USER")
    users.add_user("bob", PASSWORD)
    users.set_role("bob", True)
    users.remove_user("bob")  # root's changes keep the file the service account's
    assert (path.stat().st_uid, oct(path.stat().st_mode & 0o777)) == (NOBODY, "0o600")

    path.unlink()  # no service account known: root's file, and said
    users.add_user("alice", PASSWORD, admin=True)
    assert path.stat().st_uid == 0
    note = users.ownership_note(path)
    assert "only root can read it" in note and f"chown SERVICE_USER {path}" in note


@needs_root
def test_users_command_as_root_says_when_the_server_could_not_read_the_file(server_home, monkeypatch, capsys,
                                                                            fast_hash):
    import io

    from scatd_core.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "alice", "--admin", "--password-stdin"]) == 0
    err = capsys.readouterr().err
    assert "belongs to root and only root can read it" in err and "sudo -u SERVICE_USER scatd users" in err


def test_a_users_file_that_cannot_be_parsed_is_never_said_to_be_removed(server_home):
    """The hint was "Fix or remove it, then add users again": removing it deletes every account."""
    from scatd_core import users

    (server_home / "users.toml").write_text('[users.alice]\nhash = "$argon2id$..."\nadmin = tru\n')
    with pytest.raises(InputError) as err:
        users.load_users()
    said = err.value.message + " " + err.value.hint
    assert "remove" not in said.lower() and "holds the accounts: keep it" in said and "not valid TOML" in said


@needs_root
def test_a_users_file_this_account_cannot_read_says_how_to_fix_its_permissions(server_home, fast_hash):
    from scatd_core import users

    path = server_home / "users.toml"
    users.add_user("alice", PASSWORD)  # root's, 0600
    os.seteuid(NOBODY)
    try:
        with pytest.raises(InputError) as err:
            users.load_users(path)
    finally:
        os.seteuid(0)
    said = err.value.message + " " + err.value.hint
    assert "cannot be read by this account (nobody)" in said and f"chown SERVICE_USER {path}" in said
    assert "remove" not in said.lower()


# ----------------------------------------------------------------------------- 1. scatd doctor as root

def test_doctor_fails_when_the_service_account_cannot_read_the_users_file(server_home, monkeypatch, fast_hash):
    """Run as root, `scatd doctor` said "ok users: 1 user(s)" of a file only root could read."""
    from scatd_core import doctor, users
    from scatd_core.config import settings

    monkeypatch.setenv("SCATD_AUTH", "password")
    path = server_home / "users.toml"
    users.add_user("alice", PASSWORD, admin=True)  # this account's, 0600
    monkeypatch.setenv("SCATD_SERVICE_USER", "nobody")
    items = doctor._login(settings())
    failed = [i for i in items if i["status"] == "problem"]
    assert [i["what"] for i in failed] == ["users file"], items
    assert "cannot be read by nobody, the account the server runs as (server.service_user)" in failed[0]["detail"]
    assert f"`chown nobody {path}`" in failed[0]["detail"] and "-rw-------" in failed[0]["detail"]
    if os.geteuid() == 0:
        os.chown(path, NOBODY, -1)
        assert not [i for i in doctor._login(settings()) if i["status"] != "ok"]
        os.chown(path, 0, -1)
        monkeypatch.delenv("SCATD_SERVICE_USER")  # nobody named: root's private file is a warning
        warned = [i for i in doctor._login(settings()) if i["what"] == "users file"]
        assert warned and warned[0]["status"] == "warning" and "only root can read it" in warned[0]["detail"]


def test_doctor_fails_when_the_service_account_cannot_read_the_configuration_file(server_home, monkeypatch):
    from scatd_core import doctor
    from scatd_core.config import settings

    config = server_home / "config.toml"
    config.write_text('[server]\nservice_user = "nobody"\n')
    config.chmod(0o600)
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    items = doctor._config_file_items(settings())
    failed = [i for i in items if i["status"] == "problem"]
    assert failed and failed[0]["what"] == "configuration file" and "cannot be read by nobody" in failed[0]["detail"]
    config.chmod(0o644)
    assert not [i for i in doctor._config_file_items(settings()) if i["status"] == "problem"]


# ----------------------------------------------------------------------------- 2. what a removed user leaves

@pytest.fixture
def alices_things(server_home, fast_hash):
    """alice with a saved panel, a model she trained, one bob trained and a panel-training record of hers."""
    from _app_helpers import make_bundle, make_dataset
    from scatd_core import users

    users.add_user("alice", PASSWORD)
    cells = make_dataset(40, seed=6)
    made = {}
    for who in ("alice", "bob"):
        bundle = make_bundle(server_home / "models" / f"{who}_model", cells, steps=1, drug=who.upper())
        manifest = json.loads((bundle.path / "manifest.json").read_text())
        manifest["provenance"]["trained_by"] = who
        (bundle.path / "manifest.json").write_text(json.dumps(manifest))
        made[who] = bundle.path
    (server_home / "panels").mkdir()
    (server_home / "panels" / "alice.json").write_text(json.dumps({"panels": {"my panel": {"models": ["a", "b"]}}}))
    (server_home / "train-panel").mkdir()
    state = server_home / "train-panel" / "0123456789abcdef0123.json"
    state.write_text(json.dumps({"drugs": {"ALICE": {"status": "trained", "path": str(made["alice"].resolve())},
                                           "BOB": {"status": "trained", "path": str(made["bob"].resolve())}}}))
    return made, state


def test_users_remove_says_what_of_the_user_stays_and_where(server_home, alices_things, capsys):
    from scatd_core.cli import main

    made, state = alices_things
    assert main(["users", "remove", "alice"]) == 0
    err = capsys.readouterr().err
    assert f"saved panels: 1 (my panel) in {server_home / 'panels' / 'alice.json'}" in err
    assert f"1 drug in {state}" in err and "trained or imported by alice: 1: alice_model" in err
    assert "A new account named alice would get these saved panels" in err and "--delete-data" in err
    assert (server_home / "panels" / "alice.json").exists() and made["alice"].exists()  # nothing deleted


def test_users_remove_delete_data_deletes_the_users_data_and_models_only_when_asked(server_home, alices_things,
                                                                                   capsys):
    from scatd_core import users
    from scatd_core.cli import main

    made, state = alices_things
    assert main(["users", "remove", "alice", "--delete-models"]) == 2  # alone: refused, nothing changed
    assert "give it with --delete-data" in capsys.readouterr().err and users.list_users()
    assert main(["users", "remove", "alice", "--delete-data"]) == 0
    captured = capsys.readouterr()
    assert not (server_home / "panels" / "alice.json").exists() and not users.list_users()
    assert json.loads(state.read_text())["drugs"].keys() == {"BOB"}  # bob's record stays
    assert made["alice"].exists() and "alice_model" in captured.err and "--delete-models" in captured.err
    # the name already removed: --delete-data still deletes what it left
    assert main(["users", "remove", "alice", "--delete-data", "--delete-models"]) == 0
    assert "removed before" in capsys.readouterr().out
    assert not made["alice"].exists() and made["bob"].exists()
    # nothing left by that name: said, and not an error (README: both work on a name already removed)
    assert main(["users", "remove", "alice", "--delete-data"]) == 0
    out = capsys.readouterr().out
    assert "There is no user alice" in out and "nothing is left by that name" in out, out
    assert main(["users", "remove", "alice"]) == 2  # without --delete-data: the usual error
    assert "There is no user alice" in capsys.readouterr().err


def test_users_remove_delete_data_after_removing_a_user_who_left_nothing_says_so_and_succeeds(server_home, fast_hash,
                                                                                           capsys):
    """QA: `scatd users remove bob --delete-data` after `scatd users remove bob` (bob had left no data)
    failed 'error: There is no user bob.' (exit 2), though README and the help say both work on a name
    already removed."""
    from scatd_core import users
    from scatd_core.cli import main

    users.add_user("alice", "a-long-password-1")
    users.add_user("bob", "a-long-password-2")
    assert main(["users", "remove", "bob"]) == 0
    capsys.readouterr()
    assert main(["users", "remove", "bob", "--delete-data"]) == 0
    out = capsys.readouterr().out
    assert "There is no user bob" in out and "nothing is left by that name: nothing was deleted" in out, out
    assert [u.name for u in users.list_users()] == ["alice"]


def test_users_remove_delete_data_deletes_the_app_users_panels_never_the_os_accounts_of_the_same_name(
        server_home, alices_things, capsys):
    """The app login alice and the operating-system account alice are two identities (their saved panels
    are kept apart: <home>/panels/alice.json and <home>/panels/cli/alice.json). `users remove alice
    --delete-data` deleted both: removing the app user deleted what the OS account alice saved with
    `scatd panel`. Now it deletes the app login's panels (and their lock file) only, never lists the
    command line's among the removed user's data, and says they are kept and whose they are."""
    from scatd_core import panel
    from scatd_core.cli import main

    made, state = alices_things
    models = [p.name for p in made.values()]
    panel.save_panel("app panel", models, "alice")
    panel.save_panel("cli panel", models, "alice", cli=True)
    panel.save_panel("his", models, "bob", cli=True)
    folder = server_home / "panels"
    cli_file = folder / "cli" / "alice.json"
    assert main(["users", "remove", "alice"]) == 0  # without --delete-data: only the login's are listed
    err = capsys.readouterr().err
    assert f"saved panels: 2 (app panel, my panel) in {folder / 'alice.json'}" in err
    assert "cli panel" not in err and str(cli_file) not in err
    assert main(["users", "remove", "alice", "--delete-data"]) == 0
    captured = capsys.readouterr()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["cli/alice.json", "cli/alice.lock", "cli/bob.json", "cli/bob.lock"]  # the OS accounts' stay
    assert set(panel.list_panels("alice", cli=True)) == {"cli panel"}
    assert f"Deleted the saved panels {folder / 'alice.json'}\n" in captured.out
    assert str(cli_file) not in captured.out
    assert (f"note: the command line's saved panels in {cli_file} are the operating-system account alice's "
            "(another identity than the app login alice): kept.") in captured.err


def test_adding_a_name_whose_earlier_account_left_data_says_so(server_home, alices_things, monkeypatch, capsys):
    import io

    from scatd_core.cli import main

    assert main(["users", "remove", "alice"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "alice", "--password-stdin"]) == 0
    err = capsys.readouterr().err
    assert "data of an earlier account named alice is still here" in err and "my panel" in err


# ----------------------------------------------------------------------------- 3. logins are logged

def test_the_lockout_wait_is_rounded_up_to_whole_minutes():
    """QA: 89 s left was said as "1 minute" (rounded down), so a user trying again then was refused."""
    from scatd_app.auth import lockout_text

    said = {s: lockout_text(s).removeprefix("Too many failed attempts: try again in ") for s in
            (0, 1, 59, 60, 61, 89, 119.5, 120, 899.9, 900)}
    assert said == {0: "1 minute.", 1: "1 minute.", 59: "1 minute.", 60: "1 minute.", 61: "2 minutes.",
                    89: "2 minutes.", 119.5: "2 minutes.", 120: "2 minutes.", 899.9: "15 minutes.",
                    900: "15 minutes."}


def test_logins_failures_and_lock_outs_are_logged_without_the_password(server_home, fast_hash, caplog):
    from scatd_app import auth
    from scatd_core import users

    users.add_user("alice", PASSWORD)
    throttle = users.LoginThrottle(max_failures=2, window_seconds=60)
    caplog.set_level(logging.INFO, logger="scatd.auth")
    assert auth.attempt_login("alice", "wrong password 1", throttle, "10.0.0.7") == (None, 0.0)
    assert auth.attempt_login("alice\nforged line", "wrong password 2", throttle, "10.0.0.7") == (None, 0.0)
    user, wait = auth.attempt_login("alice", PASSWORD, throttle, "10.0.0.7")
    assert user is None and wait > 0  # the address is locked out
    throttle.succeeded("ip:10.0.0.7")
    assert auth.attempt_login("alice", PASSWORD, throttle, "10.0.0.8")[0] == users.User("alice", False)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "scatd.auth"]
    text = "\n".join(m for _, m in records)
    assert records[0] == (logging.WARNING, "login failed: user 'alice' from 10.0.0.7: wrong user name or password")
    assert "user 'alice\\nforged line' from 10.0.0.7" in records[1][1] and "now locked out for 60" in records[1][1]
    assert records[2][0] == logging.WARNING and "login refused: user 'alice' from 10.0.0.7 is locked out" in text
    assert records[3] == (logging.INFO, "login: user 'alice' logged in from 10.0.0.8")
    assert "wrong password" not in text and PASSWORD not in text


def test_the_login_form_logs_each_attempt_and_says_when_one_starts_a_lock_out(server_home, fast_hash, monkeypatch,
                                                                             caplog):
    """Six wrong passwords left the server's log empty: the form's attempts are logged. QA: the failed
    attempt that started a lock-out said only "wrong password"; the next one said it was locked out."""
    from streamlit.testing.v1 import AppTest

    from scatd_app import auth
    from scatd_core import users
    from test_app_pages import APP

    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_AUTH_MAX_FAILURES", "1")
    monkeypatch.setenv("SCATD_AUTH_LOCKOUT_MINUTES", "15")
    users.add_user("alice", PASSWORD)
    auth._throttle.clear()
    caplog.set_level(logging.INFO, logger="scatd.auth")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    said_on_page = []
    for password in ("wrong password!", PASSWORD):
        at.text_input(key="login_name").set_value("alice")
        at.text_input(key="login_password").set_value(password)
        at.get("form_submit_button")[0].click()
        at.run()
        said_on_page.append(" ".join(e.value for e in at.error))
    auth._throttle.clear()
    assert said_on_page[0] == ("Wrong user name or password. Too many failed attempts: try again in "
                               "15 minutes.")
    assert said_on_page[1] == said_on_page[0].removeprefix("Wrong user name or password. ")
    said = [r.getMessage() for r in caplog.records if r.name == "scatd.auth"]
    assert len(said) == 2 and said[0].startswith("login failed: user 'alice' from ") and "locked out" in said[0]
    assert said[1].startswith("login refused: user 'alice' from ") and "wrong password" not in " ".join(said)


def test_removing_the_last_account_still_tells_its_open_session_why_it_was_logged_out(server_home, fast_hash,
                                                                                     monkeypatch, caplog):
    """Seen in Chromium: with alice the only account, `scatd users remove alice` logged her page out
    with "no user account exists yet" alone; why she was logged out was dropped."""
    from streamlit.testing.v1 import AppTest

    from scatd_core import users
    from test_app_pages import APP

    caplog.set_level(logging.INFO, logger="scatd.auth")
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setenv("SCATD_AUTH", "password")
    users.add_user("alice", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.text_input(key="login_name").set_value("alice")
    at.text_input(key="login_password").set_value(PASSWORD)
    at.get("form_submit_button")[0].click()
    at.run()
    assert "Logged in as alice" in " ".join(c.value for c in at.caption)
    users.remove_user("alice")
    at.run()
    said = [w.value.replace("\\", "") for w in at.warning]  # as markdown: the colon escaped
    assert said[0] == "You were logged out: your account was removed by an administrator.", said
    assert "no user account exists yet" in said[1]
    # the server's log line (QA: "logout: user 'alice''s session ended", a doubled quote)
    logged = [r.getMessage() for r in caplog.records if r.name == "scatd.auth" and "ended" in r.getMessage()]
    assert logged == ["logout: the session of user 'alice' ended: You were logged out: your account was removed "
                      "by an administrator."], logged


def test_the_login_page_says_when_a_lock_out_really_ends(server_home, fast_hash, monkeypatch):
    """QA: the login page said "3 failed attempts lock an account or address for 15 minutes", read as
    15 minutes from the last failure; the lock-out ends 15 minutes after the FIRST counted failure.
    The caption states that rule, and the error the time actually left (rounded up to a minute)."""
    import time as real_time

    from streamlit.testing.v1 import AppTest

    from scatd_app import auth
    from scatd_core import users
    from test_app_pages import APP

    class Clock:  # the throttle's clock (time.monotonic), moved by hand; the rest of time as it is
        now = 10_000.0

        def monotonic(self):
            return self.now

        def __getattr__(self, name):
            return getattr(real_time, name)

    clock = Clock()
    monkeypatch.setattr(users, "time", clock)
    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setenv("SCATD_AUTH", "password")
    monkeypatch.setenv("SCATD_AUTH_MAX_FAILURES", "3")
    monkeypatch.setenv("SCATD_AUTH_LOCKOUT_MINUTES", "15")
    users.add_user("alice", PASSWORD)
    auth._throttle.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert " ".join(c.value for c in at.caption).endswith(
        "3 failed attempts within 15 minutes lock an account or address until 15 minutes after the first of them.")
    said = []
    try:
        for after, password in ((0, "wrong password!"), (600, "wrong password!"), (840, "wrong password!"),
                                (870, PASSWORD)):
            clock.now = 10_000.0 + after
            at.text_input(key="login_name").set_value("alice")
            at.text_input(key="login_password").set_value(password)
            at.get("form_submit_button")[0].click()
            at.run()
            said.append(" ".join(e.value for e in at.error))
        # locked at 14:00 by failures at 0:00, 10:00 and 14:00: free at 15:00, not at 29:00
        assert said[2] == "Wrong user name or password. Too many failed attempts: try again in 1 minute."
        assert said[3] == "Too many failed attempts: try again in 1 minute."  # 30 s left, rounded up
        clock.now = 10_000.0 + 901
        at.text_input(key="login_password").set_value(PASSWORD)
        at.get("form_submit_button")[0].click()
        at.run()
        assert not at.error and "Logged in as alice" in " ".join(c.value for c in at.caption)
    finally:
        auth._throttle.clear()


def test_a_login_never_owns_the_models_made_with_the_servers_command_line(server_home, alices_things):
    """QA: `scatd train` run as root, then a login named root: `users add root` said the lab's models
    were an earlier account's, and `users remove root --delete-data --delete-models` deleted them. A
    model made with the command line (recorded via 'command line', or trained by `scatd train`) is
    the lab's, whichever system account made it: never a login's data."""
    from scatd_core import users

    made, state = alices_things
    for how in ({"via": "command line"}, {"source": "trained by scATD Studio (scatd train-panel)"}):
        manifest = json.loads((made["alice"] / "manifest.json").read_text())
        manifest["provenance"].update(how)
        (made["alice"] / "manifest.json").write_text(json.dumps(manifest))
        found = users.user_data("alice")
        assert found.models == [] and found.states == {}, how  # the record pointing at it is not hers either
        assert found.panels_file is not None  # her saved panels still are


# ----------------------------------------------------------------------------- 4. OIDC: who may sign in

@pytest.fixture
def oidc_server(server_home, monkeypatch):
    """An OIDC server whose [auth] section is in its configuration file (no allow-list yet)."""
    config = server_home / "config.toml"
    config.write_text('[auth]\nmode = "oidc"\nadmins = ["Admin@Lab.org"]\n')
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    for name in ("SCATD_AUTH", "SCATD_AUTH_ADMINS", "SCATD_AUTH_ALLOWED_EMAILS", "SCATD_AUTH_ALLOWED_DOMAINS"):
        monkeypatch.delenv(name, raising=False)
    return config


def test_doctor_says_who_may_sign_in_with_oidc_and_fails_when_nobody_may(oidc_server):
    """QA: `scatd doctor` said only the admins in OIDC mode; nothing said that anyone the identity
    provider accepts got in. Now the allow-list is listed, and its absence fails."""
    from scatd_core import doctor
    from scatd_core.config import settings

    def login(text):
        oidc_server.write_text('[auth]\nmode = "oidc"\nadmins = ["Admin@Lab.org"]\n' + text)
        return {(i["what"], i["status"]): i["detail"] for i in doctor._login(settings())}

    items = login("")
    assert items[("admins", "ok")] == "admin@lab.org"
    assert "neither auth.allowed_emails nor auth.allowed_domains is set: every sign-in is refused" in items[
        ("allowed", "problem")] and str(oidc_server) in items[("allowed", "problem")]
    import io

    from scatd_app import preflight

    said = io.StringIO()  # the server's log says so as it starts (it serves: the page says why nobody gets in)
    preflight.report(settings(), said)
    assert "scATD Studio: configuration: login: allowed: neither auth.allowed_emails nor" in said.getvalue()
    items = login('allowed_domains = ["LAB.org"]\nallowed_emails = ["guest@gmail.com"]\n')
    assert items[("allowed", "ok")] == "addresses: guest@gmail.com; domains: lab.org"
    # (the [auth] secrets and Authlib are checked too: tests/test_oidc_deploy.py)
    assert not [k for k in items if k[1] != "ok" and k[0] in ("admins", "allowed", "users file")], items
    items = login('allowed_domains = ["*"]\n')
    assert "anyone in the world" in items[("allowed", "warning")]
    items = login('allowed_emails = ["alice@lab.org", "uni.edu"]\n')
    assert "admin@lab.org cannot sign in" in items[("admins", "warning")]
    assert "not e-mail addresses: uni.edu" in items[("allowed", "warning")]


def test_users_commands_say_the_users_file_is_unused_with_oidc(oidc_server, fast_hash, monkeypatch, capsys):
    """QA: `scatd users add bob@lab.org --admin` said "Added (admin)" and `users remove` warned that
    no admin was left, while the OIDC server ignores the users file and auth.admins has one."""
    import io

    from scatd_core.cli import main

    oidc_server.write_text('[auth]\nmode = "oidc"\nadmins = ["Admin@Lab.org"]\nallowed_domains = ["lab.org"]\n')
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "bob@lab.org", "--admin", "--password-stdin"]) == 0
    out, err = capsys.readouterr()
    assert "(not used for sign-in: this server signs in with OIDC)" in out
    assert 'This server signs in with OIDC (auth.mode = "oidc"): the users file is not used for sign-in' in err
    assert "Who may sign in (auth.allowed_emails, auth.allowed_domains): domains lab.org." in err
    assert "Administrators (auth.admins): admin@lab.org." in err and str(oidc_server) in err
    assert main(["users", "remove", "bob@lab.org"]) == 0
    out, err = capsys.readouterr()
    assert "no admin is left" not in err and "not used for sign-in with OIDC" in out
    assert "bob@lab.org can still sign in with OIDC" in err and "auth.allowed_domains" in err
    assert main(["users", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "signs in with OIDC" in err and "Add one with" not in err
    # the address as typed in any case finds the data of the user, kept under the lower-case address
    from scatd_core.panel import panels_file

    saved = panels_file("carol@lab.org")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text('{"panels": {"mine": {"models": ["A", "B"]}}}')
    assert main(["users", "remove", "Carol@Lab.org", "--delete-data"]) == 0
    out, err = capsys.readouterr()
    assert "the user is the address in lower case: carol@lab.org" in err and not saved.exists()


def test_the_oidc_allow_list_matches_whole_addresses_and_domains_in_any_case():
    from scatd_core.oidc_access import decide

    def who(claims, emails=(), domains=(), admins=("admin@lab.org",)):
        conf = {"auth_allowed_emails": emails, "auth_allowed_domains": domains, "auth_admins": admins}
        user = decide({"email_verified": True, "sub": "s1", **claims}, conf).user
        return user and (user.name, user.admin)

    assert who({"email": "Bob@LAB.org"}, domains=("@Lab.Org",)) == ("bob@lab.org", False)
    assert who({"email": "admin@lab.org"}, emails=("ADMIN@lab.org",)) == ("admin@lab.org", True)
    for stranger in ("bob@sub.lab.org", "bob@evil-lab.org", "bob@lab.org.evil.com", "lab.org@evil.com"):
        assert who({"email": stranger}, domains=("lab.org",)) is None, stranger
    assert who({"email": "bob@lab.org"}, emails=("alice@lab.org",)) is None
    assert who({"email": "anyone@gmail.com"}, domains=("*",)) == ("anyone@gmail.com", False)
    assert who({"email": "anyone@gmail.com"}, emails=("*",)) is None  # "*" is a domain entry only
    assert who({"email": "x@lab.org", "email_verified": "FALSE"}, domains=("*",)) is None  # "*" needs a confirmed one
    assert who({"email": "x@lab.org", "email_verified": "false"}, emails=("oidc:s1",)) == ("oidc:s1", False)
    assert who({"email": "admin@lab.org"}, domains=()) is None  # nothing set: nobody, not even an admin
    refused = decide({"email": "x@lab.org", "sub": "s1"}, {"auth_allowed_emails": (), "auth_allowed_domains": ("lab.org",),
                                                            "auth_admins": ()})
    assert refused.reason == "the identity provider did not confirm the e-mail address 'x@lab.org' (email_verified is absent)"
    assert "identifier oidc:s1" in refused.message and "the person who runs this server" in refused.message


# ----------------------------------------------------------------------------- 4. a removed account ends at once

def test_a_removed_account_or_a_new_password_ends_its_links_and_uploads_at_once(server_home, fast_hash, monkeypatch):
    """QA: after `scatd users remove alice` her download links were still served, and her session could
    still upload, until her next page action. The serving checks now read the users file (when it
    changed) and refuse her session at once; a role change, or the same password again, keeps it."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    from scatd_app import uploads
    from scatd_core import users

    assert uploads.install()
    manager = MediaFileManager(MemoryMediaFileStorage("/media"))
    monkeypatch.setattr(uploads, "_media_manager", lambda: manager)
    who = {"sid": ""}
    monkeypatch.setattr(uploads, "current_session_id", lambda: who["sid"])
    monkeypatch.setattr("streamlit.runtime.media_file_manager._get_session_id", lambda: who["sid"])
    links = {}
    try:
        for name in ("alice", "bob"):
            users.add_user(name, PASSWORD)
            user = users.verify(name, PASSWORD)
            who["sid"] = f"{name}-tab"
            uploads.allow(who["sid"], user.name, user.login_stamp)
            links[name] = manager.add(f"{name}'s predictions".encode(), "text/csv", "1.2", file_name="p.csv",
                                      is_for_static_download=True)
        assert all(uploads.media_servable(url) for url in links.values())
        assert uploads.refusal("alice-tab", 10, {}) is None

        users.remove_user("alice")  # no page run of alice's in between
        assert not uploads.media_servable(links["alice"])
        assert manager.read_file(links["alice"].rsplit("/", 1)[-1]) is None  # deleted, not hidden
        assert uploads.refusal("alice-tab", 10, {}) == "Log in before uploading."
        assert uploads.media_servable(links["bob"]) and uploads.is_allowed("bob-tab")

        users.set_role("bob", admin=True)  # a new role, or the same password again: still signed in
        users.add_user("bob", PASSWORD, replace=True)
        assert uploads.media_servable(links["bob"])
        users.add_user("bob", "another long password", replace=True)  # a new password: out at once
        assert not uploads.media_servable(links["bob"]) and not uploads.is_allowed("bob-tab")
    finally:
        uploads.disallow("alice-tab")
        uploads.disallow("bob-tab")


def test_an_upload_refused_because_the_login_ended_runs_that_page_again_to_say_why(server_home, fast_hash,
                                                                                   monkeypatch):
    """QA: after `scatd users remove alice` (or a new password), her next upload showed only Streamlit's
    "AxiosError: Request failed with status code 403" under the uploader: its frontend shows the
    error's own text, never the answer's body, and a refused upload runs no page. The refusal now asks
    Streamlit to run her page again, which logs her out with why; nobody else's page is run."""
    from streamlit.runtime import Runtime

    from scatd_app import uploads
    from scatd_core import users

    reruns = []

    class Page:
        def __init__(self, sid):
            self.sid = sid

        def request_rerun(self, client_state):
            reruns.append((self.sid, client_state))

    class FakeRuntime:  # Streamlit's public Runtime.get_app_session; no upload or media store
        uploaded_file_mgr = media_file_mgr = None

        def get_app_session(self, sid):
            return Page(sid)

    monkeypatch.setattr(Runtime, "_instance", FakeRuntime())
    assert uploads.install()
    try:
        for name in ("alice", "bob"):
            users.add_user(name, PASSWORD)
            user = users.verify(name, PASSWORD)
            uploads.allow(f"{name}-tab", user.name, user.login_stamp)
        assert uploads.refusal("alice-tab", 10, {}) is None and reruns == []  # still signed in: no rerun
        users.remove_user("alice")
        assert uploads.refusal("alice-tab", 10, {}) == "Log in before uploading."
        assert reruns == [("alice-tab", None)]  # her page runs again now (and says why), once
        assert uploads.refusal("alice-tab", 10, {}) is not None and len(reruns) == 1
        users.add_user("bob", "another long password", replace=True)  # a new password: the same
        assert not uploads.is_allowed("bob-tab") and reruns[-1] == ("bob-tab", None)
        assert not uploads.is_allowed("nobody-tab") and len(reruns) == 2  # never signed in: nothing to say
    finally:
        uploads.disallow("alice-tab")
        uploads.disallow("bob-tab")


def _login_form(monkeypatch, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    from scatd_core import users
    from test_app_pages import APP

    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    monkeypatch.setenv("SCATD_AUTH", "password")
    if not users.list_users():
        users.add_user("alice", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def test_the_login_form_asks_password_managers_for_the_saved_password(server_home, fast_hash, monkeypatch):
    """QA: the password field said autocomplete="new-password" (Streamlit's default for a password),
    so password managers offered to make up a new password instead of filling in the saved one."""
    at = _login_form(monkeypatch)
    assert at.text_input(key="login_name").proto.autocomplete == "username"
    assert at.text_input(key="login_password").proto.autocomplete == "current-password"


def test_the_login_form_says_a_session_kept_on_the_server_is_resumed_after_the_login(server_home, fast_hash,
                                                                                    monkeypatch):
    """QA: reloading the page (its ?s= address) showed the login form with no word that the work was
    kept; a biologist thought it lost. Said whenever the address names a session still kept, whoever's
    it is (nothing tells a visitor whose it is)."""
    from scatd_app import session

    kept = session.SessionStore()
    monkeypatch.setattr(session, "store", lambda: kept)
    monkeypatch.setenv("SCATD_WORK_DIR", str(server_home / "work"))
    kept.put("bobs-token", "bob", {session.SESSION_ID: "s-bob"})  # another user's session, still kept
    said = "Log in to continue where you were"
    fresh = _login_form(monkeypatch)
    assert said not in " ".join(e.value for e in fresh.info)
    reloaded = _login_form(monkeypatch, {"s": "bobs-token"})
    shown = " ".join(e.value for e in reloaded.info)
    assert said in shown and "kept on the server" in shown and "its own user" in shown
    assert "bob" not in shown.replace("bobs-token", "") and not reloaded.warning


def _before_login(at) -> str:
    return " ".join(e.value for e in (*at.info, *at.warning))


def test_the_login_form_of_an_ended_session_says_it_ended_and_promises_nothing(server_home, fast_hash,
                                                                                monkeypatch):
    """QA: opening the address of a session that was logged out (or expired) showed "Log in to continue
    where you were: a session kept on the server ... is resumed", and after the login "That session was
    logged out: its data were removed". The form says it ended before the login, with the same sentence
    for a logout, an expiry and a made-up address (nothing about whose it was, or whether it ever was)."""
    from scatd_app import session

    kept = session.SessionStore()
    monkeypatch.setattr(session, "store", lambda: kept)
    monkeypatch.setenv("SCATD_WORK_DIR", str(server_home / "work"))
    monkeypatch.setenv("SCATD_SESSION_TTL_MINUTES", "30")
    logged_out, idle = f"{session.INSTANCE}.{'a' * 32}", f"{session.INSTANCE}.{'b' * 32}"
    kept.put(logged_out, "alice", {session.SESSION_ID: "s-out"})
    kept.forget(logged_out, "alice")  # alice logged out of it
    kept.put(idle, "alice", {session.SESSION_ID: "s-idle"})
    kept._records[idle].touched -= 31 * 60  # idle past the limit; not yet swept
    kept._last_sweep = 0.0
    shown = {}
    for name, token in (("logged out", logged_out), ("idle", idle), ("made up", "any-token-at-all")):
        at = _login_form(monkeypatch, {"s": token})
        assert not at.exception, [e.value for e in at.exception]
        shown[name] = _before_login(at)
        assert "continue where you were" not in shown[name] and "resumed" not in shown[name], shown[name]
        assert "The session at this address has ended" in shown[name] and "not kept" in shown[name]
        assert "idle for more than 30 minutes" in shown[name] and "upload your data again" in shown[name]
        assert "alice" not in shown[name]
        assert [t.label for t in at.text_input] == ["User name", "Password"]  # the login follows
    assert len(set(shown.values())) == 1, shown
    assert not kept.kept(idle)  # let go at once: the login cannot resume it after all
    restarted = _before_login(_login_form(monkeypatch, {"s": f"0badf00d.{'c' * 32}"}))
    assert "has ended: the server was restarted since" in restarted and "continue where you were" not in restarted
