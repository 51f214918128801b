"""Checkpoints saved in the common forms load exactly, damaged ones are refused with their tensor
named, and the model library tells two models of one drug apart (QA pass of checkpoint import)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import original_scatd as orig
from conftest import SMALL, small_gene_names
from scatd_core.bundle import (NO_STYLE_PROBLEM, import_card_lines, import_checkpoint, input_transform_words,
                               list_library, load_bundle)
from scatd_core.errors import BundleError, CheckpointError, InputError
from scatd_core.predict import predict

ENC, Z, _ = SMALL["dist_vae"]
GENES = small_gene_names(ENC[0])


@pytest.fixture
def dist(tmp_path):
    """A small original-layout Dist_VAE DAL state dict, its gene list file and some cells."""
    sd = orig.dal_checkpoint("dist_vae", ENC, Z, seed=3)
    (tmp_path / "genes.txt").write_text("\n".join(GENES) + "\n")
    x = np.abs(np.random.default_rng(0).normal(size=(25, ENC[0]))).astype(np.float32)
    return sd, tmp_path / "genes.txt", ad.AnnData(x, var=pd.DataFrame(index=GENES))


def _import(tmp_path, obj, genes, name, **kw):
    pth = tmp_path / f"{name}.pth"
    torch.save(obj, pth)
    return import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, out=tmp_path / f"b_{name}", **kw)


def _probs(bundle, adata):
    a = adata.copy()
    predict(a, bundle, batch_size=10)
    return a.obs["scatd_prob_resistant"].to_numpy()


# --------------------------------------------------------------------------- dtypes (finding 1)

def test_float16_and_float64_checkpoints_import_as_float32_and_predict(tmp_path, dist):
    sd, genes, adata = dist
    plain = _probs(_import(tmp_path, sd, genes, "plain"), adata)
    for dtype, word in ((torch.float16, "float16"), (torch.float64, "float64")):
        changed = dict(sd)
        changed["fc21.weight_orig"] = sd["fc21.weight_orig"].to(dtype)
        changed["Encoder_resblocks.0.fc.weight"] = sd["Encoder_resblocks.0.fc.weight"].to(dtype)
        bundle = _import(tmp_path, changed, genes, word)
        stored = load_file(str(bundle.path / "weights.safetensors"))
        assert {str(v.dtype) for k, v in stored.items() if not k.endswith("num_batches_tracked")} == {"torch.float32"}
        assert stored["Encoder_resblocks.0.bn.num_batches_tracked"].dtype == torch.int64  # integers kept
        notes = bundle.manifest["provenance"]["notes"]
        assert len(notes) == 1 and notes[0].startswith(f"converted from {word} to float32")
        assert "fc21.weight_orig" in notes[0] and ("(exact)" in notes[0]) == (word == "float16")
        got = _probs(bundle, adata)
        if word == "float64":  # float32 weights rounded to float64 and back: the same numbers
            assert np.array_equal(got, plain)
        else:  # half rounds the weights once (the conversion back to float32 is exact)
            expected = dict(sd)
            for k in ("fc21.weight_orig", "Encoder_resblocks.0.fc.weight"):
                expected[k] = sd[k].half().float()
            assert np.allclose(got, orig.original_inference_prob("dist_vae", ENC, Z, expected, adata.X), atol=1e-5)


def test_a_library_bundle_written_with_half_weights_predicts(tmp_path, dist):
    """Libraries made before imports converted dtypes hold float16/float64 weights: they load as float32."""
    sd, genes, adata = dist
    bundle = _import(tmp_path, sd, genes, "old")
    weights = bundle.path / "weights.safetensors"
    state = load_file(str(weights))
    state["fc21.weight_orig"] = state["fc21.weight_orig"].half()
    state["fc3.weight_orig"] = state["fc3.weight_orig"].double()
    save_file(state, str(weights))
    expected = dict(sd)
    expected["fc21.weight_orig"] = sd["fc21.weight_orig"].half().float()
    got = _probs(load_bundle(bundle.path), adata)
    assert np.allclose(got, orig.original_inference_prob("dist_vae", ENC, Z, expected, adata.X), atol=1e-5)


# --------------------------------------------------------------------------- non-finite weights (finding 2)

@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "infinite values")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, dist, value, word):
    sd, genes, _ = dist
    bad = dict(sd)
    bad["fc21.weight_orig"] = sd["fc21.weight_orig"].clone()
    bad["fc21.weight_orig"][0, 0] = value
    with pytest.raises(CheckpointError, match=f"Damaged checkpoint bad.pth: fc21.weight_orig holds {word}"):
        _import(tmp_path, bad, genes, "bad")
    assert not (tmp_path / "b_bad").exists()
    big = dict(sd)  # a float64 value float32 cannot hold
    big["fc22.weight_orig"] = sd["fc22.weight_orig"].double()
    big["fc22.weight_orig"][0, 0] = 1e300
    with pytest.raises(CheckpointError, match="fc22.weight_orig holds values beyond float32's range"):
        _import(tmp_path, big, genes, "big")


def test_a_library_bundle_with_nan_weights_says_so_rather_than_scoring_no_cell(tmp_path, dist):
    sd, genes, adata = dist
    bundle = _import(tmp_path, sd, genes, "later_damaged")
    weights = bundle.path / "weights.safetensors"
    state = load_file(str(weights))
    state["fc3.bias"] = torch.full_like(state["fc3.bias"], float("nan"))
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="has damaged weights: fc3.bias holds NaN"):
        predict(adata.copy(), load_bundle(bundle.path))


# --------------------------------------------------------------------------- wrappers (finding 9)

@pytest.mark.parametrize("form", ["dataparallel", "model_state_dict", "model", "wrapped_dataparallel"])
def test_wrapped_and_dataparallel_checkpoints_load_to_the_same_outputs(tmp_path, dist, form):
    sd, genes, adata = dist
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    obj = {"dataparallel": prefixed, "model_state_dict": {"model_state_dict": sd, "epoch": 3, "loss": 0.25},
           "model": {"model": sd}, "wrapped_dataparallel": {"model_state_dict": prefixed, "epoch": 3}}[form]
    bundle = _import(tmp_path, obj, genes, form)
    assert np.array_equal(_probs(bundle, adata), _probs(_import(tmp_path, sd, genes, "plain"), adata))
    assert load_file(str(bundle.path / "weights.safetensors")).keys() == sd.keys()
    notes = " ".join(bundle.manifest["provenance"]["notes"])
    assert ("'module.' prefix nn.DataParallel puts on every key was removed" in notes) == ("dataparallel" in form)
    wrapper = {"dataparallel": None, "model_state_dict": "'model_state_dict' entry (left out: epoch, loss)",
               "model": "'model' entry", "wrapped_dataparallel": "'model_state_dict' entry (left out: epoch)"}[form]
    assert (wrapper is None and "entry" not in notes) or (wrapper is not None and wrapper in notes)


def test_a_partial_module_prefix_is_not_stripped(tmp_path, dist):
    sd, genes, _ = dist
    mixed = {(f"module.{k}" if k.startswith("fc21") else k): v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="(?i)missing key"):
        _import(tmp_path, mixed, genes, "mixed")


# --------------------------------------------------------------------------- names and folders (finding 4)

def test_a_second_model_of_one_drug_and_backbone_goes_by_its_display_name(tmp_path, dist):
    sd, genes, _ = dist
    pth = tmp_path / "a.pth"
    torch.save(sd, pth)
    library = tmp_path / "lib"
    first = import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, library=library)
    second = import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, library=library,
                               name="DOCETAXEL GSE140440")
    assert first.path.name == "DOCETAXEL_dist_vae" and second.path.name.startswith("DOCETAXEL_GSE140440")
    assert second.name == "DOCETAXEL GSE140440" and len(list_library(library)) == 2
    with pytest.raises(BundleError) as taken:
        import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, library=library, name="DOCETAXEL GSE140440")
    exc = taken.value
    assert "A model named 'DOCETAXEL GSE140440' already exists" in exc.message
    assert str(library) not in exc.message and str(library) not in exc.app_hint  # what a web user sees
    assert "another display name" in exc.app_hint and "administrator" in exc.app_hint
    assert str(library) in exc.hint and "--name NAME" in exc.hint  # the CLI still says where and how


def test_an_import_into_a_folder_holding_a_model_of_another_name_says_what_is_there(tmp_path, dist):
    """QA: `scatd import-checkpoint --name B --out F`, F holding the model 'A', said "A model named 'B'
    already exists": it says the folder holds the model 'A', and how to choose another name or folder."""
    sd, genes, _ = dist
    pth = tmp_path / "a.pth"
    torch.save(sd, pth)
    import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, out=tmp_path / "mine", name="Lab model")
    with pytest.raises(BundleError) as taken:
        import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, out=tmp_path / "mine", name="Other model")
    exc = taken.value
    assert exc.message == "The folder mine already holds another model, named 'Lab model'; nothing was changed."
    assert "--name NAME" in exc.hint and "--out FOLDER" in exc.hint
    assert "'Lab model'" in exc.app_hint and "another display name" in exc.app_hint
    with pytest.raises(BundleError, match="A model named 'Lab model' already exists"):  # the same name: as before
        import_checkpoint(pth, "dist_vae", drug="DOCETAXEL", genes=genes, out=tmp_path / "mine", name="Lab model")


# --------------------------------------------------------------------------- AdaIN statistics (finding 3)

def test_an_embedding_classifier_without_bulk_embeddings(tmp_path):
    enc, z, _ = SMALL["vae_sf"]
    pth = tmp_path / "sf.pth"
    torch.save(orig.dal_checkpoint("vae_sf", enc, z, seed=2), pth)
    with pytest.raises(InputError, match="needs the bulk embeddings") as refused:
        import_checkpoint(pth, "vae_sf", drug="D", out=tmp_path / "refused", require_style=True)
    assert "Bulk embeddings for AdaIN" in refused.value.app_hint and "--style-reference" in refused.value.hint
    assert not (tmp_path / "refused").exists()
    bundle = import_checkpoint(pth, "vae_sf", drug="D", out=tmp_path / "nostyle")  # the CLI warns, and allows it
    assert bundle.prediction_problem == NO_STYLE_PROBLEM and bundle.summary()["style"] is False
    with pytest.raises(InputError) as at_predict:
        predict(ad.AnnData(np.ones((3, enc[0]), dtype=np.float32)), bundle)
    assert "--style-reference" in at_predict.value.hint and "--" not in at_predict.value.app_hint
    assert "Model library page" in at_predict.value.app_hint


# --------------------------------------------------------------------------- the card (finding 5)

def test_an_imported_model_has_a_short_card(tmp_path, dist):
    sd, genes, _ = dist
    pth = tmp_path / "orig.pth"
    torch.save(sd, pth)
    bundle = import_checkpoint(pth, "dist_vae", drug="D", genes=genes, out=tmp_path / "b",
                               provenance={"imported_by": "alice"})
    lines = "\n".join(import_card_lines(bundle))
    assert "orig.pth (sha256 " + bundle.manifest["provenance"]["source_sha256"] in lines
    assert "by alice" in lines and "Default threshold 0.05: the original scATD inference's default" in lines
    assert "latent mean" in lines and "leaves Dist_VAE's normalisation open" in lines
    assert "resistant = 1" in lines and "shared by the encoder and the classifier head" in lines
    set_here = import_checkpoint(pth, "dist_vae", drug="D", genes=genes, out=tmp_path / "b2", threshold=0.3)
    assert "Default threshold 0.3: set at import" in "\n".join(import_card_lines(set_here))
    assert input_transform_words(bundle).startswith("Input transform: none. The expression values go into the "
                                                    "model as they are")
    backbone = tmp_path / "pre.pth"
    torch.save(orig.pretraining_checkpoint("dist_vae", ENC, Z, SMALL["dist_vae"][2], seed=1), backbone)
    pre = import_checkpoint(backbone, "dist_vae", genes=genes, out=tmp_path / "pre")
    assert pre.summary()["threshold"] is None and pre.summary()["label_mapping"] is None


def test_scfoundation_models_ckpt_is_named_as_the_backbone_not_a_drug_model(tmp_path):
    import _foundation_helpers as H

    ckpt = H.write_sf_checkpoint(tmp_path / "models.ckpt", H.sf_genes(8))
    with pytest.raises(CheckpointError, match="scFoundation's own foundation model") as err:
        import_checkpoint(ckpt, "vae_sf", drug="DOCETAXEL", out=tmp_path / "b")
    assert "not tensors" not in err.value.message and "cell, rde, gene" in err.value.message
    assert "scatd convert-scfoundation" in err.value.hint and "Backbone files" in err.value.hint
    assert "VAE_sf_<drug>.pth" in err.value.app_hint and "--" not in err.value.app_hint
