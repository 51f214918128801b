"""Counts to VAE_sf / VAE_gf predictions and gene-level biomarkers, through the CLI and the Python API.

The foundation models are tiny random checkpoints in the official formats (``_foundation_helpers``)
read by the real loading code; the drug models are original-layout DAL checkpoints imported into
bundles whose input width is the tiny foundation models' embedding size.
"""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
import original_scatd as orig
from conftest import shared_file
from scatd_core.bundle import import_checkpoint
from scatd_core.cli import main
from scatd_core.errors import CheckpointError, InputError
from scatd_core.explain import COMPLETENESS_TOLERANCE, RANKING_COLUMNS, from_adata
from scatd_core.foundation import embed_cells, ensure_embeddings, estimate_seconds, explain_genes, needs_embedding
from scatd_core.foundation import geneformer as G
from scatd_core.foundation import scfoundation as S
from scatd_core.inputs import ModelInput
from scatd_core.predict import predict


@pytest.fixture
def assets(tmp_path, monkeypatch):
    return H.install_assets(tmp_path, monkeypatch)


def _bundle(tmp_path, backbone, width, seed=0):
    enc = {"vae_sf": [width, 40, 24], "vae_gf": [width, 30, 20, 14]}[backbone]
    sd = orig.dal_checkpoint(backbone, enc, 10, seed=seed)
    torch.save(sd, tmp_path / f"{backbone}.pth")
    ref = np.random.default_rng(seed).normal(0.3, 1.5, size=(40, width))
    np.save(tmp_path / f"{backbone}_ref.npy", ref)
    return import_checkpoint(tmp_path / f"{backbone}.pth", backbone, drug="TESTDRUG", out=tmp_path / f"b_{backbone}_{width}",
                             style_reference=tmp_path / f"{backbone}_ref.npy")


@pytest.fixture
def sf_bundle(tmp_path):
    return _bundle(tmp_path, "vae_sf", 4 * H.SF_HIDDEN)


@pytest.fixture
def gf_bundle(tmp_path):
    return _bundle(tmp_path, "vae_gf", H.GF_CONFIG["hidden_size"], seed=1)


def sf_counts(n=40, seed=0):
    genes = H.sf_genes(40)[:35] + ["NOTINLIST1", "NOTINLIST2"]
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.05, 3.0, len(genes)), size=(n, len(genes))).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names, a.obs_names = genes, [f"cell{i}" for i in range(n)]
    return a


def gf_counts(n=30, seed=0):
    _, syms = H.gf_genes(30)
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.1, 3.0, 30), size=(n, 30)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names, a.obs_names = syms, [f"cell{i}" for i in range(n)]
    return a


def write_csv(a, path):
    pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names).to_csv(path)
    return path


# ----------------------------------------------------------------------------- CLI

def test_cli_predict_vae_sf_from_counts_then_from_its_annotated_h5ad(assets, sf_bundle, tmp_path, capsys,
                                                                     monkeypatch):
    csv = write_csv(sf_counts(), tmp_path / "counts.csv")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Read 40 cells x 37 genes from counts.csv" in err  # genes of a gene matrix, features of an embedding
    assert "scFoundation embeddings: 40 of 40 cells (35 of the model's 40 genes in the data)" in err
    # the time estimate before embedding, as the Model page gives it
    estimated = err.index("Estimated embedding time: about ")
    assert estimated < err.index("scFoundation embeddings: 40 of 40 cells")
    assert "for 40 cells (" in err[estimated:].splitlines()[0] and "on CPU" in err[estimated:].splitlines()[0]
    first = pd.read_csv(tmp_path / "p.csv")
    assert len(first) == 40 and first["prob_resistant"].notna().all()
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert annotated.obsm["X_scfoundation"].shape == (40, 64)
    assert annotated.uns["scatd_foundation"]["vae_sf"]["info"]["resolution"] == "a5"

    def no_extraction(*a, **k):
        raise AssertionError("the embeddings in the h5ad should have been reused")

    monkeypatch.setattr(S, "embed", no_extraction)
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "a.h5ad"),
               "--output", str(tmp_path / "p2.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    # said as reused, not as if computed now (the stored record's seconds are those of the first run)
    assert "reused from those stored with the data" in err and "none computed now" in err
    assert "Estimated embedding time" not in err  # nothing to embed
    assert np.allclose(pd.read_csv(tmp_path / "p2.csv")["prob_resistant"], first["prob_resistant"])
    # an embedding file skips extraction too
    np.save(tmp_path / "emb.npy", annotated.obsm["X_scfoundation"])
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "emb.npy"),
               "--output", str(tmp_path / "p3.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Read 40 cells x 64 embedding features from emb.npy" in err
    assert np.allclose(pd.read_csv(tmp_path / "p3.csv")["prob_resistant"], first["prob_resistant"])


def test_cli_without_the_foundation_model_says_what_to_install(tmp_path, sf_bundle, monkeypatch, capsys):
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nowhere"))
    S._PROBES.clear()
    csv = write_csv(sf_counts(10), tmp_path / "counts.csv")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: scFoundation: No scFoundation weights" in err
    assert "SCATD_SCFOUNDATION_DIR" in err and "scatd convert-scfoundation" in err and "Traceback" not in err
    assert "64-d scFoundation embeddings computed elsewhere: a .npy (cells x features) as --input" in err


def test_cli_without_the_gene_name_dictionary_gives_that_error_and_no_coverage_first(assets, gf_bundle, tmp_path,
                                                                                        capsys):
    (assets["gf"] / "gene_name_id_dict.pkl").unlink()
    G._PROBES.clear()
    csv = write_csv(gf_counts(8), tmp_path / "symbols.csv")  # gene symbols: they need the name dictionary
    rc = main(["predict", "--model", str(gf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: Geneformer's gene-name dictionary (gene_name_id_dict.pkl" in err
    assert "Gene coverage" not in err and "Low gene coverage" not in err and "knows 0" not in err
    with pytest.raises(CheckpointError, match="gene_name_id_dict.pkl"):  # the app's estimate says the same
        estimate_seconds(gf_counts(4), "vae_gf", device="cpu")


def test_cli_says_the_probe_warnings_with_its_errors_errors_first(gf_bundle, tmp_path, monkeypatch, capsys):
    """QA: when the foundation model was not ready, `scatd predict` gave its errors only: its
    warnings (here the missing gene-name dictionary) came to light on the next try."""
    folder = tmp_path / "geneformer"
    H.write_gf_dictionaries(folder)  # the dictionaries, but no model folder (an error) ...
    (folder / "gene_name_id_dict.pkl").unlink()  # ... nor the gene-name dictionary (a warning)
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    csv = write_csv(gf_counts(6), tmp_path / "symbols.csv")
    rc = main(["predict", "--model", str(gf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    error = err.index("error: Geneformer: No Geneformer model folder in")
    assert error < err.index("Warning: Geneformer's gene-name dictionary (gene_name_id_dict.pkl")


def test_cli_says_the_backbone_probe_warnings_before_embedding(assets, gf_bundle, tmp_path, capsys, monkeypatch):
    # the tiny model's sizes taken as a published model's, with other heads: usable, but said (as `scatd doctor`)
    monkeypatch.setitem(G.PUBLISHED_CONFIGS, (3, 16, 32, 2048), ("gf-tiny-published", 4))
    G._PROBES.clear()
    csv = write_csv(gf_counts(8), tmp_path / "symbols.csv")
    rc = main(["predict", "--model", str(gf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warned = err.index("warning: gf-tiny/config.json describes the published gf-tiny-published (3 layers x 16) but "
                       "gives 2 attention heads where gf-tiny-published has 4")
    assert err.index("Gene coverage") < warned < err.index("Geneformer embeddings: 8 of 8 cells")


def test_a_non_published_scfoundation_is_warned_after_embedding_too(assets, sf_bundle, tmp_path, capsys,
                                                                    monkeypatch):
    """The warning for an scFoundation model other than the published one was said before embedding
    only: the prediction's warnings (Predict page, report, CLI) now carry it."""
    # the tiny model (2 layers x 16, 2 heads) taken as of the published width, with 12 layers published
    published = S.PUBLISHED_ENCODER
    monkeypatch.setattr(S, "PUBLISHED_ENCODER", {"depth": 12, "hidden_dim": 16, "heads": 2})
    S._PROBES.clear()
    csv = write_csv(sf_counts(8), tmp_path / "counts.csv")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    words = "This scFoundation model has 2 layers x 16 with 2 attention heads; the published one has 12 layers"
    embedded = err.index("scFoundation embeddings: 8 of 8 cells")
    assert words in err[:embedded]  # before, as before
    assert f"warning: {words}" in err[embedded:]  # and with the prediction's warnings
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert any(w.startswith(words) for w in annotated.uns["scatd"]["warnings"])  # the Predict page and the report
    predict(annotated, sf_bundle, device="cpu")  # again, from the h5ad (the record read back: arrays, not lists)
    assert any(w.startswith(words) for w in annotated.uns["scatd"]["warnings"])
    # the published model (its sizes: 2 layers x 16, 2 heads): no such warning
    monkeypatch.setattr(S, "PUBLISHED_ENCODER", {**published, "depth": 2, "hidden_dim": 16, "heads": 2})
    S._PROBES.clear()
    again = sf_counts(8)
    ensure_embeddings(again, sf_bundle, device="cpu")
    predict(again, sf_bundle, device="cpu")
    assert not any("scFoundation model has" in w for w in again.uns["scatd"]["warnings"])


def test_explain_help_says_what_explain_does_for_foundation_models(capsys):
    """`scatd explain --help` said one row per embedding feature for VAE_sf/VAE_gf: it ranks genes through the
    foundation model (scFoundation: integrated gradients; Geneformer: in-silico deletion) on 50 cells by default."""
    import re

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "genes ranked through the foundation model (integrated gradients through scFoundation; in-silico " \
           "deletion through Geneformer" in out
    assert "on at most 50 cells by default" in out and "50 for genes ranked through a foundation model" in out
    assert "not used by Geneformer's in-silico deletion" in out and "Wilcoxon rank-sum DE test" in out
    from scatd_core.foundation._biomarkers import DEFAULT_MAX_CELLS

    assert DEFAULT_MAX_CELLS == 50  # the number the help gives


def test_cli_convert_scfoundation(assets, tmp_path, capsys):
    ckpt = assets["sf"] / "models" / "models.ckpt"
    rc = main(["convert-scfoundation", str(ckpt), "--out", str(tmp_path / "converted")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert (tmp_path / "converted" / "scfoundation_rde.safetensors").is_file()
    assert "config:" in out.out and "set SCATD_SCFOUNDATION_DIR" in out.err
    rc = main(["convert-scfoundation", str(ckpt), "--key", "cell"])
    assert rc == 0 and (ckpt.parent / "scfoundation_cell.safetensors").is_file()
    ckpt.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 99\n")
    rc = main(["convert-scfoundation", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Git LFS pointer" in err and "git lfs pull" in err


def test_cli_report_vae_gf_from_counts_with_gene_level_biomarkers(assets, gf_bundle, tmp_path, capsys):
    csv = write_csv(gf_counts(), tmp_path / "counts.csv")
    rc = main(["report", "--model", str(gf_bundle.path), "--input", str(csv), "--out", str(tmp_path / "rep"),
               "--device", "cpu", "--no-umap", "--explain", "--max-cells", "6", "--deletion-genes", "5",
               "--threshold", "0.5"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Geneformer embeddings: 30 of 30 cells" in err and "In-silico deletion through Geneformer" in err
    ranking = pd.read_csv(tmp_path / "rep" / "biomarkers.csv")
    assert list(ranking.columns) == list(RANKING_COLUMNS) and len(ranking) == 5
    assert ranking["feature"].str.startswith("GFG").all()  # gene symbols, not "Geneformer_17"
    annotated = ad.read_h5ad(tmp_path / "rep" / "annotated.h5ad")
    assert annotated.obsm["X_geneformer"].shape == (30, 16)
    assert annotated.uns["scatd_biomarkers"]["info"]["features"]["level"] == "gene"


def test_cli_explain_levels(assets, sf_bundle, tmp_path, capsys):
    csv = write_csv(sf_counts(12), tmp_path / "counts.csv")
    common = ["explain", "--model", str(sf_bundle.path), "--input", str(csv), "--device", "cpu",
              "--max-cells", "4", "--steps", "8", "--threshold", "0.5"]
    assert main(common + ["--output", str(tmp_path / "features.csv"), "--level", "features"]) == 0
    assert pd.read_csv(tmp_path / "features.csv")["feature"].str.startswith("scFoundation_").all()
    assert main(common + ["--output", str(tmp_path / "genes.csv")]) == 0
    genes = pd.read_csv(tmp_path / "genes.csv")
    assert len(genes) == 40 and set(genes["feature"]) == set(H.sf_genes(40))
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32))
    capsys.readouterr()
    rc = main(["explain", "--model", str(sf_bundle.path), "--input", str(tmp_path / "emb.npy"), "--device", "cpu",
               "--output", str(tmp_path / "x.csv"), "--level", "genes"])
    assert rc == 2 and "--level features" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Python API

def _predicted(adata, bundle):
    ensure_embeddings(adata, bundle, device="cpu")
    inputs = ModelInput(adata, bundle)
    predict(adata, bundle, inputs=inputs, device="cpu", threshold=0.5)
    return inputs


def test_vae_sf_gene_level_integrated_gradients(assets, sf_bundle, tmp_path):
    a = sf_counts(30)
    inputs = _predicted(a, sf_bundle)
    result = explain_genes(a, sf_bundle, inputs=inputs, max_cells=6, n_steps=32, device="cpu", keep_top=10)
    info = result.info
    assert info["features"] == {"level": "gene", "n": 40, "n_in_data": 35, "n_kept_per_cell": 10}
    assert list(result.ranking.columns) == list(RANKING_COLUMNS)
    assert set(result.ranking["feature"]) == set(H.sf_genes(40))
    # completeness: per cell the gene attributions add up to f(cell) - f(baseline values)
    assert info["completeness"]["ok"] and info["completeness"]["median_relative_error"] < COMPLETENESS_TOLERANCE
    cells = result.cells
    assert np.allclose(cells["attribution_sum"], cells["target"] - cells["baseline_target"],
                       atol=0.05 * np.abs(cells["target"] - cells["baseline_target"]).max())
    # the explained output is the predicted one: recomputed embedding == the stored one
    assert info["foundation"]["embedding_check"]["max_abs_difference_from_stored_embedding"] < 1e-4
    assert np.allclose(1 / (1 + np.exp(-cells["target"])), cells["prob_resistant"], atol=1e-4)
    # genes absent from the data are no token anywhere: exactly 0
    absent = result.ranking[~result.ranking["in_data"]]
    assert len(absent) == 5 and (absent["mean_abs_attribution"] == 0).all()
    # stored like explain's, and the reports read it
    back = from_adata(a)
    assert back.features == result.features and np.allclose(back.attributions, result.attributions)
    from scatd_core.export import write_report

    paths = write_report(a, tmp_path / "rep")
    assert "biomarkers" in {k for k in paths} or (tmp_path / "rep" / "biomarkers.csv").is_file()


def test_vae_sf_zero_baseline(assets, sf_bundle):
    a = sf_counts(20)
    inputs = _predicted(a, sf_bundle)
    result = explain_genes(a, sf_bundle, inputs=inputs, baseline="zero", max_cells=3, n_steps=24, device="cpu")
    assert result.info["baseline_title"] == "zero (every expressed gene at value 0)"
    assert result.info["completeness"]["median_relative_error"] < 0.02
    with pytest.raises(InputError, match="baseline"):
        explain_genes(a, sf_bundle, inputs=inputs, baseline="nope", device="cpu")


def test_vae_sf_integrated_gradients_stay_within_the_memory_limit(assets, sf_bundle, monkeypatch):
    """Cells whose backward pass would exceed limits.max_dataset_mb are left out (said), or nothing runs."""
    from scatd_core import config
    from scatd_core.foundation import _biomarkers

    a = sf_counts(30)
    inputs = _predicted(a, sf_bundle)
    captured = {}

    def fake_limits(mb):  # the tiny test model needs far less than 1 MB: the limit in bytes, directly
        return lambda: SimpleNamespace(max_dataset_bytes=mb * 2**20)

    original = _biomarkers._ScFoundationIG._within_memory

    def spy(self, cfg, n_expressed):
        tokens = n_expressed[self.rows].astype(float) + 2
        captured["need"] = _biomarkers.attention_bytes(cfg, tokens) * np.maximum(1, _biomarkers.IG_TOKENS["cpu"]
                                                                                 // tokens)
        return original(self, cfg, n_expressed)

    monkeypatch.setattr(_biomarkers._ScFoundationIG, "_within_memory", spy)
    full = explain_genes(a, sf_bundle, inputs=inputs, max_cells=8, n_steps=8, device="cpu", store_result=False)
    need = np.sort(captured["need"])
    assert full.info["cells"]["n_explained"] == 8 and not any("left out" in w for w in full.info["warnings"])
    # a limit between the smallest and the largest need: the larger cells are left out, and the result says so
    limit_mb = float(np.median(need)) / 2**20
    monkeypatch.setattr(config, "limits", fake_limits(max(limit_mb, 1e-9)))
    part = explain_genes(a, sf_bundle, inputs=inputs, max_cells=8, n_steps=8, device="cpu", store_result=False)
    kept = int((captured["need"] <= limit_mb * 2**20).sum())
    assert 0 < part.info["cells"]["n_explained"] == kept < 8
    assert any(f"{8 - kept:,} of the 8 chosen cells were left out" in w for w in part.info["warnings"])
    assert set(part.cells.index) < set(full.cells.index)
    # below the smallest need: nothing runs, the message says why and what to do
    monkeypatch.setattr(config, "limits", fake_limits(need[0] / 2**20 / 2))
    with pytest.raises(InputError, match="max_dataset_mb"):
        explain_genes(a, sf_bundle, inputs=inputs, max_cells=8, n_steps=8, device="cpu", store_result=False)


def test_vae_gf_deletion_is_the_change_from_removing_the_gene(assets, gf_bundle):
    a = gf_counts(24)
    inputs = _predicted(a, gf_bundle)
    result = explain_genes(a, gf_bundle, inputs=inputs, max_cells=4, n_genes=6, device="cpu", keep_top=None)
    assert result.info["completeness"] == {} and result.info["baseline"] == "deletion"
    assert len(result.ranking) == 6
    # independently: zero the gene's counts, tokenise and embed again, same AdaIN statistics and classifier
    bert, vocab, folder = G.load(embedding_dim=16, device="cpu")
    model = gf_bundle.load_model("cpu")
    row = int(result.cells["row"].iloc[0])
    gene = result.features[0]
    col = list(a.var_names).index(gene)

    def logit(x_row):
        b = ad.AnnData(sp.csr_matrix(x_row[None, :]))
        b.var_names = a.var_names
        tokens = G.tokenizer(b, vocab, folder.input_size).tokenize(b.X)
        emb = G.embed_tokens(bert, tokens, vocab, "cell", "cpu").numpy()
        with torch.no_grad():
            logits = model(torch.from_numpy(inputs._scale(emb)))
        return float(logits[0, 1] - logits[0, 0])

    x = a.X.toarray()[row].copy()
    full = logit(x)
    x[col] = 0
    expected = full - logit(x) if a.X.toarray()[row, col] > 0 else 0.0
    assert result.cells["target"].iloc[0] == pytest.approx(full, abs=1e-4)
    assert result.attributions[0, 0] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(InputError, match="deletion"):
        explain_genes(a, gf_bundle, inputs=inputs, baseline="zero", device="cpu")


def test_gene_level_needs_embeddings_computed_here(assets, sf_bundle):
    a = ad.AnnData(np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32))
    predict(a, sf_bundle, device="cpu")
    with pytest.raises(InputError, match="brought in"):
        explain_genes(a, sf_bundle, device="cpu")


def test_cells_without_an_embedding_are_not_scored_with_the_reason(assets, sf_bundle):
    a = sf_counts(20)
    x = a.X.toarray()
    x[4] = 0
    a.X = sp.csr_matrix(x)
    _predicted(a, sf_bundle)
    info = a.uns["scatd"]
    assert info["not_scored"] == {"not_embedded": 1}
    assert a.obs["scatd_label"].iloc[4] == "not scored"
    assert any("no embedding" in w for w in info["warnings"])


def test_the_hook_decides_when_to_extract(assets, sf_bundle, gf_bundle, tmp_path):
    a = sf_counts(6)
    assert needs_embedding(a, sf_bundle)
    assert ensure_embeddings(a, sf_bundle, device="cpu")["n_embedded"] == 6
    user = ad.AnnData(np.zeros((3, 64), dtype=np.float32))
    assert not needs_embedding(user, sf_bundle)  # an embedding file: X by position
    brought = sf_counts(3)
    brought.obsm["X_scfoundation"] = np.zeros((3, 64), dtype=np.float32)
    assert not needs_embedding(brought, sf_bundle)  # the user's own embeddings
    big = _bundle(tmp_path, "vae_gf", 512, seed=2)  # a drug model on the 12-layer 512-d Geneformer
    with pytest.raises(CheckpointError, match="512-d"):
        ensure_embeddings(gf_counts(4), big, device="cpu")
    published = _bundle(tmp_path, "vae_sf", 3072, seed=3)
    with pytest.raises(CheckpointError, match="gives 64-d embeddings, but .* takes 3072-d"):
        ensure_embeddings(sf_counts(4), published, device="cpu")


def test_estimate_before_a_long_run(assets):
    a = sf_counts(10)
    est = estimate_seconds(a, "vae_sf", device="cpu")
    assert est["n_cells"] == 10 and est["seconds"] > 0 and est["n_tokens"] == int((a.X.toarray()[:, :35] > 0).sum()) + 20
    embed_cells(a, "vae_sf", mask=np.arange(10) < 4, device="cpu")
    assert estimate_seconds(a, "vae_sf", device="cpu")["n_cells"] == 6  # only what is left
    g = gf_counts(5)
    assert estimate_seconds(g, "vae_gf", device="cpu")["n_cells"] == 5


@pytest.mark.parametrize("backbone, data", [("vae_sf", sf_counts), ("vae_gf", gf_counts)])
def test_the_time_estimate_is_within_3x_of_the_run(assets, backbone, data):
    """The estimate came from a generic matrix-product rate and was 4-15x short on real backbones (20-150x
    on these tiny ones): it now times one layer of the backbone's own shape on the batches the run makes."""
    import time

    embed_cells(data(2), backbone, device="cpu")  # the model loaded, as when the estimate is shown again
    a = data(300, seed=1)
    t0 = time.perf_counter()
    est = estimate_seconds(a, backbone, device="cpu")
    assert time.perf_counter() - t0 < 0.5  # cheap: a few small timed passes of one layer
    measured = []
    for _ in range(2):
        t0 = time.perf_counter()
        embed_cells(a, backbone, device="cpu", recompute=True)
        measured.append(time.perf_counter() - t0)
    ratio = est["seconds"] / min(measured)
    assert 1 / 3 <= ratio <= 3, (est["seconds"], measured)


def test_real_scfoundation_embeddings_feed_a_published_size_vae_sf(tmp_path):
    """The 3,072-d contract: real scFoundation embeddings (120 SCAD cells) go straight to a VAE_sf
    model of the published input width, by obsm or by position, with no extraction."""
    emb = np.load(shared_file("scfoundation", "scad_sorafenib_sc_embedding.npy"))
    assert emb.shape[1] == S.ScFoundationConfig().embedding_dim
    bundle = _bundle(tmp_path, "vae_sf", 3072)
    by_obsm = ad.AnnData(np.zeros((120, 2), dtype=np.float32))
    by_obsm.obsm["X_scfoundation"] = emb
    by_position = ad.AnnData(emb.copy())
    for data in (by_obsm, by_position):
        assert not needs_embedding(data, bundle)
        predict(data, bundle, device="cpu")
        assert data.uns["scatd"]["n_scored"] == 120
    assert np.allclose(by_obsm.obs["scatd_prob_resistant"], by_position.obs["scatd_prob_resistant"])


def test_cli_choices_match_the_core():
    from scatd_core.cli import _common

    assert _common.SCFOUNDATION_KEYS == S.CELL_KEYS


# ----------------------------------------------------------------------------- gene coverage

def _with_unknown_genes(a, n_unknown, seed=0):
    """``a`` with ``n_unknown`` expressed genes no foundation model knows (e.g. unmapped identifiers)."""
    rng = np.random.default_rng(seed)
    extra = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, size=(a.n_obs, n_unknown)).astype(np.float32)))
    extra.var_names, extra.obs_names = [f"UNKNOWN{i}" for i in range(n_unknown)], a.obs_names
    return ad.concat([a, extra], axis=1)


def test_low_gene_coverage_is_warned_before_embedding_and_recorded(assets, sf_bundle, tmp_path, capsys):
    low = _with_unknown_genes(sf_counts(), 100)  # 35 of the data's 137 genes are scFoundation's
    csv = write_csv(low, tmp_path / "low.csv")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(csv), "--output", str(tmp_path / "p.csv"),
               "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "the foundation model knows 35 of the data's 137 genes (25.5%" in err
    warned = err.index("warning: Low gene coverage: scFoundation knows only 35 of the data's 137 genes")
    assert warned < err.index("scFoundation embeddings: 40 of 40 cells")  # said before embedding
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    cov = annotated.uns["scatd_foundation"]["vae_sf"]["info"]["gene_coverage"]
    assert cov["fraction_of_data_genes"] == pytest.approx(35 / 137, abs=1e-4) and "Low gene coverage" in cov["warning"]
    # which identifiers scFoundation reads, and what Ensembl IDs need (not "symbols or Ensembl IDs")
    assert "human gene symbols (scFoundation reads symbols): Ensembl IDs match only once mapped" in cov["warning"]
    assert "gene_name_id_dict.pkl" in cov["warning"] and "symbols or Ensembl IDs" not in cov["warning"]
    assert any(w.startswith("Low gene coverage") for w in annotated.uns["scatd"]["warnings"])
    # good coverage: the line, no warning
    ok = sf_counts(5)
    est = estimate_seconds(ok, "vae_sf", device="cpu")
    assert est["gene_coverage"]["n_matched"] == 35 and est["gene_coverage"]["warning"] is None


def test_low_gene_coverage_of_geneformer(assets):
    est = estimate_seconds(_with_unknown_genes(gf_counts(5), 60), "vae_gf", device="cpu")
    cov = est["gene_coverage"]
    assert (cov["n_matched"], cov["n_data_genes"]) == (30, 90)
    assert "Geneformer knows only 30 of the data's 90 genes (33.3%" in cov["warning"]
    assert ("human Ensembl IDs (Geneformer reads Ensembl IDs): symbols match only through Geneformer's gene-name "
            "dictionary (gene_name_id_dict.pkl)") in cov["warning"]


# ----------------------------------------------------------------------------- counts beside a normalised X

def _log_normalised(a):
    """``a`` with log1p(counts per 10k) in X, as scanpy leaves a file."""
    x = a.X.toarray()
    out = a.copy()
    out.X = sp.csr_matrix(np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4).astype(np.float32))
    return out


def test_vae_sf_uses_the_counts_layer_beside_log_normalised_x(assets, sf_bundle, tmp_path, capsys):
    counts = sf_counts(20)
    _predicted(counts, sf_bundle)
    logged = _log_normalised(counts)
    logged.layers["counts"] = counts.X.copy()
    logged.write_h5ad(tmp_path / "logged.h5ad")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "logged.h5ad"),
               "--output", str(tmp_path / "p.csv"), "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu",
               "--threshold", "0.5"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "X holds log-normalized values, so scFoundation is given the raw counts in layers['counts'] instead" in err
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert annotated.uns["scatd_foundation"]["vae_sf"]["info"]["expression"]["matrix"] == "layers['counts']"
    np.testing.assert_allclose(annotated.obsm["X_scfoundation"], counts.obsm["X_scfoundation"], rtol=1e-4, atol=1e-5)
    assert any("layers['counts']" in n for n in annotated.uns["scatd"]["notes"])


def test_vae_sf_on_log_normalised_values_alone_is_warned_and_recorded(assets, sf_bundle):
    logged = _log_normalised(sf_counts(20))
    _predicted(logged, sf_bundle)
    given = logged.uns["scatd_foundation"]["vae_sf"]["info"]["expression"]
    assert given["matrix"] == "X" and "differ from those made from the cells' counts" in given["warning"]
    assert any("scFoundation was given log-normalised values" in w for w in logged.uns["scatd"]["warnings"])


def test_vae_gf_uses_adata_raw_counts_rather_than_refusing(assets, gf_bundle):
    counts = gf_counts(12)
    ensure_embeddings(counts, gf_bundle, device="cpu")
    logged = _log_normalised(counts)
    logged.raw = counts.copy()
    record = ensure_embeddings(logged, gf_bundle, device="cpu")
    assert record["info"]["expression"]["matrix"] == "adata.raw" and record["n_embedded"] == 12
    np.testing.assert_allclose(logged.obsm["X_geneformer"], counts.obsm["X_geneformer"], rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="Geneformer needs raw counts"):  # no counts anywhere: still refused
        ensure_embeddings(_log_normalised(gf_counts(12)), gf_bundle, device="cpu")


def test_report_says_how_the_embeddings_were_made(assets, sf_bundle, tmp_path):
    from scatd_core.export import html_report, metrics_table

    a = sf_counts(20)
    _predicted(a, sf_bundle)
    m = metrics_table(a)
    e = dict(zip(m.loc[m["section"] == "embeddings", "metric"], m.loc[m["section"] == "embeddings", "value"]))
    assert (e["model"], e["key"], e["resolution"], e["max_genes"]) == ("scFoundation", "rde", "a5", 8000)
    assert (e["genes: n_matched"], e["genes: n_data_genes"], e["cells embedded"]) == (35, 37, 20)
    assert e["values_given"] == "X" and any(k.startswith("file: ") and "sha256" in v for k, v in e.items())
    page = html_report(a)
    assert "Embeddings: scFoundation" in page and "(key rde, resolution a5, max_genes 8000), from X" in page
    assert "the model knew 35 of the data&#x27;s 37 genes (40 in its vocabulary); 20 cells embedded" in page


# ----------------------------------------------------------------------------- values no expression has

def _with_faulty_cells(a):
    """``a`` (counts) with a negative value in cell 3, NaN in cell 5 and infinity in cell 6."""
    x = a.X.toarray()
    x[3, 2], x[5, 1], x[6, 0] = -4, np.nan, np.inf
    out = a.copy()
    out.X = sp.csr_matrix(x)
    return out


def test_cells_with_negative_expression_are_not_scored_by_reason(assets, sf_bundle, tmp_path, capsys, monkeypatch):
    """As the Dist_VAE path: such cells are not embedded and not scored, counted under their reason in
    the CLI, the record, metrics.csv and the warnings; the reasons travel with the annotated h5ad.
    (A file with NaN or infinite values is refused when read; through the API those are left out too.)"""
    from scatd_core.export import metrics_table

    a = sf_counts(100)
    x = a.X.toarray()
    x[3, 2], x[7, 0] = -4, -1
    a.X = sp.csr_matrix(x)
    a.write_h5ad(tmp_path / "faulty.h5ad")
    common = ["predict", "--model", str(sf_bundle.path), "--device", "cpu", "--threshold", "0.5"]
    rc = main(common + ["--input", str(tmp_path / "faulty.h5ad"), "--output", str(tmp_path / "p.csv"),
                        "--h5ad", str(tmp_path / "a.h5ad")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "warning: 2 cells not embedded: negative values among its genes" in err
    assert "warning: 2 cells were not scored: negative expression values" in err
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert annotated.uns["scatd"]["not_scored"] == {"negative_values": 2}
    assert list(annotated.obs["scatd_label"].iloc[[3, 7]]) == ["not scored"] * 2
    m = metrics_table(annotated)
    section = dict(zip(m.loc[m["section"] == "not scored", "metric"], m.loc[m["section"] == "not scored", "value"]))
    assert section == {"negative_values": 2}
    # the annotated h5ad again: the embeddings are reused, and the cells keep their reason
    monkeypatch.setattr(S, "embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reused")))
    rc = main(common + ["--input", str(tmp_path / "a.h5ad"), "--output", str(tmp_path / "p2.csv")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "2 cells were not scored: negative expression values" in err and "no embedding" not in err


def test_cells_with_non_finite_expression_are_not_scored_by_reason(assets, sf_bundle):
    a = _with_faulty_cells(sf_counts(100))
    _predicted(a, sf_bundle)
    assert a.uns["scatd"]["not_scored"] == {"non_finite": 2, "negative_values": 1}
    assert a.uns["scatd_foundation"]["vae_sf"]["info"]["not_embedded"] == {"non_finite": 2, "negative_values": 1}


def test_geneformer_cells_with_negative_values_are_not_scored_by_reason(assets, gf_bundle):
    a = _with_faulty_cells(gf_counts(30))
    _predicted(a, gf_bundle)
    assert a.uns["scatd"]["not_scored"] == {"non_finite": 2, "negative_values": 1}
    assert any(w.startswith("1 cell was not scored: negative expression values") for w in a.uns["scatd"]["warnings"])


def test_a_partly_missing_stored_embedding_is_not_scored_as_missing_values(assets, sf_bundle):
    a = sf_counts(30)
    emb = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
    emb[2, :5] = np.nan  # partly missing
    emb[4] = np.nan  # no embedding
    a.obsm["X_scfoundation"] = emb
    predict(a, sf_bundle, device="cpu")
    info = a.uns["scatd"]
    assert info["not_scored"] == {"not_embedded": 1, "missing_values": 1}
    assert "1 cell was not scored: the embedding has missing values (NaN in some of its features); e.g. cell " \
        "'cell2'." in info["warnings"]
    assert a.obs["scatd_label"].iloc[2] == "not scored"


def test_stored_embeddings_of_the_wrong_width_are_computed_anew_from_the_genes(assets, sf_bundle, tmp_path, capsys,
                                                                               monkeypatch):
    a = sf_counts(20)
    a.obsm["X_scfoundation"] = np.ones((20, 50), dtype=np.float32)  # e.g. another scFoundation's, or truncated
    a.write_h5ad(tmp_path / "wrong.h5ad")
    assert needs_embedding(a, sf_bundle)
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "wrong.h5ad"),
               "--output", str(tmp_path / "p.csv"), "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    said = "The file's obsm['X_scfoundation'] holds 50-d embeddings, but TESTDRUG"
    assert said in err and "takes 64-d scFoundation embeddings, so they are not used" in err
    assert err.index(said) < err.index("scFoundation embeddings: 20 of 20 cells")
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert annotated.obsm["X_scfoundation"].shape == (20, 64) and annotated.uns["scatd"]["n_scored"] == 20
    assert any(n.startswith(said) for n in annotated.uns["scatd"]["notes"])
    # without scFoundation's weights: the message says both, and how to install them
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nowhere"))
    S._PROBES.clear()
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "wrong.h5ad"),
               "--output", str(tmp_path / "p2.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"error: {said}" in err and "so they cannot be used; and scFoundation is not ready here" in err
    assert "No scFoundation weights" in err and "SCATD_SCFOUNDATION_DIR" in err
