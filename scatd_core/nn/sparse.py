"""A sparse first layer: ``x @ weight_t + bias`` for a sparse batch ``x``, on CPU.

scRNA-seq model inputs are mostly zeros (Dist_VAE: ~1,500 of 19,264 genes expressed per cell,
8 %), so the first layer's product needs only the rows of ``weight_t`` of the expressed genes:
the work is ``2 x nnz x width`` instead of ``2 x cells x genes x width``.

The kernel takes the batch cell by cell (CSR order) and tiles it twice, as a GEMM does:

- the output columns are split into blocks, one thread per block at a time, so no two threads
  write the same numbers;
- the genes are taken in tiles of a few hundred (:data:`TILE_BYTES` of ``weight_t`` per tile and
  column block, which stays in a core's L2 cache while every cell of the batch reads its expressed
  genes' rows from it), and each cell's output row stays in L1 while the tile's genes are added
  into it, eight at a time (one load and one store of the row per eight genes).

Every output value is the sum of its cell's genes one by one in gene order (the CSR rows'
order, sorted first where needed), whatever the number of threads, the block width or the tile
size (``tests/test_fast_paths.py``), so a prediction is deterministic. It gives the same numbers to
the bit as the kernel it replaced, which took the batch gene by gene (CSC order) into the rows of
the cells expressing each gene, and runs ~1.8x as fast at the 8 % non-zero of a published-size
Dist_VAE input (``benches/README.md``, session 50). It beats the dense GEMM up to about
:data:`scatd_core.inputs.SPARSE_MAX_DENSITY` non-zero (``benches/bench_predict.py --densities``).

The kernel is compiled by numba on first use and cached on disk (``cache=True``), so later
processes load it in milliseconds; :func:`warm_up` compiles it ahead of time.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import scipy.sparse as sp
import torch

#: Output columns per block (rounded so that every thread has as many blocks). Each output value
#: sums the same genes in the same order whatever the width (a speed setting only).
BLOCK_COLUMNS = 1024
#: Bytes of ``weight_t`` per gene tile and column block (the tile's genes = this / 4 / block width):
#: a tile is read by every cell of the batch, so it should stay in a core's L2 cache (2 MiB per core
#: on the machine it was measured on, where 0.5-1.5 MiB were equally fast; ``benches/README.md``).
TILE_BYTES = 1 << 20

_KERNEL = None


def _csr_tiles(indptr, indices, data, weight_t, out, blocks, cursor, tile):
    """Add ``x @ weight_t`` into ``out`` for the output column blocks ``blocks`` (x in CSR arrays,
    each row's column indices ascending).

    ``out`` is block-major (``n_blocks x n_rows x width``): a block's rows are contiguous.
    ``cursor`` (one int64 per row) is scratch: where each row is in its stored values. Genes are
    taken in tiles of ``tile``; within a tile a row's stored values are added eight at a time,
    the output value held while they are added in order, so each output value still receives its
    genes one by one in storage order. A row's values out of ascending order are still all added
    (the last tile takes every value left), only in another order.
    """
    n_in, n_out = weight_t.shape
    n = out.shape[1]
    width = out.shape[2]
    for b in blocks:
        c0 = b * width
        c1 = min(c0 + width, n_out)
        wd = c1 - c0
        block = out[b]
        for i in range(n):
            cursor[i] = indptr[i]
        for g1 in range(tile, n_in + tile, tile):
            for i in range(n):
                p = cursor[i]
                stop = indptr[i + 1]
                o = block[i]
                while p + 7 < stop and indices[p + 7] < g1:
                    w1, w2 = weight_t[indices[p], c0:c1], weight_t[indices[p + 1], c0:c1]
                    w3, w4 = weight_t[indices[p + 2], c0:c1], weight_t[indices[p + 3], c0:c1]
                    w5, w6 = weight_t[indices[p + 4], c0:c1], weight_t[indices[p + 5], c0:c1]
                    w7, w8 = weight_t[indices[p + 6], c0:c1], weight_t[indices[p + 7], c0:c1]
                    v1, v2, v3, v4 = data[p], data[p + 1], data[p + 2], data[p + 3]
                    v5, v6, v7, v8 = data[p + 4], data[p + 5], data[p + 6], data[p + 7]
                    for c in range(wd):
                        acc = o[c]
                        acc += v1 * w1[c]
                        acc += v2 * w2[c]
                        acc += v3 * w3[c]
                        acc += v4 * w4[c]
                        acc += v5 * w5[c]
                        acc += v6 * w6[c]
                        acc += v7 * w7[c]
                        acc += v8 * w8[c]
                        o[c] = acc
                    p += 8
                while p + 1 < stop and indices[p + 1] < g1:
                    w1, w2 = weight_t[indices[p], c0:c1], weight_t[indices[p + 1], c0:c1]
                    v1, v2 = data[p], data[p + 1]
                    for c in range(wd):
                        acc = o[c]
                        acc += v1 * w1[c]
                        acc += v2 * w2[c]
                        o[c] = acc
                    p += 2
                while p < stop and indices[p] < g1:
                    w1 = weight_t[indices[p], c0:c1]
                    v1 = data[p]
                    for c in range(wd):
                        o[c] += v1 * w1[c]
                    p += 1
                cursor[i] = p


def _kernel():
    """:func:`_csr_tiles` compiled by numba (or loaded from its on-disk cache) on first use."""
    global _KERNEL
    if _KERNEL is None:
        from numba import njit

        _KERNEL = njit(nogil=True, fastmath=True, cache=True)(_csr_tiles)
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
    """A torch sparse CSC tensor over the given arrays (no copy); :func:`sparse_linear` takes it too."""
    return torch.sparse_csc_tensor(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(data),
                                   size=shape, check_invariants=False)


def csr_tensor(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR tensor over the given arrays (no copy): what :func:`sparse_linear` runs on."""
    return torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(data),
                                   size=shape, check_invariants=False)


def batch_tensor(x, device: torch.device) -> torch.Tensor:
    """A model-input batch on ``device``: a float32 ndarray as a dense tensor, a scipy sparse
    matrix as a sparse CSR tensor with each row's genes in order
    (:meth:`~scatd_core.nn.models.DrugClassifier.first_layer` takes either; the sparse one moves a
    fraction of the bytes to a GPU)."""
    if sp.issparse(x):
        csr = _in_gene_order(x)
        tensor = csr_tensor(csr.indptr, csr.indices, csr.data.astype(np.float32, copy=False), csr.shape)
    else:
        tensor = torch.from_numpy(x)
    return tensor if device.type == "cpu" else tensor.to(device)


def _in_gene_order(x) -> sp.csr_matrix:
    """The scipy sparse matrix ``x`` as CSR with each row's genes in order (no copy when it is one)."""
    csr = x.tocsr()  # from CSC: the transposition lists each row's genes in order, repeated entries kept
    return csr if csr.has_sorted_indices else csr.sorted_indices()


def _csr_arrays(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x`` (torch sparse CSR, CSC or COO, on CPU) as CSR arrays, each row's genes in order, float32 values."""
    if x.layout == torch.sparse_csr:
        matrix = sp.csr_matrix((x.values().detach().to(torch.float32).numpy(), x.col_indices().numpy(),
                                x.crow_indices().numpy()), shape=tuple(x.shape))
    else:
        if x.layout != torch.sparse_csc:
            x = x.to_sparse_csc()
        matrix = sp.csc_matrix((x.values().detach().to(torch.float32).numpy(), x.row_indices().numpy(),
                                x.ccol_indices().numpy()), shape=tuple(x.shape))
    csr = _in_gene_order(matrix)
    return csr.indptr, csr.indices, csr.data


def sparse_linear(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor,
                  threads: int | None = None) -> torch.Tensor:
    """``x @ weight_t + bias`` for a sparse ``x`` (CSR, CSC or COO layout), float32.

    On CPU the product runs in the numba kernel on ``threads`` threads (default: torch's thread
    count); on another device ``x`` is made dense there and multiplied by the GEMM library (the
    transfer was the sparse batch, a fraction of the dense one).
    """
    if x.device.type != "cpu":
        return torch.addmm(bias, x.to_dense(), weight_t)
    n, n_out = x.shape[0], weight_t.shape[1]
    weight_t = weight_t.detach().to(torch.float32).contiguous()
    indptr, indices, data = _csr_arrays(x)
    threads = max(1, int(threads or torch.get_num_threads()))
    n_blocks = -(-n_out // BLOCK_COLUMNS)
    n_blocks = threads * -(-n_blocks // threads)  # the same number of blocks per thread
    width = -(-n_out // n_blocks)
    width = 8 * -(-width // 8)  # whole AVX registers
    n_blocks = -(-n_out // width)
    tile = max(8, TILE_BYTES // (4 * width))
    blocks = [np.arange(k, n_blocks, threads, dtype=np.int64) for k in range(threads)]
    out = np.zeros((n_blocks, n, width), dtype=np.float32)
    kernel = _kernel()
    args = (indptr, indices, data, weight_t.numpy(), out)
    workers = [threading.Thread(target=kernel, args=(*args, b, np.empty(n, dtype=np.int64), tile), daemon=True)
               for b in blocks[1:]]
    for worker in workers:
        worker.start()
    kernel(*args, blocks[0], np.empty(n, dtype=np.int64), tile)
    for worker in workers:
        worker.join()
    rows = torch.from_numpy(out).permute(1, 0, 2).reshape(n, n_blocks * width)[:, :n_out]
    return torch.add(rows, bias.detach().to(torch.float32))


def warm_up() -> None:
    """Compile (or load) the kernel on a tiny problem, e.g. in a background thread at start-up."""
    eye = np.arange(5, dtype=np.int32)
    x = csr_tensor(eye, eye[:4].copy(), np.ones(4, dtype=np.float32), (4, 4))
    sparse_linear(x, torch.ones(4, 8), torch.zeros(8), threads=1)
