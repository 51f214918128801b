"""The backbone probes' per-process caches (the Model page asks for a probe on every rerun): bounded
on a long-running server, and re-checked when what the probe said could change without a restart:
a file's permissions fixed with chmod, or the variable that names the folder set or unset.

Tiny stand-in backbones (``_foundation_helpers``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
from scatd_core.foundation import geneformer as G
from scatd_core.foundation import scfoundation as S

NOBODY = 65534


@pytest.fixture
def gf(tmp_path, monkeypatch):
    root = H.gf_folder(tmp_path / "geneformer")
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(root))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    return root


@pytest.fixture
def sf(tmp_path, monkeypatch):
    root = H.sf_folder(tmp_path / "scfoundation")
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(root))
    S._PROBES.clear()
    return root


@pytest.fixture
def counted(monkeypatch):
    """How many times each backbone's files were really probed (not answered from the cache)."""
    calls = {"gf": 0, "sf": 0}
    for module, name in ((G, "gf"), (S, "sf")):
        real = module._probe

        def counting(*args, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(module, "_probe", counting)
    return calls


def _touch(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


# ----------------------------------------------------------------------------- 1: bounded

def test_the_probe_caches_stay_small_as_files_change_and_folders_come_and_go(gf, sf, tmp_path, monkeypatch):
    """Each change to the files was a new entry, kept for the life of the server."""
    for i in range(30):  # the same folders, their files changed 30 times: one entry each, the latest
        _touch(gf / "token_dictionary.pkl", 1_000_000 + i)
        _touch(sf / "OS_scRNA_gene_index.19264.tsv", 1_000_000 + i)
        assert G.probe().available and S.probe().available
    assert len(G._PROBES) == 1 and len(S._PROBES) == 1
    latest = G.probe()
    assert G.probe() is latest  # unchanged files: answered from the cache
    for i in range(3 * G._PROBES.size):  # many folders (e.g. one per user): the least recently used go
        G.probe(tmp_path / f"elsewhere{i}")
        S.probe(tmp_path / f"elsewhere{i}")
    assert len(G._PROBES) == G._PROBES.size and len(S._PROBES) == S._PROBES.size
    assert 0 < G._PROBES.size <= 64 and 0 < S._PROBES.size <= 64
    recent = G.probe(tmp_path / f"elsewhere{3 * G._PROBES.size - 1}")
    assert G.probe(tmp_path / f"elsewhere{3 * G._PROBES.size - 1}") is recent  # the recent ones are kept


# ----------------------------------------------------------------------------- 2: permissions

def test_a_chmod_is_seen_by_the_next_probe_without_a_restart(gf, sf, counted):
    """The key held size and mtime only: chmod changes neither, so a file that could not be read,
    fixed with chmod, kept its old verdict until the server restarted."""
    G.probe(), S.probe()
    G.probe(), S.probe()
    assert counted == {"gf": 1, "sf": 1}
    for gf_file, sf_file in ((gf / "gf-tiny" / "config.json", sf / "models" / "models.ckpt"),
                             (gf / "gene_median_dictionary.pkl", sf / "OS_scRNA_gene_index.19264.tsv"),
                             (gf / "gf-tiny", sf)):  # a folder's mode decides whether its files can be reached
        before = dict(counted)
        for path in (gf_file, sf_file):
            path.chmod(0o700 if path.is_dir() else 0o600)
        G.probe(), S.probe()
        assert counted == {"gf": before["gf"] + 1, "sf": before["sf"] + 1}, gf_file
        G.probe(), S.probe()  # nothing changed since: from the cache
        assert counted == {"gf": before["gf"] + 1, "sf": before["sf"] + 1}, gf_file


@pytest.fixture
def reachable(monkeypatch):
    """A folder other accounts can reach (pytest's folders are 0700), and back to root after."""
    folder = Path(tempfile.mkdtemp(prefix="scatd-probe-"))
    folder.chmod(0o755)
    yield folder
    if os.geteuid() != os.getuid():
        os.seteuid(os.getuid())
    shutil.rmtree(folder, ignore_errors=True)


def test_a_server_account_sees_a_file_it_could_not_read_once_chmod_fixed_it(reachable, monkeypatch):
    """As the server's account (not root): a config.json and a dictionary it could not read are
    problems; fixed with chmod, the next probe (the next click) says the backbone is ready."""
    if os.geteuid() != 0:
        pytest.skip("only root can act as another account (nobody) to be refused a file")
    gf = H.gf_folder(reachable / "geneformer")
    (gf / "gf-tiny" / "model.safetensors").chmod(0o644)  # as downloaded (safetensors writes 0600)
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(gf))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    assert G.probe().available  # as root; the modules it needs are imported
    for unreadable, code in ((gf / "gf-tiny" / "config.json", "unreadable_file"),
                             (gf / "token_dictionary.pkl", "unreadable_file")):
        unreadable.chmod(0o600)
        os.seteuid(NOBODY)
        try:
            said = G.probe()
        finally:
            os.seteuid(0)
        assert not said.available and code in {p.code for p in said.problems}, said.problems
        unreadable.chmod(0o644)
        os.seteuid(NOBODY)
        try:
            fixed = G.probe()
        finally:
            os.seteuid(0)
        assert fixed.available and not fixed.problems, fixed.problems


def _all_readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # as downloaded (safetensors and torch.save write 0600)


def _said(module, problem_code="unreadable_file"):
    module._PROBES.clear()
    said = module.probe()
    return said, [p for p in said.problems if p.code == problem_code]


def _check_unreadable_said(said, problems, path: Path, account: str) -> None:
    """One problem, about the file's permissions, naming the file, the account and the fix; nothing
    that blames the file's content or asks for it again."""
    assert not said.available
    assert len(problems) == 1 and len(said.problems) == 1, said.problems
    problem = problems[0]
    assert f"{path} exists, but this server's account ({account}) is not allowed to read it." in problem.message
    assert f"`chmod a+r {path}`" in problem.hint and f"`chown {account} {path}`" in problem.hint, problem.hint
    text = f"{problem.message} {problem.hint}".lower()
    for blame in ("download", "not a readable", "corrupt", "shipped with", "convert-scfoundation", "again."):
        assert blame not in text, (blame, problem)


@pytest.mark.parametrize("module,make,variable,name", [
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "gf-tiny/model.safetensors"),
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "gf-tiny/config.json"),
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "token_dictionary.pkl"),
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "gene_median_dictionary.pkl"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "models/models.ckpt"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "OS_scRNA_gene_index.19264.tsv"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "models/scfoundation_rde.safetensors"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "models/scfoundation_rde.json")])
def test_a_file_the_server_account_may_not_read_is_said_as_such(reachable, monkeypatch, module, make, variable,
                                                               name):
    """A backbone file the server's account could not read (mode 0600, owned by root) was blamed on
    its content: "model.safetensors is not a readable safetensors file (No such file or directory)",
    "bad_dictionary ... [Errno 13] Permission denied" with "Download again" or "Use the dictionary
    files shipped with Geneformer"; an unreadable models.ckpt even crashed the probe. It is said to
    be there but not readable by the account (named), with chmod / chown as the fix."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another account (nobody) that a file's mode refuses; running as a "
                    "plain user, see test_an_unreadable_file_is_said_as_such_without_root")
    folder = make(reachable / module.NAME.lower())
    if name.endswith(("rde.safetensors", "rde.json")):
        S.convert(folder / "models" / "models.ckpt")
    _all_readable(folder)
    monkeypatch.setenv(variable, str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    assert _said(module)[0].available  # as root; the modules it needs are imported
    (folder / name).chmod(0o600)
    os.seteuid(NOBODY)
    try:
        said, problems = _said(module)
    finally:
        os.seteuid(0)
    _check_unreadable_said(said, problems, folder / name, "nobody")
    (folder / name).chmod(0o644)
    os.seteuid(NOBODY)
    try:
        assert _said(module)[0].available
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("module,make,variable,name", [
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "."), (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "gf-tiny"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "."), (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "models")])
def test_a_folder_the_server_account_may_not_open_is_said_as_such(reachable, monkeypatch, module, make, variable,
                                                                 name):
    """A backbone folder (or a model folder in it) the server's account could not open (mode 0700,
    owned by root) made the probe raise PermissionError: a traceback on the Model page. It names the
    folder and the account, with chmod / chown as the fix."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another account (nobody) that a folder's mode refuses")
    folder = make(reachable / module.NAME.lower())
    _all_readable(folder)
    monkeypatch.setenv(variable, str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    blocked = (folder / name).resolve()
    blocked.chmod(0o700)
    os.seteuid(NOBODY)
    try:
        said, problems = _said(module, "unreadable_folder")
    finally:
        os.seteuid(0)
    assert not said.available and len(problems) == 1 and len(said.problems) == 1, said.problems
    assert f"The folder {blocked} exists, but this server's account (nobody) is not allowed to open it" in \
        problems[0].message
    assert f"`chmod -R a+rX {blocked}`" in problems[0].hint and f"`chown -R nobody {blocked}`" in problems[0].hint
    blocked.chmod(0o755)
    os.seteuid(NOBODY)
    try:
        assert _said(module)[0].available
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("module,make,variable,name", [
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "gf-tiny/model.safetensors"),
    (G, H.gf_folder, "SCATD_GENEFORMER_DIR", "token_dictionary.pkl"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "models/models.ckpt"),
    (S, H.sf_folder, "SCATD_SCFOUNDATION_DIR", "OS_scRNA_gene_index.19264.tsv")])
def test_an_unreadable_file_is_said_as_such_without_root(tmp_path, monkeypatch, module, make, variable, name):
    """The same, for any account running the tests: the refusal simulated where files are opened."""
    import builtins
    import io

    from safetensors import safe_open as real_safe_open

    import pwd

    import safetensors

    folder = make(tmp_path / module.NAME.lower())
    refused = str(folder / name)
    monkeypatch.setenv(variable, str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)

    def deny(path):
        if str(path) == refused:
            raise PermissionError(13, "Permission denied", str(path))

    real_open, real_os_open = builtins.open, os.open
    for module_with_open in (builtins, io):  # open(), and Path.open / read_bytes
        monkeypatch.setattr(module_with_open, "open", lambda path, *a, **k: deny(path) or real_open(path, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: deny(path) or real_os_open(path, *a, **k))
    monkeypatch.setattr(safetensors, "safe_open", lambda path, *a, **k: deny(path) or real_safe_open(path, *a, **k))
    said, problems = _said(module)
    _check_unreadable_said(said, problems, folder / name, pwd.getpwuid(os.geteuid()).pw_name)


# ----------------------------------------------------------------------------- 3: the variable

@pytest.mark.parametrize("module,folder,variable,make", [
    (G, "geneformer", "SCATD_GENEFORMER_DIR", H.gf_folder),
    (S, "scfoundation", "SCATD_SCFOUNDATION_DIR", H.sf_folder)])
def test_set_by_follows_the_variable_even_when_it_names_the_default_folder(tmp_path, monkeypatch, module, folder,
                                                                         variable, make):
    """The key held the folder, not whether the variable named it: pointed at the default folder,
    the Model page kept saying "default" (and the reverse) until a restart."""
    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    monkeypatch.delenv(variable, raising=False)
    make(tmp_path / "home" / folder)
    module._PROBES.clear()
    assert module.probe().configured_by.startswith("default")
    monkeypatch.setenv(variable, str(tmp_path / "home" / folder))
    assert module.probe().configured_by == variable
    monkeypatch.delenv(variable)
    assert module.probe().configured_by.startswith("default")


@pytest.mark.parametrize("module,key,variable,make", [
    (G, "geneformer_dir", "SCATD_GENEFORMER_DIR", H.gf_folder),
    (S, "scfoundation_dir", "SCATD_SCFOUNDATION_DIR", H.sf_folder)])
def test_set_by_names_the_configuration_file_when_the_folder_is_set_there(tmp_path, monkeypatch, module, key,
                                                                        variable, make):
    """A folder set in config.toml (foundation.geneformer_dir / scfoundation_dir) was labelled
    "default ($SCATD_HOME/...)": only the variable was looked at. It names the key and the file; a
    variable set as well wins (as the settings do), and one that cannot be used gives way to the file."""
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    folder = make(tmp_path / "installed" / key)
    config.write_text(f'[foundation]\n{key} = "{folder}"\n')
    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    monkeypatch.delenv(variable, raising=False)
    module._PROBES.clear()
    said = module.probe()
    assert said.location == str(folder) and said.available, said.problems
    assert said.configured_by == f"foundation.{key} in {config}"
    other = make(tmp_path / "elsewhere" / key)
    monkeypatch.setenv(variable, str(other))  # the variable over the file
    said = module.probe()
    assert (said.location, said.configured_by) == (str(other), variable)
    monkeypatch.setenv(variable, "   ")  # blank: not a setting, the file's value is used
    said = module.probe()
    assert (said.location, said.configured_by) == (str(folder), f"foundation.{key} in {config}")
    monkeypatch.delenv(variable)
    config.write_text("")
    said = module.probe()
    assert said.configured_by.startswith("default ($SCATD_HOME/"), said.configured_by


def test_set_by_names_the_model_folder_setting_of_the_configuration_file(tmp_path, monkeypatch):
    """foundation.geneformer_model in config.toml, which picks the model folder, was labelled by the
    variable SCATD_GENEFORMER_MODEL that was not set."""
    folder = H.gf_folder(tmp_path / "geneformer")
    config = tmp_path / "config.toml"
    config.write_text(f'[foundation]\ngeneformer_dir = "{folder}"\ngeneformer_model = "{folder / "gf-tiny"}"\n')
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    for variable in ("SCATD_GENEFORMER_DIR", "SCATD_GENEFORMER_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    G._PROBES.clear()
    assert G.probe().configured_by == f"foundation.geneformer_model in {config}"
    monkeypatch.setenv("SCATD_GENEFORMER_MODEL", str(folder / "gf-tiny"))
    assert G.probe().configured_by == "SCATD_GENEFORMER_MODEL"
