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
    for unreadable, code in ((gf / "gf-tiny" / "config.json", "bad_config"),
                             (gf / "token_dictionary.pkl", "bad_dictionary")):
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
