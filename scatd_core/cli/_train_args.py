"""The training recipe's options, shared by ``scatd train`` and ``scatd train-panel``: their
definitions, the settings they make, and the note for each option the chosen recipe does not use.
Light: no science imports, so the help stays fast."""

from __future__ import annotations

from dataclasses import replace

from scatd_core._words import counted
from scatd_core._keys import target_columns_hint
from scatd_core._train_settings import HEAD_INPUTS, HEADS, TrainSettings, unused_settings
from scatd_core.cli._common import input_file, positive_int, say
from scatd_core.errors import ScatdError

#: The recipe's defaults, for the help (the training takes them from the same place).
DEFAULTS = TrainSettings()
#: Setting -> its option, for the options that set the recipe.
OPTIONS = {"head": "--head", "members": "--members", "head_c": "--head-c", "head_inputs": "--head-inputs",
           "epochs": "--epochs", "finetune_epochs": "--finetune-epochs", "pretrain_epochs": "--pretrain-epochs",
           "mmd_weight": "--mmd-weight", "threads": "--threads"}


def add_recipe_arguments(p) -> None:
    """The drug head and its settings, the epochs, the adaptation (both commands, the same words)."""
    p.add_argument("--head", choices=HEADS, default="linear",
                   help="linear: the ensemble of linear heads (default); scatd: the original head (fc3-bn3-swish-fc4), "
                        "one model, head epochs chosen by CV, then fine-tuning with MMD")
    p.add_argument("--members", type=positive_int,
                   help=f"backbones in the ensemble (linear head; default {DEFAULTS.members})")
    p.add_argument("--head-c", type=float,
                   help=f"inverse L2 strength of the linear heads (default {DEFAULTS.head_c})")
    p.add_argument("--head-inputs", choices=HEAD_INPUTS,
                   help="what the linear heads see: latent+input (default: the latent mean and the standardised "
                        "genes) or latent")
    p.add_argument("--epochs", type=positive_int,
                   help="scatd head: most head epochs on the frozen encoder; the CV picks how many "
                        f"(default {DEFAULTS.epochs}); the linear heads have none")
    p.add_argument("--finetune-epochs", type=int,
                   help=f"scatd head: then epochs fine-tuning the encoder (default {DEFAULTS.finetune_epochs})")
    p.add_argument("--pretrain-epochs", type=int,
                   help=f"backbone pretraining epochs (default {DEFAULTS.pretrain_epochs})")
    p.add_argument("--mmd-weight", type=float,
                   help=f"scatd head: weight of the bulk-target MMD loss (default {DEFAULTS.mmd_weight})")
    p.add_argument("--no-adaptation", action="store_true",
                   help="never use the target for training (the no-adaptation baseline)")


def add_target_obs_argument(p) -> None:
    """``--obs FILE``: a cell metadata table for the target (both commands, the same words)."""
    p.add_argument("--obs", metavar="FILE", type=input_file,
                   help="a cell metadata table (CSV/TSV: the target's cell IDs in the first column or in one named "
                        "cell_id or barcode, then columns such as response or sample) whose columns are added to "
                        "the target's obs before --target-labels, --target-mask and --few-shot-column are looked "
                        "up (10x and matrix files carry none); a name the target already has gets _meta appended; "
                        "the model records the table (its name and sha256)")


def add_few_shot_arguments(p, *, panel: bool = False) -> None:
    """``--few-shot-labels FILE`` or ``--few-shot-column COLUMN`` (one of them), and
    ``--few-shot-resistant`` (both commands, the same words); with ``panel``, ``--few-shot-drug``
    too: the labelled cells are labels for one drug, which a panel of several drugs must be told."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--few-shot-labels", metavar="FILE",
        help="CSV cell_id,label (sensitive/resistant) of a few labelled target cells (at least 2 per class) to train "
             + ("the model of one drug with (--few-shot-drug, or the panel's only drug), as `scatd train "
                "--few-shot-labels` does; the other drugs are trained without them"
                if panel else "with; the other target cells stay unlabelled (semi-supervised)"))
    group.add_argument(
        "--few-shot-column", metavar="COLUMN",
        help="or an obs column of the target (or of --obs) with a label for a few cells and blanks for the others "
             "(the Train page's 'Labelled cells to train with'): those cells train the model "
             + ("of one drug (--few-shot-drug, or the panel's only drug), as `scatd train --few-shot-column` "
                "does; the other drugs are trained without them" if panel else "as --few-shot-labels' do"))
    p.add_argument("--few-shot-resistant", metavar="VALUE",
                   help="the value of --few-shot-column meaning resistant, unless the values are words like "
                        "resistant/sensitive (e.g. 0 for a 0/1 column where 1 = sensitive)")
    if panel:
        p.add_argument("--few-shot-drug", metavar="DRUG",
                       help="the drug of --drugs whose response --few-shot-labels or --few-shot-column labels (the "
                            "cells' own drug); needed when the panel has more than one drug")


def read_target(args, *, read: bool = False):
    """``(target, record)``: without ``--obs`` (and ``read``), ``(args.target, None)`` (the training
    reads the file); with it, the target read here with the table's columns added to its obs (said
    as ``scatd predict --obs`` says it), and the target file's ``{"file", "sha256"}``, which the
    model records as if the training had read it. A table that matches no cell, lists a cell twice
    or has no rows is refused with predict's message. ``read``: read the target here even without
    ``--obs`` (``--few-shot-column`` looks at its columns)."""
    if not getattr(args, "obs", None) and not read:
        return args.target, None
    from scatd_core import io
    from scatd_core.train._data import read_if_path

    target, record = read_if_path(args.target, "target")
    if not getattr(args, "obs", None):
        return target, record
    for i, line in enumerate(io.cell_metadata_messages(io.add_cell_metadata(target, args.obs))):
        say(("--obs " if i == 0 else "      ") + line)  # the first names the table
    return target, record


def recipe_settings(args, settings: TrainSettings | None = None) -> TrainSettings:
    """``settings`` (default :class:`TrainSettings`) with the recipe options given on the command line."""
    s = replace(settings or TrainSettings(), head=args.head)
    for key, option in OPTIONS.items():
        value = getattr(args, key, None)
        if value is None or key == "head":
            continue
        if not isinstance(value, str) and value < 0:
            raise ScatdError(f"{option} must not be negative, got {value}.")
        s = replace(s, **{key: value})
    return s


def refuse_lone_resistant_value(args) -> None:
    """``--target-resistant-value`` without ``--target-labels`` is refused before any training (by
    ``scatd train`` and ``scatd train-panel`` alike): it says which value of those columns means
    resistant, so given alone it is a forgotten option, not one to ignore."""
    if getattr(args, "target_resistant_value", None) is not None and not getattr(args, "target_labels", None):
        raise ScatdError("--target-resistant-value goes with --target-labels (it says which label value means "
                         "resistant), and no --target-labels was given.",
                         "Add --target-labels (the target's label column), or leave --target-resistant-value out.")


def refuse_lone_few_shot_value(args) -> None:
    """``--few-shot-resistant`` without ``--few-shot-column`` (or ``scatd train-panel``'s
    ``--few-shot-drug`` without ``--few-shot-column`` or ``--few-shot-labels``) is refused before
    anything is read, as a lone ``--target-resistant-value`` is."""
    if getattr(args, "few_shot_column", None):
        return
    if getattr(args, "few_shot_resistant", None) is not None:
        raise ScatdError("--few-shot-resistant is for the --few-shot-column column, and none was given.",
                         "Add --few-shot-column (the target's column of labelled cells), or leave --few-shot-resistant "
                         "out" + (" (a --few-shot-labels file says sensitive or resistant in words)."
                                  if getattr(args, "few_shot_labels", None) else "."))
    if getattr(args, "few_shot_drug", None) is not None and not getattr(args, "few_shot_labels", None):
        raise ScatdError("--few-shot-drug names the drug of the --few-shot-column or --few-shot-labels labels, and "
                         "none was given.",
                         "Add --few-shot-column (the target's column of labelled cells) or --few-shot-labels (a "
                         "cell_id,label file), or leave --few-shot-drug out.")


def few_shot_of_column(target, args):
    """The labelled cells of ``--few-shot-column`` (``sensitive``/``resistant`` by cell ID), as the
    Train page takes them (:func:`scatd_core.labels.few_shot_from_column`, so the model records
    them as it records the page's: the column's name, and the cell metadata table that gave it).
    Which value means resistant: ``--few-shot-resistant``, else the words (resistant/sensitive...);
    numbers are never guessed: where the page asks, the error here names the option to give."""
    from scatd_core._keys import RESISTANT, SENSITIVE
    from scatd_core.errors import InputError
    from scatd_core.labels import (few_shot_from_column, label_counts, label_direction,
                                   refuse_few_shot_as_evaluation)

    column, resistant = args.few_shot_column, args.few_shot_resistant
    if column not in target.obs:
        raise InputError(f"The target has no obs column {column!r} (--few-shot-column).",
                         target_columns_hint(target.obs.columns))
    evaluation = getattr(args, "target_labels", None)
    if isinstance(evaluation, str):  # scatd train's; train-panel's (DRUG=COLUMN) are checked by drug in train_panel
        refuse_few_shot_as_evaluation(column, evaluation)
    if resistant is None and label_direction(target, column) is None:
        values = ", ".join(map(str, label_counts(target.obs[column]).index[:5])) or "none"
        raise InputError(f"Which value of '{column}' means resistant is not known (values: {values}).",
                         "Say which value means resistant: --few-shot-resistant VALUE.")
    labels = few_shot_from_column(target, column, resistant, option="--few-shot-resistant")
    say(f"--few-shot-column {column}: {counted(len(labels), 'labelled cell')} of {target.n_obs:,} will be used for "
        "training "
        f"({int((labels == RESISTANT).sum()):,} resistant, {int((labels == SENSITIVE).sum()):,} sensitive).")
    return labels


def note_unused(args, settings: TrainSettings, *, backbone_given: bool = False, few_shot: bool = False) -> list[str]:
    """Say (``note: ...``) which recipe options given have no effect with the chosen head, and why;
    the training does not record them among the model's settings. Returns the notes."""
    unused = unused_settings(settings.head, backbone_given=backbone_given, adaptation=not args.no_adaptation,
                             few_shot=few_shot)
    by_reason: dict[str, list[str]] = {}
    for key, option in OPTIONS.items():
        if key in unused and getattr(args, key, None) is not None:
            by_reason.setdefault(unused[key], []).append(option)
    notes = []
    for reason, options in by_reason.items():
        names = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} and {options[-1]}"
        verb = "has" if len(options) == 1 else "have"
        notes.append(f"{names} {verb} no effect: {reason}; not recorded among the model's settings.")
    for note in notes:
        say(f"note: {note}")
    return notes
