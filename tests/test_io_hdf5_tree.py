"""The HDF5 tree of an upload is bounded before anything is read: how many objects it holds and how
deep its groups nest. An h5ad's uns (not used for prediction) over its limits is left out with a note;
the rest of a file over them is refused in plain words (not "damaged", no Python exception names)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from _data_helpers import make_counts
from scatd_core import io
from scatd_core.errors import InputError
from scatd_core.io import _hdf5


def _h5ad(tmp_path: Path, name: str = "cells.h5ad") -> Path:
    path = tmp_path / name
    make_counts(n_cells=20, n_genes=30).write_h5ad(path)
    return path


def _refused(path: Path, **kw) -> InputError:
    with pytest.raises(InputError) as err:
        io.read(path, **kw)
    shown = err.value.message + (err.value.hint or "")
    for word in ("damaged", "Error", "recursion"):
        assert word not in shown
    return err.value


def _notes(adata) -> list[str]:
    return adata.uns[io.REPORT_KEY]["warnings"]


@pytest.mark.parametrize("backed", [False, True])
def test_wide_uns_is_left_out_with_a_note(tmp_path, monkeypatch, backed):
    monkeypatch.setattr(_hdf5, "H5AD_MAX_UNS_ENTRIES", 50)
    written = make_counts(n_cells=20, n_genes=30)
    written.obs["leiden"] = pd.Categorical(["0", "1"] * 10)
    written.obsm["X_umap"] = np.ones((20, 2), dtype=np.float32)
    written.raw = written
    path = tmp_path / "cells.h5ad"
    written.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        for i in range(400):
            f["uns"].create_dataset(f"k{i}", data=i)
    adata = io.read(path, backed=backed)
    assert adata.isbacked == backed
    assert [k for k in adata.uns if k != io.REPORT_KEY] == []
    assert adata.shape == (20, 30) and (adata.obsm["X_umap"] == 1).all()
    assert list(adata.obs["leiden"]) == ["0", "1"] * 10 and list(adata.var_names) == list(written.var_names)
    assert adata.raw is not None and list(adata.raw.var_names) == list(written.var_names)
    assert (adata.to_memory().X != written.X).nnz == 0 if backed else (adata.X != written.X).nnz == 0
    notes = [n for n in _notes(adata) if "uns" in n]
    assert notes == ["The file's uns holds 400 entries, over the limit of 50 scATD Studio reads: it was left out "
                     "(adata.uns was not read); predictions do not use it."]


def test_deep_uns_is_left_out_with_a_plain_note(tmp_path):
    path = _h5ad(tmp_path)
    with h5py.File(path, "r+") as f:
        g = f["uns"]
        for _ in range(1500):  # deeper than Python's recursion limit
            g = g.create_group("d")
            g.attrs["encoding-type"], g.attrs["encoding-version"] = "dict", "0.1.0"
    adata = io.read(path)
    assert [k for k in adata.uns if k != io.REPORT_KEY] == []
    notes = [n for n in _notes(adata) if "uns" in n]
    assert len(notes) == 1
    assert notes[0].startswith(f"The file's uns nests groups more than {_hdf5.H5AD_MAX_UNS_DEPTH} levels deep "
                               "(/uns/d/d/d/")
    assert notes[0].endswith(f"over the limit of {_hdf5.H5AD_MAX_UNS_DEPTH} scATD Studio reads: it was left out "
                             "(adata.uns was not read); predictions do not use it.")


@pytest.mark.parametrize("where", ["obsm", "layers", "varm", "raw/var"])
def test_wide_groups_outside_uns_are_refused_by_name(tmp_path, monkeypatch, where):
    """Beyond the count of layers/obsm/obsp entries and of obs/var columns: objects nested inside
    them (a table in obsm with many columns), and varm or raw's var, which no other limit counts."""
    monkeypatch.setattr(_hdf5, "HDF5_MAX_OBJECTS", 300)
    path = _h5ad(tmp_path)
    with h5py.File(path, "r+") as f:
        if where == "raw/var":
            f.create_group("raw/var")
        g = f[where].create_group("table")
        for i in range(400):
            g.create_dataset(f"c{i}", data=np.zeros(20 if where != "varm" else 30))
    error = _refused(path)
    assert error.message.startswith(f"{path.name}: it holds more than 300 HDF5 objects (groups and datasets, "
                                    "counted by every name they are reached by) outside uns, at least ")
    assert f"of them in /{where.split('/')[0]}, over the limit of 300 scATD reads, so it was refused" in error.message
    assert f"del f['/{where.split('/')[0]}/NAME']" in error.hint


def test_deep_groups_outside_uns_are_refused_by_name(tmp_path):
    path = _h5ad(tmp_path)
    with h5py.File(path, "r+") as f:
        g = f["obsm"]
        for _ in range(1500):
            g = g.create_group("a")
    error = _refused(path)
    assert error.message.startswith(f"{path.name}: its /obsm nests groups more than {_hdf5.HDF5_MAX_DEPTH} levels "
                                    "deep (/obsm/a/a/a/")
    assert f"over the limit of {_hdf5.HDF5_MAX_DEPTH}" in error.message


def test_scanpy_like_uns_is_read_unchanged(tmp_path):
    adata = make_counts(n_cells=20, n_genes=30)
    adata.obs["leiden"] = pd.Categorical(["0", "1"] * 10)
    groups = ["0", "1"]
    rec = lambda dtype, fill: np.rec.fromarrays([np.full(5, fill, dtype=dtype)] * 2, names=groups)  # noqa: E731
    adata.uns["rank_genes_groups"] = {
        "params": {"groupby": "leiden", "reference": "rest", "method": "wilcoxon", "use_raw": False},
        "names": np.rec.fromarrays([np.array(adata.var_names[:5], dtype=object)] * 2, names=groups),
        "scores": rec("f4", 1.5), "pvals": rec("f8", 0.01), "pvals_adj": rec("f8", 0.02),
        "logfoldchanges": rec("f4", 2.0)}
    adata.uns["leiden_colors"] = np.array(["#1f77b4", "#ff7f0e"], dtype=object)
    adata.uns["neighbors"] = {"connectivities_key": "connectivities", "distances_key": "distances",
                              "params": {"n_neighbors": 15, "method": "umap", "random_state": 0}}
    adata.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 89.4}, "metadata": {"a": "b"}}}
    path = tmp_path / "scanpy.h5ad"
    adata.write_h5ad(path)
    read = io.read(path)
    assert not [n for n in _notes(read) if "uns" in n]
    assert list(read.uns["leiden_colors"]) == ["#1f77b4", "#ff7f0e"]
    assert read.uns["rank_genes_groups"]["params"]["method"] == "wilcoxon"
    assert list(read.uns["rank_genes_groups"]["names"]["0"]) == list(adata.var_names[:5])
    assert read.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert read.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(89.4)


@pytest.mark.parametrize("fmt", ["loom", "10x"])
def test_loom_and_10x_h5_are_bounded_by_the_same_walk(tmp_path, monkeypatch, fmt):
    from _data_helpers import write_10x_h5
    monkeypatch.setattr(_hdf5, "HDF5_MAX_OBJECTS", 300)
    adata = make_counts(n_cells=20, n_genes=30)
    if fmt == "loom":
        path, where = tmp_path / "cells.loom", "col_attrs"
        adata.write_loom(path)
    else:
        path, where = write_10x_h5(adata, tmp_path / "cells.h5"), "matrix"
    io.read(path)  # as written: read
    with h5py.File(path, "r+") as f:
        for i in range(400):
            f[where].create_dataset(f"c{i}", data=np.zeros(20))
    error = _refused(path)
    assert f"of them in /{where}, over the limit of 300 scATD reads" in error.message
    monkeypatch.setattr(_hdf5, "HDF5_MAX_OBJECTS", 20_000)
    with h5py.File(path, "r+") as f:
        g = f.create_group("deep")
        for _ in range(1500):
            g = g.create_group("a")
    error = _refused(path)
    assert error.message.startswith(f"{path.name}: its /deep nests groups more than {_hdf5.HDF5_MAX_DEPTH} levels")


@pytest.mark.parametrize("where", ["raw/var", "obsm", "varm"])
def test_wide_tables_beside_obs_and_var_have_the_column_limit(tmp_path, monkeypatch, where):
    """raw's var and tables in obsm/varm are read column by column like obs and var (19,000 columns
    in raw's var, within the object bound: 32 s); they get the same ``max_annotation_columns``."""
    adata = make_counts(n_cells=20, n_genes=30)
    n = 20 if where == "obsm" else 30
    table = pd.DataFrame({f"c{i}": np.zeros(n) for i in range(8)},
                         index=adata.var_names if where != "obsm" else adata.obs_names)
    if where == "raw/var":
        raw = adata.copy()
        raw.var = table
        adata.raw = raw
    else:
        getattr(adata, where)["table"] = table
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    monkeypatch.setenv("SCATD_MAX_ANNOTATION_COLUMNS", "8")
    io.read(path)  # at the limit: read
    monkeypatch.setenv("SCATD_MAX_ANNOTATION_COLUMNS", "5")
    with pytest.raises(InputError) as err:
        io.read(path)
    shown = where if where == "raw/var" else f"{where}['table']"
    assert err.value.message.startswith(f"{path.name}: its {shown} declares 8 ")
    assert "annotation columns (e.g. c0, c1, c2), over the limit of 5." in err.value.message
