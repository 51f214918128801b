"""The model card's gradient-boosting baseline: genes binned beforehand (unweighted quantiles), so
scikit-learn never places bins at weighted quantiles (one weighted-percentile call per edge and
gene: minutes to hours for 256 or more cell lines)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.ensemble._hist_gradient_boosting import binning

from scatd_core.train import _baselines as baselines


def _data(n: int = 300, genes: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, genes))
    x[:, 3] = np.round(x[:, 3])  # a gene with few distinct values: its bins are the values themselves
    y = ((x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n)) > 0.8).astype(int)  # unbalanced classes
    return x, y, rng.normal(size=(80, genes))


def test_binning_beforehand_gives_scikit_learns_own_unweighted_model_exactly():
    """Without weights, scikit-learn bins the genes as :func:`bin_edges` does: the model fitted on
    the binned genes predicts what scikit-learn's own does on the genes, to the bit."""
    x, y, new = _data()
    own = HistGradientBoostingClassifier(random_state=0).fit(x, y)
    binned = baselines.BinnedBoosting(0)
    binned.model = HistGradientBoostingClassifier(random_state=0)
    binned.fit(x, y)
    assert np.array_equal(binned.predict_proba(new), own.predict_proba(new))
    assert all(len(e) <= baselines.BOOSTING_BINS - 1 for e in binned.edges_)


def test_the_balanced_baseline_never_bins_at_weighted_quantiles(monkeypatch):
    """With class weights and more than 255 cell lines, scikit-learn's own binning calls its weighted
    percentile once per bin edge and gene (~50 ms a gene); the baseline's fit never does, and its
    P(resistant) still ranks the cell lines by the genes that carry the signal."""
    x, y, _ = _data()
    calls = []
    real = binning._weighted_percentile

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(binning, "_weighted_percentile", counted)
    HistGradientBoostingClassifier(class_weight="balanced", random_state=0, max_iter=2).fit(x, y)
    assert len(calls) > 1000  # what the baseline avoids (this test's premise: scikit-learn still does it)
    calls.clear()
    model = baselines.boosting(0).fit(x, y)
    assert calls == [] and list(model.classes_) == [0, 1]
    from sklearn.metrics import roc_auc_score

    x2, y2, _ = _data(seed=1)
    assert roc_auc_score(y2, baselines._p_resistant(model, x2)) > 0.7


def test_missing_values_stay_missing_and_new_values_fall_in_the_training_bins():
    x, y, new = _data()
    model = baselines.boosting(0).fit(x, y)
    new[0, 2] = np.nan
    new[1, 0] = 1e9  # beyond every training value: the last bin
    binned = model._binned(new)
    assert np.isnan(binned[0, 2]) and binned[1, 0] == len(model.edges_[0])
    assert np.isfinite(model.predict_proba(new)).all()
    model.CHUNK_ROWS = 7  # scored a few rows at a time: the probabilities of all the rows at once
    assert np.array_equal(model.predict_proba(new), model.model.predict_proba(model._binned(new)))
