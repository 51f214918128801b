"""Shared by the benchmarks: simulated sparse counts at the published Dist_VAE size."""

from __future__ import annotations

import numpy as np

#: The published Dist_VAE input size (the scFoundation gene list).
N_GENES = 19_264


def sparse_counts(n_cells: int, n_genes: int = N_GENES, genes_per_cell: int = 1500, seed: int = 0,
                  skewed: bool = False, chunk: int = 2000):
    """CSR counts: ``genes_per_cell`` expressed genes per cell (uniform, or with a log-normal gene
    popularity when ``skewed``), negative-binomial-like values >= 1. Built in chunks of cells."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    popularity = None
    if skewed:
        popularity = rng.lognormal(0, 1.5, n_genes)
        popularity /= popularity.sum()
    chunks = []
    for start in range(0, n_cells, chunk):
        m = min(chunk, n_cells - start)
        cols = np.sort(rng.choice(n_genes, size=(m, genes_per_cell), p=popularity), axis=1)
        rows = np.repeat(np.arange(m), genes_per_cell)
        vals = rng.negative_binomial(2, 0.5, size=m * genes_per_cell).astype(np.float32) + 1
        chunks.append(sp.csr_matrix((vals, (rows, cols.ravel())), shape=(m, n_genes)))
    x = sp.vstack(chunks).tocsr()
    x.sum_duplicates()
    return x
