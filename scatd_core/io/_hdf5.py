"""HDF5 formats: AnnData .h5ad, 10x Genomics .h5 (v2, v3) and loom. The structure decides, not the extension."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core.errors import InputError
from scatd_core.io._common import (BACKED_MIN_BYTES, BACKED_MIN_CELLS, FORMATS_HINT, Options, attr_str, check_cells,
                                   decide_orientation, decode, keep_gene_expression)

def _open_h5(path: Path, name: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{name} could not be opened as HDF5 ({exc}); it is probably truncated or corrupt.",
                         "Upload it again, or export it again (e.g. adata.write_h5ad).") from None


def _hdf5_flavour(f: h5py.File) -> str | None:
    if isinstance(f.get("matrix"), h5py.Group):
        return "10x_h5"
    if isinstance(f.get("matrix"), h5py.Dataset) and "row_attrs" in f:
        return "loom"
    if "X" in f or ("obs" in f and "var" in f):
        return "h5ad"
    if any(isinstance(f[k], h5py.Group) and "barcodes" in f[k] and "data" in f[k] for k in f):
        return "10x_h5"  # v2: one group per genome
    return None


#: Seconds allowed for walking an HDF5 file's structure (a sound file takes well under one).
HDF5_CHECK_SECONDS = 30
_HDF5_WALK = """
import sys, h5py
def visit(name, obj):
    list(obj.attrs.items())
    if isinstance(obj, h5py.Dataset):
        obj.shape, obj.dtype, obj.chunks
with h5py.File(sys.argv[1], "r") as f:
    list(f.attrs.items())
    f.visititems(visit)
"""


def _check_hdf5_structure(path: Path, name: str) -> None:
    """Walk every group, dataset header and attribute of an HDF5 file in a child process.

    Damaged HDF5 metadata can send the HDF5 C library into an endless loop (or a crash) that no
    Python code can interrupt; found by feeding mutated files to the readers. A child process
    with a time limit turns that into an InputError instead of a hung or dead server.
    """
    hint = "The file is damaged; export it again (e.g. adata.write_h5ad) and upload the new copy."
    try:
        proc = subprocess.run([sys.executable, "-c", _HDF5_WALK, str(path)], capture_output=True,
                              text=True, timeout=HDF5_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"{name} is corrupt: its HDF5 structure could not be read.", hint) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:200]
        raise InputError(f"{name} is a damaged HDF5 file ({detail}).", hint)


def read_hdf5(path: Path, opts: Options) -> ad.AnnData:
    """h5ad, 10x .h5 and loom are all HDF5: the file's structure decides, not its extension."""
    _check_hdf5_structure(path, opts.display_name)
    with _open_h5(path, opts.display_name) as f:
        flavour = _hdf5_flavour(f)
    if flavour is None:
        raise InputError(f"{opts.display_name} is an HDF5 file but neither an AnnData .h5ad, a 10x "
                         "Genomics .h5 nor a loom file.", FORMATS_HINT)
    opts.report["format"] = flavour
    if flavour == "10x_h5":
        return _read_10x_h5(path, opts)
    if flavour == "loom":
        return _read_loom(path, opts)
    return _read_h5ad(path, opts)


def _read_h5ad(path: Path, opts: Options) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "X" not in f:
            raise InputError(f"{opts.display_name} has no expression matrix X.",
                             "Store the expression in X before saving (e.g. adata.X = adata.layers['counts']).")
        X = f["X"]
        if isinstance(X, h5py.Group):
            shape = tuple(int(s) for s in X.attrs["shape"])
            encoding = attr_str(X.attrs.get("encoding-type", "csr_matrix"))
        else:
            shape, encoding = X.shape, "array"
    if len(shape) != 2:
        raise InputError(f"X in {opts.display_name} has {len(shape)} dimensions; a cells x genes matrix is needed.",
                         "Export a 2-D expression matrix.")
    check_cells(shape[0], opts)
    large = path.stat().st_size >= BACKED_MIN_BYTES or shape[0] >= BACKED_MIN_CELLS
    backed = opts.backed is True or (opts.backed == "auto" and large)
    if backed and encoding == "csc_matrix":
        backed = False  # rows of a column-compressed matrix cannot be read in batches
        opts.warnings.append("X is stored column-wise (CSC), so it was loaded into memory; save it as "
                             "CSR (adata.X = adata.X.tocsr()) to let large files stay on disk.")
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    opts.report["backed"] = bool(backed)
    opts.report["stored_matrices"] = {"X": encoding, "raw": adata.raw is not None,
                                      "layers": [str(k) for k in adata.layers.keys()]}
    decided, how = decide_orientation(adata.obs_names, adata.var_names, [])
    if opts.orientation == "genes_x_cells" or (opts.orientation == "auto" and decided == "genes_x_cells"):
        if adata.isbacked:
            adata = adata.to_memory()
            opts.report["backed"] = False
        adata = adata.T.copy()
        opts.warnings.append("The file was stored genes x cells and has been transposed.")
        opts.report.update(orientation="genes_x_cells",
                           orientation_reason="given by the user" if opts.orientation != "auto" else how)
    return adata


def _read_10x_h5(path: Path, opts: Options) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "matrix" in f:
            g, version = f["matrix"], "v3"
            feats = g["features"]
            ids, names = decode(feats["id"][()]), decode(feats["name"][()])
            types = decode(feats["feature_type"][()]) if "feature_type" in feats else None
        else:
            genomes = [k for k in f if isinstance(f[k], h5py.Group) and "barcodes" in f[k]]
            if len(genomes) > 1:
                raise InputError(f"{opts.display_name} holds several genomes ({', '.join(genomes)}).",
                                 "Split it per genome with Cell Ranger, or convert the human part to h5ad.")
            g, version = f[genomes[0]], "v2"
            ids, names, types = decode(g["genes"][()]), decode(g["gene_names"][()]), None
        n_features, n_cells = (int(s) for s in g["shape"][()])
        check_cells(n_cells, opts)
        # 10x stores genes x cells column-compressed, which is cells x genes row-compressed
        X = sp.csr_matrix((g["data"][()].astype(np.float32), g["indices"][()], g["indptr"][()]),
                          shape=(n_cells, n_features))
        barcodes = decode(g["barcodes"][()])
    X.check_format(full_check=True)  # indices from a file must be valid before any C code uses them
    var = pd.DataFrame({"gene_ids": ids}, index=[n or i for n, i in zip(names, ids)])
    if types is not None:
        var["feature_types"] = types
    opts.report["10x_version"] = version
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes), var=var)
    _ignore_orientation(opts, "10x")
    return keep_gene_expression(adata, opts)


def _ignore_orientation(opts: Options, fmt: str) -> None:
    opts.report.update(orientation="cells_x_genes", orientation_reason=f"fixed by the {fmt} format")
    if opts.orientation == "genes_x_cells":
        opts.warnings.append(f"orientation='genes_x_cells' was ignored: the {fmt} format fixes the layout.")


_LOOM_GENE_ATTRS = ("Gene", "var_names", "gene_name", "Gene_name", "GeneName", "gene_names", "Accession", "gene_ids")
_LOOM_CELL_ATTRS = ("CellID", "obs_names", "cell_id", "CellId", "cell_names", "barcode", "Barcode", "barcodes")


def _loom_name_attr(attrs, known: tuple[str, ...], n: int) -> str | None:
    """The attribute naming genes (or cells): a conventional name, else the first unique text one."""
    if attrs is None:
        return None
    hit = next((a for a in known if a in attrs), None)
    if hit is not None:
        return hit
    for key, values in attrs.items():
        if values.dtype.kind in "SOU" and values.shape == (n,) and len(set(values[()])) == n:
            return key
    return None


def _loom_axis(attrs, n: int, name_attr: str | None) -> pd.DataFrame:
    """The 1-D attributes of one loom axis as a frame indexed by the naming attribute."""
    columns = {}
    for key, dataset in (attrs.items() if attrs is not None else ()):
        if dataset.shape == (n,):
            values = dataset[()]
            columns[key] = decode(values) if values.dtype.kind in "SO" else values
    index = columns.pop(name_attr) if name_attr else [str(i) for i in range(n)]
    return pd.DataFrame(columns, index=pd.Index(index, dtype=object))


def _read_loom(path: Path, opts: Options) -> ad.AnnData:
    """Read a loom file with h5py: /matrix is genes x cells, dense, stored in chunks."""
    with _open_h5(path, opts.display_name) as f:
        matrix = f["matrix"]
        n_genes, n_cells = matrix.shape
        check_cells(n_cells, opts)
        gene_attr = _loom_name_attr(f.get("row_attrs"), _LOOM_GENE_ATTRS, n_genes)
        cell_attr = _loom_name_attr(f.get("col_attrs"), _LOOM_CELL_ATTRS, n_cells)
        var = _loom_axis(f.get("row_attrs"), n_genes, gene_attr)
        obs = _loom_axis(f.get("col_attrs"), n_cells, cell_attr)
        step = max(1, (1 << 25) // max(n_genes, 1))  # ~32M values in memory at a time
        X = sp.vstack([sp.csr_matrix(np.asarray(matrix[:, start:start + step], dtype=np.float32).T)
                       for start in range(0, n_cells, step)], format="csr")
        opts.report["stored_matrices"] = {"matrix": "dense", "layers": [str(k) for k in f.get("layers", {})]}
    if gene_attr is None:
        opts.warnings.append("The loom file names no genes (no 'Gene' row attribute); genes are numbered.")
    _ignore_orientation(opts, "loom")
    return ad.AnnData(X=X, obs=obs, var=var)
