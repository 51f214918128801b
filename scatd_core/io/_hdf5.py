"""HDF5 formats: AnnData .h5ad, 10x Genomics .h5 (v2, v3) and loom. The structure decides, not the extension."""

from __future__ import annotations

import json
import re
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
                                   check_genes, check_memory, decide_orientation, decode, keep_gene_expression, mb,
                                   raise_limit)

def _cut_short(name: str, detail: str, size: int) -> InputError | None:
    """HDF5's "truncated file: eof = 18096, ..., stored_eof = 36192" in plain words; else None."""
    m = re.search(r"truncated file: eof = (\d+).*?stored_eof = (\d+)", detail)
    if m is None and "truncated file" not in detail:
        return None
    whole = f" of the {int(m.group(2)):,} it should have" if m else ""
    return InputError(f"{name} is cut short: the file holds {size:,} bytes{whole} (it was not copied or saved "
                      "completely).",
                      "Copy the complete file again (compare its size with the original), or save it again "
                      "(e.g. adata.write_h5ad), and give the new copy.",
                      app_hint="Upload the complete file again (compare its size with the original), or save it "
                               "again (e.g. adata.write_h5ad) and upload the new copy.")


def _open_h5(path: Path, name: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        short = _cut_short(name, str(exc), path.stat().st_size)
        if short is not None:
            raise short from None
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
#: More HDF5 objects (groups and datasets; every name one is reachable by counts) than this in one
#: upload, outside an h5ad's uns, is not single-cell data: each is read on its own (a few MB of
#: small datasets took ~40 s and 1 GB to read). A real h5ad holds far fewer: obs and var with
#: ``max_annotation_columns`` columns each (a categorical column is a group of 2 datasets), 1,000
#: layers and obsm/obsp entries of 4 objects each. Raised with ``max_annotation_columns`` (10 objects
#: per column allowed).
HDF5_MAX_OBJECTS = 20_000
#: Groups nested deeper than this (levels below the file's root) are not single-cell data (anndata
#: writes at most ~5: /raw/var/COLUMN/categories).
HDF5_MAX_DEPTH = 32
#: An h5ad's uns holding more entries (groups and datasets at any depth) than this, or nested
#: deeper (levels below /uns), is left out (not read, with a note): predictions do not use it, and
#: its entries are read one by one (~16 KB and ~1 ms each). scanpy's keep it to a few dozen
#: (rank_genes_groups, neighbors, *_colors, pca, umap; spatial data a few per library).
H5AD_MAX_UNS_ENTRIES = 1000
H5AD_MAX_UNS_DEPTH = 32
#: The largest chunk of a chunked dataset: reading a single value of a compressed dataset unpacks
#: its whole chunk into memory (h5py's own chunks are at most 1 MB; anndata, Cell Ranger and loompy
#: write small ones too), so a 5 x 3 matrix in one 1 GB chunk would cost 1 GB.
HDF5_MAX_CHUNK_BYTES = 64 << 20
# Runs in a child process (only h5py imported): every link, group, dataset header and attribute is
# read, and what could make the reader touch anything but this file is reported: external links,
# datasets stored in external files, virtual datasets (which read from other files). Every name a
# dataset is reachable by is listed with its size, hard and soft links included: the readers open
# data by name, so data reachable by two names is read (and held) twice, and data behind a soft
# link is read where the link is. Links that loop back to a group above them, soft links to nothing
# and chunks over the limit are reported as damage. The walk is iterative (no recursion limit) and
# bounded: more names than max_names, or groups deeper than max_depth, outside /uns stop it
# (reported with the top-level group that holds them); /uns is walked only up to its own limits
# (uns_max names, uns_depth levels): over them its walk stops and uns is reported as left out.
_HDF5_WALK = """
import json, sys, h5py
max_names, max_chunk, max_depth, uns_max, uns_depth = (int(a) for a in sys.argv[2:7])
problems, damage, chunks, sizes, seen = [], [], [], {}, set()
counts, uns_out, too_many, too_deep = {}, None, None, None
def key_of(obj):
    info = h5py.h5o.get_info(obj.id)
    return (obj.id.fileno, info.token if hasattr(info, "token") else info.addr)
with h5py.File(sys.argv[1], "r") as f:
    list(f.attrs.items())
    stack = [(f, "/", {key_of(f): "/"}, 0)]
    while stack and too_many is None and too_deep is None:
        group, path, above, depth = stack.pop()
        for name in list(group):
            full = path.rstrip("/") + "/" + name
            top = full.split("/")[1]
            in_uns = top == "uns"
            if in_uns and uns_out is not None:
                break
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"{full} is an external link to {link.filename}:{link.path}")
                continue
            counts[top] = counts.get(top, 0) + 1
            if in_uns and full != "/uns":
                if depth > uns_depth:
                    uns_out = ["deep", full]
                    break
                if counts[top] - 1 > uns_max:
                    uns_out = ["wide", len(f["uns"]) if isinstance(f.get("uns"), h5py.Group) else 0]
                    break
            elif not in_uns:
                if depth + 1 > max_depth:
                    too_deep = [top, full]
                    break
                if sum(n for k, n in counts.items() if k != "uns") > max_names:
                    too_many = [max((k for k in counts if k != "uns"), key=counts.get), counts]
                    break
            try:
                obj = group[name]  # a soft link is followed: the readers open this name too
            except KeyError:
                damage.append(f"{full} is a link to {link.path}, which does not exist")
                continue
            key = key_of(obj)
            if key in above:
                damage.append(f"{full} links back to {above[key]}, a group that contains it (a loop)")
                continue
            first = key not in seen
            seen.add(key)
            if first:
                list(obj.attrs.items())
            if isinstance(obj, h5py.Group):
                stack.append((obj, full, {**above, key: full}, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                n = 1
                for d in obj.shape or ():
                    n *= int(d)
                sizes[full] = [list(obj.shape or ()), n * obj.dtype.itemsize]
                if not first:
                    continue
                if obj.external:
                    problems.append(f"dataset {full} keeps its data in other files ({obj.external[0][0]!r})")
                if obj.is_virtual:
                    problems.append(f"dataset {full} is a virtual dataset reading from other files")
                if obj.chunks:
                    c = obj.dtype.itemsize
                    for d in obj.chunks:
                        c *= int(d)
                    if c > max_chunk:
                        chunks.append([full, list(obj.chunks), c])
if uns_out is not None:
    sizes = {k: v for k, v in sizes.items() if k != "/uns" and not k.startswith("/uns/")}
print(json.dumps({"problems": problems, "damage": damage, "chunks": chunks, "too_many": too_many,
                  "too_deep": too_deep, "uns_out": uns_out, "sizes": sizes}))
"""


def _check_hdf5_structure(path: Path, name: str, max_objects: int | None = None
                          ) -> tuple[dict[str, tuple[list[int], int]], str | None]:
    """Walk every link, group, dataset header and attribute of an HDF5 file in a child process.

    Refuses what would make the reader touch any other file (external links, external storage,
    virtual datasets: the threat model's "an upload never reads another file"), links that loop or
    lead nowhere, chunks over :data:`HDF5_MAX_CHUNK_BYTES`, and, outside /uns, more than
    ``max_objects`` (default :data:`HDF5_MAX_OBJECTS`) groups and datasets or groups nested deeper
    than :data:`HDF5_MAX_DEPTH`. Damaged HDF5 metadata can send the HDF5 C library into an endless
    loop (or a crash) that no Python code can interrupt; the child process with a time limit turns
    that into an InputError instead of a hung or dead server.

    Returns ``{name: (declared shape, declared bytes once read)}`` for every name a dataset can be
    opened by (hard and soft links included), so sizes can be checked before anything is allocated,
    and, when /uns is over :data:`H5AD_MAX_UNS_ENTRIES` or :data:`H5AD_MAX_UNS_DEPTH` (it is then
    not walked further, and its datasets are not listed), the note saying it is left out.
    """
    max_objects = HDF5_MAX_OBJECTS if max_objects is None else max_objects
    hint = "The file is damaged; export it again (e.g. adata.write_h5ad) and upload the new copy."
    try:
        proc = subprocess.run([sys.executable, "-c", _HDF5_WALK, str(path), str(max_objects),
                               str(HDF5_MAX_CHUNK_BYTES), str(HDF5_MAX_DEPTH), str(H5AD_MAX_UNS_ENTRIES),
                               str(H5AD_MAX_UNS_DEPTH)], capture_output=True, text=True,
                              timeout=HDF5_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"{name} is corrupt: its HDF5 structure could not be read.", hint) from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:200]
        short = _cut_short(name, detail, path.stat().st_size)
        if short is not None:
            raise short
        raise InputError(f"{name} is a damaged HDF5 file ({detail}).", hint)
    try:
        walked = json.loads(proc.stdout)
    except ValueError:
        raise InputError(f"{name} is a damaged HDF5 file (its structure could not be listed).", hint) from None

    def shown(items: list[str]) -> str:
        return "; ".join(items[:3]) + (" ..." if len(items) > 3 else "")
    if walked["problems"]:
        raise InputError(f"{name} links to other files ({shown(walked['problems'])}); scATD reads only "
                         "self-contained files, so it was refused.",
                         "Save a self-contained copy (in Python: adata = anndata.read_h5ad(path); adata.write_h5ad("
                         "'copy.h5ad')) and give that.",
                         app_hint="Save a self-contained copy (in Python: adata = anndata.read_h5ad(path); "
                                  "adata.write_h5ad('copy.h5ad')) on your own machine and upload that.")
    if walked["too_many"]:
        top, counts = walked["too_many"]
        where = (f"it holds more than {max_objects:,} HDF5 objects (groups and datasets, counted by every name they "
                 f"are reached by){' outside uns' if 'uns' in counts else ''}, at least {counts[top]:,} of them in "
                 f"/{top}")
        raise InputError(f"{name}: {where}, over the limit of {max_objects:,} scATD reads, so it was refused: each is "
                         "read on its own, and single-cell data need far fewer (the file may name the same data "
                         "over and over).",
                         f"Remove what the prediction does not need from /{top} (in Python: import h5py; with "
                         f"h5py.File(path, 'a') as f: del f['/{top}/NAME']), or export the data again (e.g. "
                         "adata.write_h5ad), and give the file again.")
    if walked["too_deep"]:
        top, full = walked["too_deep"]
        shown_path = full if len(full) <= 40 else full[:40] + "..."
        raise InputError(f"{name}: its /{top} nests groups more than {HDF5_MAX_DEPTH} levels deep ({shown_path}), "
                         f"over the limit of {HDF5_MAX_DEPTH} scATD reads, so it was refused: single-cell data nest a "
                         "few levels (anndata, Cell Ranger and loompy write at most 5).",
                         f"Remove the nested groups from /{top} (in Python: import h5py; with h5py.File(path, 'a') "
                         f"as f: del f[{'/'.join(full.split('/')[:3])!r}]), or export the data again (e.g. "
                         "adata.write_h5ad), and give the file again.")
    if walked["damage"]:
        raise InputError(f"{name} is a damaged HDF5 file ({shown(walked['damage'])}).", hint)
    if walked["chunks"]:
        where, chunk, nbytes = walked["chunks"][0]
        raise InputError(f"{name}: the dataset {where} is stored in chunks of {mb(nbytes)} each ("
                         f"{' x '.join(map(str, chunk))} values), over the limit of {mb(HDF5_MAX_CHUNK_BYTES)}; reading "
                         "a single value unpacks a whole chunk into memory, so it was refused.",
                         "Export it again with ordinary chunks (adata.write_h5ad, Cell Ranger and loompy write chunks "
                         "of at most a few MB; in h5py, chunks=True) and upload the new copy.")
    return {k: (shape, int(nbytes)) for k, (shape, nbytes) in walked["sizes"].items()}, _uns_note(walked["uns_out"])


def _uns_note(uns_out: list | None) -> str | None:
    """What the reader says when an h5ad's uns is over its limits and left out, or ``None``."""
    if uns_out is None:
        return None
    how, detail = uns_out
    if how == "deep":
        shown_path = detail if len(detail) <= 40 else detail[:40] + "..."
        what = f"nests groups more than {H5AD_MAX_UNS_DEPTH} levels deep ({shown_path}), over the limit of " \
               f"{H5AD_MAX_UNS_DEPTH}"
    else:
        held = f"{detail:,} entries" if detail > H5AD_MAX_UNS_ENTRIES else \
            f"more than {H5AD_MAX_UNS_ENTRIES:,} entries (in its groups)"
        what = f"holds {held}, over the limit of {H5AD_MAX_UNS_ENTRIES:,}"
    return f"The file's uns {what} scATD Studio reads: it was left out (adata.uns was not read); predictions " \
           "do not use it."


def _declared(sizes: dict, prefix: str = "/", exclude: tuple[str, ...] = ()) -> int:
    """Declared bytes of the datasets at or under ``prefix`` (but not under ``exclude``)."""
    def under(path: str, group: str) -> bool:
        group = group.rstrip("/")
        return path == group or path.startswith(group + "/")
    return sum(nbytes for path, (_shape, nbytes) in sizes.items()
               if under(path, prefix) and not any(under(path, e) for e in exclude))


def read_hdf5(path: Path, opts: Options) -> ad.AnnData:
    """h5ad, 10x .h5 and loom are all HDF5: the file's structure decides, not its extension."""
    # the object bound allows ~10 objects per annotation column (obs, var, raw's var) beyond the default 1,000
    sizes, uns_note = _check_hdf5_structure(path, opts.display_name,
                                            HDF5_MAX_OBJECTS + 10 * max(0, opts.max_annotation_columns - 1000))
    with _open_h5(path, opts.display_name) as f:
        flavour = _hdf5_flavour(f)
    if flavour is None:
        raise InputError(f"{opts.display_name} is an HDF5 file but neither an AnnData .h5ad, a 10x "
                         "Genomics .h5 nor a loom file.", FORMATS_HINT)
    opts.report["format"] = flavour
    if flavour == "10x_h5":
        return _read_10x_h5(path, opts, sizes)
    if flavour == "loom":
        return _read_loom(path, opts, sizes)
    return _read_h5ad(path, opts, sizes, uns_note)


#: What AnnData reads at the top level of an .h5ad (older files also have raw.X, raw.var ...);
#: anything else stops anndata ("AnnData.__init__() got an unexpected keyword argument").
H5AD_TOP_LEVEL = ("X", "obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns", "raw")


def _read_h5ad(path: Path, opts: Options, sizes: dict, uns_note: str | None = None) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "X" not in f:
            layers = [str(k) for k in f["layers"].keys()][:5] if isinstance(f.get("layers"), h5py.Group) else []
            elsewhere = (["adata.raw.X"] if isinstance(f.get("raw"), h5py.Group) and "X" in f["raw"] else []) + \
                [f"adata.layers['{k}']" for k in layers]
            raise InputError(f"{opts.display_name} has no expression matrix X"
                             + (f" (it holds {', '.join(elsewhere)})." if elsewhere else "."),
                             f"Store the expression in X before saving (e.g. adata.X = "
                             f"{elsewhere[0] if elsewhere else 'adata.layers[' + repr('counts') + ']'}).")
        extra = [k for k in f if k not in H5AD_TOP_LEVEL and not k.startswith("raw.")]
        if extra:
            what = ", ".join(f"/{k} (a {'group' if isinstance(f.get(k), h5py.Group) else 'dataset'})"
                             for k in extra[:3]) + (" ..." if len(extra) > 3 else "")
            raise InputError(f"{opts.display_name} holds {'an item' if len(extra) == 1 else 'items'} that AnnData "
                             f"does not know at its top level: {what}. An .h5ad holds only "
                             f"{', '.join(H5AD_TOP_LEVEL)}.",
                             f"Move {'it' if len(extra) == 1 else 'them'} where AnnData keeps such data (a matrix of "
                             "cells x genes into adata.layers, anything else into adata.uns) or delete "
                             f"{'it' if len(extra) == 1 else 'them'} (in Python: import h5py; with h5py.File(path, "
                             f"'a') as f: del f[{extra[0]!r}]), then give the file again.")
        X = f["X"]
        if isinstance(X, h5py.Group):
            shape = tuple(int(s) for s in X.attrs["shape"])
            encoding = attr_str(X.attrs.get("encoding-type", "csr_matrix"))
            parts = [X[k] for k in ("data", "indices") if isinstance(X.get(k), h5py.Dataset)]
        else:
            shape, encoding, parts = X.shape, "array", [X]
        compressed = any(d.compression is not None for d in parts)
        if len(shape) != 2:
            raise InputError(f"X in {opts.display_name} has {len(shape)} dimensions; a cells x genes matrix is "
                             "needed.", "Export a 2-D expression matrix.")
        _check_h5ad_axes(f, X, shape, encoding, opts.display_name)
        _check_other_matrices(f, shape, opts.display_name)
        _check_annotation_columns(f, opts)
        packed = _packed_annotations(f, sizes)
    check_cells(shape[0], opts)
    check_genes(shape[1], opts)
    x_bytes = _declared(sizes, "/X")
    # Reading X unpacks every stored value; a tiny file can declare hours of work that the memory
    # check never sees when X stays on disk: compressed, or never written (chunks not allocated
    # read as the fill value). Limited like any compressed input's decompressed size: a matrix
    # whose every value is stored costs no more than the upload itself.
    if x_bytes > max(opts.max_decompressed_bytes, path.stat().st_size):
        if compressed:
            what = f"its compressed X is {mb(x_bytes)} once unpacked"
        else:
            what = (f"its X declares {mb(x_bytes)} of values but the {mb(path.stat().st_size)} file stores few of "
                    "them (the rest were never written, or are packed by a filter)")
        raise InputError(f"{opts.display_name}: {what}, over the server's limit of {mb(opts.max_decompressed_bytes)} "
                         "for compressed data.",
                         ("Save it again with anndata (adata.write_h5ad) without compression (X is already a "
                          "sparse matrix), upload fewer cells, or " if encoding in ("csr_matrix", "csc_matrix") else
                          "Save it with anndata (adata.write_h5ad), without compression or as a sparse matrix (most "
                          "single-cell data are mostly zeros), or ") + f"{raise_limit('max_decompressed_mb')}.")
    _check_packed_annotations(packed, path.stat().st_size, opts)
    large = path.stat().st_size >= BACKED_MIN_BYTES or shape[0] >= BACKED_MIN_CELLS or \
        x_bytes + _declared(sizes, "/", exclude=("/X",)) > opts.max_dataset_bytes
    backed = opts.backed is True or (opts.backed == "auto" and large)
    if backed and encoding == "csc_matrix":
        backed = False  # rows of a column-compressed matrix cannot be read in batches
        opts.warnings.append("X is stored column-wise (CSC), so it was loaded into memory; save it as "
                             "CSR (adata.X = adata.X.tocsr()) to let large files stay on disk.")
    transpose = opts.orientation == "genes_x_cells"
    # annotations (obs, var, layers, uns, obsm) are read into memory even when X stays on disk; a file read
    # from disk (backed) leaves adata.raw's matrix there too (read in row blocks), so only the rest counts
    on_disk = backed and not transpose
    check_memory(_declared(sizes, "/", exclude=("/X", "/raw/X", "/raw.X") if on_disk else ("/X",)),
                 "its annotations (obs, var, layers, obsm, uns; adata.raw's matrix stays on disk)" if on_disk
                 else "its annotations (obs, var, layers, raw, obsm, uns)", opts,
                 ("Remove the layers and embeddings the prediction does not need, or upload fewer cells" if on_disk
                  else "Remove the layers, raw and embeddings the prediction does not need, or upload fewer cells"))
    if backed and opts.limit_reason and x_bytes + _declared(sizes, "/", exclude=("/X",)) > opts.max_dataset_bytes:
        opts.warnings.append(f"Read from disk (backed): in memory it would take more than {opts.limit_reason}. "
                             "Prediction reads it in batches: slower, with the same results.")
    if not backed or transpose:
        check_memory(x_bytes + _declared(sizes, "/", exclude=("/X",)), f"its {shape[0]:,} x {shape[1]:,} matrix "
                     f"({encoding.replace('_matrix', '').upper()})", opts)
    if uns_note is None:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    else:
        adata = _read_h5ad_without_uns(path, backed, opts.display_name)
        opts.warnings.append(uns_note)
    if adata.isbacked and _null_raw(path):  # 'raw' written as null (anndata 0.12's write_elem of raw=None): no raw,
        adata.raw = None  # as read into memory; backed, anndata took it for a raw without X (the file is untouched)
    opts.report["backed"] = bool(backed)
    opts.report["stored_matrices"] = {"X": encoding, "raw": adata.raw is not None,
                                      "layers": [str(k) for k in adata.layers.keys()]}
    if opts.orientation == "genes_x_cells":
        if adata.isbacked:
            adata = adata.to_memory()
            opts.report["backed"] = False
        adata = adata.T.copy()
        opts.warnings.append("The file was read as genes x cells, as asked, and has been transposed.")
        opts.report.update(orientation="genes_x_cells", orientation_reason="given by the user")
        return adata
    # An h5ad is cells x genes by AnnData's convention (obs are cells, var genes): it is read as
    # stored, never transposed on a guess from the names (lower-case genes and short cell names
    # fooled it); names that look swapped are only said.
    opts.report.update(orientation="cells_x_genes", orientation_reason="as stored in the h5ad (AnnData's convention: "
                                                                       "obs are cells, var are genes)")
    decided, how = decide_orientation(adata.obs_names, adata.var_names, [])
    if opts.orientation == "auto" and decided == "genes_x_cells":
        opts.warnings.append(
            f"The names look swapped ({how}: e.g. cells {', '.join(map(str, adata.obs_names[:2]))} and genes "
            f"{', '.join(map(str, adata.var_names[:2]))}). An h5ad holds cells x genes (AnnData's convention), so it "
            "was read as stored; if this file really holds genes x cells, read it again with 'rows are genes' "
            "(--orientation genes_x_cells), or save it with adata.T.write_h5ad(...).")
    return adata


def _read_h5ad_without_uns(path: Path, backed: bool, name: str) -> ad.AnnData:
    """``anndata.read_h5ad`` without reading /uns (over :data:`H5AD_MAX_UNS_ENTRIES` or
    :data:`H5AD_MAX_UNS_DEPTH`): adata.uns is empty. Files written by anndata 0.8 or later (an
    ``anndata`` encoding at the root); older ones are refused in plain words."""
    from anndata.experimental import read_dispatched
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        modern = attr_str(f.attrs.get("encoding-type", "")) == "anndata" and \
            not any(k.startswith("raw.") for k in f) and isinstance(f.get("obs"), h5py.Group)
    if not modern:
        raise InputError(f"{name}: its uns is over the limits scATD Studio reads ({H5AD_MAX_UNS_ENTRIES:,} entries, "
                         f"{H5AD_MAX_UNS_DEPTH} levels deep), and the file was written by an anndata older than 0.8, "
                         "so uns cannot be left out.",
                         "Save it again with a current anndata, without what uns holds (in Python: adata = "
                         "anndata.read_h5ad(path); adata.uns = {}; adata.write_h5ad('copy.h5ad')), and give the copy.")
    if not backed:
        with h5py.File(path, "r") as f:
            def skip_uns(read_func, elem_name: str, elem, iospec):
                return {} if elem_name == "/uns" else read_func(elem)
            return read_dispatched(f, callback=skip_uns)
    # as anndata's read_h5ad_backed, less uns: X (and adata.raw's X) stay on disk
    f = h5py.File(path, "r")
    try:
        parts = {k: read_elem(f[k]) for k in ("obs", "var", "obsm", "varm", "obsp", "varp", "layers") if k in f}
        raw = f.get("raw")
        parts["raw"] = {k: read_elem(raw[k]) for k in ("var", "varm") if k in raw} \
            if isinstance(raw, h5py.Group) else {}
        return ad.AnnData(filename=f, **parts)
    except BaseException:
        f.close()
        raise


def _null_raw(path: Path) -> bool:
    """Whether the h5ad's 'raw' is an element encoded as null (no adata.raw)."""
    import h5py

    with h5py.File(path, "r") as f:
        return "raw" in f and f["raw"].attrs.get("encoding-type") == "null"


#: Annotations (obs, var, layers, raw, obsm, obsp, uns) stored packed (compressed, or never written)
#: may declare at most this many times the file's size once read, and at least
#: :data:`PACKED_ANNOTATIONS_FLOOR` bytes whatever the file's size: a 5.7 MB upload declared a 3.6 GB
#: obsm of gzipped zeros, held in memory for the session. Real annotations pack far less (sparse
#: counts ~3-5x; a mostly-zero dense layer ~20x).
PACKED_ANNOTATIONS_RATIO = 100
PACKED_ANNOTATIONS_FLOOR = 256 << 20
#: A dataset is "packed" when it declares more than this many times the bytes it stores.
_PACKED = 10


def _packed_annotations(f: h5py.File, sizes: dict) -> list[tuple[str, int, int]]:
    """``(name, declared bytes, stored bytes)`` of every dataset outside X that stores far fewer bytes
    than it declares (compressed, or never written), by every name it is read by."""
    out = []
    for name, (_shape, declared) in sizes.items():
        if name == "/X" or name.startswith("/X/") or declared < (1 << 20):
            continue
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            stored = int(obj.id.get_storage_size())
            if declared > _PACKED * stored:
                out.append((name, int(declared), stored))
    return out


def _check_packed_annotations(packed: list, file_bytes: int, opts: Options) -> None:
    """Refuse annotations stored packed that declare more than :data:`PACKED_ANNOTATIONS_RATIO` times the
    file (at least :data:`PACKED_ANNOTATIONS_FLOOR`; at most the limit for compressed data) once read,
    before they are read: they would be held in memory for the session, unpacked."""
    total = sum(d for _n, d, _s in packed)
    limit = min(opts.max_decompressed_bytes, max(PACKED_ANNOTATIONS_FLOOR, PACKED_ANNOTATIONS_RATIO * file_bytes))
    if total <= limit:
        return
    name, declared, stored = max(packed, key=lambda p: p[1])
    raise InputError(f"{opts.display_name}: its annotations beside X are stored packed (compressed, or never "
                     f"written) and declare {mb(total)} once read, from a {mb(file_bytes)} file (e.g. {name}: "
                     f"{mb(declared)} from {mb(stored)} stored), over the limit of {mb(limit)} for such data.",
                     "Remove the layers, raw and embeddings (obsm, obsp) the prediction does not need (in Python: "
                     "del adata.obsm['NAME'], then adata.write_h5ad(...)) and give the file again, or "
                     f"{raise_limit('max_decompressed_mb')}.")


def _axis_length(f: h5py.File, key: str) -> int | None:
    """How many rows ``obs`` (or ``var``) has, from its index (or its table, in old files);
    ``None`` when it cannot be told (anndata's reading then says what is wrong)."""
    obj = f.get(key)
    if isinstance(obj, h5py.Dataset):
        return len(obj) if obj.shape else None
    if isinstance(obj, h5py.Group):
        index = obj.get(attr_str(obj.attrs.get("_index", "_index")))
        if isinstance(index, h5py.Dataset) and index.shape:
            return len(index)
    return None


def _annotation_columns(obj) -> list[str]:
    """The columns an h5ad's obs (or var) declares, from its structure, before any is read."""
    if isinstance(obj, h5py.Dataset):  # old files: one table (a compound dataset)
        return list(obj.dtype.names or ())
    if not isinstance(obj, h5py.Group):
        return []
    index = attr_str(obj.attrs.get("_index", "_index"))
    order = obj.attrs.get("column-order")
    listed = decode(order) if order is not None and getattr(order, "ndim", 0) == 1 else []
    stored = [k for k in obj if k not in (index, "__categories")]
    # the order anndata lists (examples read as the user knows them), or what is stored if more
    return listed + [k for k in stored if k not in set(listed)] if len(stored) > len(listed) else listed


def _check_annotation_columns(f: h5py.File, opts: Options) -> None:
    """At most ``max_annotation_columns`` columns in obs, var, adata.raw's var and each table (a
    dataframe) in obsm or varm: each column is read on its own, so thousands of them take minutes for
    a file of a few MB (20,000 obs columns: 48 s of CPU; 19,000 in raw's var: 32 s)."""
    tables = [("obs", "obs", "per-cell", "adata.obs"), ("var", "var", "per-gene", "adata.var"),
              ("raw/var", "raw/var", "per-gene", "adata.raw.var")]
    for key, what in (("obsm", "per-cell"), ("varm", "per-gene")):
        group = f.get(key)
        if isinstance(group, h5py.Group):
            tables += [(f"{key}/{k}", f"{key}[{str(k)!r}]", what, f"adata.{key}[{str(k)!r}]") for k in group
                       if isinstance(group.get(k), h5py.Group)
                       and attr_str(group[k].attrs.get("encoding-type", "")) == "dataframe"]
    for key, shown_as, what, python in tables:
        columns = _annotation_columns(f.get(key))
        if len(columns) > opts.max_annotation_columns:
            shown = ", ".join(map(str, columns[:3]))
            keep = ("raw = adata.raw.to_adata(); raw.var = raw.var[['column1', 'column2']]; adata.raw = raw"
                    if key == "raw/var" else f"{python} = {python}[['column1', 'column2']]")
            raise InputError(f"{opts.display_name}: its {shown_as} declares {len(columns):,} {what} annotation columns "
                             f"(e.g. {shown}), over the limit of {opts.max_annotation_columns:,}.",
                             f"Keep only the annotation columns you need (in Python: {keep}, then "
                             "adata.write_h5ad(...); values per cell and gene belong in X or adata.layers), or "
                             f"{raise_limit('max_annotation_columns')}.")


def _check_h5ad_axes(f: h5py.File, X, shape: tuple, encoding: str, name: str) -> None:
    """X's declared shape agrees with obs and var and, for a sparse X, with its own arrays; else
    an :class:`InputError` in plain words (anndata's: "Observations annot. `obs` must have as many
    rows as `X` has rows"; scipy's: "index pointer size 61 should be 10001")."""
    hint = ("The file is damaged or was written by other software than anndata: save it again from the original "
            "data (adata.write_h5ad), or copy the complete file again.")
    for key, axis, what in (("obs", 0, "rows (cells)"), ("var", 1, "columns (genes)")):
        n = _axis_length(f, key)
        if n is not None and n != shape[axis]:
            raise InputError(f"{name}: X declares {shape[axis]:,} {what} but {key} has {n:,}.", hint)
    if not isinstance(X, h5py.Group) or encoding not in ("csr_matrix", "csc_matrix"):
        return
    _check_sparse_header(X, shape, encoding, "X", name, hint)  # as adata.raw's and the layers' are checked


#: The layers (and obsm, obsp entries) whose structure is checked one by one before the file is read;
#: more than this many is not single-cell data (each is read as a matrix of its own).
MAX_LAYERS = 1000


def _other_matrices(f: h5py.File, shape: tuple) -> list[tuple[str, str, object, tuple]]:
    """``(where, how, item, expected shape)`` of every matrix of an h5ad besides X that anndata reads:
    adata.raw's X, each layer, each entry of obsm and obsp (``None`` in the shape: any length)."""
    out = []
    raw = f.get("raw")
    if isinstance(raw, h5py.Group) and "X" in raw:
        n_raw = _axis_length(raw, "var")
        out.append(("adata.raw", "raw", raw.get("X"), (shape[0], n_raw)))
    for key, where, expected in (("layers", "layers['{}']", shape), ("obsm", "obsm['{}']", (shape[0], None)),
                                 ("obsp", "obsp['{}']", (shape[0], shape[0]))):
        group = f.get(key)
        if not isinstance(group, h5py.Group):
            continue
        for k in group:
            out.append((where.format(k), key, group.get(k), expected))
    return out


def _check_other_matrices(f: h5py.File, shape: tuple, name: str) -> None:
    """Before anndata reads them: adata.raw's X, the layers and the obsm / obsp entries are matrices of
    real numbers whose declared shape agrees with the cells (and genes), and a sparse one's pointers
    start at 0 and end within its values; else an :class:`InputError` naming the part of the file
    (anndata's and scipy's own words, e.g. "X has 1000000000 rows, but n_obs is 300" for adata.raw,
    or "'dict' object has no attribute 'shape'", name none). Its indices are checked once read
    (:func:`scatd_core.io._report.check_other_matrices`), as X's are."""
    hint = ("The file is damaged or was written by other software than anndata: save it again from the original "
            "data (adata.write_h5ad), or copy the complete file again.")
    items = _other_matrices(f, shape)
    if len(items) > MAX_LAYERS:
        raise InputError(f"{name} holds {len(items):,} layers and other matrices besides X (e.g. "
                         f"{', '.join(w for w, *_ in items[:3])}), over the limit of {MAX_LAYERS:,}: each is read as a "
                         "matrix of its own.",
                         "Keep only the layers you need (in Python: del adata.layers['NAME'], then "
                         "adata.write_h5ad(...)) and give the file again.")
    for where, key, item, expected in items:
        axes = "cells x genes" if key in ("raw", "layers") else "cells x values" if key == "obsm" else "cells x cells"
        if isinstance(item, h5py.Dataset) and key in ("obsm", "obsp"):
            continue  # dense: anndata checks its shape itself; only a sparse one's indices could crash C code
        if isinstance(item, h5py.Dataset):
            dims, dtype, encoding = tuple(int(d) for d in item.shape or ()), item.dtype, "array"
        elif isinstance(item, h5py.Group):
            encoding = attr_str(item.attrs.get("encoding-type", ""))
            if key in ("obsm", "obsp") and encoding not in ("csr_matrix", "csc_matrix"):
                continue  # a per-cell table (or other encoded item) in obsm: anndata reads it as such
            if encoding not in ("csr_matrix", "csc_matrix"):
                inner = ", ".join(repr(str(k)) for k in list(item)[:3])
                what = (f"a table ({encoding}), not a matrix of {axes}" if encoding else
                        "a group of other items" + (f" ({inner})" if inner else "") +
                        f", not a matrix of {axes}" + (" (a name with '/' in it makes such groups)"
                                                        if key == "layers" else ""))
                raise InputError(f"{name}: {where} is {what}, so the file cannot be read.",
                                 f"Store a matrix of {axes} there, or delete it (in Python: h5py.File(path, 'a'): "
                                 f"del f[{item.name!r}]), then give the file again." if key != "layers" else
                                 "Store only matrices of cells x genes in adata.layers, named without '/' (in "
                                 "Python: del adata.layers['NAME'], then adata.write_h5ad(...)), then give the "
                                 "file again.")
            try:
                dims = tuple(int(d) for d in item.attrs["shape"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{name}: {where} is a sparse matrix without a valid shape: the file is damaged.",
                                 hint) from None
            data = item.get("data")
            dtype = data.dtype if isinstance(data, h5py.Dataset) else None
        else:
            raise InputError(f"{name}: {where} is not a matrix of {axes}: the file is damaged.", hint)
        if len(dims) != 2:
            raise InputError(f"{name}: {where} has {len(dims)} dimensions; a matrix of {axes} is needed.", hint)
        for axis, what in ((0, "rows (cells)"), (1, "columns (genes)" if key != "obsp" else "columns (cells)")):
            if expected[axis] is not None and dims[axis] != expected[axis]:
                against = ("obs has" if axis == 0 else "its var has" if key == "raw" else
                           "X has" if key == "layers" else "obs has")
                raise InputError(f"{name}: {where} declares {dims[axis]:,} {what} but {against} "
                                 f"{expected[axis]:,}: the file is damaged.", hint)
        if key in ("raw", "layers") and dtype is not None and (dtype.kind not in "biufc" or (dtype.kind in "fc" and dtype.itemsize < 4)):
            kind = ("text, not numbers" if dtype.kind in "OSU" else
                    "records of several fields, not single numbers" if dtype.names else
                    "16-bit floating-point numbers, which scATD does not read" if dtype.kind in "fc" else
                    f"{dtype} values, not numbers")
            raise InputError(f"{name}: the values of {where} are {kind}.",
                             f"Convert {where} to real numbers (float32, float64 or integers) or delete it, then "
                             "save the file again (adata.write_h5ad).")
        if encoding in ("csr_matrix", "csc_matrix"):
            _check_sparse_header(item, dims, encoding, where, name, hint)


def _check_sparse_header(group: h5py.Group, dims: tuple, encoding: str, where: str, name: str, hint: str) -> None:
    """A sparse matrix's parts agree with one another (read: its pointers' first and last values)."""
    parts = {k: group.get(k) for k in ("data", "indices", "indptr")}
    if not all(isinstance(d, h5py.Dataset) and len(d.shape) == 1 for d in parts.values()):
        raise InputError(f"{name}: {where} is a sparse matrix whose parts (data, indices, indptr) are missing or "
                         "not lists of numbers: the file is damaged.", hint)
    if parts["indices"].dtype.kind not in "iu" or parts["indptr"].dtype.kind not in "iu":
        raise InputError(f"{name}: {where} is a sparse matrix whose positions are not whole numbers: the file is "
                         "damaged.", hint)
    axis, along = (0, "row") if encoding == "csr_matrix" else (1, "column")
    n_ptr = parts["indptr"].shape[0]
    if n_ptr != dims[axis] + 1:
        raise InputError(f"{name}: {where} declares {dims[axis]:,} {along}s but its sparse {along} pointers cover "
                         f"{max(n_ptr - 1, 0):,}: the file is damaged.", hint)
    n_values = parts["data"].shape[0]
    if n_values != parts["indices"].shape[0]:
        raise InputError(f"{name}: {where} stores {n_values:,} values but {parts['indices'].shape[0]:,} positions "
                         "for them: the file is damaged.", hint)
    first, last = (int(parts["indptr"][0]), int(parts["indptr"][-1])) if n_ptr else (0, 0)
    if first != 0 or last > n_values or last < 0:
        raise InputError(f"{name}: {where}'s pointers run from value {first:,} to {last:,} but it stores "
                         f"{n_values:,} values (from 0): the file is damaged.", hint)


def _dataset(group: h5py.Group, key: str, opts: Options) -> h5py.Dataset:
    """``group[key]`` (through any link, as it will be read), which must be a dataset."""
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{opts.display_name} is not a complete 10x Genomics .h5 file: "
                         f"{group.name.rstrip('/')}/{key} is {'missing' if obj is None else 'not a dataset'}.",
                         "Upload the filtered_feature_bc_matrix.h5 Cell Ranger wrote, or the matrix folder "
                         "(matrix.mtx + features + barcodes).")
    return obj


def _nbytes(dataset: h5py.Dataset) -> int:
    """Declared bytes of a dataset once read (fixed-length strings count their full width)."""
    n = 1
    for d in dataset.shape or ():
        n *= int(d)
    return n * dataset.dtype.itemsize


def _read_10x_h5(path: Path, opts: Options, sizes: dict) -> ad.AnnData:
    with _open_h5(path, opts.display_name) as f:
        if "matrix" in f:
            g, version = f["matrix"], "v3"
            feats = g.get("features")
            if not isinstance(feats, h5py.Group):
                raise InputError(f"{opts.display_name} is not a complete 10x Genomics .h5 file: /matrix/features is "
                                 "missing.", "Upload the filtered_feature_bc_matrix.h5 Cell Ranger wrote, or the "
                                 "matrix folder (matrix.mtx + features + barcodes).")
            names = {"ids": _dataset(feats, "id", opts), "names": _dataset(feats, "name", opts)}
            if "feature_type" in feats:
                names["types"] = _dataset(feats, "feature_type", opts)
        else:
            genomes = [k for k in f if isinstance(f[k], h5py.Group) and "barcodes" in f[k]]
            if len(genomes) > 1:
                raise InputError(f"{opts.display_name} holds several genomes ({', '.join(genomes)}).",
                                 "Split it per genome with Cell Ranger, or convert the human part to h5ad.")
            g, version = f[genomes[0]], "v2"
            names = {"ids": _dataset(g, "genes", opts), "names": _dataset(g, "gene_names", opts)}
        parts = {k: _dataset(g, k, opts) for k in ("data", "indices", "indptr", "barcodes")}
        shape = _dataset(g, "shape", opts)
        if shape.shape != (2,):
            raise InputError(f"{opts.display_name} is not a valid 10x Genomics .h5 file: {shape.name} should "
                             f"hold 2 numbers (features, cells), but its shape is {shape.shape}.",
                             "Upload the filtered_feature_bc_matrix.h5 Cell Ranger wrote, or the matrix folder "
                             "(matrix.mtx + features + barcodes).")
        n_features, n_cells = (int(s) for s in shape[()])
        check_cells(n_cells, opts)
        check_genes(n_features, opts)
        # Sized from the datasets as they will be read (whatever names link to them), before any is
        # read: the arrays are read, then the values copied to float32, the names decoded to text:
        # about twice what the file declares.
        declared = sum(_nbytes(d) for d in (*parts.values(), *names.values()))
        check_memory(2 * declared, f"its {n_cells:,} cells x {n_features:,} features", opts)
        ids, gene_names = decode(names["ids"][()]), decode(names["names"][()])
        types = decode(names["types"][()]) if "types" in names else None
        # 10x stores genes x cells column-compressed, which is cells x genes row-compressed
        X = sp.csr_matrix((parts["data"][()].astype(np.float32), parts["indices"][()], parts["indptr"][()]),
                          shape=(n_cells, n_features))
        barcodes = decode(parts["barcodes"][()])
    X.check_format(full_check=True)  # indices from a file must be valid before any C code uses them
    var = pd.DataFrame({"gene_ids": ids}, index=[n or i for n, i in zip(gene_names, ids)])
    if types is not None:
        var["feature_types"] = types
    opts.report["10x_version"] = version
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes), var=var)
    _ignore_orientation(opts, "10x")
    return keep_gene_expression(adata, opts)


def _ignore_orientation(opts: Options, fmt: str) -> None:
    opts.report.update(orientation="cells_x_genes", orientation_reason=f"fixed by the {fmt} format",
                       orientation_fixed=True)
    if opts.orientation == "genes_x_cells":
        opts.warnings.append(f"orientation='genes_x_cells' was ignored: the {fmt} format fixes the layout.")


_LOOM_GENE_ATTRS = ("Gene", "var_names", "gene_name", "Gene_name", "GeneName", "gene_names", "Accession", "gene_ids")
_LOOM_CELL_ATTRS = ("CellID", "obs_names", "cell_id", "CellId", "cell_names", "barcode", "Barcode", "barcodes")


def _loom_name_attr(attrs, known: tuple[str, ...], n: int, name: str = "The loom file",
                    axis: str = "row") -> str | None:
    """The attribute naming genes (or cells): a conventional name, else the first unique text one.
    A conventional one that is not one value per gene (cell) is refused, by ``name`` and ``axis``
    (row: genes, col: cells), rather than read wrongly."""
    if attrs is None:
        return None
    hit = next((a for a in known if a in attrs), None)
    if hit is not None:
        values = attrs[hit]
        if not isinstance(values, h5py.Dataset) or values.shape != (n,):
            what = "genes" if axis == "row" else "cells"
            holds = (f"holds {' x '.join(f'{k:,}' for k in values.shape) or 'a single'} "
                     f"{'value' if values.size == 1 else 'values'}, but the matrix "
                     f"has {n:,} {what}" if isinstance(values, h5py.Dataset) else
                     f"is a group, not a list of the matrix's {n:,} {what}")
            raise InputError(f"{name}: its {axis} attribute '{hit}' (the {what}' names) {holds}; the loom file is "
                             "damaged or was not written as loompy writes it.",
                             "Export the loom file again (loompy, or anndata's write_loom), or convert it to .h5ad "
                             "(anndata.io.read_loom(path).write_h5ad('cells.h5ad')) and give that.")
        return hit
    for key, values in attrs.items():
        if isinstance(values, h5py.Dataset) and values.dtype.kind in "SOU" and values.shape == (n,) \
                and len(set(values[()])) == n:
            return key
    return None


def _loom_columns(attrs, n: int) -> list[tuple[str, h5py.Dataset]]:
    """The per-gene (or per-cell) attributes of a loom axis: datasets of length ``n``, as read."""
    return [(key, value) for key, value in (attrs.items() if attrs is not None else ())
            if isinstance(value, h5py.Dataset) and value.shape == (n,)]


def _loom_axis(attrs, n: int, name_attr: str | None) -> pd.DataFrame:
    """The 1-D attributes of one loom axis as a frame indexed by the naming attribute."""
    columns = {}
    for key, dataset in _loom_columns(attrs, n):
        values = dataset[()]
        columns[key] = decode(values) if values.dtype.kind in "SO" else values
    index = columns.pop(name_attr) if name_attr else [str(i) for i in range(n)]
    return pd.DataFrame(columns, index=pd.Index(index, dtype=object))


#: A loom matrix is read this many values at a time (~32M: 128 MB of float32).
LOOM_BLOCK_VALUES = 1 << 25


def _read_loom(path: Path, opts: Options, sizes: dict) -> ad.AnnData:
    """Read a loom file with h5py: /matrix is genes x cells, dense, stored in chunks.

    The dense matrix is read ~32M values at a time into sparse rows; the sparse result is checked
    against the memory budget as it grows (a loom's declared dense size says little about it).
    Every value is unpacked, zeros included, so the dense size is limited like any compressed
    input's decompressed size (a tiny file can declare 10^11 values, hours of work).
    """
    with _open_h5(path, opts.display_name) as f:
        matrix = f["matrix"]
        if matrix.ndim != 2:
            raise InputError(f"{opts.display_name}: the loom matrix has {matrix.ndim} dimensions, not 2.",
                             "Export the loom file again.")
        n_genes, n_cells = matrix.shape
        check_cells(n_cells, opts)
        check_genes(n_genes, opts)
        unpacked = matrix.size * matrix.dtype.itemsize
        if unpacked > max(opts.max_decompressed_bytes, path.stat().st_size):
            raise InputError(f"{opts.display_name}: its {n_genes:,} x {n_cells:,} loom matrix is {mb(unpacked)} once "
                             f"unpacked, over the server's limit of {mb(opts.max_decompressed_bytes)} for compressed "
                             "data (every value of a loom matrix is read, zeros included).",
                             "Convert it to an .h5ad with a sparse X on your own machine (in Python: "
                             "anndata.io.read_loom(path).write_h5ad('cells.h5ad')) and upload that, or "
                             f"{raise_limit('max_decompressed_mb')}.")
        # sized from the attributes the reader takes, as read (whatever names link to them)
        check_memory(sum(_nbytes(d) for group, n in (("row_attrs", n_genes), ("col_attrs", n_cells))
                         for _key, d in _loom_columns(f.get(group), n)),
                     "its row and column attributes", opts)
        gene_attr = _loom_name_attr(f.get("row_attrs"), _LOOM_GENE_ATTRS, n_genes, opts.display_name, "row")
        cell_attr = _loom_name_attr(f.get("col_attrs"), _LOOM_CELL_ATTRS, n_cells, opts.display_name, "col")
        var = _loom_axis(f.get("row_attrs"), n_genes, gene_attr)
        obs = _loom_axis(f.get("col_attrs"), n_cells, cell_attr)
        step = max(1, LOOM_BLOCK_VALUES // max(n_genes, 1))
        blocks, held = [], 0
        for start in range(0, n_cells, step):
            block = sp.csr_matrix(np.asarray(matrix[:, start:start + step], dtype=np.float32).T)
            held += block.data.nbytes + block.indices.nbytes + block.indptr.nbytes
            done = min(start + step, n_cells)  # the whole matrix once done: its size, not "at least"
            check_memory(held, "its expression matrix", opts,
                         read_so_far=f"its first {done:,} of {n_cells:,} cells" if done < n_cells else None,
                         whole=f"the whole matrix is {n_genes:,} genes x {n_cells:,} cells of {matrix.dtype} values, "
                               f"{mb(unpacked)} as stored unpacked, zeros included")
            blocks.append(block)
        X = sp.vstack(blocks, format="csr")
        opts.report["stored_matrices"] = {"matrix": "dense", "layers": [str(k) for k in f.get("layers", {})]}
    if gene_attr is None:
        opts.warnings.append("The loom file names no genes (no 'Gene' row attribute); genes are numbered.")
    _ignore_orientation(opts, "loom")
    return ad.AnnData(X=X, obs=obs, var=var)
