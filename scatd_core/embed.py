"""Neighbours, UMAP and Leiden clusters of the cells, for the Cells page and the report.

The UMAP is computed from the model's latent space (``obsm['X_scatd']``, what the classifier
sees) or, as an option, from expression (log-normalised, highly variable genes, PCA). Clusters
are Leiden communities (igraph) of the neighbour graph of the latent space. Everything is seeded: the
same data and parameters give the same coordinates and clusters.

Cells whose input rows are not finite (cells that could not be scored have NaN latent rows)
are left out of the computation, counted in ``uns['scatd_embed']``, and get NaN coordinates and
the cluster ``"not embedded"``; they never reach the layout, so they cannot break a plot.

Neighbours are exact (scikit-learn) up to :data:`EXACT_KNN_MAX_CELLS` cells and approximate
(umap-learn's NN-descent) above. umap-learn compiles its kernels with numba on first use,
which takes a while once per process; :func:`warm_up` does it ahead of time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core import _keys
from scatd_core._matrix import MeanVar, log1p_cp10k, row_batches
from scatd_core.errors import InputError
from scatd_core.preprocess import detect_value_type

LATENT_KEY = _keys.LATENT
UMAP_KEY = _keys.UMAP
CLUSTER_KEY = _keys.CLUSTER
INFO_KEY = _keys.EMBED
NOT_EMBEDDED = _keys.NOT_EMBEDDED
BASES = ("latent", "expression")
#: Fewest cells a layout is computed for.
MIN_CELLS = 5
#: Up to this many cells, neighbours are found exactly (fast on the low-dimensional inputs here).
EXACT_KNN_MAX_CELLS = 50_000
_SPECTRAL_MIN_CELLS = 50  # spectral initialisation is unstable on tiny graphs
#: Default UMAP epochs: umap-learn's 500 up to this many cells, 200 above (umap-learn switches at
#: 10,000; 200 epochs already converge at a few thousand cells and halve the wait on a laptop).
FEW_CELLS_EPOCHS = 2000


@dataclass
class Embedding:
    """Coordinates and clusters for every cell (NaN / ``"not embedded"`` where left out)."""

    coords: np.ndarray
    clusters: pd.Categorical | None
    info: dict = field(default_factory=dict)


def finite_rows(matrix) -> np.ndarray:
    """Boolean mask of the rows of ``matrix`` whose values are all finite."""
    m = np.asarray(matrix, dtype=np.float64)
    return np.isfinite(m).all(axis=1) if m.ndim == 2 else np.isfinite(m)


def expression_pcs(adata: ad.AnnData, n_top_genes: int = 2000, n_pcs: int = 30, seed: int = 0,
                   batch_size: int = 10_000) -> tuple[np.ndarray, dict]:
    """Principal components of expression, read in batches (``adata`` may be backed).

    Counts and TPM-like values are scaled to 10,000 per cell and log1p-transformed; values
    that are already log-normalised or z-scored are used as they are. The ``n_top_genes``
    genes of highest variance are scaled to unit variance and reduced to ``n_pcs`` components.

    Returns
    -------
    ``(pcs, info)``: a cells x ``n_pcs`` array and a dict of what was done.
    """
    report = adata.uns.get("scatd_input", {})
    kind = report.get("value_type") or detect_value_type(adata.X)["kind"]
    log_normalise = kind in ("counts", "tpm_like")

    def batches():
        for _, _, block in row_batches(adata.X, batch_size):
            block = sp.csr_matrix(block, dtype=np.float64)
            yield log1p_cp10k(block, copy=False) if log_normalise else block

    n = adata.n_obs
    acc = MeanVar()
    for block in batches():
        acc.update(block)
    var = acc.var()
    varying = np.flatnonzero(var > 0)
    if varying.size < 2:
        raise InputError("Fewer than two genes vary between cells, so there is no expression space to embed.",
                         "Use the latent space instead.")
    top = varying[np.argsort(-var[varying], kind="stable")[:n_top_genes]]
    top.sort()
    scale = sp.diags(1.0 / np.sqrt(var[top]))
    matrix = sp.vstack([block[:, top] @ scale for block in batches()], format="csr")
    k = int(min(n_pcs, top.size - 1, n - 1))
    from sklearn.decomposition import PCA

    pcs = PCA(n_components=k, svd_solver="arpack", random_state=seed).fit_transform(matrix)
    info = {"value_type": kind, "log_normalised": log_normalise, "n_genes": int(top.size), "n_pcs": k}
    return np.asarray(pcs, dtype=np.float32), info


def _neighbours(x: np.ndarray, n_neighbors: int, seed: int):
    """kNN indices and distances (each cell its own first neighbour), or None to let UMAP search."""
    if x.shape[0] > EXACT_KNN_MAX_CELLS:
        return None
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(x).kneighbors(x)
    return idx.astype(np.int64), dist.astype(np.float32)


def _fuzzy_graph(x: np.ndarray, n_neighbors: int, seed: int) -> sp.csr_matrix:
    """UMAP's weighted, symmetric neighbour graph of ``x``."""
    from umap.umap_ import fuzzy_simplicial_set

    knn = _neighbours(x, n_neighbors, seed)
    graph, _, _ = fuzzy_simplicial_set(
        x, n_neighbors, np.random.RandomState(seed), "euclidean",
        knn_indices=None if knn is None else knn[0], knn_dists=None if knn is None else knn[1])
    return graph.tocsr()


def _umap(x: np.ndarray, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None):
    import warnings

    import umap

    knn = _neighbours(x, n_neighbors, seed)
    if n_epochs is None:
        n_epochs = 500 if x.shape[0] <= FEW_CELLS_EPOCHS else 200
    reducer = umap.UMAP(
        n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_epochs=n_epochs,
        init="spectral" if x.shape[0] >= _SPECTRAL_MIN_CELLS else "random",
        precomputed_knn=(None, None, None) if knn is None else (knn[0], knn[1], None))
    with warnings.catch_warnings():  # "n_jobs overridden by random_state", "no search index": expected
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(x)
    return np.asarray(coords, dtype=np.float64), reducer.graph_.tocsr()


def leiden_clusters(graph: sp.spmatrix, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden communities (modularity) of a weighted symmetric graph.

    Uses igraph's Leiden implementation (scanpy's ``flavor="igraph"``; ~10x faster than
    leidenalg on these graphs) with a private random generator seeded by ``seed``.
    Returns 0-based community numbers, the largest community first.
    """
    import random

    import igraph as ig

    coo = sp.triu(graph, k=1).tocoo()
    g = ig.Graph(n=graph.shape[0], edges=np.column_stack([coo.row, coo.col]).tolist(),
                 edge_attrs={"weight": coo.data.tolist()})
    ig.set_random_number_generator(random.Random(seed))
    try:
        partition = g.community_leiden(objective_function="modularity", weights="weight",
                                       resolution=resolution, n_iterations=2)
    finally:
        ig.set_random_number_generator(random)
    membership = np.asarray(partition.membership, dtype=int)
    sizes = np.bincount(membership)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(sizes.size)
    return rank[membership]


def compute_embedding(
    adata: ad.AnnData,
    *,
    basis: str = "latent",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    resolution: float = 1.0,
    clusters: bool = True,
    seed: int = 0,
    n_epochs: int | None = None,
    latent_key: str = LATENT_KEY,
    progress: Callable[[float, str], None] | None = None,
) -> Embedding:
    """UMAP coordinates (and Leiden clusters) of every cell, without changing ``adata``.

    See :func:`embed` for the parameters; this is the computation it stores.
    """
    if basis not in BASES:
        raise InputError(f"Unknown basis {basis!r}; use one of {', '.join(BASES)}.")
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    n = adata.n_obs
    latent = None
    if latent_key in adata.obsm:
        latent = np.asarray(adata.obsm[latent_key], dtype=np.float64)
    elif basis == "latent" or clusters:
        raise InputError(f"Did not find obsm['{latent_key}'] (the model's latent space).",
                         "Run the prediction (`scatd_core.predict.predict`) first.")
    info: dict = {"basis": basis, "n_cells": int(n), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist),
                  "seed": int(seed), "method": "umap-learn"}
    if basis == "latent":
        x = latent
        info["input"] = f"obsm['{latent_key}'] ({latent.shape[1]} dimensions)"
    else:
        say(0.05, "principal components of expression")
        x, pca_info = expression_pcs(adata, seed=seed)
        info["input"] = (f"expression: {pca_info['n_genes']} most variable genes"
                         f"{', log-normalised' if pca_info['log_normalised'] else ''}, {pca_info['n_pcs']} PCs")
    keep = finite_rows(x)
    n_keep = int(keep.sum())
    info.update(n_embedded=n_keep, n_excluded=int(n - n_keep))
    if n_keep < MIN_CELLS:
        raise InputError(f"Only {n_keep} of {n:,} cells have finite {basis} coordinates; a UMAP needs at "
                         f"least {MIN_CELLS}.",
                         "Check how many cells were scored (cells without expression in the model's genes "
                         "cannot be placed).")
    k = int(max(2, min(n_neighbors, n_keep - 1)))
    info["n_neighbors"] = k
    say(0.2, f"UMAP of {n_keep:,} cells")
    coords_kept, graph = _umap(x[keep], k, min_dist, seed, n_epochs)
    coords = np.full((n, 2), np.nan)
    coords[keep] = coords_kept
    labels = None
    if clusters:
        say(0.85, "Leiden clusters")
        cluster_keep = finite_rows(latent)
        if basis != "latent" or not np.array_equal(cluster_keep, keep):
            graph = _fuzzy_graph(latent[cluster_keep], int(max(2, min(n_neighbors, cluster_keep.sum() - 1))), seed)
        membership = leiden_clusters(graph, resolution, seed)
        names = np.full(n, NOT_EMBEDDED, dtype=object)
        names[cluster_keep] = (membership + 1).astype(str)
        order = [str(i + 1) for i in range(int(membership.max()) + 1)]
        labels = pd.Categorical(names, categories=order + ([NOT_EMBEDDED] if (~cluster_keep).any() else []))
        info.update(resolution=float(resolution), n_clusters=len(order), cluster_method="Leiden (igraph, modularity) on "
                    "the latent space's UMAP neighbour graph", n_not_clustered=int((~cluster_keep).sum()))
    info["seconds"] = round(time.perf_counter() - t0, 2)
    say(1.0, "done")
    return Embedding(coords, labels, info)


def embed(
    adata: ad.AnnData,
    *,
    basis: str = "latent",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    resolution: float = 1.0,
    clusters: bool = True,
    seed: int = 0,
    n_epochs: int | None = None,
    key_added: str = UMAP_KEY,
    cluster_key: str = CLUSTER_KEY,
    progress: Callable[[float, str], None] | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Compute a UMAP of the cells and Leiden clusters of the latent space.

    Parameters
    ----------
    adata
        Annotated by :func:`scatd_core.predict.predict` (needs ``obsm['X_scatd']``).
    basis
        ``"latent"`` (default): the model's latent means. ``"expression"``: principal
        components of log-normalised expression (:func:`expression_pcs`).
    n_neighbors, min_dist
        UMAP parameters (``n_neighbors`` is capped to the number of cells minus one).
    resolution
        Leiden resolution; higher gives more clusters.
    clusters
        Also compute Leiden clusters (always on the latent space).
    seed
        Seeds neighbours, layout and clustering.
    n_epochs
        UMAP optimisation epochs (default: 500 up to :data:`FEW_CELLS_EPOCHS` cells, else 200).
    progress
        Called with (fraction done, message).
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    The annotated AnnData if ``copy``, else ``None``. Sets the following fields:

    - ``adata.obsm[key_added]``: UMAP coordinates, NaN for cells left out;
    - ``adata.obs[cluster_key]``: Leiden cluster (``"1"``, ``"2"``, ... largest first;
      ``"not embedded"`` for cells without a latent), when ``clusters``;
    - ``adata.uns['scatd_embed']``: parameters, cells embedded and left out, timing.
    """
    result = compute_embedding(adata, basis=basis, n_neighbors=n_neighbors, min_dist=min_dist,
                               resolution=resolution, clusters=clusters, seed=seed, n_epochs=n_epochs,
                               progress=progress)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    store(adata, result, key_added=key_added, cluster_key=cluster_key)
    return adata if copy else None


def store(adata: ad.AnnData, result: Embedding, *, key_added: str = UMAP_KEY,
          cluster_key: str = CLUSTER_KEY) -> None:
    """Write an :class:`Embedding` into ``adata`` (the fields listed in :func:`embed`)."""
    if result.coords.shape[0] != adata.n_obs:
        raise ValueError(f"embedding of {result.coords.shape[0]} cells for {adata.n_obs} cells")
    adata.obsm[key_added] = result.coords
    if result.clusters is not None:
        adata.obs[cluster_key] = pd.Categorical(result.clusters, categories=result.clusters.categories)
    adata.uns[INFO_KEY] = dict(result.info)


def warm_up() -> None:
    """Compile umap-learn's numba kernels on a tiny problem (once per process)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * _SPECTRAL_MIN_CELLS, 4))
    leiden_clusters(_umap(x, 5, 0.5, 0, 5)[1])


def plot_coordinates(adata: ad.AnnData, latent_key: str = LATENT_KEY) -> tuple[np.ndarray, str]:
    """2-D coordinates of every cell for plots: ``obsm['X_umap']`` when computed, else the first
    two principal components of the latent space ``obsm['X_scatd']`` (NaN rows stay NaN)."""
    if UMAP_KEY in adata.obsm:
        return np.asarray(adata.obsm[UMAP_KEY])[:, :2], "UMAP"
    if latent_key not in adata.obsm:
        raise InputError("The dataset has neither obsm['X_umap'] nor the latent obsm['X_scatd'].",
                         "Run the prediction first.")
    z = np.asarray(adata.obsm[latent_key], dtype=np.float64)
    ok = np.isfinite(z).all(axis=1)
    coords = np.full((z.shape[0], 2), np.nan)
    if ok.sum() >= 2:
        centred = z[ok] - z[ok].mean(axis=0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        pcs = centred @ vt[:2].T
        coords[ok, : pcs.shape[1]] = pcs
    return coords, "PCA of the scATD latent space (no UMAP computed)"
