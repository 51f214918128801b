"""Cells whose labels trained a model (few-shot) are left out of its evaluations on its training target."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pytest

from _app_helpers import BUNDLE_FOLDER, make_bundle, make_dataset
from scatd_core import export, metrics, training_cells
from scatd_core.bundle import MANIFEST, load_bundle
from scatd_core.card import card_lines
from scatd_core.errors import InputError
from scatd_core.labels import set_label_direction
from scatd_core.predict import predict

N = 40
TARGET = [f"c{i}" for i in range(N)]
FEW = [f"c{i}" for i in range(0, 20, 2)]  # 10 cells: c0, c2, ..., c18


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A library with one small trained test model (as _app_helpers' trained_library)."""
    root = tmp_path_factory.mktemp("library")
    make_bundle(root / BUNDLE_FOLDER, make_dataset(180, seed=0))
    return root


@pytest.fixture(scope="module")
def few_shot_bundle(library, tmp_path_factory):
    """A model that records its training cells FEW of the target TARGET, as `scatd train
    --few-shot-labels` writes it."""
    folder = tmp_path_factory.mktemp("few_shot") / "few"
    shutil.copytree(library / BUNDLE_FOLDER, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["few_shot"] = training_cells.manifest_record(FEW, TARGET)
    manifest["provenance"]["few_shot_labels"] = {"file": "few.csv", "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return load_bundle(folder)


@pytest.fixture
def predicted(few_shot_bundle):
    def make(names=None, *, legacy=False, seed=0) -> ad.AnnData:
        """``names`` (default: the training target) predicted by the model; P(resistant) then set to
        rank the training cells perfectly and the others only partly."""
        names = TARGET if names is None else names
        adata = make_dataset(len(names), seed=seed)
        adata.obs_names = names
        predict(adata, few_shot_bundle)
        if legacy:  # a model that did not record its cells
            del adata.uns["scatd"]["model"]["few_shot"]
        rng = np.random.default_rng(seed)
        truth = np.array(["resistant", "sensitive"] * (len(names) // 2))
        prob = np.where(truth == "resistant", 0.6, 0.4) + rng.normal(0, 0.25, len(names))
        fit = np.isin(names, FEW)
        prob[fit] = np.where(truth[fit] == "resistant", 0.99, 0.01)  # it fits its own training labels
        adata.obs["truth"] = truth
        adata.obs["scatd_prob_resistant"] = np.clip(prob, 0, 1)
        set_label_direction(adata, "truth", "resistant")
        return adata
    return make


def test_the_training_cells_are_left_out_on_the_training_target_and_it_says_so(predicted):
    adata = predicted()
    evaluation, roc, _ = metrics.evaluate_column(adata, "truth")
    held = ~adata.obs_names.isin(FEW)
    y = (adata.obs["truth"] == "resistant").to_numpy(float)
    p = adata.obs["scatd_prob_resistant"].to_numpy()
    assert evaluation.n_evaluated == N - len(FEW) and evaluation.n_cells == N
    assert evaluation.n_training_left_out == len(FEW)
    assert evaluation.auroc == pytest.approx(metrics.auroc(y[held], p[held]))
    assert evaluation.auroc < metrics.auroc(y, p)  # what counting them would have claimed
    assert roc["tpr"].iloc[-1] == 1.0 and len(roc) <= N - len(FEW) + 1
    note = evaluation.notes[0]
    assert note == evaluation.training_note
    assert "10 labelled cells of 'truth' were left out" in note and "labels trained the model" in note
    assert "training target (the same 40 cell names)" in note  # the rule applied
    assert evaluation.as_dict()["n_training_cells_left_out"] == 10
    # the same in metrics.csv, the h5ad's report record and the HTML's table of scores
    table = export.metrics_table(adata, "truth")
    rows = dict(zip(table["metric"], table["value"]))
    assert rows["n_training_cells_left_out"] == 10 and rows["n_evaluated"] == 30
    assert rows["training_cells"] == note
    context = export.report_context(adata, "truth")
    assert context["evaluation"]["n_training_cells_left_out"] == 10 and context["training_cells"] == note


def test_calibrating_on_labels_leaves_the_training_cells_out_too(predicted):
    """A threshold fitted on labels (Youden/MCC) is not fitted on the cells whose labels trained
    the model (the 10 resistant c0, c2, ..., c18): 10 resistant and 20 sensitive, not 20 and 20."""
    from scatd_core.predict import calibrate

    adata = predicted()
    truth = (adata.obs["truth"] == "resistant").to_numpy()
    held = ~adata.obs_names.isin(FEW)  # the other cells clearly separated, so the labels support a threshold
    prob = adata.obs["scatd_prob_resistant"].to_numpy().copy()
    prob[held] = np.where(truth[held], 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.05, held.sum())
    adata.obs["scatd_prob_resistant"] = prob
    calibrate(adata, label_column="truth", method="youden")
    assert "10 resistant and 20 sensitive" in adata.uns["scatd"]["threshold"]["detail"]


def test_cells_in_another_order_are_the_same_target(predicted):
    order = np.random.default_rng(3).permutation(N)
    adata = predicted([f"c{i}" for i in order])
    assert metrics.evaluate_column(adata, "truth")[0].n_training_left_out == len(FEW)


def test_only_training_cells_labelled_means_nothing_independent_to_evaluate(predicted):
    adata = predicted()
    adata.obs["few"] = np.where(adata.obs_names.isin(FEW), adata.obs["truth"], None)  # the few-shot column itself
    set_label_direction(adata, "few", "resistant")
    with pytest.raises(InputError, match="nothing independent to evaluate") as info:
        metrics.evaluate_column(adata, "few")
    assert "Every labelled cell of 'few' (10)" in info.value.message
    table = export.metrics_table(adata, "few")  # no scores: the reason instead
    assert "auroc" not in set(table["metric"])
    assert "nothing independent" in table.loc[table["metric"] == "not computed", "value"].iloc[0]
    assert "nothing independent" in export.report_context(adata, "few")["evaluation_not_computed"]
    assert "nothing independent" in export.html_report(adata, label_column="few")


def test_other_data_sharing_generic_names_keep_their_cells(predicted):
    """A model trained on a target named 0, 1, ... evaluated on another dataset named 0, 1, ...:
    the names are the same, the cells are not."""
    target = [str(i) for i in range(N)]
    adata = predicted([str(i) for i in range(60)])
    adata.uns["scatd"]["model"]["few_shot"] = training_cells.manifest_record(["0", "2", "4", "6"], target)
    evaluation, _, _ = metrics.evaluate_column(adata, "truth")
    assert evaluation.n_evaluated == 60 and evaluation.n_training_left_out == 0
    note = evaluation.notes[0]
    assert "trained with the labels of 4 cells of a dataset of 40 cells" in note
    assert "These data are not that dataset" in note and "no cell was left out" in note
    # the same number of cells with other names is not the target either
    adata = predicted([f"x{i}" for i in range(N - 4)] + ["0", "2", "4", "6"])
    adata.uns["scatd"]["model"]["few_shot"] = training_cells.manifest_record(["0", "2", "4", "6"], target)
    evaluation = metrics.evaluate_column(adata, "truth")[0]
    assert evaluation.n_training_left_out == 0 and "not that dataset" in evaluation.notes[0]


def test_data_without_any_training_cell_name_are_told_they_are_not_the_target(predicted):
    adata = predicted([f"other{i}" for i in range(N)])
    evaluation = metrics.evaluate_column(adata, "truth")[0]
    assert evaluation.n_training_left_out == 0 and evaluation.n_evaluated == N
    assert "These data are not that dataset" in evaluation.training_note


def test_the_record_holds_no_cell_id_and_needs_the_whole_target_to_be_read(predicted, tmp_path):
    """A shared model (and every prediction's h5ad, which copies its record) must not show another
    user's cell barcodes: the record holds keyed hashes, and the key needs every target name."""
    barcodes = [f"AAACCTGAGAAACC{i:02d}-1" for i in range(N)]
    record = training_cells.manifest_record(barcodes[:10], barcodes)
    text = json.dumps(record)
    assert "AAACC" not in text and "cell_ids" not in text and record["n"] == 10
    assert training_cells.recorded_ids(record) == []
    # the same record found from the target in any order, and from nothing less than all of it
    assert training_cells.recorded_cells(record, barcodes[::-1]).sum() == 10
    assert training_cells.recorded_cells(record, barcodes[:10]).sum() == 0
    # unkeyed or salted hashes of the barcodes do not find them either
    import hashlib
    plain = {hashlib.sha256(b.encode()).hexdigest()[:16] for b in barcodes}
    assert not plain & set(training_cells.recorded_hashes(record))
    # nor does a prediction's download: the h5ad keeps the hashes, never the barcodes
    adata = predicted()
    adata.uns["scatd"]["model"]["few_shot"] = training_cells.manifest_record(FEW, TARGET)
    export.write_h5ad(adata, tmp_path / "a.h5ad")
    model = ad.read_h5ad(tmp_path / "a.h5ad").uns["scatd"]["model"]["few_shot"]
    assert "cell_ids" not in model and "cell_ids_gzip_base64" not in model
    assert training_cells.recorded_hashes(model) == training_cells.manifest_record(FEW, TARGET)["cell_id_hashes"]


def test_a_record_of_plain_ids_from_the_version_before_still_works(predicted):
    adata = predicted()
    record = training_cells.manifest_record(FEW, TARGET)
    legacy = {"n": len(FEW), "target": record["target"], "cell_ids": list(FEW)}
    adata.uns["scatd"]["model"]["few_shot"] = legacy
    assert metrics.evaluate_column(adata, "truth")[0].n_training_left_out == len(FEW)


def test_including_them_is_possible_and_said(predicted):
    adata = predicted()
    evaluation = metrics.evaluate_column(adata, "truth", training_cells="include")[0]
    assert evaluation.n_evaluated == N and "includes the 10 cells whose labels trained the model" in evaluation.notes[0]


def test_a_model_that_did_not_record_its_training_cells_is_evaluated_as_before_with_a_note(predicted):
    adata = predicted(legacy=True)
    evaluation = metrics.evaluate_column(adata, "truth")[0]
    assert evaluation.n_evaluated == N and evaluation.n_training_left_out == 0
    assert "whose cell IDs it does not record" in evaluation.notes[0]
    table = export.metrics_table(adata, "truth")
    rows = dict(zip(table["metric"], table["value"]))
    assert "does not record" in rows["training_cells"]
    # known from the card alone, too (an h5ad whose provenance was written without it)
    adata.uns["scatd"]["model"] = {"name": "m", "card_json": '{"data": {"few_shot": {"n": 10}}}'}
    assert "does not record" in metrics.evaluate_column(adata, "truth")[0].notes[0]
    adata.uns["scatd"]["model"] = {"name": "m", "provenance": {"few_shot_labels": ""}}  # a model without any
    assert [n for n in metrics.evaluate_column(adata, "truth")[0].notes if not n.startswith("No baseline")] == []


def test_many_training_cells_are_stored_compactly_and_read_back():
    names = [f"AAACCTGAGAAACCAT-{i}" for i in range(20_000)]
    record = training_cells.manifest_record(names[:5000], names)
    assert "cell_id_hashes" not in record and len(record["cell_id_hashes_base64"]) < 60_000
    assert len(training_cells.recorded_hashes(record)) == 5000
    found = training_cells.recorded_cells(record, names)
    assert found[:5000].all() and not found[5000:].any()
    small = training_cells.manifest_record(names[:3], names)
    assert len(small["cell_id_hashes"]) == 3 and small["target"]["n_cells"] == 20_000
    assert training_cells.recorded_cells(small, names).sum() == 3


def test_the_record_survives_the_h5ad(predicted, tmp_path):
    adata = predicted()
    export.write_h5ad(adata, tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert metrics.evaluate_column(back, "truth")[0].n_training_left_out == len(FEW)


def test_the_card_says_whether_the_training_cells_are_recorded():
    card = {"model": {"description": "d"}, "data": {"summary": "s", "few_shot": {
        "n": 10, "n_resistant": 5, "n_sensitive": 5, "cell_ids_recorded": True}}}
    assert any("10 labelled target cells (5 resistant, 5 sensitive) trained it" in line
               and "recorded with the model" in line for line in card_lines(card))
    del card["data"]["few_shot"]["cell_ids_recorded"]
    assert any("were not recorded" in line for line in card_lines(card))
    del card["data"]["few_shot"]
    assert not any("labelled target cells" in line for line in card_lines(card))


def test_the_cells_page_leaves_the_training_cells_out_and_says_so(library, tmp_path, monkeypatch):
    from test_app_pages import goto, h5ad_bytes, run_prediction, start, text, upload

    monkeypatch.setattr("streamlit.components.v2.manifest_scanner.scan_component_manifests", lambda: [])
    cells = make_dataset(120, seed=13)
    few = list(cells.obs_names[:12])
    mine = tmp_path / "library"
    shutil.copytree(library / BUNDLE_FOLDER, mine / BUNDLE_FOLDER)
    manifest = json.loads((mine / BUNDLE_FOLDER / MANIFEST).read_text())
    manifest["few_shot"] = training_cells.manifest_record(few, cells.obs_names)  # trained on these cells
    (mine / BUNDLE_FOLDER / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(mine))
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(cells))
    run_prediction(at)
    goto(at, "4_Cells")
    shown = text(at.caption)
    assert "12 labelled cells of 'response' were left out of this evaluation" in shown
    assert "108 cells" in shown
