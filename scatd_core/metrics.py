"""Evaluation of predictions against known labels: scores, curves and decision thresholds.

Labels arrive here already encoded (1 = resistant, 0 = sensitive, NaN = missing) by
:func:`scatd_core.labels.encode_labels` / :func:`scatd_core.labels.encode_column`, the one place
that knows which value of a column means resistant. Missing labels and cells without a
prediction are left out of every score and counted, never turned into a third class.

The decision rule is the one of :func:`scatd_core.predict.predict`: a cell is called positive
when ``P(resistant) > threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn import metrics as skm

from scatd_core._words import counted, natural_key
from scatd_core import _keys
from scatd_core.errors import InputError

#: Fewer labelled cells than this in a class: the evaluation says its scores are very uncertain.
FEW_LABELLED = 10


@dataclass
class Evaluation:
    """Scores of one set of predictions against labels at one threshold.

    ``auroc``/``auprc`` are threshold-free; ``f1``, ``mcc``, ``precision``, ``recall``,
    ``specificity``, ``accuracy`` and ``confusion`` (rows: true sensitive, true resistant;
    columns: called sensitive, called resistant) use ``threshold``.
    """

    threshold: float
    n_cells: int
    n_evaluated: int
    n_positive: int
    n_negative: int
    n_missing_label: int
    n_not_scored: int
    auroc: float
    auprc: float
    f1: float
    mcc: float
    precision: float
    recall: float
    specificity: float
    accuracy: float
    balanced_accuracy: float
    fraction_called_resistant: float
    confusion: np.ndarray
    positive_label: str = "resistant"
    negative_label: str = "sensitive"
    notes: list[str] = field(default_factory=list)
    #: ``(low, high)``: the AUROC's 95 % interval (:func:`auroc_interval`)
    auroc_ci: tuple[float, float] | None = None
    #: labelled cells left out because their labels trained the model (:mod:`scatd_core.training_cells`)
    n_training_left_out: int = 0
    #: what was done with those cells and why (also the first of ``notes``); "" when nothing applies
    training_note: str = ""

    @property
    def undefined(self) -> dict[str, str]:
        """``{metric: why}`` for the scores these calls leave undefined (NaN, never shown as 0):
        precision, and F1 with it, when no evaluated cell is called resistant (0 of 0); MCC when every
        evaluated cell is called the same way (either way: calls that never vary correlate with nothing,
        and scikit-learn's 0 would read as a measured "chance")."""
        tn, fp, fn, tp = (int(v) for v in self.confusion.ravel())
        out = {}
        if not tp + fp:
            why = (f"no labelled cell is called resistant at the threshold {self.threshold:.4g}, so precision (the "
                   "share of the cells called resistant that are labelled resistant) is 0 of 0, and F1 needs it")
            out.update(precision=why, f1=why)
        if not tp + fp or not tn + fn:
            called = "sensitive" if not tp + fp else "resistant"
            out["mcc"] = (f"every labelled cell is called {called} at the threshold {self.threshold:.4g}, so MCC is "
                          "undefined: it is the correlation of calls and labels, and calls that are all the same "
                          "correlate with nothing, which is not the same as 0 (chance)")
        return out

    def undefined_note(self) -> str:
        """The scores left empty (undefined) and why, one sentence per reason (metrics.csv's note); "" when none."""
        by_why: dict[str, list[str]] = {}
        for metric, why in self.undefined.items():
            by_why.setdefault(why, []).append(metric)
        return " ".join(f"{' and '.join(names)} {'are' if len(names) > 1 else 'is'} empty (undefined): {why}."
                        for why, names in by_why.items())

    @property
    def auprc_chance(self) -> float:
        """The AUPRC of a ranking by chance: the share of resistant cells among those evaluated."""
        return self.n_positive / self.n_evaluated if self.n_evaluated else float("nan")

    @property
    def within_chance(self) -> bool:
        """Whether the AUROC's 95 % interval includes 0.5: these cells do not show the model
        separating the labels better (or worse) than chance."""
        return self.auroc_ci is not None and self.auroc_ci[0] <= 0.5 <= self.auroc_ci[1]

    @property
    def ranks_reversed(self) -> bool:
        """Whether the model ranks the cells the wrong way round beyond chance (the AUROC's 95 %
        interval entirely below 0.5): a sign of a swapped label direction, not of a weak model."""
        return self.auroc_ci is not None and self.auroc_ci[1] < 0.5

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("threshold", "n_cells", "n_evaluated", "n_positive", "n_negative",
                                             "n_missing_label", "n_not_scored", "auroc")}
        low, high = self.auroc_ci if self.auroc_ci is not None else (float("nan"), float("nan"))
        out.update(auroc_ci_low=float(low), auroc_ci_high=float(high), auprc=self.auprc,
                   auprc_chance=float(self.auprc_chance))
        out.update({k: getattr(self, k) for k in ("f1", "mcc", "precision", "recall", "specificity", "accuracy",
                                                   "balanced_accuracy", "fraction_called_resistant")})
        tn, fp, fn, tp = (int(v) for v in self.confusion.ravel())
        out.update(true_negative=tn, false_positive=fp, false_negative=fn, true_positive=tp)
        out["n_training_cells_left_out"] = int(self.n_training_left_out)
        return out

    def table(self) -> pd.DataFrame:
        """``metric, value`` rows (what ``metrics.csv`` holds)."""
        return pd.DataFrame({"metric": list(self.as_dict()), "value": list(self.as_dict().values())})


def _valid(y_true, prob) -> tuple[np.ndarray, np.ndarray, int, int]:
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape}) and probabilities ({p.shape}) differ in length")
    has_label = np.isfinite(y)
    scored = np.isfinite(p)
    keep = has_label & scored
    return y[keep].astype(int), p[keep], int((~has_label).sum()), int((has_label & ~scored).sum())


def _require_both_classes(y: np.ndarray, pos: str, neg: str) -> None:
    if y.size == 0:
        raise InputError("No cell has both a label and a prediction, so nothing can be evaluated.",
                         "Check the label column and that the cells were scored.")
    if y.min() == y.max():
        only = pos if y[0] == 1 else neg
        raise InputError(f"Every labelled cell is '{only}' ({y.size:,} cells): AUROC, AUPRC, MCC and the "
                         "curves need cells of both classes.",
                         "Choose a label column with both resistant and sensitive cells, or check which "
                         "value means resistant.")


def evaluate(y_true, prob, threshold: float, *, positive_label: str = "resistant",
             negative_label: str = "sensitive") -> Evaluation:
    """Score P(resistant) against 0/1 labels (NaN labels and NaN probabilities are left out).

    Parameters
    ----------
    y_true
        From :func:`encode_labels`.
    prob
        P(resistant) per cell (NaN where not scored).
    threshold
        Cells with ``prob > threshold`` are called resistant.

    Raises
    ------
    InputError
        When no cell can be evaluated, or the evaluated cells are all of one class.
    """
    y, p, n_missing, n_not_scored = _valid(y_true, prob)
    _require_both_classes(y, positive_label, negative_label)
    called = (p > threshold).astype(int)
    cm = skm.confusion_matrix(y, called, labels=[0, 1])
    tn, fp, fn, tp = cm.ravel()
    notes = []
    if n_missing:
        notes.append(f"{counted(n_missing)} without a label {'was' if n_missing == 1 else 'were'} left out.")
    if n_not_scored:
        notes.append(f"{counted(n_not_scored, 'labelled cell')} without a prediction "
                     f"{'was' if n_not_scored == 1 else 'were'} left out.")
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if min(n_pos, n_neg) < FEW_LABELLED:
        notes.append(f"Only {n_pos:,} resistant and {n_neg:,} sensitive labelled cells: every score here is very "
                     "uncertain (see the AUROC's interval).")
    if not tp + fp:
        notes.append(f"No labelled cell is called resistant at the threshold {float(threshold):.4g}: precision, "
                     "F1 and MCC are undefined (0 of 0 called resistant; MCC needs calls of both kinds), not 0.")
    elif not tn + fn:
        notes.append(f"Every labelled cell is called resistant at the threshold {float(threshold):.4g}: MCC is "
                     "undefined (it needs calls of both kinds), not 0.")
    roc_auc = float(skm.roc_auc_score(y, p))
    return Evaluation(
        threshold=float(threshold), n_cells=int(np.asarray(prob).size), n_evaluated=int(y.size),
        n_positive=int(y.sum()), n_negative=int((1 - y).sum()), n_missing_label=n_missing,
        n_not_scored=n_not_scored,
        auroc=roc_auc, auprc=float(skm.average_precision_score(y, p)),
        # no cell called resistant: precision is 0 of 0 and F1 needs it; undefined (NaN), never 0
        f1=float(skm.f1_score(y, called)) if tp + fp else float("nan"),
        # every cell called the same way: MCC is undefined (scikit-learn says 0, which reads as "chance")
        mcc=float(skm.matthews_corrcoef(y, called)) if tp + fp and tn + fn else float("nan"),
        precision=float(tp / (tp + fp)) if tp + fp else float("nan"),
        recall=float(tp / (tp + fn)) if tp + fn else 0.0,
        specificity=float(tn / (tn + fp)) if tn + fp else 0.0,
        accuracy=float((tp + tn) / y.size),
        balanced_accuracy=float(skm.balanced_accuracy_score(y, called)),
        fraction_called_resistant=float(called.mean()),
        confusion=cm, positive_label=positive_label, negative_label=negative_label, notes=notes,
        auroc_ci=auroc_interval(roc_auc, n_pos, n_neg),
    )


def auroc(y_true, prob) -> float:
    """AUROC over labelled, scored cells; NaN (no error) when only one class is present."""
    y, p, _, _ = _valid(y_true, prob)
    return float(skm.roc_auc_score(y, p)) if y.size and y.min() != y.max() else float("nan")


def auprc(y_true, prob) -> float:
    """Average precision (resistant = positive) over labelled, scored cells; NaN with one class."""
    y, p, _, _ = _valid(y_true, prob)
    return float(skm.average_precision_score(y, p)) if y.size and y.min() != y.max() else float("nan")


def _fast_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of 0/1 labels ``y`` (both classes present) as the Mann-Whitney statistic (ties: half)."""
    ranks = rankdata(p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _fast_auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision exactly as scikit-learn computes it (one step per distinct score)."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]  # last position of each group of tied scores
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


_FAST = {"auroc": _fast_auroc, "auprc": _fast_auprc}


def _resamples(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Stratified bootstrap: each row draws, with replacement, as many samples of each class as
    there are: first the negatives, then the positives (so every row has the same labels)."""
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(y == c), size=(n_boot, int((y == c).sum())), replace=True) for c in (0, 1)]
    return np.hstack(parts)


def _resampled_metric(metric: str, y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on every resample (rows of ``idx`` from :func:`_resamples`)."""
    if metric == "auroc":  # all rows share the labels: the Mann-Whitney statistic in one pass
        n_neg = int((y == 0).sum())
        n_pos = y.size - n_neg
        ranks = rankdata(p[idx], axis=1)
        return (ranks[:, n_neg:].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.array([_fast_auprc(y[row], p[row]) for row in idx])


def auroc_interval(auroc: float, n_positive: int, n_negative: int, z: float = 1.959964) -> tuple[float, float]:
    """The AUROC's 95 % interval from its standard error (Hanley & McNeil 1982): instant at any
    number of cells, where :func:`bootstrap_ci` takes seconds for 10,000 (the pages evaluate on
    every visit). Close to the bootstrap's for the cell numbers of a dataset (tested)."""
    a, n1, n2 = float(auroc), int(n_positive), int(n_negative)
    if n1 < 1 or n2 < 1 or not np.isfinite(a):
        return float("nan"), float("nan")
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a), 0.0) / (n1 * n2))
    return max(0.0, a - z * se), min(1.0, a + z * se)


#: Where an interval's end reads as a statement: chance (0.5 for an AUROC; 0 for a difference) and the ends of
#: the scale. A printed end lands on one of them only when it is there.
INTERVAL_MARKS = (-1.0, 0.0, 0.5, 1.0)


def interval_ends(low: float, high: float, digits: int = 3, *, signed: bool = False) -> tuple[str, str]:
    """The ends of an interval as text, for every place that prints one: the lower end rounded
    down and the upper end rounded up to ``digits`` decimals (the printed interval holds the
    computed one), with more decimals (up to 6) where that rounding would put an end onto or
    across 0.5, 0 or 1 (:data:`INTERVAL_MARKS`) when it is not there: an upper end of 0.49984
    reads 0.4999, not 0.500, so "below 0.5" is never printed as an interval touching 0.5.
    ``signed``: with a sign (a difference). A missing end is "—"."""
    return _interval_end(low, digits, np.floor, signed), _interval_end(high, digits, np.ceil, signed)


def _interval_end(value, digits: int, direction, signed: bool) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    v = float(value)
    for d in range(int(digits), max(int(digits), 6) + 1):
        scaled = v * 10 ** d
        nearest = round(scaled)  # a value such as 0.883, stored as 0.88299..., is 0.883 and not 0.882
        shown = (nearest if abs(scaled - nearest) < 1e-6 else float(direction(scaled))) / 10 ** d
        if all(np.sign(shown - m) == np.sign(v - m) for m in INTERVAL_MARKS):
            break
    shown = shown + 0.0  # no "-0.000"
    return f"{shown:+.{d}f}" if signed else f"{shown:.{d}f}"


def bootstrap_ci(y_true, prob, metric: str = "auroc", *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(value, low, high)``: AUROC or AUPRC and its percentile bootstrap confidence interval.

    Samples are resampled within each class (both classes stay present and in their proportion),
    ``n_boot`` times from ``seed``; the interval holds the central ``level`` of the resampled
    values. Labelled, scored samples only; NaNs when only one class is present.
    """
    y, p, _, _ = _valid(y_true, prob)
    if not y.size or y.min() == y.max():
        return float("nan"), float("nan"), float("nan")
    values = _resampled_metric(metric, y, p, _resamples(y, n_boot, seed))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return _FAST[metric](y, p), float(low), float(high)


def paired_bootstrap(y_true, prob_a, prob_b, metric: str = "auroc", *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """``(difference, low, high)``: metric(a) - metric(b) on the same samples and its percentile
    bootstrap interval (the same resampled samples score both, so what they share cancels).

    Samples need a label and both predictions; resampled within each class as :func:`bootstrap_ci`.
    """
    y = np.asarray(y_true, dtype=float)
    a, b = np.asarray(prob_a, dtype=float), np.asarray(prob_b, dtype=float)
    keep = np.isfinite(y) & np.isfinite(a) & np.isfinite(b)
    y, a, b = y[keep].astype(int), a[keep], b[keep]
    if not y.size or y.min() == y.max():
        return float("nan"), float("nan"), float("nan")
    idx = _resamples(y, n_boot, seed)
    diffs = _resampled_metric(metric, y, a, idx) - _resampled_metric(metric, y, b, idx)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return _FAST[metric](y, a) - _FAST[metric](y, b), float(low), float(high)


def precision_at_k(y_true, prob, k: int) -> float:
    """Share of resistant cells among the ``k`` cells with the highest P(resistant) (labelled,
    scored cells only; ties broken by input order). A ranking measure: it needs no threshold."""
    y, p, _, _ = _valid(y_true, prob)
    if k < 1 or not y.size:
        raise InputError(f"Top-k needs k >= 1 and labelled, scored cells; got k={k} with {y.size} cells.")
    top = np.argsort(-p, kind="stable")[: min(int(k), y.size)]
    return float(y[top].mean())


def roc_curve(y_true, prob) -> pd.DataFrame:
    """ROC curve points: ``fpr, tpr, threshold`` (labelled and scored cells only)."""
    y, p, _, _ = _valid(y_true, prob)
    _require_both_classes(y, "resistant", "sensitive")
    fpr, tpr, thr = skm.roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def pr_curve(y_true, prob) -> pd.DataFrame:
    """Precision-recall curve points: ``recall, precision, threshold`` (the last point has none)."""
    y, p, _, _ = _valid(y_true, prob)
    _require_both_classes(y, "resistant", "sensitive")
    precision, recall, thr = skm.precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, np.nan)})


def _as_strict_threshold(t: float, p: np.ndarray) -> float:
    """sklearn's curve thresholds mean ``p >= t``; ours mean ``p > t``. The largest value below
    ``t`` among the probabilities (or just under ``t``) gives the same calls."""
    below = p[p < t]
    return float(below.max()) if below.size else float(np.nextafter(t, -np.inf))


def youden_threshold(y_true, prob) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (ties: the highest)."""
    y, p, _, _ = _valid(y_true, prob)
    _require_both_classes(y, "resistant", "sensitive")
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    best = np.flatnonzero(j == j.max())[0]  # thresholds decrease, so the first is the highest
    return _as_strict_threshold(float(thr[best]), p) if np.isfinite(thr[best]) else 1.0


def mcc_threshold(y_true, prob) -> float:
    """The threshold maximising the Matthews correlation of the calls (ties: the highest)."""
    y, p, _, _ = _valid(y_true, prob)
    _require_both_classes(y, "resistant", "sensitive")
    candidates = np.unique(p)[::-1]  # calling p > t for t just below each distinct value
    best, best_t = -np.inf, 1.0
    for value in candidates:
        t = _as_strict_threshold(float(value), p)
        score = skm.matthews_corrcoef(y, (p > t).astype(int))
        if score > best:
            best, best_t = score, t
    return float(best_t)


def fraction_threshold(prob, fraction: float) -> float:
    """The threshold that calls (about) ``fraction`` of the scored cells resistant.

    For an expected resistant share known from elsewhere (a bulk assay, a pathologist): cells
    are called resistant when P(resistant) is above the threshold. Of the shares a threshold can
    give (cells with equal P are called together), the one closest to ``fraction`` (on a tie, the
    larger: the tied cells are the most resistant-looking, and calling none of them shows nothing); with tied probabilities it can be far from ``fraction`` (e.g. many cells at P = 1),
    so callers report the share actually called.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"The expected resistant fraction must be between 0 and 1; got {fraction}.")
    p = np.asarray(prob, dtype=float)
    p = np.sort(p[np.isfinite(p)])
    if p.size == 0:
        raise InputError("No cell was scored, so no threshold can be set from a fraction.")
    values = np.unique(p)
    called = p.size - np.searchsorted(p, values, side="right")  # calls of the threshold t = each value
    thresholds = np.concatenate([[np.nextafter(values[0], -np.inf)], values])
    shares = np.concatenate([[p.size], called]) / p.size
    gap = np.abs(shares - fraction)
    best = np.flatnonzero(gap <= gap.min() + 1e-12)[0]  # the lowest threshold among the closest shares
    return float(thresholds[best])


def precision_threshold(y_true, prob, target: float) -> float | None:
    """The lowest threshold whose precision reaches ``target`` (most resistant cells found at
    that precision); ``None`` when no threshold reaches it."""
    if not 0 < target <= 1:
        raise InputError(f"The target precision must be in (0, 1]; got {target}.")
    y, p, _, _ = _valid(y_true, prob)
    _require_both_classes(y, "resistant", "sensitive")
    precision, _, thr = skm.precision_recall_curve(y, p)
    ok = np.flatnonzero(precision[:-1] >= target)
    if ok.size == 0:
        return None
    return _as_strict_threshold(float(thr[ok[0]]), p)


#: What each score of :meth:`Evaluation.as_dict` means, for the reports (resistant = positive).
METRIC_MEANINGS = {
    "threshold": "P(resistant) above which a cell is called resistant",
    "n_cells": "cells in the data",
    "n_evaluated": "cells scored and labelled: the ones these scores are about",
    "n_positive": "of them, labelled resistant",
    "n_negative": "of them, labelled sensitive",
    "n_missing_label": "scored cells without a label (left out)",
    "n_not_scored": "labelled cells without a score (QC-filtered or not scored; left out)",
    "auroc": "chance that a resistant cell gets a higher P(resistant) than a sensitive one (0.5: chance)",
    "auroc_ci_low": "AUROC's 95% interval, lower end (Hanley-McNeil; an interval that includes 0.5 is not "
                    "distinguishable from chance)",
    "auroc_ci_high": "AUROC's 95% interval, upper end (Hanley-McNeil)",
    "auprc": "area under precision-recall; chance level is auprc_chance",
    "auprc_chance": "AUPRC of a ranking by chance: the share of resistant cells among those evaluated",
    "f1": "harmonic mean of precision and recall of the resistant calls",
    "mcc": "Matthews correlation of calls and labels (0: chance, 1: perfect)",
    "precision": "of the cells called resistant, the share labelled resistant",
    "recall": "of the cells labelled resistant, the share called resistant (sensitivity)",
    "specificity": "of the cells labelled sensitive, the share called sensitive",
    "accuracy": "share of calls that match the labels",
    "balanced_accuracy": "mean of recall and specificity (not swayed by unequal classes)",
    "fraction_called_resistant": "share of the evaluated cells called resistant",
    "true_negative": "labelled sensitive, called sensitive",
    "false_positive": "labelled sensitive, called resistant",
    "false_negative": "labelled resistant, called sensitive",
    "true_positive": "labelled resistant, called resistant",
    "n_training_cells_left_out": "labelled cells left out because their labels trained the model (few-shot cells)",
}


#: What a trained model's recorded metrics (``manifest['metrics']``, :func:`metrics_table`) hold besides
#: :data:`METRIC_MEANINGS`: the training's own entries, in words.
TRAINING_METRIC_MEANINGS = {
    "folds": "cross-validation folds (stratified, shuffled with the training's seed)",
    "selection": "how the heads' settings were chosen",
    "head_epochs": "head epochs of the final model, chosen by the bulk cross-validation",
    "fold_head_epochs": "each fold's head epochs, taken from the other folds",
    "too_few_lines": "cell lines in the smaller class: too few to trust the bulk scores",
    "label_column": "the target's label column (evaluation only)",
    "resistant_value": "its value meaning resistant",
    "resistant_value_given": "whether that value was given (else recognised from the words)",
    "n_few_shot_cells_left_out": "labelled cells left out because their labels trained the model",
    "latent_mmd_bulk_vs_target": "MMD between the bulk's and the target's latent means (lower: closer)",
}
_SECTION_TITLES = {"cv": "Bulk cell lines, cross-validation", "target": "Target cells"}


def _metric_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "—" if not np.isfinite(value) else f"{float(value):.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_metric_value(v) for v in value)
    return str(value)


def metrics_table(metrics: dict) -> pd.DataFrame:
    """The metrics recorded with a model (``manifest['metrics']``) as one readable table, one row per
    measure: ``evaluation`` (bulk cross-validation, target cells, the training), ``measure``, ``value``
    and what it means. An AUROC or AUPRC is shown with its interval, named by its method; of a manifest
    that records two intervals for one AUROC (the card's bootstrap one and a Hanley-McNeil one, written
    before 2026-12-03), the bootstrap one (the model card's) is shown. Method notes and per-fold curves
    are left out."""
    rows = []
    sections = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, dict)]
    loose = {k: v for k, v in (metrics or {}).items() if not isinstance(v, dict)}
    if loose:
        sections.append(("training", loose))
    for key, entries in sections:
        title = _SECTION_TITLES.get(key, key.replace("_", " ").capitalize())
        if key == "target" and entries.get("label_column"):
            title += f" (labels '{entries['label_column']}')"
        for name, value in entries.items():
            if name.endswith("_method") or name.endswith("_ci") or name in ("auroc_ci_low", "auroc_ci_high") \
                    or isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], list)):
                continue
            shown = _metric_value(value)
            if name in ("auroc", "auprc"):
                ci = entries.get(f"{name}_ci")
                method = "95% bootstrap CI"
                if not ci and name == "auroc" and entries.get("auroc_ci_low") is not None:
                    ci, method = [entries["auroc_ci_low"], entries["auroc_ci_high"]], "95% Hanley-McNeil CI"
                if ci and ci[0] is not None and ci[1] is not None and np.isfinite(ci[0]) and np.isfinite(ci[1]):
                    shown += f" ({method} {' to '.join(interval_ends(ci[0], ci[1]))})"
            meaning = TRAINING_METRIC_MEANINGS.get(name) or METRIC_MEANINGS.get(name, "")
            if key == "cv":
                meaning = meaning.replace("cells", "cell lines").replace("cell", "cell line")
            rows.append({"evaluation": title, "measure": name.replace("_", " "), "value": shown,
                         "what it means": meaning})
    return pd.DataFrame(rows, columns=["evaluation", "measure", "value", "what it means"])


def group_fractions(labels: Sequence, groups: Sequence, positive_label: str = "resistant",
                    excluded: Iterable[str] = ()) -> pd.DataFrame:
    """Fraction called resistant per group (cluster or sample).

    Cells whose label is in ``excluded`` (e.g. ``not scored``) are counted apart, not as
    sensitive. Returns ``group, n_cells, n_called, n_resistant, fraction_resistant``; groups in
    their categorical order, else numbers numerically, then text.
    """
    groups = pd.Series(groups)
    frame = pd.DataFrame({"group": groups.astype(str).to_numpy(),
                          "label": pd.Series(labels, dtype=object).astype(str).to_numpy()})
    frame["called"] = ~frame["label"].isin(set(excluded))
    frame["resistant"] = frame["label"] == positive_label
    out = frame.groupby("group", sort=False).agg(n_cells=("label", "size"), n_called=("called", "sum"),
                                                 n_resistant=("resistant", "sum")).reset_index()
    if isinstance(groups.dtype, pd.CategoricalDtype):
        rank = {str(c): i for i, c in enumerate(groups.cat.categories)}
        key = out["group"].map(lambda g: (rank.get(g, len(rank)), 0.0, g))
    else:
        key = out["group"].map(natural_key)
    out = out.iloc[sorted(range(len(out)), key=lambda i: key.iloc[i])].reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["fraction_resistant"] = np.where(out["n_called"] > 0, out["n_resistant"] / out["n_called"], np.nan)
    return out


# --------------------------------------------------------------------------- over a prediction

def evaluate_column(adata, column: str, *, key_added: str | None = None, resistant=None,
                    training_cells: str = "auto"):
    """``(Evaluation, roc curve, pr curve)`` of a prediction against a label column of ``adata``.

    The column's direction (which value means resistant) is the recorded one
    (:func:`scatd_core.labels.label_direction`) unless ``resistant`` is given. Filtered and
    unscored cells, and cells without a label, are left out and counted. So are, by default, the
    labelled cells whose labels trained the model (few-shot) when the data are its training target
    (``training_cells``: ``auto``, ``exclude`` or ``include``; :mod:`scatd_core.training_cells`).
    """
    from scatd_core._keys import result_keys
    from scatd_core.labels import encode_column

    keys = result_keys(key_added)
    info = adata.uns[keys.run]
    y = encode_column(adata, column, resistant)
    prob = adata.obs[keys.prob].to_numpy(dtype=np.float64)
    y, prob, n_left, training_note = _independent_cells(adata, column, y, prob, key_added, training_cells)
    evaluation = evaluate(y, prob, info["threshold"]["value"], positive_label=info["positive_label"],
                          negative_label=info["negative_label"])
    evaluation.n_cells += n_left
    evaluation.n_training_left_out, evaluation.training_note = n_left, training_note
    if training_note:
        evaluation.notes.insert(0, training_note)
    from scatd_core.card import baseline_note

    evaluation.notes.append(baseline_note(dict(info.get("model") or {})))
    if fitted_on_labels(adata, column, key_added=key_added):
        evaluation.notes.append(
            f"The threshold was fitted on these same labels ('{column}'), so F1, MCC, precision, recall, specificity "
            "and accuracy are optimistic: measure them on cells that were not used to set it. AUROC and AUPRC do "
            "not depend on the threshold.")
    low, high = interval_ends(*evaluation.auroc_ci)
    if evaluation.ranks_reversed:
        evaluation.notes.append(
            f"AUROC is below 0.5 beyond chance (95% interval {low}-{high}): the model ranks the cells the "
            f"wrong way round against '{column}'. Check the label direction (which value means resistant) "
            "before concluding anything.")
    elif evaluation.within_chance:
        evaluation.notes.append(
            f"AUROC {evaluation.auroc:.3f} is not distinguishable from chance on these cells (95% interval "
            f"{low}-{high} includes 0.5): they do not show the model separating these labels"
            + (". That alone does not mean the label direction is wrong." if evaluation.auroc < 0.5 else "."))
    return evaluation, roc_curve(y, prob), pr_curve(y, prob)


def _independent_cells(adata, column: str, y: np.ndarray, prob: np.ndarray, key_added, mode: str):
    """``(y, prob, n left out, note)``: the cells whose labels did not train the model (see
    :func:`evaluate_column`); raises :class:`InputError` when no labelled cell, or only one class, is left."""
    from scatd_core.training_cells import training_cells

    found = training_cells(adata, key_added=key_added, mode=mode)
    drop = found.mask & np.isfinite(y)
    n_left = int(drop.sum())
    note = found.left_out_note(n_left, column)
    if not n_left:
        return y, prob, 0, note
    kept = y[~drop]
    if not np.isfinite(kept).any():
        raise InputError(
            f"Every labelled cell of '{column}' ({n_left:,}) is a cell whose label trained this model (few-shot cells, "
            "recorded with it; these data are its training target), so there is nothing independent to evaluate: "
            "scores on them would only show how well the model fits its own training labels.",
            "Evaluate against labels of cells that were not used for training. The model card's target scores "
            "(`scatd models card`) are on such cells.",
            app_hint="Choose, on the Data page, a label column that labels other cells too. The model card's target "
                     "scores (Model library page) are on the cells not used for training.")
    classes = np.unique(kept[np.isfinite(kept)])
    if classes.size == 1:
        only = "resistant" if classes[0] == 1 else "sensitive"
        raise InputError(
            f"After leaving out the {counted(n_left, 'labelled cell')} of '{column}' whose "
            f"{'label' if n_left == 1 else 'labels'} trained this model "
            f"(few-shot cells), every other labelled cell is '{only}': AUROC, AUPRC, MCC and the curves need cells "
            "of both classes.", "Evaluate against labels of more cells that were not used for training.")
    return kept, prob[~drop], n_left, note


def fitted_on_labels(adata, column: str, *, key_added: str | None = None) -> bool:
    """Whether the prediction's current threshold was calibrated on ``obs[column]``'s labels."""
    from scatd_core._keys import result_keys

    threshold = adata.uns[result_keys(key_added).run]["threshold"]
    return bool(column) and threshold.get("label_column") == str(column)


def group_table(adata, column: str, *, key_added: str | None = None) -> pd.DataFrame:
    """Fraction called resistant per value of ``obs[column]`` (cluster, sample ...), at the current calls."""
    from scatd_core._keys import NOT_CALLED, result_keys

    from scatd_core._keys import CLUSTER, OLD_NOT_EMBEDDED

    keys = result_keys(key_added)
    if column not in adata.obs:
        raise InputError(f"'{column}' is not a column of the data.")
    table = group_fractions(adata.obs[keys.label].astype(str), adata.obs[column],
                            adata.uns[keys.run]["positive_label"], excluded=NOT_CALLED)
    if column == CLUSTER:  # an annotated h5ad of an earlier version: its name for the cells without a cluster
        table["group"] = table["group"].replace(OLD_NOT_EMBEDDED, NO_CLUSTER)
    return table


#: The Leiden "cluster" of the cells that have none (no latent: QC-filtered or not scored)
NO_CLUSTER = _keys.NOT_EMBEDDED
