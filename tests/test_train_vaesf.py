"""VAE_sf on real scFoundation embeddings: stable pretraining, a clear stop when a loss diverges,
and what a model trained on embeddings records and says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _foundation_helpers import one_thread  # noqa: F401  (autouse: one torch thread)
from conftest import shared_file
from scatd_core.errors import InputError
from scatd_core.train import TrainSettings, fit_head
from scatd_core.train._fit import _new_backbone, pretrain_backbone


def _real_embeddings() -> np.ndarray:
    """The SCAD sorafenib cells' scFoundation embeddings (120 x 3,072), as the QA used them."""
    return np.load(shared_file("scfoundation", "scad_sorafenib_sc_embedding.npy")).astype(np.float32)


def test_vae_sf_pretrains_stably_on_real_scfoundation_embeddings():
    x = _real_embeddings()
    assert x.shape[1] == 3072
    s = TrainSettings(pretrain_epochs=5, seed=0)  # the default sizes and the backbone's own learning rate
    vae = _new_backbone("vae_sf", x.shape[1], s)
    losses = pretrain_backbone(vae, x[:72], x[72:], s, torch.device("cpu"))
    assert np.isfinite(losses).all()
    # at the others' 2e-3 the loss rose from 1.7e4 to 7e13 in epoch 2 (then NaN); now it falls
    assert max(losses[1:]) < losses[0], losses


def test_non_finite_pretraining_loss_stops_with_a_clear_message():
    x = _real_embeddings()[:40].copy()
    x[3, 5] = np.nan  # a value no embedding should hold: the loss is NaN from the first batch
    s = TrainSettings(hidden_dims=(16, 8), z_dim=4, pretrain_epochs=2, seed=0)
    vae = _new_backbone("vae_sf", x.shape[1], s)
    with pytest.raises(InputError) as err:
        pretrain_backbone(vae, x, None, s, torch.device("cpu"), member="backbone 2 of 10, seed 1")
    message = str(err.value.message)
    assert "pretraining the vae_sf backbone (backbone 2 of 10, seed 1) diverged in epoch 1/2" in message
    assert "no model was saved" in message
    assert "--pretrain-epochs 0" in err.value.hint and "scFoundation" in err.value.hint


def test_non_finite_head_loss_stops_with_a_clear_message():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 20)).astype(np.float32)
    y = np.array([0, 1] * 12)
    s = TrainSettings(hidden_dims=(16, 8), z_dim=4, pretrain_epochs=0, epochs=2, finetune_epochs=0, seed=0)
    vae = _new_backbone("dist_vae", x.shape[1], s)
    x[0, 0] = np.inf
    with pytest.raises(InputError, match="training the dist_vae drug head diverged in epoch 1/2"):
        fit_head(vae, x, y, None, s, torch.device("cpu"), head_epochs=2, finetune_epochs=0, seed=0, adaptation=False)


def _record(**options) -> dict:
    """An ``uns['scatd_foundation']['vae_sf']`` record as embed_cells writes it (the parts read here)."""
    import json

    return {"backbone": "vae_sf", "info": {"model": "scFoundation"},
            "identity": json.dumps({"options": options, "version": "test", "files": {}}, sort_keys=True)}


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory):
    """A tiny VAE_sf model on 12-d embeddings, without pretraining (--pretrain-epochs 0), on a target
    of 25 cells whose embeddings scATD computed (scFoundation key cell, resolution t4); the bulk's
    were brought by the user. Trained once for the tests below."""
    import anndata as ad
    import pandas as pd

    from scatd_core.train import train_drug_model

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ids = [f"ACH-{i:06d}" for i in range(40)]
    y = np.array([0, 1] * 20)
    bulk = ad.AnnData((rng.normal(0, 1, (40, 12)) + y[:, None]).astype(np.float32), obs=pd.DataFrame(index=ids))
    labels = pd.DataFrame({"DRUGA": np.where(y == 1, "resistant", "sensitive")}, index=ids)
    target = ad.AnnData(rng.normal(2.0, 3.0, (25, 12)).astype(np.float32),
                        obs=pd.DataFrame(index=[f"c{i}" for i in range(25)]))
    target.uns["scatd_foundation"] = {"vae_sf": _record(key="cell", resolution="t4", max_genes=8000)}
    s = TrainSettings(hidden_dims=(16, 8), z_dim=4, pretrain_epochs=0, folds=3, batch_size=16, members=2)
    bundle, rep = train_drug_model(bulk, labels, "DRUGA", target, backbone="vae_sf", settings=s,
                                   out=tmp_path_factory.mktemp("sf") / "sf", device="cpu")
    return bundle.path, rep, target


def test_embedding_model_records_how_its_embeddings_were_made(embedding_model):
    from scatd_core.bundle import load_bundle
    from scatd_core.card import card_lines

    path, _, _ = embedding_model
    manifest = load_bundle(path).manifest
    made = manifest["provenance"]["embeddings"]
    assert made["bulk"] == {"computed_by": "unknown, brought by the user"}
    assert made["target"]["computed_by"] == "scATD Studio"
    assert made["target"]["settings"] == {"key": "cell", "resolution": "t4", "max_genes": 8000}
    assert ("Cell embeddings: bulk unknown, brought by the user; target computed by scATD Studio (scFoundation; key "
            "cell, max_genes 8000, resolution t4).") in card_lines(manifest["card"])


def test_card_of_a_model_without_pretraining_on_embeddings(embedding_model):
    from scatd_core.bundle import load_bundle
    from scatd_core.card import card_lines

    path, rep, _ = embedding_model
    card = load_bundle(path).manifest["card"]
    first = card_lines(card)[0]
    # --pretrain-epochs 0: not "pretrained", and its learning rate and rec_beta are not listed as used
    assert "not pretrained (--pretrain-epochs 0" in first and "pretrained from different seeds" not in first
    assert "pretrain_lr" not in card["settings"] and "rec_beta" not in card["settings"]
    assert "--pretrain-epochs 0" in card["settings_not_used"]["pretrain_lr"]
    # 25 target cells of embeddings: there are no genes to standardise
    assert not any("per-gene standardisation" in w for w in rep["warnings"])
    assert any("The target has only 25 cells" in w for w in rep["warnings"])


def test_predicting_with_other_or_unknown_embedding_settings_warns(embedding_model):
    from scatd_core.bundle import load_bundle
    from scatd_core.predict import _embedding_settings_warning, predict, result_keys

    path, _, target = embedding_model
    bundle = load_bundle(path)
    # the cells' embeddings computed here with the defaults (rde, a5); the bulk's were brought by the user
    cells = target.copy()
    cells.uns["scatd_foundation"] = {"vae_sf": _record(key="rde", resolution="a5", max_genes=8000)}
    predict(cells, bundle, device="cpu")
    said = [w for w in cells.uns[result_keys(None).run]["warnings"] if "embeddings were computed here" in w]
    assert len(said) == 1 and "bulk embeddings brought by the user" in said[0] and "rde or cell" in said[0]
    # both known: the settings that differ are named; the same settings, or embeddings the user brought: silent
    bundle.manifest["provenance"]["embeddings"]["bulk"] = bundle.manifest["provenance"]["embeddings"]["target"]
    warning = _embedding_settings_warning(cells, bundle)
    assert warning is not None and "other settings (key, resolution)" in warning
    cells.uns["scatd_foundation"] = {"vae_sf": _record(key="cell", resolution="t4", max_genes=8000)}
    assert _embedding_settings_warning(cells, bundle) is None
    del cells.uns["scatd_foundation"]
    assert _embedding_settings_warning(cells, bundle) is None
