"""The deployment files and the checks `scatd doctor` makes for them (a sandboxed server: systemd's
ProtectSystem=strict / ProtectHome=true, a container)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (DEPLOY / "scatd-studio.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_the_systemd_unit_gives_numba_and_matplotlib_a_folder_its_sandbox_lets_them_write():
    unit = _unit()
    assert unit["ProtectSystem"] == ["strict"] and unit["ProtectHome"] == ["true"]
    env = dict(pair.split("=", 1) for value in unit["Environment"] for pair in value.split())
    writable = [*" ".join(unit.get("ReadWritePaths", [])).split(), "/tmp"]
    writable += [f"/var/cache/{d}" for v in unit.get("CacheDirectory", []) for d in v.split()]
    writable += [f"/var/lib/{d}" for v in unit.get("StateDirectory", []) for d in v.split()]
    for name in ("NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert name in env, name
        assert any(env[name] == w or env[name].startswith(w.rstrip("/") + "/") for w in writable), (name, env[name])


def test_the_systemd_unit_keeps_what_the_server_writes_from_other_accounts():
    """QA: the server ran with the default umask 022: whatever it wrote was readable by every account."""
    [umask] = _unit()["UMask"]
    assert int(umask, 8) & 0o007 == 0o007  # nothing for other accounts (the library's group may read models)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_images_give_numba_and_matplotlib_a_writable_folder(name):
    text = (DEPLOY / name).read_text()
    for var in ("NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert re.search(rf"{var}=/tmp/", text), var



@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_images_have_a_health_check_and_say_who_must_own_the_mounted_folder(name):
    text = (DEPLOY / name).read_text()
    assert re.search(r"^HEALTHCHECK CMD .*_stcore/health", text, re.M)
    assert "useradd --create-home --uid 1000" in text and "chown 1000:1000 /srv/scatd" in text

def test_doctor_fails_when_numba_cannot_write_its_cache_and_says_how_to_fix_it(tmp_path, monkeypatch):
    from scatd_core import doctor

    locked, free = tmp_path / "locked", tmp_path / "free"
    monkeypatch.setattr(doctor, "_writable", lambda p: not str(p).startswith(str(locked)))
    # NUMBA_CACHE_DIR set to a folder this account cannot write
    item = doctor._numba_cache_item({"NUMBA_CACHE_DIR": str(locked / "numba")})
    assert item["status"] == "problem" and "no locator available" in item["detail"]
    assert "NUMBA_CACHE_DIR" in item["detail"] and "CacheDirectory=" in item["detail"]
    assert doctor._numba_cache_item({"NUMBA_CACHE_DIR": str(free)})["status"] == "ok"
    # unset: the packages' folders, else numba's user-wide folder
    monkeypatch.setattr(doctor, "_package_dir", lambda name: locked / name)
    monkeypatch.setattr(doctor, "_numba_user_cache", lambda: locked / "home" / ".cache" / "numba")
    item = doctor._numba_cache_item({})
    assert item["status"] == "problem" and "NUMBA_CACHE_DIR is not set" in item["detail"]
    assert str(locked / "scanpy") in item["detail"]
    monkeypatch.setattr(doctor, "_numba_user_cache", lambda: free / "numba")
    assert doctor._numba_cache_item({})["status"] == "ok"
    monkeypatch.setattr(doctor, "_package_dir", lambda name: free / name)
    assert doctor._numba_cache_item({})["status"] == "ok"


def test_doctor_checks_matplotlibs_folder(tmp_path, monkeypatch):
    from scatd_core import doctor

    locked = tmp_path / "locked"
    monkeypatch.setattr(doctor, "_writable", lambda p: not str(p).startswith(str(locked)))
    item = doctor._matplotlib_item({"MPLCONFIGDIR": str(locked / "mpl")})
    assert item["status"] == "warning" and "MPLCONFIGDIR" in item["detail"]
    assert doctor._matplotlib_item({"MPLCONFIGDIR": str(tmp_path / "mpl")})["status"] == "ok"
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(locked / "tmp"))  # nor a temporary folder
    item = doctor._matplotlib_item({"MPLCONFIGDIR": str(locked / "mpl")})
    assert item["status"] == "problem" and "MPLCONFIGDIR" in item["detail"]


def test_doctor_reports_the_caches(monkeypatch):
    from scatd_core import doctor

    monkeypatch.setattr(doctor, "_writable", lambda p: False)
    monkeypatch.setattr(doctor, "_numba_user_cache", lambda: Path("/nonexistent/numba"))
    report = doctor.diagnose()
    numba = next(i for i in report["sections"]["caches"] if i["what"] == "numba cache")
    assert numba["status"] == "problem" and report["n_problems"] >= 1


# ----------------------------------------------------------------------------- scatd doctor, run
# by the unit's ExecStartPre: a FAIL keeps the whole service from starting


def test_doctor_warns_of_a_damaged_model_without_failing_the_library(tmp_path):
    from scatd_core.bundle import MANIFEST
    from scatd_core.doctor import _library

    library = tmp_path / "models"
    (library / "broken_model").mkdir(parents=True)
    (library / "broken_model" / MANIFEST).write_text("{ not json")
    items = _library({"library": library})
    assert all(i["status"] != "problem" for i in items), items
    damaged = next(i for i in items if i["what"] == "broken_model")
    assert damaged["status"] == "warning"
    # QA: the warning said what is wrong but not what to do; it names the way out now
    assert "scatd models remove broken_model --yes" in damaged["detail"], damaged
    assert "re-import" in damaged["detail"] and "re-train" in damaged["detail"], damaged
    assert "not offered" in damaged["detail"], damaged  # why a warning: nobody can pick it


def test_doctor_fails_when_the_model_library_is_a_file(tmp_path, monkeypatch):
    from scatd_core import doctor

    not_a_folder = tmp_path / "models.txt"
    not_a_folder.write_text("x")
    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(not_a_folder))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    from scatd_core.config import settings

    conf = settings()
    library = doctor._library(conf)
    assert library[0]["status"] == "problem" and "not a folder" in library[0]["detail"]
    item = next(i for i in doctor._configuration(conf) if i["what"] == "library")
    assert item["status"] == "problem" and "not a folder" in item["detail"]


def test_doctor_says_a_missing_configuration_file_once_and_not_as_ok(tmp_path, monkeypatch):
    from scatd_core.config import settings
    from scatd_core.doctor import _configuration

    missing = tmp_path / "nowhere" / "config.toml"
    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCATD_CONFIG", str(missing))
    items = _configuration(settings())
    about = [i for i in items if str(missing) in i["detail"]]
    assert len(about) == 1 and about[0]["what"] == "configuration file" and about[0]["status"] == "warning"
    assert "does not exist" in about[0]["detail"]
    assert not any(i["status"] == "ok" and i["what"] == "configuration file" for i in items)


# ----------------------------------------------------------------------------- scatd doctor run as root
# (QA: it said folders were writable because it asked os.access, which answers for the real uid)

NOBODY = 65534


@pytest.fixture
def root_owned_folder():
    """A folder of this account, 0755, that other accounts can reach (pytest's folders are 0700)."""
    import os
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="scatd-doctor-"))
    folder.chmod(0o755)
    yield folder
    if os.geteuid() != os.getuid():
        os.seteuid(os.getuid())
    shutil.rmtree(folder, ignore_errors=True)


def test_doctor_makes_a_file_to_know_a_folder_is_writable(root_owned_folder, monkeypatch):
    import os

    from scatd_core import doctor

    assert doctor._writable(root_owned_folder) and doctor._writable(root_owned_folder / "not" / "made")
    assert list(root_owned_folder.iterdir()) == []  # the file made to check is removed
    (root_owned_folder / "a-file").write_text("x")
    assert not doctor._writable(root_owned_folder / "a-file" / "below")
    if os.geteuid() != 0:
        pytest.skip("the effective account differs from the real one only when the tests run as root")
    # the effective account is nobody, the real one root: os.access answered for root ("writable")
    monkeypatch.setenv("SCATD_HOME", str(root_owned_folder))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.delenv("SCATD_SERVICE_USER", raising=False)
    from scatd_core.config import settings

    conf = settings()
    os.seteuid(NOBODY)
    try:
        assert not doctor._writable(root_owned_folder)
        item = doctor._folder_item("home", root_owned_folder)
    finally:
        os.seteuid(0)
    assert item["status"] == "problem" and "cannot be written by this account (nobody)" in item["detail"], item
    assert "a file could not be made in it (Permission denied)" in item["detail"], item  # what stopped it
    assert doctor._folder_item("home", conf["home"])["status"] == "ok"


def test_doctor_run_as_root_says_so_and_how_to_check_the_service_account(tmp_path, monkeypatch):
    from scatd_core import doctor
    from scatd_core.config import settings

    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.delenv("SCATD_SERVICE_USER", raising=False)
    monkeypatch.setattr(doctor, "_running_as_root", lambda: True, raising=False)
    monkeypatch.setattr(doctor, "UNIT_FILES", (tmp_path / "none.service",), raising=False)
    items = doctor._configuration(settings())
    said = [i for i in items if i["what"] == "checked as"]
    assert len(said) == 1 and said[0]["status"] == "warning", items
    assert "root may write in any folder" in said[0]["detail"]
    assert "`sudo -u SERVICE_USER scatd doctor`" in said[0]["detail"]
    assert "deploy/scatd-studio.service" in said[0]["detail"] and "server.service_user" in said[0]["detail"]
    # the installed unit names the account
    unit = tmp_path / "scatd-studio.service"
    unit.write_text((DEPLOY / "scatd-studio.service").read_text())
    monkeypatch.setattr(doctor, "UNIT_FILES", (tmp_path / "none.service", unit))
    said = next(i for i in doctor._configuration(settings()) if i["what"] == "checked as")
    assert "`sudo -u scatd scatd doctor`" in said["detail"] and f"User= in {unit}" in said["detail"]
    # not root: nothing to say
    monkeypatch.setattr(doctor, "_running_as_root", lambda: False)
    assert not [i for i in doctor._configuration(settings()) if i["what"] == "checked as"]


def test_doctor_checks_the_folders_owner_and_mode_against_the_service_account(root_owned_folder, monkeypatch):
    import os

    from scatd_core import doctor
    from scatd_core.config import settings

    monkeypatch.setenv("SCATD_HOME", str(root_owned_folder))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.setenv("SCATD_SERVICE_USER", "nobody")
    items = doctor._configuration(settings())
    said = {i["what"]: i for i in items if "cannot be written by nobody" in i["detail"]}
    warned = {what: i["detail"] for what, i in said.items()}
    assert set(warned) == {"home", "library", "work_dir"}, items
    # QA: all three were WARN, though the server does not start without home and work_dir: those FAIL
    # (doctor exits 1), the library (imports and training refused, the rest works) stays a warning
    assert {what: i["status"] for what, i in said.items()} == {"home": "problem", "work_dir": "problem",
                                                              "library": "warning"}, said
    assert "the server does not start" in warned["home"] and "the server does not start" in warned["work_dir"]
    assert "the server starts" in warned["library"] and "the server does not start" not in warned["library"]
    assert "drwxr-xr-x" in warned["home"] and "(server.service_user)" in warned["home"]
    assert f"chown -R nobody {root_owned_folder}`" in warned["home"]
    assert f"mkdir -p {root_owned_folder / 'models'} && chown" in warned["library"]  # not made yet
    assert "sudo -u nobody scatd doctor" in warned["home"]
    root_owned_folder.chmod(0o777)
    assert not [i for i in doctor._configuration(settings()) if "cannot be written by nobody" in i["detail"]]
    assert doctor._could_write("nobody", root_owned_folder) is None
    if os.geteuid() != NOBODY:
        hidden = root_owned_folder / "hidden"
        (hidden / "inside").mkdir(parents=True)
        hidden.chmod(0o700)
        assert "does not let nobody through" in doctor._could_write("nobody", hidden / "inside")
    assert "no account" in doctor._could_write("no-such-account-here", root_owned_folder)


def _acl_letting(folder: Path, uid: int) -> bool:
    """Give the account ``uid`` rwx on ``folder`` by a POSIX ACL (as `setfacl -m u:UID:rwx`, written
    as the raw xattr: setfacl may not be installed); False where the file system has no ACLs."""
    import os
    import struct

    undefined = 0xFFFFFFFF
    entries = [(0x01, 7, undefined), (0x02, 7, uid), (0x04, 5, undefined), (0x10, 7, undefined), (0x20, 5, undefined)]
    try:  # user::rwx, user:UID:rwx, group::r-x, mask::rwx, other::r-x
        os.setxattr(folder, "system.posix_acl_access",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
    except OSError:
        return False
    return True


def test_doctor_as_root_tries_to_write_as_the_service_account_the_mode_bits_miss_an_acl(root_owned_folder,
                                                                                           monkeypatch):
    """QA: run as root, doctor judged the service account's folders from their owner and mode bits only:
    a folder root owns that an ACL lets the account write was FAIL (the server would start), and a read-only
    mount or an immutable folder would be ok. As root it now makes a file there as that account."""
    import os

    from scatd_core import doctor
    from scatd_core.config import settings

    if os.geteuid() != 0:
        pytest.skip("only root can act as the service account; other accounts judge it from the mode bits")
    if not _acl_letting(root_owned_folder, NOBODY):
        pytest.skip("this file system has no POSIX ACLs")
    assert root_owned_folder.stat().st_mode & 0o7 == 0o5  # the bits alone: nobody may not write
    monkeypatch.setenv("SCATD_HOME", str(root_owned_folder))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.setenv("SCATD_SERVICE_USER", "nobody")
    assert doctor._could_write("nobody", root_owned_folder) is None
    assert doctor._could_write("nobody", root_owned_folder / "work" / "not-made") is None
    assert list(root_owned_folder.iterdir()) == []  # the file made as nobody is removed
    items = doctor._configuration(settings())
    assert not [i for i in items if "cannot be written by nobody" in i["detail"]], items
    # the account the ACL does not name is still refused, with the folder's owner and mode, and why
    why = doctor._could_write("daemon", root_owned_folder)
    assert why is not None and "a file could not be made in it as daemon" in why and "Permission denied" in why, why
    assert "drwxrwxr-x" in why and "root's" in why


def _acl_file(path: Path, uid: int, user_bits: int, other_bits: int) -> bool:
    """Give the file ``path`` the POSIX ACL user::rw-, user:UID:``user_bits``, group::r--, mask::r--,
    other::``other_bits`` (raw xattr, as `setfacl`); False where the file system has no ACLs."""
    import os
    import struct

    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), (0x02, user_bits, uid), (0x04, 4, undefined), (0x10, 4, undefined),
               (0x20, other_bits, undefined)]
    try:
        os.setxattr(path, "system.posix_acl_access",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
    except OSError:
        return False
    return True


def test_doctor_as_root_reads_the_files_as_the_service_account_not_from_the_mode_bits(root_owned_folder,
                                                                                         monkeypatch):
    """Run as root, doctor judged whether the service account can read the users and configuration
    files from their mode bits only (as it once judged the folders): a file an ACL lets it read was a
    problem, one an ACL keeps from it was fine. As root it now opens the file and reads a byte as
    that account; another account still judges from the mode bits."""
    import os

    from scatd_core import doctor
    from scatd_core.config import settings

    if os.geteuid() != 0:
        pytest.skip("only root can act as the service account; other accounts judge it from the mode bits")
    config = root_owned_folder / "config.toml"
    config.write_text('[server]\nservice_user = "nobody"\n')
    if not _acl_file(config, NOBODY, 4, 0):  # nobody may read by the ACL; "other" (the mode bits) may not
        pytest.skip("this file system has no POSIX ACLs")
    assert config.stat().st_mode & 0o7 == 0
    monkeypatch.setenv("SCATD_HOME", str(root_owned_folder))
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    monkeypatch.delenv("SCATD_SERVICE_USER", raising=False)
    assert doctor._could_read("nobody", config) is None
    assert not [i for i in doctor._config_file_items(settings()) if i["status"] == "problem"]
    # the account the ACL does not name is still refused, with the file's owner and mode, and why
    why = doctor._could_read("daemon", config)
    assert why is not None and "root's" in why and "-rw-r-----" in why, why
    assert "it could not be read as daemon (Permission denied)" in why, why
    # the reverse: the mode bits let everyone read, the ACL keeps nobody out
    assert _acl_file(config, NOBODY, 0, 4) and config.stat().st_mode & 0o4
    why = doctor._could_read("nobody", config)
    assert why is not None and "it could not be read as nobody (Permission denied)" in why, why
    failed = [i for i in doctor._config_file_items(settings()) if i["status"] == "problem"]
    assert failed and "cannot be read by nobody, the account the server runs as (server.service_user)" in \
        failed[0]["detail"] and "Permission denied" in failed[0]["detail"], failed
    # a folder above that does not let it through is named, as before
    hidden = root_owned_folder / "hidden"
    hidden.mkdir()
    (hidden / "users.toml").write_text("")
    (hidden / "users.toml").chmod(0o644)
    hidden.chmod(0o700)
    assert f"{hidden} does not let nobody through" in doctor._could_read("nobody", hidden / "users.toml")
    # not root: judged from the mode bits (the ACL not seen), as before
    monkeypatch.setattr(doctor, "_running_as_root", lambda: False)
    assert doctor._could_read("nobody", config) is None


def test_pages_are_compiled_without_streamlit_magic_and_none_needs_it():
    """Streamlit's "magic" parses each page into Python AST objects, which Python 3.11.7 cannot do in two
    threads at once (a page compiled while another thread formats a traceback failed a test with
    "SystemError: AST constructor recursion depth mismatch"): it is off in the app's config, and no
    page has a bare expression that magic would have written."""
    import ast
    import tomllib

    root = DEPLOY.parent
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["magicEnabled"] is False
    for page in [root / "app.py", *sorted((root / "app_pages").glob("*.py"))]:
        tree = ast.parse(page.read_text())
        for parent in ast.walk(tree):
            body = getattr(parent, "body", None)
            for i, node in enumerate(body if isinstance(body, list) else []):
                if not isinstance(node, ast.Expr) or isinstance(node.value, (ast.Call, ast.Await, ast.Yield)):
                    continue
                docstring = (i == 0 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                             and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)))
                assert docstring, f"{page.name}:{node.lineno} relies on magic: {ast.unparse(node)[:60]}"


def test_doctor_warns_of_an_empty_library_and_a_read_only_one_is_readable_but_not_writable(tmp_path, monkeypatch):
    """QA (pipelines): 0 usable models was "ok"; a read-only library made the "readable" check FAIL
    (its lock file could not be made), although predictions read it fine. Now an empty library is a
    warning with what to do, and a read-only one is readable (ok) and not writable (a warning)."""
    from scatd_core import bundle, doctor

    library = tmp_path / "models"
    library.mkdir()
    items = {i["what"]: i for i in doctor._library({"library": library})}
    assert items["bundles"]["status"] == "warning" and "0 usable models" in items["bundles"]["detail"]
    assert "`scatd models fetch`" in items["bundles"]["detail"] and "`scatd demo`" in items["bundles"]["detail"]

    def read_only(root):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(bundle, "clean_library", read_only)
    items = {i["what"]: i for i in doctor._library({"library": library})}
    assert items["readable"]["status"] == "ok" and items["writable"]["status"] == "warning"
    assert "Read-only file system" in items["writable"]["detail"]
    assert "Predictions work; the app, training and imports need to write here" in items["writable"]["detail"]
    assert all(i["status"] != "problem" for i in items.values()), items


def test_doctor_on_a_server_checks_the_folders_the_server_writes_not_a_read_only_home(tmp_path, monkeypatch):
    """QA: with the home folder read-only (systemd's ProtectHome=read-only, or `sudo -u scatd scatd
    doctor` for an account whose home it cannot write) and every folder the server writes configured
    elsewhere, `scatd doctor` said FAIL (numba cache: "neither the package folders nor ~/.cache/numba
    can be written"), though the server's unit gives numba and matplotlib their own folders. Now the
    caches are judged as the server has them (the installed unit's Environment=), the home is said to
    be unused (ok), and only an unwritable data, model or work folder fails."""
    from scatd_core import doctor
    from scatd_core.config import settings

    home, srv = tmp_path / "home", tmp_path / "srv"
    home.mkdir()
    home.chmod(0o555)
    (tmp_path / "config.toml").write_text(f'[paths]\nhome = "{srv}"\nwork_dir = "{tmp_path / "work"}"\n')
    unit = tmp_path / "scatd-studio.service"
    unit.write_text(f"[Service]\nCacheDirectory=scatd-studio\nEnvironment=SCATD_CONFIG={tmp_path}/"
                    f"config.toml\nEnvironment=NUMBA_CACHE_DIR={tmp_path}/cache/numba MPLCONFIGDIR={tmp_path}"
                    "/cache/matplotlib\n")
    for name in ("SCATD_HOME", "SCATD_MODEL_LIBRARY", "SCATD_WORK_DIR", "NUMBA_CACHE_DIR", "MPLCONFIGDIR",
                 "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "SCATD_SERVICE_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SCATD_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setattr(doctor, "UNIT_FILES", (unit,))
    # as the service account sees them (the tests may run as root, who writes anywhere): the home and
    # the installed packages read-only
    monkeypatch.setattr(doctor, "_writable", lambda p: not (str(p).startswith(str(home)) or "site-packages" in str(p)
                                                           or "scatd_core" in str(p)))
    monkeypatch.setattr(doctor, "_numba_user_cache", lambda: home / ".cache" / "numba")
    conf = settings()
    items = doctor._configuration(conf) + doctor._caches()
    assert not [i for i in items if i["status"] == "problem"], [i for i in items if i["status"] == "problem"]
    numba = next(i for i in items if i["what"] == "numba cache")
    assert f"{tmp_path}/cache/numba" in numba["detail"] and str(unit) in numba["detail"], numba
    said = next(i for i in items if i["what"] == "home folder")
    assert said["status"] == "ok" and str(home) in said["detail"] and "not used" in said["detail"], said
    # a folder the server writes that cannot be written still fails
    monkeypatch.setattr(doctor, "_writable", lambda p: not (str(p).startswith(str(home)) or str(p).startswith(str(srv))
                                                           or "site-packages" in str(p) or "scatd_core" in str(p)))
    items = doctor._configuration(conf)
    assert next(i for i in items if i["what"] == "home")["status"] == "problem"
    # without the server's unit, this account's commands have no cache folder numba can write: a problem
    monkeypatch.setattr(doctor, "UNIT_FILES", (tmp_path / "none.service",))
    assert next(i for i in doctor._caches() if i["what"] == "numba cache")["status"] == "problem"


def test_a_home_hidden_from_the_server_without_scatd_config_stops_the_app_with_what_to_set(tmp_path, monkeypatch):
    """A unit with ProtectHome= but without SCATD_CONFIG: looking for <home>/config.toml raised a bare
    PermissionError (Path.is_file does not swallow EACCES). Now the place that cannot be looked into is
    said, and with no other configuration file found the app does not start (a login configured
    there cannot be seen: it fails closed), saying what to set."""
    from scatd_app import preflight
    from scatd_core.config import settings

    home = tmp_path / "hidden-home"
    monkeypatch.setenv("SCATD_HOME", str(home))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    real_is_file = Path.is_file

    def is_file(self):
        if str(self).startswith(str(home)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    if real_is_file(Path("/etc/scatd/config.toml")):
        pytest.skip("this machine has /etc/scatd/config.toml, which would be used")
    conf = settings()
    assert conf.config_file is None
    [line] = [p for p in conf.fatal if "permission denied" in p]
    assert str(home / "config.toml") in line and "SCATD_CONFIG" in line and "ProtectHome" in line
    assert conf["auth_mode"] == "password"  # fail closed
    assert line in preflight.refusals()
    monkeypatch.setenv("SCATD_CONFIG", str(tmp_path / "config.toml"))  # the unit's own setting: not looked for
    assert not [p for p in settings().problems if "permission denied" in p]


def _backup_block() -> str:
    """The backup commands of docs/admin.md, as they are written there (the test runs them, so the two
    cannot drift)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "admin.md").read_text()
    after = text.split("hold its lock for the copy", 1)[1]
    block = re.search(r"```bash\n(.*?)```", after, re.S)
    assert block, "docs/admin.md has no backup command after 'hold its lock for the copy'"
    return block.group(1)


def test_the_documented_backup_works_on_a_fresh_home_and_keeps_the_archive_private(tmp_path):
    """QA: the backup named panels/ and train-panel/, which a fresh install does not have (tar: Cannot
    stat, exit 2), and left the archive 0644 though it holds the password hashes."""
    import shutil
    import subprocess
    import tarfile
    missing = [tool for tool in ("flock", "tar", "sh") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"the documented backup needs {', '.join(missing)}, not installed here")
    home, backup, etc = tmp_path / "home", tmp_path / "backup", tmp_path / "etc"
    for folder in (home / "models" / "m1", backup, etc):
        folder.mkdir(parents=True)
    (home / "models" / "m1" / "manifest.json").write_text("{}")
    (home / "models" / ".bundle-tmp-x").mkdir()
    (home / "users.toml").write_text("[users.alice]\n")
    (etc / "config.toml").write_text("[paths]\n")
    script = _backup_block()
    assert "sudo " in script and "/srv/scatd" in script and "/backup" in script
    script = (script.replace("sudo ", "").replace("/srv/scatd", str(home))
              .replace("/etc/scatd/config.toml", str(etc / "config.toml")).replace("/backup", str(backup)))
    done = subprocess.run(["bash", "-e", "-c", "umask 022\n" + script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (script, done.stderr)
    archives = list(backup.glob("scatd-*.tgz"))
    assert len(archives) == 1, list(backup.iterdir())
    assert archives[0].stat().st_mode & 0o777 == 0o600, oct(archives[0].stat().st_mode)
    with tarfile.open(archives[0]) as tar:
        names = set(tar.getnames())
    assert {"models", "models/m1/manifest.json", "users.toml"} <= names, names
    assert not [n for n in names if ".bundle-tmp-" in n or n.startswith(("panels", "train-panel"))], names
    assert (backup / "config.toml").read_text() == "[paths]\n"
    # with the folders a used server has, they are in the archive too
    (home / "panels").mkdir()
    (home / "panels" / "alice.json").write_text("{}")
    (home / "train-panel").mkdir()
    (home / "train-panel" / "run.json").write_text("{}")
    archives[0].unlink()
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with tarfile.open(next(backup.glob("scatd-*.tgz"))) as tar:
        names = set(tar.getnames())
    assert {"panels/alice.json", "train-panel/run.json", "users.toml"} <= names, names
