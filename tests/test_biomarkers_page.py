"""The Biomarkers page (Streamlit AppTest): empty state, computing, tables, plots and downloads."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from scatd_app import state as S
from scatd_core.predict import predict

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "5_Biomarkers.py")
TIMEOUT = 60


@pytest.fixture
def predicted(small_bundles):
    bundle, _sd, enc, _z, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(0).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    predict(adata, bundle, threshold=float(np.median(adata.obs["scatd_prob_resistant"])))
    return adata, bundle


def _app(adata=None, bundle=None):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    if adata is not None:
        at.session_state[S.RESULT] = adata
        at.session_state[S.RESULT_TOKEN] = "token-1"
        at.session_state[S.BUNDLE_PATH] = str(bundle.path)
    return at


def test_empty_state_asks_for_a_prediction():
    at = _app().run()
    assert not at.exception
    assert any("Run a prediction first" in i.value for i in at.info)


def test_compute_shows_ranking_plots_and_downloads(predicted):
    adata, bundle = predicted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        at = _app(adata, bundle).run()
        assert not at.exception
        assert any("Compute gene ranking" in i.value for i in at.info)
        at.number_input[0].set_value(8)  # integration steps: keep the test fast
        at.button[0].click().run()
    finally:
        torch.set_num_threads(threads)
    assert not at.exception, at.exception
    cached = at.session_state[S.EXPLAIN]
    expl = cached["result"]
    assert expl.ranking.shape[0] == 60 and expl.info["n_steps"] == 8
    assert len(at.dataframe) == 1 and at.dataframe[0].value.shape[0] == 50
    assert any("Integrated gradients" in c.value for c in at.caption)
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # bar chart, dependence plot, map (+ DE comparison)
    assert len(at.get("download_button")) == 2
    assert [m.label for m in at.metric][:2] == ["Cells explained", "Completeness error"]
    # search filters the table; the map falls back to PCA of the latent space, labelled so
    at.text_input[0].set_value("GENE1").run()
    assert set(at.dataframe[0].value["feature"]).issubset({f"GENE{i}" for i in range(60)})
    assert all("GENE1" in f for f in at.dataframe[0].value["feature"])
    assert any("PCA of the scATD latent space" in c.value for c in at.caption)
    # a new prediction invalidates the cached explanation
    at.session_state[S.RESULT_TOKEN] = "token-2"
    at.run()
    assert at.session_state[S.EXPLAIN] is None
