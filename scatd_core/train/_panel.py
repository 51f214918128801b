"""``train_panel``: one drug model per drug of a bulk screen, with the default training recipe.

A lab builds its own starter panel from a bulk screen (GDSC/CCLE-like expression and labels)
and the single cells it wants to score: every chosen drug is trained with
:func:`~scatd_core.train.train_drug_model` and installed in the library. The run is
**resumable**: each finished drug is recorded, with a fingerprint of its labels, in a state file
named by a fingerprint of the other inputs and settings, so running the command again (also with
other drugs chosen, or a label table made again with other drugs) skips the drugs already trained
on the same labels (as long as their bundles are still installed: the very models, not another model that
took the folder of a removed one since) and goes on with the others. A cell metadata table
(``--obs``) whose columns give the target labels or the mask is part of that fingerprint: another
table trains the drugs again. Labelled target cells to train with (``--few-shot-column``, or
``--few-shot-labels``' file) are labels for one drug of the panel (``--few-shot-drug``): only that
drug's model trains with them, and its resume check compares them (the column's name and its labels,
or the file's name and contents), so another column or file, other labels or none train that drug
again. Drugs with too few sensitive
(or resistant) labelled cell lines are skipped with the reason, never trained on noise.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from scatd_core._words import counted
from scatd_core._progress import step
from scatd_core._train_settings import MIN_LINES_PER_CLASS  # the one minimum, as scatd train's
from scatd_core.bundle import folder_taken_words, load_bundle, model_identity, sha256_file
from scatd_core.config import model_library_dir, scatd_home
from scatd_core.demo.simulate import is_simulated
from scatd_core.errors import Cancelled, InputError, ScatdError
from scatd_core.labels import check_orientation, drug_labels, encode_column, match_drug, read_label_table
from scatd_core.train._data import _frame_sha256, labels_record, read_if_path, target_mask_of
from scatd_core.train._settings import TrainSettings

#: Columns of the summary table (one row per drug: its model card in brief).
SUMMARY_COLUMNS = ("drug", "status", "n_sensitive", "n_resistant", "cv_auroc", "cv_auroc_ci_low", "cv_auroc_ci_high",
                   "below_chance",
                   "cv_best_baseline", "cv_best_baseline_auroc", "verdict", "target_auroc", "n_panel_genes", "seconds",
                   "bundle", "note")
#: A model whose bulk cross-validated AUROC is at most this ranks cell lines no better than chance.
CHANCE_AUROC = 0.5


def _fingerprint(bulk_prov: dict, target_prov: dict, backbone: str, settings: TrainSettings, adaptation: bool,
                 target_mask: np.ndarray | None = None, cell_metadata: str | None = None, demo: bool = False,
                 trained_by: str | None = None, via: str = "") -> str:
    """The state file's name: the inputs and settings every drug shares (the target's cell mask
    too, when one is given, and ``cell_metadata``, the sha256 of the cell metadata table whose
    columns gave the target labels or the mask: another table trains, or evaluates, the drugs
    again). Each drug's own labels are checked per drug (:func:`_labels_sha256`), so a label table
    with other drugs added or removed (e.g. made again for another --drugs) keeps the drugs already
    trained. ``trained_by`` (who trains: the app's login, the system user of the CLI) is part of it,
    with ``via`` (what trains: the command line or the app, whose names are not the same accounts),
    so one user's run never resumes another's models as its own results."""
    h = hashlib.sha256()
    mask = None if target_mask is None else hashlib.sha256(np.packbits(target_mask).tobytes()).hexdigest()
    for part in (bulk_prov.get("sha256"), target_prov.get("sha256"), backbone,
                 json.dumps(asdict(settings), sort_keys=True, default=str), str(bool(adaptation)),
                 *(() if mask is None else (mask,)),
                 *(() if cell_metadata is None else (f"cell_metadata {cell_metadata}",)),
                 *(("demo",) if demo else ()),  # demo models are never resumed as real ones, nor the reverse
                 *(() if trained_by is None else (f"trained_by {trained_by} ({via})",))):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _labels_sha256(labels: pd.DataFrame, drug: str) -> str:
    """The labels a drug's model is trained on: its column of the table, by cell line."""
    return _frame_sha256(labels[[drug]])


def _few_shot_sha256(few_shot: pd.Series | None, file: str | Path | None = None) -> str | None:
    """The labelled target cells a drug's model is trained with: the column's name and its labels, by
    cell, or the ``file`` they were read from (``--few-shot-labels``): its name and its contents, as
    the model records it (None: none)."""
    if few_shot is None:
        return None
    if file is not None:
        return hashlib.sha256(f"file {Path(file).name}\0{sha256_file(file)}".encode()).hexdigest()
    return hashlib.sha256(f"{few_shot.name}\0{_frame_sha256(few_shot.rename('label').to_frame())}".encode()).hexdigest()


def _few_shot_source(few_shot: pd.Series | None, file: str | Path | None = None) -> str | None:
    """Where the labelled target cells came from, for messages: ``'COLUMN'``, the file's name, or None."""
    if file is not None:
        return Path(file).name
    return None if few_shot is None or few_shot.name is None else f"'{few_shot.name}'"


def _few_shot_drug(few_shot: pd.Series | None, drug: str | None, table: pd.DataFrame, chosen: list[str],
                   file: str | Path | None = None) -> str | None:
    """The drug of the panel the labelled target cells are for (they are one drug's labels): ``drug``
    matched to the label table's columns and one of the drugs to train, or the panel's only drug."""
    if few_shot is None:
        if drug is not None:
            raise InputError(f"Labelled target cells were said to be for {drug!r}, and none were given.",
                             "Add --few-shot-column (the target's column of labelled cells) or --few-shot-labels "
                             "(a cell_id,label file), or leave --few-shot-drug out.")
        return None
    source = _few_shot_source(few_shot, file)
    column = f" ({source})" if source is not None else ""
    if drug is None:
        if len(chosen) == 1:
            return chosen[0]
        shown = ", ".join(chosen[:6]) + (", ..." if len(chosen) > 6 else "")
        raise InputError(f"The labelled target cells{column} are labels for one drug, and the panel has {len(chosen)} "
                         f"drugs ({shown}).",
                         "Say which drug they are for: --few-shot-drug DRUG (the other drugs are trained without "
                         "them).", app_hint="Say which drug of the panel they are for.")
    try:
        matched = match_drug(str(drug), [str(c) for c in table.columns])
    except InputError as exc:
        raise InputError(f"--few-shot-drug: {exc.message}", exc.hint) from None
    if matched not in chosen:
        raise InputError(f"The labelled target cells{column} are for {drug!r} (--few-shot-drug), which is not one of "
                         f"the drugs to train ({', '.join(chosen)}).", "Name a drug of --drugs, or add it there.")
    return matched


def state_path(fingerprint: str) -> Path:
    return scatd_home() / "train-panel" / f"{fingerprint}.json"


def _read_state(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("drugs", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a damaged state file only means the drugs are trained again


def _write_state(path: Path, drugs: dict) -> None:
    """Write the state file whole (a temporary file beside it, then renamed), with the permissions
    the umask gives any new file, as model bundles get (not ``tempfile``'s 0600): another account
    that shares the folder (a colleague's, the server's) can read it and resume the panel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".state-{uuid.uuid4().hex[:12]}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"drugs": drugs}, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def choose_drugs(labels: pd.DataFrame, drugs: str | Sequence[str]) -> list[str]:
    """The label table's drug columns named by ``drugs`` (``"all"``, a comma-separated list or a list)."""
    if isinstance(drugs, str):
        if drugs.strip().lower() == "all":
            return [str(c) for c in labels.columns]
        drugs = [d for d in drugs.split(",")]
    wanted = [d.strip() for d in drugs if d and d.strip()]
    if not wanted:
        raise InputError("No drug named.", "Give --drugs all, or a comma-separated list of drug columns.")
    return list(dict.fromkeys(match_drug(d, [str(c) for c in labels.columns]) for d in wanted))


def _class_counts(labels: pd.DataFrame, drug: str, bulk_ids: set[str]) -> tuple[int, int]:
    col = drug_labels(labels, drug).labels
    col = col[col.index.astype(str).isin(bulk_ids)]
    return int((col == "sensitive").sum()), int((col == "resistant").sum())


def _card_row(drug: str, status: str, bundle, report: dict | None, n_sens: int, n_res: int, seconds: float,
              note: str = "") -> dict:
    """One summary row: the drug's model card in brief (bulk-CV AUROC of the model and of its best
    baseline, the card's verdict on it, the target AUROC when the target had labels)."""
    from scatd_core.card import bulk_cv_evaluation, bulk_cv_figures, chance_sentence

    manifest = bundle.manifest if bundle is not None else {}
    target = (manifest.get("metrics") or {}).get("target") or {}
    genes = (manifest.get("training") or {}).get("genes") or {}
    bulk_cv = bulk_cv_evaluation(manifest)
    figures = bulk_cv_figures(manifest)
    cv_auroc, ci_low, ci_high = figures["cv_auroc"], figures["cv_auroc_ci_low"], figures["cv_auroc_ci_high"]
    baseline, baseline_auroc = figures["cv_best_baseline"], figures["cv_best_baseline_auroc"]
    verdict = next((v for v in bulk_cv.get("verdicts", []) if baseline.lower() in v.lower()), "") \
        if bulk_cv is not None and baseline else ""
    below = cv_auroc is not None and float(cv_auroc) <= CHANCE_AUROC
    if below:
        verdict = (f"Below chance: bulk CV AUROC {float(cv_auroc):.3f} <= {CHANCE_AUROC} (no better than guessing); "
                   "left out of a saved panel unless asked for." + (f" {verdict}" if verdict else ""))
    elif bulk_cv is not None and chance_sentence(bulk_cv):  # above 0.5, but its interval includes 0.5 (the card's rule)
        verdict = " ".join(v for v in (chance_sentence(bulk_cv), verdict) if v)
    return {"drug": drug, "status": status, "n_sensitive": n_sens, "n_resistant": n_res,
            "cv_auroc": cv_auroc, "cv_auroc_ci_low": ci_low, "cv_auroc_ci_high": ci_high,
            "below_chance": below,
            "cv_best_baseline": baseline, "cv_best_baseline_auroc": baseline_auroc, "verdict": verdict,
            "target_auroc": target.get("auroc"), "n_panel_genes": genes.get("n_panel"), "seconds": round(seconds, 1),
            "bundle": bundle.path.name if bundle is not None else "", "note": note}


def verdict_lines(summary: pd.DataFrame) -> list[str]:
    """Each drug's verdict on its model as a sentence, ``"DRUG: verdict"`` (the drugs with one), as
    ``scatd train-panel`` prints them and the Train page shows them under its summary."""
    return [f"{r['drug']}: {r['verdict']}" for _, r in summary.iterrows()
            if isinstance(r.get("verdict"), str) and r["verdict"]]


def summary_for_reading(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary table as a page shows it under :func:`verdict_lines`: the verdicts, said as sentences,
    not again as a wide column; ``below_chance`` as words ("yes", "no"), not ticks."""
    out = summary.drop(columns=[c for c in ("verdict",) if c in summary.columns])
    if "below_chance" in out.columns:
        out["below_chance"] = ["yes" if bool(v) else "no" for v in out["below_chance"]]
    return out


def _target_label_columns(target_labels: Mapping[str, str] | None, table: pd.DataFrame, chosen: list[str],
                          target_ad, resistant=None) -> dict[str, str]:
    """``{drug column of the label table: obs column of the target}``, checked before any training."""
    out: dict[str, str] = {}
    names = [str(c) for c in table.columns]
    for drug, column in (target_labels or {}).items():
        matched = match_drug(str(drug), names)
        if matched not in chosen:
            raise InputError(f"Target labels were given for {drug!r}, which is not one of the drugs to train "
                             f"({', '.join(chosen)}).", "Name a drug of --drugs, or add it there.")
        if column not in target_ad.obs.columns:
            from scatd_core._keys import target_columns_hint

            raise InputError(f"The target has no column {column!r} for {matched}'s labels.",
                             "Name a column of the target's cell annotations. "
                             + target_columns_hint(target_ad.obs.columns))
        encode_column(target_ad, column, resistant, option="--target-resistant-value")  # its direction is known
        out[matched] = column
    return out


def train_panel(
    bulk, labels, drugs: str | Sequence[str], target, *,
    backbone: str = "dist_vae",
    settings: TrainSettings | None = None,
    adaptation: bool = True,
    min_lines_per_class: int = MIN_LINES_PER_CLASS,
    device: str = "auto",
    library: str | Path | None = None,
    trained_by: str | None = None,
    resume: bool = True,
    target_labels: Mapping[str, str] | None = None,
    target_resistant_value=None,
    target_mask: np.ndarray | str | None = None,
    few_shot_labels: pd.Series | str | Path | None = None,
    few_shot_drug: str | None = None,
    input_names: Mapping[str, str] | None = None,
    input_files: Mapping[str, dict] | None = None,
    source: str = "scatd train-panel",
    demo: bool = False,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    notice: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, list]:
    """Train one model per drug and install them in the library.

    Parameters
    ----------
    bulk, target
        As for :func:`~scatd_core.train.train_drug_model` (AnnData or file); read once.
    labels
        Label table (path or DataFrame, cell lines x drugs, ``sensitive``/``resistant``), e.g. from
        :func:`scatd_core.labels.labels_from_ic50`. Its orientation is checked against the bulk's
        sample IDs before the drugs are chosen (:func:`~scatd_core.labels.check_orientation`, as
        for one drug): a transposed table is refused at once; its warning is in every drug's note.
    drugs
        ``"all"``, a comma-separated list or a list of drug columns (matched case-insensitively).
    settings
        The training recipe (default :class:`TrainSettings`, the default recipe of ``scatd train``).
    min_lines_per_class
        Drugs with fewer labelled bulk lines in either class are skipped (reported).
    resume
        Skip drugs a previous run with the same inputs and settings already trained.
    target_labels
        ``{drug: obs column of the target}``: true labels of the target cells for that drug's model,
        for its evaluation only (its ``target_auroc``), as ``target_label_column`` of
        :func:`~scatd_core.train.train_drug_model`; ``target_resistant_value`` says which value means
        resistant when the values are not words like resistant/sensitive (one for every column).
    target_mask
        The target cells to use (e.g. ``'scatd_qc_pass'``), for every drug: see
        :func:`~scatd_core.train.train_drug_model`.
    few_shot_labels, few_shot_drug
        Labelled target cells to train with (``sensitive``/``resistant`` by cell ID, named by the
        column that gave them: :func:`scatd_core.labels.few_shot_from_column`; or a CSV ``cell_id,label``,
        read with :func:`scatd_core.labels.read_few_shot_labels` and recorded as its file, as
        ``scatd train --few-shot-labels`` records it) and the drug of the
        panel they are labels for (matched as ``drugs``; may be left out when the panel has one
        drug): only that drug's model trains with them, as ``few_shot_labels`` of
        :func:`~scatd_core.train.train_drug_model`, and records them; the others are trained without.
        Refused before any training: the cells for a drug not in the panel, a panel of several drugs
        without ``few_shot_drug``, the scatd head, that drug's ``target_labels`` being the same column,
        a file's label other than sensitive/resistant, or cells none of which (or fewer than 2 of a
        class) are cells of the target that may be used.
    input_names, source
        Display names of the inputs (``{"bulk" | "labels" | "target": name}``; default the file
        names of inputs given as files) and what trained the panel, recorded with each model as
        :func:`~scatd_core.train.train_drug_model` records them.
    input_files
        ``{"bulk" | "target": {"file": name, "sha256": of the file}}`` for a bulk or target given as
        data that the caller read from a file (``scatd train-panel --obs`` reads the target to add
        the cell metadata table): recorded, and fingerprinted for resuming, as that file. And
        ``"labels"`` for a label table read from a file (the app's upload: the sha256 of its bytes),
        which each model records as ``scatd train-panel`` records that file.
    demo
        Mark every model as a demo model, trained on simulated data, as ``demo`` of
        :func:`~scatd_core.train.train_drug_model` (a bulk made by :mod:`scatd_core.demo.simulate`
        marks them whatever it says); such a run never resumes an unmarked one's models.
    notice
        Called at once, with the drug's name, when a drug's training changes a setting to fit its data
        (fewer folds), as ``notice`` of :func:`~scatd_core.train.train_drug_model`.

    Returns
    -------
    ``(summary, bundles)``: one row per drug (:data:`SUMMARY_COLUMNS`: status ``trained``,
    ``resumed``, ``skipped`` or ``failed``, class counts, bulk CV AUROC, target AUROC when the
    target has labels, the bundle folder, the reason for a skip or failure) and the installed
    bundles of the trained or resumed drugs.
    """
    from scatd_core.train._run import _cell_metadata_origin, default_model_name, train_drug_model

    from scatd_core._train_settings import pretrain_lr

    s = settings or TrainSettings()
    # the backbone's own pretraining rate as a number: the state file's fingerprint is the same as
    # before it depended on the backbone (2e-3 for Dist_VAE), so earlier runs still resume
    s = replace(s, pretrain_lr=pretrain_lr(s, backbone))
    s.check()
    table = read_label_table(labels)
    given = {k: v for k, v in (input_files or {}).items() if v and v.get("file") and v.get("sha256")}
    bulk_ad, bulk_prov = read_if_path(bulk, "bulk", record=given.get("bulk"))
    demo = bool(demo) or is_simulated(bulk_ad)
    # the bulk's IDs say which way round the table is, before its drugs are looked for (as for one drug)
    shown = "The label table" if isinstance(labels, pd.DataFrame) else f"The label table {Path(labels).name}"
    orientation_warning = check_orientation(table, list(bulk_ad.obs_names), shown)
    chosen = choose_drugs(table, drugs)
    target_ad, target_prov = read_if_path(target, "target", record=given.get("target"))
    names = {key: prov["file"] for key, prov in (("bulk", bulk_prov), ("target", target_prov)) if prov.get("file")}
    if not isinstance(labels, pd.DataFrame):
        names["labels"] = Path(labels).name
    names.update({k: v for k, v in (input_names or {}).items() if v})
    # each drug's model records the files that trained it (their sha256), not a hash of their values
    files = {key: prov for key, prov in (("bulk", bulk_prov), ("target", target_prov)) if prov.get("file")}
    if not isinstance(labels, pd.DataFrame) or "labels" in given:  # a file's, or an upload's (the app): its sha256
        files["labels"] = labels_record(labels, given.get("labels"))
        names.setdefault("labels", files["labels"]["file"])
    evaluate = _target_label_columns(target_labels, table, chosen, target_ad, target_resistant_value)
    few_file = None  # --few-shot-labels: the file, which that drug's model reads and records, as scatd train's
    if few_shot_labels is not None and not isinstance(few_shot_labels, pd.Series):
        from scatd_core.labels import read_few_shot_labels

        few_file = Path(few_shot_labels)
        few_shot_labels = read_few_shot_labels(few_file)  # its labels checked before any drug is trained
    few_drug = _few_shot_drug(few_shot_labels, few_shot_drug, table, chosen, few_file)
    mask = target_mask_of(target_ad, target_mask)
    if few_drug is not None:  # all refused before any drug is trained
        from scatd_core.labels import refuse_few_shot_as_evaluation
        from scatd_core.train._run import few_shot_rows, refuse_few_shot_head

        refuse_few_shot_head(s)
        if few_file is None:
            refuse_few_shot_as_evaluation(few_shot_labels.name, evaluate.get(few_drug), few_drug)
        # cells of the target (those the mask keeps), with scatd train's words; its model checks them again
        few_shot_rows(few_shot_labels, [str(c) for c in (target_ad.obs_names if mask is None
                                                         else target_ad.obs_names[mask])], [])
    # a cell metadata table (--obs) whose columns give the mask (cells the adaptation uses) or the
    # target labels: another table is another run, never resumed from this one's models
    metadata = _cell_metadata_origin(target_ad, {
        **{f"target_labels {drug}": column for drug, column in evaluate.items()},
        "target_mask": target_mask if isinstance(target_mask, str) else None})
    metadata_id = (metadata.get("sha256") or f"file {metadata.get('file')}") if metadata and metadata["used"] else None
    state_file = state_path(_fingerprint(bulk_prov, target_prov, backbone, s, adaptation, mask, metadata_id, demo,
                                         trained_by, source))
    state = _read_state(state_file) if resume else {}
    bulk_ids = set(map(str, bulk_ad.obs_names))
    rows, bundles = [], []
    for i, drug in enumerate(chosen):
        t0 = time.perf_counter()
        n_sens, n_res = _class_counts(table, drug, bulk_ids)
        say = step(progress, i, len(chosen), drug)
        if say is not None:
            say(0.0, "starting")
        # before resuming: a drug trained by an earlier run with a lower --min-lines is skipped as a fresh run skips it
        if min(n_sens, n_res) < min_lines_per_class:
            rows.append(_card_row(drug, "skipped", None, None, n_sens, n_res, 0.0,
                                  f"too few labelled cell lines: {n_sens} sensitive, {n_res} resistant in the bulk "
                                  f"(at least {min_lines_per_class} of each needed)"))
            continue
        done = state.get(drug)
        taken = ""  # the earlier run's model is gone and another model has its folder: trained again, said
        few = few_shot_labels if drug == few_drug else None
        file = few_file if drug == few_drug else None
        if done and done.get("status") == "trained" and done.get("labels_sha256") == _labels_sha256(table, drug) \
                and done.get("few_shot_sha256") != _few_shot_sha256(few, file):  # other labelled cells: trained again
            taken = "trained again: " + _few_shot_change(done, few, file)
            done = None
        if done and done.get("status") == "trained" and done.get("labels_sha256") == _labels_sha256(table, drug):
            try:
                bundle = load_bundle(done["path"])
            except ScatdError:
                bundle = None
            here = Path(library) if library else model_library_dir()
            if bundle is not None and Path(bundle.path).resolve().parent != here.resolve():
                # QA: a run into another --library "resumed" this drug from the first one, and said it was there
                taken = (f"trained again: the earlier run installed it in another model library "
                         f"({Path(bundle.path).resolve().parent}), not in this one")
                bundle = None
            if bundle is not None and model_identity(bundle) != done.get("identity"):
                taken = (f"trained again: {folder_taken_words(done.get('name'), bundle)}"
                         if done.get("identity") else
                         "trained again: the earlier run's model cannot be told from another model that took its "
                         "folder since (that run recorded no model identity)")
                bundle = None
            if bundle is not None:
                note = "; ".join([f"trained by an earlier run on {done.get('at', '?')}", *_few_shot_words(few, file),
                                  *_trained_warnings(bundle)])
                evaluated = ((bundle.manifest.get("metrics") or {}).get("target") or {}).get("label_column")
                if drug in evaluate and evaluated != evaluate[drug]:
                    note += (f"; not evaluated on '{evaluate[drug]}' (that run had "
                             f"{'no target labels' if evaluated is None else repr(evaluated)}: train it again "
                             "without resuming to evaluate it)")
                elif drug in evaluate:  # the same column, from another cell metadata table (or none)
                    then = _labels_table(((bundle.manifest.get("provenance") or {}).get("target") or {})
                                         .get("cell_metadata"))
                    now = _labels_table(_cell_metadata_origin(target_ad, {"target_labels": evaluate[drug]}))
                    if then != now:
                        note += (f"; evaluated on the '{evaluate[drug]}' of {then or 'the target file itself'}, not "
                                 f"of {now or 'the target file itself'} (train it again without resuming to evaluate "
                                 "it on these labels)")
                rows.append(_card_row(drug, "resumed", bundle, None, n_sens, n_res, 0.0, note))
                bundles.append(bundle)
                continue
        try:
            bundle, report = train_drug_model(
                bulk_ad, table, drug, target_ad, backbone=backbone, settings=s, seed=s.seed, folds=s.folds, adaptation=adaptation, device=device,
                library=library, name=default_model_name(drug, backbone, "panel"), folder_from_name=False, trained_by=trained_by,
                min_lines_per_class=min_lines_per_class,
                progress=say,
                should_stop=should_stop, target_label_column=evaluate.get(drug),
                notice=None if notice is None else (lambda message, drug=drug: notice(f"{drug}: {message}")),
                target_resistant_value=target_resistant_value if drug in evaluate else None,
                target_mask=target_mask if isinstance(target_mask, str) else mask,  # a column: named by its card
                few_shot_labels=few if file is None else file, input_names=names, input_files=files, source=source, demo=demo)
        except Cancelled:
            raise
        except InputError as exc:
            rows.append(_card_row(drug, "failed", None, None, n_sens, n_res, time.perf_counter() - t0, exc.message))
            continue
        said = ([taken] if taken else []) + _few_shot_words(few, file)
        rows.append(_card_row(drug, "trained", bundle, report, n_sens, n_res, time.perf_counter() - t0,
                              "; ".join(said + list(report.get("warnings", [])))))
        bundles.append(bundle)
        state[drug] = {"status": "trained", "path": str(Path(bundle.path).resolve()), "labels_sha256": _labels_sha256(table, drug),
                       "identity": model_identity(bundle), "name": bundle.name,
                       "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       **({"few_shot_sha256": _few_shot_sha256(few, file),
                           **({"few_shot_file": file.name} if file is not None else
                              {"few_shot_column": None if few.name is None else str(few.name)})}
                          if few is not None else {})}
        _write_state(state_file, state)
    if orientation_warning:  # a trained drug's note has it from its model's warnings; the others are told here
        for row in rows:
            if row["status"] != "trained" and orientation_warning not in row["note"]:
                row["note"] = "; ".join(n for n in (row["note"], orientation_warning) if n)
    if progress is not None:
        progress(1.0, f"{len(bundles)} of {counted(len(chosen), 'drug')} {'has' if len(bundles) == 1 else 'have'} a model")
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)), bundles


def _trained_warnings(bundle) -> list[str]:
    """The warnings a model's training gave (its summary row's note when it was trained), kept in its
    bundle: a resumed drug's row says them again (they were lost on resuming)."""
    manifest = bundle.manifest
    warnings = ((manifest.get("training") or {}).get("warnings")
                or (manifest.get("card") or {}).get("warnings") or [])
    return [str(w) for w in warnings]


def _few_shot_words(few: pd.Series | None, file: str | Path | None = None) -> list[str]:
    """``["trained with N labelled target cell(s) of 'column'"]`` (or ``of FILE``) for a summary
    note, or ``[]``."""
    if few is None:
        return []
    source = _few_shot_source(few, file)
    return [f"trained with {counted(len(few), 'labelled target cell')}" + (f" of {source}" if source is not None else "")]


def _few_shot_change(done: dict, few: pd.Series | None, file: str | Path | None = None) -> str:
    """Why a drug trained by an earlier run (its state, ``done``) is trained again: its labelled
    target cells (a column's, a file's, or none) differ from this run's."""
    def named(source) -> str:
        return "the labelled target cells" + (f" of {source}" if source is not None else "")

    if done.get("few_shot_file") is not None:
        earlier = str(done["few_shot_file"])
    else:
        earlier = None if done.get("few_shot_column") is None else f"'{done['few_shot_column']}'"
    then = named(earlier) if done.get("few_shot_sha256") else None
    now = named(_few_shot_source(few, file)) if few is not None else None
    if then is None:
        return f"the earlier run's model was trained without labelled target cells; this run gives {now}"
    if now is None:
        return f"the earlier run's model was trained with {then}; this run gives none"
    if then != now:
        return f"the earlier run's model was trained with {then}; this run gives {now}"
    return f"{now} are not those the earlier run's model was trained with"


def _labels_table(record: dict | None) -> str | None:
    """The cell metadata table (``file (sha256 ...)``) that gave the target labels, from its record
    in a model's provenance (:func:`~scatd_core.train._run._cell_metadata_origin`), or None."""
    if not record or "target_labels" not in (record.get("used") or {}):
        return None
    sha = record.get("sha256")
    return f"{record.get('file')}" + (f" (sha256 {str(sha)[:12]})" if sha else "")


def models_to_save(summary: pd.DataFrame, bundles: Sequence, *, include_below_chance: bool = False,
                   ) -> tuple[list, list[str]]:
    """The bundles of a :func:`train_panel` run that go into a saved panel, and the drugs left out:
    a model at or below chance on the bulk cross-validation (``below_chance``) only with
    ``include_below_chance``."""
    below = {str(b) for b, flag in zip(summary["bundle"], summary["below_chance"]) if bool(flag)}
    if include_below_chance:
        return list(bundles), []
    kept = [b for b in bundles if b.path.name not in below]
    return kept, [b.drug for b in bundles if b.path.name in below]
