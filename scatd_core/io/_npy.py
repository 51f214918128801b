"""NumPy .npy arrays of cells x features (e.g. foundation-model embeddings), never unpickled."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scatd_core._memory import size_text
from scatd_core.errors import InputError
from scatd_core.io._common import Options, check_cells, check_genes, check_memory

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _size(n_bytes: int) -> str:
    return f"{n_bytes:,} bytes" if n_bytes < 1 << 10 else size_text(n_bytes)


def _check_complete(path: Path, name: str) -> None:
    """Refuse a .npy whose header declares more values than the file holds (a copy cut short, or a
    damaged header), saying so, before NumPy maps it ("mmap length is greater than file size")."""
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                return  # a newer header version: NumPy's own reading says what is wrong
            shape, _fortran, dtype = read_header(fh)
            start = fh.tell()
    except ValueError as exc:  # the header itself is cut short or garbled
        raise InputError(f"{name} is truncated or damaged: its .npy header cannot be read ({exc}).",
                         "Save the array again with numpy.save, or copy the complete file again.") from None
    if dtype.hasobject:
        raise InputError(f"{name} holds Python objects (dtype {dtype}), not numbers.",
                         "Save a 2-D float array with numpy.save (object arrays are never loaded: they could run "
                         "code).")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = path.stat().st_size - start
    if needed > held:
        dims = " x ".join(f"{int(d):,}" for d in shape) or "scalar"
        raise InputError(f"{name} is truncated or damaged: its header declares a {dims} array of {dtype} "
                         f"({_size(needed)}), but the file holds only {_size(max(held, 0))} of values.",
                         "The file was cut short (an interrupted copy or download) or its header is damaged: save "
                         "the array again with numpy.save, or copy the complete file again.")


def read_npy(path: Path, opts: Options) -> ad.AnnData:
    name = opts.display_name
    opts.report["format"] = "npy"
    _check_complete(path, name)
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
