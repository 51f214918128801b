"""Batched drug-response inference on an AnnData.

:func:`predict` streams the cells through a bundle's model in batches, so memory grows with the
batch size and not with the number of cells; sparse (and backed) matrices stay sparse until a
batch is densified. Every input cell gets a result row, in input order; a cell that cannot be
scored (non-finite values, or no expression in the model's genes) is flagged, never dropped.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from scatd_core import __version__
from scatd_core.bundle import Bundle
from scatd_core.errors import DeviceError, InputError, ScatdError
from scatd_core.genes import GeneAlignment, align_genes, original_gene_names
from scatd_core.preprocess import apply_input_transform

PROB_KEY = "scatd_prob_resistant"
SD_KEY = "scatd_prob_resistant_sd"
LABEL_KEY = "scatd_label"
SCORED_KEY = "scatd_scored"
LATENT_KEY = "X_scatd"
NOT_SCORED = "not scored"
EMBEDDING_OBSM = {"vae_sf": "X_scfoundation", "vae_gf": "X_geneformer"}
ADAIN_EPS = 1e-8  # on the source std only, as the original
FEW_CELLS_FOR_ADAIN = 50
LOW_COVERAGE = 0.5


class Cancelled(ScatdError):
    """The user stopped a running prediction."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but no GPU is available on this machine.",
                          "Use --device cpu (or auto).")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DeviceError(f"Unknown device {device!r}.", "Use auto, cpu or cuda.") from None


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class _Source:
    """Where the model input comes from: X by gene name, or an embedding by position."""

    matrix: object  # AnnData.X, a backed dataset, or an obsm array
    alignment: GeneAlignment | None
    description: str

    def raw(self, start: int, stop: int):
        """Rows ``[start, stop)`` in model feature order, sparse when the data are sparse."""
        block = self.matrix[start:stop]
        if self.alignment is not None:
            block = block @ self.alignment.matrix
        return block

    def batch(self, start: int, stop: int) -> np.ndarray:
        block = self.raw(start, stop)
        if sp.issparse(block):
            block = block.toarray()
        return np.asarray(block, dtype=np.float32)


def _source(adata: ad.AnnData, bundle: Bundle) -> _Source:
    arch = bundle.architecture
    if bundle.input_kind == "expression":
        alignment = align_genes(original_gene_names(adata), bundle.genes)
        if alignment.n_matched == 0:
            example = ", ".join(map(str, adata.var_names[:3]))
            raise InputError(
                f"None of the {adata.n_vars} genes in the data (e.g. {example}) is among the model's "
                f"{alignment.n_model} input genes (e.g. {', '.join(bundle.genes[:3])}).",
                "The model expects HGNC gene symbols; convert Ensembl IDs to symbols first (the Data "
                "page does it when the file carries both).")
        return _Source(adata.X, alignment, f"{alignment.n_matched} of {alignment.n_model} model genes")
    key = EMBEDDING_OBSM[bundle.backbone]
    if key in adata.obsm and np.asarray(adata.obsm[key]).shape[1] == arch.input_dim:
        return _Source(np.asarray(adata.obsm[key]), None, f"obsm['{key}']")
    if adata.n_vars == arch.input_dim:
        return _Source(adata.X, None, f"X ({adata.n_vars} embedding features, by position)")
    raise InputError(
        f"This {bundle.backbone} model takes {arch.input_dim}-dimensional cell embeddings, but the data has "
        f"{adata.n_vars} features and no obsm['{key}'].",
        "Give the scFoundation (3,072-d) or Geneformer (512-d) embeddings as a .npy (cells x features) "
        "or an h5ad with them in X or obsm.")


def _dataset_moments(batches):
    """Per-feature mean and population std (ddof=0) over streamed batches."""
    total = sq = None
    count = 0
    for x in batches:
        x = x.astype(np.float64)
        if total is None:
            total, sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        total += x.sum(axis=0)
        sq += (x * x).sum(axis=0)
        count += x.shape[0]
    mean = total / count
    return mean, np.sqrt(np.maximum(sq / count - mean * mean, 0.0))


class ModelInput:
    """The exact model input of every cell of ``adata`` for ``bundle``, batch by batch.

    Construction makes one streamed pass over the data to find the cells that can be scored and,
    where the model needs dataset-level statistics, a second one to compute them:

    - AdaIN for VAE_sf/VAE_gf: each feature is standardised with the mean and population sd of
      the usable input cells, then re-scaled to the bundle's bulk statistics (reference §5);
    - ``standardize`` (models trained by scATD Studio): raw counts (detected exactly: every
      value a non-negative integer) are log-normalised first (``log1p_cp10k``), then every gene
      is z-scored over the usable cells, as the training standardised each domain.

    :func:`predict` and :mod:`scatd_core.explain` both read inputs through this class, so the
    explained inputs are the predicted inputs.
    """

    def __init__(self, adata: ad.AnnData, bundle: Bundle, batch_size: int = 1024):
        self.bundle = bundle
        self.batch_size = batch_size
        self.n_obs = adata.n_obs
        self.source = _source(adata, bundle)
        self.transform = bundle.manifest["input_transform"]
        self.reasons = {"non_finite": 0, "no_expression": 0}
        self.usable = np.ones(self.n_obs, dtype=bool)
        counts = True
        for start, stop in self._ranges():
            block = self.source.raw(start, stop)
            if sp.issparse(block):  # check the stored values only: no densifying in this pass
                block = sp.csr_matrix(block)
                bad_rows = np.unique(np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[~np.isfinite(block.data)])
                finite = np.ones(block.shape[0], dtype=bool)
                finite[bad_rows] = False
                nonzero = np.asarray((block != 0).sum(axis=1)).ravel() > 0
                values = block.data
            else:
                x = np.asarray(block, dtype=np.float32)
                finite = np.isfinite(x).all(axis=1)
                nonzero = (np.abs(np.nan_to_num(x)) > 0).any(axis=1)
                values = x[finite].ravel()
            self.reasons["non_finite"] += int((~finite).sum())
            ok = finite
            if self.source.alignment is not None:
                empty = finite & ~nonzero
                self.reasons["no_expression"] += int(empty.sum())
                ok = finite & ~empty
            self.usable[start:stop] = ok
            if counts:
                good = values[np.isfinite(values)]
                counts = bool(((good >= 0) & (good == np.round(good))).all())
        if not self.usable.any():
            raise InputError("No cell could be scored: every cell has non-finite values or no expression in "
                             "the model's genes.", "Check the data's values and gene names.")
        self.counts_detected = counts
        self.log_normalise = self.transform == "log1p_cp10k" or (self.transform == "standardize" and counts)
        self.moments = None  # (mean, sd) of the data, for AdaIN or per-gene standardisation
        if bundle.input_kind == "embedding":
            if bundle.style_mean is None:
                raise InputError(f"{bundle.name} has no bulk style statistics, which AdaIN needs.",
                                 "Re-import it with --style-reference (the bulk embeddings .npy).")
            self.moments = _dataset_moments(self._pre(start, stop)[1] for start, stop in self._ranges())
        elif self.transform == "standardize":
            self.moments = _dataset_moments(self._pre(start, stop)[1] for start, stop in self._ranges())

    @property
    def n_usable(self) -> int:
        return int(self.usable.sum())

    def _ranges(self):
        for start in range(0, self.n_obs, self.batch_size):
            yield start, min(start + self.batch_size, self.n_obs)

    def _pre(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Usable rows of ``[start, stop)`` (indices) and their values before dataset scaling."""
        keep = self.usable[start:stop]
        x = self.source.batch(start, stop)[keep]
        if self.log_normalise:
            x = apply_input_transform(x, "log1p_cp10k")
        return np.flatnonzero(keep) + start, x

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row indices, model input)`` of the usable cells among rows ``[start, stop)``."""
        idx, x = self._pre(start, stop)
        if self.moments is not None:
            mean, sd = self.moments
            if self.bundle.input_kind == "embedding":  # AdaIN; eps on the source sd only
                x = self.bundle.style_std * (x - mean) / (sd + ADAIN_EPS) + self.bundle.style_mean
            else:
                x = np.divide(x - mean, sd, out=np.zeros_like(x, dtype=np.float64), where=sd > 0)
        return idx, np.ascontiguousarray(x, dtype=np.float32)

    def batches(self):
        """Yield ``(row indices, model input)`` for every batch (usable cells only)."""
        for start, stop in self._ranges():
            yield stop, *self.rows(start, stop)


def predict(
    adata: ad.AnnData,
    bundle: Bundle,
    *,
    mode: str = "mean",
    n_samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 1024,
    beta_mode: str | None = None,
    threshold: float | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Predict P(resistant) for every cell of ``adata`` with a model bundle.

    Parameters
    ----------
    adata
        Cells x genes (Dist_VAE: any gene order, matched by name; missing model genes are 0,
        extra genes ignored, duplicated names summed) or cells x embedding features
        (VAE_sf/VAE_gf: by position, or ``obsm['X_scfoundation' | 'X_geneformer']``).
        May be backed (read from disk batch by batch).
    bundle
        An installed model (:func:`scatd_core.bundle.load_bundle`).
    mode
        ``"mean"`` (default): classify the latent mean; deterministic. ``"sample"``:
        ``n_samples`` seeded re-parameterised draws per cell; mean and sd of P(resistant).
    seed
        Seed of the sample-mode draws (the same seed and batch size give the same numbers).
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    batch_size
        Cells per batch; memory grows with it, not with the number of cells.
    beta_mode
        Override the bundle's Swish mode (``"shared_with_head"`` reproduces the original
        Dist_VAE inference, ``"separate"`` keeps the encoder's own beta).
    threshold
        Decision threshold on P(resistant); default: the bundle's.
    progress
        Called with (fraction done, message).
    should_stop
        Polled between batches; returning True raises :class:`Cancelled`.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    The annotated AnnData if ``copy``, else ``None``. Sets the following fields:

    - ``adata.obs['scatd_prob_resistant']``: P(resistant) (NaN where not scored);
    - ``adata.obs['scatd_prob_resistant_sd']``: its sd over the draws (sample mode only);
    - ``adata.obs['scatd_label']``: ``resistant`` / ``sensitive`` / ``not scored``;
    - ``adata.obs['scatd_scored']``: whether the cell could be scored;
    - ``adata.obsm['X_scatd']``: the latent mean (NaN rows where not scored);
    - ``adata.uns['scatd']``: the run's parameters, model provenance, gene coverage, warnings.
    """
    if bundle.kind != "classifier":
        raise InputError(f"{bundle.name} is a pretrained backbone without a drug head; it cannot predict.",
                         "Choose a drug model, or train one from this backbone with `scatd train`.")
    if mode not in ("mean", "sample"):
        raise InputError(f"Unknown mode {mode!r}; use 'mean' or 'sample'.")
    if mode == "sample" and n_samples < 2:
        raise InputError("Sample mode needs at least 2 samples per cell.", "Use --samples 2 or more.")
    if batch_size < 1:
        raise InputError("The batch size must be at least 1.")
    if adata.n_obs == 0:
        raise InputError("The dataset has no cells.", "Check the file and the filters applied.")
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = bundle.load_model(dev, beta_mode)
    arch = bundle.architecture
    inputs = ModelInput(adata, bundle, batch_size)
    src = inputs.source
    usable = inputs.usable
    transform = inputs.transform
    thr = float(bundle.threshold if threshold is None else threshold)
    n = adata.n_obs
    warnings: list[str] = []
    if bundle.input_kind == "embedding":
        warnings.append("VAE_sf/VAE_gf predictions use AdaIN with the statistics of the uploaded cells, "
                        "so they depend on the composition of the dataset (as in the original scATD).")
        if inputs.n_usable < FEW_CELLS_FOR_ADAIN:
            warnings.append(f"Only {inputs.n_usable} cells: AdaIN statistics from so few cells are unreliable.")
    if transform == "standardize" and inputs.n_usable < FEW_CELLS_FOR_ADAIN:
        warnings.append(f"Only {inputs.n_usable} cells: per-gene standardisation over so few cells is unreliable.")
    if src.alignment is not None and src.alignment.fraction_matched < LOW_COVERAGE:
        warnings.append(f"Only {src.alignment.fraction_matched:.0%} of the model's genes are in the data; "
                        "predictions may be unreliable.")

    k_pos = bundle.positive_index
    probs = np.full(n, np.nan, dtype=np.float64)
    sds = np.full(n, np.nan, dtype=np.float64) if mode == "sample" else None
    latent = np.full((n, arch.z_dim), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for stop, rows, x in inputs.batches():
            if should_stop is not None and should_stop():
                raise Cancelled("Prediction cancelled; nothing was changed.")
            if len(rows):
                xt = torch.from_numpy(x).to(dev)
                mu, logvar = model.encode(xt)
                latent[rows] = mu.float().cpu().numpy()
                if mode == "mean":
                    p = torch.softmax(model.classifier(mu), dim=1)[:, k_pos]
                    probs[rows] = p.double().cpu().numpy()
                else:
                    gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + int(rows[0]))
                    std = torch.exp(0.5 * logvar)
                    draws = torch.empty((n_samples, mu.shape[0]), dtype=torch.float64, device=dev)
                    for s in range(n_samples):
                        eps = torch.randn(mu.shape, generator=gen, device=dev, dtype=mu.dtype)
                        draws[s] = torch.softmax(model.classifier(mu + eps * std), dim=1)[:, k_pos].double()
                    probs[rows] = draws.mean(0).cpu().numpy()
                    sds[rows] = draws.std(0, unbiased=True).cpu().numpy()
            if progress is not None:
                progress(stop / n, f"{stop:,} of {n:,} cells")

    pos, neg = bundle.positive_label, bundle.negative_label
    labels = np.where(~usable, NOT_SCORED, np.where(probs > thr, pos, neg))
    adata.obs[PROB_KEY] = probs
    if sds is not None:
        adata.obs[SD_KEY] = sds
    elif SD_KEY in adata.obs:
        del adata.obs[SD_KEY]
    adata.obs[LABEL_KEY] = pd.Categorical(labels, categories=[neg, pos, NOT_SCORED])
    adata.obs[SCORED_KEY] = usable
    adata.obsm[LATENT_KEY] = latent
    adata.uns["scatd"] = {
        "scatd_version": __version__,
        "run_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
        "model": {
            "name": bundle.name, "drug": bundle.drug or "", "backbone": bundle.backbone,
            "demo": bundle.is_demo, "path": str(bundle.path),
            "weights_sha256": bundle.manifest.get("weights_sha256", ""),
            "provenance": {k: ("" if v is None else v) for k, v in bundle.manifest["provenance"].items()},
        },
        "params": {
            "mode": mode, "n_samples": int(n_samples) if mode == "sample" else 0, "seed": int(seed),
            "device": device_description(dev), "batch_size": int(batch_size),
            "threshold": thr, "input_transform": transform,
            "beta_mode": beta_mode or bundle.manifest.get("beta_mode", "separate"),
            "adain": bundle.input_kind == "embedding",
            "log_normalised": inputs.log_normalise,
        },
        "input": src.description,
        "gene_coverage": src.alignment.summary() if src.alignment is not None else {},
        "n_cells": int(n), "n_scored": int(usable.sum()),
        "not_scored": {k: int(v) for k, v in inputs.reasons.items()},
        "positive_label": pos, "negative_label": neg,
        "warnings": warnings,
    }
    return adata if copy else None


def prediction_table(adata: ad.AnnData) -> pd.DataFrame:
    """One row per cell, in input order: ``cell_id, prob_resistant, label[, prob_resistant_sd], scored``."""
    if PROB_KEY not in adata.obs:
        raise InputError("No predictions in this dataset.", "Run `scatd_core.predict.predict` first.")
    table = pd.DataFrame({
        "cell_id": adata.obs_names.astype(str),
        "prob_resistant": adata.obs[PROB_KEY].to_numpy(),
        "label": adata.obs[LABEL_KEY].astype(str).to_numpy(),
    })
    if SD_KEY in adata.obs:
        table["prob_resistant_sd"] = adata.obs[SD_KEY].to_numpy()
    table["scored"] = adata.obs[SCORED_KEY].to_numpy()
    return table


def relabel(adata: ad.AnnData, threshold: float) -> pd.Series:
    """Labels at another threshold, without recomputing (the app's threshold slider)."""
    info = adata.uns.get("scatd", {})
    pos, neg = info.get("positive_label", "resistant"), info.get("negative_label", "sensitive")
    p = adata.obs[PROB_KEY].to_numpy()
    scored = adata.obs[SCORED_KEY].to_numpy().astype(bool)
    labels = np.where(~scored, NOT_SCORED, np.where(p > threshold, pos, neg))
    return pd.Series(pd.Categorical(labels, categories=[neg, pos, NOT_SCORED]), index=adata.obs_names)
