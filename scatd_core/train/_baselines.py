"""Simple baselines trained on the same inputs in the same run, so every accuracy has a yardstick.

- **logistic regression**: scikit-learn's ``LogisticRegression`` with ``C = 0.1`` and balanced
  class weights on the model's inputs (the classifier of the published logistic-regression floor,
  ``../shared/data/SOURCES.md``, but not its inputs: see below);
- **gradient boosting**: scikit-learn's ``HistGradientBoostingClassifier`` with its defaults and
  balanced class weights (the kind of model a 2026 benchmark found no single-cell transfer method
  to beat).

Both see exactly the model's input: each domain standardised on its own as ``scatd predict``
does, so the target's genes are re-z-scored over its own cells. That makes the comparison on the
model card fair (same inputs, same run), but it is **not** the published floor, which applies
the regression to the target values as given (SCAD's z-scores): on Gefitinib the published
recipe scores 0.766 on the single cells, this baseline 0.738. The published floor itself is
rerun and compared with the model in ``benches/eval_transfer.py`` ("logistic regression,
published recipe (the floor)"; ``benches/README.md``, ``benches/results_transfer.md``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

LOGISTIC = "logistic_regression"
BOOSTING = "gradient_boosting"
TARGET_ONLY = "target_only_logistic_regression"
BASELINE_TITLES = {
    LOGISTIC: "logistic regression (C=0.1, balanced)",
    BOOSTING: "gradient boosting (HistGradientBoosting, balanced)",
    TARGET_ONLY: "logistic regression on the labelled target cells alone",
}
LOGISTIC_C = 0.1


def logistic(seed: int) -> LogisticRegression:
    return LogisticRegression(C=LOGISTIC_C, class_weight="balanced", max_iter=10_000)


def boosting(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(class_weight="balanced", random_state=int(seed))


MAKERS = {LOGISTIC: logistic, BOOSTING: boosting}


def fit_units(name: str, n_features: int) -> int:
    """Rough cost of one fit of baseline ``name`` in training epochs, for the progress bar: the
    logistic regression about one epoch; gradient boosting ``n_features / 5`` (measured on 300
    cell lines, one core: 35 s for 140 genes and 170 s for 700, 23 and 160 backbone epochs), kept
    within 5 to 200."""
    return 1 if name == LOGISTIC else int(np.clip(n_features / 5, 5, 200))


def fit_predict(name: str, x: np.ndarray, y: np.ndarray, x_new: np.ndarray, seed: int) -> np.ndarray:
    """P(resistant) of ``x_new`` from baseline ``name`` fitted on ``(x, y)``."""
    model = MAKERS[name](seed).fit(x, y)
    return model.predict_proba(x_new)[:, list(model.classes_).index(1)]


def out_of_fold(name: str, x: np.ndarray, y: np.ndarray, splits, seed: int,
                on_fit: Callable[[int], None] | None = None) -> np.ndarray:
    """Out-of-fold P(resistant) of baseline ``name`` over the CV ``splits``; ``on_fit(k)`` after
    fold k's fit (progress)."""
    oof = np.full(len(y), np.nan)
    for k, (train, val) in enumerate(splits):
        oof[val] = fit_predict(name, x[train], y[train], x[val], seed)
        if on_fit is not None:
            on_fit(k)
    return oof
