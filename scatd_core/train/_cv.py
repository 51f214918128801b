"""Cross-validation of the whole training procedure on the labelled bulk samples."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from scatd_core.metrics import auprc, auroc, youden_threshold
from scatd_core.nn import ResVAE
from scatd_core.train._data import TrainingData
from scatd_core.train._fit import fit_head
from scatd_core.train._settings import TrainSettings

SMOOTH_EPOCHS = 5


def _smooth(curve: np.ndarray, width: int = SMOOTH_EPOCHS) -> np.ndarray:
    """Centred moving average (shrinking at the ends)."""
    out = np.empty_like(curve)
    h = width // 2
    for i in range(len(curve)):
        out[i] = np.nanmean(curve[max(0, i - h):i + h + 1])
    return out


def _fold_record(k: int, tr, va, hist: dict) -> dict:
    return {"fold": k + 1, "n_train": int(len(tr)), "n_val": int(len(va)),
            "loss": [round(v, 5) for v in hist["loss"]], "mmd": [round(v, 6) for v in hist["mmd"]],
            "val_auroc": [round(v, 4) for v in hist["val_auroc"]]}


def cv_splits(y: np.ndarray, s: TrainSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stratified K-fold splits of the labelled bulk (shuffled from the run's seed); the model
    and the baselines of the model card are scored on the same ones."""
    return list(StratifiedKFold(n_splits=s.folds, shuffle=True, random_state=s.seed).split(np.zeros(len(y)), y))


def cross_validate(base_vae: ResVAE, data: TrainingData, s: TrainSettings, device: torch.device, *,
                   adaptation: bool, tick: Callable[[str], Callable[[str], None]] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Stratified K-fold DAL on the labelled bulk, in two passes.

    1. The head is trained on the frozen encoder for up to ``s.epochs`` epochs per fold; the
       number of head epochs is the argmax of the fold-mean validation AUROC curve (smoothed).
    2. Each fold's head is retrained for that many epochs and then fine-tuned (with MMD when
       ``adaptation``) for ``s.finetune_epochs``: the fine-tuning length is fixed, not chosen on
       the bulk, because its purpose (alignment with the target) is invisible to bulk labels; this
       pass measures what the whole procedure gives on held-out bulk samples.

    Returns the CV summary: ``head_epochs``, AUROC per fold (mean, sd) and out-of-fold
    AUROC/AUPRC/Youden threshold of the final procedure, ``oof`` (the out-of-fold P(resistant)),
    the head-phase curve and every fold's per-epoch loss, MMD and AUROC.
    """
    splits = cv_splits(data.bulk_y, s)
    val = {k: (data.bulk_x[va], data.bulk_y[va]) for k, (_tr, va) in enumerate(splits)}
    curves, head_folds, head_probs = [], [], []
    for k, (tr, va) in enumerate(splits):
        _model, hist = fit_head(base_vae, data.bulk_x[tr], data.bulk_y[tr], data.target_x, s, device,
                                head_epochs=s.epochs, finetune_epochs=0, seed=s.seed * 1000 + k + 1,
                                adaptation=adaptation, val=val[k], should_stop=should_stop,
                                tick=tick(f"Fold {k + 1}/{s.folds} (head) · ") if tick else None)
        curves.append(hist["val_auroc"])
        head_probs.append(hist["val_prob"])
        head_folds.append(_fold_record(k, tr, va, hist))
    curve = np.nanmean(np.array(curves, dtype=np.float64), axis=0)
    head_epochs = int(np.nanargmax(_smooth(curve))) + 1
    at_head = np.array([c[head_epochs - 1] for c in curves])
    if s.finetune_epochs == 0:  # the head pass is the whole procedure
        final_folds, at_end = head_folds, at_head
        oof = np.zeros(len(data.bulk_y))
        for k, (_tr, va) in enumerate(splits):
            oof[va] = head_probs[k][head_epochs - 1]
    else:
        final_folds, oof, at_end = [], np.zeros(len(data.bulk_y)), []
        for k, (tr, va) in enumerate(splits):
            _model, hist = fit_head(base_vae, data.bulk_x[tr], data.bulk_y[tr], data.target_x, s, device,
                                    head_epochs=head_epochs, finetune_epochs=s.finetune_epochs,
                                    seed=s.seed * 1000 + k + 1, adaptation=adaptation, val=val[k],
                                    should_stop=should_stop,
                                    tick=tick(f"Fold {k + 1}/{s.folds} (head + fine-tuning) · ") if tick else None)
            oof[va] = hist["val_prob"][-1]
            at_end.append(hist["val_auroc"][-1])
            final_folds.append(_fold_record(k, tr, va, hist))
        at_end = np.array(at_end)
    return {"folds": s.folds, "head_epochs": head_epochs, "finetune_epochs": s.finetune_epochs,
            "selection": f"head epochs: argmax of the fold-mean validation AUROC curve smoothed over "
                         f"{SMOOTH_EPOCHS} epochs; then {s.finetune_epochs} fine-tuning epochs",
            "auroc_mean": float(np.nanmean(at_end)), "auroc_sd": float(np.nanstd(at_end)),
            "auroc_per_fold": [float(v) for v in at_end],
            "head_auroc_mean": float(np.nanmean(at_head)), "head_auroc_sd": float(np.nanstd(at_head)),
            "oof_auroc": auroc(data.bulk_y, oof), "oof_auprc": auprc(data.bulk_y, oof),
            "youden_threshold": youden_threshold(data.bulk_y, oof), "oof": oof,
            "head_curve": [round(float(v), 4) for v in curve], "per_fold_head": head_folds,
            "per_fold": final_folds}


