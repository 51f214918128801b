"""Shared fixtures: paths to ../shared/data (skipped when absent) and small model bundles."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(TESTS))

import original_scatd as orig  # noqa: E402

SMALL = {  # backbone -> (encoder dims, z_dim, decoder dims)
    "dist_vae": ([60, 32, 16], 12, [12, 32]),
    "vae_sf": ([40, 30, 20, 14], 11, [11, 20, 30]),
    "vae_gf": ([24, 30, 20, 16, 12], 9, [9, 16, 20, 30]),
}


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (reference data beside the checkout); not present")
    return path


#: The files whose tests take longest (a few long tests each: real browsers and servers, demo builds,
#: training, a local Ray), measured; the two worker processes (pyproject.toml) take them first, so that
#: neither is left running one long file alone at the end (the 4-test browser file came last when the
#: files were ordered by their number of tests, xdist's default).
LONG_FILES = ("test_browser.py", "test_demo.py", "test_train.py", "test_scaleout.py", "test_cli.py",
              "test_app_server.py", "test_panel.py", "test_app_pages.py", "test_security.py", "test_panel_page.py")


def pytest_collection_modifyitems(config, items):
    """The long files first (:data:`LONG_FILES`), each file's tests in their own order."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread_per_worker():
    """One BLAS thread in each test process: the suite runs two worker processes on two cores
    (pyproject.toml), and a second BLAS thread per worker only waits for the other worker's (the
    model card's logistic-regression baseline on the tiny demo's 48 x 2,000 inputs: 2.1-3.4 CPU s on
    two threads, 0.4-0.5 on one; the same results). Product code sets no BLAS threads: OpenBLAS's
    count is process-wide, and a server's other users keep theirs. threadpoolctl sets only the
    libraries loaded: scipy's own OpenBLAS (scikit-learn's L-BFGS) is loaded first."""
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, numpy's is loaded)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(autouse=True)
def _seed_and_library(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    np.random.seed(0)
    monkeypatch.setenv("SCATD_HOME", str(tmp_path_factory.mktemp("scatd_home")))
    monkeypatch.setenv("SCATD_AUTH", "none")  # tests of the login set their own mode
    # uvicorn's proxies: none from the environment, and `python -m scatd_app` (which sets them) undone after
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")


@pytest.fixture(scope="session")
def ray_stopped_at_the_end():
    """The Ray instance the run's tests used (the app's own connection included) is shut down at the end."""
    yield
    from scatd_core import scaleout

    scaleout.disconnect()


@pytest.fixture(scope="session")
def local_ray(ray_stopped_at_the_end):
    """One local Ray instance (2 CPUs) for every Ray test of the run (starting one, and then its
    worker processes, each importing torch, takes seconds); one already running (the app's, which
    ``test_the_app_keeps_its_ray_connection_from_run_to_run`` starts first) is kept. Stopped at the
    end. The Ray test modules skip without Ray before asking for it."""
    from scatd_core import scaleout

    scaleout.connect(num_cpus=2, object_store_mb=200)
    yield


def small_gene_names(n: int) -> list[str]:
    return [f"GENE{i}" for i in range(n)]


@pytest.fixture
def small_bundles(tmp_path):
    """Imported original-layout DAL checkpoints of the three backbones at small sizes.

    Returns ``{backbone: (bundle, state_dict, enc, z, extra)}`` where ``extra`` holds the gene
    list (Dist_VAE) or the style reference (VAE_sf/VAE_gf).
    """
    from scatd_core.bundle import import_checkpoint

    out = {}
    rng = np.random.default_rng(1)
    for i, (bb, (enc, z, _dec)) in enumerate(SMALL.items()):
        sd = orig.dal_checkpoint(bb, enc, z, seed=10 + i)
        pth = tmp_path / f"{bb}.pth"
        torch.save(sd, pth)
        if bb == "dist_vae":
            genes = small_gene_names(enc[0])
            (tmp_path / "genes.txt").write_text("\n".join(genes) + "\n")
            bundle = import_checkpoint(pth, bb, drug="TESTDRUG", out=tmp_path / f"b_{bb}",
                                       genes=tmp_path / "genes.txt")
            extra = genes
        else:
            ref = rng.normal(loc=0.5, scale=2.0, size=(30, enc[0]))
            np.save(tmp_path / f"ref_{bb}.npy", ref)
            bundle = import_checkpoint(pth, bb, drug="TESTDRUG", out=tmp_path / f"b_{bb}",
                                       style_reference=tmp_path / f"ref_{bb}.npy")
            extra = ref
        out[bb] = (bundle, sd, enc, z, extra)
    return out
