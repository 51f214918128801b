"""``scatd train-panel``: a starter panel, one drug model per drug of a bulk screen."""

from __future__ import annotations

from pathlib import Path

from scatd_core._words import counted
from scatd_core._train_settings import MIN_LINES_PER_CLASS, TrainSettings
from scatd_core.cli._train_args import (add_few_shot_arguments, add_recipe_arguments, add_target_obs_argument,
                                        few_shot_of_column, note_unused, read_target, recipe_settings,
                                        refuse_lone_few_shot_value, refuse_lone_resistant_value)
from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import BACKBONES, DEVICE_HELP, DEVICES, Progress, add_overwrite_argument, check_output, \
    check_library_writable, drug_and_column, fmt, positive_int, say
from scatd_core.cli.labels import say_ic50_provenance
from scatd_core.errors import ScatdError

#: The recipe's defaults, for the help (the training takes them from the same place).
DEFAULTS = TrainSettings()


def add(sub) -> None:
    p = sub.add_parser(
        "train-panel", help="train one drug model per drug (a starter panel) with the default recipe",
        description="Train one model per drug of a bulk screen with the default training recipe of `scatd train`, "
                    "adapted to your single cells, and install them in the model library. Resumable: run the same "
                    "command again to go on after an interruption. Drugs with too few sensitive (or resistant) cell "
                    "lines are skipped. Prints (and with --summary writes) one row per drug: its model card in brief.")
    p.add_argument("--backbone", default="dist_vae", choices=BACKBONES)
    p.add_argument("--bulk", required=True, help="bulk cell lines x genes (CSV/TSV, h5ad, ...)")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--bulk-labels", help="cell lines x drugs table of sensitive/resistant "
                                              "(ALL_label_binary_wf.csv format)")
    labels.add_argument("--ic50", help="GDSC_IC50.csv (ln IC50; rows GDSC:<drug_id>): labels from IC50 with "
                                       "--thresholds and --drug-list, as `scatd labels-from-ic50`")
    p.add_argument("--thresholds", help="with --ic50: IC50_thred.txt (drug names, then ln(IC50) thresholds)")
    p.add_argument("--drug-list", help="with --ic50: the GDSC drug list CSV (drug_id, Name, ...)")
    p.add_argument("--drugs", required=True, help="'all', or a comma-separated list of drugs")
    p.add_argument("--target", required=True, help="the single cells to adapt to (any format `scatd predict` reads)")
    p.add_argument("--min-lines", type=positive_int, default=MIN_LINES_PER_CLASS,
                   help="skip drugs with fewer labelled cell lines than this in either class (default "
                        f"{MIN_LINES_PER_CLASS}, as scatd train)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the whole run: the networks' initial weights and batch order, the CV folds, the "
                        "baselines and the bootstrap intervals; the same data, settings, seed, device and "
                        "--threads give the same model (default 0)")
    add_recipe_arguments(p)  # the same recipe options as `scatd train`
    p.add_argument("--folds", type=positive_int, help=f"stratified CV folds on the bulk (default {DEFAULTS.folds})")
    p.add_argument("--target-labels", action="append", metavar="DRUG=COLUMN",
                   help="true labels of the target cells for one drug's model (an obs column), for its evaluation only "
                        "(the summary's target AUROC); repeat for more drugs")
    p.add_argument("--target-resistant-value",
                   help="the value of the --target-labels columns meaning resistant, unless the values are words like "
                        "resistant/sensitive (SCAD's 'response' is 1 = sensitive, so give 0)")
    p.add_argument("--target-mask", metavar="COLUMN",
                   help="boolean obs column of the target: only its True cells are used for every drug (e.g. "
                        "scatd_qc_pass in an annotated.h5ad from the app)")
    add_few_shot_arguments(p, panel=True)  # as scatd train's (--few-shot-labels or --few-shot-column), for one drug
    add_target_obs_argument(p)
    p.add_argument("--no-resume", action="store_true", help="train every drug again, even those already trained")
    p.add_argument("--save-panel", help="also save the trained models as your panel of this name (checked before "
                                        "training; models at or below chance on the bulk CV are left out)")
    p.add_argument("--replace-panel", action="store_true",
                   help="with --save-panel: replace your saved panel of that name (without it, a name you already "
                        "use, whatever its case, is refused before training)")
    p.add_argument("--include-below-chance", action="store_true",
                   help="with --save-panel: keep models whose bulk CV AUROC is at most 0.5 in the saved panel")
    p.add_argument("--summary", help="write the summary table (CSV) here")
    add_overwrite_argument(p, "replace a --summary file that already exists (without it, it is refused before "
                              "training)")
    p.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads while training (default 1, as for scatd train)")
    p.add_argument("--library", help=LIBRARY_HELP)
    p.set_defaults(run=run, interrupted=lambda args: "the drugs' models finished before it are in the model library; "
                                                     "run the same command again to resume (they are kept).")


def _labels(args):
    if args.ic50:
        if not (args.thresholds and args.drug_list):
            raise ScatdError("--ic50 needs --thresholds and --drug-list too.",
                             "They come with GDSC_IC50.csv (DeepCDR): IC50_thred.txt and the GDSC drug list.")
        from scatd_core.labels import labels_from_ic50

        drugs = None if args.drugs.strip().lower() == "all" else [d.strip() for d in args.drugs.split(",") if d.strip()]
        return labels_from_ic50(args.ic50, args.thresholds, args.drug_list, drugs=drugs)
    return args.bulk_labels


def _target_labels(pairs) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        drug, column = drug_and_column(pair, "--target-labels",
                                       "Gefitinib=response (a drug of --drugs, a column of the target)")
        out[drug] = column
    return out


def run(args) -> int:
    from dataclasses import replace

    from scatd_core.cli.predict import os_user
    from scatd_core.train import train_panel, verdict_lines

    refuse_lone_resistant_value(args)  # before anything is read
    refuse_lone_few_shot_value(args)
    if args.include_below_chance and not args.save_panel:
        raise ScatdError("--include-below-chance is for --save-panel, and none was given.")
    if args.replace_panel and not args.save_panel:
        raise ScatdError("--replace-panel is for --save-panel, and none was given.")
    if args.save_panel:  # a bad name, or one of your saved panels unless --replace-panel, refused before any training
        from scatd_core.panel import check_panel_free

        args.save_panel = check_panel_free(args.save_panel, os_user(), replace=args.replace_panel, cli=True,
                                           hint="Choose another name for --save-panel, or add --replace-panel to "
                                                "replace it.")
    if args.summary:  # before training: never an input, always writable
        check_output(args.summary, "--summary", inputs=[args.bulk, args.bulk_labels, args.ic50, args.thresholds,
                                                        args.drug_list, args.target, args.obs, args.few_shot_labels],
                     overwrite=args.overwrite)
    check_library_writable(args.library)  # where each drug's model is installed, before any training
    settings = recipe_settings(args, TrainSettings(seed=args.seed))
    if args.folds is not None:
        settings = replace(settings, folds=args.folds)
    note_unused(args, settings, few_shot=args.few_shot_labels is not None or args.few_shot_column is not None)
    labels = _labels(args)
    say_ic50_provenance(None if args.ic50 else args.bulk_labels, mismatch=True)  # from labels-from-ic50: said
    # with --obs, the table's columns added before they are looked up; read here too for --few-shot-column
    target, target_file = read_target(args, read=args.few_shot_column is not None)
    # --few-shot-labels: the file, read and checked by train_panel before any drug is trained, as scatd train's
    few_shot = args.few_shot_labels if args.few_shot_column is None else few_shot_of_column(target, args)
    summary, bundles = train_panel(
        args.bulk, labels, args.drugs, target, backbone=args.backbone, settings=settings,
        adaptation=not args.no_adaptation,
        input_names={"labels": f"labels from {Path(args.ic50).name}"} if args.ic50 else None,
        input_files={"target": target_file} if target_file else None,
        min_lines_per_class=args.min_lines, device=args.device, library=args.library, trained_by=os_user(),
        resume=not args.no_resume, target_labels=_target_labels(args.target_labels),
        target_resistant_value=args.target_resistant_value, target_mask=args.target_mask,
        few_shot_labels=few_shot, few_shot_drug=args.few_shot_drug,
        progress=Progress("Training the panel"), notice=lambda message: say(f"note: {message}"))
    print("drug\tstatus\tsensitive\tresistant\tCV AUROC\tbest baseline (CV AUROC)\ttarget AUROC\tbundle\tnote")
    for r in summary.itertuples(index=False):
        baseline = f"{r.cv_best_baseline} ({fmt(r.cv_best_baseline_auroc)})" if r.cv_best_baseline else "-"
        print(f"{r.drug}\t{r.status}\t{r.n_sensitive}\t{r.n_resistant}\t{fmt(r.cv_auroc)}\t{baseline}\t"
              f"{fmt(r.target_auroc)}\t{r.bundle}\t{r.note}")
    for line in verdict_lines(summary):
        print(line)
    if args.summary:
        from scatd_core._output import write_file, writing
        from scatd_core.export import to_csv_bytes

        with writing(args.summary):
            write_file(args.summary, to_csv_bytes(summary))
        say(f"Wrote {args.summary}")
    if args.save_panel:
        from scatd_core.panel import MIN_MODELS, save_panel
        from scatd_core.train import models_to_save

        kept, left_out = models_to_save(summary, bundles, include_below_chance=args.include_below_chance)
        if left_out:
            say(f"warning: left out of panel {args.save_panel!r}, at or below chance on the bulk CV: "
                f"{', '.join(left_out)} (--include-below-chance keeps them).")
        if len(kept) < MIN_MODELS:
            raise ScatdError(f"Only {counted(len(kept), 'drug')} {'has' if len(kept) == 1 else 'have'} a model to save; "
                             f"a panel needs at least {MIN_MODELS}, "
                             f"so panel {args.save_panel!r} was not saved.",
                             "Train more drugs" + (", or add --include-below-chance" if left_out else "") + ".")
        save_panel(args.save_panel, [b.path.name for b in kept], os_user(), library=args.library,
                   replace=args.replace_panel, cli=True)
        say(f"Saved your panel {args.save_panel!r}: {', '.join(b.drug for b in kept)}")
    say(f"{len(bundles)} of {counted(len(summary), 'drug')} {'has' if len(bundles) == 1 else 'have'} a model in the "
        "library.")
    return 0 if bundles else 2
