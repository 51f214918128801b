"""Panels of drug models: score one dataset against several models in one run, and compare them.

A biologist's question is usually "which of these drugs would this tumour, and which of its
subclones, resist?". :func:`predict_panel` answers it with the one prediction function,
:func:`scatd_core.predict.predict`, called once per model:

- the models are grouped by their input (backbone, gene list, transform, style statistics); the
  data are aligned, and the dataset statistics computed, **once per group** (one
  :class:`~scatd_core.inputs.ModelInput`), then each model makes one batch pass over it;
- each model writes its own column set under its own prefix (``obs['scatd_<DRUG>_prob_resistant']``,
  ``..._label``, ``uns['scatd_<DRUG>']`` with its threshold and whether it is calibrated);
- a model that cannot score the data (wrong backbone for the upload, no shared genes, a broken
  bundle) is **reported and skipped**, never failing the panel; coverage is kept per model.

The panel record is ``uns['scatd_panel']``; ``obs['scatd_panel_n_scored']`` counts the drugs that
scored each cell, ``obs['scatd_panel_n_resisted']`` the drugs it is called resistant to (missing
where no drug scored it) and ``obs['scatd_panel_resistant_to_all']`` flags cells resistant to
every scored drug. :func:`refresh` recomputes them after a threshold changes.

What compares across drugs: each model has its own default threshold (and its own scale of
P(resistant)), so fractions resistant and mean P compare across drugs only once every drug is
calibrated, and calibrating every drug to *one* expected fraction makes the whole sample's
fractions equal by construction; :func:`comparison_notes` and :func:`resistant_to_all_statement`
say so in the same words for the app, the CLI and the HTML report.

Saved panels (:func:`save_panel`, :func:`list_panels`, :func:`load_panel`) are named lists of
library models, stored per user: an app login's in ``<home>/panels/<login>.json``, the command
line's (``scatd panel``, ``scatd predict --panel``, ``scatd train-panel --save-panel``: the
operating-system user) apart from them, in ``<home>/panels/cli/<user>.json`` (``cli=True``), so that
an app login and an account of the same name never see or overwrite each other's panels. One user
never sees another's: the file both shared before (``<home>/panels/<user>.json``) is the app login's
and is never copied for the command line (:func:`legacy_panels_note`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from scatd_core import _keys
from scatd_core._keys import NOT_CALLED, result_keys
from scatd_core._lock import folder_lock
from scatd_core._progress import step
from scatd_core._words import counted
from scatd_core.errors import BundleError, Cancelled, DataNotScorable, DeviceError, InputError, ScatdError

__all__ = ["predict_panel", "refresh", "members", "panel_table", "group_summary", "drug_ranking",
           "multi_resistant_markers", "save_panel", "list_panels", "load_panel", "delete_panel", "PanelMember",
           "find_saved", "check_panel_free",
           "check_models", "calibrate_panel", "comparison_notes", "resistant_to_all_statement", "check_panel_name",
           "calibration_routes", "ranking_title", "ranking_caveat", "group_values", "resistant_to_all_enrichment",
           "whole_sample_caveat", "fractions_given", "model_warnings", "warnings_summary", "run_signature",
           "saved_panel_drugs", "scaleout_note", "not_scored", "requested_statement", "not_scored_lines",
           "is_ranking", "set_label_drug", "label_evaluation", "label_statement", "lost_from_saved_panel",
           "all_refused_error", "legacy_panels_note", "DRUG_NOT_SCORED", "too_few_models"]

#: A panel needs at least this many models to be a panel (three or more make a more useful one).
MIN_MODELS = 2


def too_few_models(names: Sequence[str], *, n_demo_hidden: int = 0, demo_data: bool = False) -> str | None:
    """What the Drug panel page says when fewer than :data:`MIN_MODELS` drug models can be chosen for
    the data (``names``: those that can, as the app names them), else ``None``: that a panel cannot be
    made yet and how to get more models (the page links to the Model library and Train pages).
    ``n_demo_hidden``: demo models installed but not offered (real data); ``demo_data``: the demo data
    are loaded (the demo panel's button makes a panel of them)."""
    if len(names) >= MIN_MODELS:
        return None
    demo = (" The demo models (simulated data) are offered with the demo data only." if n_demo_hidden and not demo_data
            else "")
    get = ("Get or import more drug models on the Model library page, or train one for another drug on the Train a "
           "model page.")
    if demo_data:
        get = "With the demo data, use the demo panel (the button above), or " + get[0].lower() + get[1:]
    if not names:
        said = ("No drug model for your own data is installed yet: the demo models (simulated data) are offered with "
                "the demo data only." if n_demo_hidden and not demo_data else "No drug model is installed yet.")
        return f"{said} A panel needs at least {MIN_MODELS} drug models. {get}"
    return (f"Only one drug model in the library can be chosen for these data: {names[0]}. A panel needs at least "
            f"{MIN_MODELS} (three or more make a useful panel), so there is nothing to choose yet.{demo} {get}")


# --------------------------------------------------------------------------- the members

@dataclass
class PanelMember:
    """One model of a panel and what became of it."""

    key: str  # prefix of its results in the AnnData (``scatd_<DRUG>``)
    drug: str
    model: str  # display name
    path: str
    backbone: str
    demo: bool = False
    status: str = "pending"  # "scored" or "skipped"
    problem: str | None = None
    #: the problem with the next step as the app takes it (a page, not a command), when it differs
    problem_app: str | None = None
    input_group: int = -1  # models with the same group number share one alignment
    coverage: dict = field(default_factory=dict)
    n_scored: int = 0
    n_resistant: int = 0
    seconds: float = 0.0

    @property
    def scored(self) -> bool:
        return self.status == "scored"

    @property
    def folder(self) -> str:
        """The model's folder name in the library (tells two models of one drug apart)."""
        return Path(self.path).name


def distinct_drugs(drugs: Sequence[str]) -> list[str]:
    """The drugs as a panel names them: a drug scored by several models is ``DRUG``, ``DRUG_2``,
    ``DRUG_3`` ... in model order, so that every table column and row names one model."""
    seen: dict[str, int] = {}
    out = []
    for drug in drugs:
        seen[drug] = seen.get(drug, 0) + 1
        name = drug if seen[drug] == 1 else f"{drug}_{seen[drug]}"
        while name in drugs and seen[drug] > 1 and name != drug:  # never another model's own drug name
            seen[drug] += 1
            name = f"{drug}_{seen[drug]}"
        out.append(name)
    return out


def check_models(bundles: Sequence) -> tuple[list, list[str]]:
    """The panel's models with the same model (bundle folder) given twice kept once, and a warning
    for each duplicate left out and for each drug scored by several different models (each is its
    own column set, counted as a drug of its own)."""
    kept, notes, seen = [], [], set()
    for b in bundles:
        path = str(Path(b.path).resolve())
        if path in seen:
            notes.append(f"{b.drug or b.name} ({Path(b.path).name}) was given twice; it is scored once.")
            continue
        seen.add(path)
        kept.append(b)
    by_drug: dict[str, list[str]] = {}
    for b in kept:
        by_drug.setdefault(b.drug or b.name, []).append(Path(b.path).name)
    for drug, folders in by_drug.items():
        if len(folders) > 1:
            names = ", ".join(distinct_drugs([drug] * len(folders)))
            notes.append(f"{drug} has {len(folders)} different models in the panel ({', '.join(folders)}): each is "
                         f"scored and counted as a drug of its own ({names}), also in the number of drugs resisted.")
    return kept, notes


def drug_prefix(drug: str, taken: set[str]) -> str:
    """``scatd_<DRUG>`` (file-system-safe, distinct for distinct names), ``_2``, ``_3`` ... when taken."""
    from scatd_core.bundle import safe_name

    base = f"{_keys.DEFAULT_PREFIX}_{safe_name(drug, 'drug')}"
    key, k = base, 2
    while key in taken or key in _RESERVED:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key


#: Every name the package writes itself (a drug called "panel" or "qc" must not overwrite them).
_RESERVED = {v for v in vars(_keys).values() if isinstance(v, str) and v.startswith(_keys.DEFAULT_PREFIX)}


def input_signature(bundle) -> str:
    """What a model's input depends on besides the data: models with the same one share an alignment."""
    h = hashlib.sha256()
    h.update(f"{bundle.backbone}|{bundle.input_kind}|{bundle.manifest['input_transform']}|"
             f"{bundle.architecture.input_dim}".encode())
    h.update("\n".join(bundle.genes or []).encode())
    if "library_size" in bundle.manifest:  # the genes counts are summed over (absent: the model's own)
        h.update(f"|library_size={bundle.manifest['library_size']}".encode())
    for stat in (bundle.style_mean, bundle.style_std):
        if stat is not None:
            h.update(np.ascontiguousarray(stat, dtype=np.float64).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- prediction

#: Problems that skip one model instead of failing the panel: expected ones (``ScatdError``)
#: and what a model whose files disagree with its manifest raises inside torch.
_SKIPPABLE = (InputError, BundleError, DeviceError, RuntimeError, ValueError)


def _problem(exc: BaseException, app: bool = False) -> str:
    if isinstance(exc, ScatdError):
        hint = (exc.app_hint or exc.hint) if app else exc.hint
        return ((app and exc.app_message) or exc.message) + (f" {hint}" if hint else "")
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _clear_panel(adata: ad.AnnData) -> None:
    old = adata.uns.get(_keys.PANEL, {})
    for m in _records(old):
        clear_one(adata, m["key"])
    for col in (_keys.PANEL_N_RESISTED, _keys.PANEL_RESISTANT_TO_ALL, _keys.PANEL_N_SCORED):
        if col in adata.obs:
            del adata.obs[col]
    adata.uns.pop(_keys.PANEL, None)


def clear_one(adata: ad.AnnData, prefix: str) -> None:
    """Remove one model's result fields (not the shared UMAP/clusters)."""
    keys = result_keys(prefix)
    for col in (keys.prob, keys.prob_sd, keys.label, keys.scored, keys.not_scored_reason):
        if col in adata.obs:
            del adata.obs[col]
    adata.obsm.pop(keys.latent, None)
    adata.uns.pop(keys.run, None)


def predict_panel(
    adata: ad.AnnData,
    bundles: Sequence,
    *,
    mask: np.ndarray | str | None = None,
    mode: str = "mean",
    n_samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    beta_mode: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_gene_coverage: float | None = None,
    not_loaded: Sequence[tuple[str, str]] = (),
) -> list[PanelMember]:
    """Predict P(resistant) for every cell of ``adata`` with every model of a panel.

    Parameters
    ----------
    adata
        The cells (may be backed), as for :func:`scatd_core.predict.predict`.
    bundles
        The panel's models (:class:`~scatd_core.bundle.Bundle`), any backbones and gene sets.
    mask, mode, n_samples, seed, device, batch_size, beta_mode, should_stop, min_gene_coverage
        As for :func:`~scatd_core.predict.predict`, the same for every model (``beta_mode``
        overrides each model's Swish mode; models without that choice ignore ``None`` only).
    not_loaded
        ``(drug, reason)`` of each drug requested (e.g. a saved panel's member) whose model could not
        even be loaded (removed from the library ...): recorded with the run, so that every table,
        report and summary names every drug requested, scored or not (:func:`not_scored`).
    progress
        Called with (fraction done, message naming the model and its place in the panel).

    Returns
    -------
    The members, in the given order, each ``scored`` or ``skipped`` with its problem. Raises
    :class:`InputError` only when no model at all could score the data. Sets:

    - for each scored model with prefix ``<p>`` = ``scatd_<DRUG>``: every field
      :func:`~scatd_core.predict.predict` sets (``obs['<p>_prob_resistant']``, ``obs['<p>_label']``,
      ``obs['<p>_scored']``, ``obsm['X_<p>']``, ``uns['<p>']``);
    - ``obs['scatd_panel_n_scored']``, ``obs['scatd_panel_n_resisted']``,
      ``obs['scatd_panel_resistant_to_all']`` (:func:`refresh`);
    - ``uns['scatd_panel']``: the members (status, problem, coverage, time), the input groups and
      the time spent aligning.
    """
    from scatd_core.inputs import column_mask, mask_column
    from scatd_core.predict import _mask_of

    if not bundles:
        raise InputError("The panel has no model.", "Choose at least two drug models from the library.")
    if adata.n_obs == 0:
        raise InputError("The dataset has no cells.", "Check the file and the filters applied.")
    t0 = time.perf_counter()
    mask_array = _mask_of(adata, mask)
    refused = refuse_unscorable(adata, bundles)  # before any model runs (and before the old panel is cleared)
    _clear_panel(adata)
    taken: set[str] = set()
    team = [PanelMember(drug_prefix(b.drug or b.name, taken), drug, b.name, str(b.path), b.backbone, b.is_demo)
            for b, drug in zip(bundles, distinct_drugs([b.drug or b.name for b in bundles]))]
    # the mask named by its column: a model input that finds no cell to score says what left them out
    shared = _SharedInputs(adata, None if mask_array is None else column_mask(mask_array, mask_column(mask)),
                           batch_size, device)
    # a mask column (its name, or a command line's --mask array naming it) is passed on as given, so each
    # model's run records it and says its cells were left out by that column, not by the QC filter
    options = dict(mask=mask if mask_column(mask) else mask_array, mode=mode, n_samples=n_samples, seed=seed, device=device, batch_size=batch_size,
                   beta_mode=beta_mode, should_stop=should_stop, min_gene_coverage=min_gene_coverage)
    n = len(bundles)
    try:
        for i, (member, bundle) in enumerate(zip(team, bundles)):
            if should_stop is not None and should_stop():
                raise Cancelled("Panel prediction cancelled; nothing was kept.")
            if i in refused:  # it could score no cell (e.g. z-scored values for a log model): not run
                member.status, member.problem = "skipped", _problem(refused[i])
                member.problem_app = _problem(refused[i], app=True) if refused[i].app_hint else None
                continue
            say = step(progress, i, n, member.drug)
            if say is not None:
                say(0.0, "aligning the data to the model")
            _score_member(adata, member, bundle, shared, say, options)
    except BaseException:  # cancelled, or interrupted (a caller's progress callback, Ctrl+C): no partial panel
        _clear_members(adata, team)
        raise
    lost = _lost_records(not_loaded, {m.drug for m in team})
    if not any(m.scored for m in team):
        raise all_refused_error([(m.drug, m.problem or "", m.problem_app) for m in team]
                                + [(r["drug"], r["problem"], None) for r in lost])
    adata.uns[_keys.PANEL] = {
        "members": _stored(team), "n_models": n, "n_scored_models": sum(m.scored for m in team),
        "not_loaded": {f"{i:02d}": r for i, r in enumerate(lost)}, "n_requested": n + len(lost),
        "n_input_groups": len(shared.groups), "align_seconds": round(shared.seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3), "params": {"mode": mode, "seed": int(seed),
                                                                  "batch_size": batch_size or "auto",
                                                                  "beta_mode": beta_mode or "each model's own"},
        "run_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    refresh(adata)
    if progress is not None:
        progress(1.0, f"{sum(m.scored for m in team)} of {n} models scored the data")
    return members(adata, scored_only=False)


def unscorable(adata: ad.AnnData, bundles: Sequence) -> dict[int, InputError]:
    """The panel's models that can score none of ``adata``'s cells for the values they would read (e.g. a
    model that log-normalises values given z-scored ones), by position, with the refusal a single
    prediction gives (:func:`scatd_core.inputs.unscorable_error`; each model reads the matrix the matrix rule
    chooses for it, so an unscaled adata.raw beside a z-scored X is read as by one prediction). Judged
    before any model runs, once per input signature and backbone."""
    from scatd_core.inputs import unscorable_error

    seen: dict[tuple, InputError | None] = {}
    out: dict[int, InputError] = {}
    for i, bundle in enumerate(bundles):
        if getattr(bundle, "kind", "classifier") != "classifier":
            continue
        key = (input_signature(bundle), bundle.backbone)
        if key not in seen:
            seen[key] = unscorable_error(adata, bundle)
        if seen[key] is not None:
            out[i] = seen[key]
    return out


def known_skips(adata: ad.AnnData, bundles: Sequence, *, app: bool = False) -> dict[int, str]:
    """The panel's models (by position) that a run would skip for a reason known before it starts,
    and that reason: a model that cannot predict as installed (``prediction_problem``, e.g. no AdaIN
    statistics) or that can score none of these data's values (:func:`unscorable`). What the models'
    genes cover is judged when each is aligned, in the run, so a model may still be skipped then."""
    out = {i: f"it {b.prediction_problem}" for i, b in enumerate(bundles)
           if getattr(b, "prediction_problem", None)}
    for i, problem in unscorable(adata, bundles).items():
        out.setdefault(i, _problem(problem, app=app))
    return dict(sorted(out.items()))


def refuse_unscorable(adata: ad.AnnData, bundles: Sequence) -> dict[int, InputError]:
    """:func:`unscorable`, raising the single prediction's refusal when it holds for every model of the
    panel (nothing is then run: a z-scored matrix is refused up front, not after every drug failed)."""
    problems = unscorable(adata, bundles)
    if bundles and len(problems) == len(bundles):
        first = problems[0]
        alike = all(p.message == first.message for p in problems.values())
        names = distinct_drugs([b.drug or b.name for b in bundles])
        message = (f"No model of the panel can score these data: {first.message}" if alike else
                   "No model of the panel can score these data: " + " ".join(
                       f"{names[i]}: {p.message}" for i, p in problems.items()))
        raise DataNotScorable(message, first.hint, app_hint=first.app_hint)
    return problems


def all_refused_error(problems: Sequence[tuple[str, str, str | None]]) -> InputError:
    """The error when no drug of a panel could score the data: one line per drug with its reason
    (``(drug, problem, problem as the app says it or None)``), never one long line joined by "; "."""
    def lines(app: bool) -> str:
        return "\n".join(f"- {drug}: {(app and app_problem) or problem}" for drug, problem, app_problem in problems)

    head = f"No model of the panel could score these data ({counted(len(problems), 'drug')} requested, none scored):\n"
    exc = DataNotScorable(head + lines(False), "Check each model's reason; `scatd models` lists the installed "
                     "models and their backbones.", app_hint="Check the data against each model on the Model page.")
    exc.app_message = head + lines(True)
    return exc


def _lost_records(not_loaded: Sequence[tuple[str, str]], taken: set[str]) -> list[dict]:
    """The drugs requested but not loaded, each under a name no scored drug's columns use."""
    out = []
    for drug, reason in not_loaded:
        name, k = str(drug), 2
        while name in taken:
            name, k = f"{drug}_{k}", k + 1
        taken.add(name)
        out.append({"drug": name, "problem": str(reason)})
    return out


def lost_from_saved_panel(record: Mapping, bundles: Sequence, problems: Sequence[str]) -> list[tuple[str, str]]:
    """``(drug, reason)`` of each model of a saved panel's ``record`` that :func:`load_panel` left out
    (``problems``, each ``"<folder>: <reason>"``), its drug as the panel recorded it."""
    loaded = {Path(b.path).name for b in bundles}
    drugs, names = record.get("drugs") or {}, record.get("names") or {}
    out = []
    for folder in record.get("models", []):
        if folder in loaded:
            continue
        reason = next((p[len(folder) + 2:] for p in problems if p.startswith(f"{folder}: ")), "could not be loaded")
        out.append((str(drugs.get(folder) or names.get(folder) or folder), f"model {folder} {reason}"
                    if reason.startswith("not in") else f"model {folder}: {reason}"))
    return out


class _SharedInputs:
    """One :class:`~scatd_core.inputs.ModelInput` per input signature: the data are aligned (and
    the dataset statistics computed) once per gene set, whatever the number of models on it."""

    def __init__(self, adata: ad.AnnData, mask: np.ndarray | None, batch_size: int | None, device: str):
        self.adata, self.mask, self.batch_size, self.device = adata, mask, batch_size, device
        self.groups: dict[str, int] = {}
        self.inputs: dict[int, object] = {}
        self.seconds = 0.0

    def get(self, bundle) -> tuple[int, object]:
        """``(group number, ModelInput)``; re-raises the problem of a group whose data cannot be aligned."""
        from scatd_core.inputs import ModelInput
        from scatd_core.predict import auto_batch_size, resolve_device

        group = self.groups.setdefault(input_signature(bundle), len(self.groups))
        if group not in self.inputs:
            t0 = time.perf_counter()
            try:
                size = self.batch_size or auto_batch_size(bundle, resolve_device(self.device))
                self.inputs[group] = ModelInput(self.adata, bundle, mask=self.mask, batch_size=size)
            except _SKIPPABLE as exc:
                self.inputs[group] = exc  # every model of this group fails the same way
            self.seconds += time.perf_counter() - t0
        if isinstance(self.inputs[group], BaseException):
            raise self.inputs[group]
        return group, self.inputs[group]


def _score_member(adata: ad.AnnData, member: PanelMember, bundle, shared: _SharedInputs, progress, options) -> None:
    """One model's pass; a problem marks the member skipped (with the reason) instead of raising."""
    from scatd_core.predict import predict

    t0 = time.perf_counter()
    try:
        if bundle.kind != "classifier":
            raise InputError(f"{bundle.name} is a pretrained backbone without a drug head; it cannot predict.")
        member.input_group, inputs = shared.get(bundle)
        predict(adata, bundle, inputs=inputs, key_added=member.key, progress=progress, **options)
    except _SKIPPABLE as exc:
        clear_one(adata, member.key)
        member.status, member.problem = "skipped", _problem(exc)
        if isinstance(exc, ScatdError) and exc.app_hint:
            member.problem_app = _problem(exc, app=True)
    else:
        info = adata.uns[member.key]
        member.status = "scored"
        member.coverage = dict(info.get("gene_coverage") or {})
        member.n_scored = int(info["n_scored"])
    member.seconds = round(time.perf_counter() - t0, 3)


def _stored(members: list[PanelMember]) -> dict:
    """The members as h5ad can store them: a dict keyed by position ("00", "01" ...), no None."""
    from scatd_core._json import json_safe

    return {f"{i:02d}": json_safe({k: ("" if v is None else v) for k, v in asdict(m).items()})
            for i, m in enumerate(members)}


def _records(info: dict) -> list[dict]:
    """The stored member records, in panel order."""
    members_ = info.get("members", {})
    return [members_[k] for k in sorted(members_)]


def _clear_members(adata: ad.AnnData, team: list[PanelMember]) -> None:
    for m in team:
        clear_one(adata, m.key)


def members(adata: ad.AnnData, *, scored_only: bool = True) -> list[PanelMember]:
    """The members of the panel stored in ``adata`` (the scored ones by default)."""
    info = adata.uns.get(_keys.PANEL)
    if not info:
        raise InputError("No panel prediction in this dataset.", "Run a panel first (`scatd predict --model A "
                         "--model B ...`, or the Panel page).")
    out = [PanelMember(**{k: (None if k in ("problem", "problem_app") and v == "" else v) for k, v in m.items()
                          if k in PanelMember.__dataclass_fields__}) for m in _records(info)]
    return [m for m in out if m.scored] if scored_only else out


def refresh(adata: ad.AnnData) -> None:
    """Recompute the per-cell panel summary from the current calls (after a threshold changed).

    ``obs['scatd_panel_n_scored']``: drugs that scored the cell (0 for a cell no drug scored:
    QC-filtered, or left out by every model); ``obs['scatd_panel_n_resisted']``: drugs the cell is
    called resistant to, missing (NA) where no drug scored it, never a 0 that reads as sensitive to
    every drug; ``obs['scatd_panel_resistant_to_all']``: resistant to every scored drug (at least two).
    """
    scored = members(adata)
    n_scored = np.zeros(adata.n_obs, dtype=np.int64)
    resisted = np.zeros(adata.n_obs, dtype=np.int64)
    everywhere = np.ones(adata.n_obs, dtype=bool)
    for m in scored:
        keys = result_keys(m.key)
        is_res = (adata.obs[keys.label].astype(str) == adata.uns[m.key]["positive_label"]).to_numpy()
        n_scored += adata.obs[keys.scored].to_numpy(dtype=bool)
        resisted += is_res
        everywhere &= is_res
        m.n_resistant = int(is_res.sum())
    adata.obs[_keys.PANEL_N_SCORED] = n_scored
    counts = pd.array(resisted, dtype="Int64")
    counts[n_scored == 0] = pd.NA
    adata.obs[_keys.PANEL_N_RESISTED] = counts
    adata.obs[_keys.PANEL_RESISTANT_TO_ALL] = everywhere & (len(scored) >= MIN_MODELS)
    by_key = {m.key: m for m in scored}
    for rec in _records(adata.uns[_keys.PANEL]):
        if rec["key"] in by_key:
            rec["n_resistant"] = by_key[rec["key"]].n_resistant


def not_scored(adata: ad.AnnData, *, app: bool = False) -> list[tuple[str, str]]:
    """``(drug, why)`` of every drug requested that did not score the data, in panel order: the models
    that refused them (too few of their genes, no embeddings ...), then those that could not be
    loaded (removed from the library ...). ``app``: the reasons as the app says them."""
    out = [(m.drug, (app and m.problem_app) or m.problem or "not scored") for m in members(adata, scored_only=False)
           if not m.scored]
    return out + [(r["drug"], str(r["problem"])) for r in _records({"members": adata.uns[_keys.PANEL].get("not_loaded")
                                                                                  or {}})]


def requested_statement(adata: ad.AnnData) -> str | None:
    """"3 drugs requested, 1 scored; not scored: DRUGB, DRUGC (reasons below)." or ``None`` when every
    drug requested scored the data."""
    lost = not_scored(adata)
    if not lost:
        return None
    n_scored = len(members(adata))
    return (f"{counted(n_scored + len(lost), 'drug')} requested, {n_scored:,} scored; not scored: "
            f"{', '.join(d for d, _ in lost)}.")


def not_scored_lines(adata: ad.AnnData, *, app: bool = False) -> list[str]:
    """One line per drug not scored: ``"DRUGB: <why>"``."""
    return [f"{drug}: {why}" for drug, why in not_scored(adata, app=app)]


def set_label_drug(adata: ad.AnnData, drug: str | None, column: str | None) -> dict | None:
    """Record that ``obs[column]`` labels the response to the panel's ``drug`` (a label column records
    one drug's response) and evaluate that drug's calls against it (:func:`label_evaluation`, stored
    in ``uns['scatd_panel']['label_evaluation']`` for the report and the h5ad); ``None`` clears it."""
    info = adata.uns[_keys.PANEL]
    info.pop("label_evaluation", None)
    if not drug or not column:
        return None
    found = label_evaluation(adata, drug, column)
    info["label_evaluation"] = {k: (" ".join(v) if isinstance(v, list) else v) for k, v in found.items()}
    return found


def label_evaluation(adata: ad.AnnData, drug: str | None = None, column: str | None = None) -> dict | None:
    """One drug's calls against the labels of ``obs[column]`` (default: those recorded by
    :func:`set_label_drug`), as a single-drug prediction of the same model on the same cells gives
    them (:func:`scatd_core.metrics.evaluate_column`, its label direction and its Hanley-McNeil 95%
    AUROC interval): ``drug, column, auroc, auroc_ci_low, auroc_ci_high, auprc, auprc_chance,
    n_evaluated, n_positive, n_negative, notes`` or, when the labels cannot evaluate it, ``problem``.
    ``None`` when no label column is recorded for a drug."""
    from scatd_core.metrics import evaluate_column, interval_ends

    if drug is None or column is None:
        stored = adata.uns.get(_keys.PANEL, {}).get("label_evaluation")
        if not stored:
            return None
        drug, column = str(stored["drug"]), str(stored["column"])
    member = next((m for m in members(adata, scored_only=False) if m.drug == drug), None)
    out = {"drug": drug, "column": column}
    if member is None or not member.scored:
        return {**out, "problem": f"{drug} was not scored, so it has no AUROC against '{column}'."}
    try:
        ev = evaluate_column(adata, column, key_added=member.key)[0]
    except InputError as exc:
        return {**out, "problem": exc.message}
    low, high = interval_ends(*ev.auroc_ci)
    return {**out, "auroc": float(ev.auroc), "auroc_ci_low": low, "auroc_ci_high": high, "auprc": float(ev.auprc),
            "auprc_chance": float(ev.auprc_chance), "n_evaluated": int(ev.n_evaluated),
            "n_positive": int(ev.n_positive), "n_negative": int(ev.n_negative), "notes": list(ev.notes)}


def label_statement(found: Mapping | None) -> str | None:
    """:func:`label_evaluation` in the words of a single prediction's report: "DRUGA against 'response'
    (120 cells): AUROC 0.812 (95% interval 0.730-0.880, Hanley-McNeil), AUPRC 0.790 (chance 0.500, the
    share resistant)." or why there is none."""
    if not found:
        return None
    if found.get("problem"):
        return f"No AUROC of {found['drug']} against '{found['column']}': {found['problem']}"
    return (f"{found['drug']} against '{found['column']}' ({int(found['n_evaluated']):,} cells): AUROC "
            f"{float(found['auroc']):.3f} (95% interval {found['auroc_ci_low']}-{found['auroc_ci_high']}, "
            f"Hanley-McNeil), AUPRC {float(found['auprc']):.3f} (chance {float(found['auprc_chance']):.3f}, the share "
            "resistant).")


def n_resisted_values(adata: ad.AnnData) -> np.ndarray:
    """``obs['scatd_panel_n_resisted']`` as floats, NaN where no drug scored the cell (for plots)."""
    return adata.obs[_keys.PANEL_N_RESISTED].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def model_warnings(adata: ad.AnnData) -> list[tuple[str, str]]:
    """``(drug, warning)`` for every warning a scored model's prediction gave (few of its genes in
    the data, z-scores over the scored cells, cells not scored ...), in panel order: what
    ``uns['scatd_<DRUG>']['warnings']`` holds, said next to the drug wherever the panel is shown."""
    out = []
    for m in members(adata):
        warnings = (adata.uns.get(m.key) or {}).get("warnings")
        for w in [] if warnings is None else warnings:  # a list, or the numpy array it is in an h5ad read back
            out.append((m.drug, str(w)))
    return out


def run_statement(adata: ad.AnnData) -> str:
    """What the panel run did, as the Panel page says it: "2 of 3 models scored 2,000 cells in 4.2 s
    (1 alignment for 3 models)." (it said "1 alignment(s)")."""
    info = adata.uns[_keys.PANEL]
    everyone = members(adata, scored_only=False)
    n_scored = sum(m.scored for m in everyone)
    return (f"{n_scored:,} of {counted(len(everyone), 'model')} scored {counted(adata.n_obs)} in "
            f"{float(info['seconds']):.1f} s ({counted(int(info['n_input_groups']), 'alignment')} for "
            f"{counted(len(everyone), 'model')}).")


def warnings_summary(adata: ad.AnnData) -> str | None:
    """One sentence naming the scored drugs whose model warned (``None`` when none did)."""
    warned = list(dict.fromkeys(drug for drug, _ in model_warnings(adata)))
    if not warned:
        return None
    n = len(members(adata))
    return (f"{len(warned)} of the {n} scored models warn about their predictions ({', '.join(warned)}): "
            "read each warning before trusting or comparing their calls.")


def run_signature(bundles: Sequence) -> list[list[str]]:
    """What a panel's results depend on among its models, whatever order they were chosen in: each
    model's folder, weights and the drug name it is scored under (``DRUG``, ``DRUG_2`` ... depend on
    the order only when a drug has several models), sorted. Two choices with the same signature
    give the same results (shown in the order they were scored)."""
    names = distinct_drugs([b.drug or b.name for b in bundles])
    return sorted([str(b.path), str(b.manifest.get("weights_sha256", "")), name] for b, name in zip(bundles, names))


def scaleout_note(n_cells: int) -> str | None:
    """What the Drug panel says when a single-model prediction of these data would run on Ray
    (:func:`scatd_core.scaleout.engine_for`): the panel never does, it runs in the server process,
    one model after another. ``None`` when Ray would not be used anyway."""
    from scatd_core.scaleout import engine_for

    if not engine_for(n_cells).use_ray:
        return None
    return (f"The panel runs in the server process, one model after another, not on Ray (the Predict page would "
            f"send these {n_cells:,} cells to Ray). For a very large dataset, predict drug by drug on the Predict "
            "page instead.")


# --------------------------------------------------------------------------- calibration and what compares

def calibrate_panel(adata: ad.AnnData, expected_fraction: float | None = None,
                    per_drug: Mapping[str, float] | None = None) -> dict[str, float]:
    """Calibrate every scored drug to an expected resistant fraction: ``per_drug`` (``{drug: fraction}``,
    drug names as the panel names them, matched case-insensitively) where given, else
    ``expected_fraction``; drugs with neither keep their threshold. Each threshold record keeps its
    ``expected_fraction``. Returns ``{drug: fraction}`` of the drugs calibrated; refreshes the panel."""
    from scatd_core.predict import calibrate

    scored = members(adata)
    by_name = {m.drug.lower(): m for m in scored}
    wanted = {}
    for drug, fraction in (per_drug or {}).items():
        if str(drug).lower() not in by_name:
            raise InputError(f"No scored drug of the panel is called {drug!r}.",
                             f"The panel's scored drugs: {', '.join(m.drug for m in scored)}.")
        wanted[by_name[str(drug).lower()].drug] = float(fraction)
    done = {}
    for m in scored:
        fraction = wanted.get(m.drug, expected_fraction)
        if fraction is None:
            continue
        if not 0.0 < float(fraction) < 1.0:
            raise InputError(f"The expected resistant fraction of {m.drug} must be between 0 and 1; got {fraction}.")
        calibrate(adata, expected_fraction=float(fraction), key_added=m.key)
        adata.uns[m.key]["threshold"]["expected_fraction"] = float(fraction)
        done[m.drug] = float(fraction)
    refresh(adata)
    return done


def uncalibrated(adata: ad.AnnData) -> list[str]:
    """The scored drugs whose calls use an uncalibrated threshold (a model's default, or one set by hand)."""
    return [m.drug for m in members(adata) if not adata.uns[m.key]["threshold"]["calibrated"]]


def one_expected_fraction(adata: ad.AnnData) -> float | None:
    """The expected fraction every scored drug is calibrated to, when it is one and the same."""
    fractions = {adata.uns[m.key]["threshold"].get("expected_fraction")
                 if adata.uns[m.key]["threshold"].get("source") == "expected fraction" else None
                 for m in members(adata)}
    return next(iter(fractions)) if len(fractions) == 1 and None not in fractions else None


def _uncalibrated_thresholds(adata: ad.AnnData) -> str:
    """Each uncalibrated drug with the threshold its calls use, e.g. ``DRUGA (its model's default, 0.5)``."""
    from scatd_core.predict import uncalibrated_threshold_words

    out = []
    for m in members(adata):
        thr = adata.uns[m.key]["threshold"]
        if not thr["calibrated"]:
            how = "its model's default" if thr["source"] == "model default" else uncalibrated_threshold_words(thr)
            out.append(f"{m.drug} ({how}, {float(thr['value']):.4g})")
    return ", ".join(out)


#: The Drug panel page's calibration controls, as it labels them and as its notes point to them.
FRACTION_LABEL = "Expected resistant fraction (every drug)"
CALIBRATE_LABEL = "Calibrate every drug to it"
PER_DRUG_LABEL = "Or one expected resistant fraction per drug"


def calibration_routes(app: bool = False, *, on_page: bool = False) -> str:
    """How every drug of a panel gets calibrated where the reader is: expected resistant fractions,
    on the Drug panel page or with ``--expected-fraction``. ``on_page``: the reader is on the Drug
    panel page (below its calibration controls): they are named by their labels, not the page.
    (Labelled cells calibrate only the one drug whose response they record, ``--label-column
    DRUG=COLUMN``, so never every drug.)"""
    if app and on_page:
        return (f"set '{FRACTION_LABEL}' above and press '{CALIBRATE_LABEL}', or give each drug its own under "
                f"'{PER_DRUG_LABEL}'")
    if app:
        return "an expected resistant fraction for every drug, or one per drug, on the Drug panel page"
    return "--expected-fraction FRACTION for every drug, or --expected-fraction DRUG=FRACTION for a drug's own"


def fractions_given(adata: ad.AnnData) -> dict[str, float]:
    """``{drug: expected fraction}`` of the scored drugs calibrated to an expected resistant fraction:
    their whole-sample fractions called resistant are the fractions given, not measured."""
    out = {}
    for m in members(adata):
        thr = adata.uns[m.key]["threshold"]
        if thr.get("source") == "expected fraction" and thr.get("expected_fraction") is not None:
            out[m.drug] = float(thr["expected_fraction"])
    return out


def _fractions_text(given: Mapping[str, float]) -> str:
    return ", ".join(f"{drug} {fraction:.0%}" for drug, fraction in given.items())


def comparison_notes(adata: ad.AnnData, *, app: bool = False, on_page: bool = False) -> list[str]:
    """What the panel's numbers do and do not compare across drugs, in the words the app, the CLI
    and the HTML report all use: uncalibrated drugs (each with the threshold its calls use), and drugs
    calibrated to expected fractions, whose whole-sample fractions are the fractions given (every drug to
    one fraction: the whole-sample ranking is equal by construction; each to its own: it repeats them),
    so only the per-cluster and per-sample comparisons carry information.
    ``app``: name the Panel page's ways to calibrate, else the command line's; ``on_page``: the reader
    is on that page, so its controls are named (:func:`calibration_routes`)."""
    notes = []
    loose = uncalibrated(adata)
    if len(members(adata)) < MIN_MODELS:
        return [f"Only one drug was scored: comparing drugs needs at least {MIN_MODELS} scored drugs."]
    if loose:
        notes.append(
            f"Uncalibrated: {_uncalibrated_thresholds(adata)}. Each model has its own default threshold and its "
            "own scale of P(resistant), so neither the fractions called resistant nor the mean P(resistant) "
            "compare across drugs. What does compare: one drug's clusters or samples against each other, and the "
            "order of the cells within one drug; across drugs, fractions once every drug is calibrated "
            f"({calibration_routes(app, on_page=on_page)}).")
    fraction = one_expected_fraction(adata)
    given = fractions_given(adata)
    if fraction is not None:
        notes.append(
            f"Every drug is calibrated to the same expected fraction ({fraction:.0%}), so the whole sample's "
            "fractions resistant are equal by construction and the whole-sample ranking says nothing about "
            "the drugs (its order only breaks the tie by mean P(resistant), which does not compare across "
            "models). Compare the drugs per cluster or per sample, or give each drug its own expected "
            "fraction (e.g. from a bulk assay of this tumour).")
    elif given and not loose:  # with uncalibrated drugs, the note above says the fractions do not compare
        every = len(given) == len(members(adata))
        notes.append(
            f"{'Each drug is' if every else 'Some drugs are'} calibrated to an expected resistant fraction given "
            f"for it ({_fractions_text(given)}), so {'the' if every else 'their'} whole-sample fractions called "
            "resistant are those fractions as given, not measured from the cells: the whole-sample order "
            f"{'only repeats them and ranks nothing' if every else 'repeats them for these drugs'}. What the "
            "cells add is the comparison per cluster or per sample: where each drug's fraction is above or below "
            "its whole-sample fraction.")
    return notes


def ranking_title(adata: ad.AnnData, where: str) -> str:
    """The title of a drug ranking of ``where`` (``"Whole sample"``, ``"sample P1"``): "best drug
    first" only once every scored drug is calibrated; before that, what the bars are. The whole
    sample's ranking (``where`` ``"Whole sample"``) when every drug is calibrated to an expected
    fraction: the fractions given, not a ranking."""
    if uncalibrated(adata):
        return f"{where}: fraction called resistant per drug, uncalibrated"
    given = fractions_given(adata)
    if where.strip().lower() == "whole sample" and given and len(given) == len(members(adata)):
        if one_expected_fraction(adata) is not None:
            return f"{where}: every drug at the same expected fraction, so no ranking"
        return f"{where}: the expected fractions given per drug, not a ranking"
    return f"{where}: best drug first"


def is_ranking(adata: ad.AnnData, where: str = "Whole sample") -> bool:
    """Whether the order of :func:`drug_ranking` for ``where`` ranks the drugs (and so carries rank
    numbers): not with an uncalibrated drug, nor for the whole sample when every drug is calibrated
    to an expected fraction (the fractions given, :func:`ranking_title`)."""
    return ranking_title(adata, where).endswith("best drug first")


def whole_sample_caveat(adata: ad.AnnData) -> str | None:
    """What the whole sample's ranking does not say when drugs are calibrated to expected fractions
    (their whole-sample fractions are the fractions given); ``None`` otherwise (some drugs calibrated
    another way: :func:`comparison_notes` names those whose fractions were given)."""
    given = fractions_given(adata)
    if not given or len(given) != len(members(adata)) or len(given) < MIN_MODELS:
        return None
    if one_expected_fraction(adata) is not None:
        return ("Equal by construction: every drug is calibrated to the same expected fraction, so this order "
                "says nothing (see the note above). Compare the drugs per cluster or sample.")
    return (f"Set by the fractions given ({_fractions_text(given)}): these whole-sample fractions are the expected "
            "fractions typed in, so this order ranks nothing. Compare the drugs per cluster or sample.")


def ranking_caveat(adata: ad.AnnData, *, app: bool = False, on_page: bool = False) -> str | None:
    """What an uncalibrated drug ranking does not say (``None`` once every drug is calibrated)."""
    loose = uncalibrated(adata)
    if not loose:
        return None
    return (f"Uncalibrated ({', '.join(loose)}): each fraction is at its model's own threshold, so the fractions do "
            "not compare across drugs and this order does not rank the drugs. Calibrate every drug "
            f"({calibration_routes(app, on_page=on_page)}) to compare them.")


#: Cells resistant to every drug are called a possible multi-drug-resistant subclone only when there are at
#: least this many of them ...
SUBCLONE_MIN_CELLS = 10
#: ... at least this many times the count expected if the drugs' calls were independent ...
SUBCLONE_MIN_FOLD = 1.5
#: ... and a one-sided binomial test against that expectation gives p below this.
SUBCLONE_MAX_P = 0.01


def resistant_to_all_enrichment(adata: ad.AnnData) -> dict:
    """The cells called resistant to every scored drug against the count independent calls would give.

    Counted on the cells every scored drug scored (``n_cells``): ``observed`` of them are called
    resistant to every drug; if the drugs' calls were independent, each cell would be resistant to
    all with probability ``p_chance``, the product of each drug's fraction called resistant on these
    cells, so about ``expected = n_cells * p_chance`` cells would be by chance. ``p_value``: one-sided
    binomial test, P(at least ``observed`` of ``n_cells`` | ``p_chance``). ``enriched``: at least
    :data:`SUBCLONE_MIN_CELLS` cells, at least :data:`SUBCLONE_MIN_FOLD` times the expected count, and
    ``p_value`` below :data:`SUBCLONE_MAX_P` (needs at least two scored drugs)."""
    from scipy.stats import binom

    scored = members(adata)
    every = np.ones(adata.n_obs, dtype=bool)
    calls = []
    for m in scored:
        keys = result_keys(m.key)
        every &= adata.obs[keys.scored].to_numpy(dtype=bool)
        calls.append((adata.obs[keys.label].astype(str) == adata.uns[m.key]["positive_label"]).to_numpy())
    n_cells = int(every.sum())
    observed = int(np.logical_and.reduce([c[every] for c in calls]).sum()) if calls and n_cells else 0
    p_chance = float(np.prod([c[every].mean() for c in calls])) if calls and n_cells else 0.0
    expected = n_cells * p_chance
    p_value = float(binom.sf(observed - 1, n_cells, p_chance)) if n_cells and observed else 1.0
    enriched = bool(len(scored) >= MIN_MODELS and observed >= SUBCLONE_MIN_CELLS
                    and observed >= SUBCLONE_MIN_FOLD * expected and p_value < SUBCLONE_MAX_P)
    return {"n_cells": n_cells, "observed": observed, "expected": expected, "p_chance": p_chance,
            "p_value": p_value, "enriched": enriched}


def _count(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def resistant_to_all_statement(adata: ad.AnnData, *, app: bool = False,
                               on_page: bool = False) -> tuple[str, bool]:
    """The sentence about the cells called resistant to every scored drug, and whether they may be
    called a possible multi-drug-resistant subclone (and their biomarkers looked up): only with at
    least two scored drugs, every one calibrated, and clearly more such cells than the drugs' calls
    would give by chance if they were independent (:func:`resistant_to_all_enrichment`: at least
    :data:`SUBCLONE_MIN_CELLS` cells, :data:`SUBCLONE_MIN_FOLD` times the expected count, one-sided
    binomial p < :data:`SUBCLONE_MAX_P`). At uncalibrated thresholds (the original Dist_VAE default of
    0.05 can call most cells resistant) the count is given with that caveat and nothing more.
    ``app``, ``on_page``: as for :func:`comparison_notes`."""
    scored = members(adata)
    if len(scored) < MIN_MODELS:
        return (f"Only {len(scored)} drug scored the cells: finding cells resistant to every drug needs at least "
                f"{MIN_MODELS} scored drugs.", False)
    n_all = int(adata.obs[_keys.PANEL_RESISTANT_TO_ALL].sum())
    n_cells = int((adata.obs[_keys.PANEL_N_SCORED] > 0).sum())
    counted = f"{n_all:,} of {n_cells:,} scored cells are called resistant to all {len(scored)} scored drugs"
    loose = uncalibrated(adata)
    if loose:
        return (f"{counted}, at uncalibrated thresholds ({', '.join(loose)}): a threshold not "
                "calibrated to these cells (a model's default, or one set by hand) can call most cells resistant, "
                "so this is not yet evidence of a multi-drug-resistant subclone. "
                f"Calibrate every drug ({calibration_routes(app, on_page=on_page)}), then look again.", False)
    e = resistant_to_all_enrichment(adata)
    chance = (f"about {_count(e['expected'])} would be by chance if the drugs' calls were independent (each drug's "
              f"fraction called resistant multiplied together, times the {e['n_cells']:,} cells every drug scored)")
    if e["enriched"]:
        return (f"{counted}, where {chance}: clearly more (one-sided binomial p = {e['p_value']:.1e}), "
                "a possible multi-drug-resistant subclone.", True)
    if n_all == 0:
        return f"{counted}; {chance}.", False
    if e["observed"] <= e["expected"]:
        why = "no more than chance would give"
    elif e["p_value"] >= SUBCLONE_MAX_P:
        why = "about what chance would give"
    elif e["observed"] < SUBCLONE_MIN_CELLS:
        why = f"more than chance would give, but under {SUBCLONE_MIN_CELLS} cells: too few to call a subclone"
    else:
        why = (f"only {e['observed'] / e['expected']:.1f} times what chance would give (a subclone is called at "
               f"{SUBCLONE_MIN_FOLD:g} times or more)")
    return (f"{counted}; {chance}. That is {why}, so it is not evidence of a multi-drug-resistant subclone.",
            False)


# --------------------------------------------------------------------------- tables

def _drug_columns(adata: ad.AnnData, m: PanelMember) -> dict[str, np.ndarray]:
    keys = result_keys(m.key)
    info = adata.uns[m.key]
    cols = {f"{m.drug}_prob_resistant": adata.obs[keys.prob].to_numpy()}
    if keys.prob_sd in adata.obs:
        cols[f"{m.drug}_prob_resistant_sd"] = adata.obs[keys.prob_sd].to_numpy()
    cols[f"{m.drug}_label"] = adata.obs[keys.label].astype(str).to_numpy()
    cols[f"{m.drug}_calibrated"] = np.full(adata.n_obs, bool(info["threshold"]["calibrated"]))
    scored = adata.obs[keys.scored].to_numpy(dtype=bool)
    cols[f"{m.drug}_scored"] = scored
    # why this drug's model gave the cell no probability ("" where it did), as predictions.csv says it
    cols[f"{m.drug}_not_scored_reason"] = (adata.obs[keys.not_scored_reason].astype(str).to_numpy()
                                           if keys.not_scored_reason in adata.obs else
                                           np.where(scored, "", "not scored"))
    return cols


def _short_reason(why: str, limit: int = 200) -> str:
    """The first sentence of a drug's reason for not scoring, cut to ``limit`` characters."""
    first = re.split(r"(?<=[.:])\s+(?=[A-Z])", why.strip(), maxsplit=1)[0]
    return first if len(first) <= limit else first[:limit - 1].rstrip() + "…"


#: What a per-cell table says in ``<DRUG>_not_scored_reason`` for a drug requested that scored no cell:
#: why is said once per drug (:func:`scatd_core.export.panel_drug_metrics`, the run's messages), not on
#: every cell row.
DRUG_NOT_SCORED = "drug not scored"


def _lost_columns(n: int, drug: str, spread: bool = False) -> dict[str, np.ndarray]:
    """A drug requested but not scored: its columns as a scored drug's, empty (NA), flagged
    :data:`DRUG_NOT_SCORED` in every row; ``spread``: the scored drugs have
    ``<DRUG>_prob_resistant_sd``, so it has one too (empty)."""
    sd = {f"{drug}_prob_resistant_sd": np.full(n, np.nan)} if spread else {}
    return {f"{drug}_prob_resistant": np.full(n, np.nan), **sd, f"{drug}_label": np.full(n, "", dtype=object),
            f"{drug}_calibrated": pd.array([pd.NA] * n, dtype="boolean"), f"{drug}_scored": np.zeros(n, dtype=bool),
            f"{drug}_not_scored_reason": np.full(n, DRUG_NOT_SCORED, dtype=object)}


def panel_table(adata: ad.AnnData, extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Cells x drugs: one row per uploaded cell, in input order.

    Columns: ``cell_id``; per scored drug ``<DRUG>_prob_resistant`` (and ``<DRUG>_prob_resistant_sd``
    when there is a spread: over an ensemble's members in mean mode, over the draws in sample mode),
    ``<DRUG>_label``, ``<DRUG>_calibrated``, ``<DRUG>_scored``, ``<DRUG>_not_scored_reason`` (why that
    drug's model gave the cell no probability, "" where it did); every drug requested that did not score the
    data (refused by its model, or not loaded) has the same columns, empty (NA) but for ``<DRUG>_scored``
    False and ``<DRUG>_not_scored_reason`` "drug not scored" (:data:`DRUG_NOT_SCORED`; why, once per
    drug, is in :func:`scatd_core.export.panel_drug_metrics`); ``n_drugs_scored``, ``n_drugs_resisted`` (empty where no
    drug scored the cell), ``resistant_to_all`` (``resistant_to_all_scored`` when a drug requested did
    not score the data: resistant to every drug that did, as the report says it); then
    ``umap_1, umap_2``, ``leiden_cluster`` when computed and ``extra_columns`` of ``obs``.
    """
    cols: dict[str, np.ndarray] = {"cell_id": adata.obs_names.astype(str).to_numpy()}
    lost = dict(not_scored(adata))
    spread = any(result_keys(m.key).prob_sd in adata.obs for m in members(adata))
    for m in members(adata, scored_only=False):
        cols.update(_drug_columns(adata, m) if m.scored else _lost_columns(adata.n_obs, m.drug, spread))
    for drug in list(lost)[sum(not m.scored for m in members(adata, scored_only=False)):]:
        cols.update(_lost_columns(adata.n_obs, drug, spread))
    cols["n_drugs_scored"] = adata.obs[_keys.PANEL_N_SCORED].to_numpy()
    cols["n_drugs_resisted"] = adata.obs[_keys.PANEL_N_RESISTED].array
    # never "resistant to all" of a panel one of whose drugs never scored: to all the scored ones
    cols["resistant_to_all_scored" if lost else "resistant_to_all"] = (
        adata.obs[_keys.PANEL_RESISTANT_TO_ALL].to_numpy(dtype=bool))
    from scatd_core.export import with_cell_context

    return with_cell_context(pd.DataFrame(cols), adata, extra_columns)


def _drug_stats(adata: ad.AnnData, m: PanelMember, rows: np.ndarray) -> dict:
    keys = result_keys(m.key)
    labels = adata.obs[keys.label].astype(str).to_numpy()[rows]
    prob = adata.obs[keys.prob].to_numpy(dtype=np.float64)[rows]
    called = ~np.isin(labels, NOT_CALLED)
    n_res = int((labels == adata.uns[m.key]["positive_label"]).sum())
    return {"drug": m.drug, "n_cells": int(len(rows)), "n_called": int(called.sum()), "n_resistant": n_res,
            "fraction_resistant": n_res / called.sum() if called.any() else np.nan,
            "mean_prob_resistant": float(np.nanmean(prob)) if np.isfinite(prob).any() else np.nan,
            "calibrated": bool(adata.uns[m.key]["threshold"]["calibrated"])}


def _group_order(values: pd.Series) -> list[str]:
    from scatd_core.metrics import group_fractions

    return list(group_fractions(np.zeros(len(values)), values)["group"])


def group_values(adata: ad.AnnData, column: str) -> pd.Series:
    """``obs[column]``, the grouping of the heatmap, dot plot and summaries; in the Leiden clusters of
    an annotated h5ad of an earlier version, the cells without a cluster get today's name
    (:data:`~scatd_core._keys.NOT_EMBEDDED`)."""
    values = adata.obs[column]
    if column != _keys.CLUSTER:
        return values
    if isinstance(values.dtype, pd.CategoricalDtype):
        if _keys.OLD_NOT_EMBEDDED in values.cat.categories and _keys.NOT_EMBEDDED not in values.cat.categories:
            return values.cat.rename_categories({_keys.OLD_NOT_EMBEDDED: _keys.NOT_EMBEDDED})
        return values
    return values.replace(_keys.OLD_NOT_EMBEDDED, _keys.NOT_EMBEDDED)


def group_summary(adata: ad.AnnData, column: str) -> pd.DataFrame:
    """Per group of ``obs[column]`` (cluster, sample) and drug: cells, calls, fraction resistant, mean P.

    Columns ``group, drug, n_cells, n_called, n_resistant, fraction_resistant, mean_prob_resistant,
    calibrated``; groups in their natural order, drugs in panel order.
    """
    if column not in adata.obs:
        raise InputError(f"'{column}' is not a column of the data.",
                         f"Its columns: {_keys.columns_text(adata.obs.columns, also=[_keys.CLUSTER])}.")
    grouping = group_values(adata, column)
    values = grouping.astype(str)
    rows = []
    for group in _group_order(grouping):
        idx = np.flatnonzero((values == group).to_numpy())
        rows += [{"group": group, **_drug_stats(adata, m, idx)} for m in members(adata)]
    return pd.DataFrame(rows)


def drug_summary(adata: ad.AnnData, cells: np.ndarray | None = None) -> pd.DataFrame:
    """Per drug, in panel order (as :func:`group_summary` lists them), for a set of cells (all by
    default; a boolean mask or row numbers): ``drug, n_cells, n_called, n_resistant,
    fraction_resistant, mean_prob_resistant, calibrated``."""
    if cells is None:
        rows = np.arange(adata.n_obs)
    else:
        cells = np.asarray(cells)
        rows = np.flatnonzero(cells) if cells.dtype == bool else cells.astype(np.int64)
    return pd.DataFrame([_drug_stats(adata, m, rows) for m in members(adata)])


def drug_ranking(adata: ad.AnnData, cells: np.ndarray | None = None) -> pd.DataFrame:
    """The drugs ranked for a set of cells (all by default): lowest fraction called resistant first
    (the drug most likely to work), then lowest mean P(resistant).

    Columns ``rank, drug, n_cells, n_called, n_resistant, fraction_resistant, mean_prob_resistant,
    calibrated``. Fractions at uncalibrated thresholds compare poorly across drugs; the
    ``calibrated`` column says which are.
    """
    table = drug_summary(adata, cells)
    table = table.sort_values(["fraction_resistant", "mean_prob_resistant"], na_position="last", kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def thresholds(adata: ad.AnnData) -> dict[str, float]:
    """Each scored drug's current threshold (the one its calls use), in panel order: the panel's figures
    colour each drug's P(resistant) relative to it (:func:`scatd_core.pl.relative_to_threshold`)."""
    return {m.drug: float(adata.uns[m.key]["threshold"]["value"]) for m in members(adata)}


def probability_matrix(adata: ad.AnnData) -> tuple[np.ndarray, list[str]]:
    """Cells x scored drugs of P(resistant) (NaN where not scored), and the drug names."""
    ms = members(adata)
    return (np.column_stack([adata.obs[result_keys(m.key).prob].to_numpy(dtype=np.float64) for m in ms]),
            [m.drug for m in ms])


# --------------------------------------------------------------------------- multi-drug-resistant cells

def multi_resistant_markers(adata: ad.AnnData, *, n_top: int = 20, max_cells: int = 5000,
                            seed: int = 0) -> pd.DataFrame:
    """Genes that set the cells resistant to every drug apart from the other scored cells.

    A Wilcoxon rank-sum test (the statistic of scanpy's ``rank_genes_groups``) on log-normalised expression
    (counts are log1p-CP10k normalised first), on at most ``max_cells`` cells per side (a seeded
    subsample). Returns the ``n_top`` genes most up in the multi-resistant cells: ``gene,
    logfoldchange, score, pval_adj, n_panel_models_using``.
    """
    from scatd_core._matrix import log1p_cp10k
    from scatd_core.explain._ranking import differential_expression
    from scatd_core.inputs import _holds_counts

    if _keys.PANEL_RESISTANT_TO_ALL not in adata.obs:
        raise InputError("No panel prediction in this dataset.", "Run a panel first.")
    loose = uncalibrated(adata)
    if loose:
        raise InputError(f"Not every drug is calibrated ({', '.join(loose)} at an uncalibrated threshold), so the "
                         "cells called resistant to every drug are not yet a subclone worth characterising.",
                         f"Calibrate every drug first ({calibration_routes()}).",
                         app_hint=f"Calibrate every drug first ({calibration_routes(app=True, on_page=True)}).")
    everywhere = adata.obs[_keys.PANEL_RESISTANT_TO_ALL].to_numpy(dtype=bool)
    scored_all = np.ones(adata.n_obs, dtype=bool)
    for m in members(adata):
        scored_all &= adata.obs[result_keys(m.key).scored].to_numpy(dtype=bool)
    rest = scored_all & ~everywhere
    if everywhere.sum() < 3 or rest.sum() < 3:
        n_all, n_rest = int(everywhere.sum()), int(rest.sum())
        raise InputError(f"{counted(n_all)} {'is' if n_all == 1 else 'are'} resistant to every drug and {n_rest} "
                         f"{'is' if n_rest == 1 else 'are'} not; "
                         "the comparison needs at least 3 of each.",
                         f"Calibrate the drugs to other fractions ({calibration_routes()}), or add or remove drugs.",
                         app_hint=("Calibrate the drugs to other fractions "
                                   f"({calibration_routes(app=True, on_page=True)}), or add or remove drugs."))
    rng = np.random.default_rng(seed)
    pick = [np.sort(rng.choice(side, size=min(max_cells, side.size), replace=False))
            for side in (np.flatnonzero(everywhere), np.flatnonzero(rest))]
    rows = np.concatenate(pick)
    order = np.argsort(rows)
    X = adata.X[rows[order]]
    X = X.to_memory() if hasattr(X, "to_memory") else X
    if _holds_counts(adata):
        X = log1p_cp10k(X)
    groups = np.where(np.isin(rows[order], pick[0]), "resistant to all", "other")
    de = differential_expression(X, groups, "resistant to all", "other", log_scale=True)
    de.insert(0, "gene", adata.var_names.astype(str))
    used = pd.Series(0, index=de["gene"])
    from scatd_core.bundle import load_bundle

    for m in members(adata):
        try:
            genes = load_bundle(m.path).genes
        except ScatdError:
            continue
        if genes:
            used[used.index.isin(set(genes))] += 1
    de["n_panel_models_using"] = used.to_numpy()
    de = de.rename(columns={"de_score": "score", "de_pval_adj": "pval_adj"})
    top = de.sort_values("score", ascending=False).head(n_top)
    return top[["gene", "logfoldchange", "score", "pval_adj", "n_panel_models_using"]].reset_index(drop=True)


# --------------------------------------------------------------------------- saved panels (per user)

#: Panel names: letters, digits, spaces and ``. _ - + ( )``, 1-64 characters.
PANEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+()-]{0,63}$")


def check_panel_name(name: str) -> str:
    """The panel name, stripped; :class:`InputError` when it is not a valid one (checked before any work)."""
    name = str(name or "").strip()
    if not PANEL_NAME.match(name):
        raise InputError(f"{name!r} is not a valid panel name.",
                         "Use 1-64 letters, digits, spaces or . _ - + ( ), starting with a letter or digit.")
    return name


#: The command line's saved panels: a folder of their own in ``<home>/panels`` (an app login's file is
#: ``<login>.json`` there, never a folder, so no login's panels are in it).
CLI_PANELS = "cli"


def panels_file(user: str | None, *, cli: bool = False) -> Path:
    """``<home>/panels/<user>.json`` for an app login; ``<home>/panels/cli/<user>.json`` for the
    command line's user (``cli``: the operating-system account), so that the two never share a
    file. The user name is made file-system-safe, distinct per name."""
    from scatd_core.bundle import safe_name
    from scatd_core.config import scatd_home

    folder = scatd_home() / "panels"
    return (folder / CLI_PANELS if cli else folder) / f"{safe_name(user or 'local', 'local')}.json"


def _panels_path(user: str | None, cli: bool) -> Path:
    """:func:`panels_file`. The file the command line and the app login of the same name shared before
    they were kept apart (``<home>/panels/<user>.json``) is the app login's, who may be another person:
    it is never copied for the command line (:func:`legacy_panels_note` says where it is and how an
    administrator moves it)."""
    return panels_file(user, cli=cli)


def legacy_panels_note(user: str | None) -> str | None:
    """For the command line's ``user`` with no saved panels file of its own: that the file the command
    line shared with the app login of the same name before they were kept apart is that login's now,
    not copied, and how an administrator moves it when it is this account's; ``None`` otherwise."""
    mine, shared = panels_file(user, cli=True), panels_file(user)
    if mine.exists() or not shared.is_file():
        return None
    return (f"panels saved before the command line's were kept apart from the app's may be in {shared}: it is now "
            f"the app login {user or 'local'}'s (who may be another person), so they were not copied for the "
            f"command line. If they are yours, an administrator can copy them for you: `cp {shared} {mine}` "
            "(before you save a panel here).")


def _locked(path: Path):
    """The panels file's lock: read, change and write it as one step. The panels folder is this
    account's only (0700, an existing one narrowed: the files in it, 0600, are named after the
    users), and so is the lock file (0600, an existing one narrowed)."""
    from scatd_core.io import private_folder

    private_folder(path.parent)
    lock = path.with_suffix(".lock")
    try:
        os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # 0600 from its creation
        os.chmod(lock, 0o600)  # one made before (0644 then)
    except OSError:  # another account's: folder_lock says what it can
        pass
    return folder_lock(path.parent, lock.name)


def list_panels(user: str | None, *, cli: bool = False) -> dict[str, dict]:
    """``{name: {"models": [library folder names], "created": ...}}`` of ``user``'s saved panels (an app
    login's; with ``cli``, the command line's user's, :func:`panels_file`)."""
    return _read(_panels_path(user, cli))


def _read(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Your saved panels cannot be read ({exc}).", f"Fix or remove {path}.") from None
    return {str(k): v for k, v in data.get("panels", {}).items()
            if isinstance(v, dict) and isinstance(v.get("models"), list)}


def _write(path: Path, panels: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".panels-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"panels": panels}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_saved(panels: Mapping[str, dict], name: str | None) -> str | None:
    """The name under which ``panels`` (:func:`list_panels`) hold the panel ``name``, as it was spelt
    when saved: names are compared without regard to case ("keepme" is "Keepme"), the very spelling
    first; None when there is none."""
    name = str(name or "").strip()
    if not name:
        return None
    if name in panels:
        return name
    return next((k for k in panels if k.casefold() == name.casefold()), None)


def _taken(name: str, found: str, record: Mapping) -> str:
    """``You already have a panel named 'keepme' (3 models: ...)``, with its spelling when it differs."""
    spelt = "" if found == name else f" (as {found!r}: names are the same whatever their case)"
    return f"You already have a panel named {name!r}{spelt} ({saved_panel_drugs(record)})"


def check_panel_free(name: str, user: str | None, *, replace: bool = False, cli: bool = False,
                     hint: str | None = None, app_hint: str | None = None) -> str:
    """The checked panel name (:func:`check_panel_name`), before any work (e.g. a panel training):
    :class:`InputError`, naming the saved panel's drugs, when ``user`` already has a panel of that
    name (whatever its case), unless ``replace``."""
    name = check_panel_name(name)
    panels = list_panels(user, cli=cli)
    found = find_saved(panels, name)
    if found is not None and not replace:
        raise InputError(f"{_taken(name, found, panels[found])}; nothing was trained or replaced.",
                         hint or "Choose another name, or say to replace it.", app_hint=app_hint)
    return name


def save_panel(name: str, models: Sequence[str], user: str | None, *, library: str | Path | None = None,
               replace: bool = False, cli: bool = False) -> dict:
    """Save a named panel of library models (folder names) for ``user`` (an app login; with ``cli``, the
    command line's user); returns its record (with each model's identity,
    :func:`scatd_core.bundle.model_identity`, checked by :func:`load_panel`)."""
    from scatd_core.bundle import list_library, model_identity

    name = check_panel_name(name)
    models = list(dict.fromkeys(str(m) for m in models))
    if len(models) < MIN_MODELS:
        raise InputError(f"A panel needs at least {MIN_MODELS} models; got {len(models)}.")
    installed = {e.path.name: e for e in list_library(library)}
    unknown = [m for m in models if m not in installed]
    if unknown:
        raise InputError(f"Not in the model library: {', '.join(unknown)}; the panel was not saved.",
                         f"Installed: {', '.join(sorted(installed)) or 'none'} (`scatd models`).")
    broken = [m for m in models if not installed[m].ok]
    if broken:  # each with its reason (e.g. a weights file cut short), which names the file
        reasons = "; ".join(f"{m}: {installed[m].problem}" for m in broken)
        raise InputError(f"{'This model' if len(broken) == 1 else 'These models'} of the library cannot be used, so "
                         f"the panel was not saved. {reasons}",
                         "Import or train the model again (a damaged or truncated weights file cannot be repaired), "
                         "or leave it out of the panel.",
                         app_hint="Leave it out of the panel, or ask an administrator to import it again.")
    path = _panels_path(user, cli)
    with _locked(path):
        panels = _read(path)
        found = find_saved(panels, name)
        if found is not None and not replace:
            raise InputError(f"{_taken(name, found, panels[found])}; it was "
                             "not replaced.", "Choose another name, or replace it: `scatd panel save NAME --model "
                             "... --replace`.", app_hint="Choose another name, or tick 'Replace it' to replace it.")
        if found is not None and found != name:  # replaced in its place, under the spelling given now
            panels = {(name if k == found else k): v for k, v in panels.items()}
        panels[name] = {"models": models,
                        "drugs": {m: installed[m].bundle.drug or installed[m].bundle.name for m in models},
                        # which model each folder held, so that another model taking a folder later is noticed
                        "identities": {m: model_identity(installed[m].bundle) for m in models},
                        "names": {m: installed[m].bundle.name for m in models},
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _write(path, panels)
    return panels[name]


def saved_panel_drugs(record: Mapping) -> str:
    """A saved panel's models as a biologist reads them, e.g. ``3 models: DRUGA, DRUGB, DRUGC``: each
    model's drug (its name, or its folder, for a panel saved before drugs were recorded)."""
    models = [str(m) for m in record.get("models", [])]
    drugs, names = record.get("drugs") or {}, record.get("names") or {}
    return f"{len(models)} models: " + ", ".join(str(drugs.get(m) or names.get(m) or m) for m in models)


def delete_panel(name: str, user: str | None, *, cli: bool = False) -> tuple[str, dict]:
    """Remove ``user``'s saved panel ``name`` (whatever its case); returns its name as saved and its
    record, for saying what was removed (:func:`saved_panel_drugs`)."""
    path = _panels_path(user, cli)
    with _locked(path):
        panels = _read(path)
        found = find_saved(panels, name)
        if found is None:
            raise InputError(f"You have no panel named {str(name).strip()!r}.", f"Yours: {', '.join(panels) or 'none'}.")
        record = panels.pop(found)
        _write(path, panels)
    return found, record


def load_panel(name: str, user: str | None, *, library: str | Path | None = None,
               cli: bool = False) -> tuple[list, list[str]]:
    """The bundles of ``user``'s panel ``name`` (an app login's; with ``cli``, the command line's
    user's), and the problems of those that cannot be loaded
    any more (removed from the library, broken, or another model in the folder of one that was
    removed: left out, never used in its place): reported, not fatal. No problem names a path."""
    from scatd_core.bundle import MANIFEST, check_weights, folder_taken_words, load_bundle, model_identity
    from scatd_core.config import model_library_dir

    panels = list_panels(user, cli=cli)
    found = find_saved(panels, name)
    if found is None:
        legacy = legacy_panels_note(user) if cli else None
        raise InputError(f"You have no panel named {str(name).strip()!r}.",
                         f"Yours: {', '.join(panels) or 'none'}. Save one with `scatd panel save`."
                         + (f" Note: {legacy}" if legacy else ""))
    record = panels[found]
    identities, names = record.get("identities") or {}, record.get("names") or {}
    root = Path(library) if library else model_library_dir()
    bundles, problems = [], []
    for folder in record["models"]:
        try:
            if not (root / folder / MANIFEST).is_file():
                problems.append(f"{folder}: not in the model library any more (removed)")
                continue
            bundle = load_bundle(root / folder)
            check_weights(bundle)  # a weights file cut short or damaged: said, naming it (a header read only)
        except ScatdError as exc:
            problems.append(f"{folder}: {exc.message}")
            continue
        except OSError:  # a folder this account may not read (load_bundle says so itself)
            problems.append(f"{folder}: cannot be read by this account")
            continue
        if folder in identities and model_identity(bundle) != identities[folder]:
            problems.append(f"{folder}: {folder_taken_words(names.get(folder), bundle)}; it was left out "
                            "(save the panel again to use the new model)")
            continue
        bundles.append(bundle)
    return bundles, problems


def recheck_chosen(chosen: Mapping[str, Sequence[str] | None], entries: Sequence) -> tuple[list[str], list[str]]:
    """Of the library models an app session chose for a panel, those it may still use, and why each
    other one is left out: its folder was removed, holds a model that cannot be used now, or holds
    another model than the one chosen (removed, and another model took its folder since: never used
    in its place, as :func:`load_panel` does for a saved panel).

    ``chosen``: each chosen model's folder path -> ``(identity, name)`` of the model it held when it
    was chosen (:func:`scatd_core.bundle.model_identity`), or None where none was recorded (then
    only that the folder still holds a usable model is checked). ``entries``: the model library
    (:func:`scatd_core.bundle.list_library`). No problem names a path, only the folder."""
    from scatd_core.bundle import folder_taken_words, model_identity

    listed = {}
    for e in entries:
        listed[str(e.path)] = e
        if e.ok:
            listed.setdefault(str(e.bundle.path), e)
    kept, problems = [], []
    for path, recorded in chosen.items():
        folder, entry = Path(path).name, listed.get(str(path))
        if entry is None:
            problems.append(f"{folder}: not in the model library any more (removed)")
        elif not entry.ok:
            problems.append(f"{folder}: cannot be used any more: {entry.problem}")
        elif recorded and model_identity(entry.bundle) != recorded[0]:
            problems.append(f"{folder}: {folder_taken_words(recorded[1] if len(recorded) > 1 else None, entry.bundle)}"
                            "; it is not used in its place (choose it again to use the new model)")
        else:
            kept.append(str(path))
    return kept, problems


def embed_expression(adata: ad.AnnData, *, seed: int = 0, progress=None) -> dict:
    """A UMAP of the cells' expression (no model's latent space: the panel has several) into
    ``obsm['X_umap']`` and ``uns['scatd_embed']``; returns that record. ``progress`` as for
    :func:`scatd_core.embed.compute_embedding` (what it raises stops the UMAP, nothing stored)."""
    from scatd_core.embed import compute_embedding, store

    store(adata, compute_embedding(adata, basis="expression", clusters=False, seed=seed, progress=progress))
    return adata.uns[_keys.EMBED]
