"""NumPy .npy arrays of cells x features (e.g. foundation-model embeddings), never unpickled."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scatd_core.errors import InputError
from scatd_core.io._common import Options, check_cells, check_genes, check_memory

def read_npy(path: Path, opts: Options) -> ad.AnnData:
    name = opts.display_name
    opts.report["format"] = "npy"
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise InputError(f"{name} is not a plain numeric .npy array ({exc}).",
                         "Save a 2-D float array with numpy.save (object arrays are never loaded).") from None
    if arr.ndim != 2:
        raise InputError(f"{name} holds a {arr.ndim}-D array; a 2-D array of cells x features is needed.",
                         "Save the matrix with shape (n_cells, n_features).")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} holds {arr.dtype} values, not numbers.", "Save a float array.")
    transpose = opts.orientation == "genes_x_cells"
    check_cells(arr.shape[1] if transpose else arr.shape[0], opts)
    check_genes(arr.shape[0] if transpose else arr.shape[1], opts)
    check_memory(arr.shape[0] * arr.shape[1] * 4, f"its {arr.shape[0]:,} x {arr.shape[1]:,} array", opts)
    X = np.array(arr.T if transpose else arr, dtype=np.float32, order="C")
    opts.report.update(orientation="genes_x_cells" if transpose else "cells_x_genes",
                       orientation_reason="given by the user" if transpose else ".npy arrays are cells x features")
    return ad.AnnData(X=X, obs=pd.DataFrame(index=[str(i) for i in range(X.shape[0])]),
                      var=pd.DataFrame(index=[f"feature_{j}" for j in range(X.shape[1])]))
