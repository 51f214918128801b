"""Model cards: what a trained model was trained on, and how it compares with simple baselines.

Every model ``scatd train`` makes carries a card in its manifest (``manifest['card']``): the
data (files and hashes, cell lines, target cells), the gene panel, the labels, the settings, and
one or more *evaluations*. An evaluation scores the model and baselines trained on the same
inputs in the same run on the same samples (the bulk cross-validation's out-of-fold
predictions; the target cells when their labels are known; the target cells whose labels were
not used when a few were), with AUROC and AUPRC, 95 % bootstrap confidence intervals, the
paired difference to the model with its interval, and a plain verdict: when a baseline is as
good as the model, the card says so.

The Train and Model library pages, ``scatd train``, ``scatd models --card`` and the HTML report
all render the card with :func:`card_table` and :func:`card_lines`. No torch here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scatd_core._words import counted
from scatd_core._train_settings import MIN_LINES_PER_CLASS
from scatd_core.metrics import bootstrap_ci, interval_ends, paired_bootstrap

MODEL = "this model"
#: Bootstrap resamples for the confidence intervals (stratified by class; seeded).
N_BOOT = 1000
LEVEL = 0.95


def _round(v: float) -> float | None:
    """A score as stored on the card: the full value (or None), never rounded here, so that every place
    showing it (the Train page's tiles, the card, the CLI, the report) rounds it once, alike (a value
    stored rounded to 4 places and shown to 3 read 0.820 on the card and 0.819 on the tile)."""
    return None if v is None or not np.isfinite(v) else float(v)


def score(y: np.ndarray, p: np.ndarray, seed: int = 0) -> dict:
    """AUROC and AUPRC of ``p`` against 0/1 labels ``y`` with their bootstrap intervals."""
    auroc, a_lo, a_hi = bootstrap_ci(y, p, "auroc", n_boot=N_BOOT, level=LEVEL, seed=seed)
    auprc, p_lo, p_hi = bootstrap_ci(y, p, "auprc", n_boot=N_BOOT, level=LEVEL, seed=seed)
    return {"auroc": _round(auroc), "auroc_ci": [_round(a_lo), _round(a_hi)],
            "auprc": _round(auprc), "auprc_ci": [_round(p_lo), _round(p_hi)]}


def evaluation(name: str, title: str, y: np.ndarray, predictions: dict[str, np.ndarray], *, seed: int = 0,
               note: str | None = None) -> dict:
    """Score the model (``predictions[MODEL]``) and each baseline on the same samples.

    ``predictions`` maps a model title to P(resistant) (or any score ranking the samples the same
    way) per sample. Each baseline gets the paired difference ``model - baseline`` of AUROC with
    its bootstrap interval; the evaluation gets a verdict per baseline (:func:`verdict`).
    """
    y = np.asarray(y, dtype=float)
    model = np.asarray(predictions[MODEL], dtype=float)
    rows = []
    for title_k, p in predictions.items():
        entry = {"model": title_k, **score(y, p, seed)}
        if title_k != MODEL:
            diff, lo, hi = paired_bootstrap(y, model, p, "auroc", n_boot=N_BOOT, level=LEVEL, seed=seed)
            entry["model_minus_this"] = {"auroc": _round(diff), "ci": [_round(lo), _round(hi)]}
        rows.append(entry)
    known = np.isfinite(y)
    out = {"name": name, "title": title, "n": int(known.sum()), "n_resistant": int((y[known] == 1).sum()),
           "n_sensitive": int((y[known] == 0).sum()), "scores": rows}
    out["auprc_chance"] = auprc_chance(out)
    if note:
        out["note"] = note
    out["verdicts"] = [verdict(out, row) for row in rows if row["model"] != MODEL]
    return out


#: The logistic-regression baseline of models trained before 2026-12-02: C fixed at 0.1, not tuned
#: (``scatd_core.train._baselines.OLD_LOGISTIC_TITLE``; no import of the training code here)
OLD_LOGISTIC_TITLE = "logistic regression (C=0.1, balanced)"


def verdict(ev: dict, row: dict) -> str:
    """One plain sentence: is the baseline better than, worse than, or not told apart from the model?

    "Beats" and "is better than" only when the paired difference's interval excludes 0; an
    interval that includes 0 says this model does not beat the baseline and the data cannot tell
    the two apart (never that they are as good). A model trained before the logistic regression's
    C was tuned (:data:`OLD_LOGISTIC_TITLE`) "scored above" it, not "beats" it: said with why."""
    model = next(r for r in ev["scores"] if r["model"] == MODEL)
    diff = row.get("model_minus_this") or {}
    d, (lo, hi) = diff.get("auroc"), (diff.get("ci") or (None, None))
    where = ev["title"][0].lower() + ev["title"][1:]
    name = row["model"][0].upper() + row["model"][1:]
    if d is None or lo is None or hi is None or model.get("auroc") is None or row.get("auroc") is None:
        return f"{name}: no comparison possible on {where}."
    numbers = (f"AUROC {model['auroc']:.3f} vs {row['auroc']:.3f}; difference {d:+.3f}, "
               f"95% bootstrap CI {' to '.join(interval_ends(lo, hi, signed=True))}")
    if few_lines(ev) is not None:  # a handful of lines: no "beats", no "better than"
        return (f"{name} is not compared with this model on {where}: with only "
                f"{counted(few_lines(ev), 'cell line')} in the smaller class, the difference cannot be trusted "
                f"({numbers}).")
    if hi < 0:
        return f"{name} is better than this model on {where} ({numbers})."
    if lo > 0 and row["model"] == OLD_LOGISTIC_TITLE:  # a model trained before the baseline's C was tuned
        return (f"This model scored above {row['model']} on {where} ({numbers}), but that baseline's C was fixed at "
                "0.1, not tuned, a weaker penalty than the model's own heads (C=0.01 by default): a logistic "
                "regression with a tuned C may do as well. Train the model again to compare it with a tuned one.")
    if lo > 0:
        return f"This model beats {row['model']} on {where} ({numbers})."
    return (f"This model does not beat {row['model']} on {where}: no clear difference ({numbers}, includes 0); "
            "the data cannot tell them apart.")


def baseline_note(model: dict) -> str:
    """What an evaluation of a prediction against labels says of the simple baselines (QA: the Cells page,
    `scatd report` and metrics.csv gave the AUROC with no baseline and no word of where one is). A saved
    model does not keep the bulk cell lines its baselines are fitted on, so none is fitted on these cells
    here: the card's own scores of the model and of each baseline are given (on its bulk lines, and on its
    target cells when it had labelled ones: these cells, when the data are its target), and how to score
    the baselines on these cells. ``model``: the run record's model (``uns['scatd']['model']``)."""
    import json

    try:
        card = json.loads(str(model.get("card_json"))) if model.get("card_json") else None
    except ValueError:
        card = None
    how = ("To score simple baselines on these cells, train a model with these cells as its target (the Train "
           "page, or scatd train --target with --target-labels): its card then scores logistic regression and "
           "gradient boosting on them next to the model.")
    parts = []
    for ev in (card or {}).get("evaluations") or []:
        scores = [r for r in ev.get("scores", []) if r.get("auroc") is not None]
        if len(scores) > 1:
            where = ev["title"][0].lower() + ev["title"][1:]
            parts.append(f"on {where}, " + ", ".join(f"{r['model']} {r['auroc']:.3f}" for r in scores))
    if not parts:
        return ("No baseline is scored here: this model's card has no baseline scores (an imported checkpoint keeps "
                "no training data to fit one on). " + how)
    return ("No baseline is fitted on these cells: the simple baselines are fitted on the model's bulk cell lines, "
            "which a saved model does not keep. Its card scored them when it was trained (AUROC "
            + "; ".join(parts) + "). " + how)


def few_lines(ev: dict) -> int | None:
    """The number of cell lines in the smaller class of a bulk cross-validation with fewer than
    :data:`scatd_core.labels.MIN_LINES_PER_CLASS` of them (a run given a lower ``--min-lines``, or a model
    trained before single training refused such drugs), whose scores cannot be trusted; ``None`` otherwise."""
    if ev.get("name") != "bulk_cv" or ev.get("n_resistant") is None or ev.get("n_sensitive") is None:
        return None
    n = min(int(ev["n_resistant"]), int(ev["n_sensitive"]))
    return n if n < MIN_LINES_PER_CLASS else None


def few_lines_sentence(ev: dict) -> str | None:
    """What a bulk cross-validation on too few cell lines of a class (:func:`few_lines`) says first."""
    n = few_lines(ev)
    if n is None:
        return None
    return (f"With only {counted(n, 'cell line')} in the smaller class ({ev['n_sensitive']:,} sensitive, "
            f"{ev['n_resistant']:,} resistant), this model's bulk cross-validation AUROC and its interval cannot be "
            f"trusted, nor any comparison with the baselines on them (at least {MIN_LINES_PER_CLASS} of each are "
            "needed). Judge the model on labelled target cells instead.")


def chance_sentence(ev: dict) -> str | None:
    """What this model's own AUROC interval says when it includes 0.5 (the samples do not show the
    model separating resistant from sensitive better than chance) or lies below it (it ranks them
    the wrong way round), as the Cells page says it; ``None`` when the interval lies above 0.5."""
    model = next((r for r in ev.get("scores", []) if r["model"] == MODEL), None)
    if model is None or model.get("auroc") is None:
        return None
    lo, hi = model.get("auroc_ci") or (None, None)
    if lo is None or hi is None or lo > 0.5:
        return None
    samples = "cell lines" if ev.get("name") == "bulk_cv" else "cells"
    where = ev["title"][0].lower() + ev["title"][1:]
    ends = " to ".join(interval_ends(lo, hi))
    if hi < 0.5:
        return (f"On {where}, this model's AUROC {model['auroc']:.3f} is below 0.5 beyond chance ({INTERVAL} {ends}): "
                f"it ranks these {samples} the wrong way round. Check which label means resistant before "
                "using it.")
    return (f"On {where}, this model's AUROC {model['auroc']:.3f} is not distinguishable from chance ({INTERVAL} "
            f"{ends} includes 0.5): these {samples} do not show the model separating resistant from sensitive, "
            "even where it beats a baseline.")


def auroc_interval_words(scores: dict, *, short: bool = False) -> str | None:
    """``"95% bootstrap CI 0.412 to 0.829"``: the (bootstrap) AUROC interval of ``scores`` (``{"auroc_ci": [lo, hi]}``, a
    metrics entry of a training report); ``None`` when none is recorded. ``short``: ``"95% CI 0.41-0.83"``, for a
    tile beside its AUROC (the long form was cut at 1280 px; the tile's help names the method), as the Cells
    page's tile."""
    lo, hi = scores.get("auroc_ci") or (None, None)
    if lo is None or hi is None:
        return None
    if short:
        return "95% CI " + "-".join(interval_ends(lo, hi, 2))
    return f"{INTERVAL} " + " to ".join(interval_ends(lo, hi))


def verdicts(ev: dict) -> list[str]:
    """What to say under an evaluation: :func:`few_lines_sentence` and :func:`chance_sentence` (when they
    apply), then a :func:`verdict` per baseline, worded from the stored scores (so a card saved with the earlier
    wording reads the same as a new one)."""
    chance, few = chance_sentence(ev), few_lines_sentence(ev)
    said = [verdict(ev, row) for row in ev.get("scores", []) if row["model"] != MODEL and "model_minus_this" in row]
    if not said:
        said = list(ev.get("verdicts") or [])
    return ([few] if few else []) + ([chance] if chance else []) + said


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def auprc_chance(ev: dict) -> float | None:
    """The AUPRC of a ranking by chance on evaluation ``ev``: the share of resistant samples (the
    positive class). For GDSC drugs the resistant lines are often most of them, so an AUPRC reads
    only next to it. Computed from the counts for cards saved before it was stored."""
    if ev.get("auprc_chance") is not None:
        return ev["auprc_chance"]
    return _round(ev["n_resistant"] / ev["n"]) if ev.get("n") else None


def _chance(ev: dict) -> str:
    chance = auprc_chance(ev)
    return "—" if chance is None else f"{chance:.3f}"


def _ci(value, ci) -> str:
    if value is None:
        return "—"
    lo, hi = ci or (None, None)
    return f"{value:.3f}" + (" [{}, {}]".format(*interval_ends(lo, hi)) if lo is not None and hi is not None else "")


def _signed_ci(value, ci) -> str:
    """A difference with its sign (``+0.041 [-0.068, +0.159]``), as the verdicts write it."""
    if value is None:
        return "—"
    lo, hi = ci or (None, None)
    return f"{value:+.3f}" + (" [{}, {}]".format(*interval_ends(lo, hi, signed=True))
                              if lo is not None and hi is not None else "")


#: The card's intervals, named where they are shown: the evaluation of a prediction against labels
#: uses another (Hanley-McNeil's, :func:`scatd_core.metrics.auroc_interval`), so the two can differ a little.
INTERVAL = "95% bootstrap CI"


def card_table(card: dict) -> pd.DataFrame:
    """One row per (evaluation, model): AUROC and AUPRC with 95 % intervals, and the difference
    of this model's AUROC to each baseline's."""
    rows = []
    for ev in card.get("evaluations", []):
        for r in ev["scores"]:
            diff = r.get("model_minus_this")
            rows.append({"evaluation": ev["title"], "cells / lines": f"{ev['n']:,} ({ev['n_resistant']:,} resistant)",
                         "model": r["model"], f"AUROC [{INTERVAL}]": _ci(r["auroc"], r["auroc_ci"]),
                         f"AUPRC [{INTERVAL}]": _ci(r["auprc"], r["auprc_ci"]),
                         "AUPRC by chance (share resistant)": _chance(ev),
                         "this model minus baseline (AUROC)": "" if diff is None else _ci(diff["auroc"], diff["ci"])})
    return pd.DataFrame(rows, columns=["evaluation", "cells / lines", "model", f"AUROC [{INTERVAL}]",
                                       f"AUPRC [{INTERVAL}]", "AUPRC by chance (share resistant)",
                                       "this model minus baseline (AUROC)"])


#: The columns of :func:`evaluation_table`, short enough that a card's score table fits a 1280 px window
EVALUATION_COLUMNS = ("model", "AUROC (95% CI)", "AUPRC (95% CI)", "this model minus it (AUROC)")


def evaluation_heading(ev: dict) -> str:
    """What :func:`evaluation_table` leaves out, said once above it: the evaluation, its samples and
    the AUPRC of a ranking by chance (the same for every model on it)."""
    samples = "cell lines" if ev.get("name") == "bulk_cv" else "cells"
    return (f"{ev['title']}: {ev['n']:,} {samples} ({ev['n_resistant']:,} resistant); AUPRC by chance "
            f"{_chance(ev)} (the share resistant)")


def short_model_names(ev: dict) -> dict[str, str]:
    """Each model of an evaluation by its short name (``logistic regression``: the settings in brackets
    left to :func:`baseline_settings`), or by its whole name when two would read alike without them."""
    short = {r["model"]: r["model"].split(" (")[0] for r in ev.get("scores", [])}
    if len(set(short.values())) < len(short):  # two baselines alike without their brackets: their whole names
        short = {name: name for name in short}
    return short


def evaluation_table(ev: dict) -> pd.DataFrame:
    """One evaluation of :func:`card_table`, as the app shows it under :func:`evaluation_heading`: a
    row per model, the baselines by their short names (``logistic regression``; the settings in
    brackets are in :func:`baseline_settings`), and short column headers."""
    short = short_model_names(ev)
    rows = []
    for r in ev.get("scores", []):
        diff = r.get("model_minus_this")
        rows.append(dict(zip(EVALUATION_COLUMNS, (short[r["model"]], _ci(r["auroc"], r["auroc_ci"]),
                                                  _ci(r["auprc"], r["auprc_ci"]),
                                                  "" if diff is None else _signed_ci(diff["auroc"], diff["ci"])))))
    return pd.DataFrame(rows, columns=list(EVALUATION_COLUMNS))


def baseline_settings(card: dict) -> list[str]:
    """The baselines' whole names where :func:`evaluation_table` shortens them (``logistic
    regression (C tuned by inner CV, balanced)``), in the order they first appear; the logistic
    regression's with the C values chosen (:func:`logistic_tuning_words`) when the card records them."""
    names = [r["model"] for ev in card.get("evaluations", []) for r in ev.get("scores", [])
             if r["model"] != MODEL and " (" in r["model"]]
    tuning = logistic_tuning_words(card)
    return [f"{name} [{tuning}]" if tuning and name.startswith("logistic regression (C tuned") else name
            for name in dict.fromkeys(names)]


def _c(value) -> str:
    return f"{float(value):g}"


def logistic_tuning_words(card: dict) -> str | None:
    """How the logistic-regression baseline's C was chosen and which values were chosen, from the
    card's ``baselines`` record (``None`` for cards without one: models trained before it was tuned,
    whose C was fixed at 0.1, as their baseline's name says)."""
    record = (card.get("baselines") or {}).get("logistic_regression")
    if not record:
        return None
    head_c = record.get("head_c")
    grid = ", ".join(_c(c) + (" (the heads' C)" if head_c is not None and float(c) == float(head_c) else "")
                     for c in record.get("c_grid") or [])
    folds = [f for f in record.get("bulk_cv_folds") or [] if f]
    inner = sorted({f["inner_folds"] for f in folds + [record.get("all_bulk") or {}] if f.get("inner_folds")})
    words = (f"C chosen from {grid} by {'/'.join(map(str, inner))}-fold inner cross-validation (mean AUROC) on the "
             "training samples only, never the test fold or the target's labels" if inner else
             f"C could not be tuned (too few samples of a class for an inner cross-validation), grid {grid}")
    if folds:
        words += "; chosen C in the bulk CV folds " + ", ".join(_c(f["c"]) for f in folds)
    if record.get("all_bulk"):
        words += f"; on all the bulk (the baseline scored on the target cells) {_c(record['all_bulk']['c'])}"
    if record.get("target_only"):
        words += f"; on the labelled target cells alone {_c(record['target_only']['c'])}"
    return words


def few_shot_line(card: dict) -> str | None:
    """What the card says about the labelled target cells that trained the model (few-shot), if any:
    whether their cell IDs are recorded, so that evaluations leave them out
    (:mod:`scatd_core.training_cells`)."""
    few = (card.get("data") or {}).get("few_shot")
    if not few:
        return None
    cells = (f"{few['n']:,} labelled target cells ({few['n_resistant']:,} resistant, {few['n_sensitive']:,} sensitive) "
             "trained it with the bulk (few-shot).")
    if few.get("cell_ids_recorded"):
        return (cells + " Their cell IDs are recorded with the model (as hashes keyed by the whole training "
                "dataset, which only those same data can match), so evaluating it against labels on its training "
                "target leaves them out.")
    return (cells + " Their cell IDs were not recorded (the model was trained before scATD Studio recorded them), "
            "so an evaluation on its training target may include them and overstate it: evaluate on the other "
            "cells, or train it again.")


#: How models trained before 2026-12-02 described an ensemble's spread, and what it is: how much
#: the members agree on a cell (prob_resistant_sd), not the confidence of the call.
_OLD_SPREAD = "and their spread is the per-cell uncertainty."
SPREAD = ("and their spread (prob_resistant_sd) shows how much the members agree on each cell, not how confident "
          "the call is.")


def description(card: dict) -> str:
    """The model's description, said as the current version says it (an older ensemble's "their
    spread is the per-cell uncertainty" read as the confidence of each call)."""
    return str(card["model"]["description"]).replace(_OLD_SPREAD, SPREAD)


def card_lines(card: dict) -> list[str]:
    """The card as plain sentences: what the model is, what it was trained on, the verdicts."""
    lines = [description(card)]
    data = card.get("data", {})
    if data:
        lines.append(data["summary"])
    if few_shot_line(card):
        lines.append(few_shot_line(card))
    lines += card_details(card)
    for ev in card.get("evaluations", []):
        model = next(r for r in ev["scores"] if r["model"] == MODEL)
        lines.append(f"{ev['title']} ({ev['n']:,} samples, {ev['n_resistant']:,} resistant): this model AUROC "
                     f"{_ci(model['auroc'], model['auroc_ci'])}, AUPRC {_ci(model['auprc'], model['auprc_ci'])} "
                     f"(chance {_chance(ev)}, the share resistant); in brackets: the {INTERVAL}.")
        if ev.get("note"):
            lines.append(ev["note"])
        lines += verdicts(ev)
    if card.get("calibration"):
        lines.append(card["calibration"])
    lines += [f"Warning: {w}" for w in card.get("warnings") or []]
    return lines


#: Settings named first when a card lists them (the others follow in their recorded order).
_FIRST_SETTINGS = ("head", "folds", "seed", "members", "head_c", "head_inputs", "pretrain_epochs", "epochs",
                   "finetune_epochs", "mmd_weight")


#: What the card says of a label table that came without its provenance file (labels.provenance.json).
LABEL_RULE_UNKNOWN = "the rule that turned IC50s into these labels is unknown (labels as uploaded)"


def _input(what: str, entry: dict | None) -> str | None:
    if not entry:
        return None
    name = entry.get("file") or entry.get("name") or "given as data"
    sha = entry.get("sha256")
    hashed = ("" if not sha else f"sha256 {sha[:12]}" + (" of its values" if entry.get("of") == "values" else
                                                         " of the table" if entry.get("of") == "table" else ""))
    values = entry.get("values_sha256")
    if values and values != sha:  # a file's sha256, and its values' (comparable with data given to the app)
        hashed += f"; sha256 {values[:12]} of its values"
    ic50 = entry.get("from_ic50")
    if ic50:
        source = (ic50.get("files") or {}).get("ic50")
        hashed += ("; " if hashed else "") + (f"from ln(IC50){f' ({source})' if source else ''} with threshold "
                                              f"{ic50['threshold']:g}: below it sensitive")
    elif entry.get("ic50_rule") == "unknown":  # a label table without the provenance file of scatd labels-from-ic50
        hashed += ("; " if hashed else "") + LABEL_RULE_UNKNOWN
    return f"{what} {name}" + (f" ({hashed})" if hashed else "") + _cell_metadata_words(entry.get("cell_metadata"))


#: What a training took from a cell metadata table's column, in words (``used`` of its record).
_TABLE_USES = {"target_labels": "the target labels (evaluation)", "target_mask": "the cells used (mask)",
               "few_shot_labels": "the labelled cells trained on"}


def _cell_metadata_words(table: dict | None) -> str:
    """``" with the cell metadata table NAME (sha256 ...; its column 'x' gave ...)"``, or ``""``."""
    if not table:
        return ""
    sha = table.get("sha256")
    used = [f"'{column}' gave {_TABLE_USES.get(what, what)}" for what, column in (table.get("used") or {}).items()]
    details = [f"sha256 {sha[:12]}"] if sha else []
    if used:
        details.append(("its column " if len(used) == 1 else "its columns ") + ", ".join(used))
    return f" with the cell metadata table {table.get('file')}" + (f" ({'; '.join(details)})" if details else "")


#: How a model trained on cell embeddings says they were made when the data did not record it.
UNKNOWN_EMBEDDINGS = "unknown, brought by the user"


def embedding_origin_words(origin: dict | None) -> str:
    """How cell embeddings were made (:func:`scatd_core.train._data.embedding_origin`), in words:
    "computed by scATD Studio (scFoundation; key rde, resolution a5, max_genes 8000)", or
    :data:`UNKNOWN_EMBEDDINGS`."""
    if not origin or origin.get("computed_by") != "scATD Studio":
        return UNKNOWN_EMBEDDINGS
    settings = ", ".join(f"{k} {v}" for k, v in (origin.get("settings") or {}).items())
    parts = "; ".join(p for p in (origin.get("model"), settings) if p)
    return "computed by scATD Studio" + (f" ({parts})" if parts else "")


def card_details(card: dict) -> list[str]:
    """What the card records besides its scores: the data files with their hashes, the genes and
    the settings used (and those the recipe did not use). Empty for cards that record none."""
    data, lines = card.get("data") or {}, []
    inputs = [_input(what, data.get(key)) for what, key in (("bulk", "bulk"), ("labels", "labels"),
                                                              ("target", "target"))]
    if any(inputs):
        lines.append("Data: " + ", ".join(i for i in inputs if i) + ".")
    embeddings = data.get("embeddings")
    if embeddings:  # a VAE_sf/VAE_gf model: how its training embeddings were made
        lines.append("Cell embeddings: " + "; ".join(f"{what} {embedding_origin_words(embeddings.get(what))}"
                                                     for what in ("bulk", "target") if what in embeddings) + ".")
    genes = data.get("genes")
    if genes and genes.get("n"):
        first = list(genes.get("first") or [])[:10]
        more = genes["n"] - len(first)
        lines.append(f"Genes: {genes['n']:,}" + (f" ({', '.join(map(str, first))}" + (f" and {more:,} more)"
                                                                                     if more > 0 else ")")
                                                  if first else "") + ".")
    settings = card.get("settings") or {}
    if settings:
        order = [k for k in _FIRST_SETTINGS if k in settings] + [k for k in settings if k not in _FIRST_SETTINGS]
        shown = ", ".join(f"{k} {settings[k]}" for k in order)
        unused = card.get("settings_not_used") or {}
        lines.append(f"Settings: {shown}." + (f" Not used by this recipe: {', '.join(unused)}." if unused else ""))
    tuning = logistic_tuning_words(card)
    if tuning:
        lines.append(f"Logistic-regression baseline: {tuning}.")
    return lines


def bulk_cv_evaluation(manifest) -> dict | None:
    """The card's bulk cross-validation evaluation of a model's ``manifest`` (None without one)."""
    card = (manifest or {}).get("card") or {}
    return next((e for e in card.get("evaluations", []) if e.get("name") == "bulk_cv"), None)


def bulk_cv_figures(manifest) -> dict:
    """A model's bulk CV figures from its ``manifest``, as ``scatd train-panel``'s summary and a panel's
    per-drug metrics give them: ``cv_auroc`` (with ``cv_auroc_ci_low``/``cv_auroc_ci_high``, the card's
    95% interval), ``cv_best_baseline`` (the best baseline of the card, "" without one) and
    ``cv_best_baseline_auroc``; None where the model does not record one (an imported checkpoint)."""
    cv = ((manifest or {}).get("metrics") or {}).get("cv") or {}
    bulk_cv = bulk_cv_evaluation(manifest)
    scores = bulk_cv["scores"] if bulk_cv is not None else []
    others = [r for r in scores if r["model"] != MODEL and r.get("auroc") is not None]
    best = max(others, key=lambda r: r["auroc"]) if others else {}
    # the card's 95% interval of this model's bulk CV AUROC (every head records one; an sd only some)
    ci_low, ci_high = next((r for r in scores if r["model"] == MODEL), {}).get("auroc_ci") or (None, None)
    return {"cv_auroc": cv.get("auroc", cv.get("auroc_mean")), "cv_auroc_ci_low": ci_low, "cv_auroc_ci_high": ci_high,
            "cv_best_baseline": best.get("model", ""), "cv_best_baseline_auroc": best.get("auroc")}
