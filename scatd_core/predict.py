"""One prediction function over AnnData, used by the app, the CLI, the demo and the reports.

:func:`predict` streams the cells through a bundle's model in batches (memory follows the batch
size, not the number of cells; backed data stay on disk) and writes the results into the
AnnData, scanpy style. Every input cell gets a result, in input order: a cell that cannot be
scored, or that the QC mask leaves out, is flagged with the reason, never dropped.

The decision threshold is part of the result: :func:`set_threshold` moves it (the Cells page's
slider, a threshold calibrated on labelled cells or an expected resistant fraction) and relabels
the cells without recomputing; the stored calls are what every table and report exports, marked
*uncalibrated* while the threshold is the model's default.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import torch

from scatd_core._words import counted
from scatd_core import __version__, _keys
from scatd_core import _threads  # noqa: F401  (reads the process's thread count before anything can change it)
from scatd_core._keys import LEFT_OUT, NOT_SCORED, result_keys
from scatd_core.errors import Cancelled, DeviceError, InputError
from scatd_core.genes import coverage_refusal, coverage_warning
from scatd_core.inputs import (EMBEDDING_REASON_TEXT, FOUNDATION_MODELS, REASON_TEXT, ModelInput, column_mask,
                               mask_column, mask_label, mask_reason_text, value_messages, value_type)
from scatd_core.nn.sparse import batch_tensor
from scatd_core.preprocess import AS_GIVEN_COUNTS_NOTE, as_given_counts

__all__ = ["predict", "score", "store", "Scores", "set_threshold", "labels_at", "summary", "resolve_device", "device_description",
           "auto_batch_size", "estimate_seconds", "Cancelled", "THRESHOLD_SOURCES", "threshold_origin",
           "SET_WITH_OPTION"]

#: Fewer usable cells than this make dataset statistics (AdaIN, per-gene z-scores) unreliable.
FEW_CELLS_FOR_STATISTICS = 50
#: Where a decision threshold came from. Only outside information about this dataset calibrates
#: the calls: the model's default and a threshold set by hand leave them *uncalibrated*.
THRESHOLD_SOURCES = ("model default", "expected fraction", "labelled cells", "user")
CALIBRATING_SOURCES = ("expected fraction", "labelled cells")
#: The detail of a threshold given on the command line (``scatd predict --threshold``), source "user"
SET_WITH_OPTION = "set with --threshold"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the server's policy (``server.device`` / ``SCATD_DEVICE``), whose own ``auto``
    is CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    from scatd_core.config import settings

    policy = None
    if device in (None, "", "auto"):
        policy = settings()["device"]
        if policy == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = policy
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        if policy:
            raise DeviceError("The server's configuration asks for CUDA (server.device / SCATD_DEVICE), but no GPU "
                              "is available on this machine.", "Set server.device to auto or cpu, or give --device "
                              "cpu.")
        raise DeviceError("CUDA was requested but no GPU is available on this machine.",
                          "Use --device cpu (or auto).")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DeviceError(f"Unknown device {device!r}.", "Use auto, cpu or cuda.") from None


#: Cells per batch on a CPU: the GEMM runs near its peak from a few hundred rows, and a batch's
#: output blocks stay in cache for the sparse first layer.
CPU_BATCH_SIZE = 1024


def auto_batch_size(bundle, device: torch.device) -> int:
    """Cells per batch: :data:`CPU_BATCH_SIZE` on a CPU; on a GPU as many as half of its free
    memory holds (dense input, the first layer's output and the activations, float32), between
    256 and 16,384."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _total = torch.cuda.mem_get_info(device)
    arch = bundle.architecture
    per_cell = 4 * (arch.input_dim + 6 * sum(arch.encoder_dims[1:]) + 4 * arch.z_dim)
    return int(min(16_384, max(256, (free // 2 // per_cell) // 256 * 256)))


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def _check_args(bundle, mode: str, n_samples: int, batch_size: int, adata: ad.AnnData) -> None:
    if bundle.kind != "classifier":
        raise InputError(f"{bundle.name} is a pretrained backbone without a drug head; it cannot predict.",
                         "Choose a drug model, or train one from this backbone with `scatd train`.")
    if mode not in ("mean", "sample"):
        raise InputError(f"Unknown mode {mode!r}; use 'mean' or 'sample'.")
    if mode == "sample" and n_samples < 1:
        raise InputError("Sample mode needs at least 1 sample per cell.",
                         "Use --samples 1 for the original scATD's single stochastic draw, or more for a mean and sd.")
    if batch_size is not None and batch_size < 1:
        raise InputError("The batch size must be at least 1.")
    if adata.n_obs == 0:
        raise InputError("The dataset has no cells.", "Check the file and the filters applied.")


def _is_true_false(values: pd.Series) -> bool:
    """Whether an obs column can be a mask: no gaps, only True/False (or 1/0)."""
    return not values.isna().any() and set(pd.unique(values.astype(object))) <= {True, False, 0, 1}


def _true_false_columns(adata: ad.AnnData, n: int = 5) -> str:
    """A few of the obs columns that could be a mask (boolean ones first), for a message: the user's
    own and the QC filter's (scATD Studio's other ``scatd_*`` flags, e.g. the reader's
    ``scatd_all_zero``, are not offered)."""
    offered = set(_keys.user_columns(adata.obs.columns, also=[_keys.QC_PASS]))
    found = [str(c) for c in adata.obs.columns if str(c) in offered and _is_true_false(adata.obs[c])]
    found.sort(key=lambda c: not pd.api.types.is_bool_dtype(adata.obs[c]))
    return ", ".join(found[:n]) + (", ..." if len(found) > n else "")


def _no_true_false_words(adata: ad.AnnData, n: int = 5) -> str:
    """"it has no True/False column", said accurately: scATD Studio's own True/False columns (the
    reader's ``scatd_all_zero``, an earlier run's ``scatd_scored`` in an annotated.h5ad ...) are not
    offered as masks (:func:`_true_false_columns`), but they are there, so they are named as such."""
    own = [str(c) for c in adata.obs.columns if str(c).startswith("scatd_") and _is_true_false(adata.obs[c])]
    if not own:
        return "it has no True/False column."
    return (f"it has no True/False column of its own (only scATD Studio's: {', '.join(own[:n])}"
            + (", ...)." if len(own) > n else ")."))


def _mask_of(adata: ad.AnnData, mask, *, subject: str = "The data",
             missing_hint: str | None = None,
             nothing_left: str = "Every cell is removed by the QC filter, so there is nothing to predict.",
             nothing_left_hint: str = "Loosen the QC thresholds on the Data page, or turn the filter off.",
             ) -> np.ndarray | None:
    """The cells to use: ``None`` (all), a boolean array over the cells, or the name of a True/False
    obs column (e.g. ``'scatd_qc_pass'``, or a column of a cell metadata table); :class:`InputError`
    for a missing column (naming a few True/False columns there are), a non-boolean column, a wrong
    length, or no cell left (``nothing_left``). Shared by prediction and training."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask not in adata.obs:
            some = _true_false_columns(adata)
            if missing_hint is None:
                missing_hint = ("Apply the QC filter first (scatd_core.preprocess.apply_qc_filter)."
                                if mask == _keys.QC_PASS else "Name a True/False column: True for the cells to keep.")
            raise InputError(f"{subject} has no obs column '{mask}' to use as the mask (the cells to keep); "
                             + (f"its True/False columns: {some}." if some else _no_true_false_words(adata)),
                             missing_hint)
        values = adata.obs[mask]
        if not _is_true_false(values):
            raise InputError(f"obs['{mask}'] of {subject.lower()} is not a True/False column.",
                             "Give a boolean column: True for the cells to use (e.g. scatd_qc_pass).")
        mask = values.to_numpy(dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (adata.n_obs,):
        raise InputError(f"The QC mask has {counted(mask.size, 'entry', 'entries')} for {counted(adata.n_obs)}.")
    if not mask.any():
        raise InputError(nothing_left, nothing_left_hint)
    return mask


class _Batcher:
    """Runs a forward pass over a batch in slices; on device out-of-memory, halves the slice and retries.

    Once lowered, the size stays lowered for the rest of the run; ``lowered_to`` records it.
    """

    def __init__(self, size: int, dev: torch.device):
        self.size, self.dev, self.lowered_to = int(size), dev, None

    def run(self, fn, x, rows: np.ndarray) -> list[np.ndarray]:
        """``fn(x[start:stop], rows[start:stop])`` over row slices of ``x`` (an ndarray or a scipy
        sparse matrix; ``rows`` the absolute row of each of its rows), the outputs concatenated."""
        outs, start, n = [], 0, x.shape[0]
        while start < n:
            stop = min(start + self.size, n)
            try:
                outs.append(fn(x[start:stop], rows[start:stop]))
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise DeviceError(f"{device_description(self.dev)} ran out of memory on a single cell.",
                                      "Run on the CPU (--device cpu), or free the GPU for this job.") from None
                if self.dev.type == "cuda":
                    torch.cuda.empty_cache()
                self.size = max(1, self.size // 2)
                self.lowered_to = self.size
                continue
            start = stop
        return [np.concatenate(parts) for parts in zip(*outs)]


#: Sample mode's noise comes in tiles of this many consecutive rows of the input (aligned: rows
#: ``[k * NOISE_BLOCK_ROWS, (k + 1) * NOISE_BLOCK_ROWS)``) by this many consecutive draws, each tile
#: from its own generator (:class:`_SampleNoise`).
NOISE_BLOCK_ROWS = 64
NOISE_BLOCK_DRAWS = 10
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser: 64 well-mixed bits of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix32(x: int) -> int:
    """A bijection of 32-bit integers that mixes their bits (xorshift-multiply)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


class _SampleNoise:
    """The standard normal noise of sample mode, a function of (seed, absolute row, draw) only.

    The noise of row ``r``'s draw ``s`` is element ``[r % R, s % D]`` of
    ``torch.randn((R, D, latent_dim))`` from a generator seeded with :meth:`key` ``(r // R, s // D)``
    (``R``, ``D``: :data:`NOISE_BLOCK_ROWS`, :data:`NOISE_BLOCK_DRAWS`). The tiles are aligned to
    the rows of the input, not to a batch, so a cell gets the same draws whatever the batch size
    (chosen from the device's free memory, lowered after an out-of-memory error), the QC mask of
    the other cells and the Ray shards; and a run with more draws starts with the draws of a run
    with fewer. Generating a tile at a time keeps the noise as fast as one generator per batch: a
    generator call per tile, each filling ``R x D x latent_dim`` numbers (a tile a batch only
    partly covers is generated whole, the rows it needs kept).

    The generator is torch's on the device (CUDA: Philox, keyed by all 64 bits of the key; CPU:
    Mersenne Twister, which keeps the key's low 32 bits, here a bijection of the tile's index, so
    the tiles of one run get distinct streams up to 2**22 row blocks and 10,240 draws); other
    devices take the CPU's noise. CPU and CUDA noise differ, as torch's generators do.
    """

    #: tile index -> key: ``row_block * _GROUP_STRIDE + draw_group``
    _GROUP_STRIDE = 1024

    def __init__(self, seed: int, dev: torch.device):
        self.base = _mix64(int(seed) & _M64)
        self.dev = dev
        self.gen_dev = dev if dev.type == "cuda" else torch.device("cpu")
        self.gen = torch.Generator(device=self.gen_dev)
        self._buffer = torch.empty(0)  # reused from call to call (a fresh one costs its page faults again)

    def key(self, block: int, group: int) -> int:
        """The generator seed of a tile: distinct for distinct tiles of one seed in its low 32 bits."""
        x = (int(block) * self._GROUP_STRIDE + int(group)) & _M64
        return ((_mix64(self.base ^ x) >> 32) << 32) | _mix32((x + self.base) & _M32)

    def __call__(self, rows: np.ndarray, group: int, dim: int) -> torch.Tensor:
        """``[len(rows), NOISE_BLOCK_DRAWS, dim]`` float32: the noise of draws
        ``group * NOISE_BLOCK_DRAWS`` onwards of the cells at absolute ``rows`` (in increasing order),
        valid until the next call."""
        size, n = NOISE_BLOCK_ROWS, len(rows)
        if n > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("the rows of sample-mode noise must be distinct and in order")
        if self._buffer.numel() < n * NOISE_BLOCK_DRAWS * dim:
            self._buffer = torch.empty(n * NOISE_BLOCK_DRAWS * dim, dtype=torch.float32, device=self.gen_dev)
        out = self._buffer[:n * NOISE_BLOCK_DRAWS * dim].view(n, NOISE_BLOCK_DRAWS, dim)
        blocks = rows // size
        edges = np.flatnonzero(np.diff(blocks)) + 1  # runs of rows in one block
        for start, stop in zip(np.r_[0, edges], np.r_[edges, n]):
            block = int(blocks[start])
            self.gen.manual_seed(self.key(block, group))
            if stop - start == size:  # the whole block: its rows are its tile's, in order
                torch.randn((size, NOISE_BLOCK_DRAWS, dim), generator=self.gen, out=out[start:stop])
            else:
                tile = torch.randn((size, NOISE_BLOCK_DRAWS, dim), generator=self.gen, device=self.gen_dev)
                at = torch.from_numpy(np.asarray(rows[start:stop] - block * size, dtype=np.int64)).to(self.gen_dev)
                torch.index_select(tile, 0, at, out=out[start:stop])
        return out.to(self.dev) if self.dev != self.gen_dev else out


def _score(model, inputs: ModelInput, k_pos: int, mode: str, n_samples: int, seed: int, dev: torch.device,
           progress, should_stop) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str, int | None]:
    """P(resistant), its sd (sample mode: over draws; an ensemble: over its members), the latent
    mean of every cell (NaN where not scored),
    the precision the model ran in, and the batch size the device forced (``None`` when the
    requested one fitted)."""
    n = inputs.n_obs
    probs = np.full(n, np.nan)
    members = mode == "mean" and model.arch.n_members > 1
    # one draw per cell (the original's stochastic inference) has no spread to report
    sds = np.full(n, np.nan) if (mode == "sample" and n_samples > 1) or members else None
    latent = np.full((n, model.arch.latent_dim), np.nan, dtype=np.float32)
    precision = None
    batcher = _Batcher(inputs.batch_size, dev)
    noise_of = _SampleNoise(seed, dev) if mode == "sample" else None

    def forward(x, rows: np.ndarray):
        nonlocal precision
        xt = batch_tensor(x, dev)
        if precision is None:
            precision = reduced_precision(model, xt, k_pos)
        with _autocast(dev, precision):
            mu, logvar = model.encode(xt)
            mu, logvar = mu.float(), logvar.float()
            if mode == "mean":
                p = torch.softmax(model.classifier(mu, xt).float(), dim=1)[:, k_pos].double()
                if not members:
                    return mu.cpu().numpy(), p.cpu().numpy()
                # the ensemble predicts with the mean logit; the members' spread is its uncertainty
                each = torch.softmax(model.member_logits(mu, xt).float(), dim=2)[:, :, k_pos].double()
                return mu.cpu().numpy(), p.cpu().numpy(), each.std(0, unbiased=True).cpu().numpy()
            std = torch.exp(0.5 * logvar)
            # an ensemble whose heads see the input: that term is the same for every draw of a cell
            seen = model.input_logits(xt) if getattr(model, "input_weight", None) is not None else None
            head = (lambda z: model.classifier(z, xt)) if seen is None else (
                lambda z: model.classifier(z, input_logits=seen))
            draws = torch.empty((n_samples, mu.shape[0]), dtype=torch.float64, device=dev)
            for group in range(-(-n_samples // NOISE_BLOCK_DRAWS)):
                noise = noise_of(rows, group, mu.shape[1])
                first = group * NOISE_BLOCK_DRAWS
                for s in range(first, min(first + NOISE_BLOCK_DRAWS, n_samples)):
                    z = mu + noise[:, s - first] * std
                    draws[s] = torch.softmax(head(z).float(), dim=1)[:, k_pos].double()
            if n_samples == 1:
                return mu.cpu().numpy(), draws[0].cpu().numpy()
            return mu.cpu().numpy(), draws.mean(0).cpu().numpy(), draws.std(0, unbiased=True).cpu().numpy()

    with torch.inference_mode():
        for stop, rows, x in inputs.batches(sparse=True):
            if should_stop is not None and should_stop():
                raise Cancelled("Prediction cancelled; nothing was changed.")
            if len(rows):
                out = batcher.run(forward, x, np.asarray(rows, dtype=np.int64) + inputs.row_offset)
                latent[rows] = out[0]
                probs[rows] = out[1]
                if sds is not None:
                    sds[rows] = out[2]
            if progress is not None:
                note = (f" (device memory full: batch lowered to {batcher.lowered_to:,} cells)"
                        if batcher.lowered_to else "")
                progress(stop / n, f"{stop:,} of {n:,} cells{note}")
    return probs, sds, latent, precision or "float32", batcher.lowered_to


#: Largest change in P(resistant) a reduced-precision (autocast) run may make, measured against
#: float32 on the first batch; beyond it the whole run stays in float32.
REDUCED_PRECISION_TOLERANCE = 1e-3
#: On a CPU, float32: the sparse first layer (most of the cost) has no reduced-precision path, and a
#: CPU without bf16/fp16 units runs autocast slower, not faster.
_REDUCED_DTYPE = {"cuda": torch.float16}


def reduced_precision(model, x: torch.Tensor, k_pos: int, dtype: torch.dtype | None = None,
                      tolerance: float = REDUCED_PRECISION_TOLERANCE) -> str:
    """``"float16"``/``"bfloat16"`` when autocast keeps P(resistant) of the batch ``x`` within
    ``tolerance`` of float32 (and the latent means within ``tolerance`` of their scale), else
    ``"float32"``. ``dtype`` defaults to float16 on CUDA; other devices run float32 unless a
    ``dtype`` is given (the check runs anywhere: tests exercise it with bfloat16 on a CPU)."""
    dtype = dtype or _REDUCED_DTYPE.get(x.device.type)
    if dtype is None:
        return "float32"
    with torch.inference_mode():
        mu = model.encode(x)[0]
        p = torch.softmax(model.classifier(mu, x), dim=1)[:, k_pos]
        with torch.autocast(x.device.type, dtype=dtype):
            mu_low = model.encode(x)[0].float()
            p_low = torch.softmax(model.classifier(mu_low, x).float(), dim=1)[:, k_pos]
    scale = float(mu.abs().max()) or 1.0
    ok = float((p - p_low).abs().max()) <= tolerance and float((mu - mu_low).abs().max()) <= tolerance * scale
    return str(dtype).removeprefix("torch.") if ok else "float32"


def _autocast(dev: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=getattr(torch, precision))


def predict(
    adata: ad.AnnData,
    bundle,
    *,
    mask: np.ndarray | str | None = None,
    inputs: ModelInput | None = None,
    mode: str = "mean",
    n_samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    beta_mode: str | None = None,
    threshold: float | None = None,
    threshold_source: str | None = None,
    key_added: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    copy: bool = False,
    min_gene_coverage: float | None = None,
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
    mask
        Cells to score (boolean array, or the name of a boolean obs column such as
        ``'scatd_qc_pass'``); the others are labelled ``filtered (QC)`` (the app's QC filter: a
        plain array or ``'scatd_qc_pass'``) or ``left out (mask)`` (a column of one's own). Dataset statistics
        (AdaIN, per-gene z-scores) are computed over the scored cells only.
    inputs
        A :class:`~scatd_core.inputs.ModelInput` of this data and model to reuse (it is built
        when not given); pass the same one to :func:`scatd_core.explain.explain`.
    mode
        ``"mean"`` (default): classify the latent mean; deterministic. ``"sample"``:
        ``n_samples`` seeded re-parameterised draws per cell; mean and sd of P(resistant).
    seed
        Seed of the sample-mode draws. A cell's draws depend only on the seed, its row in
        ``adata`` and the draw number (:class:`_SampleNoise`): not on the batch size, the
        device's memory, the QC mask of other cells or a Ray shard split.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    batch_size
        Cells per batch; memory grows with it, not with the number of cells. Default
        (``None``): :func:`auto_batch_size` (1,024 on a CPU; on a GPU as many as half its free
        memory holds). Ignored when ``inputs`` is given (its batches are used).
    beta_mode
        Override the bundle's Swish mode (``"shared_with_head"`` reproduces the original
        Dist_VAE inference, ``"separate"`` keeps the encoder's own beta).
    threshold, threshold_source
        Decision threshold on P(resistant) and where it came from (one of
        :data:`THRESHOLD_SOURCES`); default: the bundle's threshold, "model default".
    key_added
        Prefix of the fields written (default ``"scatd"``; a panel uses one per model).
    progress
        Called with (fraction done, message).
    should_stop
        Polled between batches; returning True raises :class:`~scatd_core.errors.Cancelled`.
    copy
        Return an annotated copy instead of writing into ``adata``.
    min_gene_coverage
        The least share of the model's genes the data must have (Dist_VAE): below it the
        prediction is refused with an :class:`~scatd_core.errors.InputError` saying how many
        matched and why (:func:`scatd_core.genes.coverage_refusal`). Default: this server's
        ``limits.min_gene_coverage`` (:func:`scatd_core.genes.min_gene_coverage`, 0.1); 0 never refuses.

    Returns
    -------
    The annotated AnnData if ``copy``, else ``None``. Sets the following fields (``<p>`` is
    ``key_added``):

    - ``adata.obs['<p>_prob_resistant']``: P(resistant) (NaN where not scored);
    - ``adata.obs['<p>_prob_resistant_sd']``: its sd over the draws (sample mode only);
    - ``adata.obs['<p>_label']``: ``resistant`` / ``sensitive`` / ``not scored`` /
      ``filtered (QC)`` / ``left out (mask)`` (:func:`~scatd_core.inputs.mask_label`);
    - ``adata.obs['<p>_scored']``: whether the cell got a probability;
    - ``adata.obsm['X_<p>']``: the latent mean (NaN rows where not scored);
    - ``adata.uns['<p>']``: parameters, threshold and whether it is calibrated, model
      provenance, gene coverage, cells not scored by reason, warnings.

    With the default ``key_added``, what an earlier prediction left (its UMAP, clusters and
    biomarkers) is removed first (:func:`clear`): it describes the earlier prediction.
    """
    _check_args(bundle, mode, n_samples, batch_size, adata)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    scores = score(adata, bundle, mask=mask, inputs=inputs, mode=mode, n_samples=n_samples, seed=seed,
                   device=device, batch_size=batch_size, beta_mode=beta_mode, progress=progress,
                   should_stop=should_stop, min_gene_coverage=min_gene_coverage)
    store(adata, bundle, scores, threshold=threshold, threshold_source=threshold_source, key_added=key_added)
    return adata if copy else None


@dataclass
class Scores:
    """A prediction computed but not yet written into its AnnData: what :func:`score` returns and
    :func:`store` writes (:func:`predict` is the two in a row). Lets the app compute a prediction
    in the background and write it into the session's data only when the user asks for it."""

    n_obs: int
    mask: np.ndarray | str | None      # as given (a column name is recorded as such)
    mask_array: np.ndarray | None
    inputs: ModelInput
    probs: np.ndarray
    sds: np.ndarray | None
    latent: np.ndarray
    precision: str
    lowered_to: int | None
    params: dict
    members: int
    seconds: float
    run_at: str


def score(
    adata: ad.AnnData,
    bundle,
    *,
    mask: np.ndarray | str | None = None,
    inputs: ModelInput | None = None,
    mode: str = "mean",
    n_samples: int = 50,
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    beta_mode: str | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    min_gene_coverage: float | None = None,
) -> Scores:
    """The computation of :func:`predict` (same parameters), without writing anything into
    ``adata``; :func:`store` writes the result."""
    _check_args(bundle, mode, n_samples, batch_size, adata)
    mask_array = _mask_of(adata, mask)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = bundle.load_model(dev, beta_mode)
    if inputs is None:  # the mask named by its column, so a statistics pass that finds no cell says what left them out
        named = None if mask_array is None else column_mask(mask_array, mask_column(mask))
        inputs = ModelInput(adata, bundle, mask=named, batch_size=batch_size or auto_batch_size(bundle, dev))
    elif inputs.n_obs != adata.n_obs:
        raise ValueError("inputs were built for another dataset")
    if inputs.source.alignment is not None:  # too few of the model's genes: refused, not scored with a warning
        from scatd_core.matrices import fuller_elsewhere

        refusal = coverage_refusal(getattr(inputs, "data", adata), inputs.spec.genes, min_coverage=min_gene_coverage,
                                   model_name=bundle.name,  # judged on the matrix the model reads (e.g. adata.raw)
                                   also=fuller_elsewhere(adata, getattr(inputs, "matrix", None), inputs.spec.genes))
        if refusal is not None:
            raise refusal
    if mask is not None:
        inputs.filtered_text = mask_reason_text(mask)  # the QC filter's cells, or the user's mask column's
    probs, sds, latent, precision, lowered_to = _score(model, inputs, bundle.positive_index, mode, n_samples,
                                                       seed, dev, progress, should_stop)
    inputs._require_some()
    params = {"mode": mode, "n_samples": int(n_samples) if mode == "sample" else 0, "seed": int(seed),
              "device": device_description(dev), "beta_mode": beta_mode}
    return Scores(n_obs=adata.n_obs, mask=mask, mask_array=mask_array, inputs=inputs, probs=probs, sds=sds,
                  latent=latent, precision=precision, lowered_to=lowered_to, params=params,
                  members=model.arch.n_members, seconds=round(time.perf_counter() - t0, 3),
                  run_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def store(adata: ad.AnnData, bundle, scores: Scores, *, threshold: float | None = None,
          threshold_source: str | None = None, key_added: str | None = None) -> None:
    """Write ``scores`` (from :func:`score` on this ``adata`` and ``bundle``) into ``adata``: the
    fields :func:`predict` documents, the calls at ``threshold`` (default: the bundle's)."""
    if scores.n_obs != adata.n_obs:
        raise ValueError("the scores were computed for another dataset")
    inputs, mask_array, mode = scores.inputs, scores.mask_array, scores.params["mode"]
    probs, sds = scores.probs.copy(), None if scores.sds is None else scores.sds.copy()
    scored = inputs.usable & np.isfinite(probs)
    bad_output = int((inputs.usable & ~scored).sum())
    probs[~scored] = np.nan
    if sds is not None:
        sds[~scored] = np.nan
    keys = result_keys(key_added)
    if keys.prefix == _keys.DEFAULT_PREFIX:
        # what was computed from an earlier prediction (the UMAP and clusters of its latent space,
        # its biomarkers; e.g. in an annotated h5ad read again) does not describe this one
        clear(adata)
    filtered = np.zeros(adata.n_obs, dtype=bool) if mask_array is None else ~mask_array
    adata.obs[keys.prob] = probs
    if sds is not None:
        adata.obs[keys.prob_sd] = sds
    elif keys.prob_sd in adata.obs:
        del adata.obs[keys.prob_sd]
    adata.obs[keys.scored] = scored
    adata.obs[keys.not_scored_reason] = not_scored_reasons(inputs, scored, bundle.input_kind == "embedding")
    adata.obsm[keys.latent] = scores.latent  # not copied: n x latent-dim values, only ever read
    not_scored = inputs.not_scored()
    not_scored.pop("filtered", None)
    if bad_output:
        not_scored["non_finite_output"] = bad_output
    mask = scores.mask
    beta_mode = scores.params["beta_mode"]
    adata.uns[keys.run] = {
        "scatd_version": __version__,
        "run_at": scores.run_at,
        "seconds": scores.seconds,
        "model": _model_record(bundle),
        "params": {
            "mode": mode, "n_samples": scores.params["n_samples"], "seed": scores.params["seed"],
            "prob_resistant_sd": ("over the draws" if mode == "sample" and sds is not None else
                                  "none (one draw per cell, as the original scATD's inference)" if mode == "sample" else
                                  f"over the {scores.members} ensemble members" if sds is not None else "none"),
            # sample mode: how the draws are made (since scATD Studio 2026-12-02; earlier ones depended on batching)
            "draws": "per cell, from (seed, input row, draw number)" if mode == "sample" else "none",
            "device": scores.params["device"], "batch_size": int(inputs.batch_size), "precision": scores.precision,
            # set when the device ran out of memory and the batch was split (the run then went on)
            "batch_size_lowered_to": scores.lowered_to,
            "input_transform": inputs.transform,
            "beta_mode": beta_mode or bundle.manifest.get("beta_mode", "separate"),
            "adain": bundle.input_kind == "embedding", "log_normalised": bool(inputs.log_normalise),
            # the genes each cell's counts were summed over to scale them to 10,000 (when they were)
            "library_size": inputs.spec.library_size if inputs.log_normalise else None,
        },
        "input": inputs.source.description,
        # which matrix of the file the model read (X, adata.raw, a layer) and why
        **({"matrix": inputs.matrix.record()} if getattr(inputs, "matrix", None) is not None else {}),
        "gene_coverage": inputs.source.alignment.summary() if inputs.source.alignment is not None else {},
        "n_cells": int(adata.n_obs), "n_scored": int(scored.sum()),
        "not_scored": not_scored,
        "qc": {"n_filtered": int(filtered.sum()), "mask": mask if isinstance(mask, str) else
               (getattr(mask, "column", None) or "array" if mask is not None else "none"),
               "thresholds": dict(adata.uns.get(_keys.QC, {}).get("thresholds", {})) if filtered.any() else {}},
        "positive_label": bundle.positive_label, "negative_label": bundle.negative_label,
        "warnings": _warnings(bundle, inputs, not_scored, adata),
        # what the model input did with the values (log-normalised values un-logged first)
        **({"notes": notes} if (notes := list(inputs.notes) + _as_given_notes(adata, bundle, inputs)
                                 + _embedding_notes(adata, bundle)) else {}),
        **({"embeddings": _embeddings(adata, bundle)} if bundle.input_kind == "embedding" else {}),
    }
    thr = float(bundle.threshold if threshold is None else threshold)
    left_out = np.where(filtered, mask_label(scores.mask), "")  # the QC filter's, or the user's mask column's
    adata.obs[keys.label] = _calls(probs, scored, left_out, thr, bundle.positive_label, bundle.negative_label)
    set_threshold(adata, thr, threshold_source or ("model default" if threshold is None else "user"),
                  key_added=key_added)


def _model_record(bundle) -> dict:
    record = {"name": bundle.name, "drug": bundle.drug or "", "backbone": bundle.backbone,
              "demo": bundle.is_demo, "path": str(bundle.path), "default_threshold": float(bundle.threshold),
              "members": bundle.architecture.n_members, "weights_sha256": bundle.manifest.get("weights_sha256", ""),
              "provenance": {k: ("" if v is None else v) for k, v in bundle.manifest["provenance"].items()}}
    if bundle.manifest.get("card"):  # JSON text: the card's nested lists and nulls do not all fit in h5ad
        record["card_json"] = json.dumps(bundle.manifest["card"])
    elif bundle.is_imported:  # no training data to compare with: its short card (a few sentences), for the report
        from scatd_core.bundle import import_card_lines

        record["import_card"] = import_card_lines(bundle)
    if bundle.manifest.get("few_shot"):  # the target cells whose labels trained it: left out of evaluations
        record["few_shot"] = bundle.manifest["few_shot"]
    return record


def _as_given_notes(adata: ad.AnnData, bundle, inputs: ModelInput) -> list[str]:
    """A Dist_VAE model imported with input transform 'none' given raw counts: they went in as they
    are (:data:`scatd_core.preprocess.AS_GIVEN_COUNTS_NOTE`)."""
    if bundle.input_kind != "expression" or inputs.transform != "none":
        return []
    kind = inputs.value_kind or value_type(adata)  # of the matrix it read (X, adata.raw, a layer)
    return [AS_GIVEN_COUNTS_NOTE] if as_given_counts(kind, inputs.transform) else []


def _embedding_notes(adata: ad.AnnData, bundle) -> list[str]:
    """VAE_sf/VAE_gf: what the foundation model was given when it was not X (the file's raw counts)."""
    if bundle.input_kind != "embedding":
        return []
    record = adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone) or {}
    note = ((record.get("info") or {}).get("expression") or {}).get("note")
    # and why embeddings stored in the file were not used (of another width than the model takes)
    return ([str(note)] if note else []) + [str(n) for n in (record.get("info") or {}).get("notes", [])]


def _embeddings(adata: ad.AnnData, bundle) -> dict:
    from scatd_core.foundation._embed import embeddings_summary

    return embeddings_summary(adata, bundle.backbone)


def not_scored_reasons(inputs: ModelInput, scored: np.ndarray, embedding: bool = False) -> pd.Categorical:
    """Per cell, why it got no probability, in words ("" where it got one): the reasons of
    :class:`~scatd_core.inputs.ModelInput`, or a model output that was not a finite number."""
    words = inputs.reason_text(embedding)
    words[~scored & (words == "")] = REASON_TEXT["non_finite_output"]
    words[scored] = ""
    return pd.Categorical(words)


def _examples_text(adata: ad.AnnData | None, inputs, reason: str) -> str:
    """"; e.g. cell 'c98' (gene TP53), cell 'c99'": the first cells left out for ``reason``."""
    said = (getattr(inputs, "examples", None) or {}).get(reason) or []
    if adata is None or not said:
        return ""
    return "; e.g. " + ", ".join(f"cell '{adata.obs_names[row]}'" + (f" (gene {gene})" if gene else "")
                                 for row, gene in said)


def _warnings(bundle, inputs: ModelInput, not_scored: dict, adata: ad.AnnData | None = None) -> list[str]:
    out = _value_warnings(adata, bundle) if adata is not None else []
    if getattr(bundle, "is_demo", False) and adata is not None:
        from scatd_core.demo.simulate import is_simulated

        if not is_simulated(adata):  # the app offers a demo model with the demo data only; the CLI says it
            out.insert(0, "This is a demo model, trained on simulated cell lines: its P(resistant) says "
                          "nothing about these cells, which are not the demo's simulated data. Use a real drug model "
                          "(scatd models lists them).")
    n = inputs.n_usable
    if bundle.input_kind == "embedding":
        out.append("VAE_sf/VAE_gf predictions use AdaIN with the statistics of the uploaded cells, so they "
                   "depend on the composition of the dataset (as in the original scATD).")
    elif inputs.transform == "standardize":
        out.append("This model z-scores each gene over the scored cells (as it was trained), so a cell's "
                   "P(resistant) depends on the other cells in the data: score a sample's cells together, not a "
                   "subset at a time, and compare datasets of similar composition.")
    if (bundle.input_kind == "embedding" or inputs.transform == "standardize") and n < FEW_CELLS_FOR_STATISTICS:
        out.append(f"Only {counted(n)} {'was' if n == 1 else 'were'} scored: the dataset statistics this model uses "
                   "(AdaIN or per-gene "
                   "z-scores) are unreliable from so few cells.")
    if bundle.input_kind == "embedding" and adata is not None:  # VAE_sf/VAE_gf: made as the training's?
        differs = _embedding_settings_warning(adata, bundle)
        if differs:
            out.append(differs)
    if bundle.input_kind == "embedding" and adata is not None:  # VAE_sf/VAE_gf: the foundation model's coverage
        record = adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone) or {}
        for part in ("expression", "gene_coverage"):
            warning = ((record.get("info") or {}).get(part) or {}).get("warning")
            if warning:
                out.append(str(warning))
        # the foundation model itself: not the published one (its files' warning when the embeddings were made)
        said = (record.get("info") or {}).get("model_warnings")  # a list; an array once read back from an h5ad
        out.extend(str(w) for w in (list(said) if said is not None else []))
    if inputs.source.alignment is not None:  # low coverage, or Ensembl IDs left unmapped: as the Model page says it
        data = adata if adata is not None else inputs.adata
        matrix = getattr(inputs, "matrix", None)
        if matrix is not None and matrix.name != "X":  # judged on the matrix the model read (e.g. adata.raw), as
            data = inputs.data  # the refusal and the Model page judge it, not on X's genes
        from scatd_core.matrices import fuller_elsewhere

        whole = adata if adata is not None else getattr(inputs, "adata", None)  # a Ray run's inputs hold no data
        also = fuller_elsewhere(whole, matrix, bundle.genes) if whole is not None else None
        warning = coverage_warning(data, bundle.genes, also=also)
        if warning:
            out.append(warning)
    words = {**REASON_TEXT, **(EMBEDDING_REASON_TEXT if bundle.input_kind == "embedding" else {})}
    for reason, count in not_scored.items():
        out.append(f"{counted(count)} {'was' if count == 1 else 'were'} not scored: {words.get(reason, reason)}"
                   f"{_examples_text(adata, inputs, reason)}.")
    if "not_embedded" in not_scored and adata is not None:
        record = adata.uns.get(_keys.FOUNDATION, {}).get(bundle.backbone) or {}
        failed = int(((record.get("info") or {}).get("not_embedded") or {}).get("non_finite_output", 0))
        if failed:
            out.append(f"{failed:,} of the cells without an embedding went through the foundation model and came out "
                       f"non-finite: {REASON_TEXT['non_finite_embedding']}.")
    return out


def _embedding_settings_warning(adata: ad.AnnData, bundle) -> str | None:
    """VAE_sf/VAE_gf: a warning when the cells' embeddings were computed here with settings that
    differ from those of the embeddings the model was trained on, or that the model does not know
    (embeddings the user brought to training). ``None`` when they match, when the cells' embeddings
    were brought by the user (nothing says how they were made), or for models that record nothing
    (imported, or trained before it was recorded)."""
    from scatd_core.card import embedding_origin_words
    from scatd_core.train._data import embedding_origin

    trained = (bundle.manifest.get("provenance") or {}).get("embeddings")
    if not isinstance(trained, dict) or not trained:
        return None
    now = embedding_origin(adata, bundle.backbone)
    if now.get("computed_by") != "scATD Studio":
        return None
    model = FOUNDATION_MODELS.get(bundle.backbone, "the foundation model")
    here = embedding_origin_words(now).replace("computed by scATD Studio", "computed here", 1)
    unknown = [what for what, origin in trained.items() if (origin or {}).get("computed_by") != "scATD Studio"]
    if unknown:
        return (f"These cells' {model} embeddings were {here}, but the model was trained on {' and '.join(unknown)} "
                f"embeddings brought by the user, whose settings it does not know"
                + (" (scFoundation: which output, rde or cell, and the resolution token T)"
                   if bundle.backbone == "vae_sf" else " (Geneformer: the layer and the pooling)")
                + ". If they were made otherwise, the calls may be off: embed these cells the way the training "
                  "cells were embedded and bring the embeddings, or train the model on embeddings computed here.")
    settings = now.get("settings") or {}
    differing = sorted({k for origin in trained.values() for k, v in ((origin or {}).get("settings") or {}).items()
                        if k in settings and settings[k] != v})
    if not differing:
        return None
    was = "; ".join(f"{what} {embedding_origin_words(origin)}" for what, origin in trained.items())
    return (f"These cells' {model} embeddings were {here}, with other settings ({', '.join(differing)}) than the "
            f"embeddings the model was trained on ({was}); the calls may be off. Embed these cells with the "
            "training's settings.")


def _value_warnings(adata: ad.AnnData, bundle) -> list[str]:
    """The Model page's warnings about the kind of values the data hold
    (:func:`scatd_core.inputs.value_messages`)."""
    return value_messages(adata, bundle)[0]


# --------------------------------------------------------------------------- threshold and calls

def _calls(p: np.ndarray, scored: np.ndarray, left_out: np.ndarray, threshold: float, pos: str,
           neg: str) -> pd.Categorical:
    """The calls at ``threshold``; ``left_out``: per cell, the label of a cell a mask left out
    (:data:`~scatd_core._keys.LEFT_OUT`: ``filtered (QC)`` or ``left out (mask)``), "" for the others."""
    with np.errstate(invalid="ignore"):
        called = np.where(p > threshold, pos, neg)
    left_out = np.asarray(left_out, dtype=object)
    values = np.where(scored, called, np.where(left_out != "", left_out, NOT_SCORED))
    # resistant first, then sensitive, then the cells without a call: the order of every legend and
    # table of the calls, as the known labels are listed (labels.shown_labels)
    return pd.Categorical(values, categories=[pos, neg, NOT_SCORED] + [x for x in LEFT_OUT if (left_out == x).any()])


def labels_at(adata: ad.AnnData, threshold: float, *, key_added: str | None = None) -> pd.Categorical:
    """The calls at ``threshold`` (``P > threshold``: resistant), without recomputing anything.

    Cells without a probability keep ``not scored`` / ``filtered (QC)`` / ``left out (mask)``.
    """
    keys = result_keys(key_added)
    info = adata.uns.get(keys.run)
    if info is None or keys.prob not in adata.obs or keys.label not in adata.obs:
        raise InputError("No predictions in this dataset.", "Run `scatd_core.predict.predict` first.")
    labels = adata.obs[keys.label].astype(str).to_numpy()
    left_out = np.where(np.isin(labels, LEFT_OUT), labels, "")
    return _calls(adata.obs[keys.prob].to_numpy(dtype=np.float64), adata.obs[keys.scored].to_numpy(dtype=bool),
                  left_out, threshold, info["positive_label"], info["negative_label"])


def set_threshold(adata: ad.AnnData, threshold: float, source: str = "user", *, key_added: str | None = None,
                  detail: str | None = None, label_column: str | None = None) -> None:
    """Set the decision threshold of a prediction and relabel the cells (``obs['<p>_label']``).

    ``source`` says where it came from (:data:`THRESHOLD_SOURCES`); calls are marked calibrated
    only when it came from an expected fraction or labelled cells (:data:`CALIBRATING_SOURCES`). ``detail`` describes it (e.g. "Youden's J on 12 labelled
    cells"); ``label_column``, the labels it was fitted on (an evaluation against them then says
    its threshold-dependent scores are optimistic). Recorded in ``uns['<p>']['threshold']``.
    """
    if source not in THRESHOLD_SOURCES:
        raise ValueError(f"threshold source must be one of {THRESHOLD_SOURCES}, not {source!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"The threshold must be between 0 and 1; got {threshold}.")
    keys = result_keys(key_added)
    adata.obs[keys.label] = labels_at(adata, float(threshold), key_added=key_added)
    adata.uns[keys.run]["threshold"] = {
        "value": float(threshold), "source": source, "calibrated": source in CALIBRATING_SOURCES,
        "detail": detail or {"model default": "the model's default", "user": "set by hand"}.get(source, source)}
    if label_column is not None:
        adata.uns[keys.run]["threshold"]["label_column"] = str(label_column)


def forget_label_calibrations(adata: ad.AnnData, column: str, why: str = "its label direction changed") -> list[str]:
    """Put every threshold fitted on ``obs[column]``'s labels back to its model's default (the
    column's label direction changed, or the column was replaced: ``why``, said in the threshold's
    detail; the fit no longer means anything); returns the results' prefixes (``uns`` keys) whose
    threshold was reset."""
    reset = []
    for key in list(adata.uns.keys()):
        run = adata.uns[key]
        threshold = run.get("threshold") if isinstance(run, Mapping) else None
        if not isinstance(threshold, Mapping) or threshold.get("label_column") != str(column) \
                or result_keys(key).prob not in adata.obs:
            continue
        default = float(run["model"]["default_threshold"])
        set_threshold(adata, default, "model default", key_added=key,
                      detail=f"the model's default; the threshold fitted on '{column}' was dropped when "
                             f"{why}")
        reset.append(str(key))
    return reset


def threshold_origin(threshold: Mapping) -> str:
    """Where a threshold (a prediction's ``uns`` record) came from, in a few words for a figure:
    ``"calibrated"``, ``"model default"``, ``"set with --threshold"`` (``scatd predict``) or
    ``"set by hand"`` (the app's slider, or any other threshold given by hand)."""
    if threshold.get("calibrated"):
        return "calibrated"
    if threshold.get("source") == "model default":
        return "model default"
    return SET_WITH_OPTION if threshold.get("detail") == SET_WITH_OPTION else "set by hand"


def uncalibrated_threshold_words(threshold: Mapping) -> str:
    """An uncalibrated threshold (a prediction's ``uns`` record) in a sentence: "the model's default
    threshold", "a threshold set with --threshold" or "a threshold set by hand"."""
    origin = threshold_origin(threshold)
    return "the model's default threshold" if origin == "model default" else f"a threshold {origin}"


def threshold_info(adata: ad.AnnData, *, key_added: str | None = None) -> dict:
    """``{"value", "source", "calibrated", "detail"}`` of the current threshold."""
    return dict(adata.uns[result_keys(key_added).run]["threshold"])


def summary(adata: ad.AnnData, *, key_added: str | None = None) -> dict:
    """Counts of cells by called label at the current threshold; ``n_filtered``: the cells the
    prediction's mask left out, labelled ``filtered (QC)`` (the QC filter) or ``left out (mask)``
    (a mask column of the user's own; :func:`~scatd_core.inputs.left_out_label` says which)."""
    keys = result_keys(key_added)
    info = adata.uns[keys.run]
    pos = info["positive_label"]
    counts = adata.obs[keys.label].astype(str).value_counts()
    n_called = int(counts.get(pos, 0) + counts.get(info["negative_label"], 0))
    thr = info["threshold"]
    return {"threshold": thr["value"], "calibrated": bool(thr["calibrated"]), "n_cells": int(adata.n_obs),
            "n_resistant": int(counts.get(pos, 0)), "n_sensitive": int(counts.get(info["negative_label"], 0)),
            "n_not_scored": int(counts.get(NOT_SCORED, 0)), "n_filtered": int(sum(counts.get(x, 0) for x in LEFT_OUT)),
            "fraction_resistant": round(counts.get(pos, 0) / n_called, 4) if n_called else None,
            "batch_size_lowered_to": info["params"].get("batch_size_lowered_to")}


def lowered_batch_message(counts: dict) -> str | None:
    """What to tell the user when the device ran out of memory and the batch was split."""
    size = counts.get("batch_size_lowered_to")
    if not size:
        return None
    return (f"The device ran out of memory, so the batch was lowered to {size:,} cells and the run went on; "
            f"the results are complete. Use this batch size next time to skip the retries.")


def calibrate(adata: ad.AnnData, *, expected_fraction: float | None = None, label_column: str | None = None,
              method: str = "youden", key_added: str | None = None) -> dict:
    """Set the threshold from outside information, so the calls are calibrated to this dataset.

    Parameters
    ----------
    expected_fraction
        The share of cells expected to be resistant (from a bulk assay, a pathologist ...): the
        threshold calls that share of the scored cells resistant.
    label_column
        A column with known responses for some cells (its direction recorded, see
        :func:`scatd_core.labels.set_label_direction`); at least 2 labelled cells per class.
    method
        With labels: ``"youden"`` (sensitivity + specificity - 1) or ``"mcc"`` (Matthews).

    Returns the new threshold record (see :func:`threshold_info`).
    """
    from scatd_core import metrics
    from scatd_core.labels import encode_column

    keys = result_keys(key_added)
    prob = adata.obs[keys.prob].to_numpy(dtype=np.float64)
    if (expected_fraction is None) == (label_column is None):
        raise InputError("Calibrate from either an expected resistant fraction or a label column.")
    if expected_fraction is not None:
        expected = float(expected_fraction)
        t = metrics.fraction_threshold(prob, expected)
        scored = prob[np.isfinite(prob)]
        share = float((scored > t).mean())
        detail = f"calls the expected {expected:.0%} of the scored cells resistant"
        if abs(share - expected) * scored.size > 1:  # more than a cell away: tied probabilities
            n_top = int((scored == scored.max()).sum())
            detail = (f"calls {share:.1%} of the scored cells resistant, the closest share to the expected "
                      f"{expected:.0%} that a threshold gives: cells with equal P(resistant) are called together "
                      f"({n_top:,} cells share the highest P, {scored.max():.6g})")
        set_threshold(adata, t, "expected fraction", key_added=key_added, detail=detail)
        return threshold_info(adata, key_added=key_added)
    if method not in ("youden", "mcc"):
        raise InputError(f"Unknown calibration method {method!r}; use 'youden' or 'mcc'.")
    from scatd_core.training_cells import without_training_cells

    # not on cells whose labels trained the model (few-shot), as the evaluation leaves them out
    y = without_training_cells(adata, encode_column(adata, label_column), key_added=key_added)
    known = np.isfinite(y) & np.isfinite(prob)
    n_pos, n_neg = int((y[known] == 1).sum()), int((y[known] == 0).sum())
    if n_pos < 2 or n_neg < 2:
        raise InputError(f"'{label_column}' has {n_pos} resistant and {n_neg} sensitive labelled, scored cells; "
                         "calibrating needs at least 2 of each.", "Label a few more cells of each class.")
    t = (metrics.youden_threshold if method == "youden" else metrics.mcc_threshold)(y, prob)
    name = "Youden's J" if method == "youden" else "the Matthews correlation"
    truth, called = y[known] == 1, prob[known] > t
    if method == "youden":
        best = float(called[truth].mean() - called[~truth].mean())
    else:
        from sklearn.metrics import matthews_corrcoef

        best = float(matthews_corrcoef(truth, called))
    label = "Youden's J" if method == "youden" else "Matthews correlation"
    what_to_do = ("Check which value of the label column means resistant, label more cells, or calibrate with an "
                  "expected resistant fraction instead.")
    if best <= 0:  # reached only by calling every cell, or none, resistant: no calibration
        calls = ("every labelled cell" if called.all() else "no cell" if not called.any()
                 else "cells regardless of their labels")
        raise InputError(f"The labelled cells of '{label_column}' give no threshold better than chance: the best "
                         f"{label} is {best:.2f}, reached by calling {calls} resistant. The model does not separate "
                         "these labels (or the label direction is the wrong way round).", what_to_do)
    auroc = metrics.auroc(y, prob)
    low, high = metrics.auroc_interval(auroc, n_pos, n_neg)
    if low <= 0.5:  # the best of many thresholds on labels the model does not separate: a fit to noise
        shown = "-".join(metrics.interval_ends(low, high))
        raise InputError(f"The labelled cells of '{label_column}' do not pin a threshold down: on them the model's "
                         f"AUROC is {auroc:.3f} (95% interval {shown}, {n_pos} resistant and {n_neg} "
                         "sensitive), not distinguishable from chance, so the threshold that maximises the "
                         f"{label} would only fit their noise.", what_to_do)
    set_threshold(adata, t, "labelled cells", key_added=key_added,
                  detail=f"maximises {name} on {n_pos} resistant and {n_neg} sensitive labelled cells of "
                         f"'{label_column}'", label_column=label_column)
    return threshold_info(adata, key_added=key_added)


def clear(adata: ad.AnnData, *, key_added: str | None = None, derived_only: bool = False) -> None:
    """Remove a prediction and what was computed from it (UMAP, clusters, biomarkers) from
    ``adata``; with ``derived_only``, only what was computed from it. A UMAP the data brought is
    never removed: it stays in ``obsm['X_umap']``, or goes back there from ``obsm['X_umap_original']``
    where scATD's own UMAP had taken its place (:func:`scatd_core.embed.forget_umap`)."""
    from scatd_core.embed import forget_umap

    keys = result_keys(key_added)
    own = () if derived_only else (keys.prob, keys.prob_sd, keys.label, keys.scored, keys.not_scored_reason)
    for col in (*own, _keys.CLUSTER, _keys.EXPLAINED):
        if col in adata.obs:
            del adata.obs[col]
    for key in (*(() if derived_only else (keys.latent,)), _keys.ATTRIBUTIONS, _keys.ATTRIBUTION_INPUTS):
        if key in adata.obsm:
            del adata.obsm[key]
    forget_umap(adata)
    for key in (*(() if derived_only else (keys.run,)), _keys.BIOMARKERS):
        adata.uns.pop(key, None)


_RATES: dict[tuple[str, str], float] = {}

#: Measured cost of a prediction over the cost of its linear layers at the probed rates (reading,
#: the transform, the activations, writing the results): ``benches/bench_predict.py`` prints
#: predict's seconds next to this estimate.
ESTIMATE_OVERHEAD = 1.15


def _flop_rate(device: torch.device) -> float:
    """Dense float32 GEMM throughput of ``device`` (FLOP/s), measured once per process (~0.05 s)."""
    key = (str(device), "gemm")
    if key not in _RATES:
        a = torch.randn(256, 2048, device=device)
        b = torch.randn(2048, 1024, device=device)
        with torch.inference_mode():
            a @ b  # warm-up
            _sync(device)
            t0, reps = time.perf_counter(), 5
            for _ in range(reps):
                a @ b
            _sync(device)
        _RATES[key] = reps * 2 * 256 * 2048 * 1024 / max(time.perf_counter() - t0, 1e-9)
    return _RATES[key]


def _sparse_rate(device: torch.device) -> float:
    """Throughput of the sparse first layer (multiply-adds of stored values x output width per
    second, x 2 as FLOPs), measured once per process (~0.3 s) on a batch shaped like a real one:
    1,024 cells (the CPU batch) with ~7 % of 8,192 genes expressed, drawn with a skewed gene
    popularity as in single-cell data (a few genes in most cells, most in few), into 2,048 outputs.
    The kernel's rate depends on that shape: a 256-cell batch over 1,024 outputs, the probe used
    before, ran at about half the rate of a published-size prediction, and the estimate erred long
    by up to 2.6x (``benches/bench_predict.py``)."""
    key = (str(device), "sparse")
    if key not in _RATES:
        import scipy.sparse as sp

        from scatd_core.nn.sparse import sparse_linear, warm_up

        warm_up()
        rng = np.random.default_rng(0)
        n_cells, n_genes, n_out, per_cell = 1024, 8192, 2048, 655
        popularity = rng.lognormal(0.0, 1.5, n_genes)
        cols = rng.choice(n_genes, size=(n_cells, per_cell), p=popularity / popularity.sum())
        x = sp.csr_matrix((np.ones(cols.size, dtype=np.float32), (np.repeat(np.arange(n_cells), per_cell),
                                                                  cols.ravel())), shape=(n_cells, n_genes))
        x.sum_duplicates()  # a gene drawn twice for a cell is one stored value
        w, b = torch.full((n_genes, n_out), 0.01), torch.zeros(n_out)
        with torch.inference_mode():
            sparse_linear(batch_tensor(x, device), w, b)  # first touch of the output and weights
            t0 = time.perf_counter()
            for _ in range(2):
                sparse_linear(batch_tensor(x, device), w, b)
        _RATES[key] = 2 * 2 * x.nnz * n_out / max(time.perf_counter() - t0, 1e-9)
    return _RATES[key]


def warm_up(device: str = "auto") -> None:
    """Time the rates :func:`estimate_seconds` uses (once per process, ~0.5 s), e.g. in a server's
    start-up thread, so that the first estimate shown does not wait for them."""
    dev = resolve_device(device)
    _flop_rate(dev)
    if dev.type == "cpu":
        _sparse_rate(dev)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_flops(arch) -> tuple[int, int, int]:
    """FLOPs per cell of one member, as dense products: the first layer (fc and its shortcut),
    the rest of the encoder with both latent maps, the head (also :func:`scatd_core.explain.estimate`)."""
    enc = arch.encoder_dims
    layer = [2 * a * b * (2 if a != b else 1) for a, b in zip(enc[:-1], enc[1:])]  # fc + shortcut where sizes differ
    rest = sum(layer[1:]) + 2 * 2 * enc[-1] * arch.z_dim
    head = 2 * arch.z_dim * (arch.head_dim or 1) + 2 * (arch.head_dim or 1) * (arch.class_num or 2)
    return layer[0], rest, head


def estimate_seconds(bundle, n_cells: int, *, mode: str = "mean", n_samples: int = 50, device: str = "auto",
                     density: float | None = None) -> float:
    """Expected run time of :func:`predict` from a calibrated per-cell cost, without predicting.

    Every linear layer costs ``2 x in x out`` FLOPs per cell at the device's GEMM rate, except a
    first layer fed sparse batches (``density``: the fraction of non-zero model inputs, for an
    expression model on a CPU at most :data:`~scatd_core.inputs.SPARSE_MAX_DENSITY`), which
    costs ``2 x density x in x out`` at the sparse product's rate; sample mode re-runs the head
    ``n_samples`` times. Both rates are timed once per process on small problems (~0.1 s);
    :data:`ESTIMATE_OVERHEAD` covers the rest (measured by ``benches/bench_predict.py``).
    """
    from scatd_core.inputs import SPARSE_MAX_DENSITY

    dev = resolve_device(device)
    arch = bundle.architecture
    first, rest, head = layer_flops(arch)
    rate = _flop_rate(dev)
    seconds = (rest + head * (n_samples if mode == "sample" else 1)) / rate * arch.n_members
    if density is not None and bundle.input_kind == "expression" and dev.type == "cpu" and \
            density <= SPARSE_MAX_DENSITY:
        seconds += density * first * arch.n_members / _sparse_rate(dev)
    else:
        seconds += first * arch.n_members / rate
    return ESTIMATE_OVERHEAD * n_cells * seconds
