"""When stored foundation-model embeddings are reused, and when they are not.

The embeddings are cached in the AnnData (``obsm`` + ``uns['scatd_foundation']``), keyed by the
data (a hash of every value of X), the backbone's files (name, size and a sampled content hash)
and the settings. Tiny stand-in backbones (``_foundation_helpers``).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
import original_scatd as orig
from scatd_core.bundle import import_checkpoint
from scatd_core.cli import main
from scatd_core.errors import CheckpointError
from scatd_core.foundation import cells_to_embed, embed_cells, ensure_embeddings
from scatd_core.foundation import scfoundation as S
from scatd_core.foundation._embed import cached, fingerprint


@pytest.fixture
def assets(tmp_path, monkeypatch):
    return H.install_assets(tmp_path, monkeypatch)


@pytest.fixture
def sf_bundle(tmp_path):
    width = 4 * H.SF_HIDDEN
    torch.save(orig.dal_checkpoint("vae_sf", [width, 40, 24], 10, seed=0), tmp_path / "vae_sf.pth")
    np.save(tmp_path / "ref.npy", np.random.default_rng(0).normal(0.3, 1.5, size=(40, width)))
    return import_checkpoint(tmp_path / "vae_sf.pth", "vae_sf", drug="TESTDRUG", out=tmp_path / "b_vae_sf",
                             style_reference=tmp_path / "ref.npy")


def sf_counts(n=20, seed=0):
    genes = H.sf_genes(40)[:35]
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.3, 3.0, len(genes)), size=(n, len(genes))).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names, a.obs_names = genes, [f"cell{i}" for i in range(n)]
    return a


@pytest.fixture
def counted(monkeypatch):
    """The cells each call of scFoundation's ``embed`` is asked for."""
    calls = []
    real = S.embed

    def counting(adata, wanted, **kw):
        calls.append(int(np.asarray(wanted).sum()))
        return real(adata, wanted, **kw)

    monkeypatch.setattr(S, "embed", counting)
    return calls


# ----------------------------------------------------------------------------- bug 1: a subset

def test_a_subset_of_an_annotated_h5ad_is_embedded_again_not_a_crash(assets, sf_bundle, counted):
    a = sf_counts(20)
    ensure_embeddings(a, sf_bundle, device="cpu")
    assert cells_to_embed(a, sf_bundle) == 0
    sub = a[:10].copy()  # scanpy/anndata keep uns as it was: a record of 20 cells for 10
    assert len(sub.uns["scatd_foundation"]["vae_sf"]["tried"]) == 20
    assert cells_to_embed(sub, sf_bundle) == 10
    assert cells_to_embed(sub, sf_bundle, np.arange(10) < 4) == 4
    counted.clear()
    ensure_embeddings(sub, sf_bundle, device="cpu")
    assert counted == [10] and cells_to_embed(sub, sf_bundle) == 0
    assert np.allclose(sub.obsm["X_scfoundation"], a.obsm["X_scfoundation"][:10], atol=1e-5)
    # the same number of cells, other values: not the record of these data either
    other = sf_counts(20, seed=3)
    other.obsm["X_scfoundation"] = a.obsm["X_scfoundation"]
    other.uns["scatd_foundation"] = a.uns["scatd_foundation"]
    assert cells_to_embed(other, sf_bundle) == 20


# ----------------------------------------------------------------------------- bug 3: the data key

def test_edited_values_are_not_reused(assets, counted):
    a = sf_counts(20)
    embed_cells(a, "vae_sf", device="cpu")
    x = a.X.toarray()
    i = int(np.flatnonzero(x[:, 0] != x[:, 1])[0])
    x[i, [0, 1]] = x[i, [1, 0]]  # two genes' values swapped in one cell: same totals, same names
    edited = ad.AnnData(sp.csr_matrix(x), obs=a.obs.copy(), var=a.var.copy(), obsm=dict(a.obsm),
                        uns={"scatd_foundation": a.uns["scatd_foundation"]})
    assert cached(edited, "vae_sf") is None
    counted.clear()
    embed_cells(edited, "vae_sf", device="cpu")
    assert counted == [20]


def test_the_fingerprint_sees_every_cell_and_not_the_layout(tmp_path):
    rng = np.random.default_rng(0)
    x = sp.random(1500, 60, density=0.1, format="csr", dtype=np.float32, random_state=rng)
    a = ad.AnnData(x)
    fp = fingerprint(a)
    assert fp.startswith("v2:")
    for row in (0, 777, 1499):  # cells a 512-row sample would skip
        b = a.copy()
        y = b.X.toarray()
        y[row, 5] += 1.0
        b.X = sp.csr_matrix(y)
        assert fingerprint(b) != fp
    assert fingerprint(ad.AnnData(x.tocsc(), obs=a.obs, var=a.var)) == fp  # CSC: the same values, the same key
    a.write_h5ad(tmp_path / "a.h5ad")
    assert fingerprint(ad.read_h5ad(tmp_path / "a.h5ad")) == fp
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    assert fingerprint(backed) == fp  # read from disk by row blocks
    backed.file.close()
    dense = ad.AnnData(x.toarray(), obs=a.obs, var=a.var)
    assert fingerprint(dense) == fingerprint(ad.AnnData(x.toarray(), obs=a.obs, var=a.var))


def test_a_record_with_the_old_key_is_not_reused(assets, counted):
    a = sf_counts(10)
    embed_cells(a, "vae_sf", device="cpu")
    record = dict(a.uns["scatd_foundation"]["vae_sf"])
    record["fingerprint"] = "0123456789abcdef0123456789abcdef"  # the format before v2
    a.uns["scatd_foundation"] = {"vae_sf": record}
    assert cached(a, "vae_sf") is None
    counted.clear()
    embed_cells(a, "vae_sf", device="cpu")
    assert counted == [10]


# ----------------------------------------------------------------------------- bug 4: the weights

def test_other_weights_of_the_same_size_are_not_reused(assets, counted):
    a = sf_counts(12)
    embed_cells(a, "vae_sf", device="cpu")
    ckpt = assets["sf"] / "models" / "models.ckpt"
    size = ckpt.stat().st_size
    H.write_sf_checkpoint(ckpt, H.sf_genes(40), seed=7)  # same shapes and layout, other values
    assert ckpt.stat().st_size == size
    S._PROBES.clear()
    S._MODELS.clear()
    assert cached(a, "vae_sf") is None
    before = a.obsm["X_scfoundation"].copy()
    counted.clear()
    embed_cells(a, "vae_sf", device="cpu")
    assert counted == [12] and not np.allclose(a.obsm["X_scfoundation"], before)
    counted.clear()
    embed_cells(a, "vae_sf", device="cpu")
    assert counted == []  # the same files again: reused


# ----------------------------------------------------------------------------- bug 5: no backbone here

def test_stored_embeddings_are_used_without_the_backbone_in_cli_and_app(assets, sf_bundle, tmp_path, capsys,
                                                                        monkeypatch):
    a = sf_counts(20)
    pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names).to_csv(tmp_path / "counts.csv")
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "counts.csv"),
               "--output", str(tmp_path / "p.csv"), "--h5ad", str(tmp_path / "a.h5ad"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nowhere"))
    S._PROBES.clear()
    capsys.readouterr()
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "a.h5ad"),
               "--output", str(tmp_path / "p2.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "scFoundation is not installed here: using the scFoundation embeddings stored with the data" in err
    assert "key rde" in err and "20 cells" in err
    assert np.allclose(pd.read_csv(tmp_path / "p2.csv")["prob_resistant"],
                       pd.read_csv(tmp_path / "p.csv")["prob_resistant"])
    # other settings than the stored ones still need the backbone
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "a.h5ad"),
               "--output", str(tmp_path / "p3.csv"), "--device", "cpu", "--scfoundation-key", "cell"])
    err = capsys.readouterr().err
    assert rc == 2 and "No scFoundation weights" in err
    # the app's check (cells_to_embed) agrees, and the core says the same note
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert cells_to_embed(back, sf_bundle) == 0
    assert ensure_embeddings(back, sf_bundle, device="cpu")["note"].startswith("scFoundation is not installed here")


# ----------------------------------------------------------------------------- bug 6: broken weights

@pytest.fixture
def gf_bundle(tmp_path):
    width = H.GF_CONFIG["hidden_size"]
    torch.save(orig.dal_checkpoint("vae_gf", [width, 30, 20, 14], 10, seed=1), tmp_path / "vae_gf.pth")
    np.save(tmp_path / "gref.npy", np.random.default_rng(1).normal(0.3, 1.5, size=(40, width)))
    return import_checkpoint(tmp_path / "vae_gf.pth", "vae_gf", drug="TESTDRUG", out=tmp_path / "b_vae_gf",
                             style_reference=tmp_path / "gref.npy")


def test_nan_weights_are_blamed_not_the_data(assets, gf_bundle, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from scatd_core.foundation import geneformer as G

    weights = assets["gf"] / "gf-tiny" / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if "word_embeddings" in k)
    state[name][:] = float("nan")  # same shapes: the probe cannot tell
    save_file(state, weights, metadata={"format": "pt"})
    G._PROBES.clear()
    G._MODELS.clear()
    _, symbols = H.gf_genes(30)
    rng = np.random.default_rng(0)
    x = rng.poisson(1.5, size=(12, 30)).astype(np.float32)
    x[2] = 0  # one cell without an expressed gene: the data's fault, told apart
    a = ad.AnnData(sp.csr_matrix(x))
    a.var_names, a.obs_names = symbols, [f"cell{i}" for i in range(12)]
    record = embed_cells(a, "vae_gf", device="cpu", embedding_dim=H.GF_CONFIG["hidden_size"])
    assert record["info"]["not_embedded"] == {"no_expressed_gene": 1, "non_finite_output": 11}
    assert record["n_embedded"] == 0 and np.isnan(a.obsm["X_geneformer"]).all()
    with pytest.raises(CheckpointError, match="Geneformer produced non-finite values .* for all 11 cells"):
        ensure_embeddings(a, gf_bundle, device="cpu")
    pd.DataFrame(x, index=a.obs_names, columns=a.var_names).to_csv(tmp_path / "counts.csv")
    rc = main(["predict", "--model", str(gf_bundle.path), "--input", str(tmp_path / "counts.csv"),
               "--output", str(tmp_path / "p.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: Geneformer produced non-finite values" in err and "not in your data" in err
    assert "damaged" in err and "half precision" in err and "Traceback" not in err
    # some cells only (e.g. a half-precision overflow): embedded cells are scored, the others told apart
    from scatd_core.predict import predict

    record = a.uns["scatd_foundation"]["vae_gf"]
    a.obsm["X_geneformer"][:6] = np.random.default_rng(1).normal(size=(6, H.GF_CONFIG["hidden_size"]))
    record["info"]["not_embedded"]["non_finite_output"] = 5
    record["n_embedded"] = 6
    predict(a, gf_bundle, device="cpu")
    warnings = " ".join(a.uns["scatd"]["warnings"])
    assert "5 of the cells without an embedding went through the foundation model and came out non-finite" in warnings


# ----------------------------------------------------------------------------- bug 7: a broken config.json

def test_a_config_json_that_is_not_json_is_its_own_problem(assets, gf_bundle):
    from scatd_core.foundation import geneformer as G
    from scatd_core.foundation import probe

    (assets["gf"] / "gf-tiny" / "config.json").write_text("{not json")
    G._PROBES.clear()
    state = probe("vae_gf", embedding_dim=H.GF_CONFIG["hidden_size"])
    assert not state.available
    assert [(p.code, p.message) for p in state.problems] == [
        ("bad_config", "config.json in gf-tiny is not valid JSON (line 1, column 2).")]
    assert str(assets["gf"]) not in state.problems[0].message + state.problems[0].hint  # no server path
    assert "gf-tiny" in state.problems[0].hint
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        ensure_embeddings(sf_counts(3), gf_bundle, device="cpu")
    assert "0-d" not in str(err.value) and "BERT" not in str(err.value)


# ----------------------------------------------------------------------------- bug 8: no estimate before a refusal

def test_a_npy_of_the_wrong_width_is_refused_before_any_estimate(sf_bundle, tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.random.default_rng(0).normal(size=(200, 60)).astype(np.float32))
    rc = main(["predict", "--model", str(sf_bundle.path), "--input", str(tmp_path / "w.npy"),
               "--output", str(tmp_path / "p.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Estimated time" not in err
