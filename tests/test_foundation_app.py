"""The app on VAE_sf / VAE_gf with raw counts: the Model page's probe, the embedding step, predict,
gene-level biomarkers; and what it says when the foundation model is not installed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
import original_scatd as orig
from scatd_app import state
from scatd_core.bundle import import_checkpoint
from scatd_core.foundation import geneformer as G
from scatd_core.foundation import scfoundation as S
from test_app_pages import _gf_probe_page, _no_component_scan, goto, h5ad_bytes, ok, start, text, upload  # noqa: F401 (fixture)
from test_foundation_product import gf_counts, sf_counts


def _library(root, backbone, width, seed=0):
    enc = {"vae_sf": [width, 40, 24], "vae_gf": [width, 30, 20, 14]}[backbone]
    torch.save(orig.dal_checkpoint(backbone, enc, 10, seed=seed), root / f"{backbone}.pth")
    np.save(root / "ref.npy", np.random.default_rng(seed).normal(0.3, 1.5, size=(40, width)))
    import_checkpoint(root / f"{backbone}.pth", backbone, drug="TESTDRUG", out=root / "library" / backbone,
                      style_reference=root / "ref.npy", threshold=0.5)
    return root / "library"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def sf_app(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(_library(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)))
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(H.sf_folder(tmp_path / "scfoundation")))
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(tmp_path / "no-geneformer"))
    S._PROBES.clear()
    S._MODELS.clear()
    return tmp_path


def test_counts_to_vae_sf_predictions_and_gene_biomarkers(sf_app):
    at = start()
    upload(at, "counts.h5ad", h5ad_bytes(sf_counts(40)))
    goto(at, "2_Model")
    assert "This model reads scFoundation cell embeddings (64-d)" in text(at.markdown)
    assert "scFoundation** (for VAE_sf (scATD-sf)): installed" in text(at.success)
    assert "40 cells" in text(at.info) and "to embed: about" in text(at.info)
    assert "Gene coverage: scFoundation knows 35 of the data's 37 genes (94.6%" in text(at.caption)
    # the overview of both backbones says what is missing for Geneformer, and where to put it
    assert "Geneformer** (for VAE_gf (scATD-gf)): not ready" in text(at.warning)
    assert "gf-12L-30M-i2048" in text(at.markdown).replace("\\", "")
    goto(at, "3_Predict")  # not yet: the embeddings come first
    assert "compute them on the Model page first" in text(at.info)
    goto(at, "2_Model")
    at.button(key="btn_embed").click()
    at.run()
    ok(at)
    assert "scFoundation embeddings of your cells are computed (40 cells, 64-d" in text(at.success)
    adata = at.session_state[state.ADATA]
    assert adata.obsm["X_scfoundation"].shape == (40, 64)
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click()
    at.run()
    ok(at)
    assert "Predicted 40 of 40 cells" in text(at.success)
    goto(at, "5_Biomarkers")
    assert at.radio(key="bio_level").value == "genes"
    at.number_input(key="bio_gene_cells").set_value(4)
    at.number_input(key="bio_steps").set_value(8)
    at.form_submit_button[0].click()
    at.run()
    ok(at)
    info = adata.uns.get("scatd_biomarkers", {}).get("info", {})
    assert info.get("features", {}).get("level") == "gene", text(at.error)
    assert "Integrated gradients through scFoundation" in text(at.caption)


def test_the_model_page_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(_library(tmp_path, "vae_gf", 512)))
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(tmp_path / "nothing"))
    G._PROBES.clear()
    at = start()
    upload(at, "counts.h5ad", h5ad_bytes(gf_counts(20)))
    goto(at, "2_Model")
    shown = text(at.markdown).replace("\\", "")  # user-facing strings are markdown-escaped
    assert "not ready" in text(at.warning) and "No Geneformer model folder" in shown
    assert "gf-12L-30M-i2048" in shown and "SCATD_GENEFORMER_DIR" in shown and "token_dictionary.pkl" in shown
    assert "Or upload Geneformer embeddings computed elsewhere" in text(at.info)
    assert not any(b.key == "btn_embed" for b in at.button)
    assert "Next: run the prediction" not in str([link.label for link in at.get("page_link")])


def test_the_probe_shows_its_errors_first_then_its_warnings(tmp_path, monkeypatch):
    """QA: a backbone not ready showed its warnings above "not ready" and its errors; the errors
    come first, the warnings after them, all on one screen."""
    folder = tmp_path / "geneformer"
    H.write_gf_dictionaries(folder)  # no model folder: an error; no gene-name dictionary: a warning
    (folder / "gene_name_id_dict.pkl").unlink()
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    at = AppTest.from_function(_gf_probe_page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [str(e.value).replace("\\", "") for e in at.main if e.type in ("warning", "markdown")]
    first = lambda words: next(i for i, t in enumerate(shown) if words in t)  # noqa: E731
    assert first("not ready") < first("No Geneformer model folder") < first("so gene symbols cannot be matched"), shown


@pytest.mark.parametrize("admin", [False, True])
def test_the_probe_says_the_configuration_file_set_the_folder(tmp_path, monkeypatch, admin):
    """A Geneformer folder set in config.toml was said to be "set by default ($SCATD_HOME/geneformer)".
    It names the key and the file: the file's path to an administrator, its name to other users
    (the server's paths are not shown to them)."""
    folder = tmp_path / "installed" / "geneformer"
    H.write_gf_dictionaries(folder)  # no model folder: not ready, so where it looked is said
    config = tmp_path / "etc-scatd" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'[foundation]\ngeneformer_dir = "{folder}"\n')
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    for variable in ("SCATD_GENEFORMER_DIR", "SCATD_GENEFORMER_MODEL", "SCATD_TEST_ADMIN"):
        monkeypatch.delenv(variable, raising=False)
    if admin:
        monkeypatch.setenv("SCATD_TEST_ADMIN", "1")
    G._PROBES.clear()
    at = AppTest.from_function(_gf_probe_page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    said = text(at.warning).replace("\\", "")
    shown = str(config) if admin else "config.toml"
    assert f"(set by foundation.geneformer_dir in {shown})" in said, said
    assert "default" not in said
    if not admin:
        assert str(config.parent) not in said and str(tmp_path) not in said, said


def test_counts_to_vae_gf_predictions_and_deletion_biomarkers(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(_library(tmp_path, "vae_gf", H.GF_CONFIG["hidden_size"])))
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(H.gf_folder(tmp_path / "geneformer")))
    G._PROBES.clear()
    G._MODELS.clear()
    at = start()
    upload(at, "counts.h5ad", h5ad_bytes(gf_counts(30)))
    goto(at, "2_Model")
    at.button(key="btn_embed").click()
    at.run()
    ok(at)
    assert "Geneformer embeddings of your cells are computed (30 cells, 16-d" in text(at.success)
    goto(at, "3_Predict")
    at.button(key="btn_run_predict").click()
    at.run()
    goto(at, "5_Biomarkers")
    assert at.radio(key="bio_level").value == "genes"
    at.number_input(key="bio_gene_cells").set_value(3)
    at.number_input(key="bio_deletion_genes").set_value(4)
    at.form_submit_button[0].click()
    at.run()
    ok(at)
    ranking = at.session_state[state.ADATA].uns["scatd_biomarkers"]["ranking"]
    assert len(ranking) == 4 and ranking["feature"].str.startswith("GFG").all()
    assert "In-silico deletion through Geneformer" in text(at.caption)
    assert "Completeness error" not in [m.label for m in at.metric]


def test_the_model_page_says_which_embeddings_this_model_takes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(_library(tmp_path, "vae_gf", 16)))
    at = start()
    upload(at, "emb.npy", _npy(np.random.default_rng(0).normal(size=(8, 3072)).astype(np.float32)))  # 3,072: scFoundation
    # the Data page: features, not genes, and no gene QC for embeddings
    assert any(m.label == "Embedding features" and m.value == "3,072" for m in at.metric)
    assert "cell embeddings (a .npy file)" in text(at.info) and not at.get("plotly_chart")
    goto(at, "2_Model")
    shown = text(at.error).replace("\\", "")
    assert "takes 16-d Geneformer cell embeddings" in shown and "3,072 is the width of scFoundation" in shown
    assert "has another width" not in shown and "no obsm['X_geneformer']" in shown
    assert "Data page" in shown and "--input" not in shown and "embed_cells" not in shown


def test_two_models_of_one_drug_and_backbone_can_be_told_apart(tmp_path, monkeypatch):
    for width in (16, 24):  # e.g. a small and a published-size VAE_sf model of the same drug
        enc = [width, 40, 24]
        torch.save(orig.dal_checkpoint("vae_sf", enc, 10), tmp_path / "sf.pth")
        np.save(tmp_path / "ref.npy", np.random.default_rng(0).normal(size=(40, width)))
        import_checkpoint(tmp_path / "sf.pth", "vae_sf", drug="TESTDRUG", out=tmp_path / "library" / f"sf_{width}",
                          style_reference=tmp_path / "ref.npy")
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "library"))
    at = start()
    upload(at, "emb.npy", _npy(np.ones((8, 16), dtype=np.float32)))
    goto(at, "2_Model")
    box = at.selectbox(key="model_bundle")
    assert sorted(box.options) == ["TESTDRUG · VAE_sf (scATD-sf) (sf_16)", "TESTDRUG · VAE_sf (scATD-sf) (sf_24)"]


def test_the_model_page_warns_of_low_gene_coverage_before_embedding(sf_app):
    from test_foundation_product import _with_unknown_genes

    at = start()
    upload(at, "counts.h5ad", h5ad_bytes(_with_unknown_genes(sf_counts(20), 100)))
    goto(at, "2_Model")
    assert "Low gene coverage: scFoundation knows only 35 of the data's 137 genes (25.5%" in text(at.warning)
    assert "to embed: about" in text(at.info)


def test_the_model_page_says_it_uses_the_counts_layer(sf_app):
    from test_foundation_product import _log_normalised

    counts = sf_counts(20)
    logged = _log_normalised(counts)
    logged.layers["counts"] = counts.X.copy()
    at = start()
    upload(at, "logged.h5ad", h5ad_bytes(logged))
    goto(at, "2_Model")
    assert "so scFoundation is given the raw counts in layers['counts'] instead" in text(at.info)


def test_the_model_page_computes_anew_stored_embeddings_of_the_wrong_width(sf_app):
    counts = sf_counts(20)
    counts.obsm["X_scfoundation"] = np.ones((20, 50), dtype=np.float32)
    at = start()
    upload(at, "wrong.h5ad", h5ad_bytes(counts))
    goto(at, "2_Model")
    shown = text(at.info)
    assert "The file's obsm['X_scfoundation'] holds 50-d embeddings" in shown and "so they are not used" in shown
    assert "to embed: about" in shown and any(b.key == "btn_embed" for b in at.button)
