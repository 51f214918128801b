"""Matrix helpers written once and used everywhere: row batches, streaming moments, log1p-CP10k.

Every function here accepts in-memory dense or sparse matrices and the row-sliceable on-disk
matrices of a backed AnnData (``adata.X`` opened with ``backed="r"``), reading rows in batches
so memory follows the batch size, not the number of cells.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import scipy.sparse as sp

#: Counts per cell that :func:`log1p_cp10k` scales every cell to (scFoundation's and scanpy's 1e4).
TARGET_SUM = 1e4


def as_block(block):
    """A slice of X as a CSR matrix or a dense ndarray (np.matrix and sparse arrays included)."""
    if sp.issparse(block):
        return sp.csr_matrix(block)
    return np.asarray(block)


def row_sliceable(X):
    """X itself, or a CSR copy when its sparse format cannot be sliced by rows (COO, DIA ...)."""
    if sp.issparse(X) and X.format not in ("csr", "csc"):
        return X.tocsr()
    return X


def is_backed_sparse(X) -> bool:
    """Whether X is anndata's on-disk CSR/CSC dataset (``adata.X`` of a backed sparse h5ad)."""
    return hasattr(X, "format") and hasattr(X, "to_memory")


def stored_fraction(X) -> float:
    """Fraction of X's entries that are stored: ``nnz / size`` for in-memory or backed sparse
    matrices (from the stored arrays' length, nothing read), 1.0 for dense ones."""
    size = X.shape[0] * X.shape[1]
    if not size:
        return 1.0
    if sp.issparse(X):
        return X.nnz / size
    if is_backed_sparse(X):
        return X.group["data"].shape[0] / size
    return 1.0


#: A dense batch of rows is kept below this size (a wide dense matrix gets fewer rows per batch).
MAX_DENSE_BATCH_BYTES = 64 << 20


def row_batches(X, batch_size: int = 10_000) -> Iterator[tuple[int, int, object]]:
    """Yield ``(start, stop, block)`` over the rows of ``X``; ``block`` is CSR or ndarray.

    With a backed AnnData only one batch is in memory at a time; dense batches stay under
    :data:`MAX_DENSE_BATCH_BYTES` whatever the width.
    """
    X = row_sliceable(X)
    n = X.shape[0]
    if not sp.issparse(X) and not is_backed_sparse(X) and len(X.shape) == 2:
        itemsize = np.dtype(getattr(X, "dtype", np.float32)).itemsize
        batch_size = max(1, min(batch_size, MAX_DENSE_BATCH_BYTES // max(1, X.shape[1] * itemsize)))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield start, stop, as_block(X[start:stop])


def sample_rows(X, n_cells: int = 2000, *, max_values: int = 5_000_000, n_blocks: int = 8):
    """A deterministic sample of rows: ``n_blocks`` contiguous blocks spread evenly over X.

    Contiguous blocks keep reads cheap on backed (on-disk) matrices. Dense matrices are
    sampled to at most ``max_values`` entries so that a wide matrix stays small in memory.
    """
    X = row_sliceable(X)
    n, m = X.shape
    if not sp.issparse(X) and not is_backed_sparse(X):
        n_cells = max(1, min(n_cells, max_values // max(m, 1)))
    if n <= n_cells:
        return as_block(X[0:n])
    size = max(1, n_cells // n_blocks)
    starts = np.linspace(0, n - size, n_blocks).astype(int)
    blocks = [as_block(X[s:s + size]) for s in starts]
    return sp.vstack(blocks, format="csr") if sp.issparse(blocks[0]) else np.vstack(blocks)


class MeanVar:
    """Per-column mean and variance accumulated over row blocks, in float64.

    Blocks are merged with Chan et al.'s pairwise update (each block's own mean and centred sum
    of squares), which stays exact for data far from zero, unlike running sums of squares.

    >>> acc = MeanVar()
    >>> for block in blocks: acc.update(block)
    >>> mean, var = acc.mean, acc.var(correction=0)
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, block) -> None:
        """Add the rows of a dense or sparse block."""
        self.add(*block_moments(block))

    def add(self, k: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Add a block given by its :func:`block_moments` (computed elsewhere, e.g. on a worker):
        adding the blocks in the same order gives the same numbers as :meth:`update`."""
        if k == 0:
            return
        if self.mean is None:
            self.n, self.mean, self._m2 = k, mean_b, m2_b
            return
        n = self.n + k
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (k / n)
        self._m2 = self._m2 + m2_b + delta * delta * (self.n * k / n)
        self.n = n

    def var(self, correction: int = 0) -> np.ndarray:
        """Variance with ``n - correction`` in the denominator (0: population, 1: sample)."""
        if self.mean is None:
            raise ValueError("no rows were added")
        return self._m2 / max(self.n - correction, 1)

    def std(self, correction: int = 0) -> np.ndarray:
        return np.sqrt(self.var(correction))


def block_moments(block) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """``(rows, column means, centred column sums of squares)`` of a dense or sparse block, in
    float64 (``(0, None, None)`` for an empty block): what :meth:`MeanVar.add` merges."""
    k = block.shape[0]
    if k == 0:
        return 0, None, None
    if sp.issparse(block):
        b = sp.csr_matrix(block, dtype=np.float64)
        mean_b = np.asarray(b.mean(axis=0)).ravel()
        sq = np.asarray(b.multiply(b).sum(axis=0)).ravel()
        return k, mean_b, np.maximum(sq - k * mean_b * mean_b, 0.0)
    b = np.asarray(block, dtype=np.float64)
    mean_b = b.mean(axis=0)
    return k, mean_b, ((b - mean_b) ** 2).sum(axis=0)


def mean_var(blocks: Iterable | object, correction: int = 0, batch_size: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and variance of a matrix (read in row batches) or of an iterable of blocks."""
    acc = MeanVar()
    if hasattr(blocks, "shape"):
        blocks = (block for _, _, block in row_batches(blocks, batch_size))
    for block in blocks:
        acc.update(block)
    return acc.mean, acc.var(correction)


def log1p_cp10k(block, totals: np.ndarray | None = None, *, copy: bool = True):
    """``log1p(x / total * 1e4)`` per row; rows whose total is 0 stay 0.

    Parameters
    ----------
    block
        Dense ndarray or CSR matrix (cells x genes).
    totals
        Per-row totals to scale by (default: the row sums of ``block``; pass them when the block
        is a column subset of the cell, e.g. the model's genes only vs the whole transcriptome).
    copy
        ``False`` transforms a float dense array or a CSR matrix's values in place.

    Sparse input stays sparse (only the stored values are transformed), so this is cheap before
    densifying a batch.
    """
    if totals is None:
        totals = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()  # float16 sums overflow
    totals = np.asarray(totals, dtype=np.float64).ravel()
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    if sp.issparse(block):
        out = sp.csr_matrix(block, copy=copy)
        if out.dtype.kind != "f":
            out = out.astype(np.float32)
        counts = np.diff(out.indptr)
        out.data *= np.repeat(scale, counts).astype(out.dtype, copy=False)
        np.log1p(out.data, out=out.data)
        return out
    dtype = np.result_type(block.dtype, np.float32)
    out = np.array(block, dtype=dtype) if copy else np.asarray(block, dtype=dtype)
    out *= scale[:, None].astype(out.dtype, copy=False)
    return np.log1p(out, out=out)
