"""``explain``: integrated gradients for the cells of a prediction, ranked, checked and stored."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scatd_core import _keys
from scatd_core._json import json_safe
from scatd_core._explain_settings import check_steps
from scatd_core._keys import LEFT_OUT, result_keys
from scatd_core._progress import Eta
from scatd_core.errors import Cancelled, InputError
from scatd_core.explain._attribution import (BASELINES, N_REFERENCE_CELLS, TARGET_TITLES, TARGETS, Attributor,
                                             baseline_title, baseline_vector, zero_is_mean)
from scatd_core.explain._ranking import agreement, differential_expression, log_scale, round_or_none
from scatd_core.explain._sums import column_sums
from scatd_core.inputs import ModelInput, column_mask, run_mask
from scatd_core.predict import device_description, resolve_device

COMPLETENESS_TOLERANCE = 0.05
#: A difference f(x) - f(baseline) at most this fraction of the outputs' scale (at least 1) is float
#: rounding in a float32 network, not a change: it is no denominator of a completeness ratio, and when
#: every explained cell's is that small there is nothing to attribute (:func:`_nothing_to_attribute`).
OUTPUT_NOISE = 1e-5
#: Inputs within this fraction of the baseline's norm (at least 1) of it, on average over the cells, equal it.
INPUT_NOISE = 1e-6
#: Cells attributed per call: enough rows for the backward map's GEMM to run near its peak.
MAX_CELLS_PER_CALL = 256
FEATURE_PREFIX = {"vae_sf": "scFoundation", "vae_gf": "Geneformer"}
RANKING_COLUMNS = ("rank", "feature", "mean_abs_attribution", "mean_attribution", "mean_attribution_resistant",
                   "mean_attribution_sensitive", "input_gradient", "direction", "baseline_input",
                   "mean_input_resistant", "mean_input_sensitive", "mean_data_resistant", "mean_data_sensitive", "logfoldchange",
                   "de_score", "de_pval", "de_pval_adj", "de_rank", "in_data", "threshold", "threshold_calibrated")


@dataclass
class Explanation:
    """The result of :func:`explain` (also stored in the AnnData, see :func:`store`).

    Attributes
    ----------
    ranking
        One row per model input feature, best first (``biomarkers.csv``); columns
        :data:`RANKING_COLUMNS`.
    cells
        One row per explained cell (index: cell id): ``row`` (position in the AnnData),
        ``label``, ``prob_resistant``, ``target`` (f(x)), ``baseline_target`` (f(baseline)),
        ``attribution_sum``, ``delta`` and ``relative_error`` (completeness).
    features
        The ``keep_top`` best features whose per-cell values are kept.
    attributions, inputs
        ``(n explained cells, len(features))`` float32: per-cell attributions and model-input
        values of those features, rows in the order of ``cells``.
    baseline
        The baseline model input, one value per model input feature (also the ranking's
        ``baseline_input`` column).
    info
        Settings, the cells explained (and how they were chosen), completeness summary,
        DE method, agreement between attribution and DE, warnings and notes, timings.
    """

    ranking: pd.DataFrame
    cells: pd.DataFrame
    features: list[str]
    attributions: np.ndarray
    inputs: np.ndarray
    baseline: np.ndarray
    info: dict = field(default_factory=dict)

    def feature_values(self, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """``(model-input values, attributions)`` of one kept feature over the explained cells."""
        try:
            j = self.features.index(feature)
        except ValueError:
            raise InputError(f"Per-cell values of {feature!r} were not kept (only the top {len(self.features)}).",
                             "Run again with a larger keep_top.") from None
        return self.inputs[:, j], self.attributions[:, j]

    def baseline_of(self, feature: str) -> float:
        row = self.ranking.loc[self.ranking["feature"] == feature, "baseline_input"]
        return float(row.iloc[0])

    def per_cell(self, top: int = 20, values: str = "attribution") -> pd.DataFrame:
        """Cells x the ``top`` best features: attributions (or ``values="input"``), with label and P."""
        if values not in ("attribution", "input"):
            raise InputError(f"Unknown values {values!r}; use 'attribution' or 'input'.")
        k = min(int(top), len(self.features))
        matrix = self.attributions if values == "attribution" else self.inputs
        table = pd.DataFrame(matrix[:, :k], index=self.cells.index, columns=self.features[:k])
        return pd.concat([self.cells[["label", "prob_resistant"]], table], axis=1)


def signed_mean_near_zero(info: dict) -> bool:
    """Whether the ranking's signed ``mean_attribution`` is close to 0 for every feature by
    construction: against a baseline at the average cell (``mean``, or ``zero`` for a model that
    z-scores its genes), each cell's attribution is its distance from the average times the path
    gradient, and the distances cancel over the cells. ``info``: an :class:`Explanation`'s."""
    return bool(info.get("signed_mean_near_zero", info.get("baseline") == "mean"))


def groups_text(threshold: dict, pos: str, neg: str) -> str:
    """The sentence that says how the predicted groups were called: the threshold, where it came
    from, and whether it was calibrated (``threshold``: the prediction's ``uns`` record)."""
    return (f"Predicted groups: {pos} where P(resistant) > {float(threshold['value']):.4g}, else {neg} (threshold: "
            f"{threshold.get('detail') or threshold.get('source', 'unknown')}; "
            + ("calibrated" if threshold.get("calibrated") else
               "not calibrated, so the groups may be far from the true ones") + ").")


def with_threshold(ranking: pd.DataFrame, threshold: dict) -> pd.DataFrame:
    """``ranking`` with the threshold behind its per-group columns and DE test, and whether it
    was calibrated, on every row (so biomarkers.csv records them)."""
    return ranking.assign(threshold=float(threshold["value"]), threshold_calibrated=bool(threshold.get("calibrated")))


def feature_names(bundle) -> list[str]:
    """Model input feature names: genes for Dist_VAE, ``scFoundation_i`` / ``Geneformer_i`` otherwise."""
    if bundle.genes is not None:
        return list(bundle.genes)
    prefix = FEATURE_PREFIX.get(bundle.backbone, "feature")
    return [f"{prefix}_{i}" for i in range(bundle.architecture.input_dim)]


#: The fewest cells of each predicted group a subsample keeps (a smaller group whole), so a rare
#: group still has its per-group means and a DE test; at most a quarter of the subsample each
#: (for two groups), so the common group keeps at least half of it.
MIN_GROUP_CELLS = 20


def subsample_plan(counts, max_cells: int, min_per_group: int = MIN_GROUP_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """``(cells taken per group, the proportional share)`` of a stratified subsample of at most
    ``max_cells`` from groups of ``counts`` cells.

    The proportional share rounds by largest remainders, and every non-empty group has at least
    one cell; a group is then raised to ``min(its size, min_per_group, max_cells // (2 * groups))``
    cells (enriched), taken from the groups with the most to spare, so the size stays ``max_cells``.
    """
    counts = np.asarray(counts, dtype=int)
    n, max_cells = int(counts.sum()), int(max_cells)
    exact = counts * max_cells / n
    take = np.maximum(np.floor(exact).astype(int), 1)
    while take.sum() > max_cells:  # only when there are more groups than cells to spare
        take[np.argmax(take)] -= 1
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable")[: max_cells - take.sum()]:
        take[i] += 1
    proportional = take.copy()
    floor = np.minimum(counts, max(1, min(int(min_per_group), max_cells // (2 * counts.size))))
    take = np.maximum(take, floor)
    while take.sum() > max_cells:
        take[np.argmax(take - floor)] -= 1
    return take, proportional


def stratified_subsample(labels: np.ndarray, max_cells: int, seed: int = 0,
                         min_per_group: int = MIN_GROUP_CELLS) -> np.ndarray:
    """Sorted positions of at most ``max_cells`` entries, each label keeping its share.

    Group sizes are proportional (largest remainders), every non-empty group keeps at least one
    cell, and a small group at least ``min(its size, min_per_group)`` (:func:`subsample_plan`);
    cells are drawn without replacement with ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    n = labels.size
    if max_cells >= n:
        return np.arange(n)
    groups, counts = np.unique(labels, return_counts=True)
    take, _ = subsample_plan(counts, max_cells, min_per_group)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == g), size=min(t, c), replace=False)
              for g, t, c in zip(groups, take, counts)]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- steps

def _check(adata: ad.AnnData, bundle, keys, baseline: str, target: str, n_steps: int, max_cells, n_reference: int,
           seed: int = 0):
    if bundle.kind != "classifier":
        raise InputError(f"{bundle.name} is a pretrained backbone without a drug head; there is nothing to explain.",
                         "Choose a drug model.")
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if target not in TARGETS:
        raise InputError(f"Unknown target {target!r}; use one of {', '.join(TARGETS)}.")
    check_steps(n_steps)  # at most MAX_STEPS: captum's quadrature alone takes 8 * steps^2 bytes
    if max_cells is not None and int(max_cells) < 2:
        raise InputError(f"max_cells must be at least 2, got {max_cells}.",
                         "Explain 2 cells or more (--max-cells on the command line).")
    if n_reference < 1:
        raise InputError("n_reference_cells must be at least 1.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"The seed must be a whole number, 0 or more; got {seed!r}.",
                         "Use 0 (the default) or another non-negative whole number (--explain-seed on the command "
                         "line).")
    if keys.prob not in adata.obs or keys.label not in adata.obs or keys.run not in adata.uns:
        raise InputError(f"Did not find obs['{keys.prob}'] and obs['{keys.label}'].",
                         "Run `scatd_core.predict.predict(adata, bundle)` (the Predict page) first.")
    made_with = adata.uns[keys.run].get("model", {}).get("weights_sha256")
    this = bundle.manifest.get("weights_sha256")
    if made_with and this and made_with != this:
        name = adata.uns[keys.run]["model"].get("name", "another model")
        raise InputError(f"The predictions in this dataset were made with {name}, not {bundle.name}.",
                         "Predict with this model first, or explain with the model that made the predictions.")


def _choose_cells(labels: np.ndarray, scored_rows: np.ndarray, max_cells, seed: int, pos: str,
                  neg: str) -> tuple[np.ndarray, str, dict | None]:
    """The explained rows, how they were chosen (a sentence), and the scored cells per predicted
    group when the subsample enriched a small group (``None`` otherwise): then the overall means
    of the ranking weight each group by its share of the scored cells (:func:`_ranking`)."""
    if max_cells is None or scored_rows.size <= int(max_cells):
        return scored_rows, f"all {scored_rows.size:,} scored cells", None
    scored_labels = labels[scored_rows]
    rows = scored_rows[stratified_subsample(scored_labels, int(max_cells), seed)]
    groups, counts = np.unique(scored_labels, return_counts=True)
    _, proportional = subsample_plan(counts, int(max_cells))
    share = dict(zip(groups, proportional))
    parts, enriched = [], []
    for lab in (pos, neg):
        n_all, n_taken = int((scored_labels == lab).sum()), int((labels[rows] == lab).sum())
        text = f"{lab} {n_taken:,} of {n_all:,}"
        if n_all and n_taken > share.get(lab, 0):
            enriched.append(lab)
            text += (", all of them" if n_taken == n_all else ", enriched") + \
                f" where a proportional share is {int(share[lab]):,}"
        parts.append(text)
    how = (f"a random subsample of {rows.size:,} of the {scored_rows.size:,} scored cells, stratified by predicted "
           f"label ({'; '.join(parts)}; seed {seed})")
    if not enriched:
        return rows, how, None
    how += (f". The small {' and '.join(enriched)} group was given more than its share (up to {MIN_GROUP_CELLS} "
            "cells, or all of it), so it has its own means and a DE test; the overall means (mean |attribution|, which ranks the features, mean "
            "attribution and the input gradient behind 'direction') weight each group by its share of the scored "
            "cells, as over all of them")
    return rows, how, {lab: int((scored_labels == lab).sum()) for lab in (pos, neg)}


def prediction_context(adata: ad.AnnData, bundle, keys, device: str, inputs: ModelInput | None,
                       batch_size: int = 1024):
    """What explaining a prediction starts from: ``(device, model, labels, inputs, positive label,
    negative label)``; the model loaded as the prediction ran it, the prediction's ``ModelInput``
    (built with its mask when not given: the QC filter's, or the user's mask column's)."""
    dev = resolve_device(device)
    model = bundle.load_model(dev, adata.uns[keys.run]["params"].get("beta_mode"))
    labels = adata.obs[keys.label].astype(str).to_numpy()
    if inputs is None:  # the cells the prediction's mask left out: the QC filter's, or the user's mask column's
        filtered = np.isin(labels, LEFT_OUT)
        mask = column_mask(~filtered, run_mask(adata.uns[keys.run])) if filtered.any() else None
        inputs = ModelInput(adata, bundle, mask=mask, batch_size=batch_size)
    run = adata.uns[keys.run]
    return dev, model, labels, inputs, run["positive_label"], run["negative_label"]


@dataclass
class _Sums:
    """Streamed float64 accumulators of the attribution pass, and the per-cell results."""

    n_features: int
    n_cells: int

    def __post_init__(self):
        f, n = self.n_features, self.n_cells
        self.abs = np.zeros(f)
        self.attr = {True: np.zeros(f), False: np.zeros(f)}
        self.x = {True: np.zeros(f), False: np.zeros(f)}
        self.ad = np.zeros(f)
        self.dd = np.zeros(f)
        self.pos = {"abs": np.zeros(f), "ad": np.zeros(f), "dd": np.zeros(f)}  # abs, ad, dd of the first group
        self.staged = None  # per cell, until the top features are known (see :meth:`partial`)
        self.f_x, self.attr_sum, self.delta = np.zeros(n), np.zeros(n), np.zeros(n)

    def add(self, at: np.ndarray, x: np.ndarray, a: np.ndarray, dlt: np.ndarray, out: np.ndarray,
            base: np.ndarray, is_pos: np.ndarray, is_neg: np.ndarray, present: np.ndarray | None = None) -> None:
        """Add the cells at positions ``at``: inputs ``x`` and attributions ``a``, summed in float64
        (float32 batches stay float32 until summed). ``present`` (cells x features) marks the
        features that are inputs of each cell at all (foundation models: a gene not expressed is
        no token, so it has no path gradient)."""
        self.merge(self.partial(at, x, a, dlt, out, base, is_pos, is_neg, present))

    @staticmethod
    def partial(at: np.ndarray, x: np.ndarray, a: np.ndarray, dlt: np.ndarray, out: np.ndarray,
                base: np.ndarray, is_pos: np.ndarray, is_neg: np.ndarray,
                present: np.ndarray | None = None, factors: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One call's contribution (float64 sums over its cells, and its per-cell values), which
        :meth:`merge` adds: computed where the attributions are (a Ray worker), merged in order
        by the driver, it gives the same numbers as :meth:`add`.

        Per cell, what gives the top features' attributions once they are known is staged:
        the attributor's gradient factors (float32, :func:`stage_factors`), or else the
        attributions themselves in float16."""
        at = np.asarray(at, dtype=np.int64)
        group = np.where(is_pos[at], 1, np.where(is_neg[at], 0, -1)).astype(np.int8)
        sums, attr_sum = column_sums(a, x, base, group, present)
        part = {"at": at, **sums}
        if factors is not None:
            part["staged"] = np.ascontiguousarray(factors, dtype=np.float32)
        else:
            part["staged"] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.float16).numpy()
        part["f_x"], part["attr_sum"] = np.asarray(out, dtype=np.float64), attr_sum
        part["delta"] = np.asarray(dlt, dtype=np.float64)
        return part

    def merge(self, part: dict[str, np.ndarray]) -> None:
        """Add one :meth:`partial` (calls merged in the order they were made)."""
        at = part["at"]
        self.abs += part["abs"]
        for flag, name in ((True, "pos"), (False, "neg")):
            self.attr[flag] += part[f"attr_{name}"]
            self.x[flag] += part[f"x_{name}"]
        self.ad += part["ad"]
        self.dd += part["dd"]
        for name, total in self.pos.items():
            total += part[f"{name}_pos"]
        if self.staged is None:
            staged = part["staged"]
            self.staged = np.zeros((self.n_cells, staged.shape[1]), dtype=staged.dtype)
        if at.size and at[-1] - at[0] == at.size - 1 and (np.diff(at) == 1).all():
            self.staged[at[0]:at[-1] + 1] = part["staged"]  # a block copy, much faster on fresh pages
        else:
            self.staged[at] = part["staged"]
        self.f_x[at], self.attr_sum[at], self.delta[at] = part["f_x"], part["attr_sum"], part["delta"]

    def kept_attributions(self, kept: np.ndarray, inputs: np.ndarray, attributor=None,
                          chunk: int = 4096) -> np.ndarray:
        """Every cell's attributions of the features ``kept`` (cells x len(kept), float32), from
        what was staged; ``inputs``: the cells' model inputs of those features, and
        ``attributor`` the one whose factors were staged (when they were)."""
        if self.staged is None:
            return np.zeros((self.n_cells, kept.size), dtype=np.float32)
        if self.staged.dtype == np.float16:
            return self.staged[:, kept].astype(np.float32)
        return np.vstack([attributor.attributions_of(self.staged[s:s + chunk], inputs[s:s + chunk], kept)
                          for s in range(0, self.n_cells, chunk)])


def stage_factors(attributor: Attributor, n_features: int) -> bool:
    """Whether to stage the attributor's gradient factors (float32) per cell rather than the
    attributions (float16): where they are fewer bytes (Dist_VAE: 2,233 values, 8.9 kB per
    cell, against 38.5 kB for 19,264 genes), and the top features' attributions are computed
    from them again in float32."""
    width = attributor.factor_width()
    return width is not None and 4 * width < 2 * n_features


def attribution_calls(inputs: ModelInput, attributor: Attributor, position: np.ndarray, is_pos, is_neg,
                      base: np.ndarray, should_stop=None):
    """The attribution pass, call by call: yields ``("raw", rows' data)`` for each batch of
    ``inputs`` holding chosen cells (the data as given, aligned to the model's features), then
    ``("call", part)`` for each call of the attributor on at most ``MAX_CELLS_PER_CALL`` of them
    (:meth:`_Sums.partial`). ``position[i]`` is the place of row ``i`` among the explained cells
    (-1: not explained). One process and the shards of a Ray run (rows cut on batch boundaries)
    make the same calls on the same cells."""
    per_call = max(1, min(MAX_CELLS_PER_CALL, attributor.internal_batch_size))
    factors = stage_factors(attributor, base.size)
    for _stop, idx, x, raw in inputs.batches(sparse=attributor.factorised, with_raw=True):
        at_all = position[idx]
        keep = np.flatnonzero(at_all >= 0)
        if keep.size == 0:
            continue
        if keep.size < idx.size:
            x, raw, at_all = x[keep], raw[keep], at_all[keep]
        yield "raw", raw
        h = attributor.first_layer(x)  # the batch's wide product at once: its weights are read once
        for s in range(0, at_all.size, per_call):
            if should_stop is not None and should_stop():
                raise Cancelled("Attribution cancelled; nothing was changed.")
            xi, at = x[s:s + per_call], at_all[s:s + per_call]
            xi = xi.toarray() if sp.issparse(xi) else xi
            a, dlt, out, *g = attributor(xi, None if h is None else h[s:s + per_call], with_factors=factors)
            yield "call", _Sums.partial(at, xi, a, dlt, out, base, is_pos, is_neg, factors=g[0] if g else None)


def stack_raw(raw_parts: list):
    return sp.vstack(raw_parts, format="csr") if sp.issparse(raw_parts[0]) else np.vstack(raw_parts)


def _integrate(inputs: ModelInput, attributor: Attributor, rows: np.ndarray, is_pos, is_neg, base: np.ndarray,
               say, should_stop):
    """Integrated gradients of every chosen cell, in batches read through ``inputs`` (one pass).

    Returns the sums and the chosen cells' data as given (aligned to the model's features, in
    the order of ``rows``), read in the same pass for the kept inputs and the DE test.
    """
    n_cells = rows.size
    sums = _Sums(base.size, n_cells)
    position = np.full(inputs.n_obs, -1, dtype=np.int64)
    position[rows] = np.arange(n_cells)
    done, eta, raw_parts = 0, Eta(), []
    for kind, value in attribution_calls(inputs, attributor, position, is_pos, is_neg, base, should_stop):
        if kind == "raw":
            raw_parts.append(value)
            continue
        sums.merge(value)
        done += value["at"].size
        say(0.02 + 0.88 * done / n_cells, f"{done:,} of {n_cells:,} cells · {eta.text(done / n_cells)}")
    return sums, stack_raw(raw_parts)


def _output_noise(sums: _Sums, f_base) -> float:
    """The largest |f(x) - f(baseline)| that is float rounding, not a change (:data:`OUTPUT_NOISE`)."""
    scale = max(1.0, float(np.max(np.abs(f_base))), float(np.max(np.abs(sums.f_x), initial=0.0)))
    return OUTPUT_NOISE * scale


def _nothing_to_attribute(sums: _Sums, f_base, base: np.ndarray, base_title: str, target_title: str) -> str | None:
    """Why there is nothing to attribute, or None: every explained cell's input equals the baseline
    (e.g. identical cells against their own mean: every attribution is 0), or the model's output at
    every cell equals its output at the baseline (the attributions of each cell sum to 0). Either
    way the genes have no ranking, and more integration steps change nothing."""
    distance = float(np.sqrt(max(float(np.sum(sums.dd)), 0.0) / max(sums.n_cells, 1)))  # rms over cells of |x - b|
    if distance <= INPUT_NOISE * max(1.0, float(np.linalg.norm(np.asarray(base, dtype=np.float64)))):
        return (f"Nothing to attribute: the model input of every explained cell equals the baseline ({base_title}), "
                "as when all the cells are identical, so every attribution is 0 and the genes have no ranking. More "
                "integration steps cannot change this; another baseline (e.g. zero, no expression) asks what the "
                "cells' own expression contributes.")
    change = np.abs(sums.f_x - f_base)
    if change.size and float(change.max()) <= _output_noise(sums, f_base):
        return (f"Nothing to attribute: the model gives every explained cell the same {target_title} as the "
                f"baseline ({base_title}; the largest difference is {float(change.max()):.1e}), so each cell's "
                "attributions add up to 0 and the genes have no meaningful ranking. More integration steps cannot "
                "change this.")
    return None


def _without_ranking(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranking table when there is nothing to attribute: every feature, with no rank."""
    ranking = ranking.copy()
    ranking["rank"] = np.nan
    return ranking


def _completeness(sums: _Sums, f_base: float, n_steps: int, warn: list[str],
                  nothing: str | None = None) -> tuple[dict, np.ndarray]:
    """The completeness summary and each cell's relative error ``|delta| / max(|f(x) - f(b)|, floor)``.

    The floor, 10% of the median change, keeps cells that barely differ from the baseline from
    dividing by ~0. A cell whose change is float rounding (:data:`OUTPUT_NOISE`) has no relative
    error at all (NaN: it would be a ratio of two rounding errors) and is left out of the summary,
    which counts it (``n_cells_without_change``). ``nothing``: :func:`_nothing_to_attribute`'s
    words; the summary then measures nothing and no advice on the steps is given."""
    diff = np.abs(sums.f_x - f_base)
    changed = diff > _output_noise(sums, f_base)
    use = changed if changed.any() else np.ones_like(changed)  # none changed: nothing to attribute (said)
    floor = max(0.1 * float(np.median(diff[use])), 1e-12)
    rel = np.abs(sums.delta) / np.maximum(diff, floor)
    summary = rel[use]
    if changed.any():
        rel = np.where(changed, rel, np.nan)
    out = {"tolerance": COMPLETENESS_TOLERANCE,
           "median_relative_error": round_or_none(np.median(summary), 6),
           "p90_relative_error": round_or_none(np.quantile(summary, 0.9), 6),
           "max_relative_error": round_or_none(summary.max(), 6),
           "max_abs_delta": round_or_none(np.abs(sums.delta).max(), 8),
           "n_cells_over_tolerance": int((summary > COMPLETENESS_TOLERANCE).sum()),
           "n_cells_without_change": int((~changed).sum())}
    out["ok"] = bool(np.median(summary) <= COMPLETENESS_TOLERANCE)
    if nothing:
        out.update(ok=True, nothing_to_attribute=True)
    elif not out["ok"]:
        warn.append(f"Integrated gradients did not converge well: the median completeness error is "
                    f"{np.median(summary):.1%} (tolerance {COMPLETENESS_TOLERANCE:.0%}). Increase n_steps "
                    f"(e.g. to {2 * int(n_steps)}).")
    elif out["n_cells_over_tolerance"] > 0.1 * summary.size:
        warn.append(f"{out['n_cells_over_tolerance']:,} cells have a completeness error above "
                    f"{COMPLETENESS_TOLERANCE:.0%}; their attributions are approximate (raise n_steps).")
    return out, rel


def completeness_text(completeness: dict) -> str:
    """The completeness summary of :func:`explain` as one sentence, in percentages, as the terminal
    and the HTML report print it (the Biomarkers page shows the same numbers)."""
    def percent(v) -> str:
        return "—" if v is None else "< 0.01%" if 0 < v < 1e-4 else f"{v:.2%}"

    tolerance = completeness.get("tolerance")
    return (f"Completeness error: median {percent(completeness.get('median_relative_error'))}, max "
            f"{percent(completeness.get('max_relative_error'))} (tolerance "
            f"{'—' if tolerance is None else f'{tolerance:.0%}'}).")


def _ranking(names: list[str], sums: _Sums, n_pos: int, n_neg: int, base: np.ndarray,
             population: tuple[int, int] | None = None,
             in_data: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The ranking table (feature order) and the order of the features by mean |attribution|.

    ``population``: the scored cells of each group ``(resistant, sensitive)`` when the explained
    cells over-represent one (:func:`_choose_cells`): the overall means (mean |attribution|,
    mean attribution, input gradient) then weight each group's mean by its share of them; the
    per-group columns are each group's own means either way.

    Ties (equal mean |attribution|, e.g. features whose attribution is 0 in every cell) are
    ordered as the model lists its features, each with its own rank. ``in_data``: which features
    are in the data; the others (0 in every cell, so attribution 0 by construction) come last
    and have no rank (``<NA>``: empty in biomarkers.csv)."""
    n = len(names)
    with np.errstate(invalid="ignore", divide="ignore"):
        if population is not None and n_pos and n_neg:
            w_pos, w_neg = population[0] / n_pos, population[1] / n_neg  # cells each explained cell stands for
            total = w_pos * n_pos + w_neg * n_neg
            mean_abs = (w_pos * sums.pos["abs"] + w_neg * (sums.abs - sums.pos["abs"])) / total
            mean_attr = (w_pos * sums.attr[True] + w_neg * sums.attr[False]) / total
            ad = w_pos * sums.pos["ad"] + w_neg * (sums.ad - sums.pos["ad"])
            dd = w_pos * sums.pos["dd"] + w_neg * (sums.dd - sums.pos["dd"])
        else:
            mean_abs = sums.abs / sums.n_cells
            mean_attr = (sums.attr[True] + sums.attr[False]) / max(n_pos + n_neg, 1)
            ad, dd = sums.ad, sums.dd
        gradient = np.where(dd > 0, ad / np.where(dd > 0, dd, 1.0), 0.0)
        ranking = pd.DataFrame({
            "feature": names,
            "mean_abs_attribution": mean_abs,
            "mean_attribution": mean_attr,
            "mean_attribution_resistant": sums.attr[True] / n_pos if n_pos else np.nan,
            "mean_attribution_sensitive": sums.attr[False] / n_neg if n_neg else np.nan,
            "input_gradient": gradient,
            "direction": np.where(gradient > 0, "resistance", np.where(gradient < 0, "sensitivity", "none")),
            "baseline_input": base,
            "mean_input_resistant": sums.x[True] / n_pos if n_pos else np.nan,
            "mean_input_sensitive": sums.x[False] / n_neg if n_neg else np.nan,
        })
    present = np.ones(n, dtype=bool) if in_data is None else np.asarray(in_data, dtype=bool)
    order = np.lexsort((np.arange(n), -ranking["mean_abs_attribution"].to_numpy(), ~present))
    rank = np.full(n, np.nan)
    ranked = order[present[order]]  # the features in the data, best first
    rank[ranked] = np.arange(1, ranked.size + 1)
    ranking.insert(0, "rank", pd.array(rank, dtype="Int64"))  # <NA> for features absent from the data
    return ranking, order


def _kept_inputs(inputs: ModelInput, raw, kept: np.ndarray, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Model-input values of the kept features for the explained cells (``rows``), from their
    data as read in the attribution pass (no second pass)."""
    parts = [inputs.model_input_of(raw[s:s + chunk], columns=kept, rows=rows[s:s + chunk])
             for s in range(0, raw.shape[0], chunk)]
    return np.vstack(parts) if parts else np.zeros((0, kept.size), dtype=np.float32)


def features_in_data(inputs: ModelInput, bundle) -> np.ndarray:
    """Which model input features are in the data (genes the data lack are 0 in every cell)."""
    if bundle.input_kind == "expression":
        return np.asarray(np.abs(inputs.source.alignment.matrix).sum(axis=0)).ravel() > 0
    return np.ones(inputs.spec.input_dim, dtype=bool)


def _de_columns(inputs: ModelInput, bundle, raw, rows: np.ndarray, is_pos, is_neg, pos: str, neg: str,
                run_de: bool, in_data: np.ndarray | None = None) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Group means of the data as given (``raw``: the explained cells' (``rows``) data aligned to
    the model's features), the Wilcoxon test, and which features are in the data
    (:func:`features_in_data`, when not given)."""
    n_features = inputs.spec.input_dim
    if in_data is None:
        in_data = features_in_data(inputs, bundle)
    present = np.flatnonzero(in_data)
    if present.size < n_features:  # the columns first, then float64: one float64 copy, this one's own
        raw = raw[:, present]
    raw = sp.csr_matrix(raw, dtype=np.float64, copy=True) if sp.issparse(raw) else np.array(raw, dtype=np.float64)
    if bundle.input_kind == "expression":
        from scatd_core.preprocess import detect_value_type

        kind = "counts" if inputs.counts_detected else detect_value_type(raw)["kind"]
    else:
        kind = "embedding"
    totals = inputs.library_sizes(rows) if kind == "counts" else None  # counts scaled as the model input
    cols, info = de_table(raw, present, n_features, kind, is_pos, is_neg, pos, neg, run_de, own=True, totals=totals)
    return cols, info, in_data


def de_table(raw, present: np.ndarray, n_features: int, kind: str, is_pos, is_neg, pos: str, neg: str,
             run_de: bool, own: bool = False, totals: np.ndarray | None = None) -> tuple[pd.DataFrame, dict]:
    """Group means of the data as given and the Wilcoxon test between the predicted groups.

    ``raw`` holds the explained cells' values of the features ``present`` (of ``n_features``);
    ``kind`` is their value type (:func:`~scatd_core.preprocess.detect_value_type`), or
    ``"embedding"`` for embedding features (tested as they are). ``own``: ``raw`` is a float
    copy made for this call, which the log scale may overwrite (one copy fewer in memory).
    ``totals``: each cell's counts over all the data's genes, to scale counts by (default: their
    sum over the features of ``raw``, the model's genes).
    """
    cols = pd.DataFrame(np.nan, index=range(n_features),
                        columns=["mean_data_resistant", "mean_data_sensitive", "logfoldchange", "de_score", "de_pval",
                                 "de_pval_adj"])
    n_pos, n_neg = int(is_pos.sum()), int(is_neg.sum())
    if n_pos:
        cols.loc[present, "mean_data_resistant"] = np.asarray(raw[is_pos].mean(axis=0)).ravel()
    if n_neg:
        cols.loc[present, "mean_data_sensitive"] = np.asarray(raw[is_neg].mean(axis=0)).ravel()
    if not run_de:
        return cols, {"method": "none"}
    if n_pos < 2 or n_neg < 2:
        return cols, {"method": "none", "reason": f"the test needs at least 2 explained cells in each predicted "
                                                  f"group, and the explained cells hold {n_pos:,} {pos} and "
                                                  f"{n_neg:,} {neg}"}
    if kind != "embedding":
        over = "the model's genes" if totals is None else "all the cell's genes"
        if kind == "counts" and totals is None:
            totals = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
        de_matrix, log_ok = log_scale(raw, kind, totals if kind == "counts" else None, copy=not own)
        del raw  # overwritten when own: de_matrix from here
        scale = {"counts": f"log1p of counts per 10k (over {over})", "tpm_like": "log1p of the values",
                 "log_normalized": "the values as given (log scale)"}.get(kind, "the values as given")
    else:
        kind, de_matrix, log_ok = "embedding", raw, False
        scale = "the embedding features before AdaIN (a per-feature affine map, which a rank test ignores)"
    keep_cells = is_pos | is_neg
    groups = np.where(is_pos, pos, neg)[keep_cells]
    de = differential_expression(de_matrix if keep_cells.all() else de_matrix[keep_cells], groups, pos, neg, log_ok)
    cols.loc[present, ["logfoldchange", "de_score", "de_pval", "de_pval_adj"]] = de.to_numpy()
    info = {"method": "Wilcoxon rank-sum (the statistic of scanpy rank_genes_groups: tie-corrected z-score, "
                      "Benjamini-Hochberg)",
            "compared": f"predicted {pos} ({n_pos:,}) vs {neg} ({n_neg:,}) among the explained cells",
            "data_kind": kind, "data_scale": scale,
            "logfoldchange": "log2, resistant vs sensitive" if log_ok else
            "not computed: the data are not on a log-expression scale"}
    return cols, info


def _de_rank(ranking: pd.DataFrame) -> pd.Series:
    abs_score = ranking["de_score"].abs().to_numpy()
    de_rank = np.full(len(ranking), np.nan)
    finite = np.flatnonzero(np.isfinite(abs_score))
    de_rank[finite[np.argsort(-abs_score[finite], kind="stable")]] = np.arange(1, finite.size + 1)
    return pd.array(de_rank, dtype="Int64")  # all <NA> without a DE test (h5ad cannot store a Float64 array)


# --------------------------------------------------------------------------- main entry

def explain(
    adata: ad.AnnData,
    bundle,
    *,
    inputs: ModelInput | None = None,
    baseline: str = "mean",
    n_steps: int = 50,
    target: str = "logit",
    max_cells: int | None = None,
    seed: int = 0,
    n_reference_cells: int = N_REFERENCE_CELLS,
    keep_top: int | None = 100,
    differential_expression: bool = True,
    device: str = "auto",
    internal_batch_size: int | None = None,
    factorise: bool = True,
    batch_size: int = 512,
    key_added: str | None = None,
    store_result: bool = True,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    _integrator: Callable | None = None,
) -> "Explanation":
    """Rank the model's input genes (or embedding features) by integrated-gradients attribution.

    Parameters
    ----------
    adata
        A dataset annotated by :func:`scatd_core.predict.predict` with this ``bundle``; the
        predicted groups are its current calls (``obs['<p>_label']``, at the threshold set there).
    bundle
        The drug model that made the predictions.
    inputs
        The :class:`~scatd_core.inputs.ModelInput` the prediction used (reused: no second
        alignment or statistics pass); built when not given, with the prediction's QC mask.
    baseline
        ``"mean"`` (default), ``"zero"``, ``"random"`` or ``"mix"`` (see :mod:`scatd_core.explain`).
    n_steps
        Quadrature points of the path integral (captum Gauss-Legendre); raise it when the
        completeness warning appears.
    target
        ``"logit"`` (default: logit P(resistant)), ``"raw_logit"`` or ``"prob"``.
    max_cells
        Explain at most this many scored cells: a random subsample stratified by predicted
        label (stated in ``info["cells"]``). Default: all scored cells.
    seed
        Seed of the subsample and of the ``random``/``mix`` reference cells.
    n_reference_cells
        Cells averaged into the ``random``/``mix`` baseline (the original used 10).
    keep_top
        Keep per-cell attributions and input values of the best ``keep_top`` features
        (``None``: all).
    differential_expression
        Also run the Wilcoxon test between predicted groups and the agreement statistics.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    internal_batch_size
        Interpolated inputs per forward pass (captum); default sized to a memory budget.
    factorise
        Integrate through the first layer's outputs (exact, about ``n_steps`` times faster for
        Dist_VAE; see :class:`~scatd_core.explain._attribution.Attributor`); ``False`` runs
        captum on the whole model.
    batch_size
        Cells read and transformed at once (when ``inputs`` is built here).
    key_added
        Prefix of the prediction to explain (default ``"scatd"``).
    store_result
        Write the result into ``adata`` (:func:`store`).
    progress
        Called with (fraction done, message with a time estimate).
    should_stop
        Polled between batches; returning True raises :class:`~scatd_core.errors.Cancelled`.

    Returns
    -------
    :class:`Explanation`. With ``store_result`` it also sets ``adata.uns['scatd_biomarkers']``
    (ranking, settings, completeness, DE, agreement), ``adata.obsm['scatd_attributions']`` and
    ``adata.obsm['scatd_attribution_inputs']`` (cells x top features; NaN rows for cells not
    explained) and ``adata.obs['scatd_explained']``.
    """
    keys = result_keys(key_added)
    _check(adata, bundle, keys, baseline, target, n_steps, max_cells, n_reference_cells, seed)
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    say(0.0, "reading the model input")
    dev, model, labels, inputs, pos, neg = prediction_context(adata, bundle, keys, device, inputs, batch_size)
    info_pred = adata.uns[keys.run]
    scored_rows = np.flatnonzero(inputs.usable & adata.obs[keys.scored].to_numpy(dtype=bool))
    if scored_rows.size == 0:
        raise InputError("No scored cell to explain.", "Check the prediction's warnings on the Predict page.")
    notes, warn = [], []
    rows, how, population = _choose_cells(labels, scored_rows, max_cells, seed, pos, neg)
    explained_labels = labels[rows]
    is_pos, is_neg = explained_labels == pos, explained_labels == neg
    if not is_pos.any() or not is_neg.any():
        warn.append(f"All explained cells are predicted {pos if is_pos.any() else neg}: group comparisons "
                    "(signed means per group, DE) are not available.")
    names = feature_names(bundle)
    base_vec, reference_cells = baseline_vector(inputs, baseline, n_reference_cells, seed)
    if bundle.input_kind == "embedding":
        notes.append(f"{bundle.backbone} attributions are per embedding feature ({names[0]} ... {names[-1]}): "
                     "for gene-level biomarkers through the foundation model, explain the expression matrix the "
                     "embeddings are computed from with `scatd explain --level genes` "
                     "(scatd_core.foundation.explain_genes).")
    attributor = Attributor(model, target, bundle.positive_index, base_vec, n_steps, internal_batch_size, dev,
                            factorise=factorise)
    say(0.02, f"integrated gradients on {rows.size:,} cells")
    t_ig = time.perf_counter()
    sums, raw = (_integrator or _integrate)(inputs, attributor, rows, is_pos, is_neg, base_vec.astype(np.float64), say,
                           should_stop)
    seconds_ig = time.perf_counter() - t_ig
    base_title = baseline_title(baseline, bundle, len(reference_cells), seed)
    nothing = _nothing_to_attribute(sums, attributor.f_base, base_vec, base_title, TARGET_TITLES[target])
    if nothing:
        warn.insert(0, nothing)
    completeness, rel = _completeness(sums, attributor.f_base, n_steps, warn, nothing)
    n_pos, n_neg = int(is_pos.sum()), int(is_neg.sum())
    in_data = features_in_data(inputs, bundle)
    ranking, order = _ranking(names, sums, n_pos, n_neg, base_vec,
                              None if population is None else (population[pos], population[neg]), in_data)
    kept = order if keep_top is None else order[: int(keep_top)]
    kept_inputs = _kept_inputs(inputs, raw, kept, rows)
    attributions = sums.kept_attributions(kept, kept_inputs, attributor)

    say(0.92, "differential expression between the predicted groups")
    t_de = time.perf_counter()
    de_cols, de_info, in_data = _de_columns(inputs, bundle, raw, rows, is_pos, is_neg, pos, neg,
                                            differential_expression, in_data)
    seconds_de = time.perf_counter() - t_de
    del raw
    ranking = pd.concat([ranking, de_cols], axis=1)
    ranking["de_rank"] = _de_rank(ranking)
    ranking["in_data"] = in_data
    ranking = with_threshold(ranking, info_pred["threshold"])
    if bundle.input_kind == "expression" and not in_data.all():
        notes.append(f"{int((~in_data).sum()):,} of the model's {len(names):,} genes are absent from the data: "
                     "they are 0 in every cell and in a data-derived baseline, so their attribution is 0 "
                     "(listed last, with in_data = False and no rank).")
    ranking = ranking.iloc[order].reset_index(drop=True)[list(RANKING_COLUMNS)]
    if nothing:
        ranking = _without_ranking(ranking)

    cells = pd.DataFrame({"row": rows, "label": explained_labels,
                          "prob_resistant": adata.obs[keys.prob].to_numpy()[rows], "target": sums.f_x,
                          "baseline_target": attributor.f_base, "attribution_sum": sums.attr_sum,
                          "delta": sums.delta, "relative_error": rel},
                         index=pd.Index(adata.obs_names[rows].astype(str), name="cell_id"))
    import captum

    info = {
        "method": f"Integrated gradients (captum {captum.__version__}, Gauss-Legendre, {int(n_steps)} steps)",
        "target": target, "target_title": TARGET_TITLES[target], "baseline": baseline, "baseline_title": base_title,
        "baseline_cells": [str(adata.obs_names[i]) for i in reference_cells], "baseline_target": attributor.f_base,
        "signed_mean_near_zero": baseline == "mean" or (baseline == "zero" and zero_is_mean(bundle)),
        "n_steps": int(n_steps), "seed": int(seed), "threshold": info_pred["threshold"]["value"],
        "threshold_calibrated": bool(info_pred["threshold"].get("calibrated")),
        "threshold_detail": info_pred["threshold"].get("detail", ""),
        "prediction_key": keys.prefix, "positive_label": pos, "negative_label": neg,
        "model": {"name": bundle.name, "backbone": bundle.backbone, "drug": bundle.drug or "",
                  "weights_sha256": bundle.manifest.get("weights_sha256", "")},
        "features": {"level": "gene" if bundle.input_kind == "expression" else "embedding feature",
                     "n": len(names), "n_in_data": int(in_data.sum()), "n_kept_per_cell": int(kept.size)},
        "cells": {"n_scored": int(scored_rows.size), "n_explained": int(rows.size), "n_resistant": n_pos,
                  "n_sensitive": n_neg, "subsampled": bool(rows.size < scored_rows.size), "how": how},
        "completeness": completeness, "differential_expression": de_info,
        "agreement": agreement(ranking) if de_info["method"] != "none" and not nothing else {},
        **({"nothing_to_attribute": nothing} if nothing else {}),
        "device": device_description(dev), "internal_batch_size": attributor.internal_batch_size,
        "first_layer_factorised": attributor.factorised,
        "seconds": {"integrated_gradients": round(seconds_ig, 3), "differential_expression": round(seconds_de, 3),
                    "total": round(time.perf_counter() - t0, 3)},
        "warnings": warn, "notes": notes,
    }
    info["statement"] = (f"{info['method']} of {info['target_title']} with respect to the {len(names):,} model "
                         f"input {info['features']['level']}s; baseline: {base_title}; cells: {how}. "
                         + groups_text(info_pred["threshold"], pos, neg))
    result = Explanation(ranking=ranking, cells=cells, features=[names[j] for j in kept],
                         attributions=attributions, inputs=kept_inputs, baseline=base_vec, info=info)
    last_stop_check(say, should_stop, store_result)
    # the last report, before the store: a stop that lands on it leaves the AnnData as it was, and
    # none can land after the store (the app said "stopped, the ranking shown before is kept" then)
    say(1.0, f"done in {info['seconds']['total']:.0f} s")
    if store_result:
        store(adata, result)
    return result


def last_stop_check(say, should_stop, store_result: bool) -> None:
    """The stop check after the differential-expression test, before the result is stored: a
    progress report (the app's stops there when the run was cancelled meanwhile) and a poll of
    ``should_stop``. A run stopped during the test (or any time after the last attribution
    batch) thus leaves the AnnData as it was, the ranking shown before included."""
    say(0.98, "storing the ranking" if store_result else "finishing")
    if should_stop is not None and should_stop():
        raise Cancelled("The gene ranking was cancelled; nothing was changed.")


# --------------------------------------------------------------------------- in the AnnData

def store(adata: ad.AnnData, result: Explanation) -> None:
    """Write an :class:`Explanation` into ``adata`` (the fields listed in :func:`explain`)."""
    n = adata.n_obs
    rows = result.cells["row"].to_numpy()
    for key, values in ((_keys.ATTRIBUTIONS, result.attributions), (_keys.ATTRIBUTION_INPUTS, result.inputs)):
        full = np.full((n, len(result.features)), np.nan, dtype=np.float32)
        full[rows] = values
        adata.obsm[key] = pd.DataFrame(full, index=adata.obs_names, columns=result.features)
    explained = np.zeros(n, dtype=bool)
    explained[rows] = True
    adata.obs[_keys.EXPLAINED] = explained
    cells = result.cells.drop(columns=["label", "prob_resistant"]).reset_index()
    adata.uns[_keys.BIOMARKERS] = {"ranking": result.ranking, "cells": cells, "info": json_safe(result.info),
                                   "baseline": np.asarray(result.baseline, dtype=np.float32)}


def out_of_date(adata: ad.AnnData) -> str | None:
    """Why the ranking stored by :func:`explain` no longer matches the calls in ``adata`` (a
    sentence naming what changed and what to do), or ``None`` when it matches or none is stored.

    The threshold may change after an explanation (calibration, the Cells page's slider). The
    attributions and the ranking by mean |attribution| do not depend on it; the explained
    subsample (stratified by the calls), the per-group columns and the differential-expression
    comparison between the predicted groups do."""
    stored = adata.uns.get(_keys.BIOMARKERS)
    if stored is None:
        return None
    info = stored["info"]
    keys = result_keys(info.get("prediction_key"))
    run = adata.uns.get(keys.run)
    if run is None:
        return None
    model = info.get("model", {})
    if model.get("weights_sha256") and model.get("weights_sha256") != run.get("model", {}).get("weights_sha256"):
        return (f"The biomarkers were computed for model {model.get('name')}, not the model of these calls "
                f"({run.get('model', {}).get('name')}); compute them again.")
    then, now = info.get("threshold"), run.get("threshold", {}).get("value")
    if then is None or now is None or abs(float(then) - float(now)) < 1e-9:
        return None
    cells = info.get("cells", {})
    return (f"The biomarkers were computed at threshold {float(then):.3f} (explained cells: "
            f"{cells.get('n_resistant', 0):,} resistant, {cells.get('n_sensitive', 0):,} sensitive); the calls now use "
            f"{float(now):.3f}. The ranking by mean |attribution| does not depend on the threshold, but the per-group "
            "columns, the differential-expression comparison and the explained subsample do: compute the biomarkers "
            "again to update them.")


def from_adata(adata: ad.AnnData) -> Explanation | None:
    """The :class:`Explanation` stored in ``adata`` by :func:`explain`, or ``None``."""
    stored = adata.uns.get(_keys.BIOMARKERS)
    if stored is None or _keys.ATTRIBUTIONS not in adata.obsm:
        return None
    info = stored["info"]
    cells = stored["cells"].set_index("cell_id")
    rows = cells["row"].to_numpy().astype(int)
    keys = result_keys(info.get("prediction_key"))
    cells.insert(1, "label", adata.obs[keys.label].astype(str).to_numpy()[rows])
    cells.insert(2, "prob_resistant", adata.obs[keys.prob].to_numpy()[rows])
    attributions = adata.obsm[_keys.ATTRIBUTIONS]
    features = [str(c) for c in attributions.columns]
    return Explanation(ranking=stored["ranking"], cells=cells, features=features,
                       attributions=np.asarray(attributions, dtype=np.float32)[rows],
                       inputs=np.asarray(adata.obsm[_keys.ATTRIBUTION_INPUTS], dtype=np.float32)[rows],
                       baseline=np.asarray(stored["baseline"]), info=info)
