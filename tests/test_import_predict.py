"""Original checkpoints import exactly and predict what the original inference computes."""

from __future__ import annotations

import json
import pickle
import shutil
import unittest.mock as mock
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import original_scatd as orig
from conftest import small_gene_names
from scatd_core import _keys
from scatd_core.bundle import distinct_titles, import_checkpoint, list_library, load_bundle
from scatd_core.errors import BundleError, CheckpointError, InputError
from scatd_core.export import predictions_table
from scatd_core.inputs import InputSpec, model_source
from scatd_core.predict import calibrate, labels_at, predict, set_threshold, summary

TOL = 1e-5


def _adain(x, ref):
    return ref.std(0) * (x - x.mean(0)) / (x.std(0) + 1e-8) + ref.mean(0)


@pytest.mark.parametrize("backbone", ["dist_vae", "vae_sf", "vae_gf"])
def test_small_checkpoints_reproduce_original_inference(small_bundles, backbone):
    bundle, sd, enc, z, extra = small_bundles[backbone]
    rng = np.random.default_rng(2)
    x = np.abs(rng.normal(size=(41, enc[0]))).astype(np.float32)
    if backbone == "dist_vae":
        adata = ad.AnnData(x, var=pd.DataFrame(index=extra))
        expected = orig.original_inference_prob(backbone, enc, z, sd, x)
    else:
        adata = ad.AnnData(x)
        expected = orig.original_inference_prob(backbone, enc, z, sd, _adain(x.astype(np.float64), extra))
    predict(adata, bundle, batch_size=7)
    got = adata.obs["scatd_prob_resistant"].to_numpy()
    assert np.abs(got - expected).max() < TOL
    assert adata.obsm["X_scatd"].shape == (41, z)
    thr = bundle.threshold
    assert list(adata.obs["scatd_label"]) == ["resistant" if p > thr else "sensitive" for p in got]
    assert adata.uns["scatd"]["params"]["mode"] == "mean"


@pytest.mark.parametrize("backbone", ["dist_vae", "vae_sf", "vae_gf"])
def test_published_size_checkpoints_import_and_reproduce(tmp_path, backbone):
    enc, z, _ = {"vae_sf": ([3072, 1926, 850, 262], 421, None), "vae_gf": ([512, 1415, 1250, 1050, 293], 498, None),
                 "dist_vae": ([19264, 1664, 359], 421, None)}[backbone]
    sd = orig.dal_checkpoint(backbone, enc, z, seed=5)
    pth = tmp_path / "ckpt.pth"
    torch.save(sd, pth)
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(12, enc[0]))).astype(np.float32)
    kwargs = {}
    if backbone == "dist_vae":
        genes = [f"G{i}" for i in range(enc[0])]
        (tmp_path / "genes.tsv").write_text("gene_name\tindex\n" + "".join(f"{g}\t{i}\n" for i, g in enumerate(genes)))
        kwargs["genes"] = tmp_path / "genes.tsv"
        adata = ad.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=genes))
        xin = x
    else:
        ref = rng.normal(size=(40, enc[0]))
        np.save(tmp_path / "ref.npy", ref)
        kwargs["style_reference"] = tmp_path / "ref.npy"
        adata = ad.AnnData(x)
        xin = _adain(x.astype(np.float64), ref)
    bundle = import_checkpoint(pth, backbone, drug="DOCETAXEL", out=tmp_path / "bundle", **kwargs)
    assert len(bundle.manifest["provenance"]["source_sha256"]) == 64
    predict(adata, bundle)
    expected = orig.original_inference_prob(backbone, enc, z, sd, xin)
    assert np.abs(adata.obs["scatd_prob_resistant"].to_numpy() - expected).max() < TOL


def test_dist_vae_genes_shuffled_missing_and_extra(small_bundles):
    bundle, sd, enc, z, genes = small_bundles["dist_vae"]
    rng = np.random.default_rng(4)
    x = np.abs(rng.normal(size=(25, enc[0]))).astype(np.float32)
    present = rng.permutation(enc[0])[: enc[0] - 9]  # 9 model genes missing, the rest shuffled
    extra = rng.normal(size=(25, 5)).astype(np.float32)
    data = np.hstack([x[:, present], extra])
    names = [genes[j] for j in present] + [f"NOTAMODELGENE{i}" for i in range(5)]
    adata = ad.AnnData(sp.csr_matrix(data), var=pd.DataFrame(index=names))
    predict(adata, bundle, batch_size=4)
    model_input = np.zeros_like(x)
    model_input[:, present] = x[:, present]
    expected = orig.original_inference_prob("dist_vae", enc, z, sd, model_input)
    assert np.abs(adata.obs["scatd_prob_resistant"].to_numpy() - expected).max() < TOL
    cov = adata.uns["scatd"]["gene_coverage"]
    assert (cov["n_matched"], cov["n_model_genes"], cov["n_extra_ignored"]) == (enc[0] - 9, enc[0], 5)


def test_duplicated_gene_names_are_summed(small_bundles):
    bundle, sd, enc, z, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(6, enc[0]))).astype(np.float32)
    half = x / 2
    adata = ad.AnnData(np.hstack([half, half]), var=pd.DataFrame(index=genes + genes))
    predict(adata, bundle)
    expected = orig.original_inference_prob("dist_vae", enc, z, sd, x)
    assert np.abs(adata.obs["scatd_prob_resistant"].to_numpy() - expected).max() < TOL
    assert adata.uns["scatd"]["gene_coverage"]["n_duplicated_summed"] == enc[0]


def test_dist_vae_beta_modes(small_bundles):
    bundle, sd, enc, z, genes = small_bundles["dist_vae"]
    assert bundle.manifest["beta_mode"] == "shared_with_head"
    x = np.abs(np.random.default_rng(6).normal(size=(30, enc[0]))).astype(np.float32)
    shared = predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), bundle, copy=True)
    separate = predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), bundle, beta_mode="separate", copy=True)
    # separate betas = the function that was trained (training-script model, own encoder beta)
    train_model = orig.OrigClassifier("dist_vae", enc, z, encoder_swish=orig.OrigSwish())
    train_model.load_state_dict(sd)
    train_model.eval()
    with torch.no_grad():
        expected = train_model.mean_path_prob(torch.from_numpy(x)).double().numpy()
    assert np.abs(separate.obs["scatd_prob_resistant"].to_numpy() - expected).max() < TOL
    # the original inference's encoder ran with the head's beta: a different latent
    assert np.abs(shared.obsm["X_scatd"] - separate.obsm["X_scatd"]).max() > 1e-2


def test_sample_mode_seeded(small_bundles):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(7).normal(size=(20, enc[0]))).astype(np.float32)
    runs = [predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), bundle, mode="sample", n_samples=20,
                    seed=s, copy=True) for s in (1, 1, 2)]
    p = [r.obs["scatd_prob_resistant"].to_numpy() for r in runs]
    assert np.array_equal(p[0], p[1]) and not np.array_equal(p[0], p[2])
    sd = runs[0].obs["scatd_prob_resistant_sd"].to_numpy()
    assert (sd > 0).all() and np.isfinite(sd).all()
    table = predictions_table(runs[0])
    assert list(table.columns) == ["cell_id", "prob_resistant", "prob_resistant_sd", "label", "calibrated", "scored",
                                   "not_scored_reason", "qc_pass", "rank"]


def test_every_cell_gets_a_row_and_bad_cells_are_flagged(small_bundles):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(8).normal(size=(10, enc[0]))).astype(np.float32)
    x[3, 5] = np.nan
    x[7] = 0.0
    adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"cell{i}" for i in range(10)]), var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    table = predictions_table(adata)
    assert list(table["cell_id"]) == [f"cell{i}" for i in range(10)]
    assert list(table["scored"]) == [i not in (3, 7) for i in range(10)]
    assert table.loc[3, "label"] == "not scored" and np.isnan(table.loc[3, "prob_resistant"])
    assert adata.uns["scatd"]["not_scored"] == {"non_finite": 1, "no_expression": 1}
    relabelled = labels_at(adata, 0.0)
    assert (relabelled[table["scored"].to_numpy()] == "resistant").all()
    assert relabelled[3] == "not scored"


def test_backed_sparse_h5ad_equals_dense(small_bundles, tmp_path):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    rng = np.random.default_rng(9)
    x = (rng.poisson(0.7, size=(50, enc[0]))).astype(np.float32)
    ad.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "d.h5ad")
    backed = ad.read_h5ad(tmp_path / "d.h5ad", backed="r")
    predict(backed, bundle, batch_size=16)
    dense = predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), bundle, copy=True)
    assert np.allclose(backed.obs["scatd_prob_resistant"], dense.obs["scatd_prob_resistant"], atol=1e-6)


def test_embedding_models_need_style_and_right_width(tmp_path, small_bundles):
    bundle, sd, enc, _, _ = small_bundles["vae_sf"]
    with pytest.raises(InputError, match="takes 40-d scFoundation cell embeddings"):
        predict(ad.AnnData(np.zeros((3, 7), dtype=np.float32)), bundle)
    torch.save(sd, tmp_path / "sf.pth")
    nostyle = import_checkpoint(tmp_path / "sf.pth", "vae_sf", drug="D", out=tmp_path / "nostyle")
    with pytest.raises(InputError, match="style statistics"):
        predict(ad.AnnData(np.ones((3, enc[0]), dtype=np.float32)), nostyle)


def _width_error(backbone: str, dim: int, x: np.ndarray, **obsm) -> InputError:
    spec = InputSpec(backbone=backbone, input_kind="embedding", input_dim=dim, transform="none")
    with pytest.raises(InputError) as info:
        model_source(ad.AnnData(x, obsm=obsm), spec)
    return info.value


def test_wrong_width_embeddings_say_what_this_model_needs_and_what_the_data_look_like():
    rng = np.random.default_rng(0)
    # scFoundation's width for a Geneformer model: named as such, never suggested back
    err = _width_error("vae_gf", 512, rng.normal(size=(6, 3072)).astype(np.float32))
    assert "VAE_gf (scATD-gf) model takes 512-d Geneformer cell embeddings" in err.message
    assert "3,072 is the width of scFoundation embeddings" in err.message and "obsm['X_geneformer']" in err.message
    assert "VAE_sf (scATD-sf) model" in err.hint and "scFoundation (3,072-d)" not in err.hint
    assert "embed_cells" not in err.hint and "--input" in err.hint and "512-d Geneformer" in err.hint
    assert "Data page" in err.app_hint and "--" not in err.app_hint and "scatd " not in err.app_hint
    # a small VAE_sf model: its own width, and Geneformer's 512 recognised
    err = _width_error("vae_sf", 64, rng.normal(size=(6, 512)).astype(np.float32))
    assert "takes 64-d scFoundation" in err.message and "512 is the width of Geneformer" in err.message
    assert "3,072" not in err.message + err.hint and "64-d scFoundation embeddings" in err.hint
    # transposed: the width this model takes is the number of cells
    err = _width_error("vae_sf", 30, rng.normal(size=(30, 12)).astype(np.float32))
    assert "12 features per cell" in err.message and "other way round" in err.message
    assert "--orientation genes_x_cells" in err.hint and "rows are genes" in err.app_hint
    # an obsm entry of another width is named with its width; without one none is claimed
    err = _width_error("vae_sf", 30, rng.normal(size=(6, 12)).astype(np.float32),
                       X_scfoundation=np.zeros((6, 512), dtype=np.float32))
    assert "its obsm['X_scfoundation'] is 512-d" in err.message and "Geneformer" in err.message
    assert "other way round" not in err.message


# ------------------------------------------------------------------ import errors

def test_import_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"Encoder_resblocks.0.fc.weight": Evil()}))
    with pytest.raises(CheckpointError, match="refuses to run code"):
        import_checkpoint(path, "dist_vae", drug="X", out=tmp_path / "b")
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not a checkpoint\n", "not a readable PyTorch"),
                                           (b"PK\x03\x04garbage" * 10, "not a readable PyTorch")])
def test_import_refuses_non_checkpoints(tmp_path, content, match):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        import_checkpoint(path, "dist_vae", drug="X", out=tmp_path / "b")


def test_import_of_a_folder_or_a_missing_file_says_which(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        import_checkpoint(tmp_path / "ckpt", "dist_vae", drug="X", out=tmp_path / "b")
    with pytest.raises(CheckpointError, match="Checkpoint not found"):
        import_checkpoint(tmp_path / "nope.pth", "dist_vae", drug="X", out=tmp_path / "b")


def test_models_library_option_naming_a_file_says_so(tmp_path, capsys):
    from scatd_core.cli import main

    (tmp_path / "lib.csv").write_text("x\n")
    assert main(["models", "--library", str(tmp_path / "lib.csv")]) == 2
    assert "is a file, not a folder (--library)" in capsys.readouterr().err
    assert main(["models", "--library", str(tmp_path / "missing")]) == 2
    assert "No folder" in capsys.readouterr().err


def test_import_truncated_checkpoint(tmp_path, small_bundles):
    _, sd, *_ = small_bundles["vae_gf"]
    torch.save(sd, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch"):
        import_checkpoint(tmp_path / "cut.pth", "vae_gf", drug="X", out=tmp_path / "b")


def test_import_dist_vae_needs_matching_gene_list(tmp_path, small_bundles):
    _, sd, enc, *_ = small_bundles["dist_vae"]
    torch.save(sd, tmp_path / "d.pth")
    with pytest.raises(BundleError, match="needs its input gene list"):
        import_checkpoint(tmp_path / "d.pth", "dist_vae", drug="X", out=tmp_path / "b1")
    (tmp_path / "short.txt").write_text("\n".join(small_gene_names(enc[0] - 1)))
    with pytest.raises(BundleError, match=f"has {enc[0] - 1} genes but the model takes {enc[0]}"):
        import_checkpoint(tmp_path / "d.pth", "dist_vae", drug="X", out=tmp_path / "b2", genes=tmp_path / "short.txt")
    with pytest.raises(CheckpointError, match="name its drug"):
        import_checkpoint(tmp_path / "d.pth", "dist_vae", out=tmp_path / "b3", genes=tmp_path / "short.txt")


def test_import_pretraining_checkpoint_as_backbone_bundle(tmp_path):
    from conftest import SMALL
    enc, z, dec = SMALL["vae_gf"]
    torch.save(orig.pretraining_checkpoint("vae_gf", enc, z, dec), tmp_path / "pre.pth")
    bundle = import_checkpoint(tmp_path / "pre.pth", "vae_gf", out=tmp_path / "bb")
    assert bundle.kind == "backbone" and bundle.architecture.decoder_dims == dec
    with pytest.raises(InputError, match="cannot predict"):
        predict(ad.AnnData(np.zeros((2, enc[0]), dtype=np.float32)), bundle)


def test_broken_bundles_are_reported(tmp_path, small_bundles):
    bundle = small_bundles["vae_gf"][0]
    lib = bundle.path.parent
    (bundle.path / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bundle.path).load_model()
    m = json.loads((small_bundles["vae_sf"][0].path / "manifest.json").read_text())
    m["input_transform"] = "mystery"
    (small_bundles["vae_sf"][0].path / "manifest.json").write_text(json.dumps(m))
    entries = {e.path.name: e for e in list_library(lib)}
    assert not entries["b_vae_sf"].ok and "unknown input transform" in entries["b_vae_sf"].problem
    assert entries["b_dist_vae"].ok


def test_damaged_weights_are_listed_as_broken_from_their_header(tmp_path, small_bundles, monkeypatch):
    """QA: a model whose weights.safetensors had a broken header, was truncated, or held a tensor of
    the wrong shape was listed as usable (the library only opened the file) and failed at its first
    prediction. list_library now reads the header (no tensors) and lists each as broken, saying why."""
    from safetensors.torch import load_file, save_file

    from scatd_core import bundle as bundle_module

    good = small_bundles["dist_vae"][0]
    lib = tmp_path / "lib"
    lib.mkdir()
    weights = (good.path / "weights.safetensors").read_bytes()

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good.path, lib / name)) / "weights.safetensors"

    copy("intact")
    copy("header").write_bytes(weights[:8] + b"{not json" + weights[17:])
    copy("length").write_bytes((10 ** 12).to_bytes(8, "little") + weights[8:])
    copy("truncated").write_bytes(weights[:-100])
    copy("longer").write_bytes(weights + b"\0" * 10)
    copy("tiny").write_bytes(weights[:5])
    state = load_file(str(good.path / "weights.safetensors"))
    state["fc4.weight_orig"] = torch.zeros(3, state["fc4.weight_orig"].shape[1])
    save_file(state, str(copy("shape")))
    state = load_file(str(good.path / "weights.safetensors"))
    del state["fc21.bias"]
    save_file(state, str(copy("missing")))
    read = []
    real = bundle_module.load_safetensors
    monkeypatch.setattr(bundle_module, "load_safetensors", lambda *a, **k: read.append(a) or real(*a, **k))
    entries = {e.path.name: e for e in list_library(lib)}
    assert not read  # header reads only: no tensor was loaded
    assert entries["intact"].ok and entries["intact"].problem is None
    problems = {name: e.problem for name, e in entries.items() if name != "intact"}
    assert not any(e.ok for name, e in entries.items() if name != "intact")
    assert "has a broken header (not the JSON a safetensors file starts with)" in problems["header"]
    assert "has a broken header: it gives a header of 1,000,000,000,000 bytes" in problems["length"]
    assert f"is truncated: it holds {len(weights) - 100:,} of the {len(weights):,} bytes" in problems["truncated"]
    assert "10 bytes more than its header describes" in problems["longer"]
    assert "is truncated: 5 bytes, too short for a safetensors file" in problems["tiny"]
    assert "weights do not match its manifest" in problems["shape"] and "fc4.weight_orig (3, 6)" in problems["shape"]
    assert "missing keys: fc21.bias" in problems["missing"]
    assert all(str(lib) not in p for p in problems.values())  # no server path in what the pages show
    # each would have failed at its first prediction: the header check agrees with the full load
    for name in problems:
        with pytest.raises(BundleError):
            load_bundle(lib / name).load_model()


def test_distinct_titles_add_the_folder_only_where_titles_collide(small_bundles, tmp_path):
    sf, gf = small_bundles["vae_sf"][0], small_bundles["vae_gf"][0]
    twin = load_bundle(shutil.copytree(sf.path, tmp_path / "sf_twin"))
    labels = distinct_titles([sf, twin, gf])
    assert labels[str(gf.path)] == gf.title
    assert labels[str(sf.path)] == f"{sf.title} (b_vae_sf)" and labels[str(twin.path)] == f"{sf.title} (sf_twin)"


def test_bundle_manifest_records_what_the_issue_asks(small_bundles):
    m = small_bundles["dist_vae"][0].manifest
    for key in ("backbone", "drug", "architecture", "input_transform", "label_mapping", "threshold",
                "beta_mode", "genes", "style", "provenance", "metrics"):
        assert key in m
    assert m["label_mapping"] == {"sensitive": 0, "resistant": 1} and m["threshold"] == 0.05
    assert {"source_sha256", "created", "scatd_version"} <= set(m["provenance"])
    assert small_bundles["vae_sf"][0].manifest["style"]["std"] == "population (ddof=0)"


def test_reported_probability_is_resistant_whatever_the_class_order(tmp_path, small_bundles):
    bundle, sd, enc, z, genes = small_bundles["dist_vae"]
    torch.save(sd, tmp_path / "d.pth")
    (tmp_path / "g.txt").write_text("\n".join(genes))
    flipped = import_checkpoint(tmp_path / "d.pth", "dist_vae", drug="X", out=tmp_path / "flip",
                                genes=tmp_path / "g.txt", label_mapping={"resistant": 0, "sensitive": 1})
    x = np.abs(np.random.default_rng(1).normal(size=(9, enc[0]))).astype(np.float32)
    a = predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), bundle, copy=True)
    b = predict(ad.AnnData(x, var=pd.DataFrame(index=genes)), flipped, copy=True)
    assert np.allclose(a.obs["scatd_prob_resistant"] + b.obs["scatd_prob_resistant"], 1.0)


def _log_model(small_bundles, tmp_path):
    """The small Dist_VAE bundle re-saved with a log1p_cp10k input transform."""
    from scatd_core.bundle import save_bundle

    bundle, sd, _enc, _z, genes = small_bundles["dist_vae"]
    return save_bundle(tmp_path / "log_model", sd, bundle.architecture, drug="TESTDRUG", genes=genes,
                       input_transform="log1p_cp10k", beta_mode="separate"), genes


def test_values_a_transform_cannot_take_are_not_scored_never_labelled(small_bundles, tmp_path):
    bundle, genes = _log_model(small_bundles, tmp_path)
    x = np.random.default_rng(3).poisson(2.0, size=(6, len(genes))).astype(np.float32)
    x[1, 4] = -3.0        # negative value, log1p of a share cannot take it
    x[2, 0] = 3e38        # absurd magnitude: the row sum overflows float32
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    table = predictions_table(adata)
    assert list(table["scored"]) == [True, False, False, True, True, True]
    assert table.loc[[1, 2], "label"].eq("not scored").all() and table.loc[[1, 2], "prob_resistant"].isna().all()
    assert np.isfinite(table.loc[table["scored"], "prob_resistant"]).all()
    assert adata.uns["scatd"]["not_scored"] == {"overflow": 1, "negative_values": 1}
    assert any("negative values" in w for w in adata.uns["scatd"]["warnings"])


def test_raw_counts_given_to_a_model_that_takes_values_as_they_are_are_said_to_go_in_unscaled(small_bundles):
    """QA: a Dist_VAE checkpoint imported with input transform 'none' (the import's and the published install's
    default) took raw counts without a word on the Model page, in the prediction's record or in the CLI."""
    from scatd_core.inputs import value_messages
    from scatd_core.preprocess import AS_GIVEN_COUNTS_NOTE

    bundle, _sd, _enc, _z, genes = small_bundles["dist_vae"]
    assert bundle.manifest["input_transform"] == "none"
    x = np.random.default_rng(4).poisson(3.0, size=(40, len(genes))).astype(np.float32)
    counts = ad.AnnData(x, var=pd.DataFrame(index=genes))
    assert AS_GIVEN_COUNTS_NOTE in value_messages(counts, bundle)[1]  # the Model page, before the run
    predict(counts, bundle)
    assert AS_GIVEN_COUNTS_NOTE in counts.uns["scatd"]["notes"]  # the record: CLI, report, metrics.csv
    lognorm = ad.AnnData(np.log1p(x / x.sum(1, keepdims=True) * 1e4), var=pd.DataFrame(index=genes))
    assert AS_GIVEN_COUNTS_NOTE not in value_messages(lognorm, bundle)[1]
    predict(lognorm, bundle)
    assert AS_GIVEN_COUNTS_NOTE not in lognorm.uns["scatd"].get("notes", [])


def test_qc_mask_filters_cells_and_keeps_their_rows(small_bundles):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(4).normal(size=(12, enc[0]))).astype(np.float32)
    mask = np.array([i % 3 != 0 for i in range(12)])
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle, mask=mask)
    table = predictions_table(adata)
    assert list(table["qc_pass"]) == list(mask)
    assert table.loc[~mask, "label"].eq("filtered (QC)").all() and table.loc[~mask, "prob_resistant"].isna().all()
    full = predict(ad.AnnData(x[mask], var=pd.DataFrame(index=genes)), bundle, copy=True)
    assert np.allclose(table.loc[mask, "prob_resistant"], full.obs["scatd_prob_resistant"])  # no statistics leak
    assert adata.uns["scatd"]["qc"]["n_filtered"] == 4
    assert labels_at(adata, 0.0)[0] == "filtered (QC)"


def test_a_mask_column_of_ones_own_labels_its_cells_left_out_mask_not_filtered_qc(small_bundles):
    """--mask keep (a True/False column of the user's own; no QC ran): the cells it leaves out are
    labelled 'left out (mask)', not 'filtered (QC)' (obs, predictions.csv, a new threshold, the
    report's counts, the colours); every path that sets unscored cells aside treats them as it treats
    the QC filter's (counts, groups, evaluation, colours, explain's input). The QC filter's cells
    (scatd_qc_pass, or a plain array as the app gives) keep 'filtered (QC)'."""
    from scatd_core import pl
    from scatd_core._keys import FILTERED, MASKED, QC_PASS, result_keys
    from scatd_core.explain._explain import prediction_context
    from scatd_core.export import html_report, metrics_table
    from scatd_core.metrics import evaluate_column, group_table

    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(4).normal(size=(12, enc[0]))).astype(np.float32)
    keep = np.array([i % 3 != 0 for i in range(12)])
    obs = pd.DataFrame({"keep": keep, QC_PASS: keep, "response": np.where(np.arange(12) % 2, "resistant", "sensitive"),
                        "sample": np.where(np.arange(12) < 6, "p1", "p2")}, index=[f"c{i}" for i in range(12)])
    adata = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes))
    predict(adata, bundle, mask="keep")
    labels = adata.obs["scatd_label"]
    assert (labels[~keep] == MASKED).all() and list(labels.cat.categories)[-1] == MASKED
    assert FILTERED not in labels.cat.categories
    table = predictions_table(adata)
    assert table.loc[~keep, "label"].eq(MASKED).all() and table.loc[~keep, "prob_resistant"].isna().all()
    assert table["qc_pass"].all()  # no QC ran
    assert summary(adata)["n_filtered"] == 4 and summary(adata)["n_not_scored"] == 0
    assert labels_at(adata, 0.0)[0] == MASKED
    set_threshold(adata, 0.2)
    assert (adata.obs["scatd_label"][~keep] == MASKED).all() and summary(adata)["n_filtered"] == 4
    assert group_table(adata, "sample")["n_called"].sum() == 8  # left out of the groups' calls
    assert evaluate_column(adata, "response", resistant="resistant")[0].n_evaluated == 8
    metrics = metrics_table(adata).set_index("metric")["value"]
    assert metrics["n_filtered"] == 4 and metrics["filtered_by"] == "left out by the mask column 'keep'"
    # the same light grey as the QC filter's cells, never a colour of its own
    assert pl.label_colors([MASKED, FILTERED]) == [pl.COLORS[FILTERED]] * 2
    page = html_report(adata)
    assert "left out (mask)" in page and "filtered (QC)" not in page
    # explain without the prediction's input rebuilds it from the labels: the same cells left out, said as the column did
    inputs = prediction_context(adata, bundle, result_keys(), "cpu", None)[3]
    assert list(inputs.mask) == list(keep) and inputs.filtered_text == "left out by the mask column 'keep'"
    for qc in (QC_PASS, keep):  # the QC filter's cells keep their label
        predict(adata, bundle, mask=qc)
        labels = adata.obs["scatd_label"]
        assert (labels[~keep] == FILTERED).all() and MASKED not in labels.cat.categories
        assert list(predictions_table(adata)["qc_pass"]) == list(keep) and summary(adata)["n_filtered"] == 4
        assert "filtered (QC)" in html_report(adata)


def test_no_cell_left_to_score_says_what_the_mask_left_out(small_bundles):
    """A model that needs the dataset's statistics (AdaIN) finds no cell to score: the cells a mask
    column of one's own left out are said as that column left them out, not 'filtered by QC' (no QC
    ran), and so is where to look; alone and in a panel. The QC filter's cells stay 'filtered by QC'."""
    from scatd_core import panel

    bundle = small_bundles["vae_sf"][0]
    x = np.full((30, 40), 1e31, dtype=np.float32)  # the kept cells' values are beyond what a model takes
    x[:10] = 1.0
    keep = np.arange(30) >= 10
    adata = ad.AnnData(x, obs=pd.DataFrame({"keep": keep, "scatd_qc_pass": keep}, index=[f"c{i}" for i in range(30)]))
    for mask, said, where in (("keep", "left out by the mask column 'keep': 10", "the mask column"),
                              ("scatd_qc_pass", "filtered by QC: 10", "the QC filter")):
        with pytest.raises(InputError) as alone:
            predict(adata, bundle, mask=mask)
        with pytest.raises(InputError) as in_panel:
            panel.predict_panel(adata, [bundle], mask=mask)
        assert str(alone.value).startswith("No cell can be scored (") and said in str(alone.value)
        assert type(alone.value).__name__ == type(in_panel.value).__name__ == "DataNotScorable"  # exit code 3
        assert where in alone.value.hint and said in str(in_panel.value)
        assert ("filtered by QC" in str(in_panel.value)) == (mask == "scatd_qc_pass")


def test_labels_that_no_threshold_separates_give_no_calibration(small_bundles):
    """Youden's J and the MCC are 0 at the threshold that calls every cell (or none) resistant;
    when nothing beats that, the labels do not calibrate the model: refused, not marked
    "Calibrated" with every cell called one way (QA: an AUROC-0.3 model got "Calibrated",
    0 cells resistant)."""
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    prob = adata.obs["scatd_prob_resistant"].to_numpy()
    adata.obs["reversed"] = np.where(prob < np.median(prob), "R", "S")  # every resistant cell ranked lowest
    from scatd_core.labels import set_label_direction

    set_label_direction(adata, "reversed", "R")
    for method in ("youden", "mcc"):
        with pytest.raises(InputError, match="no threshold better than chance") as err:
            calibrate(adata, label_column="reversed", method=method)
        assert "which value of the label column means resistant" in err.value.hint
        assert not adata.uns["scatd"]["threshold"]["calibrated"]


def test_labels_the_model_does_not_separate_beyond_chance_give_no_calibration(small_bundles):
    """The best of many thresholds is above 0 on almost any labels: on labels the model does not
    separate beyond chance (the AUROC's interval includes 0.5) the fitted threshold only fits
    their noise, so it is refused (QA: random labels, AUROC 0.499, were 'Calibrated' at 3-67 %
    resistant depending on the direction)."""
    from scatd_core.labels import set_label_direction

    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    adata.obs["coin"] = np.where(np.random.default_rng(1).random(40) < 0.5, "R", "S")
    set_label_direction(adata, "coin", "R")
    with pytest.raises(InputError, match="do not pin a threshold down") as err:
        calibrate(adata, label_column="coin", method="youden")
    assert "not distinguishable from chance" in err.value.message and "Matthews" not in err.value.message
    assert not adata.uns["scatd"]["threshold"]["calibrated"]


def test_a_new_label_direction_drops_the_threshold_fitted_on_the_old_one(small_bundles):
    """A threshold fitted on a label column's labels means nothing once the user says the other
    value means resistant: it goes back to the model's default (uncalibrated), saying why."""
    from scatd_core import metrics
    from scatd_core.labels import set_label_direction

    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    prob = adata.obs["scatd_prob_resistant"].to_numpy()
    adata.obs["truth"] = np.where(prob > np.median(prob), "1", "0")
    adata.obs["other"] = adata.obs["truth"]
    set_label_direction(adata, "truth", "1")
    calibrate(adata, label_column="truth", method="youden")
    assert adata.uns["scatd"]["threshold"]["calibrated"]
    set_label_direction(adata, "truth", "1")  # the same answer again: kept
    set_label_direction(adata, "other", "0")  # another column: kept
    assert adata.uns["scatd"]["threshold"]["source"] == "labelled cells"
    set_label_direction(adata, "truth", "0")  # the other way round
    threshold = adata.uns["scatd"]["threshold"]
    assert threshold["source"] == "model default" and not threshold["calibrated"]
    assert threshold["value"] == bundle.threshold and "label direction changed" in threshold["detail"]
    assert not metrics.fitted_on_labels(adata, "truth")


def test_a_model_that_z_scores_its_genes_says_its_predictions_depend_on_the_other_cells(small_bundles, tmp_path):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    folder = tmp_path / "standardize"
    shutil.copytree(bundle.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input_transform"] = "standardize"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    x = np.abs(np.random.default_rng(5).normal(size=(80, enc[0]))).astype(np.float32)
    for b, expected in ((bundle, False), (load_bundle(folder), True)):
        adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
        predict(adata, b)
        said = any("depends on the other cells" in w for w in adata.uns["scatd"]["warnings"])
        assert said == expected, adata.uns["scatd"]["warnings"]


def test_a_model_without_a_recorded_library_size_scales_counts_over_its_genes_as_before(small_bundles, tmp_path):
    """Models trained before the library size was recorded keep their numbers (counts scaled by their
    total over the model's genes) and say so; one recording "all genes" scales by the whole row;
    an unknown value is refused."""
    from scatd_core.bundle import input_transform_words

    bundle, sd, enc, z, genes = small_bundles["dist_vae"]
    counts = np.random.default_rng(6).poisson(2.0, (60, enc[0] + 30)).astype(np.float32)
    adata = ad.AnnData(counts, var=pd.DataFrame(index=list(genes) + [f"OTHER{i}" for i in range(30)]))
    probs = {}
    for size in (None, "all genes", "mystery"):
        folder = tmp_path / f"standardize_{size}"
        shutil.copytree(bundle.path, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["input_transform"] = "standardize"
        if size is not None:
            manifest["library_size"] = size
        (folder / "manifest.json").write_text(json.dumps(manifest))
        if size == "mystery":
            with pytest.raises(BundleError, match="unknown library size 'mystery'"):
                load_bundle(folder)
            continue
        b = load_bundle(folder)
        words = input_transform_words(b)
        assert (f"over the model's {len(genes):,} genes only" in words) == (size is None), words
        assert ("over all the genes in your data" in words) == (size is not None), words
        scored = adata.copy()
        predict(scored, b, device="cpu")
        probs[size] = scored.obs["scatd_prob_resistant"].to_numpy()
        earlier = "trained by an earlier version of scATD Studio, which log-normalises raw counts"
        assert not any(earlier in w for w in scored.uns["scatd"]["warnings"])  # counts: as it was trained
        lognorm = adata.copy()  # the same cells normalised over all their genes: told, for the older model only
        lognorm.X = np.log1p(counts * 1e4 / counts.sum(axis=1, keepdims=True)).astype(np.float32)
        predict(lognorm, b, device="cpu")
        assert any(earlier in w for w in lognorm.uns["scatd"]["warnings"]) == (size is None)
    model = counts[:, :enc[0]].astype(np.float64)
    for size, totals in ((None, model.sum(axis=1, keepdims=True)), ("all genes", counts.sum(axis=1, keepdims=True))):
        x = np.log1p(model * 1e4 / totals)
        spread = x.std(axis=0)
        x = np.divide(x - x.mean(axis=0), spread, out=np.zeros_like(x), where=spread > 0).astype(np.float32)
        # the model on the counts scaled over its own genes (before the record) or all of them, z-scored
        assert np.abs(probs[size] - orig.original_inference_prob("dist_vae", enc, z, sd, x)).max() < TOL


def test_threshold_is_part_of_the_result_and_calibration_is_marked(small_bundles):
    bundle, _, enc, _, genes = small_bundles["dist_vae"]
    x = np.abs(np.random.default_rng(5).normal(size=(40, enc[0]))).astype(np.float32)
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
    predict(adata, bundle)
    assert adata.uns["scatd"]["threshold"]["calibrated"] is False
    assert not predictions_table(adata)["calibrated"].any()
    calibrate(adata, expected_fraction=0.25)
    assert summary(adata)["fraction_resistant"] == pytest.approx(0.25, abs=0.03)
    assert adata.uns["scatd"]["threshold"]["source"] == "expected fraction"
    assert predictions_table(adata)["calibrated"].all()
    adata.obs["truth"] = np.where(adata.obs["scatd_prob_resistant"] > adata.obs["scatd_prob_resistant"].median(),
                                  "R", "S")
    calibrate(adata, label_column="truth", method="youden")
    assert "20 resistant and 20 sensitive" in adata.uns["scatd"]["threshold"]["detail"]
    adata.obs["scatd_prob_resistant"] = np.r_[np.ones(24), np.linspace(0.1, 0.5, 16)]  # 60 % saturated at P = 1
    calibrate(adata, expected_fraction=0.3)
    assert summary(adata)["fraction_resistant"] == 0.6  # the closest share a threshold gives, and it says so
    assert "calls 60.0% of the scored cells resistant" in adata.uns["scatd"]["threshold"]["detail"]
    assert "24 cells share the highest P" in adata.uns["scatd"]["threshold"]["detail"]
    set_threshold(adata, 0.3, "user")  # a guess by hand is not a calibration
    assert not summary(adata)["calibrated"] and not predictions_table(adata)["calibrated"].any()
    set_threshold(adata, 1.0, "model default")
    assert summary(adata)["n_resistant"] == 0 and not summary(adata)["calibrated"]


def test_a_demo_model_on_real_data_is_said_to_mean_nothing_there(tmp_path):
    """QA: the app offers the demo model with the demo data only, while `scatd predict --model
    DEMOTINIB_demo --input real.csv` scored real cells without a word. The prediction's warnings
    (printed by the CLI, written to metrics.csv) say so unless the data are the simulated ones."""
    from _app_helpers import make_bundle, make_dataset
    from scatd_core.predict import predict

    simulated = make_dataset(60, seed=1)  # the tests' cells are simulated by the demo's simulator
    demo = make_bundle(tmp_path / "demo", simulated, steps=1, demo=True)
    data = simulated.copy()
    del data.uns["simulation"]  # the same values, as real data would come: no simulation record

    def warnings(adata, bundle) -> list[str]:
        return list(predict(adata, bundle, copy=True).uns["scatd"]["warnings"])

    said = warnings(data, demo)
    assert "is a demo model, trained on simulated cell lines" in said[0], said
    real = make_bundle(tmp_path / "real", data, steps=1)
    assert not any("demo model" in w for w in warnings(data, real))
    assert not any("demo model" in w for w in warnings(simulated, demo))


def _scanpy_file(genes, n_cells: int = 30, seed: int = 5):
    """A usual scanpy tutorial file: X the scaled (z-scored) values of half the genes, adata.raw the
    log-normalised values of all genes; and the counts they come from."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_cells, len(genes))).astype(np.float32) + 1
    log = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    full = ad.AnnData(log, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), var=pd.DataFrame(index=genes))
    adata = full.copy()
    adata.raw = full
    adata = adata[:, : len(genes) // 2].copy()  # the "highly variable" genes
    adata.X = ((adata.X - adata.X.mean(0)) / adata.X.std(0)).astype(np.float32)
    return adata, counts


def test_a_scanpy_file_with_scaled_x_is_read_from_adata_raw_and_the_file_is_unchanged(small_bundles, tmp_path):
    """QA: X held scaled values of the highly variable genes and .raw the log-normalised values of all
    genes; a log1p_cp10k model read X (half its genes, every cell negative: "No cell can be scored")."""
    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, counts = _scanpy_file(genes)
    x_before, raw_before = adata.X.copy(), adata.raw.X.copy()
    reference = ad.AnnData(counts, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=genes))
    predict(reference, bundle)
    predict(adata, bundle)
    np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"], atol=1e-5)
    record = adata.uns["scatd"]["matrix"]
    assert record["where"] == "adata.raw" and record["value_type"] == "log_normalized" and record["chosen_by"] == "auto"
    note = next(n for n in adata.uns["scatd"]["notes"] if "adata.raw" in n)
    assert "rather than X (z-scored values" in note
    assert np.array_equal(adata.X, x_before) and np.array_equal(adata.raw.X, raw_before)  # the file as it was
    assert adata.n_vars == len(genes) // 2 and "scatd_matrix" not in adata.uns


def test_the_matrix_choice_note_never_rounds_a_small_gene_share_to_0_percent():
    """QA: X with 2 of a model's 2,500 genes, adata.raw with all: the note said "(100%, against 0% in X)"."""
    from scatd_core import matrices

    genes = small_gene_names(2500)
    adata, _counts = _scanpy_file(genes, n_cells=12)
    adata = adata[:, :2].copy()
    adata.X = adata.raw[:, adata.var_names].X.copy()  # log-normalised, 2 of the genes
    choice = matrices.choose(adata, "log1p_cp10k", genes)
    assert choice.name == "raw" and "(100.0%, against <0.1% in X)" in choice.note, choice.note


def test_a_gene_subset_in_x_gives_way_to_the_fuller_matrix_in_raw_and_one_matrix_reads_as_before(small_bundles,
                                                                                                    tmp_path):
    """X holds log-normalised values of the highly variable genes only (not scaled), .raw those of all
    genes: the model reads .raw, having more of its genes; a file with X alone is read as before."""
    from scatd_core import matrices

    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, counts = _scanpy_file(genes)
    adata.X = adata.raw[:, adata.var_names].X.copy()  # log-normalised, half the genes
    choice = matrices.choose(adata, "log1p_cp10k", genes)
    assert choice.name == "raw" and "it has more of the model's genes (100.0%, against 50.0% in X)" in choice.note
    alone = ad.AnnData(counts, var=pd.DataFrame(index=genes))
    choice = matrices.choose(alone, "log1p_cp10k", genes)
    assert choice.name == "X" and choice.note is None and matrices.matrix_data(alone, choice) is alone


def _ensembl_raw(adata, genes, column: str | None = "gene_symbols"):
    """``adata`` with its .raw's genes named by Ensembl IDs (X keeps its symbols), the symbols in
    raw.var[column] (none when ``column`` is None)."""
    ids = [f"ENSG{i:011d}" for i in range(len(genes))]
    var = pd.DataFrame({column: list(genes)} if column else {}, index=ids)
    raw = ad.AnnData(adata.raw.X.copy(), obs=pd.DataFrame(index=adata.obs_names), var=var)
    out = adata.copy()
    out.raw = raw
    return out, ids


@pytest.mark.parametrize("column", ["gene_symbols", "feature_name"])
def test_ensembl_ids_in_adata_raw_are_mapped_to_symbols_as_xs_are(small_bundles, tmp_path, column):
    """X's genes are symbols, adata.raw's Ensembl IDs with the symbols in a raw.var column: the model
    reads .raw with its genes mapped to symbols (they once stayed Ensembl IDs, so none matched)."""
    from scatd_core import genes as gene_ids
    from scatd_core import matrices

    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, counts = _scanpy_file(genes)
    adata, _ids = _ensembl_raw(adata, genes, column)
    gene_ids.annotate_gene_ids(adata, geneformer_dict={})
    choice = matrices.choose(adata, "log1p_cp10k", genes)
    assert choice.name == "raw"
    assert gene_ids.names_for(matrices.matrix_data(adata, choice), "symbol") == list(genes)
    reference = ad.AnnData(counts, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=genes))
    predict(reference, bundle)
    predict(adata, bundle)
    assert adata.uns["scatd"]["gene_coverage"]["fraction_matched"] == 1.0
    np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"], atol=1e-5)


def test_ensembl_ids_in_adata_raw_use_the_biomart_table_and_dictionary_xs_ids_use(small_bundles, tmp_path):
    """The BioMart table given for the data (Data page, --biomart) maps .raw's own Ensembl IDs as it maps
    X's; raw.var, not a mapped copy, carries them; without annotation the server's dictionary is used
    on a copy, leaving the file's raw.var as it was."""
    from scatd_core import genes as gene_ids
    from scatd_core import matrices

    _bundle, genes = _log_model(small_bundles, tmp_path)
    adata, _counts = _scanpy_file(genes)
    adata, ids = _ensembl_raw(adata, genes, None)
    table = pd.DataFrame({"ensembl": ids, "symbol": list(genes)})
    gene_ids.annotate_gene_ids(adata, geneformer_dict={}, biomart=table)
    assert list(adata.raw.var[_keys.SYMBOL]) == list(genes)
    choice = matrices.choose(adata, "log1p_cp10k", genes)
    assert choice.name == "raw" and choice.record()["n_genes"] == len(genes)
    assert gene_ids.names_for(matrices.matrix_data(adata, choice), "symbol") == list(genes)
    # mapped by the dictionary the server has, when X's were mapped without touching .raw
    bare, _counts = _scanpy_file(genes)
    bare, ids = _ensembl_raw(bare, genes, None)
    gene_ids.annotate_gene_ids(bare, geneformer_dict={})
    del bare.raw.var[_keys.SYMBOL], bare.raw.var["scatd_ensembl"]
    with mock.patch.object(gene_ids, "default_symbol_dictionary", lambda *a: dict(zip(genes, ids))):
        choice = matrices.choose(bare, "log1p_cp10k", genes)
    assert gene_ids.names_for(matrices.matrix_data(bare, choice), "symbol") == list(genes)
    assert _keys.SYMBOL not in bare.raw.var


def test_count_layer_beside_log_values_is_what_counts_and_as_is_models_read(small_bundles, tmp_path):
    """QA: layers['counts'] beside a normalised X was ignored by Dist_VAE models (the foundation path
    used it): a log1p_cp10k model reads the counts; an 'as is' model given z-scored X reads them
    too instead of warning "Upload the raw count matrix" although the file has it."""
    log_bundle, genes = _log_model(small_bundles, tmp_path)
    as_is = small_bundles["dist_vae"][0]
    rng = np.random.default_rng(6)
    counts = rng.poisson(3.0, size=(30, len(genes))).astype(np.float32)
    z = ((counts - counts.mean(0)) / (counts.std(0) + 1)).astype(np.float32)
    for bundle, x in ((log_bundle, np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4)), (as_is, z)):
        adata = ad.AnnData(x.astype(np.float32), var=pd.DataFrame(index=genes))
        adata.layers["counts"] = counts.copy()
        reference = ad.AnnData(counts.copy(), var=pd.DataFrame(index=genes))
        predict(adata, bundle)
        predict(reference, bundle)
        assert adata.uns["scatd"]["matrix"]["where"] == "layers['counts']"
        np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"],
                                   atol=1e-5)
        assert not any("Upload the raw count matrix" in w for w in adata.uns["scatd"]["warnings"])


def test_a_chosen_matrix_is_read_and_a_missing_or_unusable_one_is_said(small_bundles, tmp_path):
    from scatd_core.errors import InputError
    from scatd_core.inputs import unscorable_error

    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, _counts = _scanpy_file(genes)
    adata.uns["scatd_matrix"] = "X"  # the user's choice: the z-scored X
    problem = unscorable_error(adata, bundle)
    assert problem is not None and "this matrix is z-scored" in problem.message
    adata.uns["scatd_matrix"] = "layer:counts"
    with pytest.raises(InputError, match=r"no matrix 'layer:counts' \(they have: X, raw\)"):
        predict(adata, bundle)
    adata.uns["scatd_matrix"] = "raw"
    predict(adata, bundle)
    assert adata.uns["scatd"]["matrix"]["chosen_by"] == "user"


def test_float16_values_with_inf_and_the_float16_maximum_are_checked_without_a_cast_warning(small_bundles, tmp_path):
    """QA: float16 input printed "RuntimeWarning: overflow encountered in cast": 1e30 (the too-large
    value limit) cast to float16 is inf. An infinite value still leaves its cell unscored; 65,504
    (float16's largest) is a value like any other."""
    import warnings

    bundle, genes = _log_model(small_bundles, tmp_path)
    x = np.random.default_rng(7).poisson(2.0, size=(6, len(genes))).astype(np.float16) + 1
    x[1, 0] = np.inf
    x[2, 0] = 65504
    adata = ad.AnnData(x, var=pd.DataFrame(index=genes))  # (scipy has no float16 sparse matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        predict(adata, bundle)
    assert list(adata.obs["scatd_scored"]) == [True, False, True, True, True, True]
    assert adata.uns["scatd"]["not_scored"] == {"non_finite": 1}


def test_the_minimum_gene_coverage_is_judged_on_the_matrix_the_model_reads(small_bundles, tmp_path):
    """X holds a few highly variable genes (below the minimum share of the model's genes), adata.raw
    all of them: the model reads .raw, so the prediction runs (the check once looked at X and
    refused), in the API and in the app's run-ahead check alike; X alone is still refused."""
    from scatd_core.errors import InputError
    from scatd_core.inputs import ModelInput
    from scatd_core.predict import score

    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, counts = _scanpy_file(genes)
    adata = adata[:, :2].copy()  # 2 genes in X: far below 10 % of the model's
    assert 2 / len(genes) < 0.1
    inputs = ModelInput(adata, bundle)
    assert inputs.matrix.name == "raw" and inputs.data.n_vars == len(genes)
    reference = ad.AnnData(counts, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=genes))
    predict(reference, bundle)
    predict(adata, bundle)
    np.testing.assert_allclose(adata.obs["scatd_prob_resistant"], reference.obs["scatd_prob_resistant"], atol=1e-5)
    # nor is the low-coverage warning judged on X's 2 genes (QA: "Only 3.5% ... upload the full gene matrix")
    assert not any("of the model's genes are in the data" in w for w in adata.uns["scatd"]["warnings"])
    assert adata.uns["scatd"]["gene_coverage"]["fraction_matched"] == 1.0
    alone = ad.AnnData(adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names), var=adata.var.copy())
    alone.X = np.abs(alone.X)
    with pytest.raises(InputError, match="Too few of the model's genes") as caught:
        score(alone, bundle)
    assert "was chosen for the models" not in caught.value.message
    # no other matrix: the generic advice stays, in the command line's words ("give", not "upload": QA) and the app's
    assert "give the full gene matrix" in caught.value.message and "upload" not in caught.value.message
    assert "upload the full gene matrix" in caught.value.app_message
    forced = adata.copy()  # QA r2: X chosen by hand, .raw of the same file has every gene: the refusal says so
    forced.uns["scatd_matrix"] = "X"
    forced.X = np.abs(forced.X)
    with pytest.raises(InputError, match="Too few of the model's genes") as caught:
        score(forced, bundle)
    said = caught.value.message
    assert (f"This file's adata.raw has {len(genes)} of the model's {len(genes)} genes, but X was chosen for the "
            "models") in said
    # QA: the generic "upload the full gene matrix" came first; the file's own fuller matrix is the advice
    assert "upload the full gene matrix" not in said and said.rstrip().endswith("choose auto or adata.raw there.")


def test_a_low_coverage_warning_after_choosing_x_names_the_files_fuller_matrix(small_bundles, tmp_path):
    """QA: X chosen by hand holds a third of the model's genes (enough to score, a warning), adata.raw
    of the same file all of them: the warning gave only the generic "upload the full gene matrix";
    it now says first, as the refusal does, that adata.raw has them and to choose auto or it."""
    bundle, genes = _log_model(small_bundles, tmp_path)
    adata, _counts = _scanpy_file(genes)
    adata = adata[:, : len(genes) // 3].copy()
    assert 0.1 < adata.n_vars / len(genes) < 0.5
    adata.X = np.abs(adata.X)
    adata.uns["scatd_matrix"] = "X"
    predict(adata, bundle)
    said = [w for w in adata.uns["scatd"]["warnings"] if "of the model's genes are in the data" in w]
    assert len(said) == 1
    assert (f"This file's adata.raw has {len(genes)} of the model's {len(genes)} genes, but X was chosen for the "
            "models") in said[0]
    assert "upload the full gene matrix" not in said[0]
