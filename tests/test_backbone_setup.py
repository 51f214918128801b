"""QA (found46): the Model page offered only the backbones of installed drug models, and the
foundation models' state was a collapsed list of missing files that never said whether this
machine can run them nor how long it would take. Every backbone is offered now; one that cannot
be used yet says so in its label, and choosing it shows, in order, the drug model, the
foundation model's files and the cost of the embeddings here (scatd_core.backbone_setup, which
`scatd doctor` shares)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import _foundation_helpers as H
from _foundation_helpers import one_thread  # noqa: F401 (autouse fixture)
from _app_helpers import make_bundle
from scatd_core.foundation import geneformer as G
from scatd_core.foundation import scfoundation as S
from test_app_pages import _no_component_scan, goto, h5ad_bytes, start, text, upload  # noqa: F401 (fixture)

PUBLISHED_12L = {**H.GF_CONFIG, "hidden_size": 512, "intermediate_size": 1024, "num_attention_heads": 8,
                 "num_hidden_layers": 12, "vocab_size": 32}


def cells(n=20, seed=0) -> ad.AnnData:
    """Counts of the tiny Geneformer vocabulary's genes (symbols), with labels for a Dist_VAE model."""
    _, syms = H.gf_genes(30)
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.uniform(0.5, 4.0, 30), size=(n, 30)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame({"response": np.where(np.arange(n) % 2, "resistant",
                                                                                "sensitive")},
                                                       index=[f"cell{i}" for i in range(n)]))
    a.var_names = syms
    return a


def dictionaries_only(folder):
    """As /work/shared/data/geneformer: the V1 dictionaries and a config under another name, no model folder."""
    H.write_gf_dictionaries(folder)
    (folder / "gf-12L-30M-config.json").write_text(json.dumps(PUBLISHED_12L))
    return folder


@pytest.fixture
def gf_dicts(tmp_path, monkeypatch):
    folder = dictionaries_only(tmp_path / "geneformer")
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(folder))
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "no-scfoundation"))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    S._PROBES.clear()
    return folder


def test_the_setup_of_a_backbone_says_what_is_there_what_is_missing_and_what_it_costs(gf_dicts):
    from scatd_core.backbone_setup import backbone_setup

    setup = backbone_setup("vae_gf", [], cells(12), device="cpu")
    assert not setup["ready"] and setup["short"] == "not set up"
    model, files, cost = setup["steps"]
    assert [s["key"] for s in setup["steps"]] == ["drug_model", "files", "cost"]
    assert model["status"] == "missing" and not model["found"]
    todo = " ".join(model["todo"])
    assert "Model library" in todo and "VAE_gf" in todo and "scatd train --backbone vae_gf" in todo
    assert files["status"] == "missing"
    found = " ".join(files["found"])
    assert "token_dictionary.pkl" in found and "gene_median_dictionary.pkl" in found and "gene_name_id_dict.pkl" in found
    missing = " ".join(files["missing"])
    assert "model folder" in missing and "gf-12L-30M-config.json" in missing and "config.json" in missing
    # only what is missing is asked for: the dictionaries are there
    assert "token_dictionary.pkl" not in " ".join(files["todo"]) and "gf-12L-30M-i2048" in " ".join(files["todo"])
    assert "SCATD_GENEFORMER_DIR" in files["setting"] and "foundation.geneformer_dir" in files["setting"]
    # the dictionaries found are ticked ("found"), not said again in what is missing
    assert "token_dictionary.pkl" not in missing and "Found:" not in missing
    assert "gf-12L-30M-config.json looks like a model's config" in missing  # the rest of the message stays
    # the cost, on this machine, from the published model's size (its weights are not here)
    assert cost["status"] == "estimate" and cost["seconds"] > 0 and cost["n_cells"] == 12
    assert "CPU" in cost["device"] and "gf-12L-30M-i2048" in cost["assumed"]


def test_the_cost_is_not_made_up_when_what_it_needs_is_missing(tmp_path, monkeypatch):
    from scatd_core.backbone_setup import backbone_setup

    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "nothing"))
    S._PROBES.clear()
    cost = backbone_setup("vae_sf", [], cells(5), device="cpu")["steps"][2]
    assert cost["status"] == "unknown" and "seconds" not in cost
    assert "OS_scRNA_gene_index.19264.tsv" in cost["text"]
    assert backbone_setup("vae_sf", [], None)["steps"][2]["status"] == "no_data"
    dist = backbone_setup("dist_vae", [], cells(5))
    assert dist["steps"][1]["status"] == "done" and dist["steps"][2]["status"] == "done"


def test_doctor_says_which_geneformer_files_it_found_and_asks_only_for_the_missing_ones(gf_dicts, capsys):
    from scatd_core.cli import main

    main(["doctor"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "vae_gf" in x)
    assert "token_dictionary.pkl" in line.split("What to do")[0]  # found, said before what to do
    assert "and its dictionaries (token_dictionary.pkl" not in line
    assert "gf-12L-30M-config.json" in line and "named config.json" in line


# ------------------------------------------------------------------ the Model page

def _page(tmp_path, monkeypatch, *, gf_model=None):
    data = cells(20)
    make_bundle(tmp_path / "library" / "dist", data, steps=5)
    if gf_model is not None:
        from test_foundation_app import _library

        _library(tmp_path, "vae_gf", gf_model)  # tmp_path/library/vae_gf
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp_path / "library"))
    at = start()
    upload(at, "cells.h5ad", h5ad_bytes(data))
    goto(at, "2_Model")
    return at


def _shown(at) -> list[str]:
    return [str(e.value).replace("\\", "") for e in at.main if e.type in ("warning", "markdown", "info", "success",
                                                                        "error", "caption")]


def _predict_link(at) -> bool:
    return "Next: run the prediction" in str([link.label for link in at.get("page_link")])


def test_the_model_page_offers_every_backbone_and_says_what_geneformer_lacks(gf_dicts, tmp_path, monkeypatch):
    at = _page(tmp_path, monkeypatch)
    picker = at.selectbox(key="model_backbone")
    assert len(picker.options) == 3, picker.options
    gf = next(o for o in picker.options if "Geneformer" in o)
    assert "not set up" in gf and "not set up" not in picker.options[0]
    assert _predict_link(at)  # the Dist_VAE model is ready
    picker.set_value("vae_gf")
    at.run()
    assert not at.exception
    shown = _shown(at)
    first = lambda words: next(i for i, t in enumerate(shown) if words in t)  # noqa: E731
    assert first("1 · A drug model") < first("2 · Geneformer's files") < first("3 · Time to compute"), shown
    joined = "\n".join(shown)
    assert "scatd train --backbone vae_gf" in joined and "token_dictionary.pkl" in joined
    assert joined.count("token_dictionary.pkl") == 1, shown  # the dictionaries found are said once: ticked
    assert "gf-12L-30M-config.json" in joined and "gf-12L-30M-i2048" in joined
    assert "20 cells" in joined and "CPU" in joined
    assert not _predict_link(at) and not any(b.key == "btn_embed" for b in at.button)
    assert not any(s.key == "model_bundle" for s in at.selectbox)


def test_the_model_page_says_the_configuration_file_set_the_geneformer_folder(tmp_path, monkeypatch):
    """foundation.geneformer_dir set in config.toml: the Model page said the folder was "set by
    default ($SCATD_HOME/geneformer)". It names the key and the configuration file."""
    folder = dictionaries_only(tmp_path / "installed" / "geneformer")
    config = tmp_path / "config.toml"
    config.write_text(f'[foundation]\ngeneformer_dir = "{folder}"\n')
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "no-scfoundation"))
    for variable in ("SCATD_GENEFORMER_DIR", "SCATD_GENEFORMER_MODEL"):
        monkeypatch.delenv(variable, raising=False)
    G._PROBES.clear()
    at = _page(tmp_path, monkeypatch)
    at.selectbox(key="model_backbone").set_value("vae_gf")
    at.run()
    assert not at.exception
    looked = next(t for t in _shown(at) if t.startswith("Looked in"))
    assert "(set by foundation.geneformer_dir in " in looked and "config.toml)" in looked, looked
    assert "default" not in looked, looked


def test_the_model_page_with_a_drug_model_but_no_weights_says_the_files_are_missing(gf_dicts, tmp_path, monkeypatch):
    at = _page(tmp_path, monkeypatch, gf_model=512)
    picker = at.selectbox(key="model_backbone")
    assert "not set up" in next(o for o in picker.options if "Geneformer" in o)
    picker.set_value("vae_gf")
    at.run()
    assert not at.exception
    joined = "\n".join(_shown(at))
    assert "No Geneformer model folder" in joined and "token_dictionary.pkl" in joined
    assert "Once installed: about" in joined and "gf-12L-30M-i2048" in joined  # the cost here, from its size
    assert "Or upload Geneformer embeddings computed elsewhere" in joined  # what can be done without the files
    assert not _predict_link(at) and not any(b.key == "btn_embed" for b in at.button)


def test_the_model_page_with_geneformer_ready_offers_it_as_usual(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(H.gf_folder(tmp_path / "geneformer")))
    monkeypatch.setenv("SCATD_SCFOUNDATION_DIR", str(tmp_path / "no-scfoundation"))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()
    S._PROBES.clear()
    at = _page(tmp_path, monkeypatch, gf_model=H.GF_CONFIG["hidden_size"])
    picker = at.selectbox(key="model_backbone")
    assert "not set up" not in next(o for o in picker.options if "Geneformer" in o)
    assert "not set up" in next(o for o in picker.options if "scFoundation" in o)
    picker.set_value("vae_gf")
    at.run()
    assert not at.exception
    assert any(s.key == "model_bundle" for s in at.selectbox)
    assert any(b.key == "btn_embed" for b in at.button)  # the usual embedding step


def test_the_geneformer_check_sees_files_added_removed_or_renamed_without_a_restart(tmp_path, monkeypatch):
    """The probe is cached per process (the Model page asks for it on every rerun): a dictionary or
    model copied in, taken away or renamed is seen at the next look, not after a server restart."""
    import shutil

    root = H.gf_folder(tmp_path / "gf-full")
    folder = tmp_path / "geneformer"
    folder.mkdir()
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(folder))
    monkeypatch.delenv("SCATD_GENEFORMER_MODEL", raising=False)
    G._PROBES.clear()

    def codes():
        return sorted(p.code for p in G.probe(embedding_dim=H.GF_CONFIG["hidden_size"]).problems)

    assert codes() == ["missing_dictionaries", "missing_model"]
    shutil.copy(root / "token_dictionary.pkl", folder)
    shutil.copy(root / "gene_median_dictionary.pkl", folder / "medians.pkl")  # not a name it looks for
    assert codes() == ["missing_dictionaries", "missing_model"]
    (folder / "medians.pkl").rename(folder / "gene_median_dictionary.pkl")  # renamed: now found
    assert codes() == ["missing_model"] and G.probe(embedding_dim=16).warnings  # the name dictionary: a warning
    shutil.copy(root / "gene_name_id_dict.pkl", folder)
    assert codes() == ["missing_model"] and not G.probe(embedding_dim=16).warnings
    shutil.copytree(root / "gf-tiny", folder / "gf-tiny")
    assert codes() == [] and G.probe(embedding_dim=16).available
    (folder / "gf-tiny" / "model.safetensors").unlink()
    assert codes() == ["missing_weights"]
    (folder / "token_dictionary.pkl").unlink()
    assert "missing_dictionaries" in codes()
