"""Simple baselines trained on the same inputs in the same run, so every accuracy has a yardstick.

- **logistic regression**: scikit-learn's ``LogisticRegression`` with balanced class weights on
  the model's inputs, its L2 strength ``C`` **tuned**: chosen by an inner stratified
  cross-validation (mean AUROC over the inner folds) from :data:`LOGISTIC_C_GRID`, which always
  includes the C of the model's own linear heads (``--head-c``, default 0.01). In the bulk
  cross-validation C is chosen again inside each training fold (nested: the test fold is never
  seen); the baseline scored on the target cells is fitted on all the labelled bulk with C chosen
  by cross-validation on the bulk. The target's labels are never used to choose it. The chosen
  values are recorded on the model card (:func:`tuning_record`). Models trained before
  2026-12-02 used a fixed ``C = 0.1`` (the published floor's classifier), 10 times weaker a
  penalty than the heads' 0.01: on Gefitinib that alone made the model "beat" it on the cells;
  the card says so when it reads such a model (``OLD_LOGISTIC_TITLE``);
- **logistic regression at the heads' C** (linear heads only): the same with C fixed at the
  heads' C, i.e. the model's own head without the backbones' latent. The heads' C (0.01) was
  chosen looking at the SCAD targets (``benches/results_transfer.md``), so a model that does not
  beat this baseline gains nothing from its backbones on these data;
- **gradient boosting**: scikit-learn's ``HistGradientBoostingClassifier`` with its defaults and
  balanced class weights (the kind of model a 2026 benchmark found no single-cell transfer method
  to beat), on genes binned beforehand as it bins them without weights (:class:`BinnedBoosting`).

Both see exactly the model's input: each domain standardised on its own as ``scatd predict``
does, so the target's genes are re-z-scored over its own cells. That makes the comparison on the
model card fair (same inputs, same run), but it is **not** the published floor, which applies
the regression to the target values as given (SCAD's z-scores): on Gefitinib the published
recipe scores 0.766 on the single cells, this baseline 0.738 at C=0.1 and 0.761 tuned (C=0.03
chosen on the bulk). The published floor itself is
rerun and compared with the model in ``benches/eval_transfer.py`` ("logistic regression,
published recipe (the floor)"; ``benches/README.md``, ``benches/results_transfer.md``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from scatd_core.metrics import _fast_auroc  # scikit-learn's roc_auc_score to rounding, without its ~15 ms of checks

LOGISTIC = "logistic_regression"
BOOSTING = "gradient_boosting"
TARGET_ONLY = "target_only_logistic_regression"
#: A logistic regression with the C of the model's own linear heads: the model's head without the
#: backbones' latent (the heads' C was itself chosen on the SCAD targets, benches/results_transfer.md)
HEADS_C = "logistic_regression_heads_c"
BASELINE_TITLES = {
    LOGISTIC: "logistic regression (C tuned by inner CV, balanced)",
    BOOSTING: "gradient boosting (HistGradientBoosting, balanced)",
    TARGET_ONLY: "logistic regression on the labelled target cells alone",
}


def heads_c_title(c: float) -> str:
    """The card's name of the :data:`HEADS_C` baseline, e.g. ``logistic regression, heads' C (C=0.01, balanced)``."""
    return f"logistic regression, heads' C (C={float(c):g}, balanced)"
#: The title of the logistic-regression baseline of models trained before 2026-12-02: a fixed C=0.1
OLD_LOGISTIC_TITLE = "logistic regression (C=0.1, balanced)"
#: The C values the logistic-regression baseline chooses from (the heads' C is added when not in it)
LOGISTIC_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Inner cross-validation folds that choose C (fewer when the smaller class has fewer samples)
INNER_FOLDS = 5
#: The C of the model's own linear heads by default (``--head-c``), and the baseline's when no
#: inner cross-validation is possible (fewer than 2 samples of a class)
HEAD_C = 0.01


def c_grid(head_c: float | None = None) -> tuple[float, ...]:
    """:data:`LOGISTIC_C_GRID` with the heads' C (``head_c``) added, ascending."""
    extra = () if head_c is None else (float(head_c),)
    return tuple(sorted(set(map(float, LOGISTIC_C_GRID + extra))))


def logistic(seed: int, c: float = HEAD_C) -> LogisticRegression:
    return LogisticRegression(C=float(c), class_weight="balanced", max_iter=10_000)


#: Bins per gene of the gradient-boosting baseline (scikit-learn's default ``max_bins``)
BOOSTING_BINS = 255


def bin_edges(x: np.ndarray, bins: int = BOOSTING_BINS) -> list[np.ndarray]:
    """Per column of ``x``, the edges of at most ``bins`` bins of its values, unweighted, as
    scikit-learn's ``HistGradientBoosting`` finds them without sample weights: midpoints between
    the distinct values when there are at most ``bins`` of them, else its quantiles
    (``averaged_inverted_cdf``), duplicates dropped."""
    quantiles = np.linspace(0, 100, bins + 1)[1:-1]
    edges = []
    for j in range(x.shape[1]):
        col = np.asarray(x[:, j], dtype=np.float64)
        col = col[~np.isnan(col)]
        distinct = np.unique(col)
        if len(distinct) <= bins:
            edges.append((distinct[:-1] + distinct[1:]) / 2)
        else:
            edges.append(np.unique(np.percentile(col, quantiles, method="averaged_inverted_cdf")))
    return edges


class BinnedBoosting:
    """``HistGradientBoostingClassifier(class_weight="balanced")`` on genes binned beforehand by
    :func:`bin_edges` of the training samples.

    Given sample weights (``class_weight``), scikit-learn (1.6 and later) places each gene's bins at
    weighted quantiles, one weighted-percentile call per edge: 254 per gene, ~50 ms, whenever a gene
    has more than 255 distinct values, i.e. for 256 or more training samples. On 300 cell lines x
    2,000 genes one fit took 110-130 s instead of 4-6 s for 255 lines; on 1,000 lines x 19,264
    genes, hours. Binned here (unweighted quantiles, as scikit-learn bins without weights), each gene
    has at most 255 distinct values and scikit-learn takes them as they are: the trees see the same
    order of the values within the same bins, the class weights still weight the loss."""

    def __init__(self, seed: int):
        self.model = HistGradientBoostingClassifier(class_weight="balanced", random_state=int(seed))

    #: Rows binned and scored at a time: scikit-learn takes float64 (a copy of the whole target
    #: otherwise: 1.5 GB for 10,000 cells x 19,264 genes)
    CHUNK_ROWS = 4096

    def _binned(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float64)  # what scikit-learn takes, without another copy
        for j, edges in enumerate(self.edges_):
            col = np.asarray(x[:, j], dtype=np.float64)
            out[:, j] = np.searchsorted(edges, col, side="left")  # bin i: edges[i-1] < value <= edges[i]
            out[np.isnan(col), j] = np.nan  # missing stays missing
        return out

    def fit(self, x: np.ndarray, y: np.ndarray) -> "BinnedBoosting":
        self.edges_ = bin_edges(x)
        self.model.fit(self._binned(x), y)
        self.classes_ = self.model.classes_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.model.predict_proba(self._binned(x[i:i + self.CHUNK_ROWS]))
                               for i in range(0, max(len(x), 1), self.CHUNK_ROWS)])


def boosting(seed: int) -> BinnedBoosting:
    return BinnedBoosting(seed)


MAKERS = {LOGISTIC: logistic, BOOSTING: boosting}


def fit_units(name: str, n_features: int) -> int:
    """Rough cost of one fit of baseline ``name`` in training epochs, for the progress bar: the
    logistic regression about three (its inner cross-validation over the C grid: ~40 small fits);
    gradient boosting ``n_features / 30`` (binned beforehand, :class:`BinnedBoosting`: 300 cell
    lines x 2,000 genes on one core, 5-7 s, about 70 of the demo's backbone epochs; it was 110-130 s
    with scikit-learn's weighted binning), kept within 2 to 200."""
    return 3 if name == LOGISTIC else 1 if name == HEADS_C else int(np.clip(n_features / 30, 2, 200))


def _p_resistant(model, x_new: np.ndarray) -> np.ndarray:
    return model.predict_proba(x_new)[:, list(model.classes_).index(1)]


def choose_c(x: np.ndarray, y: np.ndarray, seed: int, grid: tuple[float, ...] | None = None) -> dict:
    """Choose the logistic regression's C on ``(x, y)`` alone by stratified inner cross-validation:
    the C of ``grid`` (default :func:`c_grid`) with the highest mean AUROC over the inner folds, the
    smallest such C on a tie. ``{"c": C, "inner_folds": k, "inner_auroc": {C: mean AUROC}}``; with
    fewer than 2 samples of a class no CV is possible: C is :data:`HEAD_C` and ``inner_folds`` 0."""
    grid = c_grid() if grid is None else tuple(sorted(set(map(float, grid))))
    y = np.asarray(y)
    n_min = int(min((y == 0).sum(), (y == 1).sum()))
    k = min(INNER_FOLDS, n_min)
    if k < 2:
        c = HEAD_C if HEAD_C in grid else grid[len(grid) // 2]
        return {"c": c, "inner_folds": 0, "inner_auroc": {}}
    scores = np.zeros(len(grid))
    for train, val in StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed)).split(np.zeros(len(y)), y):
        for i, c in enumerate(grid):
            scores[i] += _fast_auroc(y[val], _p_resistant(logistic(seed, c).fit(x[train], y[train]), x[val]))
    scores /= k
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])  # the smallest C among the best
    return {"c": grid[best], "inner_folds": k, "inner_auroc": {c: round(float(v), 4) for c, v in zip(grid, scores)}}


def fit_predict(name: str, x: np.ndarray, y: np.ndarray, x_new: np.ndarray, seed: int,
                grid: tuple[float, ...] | None = None, chosen: list | None = None,
                c: float | None = None, on_training_scale: bool = False) -> np.ndarray:
    """P(resistant) of ``x_new`` from baseline ``name`` fitted on ``(x, y)``. The logistic
    regression's C is first chosen on ``(x, y)`` by :func:`choose_c` from ``grid``; the choice is
    appended to ``chosen`` when given. :data:`HEADS_C` is a logistic regression with C ``c``.

    ``on_training_scale`` (the tuned logistic regression): instead of P(resistant), its logit
    centred and scaled by the mean and sd of the training samples' logits, which ranks ``x_new`` the
    same way. Out-of-fold scores are pooled over the folds into one AUROC, and folds that chose
    different C give logits of very different spreads (C=0.001 keeps every probability near 0.5):
    pooled as they are, a fold's samples all sit in the middle of the others' ranking. On Gefitinib
    (CCLE+GDSC) that alone took the pooled AUROC from 0.789 to 0.715 (the folds' mean AUROC: 0.798).
    The scale comes from the training samples only."""
    if name == HEADS_C:
        model = logistic(seed, HEAD_C if c is None else c).fit(x, y)
    elif name == LOGISTIC:
        choice = choose_c(x, y, seed, grid)
        if chosen is not None:
            chosen.append(choice)
        model = logistic(seed, choice["c"]).fit(x, y)
        if on_training_scale:
            z = model.decision_function(x)
            return (model.decision_function(x_new) - z.mean()) / max(float(z.std()), 1e-12)
    else:
        model = MAKERS[name](seed).fit(x, y)
    return _p_resistant(model, x_new)


def out_of_fold(name: str, x: np.ndarray, y: np.ndarray, splits, seed: int,
                on_fit: Callable[[int], None] | None = None, grid: tuple[float, ...] | None = None,
                chosen: list | None = None, c: float | None = None) -> np.ndarray:
    """Out-of-fold P(resistant) of baseline ``name`` over the CV ``splits``; ``on_fit(k)`` after
    fold k's fit (progress). The logistic regression's C is chosen inside each training fold
    (nested cross-validation), each fold's choice appended to ``chosen``; its scores are
    standardised logits (see :func:`fit_predict`'s ``on_training_scale``), not probabilities."""
    oof = np.full(len(y), np.nan)
    for k, (train, val) in enumerate(splits):
        oof[val] = fit_predict(name, x[train], y[train], x[val], seed, grid=grid, chosen=chosen, c=c,
                               on_training_scale=name == LOGISTIC)
        if on_fit is not None:
            on_fit(k)
    return oof


def tuning_record(grid: tuple[float, ...], head_c: float | None, per_fold: list[dict],
                  final: dict | None, target_only: dict | None = None) -> dict:
    """What the model card records of the logistic regression's C: the grid, the heads' C, the C
    chosen in each bulk CV training fold, and on all the bulk (the baseline scored on the target
    cells) and on the labelled target cells (few-shot), with their inner folds."""
    def one(choice: dict | None) -> dict | None:
        return None if choice is None else {"c": choice["c"], "inner_folds": choice["inner_folds"]}

    return {"c_grid": list(grid), "head_c": None if head_c is None else float(head_c),
            "selection": "mean AUROC over stratified inner cross-validation folds, on the training samples only",
            "bulk_cv_folds": [one(c) for c in per_fold], "all_bulk": one(final),
            **({"target_only": one(target_only)} if target_only is not None else {})}
