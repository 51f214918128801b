"""Exports: per-cell CSV, the annotated h5ad (and, in the app issue, the HTML report)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write the annotated AnnData so it opens in scanpy/cellxgene as it is.

    ``obs['scatd_*']``, ``obsm['X_scatd']`` (and ``obsm['X_umap']`` when computed) and
    ``uns['scatd']`` are kept; a backed dataset is read into memory first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = adata.to_memory() if adata.isbacked else adata
    out.write_h5ad(path, compression="gzip")
    return path
