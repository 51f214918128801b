"""``train_drug_model``: the whole run, from files to a saved bundle with its report."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from scatd_core.bundle import Bundle, load_backbone_from_bundle, load_bundle, safe_name, save_bundle, sha256_file
from scatd_core.config import model_library_dir
from scatd_core.errors import InputError
from scatd_core.labels import LABEL_MAPPING, encode_column
from scatd_core.metrics import evaluate
from scatd_core.nn import BACKBONES
from scatd_core.predict import resolve_device
from scatd_core.train._cv import cross_validate
from scatd_core.train._data import _frame_sha256, prepare_training_data, read_if_path
from scatd_core.train._fit import (_deterministic, _new_backbone, _probabilities, _restrict_backbone, fit_head,
                                   mmd_rbf, pretrain_backbone)
from scatd_core.train._settings import TrainSettings

ProgressFn = Callable[[float, str], None]


def _default_out(drug: str, backbone: str, library) -> Path:
    root = Path(library) if library else model_library_dir()
    base = root / safe_name(f"{drug}_{backbone}_trained")
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


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
    out: str | Path | None = None,
    library: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    demo: bool = False,
    trained_by: str | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
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
        :func:`scatd_core.predict.predict` will standardise it. Its labels, if any, are never
        used for training, only for ``target_label_column`` metrics.
    backbone
        ``"dist_vae"`` (expression; the default) or ``"vae_sf"`` / ``"vae_gf"`` (cell embeddings
        in X or obsm, with AdaIN to the bulk statistics at prediction).
    backbone_bundle
        A pretrained backbone bundle to start from (``kind == "backbone"``); without it a
        backbone is pretrained on the bulk (+ target) expression.
    seed, folds, epochs
        Override the fields of ``settings`` (default :class:`TrainSettings`).
    adaptation
        Use the target during training (pretraining + MMD in fine-tuning). ``False`` trains on
        the bulk alone, the no-adaptation baseline.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    target_label_column, target_resistant_value
        An obs column of ``target`` with true labels, for evaluation only, and the value in it
        that means resistant (default: the direction recorded with the data,
        :func:`scatd_core.labels.set_label_direction`, or recognised from words such as
        sensitive/resistant; SCAD's ``response`` is 1 = sensitive, so its resistant value is 0).
    demo
        Mark the bundle as the built-in demo (trained on simulated data).
    out, library, name, overwrite
        Bundle folder (default: a new folder ``<drug>_<backbone>_trained[-k]`` in the library),
        display name, whether to replace an existing bundle.
    progress
        Called with (fraction done, message) after every epoch.
    should_stop
        Polled after every epoch; returning True raises :class:`scatd_core.predict.Cancelled`
        and nothing is saved.

    Returns
    -------
    ``(bundle, report)``: the saved bundle, and a dict with the gene panel, label counts, the
    per-epoch histories, CV and target metrics, and ``target_predictions`` (a DataFrame: cell,
    prob_resistant), the numbers ``scatd predict`` gives on the target.
    trained_by
        Who trained it (the app's login name, or the operating-system user for the CLI),
        recorded in the model's provenance and shown in the model library.
    """
    t0 = time.perf_counter()
    if backbone not in BACKBONES:
        raise InputError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    s = replace(settings or TrainSettings(), seed=int(seed))
    if folds is not None:
        s = replace(s, folds=int(folds))
    if epochs is not None:
        s = replace(s, epochs=int(epochs))
    s.check()
    dev = resolve_device(device)
    warnings: list[str] = []

    bulk_ad, bulk_prov = read_if_path(bulk, "bulk")
    target_ad, target_prov = read_if_path(target, "target")
    if isinstance(labels, pd.DataFrame):
        labels_prov = {"sha256": _frame_sha256(labels), "of": "table"}
    else:
        labels_prov = {"file": Path(labels).name, "sha256": sha256_file(labels)}

    base_vae = None
    bb_bundle = None
    if backbone_bundle is not None:
        bb_bundle = backbone_bundle if isinstance(backbone_bundle, Bundle) else load_bundle(backbone_bundle)
        if bb_bundle.backbone != backbone:
            raise InputError(f"The backbone bundle {bb_bundle.name} is a {bb_bundle.backbone} model, not {backbone}.",
                             f"Use --backbone {bb_bundle.backbone}, or another backbone bundle.")
        base_vae = load_backbone_from_bundle(bb_bundle)
    data = prepare_training_data(bulk_ad, labels, drug, target_ad, backbone=backbone,
                                 backbone_genes=bb_bundle.genes if bb_bundle is not None else None)
    report = dict(data.report)
    if target_ad.n_obs < 50:
        warnings.append(f"The target has only {target_ad.n_obs} cells; its per-gene standardisation is unreliable.")
    if bb_bundle is not None:
        if data.features is not None:
            index = {g: i for i, g in enumerate(bb_bundle.genes)}
            base_vae = _restrict_backbone(base_vae, np.array([index[g] for g in data.features]))
        pretrained_on = bb_bundle.manifest.get("input_transform")
        if data.features is not None and pretrained_on != "standardize":
            warnings.append(f"The backbone {bb_bundle.name} was pretrained on '{pretrained_on}' inputs; this model "
                            "standardises each domain, which only the fine-tuning phase can adapt the encoder to.")

    n_min = int(min((data.bulk_y == 0).sum(), (data.bulk_y == 1).sum()))
    if n_min < s.folds:
        warnings.append(f"Only {n_min} cell lines in the smaller class: {n_min} folds instead of {s.folds}.")
        s = replace(s, folds=n_min)
    pre_epochs = s.pretrain_epochs if base_vae is None else 0
    # an estimate until the CV has chosen the number of head epochs
    total_units = pre_epochs + s.folds * s.epochs + (s.folds + 1) * (s.epochs + s.finetune_epochs)
    done = [0]

    def tick(prefix: str) -> Callable[[str], None]:
        def f(msg: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(min(done[0] / total_units, 1.0), f"{prefix}{msg}")
        return f

    with _deterministic():
        pretrain_hist: list[float] = []
        if base_vae is None:
            base_vae = _new_backbone(backbone, data.bulk_x.shape[1], s)
            pretrain_hist = pretrain_backbone(base_vae, data.bulk_all, data.target_x if adaptation else None, s,
                                              dev, tick=tick(""), should_stop=should_stop)
        base_vae = base_vae.to(dev).eval()

        cv = cross_validate(base_vae, data, s, dev, adaptation=adaptation, tick=tick, should_stop=should_stop)
        head_epochs = cv["head_epochs"]
        total_units = done[0] + head_epochs + s.finetune_epochs  # the refit is all that is left

        model, refit_hist = fit_head(base_vae, data.bulk_x, data.bulk_y, data.target_x, s, dev,
                                     head_epochs=head_epochs, finetune_epochs=s.finetune_epochs,
                                     seed=s.seed * 1000, adaptation=adaptation,
                                     tick=tick(f"Final model on {len(data.bulk_y)} cell lines · "),
                                     should_stop=should_stop)
        target_prob = _probabilities(model, torch.from_numpy(data.target_x).to(dev))
        bulk_latent = model.encode(torch.from_numpy(data.bulk_x).to(dev))[0].detach()
        tgt_latent = model.encode(torch.from_numpy(data.target_x).to(dev))[0].detach()
        n_cap = 512  # the latent MMD diagnostic on at most 512 x 512 samples
        latent_mmd = float(mmd_rbf(bulk_latent[:n_cap], tgt_latent[:n_cap]))
        model = model.cpu()

    target_pred = pd.DataFrame({"cell_id": data.target_ids, "prob_resistant": target_prob})
    metrics = {"cv": {k: v for k, v in cv.items() if k not in ("head_curve", "per_fold_head", "per_fold")},
               "latent_mmd_bulk_vs_target": latent_mmd}
    if target_label_column is not None:
        if target_label_column not in target_ad.obs:
            raise InputError(f"The target has no obs column {target_label_column!r}.",
                             f"Its columns: {', '.join(map(str, target_ad.obs.columns)) or 'none'}.")
        truth = encode_column(target_ad, target_label_column, target_resistant_value)[data.target_rows]
        known = ~np.isnan(truth)
        if known.sum() and len(np.unique(truth[known])) == 2:
            metrics["target"] = {"label_column": target_label_column,
                                 **evaluate(truth[known], target_prob[known], s.threshold).as_dict()}
        else:
            warnings.append(f"The target column {target_label_column!r} does not hold both classes; no target metrics.")

    seconds = time.perf_counter() - t0
    settings_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}
    provenance = {
        "source": "trained by scATD Studio (scatd train)",
        "trained_by": trained_by,
        "bulk": bulk_prov, "labels": labels_prov, "target": target_prov,
        "backbone_bundle": ({"name": bb_bundle.name, "weights_sha256": bb_bundle.manifest.get("weights_sha256")}
                            if bb_bundle is not None else None),
        "seed": s.seed, "adaptation": bool(adaptation), "device": str(dev), "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
    }
    training = {"settings": settings_dict, "drug_column": data.report["drug"], "labels": data.report["labels"],
                "genes": data.report.get("genes"), "bulk": data.report["bulk"], "target": data.report["target"],
                "pretraining_loss": [round(v, 5) for v in pretrain_hist], "cv_head_curve": cv["head_curve"],
                "warnings": warnings}
    if out is None:
        out = _default_out(data.report["drug"], backbone, library)
    bundle = save_bundle(
        out, model.state_dict(), model.arch, drug=data.report["drug"], genes=data.features,
        style_mean=data.style_mean, style_std=data.style_std,
        input_transform="standardize" if data.features is not None else "none",
        label_mapping=LABEL_MAPPING, threshold=s.threshold, beta_mode="separate", provenance=provenance,
        metrics=metrics, name=name or f"{data.report['drug']} ({backbone}, trained)", extra={"training": training},
        overwrite=overwrite, demo=demo)
    report.update(settings=settings_dict, pretraining={"loss": pretrain_hist}, cv=cv, metrics=metrics,
                  refit={"head_epochs": head_epochs, "finetune_epochs": s.finetune_epochs,
                         "loss": refit_hist["loss"]}, warnings=warnings, seconds=seconds,
                  bundle_path=str(bundle.path), target_predictions=target_pred)
    if progress is not None:
        progress(1.0, f"Saved {bundle.name} to {bundle.path}")
    return bundle, report

