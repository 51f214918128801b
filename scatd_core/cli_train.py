"""``scatd train`` and ``scatd labels-from-ic50``: the training commands of the ``scatd`` CLI.

Wired into :mod:`scatd_core.cli` through ``COMMANDS``; each ``add_*`` function registers one
sub-command whose ``run`` function returns the exit code. Problems are raised as
:class:`~scatd_core.errors.ScatdError` and printed by ``scatd``'s main.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scatd_core.errors import ScatdError


def _say(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


class _TrainProgress:
    """Epoch-by-epoch progress: one rewritten line on a terminal, else a line per phase and 10%."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.phase = None
        self.decile = -1

    def __call__(self, fraction: float, message: str) -> None:
        if self.tty:
            print(f"\r{int(fraction * 100):3d}% {message[:100]:<100}", end="", file=sys.stderr, flush=True)
            if fraction >= 1:
                print(file=sys.stderr)
            return
        phase = message.split(" · ")[0]
        decile = int(fraction * 10)
        if phase != self.phase or decile != self.decile or fraction >= 1:
            _say(f"{int(fraction * 100):3d}% {message}")
        self.phase, self.decile = phase, decile


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --------------------------------------------------------------------------- train

def add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a drug model on bulk cell lines, adapted to your single cells",
        description="Train a drug-response model on labelled bulk cell lines and adapt it to a target "
                    "single-cell dataset (scATD domain-adaptive learning). The target's labels, if any, are "
                    "only used to report metrics.")
    p.add_argument("--backbone", default="dist_vae", choices=["dist_vae", "vae_sf", "vae_gf"],
                   help="dist_vae: expression (default); vae_sf/vae_gf: cell embeddings")
    p.add_argument("--bulk", required=True, help="bulk cell lines x genes (CSV/TSV, h5ad, ...)")
    p.add_argument("--bulk-labels", required=True,
                   help="cell lines x drugs table of sensitive/resistant (ALL_label_binary_wf.csv format)")
    p.add_argument("--drug", required=True, help="drug column of the label table (case-insensitive)")
    p.add_argument("--target", required=True, help="the single cells to adapt to (any format `scatd predict` reads)")
    p.add_argument("--out", help="bundle folder to create (default: a new folder in the model library)")
    p.add_argument("--backbone-bundle", help="start from this pretrained backbone bundle (default: pretrain one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=_positive_int, default=5, help="stratified CV folds on the bulk (default 5)")
    p.add_argument("--epochs", type=_positive_int,
                   help="most drug-head epochs on the frozen encoder; the CV picks how many (default 50)")
    p.add_argument("--finetune-epochs", type=int, help="then epochs fine-tuning the encoder too (default 20)")
    p.add_argument("--pretrain-epochs", type=int, help="backbone pretraining epochs (default 200)")
    p.add_argument("--mmd-weight", type=float, help="weight of the bulk-target MMD loss (default 1.0)")
    p.add_argument("--no-adaptation", action="store_true",
                   help="never use the target for training (the no-adaptation baseline)")
    p.add_argument("--target-labels", help="obs column of the target with true labels, for evaluation only")
    p.add_argument("--target-sensitive-value",
                   help="the value of --target-labels meaning sensitive when it is not the text "
                        "sensitive/resistant (SCAD 'response': 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=_positive_int,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest for small models)")
    p.add_argument("--name", help="display name in the model library")
    p.add_argument("--library", help="model library folder (default: $SCATD_MODEL_LIBRARY)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--report", help="also write the training report (JSON) here")
    p.add_argument("--target-predictions", help="also write the target's per-cell P(resistant) (CSV) here")
    p.set_defaults(run=run_train)


def _fmt(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def run_train(args) -> int:
    import torch

    from scatd_core.train import TrainSettings, train_drug_model

    settings = TrainSettings()
    overrides = {"finetune_epochs": args.finetune_epochs, "pretrain_epochs": args.pretrain_epochs,
                 "mmd_weight": args.mmd_weight}
    for key, value in overrides.items():
        if value is not None:
            if value < 0:
                raise ScatdError(f"--{key.replace('_', '-')} must not be negative, got {value}.")
            setattr(settings, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    _say(f"Training a {args.backbone} model for {args.drug}: bulk {Path(args.bulk).name}, "
         f"target {Path(args.target).name}")
    bundle, report = train_drug_model(
        args.bulk, args.bulk_labels, args.drug, args.target, backbone=args.backbone,
        backbone_bundle=args.backbone_bundle, seed=args.seed, folds=args.folds, epochs=args.epochs, settings=settings,
        adaptation=not args.no_adaptation, device=args.device, target_label_column=args.target_labels,
        target_sensitive_value=args.target_sensitive_value, out=args.out, library=args.library, name=args.name,
        overwrite=args.overwrite, progress=_TrainProgress())
    lab = report["labels"]
    _say(f"Labels ({report['drug']}): {lab['sensitive']} sensitive, {lab['resistant']} resistant bulk samples; "
         f"{lab['n_missing_label']} missing labels dropped; {lab['n_bulk_without_label']} bulk samples unlabelled.")
    if report.get("genes"):
        g = report["genes"]
        _say(f"Gene panel: {g['n_panel']:,} genes shared by bulk ({g['n_bulk']:,}) and target ({g['n_target']:,})"
             + (f" and the backbone ({g['n_backbone']:,})" if g.get("n_backbone") else "") + ".")
    cv = report["cv"]
    _say(f"Bulk {cv['folds']}-fold CV AUROC {_fmt(cv['auroc_mean'])} ± {_fmt(cv['auroc_sd'])} with "
         f"{cv['head_epochs']} head epochs (chosen by validation AUROC) + {cv['finetune_epochs']} fine-tuning.")
    tm = report["metrics"].get("target")
    if tm:
        _say(f"Target ({tm['label_column']}, evaluation only): AUROC {_fmt(tm['auroc'])}, AUPRC {_fmt(tm['auprc'])}, "
             f"balanced accuracy {_fmt(tm['balanced_accuracy'])} at threshold {tm['threshold']:g}.")
    for w in report["warnings"]:
        _say(f"warning: {w}")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report_to_json(report), indent=2) + "\n", encoding="utf-8")
        _say(f"Wrote {args.report}")
    if args.target_predictions:
        Path(args.target_predictions).parent.mkdir(parents=True, exist_ok=True)
        report["target_predictions"].to_csv(args.target_predictions, index=False)
        _say(f"Wrote {args.target_predictions}")
    print(f"Trained '{bundle.name}' in {report['seconds']:.0f} s -> {bundle.path}")
    return 0


def report_to_json(report: dict) -> dict:
    """The training report without its per-cell table and arrays (JSON-safe)."""
    import numpy as np

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.ndarray):
            return clean(v.tolist())
        if isinstance(v, (np.floating, float)):
            return None if v != v else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    out = {k: v for k, v in report.items() if k != "target_predictions"}
    return clean(out)


# --------------------------------------------------------------------------- labels-from-ic50

def add_labels_from_ic50(sub) -> None:
    p = sub.add_parser(
        "labels-from-ic50", help="build a sensitive/resistant label table from GDSC ln(IC50) values",
        description="Build a cell lines x drugs label table (the ALL_label_binary_wf.csv format) from GDSC "
                    "ln(IC50) values and per-drug thresholds: below the threshold = sensitive.")
    p.add_argument("--ic50", required=True, help="GDSC_IC50.csv: rows GDSC:<drug_id>, columns cell lines, ln(IC50)")
    p.add_argument("--thresholds", required=True,
                   help="IC50_thred.txt: two tab-separated rows, drug names then ln(IC50) thresholds")
    p.add_argument("--drug-list", required=True, help="GDSC drug list CSV (drug_id, Name, Synonyms, ...)")
    p.add_argument("--drugs", nargs="+", help="only these drugs (names or GDSC ids; default: all)")
    p.add_argument("--out", required=True, help="label table CSV to write")
    p.set_defaults(run=run_labels_from_ic50)


def run_labels_from_ic50(args) -> int:
    from scatd_core.labels import labels_from_ic50, write_label_table

    table = labels_from_ic50(args.ic50, args.thresholds, args.drug_list, drugs=args.drugs)
    rep = table.attrs["report"]
    write_label_table(table, args.out)
    for drug, info in list(rep["thresholds"].items())[:20]:
        col = table[drug]
        _say(f"{drug} (GDSC:{info['gdsc_id']}): threshold {info['threshold']:g} "
             f"(by {info['matched_by']} '{info['threshold_name']}'): {int((col == 'sensitive').sum())} sensitive, "
             f"{int((col == 'resistant').sum())} resistant, {int(col.isna().sum())} not screened")
    if len(rep["thresholds"]) > 20:
        _say(f"... and {len(rep['thresholds']) - 20} more drugs")
    if rep["no_threshold"]:
        _say(f"warning: no threshold found for {len(rep['no_threshold'])} drug(s), left out: "
             f"{', '.join(rep['no_threshold'][:10])}")
    print(f"Wrote {rep['n_drugs']} drugs x {rep['n_cell_lines']} cell lines -> {args.out}")
    return 0
