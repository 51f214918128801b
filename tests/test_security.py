"""The lab-server threat model (DESIGN.md): every attack is built here and must be refused cleanly.

Uploads that point at other files, absurd declared shapes, decompression bombs, concurrent and
interrupted writes of the model library, names with markup or other scripts, logins.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import pytest
import torch

import original_scatd as orig
from conftest import SMALL, small_gene_names
from _data_helpers import make_counts, write_10x_h5
from scatd_core import io
from scatd_core.bundle import (clean_library, import_checkpoint, list_library, load_bundle, safe_name,
                               save_bundle)
from scatd_core.errors import BundleError, InputError

SECRET = "TOPSECRET-PASSWORD-1234"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    path.mkdir()
    text = path / "credentials.txt"
    text.write_text(SECRET * 50)
    h5 = path / "other.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = np.frombuffer((SECRET * 8).encode(), dtype="S1").reshape(-1, len(SECRET))[:, 0]
        f["names"] = np.array([SECRET.encode()] * 20)
    return text, h5


def _refused(path: Path) -> InputError:
    with pytest.raises(InputError) as err:
        io.read(path)
    shown = err.value.message + (err.value.hint or "")
    assert SECRET not in shown
    return err.value


def _h5ad(tmp_path) -> Path:
    make_counts(n_cells=20, n_genes=30).write_h5ad(tmp_path / "good.h5ad")
    return tmp_path / "good.h5ad"


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("attack", ["external_storage", "external_link", "virtual"])
def test_h5ad_that_points_at_other_files_is_refused(tmp_path, secret, attack):
    text, other = secret
    path = _copy(_h5ad(tmp_path), tmp_path / f"{attack}.h5ad")
    with h5py.File(path, "r+") as f:
        if attack == "external_storage":  # the cell names would be read from the credentials file
            del f["obs/_index"]
            f.create_dataset("obs/_index", shape=(20,), dtype="S20", external=[(str(text), 0, 400)])
        elif attack == "external_link":
            f["uns/leak"] = h5py.ExternalLink(str(other), "/names")
        else:
            layout = h5py.VirtualLayout(shape=(20,), dtype="S23")
            layout[:] = h5py.VirtualSource(str(other), "names", shape=(20,))
            del f["obs/_index"]
            f.create_virtual_dataset("obs/_index", layout)
    error = _refused(path)
    assert "links to other files" in error.message and "scATD reads only self-contained files" in error.message
    assert "self-contained copy" in error.hint and "upload" not in error.message + error.hint  # the CLI's words


def test_10x_h5_and_loom_that_point_at_other_files_are_refused(tmp_path, secret):
    text, other = secret
    tenx = write_10x_h5(make_counts(n_cells=20, n_genes=30), tmp_path / "x.h5")
    with h5py.File(tenx, "r+") as f:
        del f["matrix/barcodes"]
        f.create_dataset("matrix/barcodes", shape=(20,), dtype="S20", external=[(str(text), 0, 400)])
    assert "links to other files" in _refused(tenx).message
    loom = tmp_path / "x.loom"
    with h5py.File(loom, "w") as f:
        f["matrix"] = np.ones((30, 20), dtype=np.float32)
        f.create_group("row_attrs")["Gene"] = h5py.ExternalLink(str(other), "/names")
        f.create_group("col_attrs")["CellID"] = np.array([f"c{i}".encode() for i in range(20)])
        f.create_group("layers")
    assert "links to other files" in _refused(loom).message


def test_the_upload_path_refuses_them_too(tmp_path, secret):
    text, _ = secret
    path = _copy(_h5ad(tmp_path), tmp_path / "e.h5ad")
    with h5py.File(path, "r+") as f:
        del f["obs/_index"]
        f.create_dataset("obs/_index", shape=(20,), dtype="S20", external=[(str(text), 0, 400)])
    with pytest.raises(InputError, match="links to other files"):
        io.read_bytes(path.read_bytes(), "cells.h5ad")


def test_absurd_declared_shapes_are_refused_before_reading(tmp_path):
    loom = tmp_path / "huge.loom"  # a few kB on disk, 10^9 genes declared
    with h5py.File(loom, "w") as f:
        f.create_dataset("matrix", shape=(10**9, 2), dtype=np.float32, chunks=(1024, 2), compression="gzip")
        f.create_group("row_attrs").create_dataset("Gene", shape=(10**9,), dtype="S8", chunks=(1024,),
                                                   compression="gzip")
        f.create_group("col_attrs")["CellID"] = np.array([b"a", b"b"])
    assert loom.stat().st_size < 100_000
    t0 = time.perf_counter()
    error = _refused(loom)
    assert "declares 1,000,000,000 genes" in error.message and time.perf_counter() - t0 < 20

    tenx = write_10x_h5(make_counts(n_cells=20, n_genes=30), tmp_path / "x.h5")
    with h5py.File(tenx, "r+") as f:
        f["matrix/shape"][...] = [30, 10**8]  # 100 million cells declared
    assert "100,000,000 cells" in _refused(tenx).message


@pytest.mark.parametrize("link", ["soft", "hard"])
def test_data_behind_links_is_sized_where_it_is_read(tmp_path, monkeypatch, link):
    """A 10x .h5 whose /matrix/data and /matrix/indices are links to one big (all fill value) dataset
    elsewhere, and an h5ad whose layers are ten more names for X: sized by every name they are read
    by. (Without it each is read into memory: 20 MB budget, ~64 / ~44 MB read; a real attack, GBs.)"""
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "20")
    tenx = write_10x_h5(make_counts(n_cells=20, n_genes=30), tmp_path / "x.h5")
    with h5py.File(tenx, "r+") as f:
        del f["matrix/data"], f["matrix/indices"]
        big = f.create_dataset("aaa/data", shape=(4 << 20,), dtype=np.float32, chunks=(1 << 16,), compression="gzip")
        for key in ("data", "indices"):
            f["matrix"][key] = h5py.SoftLink("/aaa/data") if link == "soft" else big
    assert tenx.stat().st_size < 100_000
    error = _refused(tenx)
    assert "its 20 cells x 30 features would take 64 MB of memory once read" in error.message

    h5ad = tmp_path / "x.h5ad"
    ad.AnnData(np.ones((1000, 1000), dtype=np.float32)).write_h5ad(h5ad, compression="gzip")  # X: 4 MB
    with h5py.File(h5ad, "r+") as f:
        for i in range(10):
            f["layers"][f"copy{i}"] = h5py.SoftLink("/X") if link == "soft" else f["X"]
    error = _refused(h5ad)
    assert "its annotations (obs, var, layers, obsm, uns; adata.raw's matrix stays on disk) would take 38 MB of memory once read" in error.message


def test_links_that_loop_or_lead_nowhere_and_link_mazes_are_refused(tmp_path, monkeypatch):
    from scatd_core.io import _hdf5
    for attack in ("loop", "dangling"):
        path = _h5ad(tmp_path)
        with h5py.File(path, "r+") as f:
            f["uns"]["here"] = f["uns"] if attack == "loop" else h5py.SoftLink("/nowhere")
        error = _refused(path)
        assert "damaged HDF5 file" in error.message
        assert ("/uns/here links back to /uns, a group that contains it (a loop)" if attack == "loop" else
                "/uns/here is a link to /nowhere, which does not exist") in error.message
    monkeypatch.setattr(_hdf5, "HDF5_MAX_OBJECTS", 500)
    for where in ("varm", "uns"):
        path = _h5ad(tmp_path)
        with h5py.File(path, "r+") as f:  # no loop, but each group named twice in the one above: 2^12 names
            below = f[where].create_group("m12")
            for i in range(11, -1, -1):
                level = f[where].create_group(f"m{i}")
                level["a"] = level["b"] = below
                below = level
        if where == "varm":
            assert "holds more than 500 HDF5 objects (groups and datasets, counted by every name they are reached " \
                   "by) outside uns, at least" in _refused(path).message
        else:  # uns is not read past its own limit (1,000 entries): left out, with a note
            adata = io.read(path)
            assert [k for k in adata.uns if k != io.REPORT_KEY] == []
            assert any(w.startswith("The file's uns holds more than 1,000 entries (in its groups)")
                       for w in adata.uns[io.REPORT_KEY]["warnings"])


@pytest.mark.parametrize("fmt", ["h5ad", "10x", "loom"])
def test_chunks_larger_than_the_limit_are_refused(tmp_path, monkeypatch, fmt):
    """A 5 x 3 matrix in one 1 GB compressed chunk costs 1 GB to read; here the limit is lowered to
    1 MB and the chunk is 4 MB (without the check the file is simply read)."""
    from scatd_core.io import _hdf5
    monkeypatch.setattr(_hdf5, "HDF5_MAX_CHUNK_BYTES", 1 << 20)
    kw = dict(maxshape=(None, None), dtype=np.float32, chunks=(1024, 1024), compression="gzip")
    if fmt == "h5ad":
        path, where = _h5ad(tmp_path), "/X"
        with h5py.File(path, "r+") as f:
            del f["X"]
            x = f.create_dataset("X", shape=(20, 30), **kw)
            x[:] = 1.0
            x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
    elif fmt == "10x":
        path, where = write_10x_h5(make_counts(n_cells=20, n_genes=30), tmp_path / "x.h5"), "/matrix/data"
        with h5py.File(path, "r+") as f:
            data = f["matrix/data"][()]
            del f["matrix/data"]
            f.create_dataset("matrix/data", data=data, maxshape=(None,), chunks=(1 << 20,), compression="gzip")
    else:
        path, where = tmp_path / "x.loom", "/matrix"
        with h5py.File(path, "w") as f:
            f.create_dataset("matrix", shape=(30, 20), **kw)[:] = 1.0
            f.create_group("row_attrs")["Gene"] = np.array([f"G{i}".encode() for i in range(30)])
            f.create_group("col_attrs")["CellID"] = np.array([f"c{i}".encode() for i in range(20)])
    error = _refused(path)
    assert f"the dataset {where} is stored in chunks of 4.0 MB each" in error.message
    assert "over the limit of 1.0 MB" in error.message and "ordinary chunks" in error.hint


def test_10x_feature_names_are_sized_before_they_are_read(tmp_path, monkeypatch):
    """Fixed-length names 1 MB wide (unallocated, a few kB on disk): refused on their declared size
    before any is read (the real attack declares 100 MB each, 2 GB)."""
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "20")
    path = write_10x_h5(make_counts(n_cells=20, n_genes=30), tmp_path / "x.h5")
    with h5py.File(path, "r+") as f:
        del f["matrix/features/id"]
        f["matrix/features"].create_dataset("id", shape=(30,), dtype="S1000000")  # 30 MB declared
    assert path.stat().st_size < 100_000
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: (read.append(self.name), real(self, key))[1])
    error = _refused(path)
    assert "would take 57 MB of memory once read" in error.message
    assert "/matrix/features/id" not in read and "/matrix/features/name" not in read


def test_a_loom_is_limited_by_its_unpacked_size(tmp_path, monkeypatch):
    """Every value of a loom matrix is read, zeros included: 30,000 x 10^6 unallocated values in a
    184 kB file kept a CPU busy for ten minutes. Here: 8 MB declared, the limit lowered to 4 MB."""
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "4")
    path = tmp_path / "x.loom"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", shape=(1000, 2000), dtype=np.float32, chunks=(64, 64))
        f.create_group("row_attrs")["Gene"] = np.array([f"G{i}".encode() for i in range(1000)])
        f.create_group("col_attrs")
    assert path.stat().st_size < 100_000
    error = _refused(path)
    assert error.message == ("x.loom: its 1,000 x 2,000 loom matrix is 7.6 MB once unpacked, over the server's limit "
                             "of 4.0 MB for compressed data (every value of a loom matrix is read, zeros included).")
    assert "SCATD_MAX_DECOMPRESSED_MB" in error.hint
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "4096")
    with h5py.File(path, "r+") as f:
        f["matrix"][:, :2] = 1.0
    assert io.read(path).shape == (2000, 1000)


def _packed_dense_h5ad(path) -> None:
    """An h5ad whose dense X, 6,000 x 5,000 float32 (114 MB), is gzip-compressed to a few hundred kB."""
    ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(6000)]),
               var=pd.DataFrame(index=[f"G{i}" for i in range(5000)])).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        x = f.create_dataset("X", shape=(6000, 5000), dtype=np.float32, chunks=(100, 5000), compression="gzip")
        x[:, 0] = 1.0
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"


def test_a_compressed_h5ad_x_is_limited_by_its_unpacked_size(tmp_path, monkeypatch):
    """As a loom's: a few hundred kB declaring a compressed dense X of 114 MB is refused under a 50 MB
    decompression limit, even where X would stay on disk (every value is unpacked to be read)."""
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "50")
    path = tmp_path / "packed.h5ad"
    _packed_dense_h5ad(path)
    assert path.stat().st_size < 1_000_000
    error = _refused(path)
    assert "compressed X is 114 MB once unpacked" in error.message and "SCATD_MAX_DECOMPRESSED_MB" in error.hint
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "4096")
    assert io.read(path).shape == (6000, 5000)


def test_a_compressed_sparse_x_refusal_does_not_advise_saving_it_as_sparse(tmp_path, monkeypatch):
    """The hint follows X's format: a gzip-compressed CSR X over the decompression limit is told to be
    saved without compression (it is already sparse); a dense one is also told to save it as sparse.
    Both name the configuration key as well as the environment variable."""
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")
    rng = np.random.default_rng(0)
    X = sp.random(3000, 2000, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    X.data[:] = 1.0
    adata = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(3000)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(2000)]))
    path = tmp_path / "sparse.h5ad"
    adata.write_h5ad(path, compression="gzip")
    error = _refused(path)
    assert "compressed X" in error.message
    assert "as a sparse matrix" not in error.hint and "already a sparse matrix" in error.hint
    assert "limits.max_decompressed_mb in the configuration file" in error.hint
    assert "SCATD_MAX_DECOMPRESSED_MB" in error.hint
    dense = tmp_path / "dense.h5ad"
    ad.AnnData(X.toarray(), obs=adata.obs, var=adata.var).write_h5ad(dense, compression="gzip")
    error = _refused(dense)
    assert "as a sparse matrix" in error.hint and "already" not in error.hint
    assert "limits.max_decompressed_mb in the configuration file" in error.hint


def test_an_h5ad_x_that_was_never_written_is_limited_like_a_compressed_one(tmp_path, monkeypatch):
    """A dense X declared 6,000 x 5,000 (114 MB) in chunks never written: a file of a few kB whose
    every value (the fill value) would be read, and scanned, as if stored. Refused under a 50 MB
    limit, as the same matrix compressed is; written out, it is read."""
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "50")
    path = tmp_path / "unwritten.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(6000)]),
               var=pd.DataFrame(index=[f"G{i}" for i in range(5000)])).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        x = f.create_dataset("X", shape=(6000, 5000), dtype=np.float32, chunks=(100, 5000), fillvalue=1.0)
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
    assert path.stat().st_size < 1_000_000
    error = _refused(path)
    assert "declares 114 MB of values" in error.message and "never written" in error.message
    assert "SCATD_MAX_DECOMPRESSED_MB" in error.hint
    stored = tmp_path / "stored.h5ad"  # the same shape with every value written: no more than its file
    ad.AnnData(np.ones((6000, 5000), dtype=np.float32),
               obs=pd.DataFrame(index=[f"c{i}" for i in range(6000)]),
               var=pd.DataFrame(index=[f"G{i}" for i in range(5000)])).write_h5ad(stored)
    assert io.read(stored).shape == (6000, 5000)


def test_over_budget_data_is_refused_with_the_numbers_or_read_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "50")
    dense = tmp_path / "dense.h5ad"  # 6k x 5k float32 = 114 MB in memory, a few hundred kB on disk
    _packed_dense_h5ad(dense)
    adata = io.read(dense)
    assert adata.isbacked  # over the memory budget: X stays on disk, read in bounded batches
    loom = tmp_path / "dense.loom"
    with h5py.File(loom, "w") as f:
        f.create_dataset("matrix", data=np.ones((5000, 6000), dtype=np.float32), chunks=(5000, 100),
                         compression="gzip")
        f.create_group("row_attrs")["Gene"] = np.array([f"G{i}".encode() for i in range(5000)])
        f.create_group("col_attrs")["CellID"] = np.array([f"c{i}".encode() for i in range(6000)])
    error = _refused(loom)
    assert "MB of memory once read, over the server's limit of 50 MB" in error.message


def test_uploads_and_the_users_folders_are_this_accounts_only_whatever_the_umask(tmp_path, monkeypatch):
    """QA: uploads were written 0644 in 0755 folders (umask 022): any account on the server could read
    a user's data. They are now 0600 in 0700 folders, made so from the start, whatever the umask."""
    from scatd_core import panel

    def mode(path) -> str:
        return oct(Path(path).stat().st_mode & 0o777)

    before = os.umask(0o022)
    try:
        path = io.store_upload(b"cell,G1\nc1,1\n", "cells.csv", tmp_path)
        assert (mode(path), mode(path.parent)) == ("0o600", "0o700")
        assert mode(io.write_private(tmp_path / "checkpoint.pth", b"weights")) == "0o600"
        with pytest.raises(FileExistsError):  # never written through a file (or link) already there
            io.write_private(tmp_path / "checkpoint.pth", b"other")
        folder = io.private_folder(tmp_path / "work" / "sessions" / "abc")
        assert [mode(p) for p in (tmp_path / "work", folder.parent, folder)] == ["0o700"] * 3
        (tmp_path / "open").mkdir(mode=0o755)
        assert mode(io.private_folder(tmp_path / "open")) == "0o700"  # an existing one narrowed
        monkeypatch.setenv("SCATD_HOME", str(tmp_path / "home"))
        with panel._locked(panel.panels_file("alice")):  # the saved panels' folder, named after the users
            pass
        assert mode(tmp_path / "home" / "panels") == "0o700"
    finally:
        os.umask(before)


def test_a_dataset_larger_than_the_servers_free_memory_is_read_from_disk_or_waits(tmp_path):
    """With less memory free on the server than the per-dataset limit (the app passes what is
    free and why), an h5ad is read from disk and says why; a file that must be read into
    memory is refused with the numbers, as a shortage to try again, not as a bad file."""
    from scatd_core.errors import MemoryShortage

    cells = ad.AnnData(sp.random(400, 300, density=0.2, format="csr", dtype=np.float32, random_state=0),
                       obs=pd.DataFrame(index=[f"c{i}" for i in range(400)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(300)]))
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    why = "the 50 kB this server has free for a new dataset now (of its 100 MB; other sessions use the rest)"
    adata = io.read(path, max_dataset_bytes=100_000, limit_reason=why)  # X: ~200 kB
    assert adata.isbacked and any(w.startswith("Read from disk (backed): in memory it would take more than the "
                                               "50 kB this server has free") for w in adata.uns[io.REPORT_KEY]["warnings"])
    assert not io.read(path).isbacked  # the same file, memory free: read into memory, no such warning
    assert not any("backed" in w for w in io.read(path).uns[io.REPORT_KEY]["warnings"])
    table = tmp_path / "cells.csv"
    pd.DataFrame(cells.X.toarray(), index=cells.obs_names, columns=cells.var_names).to_csv(table)
    with pytest.raises(MemoryShortage) as caught:
        io.read(table, max_dataset_bytes=100_000, limit_reason=why)
    assert f"of memory once read (its 400 rows of 300 values), more than {why}." in caught.value.message
    assert caught.value.hint.startswith("Your file is kept: try again when other analyses")
    assert io.read(table).n_obs == 400
    with pytest.raises(MemoryShortage):  # annotations are always read into memory: no room for them either
        io.read(path, max_dataset_bytes=1, limit_reason=why)


def test_backed_dense_upload_stays_small_in_memory(tmp_path):
    """Read + a full pass in a child process whose peak RSS is measured."""
    path = tmp_path / "wide.h5ad"
    ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(4000)]),
               var=pd.DataFrame(index=[f"G{i}" for i in range(20000)])).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        x = f.create_dataset("X", shape=(4000, 20000), dtype=np.float32, chunks=(50, 20000), compression="gzip")
        x[:, :3] = 2.0
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
    # VmHWM, not getrusage: after fork + exec, ru_maxrss can still carry the parent's (pytest's) peak
    script = ("import re, sys; from scatd_core import io; from scatd_core._matrix import row_batches\n"
              "a = io.read(sys.argv[1]); n = sum(b.shape[0] for _, _, b in row_batches(a.X))\n"
              "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
              "print(a.isbacked, n, int(hwm) // 1024)")
    env = {**os.environ, "SCATD_MAX_DATASET_MB": "100"}
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env)
    backed, n, peak_mb = out.stdout.split()
    assert backed == "True" and int(n) == 4000
    assert int(peak_mb) < 900, out.stdout  # 320 MB of X never held at once (python + libraries ~400 MB)


def test_gzip_bomb_tables_stop_at_the_limits(tmp_path, monkeypatch):
    path = tmp_path / "bomb.csv.gz"
    row = ",".join(["0"] * 1999)
    with gzip.open(path, "wt", compresslevel=9) as fh:
        fh.write("cell," + ",".join(f"G{i}" for i in range(2000)) + "\n")
        for i in range(20_000):
            fh.write(f"c{i},1,{row}\n")
    assert path.stat().st_size < 500_000  # ~80 MB of text
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "20")
    assert "expands to more than 20 MB" in _refused(path).message
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "4096")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "20")  # dense zeros are kept sparse: this one fits ...
    assert io.read(path).n_obs == 20_000
    dense = tmp_path / "dense.csv.gz"
    with gzip.open(dense, "wt", compresslevel=9) as fh:  # ... a dense one does not
        fh.write("cell," + ",".join(f"G{i}" for i in range(2000)) + "\n")
        for i in range(5000):
            fh.write(f"c{i}," + ",".join(["1"] * 2000) + "\n")
    assert "of memory once read" in _refused(dense).message


TABLE = b"cell,G1,G2\nc1,1,2\nc2,3,4\n"


def _tar_gz(path: Path, headers: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A .tar.gz of raw members (a header and its content each), written by hand: tarfile would
    not write some of these."""
    with gzip.open(path, "wb", compresslevel=9) as fh:
        for info, data in headers:
            fh.write(info.tobuf(format=tarfile.GNU_FORMAT if info.type == tarfile.GNUTYPE_SPARSE
                                else tarfile.USTAR_FORMAT))
            fh.write(data + b"\0" * (-len(data) % 512))
        fh.write(b"\0" * 1024)
    return path


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    return info, data


def test_tar_archives_are_bounded_in_headers_entries_and_decompressed_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")
    # an 8 MB pax header (one comment record) before the data: tarfile reads a header whole
    record = b"8388608 comment=" + b"x" * (8388608 - 17) + b"\n"
    pax = _tar_gz(tmp_path / "pax.tar.gz", [_member("././@PaxHeader", record, tarfile.XHDTYPE), _member("a.csv", TABLE)])
    assert pax.stat().st_size < 100_000
    err = _refused(pax)
    assert "tar header of 8.0 MB" in err.message and "tar czf" in err.hint
    # a long name of 2 MB (GNU)
    gnu = _tar_gz(tmp_path / "gnu.tar.gz", [_member("././@LongLink", b"a" * (2 << 20), tarfile.GNUTYPE_LONGNAME),
                                             _member("a.csv", TABLE)])
    assert "tar header of 2.0 MB" in _refused(gnu).message
    # thousands of empty entries (each one a TarInfo kept by tarfile)
    many = _tar_gz(tmp_path / "many.tar.gz", [_member(f"d{i}", kind=tarfile.DIRTYPE) for i in range(1500)]
                   + [_member("a.csv", TABLE)])
    assert "more than 1,000 entries" in _refused(many).message
    # content that is never extracted (a hidden file) still counts: the stream itself is capped
    hidden = _tar_gz(tmp_path / "hidden.tar.gz", [_member(".big.csv", b"0" * (3 << 20)), _member("a.csv", TABLE)])
    assert "expands to more than 1.0 MB when decompressed" in _refused(hidden).message
    sparse = _tar_gz(tmp_path / "sparse.tar.gz", [_member("a.csv", TABLE, tarfile.GNUTYPE_SPARSE)])
    assert "sparse tar entry" in _refused(sparse).message
    # a real archive of a few files still reads
    monkeypatch.delenv("SCATD_MAX_DECOMPRESSED_MB")
    fine = _tar_gz(tmp_path / "fine.tar.gz", [_member("data", kind=tarfile.DIRTYPE), _member("data/a.csv", TABLE)])
    assert io.read(fine).shape == (2, 2)


def test_zip_archives_with_too_many_entries_are_refused_before_extracting(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for i in range(1500):
            zf.writestr(f"x/{i}.txt", b"")
        zf.writestr("a.csv", TABLE)
    err = _refused(tmp_path / "many.zip")
    assert "more than 1,000 entries (1,501)" in err.message and "zip -r" in err.hint


def test_a_matrix_market_header_is_read_within_bounds(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    with gzip.open(folder / "barcodes.tsv.gz", "wb") as fh:
        fh.write(b"A\nB\n")
    with gzip.open(folder / "features.tsv.gz", "wb") as fh:
        fh.write(b"G1\tG1\nG2\tG2\n")
    with gzip.open(folder / "matrix.mtx.gz", "wb", compresslevel=9) as fh:  # a "comment" that never ends
        fh.write(b"%%MatrixMarket matrix coordinate real general\n" + b"%" * (4 << 20))
    err = _refused(folder)
    assert "more than 1.0 MB of header and comment lines" in err.message and "mmwrite" in err.hint
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")  # read through the decompression limit, too
    assert "expands to more than 1.0 MB when decompressed" in _refused(folder).message
    monkeypatch.delenv("SCATD_MAX_DECOMPRESSED_MB")
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        fh.write(b"%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 1\n")
    with gzip.open(folder / "barcodes.tsv.gz", "wb", compresslevel=9) as fh:  # a barcode that never ends
        fh.write(b"A" * (8 << 20))
    err = _refused(folder)  # never more than a few kB per name is read
    assert "barcodes.tsv.gz expands to more than 1.0 MB" in err.message and "one short line per cell" in err.hint


def test_label_and_ic50_tables_are_bounded_whatever_they_declare(tmp_path, monkeypatch):
    from scatd_core import labels

    bomb = tmp_path / "ic50.csv.gz"  # ~1 MB of rows, 2 kB compressed
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(b"drug,ACH-1\n" + b"GDSC:1,0\n" * 150_000)
    err = _refused_table(lambda: labels._read_table(bomb, "IC50 table", index_col=0))
    assert "has more than 100,000 rows" in err.message and "GDSC" in err.hint
    wide = tmp_path / "wide.csv"
    wide.write_text("drug," + ",".join(f"c{i}" for i in range(25_000)) + "\nGDSC:1," + ",".join(["0"] * 25_000) + "\n")
    assert "25,001 columns, over the limit of 20,000" in _refused_table(lambda: labels.read_label_table(wide)).message
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")  # read through the decompression limit
    text = tmp_path / "labels.csv.gz"
    with gzip.open(text, "wt") as fh:
        fh.write("cell_line," + ",".join(f"drug{i}" for i in range(200)) + "\n")
        for i in range(1000):
            fh.write(f"line{i}," + ",".join(["sensitive"] * 200) + "\n")
    assert "expands to more than 1.0 MB" in _refused_table(lambda: labels.read_label_table(text)).message
    monkeypatch.setenv("SCATD_MAX_CELLS", "100")  # a labelled-cells file: at most the cells a dataset may have
    few = tmp_path / "few.csv"
    few.write_text("cell_id,label\n" + "".join(f"c{i},{'sensitive' if i % 2 else 'resistant'}\n" for i in range(150)))
    assert "more than 100 rows" in _refused_table(lambda: labels.read_few_shot_labels(few)).message


def _refused_table(read) -> InputError:
    with pytest.raises(InputError) as err:
        read()
    assert err.value.hint
    return err.value


def test_tables_are_parsed_in_chunks_that_stop_at_the_limits(tmp_path, monkeypatch):
    """A narrow table is not parsed in one huge chunk before the limits are checked: no more rows
    than the cell limit plus one, nor than the memory budget holds, are parsed at a time."""
    narrow = tmp_path / "narrow.csv.gz"
    with gzip.open(narrow, "wb", compresslevel=9) as fh:
        fh.write(b"cell,G1,G2\n" + b"c,0,0\n" * 300_000)
    monkeypatch.setenv("SCATD_MAX_CELLS", "1000")
    assert "has more than 1,000 cells, over the limit of 1,000" in _refused(narrow).message  # not decompressed twice
    monkeypatch.delenv("SCATD_MAX_CELLS")
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "1")
    # 1 MB holds 131,072 rows of two float32 values (all numbers), 262,144 of one (and a text column,
    # set aside by the general reader); chunks of 100,000 rows would stop at 200,000 and 300,000
    for text, most in ((b"c,1,1\n", 150_000), (b"c,1,x\n", 280_000)):
        dense = tmp_path / "dense.csv.gz"
        with gzip.open(dense, "wb", compresslevel=9) as fh:
            fh.write(b"cell,G1,G2\n" + text * 300_000)
        message = _refused(dense).message
        # what the rows read before stopping take, not the whole file's: said as "at least"
        assert "its values would take at least 1.0 MB of memory once read, over the server's limit" in message
        assert "rows took that already; the rest of the file, if any, was not read, so its whole size is not " \
               "known" in message
        rows = int(message.split("Reading its first ")[1].split(" rows")[0].replace(",", ""))
        assert rows < most, message


def test_a_table_stopped_after_its_first_row_says_row_not_rows(tmp_path, monkeypatch):
    """QA: "Its first 1 rows take that already": a table so wide that one row fills a parse chunk."""
    from scatd_core.io import _table

    monkeypatch.setattr(_table, "TABLE_CHUNK_VALUES", 1)  # one row at a time
    wide = tmp_path / "wide.csv"
    wide.write_text("cell," + ",".join(f"G{i}" for i in range(400)) + "\n"
                    + "".join(f"c{r}," + ",".join(["1"] * 400) + "\n" for r in range(3)))
    message = _refused_table(lambda: io.read(wide, max_dataset_bytes=1000)).message
    assert "Reading stopped after its first row, which took" in message and "1 rows" not in message


def test_a_table_refused_for_memory_says_what_the_whole_file_needs_not_its_first_row(tmp_path):
    """QA: a table refused after its first row said its values "would take at least 11 kB": what one
    row takes, meaningless for the file. A plain table now says what the whole file needs (its rows
    counted, or estimated from its size); a compressed one, what a row and 10,000 rows take."""
    rng = np.random.default_rng(0)
    header = "cell," + ",".join(f"G{i}" for i in range(2000)) + "\n"
    rows = "".join(f"c{r}," + ",".join(map(str, rng.integers(1, 9, 2000))) + "\n" for r in range(300))
    big, small, packed = tmp_path / "big.csv", tmp_path / "small.csv", tmp_path / "big.csv.gz"
    big.write_text(header + rows)  # 1.2 MB: more than the first lines the reader looks at
    small.write_text(header + rows[: rows.index("c10,")])  # ten rows, wholly in its first lines
    with gzip.open(packed, "wt") as fh:
        fh.write(header + rows)
    why = "the memory this server has free for a new dataset now: none (of its 1 GB)"

    def refusal(path):
        with pytest.raises(InputError) as err:
            io.read(path, max_dataset_bytes=1, limit_reason=why)
        return err.value.message

    said = refusal(big)  # one row (8 kB: 2,000 float32 values) per MB of text, about
    assert said.startswith("big.csv: its values would take about 2.3 MB of memory once read (about 300 rows of "
                           "2,000 values, as the file's size, 1.2 MB, and the length of its first lines suggest), "
                           f"more than {why}. Reading stopped after its first row, which took 8 kB."), said
    assert "at least" not in said
    said = refusal(small)
    assert "would take about 78 kB of memory once read (its 10 rows of 2,000 values), more than" in said, said
    said = refusal(packed)
    assert said.startswith("big.csv.gz: its values would take about 8 kB of memory per row once read (2,000 values "
                           "a row), and its first row alone takes that, more than"), said
    assert said.endswith("a compressed table does not say how many rows it has: 10,000 rows would take about 76 MB.")


def test_a_loom_too_large_for_memory_says_what_was_read_and_the_whole_matrix_declared(tmp_path, monkeypatch):
    """QA: the message gave the memory of the cells read before stopping as if it were the whole
    file's. It says "at least", which cells that was, and the whole matrix as the file declares it."""
    from scatd_core.io import _hdf5

    monkeypatch.setattr(_hdf5, "LOOM_BLOCK_VALUES", 100 * 50, raising=False)  # 50 cells at a time
    monkeypatch.setenv("SCATD_MAX_DATASET_MB", "1")
    path = tmp_path / "x.loom"
    with h5py.File(path, "w") as f:  # every value 1 (the fill value: nothing written), 8 bytes each once read
        f.create_dataset("matrix", shape=(100, 2000), dtype=np.float32, chunks=(100, 50), fillvalue=1.0)
        f.create_group("row_attrs")["Gene"] = np.array([f"G{i}".encode() for i in range(100)])
        f.create_group("col_attrs")["CellID"] = np.array([f"c{i}".encode() for i in range(2000)])
    message = _refused(path).message
    assert "its expression matrix would take at least 1.0 MB of memory once read, over the server" in message, message
    cells = int(message.split("Reading its first ")[1].split(" of 2,000 cells")[0].replace(",", ""))
    assert 1000 < cells < 2000, message
    assert "the whole matrix is 100 genes x 2,000 cells of float32 values, 781 kB as stored unpacked" in message
    monkeypatch.setattr(_hdf5, "LOOM_BLOCK_VALUES", 1 << 25)  # read at once: its whole size, not "at least"
    message = _refused(path).message
    assert "its expression matrix would take 1.5 MB of memory once read, over" in message, message


def _deflated(path: Path) -> Path:
    """``path`` (a torch.save archive) with every member compressed: torch.load still reads it."""
    packed = path.with_name("deflated-" + path.name)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return packed


def test_checkpoints_are_limited_by_what_they_unpack_to(tmp_path, monkeypatch):
    from scatd_core.bundle import load_checkpoint
    from scatd_core.errors import CheckpointError
    from scatd_core.foundation._assets import torch_load_tensors

    torch.save({"w": torch.zeros(1 << 20)}, tmp_path / "zeros.pth")  # 4 MB of tensor
    bomb = _deflated(tmp_path / "zeros.pth")
    assert bomb.stat().st_size < 100_000 and set(torch.load(bomb, weights_only=True)) == {"w"}
    monkeypatch.setenv("SCATD_MAX_DECOMPRESSED_MB", "1")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bomb, "bomb.pth")
    assert "bomb.pth unpacks to 4.0 MB (from" in err.value.message and "torch.save" in err.value.hint
    with pytest.raises(CheckpointError, match="unpacks to 4.0 MB"):
        torch_load_tensors(bomb, "scFoundation checkpoint")
    torch.save({"w": torch.zeros(1 << 19)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as err:  # a legacy pickle: its own size
        load_checkpoint(tmp_path / "legacy.pth")
    assert "legacy.pth is 2.0 MB, over the limit of 1.0 MB" in err.value.message
    assert "SCATD_MAX_DECOMPRESSED_MB" in err.value.hint
    monkeypatch.delenv("SCATD_MAX_DECOMPRESSED_MB")
    assert load_checkpoint(bomb)["w"].shape == (1 << 20,)  # within the default limit
    pth, genes = _checkpoint(tmp_path)  # an upload in the app: at most the upload limit
    with pytest.raises(CheckpointError, match="over the limit of 10 kB"):
        import_checkpoint(pth, "dist_vae", drug="X", genes=genes, library=tmp_path / "lib",
                          max_checkpoint_bytes=10 << 10)


# --------------------------------------------------------------------------- the model library

def _checkpoint(tmp_path, seed=1):
    enc, z, _ = SMALL["dist_vae"]
    pth = tmp_path / f"ckpt{seed}.pth"
    torch.save(orig.dal_checkpoint("dist_vae", enc, z, seed=seed), pth)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(small_gene_names(enc[0])) + "\n")
    return pth, genes


def test_concurrent_imports_of_one_name_never_lose_a_model(tmp_path):
    library = tmp_path / "lib"
    sources = [_checkpoint(tmp_path, seed) for seed in (1, 2, 3, 4)]
    outcomes = []

    def run(pth, genes):
        try:
            outcomes.append(import_checkpoint(pth, "dist_vae", drug="SAME", genes=genes, library=library))
        except BundleError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=src) for src in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [o for o in outcomes if not isinstance(o, BundleError)]
    refused = [o for o in outcomes if isinstance(o, BundleError)]
    assert len(made) == 1 and len(refused) == 3 and all("already exists" in e.message for e in refused)
    installed = load_bundle(library / "SAME_dist_vae")
    assert installed.manifest["weights_sha256"] == made[0].manifest["weights_sha256"]
    assert [p.name for p in library.iterdir() if p.name.startswith(".bundle")] == []


_SLOW_SAVE = """
import sys, time, torch
import scatd_core.bundle as b
real = b.save_file
def slow(*a, **k):
    real(*a, **k)
    print("writing", flush=True)
    time.sleep(60)
b.save_file = slow
b.import_checkpoint(sys.argv[1], "dist_vae", drug="KEEP", genes=sys.argv[2], library=sys.argv[3], overwrite=True)
"""


def test_a_crash_during_an_overwrite_keeps_the_old_model(tmp_path):
    library = tmp_path / "lib"
    (pth1, genes), (pth2, _) = _checkpoint(tmp_path, 1), _checkpoint(tmp_path, 2)
    old = import_checkpoint(pth1, "dist_vae", drug="KEEP", genes=genes, library=library)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SAVE, str(pth2), str(genes), str(library)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # the new bundle is half written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_bundle(library / "KEEP_dist_vae").manifest["weights_sha256"] == old.manifest["weights_sha256"]
    assert any(p.name.startswith(".bundle-tmp-") for p in library.iterdir())
    done = clean_library(library)
    assert done and not any(p.name.startswith(".bundle") for p in library.iterdir())
    assert [e.bundle.name for e in list_library(library)] == [old.name]


def test_an_interrupted_swap_is_put_back(tmp_path):
    library = tmp_path / "lib"
    pth, genes = _checkpoint(tmp_path, 1)
    bundle = import_checkpoint(pth, "dist_vae", drug="SWAP", genes=genes, library=library)
    aside = library / ".bundle-old-SWAP_dist_vae-1234abcd"
    bundle.path.rename(aside)  # the state right after "old renamed aside", before "new renamed in"
    assert clean_library(library) == ["restored SWAP_dist_vae (its replacement was interrupted)"]
    assert load_bundle(library / "SWAP_dist_vae").manifest["weights_sha256"] == bundle.manifest["weights_sha256"]


def test_names_in_any_script_get_distinct_safe_folders(tmp_path):
    names = ["紫杉醇", "多西他赛", "Доцетаксел", "../../etc", "a b", "a_b", "a/b", "<img src=x>"]
    folders = [safe_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert all(re_ok(f) for f in folders)
    library = tmp_path / "lib"
    pth, genes = _checkpoint(tmp_path, 1)
    made = [import_checkpoint(pth, "dist_vae", drug=n, genes=genes, library=library) for n in names[:3]]
    assert len({b.path for b in made}) == 3 and all(b.path.parent == library for b in made)
    assert {b.drug for b in made} == set(names[:3])


def re_ok(folder: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9._-]+", folder)) and ".." not in folder.split("/")


def test_save_bundle_refuses_an_existing_bundle_unless_overwriting(tmp_path):
    pth, genes = _checkpoint(tmp_path, 1)
    bundle = import_checkpoint(pth, "dist_vae", drug="D", genes=genes, library=tmp_path)
    state = load_bundle(bundle.path).load_model().state_dict()
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(bundle.path, state, bundle.architecture, drug="D", genes=bundle.genes)
    again = save_bundle(bundle.path, state, bundle.architecture, drug="D", genes=bundle.genes, overwrite=True)
    assert again.path == bundle.path
    unique = save_bundle(bundle.path, state, bundle.architecture, drug="D", genes=bundle.genes, unique=True)
    assert unique.path.name == f"{bundle.path.name}-2"


# --------------------------------------------------------------------------- users

def test_users_are_stored_as_argon2_hashes_and_verified(tmp_path, monkeypatch):
    from scatd_core import users

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("alice", "correct horse battery", admin=True)
    users.add_user("bob@lab.org", "another long secret")
    text = (tmp_path / "users.toml").read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert oct((tmp_path / "users.toml").stat().st_mode & 0o777) == "0o600"
    assert users.verify("alice", "correct horse battery") == users.User("alice", True)
    assert users.verify("alice", "wrong password!!") is None and users.verify("nobody", "x" * 12) is None
    with pytest.raises(InputError, match="too short"):
        users.add_user("carol", "short")
    with pytest.raises(InputError, match="not a valid user name"):
        users.add_user("../etc", "long enough password")
    users.remove_user("bob@lab.org")
    assert [u.name for u in users.list_users()] == ["alice"]


def test_login_throttle_locks_out_after_too_many_failures():
    from scatd_core.users import LoginThrottle

    throttle = LoginThrottle(max_failures=3, window_seconds=60)
    for _ in range(3):
        assert throttle.attempt("user:a", "ip:1") == 0  # counted until it succeeds
    assert throttle.attempt("user:a") > 0 and throttle.attempt("ip:1") > 0
    assert throttle.attempt("user:b", "ip:2") == 0
    throttle.succeeded("user:a")
    assert throttle.attempt("user:a") == 0 and throttle.attempt("ip:1") > 0


def test_names_tried_at_random_do_not_grow_the_login_throttle(monkeypatch):
    """A locked-out address trying new names records nothing; names without a failure in the window
    are dropped once the table is large."""
    from scatd_core.users import LoginThrottle

    monkeypatch.setattr(LoginThrottle, "MAX_KEYS", 50)
    throttle = LoginThrottle(max_failures=3, window_seconds=0.2)
    for i in range(3):
        throttle.attempt(f"user:{i}", "ip:9")
    for i in range(3, 1000):  # the address is locked out: refused, and the names are not recorded
        assert throttle.attempt(f"user:{i}", "ip:9") > 0
    assert len(throttle._failures) == 4
    __import__("time").sleep(0.25)  # the window passes
    for i in range(30):  # new failures from 30 addresses: the table passes MAX_KEYS and is pruned
        throttle.attempt(f"user:new{i}", f"ip:new{i}")
    assert "ip:9" not in throttle._failures and "user:0" not in throttle._failures
    assert len(throttle._failures) == 60  # what is left: failures within the window


def test_concurrent_logins_verify_no_more_passwords_than_allowed(monkeypatch):
    """40 login forms submitted at once (each session runs in its own thread): only max_failures
    passwords are verified, the others are locked out without one, and at most
    MAX_CONCURRENT_HASHES argon2 computations (64 MiB each) run at the same time."""
    import threading
    import time

    from argon2.exceptions import VerificationError

    from scatd_core import users

    running, peak, verified = [0], [0], []
    lock = threading.Lock()

    class SlowHasher:
        def hash(self, password):
            return "fake-hash"

        def verify(self, stored, password):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                verified.append(password)
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            raise VerificationError("wrong")

    monkeypatch.setattr(users, "_hasher", SlowHasher)
    throttle = users.LoginThrottle(max_failures=5, window_seconds=900)
    start = threading.Barrier(40)
    results = []

    def guess(i):
        start.wait()
        results.append(users.log_in("alice", f"guess {i}", throttle, "10.0.0.9"))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verified) == 5 and peak[0] <= users.MAX_CONCURRENT_HASHES
    assert sorted(wait > 0 for _, wait in results) == [False] * 5 + [True] * 35
    assert all(user is None for user, _ in results)


def test_concurrent_user_changes_are_not_lost(tmp_path, monkeypatch):
    """`scatd users add/remove` read, change and write the users file under its lock: eight
    accounts added at once are all there, and a removal at the same time loses none of them."""
    import threading
    import time

    from scatd_core import users

    class SlowHasher:  # argon2's time, without its cost
        def hash(self, password):
            time.sleep(0.05)
            return f"hash of {password}"

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("old", "an old long password")
    monkeypatch.setattr(users, "_hasher", SlowHasher)
    start = threading.Barrier(9)

    def add(i):
        start.wait()
        users.add_user(f"user{i}", f"password number {i}")

    def remove():
        start.wait()
        users.remove_user("old")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)] + [threading.Thread(target=remove)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [u.name for u in users.list_users()] == [f"user{i}" for i in range(8)]


def test_users_command(tmp_path, monkeypatch, capsys):
    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("a long password here\n"))
    assert main(["users", "add", "alice", "--admin", "--password-stdin"]) == 0
    assert main(["users", "list"]) == 0
    assert "alice\tadmin" in capsys.readouterr().out
    assert main(["users", "remove", "nobody"]) == 2
    assert "There is no user nobody" in capsys.readouterr().err
    assert main(["users", "remove", "alice"]) == 0  # the last admin removed: said, not refused
    assert "no admin is left" in capsys.readouterr().err


def test_a_user_name_differing_only_by_case_is_refused(tmp_path, monkeypatch, capsys):
    """`scatd users add ALICE` beside alice made two accounts colleagues could not tell apart: refused,
    before the password prompt, naming the existing account; existing names keep matching exactly."""
    import io

    from scatd_core import users
    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("alice", "a long password here")
    for name, replace in (("ALICE", False), ("Alice", True)):
        with pytest.raises(InputError, match="already a user alice: .* only by upper/lower case") as err:
            users.add_user(name, "a long password here", replace=replace)
        assert "scatd users add alice --replace" in err.value.hint
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # refused before asking for a password
    assert main(["users", "add", "ALICE", "--password-stdin"]) == 2
    assert "only by upper/lower case" in capsys.readouterr().err
    assert [u.name for u in users.list_users()] == ["alice"]
    assert users.verify("ALICE", "a long password here") is None  # logins match the name exactly
    assert users.verify("alice", "a long password here") == users.User("alice", False)


def test_users_add_replace_keeps_the_role_and_creation_time(tmp_path, monkeypatch, capsys):
    """--replace sets a new password only: an admin stays admin and keeps its created time unless
    --admin/--no-admin says otherwise; replacing a user that does not exist says it was added."""
    import io

    from scatd_core import users
    from scatd_core.cli import main

    path = tmp_path / "users.toml"
    monkeypatch.setenv("SCATD_USERS_FILE", str(path))
    users.add_user("boss", "first long password", admin=True)
    entries = users.load_users()
    entries["boss"]["created"] = "2020-01-01T00:00:00+00:00"
    users._save(entries, path)

    def add(*options, password="a new long password"):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        return main(["users", "add", *options, "--password-stdin"])

    assert add("boss", "--replace") == 0
    assert "Updated boss (admin)" in capsys.readouterr().out
    assert users.verify("boss", "a new long password") == users.User("boss", True)
    assert users.load_users()["boss"]["created"] == "2020-01-01T00:00:00+00:00"
    assert add("boss", "--replace", "--no-admin") == 0
    assert users.list_users() == [users.User("boss", False)]
    assert "no admin is left" in capsys.readouterr().err  # the last admin demoted: said
    assert add("zed", "--replace") == 0
    assert "Added zed in" in capsys.readouterr().out


def test_users_add_without_a_password_is_an_error_not_a_crash(tmp_path, monkeypatch, capsys):
    """End of input at the password prompt (`scatd users add carol </dev/null`) and an empty
    --password-stdin exit 2 with a hint; a bad name is refused before the prompt."""
    import io

    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    prompts = []

    def no_input(prompt=""):
        prompts.append(prompt)
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_input)
    monkeypatch.setattr("sys.stdin", type("Terminal", (io.StringIO,), {"isatty": lambda self: True})(""))
    assert main(["users", "add", "carol"]) == 2
    assert "No password given" in capsys.readouterr().err
    assert main(["users", "add", "../etc"]) == 2
    assert "not a valid user name" in capsys.readouterr().err and len(prompts) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["users", "add", "carol", "--password-stdin"]) == 2
    assert "No password given" in capsys.readouterr().err
    assert not (tmp_path / "users.toml").exists()


def test_users_add_with_a_piped_password_but_no_password_stdin_is_refused_not_echoed(tmp_path, monkeypatch, capsys):
    """QA: `printf 'pw\\npw\\n' | scatd users add alice --admin` printed Python's raw GetPassWarning
    ("Can not control echo on the terminal ... fallback_getpass") and "Warning: Password input may
    be echoed." twice. Standard input that is not a terminal without --password-stdin is refused
    with exit 2, before any prompt, saying to use --password-stdin."""
    import io
    import subprocess

    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    monkeypatch.delenv("SCATD_CONFIG", raising=False)
    asked = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="": asked.append(prompt) or "pw-long-enough-1")
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\npw\n"))
    for argv in (["users", "add", "alice", "--admin"], ["users", "add", "alice", "--replace"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "not a terminal" in err and "--password-stdin" in err and "nothing was changed" in err, err
    assert asked == [] and not (tmp_path / "users.toml").exists()
    # the real thing: a pipe, no terminal to control (a new session has none)
    env = {**os.environ, "SCATD_USERS_FILE": str(tmp_path / "users.toml")}
    done = subprocess.run([sys.executable, "-m", "scatd_core.cli", "users", "add", "alice", "--admin"],
                          input="pw\npw\n", capture_output=True, text=True, env=env, timeout=60,
                          start_new_session=True)
    assert done.returncode == 2, done.stderr
    assert "GetPassWarning" not in done.stderr and "may be echoed" not in done.stderr, done.stderr
    assert "--password-stdin" in done.stderr and not (tmp_path / "users.toml").exists()


def test_the_example_configuration_lists_every_key_and_reads_cleanly(tmp_path, monkeypatch):
    """deploy/config.example.toml names every setting (set or commented out), in its section, and
    the settings read from it have no problem."""
    import re

    from scatd_core.config import KEYS, settings

    example = Path(__file__).resolve().parents[1] / "deploy" / "config.example.toml"
    listed, section = set(), None
    for line in example.read_text().splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m.group(1)
        elif (m := re.match(r"^#?\s*(\w+)\s*=", line)) and section:
            listed.add((section, m.group(1)))
    assert set(KEYS) - listed == set()
    text = example.read_text().replace("/srv/scatd", str(tmp_path))
    (tmp_path / "config.toml").write_text(text)
    monkeypatch.setenv("SCATD_CONFIG", str(tmp_path / "config.toml"))
    for (_section, _key), (env, _kind, _default) in KEYS.items():
        monkeypatch.delenv(env, raising=False)
    conf = settings()
    assert conf.problems == () and conf["kept_sessions_mb"] == 8192 and conf["max_jobs"] == 2


def test_doctor_reports_configuration_problems(tmp_path, monkeypatch, capsys):
    from scatd_core.cli import main

    config = tmp_path / "config.toml"
    config.write_text('[limits]\nmax_cells = "many"\nmax_upload_mb = 100\n[nonsense]\nx = 1\n'
                      '[auth]\nmode = "password"\n')
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    monkeypatch.delenv("SCATD_AUTH")
    code = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    warnings = [i["detail"] for i in report["sections"]["configuration"] if i["status"] == "warning"]
    assert any("max_cells" in w for w in warnings) and any("nonsense" in w for w in warnings)
    assert any("uploads 100 MB" in i["detail"] for i in report["sections"]["configuration"])
    assert code == 1  # password login without any admin user is a problem
    assert any(i["status"] == "problem" and "scatd users add" in i["detail"] for i in report["sections"]["login"])
    memory = next(i for i in report["sections"]["configuration"] if i["what"] == "server memory")
    assert memory["status"] == "ok" and "80% of the machine's or container's" in memory["detail"]
    monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", "2000")  # below one dataset's limit (4,096 MB): said
    main(["doctor", "--json"])
    memory = next(i for i in json.loads(capsys.readouterr().out)["sections"]["configuration"]
                  if i["what"] == "server memory")
    assert memory["status"] == "warning" and memory["detail"].startswith("2,000 MB (server.memory_mb;")
    assert "less than one dataset's limit (4,096 MB)" in memory["detail"]
    for how in ("auto", "none"):  # behind a reverse proxy on this machine these mean nobody logs in: said
        monkeypatch.setenv("SCATD_AUTH", how)
        main(["doctor", "--json"])
        mode = json.loads(capsys.readouterr().out)["sections"]["login"][0]
        assert mode["status"] == "warning" and 'reverse proxy' in mode["detail"] and 'password' in mode["detail"]


def test_doctor_warns_when_the_cell_limit_is_below_the_demo(tmp_path, monkeypatch, capsys):
    """QA: with limits.max_cells = 1,500 the demo (2,000 cells) cannot load: doctor says so."""
    from scatd_core.cli import main

    def demo_items():
        main(["doctor", "--json"])
        return [i for i in json.loads(capsys.readouterr().out)["sections"]["configuration"] if i["what"] == "demo"]

    monkeypatch.setenv("SCATD_MAX_CELLS", "1500")
    [item] = demo_items()
    assert item["status"] == "warning" and "limits.max_cells = 1,500 is below the demo's 2,000" in item["detail"]
    monkeypatch.setenv("SCATD_MAX_CELLS", "2000")
    assert demo_items() == []


def test_doctor_warns_when_the_memory_budget_leaves_the_idle_server_no_room_for_the_demo(monkeypatch):
    """QA: server.memory_mb counts the whole server, whose libraries alone hold ~0.8 GB: set to 500 MB
    every dataset was refused and doctor said the setting was fine but for the dataset limit."""
    from scatd_core import doctor
    from scatd_core.config import settings

    def memory(mb: int) -> dict:
        monkeypatch.setenv("SCATD_SERVER_MEMORY_MB", str(mb))
        monkeypatch.setenv("SCATD_MAX_DATASET_MB", "100")  # not the warning about one dataset's limit
        return doctor._memory_item(settings())

    item = memory(500)
    assert item["status"] == "warning" and "holds about 800 MB of it when idle" in item["detail"]
    assert "every dataset read into memory is refused, even the demo's" in item["detail"]
    assert "Set server.memory_mb to at least 1,056 MB" in item["detail"]
    item = memory(900)
    assert item["status"] == "warning" and "only about 100 MB is left for the users' data" in item["detail"]
    assert memory(1056)["status"] == "ok"


def test_a_table_line_that_never_ends_is_refused_before_a_parser_holds_it(tmp_path, monkeypatch):
    """A .csv.gz whose second line is megabytes long (a few kB compressed) is refused by the line
    guard under the parsers (pandas would hold it several times over); ordinary long rows pass."""
    import gzip

    from scatd_core.io import _table

    monkeypatch.setattr(_table, "LINE_BYTES_BASE", 64 << 10)
    path = tmp_path / "long.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"cell,G1,G2\nc1," + b"1" * (4 << 20) + b",2\nc2,1,2\n")
    with pytest.raises(InputError, match="line longer than"):  # seen as the separator is sniffed
        io.read(path)
    with gzip.open(path, "wb") as fh:  # further down: seen by the guard under the parsers
        fh.write(b"cell,G1,G2\n" + b"".join(b"c%d,1,2\n" % i for i in range(2000)) + b"cx," + b"1" * (4 << 20))
    with pytest.raises(InputError, match="line longer than"):
        io.read(path)
    wide = tmp_path / "wide.csv"  # 5,000 genes: a 25 kB header and 15 kB rows, well within the limit
    genes = [f"GENE{i}" for i in range(5000)]
    wide.write_text("cell," + ",".join(genes) + "\n" + "".join(f"c{r}," + ",".join(["1.5"] * 5000) + "\n"
                                                                for r in range(3)))
    assert io.read(wide).shape == (3, 5000)


# --------------------------------------------------------------------------- a library shared by two accounts

NOBODY = 65534


@pytest.fixture
def shared_library(monkeypatch):
    """A library folder, and a home, other accounts can reach (pytest's own folders are 0700 to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="scatd-shared-"))
    folder.chmod(0o755)
    (folder / "home").mkdir(mode=0o755)
    monkeypatch.setenv("SCATD_HOME", str(folder / "home"))
    yield folder / "lib"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def another_account():
    """``as_other(folder=None)``: a context in which this process reads the library as an account that
    does not own what the test wrote and may not read ``folder`` (made 0700/0600, as scATD Studio
    wrote bundles before: tempfile's modes). Root takes the effective uid ``nobody`` (root reads
    everything); another user takes every permission away from ``folder``, its own included."""
    import contextlib

    restore = []

    @contextlib.contextmanager
    def as_other(folder: Path | None = None):
        if folder is not None:
            modes = {p: p.stat().st_mode for p in (folder, *folder.iterdir())}
            restore.append(modes)
            for p in modes:
                p.chmod(0o700 if p.is_dir() else 0o600)
            if os.geteuid() != 0:
                folder.chmod(0)
        if os.geteuid() == 0:
            os.seteuid(NOBODY)
            try:
                yield
            finally:
                os.seteuid(0)
        else:
            yield

    yield as_other
    for modes in restore:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_a_model_gets_the_permissions_the_umask_gives_so_other_accounts_can_read_it(tmp_path, umask):
    """Written through tempfile, a bundle was 0700 with 0600 weights whatever the umask: a model the
    command line wrote under an administrator's account could not be read by the server's."""
    pth, genes = _checkpoint(tmp_path, 1)
    old = os.umask(umask)
    try:
        bundle = import_checkpoint(pth, "dist_vae", drug="D", genes=genes, library=tmp_path / "lib")
    finally:
        os.umask(old)
    assert oct(bundle.path.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    files = {p.name: oct(p.stat().st_mode & 0o777) for p in bundle.path.iterdir()}
    assert files == dict.fromkeys(("manifest.json", "weights.safetensors", "genes.txt"), oct(0o666 & ~umask))


def test_a_model_another_account_cannot_read_is_listed_as_unusable_without_a_path(tmp_path, shared_library,
                                                                                  another_account):
    pth, genes = _checkpoint(tmp_path, 1)
    theirs = import_checkpoint(pth, "dist_vae", drug="THEIRS", genes=genes, library=shared_library)
    mine = import_checkpoint(pth, "dist_vae", drug="MINE", genes=genes, library=shared_library)
    with another_account(theirs.path):
        entries = {e.path.name: e for e in list_library(shared_library)}
        with pytest.raises(BundleError) as err:
            load_bundle(theirs.path)
    assert entries[mine.path.name].ok  # the rest of the library is as usable as before
    problem = entries[theirs.path.name].problem
    assert not entries[theirs.path.name].ok and "not readable by this account" in problem
    assert "owner and permissions" in problem and str(shared_library) not in problem
    assert "not readable by this account" in err.value.message and str(shared_library) not in err.value.message
    assert str(shared_library) not in err.value.app_hint and str(theirs.path) in err.value.hint  # the CLI: where


def test_weights_another_account_cannot_read_make_the_model_unusable_not_corrupt(tmp_path, shared_library,
                                                                                  another_account):
    pth, genes = _checkpoint(tmp_path, 1)
    bundle = import_checkpoint(pth, "dist_vae", drug="W", genes=genes, library=shared_library)
    (bundle.path / "weights.safetensors").chmod(0o600)
    if os.geteuid() != 0:
        (bundle.path / "weights.safetensors").chmod(0)
    with another_account():
        [entry] = list_library(shared_library)
        with pytest.raises(BundleError) as err:
            load_bundle(bundle.path).load_model()
    assert not entry.ok and "not readable by this account" in entry.problem
    assert "not readable by this account" in err.value.message and "corrupt" not in err.value.message
    assert str(shared_library) not in err.value.message + err.value.app_hint


def test_scatd_models_calls_a_model_this_account_cannot_read_unreadable_not_broken(tmp_path, shared_library,
                                                                                  another_account, capsys):
    """QA: `scatd models` printed "BROKEN" for a model only its owner could read: it is not damaged, its
    permissions keep this account out; the line says so and how to fix it, as `scatd doctor` does.
    Whichever file keeps it out (the folder, its manifest, its weights), and a damaged one stays BROKEN."""
    from scatd_core.cli import main

    pth, genes = _checkpoint(tmp_path, 1)
    theirs = import_checkpoint(pth, "dist_vae", drug="THEIRS", genes=genes, library=shared_library)
    manifest = import_checkpoint(pth, "dist_vae", drug="MANIFEST", genes=genes, library=shared_library)
    broken = import_checkpoint(pth, "dist_vae", drug="BROKEN", genes=genes, library=shared_library)
    (broken.path / "manifest.json").write_text("{not json")
    (manifest.path / "manifest.json").chmod(0o600)
    if os.geteuid() != 0:
        (manifest.path / "manifest.json").chmod(0)
    with another_account(theirs.path):
        assert main(["models", "--library", str(shared_library)]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert main(["models", "--library", str(shared_library), "--json"]) == 0
        as_json = {Path(e["path"]).name: e for e in json.loads(capsys.readouterr().out)}
    (manifest.path / "manifest.json").chmod(0o644)
    lines = {line.split("\t")[0]: line.split("\t", 1)[1] for line in listed[1:]}
    for bundle in (theirs, manifest):
        assert lines[bundle.path.name].startswith("UNREADABLE: this account (") and "BROKEN" not in lines[bundle.path.name]
        assert "not a damaged model" in lines[bundle.path.name]
        assert f"Its owner or root makes it readable: chmod -R go+rX {bundle.path}" in lines[bundle.path.name]
        assert as_json[bundle.path.name]["status"] == "unreadable"
    assert lines[broken.path.name].startswith("BROKEN: ") and "not valid JSON" in lines[broken.path.name]
    assert as_json[broken.path.name]["status"] == "broken"


def test_another_accounts_lock_file_and_library_are_used_read_only_and_a_refused_write_says_so(
        shared_library, another_account):
    pth, genes = _checkpoint(shared_library.parent, 1)  # readable by the other account
    bundle = import_checkpoint(pth, "dist_vae", drug="L", genes=genes, library=shared_library)
    assert (shared_library / ".library.lock").stat().st_mode & 0o777 != 0o666  # not writable by others
    with another_account():
        assert clean_library(shared_library) == []  # takes the lock (read-only) and finds nothing to do
        with pytest.raises(BundleError) as err:  # the library folder is not theirs to write
            import_checkpoint(pth, "dist_vae", drug="OTHER", genes=genes, library=shared_library)
        with pytest.raises(BundleError) as removal:
            from scatd_core.bundle import remove_bundle

            remove_bundle(bundle.path)
    assert "cannot be written by this account" in err.value.message and "nothing was changed" in err.value.message
    assert str(shared_library) not in err.value.message + err.value.app_hint
    assert "could not be removed" in removal.value.message and str(shared_library) not in removal.value.message
    assert load_bundle(bundle.path).drug == "L"


def test_doctor_checks_that_this_account_can_read_every_model(tmp_path, shared_library, another_account):
    from scatd_core.doctor import _library

    pth, genes = _checkpoint(tmp_path, 1)
    theirs = import_checkpoint(pth, "dist_vae", drug="THEIRS", genes=genes, library=shared_library)
    import_checkpoint(pth, "dist_vae", drug="MINE", genes=genes, library=shared_library)
    items = {i["what"]: i for i in _library({"library": shared_library})}
    assert items["readable"]["status"] == "ok"
    with another_account(theirs.path):
        items = {i["what"]: i for i in _library({"library": shared_library})}
    # one model this account cannot read is a warning, never a failure of the whole library
    assert items["readable"]["status"] == "warning" and theirs.path.name in items["readable"]["detail"]
    assert "chmod -R go+rX" in items["readable"]["detail"]
    assert items[theirs.path.name]["status"] == "warning" and items["bundles"]["detail"].startswith("1 usable")


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a model to another account (chown): needs root")
def test_doctor_warns_of_a_model_only_its_owner_can_read_in_a_library_of_several_accounts(tmp_path, shared_library):
    from scatd_core.doctor import _library

    pth, genes = _checkpoint(tmp_path, 1)
    theirs = import_checkpoint(pth, "dist_vae", drug="THEIRS", genes=genes, library=shared_library)
    private = import_checkpoint(pth, "dist_vae", drug="PRIVATE", genes=genes, library=shared_library)
    for p in (theirs.path, *theirs.path.iterdir()):
        os.chown(p, NOBODY, -1)
    (private.path / "weights.safetensors").chmod(0o600)  # what scATD Studio wrote before
    items = {i["what"]: i for i in _library({"library": shared_library})}
    assert items["readable"]["status"] == "warning" and private.path.name in items["readable"]["detail"]
    assert theirs.path.name not in items["readable"]["detail"]


def test_an_interrupted_write_another_account_left_is_reported_not_a_failed_start(shared_library, another_account):
    from scatd_core.bundle import library_lock

    with library_lock(shared_library):  # made by the library's owner, as any write of it does
        pass
    (shared_library / ".bundle-tmp-0123abcd").mkdir()
    (shared_library / ".bundle-tmp-0123abcd" / "weights.safetensors").write_bytes(b"x")
    (shared_library / ".bundle-old-GONE-89abcdef").mkdir()  # an interrupted swap: to be put back
    with another_account():
        done = clean_library(shared_library)  # the app's start-up, and `scatd doctor`, run it
    assert len(done) == 2 and all(d.startswith("could not ") and "owner and permissions" in d for d in done)
    assert (shared_library / ".bundle-old-GONE-89abcdef").is_dir()  # left as it was for its owner
    assert sorted(clean_library(shared_library)) == ["removed an incomplete write (.bundle-tmp-0123abcd)",
                                                     "restored GONE (its replacement was interrupted)"]


# --------------------------------------------------------------------------- the configuration fails closed

def _config(tmp_path, monkeypatch, text: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(text)
    monkeypatch.setenv("SCATD_CONFIG", str(config))
    monkeypatch.delenv("SCATD_AUTH", raising=False)
    return config


@pytest.mark.parametrize("text", ['[auth]\nmode = "passwd"\n', '[Auth]\nmode = "password"\n',
                                  '[auth]\nmdoe = "password"\n'])
def test_a_login_setting_that_is_not_understood_stops_the_server_and_fails_doctor(tmp_path, monkeypatch, capsys,
                                                                                  text):
    """A typo in the login's setting never turns the login off: the settings fall back to a password
    login, `python -m scatd_app` refuses to start (before Streamlit runs) and `scatd doctor` fails."""
    import streamlit.web.cli

    from scatd_app.__main__ import main as serve
    from scatd_core.cli import main
    from scatd_core.config import settings

    _config(tmp_path, monkeypatch, text)
    conf = settings()
    assert conf.fatal and conf["auth_mode"] == "password"
    started = []
    monkeypatch.setattr(streamlit.web.cli, "main", lambda *a, **k: started.append(a) or 0)
    assert serve([]) == 2 and not started
    err = capsys.readouterr().err
    assert "will not start" in err and "auth.mode" in err
    assert main(["doctor", "--json"]) != 0
    login = json.loads(capsys.readouterr().out)["sections"]["login"]
    assert any(i["status"] == "problem" and "auth." in i["detail"] for i in login)
    monkeypatch.setenv("SCATD_AUTH", "passwd")  # the environment variable likewise
    _config(tmp_path, monkeypatch, "")
    monkeypatch.setenv("SCATD_AUTH", "passwd")
    assert settings().fatal and settings()["auth_mode"] == "password"


def test_unknown_keys_name_the_nearest_known_one_and_are_printed_at_start_up(tmp_path, monkeypatch, capsys):
    import streamlit.web.cli

    from scatd_app import preflight, ui, uploads
    from scatd_app.__main__ import main as serve
    from scatd_core.config import settings

    _config(tmp_path, monkeypatch, '[limits]\nmax_cels = 5\n[server]\nmax_job = 3\n')
    conf = settings()
    assert not conf.fatal
    assert any("limits.max_cels (did you mean limits.max_cells?)" in p for p in conf.problems)
    assert any("server.max_job (did you mean server.max_jobs?)" in p for p in conf.problems)
    monkeypatch.setattr(preflight, "_REPORTED", set())
    monkeypatch.setattr(streamlit.web.cli, "main", lambda *a, **k: 0)
    monkeypatch.setattr(ui, "start_up", lambda **k: None)
    monkeypatch.setattr(uploads, "install", lambda: True)
    assert serve([]) == 0
    err = capsys.readouterr().err
    assert "did you mean limits.max_cells?" in err and "did you mean server.max_jobs?" in err


def test_a_value_that_cannot_be_used_says_what_is_used_instead(tmp_path, monkeypatch):
    """QA: SCATD_MAX_JOBS=abc said "the default is used" while the configuration file's 1 was used:
    each problem now names the value used (the file's, the environment's, or the default)."""
    from scatd_core.config import settings

    def said(conf):
        return [p for p in conf.problems if "max_jobs" in p.lower()]

    _config(tmp_path, monkeypatch, "[server]\nmax_jobs = 1\n")
    monkeypatch.setenv("SCATD_MAX_JOBS", "abc")
    conf = settings()
    assert conf["max_jobs"] == 1
    assert said(conf) == ["SCATD_MAX_JOBS = 'abc' is not a whole number; the configuration file's value (1) is "
                          "used instead."]
    _config(tmp_path, monkeypatch, "")
    conf = settings()
    assert conf["max_jobs"] == 2 and said(conf) == ["SCATD_MAX_JOBS = 'abc' is not a whole number; the default (2) "
                                                    "is used."]
    _config(tmp_path, monkeypatch, '[server]\nmax_jobs = "many"\n')
    monkeypatch.setenv("SCATD_MAX_JOBS", "3")
    conf = settings()
    assert conf["max_jobs"] == 3 and said(conf) == ["server.max_jobs = 'many' is not a whole number; SCATD_MAX_JOBS "
                                                    "(3) is used instead."]


def test_a_login_mode_not_understood_is_one_message_that_says_the_server_will_not_start(tmp_path, monkeypatch,
                                                                                      capsys):
    """QA: SCATD_AUTH=pasword printed "the default is used", then that the server "will not start":
    one message, the same wherever it is shown, said once at start-up and once by doctor."""
    import streamlit.web.cli

    from scatd_app import preflight
    from scatd_app.__main__ import main as serve
    from scatd_core.cli import main
    from scatd_core.config import settings

    _config(tmp_path, monkeypatch, "")
    monkeypatch.setenv("SCATD_AUTH", "pasword")
    conf = settings()
    about = [p for p in conf.problems if "SCATD_AUTH" in p]
    assert about == list(conf.fatal) == ["SCATD_AUTH = 'pasword' is not one of auto, password, oidc, none: the app "
                                         "will not start rather than run without the login meant."]
    monkeypatch.setattr(preflight, "_REPORTED", set())
    monkeypatch.setattr(streamlit.web.cli, "main", lambda *a, **k: 0)
    assert serve([]) == 2
    err = capsys.readouterr().err
    assert err.count("pasword") == 1 and "default is used" not in err
    assert main(["doctor", "--json"]) != 0
    items = [i for section in json.loads(capsys.readouterr().out)["sections"].values() for i in section
             if "pasword" in i["detail"]]
    assert [i["status"] for i in items] == ["problem"]


def test_a_value_of_the_wrong_type_is_a_problem_not_converted(tmp_path, monkeypatch, capsys):
    """`home = 5`, a list for a folder, `1.5`/`2.9`/`true` for whole numbers: each is named with
    what is expected and the default is used (never a folder "5" nor 1 job for `true`); every
    command but doctor prints the problems, one line each, to stderr."""
    from scatd_core.cli import main
    from scatd_core.config import settings

    monkeypatch.delenv("SCATD_HOME")
    _config(tmp_path, monkeypatch, '[paths]\nhome = 5\nlibrary = ["/a", "/b"]\n[limits]\nmax_cells = 1.5\n'
                                   '[server]\nmax_jobs = true\n[auth]\nmax_failures = 2.9\nmode = "none"\n')
    conf = settings()
    assert conf["home"].name == "scatd" and conf["library"] == conf["home"] / "models"
    assert (conf["max_cells"], conf["max_jobs"], conf["auth_max_failures"]) == (1_000_000, 2, 5)
    problems = "\n".join(conf.problems)
    for expected in ('paths.home = 5 should be a folder', 'paths.library = ["/a", "/b"] should be a folder',
                     "limits.max_cells = 1.5 should be a whole number", "server.max_jobs = true should be a whole",
                     "auth.max_failures = 2.9 should be a whole number"):
        assert expected in problems
    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    assert main(["users", "list"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: configuration:") == 5 and "max_cells = 1.5" in err


def _unwritable(tmp_path) -> Path:
    """A folder no account can create or write in, root included (its parent is a file)."""
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "scatd"


@pytest.mark.parametrize("env", ["SCATD_HOME", "SCATD_WORK_DIR"])
def test_the_server_will_not_start_with_a_folder_it_cannot_write(tmp_path, monkeypatch, capsys, env):
    """Found at start-up, not by the first user's upload: `python -m scatd_app` names the folder, its
    setting and the fix, and Streamlit never starts."""
    import streamlit.web.cli

    from scatd_app import preflight
    from scatd_app.__main__ import main as serve

    folder = _unwritable(tmp_path)
    monkeypatch.setenv(env, str(folder))
    monkeypatch.setattr(preflight, "_FOLDERS_OK", False, raising=False)
    started = []
    monkeypatch.setattr(streamlit.web.cli, "main", lambda *a, **k: started.append(a) or 0)
    assert serve([]) == 2 and not started
    err = capsys.readouterr().err
    key = {"SCATD_HOME": "paths.home", "SCATD_WORK_DIR": "paths.work_dir"}[env]
    assert f"The folder {folder} ({key}) cannot be written" in err and "chown" in err and "will not start" in err


def test_users_says_plainly_when_the_users_file_cannot_be_written(tmp_path, monkeypatch, capsys):
    import io

    from scatd_core.cli import main

    path = _unwritable(tmp_path) / "users.toml"
    monkeypatch.setenv("SCATD_USERS_FILE", str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password here\n"))
    assert main(["users", "add", "alice", "--password-stdin"]) == 2
    err = capsys.readouterr().err
    assert f"The users file {path} cannot be written" in err and "nothing was changed" in err
    assert "bug" not in err


def test_a_password_of_only_spaces_is_refused(tmp_path, monkeypatch, capsys):
    """`printf '          \\n' | scatd users add dave --password-stdin`: ten spaces pass the length
    rule but are no password; refused, nothing written (the length rule still holds)."""
    import io

    from scatd_core import users
    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    for blank in (" " * 10, "\t" * 12, " \t " * 5):
        monkeypatch.setattr("sys.stdin", io.StringIO(blank + "\n"))
        assert main(["users", "add", "dave", "--password-stdin"]) == 2
        assert "The password is blank" in capsys.readouterr().err
    assert not (tmp_path / "users.toml").exists()
    with pytest.raises(InputError, match="too short") as short:
        users.add_user("dave", "  short  ")
    assert "nothing was changed" in short.value.message and "at least 10 characters" in short.value.hint  # what to do
    users.add_user("dave", "  spaces around are fine  ")
    assert users.verify("dave", "  spaces around are fine  ") == users.User("dave", False)


def test_users_role_changes_only_the_role_and_keeps_the_session(tmp_path, monkeypatch, capsys):
    """`scatd users role bob --admin` keeps bob's password and logged-in sessions (they get the new
    role at once); `add --replace` with the same password does not log bob out either; another
    password does."""
    import io

    from scatd_core import users
    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_USERS_FILE", str(tmp_path / "users.toml"))
    users.add_user("boss", "the boss's password", admin=True)
    users.add_user("bob", "bob's long password")
    session = users.verify("bob", "bob's long password")
    assert main(["users", "role", "bob", "--admin"]) == 0
    assert "bob is an admin now (password unchanged)" in capsys.readouterr().out
    again, why = users.recheck(session)
    assert why == "" and again == users.User("bob", True)
    assert users.verify("bob", "bob's long password") == users.User("bob", True)
    assert main(["users", "role", "nobody", "--admin"]) == 2
    assert "There is no user nobody" in capsys.readouterr().err
    assert main(["users", "role", "boss", "--no-admin"]) == 0 and main(["users", "role", "bob", "--no-admin"]) == 0
    assert "no admin is left" in capsys.readouterr().err and not any(u.admin for u in users.list_users())

    monkeypatch.setattr("sys.stdin", io.StringIO("bob's long password\n"))
    assert main(["users", "add", "bob", "--replace", "--admin", "--password-stdin"]) == 0
    assert users.recheck(session) == (users.User("bob", True), "")  # the same password: still logged in
    users.add_user("bob", "a brand new password", replace=True)
    assert "your password was changed" in users.recheck(session)[1]


def test_a_weights_file_rewritten_in_place_while_its_model_is_loaded_does_not_stop_the_process(tmp_path):
    """safetensors maps the file it loads: a model's weights truncated in place while the model was
    in use (an administrator's cp over weights.safetensors) stopped the whole server with SIGBUS,
    every user's session with it. The tensors are now held in memory: the loaded model goes on."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        from scatd_core._torchfile import load_safetensors
        path = {str(tmp_path / "weights.safetensors")!r}
        save_file({{"w": torch.arange(4_000_000, dtype=torch.float32)}}, path)
        state = load_safetensors(path)
        with open(path, "r+b") as fh:
            fh.truncate(64)  # rewritten in place, as cp does
        print(int(state["w"].double().sum()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert int(done.stdout.strip()) == sum(range(4_000_000))


def test_a_backed_h5ads_raw_matrix_stays_on_disk_and_is_not_counted_as_read_into_memory(tmp_path):
    """QA at 100k cells: the memory check counted adata.raw.X as read into memory ("its annotations
    (obs, var, layers, raw, obsm, uns) would take 662 MB ... Remove the layers, raw and embeddings")
    though a file read from disk leaves raw.X there (read in row blocks). Only what is read counts,
    and the advice does not tell the user to delete raw then."""
    from scatd_core.errors import MemoryShortage

    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, size=(400, 300)).astype(np.float32)  # raw: 480 kB dense
    cells = ad.AnnData(sp.csr_matrix(counts[:, :200]), obs=pd.DataFrame(index=[f"c{i}" for i in range(400)]),
                       var=pd.DataFrame(index=[f"G{i}" for i in range(200)]))
    cells.raw = ad.AnnData(counts, obs=cells.obs, var=pd.DataFrame(index=[f"G{i}" for i in range(300)]))
    path = tmp_path / "with_raw.h5ad"
    cells.write_h5ad(path)
    why = "the 100 kB this server has free for a new dataset now (of its 100 MB; other sessions use the rest)"
    adata = io.read(path, max_dataset_bytes=100_000, limit_reason=why)
    assert adata.isbacked and adata.raw is not None and adata.raw.shape == (400, 300)
    adata.file.close()

    cells.layers["counts"] = sp.csr_matrix(counts[:, :200])  # a layer is read into memory: it still counts
    cells.obsm["X_big"] = rng.normal(size=(400, 100)).astype(np.float32)
    path = tmp_path / "with_raw_and_layers.h5ad"
    cells.write_h5ad(path)
    with pytest.raises(MemoryShortage) as refused:
        io.read(path, max_dataset_bytes=100_000, limit_reason=why)
    said = str(refused.value)
    assert "its annotations (obs, var, layers, obsm, uns; adata.raw's matrix stays on disk) would take" in said, said
    assert "; or: remove the layers and embeddings the prediction does not need, or upload fewer cells." in said, said
    assert "raw and" not in said and ".." not in said, said
