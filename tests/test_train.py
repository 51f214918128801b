"""Training a drug model (scatd_core.train, scatd train): tiny synthetic data, seeded."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scatd_core.bundle import NameTaken, input_transform_words, load_bundle, save_bundle, sha256_file
from scatd_core.cli import labels as cli_labels
from scatd_core.cli import train as cli_train
from scatd_core.errors import InputError
from scatd_core.nn import Architecture, ResVAE
from scatd_core.predict import Cancelled, predict
from scatd_core.card import card_lines
from scatd_core.train import TrainSettings, fit_head, mmd_rbf, prepare_training_data, train_drug_model
from scatd_core.train._fit import _new_backbone, _restrict_backbone

TINY = TrainSettings(hidden_dims=(16, 8), z_dim=4, pretrain_epochs=4, epochs=6, finetune_epochs=3, folds=3,
                     batch_size=16, members=3)
TINY_SCATD = replace(TINY, head="scatd")
#: For tests whose point is not the training itself (names, folders, resuming, provenance): one member, one
#: pretraining epoch, with ``synthetic(n_bulk=24, n_cells=20)``; still a whole training with its model card
QUICK = replace(TINY, members=1, pretrain_epochs=1)
N_GENES = 30


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(n_bulk=48, n_cells=40, n_resistant=None, seed=0):
    """Bulk log-TPM-like values and target counts sharing a resistance signal on 5 genes.

    The bulk has one gene the target lacks and vice versa; labels have 3 NA entries.
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(N_GENES)]
    y = np.zeros(n_bulk, dtype=int)
    y[: (n_bulk // 2 if n_resistant is None else n_resistant)] = 1
    rng.shuffle(y)
    base = rng.normal(3.0, 1.0, N_GENES)
    bx = base + rng.normal(0, 0.6, (n_bulk, N_GENES))
    bx[:, :5] += 1.5 * y[:, None]
    ids = [f"ACH-{i:06d}" for i in range(n_bulk)]
    bulk = ad.AnnData(np.clip(bx, 0, None).astype(np.float32), obs=pd.DataFrame(index=ids),
                      var=pd.DataFrame(index=genes[:-1] + ["BULK_ONLY"]))
    labels = pd.DataFrame({"DRUGA": np.where(y == 1, "resistant", "sensitive").astype(object),
                           "OTHER": "sensitive"}, index=ids)
    labels.iloc[:3, 0] = None
    yt = rng.integers(0, 2, n_cells)
    rate = np.exp(base - 2.0 + 0.8 * yt[:, None] * (np.arange(N_GENES) < 5))
    counts = rng.poisson(rate).astype(np.float32)
    counts[:, 7] += 1  # no empty cells
    target = ad.AnnData(counts, obs=pd.DataFrame({"response": 1 - yt}, index=[f"cell{i}" for i in range(n_cells)]),
                        var=pd.DataFrame(index=genes[:-2] + ["TARGET_ONLY", genes[-1]]))
    return bulk, labels, target


def _train(tmp_path, bulk, labels, target, name="m", **kw):
    kw.setdefault("settings", TINY)
    return train_drug_model(bulk, labels, "druga", target, out=tmp_path / name, device="cpu", **kw)


def test_train_saves_bundle_that_predict_reproduces(tmp_path):
    bulk, labels, target = synthetic()
    # two more label rows, for cell lines the bulk lacks, one without a label for the drug
    labels = pd.concat([labels, pd.DataFrame({"DRUGA": [None, "resistant"], "OTHER": "sensitive"},
                                             index=["ACH-900000", "ACH-900001"])])
    fractions = []
    bundle, rep = _train(tmp_path, bulk, labels, target, target_label_column="response", target_resistant_value=0,
                         progress=lambda f, m: fractions.append(f), trained_by="alice")
    # panel = shared genes, in bulk order; both one-sided genes reported, not used
    assert "BULK_ONLY" not in bundle.genes and "TARGET_ONLY" not in bundle.genes
    assert rep["genes"]["n_panel"] == N_GENES - 2 == len(bundle.genes)
    assert any(f"share only {N_GENES - 2} genes" in w for w in rep["warnings"])  # a small panel is flagged
    assert rep["labels"]["n_missing_label"] == 4 and rep["labels"]["n_labelled_in_bulk"] == 45
    # the card counts the bulk samples left without a label, not the label table's empty rows
    assert rep["labels"]["n_bulk_without_label"] == 3
    assert "45 labelled bulk cell lines" in rep["card"]["data"]["summary"]
    share = float(np.mean(rep["target_predictions"]["prob_resistant"] >= 0.5))
    assert f"this model calls {share:.0%} of the 40 target cells resistant" in rep["card"]["calibration"]
    assert "not a calibrated probability" in rep["card"]["calibration"]
    assert "3 bulk samples without a label for it" in rep["card"]["data"]["summary"]
    m = bundle.manifest
    assert m["input_transform"] == "standardize" and m["beta_mode"] == "separate" and bundle.threshold == 0.5
    assert m["label_mapping"] == {"sensitive": 0, "resistant": 1} and bundle.drug == "DRUGA"
    assert m["architecture"]["members"] == 3 and m["architecture"]["input_head"]
    prov = m["provenance"]
    assert len(prov["bulk"]["sha256"]) == 64 and len(prov["target"]["sha256"]) == 64 and prov["seed"] == 0
    assert prov["trained_by"] == "alice"  # shown as "by" in the model library
    assert m["training"]["settings"]["z_dim"] == 4 and m["metrics"]["cv"]["folds"] == 3
    assert len(rep["pretraining"]["loss"]) == 3 and all(len(c) == TINY.pretrain_epochs for c in rep["pretraining"]["loss"])
    assert set(m["metrics"]["target"]) >= {"auroc", "auroc_ci", "auprc", "mcc", "f1"}
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # `scatd predict` on the target gives the numbers the training evaluated, and the members' spread
    predict(target, load_bundle(bundle.path), device="cpu")
    got = target.obs["scatd_prob_resistant"].to_numpy()
    np.testing.assert_allclose(got, rep["target_predictions"]["prob_resistant"].to_numpy(), atol=1e-6)
    assert (target.obs["scatd_prob_resistant_sd"] > 0).all()
    assert target.uns["scatd"]["params"]["log_normalised"]  # counts detected, as at training
    # QA: the Train page's "Target predictions (CSV)" held only cell_id and prob_resistant; it now says the
    # threshold, the call at it and the known label the target had (docs/outputs.md)
    pred = rep["target_predictions"]
    assert list(pred.columns) == ["cell_id", "prob_resistant", "threshold", "label", "calibrated", "known_label"]
    assert (pred["threshold"] == 0.5).all() and not pred["calibrated"].any()
    assert (pred["label"] == np.where(pred["prob_resistant"] > 0.5, "resistant", "sensitive")).all()
    known = np.where(target.obs["response"].to_numpy() == 0, "resistant", "sensitive")  # 0 = resistant here
    assert (pred["known_label"].to_numpy() == known).all()


def test_a_trained_model_scores_counts_and_their_lognorm_over_all_genes_alike(tmp_path):
    """Training scales each target cell's counts by its total over all its genes, as prediction does
    (the manifest's library_size), so the cells' log1p(CP10k) over all genes (scanpy's
    normalize_total then log1p) score as their counts do, and as the training saw them."""
    bulk, labels, target = synthetic()
    other = np.random.default_rng(4).poisson(3.0, (target.n_obs, 40)).astype(np.float32)  # genes the bulk lacks
    var = pd.DataFrame(index=list(target.var_names) + [f"T{i}" for i in range(40)])
    counts = ad.AnnData(np.hstack([target.X, other]), obs=target.obs.copy(), var=var)
    bundle, rep = _train(tmp_path, bulk, labels, counts)
    x = counts.X.astype(np.float64)
    lognorm = ad.AnnData(np.log1p(x * 1e4 / x.sum(axis=1, keepdims=True)).astype(np.float32), obs=counts.obs.copy(),
                         var=var.copy())
    for adata in (counts, lognorm):
        predict(adata, load_bundle(bundle.path), device="cpu")
    assert counts.uns["scatd"]["params"]["log_normalised"] and not lognorm.uns["scatd"]["params"]["log_normalised"]
    np.testing.assert_allclose(counts.obs["scatd_prob_resistant"], rep["target_predictions"]["prob_resistant"],
                               atol=1e-6)
    np.testing.assert_allclose(lognorm.obs["scatd_prob_resistant"], counts.obs["scatd_prob_resistant"], atol=1e-5)
    assert bundle.manifest["library_size"] == "all genes" and len(bundle.genes) == N_GENES - 2
    assert "scaled to 10,000 over all the genes in your data" in input_transform_words(bundle)


def test_a_target_mask_leaves_filtered_cells_out_as_predict_does(tmp_path):
    """Cells the QC filter marks (the app's obs['scatd_qc_pass']) are left out of the target's
    standardisation, the adaptation and the evaluation: the card's target figures and the training's
    target predictions are what `predict` with the same mask gives."""
    from sklearn.metrics import roc_auc_score

    bulk, labels, target = synthetic(n_cells=50)
    qc = np.ones(target.n_obs, dtype=bool)
    qc[[1, 4, 9, 16, 25, 36, 49]] = False
    target.obs["scatd_qc_pass"] = qc
    bundle, rep = _train(tmp_path, bulk, labels, target, target_label_column="response", target_resistant_value=0,
                         target_mask="scatd_qc_pass")
    assert rep["card"]["data"] is not None and rep["metrics"]["target"]["n_evaluated"] == qc.sum() == 43
    assert bundle.manifest["training"]["target"]["n_used"] == 43
    assert (rep["metrics"]["target"]["resistant_value"], rep["metrics"]["target"]["resistant_value_given"]) == ("0", True)
    assert "43 target cells (the target given as data; 7 cells filtered (QC) left out)" in rep["card"]["data"]["summary"]
    assert list(rep["target_predictions"]["cell_id"]) == list(target.obs_names[qc])
    predict(target, load_bundle(bundle.path), device="cpu", mask="scatd_qc_pass")
    got = target.obs["scatd_prob_resistant"].to_numpy()
    np.testing.assert_allclose(got[qc], rep["target_predictions"]["prob_resistant"].to_numpy(), atol=1e-6)
    assert np.isnan(got[~qc]).all()
    truth = 1 - target.obs["response"].to_numpy()[qc]  # 0 = resistant in synthetic()'s response
    assert rep["metrics"]["target"]["auroc"] == pytest.approx(roc_auc_score(truth, got[qc]), abs=1e-12)
    with pytest.raises(InputError, match="no obs column 'qc' to use as the mask"):
        _train(tmp_path, bulk, labels, target, name="m2", target_mask="qc")
    with pytest.raises(InputError, match="Every target cell is filtered out"):
        _train(tmp_path, bulk, labels, target, name="m3", target_mask=np.zeros(target.n_obs, dtype=bool))


def test_model_card_scores_model_and_baselines_on_the_same_samples(tmp_path):
    bulk, labels, target = synthetic()
    bundle, rep = _train(tmp_path, bulk, labels, target, target_label_column="response", target_resistant_value=0)
    card = bundle.manifest["card"]
    assert card == rep["card"]
    assert card["settings"]["members"] == 3 and "ensemble of 3" in card["model"]["description"]
    assert card["data"]["bulk"]["sha256"] == bundle.manifest["provenance"]["bulk"]["sha256"]
    assert card["data"]["genes"]["n"] == N_GENES - 2
    by_name = {ev["name"]: ev for ev in card["evaluations"]}
    assert set(by_name) == {"bulk_cv", "target"}
    assert by_name["bulk_cv"]["n"] == 45 and by_name["target"]["n"] == 40
    # how the folds were made, so the split can be made again (QA: only "5-fold cross-validation")
    assert "folds are stratified" in by_name["bulk_cv"]["note"] and "shuffled with seed 0" in by_name["bulk_cv"]["note"]
    for ev in by_name.values():
        models = [r["model"] for r in ev["scores"]]
        assert models == ["this model", "logistic regression (C tuned by inner CV, balanced)",
                          "gradient boosting (HistGradientBoosting, balanced)",
                          "logistic regression, heads' C (C=0.01, balanced)"]
        for row in ev["scores"]:
            lo, hi = row["auroc_ci"]
            assert lo <= row["auroc"] <= hi
        assert len(ev["verdicts"]) == 3
    # the card's target AUROC is the one of the predictions `scatd predict` reproduces
    truth = 1 - target.obs["response"].to_numpy()
    from sklearn.metrics import roc_auc_score

    assert by_name["target"]["scores"][0]["auroc"] == pytest.approx(
        roc_auc_score(truth, rep["target_predictions"]["prob_resistant"]), abs=1e-4)
    assert bundle.manifest["metrics"]["cv"]["auroc"] == by_name["bulk_cv"]["scores"][0]["auroc"]
    assert any("logistic regression" in line.lower() for line in card_lines(card))
    # QA: the baseline's C was fixed at 0.1 while the heads' is 0.01; it is now chosen by inner CV on each
    # training set from a grid with the heads' C, and the card records and says which C was chosen
    tuned = card["baselines"]["logistic_regression"]
    assert 0.01 in tuned["c_grid"] and tuned["head_c"] == 0.01
    assert len(tuned["bulk_cv_folds"]) == 3 and all(f["c"] in tuned["c_grid"] for f in tuned["bulk_cv_folds"])
    assert tuned["all_bulk"]["c"] in tuned["c_grid"] and tuned["all_bulk"]["inner_folds"] >= 2
    assert any(line.startswith("Logistic-regression baseline: C chosen from 0.001, 0.003, 0.01 (the heads' C)")
               for line in card_lines(card))
    # QA: the target's AUROC was recorded with two intervals (bootstrap and Hanley-McNeil); one now, the card's
    target = bundle.manifest["metrics"]["target"]
    assert "bootstrap" in target["auroc_ci_method"] and "auroc_ci_low" not in target
    assert not any(k.startswith("auroc_ci_low") for k in target) and target["auroc_ci"] == [
        r for r in next(e for e in card["evaluations"] if e["name"] == "target")["scores"]
        if r["model"] == "this model"][0]["auroc_ci"]
    assert "bootstrap" in bundle.manifest["metrics"]["cv"]["auroc_ci_method"]


def _nuisance(seed=0, n=60):
    """Two genes sharing a large nuisance signal, one of them shifted in the resistant samples: only a
    weakly penalised logistic regression (large C) takes their difference, so the best C is 1, not 0.1."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    rng.shuffle(y)
    shared, x = rng.normal(size=n), rng.normal(0, 0.3, (n, 6))
    x[:, 0] += shared + y
    x[:, 1] += shared
    return (x - x.mean(0)) / x.std(0), y


def test_the_logistic_regression_baseline_chooses_its_c_by_inner_cv_on_the_training_samples_only():
    """QA (Gefitinib): the card's "This model beats logistic regression (C=0.1)" was a penalty difference: the
    model's head is a balanced LR with C=0.01, and an LR with C=0.01 on the genes alone scored as well. The
    baseline's C is now chosen by inner CV in each training fold (nested) from a grid with the heads' C."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from scatd_core.train import _baselines as baselines

    assert baselines.c_grid(0.05) == (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1.0)  # the heads' C is in it
    x, y = _nuisance()
    choice = baselines.choose_c(x, y, seed=0)
    assert choice["c"] == 1.0 and choice["inner_folds"] == 5
    assert choice["inner_auroc"][1.0] > choice["inner_auroc"][0.1] + 0.05
    splits = list(StratifiedKFold(3, shuffle=True, random_state=0).split(x, y))
    chosen: list[dict] = []
    oof = baselines.out_of_fold(baselines.LOGISTIC, x, y, splits, 0, grid=baselines.c_grid(0.01), chosen=chosen)
    assert [c["c"] for c in chosen] == [1.0, 1.0, 1.0]
    fixed = np.zeros(len(y))  # the earlier baseline, C fixed at 0.1
    for train, val in splits:
        fixed[val] = baselines.logistic(0, 0.1).fit(x[train], y[train]).predict_proba(x[val])[:, 1]
    assert roc_auc_score(y, oof) > roc_auc_score(y, fixed) + 0.1
    # nested: a fold's C never depends on its test samples (here scrambled)
    scrambled, again = x.copy(), []
    scrambled[splits[0][1]] = np.random.default_rng(1).normal(size=scrambled[splits[0][1]].shape)
    baselines.out_of_fold(baselines.LOGISTIC, scrambled, y, splits[:1], 0, chosen=again)
    assert again[0] == chosen[0]
    # pooled over folds that chose different C, its scores are logits on their training samples' scale
    # (C=0.001 keeps every probability near 0.5: pooled as they were, Gefitinib's AUROC fell 0.789 -> 0.715)
    scaled = baselines.fit_predict(baselines.LOGISTIC, x, y, x, 0, on_training_scale=True)
    assert abs(scaled.mean()) < 1e-6 and scaled.std() == pytest.approx(1, abs=1e-6)
    assert roc_auc_score(y, scaled) == pytest.approx(roc_auc_score(y, baselines.fit_predict(baselines.LOGISTIC, x, y, x, 0)))
    # too few samples of a class for an inner CV: the heads' C, said as not tuned
    assert baselines.choose_c(x[:3], np.array([0, 1, 1]), 0) == {"c": 0.01, "inner_folds": 0, "inner_auroc": {}}


def test_original_head_is_still_available(tmp_path):
    bulk, labels, target = synthetic()
    bundle, rep = _train(tmp_path, bulk, labels, target, settings=TINY_SCATD, target_label_column="response",
                         target_resistant_value=0)
    assert bundle.architecture.members is None and bundle.manifest["architecture"]["head_dim"] == 2
    assert 1 <= rep["cv"]["head_epochs"] <= TINY.epochs and rep["cv"]["finetune_epochs"] == TINY.finetune_epochs
    assert len(rep["refit"]["loss"]) == rep["cv"]["head_epochs"] + TINY.finetune_epochs
    assert "original drug head" in rep["card"]["model"]["description"]
    # the card says the bulk CV epochs were chosen on the other folds (and which, per fold)
    assert len(rep["cv"]["fold_head_epochs"]) == rep["cv"]["folds"] == 3
    assert all(1 <= e <= TINY.epochs for e in rep["cv"]["fold_head_epochs"])
    bulk_cv = next(ev for ev in rep["card"]["evaluations"] if ev["name"] == "bulk_cv")
    assert bulk_cv["note"].startswith("Head epochs chosen on the other folds") and bulk_cv["note"] in card_lines(rep["card"])
    assert rep["card"]["evaluations"][0]["scores"][0]["auroc"] == pytest.approx(rep["cv"]["oof_auroc"], abs=1e-4)
    assert {ev["name"] for ev in rep["card"]["evaluations"]} == {"bulk_cv", "target"}
    predict(target, load_bundle(bundle.path), device="cpu")
    np.testing.assert_allclose(target.obs["scatd_prob_resistant"], rep["target_predictions"]["prob_resistant"],
                               atol=1e-6)
    assert "scatd_prob_resistant_sd" not in target.obs  # one model: no spread in mean mode


def shifted_target(n_cells=60, seed=1):
    """Target counts whose resistance program is on other genes than the bulk's (G10-G14), so a
    bulk-only model cannot rank them and a few labelled target cells must."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(N_GENES)]
    yt = rng.integers(0, 2, n_cells)
    program = (np.arange(N_GENES) >= 10) & (np.arange(N_GENES) < 15)
    counts = rng.poisson(np.exp(1.0 + 1.2 * yt[:, None] * program)).astype(np.float32)
    counts[:, 7] += 1
    return ad.AnnData(counts, obs=pd.DataFrame({"response": 1 - yt}, index=[f"cell{i}" for i in range(n_cells)]),
                      var=pd.DataFrame(index=genes))


def _few_labels(target, k=5):
    """k labelled cells per class (the first ones of each), as a Series cell -> sensitive/resistant."""
    resistant = target.obs_names[target.obs["response"].to_numpy() == 0][:k]
    sensitive = target.obs_names[target.obs["response"].to_numpy() == 1][:k]
    return pd.Series(["resistant"] * k + ["sensitive"] * k, index=list(resistant) + list(sensitive))


def test_few_labelled_cells_train_semi_supervised_and_are_left_out_of_the_evaluation(tmp_path):
    bulk, labels, _ = synthetic()
    target = shifted_target()
    few = _few_labels(target)
    _, rep0 = _train(tmp_path, bulk, labels, target, "bulk_only", target_label_column="response",
                     target_resistant_value=0)
    bundle, rep = _train(tmp_path, bulk, labels, target, target_label_column="response", target_resistant_value=0,
                         few_shot_labels=few)
    ev0 = next(e for e in rep0["card"]["evaluations"] if e["name"] == "target")
    ev = next(e for e in rep["card"]["evaluations"] if e["name"] == "target")
    assert ev0["n"] == 60 and ev["n"] == 50 and "not used for training" in ev["title"]
    scores = {r["model"]: r["auroc"] for r in ev["scores"]}
    assert set(scores) == {"this model", "logistic regression (C tuned by inner CV, balanced)",
                           "gradient boosting (HistGradientBoosting, balanced)",
                           "logistic regression, heads' C (C=0.01, balanced)",
                           "logistic regression on the labelled target cells alone (10 cells)",
                           "the same recipe without the labelled cells"}
    assert scores["the same recipe without the labelled cells"] < 0.7  # the bulk cannot rank these cells
    assert scores["this model"] > 0.85 and scores["this model"] > scores["the same recipe without the labelled cells"] + 0.2
    assert rep["card"]["data"]["few_shot"] == {"n": 10, "n_resistant": 5, "n_sensitive": 5, "cell_ids_recorded": True}
    assert rep["metrics"]["target"]["n_few_shot_cells_left_out"] == 10
    assert rep["metrics"]["target"]["n_training_cells_left_out"] == 10
    # the target predictions mark the labelled cells the model was trained on (to leave out of any evaluation)
    pred = rep["target_predictions"]
    assert sorted(pred.loc[pred["used_for_training"], "cell_id"]) == sorted(few.index)
    assert any("Their cell IDs are recorded with the model (as hashes keyed" in line for line in card_lines(rep["card"]))
    # the model records which cells trained it, and on which target
    from scatd_core import training_cells

    record = load_bundle(bundle.path).manifest["few_shot"]
    assert record["target"]["n_cells"] == 60 and "cell_ids" not in record  # keyed hashes, not the IDs
    assert training_cells.recorded_cells(record, target.obs_names).sum() == len(few) == record["n"]
    assert record["target"]["cell_names_sha256"] == training_cells.names_sha256(target.obs_names)
    # the saved model is what `scatd predict` runs
    cells = target.copy()
    predict(cells, load_bundle(bundle.path), device="cpu")
    np.testing.assert_allclose(cells.obs["scatd_prob_resistant"], rep["target_predictions"]["prob_resistant"],
                               atol=1e-6)
    # evaluated against the target's labels, it leaves its training cells out, as its card did
    from scatd_core.labels import set_label_direction
    from scatd_core.metrics import evaluate_column

    set_label_direction(cells, "response", 0)
    evaluation = evaluate_column(cells, "response")[0]
    assert evaluation.n_evaluated == 50 and evaluation.n_training_left_out == 10
    assert evaluation.auroc == pytest.approx(rep["metrics"]["target"]["auroc"], abs=1e-4)
    assert "10 labelled cells of 'response' were left out" in evaluation.notes[0]


def test_few_shot_label_errors_are_clear(tmp_path):
    from scatd_core.labels import few_shot_from_column, read_few_shot_labels, set_label_direction

    bulk, labels, target = synthetic()
    one_class = pd.Series(["resistant"] * 4 + ["sensitive"], index=[f"cell{i}" for i in range(5)])
    with pytest.raises(InputError, match="at least 2 of each"):
        _train(tmp_path, bulk, labels, target, few_shot_labels=one_class)
    unknown = pd.Series(["resistant", "resistant", "sensitive", "sensitive"], index=["x1", "x2", "x3", "x4"])
    with pytest.raises(InputError, match="None of the 4 labelled cells"):
        _train(tmp_path, bulk, labels, target, few_shot_labels=unknown)
    with pytest.raises(InputError, match="default linear head"):
        _train(tmp_path, bulk, labels, target, settings=TINY_SCATD, few_shot_labels=_few_labels(target, 2))
    (tmp_path / "bad.csv").write_text("cell_id,label\ncell1,resistant\ncell2,maybe\n")
    with pytest.raises(InputError, match="'maybe'"):
        read_few_shot_labels(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("cell_id,label\ncell1,resistant\ncell1,sensitive\n")
    with pytest.raises(InputError, match="twice"):
        read_few_shot_labels(tmp_path / "dup.csv")
    (tmp_path / "ok.csv").write_text("cell_id,label\ncell1,Resistant\ncell2,resistant\ncell3,\ncell4,SENSITIVE\n"
                                     "cell5,sensitive\n")
    assert read_few_shot_labels(tmp_path / "ok.csv").to_dict() == {
        "cell1": "resistant", "cell2": "resistant", "cell4": "sensitive", "cell5": "sensitive"}
    # in the app: a column with blanks for the unlabelled cells, read with its direction
    cells = target.copy()
    cells.obs["some"] = pd.Series([0, 0, 1, 1] + [None] * (cells.n_obs - 4), index=cells.obs_names, dtype=object)
    set_label_direction(cells, "some", 0)
    assert few_shot_from_column(cells, "some").to_dict() == {"cell0": "resistant", "cell1": "resistant",
                                                              "cell2": "sensitive", "cell3": "sensitive"}


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    b1, r1 = _train(tmp_path, bulk, labels, target, "a", seed=3)
    b2, r2 = _train(tmp_path, bulk, labels, target, "b", seed=3)
    b3, _ = _train(tmp_path, bulk, labels, target, "c", seed=4)
    assert b1.manifest["weights_sha256"] == b2.manifest["weights_sha256"] != b3.manifest["weights_sha256"]
    np.testing.assert_array_equal(r1["target_predictions"]["prob_resistant"],
                                  r2["target_predictions"]["prob_resistant"])
    # the caller's global RNG is left alone
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _train(tmp_path, bulk, labels, target, "d", seed=3)
    assert torch.equal(torch.rand(3), expected)


def test_labels_matched_by_id_not_row_position(tmp_path):
    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    b1, _ = _train(tmp_path, bulk, labels, target, "a")
    shuffled = labels.sample(frac=1.0, random_state=1)
    extra = pd.DataFrame({"DRUGA": ["sensitive"], "OTHER": ["resistant"]}, index=["NOT-IN-BULK"])
    b2, rep = _train(tmp_path, bulk, pd.concat([shuffled, extra]), target, "b")
    assert rep["labels"]["n_labels_not_in_bulk"] == 1
    assert b1.manifest["weights_sha256"] == b2.manifest["weights_sha256"]


def _encoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.startswith(("Encoder_resblocks", "fc21", "fc22"))}


def test_encoder_frozen_in_eval_mode_and_bn_frozen_while_finetuning():
    bulk, labels, target = synthetic()
    data = prepare_training_data(bulk, labels, "DRUGA", target)
    dev = torch.device("cpu")
    vae = _new_backbone("dist_vae", data.bulk_x.shape[1], TINY)
    vae.eval()
    before = _encoder_state(vae)
    assert any(k.endswith("weight_u") for k in before) and any(k.endswith("running_mean") for k in before)
    model, _ = fit_head(vae, data.bulk_x, data.bulk_y, data.target_x, TINY, dev, head_epochs=6, finetune_epochs=0,
                        seed=0, adaptation=True)
    after = _encoder_state(model)
    assert before.keys() == after.keys()
    for k in before:  # weights, BN running statistics, spectral-norm u/v: all untouched
        assert torch.equal(before[k], after[k]), k
    assert all(torch.equal(before[k], v) for k, v in _encoder_state(vae).items())  # the backbone itself too
    # explicit fine-tuning: weights move, BatchNorm statistics still do not
    model, hist = fit_head(vae, data.bulk_x, data.bulk_y, data.target_x, TINY, dev, head_epochs=3,
                           finetune_epochs=3, seed=0, adaptation=True)
    tuned = _encoder_state(model)
    assert not torch.equal(tuned["Encoder_resblocks.0.fc.weight"], before["Encoder_resblocks.0.fc.weight"])
    for k in before:
        if "running" in k or "num_batches" in k:
            assert torch.equal(tuned[k], before[k]), k
    assert hist["mmd"][-1] > 0 and hist["mmd"][0] == 0  # MMD only in the fine-tuning epochs
    assert all(not m.training for m in model.modules())  # returned in eval mode


def test_a_drug_with_too_few_lines_of_a_class_is_refused_before_training(tmp_path):
    """QA: `scatd train --drug Daporinad` (2 sensitive lines) trained, scored a bulk AUROC of 0.95 and ticked
    "beats gradient boosting"; train-panel skipped it (--min-lines 10). Single training now refuses such a
    drug before training, with the same minimum, naming the counts."""
    from scatd_core._train_settings import MIN_LINES_PER_CLASS
    from scatd_core.train import MIN_LINES_PER_CLASS as panel_minimum

    assert MIN_LINES_PER_CLASS == panel_minimum == 10  # one constant
    bulk, labels, target = synthetic(n_bulk=40, n_cells=5, n_resistant=36)
    steps = []
    with pytest.raises(InputError, match=r"DRUGA: only 4 sensitive and 33 resistant labelled cell lines in the bulk "
                                         r"data; a model needs at least 10 of each") as caught:
        _train(tmp_path, bulk, labels, target, progress=lambda f, m: steps.append(m))
    assert "--min-lines" in caught.value.hint and "Fewest labelled cell lines per class" in caught.value.app_hint
    assert not steps and not (tmp_path / "m").exists()  # nothing trained, nothing saved
    with pytest.raises(InputError, match="at least 5 of each"):
        _train(tmp_path, bulk, labels, target, min_lines_per_class=5)


def test_target_smaller_than_batch_and_imbalanced(tmp_path):
    """With a lower minimum (4 sensitive lines), the run is allowed, but its card and result say that its bulk
    scores cannot be trusted, and no verdict says "beats" on them."""
    bulk, labels, target = synthetic(n_bulk=40, n_cells=5, n_resistant=36)
    bundle, rep = _train(tmp_path, bulk, labels, target, settings=replace(TINY, batch_size=64, folds=5),
                         min_lines_per_class=2)
    assert rep["metrics"]["cv"]["too_few_lines"] == 4
    assert any(w.startswith("Only 4 cell lines in the smaller class (4 sensitive, 33 resistant)") and
               "cannot be trusted" in w for w in rep["warnings"])
    lines = card_lines(rep["card"])
    first = next(i for i, line in enumerate(lines) if line.startswith("Bulk cell lines, "))
    assert lines[first + 2].startswith("With only 4 cell lines in the smaller class (4 sensitive, 33 resistant), "
                                       "this model's bulk cross-validation AUROC and its interval cannot be trusted")
    assert not any(line.startswith("This model beats") or " is better than this model" in line for line in lines)
    assert rep["labels"]["sensitive"] < 5  # 3 or 4 sensitive after the NA rows
    assert rep["cv"]["folds"] == rep["labels"]["sensitive"]
    assert any("folds instead of 5" in w for w in rep["warnings"])
    assert any("only 5 cells" in w for w in rep["warnings"])
    assert len(rep["target_predictions"]) == 5 and np.isfinite(rep["target_predictions"]["prob_resistant"]).all()


def test_mmd_rbf_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=g, requires_grad=True)
    y = torch.randn(3, 4, generator=g) + 2.0  # fewer target cells than bulk samples
    value = mmd_rbf(x, y)
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(x.grad).all()
    assert mmd_rbf(x.detach(), x.detach()).item() == pytest.approx(0.0, abs=1e-6)
    # the bandwidth is detached: the gradient is that of a fixed-gamma kernel
    xd = x.detach().clone().requires_grad_(True)
    z = torch.cat([xd, y])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    iu = torch.triu_indices(19, 19, 1)
    gamma = 1.0 / (2.0 * d2[iu[0], iu[1]].median().detach())
    k = torch.exp(-gamma * d2)
    (k[:16, :16].mean() + k[16:, 16:].mean() - 2 * k[:16, 16:].mean()).backward()
    torch.testing.assert_close(x.grad, xd.grad)


def test_cancel_saves_nothing(tmp_path):
    bulk, labels, target = synthetic()
    calls = []
    with pytest.raises(Cancelled):
        _train(tmp_path, bulk, labels, target, should_stop=lambda: calls.append(1) or len(calls) > 5)
    assert not (tmp_path / "m").exists()


def test_a_model_trained_on_simulated_cell_lines_is_a_demo_model(tmp_path, capsys):
    """QA: the Train page's simulated demo panel trained a model saved as real ("demo": false),
    offered for real data. Cell lines made by the simulator (its uns['simulation'] record, kept in
    an h5ad written from them, here given to `scatd train`) make a demo model, labelled so; the
    record, not the values, says so."""
    from scatd_core.cli import main as scatd_main
    from scatd_core.demo import simulate

    bulk, labels, target = synthetic()
    bulk.uns["simulation"] = simulate._provenance("simulate_bulk", 0, {})
    assert simulate.is_simulated(bulk) and not simulate.is_simulated(target)
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    target.write_h5ad(tmp_path / "target.h5ad")
    labels.to_csv(tmp_path / "labels.csv")
    assert scatd_main(["train", "--bulk", str(tmp_path / "bulk.h5ad"), "--bulk-labels", str(tmp_path / "labels.csv"),
                       "--drug", "DRUGA", "--target", str(tmp_path / "target.h5ad"), "--out", str(tmp_path / "sim"),
                       "--folds", "2", "--members", "2", "--pretrain-epochs", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    model = load_bundle(tmp_path / "sim")
    assert model.is_demo and model.title.endswith("· demo (simulated data)")
    del bulk.uns["simulation"]
    assert not simulate.is_simulated(bulk)


def test_clear_errors(tmp_path):
    bulk, labels, target = synthetic()
    other_ids = labels.set_axis([f"DATA.{i}" for i in range(len(labels))])
    with pytest.raises(InputError, match="matches the bulk data neither way round: none of its 48 row IDs"):
        _train(tmp_path, bulk, other_ids, target)
    na_for_drug = labels.copy()
    na_for_drug.loc[:, "DRUGA"] = None  # the table matches; the drug's labelled cell lines do not
    na_for_drug.loc["elsewhere", "DRUGA"] = "sensitive"
    with pytest.raises(InputError, match="None of the 1 cell lines labelled"):
        _train(tmp_path, bulk, na_for_drug, target)
    with pytest.raises(InputError, match="Close names: DRUGA"):
        train_drug_model(bulk, labels, "druggA", target, settings=TINY, out=tmp_path / "x")
    with pytest.raises(InputError, match="share only"):
        _train(tmp_path, bulk, labels, target[:, :5].copy())
    with pytest.raises(InputError, match="at least 2 of each"):
        train_drug_model(bulk, labels, "OTHER", target, settings=TINY, out=tmp_path / "x")
    with pytest.raises(InputError, match="no obs column"):
        _train(tmp_path, bulk, labels, target, target_label_column="nope")
    with pytest.raises(InputError, match="Which value of 'response' means resistant") as caught:
        _train(tmp_path, bulk, labels, target, target_label_column="response")
    assert "--target-resistant-value" in caught.value.hint and "--label-resistant" not in caught.value.hint
    with pytest.raises(InputError, match="folds"):
        _train(tmp_path, bulk, labels, target, folds=1)


def test_restricted_backbone_is_exact_on_its_genes():
    torch.manual_seed(0)
    vae = ResVAE(Architecture("dist_vae", [20, 12, 8], 5, [5, 12]))
    vae.train()
    vae(torch.randn(32, 20))  # move BN statistics and u/v away from their initial values
    vae.eval()
    keep = np.array([0, 3, 4, 9, 15, 19])
    small = _restrict_backbone(vae, keep).eval()
    x = torch.randn(7, 20)
    x_masked = torch.zeros_like(x)
    x_masked[:, keep] = x[:, keep]
    with torch.no_grad():
        torch.testing.assert_close(small.encode(x[:, keep])[0], vae.encode(x_masked)[0])
        torch.testing.assert_close(small.decode(torch.ones(2, 5)), vae.decode(torch.ones(2, 5))[:, keep])


def test_backbone_bundle_is_used_and_genes_intersected(tmp_path):
    bulk, labels, target = synthetic()
    genes = ["EXTRA1"] + [f"G{i}" for i in range(N_GENES)] + ["EXTRA2"]
    arch = Architecture("dist_vae", [len(genes), 16, 8], 4, [4, 8, 16])
    torch.manual_seed(5)
    vae = ResVAE(arch).eval()
    backbone = save_bundle(tmp_path / "bb", vae.state_dict(), arch, drug=None, genes=genes,
                           input_transform="standardize")
    msgs = []
    bundle, rep = _train(tmp_path, bulk, labels, target, backbone_bundle=backbone.path,
                         progress=lambda f, m: msgs.append(m))
    assert not any(m.startswith("Pretraining") for m in msgs)
    assert rep["genes"]["n_backbone"] == len(genes) and rep["genes"]["n_panel"] == N_GENES - 2
    assert bundle.genes == [g for g in genes if g in bundle.genes]  # backbone order
    assert rep["pretraining"]["loss"] == [[]] and bundle.architecture.members == 1  # one given backbone
    assert any("ensemble of one member" in w for w in rep["warnings"])
    _, rep = _train(tmp_path, bulk, labels, target, "scatd", settings=TINY_SCATD, backbone_bundle=backbone.path)
    assert rep["pretraining"]["loss"] == []
    assert bundle.manifest["provenance"]["backbone_bundle"]["weights_sha256"] == backbone.manifest["weights_sha256"]
    with pytest.raises(InputError, match="is a dist_vae model, not vae_sf"):
        _train(tmp_path, bulk, labels, target, "y", backbone="vae_sf", backbone_bundle=backbone.path)


def test_embedding_backbone_adain_parity(tmp_path):
    rng = np.random.default_rng(0)
    bulk, labels, _ = synthetic()
    emb_bulk = ad.AnnData(rng.normal(0.0, 1.0, (bulk.n_obs, 12)).astype(np.float32), obs=bulk.obs.copy())
    emb_target = ad.AnnData(rng.normal(2.0, 3.0, (25, 12)).astype(np.float32),
                            obs=pd.DataFrame(index=[f"c{i}" for i in range(25)]))
    bundle, rep = train_drug_model(emb_bulk, labels, "DRUGA", emb_target, backbone="vae_sf", settings=TINY,
                                   out=tmp_path / "sf", device="cpu")
    assert bundle.style_mean is not None and bundle.manifest["input_transform"] == "none"
    predict(emb_target, load_bundle(bundle.path), device="cpu")
    np.testing.assert_allclose(emb_target.obs["scatd_prob_resistant"].to_numpy(),
                               rep["target_predictions"]["prob_resistant"].to_numpy(), atol=1e-6)


def _parser():
    parser = argparse.ArgumentParser(prog="scatd")
    sub = parser.add_subparsers(dest="command")
    cli_train.add(sub)
    cli_labels.add(sub)
    return parser


def test_cli_labels_from_ic50_then_train_then_predict(tmp_path, capsys):
    from scatd_core.cli import main as scatd_main

    bulk, labels, target = synthetic()
    # ln(IC50) that reproduces the labels with threshold 0 (NA where the label is missing)
    ic50 = labels["DRUGA"].map({"sensitive": -1.0, "resistant": 1.0})
    pd.DataFrame([ic50.to_numpy()], index=["GDSC:77"], columns=labels.index).to_csv(tmp_path / "ic50.csv")
    (tmp_path / "thr.txt").write_text("Druga\n0.0\n")
    pd.DataFrame({"drug_id": [77], "Name": ["DrugA"], "Synonyms": [""]}).to_csv(tmp_path / "list.csv", index=False)
    p = _parser()
    args = p.parse_args(["labels-from-ic50", "--ic50", str(tmp_path / "ic50.csv"), "--thresholds",
                         str(tmp_path / "thr.txt"), "--drug-list", str(tmp_path / "list.csv"),
                         "--out", str(tmp_path / "labels.csv")])
    assert args.run(args) == 0
    written = pd.read_csv(tmp_path / "labels.csv", index_col=0)
    assert written["DrugA"].fillna("NA").tolist() == labels["DRUGA"].fillna("NA").tolist()

    pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names).to_csv(tmp_path / "bulk.csv")
    tdf = pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names)
    tdf.insert(0, "response", target.obs["response"].to_numpy())
    tdf.to_csv(tmp_path / "target.csv")
    args = p.parse_args(["train", "--bulk", str(tmp_path / "bulk.csv"), "--bulk-labels", str(tmp_path / "labels.csv"),
                         "--drug", "DRUGA", "--target", str(tmp_path / "target.csv"), "--out", str(tmp_path / "bundle"),
                         "--folds", "3", "--members", "2", "--pretrain-epochs", "3",
                         "--target-labels", "response", "--target-resistant-value", "0", "--device", "cpu",
                         "--report", str(tmp_path / "report.json"),
                         "--target-predictions", str(tmp_path / "train_pred.csv")])
    assert args.run(args) == 0
    out, err = capsys.readouterr()
    assert "Trained 'DrugA (VAE on genes, trained)'" in out and "Gene panel: 28 genes" in err
    assert "Model card:" in err and "Target cells ('response', labels used for evaluation only)" in err
    assert "logistic regression (c tuned by inner cv, balanced)" in err.lower()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cv"]["folds"] == 3 and "target_predictions" not in report
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest["provenance"]["labels"]["file"] == "labels.csv"
    # labels-from-ic50's provenance file beside the table: found, said, and its threshold recorded
    assert "Found labels.provenance.json beside labels.csv: the labels were built by scatd labels-from-ic50" in err
    assert bundle.manifest["provenance"]["labels"]["from_ic50"]["threshold"] == 0.0

    code = scatd_main(["predict", "--model", str(tmp_path / "bundle"), "--input", str(tmp_path / "target.csv"),
                       "--output", str(tmp_path / "pred.csv"), "--device", "cpu"])
    assert code == 0
    pred = pd.read_csv(tmp_path / "pred.csv")
    train_pred = pd.read_csv(tmp_path / "train_pred.csv")
    assert list(pred["cell_id"]) == list(train_pred["cell_id"])
    np.testing.assert_allclose(pred["prob_resistant"], train_pred["prob_resistant"], atol=1e-6)
    assert pred["prob_resistant_sd"].notna().all() and not pred["calibrated"].any()
    assert sorted(pred["rank"]) == list(range(1, len(pred) + 1))

    # a few labelled target cells, from a CSV of only those cells; the original head by name
    resistant = [c for c, r in zip(target.obs_names, target.obs["response"]) if r == 0][:3]
    sensitive = [c for c, r in zip(target.obs_names, target.obs["response"]) if r == 1][:3]
    pd.DataFrame({"cell_id": resistant + sensitive, "label": ["resistant"] * 3 + ["sensitive"] * 3}).to_csv(
        tmp_path / "few.csv", index=False)
    common = ["train", "--bulk", str(tmp_path / "bulk.csv"), "--bulk-labels", str(tmp_path / "labels.csv"),
              "--drug", "DRUGA", "--target", str(tmp_path / "target.csv"), "--folds", "3", "--pretrain-epochs", "3",
              "--target-labels", "response", "--target-resistant-value", "0", "--device", "cpu"]
    args = p.parse_args(common + ["--members", "2", "--few-shot-labels", str(tmp_path / "few.csv"),
                                  "--out", str(tmp_path / "few_bundle")])
    assert args.run(args) == 0
    _, err = capsys.readouterr()
    assert "Target cells whose labels were not used for training ('response') (34 samples" in err
    assert "logistic regression on the labelled target cells alone (6 cells)" in err.lower()
    assert "6 labelled target cells (3 resistant, 3 sensitive) trained it" in err
    assert load_bundle(tmp_path / "few_bundle").manifest["provenance"]["few_shot_labels"]["file"] == "few.csv"
    # its report on the same cells leaves the 6 out and says so, in the output and in metrics.csv
    code = scatd_main(["report", "--model", str(tmp_path / "few_bundle"), "--input", str(tmp_path / "target.csv"),
                       "--label-column", "response", "--label-resistant", "0", "--no-umap", "--device", "cpu",
                       "--out", str(tmp_path / "few_report")])
    _, err = capsys.readouterr()
    assert code == 0 and "Against 'response' (34 cells)" in err
    assert "note: 6 labelled cells of 'response' were left out of this evaluation" in err
    table = pd.read_csv(tmp_path / "few_report" / "metrics.csv")
    rows = dict(zip(table["metric"], table["value"]))
    assert rows["n_training_cells_left_out"] == "6" and "their labels trained the model" in rows["training_cells"]
    args = p.parse_args(common + ["--head", "scatd", "--epochs", "4", "--finetune-epochs", "2",
                                  "--out", str(tmp_path / "scatd_bundle")])
    assert args.run(args) == 0
    assert load_bundle(tmp_path / "scatd_bundle").architecture.members is None

    # --target-mask: a boolean column of the target says which cells to use (the app's scatd_qc_pass)
    tdf.insert(0, "scatd_qc_pass", np.arange(len(tdf)) % 5 != 0)
    tdf.to_csv(tmp_path / "target_qc.csv")
    masked = [a if a != str(tmp_path / "target.csv") else str(tmp_path / "target_qc.csv") for a in common]
    args = p.parse_args(masked + ["--members", "2", "--target-mask", "scatd_qc_pass", "--out", str(tmp_path / "qc_b"),
                                  "--report", str(tmp_path / "qc_report.json")])
    assert args.run(args) == 0
    _, err = capsys.readouterr()
    assert "32 target cells (target_qc.csv; 8 cells filtered (QC) left out)" in err
    assert json.loads((tmp_path / "qc_report.json").read_text())["metrics"]["target"]["n_evaluated"] == 32
    args = p.parse_args(masked + ["--target-mask", "qc", "--out", str(tmp_path / "qc_b2")])
    with pytest.raises(InputError, match="no obs column 'qc' to use as the mask"):
        args.run(args)


def test_cli_bad_arguments_are_clean(tmp_path, capsys):
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--bulk", "b", "--bulk-labels", "l", "--drug", "d", "--target", "t", "--folds", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_default_folder_is_unique_when_two_trainings_race(tmp_path, monkeypatch):
    """Two users training the same drug at once: the second must not write into the first's folder.
    The free name is chosen under the library lock when the bundle is written, so a folder taken
    after training started (here: before the write) pushes this model to the next free name."""
    from scatd_core.train import _run

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    taken = tmp_path / "lib" / "DRUGA_dist_vae_trained"
    real = _run._default_out

    def racing(drug, backbone, library):
        out = real(drug, backbone, library)
        out.mkdir(parents=True)  # someone else's training finished first, under the same name
        (out / "theirs.txt").write_text("another user's model")
        return out

    monkeypatch.setattr(_run, "_default_out", racing)
    bundle, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=tmp_path / "lib",
                                 settings=replace(TINY, members=1, pretrain_epochs=1))
    assert bundle.path == taken.with_name(taken.name + "-2")
    assert (taken / "theirs.txt").read_text() == "another user's model"  # untouched


def test_a_bulk_with_lowercase_gene_symbols_is_read_with_its_cell_lines_as_rows(tmp_path):
    """QA: a bulk CSV with DepMap ACH- rows and lowercase gene symbols (lasp1, hoxa11...) was read as genes x
    samples, and the error blamed the label table. ACH- IDs are cell lines and symbols are recognised in any
    case; a label table that still matches neither way is told how the bulk was read, and when its IDs are the
    bulk's gene names, that the bulk file holds its samples as columns."""
    from scatd_core import io

    bulk, labels, target = synthetic()
    symbols = ("lasp1 hoxa11 crebbp etv1 gas7 cd79b pax7 btk brca1 wwtr1 cd74 birc3 fas bclaf1 ank1 rabep1 cul3 flt4 "
               "cdh1 cdh10 tnc epha3 prex2 tpr gopc ros1 eln arid1b polq pik3cb").split()
    lower = pd.DataFrame(bulk.X, index=bulk.obs_names, columns=symbols)
    lower.to_csv(tmp_path / "bulk_lower.csv")
    read = io.read(tmp_path / "bulk_lower.csv", samples=True)
    assert list(read.obs_names[:2]) == ["ACH-000000", "ACH-000001"] and read.var_names[0] == "lasp1"
    assert "cell-line IDs" in read.uns["scatd_input"]["orientation_reason"]
    lower.index = [f"line_{chr(97 + i % 26)}{i}" for i in range(len(lower))]  # no cell-line IDs: by the symbols
    lower.to_csv(tmp_path / "bulk_lower2.csv")
    assert io.read(tmp_path / "bulk_lower2.csv", samples=True).var_names[0] == "lasp1"
    cased = target[:, :12].copy()
    cased.var_names = [g.upper() for g in symbols[:12]]
    with pytest.raises(InputError, match=r"share only 0 genes .*; ignoring case they would share 12\.") as caught:
        prepare_training_data(read, labels, "DRUGA", cased)
    assert "write both sides' gene symbols in upper case" in caught.value.hint and "mouse" not in caught.value.hint
    mouse = target[:, :12].copy()  # QA: mouse-style symbols (Lasp1) in the target: orthologues, never "the target's case"
    mouse.var_names = [g.capitalize() for g in symbols[:12]]
    with pytest.raises(InputError, match=r"ignoring case they would share 12\.") as caught:
        prepare_training_data(read, labels, "DRUGA", mouse)
    assert "look like mouse symbols (e.g. Lasp1, Hoxa11, Crebbp)" in caught.value.hint
    assert "human orthologues" in caught.value.hint
    flipped = ad.AnnData(bulk.X.T.copy(), obs=pd.DataFrame(index=bulk.var_names), var=pd.DataFrame(index=bulk.obs_names))
    with pytest.raises(InputError, match="neither way round") as caught:
        prepare_training_data(flipped, labels, "DRUGA", target)
    assert ("The bulk data were read with its 30 rows as samples (e.g. G0, G1, G2) and its 48 columns as genes (e.g. "
            "ACH-000000, ACH-000001, ACH-000002). The label table's cell-line IDs are among its genes instead (e.g. "
            "ACH-000000, ACH-000001, ACH-000002): the bulk file holds the samples as columns.") in caught.value.message


def test_a_taken_default_name_gets_a_number_and_a_taken_display_name_is_refused(tmp_path):
    """QA: an empty Model name, with the default name taken, made a second model of the very same name (in
    folder ..._trained-3). The default name now gets a number; a name given that another folder's model has
    is refused before training, as documented."""
    from scatd_core.bundle import NameTaken

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    labels.iloc[1:3, 0] = ["resistant", "sensitive"]  # one bulk sample without a label: said in the singular
    lib = tmp_path / "lib"
    (lib / "an_earlier_one").mkdir(parents=True)  # a model of the default name, in another folder
    (lib / "an_earlier_one" / "manifest.json").write_text(json.dumps({"name": "DRUGA (VAE on genes, trained)"}))
    steps = []
    with pytest.raises(NameTaken, match=r"A model named 'druga \(VAE on genes, trained\)' already exists"):
        train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, settings=TINY,
                         name="druga (VAE on genes, trained)", progress=lambda f, m: steps.append(m))
    assert not steps  # refused before any training
    bundle, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib,
                                 settings=replace(TINY, members=1, pretrain_epochs=1))
    assert bundle.name == "DRUGA (VAE on genes, trained) 2" and bundle.path.name == "DRUGA_dist_vae_trained"
    assert "; 1 bulk sample without a label for it, used for pretraining only" in \
        bundle.manifest["card"]["data"]["summary"]


def test_ctrl_c_says_what_it_left(tmp_path, monkeypatch, capsys):
    """QA: Ctrl-C on `scatd train` said only "interrupted": it says that no model was saved."""
    from scatd_core.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("scatd_core.train.train_drug_model", interrupted)
    assert main(_cli_train_args(tmp_path) + ["--library", str(tmp_path / "lib")]) == 130
    assert capsys.readouterr().err.rstrip().endswith("interrupted: no model was saved.")
    monkeypatch.setattr("scatd_core.train.train_panel", interrupted)
    panel = ["train-panel", "--bulk", str(tmp_path / "bulk.csv"), "--bulk-labels", str(tmp_path / "labels.csv"),
             "--drugs", "DRUGA", "--target", str(tmp_path / "target.csv"), "--library", str(tmp_path / "lib")]
    assert main(panel) == 130
    assert capsys.readouterr().err.rstrip().endswith("interrupted: the drugs' models finished before it are in the "
                                                     "model library; run the same command again to resume (they are "
                                                     "kept).")


def test_a_display_name_names_the_library_folder_and_a_taken_one_is_refused_before_training(tmp_path, capsys):
    """As `scatd import-checkpoint`: the folder follows --name, so the name is what --model takes."""
    from scatd_core.bundle import NameTaken
    from scatd_core.cli import main as scatd_main

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    quick = replace(TINY, members=1, pretrain_epochs=1)
    lib = tmp_path / "lib"
    bundle, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="gef_small",
                                 settings=quick)
    assert bundle.path == lib / "gef_small" and bundle.name == "gef_small"
    spaced, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="Gef small",
                                 settings=quick)
    assert spaced.path.parent == lib and spaced.path.name.startswith("Gef_small-") and spaced.name == "Gef small"
    steps = []
    with pytest.raises(NameTaken, match="A model named 'gef_small' already exists") as info:
        train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="gef_small", settings=quick,
                         progress=lambda f, m: steps.append(m))
    assert not steps and "another --name" in info.value.hint  # refused before any training
    # the panel trainer's made-up names keep the default folders
    panel, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, settings=quick,
                                name="DRUGA (VAE on genes, panel)", folder_from_name=False)
    assert panel.path.name == "DRUGA_dist_vae_trained"

    # the CLI: what `scatd train --name` says is what `scatd predict --model` and `scatd models` take
    pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names).to_csv(tmp_path / "bulk.csv")
    labels.to_csv(tmp_path / "labels.csv")
    pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names).to_csv(tmp_path / "target.csv")
    capsys.readouterr()
    code = scatd_main(["train", "--bulk", str(tmp_path / "bulk.csv"), "--bulk-labels", str(tmp_path / "labels.csv"),
                       "--drug", "DRUGA", "--target", str(tmp_path / "target.csv"), "--folds", "3", "--members", "1",
                       "--pretrain-epochs", "1", "--device", "cpu", "--library", str(lib), "--name", "gef_cli"])
    out, err = capsys.readouterr()
    assert code == 0 and "Trained 'gef_cli'" in out and "Use it with --model gef_cli " in err
    assert err.count("share only") == 1  # the small gene panel, said when found; not again with the card
    code = scatd_main(["predict", "--model", "gef_cli", "--library", str(lib), "--input", str(tmp_path / "target.csv"),
                       "--output", str(tmp_path / "pred.csv"), "--device", "cpu"])
    assert code == 0 and len(pd.read_csv(tmp_path / "pred.csv")) == 20
    assert scatd_main(["models", "--library", str(lib)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("FOLDER (what --model takes)\tNAME")
    assert any(line.startswith("gef_cli\tgef_cli\t") for line in listing)
    assert any(line.startswith(f"{spaced.path.name}\tGef small\t") for line in listing)
    assert scatd_main(["models", "card", "gef_cli", "--library", str(lib)]) == 0  # the name as given, nothing added
    assert capsys.readouterr().out.splitlines()[0] == "Model card: gef_cli (gef_cli)"


def test_a_named_training_replaces_or_is_refused_by_a_folder_that_differs_only_by_case(tmp_path):
    """QA: with Cisplatin_demo in the library, a training named 'cisplatin_demo' with overwrite was refused, and
    without it (the model there having another display name) was trained and saved as a second folder
    cisplatin_demo-2 beside it (one folder on a macOS or Windows disk). Now overwrite replaces that model, in its
    folder; without it the name is refused before any training, as an existing folder's is."""
    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    quick = replace(TINY, members=1, pretrain_epochs=1)
    lib = tmp_path / "lib"
    first, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="Cisplatin_demo",
                                settings=quick)
    manifest = first.path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "name": "Cisplatin (demo)"}))
    steps = []
    with pytest.raises(NameTaken, match="folder Cisplatin_demo already holds a model") as info:
        train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="cisplatin_demo",
                         settings=quick, progress=lambda f, m: steps.append(m))
    assert not steps and "another --name" in info.value.hint  # refused before any training

    replaced, _ = train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="cisplatin_demo",
                                   settings=quick, seed=1, overwrite=True)
    assert replaced.path == first.path and replaced.name == "cisplatin_demo"
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == ["Cisplatin_demo"]
    assert load_bundle(first.path).manifest["provenance"]["seed"] == 1


def test_scatd_train_replace_replaces_the_named_model_in_its_folder_and_says_which(tmp_path, capsys):
    """QA: `scatd train --name X` with X in the library was refused and the command line had no way to replace it
    (only the app's Models page could). --replace replaces it, as the app's 'Replace a model of the same name'
    does: in its folder, also one whose name differs only by case, and says which model it replaced; the refusal
    without it says --replace. --replace is for a named model only (without --name the folder is a new one)."""
    from scatd_core.cli import main as scatd_main

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names).to_csv(tmp_path / "bulk.csv")
    labels.to_csv(tmp_path / "labels.csv")
    pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names).to_csv(tmp_path / "target.csv")
    lib = tmp_path / "lib"
    common = ["train", "--bulk", str(tmp_path / "bulk.csv"), "--bulk-labels", str(tmp_path / "labels.csv"),
              "--drug", "DRUGA", "--target", str(tmp_path / "target.csv"), "--folds", "3", "--members", "1",
              "--pretrain-epochs", "1", "--device", "cpu", "--library", str(lib)]
    assert scatd_main(common + ["--name", "Cisplatin_demo"]) == 0
    first = load_bundle(lib / "Cisplatin_demo")
    capsys.readouterr()
    assert scatd_main(common + ["--name", "cisplatin_demo", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "(folder Cisplatin_demo)" in err and "add --replace" in err and "Model card" not in err, err
    assert load_bundle(lib / "Cisplatin_demo").manifest["model_id"] == first.manifest["model_id"]
    assert scatd_main(common + ["--name", "cisplatin_demo", "--seed", "1", "--replace"]) == 0
    out, err = capsys.readouterr()
    assert "Replaced the model 'Cisplatin_demo' (folder Cisplatin_demo)" in out + err, out + err
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == ["Cisplatin_demo"]
    now = load_bundle(lib / "Cisplatin_demo")
    assert now.name == "cisplatin_demo" and now.manifest["model_id"] != first.manifest["model_id"]
    assert scatd_main(common + ["--replace"]) == 2  # no --name: nothing it could replace
    assert "--replace replaces the model of --name" in capsys.readouterr().err
    help_text = " ".join(cli_train_help().split())
    assert "a model of the library is replaced only with --replace" in help_text


def test_replace_says_when_it_cannot_replace_a_model_of_the_name(tmp_path):
    """--replace replaces the model in the name's own folder (or the one differing only by case); a model of that
    display name in another folder (one trained without a name, say) is refused even with --replace, and the
    refusal names its folder and how to remove it, not --replace as a way out."""
    from scatd_core.train._run import _named_out

    lib = tmp_path / "lib"
    for folder, name in (("Other_run", "My run"), ("Cisplatin_demo", "Cisplatin_demo")):
        (lib / folder).mkdir(parents=True)
        (lib / folder / "manifest.json").write_text(json.dumps({"name": name}))
    with pytest.raises(NameTaken, match=r"'My run' already exists in the model library \(folder Other_run\)") as info:
        _named_out("My run", lib, overwrite=True)
    assert "--replace would not replace it" in info.value.hint
    assert "scatd models remove Other_run --yes" in info.value.hint
    with pytest.raises(NameTaken) as info:
        _named_out("cisplatin_demo", lib, overwrite=False)  # the case-variant folder's own model: --replace does it
    assert "add --replace (in its folder Cisplatin_demo" in info.value.hint
    assert _named_out("cisplatin_demo", lib, overwrite=True) == lib / "Cisplatin_demo"


def cli_train_help() -> str:
    import contextlib
    import io

    from scatd_core.cli import main as scatd_main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        scatd_main(["train", "--help"])
    return buf.getvalue()


def test_a_training_never_takes_the_names_the_published_install_keeps(tmp_path):
    """As imports: no trained model gets a DRUG_backbone_published folder, a 'published scATD'
    display name, or the published docetaxel model's own folder for another drug; refused before
    any training. A docetaxel Dist_VAE model may take DOCETAXEL_dist_vae, as an import of it may."""
    from scatd_core.errors import InputError

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    quick = replace(TINY, members=1, pretrain_epochs=1)
    lib = tmp_path / "lib"
    for name in ("DOCETAXEL_dist_vae_published", "Mine (published scATD)", "DOCETAXEL_dist_vae"):
        steps = []
        with pytest.raises(InputError, match="Nothing was trained") as info:
            train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name=name, settings=quick,
                             progress=lambda f, m: steps.append(m))
        assert not steps and "another --name" in info.value.hint
    assert not lib.exists() or not any(lib.iterdir())
    bundle, _ = train_drug_model(bulk, labels.rename(columns={"DRUGA": "DOCETAXEL"}), "DOCETAXEL", target,
                                 device="cpu", library=lib, name="DOCETAXEL_dist_vae", settings=quick)
    assert bundle.path.name == "DOCETAXEL_dist_vae"


def test_a_display_name_given_to_model_names_its_folder(tmp_path, capsys):
    """A model trained before the folder followed the name: --model NAME says which folder to give."""
    from scatd_core.cli import main as scatd_main

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    lib = tmp_path / "lib"
    train_drug_model(bulk, labels, "druga", target, device="cpu", library=lib, name="old_name", folder_from_name=False,
                     settings=replace(TINY, members=1, pretrain_epochs=1))
    pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names).to_csv(tmp_path / "target.csv")
    code = scatd_main(["predict", "--model", "old_name", "--library", str(lib), "--input", str(tmp_path / "target.csv"),
                       "--output", str(tmp_path / "pred.csv"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "'old_name' is the display name of the model in folder DRUGA_dist_vae_trained" in err
    assert "--model DRUGA_dist_vae_trained" in err


# --------------------------------------------------------------------------- the original head's CV estimate

def _smoothed_argmax(curves) -> int:
    """The test's own account of the selection rule: 1 + argmax of the fold-mean curve averaged
    over a centred window of 5 epochs (shrinking at the ends)."""
    mean = np.nanmean(np.array(curves, dtype=float), axis=0)
    smooth = [np.nanmean(mean[max(0, i - 2):i + 3]) for i in range(len(mean))]
    return int(np.nanargmax(smooth)) + 1


@pytest.mark.parametrize("finetune_epochs", [0, 3])
def test_original_head_cv_takes_each_folds_epochs_from_the_other_folds(monkeypatch, finetune_epochs):
    """The head epochs that score fold k are the argmax of the OTHER folds' mean validation curve,
    never chosen on fold k's own labels; the reported out-of-fold AUROC is that of those
    predictions. Labels are permuted (independent of the genes), where selection shows most."""
    from scatd_core.metrics import auroc
    from scatd_core.train import _cv

    bulk, labels, target = synthetic()
    data = prepare_training_data(bulk, labels, "DRUGA", target)
    data.bulk_y = np.random.default_rng(6).permutation(data.bulk_y)
    s = replace(TINY_SCATD, epochs=12, finetune_epochs=finetune_epochs, folds=4, seed=1)
    calls, real = [], _cv.fit_head

    def recording(*args, **kw):
        model, hist = real(*args, **kw)
        calls.append((kw["head_epochs"], hist))
        return model, hist

    monkeypatch.setattr(_cv, "fit_head", recording)
    vae = _new_backbone("dist_vae", data.bulk_x.shape[1], s)
    cv = _cv.cross_validate(vae.eval(), data, s, torch.device("cpu"), adaptation=True)
    splits = _cv.cv_splits(data.bulk_y, s)
    head_pass = [hist for _e, hist in calls[:s.folds]]
    curves = [h["val_auroc"] for h in head_pass]
    expected = [_smoothed_argmax([c for j, c in enumerate(curves) if j != k]) for k in range(s.folds)]
    assert cv["fold_head_epochs"] == expected
    assert cv["head_epochs"] == _smoothed_argmax(curves)  # the final model's: all folds
    assert any(e != cv["head_epochs"] for e in expected)  # the case that tells the two apart
    oof = cv["oof"]
    for k, (_tr, va) in enumerate(splits):
        if finetune_epochs == 0:
            np.testing.assert_array_equal(oof[va], head_pass[k]["val_prob"][expected[k] - 1])
        else:  # the whole procedure, retrained with fold k's own epochs
            head_epochs, hist = calls[s.folds + k]
            assert head_epochs == expected[k] and len(hist["val_prob"]) == expected[k] + finetune_epochs
            np.testing.assert_array_equal(oof[va], hist["val_prob"][-1])
        assert cv["per_fold"][k]["head_epochs"] == expected[k]
    assert len(calls) == s.folds * (1 if finetune_epochs == 0 else 2)  # no extra training
    assert cv["oof_auroc"] == auroc(data.bulk_y, oof)
    assert "other folds" in cv["selection"] and "other folds" in cv["note"]


def test_original_head_cv_estimate_is_not_selected_on_noise(monkeypatch):
    """Heads whose validation scores are pure noise (independent of the labels): the out-of-fold
    AUROC averages 0.5. Taking every fold at the epoch that maximised the fold-mean AUROC (the
    old estimate) averaged ~0.55 here."""
    from scatd_core.metrics import _fast_auroc
    from scatd_core.train import _cv

    rng = np.random.default_rng(0)

    def noise_head(vae, x, y, target_x, s, device, *, head_epochs, finetune_epochs, val, **_kw):
        n_epochs = head_epochs + finetune_epochs
        walk = np.cumsum(rng.normal(size=(n_epochs, len(val[1]))), axis=0)  # scores drifting over epochs
        probs = list(1.0 / (1.0 + np.exp(-0.3 * walk)))
        return None, {"loss": [0.0] * n_epochs, "mmd": [0.0] * n_epochs, "val_prob": probs,
                      "val_auroc": [_fast_auroc(val[1], p) for p in probs]}

    monkeypatch.setattr(_cv, "fit_head", noise_head)
    s = replace(TINY_SCATD, epochs=20, finetune_epochs=0, folds=5)
    y = np.repeat([0, 1], 30)
    estimates = []
    for rep in range(60):
        data = argparse.Namespace(bulk_x=np.zeros((len(y), 1), np.float32), bulk_y=rng.permutation(y),  # labels only
                                  target_x=None)
        estimates.append(_cv.cross_validate(None, data, replace(s, seed=rep), torch.device("cpu"),
                                            adaptation=False)["oof_auroc"])
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(mean - 0.5) < 3 * se + 0.005, (mean, se)


def test_fold_epochs_edge_cases():
    from scatd_core.train._cv import fold_epochs

    peak = lambda at, n=12: [1.0 - abs(i + 1 - at) / n for i in range(n)]  # noqa: E731
    assert fold_epochs([peak(4), peak(9)]) == [9, 4]  # 2 folds: each from the other one
    assert fold_epochs([peak(4), peak(9), peak(9)]) == [9, 6, 6]  # (mean of peaks at 4 and 9: 6 to 7)
    assert fold_epochs([peak(4)]) == [12]  # one fold: nothing else to choose on, the last epoch
    assert fold_epochs([[np.nan] * 12, peak(6)]) == [6, 12]  # an all-NaN other fold: the last epoch


def test_progress_advances_through_the_baseline_fits(tmp_path):
    """The card's baselines (gradient boosting takes minutes on many genes) are steps of the
    progress, per baseline and fold, not one message at 99 % while they run."""
    bulk, labels, target = synthetic()
    seen = []
    _train(tmp_path, bulk, labels, target, target_label_column="response", target_resistant_value=0,
           progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _m in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    scoring = [(f, m) for f, m in seen if m.startswith("Checking the model against simple baselines · ")
               and m.endswith(" done")]
    # 3 baselines (logistic regression tuned and at the heads' C, gradient boosting) x (3 folds + the target cells)
    assert len(scoring) == 12 and sum("bulk cell lines, round 3 of 3" in m for _f, m in scoring) == 3
    assert sum(m.endswith("target cells done") for _f, m in scoring) == 3
    start = next(f for f, m in seen if m.startswith("Checking the model against simple baselines ("))
    assert start < 0.9 and all(a < b for a, b in zip([start] + [f for f, _m in scoring], [f for f, _m in scoring]))
    # each fit is announced before it runs, so a long one (gradient boosting) shows what runs now
    messages = [m for _f, m in seen]
    for name in ("logistic regression", "gradient boosting"):
        before = next(i for i, m in enumerate(messages) if name in m and "scoring the target cells" in m)
        after = next(i for i, m in enumerate(messages) if name in m and m.endswith("target cells done"))
        assert before < after and not any(m.endswith(" done") for m in messages[before + 1:after])
    assert sum("round" in m and not m.endswith(" done") for m in messages) == 9
    # QA (05_demo_done.png): plain words for a biologist in the progress line (the demo build shows these); the
    # baselines' technical names stay on the model card
    baseline_lines = [m for m in messages if "baselines" in m]
    assert not any(jargon in m for m in baseline_lines for jargon in ("HistGradientBoosting", "CV", "fold", "C=",
                                                                      "balanced", "Scoring the"))


# --------------------------------------------------------------------------- scatd train: where its outputs go

def _cli_train_args(folder, **names) -> list[str]:
    """Write the synthetic bulk, labels and target as files in ``folder``; a fast `scatd train`
    command line on them (``names``: other file names, e.g. ``bulk="b.csv"``)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bulk, labels, target = synthetic()
    files = {key: folder / names.get(key, f"{key}.csv") for key in ("bulk", "labels", "target")}
    pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names).to_csv(files["bulk"])
    labels.to_csv(files["labels"])
    pd.DataFrame(target.X, index=target.obs_names, columns=target.var_names).to_csv(files["target"])
    return ["train", "--bulk", str(files["bulk"]), "--bulk-labels", str(files["labels"]), "--drug", "DRUGA",
            "--target", str(files["target"]), "--members", "1", "--pretrain-epochs", "1", "--folds", "2",
            "--device", "cpu"]


def _no_training(monkeypatch):
    def trained(*a, **k):
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr("scatd_core.train.train_drug_model", trained)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_train_out_overwrite_replaces_only_an_earlier_export_and_is_checked_before_training(tmp_path, capsys,
                                                                                           monkeypatch):
    """--out --overwrite once deleted the whole folder: the user's inputs in it, or the whole model
    library. Now only a bundle exported earlier is replaced; the rest is refused before training."""
    from scatd_core.cli import main

    _no_training(monkeypatch)
    proj = tmp_path / "proj"
    args = _cli_train_args(proj)
    (proj / "notes.txt").write_text("my notes")
    (proj / "manifest.json").write_text("{}")  # even looking like a bundle, a folder of inputs is not replaced
    lib = tmp_path / "lib"
    (lib / "A_dist_vae").mkdir(parents=True)
    (lib / "A_dist_vae" / "manifest.json").write_text("{}")
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "manifest.json").write_text("{}")
    before = _snapshot(tmp_path)
    library = ["--library", str(lib)]
    cases = [
        (["--out", proj, "--overwrite"], "holds the input"),
        (["--out", lib, "--overwrite"], "model library"),
        (["--out", lib / "A_dist_vae", "--overwrite"], "model library"),
        (["--out", tmp_path, "--overwrite"], "model library"),  # around the library (and the inputs)
        (["--out", lib / "new"], "model library"),
        (["--out", tmp_path / "afile.txt", "--overwrite"], "is an existing file"),
        (["--out", tmp_path / "mine", "--overwrite"], "not a model bundle"),
        (["--out", tmp_path / "earlier"], "already exists"),
    ]
    for extra, match in cases:
        code = main(args + library + [str(a) for a in extra])
        err = capsys.readouterr().err
        assert code == 2 and match in err and "unexpected" not in err, (extra, err)
    assert _snapshot(tmp_path) == before
    # the model library by default ($SCATD_HOME's) is protected too
    from scatd_core.config import model_library_dir

    assert main(args + ["--out", str(model_library_dir()), "--overwrite"]) == 2
    assert "model library" in capsys.readouterr().err


def test_train_out_overwrite_replaces_an_earlier_export(tmp_path, capsys):
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path / "in") + ["--library", str(tmp_path / "lib")]
    out = tmp_path / "exports" / "gef"
    (tmp_path / "exports").mkdir()  # --out's folder is made, in a folder that exists
    assert main(args + ["--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert main(args + ["--out", str(out), "--overwrite", "--seed", "1"]) == 0
    capsys.readouterr()
    second = json.loads((out / "manifest.json").read_text())
    assert first["provenance"]["seed"] == 0 and second["provenance"]["seed"] == 1
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["gef"]  # no temporary folder left


def test_export_that_fails_leaves_the_earlier_export(tmp_path, monkeypatch):
    import errno
    import shutil

    from scatd_core.errors import ScatdError

    source, out = tmp_path / "new", tmp_path / "out"
    for folder, text in ((source, "new"), (out, "earlier")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
        (folder / "weights.safetensors").write_text(text)
    real = shutil.copytree

    def disk_full(src, dst, **kw):
        real(src, dst, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copytree", disk_full)
    with pytest.raises(ScatdError, match="No space left"):
        cli_train.export_bundle(source, out)
    assert (out / "manifest.json").read_text() == "earlier" and (out / "weights.safetensors").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    monkeypatch.setattr(shutil, "copytree", real)
    cli_train.export_bundle(source, out)
    assert (out / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_train_report_outputs_that_would_overwrite_an_input_or_cannot_be_written_are_refused_first(
        tmp_path, capsys, monkeypatch):
    """--report / --target-predictions once overwrote the bulk or target file given to them, and an
    unwritable path failed only after training ('unexpected'): now exit 2 before training."""
    from scatd_core.cli import main

    _no_training(monkeypatch)
    args = _cli_train_args(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    before = _snapshot(tmp_path)
    cases = [
        (["--report", tmp_path / "bulk.csv"], "would overwrite the input file"),
        (["--target-predictions", tmp_path / "target.csv"], "would overwrite the input file"),
        (["--report", tmp_path / "labels.csv"], "would overwrite the input file"),
        (["--report", tmp_path / "afile.txt" / "r.json"], "is a file, not a folder"),
        (["--report", tmp_path / "same.csv", "--target-predictions", tmp_path / "same.csv"], "name the same file"),
        (["--report", tmp_path / "exp" / "r.json", "--out", tmp_path / "exp"], "inside --out"),
    ]
    for extra, match in cases:
        code = main(args + [str(a) for a in extra])
        err = capsys.readouterr().err
        assert code == 2 and match in err and "unexpected" not in err, (extra, err)
    assert _snapshot(tmp_path) == before

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    assert main(args + ["--report", str(tmp_path / "r_new.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Permission denied" in err and "unexpected" not in err


def test_train_and_train_panel_refuse_a_model_library_they_cannot_write_before_training(tmp_path, capsys,
                                                                                         monkeypatch):
    """QA: `scatd train` with a model library it cannot write trained for minutes, then failed to
    save the model (lost). Now both training commands refuse before training, naming the library;
    a library folder not made yet is checked where it will be made."""
    import tempfile
    from pathlib import Path

    from scatd_core.cli import main

    _no_training(monkeypatch)
    monkeypatch.setattr("scatd_core.train.train_panel", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("trained before checking the library")))
    args = _cli_train_args(tmp_path / "in")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    panel = ["train-panel", "--bulk", args[2], "--bulk-labels", args[4], "--drugs", "DRUGA", "--target", args[8]]
    for library in (locked, locked / "not" / "made"):  # the library itself, or the folder it will be made in
        for command in (args, panel):
            code = main(command + ["--library", str(library)])
            err = capsys.readouterr().err
            assert code == 2 and f"The model library {library} cannot be written" in err, err
            assert "Permission denied" in err and "nothing was trained" in err and "unexpected" not in err
    assert not (locked / "not").exists()
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(locked))  # the configured library: said where it is set
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "SCATD_MODEL_LIBRARY" in err and "cannot be written" in err, err


def test_train_panel_summary_that_would_overwrite_an_input_is_refused_first(tmp_path, capsys, monkeypatch):
    from scatd_core.cli import main

    def trained(*a, **k):
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr("scatd_core.train.train_panel", trained)
    args = _cli_train_args(tmp_path)
    args = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA",
            *args[args.index("--target"):args.index("--members")]]
    before = _snapshot(tmp_path)
    for name, match in (("target.csv", "would overwrite the input file"), ("labels.csv", "would overwrite the input"),
                        ("bulk.csv/s.csv", "is a file, not a folder")):
        code = main(args + ["--summary", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and match in err and "unexpected" not in err, (name, err)
    assert _snapshot(tmp_path) == before


def test_train_backbone_bundle_takes_a_name_in_the_model_library(tmp_path, capsys):
    """--backbone-bundle NAME, as predict's --model NAME: a bundle of the model library by name."""
    from scatd_core.cli import main

    genes = [f"G{i}" for i in range(N_GENES)]
    arch = Architecture("dist_vae", [len(genes), 16, 8], 4, [4, 8, 16])
    torch.manual_seed(5)
    lib = tmp_path / "lib"
    backbone = save_bundle(lib / "bb_dist", ResVAE(arch).eval().state_dict(), arch, drug=None, genes=genes,
                           input_transform="standardize")
    args = _cli_train_args(tmp_path / "in") + ["--library", str(lib)]
    assert main(args + ["--backbone-bundle", "bb_dist"]) == 0
    out, err = capsys.readouterr()
    assert "ensemble of one member" in err
    trained = load_bundle(out.split("installed in the model library: ")[1].strip())
    assert trained.manifest["provenance"]["backbone_bundle"]["weights_sha256"] == backbone.manifest["weights_sha256"]
    assert main(args + ["--backbone-bundle", "bb_dsit"]) == 2
    err = capsys.readouterr().err
    assert "No model bundle at 'bb_dsit'" in err and "bb_dist" in err


def test_train_says_at_once_when_the_folds_asked_for_are_lowered(tmp_path, capsys):
    """--folds above the smaller class's size was lowered with a warning only at the end of the
    run; the command line now says it when it happens, before training, and once."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path)
    labels = pd.read_csv(tmp_path / "labels.csv", index_col=0)
    resistant = labels.index[labels["DRUGA"] == "resistant"]
    labels.loc[resistant[4:], "DRUGA"] = "sensitive"  # 4 resistant cell lines
    labels.to_csv(tmp_path / "labels.csv")
    args[args.index("--folds") + 1] = "10"
    assert main(args + ["--library", str(tmp_path / "lib")]) == 2  # refused before training: too few lines
    err = capsys.readouterr().err
    assert "DRUGA: only 41 sensitive and 4 resistant labelled cell lines in the bulk data; a model needs at least 10 " \
           "of each." in err and "Pretraining" not in err and "give a lower --min-lines" in err
    assert main(args + ["--library", str(tmp_path / "lib"), "--min-lines", "2"]) == 0
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("warning: With only 4 cell lines in the smaller class")
    said = "note: Only 4 cell lines in the smaller class: 4 folds instead of 10."
    assert said in err and err.count("folds instead of 10") == 1, err
    assert err.index(said) < err.index("Pretraining") < err.index("Model card:")


def test_train_panel_says_at_once_when_a_drugs_folds_are_lowered(tmp_path):
    from scatd_core.train import train_panel

    # 5 resistant cell lines (4 or 5 with a label): the 40 folds asked for are lowered to 4 or 5 (the whole
    # smaller class: 22-24 folds, each fitting every baseline with its inner CV, took 11 s); one member, one
    # pretraining epoch: the notice is the panel's, said before training, whatever the recipe
    bulk, labels, target = synthetic(n_resistant=5)
    said = []
    summary, _ = train_panel(bulk, labels, ["DRUGA"], target, device="cpu",
                             settings=replace(TINY, folds=40, members=1, pretrain_epochs=1),
                             library=tmp_path / "lib", resume=False, min_lines_per_class=2, notice=said.append)
    assert list(summary["status"]) == ["trained"]
    folds = [m for m in said if "folds instead of" in m]  # (with the data's warnings, said before training too)
    assert len(folds) == 1 and folds[0].startswith("DRUGA: Only ") and "folds instead of 40" in folds[0]
    assert all(m.startswith("DRUGA: ") for m in said) and len(said) == len(set(said))


# --------------------------------------------------------------------------- options the chosen recipe does not use

def test_a_run_records_only_the_settings_its_recipe_used(tmp_path):
    """QA: the linear head recorded --epochs/--finetune-epochs/--mmd-weight as used, the original
    head --members/--head-c/--head-inputs; a run records only what it used, the rest as not used."""
    bulk, labels, target = synthetic()
    linear, rep = _train(tmp_path, bulk, labels, target, "linear", settings=replace(TINY, epochs=7, mmd_weight=5.0))
    used, unused = linear.manifest["training"]["settings"], linear.manifest["training"]["settings_not_used"]
    assert used["members"] == 3 and used["pretrain_epochs"] == TINY.pretrain_epochs
    assert not {"epochs", "finetune_epochs", "mmd_weight", "few_shot_weight"} & set(used)
    assert {"epochs", "finetune_epochs", "mmd_weight", "few_shot_weight"} <= set(unused)
    assert linear.manifest["card"]["settings"] == used == rep["settings"]
    original, _ = _train(tmp_path, bulk, labels, target, "original", settings=replace(TINY_SCATD, members=7))
    used = original.manifest["card"]["settings"]
    assert used["epochs"] == TINY.epochs and used["mmd_weight"] == 1.0
    assert not {"members", "head_c", "head_inputs"} & set(used)
    assert "original head" in original.manifest["card"]["settings_not_used"]["members"]


def test_train_notes_each_option_the_chosen_recipe_does_not_use(capsys):
    from scatd_core.cli._train_args import note_unused, recipe_settings

    p = _parser()
    base = ["train", "--bulk", "b", "--bulk-labels", "l", "--drug", "d", "--target", "t"]
    args = p.parse_args(base + ["--epochs", "7", "--finetune-epochs", "3", "--mmd-weight", "5",
                                "--pretrain-epochs", "2"])
    notes = note_unused(args, recipe_settings(args))
    err = capsys.readouterr().err
    assert len(notes) == 1 and err.count("note: ") == 1
    assert "note: --epochs, --finetune-epochs and --mmd-weight have no effect: the default linear heads" in err
    args = p.parse_args(base + ["--head", "scatd", "--members", "7", "--head-c", "3", "--head-inputs", "latent",
                                "--epochs", "4"])
    assert recipe_settings(args).members == 7  # given, as asked, but the original head does not use it
    note_unused(args, recipe_settings(args))
    err = capsys.readouterr().err
    assert "note: --members, --head-c and --head-inputs have no effect" in err and "--epochs" not in err
    args = p.parse_args(base + ["--head", "scatd", "--mmd-weight", "2", "--no-adaptation"])
    note_unused(args, recipe_settings(args))
    assert "--mmd-weight has no effect: without adaptation" in capsys.readouterr().err
    args = p.parse_args(base + ["--pretrain-epochs", "3", "--members", "4"])
    note_unused(args, recipe_settings(args), backbone_given=True)
    err = capsys.readouterr().err
    assert "--pretrain-epochs has no effect: the given pretrained backbone" in err
    assert "--members has no effect: a given backbone makes an ensemble of one member" in err
    args = p.parse_args(base + ["--members", "4", "--pretrain-epochs", "3"])  # all used: nothing said
    assert note_unused(args, recipe_settings(args)) == [] and capsys.readouterr().err == ""


def test_scatd_train_says_which_options_it_did_not_use(tmp_path, capsys):
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path) + ["--library", str(tmp_path / "lib"), "--epochs", "7", "--mmd-weight", "5",
                                        "--report", str(tmp_path / "r.json")]
    # as train-panel: which value of the labels means resistant, with no labels, is refused before training
    assert main(args + ["--target-resistant-value", "0"]) == 2
    err = capsys.readouterr().err
    assert "--target-resistant-value goes with --target-labels" in err
    assert "Pretraining" not in err and not (tmp_path / "lib").exists()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "note: --epochs and --mmd-weight have no effect" in err
    assert err.index("note: --epochs") < err.index("Pretraining")  # said before the long part
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert "epochs" not in settings and "mmd_weight" not in settings and settings["members"] == 1


def test_train_panel_takes_the_recipe_options_of_scatd_train(tmp_path, capsys, monkeypatch):
    """QA: train-panel lacked --members --head-c --head-inputs --head --no-adaptation, which the
    Train page's panel passes; they are the same options as scatd train's, with the same notes."""
    import pandas as pd

    from scatd_core.cli import main

    seen = {}

    def trained(bulk, labels, drugs, target, **kw):
        seen.update(kw)
        return pd.DataFrame(columns=["drug", "status", "n_sensitive", "n_resistant", "cv_auroc", "cv_best_baseline",
                                     "cv_best_baseline_auroc", "target_auroc", "bundle", "note", "verdict"]), []

    monkeypatch.setattr("scatd_core.train.train_panel", trained)
    args = _cli_train_args(tmp_path)
    args = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA",
            *args[args.index("--target"):args.index("--members")]]
    main(args + ["--members", "4", "--head-c", "0.5", "--head-inputs", "latent", "--no-adaptation", "--epochs", "3"])
    s = seen["settings"]
    assert (s.head, s.members, s.head_c, s.head_inputs) == ("linear", 4, 0.5, "latent")
    assert seen["adaptation"] is False
    assert "note: --epochs has no effect: the default linear heads" in capsys.readouterr().err
    main(args + ["--head", "scatd", "--epochs", "3", "--mmd-weight", "2", "--members", "4"])
    s = seen["settings"]
    assert (s.head, s.epochs, s.mmd_weight) == ("scatd", 3, 2.0) and seen["adaptation"] is True
    err = capsys.readouterr().err
    assert "note: --members has no effect" in err and "--epochs" not in err


# --------------------------------------------------------------------------- what a model records of its inputs

def test_inputs_given_as_data_keep_their_display_names_and_ic50_labels_their_threshold(tmp_path):
    """QA: models trained on the Train page or by train-panel recorded their inputs as
    {"sha256", "of": "values"} and the card said "the target given as data"."""
    bulk, labels, target = synthetic()
    labels.attrs["report"] = {"thresholds": {"DRUGA": {"gdsc_id": np.int64(77), "threshold": 0.25,
                                                       "matched_by": "name", "threshold_name": "DrugA"}},
                              "files": {"ic50": "GDSC_IC50.csv", "thresholds": "IC50_thred.txt",
                                        "drug_list": "GDSC_drug_list.csv"}}
    bundle, rep = _train(tmp_path, bulk, labels, target, settings=replace(TINY, members=1),
                         input_names={"bulk": "ccle.csv", "labels": "labels from GDSC_IC50.csv",
                                      "target": "/srv/scatd/uploads/tumour.h5ad"}, source="the Train page")
    prov = bundle.manifest["provenance"]
    assert prov["bulk"]["name"] == "ccle.csv" and len(prov["bulk"]["sha256"]) == 64
    assert prov["target"]["name"] == "tumour.h5ad"  # the name only, never a server folder
    assert "/srv" not in json.dumps(bundle.manifest)
    assert prov["labels"]["name"] == "labels from GDSC_IC50.csv"
    assert prov["labels"]["from_ic50"]["threshold"] == 0.25 and prov["labels"]["from_ic50"]["gdsc_id"] == 77
    assert prov["labels"]["from_ic50"]["files"]["thresholds"] == "IC50_thred.txt"
    assert prov["source"] == "trained by scATD Studio (the Train page)"
    assert "40 target cells (tumour.h5ad" in rep["card"]["data"]["summary"]


def test_labels_from_ic50s_provenance_file_is_recorded_as_the_train_page_records_built_labels(tmp_path):
    """QA: a table written by `scatd labels-from-ic50` trained a model that recorded only the file's
    sha256; the Train page's "Build labels" records the threshold and the files (from_ic50). The
    provenance file beside the table gives the same record; the bulk's values hash is recorded
    whether it comes as a file (the CLI) or as data (the app), so two cards of the same data compare."""
    from scatd_core.labels import labels_from_ic50, write_ic50_provenance, write_label_table
    from scatd_core.train._data import read_if_path
    from scatd_core.train._run import _ic50_origin

    bulk, labels, target = synthetic()
    ic50 = labels["DRUGA"].map({"sensitive": -1.0, "resistant": 1.0})
    pd.DataFrame([ic50.to_numpy()], index=["GDSC:77"], columns=labels.index).to_csv(tmp_path / "GDSC_IC50.csv")
    (tmp_path / "IC50_thred.txt").write_text("Druga\n0.0\n")
    pd.DataFrame({"drug_id": [77], "Name": ["DrugA"], "Synonyms": [""]}).to_csv(tmp_path / "drugs.csv", index=False)
    table = labels_from_ic50(tmp_path / "GDSC_IC50.csv", tmp_path / "IC50_thred.txt", tmp_path / "drugs.csv")
    write_label_table(table, tmp_path / "labels.csv")
    write_ic50_provenance(table, tmp_path / "labels.csv")
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    bundle, rep = _train(tmp_path, tmp_path / "bulk.h5ad", tmp_path / "labels.csv", target,
                         settings=replace(TINY, members=1, pretrain_epochs=2))
    prov = bundle.manifest["provenance"]
    assert prov["labels"].get("from_ic50", {}).get("threshold") == 0.0, prov["labels"]
    app = _ic50_origin(table.attrs["report"], "DrugA")["from_ic50"]  # what the Train page records
    assert prov["labels"]["from_ic50"] == app and set(app) >= {"threshold", "gdsc_id", "files", "files_sha256"}
    assert app["threshold"] == 0.0 and app["files"]["ic50"] == "GDSC_IC50.csv"
    assert prov["labels"]["provenance_file"] == "labels.provenance.json" and "ic50_rule" not in prov["labels"]
    assert prov["labels"]["sha256"] == sha256_file(tmp_path / "labels.csv")
    assert "from ln(IC50) (GDSC_IC50.csv) with threshold 0" in " ".join(card_lines(rep["card"]))
    # the bulk: its file's sha256 and its values' hash, which the app records for the same data
    assert prov["bulk"]["sha256"] == sha256_file(tmp_path / "bulk.h5ad")
    assert prov["bulk"]["values_sha256"] == read_if_path(bulk, "bulk")[1]["sha256"]
    assert read_if_path(bulk, "bulk")[1]["values_sha256"] == prov["bulk"]["values_sha256"]
    assert f"sha256 {prov['bulk']['values_sha256'][:12]} of its values" in " ".join(card_lines(rep["card"]))
    # a table changed after the file was written: nothing recorded from it, and the card says why
    (tmp_path / "labels.csv").write_text((tmp_path / "labels.csv").read_text() + "\n")
    bundle, rep = _train(tmp_path, bulk, tmp_path / "labels.csv", target, name="changed",
                         settings=replace(TINY, members=1, pretrain_epochs=2))
    assert "from_ic50" not in bundle.manifest["provenance"]["labels"]
    assert any("was written for another version of labels.csv" in w for w in rep["card"]["warnings"])
    # QA: the card then said nothing of how IC50s became these labels; it says the rule is unknown
    assert bundle.manifest["provenance"]["labels"]["ic50_rule"] == "unknown"
    assert "the rule that turned IC50s into these labels is unknown (labels as uploaded)" in " ".join(
        card_lines(rep["card"]))


def test_train_panel_records_its_input_names_and_source(tmp_path):
    from scatd_core.train import train_panel

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    bulk.write_h5ad(tmp_path / "bulk.h5ad")
    labels.attrs["report"] = {"thresholds": {"DRUGA": {"gdsc_id": 77, "threshold": -1.5}}}
    _, bundles = train_panel(tmp_path / "bulk.h5ad", labels, ["DRUGA"], target, settings=QUICK,
                             device="cpu", library=tmp_path / "lib", resume=False, min_lines_per_class=2,
                             input_names={"labels": "labels from GDSC_IC50.csv", "target": "tumour.h5ad"})
    prov = bundles[0].manifest["provenance"]
    assert prov["target"]["name"] == "tumour.h5ad"
    assert prov["labels"]["name"] == "labels from GDSC_IC50.csv" and prov["labels"]["from_ic50"]["threshold"] == -1.5
    assert prov["source"] == "trained by scATD Studio (scatd train-panel)"
    # a file records its sha256, as `scatd train` records it (QA: a hash of the values, which no
    # `sha256sum` of the file matches)
    assert {k: prov["bulk"][k] for k in ("file", "sha256")} == {"file": "bulk.h5ad",
                                                                 "sha256": sha256_file(tmp_path / "bulk.h5ad")}
    labels.to_csv(tmp_path / "labels.csv")
    _, bundles = train_panel(tmp_path / "bulk.h5ad", tmp_path / "labels.csv", ["DRUGA"], target,
                             settings=QUICK, device="cpu", library=tmp_path / "lib2", resume=False,
                             min_lines_per_class=2)
    assert bundles[0].manifest["provenance"]["labels"] == {"file": "labels.csv",  # no provenance file beside it:
                                                           "sha256": sha256_file(tmp_path / "labels.csv"),
                                                           "ic50_rule": "unknown"}  # the card says so


def test_train_panel_resumes_only_its_own_model_not_another_that_took_its_folder(tmp_path):
    """QA: an administrator removes a drug's model of a panel run, another user's training of that drug
    takes the same default folder; running the panel again "resumed" the drug with that user's model."""
    from scatd_core.bundle import remove_bundle
    from scatd_core.train import train_panel
    from scatd_core.train._panel import state_path

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    lib, s = tmp_path / "lib", QUICK

    def run():
        summary, bundles = train_panel(bulk, labels, ["DRUGA"], target, settings=s, device="cpu", library=lib,
                                       min_lines_per_class=2, trained_by="alice")
        return summary.iloc[0], bundles[0]

    first, mine = run()
    assert first["status"] == "trained"
    assert run()[0]["status"] == "resumed"  # the same model in its folder: resumed
    remove_bundle(mine.path)
    theirs, _ = train_drug_model(bulk, labels, "DRUGA", target[::2].copy(), settings=s, device="cpu", library=lib,
                                 trained_by="bob")
    assert theirs.path == mine.path  # the freed default folder name
    again, bundle = run()
    assert again["status"] == "trained" and bundle.path != theirs.path
    assert bundle.manifest["provenance"]["trained_by"] == "alice"
    assert again["note"].startswith("trained again: the model 'DRUGA (VAE on genes, panel)' was removed (or replaced) "
                                    "and another model now has its folder ('DRUGA (VAE on genes, trained)', trained with "
                                    "the server's command line by bob on ")
    assert load_bundle(theirs.path).manifest["provenance"]["trained_by"] == "bob"  # left as it was
    # a state file of an earlier version (no model identity): trained again rather than trusted
    [state_file] = list(state_path("x").parent.glob("*.json"))
    state = json.loads(state_file.read_text())
    del state["drugs"]["DRUGA"]["identity"]
    state_file.write_text(json.dumps(state))
    old, _ = run()
    assert old["status"] == "trained" and "recorded no model identity" in old["note"]


def test_train_panel_into_another_library_trains_the_drug_there(tmp_path, monkeypatch):
    """QA: a run with --library lib_B "resumed" a drug that the same panel's earlier run had installed
    in lib_A, and said "2 of 2 drugs have a model in the library" while lib_B had one. The resumed
    model must be in this run's library; the state file records its folder absolutely."""
    from pathlib import Path

    from scatd_core.train import train_panel
    from scatd_core.train._panel import state_path

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)
    monkeypatch.chdir(tmp_path)

    def run(library):
        summary, bundles = train_panel(bulk, labels, ["DRUGA"], target, settings=QUICK,
                                       device="cpu", library=library, min_lines_per_class=2)
        return summary.iloc[0], bundles[0]

    first, in_a = run("lib_A")  # relative, as typed on the command line
    assert first["status"] == "trained"
    [state_file] = list(state_path("x").parent.glob("*.json"))
    assert Path(json.loads(state_file.read_text())["drugs"]["DRUGA"]["path"]).is_absolute()
    assert run("lib_A")[0]["status"] == "resumed"
    other, in_b = run(tmp_path / "lib_B")
    assert other["status"] == "trained" and "installed it in another model library" in other["note"]
    assert Path(in_b.path).parent == tmp_path / "lib_B" and (tmp_path / "lib_B" / Path(in_b.path).name).is_dir()
    assert Path(in_a.path).resolve().parent == (tmp_path / "lib_A").resolve()


def test_a_resumed_panel_drug_keeps_the_warnings_of_its_training(tmp_path):
    """QA: a resumed drug's row in panel_models.csv dropped the warning it had when trained ("Bulk and
    target share only 141 genes ...")."""
    from scatd_core.train import train_panel

    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)

    def run():
        summary, _ = train_panel(bulk, labels, ["DRUGA"], target, settings=QUICK, device="cpu",
                                 library=tmp_path / "lib", min_lines_per_class=2)
        return summary.iloc[0]

    first = run()
    assert first["status"] == "trained" and "Bulk and target share only" in first["note"]
    again = run()
    assert again["status"] == "resumed" and again["note"].startswith("trained by an earlier run on ")
    warnings = [w for w in first["note"].split("; ") if w]
    assert warnings and all(w in again["note"] for w in warnings)


def test_the_card_names_a_mask_column_that_is_no_qc_filter(tmp_path):
    """QA: the card called the cells any --target-mask column left out "filtered (QC)", also for a
    column such as a cell type from a cell metadata table. It names the column; "filtered (QC)" stays
    for the app's QC filter (its scatd_qc_pass column, or the array the Train page passes)."""
    bulk, labels, target = synthetic(n_cells=50)
    tumour = np.arange(target.n_obs) % 10 != 3
    target.obs["is_tumour"] = tumour
    s = replace(TINY, members=1)
    bundle, rep = _train(tmp_path, bulk, labels, target, settings=s, target_mask="is_tumour")
    summary = rep["card"]["data"]["summary"]
    assert "45 target cells (the target given as data; 5 cells left out by the mask column 'is_tumour')" in summary
    assert "QC" not in summary and bundle.manifest["training"]["target"]["mask_column"] == "is_tumour"
    _, qc = _train(tmp_path, bulk, labels, target, "qc", settings=s, target_mask=tumour)  # the Train page's QC mask
    assert "5 cells filtered (QC) left out" in qc["card"]["data"]["summary"]
    target.obs["is_tumour"] = False
    with pytest.raises(InputError, match="Every target cell is False in the mask column 'is_tumour'"):
        _train(tmp_path, bulk, labels, target, "none", settings=s, target_mask="is_tumour")


def test_with_labelled_target_cells_the_card_says_what_its_bulk_cv_row_scores(tmp_path):
    """QA: with few-shot labels the bulk-CV row "this model" scores the bulk-only recipe (its
    out-of-fold heads are fitted on the bulk folds alone); the card says so."""
    bulk, labels, _ = synthetic()
    target = shifted_target()
    _, rep = _train(tmp_path, bulk, labels, target, settings=replace(TINY, members=1),
                    few_shot_labels=_few_labels(target))
    bulk_cv = next(e for e in rep["card"]["evaluations"] if e["name"] == "bulk_cv")
    assert "With 10 labelled target cells" in bulk_cv["note"] and "bulk folds alone" in bulk_cv["note"]
    assert bulk_cv["note"] in card_lines(rep["card"])
    _, plain = _train(tmp_path, bulk, labels, target, "plain", settings=replace(TINY, members=1))
    assert "labelled target cells" not in next(e for e in plain["card"]["evaluations"] if e["name"] == "bulk_cv")["note"]


def test_label_table_orientation_is_checked_against_the_bulk_ids(tmp_path):
    """QA: a label table given transposed (drugs as rows, cell lines as columns) that the reader's
    name heuristic lets through (an upload read into a table, IDs without digits) was read the wrong
    way round and failed late (drug not found, or no labelled sample); the bulk's IDs decide, with
    the counts each way."""
    bulk, labels, target = synthetic()
    with pytest.raises(InputError, match=r"^The label table looks transposed \(cell lines as columns\): 0 of its 2 row "
                                         r"IDs and 48 of its 48 column names \(e\.g\. ACH-000000, ") as err:
        prepare_training_data(bulk, labels.T, "DRUGA", target)
    assert "transpose the table" in err.value.hint
    named = bulk.copy()
    named.obs_names = [f"line{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(bulk.n_obs)]  # no digits
    labels.set_axis(named.obs_names).T.to_csv(tmp_path / "flipped.csv")
    with pytest.raises(InputError, match="^The label table flipped.csv looks transposed .*: 0 of its 2 row IDs and 48"):
        prepare_training_data(named, tmp_path / "flipped.csv", "DRUGA", target)
    either = pd.DataFrame({"ACH-000002": ["sensitive"] * 4, "ACH-000003": [None] * 4, "DRUGA": ["sensitive"] * 4},
                          index=["ACH-000000", "ACH-000001", "Cisplatin", "Erlotinib"])
    with pytest.raises(InputError, match=r"could be read either way round: 2 of its 4 row IDs .* and 2 of its 3 column "
                                         r"names .* as many each way") as err:
        prepare_training_data(bulk, either, "DRUGA", target)
    assert "rename the drug columns that are also sample IDs (ACH-000002, ACH-000003)" in err.value.hint
    lower = labels.set_axis([i.lower().replace("-", "_") for i in labels.index])
    with pytest.raises(InputError, match="neither way round.*Ignoring case and punctuation, 48 of its row IDs would "
                                         "match"):
        prepare_training_data(bulk, lower, "DRUGA", target)
    extra = labels.assign(**{"ACH-000005": None})  # a drug column named as a bulk sample: read as given, said
    data = prepare_training_data(bulk, extra, "DRUGA", target)
    (warning,) = data.report["warnings"]
    assert warning.startswith("The label table: 48 of its 48 row IDs") and "column ACH-000005 was taken as drugs" in warning
    assert data.report["labels"]["n_labelled_in_bulk"] == 45
    assert prepare_training_data(bulk, labels, "DRUGA", target).report["warnings"] == []


def test_train_panel_checks_the_label_tables_orientation_before_choosing_its_drugs(tmp_path):
    """QA: train_panel chose its drugs from the label table before any drug's training checked its
    orientation, so a transposed table failed with 'not in the label table'; it is refused at once,
    with the counts each way, and a warning reaches the notes of the drugs that did not train."""
    from scatd_core.train import train_panel

    bulk, labels, target = synthetic()
    with pytest.raises(InputError, match=r"^The label table looks transposed \(cell lines as columns\): 0 of its 2 row "
                                         r"IDs and 48 of its 48 column names"):
        train_panel(bulk, labels.T, "DRUGA", target, library=tmp_path / "lib", resume=False)
    extra = labels.assign(**{"ACH-000005": "sensitive"})  # a drug column named as a bulk sample: read as given, said
    summary, bundles = train_panel(bulk, extra, "all", target, library=tmp_path / "lib", resume=False,
                                   min_lines_per_class=100)  # every drug skipped: nothing trains
    assert list(summary["status"]) == ["skipped"] * 3 and not bundles
    for note in summary["note"]:
        assert note.startswith("too few labelled cell lines") and "The label table: 48 of its 48 row IDs" in note
        assert "column ACH-000005 was taken as drugs" in note


def test_duplicated_bulk_ids_renamed_by_the_reader_are_warned_about(tmp_path):
    """QA: duplicated bulk cell-line IDs were renamed by the reader (ACH-...-1) and then silently
    counted as samples without a label."""
    from scatd_core import io

    bulk, labels, target = synthetic()
    frame = pd.DataFrame(bulk.X, index=bulk.obs_names, columns=bulk.var_names)
    pd.concat([frame, frame.iloc[3:7]]).to_csv(tmp_path / "bulk_dup.csv")
    dup = io.read(tmp_path / "bulk_dup.csv")
    data = prepare_training_data(dup, labels, "DRUGA", target)
    (warning,) = data.report["warnings"]
    assert warning.startswith("4 bulk samples have a duplicated ID, e.g. ACH-000003 (copy renamed "
                              "ACH-000003-1)") and "count as samples without a label" in warning
    assert data.report["bulk"]["n_renamed_duplicates"] == 4
    assert prepare_training_data(bulk, labels, "DRUGA", target).report["warnings"] == []
    _, rep = _train(tmp_path, dup, labels, target, settings=replace(TINY, members=1))
    assert warning in rep["warnings"] and warning in rep["card"]["warnings"]



def test_scatd_train_says_the_datas_warnings_before_training(tmp_path, capsys):
    """QA: the duplicated-ID warning came only at the end of the run, after minutes of training on
    data the user would have fixed first."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path)
    bulk = pd.read_csv(tmp_path / "bulk.csv", index_col=0)
    pd.concat([bulk, bulk.iloc[3:7]]).to_csv(tmp_path / "bulk.csv")
    assert main(args + ["--library", str(tmp_path / "lib")]) == 0
    err = capsys.readouterr().err
    said = "note: 4 bulk samples have a duplicated ID"
    assert said in err and err.count("have a duplicated ID") == 1, err
    assert err.index(said) < err.index("Pretraining") < err.index("Model card:")


# --------------------------------------------------------------------------- --obs, the state file, the library size

def _meta_table(folder, name="meta.csv", flip=False):
    """A cell metadata table for the synthetic target: its true labels (1 = sensitive, as SCAD's
    'response'; ``flip``: the other way round) and a True/False column keeping all but two cells."""
    _, _, target = synthetic()
    response = target.obs["response"].to_numpy()
    table = pd.DataFrame({"cell_id": target.obs_names, "truth": 1 - response if flip else response,
                          "keep": [i >= 2 for i in range(target.n_obs)]})
    table.to_csv(folder / name, index=False)
    return folder / name


def test_scatd_train_obs_adds_the_targets_labels_and_the_model_records_the_table(tmp_path, capsys):
    """QA: `scatd train` had no --obs (predict, report and explain had), so a 10x or matrix target
    could not have labels or a mask on the command line; the model now also names the table."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path) + ["--library", str(tmp_path / "lib")]
    meta = _meta_table(tmp_path)
    code = main(args + ["--obs", str(meta), "--target-labels", "truth", "--target-resistant-value", "0",
                        "--target-mask", "keep"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ("--obs meta.csv: 40 of the data's 40 cells matched a row (cell IDs from its column 'cell_id'); added 2 "
            "columns: truth, keep.") in err
    trained = load_bundle(out.split("installed in the model library: ")[1].strip())
    prov = trained.manifest["provenance"]
    assert prov["target"]["file"] == "target.csv" and prov["target"]["sha256"] == sha256_file(tmp_path / "target.csv")
    table = prov["target"]["cell_metadata"]
    assert table["file"] == "meta.csv" and table["sha256"] == sha256_file(meta)
    assert table["used"] == {"target_labels": "truth", "target_mask": "keep"} and table["columns"] == ["truth", "keep"]
    assert trained.manifest["metrics"]["target"]["label_column"] == "truth"
    assert trained.manifest["training"]["target"]["n_used"] == 38
    said = f"with the cell metadata table meta.csv (sha256 {table['sha256'][:12]}; its columns 'truth' gave the " \
           "target labels (evaluation), 'keep' gave the cells used (mask))"
    assert said in err and said in " ".join(card_lines(trained.manifest["card"]))


@pytest.mark.parametrize("text, match", [
    ("cell_id,truth\nnobody,1\nstranger,0\n", "None of the 2 cell IDs in bad.csv (its column 'cell_id'"),
    ("cell_id,truth\ncell0,1\ncell0,0\n", "bad.csv lists 1 cell ID more than once (e.g. 'cell0')"),
    ("cell_id,truth\n", "bad.csv has a header but no rows"),
])
def test_scatd_train_and_train_panel_refuse_a_bad_obs_table_before_training(tmp_path, capsys, monkeypatch, text,
                                                                            match):
    from scatd_core.cli import main

    _no_training(monkeypatch)
    monkeypatch.setattr("scatd_core.train.train_panel", lambda *a, **k: pytest.fail("trained"))
    args = _cli_train_args(tmp_path) + ["--obs", str(tmp_path / "bad.csv")]
    (tmp_path / "bad.csv").write_text(text)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA", *args[args.index("--target"):]]
    for command in (args, panel):
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2 and f"error: {match}" in err and "unexpected" not in err, err
    code = main(args + ["--report", str(tmp_path / "bad.csv")])  # never written over
    assert code == 2 and "would overwrite the input file" in capsys.readouterr().err


def test_scatd_train_panel_obs_labels_evaluate_and_another_table_trains_the_drug_again(tmp_path, capsys):
    """QA: the resume state's fingerprint left out the cell metadata table (--obs): a run with another
    table giving other labels (or another mask) of the same column resumed the drug, evaluated on the
    first table's labels. The table's sha256 is part of the fingerprint when its columns give the
    target labels or the mask; the same table resumes."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA", *args[args.index("--target"):],
             "--min-lines", "2", "--library", str(tmp_path / "lib"), "--target-labels", "DRUGA=truth",
             "--target-resistant-value", "0"]

    def run(*extra):
        assert main(panel + list(extra)) == 0
        out, err = capsys.readouterr()
        return next(line.split("\t") for line in out.splitlines() if line.startswith("DRUGA\t")), err

    meta = _meta_table(tmp_path)
    row, err = run("--obs", str(meta))
    assert "--obs meta.csv: 40 of the data's 40 cells matched a row" in err
    assert row[1] == "trained" and row[6] != "n/a"  # the target AUROC, on the table's labels
    [path] = [p for p in (tmp_path / "lib").iterdir() if (p / "manifest.json").is_file()]
    prov = load_bundle(path).manifest["provenance"]
    assert prov["target"]["file"] == "target.csv" and prov["target"]["sha256"] == sha256_file(tmp_path / "target.csv")
    assert prov["target"]["cell_metadata"]["sha256"] == sha256_file(meta)
    assert prov["target"]["cell_metadata"]["used"] == {"target_labels": "truth"}
    assert run("--obs", str(meta))[0][1] == "resumed"  # the same table
    other = _meta_table(tmp_path, "other.csv", flip=True)  # the same column name, other labels
    again, _ = run("--obs", str(other))
    assert again[1] == "trained" and float(again[6]) == pytest.approx(1 - float(row[6]), abs=0.011), (row, again)
    trained = [load_bundle(p) for p in (tmp_path / "lib").iterdir() if (p / "manifest.json").is_file()]
    assert sha256_file(other) in {b.manifest["provenance"]["target"]["cell_metadata"]["sha256"] for b in trained}
    # a table that only gives the mask: another table (the same cells kept) is another run too
    mask_panel = [a for a in panel if a not in ("--target-labels", "DRUGA=truth", "--target-resistant-value", "0")]
    panel[:] = mask_panel + ["--target-mask", "keep"]
    before = set((tmp_path / "lib").iterdir())
    assert run("--obs", str(meta))[0][1] == "trained"
    [newest] = [load_bundle(p) for p in set((tmp_path / "lib").iterdir()) - before if (p / "manifest.json").is_file()]
    assert newest.manifest["provenance"]["target"]["cell_metadata"]["used"] == {"target_mask": "keep"}
    assert "2 cells left out by the mask column 'keep'" in newest.manifest["card"]["data"]["summary"]
    assert run("--obs", str(meta))[0][1] == "resumed"
    assert run("--obs", str(other))[0][1] == "trained"  # its 'keep' column is meta.csv's


def test_scatd_train_few_shot_column_takes_the_labelled_cells_as_the_train_page_does(tmp_path, capsys, monkeypatch):
    """Parity: the Train page trains with the labelled cells of a column (labels for a few cells,
    blanks for the others); `scatd train` took them only as a cell_id,label CSV. --few-shot-column
    (with --few-shot-resistant for codes like 0/1) takes them as the page does, and the model records
    them as the page's: how many cells of the target, and the cell metadata table's column."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path) + ["--library", str(tmp_path / "lib")]
    _, _, target = synthetic()
    response = target.obs["response"].to_numpy()  # 1 = sensitive
    few = [str(r) if i < 12 else "" for i, r in enumerate(response)]
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"cell_id": target.obs_names, "few": few, "truth": response}).to_csv(meta, index=False)
    labelled = {"resistant": int((response[:12] == 0).sum()), "sensitive": int((response[:12] == 1).sum())}
    with_table = args + ["--obs", str(meta), "--few-shot-column", "few"]
    # refused before any training, each with what to give
    real = __import__("scatd_core.train", fromlist=["train_drug_model"]).train_drug_model
    _no_training(monkeypatch)
    for extra, said in [
        ([], ("error: Which value of 'few' means resistant is not known (values: ", "--few-shot-resistant VALUE")),
        (["--few-shot-resistant", "0", "--target-labels", "few"],
         ("error: --few-shot-column and --target-labels name the same column 'few'",)),
    ]:
        assert main(with_table + extra) == 2
        err = capsys.readouterr().err
        assert all(part in err for part in said) and "unexpected" not in err, err
    assert main(args + ["--few-shot-column", "few", "--few-shot-resistant", "0"]) == 2  # target.csv has no obs
    assert "error: The target has no obs column 'few' (--few-shot-column)." in capsys.readouterr().err
    assert main(args + ["--few-shot-resistant", "0"]) == 2
    assert "error: --few-shot-resistant is for the --few-shot-column column" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one way to give them
        main(args + ["--few-shot-labels", str(meta), "--few-shot-column", "few"])
    assert "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setattr("scatd_core.train.train_drug_model", real)
    code = main(with_table + ["--few-shot-resistant", "0", "--target-labels", "truth", "--target-resistant-value",
                              "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (f"--few-shot-column few: 12 labelled cells of 40 will be used for training "
            f"({labelled['resistant']} resistant, {labelled['sensitive']} sensitive).") in err
    assert (f"12 labelled target cells ({labelled['resistant']} resistant, {labelled['sensitive']} sensitive) "
            "trained it") in err
    prov = load_bundle(out.split("installed in the model library: ")[1].strip()).manifest["provenance"]
    assert prov["few_shot_labels"] == {"n": 12, "of": "cells of the target", "column": "few"}  # as the Train page's
    assert prov["target"]["file"] == "target.csv" and prov["target"]["sha256"] == sha256_file(tmp_path / "target.csv")
    assert prov["target"]["cell_metadata"]["used"] == {"target_labels": "truth", "few_shot_labels": "few"}


def _few_table(folder, name="few.csv", n=12, column="few", flip=False):
    """A cell metadata table giving the first ``n`` cells of the synthetic target a label (1 =
    sensitive, as SCAD's 'response'; ``flip``: the other way round) and the others a blank."""
    _, _, target = synthetic()
    response = target.obs["response"].to_numpy()
    few = [str(1 - r if flip else r) if i < n else "" for i, r in enumerate(response)]
    pd.DataFrame({"cell_id": target.obs_names, column: few, "truth": response}).to_csv(folder / name, index=False)
    return folder / name


def test_scatd_train_panel_few_shot_column_is_checked_before_training(tmp_path, capsys, monkeypatch):
    """Parity: `scatd train-panel` had --obs but no --few-shot-column. It takes --few-shot-column and
    --few-shot-resistant as `scatd train` does, and --few-shot-drug (the column labels one drug):
    every wrong combination is refused before any drug is trained, saying what to give."""
    from scatd_core.cli import main

    monkeypatch.setattr("scatd_core.train._run.train_drug_model", lambda *a, **k: pytest.fail("trained"))
    args = _cli_train_args(tmp_path)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA,OTHER", *args[args.index("--target"):],
             "--min-lines", "2", "--library", str(tmp_path / "lib")]
    with_few = panel + ["--obs", str(_few_table(tmp_path)), "--few-shot-column", "few"]
    for extra, said in [
        (["--few-shot-resistant", "0"], "--few-shot-resistant is for the --few-shot-column column, and none was "
                                        "given."),
        (["--few-shot-drug", "DRUGA"], "--few-shot-drug names the drug of the --few-shot-column or --few-shot-labels "
                                       "labels, and none was given."),
    ]:
        assert main(panel + extra) == 2
        err = capsys.readouterr().err
        assert f"error: {said}" in err and "Add --few-shot-column" in err, err
    for extra, said in [
        ([], ("error: Which value of 'few' means resistant is not known", "--few-shot-resistant VALUE")),
        (["--few-shot-resistant", "0"],
         ("error: The labelled target cells ('few') are labels for one drug, and the panel has 2 drugs (DRUGA, OTHER).",
          "--few-shot-drug DRUG")),
        (["--few-shot-resistant", "0", "--few-shot-drug", "nosuch"], ("error: --few-shot-drug: Drug 'nosuch' is not",)),
        (["--few-shot-resistant", "0", "--few-shot-drug", "druga", "--drugs", "OTHER"],
         ("error: The labelled target cells ('few') are for 'druga' (--few-shot-drug), which is not one of the drugs "
          "to train (OTHER).",)),
        (["--few-shot-resistant", "0", "--few-shot-drug", "druga", "--head", "scatd"],
         ("error: Training with labelled target cells needs the default linear head.",)),
        (["--few-shot-resistant", "0", "--few-shot-drug", "druga", "--target-labels", "DRUGA=few",
          "--target-resistant-value", "0"],
         ("error: --few-shot-column and --target-labels DRUGA=few name the same column 'few'",)),
        (["--few-shot-resistant", "0", "--few-shot-column", "nosuch"],
         ("error: The target has no obs column 'nosuch' (--few-shot-column).",)),
    ]:
        assert main(with_few + extra) == 2
        err = capsys.readouterr().err
        assert all(part in err for part in said) and "unexpected" not in err, (extra, err)


def test_train_panel_trains_only_the_few_shot_drug_with_the_labelled_cells(monkeypatch):
    """A panel of several drugs: the labelled cells are the few-shot drug's labels, so only its model
    trains with them; the other drugs' models are trained without."""
    from scatd_core.labels import few_shot_from_column
    from scatd_core.train import train_panel

    bulk, labels, target = synthetic()
    labels["OTHER"] = labels["DRUGA"].map({"resistant": "sensitive", "sensitive": "resistant"})
    target.obs["few"] = [("resistant" if r == 0 else "sensitive") if i < 12 else None
                         for i, r in enumerate(target.obs["response"])]
    given = {}

    def record(bulk, labels, drug, target, **k):
        given[drug] = k["few_shot_labels"]
        raise InputError("recorded")

    monkeypatch.setattr("scatd_core.train._run.train_drug_model", record)
    summary, _ = train_panel(bulk, labels, "all", target, few_shot_labels=few_shot_from_column(target, "few"),
                             few_shot_drug="other", min_lines_per_class=2, resume=False)
    assert list(summary["drug"]) == ["DRUGA", "OTHER"] and given["DRUGA"] is None
    assert given["OTHER"].name == "few" and len(given["OTHER"]) == 12


def test_scatd_train_panel_few_shot_column_trains_its_drug_and_another_column_trains_it_again(tmp_path, capsys):
    """train-panel --few-shot-column: only the --few-shot-drug's model trains with the labelled cells
    (a panel of one drug needs no --few-shot-drug); the model records them (how many, the column,
    the cell metadata table), and the resume state compares them: the same column resumes, another
    column, other labels or none train the drug again, said, never silently resumed."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA", *args[args.index("--target"):],
             "--min-lines", "2", "--library", str(tmp_path / "lib")]
    evaluated = ["--target-labels", "DRUGA=truth", "--target-resistant-value", "0"]
    meta = _few_table(tmp_path)  # and two more columns: the same labels as 'few', and other labels
    flipped = pd.read_csv(_few_table(tmp_path, "flip.csv", flip=True))["few"]
    pd.read_csv(meta).assign(other=lambda t: t["few"], flipped=flipped).to_csv(meta, index=False)

    def run(*extra, column=None):
        few = [] if column is None else ["--few-shot-column", column, "--few-shot-resistant", "0"]
        code = main(panel + ["--obs", str(meta)] + few + list(extra))
        out, err = capsys.readouterr()
        assert code == 0, err
        return next(line.split("\t") for line in out.splitlines() if line.startswith("DRUGA\t")), err

    row, err = run(*evaluated, column="few")
    assert "--few-shot-column few: 12 labelled cells of 40 will be used for training" in err
    assert row[1] == "trained" and "trained with 12 labelled target cells of 'few'" in row[8], row
    [path] = [p for p in (tmp_path / "lib").iterdir() if (p / "manifest.json").is_file()]
    manifest = load_bundle(path).manifest
    assert manifest["provenance"]["few_shot_labels"] == {"n": 12, "of": "cells of the target", "column": "few"}
    assert manifest["provenance"]["target"]["cell_metadata"]["used"] == {"target_labels": "truth",
                                                                         "few_shot_labels": "few"}
    assert manifest["metrics"]["target"]["n_few_shot_cells_left_out"] == 12  # evaluated on the other cells
    again, _ = run(*evaluated, "--few-shot-drug", "druga", column="few")
    assert again[1] == "resumed" and "trained with 12 labelled target cells of 'few'" in again[8], again
    other, _ = run(*evaluated, column="other")  # the same labels, another column
    assert other[1] == "trained" and ("trained again: the earlier run's model was trained with the labelled target "
                                      "cells of 'few'; this run gives the labelled target cells of 'other'") in other[8]
    assert run(*evaluated, column="other")[0][1] == "resumed"
    none, _ = run(*evaluated)
    assert none[1] == "trained" and "this run gives none" in none[8], none
    assert run(*evaluated)[0][1] == "resumed"
    # the same column name with other labels is other labelled cells too (their labels are compared)
    from scatd_core.train._panel import _few_shot_change, _few_shot_sha256

    few, other = (pd.read_csv(meta, index_col=0)[c].dropna().rename("few") for c in ("few", "flipped"))
    assert _few_shot_sha256(few) == _few_shot_sha256(few.copy()) != _few_shot_sha256(other)
    assert _few_shot_change({"few_shot_sha256": _few_shot_sha256(few), "few_shot_column": "few"}, other) == \
        "the labelled target cells of 'few' are not those the earlier run's model was trained with"


def _few_file(folder, name="few.csv", n=3, offset=0):
    """A `--few-shot-labels` file: ``n`` resistant and ``n`` sensitive cells of the synthetic target
    (the ``offset``-th on), as cell_id,label."""
    _, _, target = synthetic()
    cells = list(target.obs_names)
    resistant = [c for c, r in zip(cells, target.obs["response"]) if r == 0][offset:offset + n]
    sensitive = [c for c, r in zip(cells, target.obs["response"]) if r == 1][offset:offset + n]
    pd.DataFrame({"cell_id": resistant + sensitive, "label": ["resistant"] * n + ["sensitive"] * n}).to_csv(
        folder / name, index=False)
    return folder / name


def test_scatd_train_panel_few_shot_labels_is_checked_before_training_with_scatd_trains_messages(
        tmp_path, capsys, monkeypatch):
    """`scatd train` takes labelled target cells as a cell_id,label file (--few-shot-labels) or as a
    column; `scatd train-panel` had only the column. It takes the file too, for one drug: refused
    with --few-shot-column, and a wrong label word or cells not in the target give `scatd train`'s
    own messages, before any drug is trained."""
    from scatd_core.cli import main

    args = _cli_train_args(tmp_path)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA,OTHER", *args[args.index("--target"):],
             "--min-lines", "2", "--library", str(tmp_path / "lib")]
    (tmp_path / "word.csv").write_text("cell_id,label\ncell1,resistant\ncell2,maybe\ncell3,sensitive\n")
    (tmp_path / "unknown.csv").write_text("cell_id,label\nx1,resistant\nx2,resistant\nx3,sensitive\nx4,sensitive\n")

    def error(argv) -> str:
        assert main(argv) == 2
        return "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("Training"))

    # scatd train's messages (it gets as far as matching the cells to the target, then stops)
    said = {name: error(args + ["--few-shot-labels", str(tmp_path / name), "--library", str(tmp_path / "lib")])
            for name in ("word.csv", "unknown.csv")}
    assert "error: word.csv: labels other than sensitive/resistant: 'maybe'." in said["word.csv"]
    assert "error: None of the 4 labelled cells (e.g. x1, x2, x3) is a usable cell of the target" in said["unknown.csv"]
    monkeypatch.setattr("scatd_core.train._run.train_drug_model", lambda *a, **k: pytest.fail("trained"))
    for name in ("word.csv", "unknown.csv"):
        err = error(panel + ["--few-shot-labels", str(tmp_path / name), "--few-shot-drug", "DRUGA"])
        assert said[name].splitlines()[-2:] == err.splitlines()[-2:], (name, err)  # the error and its hint
    few = str(_few_file(tmp_path))
    with pytest.raises(SystemExit):  # one way to give them
        main(panel + ["--few-shot-labels", few, "--few-shot-column", "few", "--few-shot-drug", "DRUGA"])
    assert "argument --few-shot-column: not allowed with argument --few-shot-labels" in capsys.readouterr().err
    for extra, said_here in [
        ([], "error: The labelled target cells (few.csv) are labels for one drug, and the panel has 2 drugs"),
        (["--few-shot-drug", "OTHER", "--drugs", "DRUGA"],
         "error: The labelled target cells (few.csv) are for 'OTHER' (--few-shot-drug), which is not one of the drugs "
         "to train (DRUGA)."),
        (["--few-shot-drug", "DRUGA", "--head", "scatd"],
         "error: Training with labelled target cells needs the default linear head."),
        (["--few-shot-drug", "DRUGA", "--few-shot-resistant", "0"],
         "error: --few-shot-resistant is for the --few-shot-column column, and none was given."),
    ]:
        err = error(panel + ["--few-shot-labels", few] + extra)
        assert said_here in err and "unexpected" not in err, (extra, err)


def test_scatd_train_panel_few_shot_labels_trains_its_drug_and_a_changed_file_trains_it_again(tmp_path, capsys):
    """train-panel --few-shot-labels FILE: the panel's drug trains with the file's cells, its model
    records the file as `scatd train --few-shot-labels` records it (name and sha256), and resuming
    compares the file: the same file resumes, the file changed trains the drug again, said."""
    from scatd_core.cli import main
    from scatd_core.train._panel import _few_shot_change

    args = _cli_train_args(tmp_path)
    panel = ["train-panel", *args[1:args.index("--drug")], "--drugs", "DRUGA", *args[args.index("--target"):],
             "--min-lines", "2", "--library", str(tmp_path / "lib"), "--few-shot-labels", str(_few_file(tmp_path))]

    def run():
        code = main(panel)
        out, err = capsys.readouterr()
        assert code == 0, err
        return next(line.split("\t") for line in out.splitlines() if line.startswith("DRUGA\t"))

    row = run()
    assert row[1] == "trained" and "trained with 6 labelled target cells of few.csv" in row[8], row
    [path] = [p for p in (tmp_path / "lib").iterdir() if (p / "manifest.json").is_file()]
    manifest = load_bundle(path).manifest
    assert manifest["provenance"]["few_shot_labels"] == {"file": "few.csv", "sha256": sha256_file(tmp_path / "few.csv")}
    assert manifest["card"]["data"]["few_shot"]["n"] == 6 and manifest["few_shot"]  # trained with them
    assert run()[1] == "resumed"
    _few_file(tmp_path, offset=3)  # the same file, other cells labelled
    again = run()
    assert again[1] == "trained" and ("trained again: the labelled target cells of few.csv are not those the earlier "
                                      "run's model was trained with") in again[8], again
    assert run()[1] == "resumed"
    assert _few_shot_change({"few_shot_sha256": "x", "few_shot_file": "few.csv"}, pd.Series(dtype=str, name="few")) \
        == "the earlier run's model was trained with the labelled target cells of few.csv; this run gives the " \
           "labelled target cells of 'few'"


def test_a_model_trained_on_a_tables_columns_records_the_table_as_the_app_gives_it(tmp_path):
    """The Train page trains on the current dataset, whose cell metadata table (the Data page's
    upload) gave its label or few-shot column: the model records the upload's name and sha256."""
    import hashlib

    from scatd_core import io
    from scatd_core.labels import few_shot_from_column

    bulk, labels, target = synthetic()
    upload = pd.DataFrame({"barcode": target.obs_names, "truth": target.obs["response"].to_numpy(),
                           "few": [("resistant" if r == 0 else "sensitive") if i < 12 else ""
                                   for i, r in enumerate(target.obs["response"])]}).to_csv(index=False).encode()
    io.add_cell_metadata(target, io.read_cell_metadata(upload, "my table.csv"), "my table.csv")
    _, rep = _train(tmp_path, bulk, labels, target, settings=replace(TINY, members=1), target_label_column="truth",
                    target_resistant_value=0, few_shot_labels=few_shot_from_column(target, "few"))
    table = rep["card"]["data"]["target"]["cell_metadata"]
    assert table["file"] == "my table.csv" and table["sha256"] == hashlib.sha256(upload).hexdigest()
    assert table["used"] == {"target_labels": "truth", "few_shot_labels": "few"}
    assert "'few' gave the labelled cells trained on" in " ".join(card_lines(rep["card"]))


def test_the_train_panel_state_file_follows_the_umask(tmp_path):
    """The state file was written with tempfile.mkstemp, so 0600 whatever the umask: a colleague's
    account sharing the folder could not resume the panel. Now the umask applies, as for bundles."""
    import os
    import stat

    from scatd_core.train._panel import _read_state, _write_state

    path = tmp_path / "state" / "abc.json"
    old = os.umask(0o022)
    try:
        _write_state(path, {"DRUGA": {"status": "trained"}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _read_state(path) == {"DRUGA": {"status": "trained"}}
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]  # no temporary file left


def test_training_from_a_backbone_that_scales_counts_over_its_own_genes_says_the_new_model_does_not(tmp_path):
    """A backbone bundle scales counts over its own genes (library_size 'model genes'); the model
    trained from it scales them over all the genes of the data ('all genes'): said at once, recorded."""
    from scatd_core.preprocess import ALL_GENES, MODEL_GENES

    bulk, labels, target = synthetic()
    genes = [f"G{i}" for i in range(N_GENES)]
    arch = Architecture("dist_vae", [len(genes), 16, 8], 4, [4, 8, 16])
    torch.manual_seed(5)
    state = ResVAE(arch).eval().state_dict()
    said = []
    for transform, size, expected in (("log1p_cp10k", None, True), ("standardize", ALL_GENES, False),
                                      ("none", None, False)):
        backbone = save_bundle(tmp_path / f"bb_{transform}", state, arch, drug=None, genes=genes,
                               input_transform=transform, library_size=size, overwrite=True)
        said.clear()
        bundle, rep = _train(tmp_path, bulk, labels, target, f"m_{transform}", backbone_bundle=backbone.path,
                             notice=said.append)
        note = [w for w in rep["warnings"] if w.startswith("Raw counts are scaled differently")]
        assert bool(note) == expected, (transform, rep["warnings"])
        assert bundle.manifest["library_size"] == ALL_GENES
        assert bundle.manifest["provenance"]["backbone_bundle"]["library_size"] == (size or MODEL_GENES)
        if expected:
            assert note[0] in said  # said before the training, as the data's warnings
            assert f"over its own {N_GENES:,} genes" in note[0] and "library_size 'all genes'" in note[0]
            assert "(it is not fine-tuned" in note[0]


def test_one_users_panel_run_never_resumes_another_users_models(tmp_path, monkeypatch):
    """QA: the panel-training records were named from the inputs and settings only, so bob training a
    panel on exactly alice's inputs got her models back as his results ("resumed"). Who trains is
    part of the record's name: alice resumes her own, bob trains his."""
    from scatd_core.train import train_panel

    monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
    bulk, labels, target = synthetic(n_bulk=24, n_cells=20)

    def run(user, **how):
        summary, _ = train_panel(bulk, labels, ["DRUGA"], target, settings=QUICK, device="cpu",
                                 library=tmp_path / "lib", min_lines_per_class=2, trained_by=user, **how)
        return summary.iloc[0]["status"]

    assert run("alice") == "trained"
    assert run("bob") == "trained"  # not alice's model as his
    assert run("alice") == "resumed"
    # the command line's system user 'alice' is not the app's login 'alice' (another namespace)
    assert run("alice", source="the Train page's panel") == "trained"


def test_a_file_record_given_with_data_keeps_only_the_files_own_name():
    """The record of data read from a file (the Train page's upload: its name as the browser gave it,
    and the sha256 of its bytes) names the file, never a folder, as a label table's record does; the
    bulk's values hash is added, the same as for the data given without a record."""
    from scatd_core.train._data import labels_record, read_if_path

    bulk, labels, target = synthetic()
    given = {"file": "C:\\Users\\me\\bulk.csv", "sha256": "a" * 64}
    _, entry = read_if_path(bulk, "bulk", record=given)
    assert entry == {"file": "bulk.csv", "sha256": "a" * 64, "values_sha256": read_if_path(bulk, "bulk")[1]["sha256"]}
    assert read_if_path(target, "target", record={"file": "/srv/x/cells.h5ad", "sha256": "b" * 64})[1] == {
        "file": "cells.h5ad", "sha256": "b" * 64}
    assert labels_record(labels, {"file": "C:\\Users\\me\\labels.csv", "sha256": "c" * 64})["file"] == "labels.csv"
