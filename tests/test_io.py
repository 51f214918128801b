"""scatd_core.io: every format reads back to the same matrix; every bad input is an InputError."""

from __future__ import annotations

import gc
import gzip
import json
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_helpers import (SHARED_DATA, dense, make_counts, write_10x_h5, write_10x_mtx, write_all_formats,
                           write_table)
from scatd_core import io, preprocess
from scatd_core._matrix import row_batches
from scatd_core.errors import InputError


@pytest.fixture(scope="module")
def counts() -> ad.AnnData:
    return make_counts(n_cells=60, n_genes=40, seed=0)


@pytest.fixture(scope="module")
def formats(counts, tmp_path_factory) -> dict[str, Path]:
    return write_all_formats(counts, tmp_path_factory.mktemp("formats"))


def _read_error(path, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        io.read(path, **kwargs)
    assert info.value.hint, "every InputError tells the user what to do"
    return info.value


# -- formats ---------------------------------------------------------------------------------

ALL_FORMATS = ["h5ad", "10x_h5_v3", "10x_h5_v2", "mtx_folder_v3", "mtx_folder_v2", "mtx_file", "zip",
               "tar.gz", "csv", "csv.gz", "tsv", "tsv.gz_genes_x_cells", "loom", "npy"]


@pytest.mark.parametrize("label", ALL_FORMATS)
def test_every_format_reads_back_the_same_matrix(formats, counts, label):
    adata = io.read(formats[label])
    assert adata.shape == counts.shape
    np.testing.assert_array_equal(dense(adata), dense(counts))
    report = adata.uns[io.REPORT_KEY]
    assert report["value_type"] == "counts"
    assert report["orientation"] == "cells_x_genes" or label == "tsv.gz_genes_x_cells"
    # the formats whose layout the orientation option cannot change say so (the Data page reads them once)
    fixed = label.startswith(("10x", "mtx")) or label in ("loom", "zip", "tar.gz")
    assert report.get("orientation_fixed", False) == fixed, (label, report.get("orientation_reason"))
    if label == "npy":
        assert list(adata.obs_names[:2]) == ["0", "1"] and adata.var_names[0] == "feature_0"
        return
    assert list(adata.obs_names) == list(counts.obs_names)
    assert list(adata.var_names) == list(counts.var_names)
    assert report["gene_id_type"] == "symbol"
    json.dumps(report)  # plain data


@pytest.mark.parametrize("label", ["h5ad", "10x_h5_v3", "zip", "tar.gz", "csv.gz", "tsv", "loom", "npy"])
def test_read_bytes_matches_read(formats, counts, label):
    path = formats[label]
    adata = io.read_bytes(path.read_bytes(), path.name)
    np.testing.assert_array_equal(dense(adata), dense(counts))
    assert adata.uns[io.REPORT_KEY]["file_name"] == path.name


def test_supported_formats_lists_the_extensions():
    for ext in (".h5ad", ".h5", ".loom", ".csv", ".tsv.gz", ".mtx.gz", ".zip", ".tar.gz", ".npy"):
        assert ext in io.SUPPORTED_FORMATS


def test_read_bytes_never_uses_the_name_as_a_path(formats, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = formats["csv"].read_bytes()
    adata = io.read_bytes(data, "../../../tmp/evil\x07 name.csv")
    assert adata.uns[io.REPORT_KEY]["file_name"] == "evil name.csv"
    assert list(tmp_path.iterdir()) == []


def test_a_stored_upload_is_read_again_under_its_own_name(formats, tmp_path):
    """What the Data page does: the upload's bytes go to a fixed name in a fresh folder of the
    session's, then are read (and read again) from there; messages use the name it had."""
    data = formats["csv"].read_bytes()
    path = io.store_upload(memoryview(data), "../../../tmp/evil\x07 name.csv", tmp_path)
    assert path.name == "upload.csv" and path.parent.parent == tmp_path
    assert path.parent.name.startswith(io.UPLOAD_FOLDER_PREFIX) and path.read_bytes() == data
    adata = io.read(path, name="../../../tmp/evil\x07 name.csv")
    assert adata.uns[io.REPORT_KEY]["file_name"] == "evil name.csv"
    again = io.read(path, name="cells.csv", orientation="genes_x_cells")
    assert again.n_obs == adata.n_vars and path.exists()
    with pytest.raises(InputError, match="over the limit"):
        io.store_upload(data, "big.csv", tmp_path, max_bytes=100)
    with pytest.raises(InputError, match="not supported"):
        io.store_upload(data, "cells.docx", tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # refused uploads leave nothing behind
    path.with_name("upload.csv").write_bytes(b"")
    with pytest.raises(InputError, match="cells.csv is empty"):
        io.read(path, name="cells.csv")


def test_read_bytes_keeps_a_backed_file_until_the_data_is_gone(formats):
    adata = io.read_bytes(formats["h5ad"].read_bytes(), "x.h5ad", backed=True)
    folder = Path(adata.filename).parent
    assert adata.isbacked and folder.exists()
    assert sp.csr_matrix(adata.X[0:5]).shape == (5, adata.n_vars)
    adata.file.close()
    del adata
    gc.collect()
    assert not folder.exists()


def test_genes_x_cells_table_detected_and_overridable(formats, counts):
    report = io.read(formats["tsv.gz_genes_x_cells"]).uns[io.REPORT_KEY]
    assert report["orientation"] == "genes_x_cells"
    assert "columns hold cell barcodes" in report["orientation_reason"]
    forced = io.read(formats["tsv.gz_genes_x_cells"], orientation="cells_x_genes")
    assert forced.shape == (counts.n_vars, counts.n_obs)
    assert forced.uns[io.REPORT_KEY]["orientation_reason"] == "given by the user"


def test_npy_orientation_override(formats, counts):
    adata = io.read(formats["npy"], orientation="genes_x_cells")
    np.testing.assert_array_equal(dense(adata), dense(counts).T)


def test_table_metadata_columns_go_to_obs(counts, tmp_path):
    adata = counts.copy()
    rng = np.random.default_rng(1)
    adata.obs["response"] = rng.integers(0, 2, adata.n_obs)
    adata.obs["cell_type"] = rng.choice(["T cell", "B cell"], adata.n_obs)
    adata.obs["batch"] = rng.integers(1, 3, adata.n_obs)
    adata.obs["note"] = [f"free text {i}" for i in range(adata.n_obs)]
    path = write_table(adata, tmp_path / "meta.csv", obs_columns=["response", "cell_type", "batch", "note"])
    out = io.read(path)
    assert out.n_vars == counts.n_vars and "response" not in out.var_names
    np.testing.assert_array_equal(dense(out), dense(counts))
    np.testing.assert_array_equal(out.obs["response"].to_numpy(), adata.obs["response"].to_numpy())
    assert out.obs["response"].dtype == np.int64
    report = out.uns[io.REPORT_KEY]
    assert report["label_columns"]["response"]["binary"] is True
    assert set(report["group_columns"]) == {"cell_type", "batch"}
    assert set(report["metadata_columns"]) == {"response", "cell_type", "batch", "note"}
    assert "per-cell fields" in report["orientation_reason"]


@pytest.mark.parametrize("density", [0.3, 0.9])  # sparse and dense storage
def test_tables_read_in_chunks(tmp_path, monkeypatch, density):
    adata = make_counts(n_cells=50, n_genes=30, density=density, seed=2)
    adata.obs["response"] = np.arange(50) % 2
    path = write_table(adata, tmp_path / "t.csv", obs_columns=["response"])
    monkeypatch.setattr("scatd_core.io._table.TABLE_CHUNK_VALUES", 31 * 7)  # 7 rows per chunk
    out = io.read(path)
    np.testing.assert_array_equal(dense(out), dense(adata))
    assert list(out.obs_names) == list(adata.obs_names)
    np.testing.assert_array_equal(out.obs["response"], adata.obs["response"])


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv.gz"), (" ", "txt")])
@pytest.mark.parametrize("genes_as_rows", [False, True])
def test_numeric_fast_path_matches_pandas(tmp_path, monkeypatch, sep, suffix, genes_as_rows):
    """All-numeric tables skip pandas (wide tables in linear time) and give the same AnnData, bit for bit."""
    rng = np.random.default_rng(5)
    values = np.round(rng.gamma(0.3, 2.0, (40, 25)) * (rng.random((40, 25)) < 0.4), 3)
    values[3, 4] = 1.234567891234  # more digits than float32 holds: rounded the same way
    frame = pd.DataFrame(values, index=[f"cell_{i}" for i in range(40)], columns=[f"GENE{j}" for j in range(25)])
    frame = frame.T if genes_as_rows else frame
    path = tmp_path / f"t.{suffix}"
    text = frame.to_csv(sep=sep)
    if suffix.endswith("gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    monkeypatch.setattr("scatd_core.io._table.TABLE_CHUNK_VALUES", 26 * 6)  # several chunks
    calls = []
    real_general = __import__("scatd_core.io._table", fromlist=["_read_general"])._read_general
    monkeypatch.setattr("scatd_core.io._table._read_general", lambda *a: calls.append(1) or real_general(*a))
    fast = io.read(path)
    assert not calls  # NumPy read it all
    monkeypatch.setattr("scatd_core.io._table._read_numeric", lambda *a: None)
    general = io.read(path)
    assert calls
    assert fast.shape == general.shape == (40, 25)
    np.testing.assert_array_equal(dense(fast), dense(general))
    np.testing.assert_array_equal(dense(fast), values.astype(np.float32))
    assert list(fast.obs_names) == list(general.obs_names) == list(frame.index if not genes_as_rows else frame.columns)
    assert list(fast.var_names) == list(general.var_names)


def test_numeric_fast_path_hands_over_text_and_missing_values(tmp_path, monkeypatch):
    """NA in a late chunk, quoted names or label columns: the general reader takes the file from the start."""
    rows = [f"c{i},{i},{i + 1}" for i in range(20)] + ["c20,NA,3"]
    (tmp_path / "na.csv").write_text("cell,TP53,EGFR\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr("scatd_core.io._table.TABLE_CHUNK_VALUES", 10)
    err = _read_error(tmp_path / "na.csv")  # NA seen by pandas, then refused by the value check
    assert "1 missing (NaN)" in err.message and "'c20'" in err.message
    (tmp_path / "quoted.csv").write_text('cell,TP53,EGFR\n"c,0",1,2\nc1,3,4\n')
    out = io.read(tmp_path / "quoted.csv", orientation="cells_x_genes")
    assert list(out.obs_names) == ["c,0", "c1"]
    (tmp_path / "label.csv").write_text("cell,TP53,EGFR,response\n" + "\n".join(f"c{i},{i},1,{i % 2}" for i in range(9)))
    out = io.read(tmp_path / "label.csv")
    assert list(out.var_names) == ["TP53", "EGFR"] and list(out.obs["response"]) == [i % 2 for i in range(9)]


def test_stray_text_in_a_later_chunk(tmp_path, monkeypatch):
    rows = "\n".join(f"c{i},{i},{i + 1}" for i in range(20))
    (tmp_path / "bad.csv").write_text("cell,TP53,EGFR\n" + rows + "\nc99,1,oops\n")
    monkeypatch.setattr("scatd_core.io._table.TABLE_CHUNK_VALUES", 10)
    err = _read_error(tmp_path / "bad.csv")
    assert "'EGFR'" in err.message and "'oops'" in err.message


def test_r_style_header_without_row_name_field(counts, tmp_path):
    df = pd.DataFrame(dense(counts).astype(int), index=counts.obs_names, columns=counts.var_names)
    text = "\t".join(df.columns) + "\n" + df.to_csv(sep="\t", header=False)
    (tmp_path / "r.txt").write_text(text)
    np.testing.assert_array_equal(dense(io.read(tmp_path / "r.txt")), dense(counts))


def test_duplicated_names_are_made_unique_and_counted(counts, tmp_path):
    adata = counts.copy()
    genes = list(adata.var_names)
    genes[1] = genes[0]
    adata.var_names = genes
    adata.obs_names = ["cellA"] * 3 + list(adata.obs_names[3:])
    path = write_table(adata, tmp_path / "dup.csv")
    out = io.read(path)
    report = out.uns[io.REPORT_KEY]
    assert report["n_duplicated_genes"] == 1 and report["n_duplicated_cells"] == 2
    assert out.var_names.is_unique and out.obs_names.is_unique
    assert list(out.var["scatd_original_name"][:2]) == [genes[0], genes[0]]


def test_zero_cells_are_kept_and_marked(counts, tmp_path):
    adata = counts.copy()
    X = dense(adata)
    X[[3, 7]] = 0
    adata.X = sp.csr_matrix(X)
    adata.write_h5ad(tmp_path / "z.h5ad")
    out = io.read(tmp_path / "z.h5ad")
    assert out.n_obs == counts.n_obs
    assert list(np.flatnonzero(out.obs[io.ZERO_CELL_KEY])) == [3, 7]
    assert out.uns[io.REPORT_KEY]["n_all_zero_cells"] == 2


def test_backed_h5ad_reads_rows_in_batches(formats, counts, monkeypatch):
    adata = io.read(formats["h5ad"], backed=True)
    assert adata.isbacked and adata.uns[io.REPORT_KEY]["backed"] is True
    batches = [sp.csr_matrix(b).toarray() for _, _, b in row_batches(adata.X, 7)]
    np.testing.assert_array_equal(np.vstack(batches), dense(counts))
    monkeypatch.setattr("scatd_core.io._hdf5.BACKED_MIN_CELLS", 10)
    assert io.read(formats["h5ad"]).isbacked  # "auto" over the threshold
    assert not io.read(formats["h5ad"], backed=False).isbacked


def test_backed_csc_h5ad_is_loaded_into_memory(counts, tmp_path):
    adata = counts.copy()
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csc.h5ad")
    out = io.read(tmp_path / "csc.h5ad", backed=True)
    assert not out.isbacked
    assert any("CSC" in w for w in out.uns[io.REPORT_KEY]["warnings"])


def test_an_h5ad_stored_genes_x_cells_is_said_never_transposed_unless_asked(counts, tmp_path):
    # AnnData's convention (obs are cells) decides an h5ad's layout; names that look swapped are said
    counts.T.write_h5ad(tmp_path / "t.h5ad")
    out = io.read(tmp_path / "t.h5ad")
    assert out.shape == counts.T.shape and out.uns[io.REPORT_KEY]["orientation"] == "cells_x_genes"
    assert any("The names look swapped" in w and "--orientation genes_x_cells" in w
               for w in out.uns[io.REPORT_KEY]["warnings"])
    out = io.read(tmp_path / "t.h5ad", orientation="genes_x_cells")
    assert out.shape == counts.shape
    np.testing.assert_array_equal(dense(out), dense(counts))


def test_10x_antibody_features_are_set_aside_and_reported(counts, tmp_path):
    types = ["Gene Expression"] * (counts.n_vars - 3) + ["Antibody Capture"] * 3
    out = io.read(write_10x_h5(counts, tmp_path / "multi.h5", feature_types=types))
    assert out.n_vars == counts.n_vars - 3
    assert out.uns[io.REPORT_KEY]["features_dropped"] == {"Antibody Capture": 3}


def test_mtx_with_file_prefix_and_cells_by_genes_layout(counts, tmp_path):
    folder = write_10x_mtx(counts, tmp_path / "geo", prefix="GSM123_")
    np.testing.assert_array_equal(dense(io.read(folder)), dense(counts))
    # some GEO submissions store cells x genes; the file counts tell which
    scipy.io.mmwrite(tmp_path / "geo" / "GSM123_matrix.mtx", sp.csr_matrix(counts.X).tocoo(), field="integer")
    (tmp_path / "geo" / "GSM123_matrix.mtx.gz").unlink()
    np.testing.assert_array_equal(dense(io.read(tmp_path / "geo")), dense(counts))


def test_report_survives_h5ad_round_trip(formats, tmp_path):
    adata = io.read(formats["csv"])
    adata.write_h5ad(tmp_path / "annotated.h5ad")
    again = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert again.uns[io.REPORT_KEY]["value_type"] == "counts"


# -- real data -------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"shared reference data not found at {SHARED_DATA}")


@needs_shared
@pytest.mark.parametrize("name, shape", [("scad_gefitinib_hnscc_z.csv", (66, 2932)),
                                         ("scad_sorafenib_hnscc_z.csv", (120, 2874))])
def test_real_scad_zscored_csv(name, shape):
    adata = io.read(SHARED_DATA / "sc" / name)
    report = adata.uns[io.REPORT_KEY]
    assert adata.shape == shape
    assert "response" in adata.obs and "response" not in adata.var_names
    assert report["label_columns"]["response"]["binary"] is True
    half = str(shape[0] // 2)
    assert report["label_columns"]["response"]["values"] == {"0": int(half), "1": int(half)}
    assert report["value_type"] == "zscored"
    assert report["gene_id_type"] == "symbol"
    assert report["orientation"] == "cells_x_genes"
    assert preprocess.check_backbone_compatibility(report, "geneformer") != []


def test_scanpy_pbmc68k_reduced(tmp_path):
    sc = pytest.importorskip("scanpy")
    pbmc = sc.datasets.pbmc68k_reduced()
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    adata = io.read(tmp_path / "pbmc.h5ad")
    report = adata.uns[io.REPORT_KEY]
    assert adata.shape == (700, 765)
    assert report["value_type"] == "zscored"  # X holds sc.pp.scale output
    assert report["gene_id_type"] == "symbol"
    assert report["stored_matrices"]["raw"] is True
    assert "louvain" in report["group_columns"]
    assert preprocess.detect_value_type(pbmc.raw.X)["kind"] == "log_normalized"


# -- bad input -------------------------------------------------------------------------------

def _junk(n: int = 4096) -> bytes:
    return np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_missing_file(tmp_path):
    assert "not found" in _read_error(tmp_path / "nope.h5ad").message


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "empty" in _read_error(tmp_path / "empty.csv").message


@pytest.mark.parametrize("name", ["data.xlsx", "data.pdf", "data", "matrix.rds"])
def test_wrong_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"a,b\n1,2\n")
    said = "is an Excel workbook: spreadsheets are not read" if name.endswith(".xlsx") else "not supported"
    assert said in _read_error(tmp_path / name).message


@pytest.mark.parametrize("name, expected", [("junk.csv", "binary"), ("junk.h5ad", "not an HDF5"),
                                            ("junk.h5", "not an HDF5"), ("junk.loom", "not an HDF5"),
                                            ("junk.zip", "not a zip"), ("junk.npy", "not a NumPy"),
                                            ("junk.csv.gz", "not gzip"), ("junk.tar.gz", "not gzip"),
                                            ("junk.mtx", "binary")])
def test_binary_junk(tmp_path, name, expected):
    (tmp_path / name).write_bytes(_junk())
    assert expected in _read_error(tmp_path / name).message


@pytest.mark.parametrize("label", ["h5ad", "10x_h5_v3", "loom", "zip", "tar.gz", "csv.gz", "npy"])
def test_truncated_files(formats, tmp_path, label):
    src = formats[label]
    data = src.read_bytes()
    (tmp_path / src.name).write_bytes(data[: len(data) // 2])
    _read_error(tmp_path / src.name)


def test_cut_short_gzip_and_h5ad_say_so_in_plain_words(formats, tmp_path):
    for label in ("csv.gz", "h5ad"):
        data = formats[label].read_bytes()
        (tmp_path / formats[label].name).write_bytes(data[: len(data) - 40 if label == "csv.gz" else len(data) // 2])
        err = _read_error(tmp_path / formats[label].name)
        assert "is cut short" in err.message and "again" in err.hint
        assert "EOFError" not in err.message and "eof =" not in err.message


def test_h5ad_that_is_really_a_csv_says_rename_it(tmp_path):
    (tmp_path / "cells.h5ad").write_text("cell,TP53,EGFR\nc1,1,2\nc2,0,3\n")
    err = _read_error(tmp_path / "cells.h5ad")
    assert "is a text table (comma-separated text), not an HDF5 file" in err.message
    assert "rename it to end in .csv" in err.hint


def test_h5ad_with_an_unknown_top_level_item_names_it(formats, tmp_path):
    path = tmp_path / "extra.h5ad"
    path.write_bytes(formats["h5ad"].read_bytes())
    with h5py.File(path, "a") as f:
        f["realX"] = np.zeros((3, 3))
    err = _read_error(path)
    assert "/realX (a dataset)" in err.message and "unexpected keyword" not in err.message
    assert "del f['realX']" in err.hint


def test_a_lone_matrix_upload_is_called_by_its_own_name(counts, tmp_path):
    folder = write_10x_mtx(counts, tmp_path / "m")
    with pytest.raises(InputError) as info:
        io.read_bytes((folder / "matrix.mtx.gz").read_bytes(), "matrix.mtx.gz")
    assert info.value.message.startswith("matrix.mtx.gz has no barcodes and features/genes file")
    assert "upload." not in info.value.message


def test_hdf5_of_unknown_layout(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.arange(3)
    assert "neither" in _read_error(tmp_path / "other.h5").message


@pytest.mark.parametrize("walk, expected", [("import time; time.sleep(30)", "could not be read"),
                                             ("import os; os.abort()", "damaged HDF5")])
def test_hdf5_library_hangs_and_crashes_become_input_errors(formats, monkeypatch, walk, expected):
    # damaged HDF5 metadata can loop forever inside the C library; the structure walk runs in a
    # child process with a time limit (here simulated: a child that hangs, one that crashes)
    monkeypatch.setattr("scatd_core.io._hdf5._HDF5_WALK", walk)
    monkeypatch.setattr("scatd_core.io._hdf5.HDF5_CHECK_SECONDS", 1)
    assert expected in _read_error(formats["h5ad"]).message


def test_h5ad_without_x(counts, tmp_path):
    ad.AnnData(obs=counts.obs, var=counts.var).write_h5ad(tmp_path / "nox.h5ad")
    assert "no expression matrix" in _read_error(tmp_path / "nox.h5ad").message


@pytest.mark.parametrize("value, word", [("nan", "NaN"), ("inf", "infinite"), ("-inf", "infinite")])
def test_nan_and_inf(tmp_path, value, word):
    (tmp_path / "bad.csv").write_text(f"cell,TP53,EGFR\nc1,1,2\nc2,{value},3\nc3,0,1\n")
    err = _read_error(tmp_path / "bad.csv")
    assert word in err.message and "'c2'" in err.message


def test_nan_in_h5ad(counts, tmp_path):
    adata = counts.copy()
    adata.X = dense(adata)
    adata.X[5, 2] = np.nan
    adata.write_h5ad(tmp_path / "nan.h5ad")
    assert "NaN" in _read_error(tmp_path / "nan.h5ad").message


def test_all_zero_cells(tmp_path):
    (tmp_path / "zero.csv").write_text("cell,TP53,EGFR\nc1,0,0\nc2,0,0\nc3,0,0\n")
    assert "all zero" in _read_error(tmp_path / "zero.csv").message


def test_single_cell(tmp_path):
    (tmp_path / "one.csv").write_text("cell,TP53,EGFR,MYC\nc1,1,2,3\n")
    err = _read_error(tmp_path / "one.csv")
    assert "single cell" in err.message and "--orientation genes_x_cells" in err.hint and "rows are genes" in err.hint
    (tmp_path / "one_gene_rows.csv").write_text("gene,c1\nTP53,1\nEGFR,2\nMYC,3\n")
    err = _read_error(tmp_path / "one_gene_rows.csv", orientation="genes_x_cells")  # the other way round
    assert "--orientation cells_x_genes" in err.hint and "rows are cells" in err.hint


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv.gz", "\t")])
def test_a_table_without_row_names_keeps_its_first_gene(tmp_path, suffix, sep):
    """pandas' to_csv(index=False): the first column is a gene's values, not cell names. It is read
    as data (the rows numbered in file order, and said so), never taken for names."""
    rng = np.random.default_rng(3)
    genes = [f"GENE{i}" for i in range(12)]
    counts = pd.DataFrame(rng.poisson(1.0, (40, 12)).astype(float), columns=genes)
    zscored = (counts - counts.mean()) / counts.std()
    for kind, table in (("counts", counts), ("z", zscored)):
        path = tmp_path / f"{kind}{suffix}"
        table.to_csv(path, sep=sep, index=False)
        data = io.read(path)
        assert list(data.var_names) == genes and list(data.obs_names[:2]) == ["row_1", "row_2"]
        np.testing.assert_allclose(dense(data), table.to_numpy(), rtol=1e-6, atol=1e-6)
        assert any("no column of row names" in w and "'GENE0'" in w for w in data.uns["scatd_input"]["warnings"])
    # lines longer than the reader's 1 MiB pieces keep one row name each
    wide = pd.DataFrame(rng.random((3, 60_000)) * 1e3, columns=[f"G{i}" for i in range(60_000)])
    wide.to_csv(tmp_path / "wide.csv", index=False)
    data = io.read(tmp_path / "wide.csv")
    assert list(data.obs_names) == ["row_1", "row_2", "row_3"]
    np.testing.assert_allclose(dense(data), wide.to_numpy(), rtol=1e-6)
    # a label column first (repeated values) is cell information, not names
    labelled = counts.copy()
    labelled.insert(0, "response", ["resistant", "sensitive"] * 20)
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    data = io.read(tmp_path / "labelled.csv")
    assert list(data.var_names) == genes and list(data.obs["response"][:2]) == ["resistant", "sensitive"]
    # names as usual: text, an empty or name-like header over distinct numbers, pandas' default index
    counts.set_axis([f"c{i}" for i in range(40)]).to_csv(tmp_path / "named.csv")
    numbered = counts.copy()
    numbered.insert(0, "cell_id", np.arange(1000, 1040))
    numbered.to_csv(tmp_path / "numeric_ids.csv", index=False)
    counts.to_csv(tmp_path / "default_index.csv")
    for name, first in (("named.csv", "c0"), ("numeric_ids.csv", "1000"), ("default_index.csv", "0")):
        data = io.read(tmp_path / name)
        assert data.obs_names[0] == first and list(data.var_names) == genes, name
        assert not any("no column of row names" in w for w in data.uns["scatd_input"]["warnings"])


def test_non_numeric_value_in_a_gene_column(tmp_path):
    rows = "\n".join(f"c{i},{i},{i + 1}" for i in range(20))
    (tmp_path / "bad.csv").write_text("cell,TP53,EGFR\n" + rows + "\nc99,abc,1\n")
    err = _read_error(tmp_path / "bad.csv")
    assert "'TP53'" in err.message and "'abc'" in err.message


def test_decimal_commas_are_named(tmp_path):
    """A European spreadsheet's CSV (';' between fields, ',' in numbers) is refused with the reason."""
    (tmp_path / "comma.csv").write_text("cell;TP53;EGFR\nc1;0,5;1,25\nc2;1,5;0,1\nc3;2,5;1,5\n")
    (tmp_path / "mixed.csv").write_text("cell;TP53;EGFR;MYC\nc1;0,5;1,25;2\nc2;1,5;0;3,75\nc3;2,5;1;0,5\n")
    for name in ("comma.csv", "mixed.csv"):
        assert "decimal commas" in _read_error(tmp_path / name).hint, name


def test_text_only_table(tmp_path):
    (tmp_path / "text.csv").write_text("cell,a,b\nc1,x,y\nc2,z,w\n")
    assert "no numeric columns" in _read_error(tmp_path / "text.csv").message


def test_header_only_and_single_column(tmp_path):
    (tmp_path / "h.csv").write_text("cell,TP53,EGFR\n")
    assert "no data rows" in _read_error(tmp_path / "h.csv").message
    (tmp_path / "one.csv").write_text("cell\nc1\nc2\n")
    assert "single column" in _read_error(tmp_path / "one.csv").message


def test_ragged_table(tmp_path):
    (tmp_path / "r.csv").write_text("cell,TP53,EGFR\nc1,1,2\nc2,1,2,3,4\nc3,1,1\n")
    _read_error(tmp_path / "r.csv")


def test_over_size_and_cell_limits(formats):
    assert "over the limit" in _read_error(formats["h5ad"], max_bytes=100).message
    assert "60 cells, over the limit of 10" in _read_error(formats["h5ad"], max_cells=10).message
    for label in ("10x_h5_v3", "mtx_folder_v3", "csv", "loom", "npy", "zip"):
        assert "cells" in _read_error(formats[label], max_cells=10).message
    with pytest.raises(InputError, match="over the limit"):
        io.read_bytes(formats["csv"].read_bytes(), "x.csv", max_bytes=100)


def test_limits_come_from_the_environment(formats, monkeypatch):
    monkeypatch.setenv("SCATD_MAX_CELLS", "10")
    assert "over the limit" in _read_error(formats["csv"]).message


def test_limit_refusals_name_the_configuration_key_and_the_variable(formats, tmp_path, monkeypatch):
    """An administrator may have set a limit in config.toml or in the environment: the advice names both."""
    hint = _read_error(formats["h5ad"], max_cells=10).hint
    assert "limits.max_cells in the configuration file" in hint and "SCATD_MAX_CELLS" in hint
    hint = _read_error(formats["h5ad"], max_bytes=100).hint
    assert "limits.max_upload_mb in the configuration file" in hint and "SCATD_MAX_UPLOAD_MB" in hint
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.csv", "cell,TP53\n" + "c,0\n" * 300_000)
    hint = _read_error(tmp_path / "bomb.zip").hint
    assert "limits.max_decompressed_mb in the configuration file" in hint and "SCATD_MAX_DECOMPRESSED_MB" in hint


def test_the_upload_limit_caps_uploads_only_not_files_read_from_disk(tmp_path, monkeypatch):
    """limits.max_upload_mb is the web upload's limit: the CLI, Ray and the demo read a file on the
    server's disk whatever its size (bounded by memory and what the file declares), while an upload
    over it is still refused, with the same message."""
    monkeypatch.setenv("SCATD_MAX_UPLOAD_MB", "1")
    big = make_counts(n_cells=500, n_genes=1000, density=0.5, seed=3)
    paths = {"h5ad": tmp_path / "atlas.h5ad", "csv": write_table(big, tmp_path / "atlas.csv"),
             "mtx": write_10x_mtx(big, tmp_path / "mtx", compressed=False)}
    big.write_h5ad(paths["h5ad"])
    for label, path in paths.items():
        size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
        assert size > 1 << 20, label
        assert io.read(path).shape == (500, 1000), label  # refused on old code: "over the limit of 1 MB"
    with pytest.raises(InputError, match=r"atlas\.h5ad is 2 MB, over the limit of 1 MB") as info:
        io.read_bytes(paths["h5ad"].read_bytes(), "atlas.h5ad")  # an upload
    assert "limits.max_upload_mb" in info.value.hint and "SCATD_MAX_UPLOAD_MB" in info.value.hint
    with pytest.raises(InputError, match=r"over the limit of 1 MB"):
        io.store_upload(paths["csv"].read_bytes(), "atlas.csv", tmp_path)
    # the app reads an upload it stored with the upload limit (the Data page's read_upload)
    assert "over the limit of 1 MB" in _read_error(paths["h5ad"], max_bytes=1 << 20).message


def test_an_h5ad_with_too_many_annotation_columns_is_refused_before_they_are_read(counts, tmp_path, monkeypatch):
    # 20,000 obs columns of 100 cells (25 MB) took 48 s of CPU to read: the columns obs declares decide
    monkeypatch.setenv("SCATD_MAX_ANNOTATION_COLUMNS", "5")
    wide = counts.copy()
    for i in range(6):
        wide.obs[f"score_{i}"] = np.arange(wide.n_obs, dtype=float)
    wide.write_h5ad(tmp_path / "wide.h5ad")
    monkeypatch.setattr(ad, "read_h5ad", lambda *a, **k: pytest.fail("the h5ad was read"))
    err = _read_error(tmp_path / "wide.h5ad")
    assert err.message == ("wide.h5ad: its obs declares 6 per-cell annotation columns (e.g. score_0, score_1, "
                           "score_2), over the limit of 5.")
    assert "limits.max_annotation_columns" in err.hint and "SCATD_MAX_ANNOTATION_COLUMNS" in err.hint
    wide.obs = wide.obs.iloc[:, :5]
    wide.write_h5ad(tmp_path / "five.h5ad")
    monkeypatch.undo()
    monkeypatch.setenv("SCATD_MAX_ANNOTATION_COLUMNS", "5")
    assert io.read(tmp_path / "five.h5ad").obs.shape[1] >= 5


def test_npy_must_be_plain_2d_numbers(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4)))
    assert "3-D" in _read_error(tmp_path / "three.npy").message
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert "object arrays" in _read_error(tmp_path / "obj.npy").hint


def test_npy_all_nan_rows_are_cells_not_embedded_and_partial_nan_is_refused_as_an_embedding(tmp_path):
    emb = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    emb[2] = np.nan  # what embed_cells writes for a cell it did not embed
    np.save(tmp_path / "own.npy", emb)
    adata = io.read(tmp_path / "own.npy")
    assert adata.n_obs == 6 and np.isnan(adata.X[2]).all()
    assert adata.uns["scatd_input"]["n_not_embedded_cells"] == 1
    assert any("all NaN" in w and "not scored" in w for w in adata.uns["scatd_input"]["warnings"])
    emb[4, 3] = np.nan
    np.save(tmp_path / "part.npy", emb)
    err = _read_error(tmp_path / "part.npy")
    assert "row 4" in err.message and "not expressed" not in err.hint and "whole row to NaN" in err.hint
    np.save(tmp_path / "none.npy", np.full((3, 8), np.nan, dtype=np.float32))
    assert "no cell has an embedding" in _read_error(tmp_path / "none.npy").message


def test_archive_with_unsafe_path_extracts_nothing(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../escaped.csv", "cell,TP53\nc1,1\nc2,2\n")
    assert "unsafe path" in _read_error(tmp_path / "evil.zip").message
    assert not (tmp_path.parent / "escaped.csv").exists()


def test_archive_with_several_or_no_data_files(counts, tmp_path):
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.writestr("a.csv", "cell,TP53\nc1,1\nc2,2\n")
        zf.writestr("b.csv", "cell,TP53\nc1,1\nc2,2\n")
    assert "several data files" in _read_error(tmp_path / "two.zip").message
    with zipfile.ZipFile(tmp_path / "none.zip", "w") as zf:
        zf.writestr("readme.md", "hello")
    assert "no data files" in _read_error(tmp_path / "none.zip").message


def test_archive_size_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.csv", "cell,TP53\n" + "c,0\n" * 300_000)
    assert "declares 1.1 MB of content, over the server's limit of 1.0 MB" in _read_error(tmp_path / "bomb.zip").message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_member_over_the_size_limit_is_refused_before_it_is_unpacked(tmp_path, monkeypatch, kind):
    import tarfile

    content = ("cell,TP53\n" + "c,0\n" * 800_000).encode()  # 3.1 MB, a few kB compressed
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("big.csv", content)
        # refused from the declared size: not one byte of the member is read
        monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("the member was read"))
    else:
        (tmp_path / "big.csv").write_bytes(content)
        with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tf:
            tf.add(tmp_path / "big.csv", arcname="big.csv")
        unread = type("Unread", (), {"read": lambda self, n=-1: pytest.fail("the member was read")})
        monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, member: unread())
    err = _read_error(tmp_path / f"bomb.{kind}", max_bytes=1 << 20)
    assert err.message == f"bomb.{kind}:big.csv is 3 MB, over the limit of 1 MB."


def test_mtx_files_that_do_not_belong_together(counts, tmp_path):
    folder = write_10x_mtx(counts, tmp_path / "m")
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("AAAC-1\nAAAG-1\n")
    assert "do not belong together" in _read_error(folder).hint
    (folder / "barcodes.tsv.gz").unlink()
    assert "no barcodes file" in _read_error(folder).message


def test_negative_counts_are_refused_where_counts_are_required(tmp_path):
    rows = "\n".join(f"c{i},{i % 5},{(i * 3) % 7},{i % 2}" for i in range(30))
    # one faulty cell among counts: the others decide (detect_value_type), and it is counted
    (tmp_path / "one.csv").write_text("cell,TP53,EGFR,MYC\n" + rows + "\nc99,-4,2,1\n")
    report = io.read(tmp_path / "one.csv").uns[io.REPORT_KEY]
    assert report["value_type"] == "counts" and report["value_type_evidence"]["n_cells_negative"] == 1
    # ... and said on reading (the Data page showed "Values: counts" and nothing else), naming cell and gene
    assert "1 cell has negative values, which counts never have (e.g. cell 'c99', gene TP53: -4)" in \
        " ".join(report["warnings"])
    # negative values in more than a few cells: not counts, refused where counts are required
    (tmp_path / "neg.csv").write_text("cell,TP53,EGFR,MYC\n" + rows + "\nc98,-3,2,1\nc99,-4,2,1\n")
    report = io.read(tmp_path / "neg.csv").uns[io.REPORT_KEY]
    assert report["value_type"] == "unknown"
    with pytest.raises(InputError, match="negative"):
        preprocess.require_backbone_compatibility(
            {"kind": report["value_type"], "evidence": report["value_type_evidence"]}, "vae_gf")


def test_programming_errors_are_not_input_errors(formats):
    with pytest.raises(ValueError):
        io.read(formats["csv"], orientation="sideways")


# -- no other exception escapes --------------------------------------------------------------

@pytest.fixture(scope="module")
def seed_files(formats) -> dict[str, tuple[bytes, str]]:
    small = {k: formats[k] for k in ("h5ad", "10x_h5_v3", "loom", "csv", "csv.gz", "tsv", "zip", "tar.gz", "npy")}
    return {k: (p.read_bytes(), "".join(p.suffixes[-2:]) if p.name.endswith(".gz") else p.suffix)
            for k, p in small.items()}


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_raise_only_input_error(seed_files, data):
    label = data.draw(st.sampled_from(sorted(seed_files)), label="format")
    raw, suffix = seed_files[label]
    raw = bytearray(raw)
    mutation = data.draw(st.sampled_from(["truncate", "flip", "splice", "zero_block"]), label="mutation")
    position = data.draw(st.integers(0, len(raw) - 1), label="position")
    if mutation == "truncate":
        raw = raw[:position]
    elif mutation == "flip":
        for offset in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=16), label="offsets"):
            raw[offset] ^= data.draw(st.integers(1, 255))
    elif mutation == "splice":
        raw[position:position] = data.draw(st.binary(min_size=1, max_size=64), label="junk")
    else:
        raw[position:position + 256] = bytes(min(256, len(raw) - position))
    try:
        adata = io.read_bytes(bytes(raw), f"mutated{suffix}")
    except InputError as err:
        assert err.message
    else:
        assert isinstance(adata, ad.AnnData) and adata.n_obs >= io.MIN_CELLS


def test_row_names_that_look_missing_are_kept_as_written(tmp_path):
    """'NA', 'N/A', 'null', 'NaN' are cell names in the first column (pandas would read them as missing,
    naming the cells nan, nan-1, ...); in value and label columns they still mean missing."""
    path = tmp_path / "na_names.csv"
    path.write_text('cell,GENE1,GENE2,GENE3,response\nNA,1,2,3,"sensitive"\nN/A,0,3,1,resistant\n'
                    'null,4,0,2,NA\nNaN,5,6,0,sensitive\nc5,1,1,1,resistant\n')
    adata = io.read(path)
    assert list(adata.obs_names) == ["NA", "N/A", "null", "NaN", "c5"]
    assert adata.obs["response"].isna().tolist() == [False, False, True, False, False]
    path.write_text('cell,GENE1,GENE2,response\nNA,1,NA,sensitive\nc2,1,1,resistant\n')
    with pytest.raises(InputError, match="missing"):
        io.read(path)


def test_the_csr_scan_counts_as_the_row_blocks_do():
    """The read's scan of an in-memory CSR (its arrays as they are) gives what the row-block scan
    gives: non-zeros per cell (explicit zeros not counted, NaN counted), NaN and inf counts and the
    first bad cell; and it still refuses indices out of range."""
    import scipy.sparse as sp

    from scatd_core.io import _report

    rng = np.random.default_rng(11)
    for trial in range(60):
        n, m = int(rng.integers(1, 50)), int(rng.integers(1, 30))
        x = sp.random(n, m, density=rng.uniform(0, 0.7), format="csr", random_state=trial, dtype=np.float32)
        if x.nnz:
            pos = rng.choice(x.nnz, size=min(6, x.nnz), replace=False)
            k = int(rng.integers(0, 3))
            x.data[pos[:k]], x.data[pos[k:2 * k]], x.data[pos[2 * k:]] = np.nan, np.inf, 0.0
        blocks = _report._scan(_RowBlocksOnly(x))
        for fast in (_report._scan(x), _report._scan_csr(x, chunk=7)):  # whole, and in chunks of values
            assert np.array_equal(fast[0], blocks[0]) and fast[1:] == blocks[1:], trial
    bad = sp.csr_matrix((np.ones(2, np.float32), np.array([0, 7]), np.array([0, 1, 2])), shape=(2, 3))
    with pytest.raises(ValueError):
        _report._scan(bad)


class _RowBlocksOnly:
    """A CSR seen only through row slices, so the scan takes its row-block path."""

    def __init__(self, x):
        self.x, self.shape, self.dtype = x, x.shape, x.dtype

    def __getitem__(self, rows):
        return self.x[rows]


def _cells_csv(path: Path, n_cells: int, *, quoted: bool = False) -> Path:
    q = '"' if quoted else ""
    rows = "".join(f"{q}c{i}{q},{i % 3},1\n" + ("\n" if i == 10 else "") for i in range(n_cells))  # one blank line
    path.write_text(f"{q}cell{q},{q}TP53{q},{q}EGFR{q}\n" + rows)
    return path


def test_too_many_cells_in_a_csv_says_the_true_count(tmp_path):
    """QA: with limits.max_cells = 5,000 a 6,000-cell CSV 'has 5,001 cells' (the reader stops at the
    limit plus one). The rows of a plain file on disk are counted (blank lines are not rows)."""
    for quoted in (False, True):  # R's write.csv quotes every name
        err = _read_error(_cells_csv(tmp_path / f"cells{quoted}.csv", 6_000, quoted=quoted), max_cells=5_000)
        assert err.message.startswith(f"cells{quoted}.csv has 6,000 cells, over the limit of 5,000."), err.message
    # a quoted field holding a line break: lines are not rows, so only what is known is said
    multi = tmp_path / "multi.csv"
    multi.write_text('cell,note,TP53\n' + "".join(f'c{i},"a\nb",{i}\n' for i in range(60)))
    assert _read_error(multi, max_cells=50).message.startswith("multi.csv has more than 50 cells, over the limit")
    # a compressed table is not decompressed again to count them
    packed = tmp_path / "cells.csv.gz"
    packed.write_bytes(gzip.compress(_cells_csv(tmp_path / "plain.csv", 6_000).read_bytes()))
    err = _read_error(packed, max_cells=5_000)
    assert err.message.startswith("cells.csv.gz has more than 5,000 cells, over the limit of 5,000."), err.message


def test_too_many_cells_in_an_h5ad_says_its_count(tmp_path):
    from tests._app_helpers import make_dataset
    path = tmp_path / "cells.h5ad"
    make_dataset(60).write_h5ad(path)
    assert _read_error(path, max_cells=50).message.startswith("cells.h5ad has 60 cells, over the limit of 50.")
