"""Validation of what a reader returned, and the read report (``uns['scatd_input']``)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scatd_core._words import counted
from scatd_core import _keys, genes, preprocess
from scatd_core._json import json_safe
from scatd_core._matrix import row_batches
from scatd_core.errors import InputError
from scatd_core.io._common import Options, check_cells, column_kind

DAMAGED_HINT = ("Save it again from the original data (e.g. adata.write_h5ad), or copy the complete file again; "
                "it may have been cut short or edited by other software.")


def _check_sparse(X, opts: Options | None) -> None:
    """A sparse matrix's structure is sound (its indices within its shape, its pointers complete),
    else :class:`InputError` saying what is wrong in plain words: invalid indices would crash
    later C code, and scipy's own words ("indices must be < 2000") mean nothing to a biologist.
    Without ``opts`` scipy's ``ValueError`` is raised as it is."""
    if opts is None:
        X.check_format(full_check=True)
        return
    try:
        X.check_format(full_check=True)
    except ValueError as exc:
        text = str(exc)
        matrix = "X" if opts.report.get("format") == "h5ad" else "the expression matrix"
        # CSR: the indices are columns (genes); CSC: rows (cells, or bulk samples)
        along, n, what = ("column", X.shape[1], "genes") if X.format == "csr" else \
            ("row", X.shape[0], "cell lines" if opts.samples else "cells")
        if "must be <" in text:
            problem = f"{along} indices go past its {n:,} {what}"
        elif ">= 0" in text:
            problem = f"{along} indices include negative ones"
        else:
            problem = f"sparse structure is inconsistent ({text.strip().rstrip('.')})"
        raise InputError(f"{opts.display_name}: {matrix}'s {problem}: the file is damaged.", DAMAGED_HINT) from None


#: Sparse positions are checked this many at a time (a backed matrix's are read from the file in such parts).
_CHECK_CHUNK = 1 << 24


def _sparse_parts(matrix):
    """``(indptr, indices, n_values, format)`` of a sparse matrix in memory or on disk (backed), else ``None``."""
    if sp.issparse(matrix):
        return matrix.indptr, matrix.indices, matrix.data.shape[0], matrix.format
    group = getattr(matrix, "group", None)  # anndata's backed sparse dataset
    if group is not None and getattr(matrix, "format", None) in ("csr", "csc"):
        return group["indptr"], group["indices"], group["data"].shape[0], matrix.format
    return None


def sparse_problem(matrix, n_genes_word: str = "genes", n_rows_word: str = "cells") -> str | None:
    """What is wrong with a sparse matrix's structure, in words (``None``: sound): pointers that start
    past 0, go backwards or end past its values; positions (indices) negative or past its size. Vectorised,
    on the arrays as they are (a backed matrix's read from the file a part at a time)."""
    parts = _sparse_parts(matrix)
    if parts is None:
        return None
    indptr, indices, n_values, fmt = parts
    along, n, what = ("column", matrix.shape[1], n_genes_word) if fmt == "csr" else ("row", matrix.shape[0],
                                                                                     n_rows_word)
    ptr = np.asarray(indptr[()] if not isinstance(indptr, np.ndarray) else indptr)
    n_ptr = matrix.shape[0 if fmt == "csr" else 1] + 1
    if ptr.shape[0] != n_ptr or indices.shape[0] != n_values:
        return "sparse structure is inconsistent (its parts have different lengths)"
    if ptr.shape[0] and (ptr[0] != 0 or ptr[-1] > n_values):
        return f"pointers run from value {int(ptr[0]):,} to {int(ptr[-1]):,} but it stores {n_values:,} values"
    if ptr.shape[0] > 1 and (np.diff(ptr) < 0).any():
        return "pointers go backwards"
    end = int(ptr[-1]) if ptr.shape[0] else 0
    for a in range(0, end, _CHECK_CHUNK):
        part = np.asarray(indices[a:min(a + _CHECK_CHUNK, end)])
        if part.size and int(part.min()) < 0:
            return f"{along} indices include negative ones"
        if part.size and int(part.max()) >= n:
            return f"{along} indices go past its {n:,} {what}"
    return None


def other_matrices(adata: ad.AnnData) -> list[tuple[str, object]]:
    """``(where, matrix)``: adata.raw's X, each layer, each sparse obsm and obsp entry."""
    out = []
    raw = getattr(adata, "raw", None)
    if raw is not None:
        out.append(("adata.raw", raw.X))
    out += [(f"layers['{k}']", v) for k, v in adata.layers.items()]
    for attr in ("obsm", "obsp"):
        for k, v in getattr(adata, attr).items():
            if sp.issparse(v):
                out.append((f"{attr}['{k}']", v))
    return out


def check_other_matrices(adata: ad.AnnData, opts: Options) -> None:
    """The structure of every sparse matrix besides X (adata.raw, layers, sparse obsm / obsp) is sound
    before anything computes on it (scipy's C code trusts the indices: a position past the genes
    crashes the server); else an :class:`InputError` naming the matrix, as X's check does."""
    for where, matrix in other_matrices(adata):
        problem = sparse_problem(matrix, "cells" if where.startswith("obsp") else
                                 "values" if where.startswith("obsm") else "genes")
        if problem is not None:
            raise InputError(f"{opts.display_name}: {where}'s {problem}: the file is damaged.", DAMAGED_HINT)


def _stored_matrix_choice(adata: ad.AnnData, opts: Options) -> None:
    """A matrix choice stored in the file (``uns['scatd_matrix']``, e.g. by an earlier scATD session's
    download) is taken out and never applied: the user chooses for this data (``--matrix``, the Data
    page), else the models read the best-suited matrix. It is kept in the read report
    (``matrix_in_file``) and said, a value that names no matrix included (never fatal)."""
    if _keys.MATRIX not in adata.uns:
        return
    value = adata.uns.pop(_keys.MATRIX)
    text = str(value)[:80]
    opts.report["matrix_in_file"] = text
    from scatd_core.matrices import parse_choice

    try:
        parse_choice(text)
    except InputError:
        opts.warnings.append(f"The file's uns['{_keys.MATRIX}'] ({text!r}) names no matrix (X, raw or layer:NAME); "
                             "it was ignored.")
        return
    opts.warnings.append(f"The file records a matrix chosen in an earlier scATD run (uns['{_keys.MATRIX}'] = "
                         f"{text!r}); it is not applied: each model reads the matrix that suits it best unless you "
                         "choose one (--matrix, or 'Matrix for the models' on the Data page).")


def _scan(X, opts: Options | None = None) -> tuple[np.ndarray, int, int, int | None]:
    """One pass over the rows: non-zeros per cell, NaN and inf counts, first bad row."""
    if sp.issparse(X):
        _check_sparse(X, opts)  # before any format conversion (C code that trusts the indices)
        if X.format == "csr":
            return _scan_csr(X)
    n_cells = X.shape[0]
    nonzero = np.zeros(n_cells, dtype=np.int64)
    n_nan = n_inf = 0
    first_bad = None
    for start, stop, block in row_batches(X):
        if sp.issparse(block):
            _check_sparse(block, opts)  # invalid indices would crash later C code (a backed X: block by block)
            values = block.data
            rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
            nonzero[start:stop] = np.bincount(rows[values != 0], minlength=stop - start)
        else:
            values = block
            nonzero[start:stop] = np.count_nonzero(block, axis=1)
        if values.dtype.kind == "f":
            nan, inf = np.isnan(values), np.isinf(values)
            n_nan, n_inf = n_nan + int(nan.sum()), n_inf + int(inf.sum())
            if first_bad is None and (nan.any() or inf.any()):
                flat = int(np.flatnonzero((nan | inf).ravel())[0])
                row = (np.searchsorted(block.indptr, flat, side="right") - 1) if sp.issparse(block) \
                    else flat // block.shape[1]
                first_bad = start + int(row)
    return nonzero, n_nan, n_inf, first_bad


def _scan_csr(X, chunk: int = 1 << 24) -> tuple[np.ndarray, int, int, int | None]:
    """:func:`_scan` of a CSR matrix in memory (whose structure :func:`_scan` checked), on its
    arrays as they are: no row blocks are copied (in a server process, whose freed memory goes
    back to the system, the copies' fresh pages made the scan of a 10k-cell upload ~10x slower
    than the arithmetic). The stored values are looked at ``chunk`` at a time (views), so the
    scan's own memory stays ~``chunk`` bytes."""
    n_cells = X.shape[0]  # its structure was checked by _scan
    indptr = np.asarray(X.indptr)
    nonzero = np.diff(indptr).astype(np.int64)
    n_nan = n_inf = 0
    first_bad = None
    floating = X.data.dtype.kind == "f"
    for a in range(0, int(indptr[-1]), chunk):
        values = X.data[a:min(a + chunk, int(indptr[-1]))]
        explicit_zeros = np.flatnonzero(values == 0)
        if explicit_zeros.size:
            rows = np.searchsorted(indptr, explicit_zeros + a, side="right") - 1
            nonzero -= np.bincount(rows, minlength=n_cells)
        if floating:
            finite = np.isfinite(values)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                nan = int(np.isnan(values[bad]).sum())
                n_nan, n_inf = n_nan + nan, n_inf + int(bad.size - nan)
                if first_bad is None:
                    first_bad = int(np.searchsorted(indptr, bad[0] + a, side="right") - 1)
    return nonzero, n_nan, n_inf, first_bad


def _n_duplicated(index: pd.Index) -> int:
    return int(index.duplicated().sum())


def _per_cell_columns(obs: pd.DataFrame) -> tuple[dict, list[str]]:
    labels, groups = {}, []
    for col in obs.columns:
        kind = column_kind(str(col))
        if kind == "group":
            groups.append(str(col))
        elif kind == "label":
            values = obs[col]
            counts = values.value_counts(dropna=True)
            entry = {"n_missing": int(values.isna().sum()), "n_values": int(counts.size),
                     "binary": bool(counts.size == 2)}
            if counts.size <= 20:
                entry["values"] = {str(k): int(v) for k, v in counts.items()}
            labels[str(col)] = entry
    return labels, groups


def _examples(index: pd.Index, n: int = 3) -> str:
    """The first ``n`` duplicated names, quoted."""
    return ", ".join(repr(str(x)) for x in index[index.duplicated()].unique()[:n])


def _check_embedding_values(adata: ad.AnnData, opts: Options) -> int:
    """NaN/inf in a .npy of cell embeddings (dense, in memory): an all-NaN row is a cell the
    foundation model did not embed (what :func:`scatd_core.foundation.embed_cells` writes), kept
    and left unscored, as in ``obsm``; a NaN or inf among other values is refused. Returns the
    number of all-NaN rows."""
    X = np.asarray(adata.X)
    nan = np.isnan(X)
    not_embedded = nan.all(axis=1)
    partial = ~np.isfinite(X).all(axis=1) & ~not_embedded
    if partial.any():
        rows = np.flatnonzero(partial)
        raise InputError(f"{opts.display_name} holds {counted(partial.sum(), 'cell embedding')} with some missing "
                         f"(NaN) or infinite values among the others (first in row {rows[0]:,}).",
                         "An embedding has no value meaning 'missing', so none is filled in: compute these cells' "
                         "embeddings again, or set the whole row to NaN (a cell not embedded: it keeps its row in "
                         "the outputs, marked not scored), then try again.")
    n = int(not_embedded.sum())
    if n == adata.n_obs:
        raise InputError(f"Every row of {opts.display_name} is NaN: no cell has an embedding to score.",
                         "Check that the right file was saved (numpy.save of the cells x features embeddings).")
    one = n == 1
    opts.warnings.append(f"{counted(n)} {'is' if one else 'are'} all NaN: {'a cell' if one else 'cells'} without an "
                         f"embedding (the foundation model found nothing to embed); {'it is' if one else 'they are'} "
                         "kept, and marked not scored.")
    return n


def _non_finite(name: str, n_nan: int, n_inf: int, first: str, opts: Options) -> InputError:
    """Missing (NaN) and infinite expression values: only the kinds found are named, each with
    its own remedy (a missing value may be "not expressed"; an infinite one comes from a
    calculation, never from a measurement); a row is a cell line in bulk data, else a cell."""
    row, rows = ("cell line", "cell lines") if opts.samples else ("cell", "cells")
    found = " and ".join(w for w in (f"{n_nan:,} missing (NaN)" if n_nan else "",
                                     f"{n_inf:,} infinite" if n_inf else "") if w)
    # a missing count may be "not expressed"; a missing bulk log-TPM value is not known to be 0: the user decides
    nan = ("Fill the missing values in your own tool (e.g. with the gene's mean over the cell lines) or drop them"
           if opts.samples else "Replace the missing values with 0 (not expressed)")
    inf = ("Infinite values come from a calculation, never from a measurement (e.g. a log of 0: use log1p; or a "
           "division by 0): redo it, or give the raw counts instead")
    remove = f"remove the affected {rows} or genes"
    hint = (f"{nan}. {inf}. Or {remove}." if n_nan and n_inf else
            f"{nan}, or {remove}." if n_nan else f"{inf}; or {remove}.")
    return InputError(f"{name} holds {found} {'value' if n_nan + n_inf == 1 else 'values'} "
                      f"(first in {row} '{first}').", hint)


def finish(adata: ad.AnnData, opts: Options) -> ad.AnnData:
    name, report = opts.display_name, opts.report
    n_cells, n_genes = adata.shape
    if n_cells == 0:
        raise InputError(f"{name} holds no cells.", "Check that the right file was exported.")
    if n_genes == 0:
        raise InputError(f"{name} holds no genes (no expression columns).", "Check that the right file was exported.")
    check_cells(n_cells, opts)
    dtype = np.dtype(adata.X.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"The expression values in {name} are {dtype}, not real numbers.", "Export numeric expression.")

    adata.obs_names = pd.Index([str(x) for x in adata.obs_names])
    adata.var_names = pd.Index([str(x) for x in adata.var_names])
    dup_genes, dup_cells = _n_duplicated(adata.var_names), _n_duplicated(adata.obs_names)
    if dup_genes:
        examples = _examples(adata.var_names)
        adata.var[_keys.ORIGINAL_GENE_NAME] = adata.var_names.tolist()
        adata.var_names_make_unique()
        opts.warnings.append(f"{counted(dup_genes, 'gene name')} {'occurs' if dup_genes == 1 else 'occur'} more than "
                             f"once (e.g. {examples}); the copies were "
                             "renamed (e.g. NAME-1) and are summed when aligned to a model.")
    if dup_cells:
        examples = _examples(adata.obs_names)
        adata.obs[_keys.ORIGINAL_CELL_ID] = adata.obs_names.tolist()
        adata.obs_names_make_unique()
        opts.warnings.append(f"{counted(dup_cells, 'cell name')} {'occurs' if dup_cells == 1 else 'occur'} more than "
                             f"once (e.g. {examples}); the copies were "
                             "renamed (NAME-1, NAME-2 ...).")

    nonzero, n_nan, n_inf, first_bad = _scan(adata.X, opts)
    check_other_matrices(adata, opts)
    _stored_matrix_choice(adata, opts)
    n_not_embedded = 0
    if (n_nan or n_inf) and report.get("format") == "npy":
        n_not_embedded = _check_embedding_values(adata, opts)
    elif n_nan or n_inf:
        raise _non_finite(name, n_nan, n_inf, str(adata.obs_names[first_bad]), opts)
    zero = nonzero == 0
    if zero.all():
        raise _all_zero(adata, name, report)
    adata.obs[_keys.ALL_ZERO] = zero
    if zero.any():
        one = int(zero.sum()) == 1
        opts.warnings.append(f"{counted(zero.sum())} {'has' if one else 'have'} no expression at all; "
                             f"{'it is' if one else 'they are'} kept, marked "
                             f"in obs['{_keys.ALL_ZERO}'], and cannot be scored meaningfully.")

    value_type = preprocess.detect_value_type(adata.X)
    if value_type["evidence"].get("n_cells_negative"):  # a few sampled cells negative among non-negative values
        opts.warnings.append(_negative_cells_warning(adata, value_type["kind"], opts))
    names = genes.original_gene_names(adata)
    id_type = genes.detect_id_type(names)
    id_evidence = genes.id_type_evidence(names)
    if report.get("format") != "npy":
        dates = genes.excel_dates_warning(names)
        if dates:
            opts.warnings.append(dates)
    if id_type == "mouse_symbol" or id_evidence.get("ensembl_mouse", 0) > 0.5:
        opts.warnings.append("The genes look like mouse genes; the scATD models are human, so most genes "
                             "will not match. Convert to human orthologues first.")
    labels, groups = _per_cell_columns(adata.obs)
    report.setdefault("orientation", "cells_x_genes")
    report.setdefault("orientation_reason", "as stored in the file (cells x genes)")
    report.setdefault("backed", False)
    report.update(
        file_name=name, n_cells=int(n_cells), n_genes=int(n_genes),
        n_duplicated_genes=dup_genes, n_duplicated_cells=dup_cells,
        gene_id_type=id_type, gene_id_evidence=id_evidence,
        value_type=value_type["kind"], value_type_evidence=value_type["evidence"],
        label_columns=labels, group_columns=groups, n_all_zero_cells=int(zero.sum()),
        **({"n_not_embedded_cells": n_not_embedded} if n_not_embedded else {}),
        warnings=list(opts.warnings),
    )
    adata.uns[_keys.INPUT_REPORT] = json_safe(report)
    genes.annotate_gene_ids(adata)  # symbols and Ensembl IDs from the file's own columns (and its warning)
    return adata


def _negative_cells_warning(adata: ad.AnnData, kind: str, opts: Options, n_examples: int = 3) -> str:
    """Negative values in a few cells of otherwise non-negative data (counts, log-normalised,
    TPM-like): which cells, which genes, and what becomes of them. Found by one pass over the rows
    (only in this case: value-type detection saw negatives in a few of the cells it sampled)."""
    n_cells, examples = 0, []
    for start, _stop, block in row_batches(adata.X):
        if sp.issparse(block):
            neg = block.data < 0
            if not neg.any():
                continue
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[neg]
            cols, vals = block.indices[neg], block.data[neg]
        else:
            rows, cols = np.nonzero(np.asarray(block) < 0)
            vals = np.asarray(block)[rows, cols]
        n_cells += int(np.unique(rows).size)
        for r, c, v in zip(rows, cols, vals):
            if len(examples) < n_examples and all(e[0] != start + r for e in examples):
                examples.append((start + int(r), int(c), float(v)))
    row, rows_word = ("cell line", "cell lines") if opts.samples else ("cell", "cells")
    shown = "; ".join(f"{row} '{adata.obs_names[r]}', gene {adata.var_names[c]}: {v:g}" for r, c, v in examples)
    what = {"counts": "counts", "log_normalized": "log-normalised values", "tpm_like": "TPM-like values"}.get(
        kind, "expression values")
    return (f"{n_cells:,} {row if n_cells == 1 else rows_word} {'has' if n_cells == 1 else 'have'} negative values, "
            f"which {what} never have (e.g. {shown}). Models that log-normalise the values leave "
            f"{'it' if n_cells == 1 else 'them'} unscored; check the export, or set the values to 0.")


def _all_zero(adata: ad.AnnData, name: str, report: dict) -> InputError:
    """Every cell is all zero: name what else the file holds (adata.raw, layers) and how to use it."""
    stored = report.get("stored_matrices") or {}
    layers = [str(k) for k in (adata.layers.keys() if len(adata.layers) else stored.get("layers", []))]
    raw = adata.raw if getattr(adata, "raw", None) is not None else None
    holds, sources = [], []
    if raw is not None:
        holds.append(f"adata.raw holds {raw.n_obs:,} x {raw.n_vars:,} values")
        sources.append("adata.raw.X")
    if layers:
        holds.append("layers: " + ", ".join(layers[:5]))
        sources += [f"adata.layers['{k}']" for k in layers[:2]]
    if not holds:
        return InputError(f"Every cell in {name} is all zero: there is no expression to score.",
                          "Check that the right file (or layer) was exported.")
    choice = sources[0] + (f" (or {' or '.join(sources[1:])})" if len(sources) > 1 else "")
    return InputError(f"Every cell in {name} is all zero in X: there is no expression to score. The file also "
                      f"holds expression elsewhere ({'; '.join(holds)}).",
                      f"Set adata.X = {choice} and save the file again.")
