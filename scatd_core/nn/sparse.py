"""A sparse first layer: ``x @ weight_t + bias`` for a sparse batch ``x``, on CPU.

scRNA-seq model inputs are mostly zeros (Dist_VAE: ~1,500 of 19,264 genes expressed per cell,
8 %), so the first layer's product needs only the rows of ``weight_t`` of the expressed genes.
The kernel walks the batch gene by gene (CSC order): each expressed gene's row of
``weight_t`` is read once per batch and added, scaled, into the output rows of the cells that
express it. The output columns are split into blocks, one thread per block at a time, so the
part of the output a thread updates stays in its cache and no two threads write the same
numbers; each output value is summed in the same order whatever the number of threads
(deterministic). The work is ``2 x nnz x width`` instead of ``2 x cells x genes x width``; on
the development machine it beats the dense GEMM up to :data:`scatd_core.inputs.SPARSE_MAX_DENSITY`
(measured by ``benches/bench_predict.py``).

The kernel is compiled by numba on first use and cached on disk (``cache=True``), so later
processes load it in milliseconds; :func:`warm_up` compiles it ahead of time.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

#: Output columns per block (rounded so that every thread has as many blocks): a block of a
#: 1,024-cell batch's output (4 MB) stays in L3 while every expressed gene adds into it, and each
#: gene's row of ``weight_t`` is read in long runs. On the 2-core development machine 1,024
#: columns made the whole prediction ~12 % faster than 256 (``benches/bench_predict.py``, 2.20 vs
#: 1.95-1.99x the same-run GEMM limit); the result is the same to the bit (each output value sums
#: the same genes in the same order whatever the block width).
BLOCK_COLUMNS = 1024

_KERNEL = None


def _csc_dense_blocks(indptr, indices, data, weight_t, out, blocks):
    """Add ``x @ weight_t`` into ``out`` for the output column blocks ``blocks`` (x in CSC arrays).

    ``out`` is block-major (``n_blocks x n_rows x width``): a block's rows are contiguous, so the
    rows a gene's cells update stay in few memory pages (measured ~12 % faster than a
    row-major output). A gene's cells are taken four at a time, so each value of the gene's
    weight row is loaded once for four output rows (~14 % faster than one at a time); every
    output row still receives its genes one by one in gene order, so the sums are the same.
    """
    n_in, n_out = weight_t.shape
    width = out.shape[2]
    for b in blocks:
        c0 = b * width
        c1 = min(c0 + width, n_out)
        block = out[b]
        for j in range(n_in):
            start, stop = indptr[j], indptr[j + 1]
            if start == stop:
                continue
            w = weight_t[j, c0:c1]
            p = start
            while p + 3 < stop:
                o1, o2, o3, o4 = block[indices[p]], block[indices[p + 1]], block[indices[p + 2]], block[indices[p + 3]]
                v1, v2, v3, v4 = data[p], data[p + 1], data[p + 2], data[p + 3]
                for c in range(c1 - c0):
                    wc = w[c]
                    o1[c] += v1 * wc
                    o2[c] += v2 * wc
                    o3[c] += v3 * wc
                    o4[c] += v4 * wc
                p += 4
            while p < stop:
                o = block[indices[p]]
                v = data[p]
                for c in range(c1 - c0):
                    o[c] += v * w[c]
                p += 1


def _kernel():
    """:func:`_csc_dense_blocks` compiled by numba (or loaded from its on-disk cache) on first use."""
    global _KERNEL
    if _KERNEL is None:
        from numba import njit

        _KERNEL = njit(nogil=True, fastmath=True, cache=True)(_csc_dense_blocks)
    return _KERNEL


def _beta_notice_said() -> None:
    """torch warns once per process that sparse CSC tensors are "in beta" (only their storage is
    used here). It is said here, at import, silenced; the functions below then run with no
    warnings filter of their own: ``warnings.catch_warnings`` changes the process-wide filters and
    is not thread-safe (two that overlap, on a server's threads, can leave a filter installed for
    every thread), and they run in every prediction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.eye(2).to_sparse_csc()
        torch.sparse_csc_tensor(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), size=(2, 2))


_beta_notice_said()


def csc_tensor(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSC tensor over the given arrays (no copy): what :func:`sparse_linear` takes."""
    return torch.sparse_csc_tensor(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(data),
                                   size=shape, check_invariants=False)


def batch_tensor(x, device: torch.device) -> torch.Tensor:
    """A model-input batch on ``device``: a float32 ndarray as a dense tensor, a scipy CSR/CSC
    matrix as a sparse CSC tensor (:meth:`~scatd_core.nn.models.DrugClassifier.first_layer`
    takes either; the sparse one moves a fraction of the bytes to a GPU)."""
    if hasattr(x, "tocsc"):
        csc = x.tocsc()
        tensor = csc_tensor(csc.indptr, csc.indices, csc.data.astype(np.float32, copy=False), csc.shape)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device.type == "cpu" else tensor.to(device)


def sparse_linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor,
                  threads: int | None = None) -> torch.Tensor:
    """``x @ weight_t + bias`` for a sparse ``x`` (CSC or CSR layout), float32.

    On CPU the product runs in the numba kernel on ``threads`` threads (default: torch's thread
    count); on another device ``x`` is made dense there and multiplied by the GEMM library (the
    transfer was the sparse batch, a fraction of the dense one).
    """
    if x.device.type != "cpu":
        return torch.addmm(bias, x.to_dense(), weight_t)
    if x.layout != torch.sparse_csc:
        x = x.to_sparse_csc()
    n, n_out = x.shape[0], weight_t.shape[1]
    weight_t = weight_t.detach().to(torch.float32).contiguous()
    indptr = x.ccol_indices().numpy()
    indices = x.row_indices().numpy()
    data = x.values().detach().to(torch.float32).numpy()
    threads = max(1, int(threads or torch.get_num_threads()))
    n_blocks = -(-n_out // BLOCK_COLUMNS)
    n_blocks = threads * -(-n_blocks // threads)  # the same number of blocks per thread
    width = -(-n_out // n_blocks)
    width = 8 * -(-width // 8)  # whole AVX registers
    n_blocks = -(-n_out // width)
    blocks = [np.arange(k, n_blocks, threads, dtype=np.int64) for k in range(threads)]
    out = np.zeros((n_blocks, n, width), dtype=np.float32)
    kernel = _kernel()
    args = (indptr, indices, data, weight_t.numpy(), out)
    workers = [threading.Thread(target=kernel, args=(*args, b), daemon=True) for b in blocks[1:]]
    for worker in workers:
        worker.start()
    kernel(*args, blocks[0])
    for worker in workers:
        worker.join()
    rows = torch.from_numpy(out).permute(1, 0, 2).reshape(n, n_blocks * width)[:, :n_out]
    return torch.add(rows, bias.detach().to(torch.float32))


def warm_up() -> None:
    """Compile (or load) the kernel on a tiny problem, e.g. in a background thread at start-up."""
    eye = np.arange(5, dtype=np.int32)
    x = csc_tensor(eye, eye[:4].copy(), np.ones(4, dtype=np.float32), (4, 4))
    sparse_linear(x, torch.ones(4, 8), torch.zeros(8), threads=1)
