"""The per-gene sums of the attribution pass, in one pass over a call's attributions.

For every call of the attributor (a few hundred cells x up to ~20,000 features) the ranking needs,
per feature and in float64: the sum of |attribution| over all cells, the sums of attribution and
of input over each predicted group, ``sum a (x - b)`` and ``sum (x - b)^2`` (the fitted input
gradient), and per cell the sum of its attributions (completeness). In numpy each is its own
pass over the call's matrices, eleven in all, on one core: ~0.4 ms per cell at the published
size, more than the first layer. :func:`column_sums` computes them in one pass, columns split
between threads (each thread owns its columns, so no two write the same sum), compiled by numba
on first use and cached on disk. The products are taken in float64 (numpy took ``a * (x - b)``
and ``(x - b)^2`` in the inputs' float32 before summing in float64), so sums may differ from the
numpy form in the last float32 digits, never beyond.
"""

from __future__ import annotations

import numpy as np

from scatd_core.explain._wilcoxon import parallel_kernel

#: Rows of the output of :func:`column_sums`, in order (``abs``, ``ad`` and ``dd`` over every cell,
#: and again over the first group alone: a subsample that enriched a rare group weights the groups).
SUMS = ("abs", "attr_pos", "attr_neg", "x_pos", "x_neg", "ad", "dd", "abs_pos", "ad_pos", "dd_pos")
#: Columns per thread's block (the block's ten sums stay in the CPU's L1/L2 cache).
BLOCK_COLUMNS = 512

_KERNEL = None


def _column_sums(a, x, base, group, present, sums, row_parts):
    """``sums`` (10 x features, zeros on entry; rows as :data:`SUMS`) and ``row_parts`` (blocks x
    cells: each block's share of every cell's attribution sum) of attributions ``a`` and inputs
    ``x`` (cells x features), baseline ``base``, ``group`` per cell (1 first group, 0 second, -1
    neither) and ``present`` (cells x features, or 0 x 0 for all present)."""
    n, f = a.shape
    n_blocks = row_parts.shape[0]
    width = (f + n_blocks - 1) // n_blocks
    masked = present.shape[0] > 0
    for blk in _prange(n_blocks):
        lo = blk * width
        hi = min(f, lo + width)
        for i in range(n):
            g = group[i]
            row = 0.0
            for j in range(lo, hi):
                v = np.float64(a[i, j])
                xv = np.float64(x[i, j])
                d = xv - np.float64(base[j])
                if masked and not present[i, j]:
                    d = 0.0
                sums[0, j] += abs(v)
                if g == 1:
                    sums[1, j] += v
                    sums[3, j] += xv
                    sums[7, j] += abs(v)
                    sums[8, j] += v * d
                    sums[9, j] += d * d
                elif g == 0:
                    sums[2, j] += v
                    sums[4, j] += xv
                sums[5, j] += v * d
                sums[6, j] += d * d
                row += v
            row_parts[blk, i] = row


def _prange(n):  # replaced by numba.prange in the compiled kernel
    return range(n)


def _kernel():
    """:func:`_column_sums` compiled, column blocks on threads (:func:`parallel_kernel`)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = parallel_kernel(_column_sums, globals())
    return _KERNEL


def column_sums(a: np.ndarray, x: np.ndarray, base: np.ndarray, group: np.ndarray,
                present: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: per-feature float64 sum for name in SUMS}, per-cell sum of a in float64)``.

    ``a``: attributions, ``x``: inputs (cells x features, dense), ``base``: the baseline input
    (features), ``group``: per cell 1 (first group), 0 (second) or -1 (in neither; counted in
    ``abs``, ``ad``, ``dd`` only; ``abs_pos``, ``ad_pos``, ``dd_pos``: the first group's alone), ``present``: boolean cells x features, ``x - base`` taken as 0
    where False (None: everywhere present).
    """
    a = np.ascontiguousarray(a)
    x = np.ascontiguousarray(x)
    n, f = a.shape
    if x.shape != (n, f) or np.shape(base) != (f,) or np.shape(group) != (n,):
        raise ValueError(f"shapes do not match: a {a.shape}, x {x.shape}, base {np.shape(base)}, "
                         f"group {np.shape(group)}")
    if present is None:
        present = np.zeros((0, 0), dtype=np.bool_)
    elif present.shape != (n, f):
        raise ValueError(f"present has shape {present.shape}, not {(n, f)}")
    base = np.ascontiguousarray(base, dtype=x.dtype)
    sums = np.zeros((len(SUMS), f))
    n_blocks = max(1, -(-f // BLOCK_COLUMNS))
    row_parts = np.zeros((n_blocks, n))
    _kernel()(a, x, base, np.ascontiguousarray(group, dtype=np.int8), np.ascontiguousarray(present, dtype=np.bool_),
              sums, row_parts)
    return dict(zip(SUMS, sums)), row_parts.sum(axis=0)
