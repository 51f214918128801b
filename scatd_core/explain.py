"""Integrated-gradients gene rankings: which genes push a cell's prediction toward resistance.

:func:`explain` runs captum's :class:`~captum.attr.IntegratedGradients` on a bundle's drug
model for the cells of a predicted AnnData and aggregates the per-cell attributions into one
row per model input feature (the 19,264 genes of Dist_VAE, the embedding features of
VAE_sf/VAE_gf), next to a plain differential-expression test between the predicted groups, so
the two can be compared.

What is explained, and why
--------------------------
- **The predicted input.** Cells are read through :class:`scatd_core.predict.ModelInput`, the
  very inputs :func:`~scatd_core.predict.predict` scored (gene alignment, transform, AdaIN for
  VAE_sf/VAE_gf). The original attribution scripts skipped AdaIN, so they explained inputs the
  model never saw at inference (reference §10, item 22); here they are the same.
- **The deterministic latent-mean path.** ``model(x)`` classifies the latent mean; the original
  sampled ``z`` inside every gradient evaluation, which made its attributions noisy and its
  convergence deltas far from 0 (reference §6.1).
- **Target** (``target=``):

  ``"logit"`` (default)
      ``logit P(resistant) = log P / (1 - P)``; for the two-class head this is the difference of
      the raw logits, ``l_resistant - l_sensitive``. Integrated gradients are *complete*: per
      cell the attributions sum to ``f(x) - f(baseline)``, so each gene's share of the change in
      the model's log-odds is additive and comparable across cells, which a probability (which
      saturates) is not. The original attributed each raw class logit separately (reference
      §6.2); a single raw logit is not identified by a softmax (adding the same amount to both
      logits leaves every prediction unchanged), so a gene could score high on it and still
      not move P(resistant) at all. The log-odds keeps the additivity the original wanted and
      is exactly the quantity the decision threshold acts on.
  ``"raw_logit"``
      The raw resistant-class logit, as the original computed it (for reproduction).
  ``"prob"``
      P(resistant) itself: attributions sum to a change in probability, which is easier to
      read but compresses cells that are already confidently classified.

- **Baselines** (``baseline=``), as the original's "general baselines" (reference §6.2):
  ``zero`` (no expression), ``mean`` (the mean model input of all scored cells; default),
  ``random`` (the mean of ``n_reference_cells`` seeded random scored cells, the original's IG
  ``random`` default, which is a noisier estimate of the same mean), ``mix``
  (``0.5 * mean + 0.5 * random``). A zero baseline rewards genes for being highly expressed at
  all; the mean baseline asks what makes a cell differ from the average cell of the dataset.

Completeness check and its tolerance
------------------------------------
Integrated gradients approximate a path integral with ``n_steps`` quadrature points (captum's
Gauss-Legendre rule). Per cell the convergence delta (captum's definition) is
``sum(attributions) - (f(x) - f(baseline))``; :func:`explain` reports the *relative*
completeness error ``|delta| / max(|f(x) - f(baseline)|, floor)`` (floor: 10% of the median
``|f(x) - f(baseline)|`` over the explained cells, so cells that barely differ from the
baseline do not divide by ~0) and warns when its median exceeds :data:`COMPLETENESS_TOLERANCE`
= 5%. Why 5%: a ranking of genes only needs the attributions up to a small fraction of the
total change they explain, and the quadrature error is spread over the genes, not
concentrated on one; at that level the top of the ranking does not move when ``n_steps``
changes (16 and 64 steps share at least 19 of their top 20 genes on the planted-program
simulation of ``tests/test_explain.py``). With the smooth scATD networks (Swish, LeakyReLU, batch norm in
eval mode) 50 steps give far smaller errors: a median of 1e-6 and a maximum of 3e-5 for
Dist_VAE at the published size (``benches/README.md``). A large error means
``n_steps`` is too small for that model and should be raised; the tolerance is not tight on
purpose, so that it flags a real problem rather than float noise.

Direction
---------
The signed mean attribution within a predicted group depends on the baseline: with the mean
baseline a gene *lower* in resistant cells and protective when high gets a *positive*
attribution in resistant cells (its low expression pushes them toward resistance). The
``direction`` column therefore uses the sign of ``input_gradient``, the mean path gradient
(weighted by the squared distance from the baseline), which says what *higher* expression of
the gene does to the target whatever the baseline: ``resistance`` (higher expression raises
P(resistant)) or ``sensitivity``. The signed group means are reported too.

Speed and memory
----------------
The input reaches the network only through the first residual block's two linear maps, so the
path integral is taken in their output space and mapped back exactly (:class:`_Attributor`):
the 19,264-wide first layer runs once per cell instead of once per integration step, about
6x faster than captum on the whole model for Dist_VAE at 50 steps, with the same numbers up
to float rounding (``factorise=False`` runs the plain form; both are tested to agree).
Ranking statistics are accumulated in float64 as batches go, so they are exact. Per-cell
attributions are staged at half precision (3 significant digits, far below the quadrature
error) until the top features are known, then only the ``keep_top`` features are kept in
float32: 10,000 cells x 19,264 genes stage in 385 MB. captum's ``internal_batch_size`` bounds
the interpolated inputs and their gradients to about :data:`IG_MEMORY_BUDGET` bytes. For large
data, ``max_cells`` explains a subsample stratified by predicted label (stated in the result).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scatd_core.bundle import Bundle
from scatd_core.errors import InputError
from scatd_core.predict import (
    LABEL_KEY, LATENT_KEY, PROB_KEY, SCORED_KEY, Cancelled, ModelInput, device_description, relabel,
    resolve_device,
)

BASELINES = ("zero", "mean", "random", "mix")
TARGETS = ("logit", "raw_logit", "prob")
COMPLETENESS_TOLERANCE = 0.05
N_REFERENCE_CELLS = 10     # the original's IG ``random`` baseline: the mean of 10 drawn cells
MIX_ALPHA = 0.5            # the original's ``mix``: alpha * mean + (1 - alpha) * random mean
IG_MEMORY_BUDGET = 256 << 20
MAX_CELLS_PER_CALL = 64
TOP_OVERLAP = (20, 100)
FEATURE_PREFIX = {"vae_sf": "scFoundation", "vae_gf": "Geneformer"}
TARGET_TITLES = {"logit": "logit P(resistant)", "raw_logit": "raw resistant logit", "prob": "P(resistant)"}
BASELINE_TITLES = {"zero": "zero (no expression)", "mean": "mean model input of the scored cells",
                   "random": "mean of {k} random scored cells (seed {seed})",
                   "mix": "0.5 x mean + 0.5 x mean of {k} random scored cells (seed {seed})"}


# --------------------------------------------------------------------------- result

@dataclass
class Explanation:
    """The result of :func:`explain`.

    Attributes
    ----------
    ranking
        One row per model input feature, best first (``biomarkers.csv``); columns:
        ``rank, feature, mean_abs_attribution, mean_attribution, mean_attribution_resistant,
        mean_attribution_sensitive, input_gradient, direction, mean_input_resistant,
        mean_input_sensitive, mean_data_resistant, mean_data_sensitive, logfoldchange,
        de_score, de_pval, de_pval_adj, de_rank, in_data``.
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
        The baseline model input, one value per feature.
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

    def per_cell(self, top: int = 20, values: str = "attribution") -> pd.DataFrame:
        """Cells x the ``top`` best features: attributions (or ``values="input"``), with label and P."""
        if values not in ("attribution", "input"):
            raise InputError(f"Unknown values {values!r}; use 'attribution' or 'input'.")
        k = min(int(top), len(self.features))
        matrix = self.attributions if values == "attribution" else self.inputs
        table = pd.DataFrame(matrix[:, :k], index=self.cells.index, columns=self.features[:k])
        front = self.cells[["label", "prob_resistant"]]
        return pd.concat([front, table], axis=1)


# --------------------------------------------------------------------------- helpers

class _TargetOutput(torch.nn.Module):
    """The scalar per cell that is explained, from a module giving the class logits."""

    def __init__(self, logits: torch.nn.Module, target: str, positive_index: int):
        super().__init__()
        self.logits, self.target, self.k = logits, target, positive_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.target == "raw_logit":
            return logits[:, self.k]
        others = torch.cat([logits[:, :self.k], logits[:, self.k + 1:]], dim=1)
        log_odds = logits[:, self.k] - torch.logsumexp(others, dim=1)
        return log_odds if self.target == "logit" else torch.sigmoid(log_odds)


def _linear_parts(layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective ``(weight, bias)`` of a plain or spectral linear layer (eval mode)."""
    weight = layer.weight() if callable(layer.weight) else layer.weight
    return weight.detach(), layer.bias.detach()


class _Tail(torch.nn.Module):
    """The classifier's logits as a function of the first block's two pre-activations
    ``h = [fc(x), downsample(x)]`` (the input reaches the model only through them)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.width = model.Encoder_resblocks[0].fc.out_features

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        first = self.model.Encoder_resblocks[0]
        out = first.activation(first.bn(h[:, :self.width])) + h[:, self.width:]
        for block in self.model.Encoder_resblocks[1:]:
            out = block(out)
        return self.model.classifier(self.model.fc21(out))  # the latent mean, as model(x)


class _Attributor:
    """Integrated gradients of the explained output w.r.t. the model input, with captum.

    Plain form: captum's ``IntegratedGradients`` on the whole model. Factorised form (default,
    exact): the input enters the network only through the first residual block's linear maps
    ``fc`` and ``downsample``, so along the straight IG path their outputs ``h`` move on a
    straight line too, and ``d f / d x = W^T d f / d h``. captum integrates the path gradient
    in ``h`` space (``multiply_by_inputs=False`` gives the average gradient over the path), and
    the attribution of input *i* is ``(x - baseline)_i * (W^T avg_grad_h)_i``: the same
    quadrature, the same numbers up to float rounding (tested), but the 19,264-wide first layer
    is applied once per cell instead of once per step, which makes Dist_VAE attributions about
    ``n_steps`` times cheaper.
    """

    def __init__(self, model, target: str, positive_index: int, baseline: np.ndarray, n_steps: int,
                 internal_batch_size: int | None, device: torch.device, factorise: bool = True):
        from captum.attr import IntegratedGradients

        self.n_steps = int(n_steps)
        self.device = device
        self.forward = _TargetOutput(model, target, positive_index)
        self.base = torch.from_numpy(baseline[None, :]).to(device)
        first = model.Encoder_resblocks[0]
        self.factorised = bool(factorise and first.downsample is not None)
        if self.factorised:
            self.tail = _TargetOutput(_Tail(model), target, positive_index)
            self.w_fc, self.b_fc = _linear_parts(first.fc)
            self.w_ds, self.b_ds = _linear_parts(first.downsample)
            self.ig = IntegratedGradients(self.tail, multiply_by_inputs=False)
            width = self.w_fc.shape[0] + self.w_ds.shape[0]
            self.h_base = self._project(self.base)
        else:
            self.ig = IntegratedGradients(self.forward)
            width = baseline.shape[0]
        self.internal_batch_size = int(internal_batch_size or auto_internal_batch_size(width))
        with torch.no_grad():
            self.f_base = float(self.forward(self.base)[0])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.nn.functional.linear(x, self.w_fc, self.b_fc),
                          torch.nn.functional.linear(x, self.w_ds, self.b_ds)], dim=1)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(attributions, convergence deltas, f(x))`` of a batch of model inputs."""
        xt = torch.from_numpy(x).to(self.device)
        if not self.factorised:
            attr, delta = self.ig.attribute(xt, baselines=self.base, n_steps=self.n_steps,
                                            internal_batch_size=self.internal_batch_size,
                                            return_convergence_delta=True)
            with torch.no_grad():
                out = self.forward(xt)
        else:
            with torch.no_grad():
                h = self._project(xt)
            grad_h = self.ig.attribute(h, baselines=self.h_base, n_steps=self.n_steps,
                                       internal_batch_size=self.internal_batch_size)
            with torch.no_grad():
                width = self.w_fc.shape[0]
                grad_x = grad_h[:, :width] @ self.w_fc + grad_h[:, width:] @ self.w_ds
                attr = (xt - self.base) * grad_x
                out = self.tail(h)  # = forward(x), without the wide first layer again
                delta = attr.sum(dim=1) - (out - self.f_base)
        return (attr.detach().double().cpu().numpy(), delta.detach().double().cpu().numpy(),
                out.detach().double().cpu().numpy())


def feature_names(bundle: Bundle) -> list[str]:
    """Model input feature names: genes for Dist_VAE, ``scFoundation_i`` / ``Geneformer_i`` otherwise."""
    if bundle.genes is not None:
        return list(bundle.genes)
    prefix = FEATURE_PREFIX.get(bundle.backbone, "feature")
    return [f"{prefix}_{i}" for i in range(bundle.architecture.input_dim)]


def stratified_subsample(labels: np.ndarray, max_cells: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of at most ``max_cells`` entries, each label keeping its share.

    Group sizes are proportional (largest remainders), every non-empty group keeps at least one
    cell, and cells are drawn without replacement with ``numpy.random.default_rng(seed)``.
    """
    labels = np.asarray(labels)
    n = labels.size
    if max_cells >= n:
        return np.arange(n)
    groups, counts = np.unique(labels, return_counts=True)
    exact = counts * max_cells / n
    take = np.maximum(np.floor(exact).astype(int), 1)
    while take.sum() > max_cells:  # only when there are more groups than cells to spare
        take[np.argmax(take)] -= 1
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable")[: max_cells - take.sum()]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == g), size=min(t, c), replace=False)
              for g, t, c in zip(groups, take, counts)]
    return np.sort(np.concatenate(chosen))


def auto_internal_batch_size(width: int) -> int:
    """Interpolated inputs per forward pass so that the interpolated inputs (``width`` values
    each), their gradients and the widest activations stay within :data:`IG_MEMORY_BUDGET`."""
    return int(max(1, min(8192, IG_MEMORY_BUDGET // (3 * 4 * max(width, 1)))))


def _check_predictions(adata: ad.AnnData, bundle: Bundle) -> None:
    if PROB_KEY not in adata.obs or LABEL_KEY not in adata.obs or SCORED_KEY not in adata.obs:
        raise InputError(f"Did not find obs['{PROB_KEY}'] and obs['{LABEL_KEY}'].",
                         "Run `scatd_core.predict.predict(adata, bundle)` (the Predict page) first.")
    made_with = adata.uns.get("scatd", {}).get("model", {}).get("weights_sha256")
    this = bundle.manifest.get("weights_sha256")
    if made_with and this and made_with != this:
        name = adata.uns["scatd"]["model"].get("name", "another model")
        raise InputError(f"The predictions in this dataset were made with {name}, not {bundle.name}.",
                         "Predict with this model first, or explain with the model that made the predictions.")


def _baseline(inputs: ModelInput, kind: str, n_reference: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """The baseline vector and the rows of the cells it was drawn from (random/mix)."""
    n_features = inputs.bundle.architecture.input_dim
    if kind == "zero":
        return np.zeros(n_features, dtype=np.float32), []
    mean = None
    if kind in ("mean", "mix"):
        total, count = np.zeros(n_features), 0
        for _stop, _rows, x in inputs.batches():
            total += x.sum(axis=0, dtype=np.float64)
            count += x.shape[0]
        mean = total / count
    if kind == "mean":
        return mean.astype(np.float32), []
    usable = np.flatnonzero(inputs.usable)
    drawn = np.sort(np.random.default_rng(seed).choice(usable, size=min(n_reference, usable.size), replace=False))
    reference = np.vstack([inputs.rows(int(i), int(i) + 1)[1] for i in drawn]).astype(np.float64).mean(axis=0)
    vector = reference if kind == "random" else MIX_ALPHA * mean + (1 - MIX_ALPHA) * reference
    return vector.astype(np.float32), [int(i) for i in drawn]


def _raw_rows(inputs: ModelInput, rows: np.ndarray, columns: np.ndarray, block: int = 1024):
    """The data as given (aligned to the model's features, before transforms) for ``rows``:
    sparse stays sparse. Returns a CSR matrix or an ndarray, rows in the order of ``rows``."""
    src = inputs.source
    parts = []
    for start in range(0, inputs.n_obs, block):
        stop = min(start + block, inputs.n_obs)
        local = rows[(rows >= start) & (rows < stop)] - start
        if local.size == 0:
            continue
        chunk = src.matrix[start:stop]
        chunk = (chunk if sp.issparse(chunk) else np.asarray(chunk))[local]
        if src.alignment is not None:
            chunk = chunk @ src.alignment.matrix
        chunk = sp.csr_matrix(chunk, dtype=np.float64) if sp.issparse(chunk) else np.asarray(chunk, dtype=np.float64)
        parts.append(chunk[:, columns])
    if parts and sp.issparse(parts[0]):
        return sp.vstack(parts, format="csr")
    return np.vstack(parts)


def _log_scale(matrix, kind: str, per_cell_totals: np.ndarray | None):
    """The DE matrix on a natural-log scale where that is meaningful, and whether it is."""
    if kind == "counts":  # log1p of counts per 10k over the model's genes, as the model input
        scale = np.divide(1e4, per_cell_totals, out=np.zeros_like(per_cell_totals), where=per_cell_totals > 0)
        if sp.issparse(matrix):
            out = sp.csr_matrix(sp.diags(scale) @ matrix)
            out.data = np.log1p(out.data)
            return out, True
        return np.log1p(matrix * scale[:, None]), True
    if kind == "tpm_like":
        out = matrix.copy()
        if sp.issparse(out):
            out.data = np.log1p(out.data)
            return out, True
        return np.log1p(out), True
    return matrix, kind == "log_normalized"


def _differential_expression(matrix, groups: np.ndarray, pos: str, neg: str, log_scale: bool) -> pd.DataFrame:
    """Wilcoxon rank-sum test, ``pos`` vs ``neg`` (scanpy ``rank_genes_groups``), per column."""
    import scanpy as sc

    n_cols = matrix.shape[1]
    tmp = ad.AnnData(matrix, obs=pd.DataFrame({"group": pd.Categorical(groups, categories=[neg, pos])},
                                             index=[str(i) for i in range(len(groups))]),
                     var=pd.DataFrame(index=[str(j) for j in range(n_cols)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(tmp, "group", groups=[pos], reference=neg, method="wilcoxon",
                                n_genes=n_cols, tie_correct=True)
        df = sc.get.rank_genes_groups_df(tmp, group=pos)
    df.index = df["names"].astype(int)
    df = df.reindex(range(n_cols))
    return pd.DataFrame({
        "logfoldchange": df["logfoldchanges"].to_numpy(dtype=float) if log_scale else np.nan,
        "de_score": df["scores"].to_numpy(dtype=float),
        "de_pval": df["pvals"].to_numpy(dtype=float),
        "de_pval_adj": df["pvals_adj"].to_numpy(dtype=float),
    })


def _agreement(ranking: pd.DataFrame) -> dict:
    """How the attribution ranking and the DE test agree, over features present in the data."""
    from scipy.stats import spearmanr

    ok = ranking[ranking["in_data"] & np.isfinite(ranking["de_score"])]
    if len(ok) < 3:
        return {}
    rho = spearmanr(ok["mean_abs_attribution"], ok["de_score"].abs()).statistic
    by_attr = ok.sort_values("rank")
    by_de = ok.sort_values("de_rank")
    out = {"n_features_compared": int(len(ok)), "spearman_abs_attribution_vs_abs_de_score": _round(rho)}
    for n in TOP_OVERLAP:
        if len(ok) >= n:
            shared = set(by_attr["feature"].head(n)) & set(by_de["feature"].head(n))
            out[f"top{n}_overlap"] = len(shared)
    top = by_attr.head(TOP_OVERLAP[0])
    signed = top[(top["input_gradient"] != 0) & (top["de_score"] != 0)]
    if len(signed):
        out[f"top{TOP_OVERLAP[0]}_direction_agrees_with_de"] = _round(
            float((np.sign(signed["input_gradient"]) == np.sign(signed["de_score"])).mean()))
    return out


def _round(x, digits: int = 4):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _eta(t0: float, done: int, total: int) -> str:
    if done == 0:
        return ""
    left = (time.perf_counter() - t0) / done * (total - done)
    return f" · about {left:.0f} s left" if left < 120 else f" · about {left / 60:.1f} min left"


# --------------------------------------------------------------------------- main entry

def explain(
    adata: ad.AnnData,
    bundle: Bundle,
    *,
    baseline: str = "mean",
    n_steps: int = 50,
    target: str = "logit",
    max_cells: int | None = None,
    seed: int = 0,
    n_reference_cells: int = N_REFERENCE_CELLS,
    threshold: float | None = None,
    keep_top: int | None = 100,
    differential_expression: bool = True,
    device: str = "auto",
    internal_batch_size: int | None = None,
    factorise: bool = True,
    batch_size: int = 512,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Explanation:
    """Rank the model's input genes (or embedding features) by integrated-gradients attribution.

    Parameters
    ----------
    adata
        A dataset annotated by :func:`scatd_core.predict.predict` with this ``bundle``.
    bundle
        The drug model that made the predictions.
    baseline
        ``"mean"`` (default), ``"zero"``, ``"random"`` or ``"mix"`` (module docstring).
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
    threshold
        Decision threshold that defines the predicted groups; default: the labels in
        ``obs['scatd_label']``.
    keep_top
        Keep per-cell attributions and input values of the best ``keep_top`` features
        (``None``: all).
    differential_expression
        Also run the Wilcoxon test between predicted groups and the agreement statistics.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    internal_batch_size
        Interpolated inputs per forward pass (captum); default sized to
        :data:`IG_MEMORY_BUDGET`.
    factorise
        Integrate through the first layer's outputs (exact, about ``n_steps`` times faster for
        Dist_VAE; see :class:`_Attributor`); ``False`` runs captum on the whole model.
    batch_size
        Cells read and transformed at once.
    progress
        Called with (fraction done, message with a time estimate).
    should_stop
        Polled between batches; returning True raises :class:`scatd_core.predict.Cancelled`.

    Returns
    -------
    :class:`Explanation`. ``adata`` is not modified.
    """
    if bundle.kind != "classifier":
        raise InputError(f"{bundle.name} is a pretrained backbone without a drug head; there is nothing to explain.",
                         "Choose a drug model.")
    if baseline not in BASELINES:
        raise InputError(f"Unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}.")
    if target not in TARGETS:
        raise InputError(f"Unknown target {target!r}; use one of {', '.join(TARGETS)}.")
    if int(n_steps) < 2:
        raise InputError("Integrated gradients need at least 2 steps.", "Use n_steps 50 or more.")
    if max_cells is not None and int(max_cells) < 2:
        raise InputError("max_cells must be at least 2.")
    if n_reference_cells < 1:
        raise InputError("n_reference_cells must be at least 1.")
    _check_predictions(adata, bundle)
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    say(0.0, "reading the model input")

    dev = resolve_device(device)
    model = bundle.load_model(dev)
    inputs = ModelInput(adata, bundle, batch_size)
    info_pred = adata.uns.get("scatd", {})
    pos = info_pred.get("positive_label", bundle.positive_label)
    neg = info_pred.get("negative_label", bundle.negative_label)
    labels = (relabel(adata, threshold) if threshold is not None else adata.obs[LABEL_KEY]).astype(str).to_numpy()
    scored = inputs.usable & adata.obs[SCORED_KEY].to_numpy().astype(bool)
    scored_rows = np.flatnonzero(scored)
    if scored_rows.size == 0:
        raise InputError("No scored cell to explain.", "Check the prediction's warnings on the Predict page.")
    notes, warn = [], []

    # Which cells
    if max_cells is not None and scored_rows.size > int(max_cells):
        rows = scored_rows[stratified_subsample(labels[scored_rows], int(max_cells), seed)]
        parts = [f"{lab} {int((labels[rows] == lab).sum()):,} of {int((labels[scored_rows] == lab).sum()):,}"
                 for lab in (pos, neg)]
        how = (f"a random subsample of {rows.size:,} of the {scored_rows.size:,} scored cells, stratified by "
               f"predicted label ({'; '.join(parts)}; seed {seed})")
    else:
        rows = scored_rows
        how = f"all {rows.size:,} scored cells"
    n_cells = rows.size
    explained_labels = labels[rows]
    is_pos = explained_labels == pos
    is_neg = explained_labels == neg
    if not is_pos.any() or not is_neg.any():
        warn.append(f"All explained cells are predicted {pos if is_pos.any() else neg}: group comparisons "
                    "(signed means per group, DE) are not available.")

    names = feature_names(bundle)
    n_features = len(names)
    base_vec, reference_cells = _baseline(inputs, baseline, n_reference_cells, seed)
    if bundle.input_kind == "embedding":
        notes.append(f"{bundle.backbone} attributions are per embedding feature ({names[0]} ... {names[-1]}): "
                     "gene-level attributions need the foundation model (scFoundation / Geneformer) in the loop, "
                     "which this model does not include.")
    attributor = _Attributor(model, target, bundle.positive_index, base_vec, n_steps, internal_batch_size, dev,
                             factorise=factorise)
    ibs = attributor.internal_batch_size
    f_base = attributor.f_base
    per_call = max(1, min(MAX_CELLS_PER_CALL, ibs))

    # Streamed accumulators (float64) and the half-precision staging of per-cell attributions
    sum_abs = np.zeros(n_features)
    sum_attr = {True: np.zeros(n_features), False: np.zeros(n_features)}
    sum_x = {True: np.zeros(n_features), False: np.zeros(n_features)}
    sum_ad = np.zeros(n_features)
    sum_dd = np.zeros(n_features)
    staged = np.zeros((n_cells, n_features), dtype=np.float16)
    f_x = np.zeros(n_cells)
    attr_sum = np.zeros(n_cells)
    delta = np.zeros(n_cells)
    position = {int(r): i for i, r in enumerate(rows)}
    chosen = np.zeros(inputs.n_obs, dtype=bool)
    chosen[rows] = True
    done, t_ig = 0, time.perf_counter()
    say(0.02, f"integrated gradients on {n_cells:,} cells")
    for _stop, idx, x in inputs.batches():
        keep = chosen[idx]
        idx, x = idx[keep], x[keep]
        for s in range(0, idx.size, per_call):
            if should_stop is not None and should_stop():
                raise Cancelled("Attribution cancelled; nothing was changed.")
            xi = x[s:s + per_call]
            pos_in_result = np.array([position[int(r)] for r in idx[s:s + per_call]])
            a, dlt, out = attributor(xi)
            d = xi.astype(np.float64) - base_vec
            grp = is_pos[pos_in_result]
            sum_abs += np.abs(a).sum(axis=0)
            for flag in (True, False):
                sel = grp if flag else (~grp & is_neg[pos_in_result])
                sum_attr[flag] += a[sel].sum(axis=0)
                sum_x[flag] += xi[sel].sum(axis=0, dtype=np.float64)
            sum_ad += (a * d).sum(axis=0)
            sum_dd += (d * d).sum(axis=0)
            staged[pos_in_result] = a.astype(np.float16)
            f_x[pos_in_result] = out
            attr_sum[pos_in_result] = a.sum(axis=1)
            delta[pos_in_result] = dlt
            done += xi.shape[0]
            say(0.02 + 0.88 * done / n_cells, f"{done:,} of {n_cells:,} cells{_eta(t_ig, done, n_cells)}")
    seconds_ig = time.perf_counter() - t_ig

    # Completeness
    diff = np.abs(f_x - f_base)
    floor = max(0.1 * float(np.median(diff)), 1e-6)
    rel = np.abs(delta) / np.maximum(diff, floor)
    completeness = {
        "tolerance": COMPLETENESS_TOLERANCE,
        "median_relative_error": _round(np.median(rel), 6), "p90_relative_error": _round(np.quantile(rel, 0.9), 6),
        "max_relative_error": _round(rel.max(), 6), "max_abs_delta": _round(np.abs(delta).max(), 8),
        "n_cells_over_tolerance": int((rel > COMPLETENESS_TOLERANCE).sum()),
    }
    completeness["ok"] = bool(np.median(rel) <= COMPLETENESS_TOLERANCE)
    if not completeness["ok"]:
        warn.append(f"Integrated gradients did not converge well: the median completeness error is "
                    f"{np.median(rel):.1%} (tolerance {COMPLETENESS_TOLERANCE:.0%}). Increase n_steps "
                    f"(e.g. to {2 * int(n_steps)}).")
    elif completeness["n_cells_over_tolerance"] > 0.1 * n_cells:
        warn.append(f"{completeness['n_cells_over_tolerance']:,} cells have a completeness error above "
                    f"{COMPLETENESS_TOLERANCE:.0%}; their attributions are approximate (raise n_steps).")

    # Ranking
    n_pos, n_neg = int(is_pos.sum()), int(is_neg.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        gradient = np.where(sum_dd > 0, sum_ad / np.where(sum_dd > 0, sum_dd, 1.0), 0.0)
        ranking = pd.DataFrame({
            "feature": names,
            "mean_abs_attribution": sum_abs / n_cells,
            "mean_attribution": (sum_attr[True] + sum_attr[False]) / max(n_pos + n_neg, 1),
            "mean_attribution_resistant": sum_attr[True] / n_pos if n_pos else np.nan,
            "mean_attribution_sensitive": sum_attr[False] / n_neg if n_neg else np.nan,
            "input_gradient": gradient,
            "direction": np.where(gradient > 0, "resistance", np.where(gradient < 0, "sensitivity", "none")),
            "mean_input_resistant": sum_x[True] / n_pos if n_pos else np.nan,
            "mean_input_sensitive": sum_x[False] / n_neg if n_neg else np.nan,
        })
    order = np.lexsort((np.arange(n_features), -ranking["mean_abs_attribution"].to_numpy()))
    rank = np.empty(n_features, dtype=int)
    rank[order] = np.arange(1, n_features + 1)
    ranking.insert(0, "rank", rank)
    kept = order if keep_top is None else order[: int(keep_top)]
    attributions = staged[:, kept].astype(np.float32)
    del staged

    # Model-input values of the kept features (a cheap second pass: no model)
    kept_inputs = np.zeros((n_cells, kept.size), dtype=np.float32)
    for _stop, idx, x in inputs.batches():
        keep = chosen[idx]
        if keep.any():
            kept_inputs[[position[int(r)] for r in idx[keep]]] = x[keep][:, kept]

    # The data as given, group means and the DE test
    say(0.92, "differential expression between the predicted groups")
    if bundle.input_kind == "expression":
        in_data = np.asarray(np.abs(inputs.source.alignment.matrix).sum(axis=0)).ravel() > 0
    else:
        in_data = np.ones(n_features, dtype=bool)
    present = np.flatnonzero(in_data)
    raw = _raw_rows(inputs, rows, present)  # rows are sorted, so raw's rows follow ``cells``
    raw_pos_mean = np.full(n_features, np.nan)
    raw_neg_mean = np.full(n_features, np.nan)
    if n_pos:
        raw_pos_mean[present] = np.asarray(raw[is_pos].mean(axis=0)).ravel()
    if n_neg:
        raw_neg_mean[present] = np.asarray(raw[is_neg].mean(axis=0)).ravel()
    ranking["mean_data_resistant"] = raw_pos_mean
    ranking["mean_data_sensitive"] = raw_neg_mean
    de_cols = pd.DataFrame(np.nan, index=range(n_features),
                           columns=["logfoldchange", "de_score", "de_pval", "de_pval_adj"])
    de_info: dict = {"method": "none"}
    if differential_expression and n_pos >= 2 and n_neg >= 2:
        if bundle.input_kind == "expression":
            from scatd_core.preprocess import detect_value_type

            kind = "counts" if inputs.counts_detected else detect_value_type(raw)["kind"]
            totals = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel() if kind == "counts" else None
            de_matrix, log_ok = _log_scale(raw, kind, totals)
            scale = {"counts": "log1p of counts per 10k (over the model's genes)", "tpm_like": "log1p of the values",
                     "log_normalized": "the values as given (log scale)"}.get(kind, "the values as given")
        else:
            kind, de_matrix, log_ok = "embedding", raw, False
            scale = "the embedding features before AdaIN (a per-feature affine map, which a rank test ignores)"
        keep_cells = is_pos | is_neg
        groups = np.where(is_pos, pos, neg)[keep_cells]
        de = _differential_expression(de_matrix[keep_cells], groups, pos, neg, log_ok)
        de_cols.iloc[present] = de.to_numpy()
        de_info = {"method": "Wilcoxon rank-sum (scanpy rank_genes_groups, tie-corrected, Benjamini-Hochberg)",
                   "compared": f"predicted {pos} ({n_pos:,}) vs {neg} ({n_neg:,}) among the explained cells",
                   "data_kind": kind, "data_scale": scale,
                   "logfoldchange": "log2, resistant vs sensitive" if log_ok else
                   "not computed: the data are not on a log-expression scale"}
    elif differential_expression:
        de_info = {"method": "none", "reason": "the DE test needs at least 2 explained cells in each predicted group"}
    ranking = pd.concat([ranking, de_cols], axis=1)
    abs_score = ranking["de_score"].abs().to_numpy()
    de_rank = np.full(n_features, np.nan)
    finite = np.flatnonzero(np.isfinite(abs_score))
    de_rank[finite[np.argsort(-abs_score[finite], kind="stable")]] = np.arange(1, finite.size + 1)
    ranking["de_rank"] = pd.array(de_rank, dtype="Int64") if finite.size else pd.array(de_rank, dtype="Float64")
    ranking["in_data"] = in_data
    if bundle.input_kind == "expression" and not in_data.all():
        notes.append(f"{int((~in_data).sum()):,} of the model's {n_features:,} genes are absent from the data: "
                     "they are 0 in every cell and in a data-derived baseline, so their attribution is 0 "
                     "(listed with in_data = False).")
    ranking = ranking.iloc[order].reset_index(drop=True)
    agreement = _agreement(ranking) if de_info["method"] != "none" else {}

    cells = pd.DataFrame({
        "row": rows,
        "label": explained_labels,
        "prob_resistant": adata.obs[PROB_KEY].to_numpy()[rows],
        "target": f_x,
        "baseline_target": f_base,
        "attribution_sum": attr_sum,
        "delta": delta,
        "relative_error": rel,
    }, index=pd.Index(adata.obs_names[rows].astype(str), name="cell_id"))

    import captum

    base_title = BASELINE_TITLES[baseline].format(k=len(reference_cells), seed=seed)
    info = {
        "method": f"Integrated gradients (captum {captum.__version__}, Gauss-Legendre, {int(n_steps)} steps)",
        "target": target, "target_title": TARGET_TITLES[target],
        "baseline": baseline, "baseline_title": base_title,
        "baseline_cells": [str(adata.obs_names[i]) for i in reference_cells],
        "baseline_target": f_base,
        "n_steps": int(n_steps), "seed": int(seed), "threshold": threshold,
        "positive_label": pos, "negative_label": neg,
        "model": {"name": bundle.name, "backbone": bundle.backbone, "drug": bundle.drug or "",
                  "weights_sha256": bundle.manifest.get("weights_sha256", "")},
        "features": {"level": "gene" if bundle.input_kind == "expression" else "embedding feature",
                     "n": n_features, "n_in_data": int(in_data.sum()), "n_kept_per_cell": int(kept.size)},
        "cells": {"n_scored": int(scored_rows.size), "n_explained": int(n_cells), "n_resistant": n_pos,
                  "n_sensitive": n_neg, "subsampled": bool(n_cells < scored_rows.size), "how": how},
        "completeness": completeness,
        "differential_expression": de_info,
        "agreement": agreement,
        "device": device_description(dev), "internal_batch_size": ibs,
        "first_layer_factorised": attributor.factorised,
        "seconds": {"integrated_gradients": round(seconds_ig, 3), "total": round(time.perf_counter() - t0, 3)},
        "warnings": warn, "notes": notes,
    }
    info["statement"] = (f"{info['method']} of {info['target_title']} with respect to the {n_features:,} model "
                         f"input {info['features']['level']}s; baseline: {base_title}; cells: {how}.")
    say(1.0, f"done in {info['seconds']['total']:.0f} s")
    return Explanation(ranking=ranking, cells=cells, features=[names[j] for j in kept],
                       attributions=attributions, inputs=kept_inputs, baseline=base_vec, info=info)


def map_coordinates(adata: ad.AnnData) -> tuple[np.ndarray, str]:
    """2-D coordinates of every cell for plots: ``obsm['X_umap']`` when computed, else the first
    two principal components of the latent space ``obsm['X_scatd']`` (NaN rows stay NaN)."""
    if "X_umap" in adata.obsm:
        return np.asarray(adata.obsm["X_umap"])[:, :2], "UMAP"
    if LATENT_KEY not in adata.obsm:
        raise InputError("The dataset has neither obsm['X_umap'] nor the latent obsm['X_scatd'].",
                         "Run the prediction first.")
    z = np.asarray(adata.obsm[LATENT_KEY], dtype=np.float64)
    ok = np.isfinite(z).all(axis=1)
    coords = np.full((z.shape[0], 2), np.nan)
    if ok.sum() >= 2:
        centred = z[ok] - z[ok].mean(axis=0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        pcs = centred @ vt[:2].T
        coords[ok, : pcs.shape[1]] = pcs
    return coords, "PCA of the scATD latent space (no UMAP computed)"
