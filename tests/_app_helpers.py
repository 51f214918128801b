"""A small labelled dataset and a small trained Dist_VAE bundle for the app tests.

The bundle is trained for a few seconds on the simulated tumour's own labels, so its
predictions carry signal (AUROC well above 0.5) and the pages show meaningful numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from scatd_core.bundle import Bundle, save_bundle
from scatd_core.nn import build_model
from scatd_core.nn.models import Architecture
from scatd_core.demo.simulate import simulate_tumour

DRUG = "TESTDRUG"
#: Plotly's toolbar buttons that do nothing useful on the app's charts: never offered (keyboard stops).
USELESS_BUTTONS = {"lasso2d", "select2d", "autoScale2d", "zoomIn2d", "zoomOut2d"}


def assert_charts_described(at) -> list[str]:
    """Every plotly chart of the page ``at`` shows has a text alternative (its accessible name)
    and the app's short toolbar with a named PNG download; returns the text alternatives."""
    alts = []
    for chart in at.get("plotly_chart"):
        assert chart.proto.alt.strip(), f"a chart without a text alternative: {chart.proto.spec[:300]}"
        config = json.loads(chart.proto.config or "{}")
        assert USELESS_BUTTONS <= set(config.get("modeBarButtonsToRemove", [])), config
        assert config["toImageButtonOptions"]["filename"].startswith("scatd_"), config
        alts.append(chart.proto.alt)
    return alts
BUNDLE_FOLDER = "testdrug_dist_vae"


def make_dataset(n_cells: int = 300, seed: int = 0) -> ad.AnnData:
    """Simulated tumour: raw counts, obs ``sample``, ``cluster``, ``response``."""
    return simulate_tumour(n_cells=n_cells, seed=seed)


def _log_cp10k(x: np.ndarray) -> np.ndarray:
    totals = x.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(x * 1e4, totals, out=np.zeros_like(x), where=totals > 0))


def make_bundle(out: str | Path, adata: ad.AnnData, *, steps: int = 40, seed: int = 0, drug: str = DRUG,
                demo: bool = False) -> Bundle:
    """A Dist_VAE bundle over ``adata``'s genes, trained on ``obs['response']`` (log1p CP10k input)."""
    genes = [str(g) for g in adata.var_names]
    arch = Architecture("dist_vae", [len(genes), 48, 24], 12, None, 6, 2)
    torch.manual_seed(seed)
    model = build_model(arch)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    xt = torch.as_tensor(_log_cp10k(x.astype(np.float64)), dtype=torch.float32)
    y = torch.as_tensor((adata.obs["response"].astype(str) == "resistant").to_numpy().astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and immune to a busy machine
    try:
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt), y)
            loss.backward()
            opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return save_bundle(out, model.state_dict(), arch, drug=drug, genes=genes, input_transform="log1p_cp10k",
                       threshold=0.5, demo=demo, provenance={"source": "tests/_app_helpers.py (simulated data)"},
                       metrics={"train_loss": round(float(loss.detach()), 4)}, overwrite=True)


@pytest.fixture(scope="session")
def trained_library(tmp_path_factory) -> Path:
    """A model library folder holding one small trained bundle (:data:`BUNDLE_FOLDER`), built
    once per test session. Import this fixture into a test module to use it."""
    root = tmp_path_factory.mktemp("library")
    make_bundle(root / BUNDLE_FOLDER, make_dataset(180, seed=0))
    return root
