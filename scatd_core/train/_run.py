"""``train_drug_model``: the whole run, from files to a saved bundle with its model card."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from scatd_core._words import counted
from scatd_core import card as cards
from scatd_core import training_cells
from scatd_core._keys import target_columns_hint
from scatd_core._threads import openmp_threads, threads
from scatd_core._train_settings import pretrain_lr, unused_settings
from scatd_core.bundle import (Bundle, NameTaken, _case_variant, load_backbone_from_bundle, load_bundle, safe_name,
                               save_bundle, sha256_file)
from scatd_core.config import model_library_dir
from scatd_core.demo.simulate import is_simulated
from scatd_core.errors import InputError
from scatd_core.labels import (LABEL_MAPPING, MIN_LINES_PER_CLASS, encode_column, read_few_shot_labels,
                               read_ic50_provenance, too_few_lines)
from scatd_core.nn import BACKBONES
from scatd_core.predict import resolve_device
from scatd_core.preprocess import ALL_GENES, MODEL_GENES
from scatd_core.train import _baselines as baselines
from scatd_core.train._cv import cross_validate, cv_splits
from scatd_core.bundle import INPUT_KINDS, TRAINED_SHORT
from scatd_core.train._data import (TrainingData, embedding_origin, labels_record, prepare_training_data,
                                    read_if_path, target_mask_of)
from scatd_core.train._ensemble import (FewShot, build_ensemble, ensemble_logit, fit_heads, latent_means,
                                        pretrain_members)
from scatd_core.train._fit import (_deterministic, _new_backbone, _probabilities, _restrict_backbone, fit_head,
                                   mmd_rbf, pretrain_backbone)
from scatd_core.train._settings import TrainSettings

ProgressFn = Callable[[float, str], None]


def _default_out(drug: str, backbone: str, library) -> Path:
    root = Path(library) if library else model_library_dir()
    base = root / safe_name(f"{drug}_{backbone}_trained")
    out, k = base, 2
    while out.exists() or _case_variant(out) is not None:  # GEFITINIB after Gefitinib: GEFITINIB_..._trained-2
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def _library_models(library=None, *, but: Path | None = None):
    """``(folder, display name)`` of each model of the library (a model without a name: its folder's name),
    read from their manifests only (no weights), leaving out the folder ``but``."""
    import json

    from scatd_core.bundle import MANIFEST

    root = Path(library) if library else model_library_dir()
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.name.startswith(".") or (but is not None and folder.name == but.name):
            continue
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # no model, or one the library lists as broken
            continue
        if isinstance(manifest, dict):
            yield folder, str(manifest.get("name") or folder.name)


def library_names(library=None, *, but: Path | None = None) -> set[str]:
    """The display names of the models in the library (case-folded; a model without one by its folder's name),
    read from their manifests only (no weights), leaving out the folder ``but``."""
    return {name.casefold() for _, name in _library_models(library, but=but)}


def free_model_name(name: str, library=None) -> str:
    """``name``, or when a model of the library has it already, ``name 2``, ``name 3``...: the name a
    model trained without a name given gets (the Train page shows it as the Model name's placeholder),
    so that two models never share a name in the library."""
    taken = library_names(library)
    free, k = name, 2
    while free.casefold() in taken:
        free, k = f"{name} {k}", k + 1
    return free


#: How the refusals of a taken name end (the command line's hints): a new name or folder instead
_NEW_NAME = "give another --name (it also names the model's library folder), or leave --name out for a new folder " \
            "DRUG_BACKBONE_trained."


def _named_out(name: str, library, overwrite: bool) -> Path:
    """The library folder of a model given a display name: named after it, as `scatd import-checkpoint`
    names it, so the name is what ``--model`` takes. Refused before training when a model (or folder)
    of that name, or a folder whose name differs from its folder's only by case, is there already,
    unless ``overwrite`` (``scatd train --replace``): then that folder is the one replaced (never a second
    folder beside it). A model of that display name in another folder (e.g. one trained without a name) is
    refused even so: ``overwrite`` replaces the name's own folder, never another."""
    root = Path(library) if library else model_library_dir()
    out = root / safe_name(name)
    if overwrite and not out.exists() and (variant := _case_variant(out)) is not None:
        out = variant  # the folder differing only by case (one on a macOS or Windows disk): the one replaced
    holder = next((folder for folder, held in _library_models(library, but=out) if held.casefold() == name.casefold()),
                  None)
    if holder is not None:  # another folder's model has this display name
        variant = None if out.exists() else _case_variant(out)
        hint = (f"To replace it, add --replace (in its folder {holder.name}, for every user of the library); or "
                + _NEW_NAME if variant is not None and variant.name == holder.name else
                f"--replace would not replace it: it replaces the model in the name's own folder ({out.name}), and "
                f"this one is in {holder.name}. Remove it first (scatd models remove {holder.name} --yes), or "
                + _NEW_NAME)
        raise NameTaken(f"A model named '{name}' already exists in the model library (folder {holder.name}); nothing "
                        "was trained.", hint,
                        app_hint="Give it another model name, or leave the name empty for the one shown there.")
    if not out.exists() and not overwrite and (variant := _case_variant(out)) is not None:
        raise NameTaken(f"The model library's folder {variant.name} already holds a model, and the folder of the name "
                        f"'{name}' ({out.name}) differs from it only by case (one folder on a macOS or Windows disk); "
                        "nothing was trained.",
                        f"To replace that model, add --replace (it is replaced in its folder {variant.name}, for every "
                        "user of the library); or " + _NEW_NAME,
                        app_hint="Give it another model name, or leave the name empty for a new one.")
    if out.exists() and not overwrite:
        raise NameTaken(f"A model named '{name}' already exists in the model library (folder {out.name}); nothing "
                        "was trained.",
                        "To replace it, add --replace (for every user of the library); or " + _NEW_NAME,
                        app_hint="Give it another model name, or leave the name empty for a new one.")
    return out


def _refuse_published_names(folder: Path | None, name: str | None, *, backbone: str, drug: str) -> None:
    """Before any training: the folder and display names the published install keeps for its
    models (:func:`scatd_core.published.reserved_name_problem`) are not given to a trained one."""
    if not name and folder is None:
        return
    from scatd_core.published import refuse_reserved_name

    refuse_reserved_name(folder.name if folder is not None else "", name, kind="classifier", backbone=backbone,
                         drug=drug, nothing="trained",
                         hint="Give another --name (it also names the model's library folder), or leave --name out "
                              "for a new folder DRUG_BACKBONE_trained.",
                         app_hint="Give it another model name, or leave the name empty for a new one.")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Fitted:
    """What a recipe hands back: the model, its saved weights and what the card needs."""

    model: torch.nn.Module
    state: dict
    arch: object
    target_prob: np.ndarray  # P(resistant) of every usable target cell, as `scatd predict` computes it
    oof: np.ndarray  # out-of-fold P(resistant) of the labelled bulk samples
    cv: dict
    pretraining_loss: list
    refit: dict
    description: str
    without_few_shot: np.ndarray | None = None  # the same recipe without the labelled target cells
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- recipes

def _fit_ensemble(data: TrainingData, s: TrainSettings, dev, splits, *, base_vae, adaptation: bool,
                  few: FewShot | None, tick, should_stop) -> Fitted:
    """The default recipe (:mod:`scatd_core.train._ensemble`)."""
    if base_vae is not None:  # one given backbone: every member would be the same
        backbones, losses = [base_vae], [[]]
    else:
        backbones, losses = pretrain_members(
            data, s, dev, adaptation=adaptation, should_stop=should_stop,
            tick=lambda k: tick(f"Backbone {k + 1}/{s.members} · ") if tick else None)
    bulk = [latent_means(b, data.bulk_x, dev) for b in backbones]
    target = [latent_means(b, data.target_x, dev) for b in backbones]
    with_inputs = s.head_inputs == "latent+input"
    xb = data.bulk_x.astype(np.float64) if with_inputs else None
    xt = data.target_x.astype(np.float64) if with_inputs else None
    oof = np.full(len(data.bulk_y), np.nan)
    for train, val in splits:
        heads = fit_heads([z[train] for z in bulk], None if xb is None else xb[train], data.bulk_y[train], s)
        oof[val] = _sigmoid(ensemble_logit(heads, [z[val] for z in bulk], None if xb is None else xb[val]))
    heads = fit_heads(bulk, xb, data.bulk_y, s, target=(target, xt), few=few)
    without = None
    if few is not None:
        without = _sigmoid(ensemble_logit(fit_heads(bulk, xb, data.bulk_y, s), target, xt))
    model = build_ensemble(backbones, heads).to(dev)
    with torch.no_grad():  # through the saved model itself: the numbers `scatd predict` gives
        logits = model(torch.from_numpy(data.target_x).to(dev))
        target_prob = torch.softmax(logits, dim=1)[:, LABEL_MAPPING["resistant"]].double().cpu().numpy()
    model = model.cpu()
    inputs = "the latent mean and the standardised genes" if with_inputs and data.features else \
        "the latent mean and the model input" if with_inputs else "the latent mean"
    layout = {"dist_vae": "Dist_VAE", "vae_sf": "VAE_sf", "vae_gf": "VAE_gf"}.get(data.backbone, data.backbone)
    noun = "backbone" if len(backbones) == 1 else "backbones"
    made = (f"scATD {data.backbone} {noun} " if base_vae is not None else
            f"{TRAINED_SHORT.get(data.backbone, data.backbone)} {noun} (scATD's {layout} layout, trained here) ")
    description = (f"An ensemble of {len(backbones)} {made}"
                   + ("(the given pretrained backbone)" if base_vae is not None else
                      "from different seeds, not pretrained (--pretrain-epochs 0: each keeps its random initial "
                      "weights)" if s.pretrain_epochs == 0 else "pretrained from different seeds")
                   + f", each with a class-balanced logistic-regression head (L2, C={s.head_c:g}) on {inputs}"
                   + (f", trained on the bulk and {few.n_labelled:,} labelled target cells "
                      f"({few.n_resistant:,} resistant, {few.n_sensitive:,} sensitive) with the unlabelled target cells "
                      "(semi-supervised)" if few is not None else ", trained on the bulk")
                   + "; it predicts with the mean of the members' logits, " + cards.SPREAD)
    return Fitted(model, model.stacked_state_dict(), model.arch, target_prob, oof,
                  {"folds": len(splits), "selection": "none: fixed L2 penalty, heads fitted to convergence"},
                  losses, {"members": len(backbones), "head_c": s.head_c, "head_inputs": s.head_inputs},
                  description, without)


def _fit_scatd(data: TrainingData, s: TrainSettings, dev, *, base_vae, adaptation: bool, tick,
               should_stop) -> Fitted:
    """The original scATD head (``fc3 -> bn3 -> swish -> fc4``): head epochs chosen by bulk CV, then
    fine-tuning with MMD (see :mod:`scatd_core.train`)."""
    pretrain_hist: list[float] = []
    if base_vae is None:
        base_vae = _new_backbone(data.backbone, data.bulk_x.shape[1], s)
        pretrain_hist = pretrain_backbone(base_vae, data.bulk_all, data.target_x if adaptation else None, s,
                                          dev, tick=tick("") if tick else None, should_stop=should_stop)
    base_vae = base_vae.to(dev).eval()
    cv = cross_validate(base_vae, data, s, dev, adaptation=adaptation, tick=tick, should_stop=should_stop)
    model, refit_hist = fit_head(base_vae, data.bulk_x, data.bulk_y, data.target_x, s, dev,
                                 head_epochs=cv["head_epochs"], finetune_epochs=s.finetune_epochs,
                                 seed=s.seed * 1000, adaptation=adaptation,
                                 tick=tick(f"Final model on {len(data.bulk_y)} cell lines · ") if tick else None,
                                 should_stop=should_stop)
    target_prob = _probabilities(model, torch.from_numpy(data.target_x).to(dev))
    bulk_latent = model.encode(torch.from_numpy(data.bulk_x).to(dev))[0].detach()
    tgt_latent = model.encode(torch.from_numpy(data.target_x).to(dev))[0].detach()
    n_cap = 512  # the latent MMD diagnostic on at most 512 x 512 samples
    latent_mmd = float(mmd_rbf(bulk_latent[:n_cap], tgt_latent[:n_cap]))
    model = model.cpu()
    oof = cv.pop("oof")
    description = (f"One scATD {data.backbone} model with the original drug head (fc3 -> bn3 -> Swish -> fc4): "
                   f"{cv['head_epochs']} head epochs chosen by bulk cross-validation, then {s.finetune_epochs} "
                   "epochs fine-tuning the encoder" + (" with MMD to the target." if adaptation else ".")
                   + " Its bulk cross-validation scores take each fold's head epochs from the other folds "
                     f"({', '.join(map(str, cv['fold_head_epochs']))}), not from the samples they score.")
    return Fitted(model, model.state_dict(), model.arch, target_prob, oof, cv, pretrain_hist,
                  {"head_epochs": cv["head_epochs"], "finetune_epochs": s.finetune_epochs,
                   "loss": refit_hist["loss"]}, description, extra={"latent_mmd_bulk_vs_target": latent_mmd})


# --------------------------------------------------------------------------- inputs

def _few_shot(few_shot_labels, data: TrainingData, warnings: list[str]) -> FewShot | None:
    """The labelled target cells as rows of the training target (matched by cell ID)."""
    if few_shot_labels is None:
        return None
    labels = few_shot_labels if isinstance(few_shot_labels, pd.Series) else read_few_shot_labels(few_shot_labels)
    return few_shot_rows(labels, data.target_ids, warnings)


def few_shot_rows(labels: pd.Series, target_ids: Sequence[str], warnings: list[str]) -> FewShot:
    """The labelled cells (``sensitive``/``resistant`` by cell ID) as rows of ``target_ids``, the
    target's usable cells: refused when none of them is one, or when fewer than 2 of a class are
    (``scatd train-panel`` checks the target's cells with it before any drug is trained); the
    labelled cells that are not usable are left out, said in ``warnings``."""
    target_ids = list(target_ids)
    where = {cell: i for i, cell in enumerate(target_ids)}
    known = [c for c in labels.index if c in where]
    if not known:
        raise InputError(f"None of the {len(labels)} labelled cells (e.g. {', '.join(map(str, labels.index[:3]))}) "
                         f"is a usable cell of the target (e.g. {', '.join(target_ids[:3])}).",
                         "The first column must hold the target's cell IDs.")
    if len(known) < len(labels):
        n_unknown = len(labels) - len(known)
        warnings.append(f"{counted(n_unknown, 'labelled cell')} "
                        + ("is not a usable cell of the target and was left out." if n_unknown == 1 else
                           "are not usable cells of the target and were left out."))
    y = labels.loc[known].map(LABEL_MAPPING).to_numpy(dtype=np.int64)
    n_r, n_s = int(y.sum()), int((1 - y).sum())
    if min(n_r, n_s) < 2:
        raise InputError(f"Only {n_r} resistant and {n_s} sensitive labelled cells are usable cells of the target; "
                         "at least 2 of each are needed.", "Label a few more cells of each class.")
    return FewShot(np.array([where[c] for c in known]), y, [str(c) for c in known])


def refuse_few_shot_head(settings: TrainSettings) -> None:
    """Labelled target cells train only the default linear head (``scatd train`` and, before any
    drug is trained, ``scatd train-panel``)."""
    if settings.head != "linear":
        raise InputError("Training with labelled target cells needs the default linear head.",
                         "Leave out --head scatd, or train without the labelled cells (--few-shot-labels or "
                         "--few-shot-column).",
                         app_hint="Choose the ensemble of linear heads, or no labelled cells to train with.")


def _target_truth(target_ad, column, resistant, data: TrainingData) -> np.ndarray | None:
    if column is None:
        return None
    if column not in target_ad.obs:
        raise InputError(f"The target has no obs column {column!r}.",
                         target_columns_hint(target_ad.obs.columns))
    return encode_column(target_ad, column, resistant, option="--target-resistant-value")[data.target_rows]


# --------------------------------------------------------------------------- the card

#: The progress line while the card's baselines are fitted: plain words (the card names their settings).
CHECKING = "Checking the model against simple baselines"
#: Each baseline in the progress line (:data:`baselines.BASELINE_TITLES` on the card).
PROGRESS_NAMES = {baselines.LOGISTIC: "logistic regression", baselines.BOOSTING: "gradient boosting",
                  baselines.HEADS_C: "logistic regression at the model's own setting"}


def _scoring_units(n_features: int, n_folds: int, truth, few: FewShot | None) -> int:
    """The baseline fits of :func:`_card` in training epochs (:func:`baselines.fit_units`)."""
    per_set = sum(baselines.fit_units(key, n_features) for key in (baselines.LOGISTIC, baselines.BOOSTING,
                                                                   baselines.HEADS_C))
    return per_set * n_folds + (per_set if truth is not None else 0) + (
        baselines.fit_units(baselines.LOGISTIC, n_features) if truth is not None and few is not None else 0)


def _mask_words(column: str | None) -> str:
    """How the card names the target cells a mask left out: "filtered (QC) left out" for the app's QC
    filter (its ``scatd_qc_pass`` column, or the array the Train page passes), "left out by the mask
    column 'X'" for any other column (e.g. a cell type from a cell metadata table), which is no QC."""
    from scatd_core._keys import QC_PASS

    if column is None or column == QC_PASS:
        return "filtered (QC) left out"
    return f"left out by the mask column '{column}'"


def _card(data: TrainingData, s: TrainSettings, fit: Fitted, splits, truth, column, few: FewShot | None,
          provenance: dict, warnings: list[str], advance: Callable[[int, str], None] | None = None) -> dict:
    """The model card; ``advance(units, message)`` after each baseline fit (progress)."""
    seed = s.seed
    x, y, xt = data.bulk_x, data.bulk_y, data.target_x
    # the logistic regression's C is chosen by inner CV on each training set, from a grid with the heads' C
    head_c = s.head_c if s.head == "linear" else None
    names = {baselines.LOGISTIC: baselines.BASELINE_TITLES[baselines.LOGISTIC],
             baselines.BOOSTING: baselines.BASELINE_TITLES[baselines.BOOSTING],
             # the model's own linear head without the latent: what the backbones add
             **({baselines.HEADS_C: baselines.heads_c_title(head_c)} if head_c is not None else {})}

    # the progress line names them plainly (their settings are on the card): "gradient boosting, bulk cell
    # lines, round 2 of 3"
    plain = {key: PROGRESS_NAMES[key] for key in names}

    def done(key: str, what: str) -> None:
        if advance is not None:
            advance(baselines.fit_units(key, x.shape[1]), f"{CHECKING} · {plain[key]}, {what}")

    def starting(key: str, what: str) -> None:  # said before a fit, so a long one shows what runs now
        if advance is not None:
            advance(0, f"{CHECKING} · {plain[key]}, {what}")

    grid = baselines.c_grid(head_c)
    chosen_cv: list[dict] = []
    chosen_bulk: list[dict] = []
    chosen_few: list[dict] = []

    def out_of_fold(key: str) -> np.ndarray:
        def fitted(k: int) -> None:
            done(key, f"bulk cell lines, round {k + 1} of {len(splits)} done")
            if k + 1 < len(splits):
                starting(key, f"bulk cell lines, round {k + 2} of {len(splits)}")

        starting(key, f"bulk cell lines, round 1 of {len(splits)}")
        return baselines.out_of_fold(key, x, y, splits, seed, on_fit=fitted, grid=grid,
                                     chosen=chosen_cv if key == baselines.LOGISTIC else None, c=head_c)

    bulk_preds = {cards.MODEL: fit.oof, **{title: out_of_fold(key) for key, title in names.items()}}
    evaluations = [cards.evaluation("bulk_cv", f"Bulk cell lines, {len(splits)}-fold cross-validation", y,
                                    bulk_preds, seed=seed, note=_bulk_cv_note(fit, few, len(splits), seed))]
    if truth is not None:
        held = np.isfinite(truth)
        if few is not None:
            held[few.rows] = False
        if held.any() and len(np.unique(truth[held])) == 2:
            preds = {cards.MODEL: fit.target_prob[held]}
            for key, title in names.items():
                starting(key, "scoring the target cells")
                preds[title] = baselines.fit_predict(key, x, y, xt, seed, grid=grid, c=head_c,
                                                     chosen=chosen_bulk if key == baselines.LOGISTIC else None)[held]
                done(key, "target cells done")
            if few is not None:
                title = f"{baselines.BASELINE_TITLES[baselines.TARGET_ONLY]} ({len(few.rows):,} cells)"
                starting(baselines.LOGISTIC, "on the labelled target cells alone")
                preds[title] = baselines.fit_predict(baselines.LOGISTIC, xt[few.rows], few.y, xt, seed, grid=grid,
                                                     chosen=chosen_few)[held]
                done(baselines.LOGISTIC, "on the labelled target cells alone done")
                preds["the same recipe without the labelled cells"] = fit.without_few_shot[held]
            what = (f"Target cells whose labels were not used for training ('{column}')" if few is not None
                    else f"Target cells ('{column}', labels used for evaluation only)")
            evaluations.append(cards.evaluation("target", what, truth[held], preds, seed=seed))
        else:
            warnings.append(f"The target column {column!r} does not hold both classes among the cells not used for "
                            "training; no target metrics.")
    lab, genes = data.report["labels"], data.report.get("genes")
    target_desc = provenance["target"].get("file") or provenance["target"].get("name") or "the target given as data"
    summary = (f"Trained for {data.report['drug']} on {len(y):,} labelled bulk cell lines ({lab['sensitive']:,} sensitive, "
               f"{lab['resistant']:,} resistant; {counted(lab['n_bulk_without_label'], 'bulk sample')} without a label for it, "
               f"used for pretraining only) and "
               f"{len(data.target_ids):,} target cells ({target_desc}"
               + (f"; {data.report['target']['filtered']:,} cells "
                  f"{_mask_words(data.report['target'].get('mask_column'))}"
                  if data.report["target"].get("filtered") else "") + ")"
               + (f", on {genes['n_panel']} genes shared by bulk and target" if genes else "") + ".")
    return {
        "model": {"recipe": s.head, "description": fit.description, "backbone": data.backbone},
        "data": {"summary": summary, "bulk": provenance["bulk"], "labels": provenance["labels"],
                 "target": provenance["target"], "drug": data.report["drug"], "label_counts": lab,
                 **({"embeddings": provenance["embeddings"]} if provenance.get("embeddings") else {}),
                 "genes": {"n": len(data.features), "first": data.features[:20]} if data.features else None,
                 "few_shot": ({"n": len(few.rows), "n_resistant": int(few.y.sum()),
                               "n_sensitive": int((1 - few.y).sum()), "cell_ids_recorded": True}
                              if few is not None else None)},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "baselines": {baselines.LOGISTIC: baselines.tuning_record(
            grid, head_c, chosen_cv, chosen_bulk[0] if chosen_bulk else None,
            chosen_few[0] if chosen_few else None)},
        "evaluations": evaluations,
        "calibration": (f"P(resistant) is a score from heads trained with balanced class weights, not a calibrated "
                        f"probability: at the default threshold ({s.threshold:g}) this model calls "
                        f"{float(np.mean(fit.target_prob >= s.threshold)):.0%} of the {len(fit.target_prob):,} "
                        "target cells resistant. The threshold is not calibrated to any dataset, so calls made with "
                        "it are marked uncalibrated. Calibrate it with an expected resistant fraction or labelled "
                        "cells, or use the ranking (AUROC does not depend on the threshold)."),
        "warnings": list(warnings),
    }


# --------------------------------------------------------------------------- the run

#: Gene panels smaller than this are flagged in the card's warnings (the SCAD targets share 141-149
#: genes with the CCLE panel; a whole-transcriptome pair shares thousands).
SMALL_PANEL_GENES = 500


def train_drug_model(
    bulk, labels, drug: str, target, *,
    backbone: str = "dist_vae",
    backbone_bundle: str | Path | Bundle | None = None,
    seed: int = 0,
    folds: int | None = None,
    epochs: int | None = None,
    settings: TrainSettings | None = None,
    adaptation: bool = True,
    device: str = "auto",
    target_label_column: str | None = None,
    target_resistant_value=None,
    target_mask: np.ndarray | str | None = None,
    few_shot_labels: pd.Series | str | Path | None = None,
    out: str | Path | None = None,
    library: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    folder_from_name: bool = True,
    demo: bool = False,
    trained_by: str | None = None,
    min_lines_per_class: int = MIN_LINES_PER_CLASS,
    input_names: dict[str, str] | None = None,
    input_files: dict[str, dict] | None = None,
    source: str = "scatd train",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> tuple[Bundle, dict]:
    """Train a drug-response model on labelled bulk samples, adapted to a target single-cell set.

    Parameters
    ----------
    bulk
        Cell lines x genes (AnnData or a file :func:`scatd_core.io.read` reads): log-TPM-like
        values are used as given, raw counts are log-normalised; each gene is then z-scored
        over the bulk samples.
    labels
        Label table (path or DataFrame; cell lines x drugs, ``sensitive`` / ``resistant``, see
        :mod:`scatd_core.labels`), matched to ``bulk`` by sample ID.
    drug
        Drug column, matched case-insensitively.
    target
        The single cells the model adapts to (AnnData or a file). Standardised exactly as
        :func:`scatd_core.predict.predict` will standardise it. Its label column, if any, is never
        used for training, only for the ``target_label_column`` metrics.
    backbone
        ``"dist_vae"`` (expression; the default) or ``"vae_sf"`` / ``"vae_gf"`` (cell embeddings
        in X or obsm, with AdaIN to the bulk statistics at prediction).
    backbone_bundle
        A pretrained backbone bundle to start from (``kind == "backbone"``); without it backbones
        are pretrained on the bulk (+ target) expression.
    seed, folds, epochs
        Override the fields of ``settings`` (default :class:`TrainSettings`).
    adaptation
        Use the target cells (unlabelled) when pretraining, and for the original head the MMD
        while fine-tuning. ``False`` never uses the target for training.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    target_label_column, target_resistant_value
        An obs column of ``target`` with true labels, for evaluation only, and the value in it
        that means resistant (default: the direction recorded with the data,
        :func:`scatd_core.labels.set_label_direction`, or recognised from words such as
        sensitive/resistant; SCAD's ``response`` is 1 = sensitive, so its resistant value is 0).
    target_mask
        The target cells to use: a boolean array over the cells or the name of a boolean obs
        column (the app's QC filter, ``'scatd_qc_pass'``); default all. The others are left out of
        the target's standardisation, the adaptation and the evaluation, as prediction with the
        same filter leaves them unscored, so the card's target figures are the ones predict gives.
    few_shot_labels
        A few labelled target cells used for training (a Series cell ID -> ``sensitive`` /
        ``resistant``, or a CSV ``cell_id,label``; :func:`scatd_core.labels.read_few_shot_labels`),
        at least 2 per class. With ``target_label_column`` the model is evaluated on the other
        cells, next to the bulk-only floor and a logistic regression on the labelled cells alone.
        Needs the default (linear) head.
    demo
        Mark the bundle as a demo model, trained on simulated data (as the built-in demo): the
        library, the Model page (which offers it only for the demo data) and every report label it
        so. A bulk made by :mod:`scatd_core.demo.simulate` (the Train page's simulated demo panel,
        or an h5ad written from it) marks it whatever ``demo`` says.
    out, library, name, overwrite
        Bundle folder (default: in the library, named after ``name`` when one is given, as
        :func:`scatd_core.bundle.import_checkpoint` names it, so the name is what ``scatd predict
        --model`` takes, and refused before any training when taken; else a new folder
        ``<drug>_<backbone>_trained[-k]``), display name, whether to replace an existing bundle.
    folder_from_name
        ``False``: the default folder ``<drug>_<backbone>_trained[-k]`` even with a ``name`` (the
        panel trainer, whose names are made up, not chosen).
    progress
        Called with (fraction done, message) after every epoch.
    should_stop
        Polled after every epoch; returning True raises :class:`scatd_core.errors.Cancelled`
        and nothing is saved.
    notice
        Called at once with a setting changed to fit the data (fewer folds than asked for, when
        the smaller class has fewer samples), before the long part of the training; it is also
        one of the report's ``warnings``.

    Returns
    -------
    ``(bundle, report)``: the saved bundle, and a dict with the gene panel, label counts, the
    per-epoch histories, CV and target metrics, the model card (also in the manifest,
    ``manifest['card']``) and ``target_predictions`` (a DataFrame: cell, prob_resistant), the
    numbers ``scatd predict`` gives on the target.
    min_lines_per_class
        Fewest labelled cell lines of each class the drug needs (as ``scatd train-panel``'s
        ``--min-lines``; default :data:`scatd_core._train_settings.MIN_LINES_PER_CLASS`, at least 2): a drug with
        fewer is refused before any training. Below the default (a lower value given), the run is
        allowed, but its warnings and card say that its bulk scores cannot be trusted and the card
        claims no win over a baseline on them (:func:`scatd_core.card.few_lines`).
    trained_by
        Who trained it (the app's login name, or the operating-system user for the CLI),
        recorded in the model's provenance and shown in the model library.
    input_names, source
        Display names of inputs given as data, ``{"bulk" | "labels" | "target": name}`` (an
        upload's own name; only the name is kept, never a folder), and what trained it (``"scatd
        train"``, ``"the Train page"``...), recorded in the provenance. A label table made by
        :func:`scatd_core.labels.labels_from_ic50` also records the drug's ln(IC50) threshold.
    input_files
        For inputs given as data that the caller read from files (``train_panel``, once for all
        its drugs): ``{"bulk" | "labels" | "target": {"file": name, "sha256": of the file}}``,
        recorded in place of a hash of the values, so that a model says which file trained it.

    A cell metadata table added to the target (:func:`scatd_core.io.add_cell_metadata`: ``scatd
    train --obs``, the Data page's table) is recorded with it, ``provenance['target']['cell_metadata']``
    (file, sha256, its columns, and which of them gave the target labels, the mask or the labelled
    cells), so that a model trained with a table's labels says so.
    """
    t0 = time.perf_counter()
    if backbone not in BACKBONES:
        raise InputError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    s = replace(settings or TrainSettings(), seed=int(seed))
    s = replace(s, pretrain_lr=pretrain_lr(s, backbone))  # the backbone's own unless set: recorded as a number
    if folds is not None:
        s = replace(s, folds=int(folds))
    if epochs is not None:
        s = replace(s, epochs=int(epochs))
    s.check()
    if int(min_lines_per_class) < 2:
        raise InputError(f"The fewest labelled cell lines per class must be at least 2, not {min_lines_per_class}.",
                         "Give --min-lines 2 or more.")
    if few_shot_labels is not None:
        refuse_few_shot_head(s)
    dev = resolve_device(device)
    named_out = _named_out(name, library, overwrite) if out is None and name and folder_from_name else None
    _refuse_published_names(named_out, name, backbone=backbone, drug=drug)
    warnings: list[str] = []

    files = {k: dict(v) for k, v in (input_files or {}).items() if v and v.get("file") and v.get("sha256")}
    bulk_ad, bulk_prov = read_if_path(bulk, "bulk", record=files.get("bulk"))
    demo = bool(demo) or is_simulated(bulk_ad)  # simulated cell lines (the demo panel): a demo model, marked so
    target_ad, target_prov = read_if_path(target, "target", record=files.get("target"))
    labels_prov = labels_record(labels, files.get("labels"))
    made = labels.attrs.get("report") if isinstance(labels, pd.DataFrame) else None
    if not isinstance(labels, pd.DataFrame):  # a table scatd labels-from-ic50 wrote: its provenance file beside it
        made, problem = read_ic50_provenance(labels)
        if problem:
            warnings.append(problem)
    if made and made.get("provenance_file"):  # also a table read from such a file (train-panel)
        labels_prov["provenance_file"] = made["provenance_file"]
    _name_inputs({"bulk": bulk_prov, "labels": labels_prov, "target": target_prov}, input_names)

    base_vae = None
    bb_bundle = None
    if backbone_bundle is not None:
        bb_bundle = backbone_bundle if isinstance(backbone_bundle, Bundle) else load_bundle(backbone_bundle)
        if bb_bundle.backbone != backbone:
            raise InputError(f"The backbone bundle {bb_bundle.name} is a {bb_bundle.backbone} model, not {backbone}.",
                             f"Use --backbone {bb_bundle.backbone}, or another backbone bundle.")
        base_vae = load_backbone_from_bundle(bb_bundle)
    data = prepare_training_data(bulk_ad, labels, drug, target_ad, backbone=backbone,
                                 backbone_genes=bb_bundle.genes if bb_bundle is not None else None,
                                 target_mask=target_mask_of(target_ad, target_mask))
    if isinstance(target_mask, str):  # the column that left cells out, named by the card (QC or not)
        data.report["target"]["mask_column"] = target_mask
    n_sensitive, n_resistant = int((data.bulk_y == 0).sum()), int((data.bulk_y == 1).sum())
    refused = too_few_lines(data.report["drug"], n_sensitive, n_resistant, min_lines_per_class)
    if refused is not None:  # before any training, as train-panel skips the drug
        raise refused
    report = dict(data.report)
    warnings += report.pop("warnings", [])  # from the data (e.g. duplicated bulk IDs)
    if min(n_sensitive, n_resistant) < MIN_LINES_PER_CLASS:  # allowed by a lower min_lines_per_class
        warnings.append(f"Only {counted(min(n_sensitive, n_resistant), 'cell line')} in the smaller class "
                        f"({n_sensitive:,} sensitive, {n_resistant:,} resistant), fewer than the "
                        f"{MIN_LINES_PER_CLASS} of each normally required: this model's bulk cross-validation AUROC "
                        "and its interval cannot be trusted, and its card claims no win over a baseline on them.")
    few = _few_shot(few_shot_labels, data, warnings)
    truth = _target_truth(target_ad, target_label_column, target_resistant_value, data)
    if target_ad.n_obs < 50:
        warnings.append(f"The target has only {target_ad.n_obs} cells; its per-gene standardisation is unreliable."
                        if data.features is not None else
                        f"The target has only {target_ad.n_obs} cells; the adaptation to it (and any score on it) "
                        "rests on few cells.")
    if data.features is not None and len(data.features) < SMALL_PANEL_GENES:
        warnings.append(f"Bulk and target share only {len(data.features):,} genes, so the model sees a small part of "
                        "the transcriptome and its calls rest on those genes alone (the published models read "
                        "19,264). Bring bulk and single-cell data measured over more genes if you can.")
    if bb_bundle is not None:
        if data.features is not None:
            index = {g: i for i, g in enumerate(bb_bundle.genes)}
            base_vae = _restrict_backbone(base_vae, np.array([index[g] for g in data.features]))
        pretrained_on = bb_bundle.manifest.get("input_transform")
        if data.features is not None and pretrained_on != "standardize":
            warnings.append(f"The backbone {bb_bundle.name} was pretrained on '{pretrained_on}' inputs; this model "
                            "standardises each domain" + (", which only the fine-tuning phase can adapt the encoder to."
                                                          if s.head == "scatd" else "."))
        scaling = _library_size_note(bb_bundle, finetuned=s.head == "scatd" and s.finetune_epochs > 0)
        if data.features is not None and scaling:
            warnings.append(scaling)
        if s.head == "linear":
            warnings.append("A given backbone makes an ensemble of one member (no seeds to vary); its per-cell "
                            "uncertainty is not available.")

    if notice is not None:  # what the data show is said before the long part, not only at the end
        for message in warnings:
            notice(message)
    n_min = int(min((data.bulk_y == 0).sum(), (data.bulk_y == 1).sum()))
    if n_min < s.folds:
        warnings.append(f"Only {n_min} cell lines in the smaller class: {n_min} folds instead of {s.folds}.")
        if notice is not None:
            notice(warnings[-1])
        s = replace(s, folds=n_min)
    splits = cv_splits(data.bulk_y, s)
    pre_epochs = s.pretrain_epochs if base_vae is None else 0
    if s.head == "linear":
        total_units = pre_epochs * (s.members if base_vae is None else 0) + 1
    else:  # an estimate until the CV has chosen the number of head epochs
        total_units = pre_epochs + s.folds * s.epochs + (s.folds + 1) * (s.epochs + s.finetune_epochs)
    scoring_units = _scoring_units(data.bulk_x.shape[1], s.folds, truth, few)
    total_units += scoring_units  # the baselines of the card: minutes for gradient boosting on many genes
    done = [0]

    def tick(prefix: str) -> Callable[[str], None]:
        def f(msg: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0] / max(total_units, 1), 0.99), f"{prefix}{msg}")
        return f

    with _deterministic(), threads(s.threads):  # this thread only: not a server's other users
        if s.head == "linear":
            fit = _fit_ensemble(data, s, dev, splits, base_vae=base_vae, adaptation=adaptation, few=few, tick=tick,
                                should_stop=should_stop)
        else:
            fit = _fit_scatd(data, s, dev, base_vae=base_vae, adaptation=adaptation, tick=tick,
                             should_stop=should_stop)
    done[0] = max(done[0], total_units - scoring_units)  # the training's estimate may have run short

    def advance(units: int, message: str) -> None:
        done[0] += units
        if progress is not None:
            progress(min(done[0] / max(total_units, 1), 0.99), message)

    advance(0, f"{CHECKING} (how well simpler methods do on the same data)")

    table = _cell_metadata_origin(target_ad, {
        "target_labels": target_label_column, "target_mask": target_mask if isinstance(target_mask, str) else None,
        "few_shot_labels": getattr(few_shot_labels, "name", None) if isinstance(few_shot_labels, pd.Series) else None})
    if table:
        target_prov["cell_metadata"] = table
    provenance = {
        "source": f"trained by scATD Studio ({source})",
        "trained_by": trained_by,
        "bulk": bulk_prov, "labels": labels_prov, "target": target_prov,
        "few_shot_labels": ({"file": Path(few_shot_labels).name, "sha256": sha256_file(few_shot_labels)}
                            if few_shot_labels is not None and not isinstance(few_shot_labels, pd.Series) else
                            {"n": len(few.rows), "of": "cells of the target",  # and the column that gave them
                             **({"column": str(few_shot_labels.name)} if few_shot_labels.name is not None else {})}
                            if few is not None else None),
        "backbone_bundle": ({"name": bb_bundle.name, "weights_sha256": bb_bundle.manifest.get("weights_sha256"),
                             # the genes it scaled counts over (this model: all genes, ALL_GENES below)
                             "library_size": bb_bundle.manifest.get("library_size", MODEL_GENES)}
                            if bb_bundle is not None else None),
        "seed": s.seed, "adaptation": bool(adaptation), "device": str(dev), "threads": s.threads,
    }
    if INPUT_KINDS[backbone] == "embedding":  # how the embeddings were made (prediction from counts compares)
        provenance["embeddings"] = {"bulk": embedding_origin(bulk_ad, backbone),
                                    "target": embedding_origin(target_ad, backbone)}
    with openmp_threads(s.threads):  # gradient boosting's threads, as the training's (this thread only)
        card = _card(data, s, fit, splits, truth, target_label_column, few, provenance, warnings, advance)
    metrics = {"cv": {**{k: v for k, v in fit.cv.items() if k not in ("head_curve", "per_fold_head", "per_fold")},
                      **_headline(card, "bulk_cv")}, **fit.extra}
    if min(n_sensitive, n_resistant) < MIN_LINES_PER_CLASS:  # its bulk scores cannot be trusted (the card says so)
        metrics["cv"]["too_few_lines"] = min(n_sensitive, n_resistant)
    target_scores = _headline(card, "target")
    if target_scores:
        held = np.isfinite(truth) & (~np.isin(np.arange(len(truth)), few.rows) if few is not None else True)
        from scatd_core.metrics import evaluate

        from scatd_core.labels import label_direction

        resistant_value = target_resistant_value if target_resistant_value is not None else \
            label_direction(target_ad, target_label_column)
        metrics["target"] = {"label_column": target_label_column, "resistant_value": str(resistant_value),
                             "resistant_value_given": target_resistant_value is not None,
                             "n_few_shot_cells_left_out":
                             len(few.rows) if few is not None else 0,  # the card's scores are rounded:
                             **target_scores,  # one AUROC interval: the card's (bootstrap), not also Hanley-McNeil's
                             **{k: v for k, v in evaluate(truth[held], fit.target_prob[held], s.threshold).as_dict()
                                .items() if k not in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc")},
                             "n_training_cells_left_out": len(few.rows) if few is not None else 0}
    seconds = time.perf_counter() - t0
    provenance["seconds"] = round(seconds, 1)
    card["data"]["seconds"] = round(seconds, 1)
    if made:  # labels built from ln(IC50) (here, or by scatd labels-from-ic50): the drug's threshold
        labels_prov.update(_ic50_origin(made, data.report["drug"]) or {})
    if "from_ic50" not in labels_prov and not demo:  # a table without its provenance file: the card says so
        labels_prov["ic50_rule"] = IC50_RULE_UNKNOWN
    unused = unused_settings(s.head, backbone_given=base_vae is not None, adaptation=adaptation, few_shot=few is not None,
                             pretrain_epochs=s.pretrain_epochs)
    settings_dict = card["settings"] = {k: v for k, v in card["settings"].items() if k not in unused}  # only those used
    card["settings_not_used"] = unused
    training = {"settings": settings_dict, "settings_not_used": unused, "drug_column": data.report["drug"],
                "labels": data.report["labels"], "genes": data.report.get("genes"), "bulk": data.report["bulk"], "target": data.report["target"],
                "pretraining_loss": _rounded(fit.pretraining_loss), "cv_head_curve": fit.cv.get("head_curve"),
                "warnings": warnings}
    unique = out is None  # the default folder: the first free name, chosen under the library lock at the
    if named_out is not None:  # moment of writing, so two trainings of the same drug never share a folder
        out = named_out    # (a name taken while this one trained: the next free name, not a lost training)
    elif out is None:
        out = _default_out(data.report["drug"], backbone, library)
    bundle = save_bundle(
        out, fit.state, fit.arch, drug=data.report["drug"], genes=data.features,
        style_mean=data.style_mean, style_std=data.style_std,
        input_transform="standardize" if data.features is not None else "none",
        library_size=ALL_GENES if data.features is not None else None,  # as _data's ModelInput scaled the counts
        label_mapping=LABEL_MAPPING, threshold=s.threshold, beta_mode="separate", provenance=provenance,
        metrics=metrics, name=name if name and folder_from_name else
        free_model_name(name or default_model_name(data.report["drug"], backbone), library),
        extra={"training": training, "card": card,
               # the labelled target cells and the target's identity, so evaluations leave them out
               **({training_cells.MANIFEST_KEY: training_cells.manifest_record(few.ids, target_ad.obs_names)}
                  if few is not None else {})},
        overwrite=overwrite, demo=demo,
        unique=unique and not overwrite)
    from scatd_core.export import training_predictions_table  # with the threshold, the call and the known label

    target_pred = training_predictions_table(data.target_ids, fit.target_prob, s.threshold, truth,
                                             few.rows if few is not None else ())
    report.update(settings=settings_dict, pretraining={"loss": fit.pretraining_loss}, cv=fit.cv, metrics=metrics,
                  refit=fit.refit, card=card, warnings=warnings, seconds=seconds, bundle_path=str(bundle.path),
                  target_predictions=target_pred)
    if progress is not None:
        progress(1.0, f"Saved {bundle.name} to {bundle.path}")
    return bundle, report


def _cell_metadata_origin(target, used: dict) -> dict | None:
    """The cell metadata table added to the target's obs (``uns['scatd_cell_metadata']``), for the
    provenance: its file and sha256, the columns it added and how many cells matched, and ``used``
    (``{what: column}``) for the columns of this training that came from it."""
    from scatd_core._keys import CELL_METADATA

    record = target.uns.get(CELL_METADATA)
    if not record:
        return None
    columns = [str(c) for c in record.get("columns", ())]
    return {"file": str(record.get("file")), **({"sha256": str(record["sha256"])} if record.get("sha256") else {}),
            "columns": columns, "n_matched": int(record.get("n_matched", 0)), "n_cells": int(record.get("n_cells", 0)),
            "used": {what: str(column) for what, column in used.items()
                     if column is not None and str(column) in columns}}


def _library_size_note(backbone: Bundle, *, finetuned: bool) -> str | None:
    """What changes when a model is trained from a backbone bundle that scales each cell's counts
    over its own genes (an imported one that log-normalises counts: ``library_size`` "model genes",
    or none recorded):
    the new model scales them over all the genes of the data, as every model trained here does
    (``library_size`` "all genes"), so that counts and values log-normalised over all genes give
    it the same calls. Said, not silent; ``None`` when nothing changes."""
    transform = backbone.manifest.get("input_transform")
    if transform not in ("log1p_cp10k", "standardize") or \
            backbone.manifest.get("library_size", MODEL_GENES) == ALL_GENES:
        return None  # a backbone that takes the values as they are (or scales over all genes already)
    n = f"{len(backbone.genes):,} " if backbone.genes is not None else ""
    return (f"Raw counts are scaled differently than for the backbone {backbone.name}: it scaled each cell's counts "
            f"to 10,000 over its own {n}genes, while this model, as every model trained here, scales them over all "
            "the genes of the data (its manifest records library_size 'all genes'), so that counts and values "
            "log-normalised over all genes (scanpy's normalize_total then log1p) give it the same calls. Training "
            "and prediction with this model both scale this way; only the backbone's encoder was pretrained on "
            "counts scaled over its own genes"
            + (", and the fine-tuning phase adapts it to the new scaling." if finetuned else
               " (it is not fine-tuned: the heads are fitted on what it makes of these inputs)."))


def default_model_name(drug: str, backbone: str, made: str = "trained") -> str:
    """A model's name when none is given: ``Gefitinib (VAE on genes, trained)`` (not the published
    backbone's name: it is trained here, on the user's data); ``made`` "panel": a panel's model,
    ``Gefitinib (VAE on genes, panel)``. :func:`free_model_name` adds a number when it is taken."""
    return f"{drug} ({TRAINED_SHORT.get(backbone, backbone)}, {made})"


def _bulk_cv_note(fit: Fitted, few: FewShot | None, n_folds: int | None = None, seed: int | None = None
                  ) -> str | None:
    """The bulk cross-validation's note: how the folds were made (so the split can be made again);
    with labelled target cells, what its 'this model' row scores."""
    parts = [fit.cv.get("note")]
    if n_folds:
        parts.append(f"The {n_folds} folds are stratified (each keeps the labelled lines' resistant share) and "
                     f"shuffled with seed {seed} (scikit-learn's StratifiedKFold); each cell line is one row, so no "
                     "line is in both a fold's training and its test set; the model and the baselines are scored "
                     "on the same folds.")
    if few is not None:
        parts.append(f"With {len(few.rows):,} labelled target cells, the bulk cross-validation's '{cards.MODEL}' is "
                     "the recipe fitted on the bulk folds alone (the same recipe without the labelled cells): the "
                     "labelled cells are target cells, so it cannot score them; the target rows show what they add.")
    return " ".join(p for p in parts if p) or None


def _name_inputs(provenance: dict[str, dict], names: dict[str, str] | None) -> None:
    """Record the display name of each input given as data (never a folder: the last part only)."""
    for key, name in (names or {}).items():
        entry = provenance.get(key)
        if entry is None or not name or entry.get("file"):
            continue
        shown = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].strip()[:200]
        if shown:
            entry["name"] = shown


#: What a model records when its label table came without the provenance file of scatd labels-from-ic50:
#: nothing says which ln(IC50) threshold made its labels (the card says so, :func:`scatd_core.card.card_details`).
IC50_RULE_UNKNOWN = "unknown"


def _ic50_origin(report: dict, drug: str) -> dict | None:
    """How :func:`scatd_core.labels.labels_from_ic50` labelled ``drug`` (its ln(IC50) threshold, the
    files' names and sha256), from its ``attrs['report']`` or the provenance file ``scatd
    labels-from-ic50`` wrote (:func:`scatd_core.labels.read_ic50_provenance`): the same record for both."""
    found = (report.get("thresholds") or {}).get(drug)
    if not found:
        return None
    gdsc_id = found.get("gdsc_id")
    return {"from_ic50": {"threshold": float(found["threshold"]), "gdsc_id": None if gdsc_id is None else int(gdsc_id),
                          "threshold_name": found.get("threshold_name"),
                          "rule": "ln(IC50) below the threshold = sensitive, at or above = resistant",
                          **({"files": report["files"]} if report.get("files") else {}),
                          **({"files_sha256": report["files_sha256"]} if report.get("files_sha256") else {})}}


def _headline(card: dict, name: str) -> dict:
    """This model's AUROC / AUPRC and intervals in evaluation ``name`` of the card (or {})."""
    ev = next((e for e in card["evaluations"] if e["name"] == name), None)
    if ev is None:
        return {}
    model = next(r for r in ev["scores"] if r["model"] == cards.MODEL)
    return {"auroc": model["auroc"], "auroc_ci": model["auroc_ci"], "auprc": model["auprc"],
            "auprc_ci": model["auprc_ci"], "auprc_chance": cards.auprc_chance(ev),
            "auroc_ci_method": AUROC_CI_METHOD}


#: How the intervals of a training's metrics were made (``metrics.cv`` / ``metrics.target`` of the
#: manifest and report; docs/outputs.md): ``auroc_ci`` and ``auprc_ci`` are the model card's
#: bootstrap intervals, the only ones recorded (models trained before 2026-12-03 also recorded a
#: Hanley-McNeil ``auroc_ci_low`` / ``auroc_ci_high`` in ``metrics.target``: two intervals for one AUROC).
AUROC_CI_METHOD = (f"{cards.INTERVAL}: stratified bootstrap of the cells or cell lines, {cards.N_BOOT} resamples "
                   "(the model card's)")


def _rounded(losses: list) -> list:
    return [_rounded(v) if isinstance(v, list) else round(float(v), 5) for v in losses]
