"""Evaluation against known labels: scores, curves, threshold helpers, groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from scatd_core import metrics
from scatd_core.errors import InputError


def test_evaluate_matches_sklearn_and_counts_left_out_cells():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1)
    y[:5] = np.nan           # no label
    p[5:9] = np.nan          # not scored
    ev = metrics.evaluate(y, p, 0.5)
    keep = np.isfinite(y) & np.isfinite(p)
    yk, pk = y[keep].astype(int), p[keep]
    called = (pk > 0.5).astype(int)
    assert ev.n_evaluated == keep.sum() and ev.n_missing_label == 5 and ev.n_not_scored == 4
    assert ev.auroc == pytest.approx(skm.roc_auc_score(yk, pk))
    assert ev.auprc == pytest.approx(skm.average_precision_score(yk, pk))
    assert ev.f1 == pytest.approx(skm.f1_score(yk, called))
    assert ev.mcc == pytest.approx(skm.matthews_corrcoef(yk, called))
    assert ev.confusion.tolist() == skm.confusion_matrix(yk, called).tolist()
    table = ev.table()
    assert {"auroc", "auprc", "f1", "mcc", "true_positive"} <= set(table["metric"])
    assert len(ev.notes) == 2


def test_single_class_labels_give_a_clear_message():
    with pytest.raises(InputError, match="Every labelled cell is 'resistant'") as err:
        metrics.evaluate([1, 1, 1], [0.2, 0.5, 0.9], 0.5)
    assert "both" in err.value.message and err.value.hint
    with pytest.raises(InputError, match="nothing can be evaluated"):
        metrics.evaluate([np.nan, np.nan], [0.2, 0.5], 0.5)
    with pytest.raises(InputError):
        metrics.roc_curve([0, 0], [0.1, 0.2])


def test_curves_span_the_unit_square():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    roc = metrics.roc_curve(y, p)
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1 and (roc["threshold"] <= 1).all()
    pr = metrics.pr_curve(y, p)
    assert pr["recall"].iloc[-1] == 0 and np.isnan(pr["threshold"].iloc[-1])


def test_youden_threshold_gives_the_best_j_with_the_strict_rule():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 300), 0, 1)
    t = metrics.youden_threshold(y, p)
    called = p > t
    j = called[y == 1].mean() - called[y == 0].mean()
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert j == pytest.approx((tpr - fpr).max())


def test_precision_threshold_reaches_the_target_with_most_recall():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    t = metrics.precision_threshold(y, p, 0.75)
    called = p > t
    assert y[called].mean() >= 0.75
    assert called.sum() == 5  # 0.4..0.8: precision 4/5, the largest set reaching 0.75
    assert metrics.precision_threshold(np.array([1, 0]), np.array([0.9, 0.1]), 1.0) == pytest.approx(0.1)
    assert metrics.precision_threshold(np.array([0, 1, 0]), np.array([0.9, 0.5, 0.1]), 1.0) is None
    with pytest.raises(InputError):
        metrics.precision_threshold(y, p, 0)


def test_group_fractions_keep_unscored_cells_apart_and_sort_naturally():
    labels = ["resistant", "sensitive", "not scored", "resistant", "sensitive", "resistant"]
    groups = ["10", "2", "2", "2", "1", "1"]
    out = metrics.group_fractions(labels, groups, excluded=["not scored"])
    assert list(out["group"]) == ["1", "2", "10"]
    row = out.set_index("group").loc["2"]
    assert row["n_cells"] == 3 and row["n_called"] == 2 and row["fraction_resistant"] == 0.5
    cat = metrics.group_fractions(labels, pd.Categorical(groups, categories=["2", "10", "1"]))
    assert list(cat["group"]) == ["2", "10", "1"]


def test_mcc_and_fraction_thresholds():
    rng = np.random.default_rng(3)
    y = np.repeat([0.0, 1.0], 50)
    p = np.clip(0.4 * y + rng.uniform(0, 0.6, 100), 0, 1)
    t = metrics.mcc_threshold(y, p)
    best = max(skm.matthews_corrcoef(y, (p > v).astype(int)) for v in np.unique(p))
    assert skm.matthews_corrcoef(y, (p > t).astype(int)) == pytest.approx(best)
    t = metrics.fraction_threshold(p, 0.3)
    assert (p > t).mean() == pytest.approx(0.3, abs=0.011)
    with pytest.raises(InputError, match="between 0 and 1"):
        metrics.fraction_threshold(p, 1.2)
    # tied probabilities (a saturated softmax): the closest share a threshold can give, not 0 %
    tied = np.r_[np.ones(20), np.linspace(0.1, 0.5, 80)]
    assert (tied > metrics.fraction_threshold(tied, 0.3)).mean() == pytest.approx(0.3)
    assert (tied > metrics.fraction_threshold(tied, 0.1)).mean() == pytest.approx(0.2)
    most = np.r_[np.ones(60), tied[20:40]]
    assert (most > metrics.fraction_threshold(most, 0.7)).mean() == pytest.approx(0.75)


def test_fast_scores_match_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from scatd_core.metrics import _fast_auprc, _fast_auroc

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(4, 60))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = np.round(rng.random(n), int(rng.integers(1, 3)))  # many ties
        assert _fast_auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert _fast_auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_bootstrap_intervals_cover_the_estimate_and_shrink_with_data():
    from scatd_core.metrics import bootstrap_ci, paired_bootstrap

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = y * 0.8 + rng.random(400)
    value, lo, hi = bootstrap_ci(y, p, "auroc", seed=0)
    assert lo < value < hi and value == pytest.approx(metrics.auroc(y, p))
    _, lo_small, hi_small = bootstrap_ci(y[:40], p[:40], "auroc", seed=0)
    assert hi_small - lo_small > hi - lo
    assert bootstrap_ci(y, p, "auroc", seed=3) == bootstrap_ci(y, p, "auroc", seed=3)  # seeded
    value, lo, hi = bootstrap_ci(y, p, "auprc", seed=0)
    assert lo < value < hi and value == pytest.approx(metrics.auprc(y, p))
    # identical predictions differ by exactly 0; a clearly better one has an interval above 0
    assert paired_bootstrap(y, p, p) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_bootstrap(y, p, rng.random(400), seed=0)
    assert d > 0.3 and lo > 0
    assert np.isnan(bootstrap_ci(np.ones(5), np.arange(5.0))[0])  # one class: no interval


def test_precision_at_k_needs_no_threshold():
    y = np.array([1, 0, 1, 0, np.nan, 1])
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.95, 0.2])
    assert metrics.precision_at_k(y, p, 1) == 1.0  # the unlabelled 0.95 cell is left out
    assert metrics.precision_at_k(y, p, 3) == pytest.approx(2 / 3)
    assert metrics.precision_at_k(y, p, 99) == pytest.approx(3 / 5)
    with pytest.raises(InputError, match="k >= 1"):
        metrics.precision_at_k(y, p, 0)


def test_the_auroc_interval_is_the_bootstraps_without_its_cost():
    """The pages ask, on every visit, whether an AUROC under 0.5 is beyond chance: the analytic
    interval (Hanley & McNeil) agrees with a 1,000-resample bootstrap to ~0.01 and takes no time."""
    for n, shift in ((111, 0.0), (300, -0.3), (2000, -0.1), (5000, 0.0)):
        rng = np.random.default_rng(1)
        y = rng.integers(0, 2, n)
        p = rng.random(n) + shift * y
        auroc, low, high = metrics.bootstrap_ci(y, p, "auroc")
        a_low, a_high = metrics.auroc_interval(auroc, int(y.sum()), int(n - y.sum()))
        assert abs(a_low - low) < 0.01 and abs(a_high - high) < 0.01, (n, low, high, a_low, a_high)
    assert metrics.auroc_interval(0.5, 0, 10) != metrics.auroc_interval(0.5, 0, 10)  # NaN without both classes


def test_every_evaluation_has_the_auroc_interval_and_the_auprc_chance_level():
    """An AUROC of 0.69 on 8 cells is no evidence: its interval is shown (and exported) whichever
    side of 0.5 it falls, a 'not distinguishable from chance' note comes with it, and so does the
    AUPRC's chance level (QA: only AUROCs under 0.5 had an interval)."""
    import anndata as ad

    from scatd_core.predict import set_threshold  # noqa: F401  (the run record below is what predict writes)

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    p = np.array([0.9, 0.6, 0.4, 0.3, 0.8, 0.5, 0.35, 0.2, 0.1, 0.05])
    ev = metrics.evaluate(y, p, 0.5)
    low, high = ev.auroc_ci
    assert low < 0.5 < ev.auroc < high and ev.within_chance
    assert ev.auprc_chance == pytest.approx(0.4)
    d = ev.as_dict()
    assert d["auroc_ci_low"] == low and d["auroc_ci_high"] == high and d["auprc_chance"] == pytest.approx(0.4)
    assert list(d)[list(d).index("auroc") + 1] == "auroc_ci_low"  # beside the AUROC in metrics.csv
    assert any("Only 4 resistant and 6 sensitive" in n for n in ev.notes)
    assert all(k in metrics.METRIC_MEANINGS for k in d)

    adata = ad.AnnData(np.zeros((10, 1), dtype=np.float32))
    adata.obs["scatd_prob_resistant"] = p
    adata.obs["truth"] = np.where(y == 1, "resistant", "sensitive")
    adata.uns["scatd"] = {"threshold": {"value": 0.5, "source": "user", "calibrated": False},
                          "positive_label": "resistant", "negative_label": "sensitive"}
    evaluation, _, _ = metrics.evaluate_column(adata, "truth", resistant="resistant")
    assert any("not distinguishable from chance" in n for n in evaluation.notes)
    assert not evaluation.ranks_reversed

    rng = np.random.default_rng(0)  # many cells, a real separation: no such notes
    y = rng.integers(0, 2, 2000).astype(float)
    ev = metrics.evaluate(y, rng.random(2000) + 0.3 * y, 0.5)
    assert not ev.within_chance and ev.auroc_ci[0] > 0.5 and not any("uncertain" in n for n in ev.notes)


def test_a_printed_interval_touches_0_5_only_when_it_does(monkeypatch):
    """QA: "AUROC is below 0.5 beyond chance (95% interval 0.453-0.500)" with an upper end of
    0.49984: rounded onto 0.5. Ends are rounded outward (lower down, upper up), with more decimals
    where that would put one onto or across 0.5, 0 or 1 while it is not there."""
    import anndata as ad

    ends = metrics.interval_ends
    assert ends(0.45312, 0.49984) == ("0.453", "0.4999")
    assert ends(0.50012, 0.61234) == ("0.5001", "0.613")
    assert ends(0.4996, 0.6) == ("0.499", "0.600")  # includes 0.5, and reads so
    assert ends(0.883, 0.919) == ("0.883", "0.919")  # values on the grid stay as they are
    assert ends(0.0003, 0.9996) == ("0.0003", "0.9996") and ends(0.0, 1.0) == ("0.000", "1.000")
    assert ends(0.5, 0.7) == ("0.500", "0.700")  # an end that is at 0.5 says so
    assert ends(0.4996, 0.6, 2) == ("0.49", "0.60")
    assert ends(-0.0123, -0.00004, signed=True) == ("-0.013", "-0.00004")
    assert ends(float("nan"), None) == ("—", "—")

    adata = ad.AnnData(np.zeros((10, 1), dtype=np.float32))
    adata.obs["scatd_prob_resistant"] = np.linspace(0.05, 0.95, 10)
    adata.obs["truth"] = np.where(np.arange(10) < 5, "resistant", "sensitive")
    adata.uns["scatd"] = {"threshold": {"value": 0.5, "source": "user", "calibrated": False},
                          "positive_label": "resistant", "negative_label": "sensitive"}
    monkeypatch.setattr(metrics, "auroc_interval", lambda *a: (0.45312, 0.49984))
    evaluation, _, _ = metrics.evaluate_column(adata, "truth", resistant="resistant")
    note = next(n for n in evaluation.notes if n.startswith("AUROC is below 0.5 beyond chance"))
    assert "(95% interval 0.453-0.4999)" in note


def test_precision_and_f1_are_undefined_not_0_when_no_cell_is_called_resistant():
    """QA: at threshold 1.0 no cell is called resistant, and precision (0 of 0) and F1 read 0.000
    with no note. They are NaN (empty in metrics.csv, "—" in the app and the report), with why;
    recall, specificity and the rest keep their values."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(20), np.zeros(20)]
    p = np.clip(0.5 * y + rng.uniform(0, 0.5, 40), 0, 0.99)
    none = metrics.evaluate(y, p, 1.0)
    assert np.isnan(none.precision) and np.isnan(none.f1)
    assert set(none.undefined) == {"precision", "f1", "mcc"} and "0 of 0" in none.undefined["precision"]
    assert none.recall == 0.0 and none.specificity == 1.0 and none.fraction_called_resistant == 0.0
    assert any("precision, F1 and MCC are undefined" in n for n in none.notes)
    some = metrics.evaluate(y, p, 0.5)  # cells called resistant: defined as before
    assert some.precision == pytest.approx(skm.precision_score(y, p > 0.5)) and not some.undefined
    assert some.f1 == pytest.approx(skm.f1_score(y, p > 0.5))


def test_mcc_is_undefined_not_0_when_every_cell_is_called_the_same_way():
    """QA: with every cell called one way MCC read 0 (scikit-learn's convention), as if a measured
    "chance". Calls that never vary correlate with nothing: MCC is NaN with why, either way round,
    and precision/F1 stay defined when every cell is called resistant."""
    y = np.r_[np.ones(20), np.zeros(20)]
    p = np.linspace(0.05, 0.95, 40)
    for threshold, called in ((1.0, "sensitive"), (0.0, "resistant")):
        ev = metrics.evaluate(y, p, threshold)
        assert np.isnan(ev.mcc) and np.isnan(ev.as_dict()["mcc"])
        assert f"every labelled cell is called {called}" in ev.undefined["mcc"]
        assert "not the same as 0 (chance)" in ev.undefined["mcc"] and "mcc" in ev.undefined_note()
        # QA: "MCC (...) is 0 of 0" read as a count; MCC is a correlation, undefined here
        assert "so MCC is undefined: it is the correlation" in ev.undefined["mcc"] and "0 of 0" not in ev.undefined["mcc"]
        assert any("MCC" in n and "undefined" in n for n in ev.notes)
    every = metrics.evaluate(y, p, 0.0)
    assert set(every.undefined) == {"mcc"} and every.precision == 0.5 and every.recall == 1.0
    assert every.undefined_note().startswith("mcc is empty (undefined): every labelled cell is called resistant")
    assert not np.isnan(metrics.evaluate(y, p, 0.5).mcc)  # calls of both kinds: defined


def test_an_evaluation_against_labels_says_where_the_baselines_are():
    """QA (real data): the Cells page, `scatd report` and metrics.csv gave the AUROC against the cells' labels
    with no baseline and no word of one. A saved model does not keep the bulk lines its baselines are fitted
    on, so the evaluation gives the card's scores of the model and each baseline, and how to score them on
    these cells; a model without them (an imported checkpoint) says so."""
    import json

    import anndata as ad

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    adata = ad.AnnData(np.zeros((200, 1), dtype=np.float32))
    adata.obs["scatd_prob_resistant"] = np.clip(rng.random(200) * 0.6 + 0.3 * y, 0, 1)
    adata.obs["truth"] = np.where(y == 1, "resistant", "sensitive")
    card = {"evaluations": [
        {"name": "bulk_cv", "title": "Bulk cell lines (5-fold CV)",
         "scores": [{"model": "this model", "auroc": 0.622}, {"model": "logistic regression", "auroc": 0.708},
                    {"model": "gradient boosting", "auroc": 0.654}]},
        {"name": "target", "title": "Target cells (120 with labels)",
         "scores": [{"model": "this model", "auroc": 0.777}, {"model": "logistic regression", "auroc": 0.721}]}]}
    adata.uns["scatd"] = {"threshold": {"value": 0.5, "source": "user", "calibrated": False},
                          "positive_label": "resistant", "negative_label": "sensitive",
                          "model": {"name": "m", "card_json": json.dumps(card)}}
    evaluation, _, _ = metrics.evaluate_column(adata, "truth", resistant="resistant")
    [note] = [n for n in evaluation.notes if "baseline" in n]
    assert "No baseline is fitted on these cells" in note
    assert "on bulk cell lines (5-fold CV), this model 0.622, logistic regression 0.708, gradient boosting 0.654" in note
    assert "on target cells (120 with labels), this model 0.777, logistic regression 0.721" in note
    assert "scatd train --target" in note and "Train page" in note
    adata.uns["scatd"]["model"] = {"name": "imported", "import_card": ["an imported checkpoint"]}
    [note] = [n for n in metrics.evaluate_column(adata, "truth", resistant="resistant")[0].notes if "baseline" in n]
    assert note.startswith("No baseline is scored here") and "imported checkpoint" in note
