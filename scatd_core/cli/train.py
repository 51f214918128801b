"""``scatd train``: a drug model trained on bulk cell lines, adapted to your single cells."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from scatd_core._output import write_file, writing
from scatd_core._words import counted
from scatd_core._train_settings import MIN_LINES_PER_CLASS, TrainSettings
from scatd_core.cli._train_args import (add_few_shot_arguments, add_recipe_arguments, add_target_obs_argument,
                                        few_shot_of_column, note_unused, read_target, recipe_settings,
                                        refuse_lone_few_shot_value, refuse_lone_resistant_value)
from scatd_core.cli.labels import say_ic50_provenance
from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import (BACKBONES, DEVICE_HELP, DEVICES, Progress, _check_writable, check_library_writable,
                                    check_outputs, positive_int, resolve_bundle, say)
from scatd_core.errors import ScatdError

#: The recipe's defaults, for the help (the training takes them from the same place).
DEFAULTS = TrainSettings()


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or inside it (both resolved, links followed)."""
    inner, outer = inner.expanduser().resolve(), outer.expanduser().resolve()
    return inner == outer or outer in inner.parents


def check_export(out, *, overwrite: bool, inputs=(), library=None) -> Path:
    """Refuse an ``--out`` the bundle copy must not go to, before anything is trained.

    A new folder is fine; an existing one is replaced only with ``overwrite`` and only when it is
    a bundle exported earlier (it has a manifest). Never a file, the model library or a folder in
    or around it (the model is installed there already; replacing it would delete the library),
    nor a folder holding one of the ``inputs``."""
    from scatd_core.bundle import MANIFEST
    from scatd_core.config import model_library_dir

    out = Path(out)
    root = Path(library) if library else model_library_dir()
    if _within(out, root) or _within(root, out):
        raise ScatdError(f"--out {out} is the model library {root} or a folder in or around it; the model is "
                         "installed in the library anyway.", "--out is for a copy elsewhere: give a folder "
                                                            "outside the model library.")
    for source in (Path(p) for p in inputs if p):
        if source.exists() and _within(source, out):
            raise ScatdError(f"--out {out} holds the input {source}; exporting there would replace it.",
                             "Give a new folder for the bundle copy, so your data stays as it is.")
    if out.is_symlink():
        raise ScatdError(f"--out {out} is a link; the bundle copy is not written through links.",
                         "Give the real folder, or a new one.")
    if out.exists() and not out.is_dir():
        raise ScatdError(f"--out {out} is an existing file; --out names the folder to export the bundle copy to.",
                         "Give a new folder (or the folder of an earlier export, with --overwrite).")
    if out.exists():
        if not (out / MANIFEST).is_file():
            raise ScatdError(f"--out {out} is an existing folder that is not a model bundle (no {MANIFEST}); "
                             "only a bundle exported earlier can be replaced.",
                             "Give a new folder for the bundle copy.")
        if not overwrite:
            raise ScatdError(f"{out} already exists.", "Choose another --out, or add --overwrite.")
        _check_writable(out.parent, "--out", out)  # the copy is made beside it, then swapped in
    else:
        _check_writable(out, "--out", out, create=True)  # the folder is made, in a folder that exists
    return out


def export_bundle(source: Path, target: Path) -> None:
    """Copy a bundle folder to ``target``, replacing a folder there (see :func:`check_export`)
    only once the copy is complete: it is written to a temporary folder beside ``target`` and
    then swapped in, so a failure leaves the earlier folder as it was."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
        old = None
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(target, old)
            os.rename(tmp, target)
        except BaseException:
            if old is not None and not target.exists():
                os.rename(old, target)  # put the earlier export back
                old = None
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add(sub) -> None:
    p = sub.add_parser(
        "train", help="train a drug model on bulk cell lines, adapted to your single cells",
        description="Train a drug-response model on labelled bulk cell lines for a target single-cell dataset. "
                    "Default: an ensemble of scATD backbones pretrained from different seeds on the bulk and the "
                    "target cells, each with a class-balanced linear head on its latent and the standardised genes. "
                    "The target's label column, if any, is only used to report metrics; --few-shot-labels (or "
                    "--few-shot-column) trains with a few labelled target cells. Every model gets a model card "
                    "comparing it with a logistic regression and gradient boosting trained on the same inputs.")
    p.add_argument("--backbone", default="dist_vae", choices=BACKBONES,
                   help="dist_vae: expression (default); vae_sf/vae_gf: cell embeddings")
    p.add_argument("--bulk", required=True, help="bulk cell lines x genes (CSV/TSV, h5ad, ...)")
    p.add_argument("--bulk-labels", required=True,
                   help="cell lines x drugs table of sensitive/resistant (ALL_label_binary_wf.csv format)")
    p.add_argument("--drug", required=True, help="drug column of the label table (case-insensitive)")
    p.add_argument("--target", required=True, help="the single cells to adapt to (any format `scatd predict` reads)")
    p.add_argument("--out", help="also export a copy of the new bundle to this folder (it is always installed in "
                                 "the model library)")
    p.add_argument("--backbone-bundle", help="start from this pretrained backbone bundle: a folder, or a bundle name "
                                             "in the model library (default: pretrain them)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the whole run: the networks' initial weights and batch order, the CV folds, the "
                        "baselines and the bootstrap intervals; the same data, settings, seed, device and "
                        "--threads give the same model (default 0)")
    p.add_argument("--folds", type=positive_int, default=DEFAULTS.folds,
                   help=f"stratified CV folds on the bulk (default {DEFAULTS.folds})")
    p.add_argument("--min-lines", type=positive_int, default=MIN_LINES_PER_CLASS,
                   help="refuse a drug with fewer labelled cell lines than this in either class, before training "
                        f"(default {MIN_LINES_PER_CLASS}, as train-panel); below {MIN_LINES_PER_CLASS} the model card "
                        "says that the bulk scores cannot be trusted")
    add_recipe_arguments(p)
    add_few_shot_arguments(p)  # --few-shot-labels or --few-shot-column (and --few-shot-resistant), as train-panel's
    p.add_argument("--target-labels", help="obs column of the target with true labels, for evaluation only")
    p.add_argument("--target-mask", metavar="COLUMN",
                   help="boolean obs column of the target: only its True cells are used (adapted to and evaluated), "
                        "e.g. scatd_qc_pass in an annotated.h5ad from the app, as predict leaves filtered cells out")
    p.add_argument("--target-resistant-value",
                   help="the value of --target-labels meaning resistant, unless the values are words like "
                        "resistant/sensitive (SCAD's 'response' is 1 = sensitive, so give 0)")
    add_target_obs_argument(p)
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads while training, and the model card's gradient-boosting baseline's (default 1: "
                        "the networks are small, and more threads on a busy machine mostly wait for each other)")
    p.add_argument("--name", help="display name in the model library; also names the model's folder there (as "
                                   "import-checkpoint's: other characters than ASCII letters, digits, '-', '_' and '.' "
                                   "become '_', with a short hash of the name added), which is what --model takes "
                                   "(default folder: DRUG_BACKBONE_trained)")
    p.add_argument("--library", help=LIBRARY_HELP)
    p.add_argument("--replace", action="store_true",
                   help="replace the model of the library that has --name's folder (or a folder whose name differs "
                        "from it only by case), in that folder, for every user of the library, as the app's 'Replace "
                        "a model of the same name' (without it a taken name is refused before training; a model of "
                        "the library is replaced only with --replace, never by --overwrite). Needs --name and an "
                        "account that may write the library")
    p.add_argument("--overwrite", action="store_true",
                   help="replace your own files: a bundle copy exported to --out earlier (only a bundle folder, never "
                        "other files), and --report or --target-predictions files that already exist (without it, an "
                        "existing one is refused before training); a model of the library is replaced only with "
                        "--replace")
    p.add_argument("--report", help="also write the training report (JSON) here")
    p.add_argument("--target-predictions",
                   help="also write the target's per-cell P(resistant), the call at the model's default threshold "
                        "and the known label (CSV) here (docs/outputs.md)")
    p.set_defaults(run=run, interrupted=_interrupted)


def run(args) -> int:
    from scatd_core.card import card_lines, few_lines_sentence
    from scatd_core.train import report_to_json, train_drug_model

    refuse_lone_resistant_value(args)  # before anything is read
    if args.replace and not args.name:
        raise ScatdError("--replace replaces the model of --name (the library folder it names); without --name the "
                         "model gets a new folder, so there is nothing to replace.",
                         "Add --name NAME (the model to replace, as `scatd models` lists its name), or leave out "
                         "--replace.")
    refuse_lone_few_shot_value(args)
    # a bundle folder, or the name of one in the model library (as predict's --model)
    backbone_bundle = resolve_bundle(args.backbone_bundle, args.library) if args.backbone_bundle else None
    inputs = [args.bulk, args.bulk_labels, args.target, args.few_shot_labels, args.obs,
              backbone_bundle.path if backbone_bundle else None]
    outputs = {"--report": args.report, "--target-predictions": args.target_predictions}
    for option, path in outputs.items():  # first: said as such, not as a folder that does not exist yet
        if args.out and path and _within(Path(path), Path(args.out)):
            raise ScatdError(f"{option} {path} is inside --out {args.out}, the folder the bundle copy goes to.",
                             f"Write {option} outside the bundle folder.")
    check_outputs(args, outputs, inputs=inputs)  # before training: never an input, always writable
    if args.out:
        check_export(args.out, overwrite=args.overwrite, inputs=inputs, library=args.library)
    check_library_writable(args.library)  # where the model is installed, before minutes of training

    settings = recipe_settings(args)
    said = note_unused(args, settings, backbone_given=backbone_bundle is not None,
                       few_shot=args.few_shot_labels is not None or args.few_shot_column is not None)
    say(f"Training a {args.backbone} model for {args.drug} ({args.head} head): bulk {Path(args.bulk).name}, "
        f"target {Path(args.target).name}")
    say_ic50_provenance(args.bulk_labels)  # built by scatd labels-from-ic50: its thresholds are recorded
    # with --obs, the table's columns added before they are looked up; read here too for --few-shot-column
    target, target_file = read_target(args, read=args.few_shot_column is not None)
    few_shot = args.few_shot_labels if args.few_shot_column is None else few_shot_of_column(target, args)
    bundle, report = train_drug_model(
        args.bulk, args.bulk_labels, args.drug, target, backbone=args.backbone,
        backbone_bundle=backbone_bundle, seed=args.seed, folds=args.folds, epochs=args.epochs, settings=settings,
        adaptation=not args.no_adaptation, device=args.device, target_label_column=args.target_labels,
        target_resistant_value=args.target_resistant_value, target_mask=args.target_mask,
        few_shot_labels=few_shot, input_files={"target": target_file} if target_file else None,
        library=args.library, name=args.name, overwrite=args.replace, trained_by=_os_user(),
        min_lines_per_class=args.min_lines,
        progress=Progress(),
        notice=lambda message: (said.append(message), say(f"note: {message}")))
    args.saved = bundle.path  # (an interruption from here on says so)
    target_metrics = report["metrics"].get("target") or {}
    if target_metrics and not target_metrics.get("resistant_value_given"):
        say(f"Target labels {target_metrics['label_column']!r}: {target_metrics['resistant_value']!r} taken to mean "
            "resistant (from the words; give --target-resistant-value VALUE to say otherwise).")
    lab = report["labels"]
    say(f"Labels ({report['drug']}): {lab['sensitive']:,} sensitive, {lab['resistant']:,} resistant bulk samples; "
        f"{counted(lab['n_bulk_without_label'], 'bulk sample')} without a label for it (pretraining only); "
        f"{counted(lab['n_missing_label'], 'row')} of the label table without one.")
    if report.get("genes"):
        g = report["genes"]
        say(f"Gene panel: {g['n_panel']:,} genes shared by bulk ({g['n_bulk']:,}) and target ({g['n_target']:,})"
            + (f" and the backbone ({g['n_backbone']:,})" if g.get("n_backbone") else "") + ".")
    say("Model card:")
    told = {f"Warning: {w}" for w in said}  # the card's warnings told when they happened are not said again
    for line in card_lines(report["card"]):
        if line not in told:
            say(f"  {line}")
    for w in report["warnings"]:
        if w not in said and w not in (report["card"].get("warnings") or []):  # told when it happened, or in the card
            say(f"warning: {w}")
    if args.report:
        with writing(args.report):
            write_file(args.report, json.dumps(report_to_json(report), indent=2) + "\n")
        say(f"Wrote {args.report}")
    if args.target_predictions:
        with writing(args.target_predictions):
            from scatd_core.export import to_csv_bytes

            write_file(args.target_predictions, to_csv_bytes(report["target_predictions"]))
        say(f"Wrote {args.target_predictions}")
    print(f"Trained '{bundle.name}' in {report['seconds']:.0f} s; installed in the model library: {bundle.path}")
    if bundle.replaced:
        print(f"Replaced the model '{bundle.replaced}' (folder {bundle.path.name}) with this one, for every user of "
              "the library.")
    say(f"Use it with --model {bundle.path.name} (scatd predict, report, explain).")
    untrusted = next((few_lines_sentence(ev) for ev in report["card"]["evaluations"] if few_lines_sentence(ev)), None)
    if untrusted:  # a lower --min-lines: said again last, where it is read
        say(f"warning: {untrusted}")
    if args.out:
        check_export(args.out, overwrite=args.overwrite, inputs=inputs, library=args.library)  # still so
        export_bundle(bundle.path, Path(args.out))
        print(f"Exported a copy to {args.out}")
    return 0


def _interrupted(args) -> str:
    """What Ctrl-C left: nothing before the model is saved (it is written at the end, in one piece)."""
    saved = getattr(args, "saved", None)
    if saved is None:
        return "no model was saved."
    return f"the model was saved already ({saved}); what was to follow it (--out, the files asked for) may be missing."


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment or the password database
        return None
