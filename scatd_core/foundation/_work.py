"""Running a foundation model over many cells: length-sorted batches, mixed precision, progress."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import numpy as np
import torch

from scatd_core._progress import Eta
from scatd_core.errors import Cancelled

#: Tokens per forward pass (cells x padded length). On a CPU larger batches buy nothing (the
#: work is already in large matrix products) and cost memory; a GPU needs many tokens to be busy.
BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}
#: Cells read and aligned at once; batches are formed inside such a chunk, in input order between
#: chunks, so backed (on-disk) data are read sequentially.
CHUNK_CELLS = 2048


def batch_tokens(device: torch.device, requested: int | None = None) -> int:
    return int(requested) if requested else BATCH_TOKENS.get(device.type, BATCH_TOKENS["cpu"])


def length_batches(lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Positions of ``lengths`` grouped into batches of similar length, ``cells x longest <= max_tokens``.

    Sorting by length keeps padding small; a cell longer than the budget gets a batch of its own.
    """
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < order.size:
        stop = start + 1
        while stop < order.size and (stop - start + 1) * lengths[order[stop]] <= max_tokens:
            stop += 1
        yield order[start:stop]
        start = stop


def batch_shapes(lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """``(cells, padded length)`` of each forward pass an embedding of cells of ``lengths`` tokens
    makes: length-sorted batches within chunks of :data:`CHUNK_CELLS` cells, as the backbones run."""
    lengths = np.asarray(lengths)
    return [(int(b.size), int(chunk[b].max())) for start in range(0, lengths.size, CHUNK_CELLS)
            for chunk in (lengths[start:start + CHUNK_CELLS],) for b in length_batches(chunk, max_tokens)]


#: The largest forward pass of one layer timed to calibrate an estimate (FLOPs): ~30-100 ms on two
#: CPU cores. A costlier batch is timed with fewer cells, then fewer tokens, and the rate carried
#: over (a smaller batch runs at a lower rate: the estimate errs long rather than short).
CALIBRATION_FLOPS = 2.5e9
_LAYER_TIMES: dict[tuple, float] = {}


def layer_seconds(make_layer: Callable[[], torch.nn.Module], key: tuple, cells: int, length: int, hidden: int,
                  device: torch.device, **call) -> float:
    """Seconds of one forward pass of one backbone layer (``make_layer()``, random weights) over
    ``cells`` x ``length`` tokens on ``device``: one timed pass after a warm-up one (the best of five
    for a tiny batch, whose pass takes well under a millisecond when the machine is not busy).
    Cached per process, layer shape (``key``) and batch shape."""
    stamp = (str(device), *key, int(cells), int(length))
    if stamp not in _LAYER_TIMES:
        from scatd_core.predict import _sync

        layer = _LAYER_CACHE.get((str(device), *key))
        if layer is None:
            _LAYER_CACHE.clear()
            with torch.device("meta"):
                layer = make_layer()
            layer = layer.to_empty(device=device).eval()
            g = torch.Generator().manual_seed(0)  # weights of no importance; torch's global RNG untouched
            with torch.no_grad():
                for p in layer.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                for b in layer.buffers():
                    b.zero_()
            _LAYER_CACHE[(str(device), *key)] = layer
        x = (torch.randn(int(cells), int(length), int(hidden), generator=torch.Generator().manual_seed(1)) * 0.5
             ).to(device)
        extra = {k: v(int(cells), int(length)).to(device) if callable(v) else v for k, v in call.items()}
        best = float("inf")
        with torch.inference_mode(), autocast(device):
            for i in range(6 if int(cells) * int(length) < 64 else 2):
                _sync(device)
                t0 = time.perf_counter()
                layer(x, **extra)
                _sync(device)
                if i:
                    best = min(best, time.perf_counter() - t0)
        _LAYER_TIMES[stamp] = best
    return _LAYER_TIMES[stamp]


_LAYER_CACHE: dict[tuple, torch.nn.Module] = {}


def layer_time_model(make_layer, key: tuple, flops: Callable[[int, int], tuple[float, float]],
                     shapes: list[tuple[int, int]], hidden: int, device: torch.device, **call) -> float:
    """Seconds of one layer over all the batches ``shapes`` (``(cells, padded length)`` each), from
    the layer timed on this machine. ``flops(cells, length)``: one layer's FLOPs as ``(linear,
    attention)``.

    Timed: a tiny batch (what each call costs whatever its size), and the costliest batch cut to
    :data:`CALIBRATION_FLOPS` (fewer cells, then fewer tokens); the rate of the second carries over
    to each batch by its FLOPs. (Fitting the attention's own rate from a second, shorter batch was
    tried: on a busy machine the fit was noise, and sent long cells' estimates off by 5-10x.)"""
    if not shapes:
        return 0.0

    def total(c, n):
        return sum(flops(c, n))

    cells, length = max(shapes, key=lambda s: total(*s))
    if total(cells, length) > CALIBRATION_FLOPS:
        cells = max(1, int(cells * CALIBRATION_FLOPS / total(cells, length)))
        while length > 16 and total(cells, length) > CALIBRATION_FLOPS:
            length = max(16, int(length * 0.8))
    timed = layer_seconds(make_layer, key, cells, length, hidden, device, **call)
    # a tiny pass slowed by a busy machine must not eat the timed one (that made the rate 20x too high)
    fixed = min(layer_seconds(make_layer, key, 1, 4, hidden, device, **call), 0.5 * timed)
    per_flop = max(timed - fixed, 1e-9) / max(total(cells, length), 1.0)
    return sum(fixed + total(c, n) * per_flop for c, n in shapes)


def autocast(device: torch.device):
    """bf16 (fp16 where bf16 is missing) autocast on CUDA; full precision on a CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Work:
    """Progress over a known amount of work (FLOPs), with the time left, and cancellation."""

    def __init__(self, total: float, n_cells: int, label: str,
                 progress: Callable[[float, str], None] | None, should_stop: Callable[[], bool] | None,
                 start: float = 0.0, span: float = 1.0):
        self.total, self.n_cells, self.label = max(float(total), 1.0), int(n_cells), label
        self.progress, self.should_stop = progress, should_stop
        self.start, self.span = start, span
        self.done, self.cells, self.eta = 0.0, 0, Eta()

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"{self.label} cancelled; nothing was changed.")

    def step(self, cells: int, work: float) -> None:
        self.done += float(work)
        self.cells += int(cells)
        if self.progress is not None:
            fraction = min(self.done / self.total, 1.0)
            self.progress(self.start + self.span * fraction,
                          f"{self.label} · {self.cells:,} of {self.n_cells:,} cells · {self.eta.text(fraction)}")


#: Why a cell that went through the backbone has no embedding: its output was not finite.
NON_FINITE_OUTPUT = "non_finite_output"


def finite_rows(values: np.ndarray) -> np.ndarray:
    """Which output rows are finite; the others are set to NaN in place (no embedding), to be
    counted under :data:`NON_FINITE_OUTPUT`: the backbone's weights, not the cell, are at fault
    (damaged weights, or a half-precision overflow on a GPU)."""
    ok = np.isfinite(values).all(axis=1)
    values[~ok] = np.nan
    return ok


#: Why a cell is not given to the backbone although it has expressed genes: its values are no
#: expression (the keys, and the words, of :data:`scatd_core.inputs.REASONS`, so a prediction
#: counts these cells as the Dist_VAE path counts them). Checked in this order.
FAULTY = ("non_finite", "negative_values")


def faulty_rows(block, columns: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which rows of ``block`` (CSR or dense) hold a NaN or infinite value (``non_finite``), and
    which, of the others, a negative one (``negative_values``): values no expression has, which
    the backbone would otherwise pass over without a word (scFoundation and Geneformer keep only
    values > 0, and a NaN or infinite value spoils the cell's total count). ``columns``: a
    boolean mask of the data columns that reach the model (default: all)."""
    import scipy.sparse as sp

    n = block.shape[0]
    if sp.issparse(block):
        block = sp.csr_matrix(block)
        values = block.data
        row = np.repeat(np.arange(n), np.diff(block.indptr))
        if columns is not None:
            keep = columns[block.indices]
            values, row = values[keep], row[keep]
        with np.errstate(invalid="ignore"):
            non_finite = np.bincount(row[~np.isfinite(values)], minlength=n) > 0
            negative = np.bincount(row[values < 0], minlength=n) > 0
    else:
        x = np.asarray(block)
        if columns is not None:
            x = x[:, columns]
        with np.errstate(invalid="ignore"):
            non_finite = ~np.isfinite(x).all(axis=1)
            negative = (x < 0).any(axis=1)
    return {"non_finite": non_finite, "negative_values": negative & ~non_finite}
