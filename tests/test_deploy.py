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
    assert next(i for i in items if i["what"] == "broken_model")["status"] == "warning"


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
