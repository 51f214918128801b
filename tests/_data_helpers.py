"""Synthetic single-cell data and writers for every format :func:`scatd_core.io.read` accepts.

Used by the I/O tests and by ``benches/bench_io.py``; one AnnData written to each format must
read back to the same matrix.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_SYMBOLS = ("ACTB", "GAPDH", "TP53", "EGFR", "KRAS", "MYC", "CD44", "VIM", "KRT18", "ALDH1A1",
            "ABCB1", "ERBB2", "CDK4", "BRAF", "PTEN", "MKI67", "TOP2A", "EPCAM", "SOX2", "B2M")


def gene_symbols(n: int) -> list[str]:
    """``n`` distinct human-style symbols: real ones, three MT- genes, then ``GENE<i>``."""
    base = list(_SYMBOLS) + ["MT-CO1", "MT-ND1", "MT-ATP6"]
    return (base + [f"GENE{i}" for i in range(n)])[:n]


def make_counts(n_cells: int = 60, n_genes: int = 40, density: float = 0.3, seed: int = 0) -> ad.AnnData:
    """A sparse counts AnnData (float32 integers) with 10x-like names and ``gene_ids``."""
    rng = np.random.default_rng(seed)
    nnz_per_row = max(1, int(round(density * n_genes)))
    indptr = np.arange(n_cells + 1, dtype=np.int64) * nnz_per_row
    # distinct columns per row without a per-row Python loop
    indices = np.argsort(rng.random((n_cells, n_genes)), axis=1)[:, :nnz_per_row]
    indices = np.sort(indices, axis=1).ravel().astype(np.int32)
    data = rng.integers(1, 30, size=indices.size).astype(np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    bases = np.array(list("ACGT"))
    barcodes = ["".join(bases[rng.integers(0, 4, 16)]) + "-1" for _ in range(n_cells)]
    var = pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(1, n_genes + 1)]},
                       index=gene_symbols(n_genes))
    return ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes), var=var)


def make_counts_large(n_cells: int, n_genes: int, density: float, seed: int = 0) -> ad.AnnData:
    """Like :func:`make_counts` for big sizes, built straight as CSR (about ``density`` non-zeros).

    Column indices are drawn with replacement and sorted per row; the few repeats are summed.
    """
    rng = np.random.default_rng(seed)
    per_row = int(density * n_genes)
    indices = np.empty(n_cells * per_row, dtype=np.int32)
    for start in range(0, n_cells, 10_000):  # chunks keep the temporary sort arrays small
        stop = min(start + 10_000, n_cells)
        cols = rng.integers(0, n_genes, size=(stop - start, per_row), dtype=np.int32)
        cols.sort(axis=1)
        indices[start * per_row:stop * per_row] = cols.ravel()
    data = rng.integers(1, 30, size=indices.size, dtype=np.int32).astype(np.float32)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * per_row
    X = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    X.has_sorted_indices = True
    X.sum_duplicates()
    var = pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(1, n_genes + 1)]},
                       index=gene_symbols(n_genes))
    return ad.AnnData(X=X, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]), var=var)


def dense(adata: ad.AnnData) -> np.ndarray:
    X = adata.X
    return X.toarray() if sp.issparse(X) else np.asarray(X)


# -- writers ---------------------------------------------------------------------------------

def write_10x_h5(adata: ad.AnnData, path: Path, version: str = "v3", feature_types=None) -> Path:
    """Write the Cell Ranger HDF5 layout (genes x cells CSC = cells x genes CSR)."""
    X = sp.csr_matrix(adata.X)
    names = np.array(adata.var_names, dtype="S")
    ids = np.array(adata.var.get("gene_ids", adata.var_names), dtype="S")
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix" if version == "v3" else "GRCh38")
        g["barcodes"] = np.array(adata.obs_names, dtype="S")
        g["data"] = X.data.astype(np.int32)
        g["indices"] = X.indices.astype(np.int64)
        g["indptr"] = X.indptr.astype(np.int64)
        g["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        if version == "v3":
            feats = g.create_group("features")
            feats["id"], feats["name"] = ids, names
            types = feature_types if feature_types is not None else ["Gene Expression"] * adata.n_vars
            feats["feature_type"] = np.array(types, dtype="S")
            feats["genome"] = np.array(["GRCh38"] * adata.n_vars, dtype="S")
        else:
            g["genes"], g["gene_names"] = ids, names
    return path


def write_10x_mtx(adata: ad.AnnData, folder: Path, compressed: bool = True, prefix: str = "") -> Path:
    """Write matrix.mtx + features.tsv + barcodes.tsv (gzipped: Cell Ranger v3; plain: v2 genes.tsv)."""
    folder.mkdir(parents=True, exist_ok=True)
    gz = ".gz" if compressed else ""
    features = "features.tsv" if compressed else "genes.tsv"
    opener = gzip.open if compressed else open
    mtx = folder / f"{prefix}matrix.mtx"
    scipy.io.mmwrite(mtx, sp.csr_matrix(adata.X).T.tocoo(), field="integer")
    if compressed:
        with mtx.open("rb") as src, gzip.open(f"{mtx}.gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)
        mtx.unlink()
    ids = adata.var.get("gene_ids", pd.Series(adata.var_names, index=adata.var_names))
    with opener(folder / f"{prefix}{features}{gz}", "wt") as fh:
        for gid, name in zip(ids, adata.var_names):
            fh.write(f"{gid}\t{name}\tGene Expression\n" if compressed else f"{gid}\t{name}\n")
    with opener(folder / f"{prefix}barcodes.tsv{gz}", "wt") as fh:
        fh.write("\n".join(adata.obs_names) + "\n")
    return folder


def write_zip(folder: Path, path: Path, arcroot: str = "filtered_feature_bc_matrix") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{arcroot}/{p.name}")
    return path


def write_tar(folder: Path, path: Path, arcroot: str = "filtered_feature_bc_matrix") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=arcroot)
    return path


def write_table(adata: ad.AnnData, path: Path, sep: str = ",", genes_x_cells: bool = False,
                obs_columns=()) -> Path:
    """Write a CSV/TSV (gzipped when the name ends in .gz) with ids in the first column."""
    df = pd.DataFrame(dense(adata).astype(np.int64) if _is_integer(adata) else dense(adata),
                      index=adata.obs_names, columns=adata.var_names)
    for col in obs_columns:
        df.insert(0, col, adata.obs[col].to_numpy())
    if genes_x_cells:
        df = df.T
    df.rename_axis("gene" if genes_x_cells else "cell_id").to_csv(path, sep=sep)
    return path


def _is_integer(adata: ad.AnnData) -> bool:
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    return bool(np.all(values == np.round(values)))


def write_all_formats(adata: ad.AnnData, folder: Path) -> dict[str, Path]:
    """Every supported format of the same cells; returns ``{label: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["h5ad"] = folder / "data.h5ad"
    adata.write_h5ad(paths["h5ad"])
    paths["10x_h5_v3"] = write_10x_h5(adata, folder / "data_v3.h5")
    paths["10x_h5_v2"] = write_10x_h5(adata, folder / "data_v2.h5", version="v2")
    paths["mtx_folder_v3"] = write_10x_mtx(adata, folder / "mtx_v3")
    paths["mtx_folder_v2"] = write_10x_mtx(adata, folder / "mtx_v2", compressed=False)
    paths["mtx_file"] = folder / "mtx_v3" / "matrix.mtx.gz"
    paths["zip"] = write_zip(paths["mtx_folder_v3"], folder / "data.zip")
    paths["tar.gz"] = write_tar(paths["mtx_folder_v3"], folder / "data.tar.gz")
    paths["csv"] = write_table(adata, folder / "data.csv")
    paths["csv.gz"] = write_table(adata, folder / "data.csv.gz")
    paths["tsv"] = write_table(adata, folder / "data.tsv", sep="\t")
    paths["tsv.gz_genes_x_cells"] = write_table(adata, folder / "data_t.tsv.gz", sep="\t", genes_x_cells=True)
    paths["loom"] = folder / "data.loom"
    adata.write_loom(paths["loom"])
    paths["npy"] = folder / "data.npy"
    np.save(paths["npy"], dense(adata))
    return paths
