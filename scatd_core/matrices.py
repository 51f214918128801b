"""Which matrix of a file the models read: X, ``adata.raw`` or a layer (one rule for every backbone).

A usual scanpy file holds several matrices of the same cells: X often holds scaled (z-scored)
values of the highly variable genes only, ``adata.raw`` the log-normalised values of all genes,
``layers['counts']`` the raw counts. A model reads the one that suits its input transform best
(:func:`choose`): counts or log-normalised values for a model that log-normalises them
(``log1p_cp10k``, ``standardize``, the foundation models), non-negative expression for a model
that takes values as they are (``none``); among equally suited ones, the one with most of the
model's genes; X when it is as good as any (nothing changes for a file with one matrix).

The user may force one (:data:`~scatd_core._keys.MATRIX` in ``uns``: ``X``, ``raw`` or
``layer:NAME``; the command line's ``--matrix``, the Data page's choice). The file itself is
never changed: the model reads an AnnData *view* of the chosen matrix (:func:`matrix_data`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import anndata as ad
import pandas as pd

from scatd_core import _keys
from scatd_core._words import percent
from scatd_core.errors import InputError

#: Layers that may hold a file's raw counts beside a normalised X, in the order they are tried
#: (then ``adata.raw``); other layers are read only when chosen by name (``layer:NAME``).
COUNT_LAYERS = ("counts", "raw_counts")
#: How the user names a matrix (``--matrix``), in words.
CHOICE_HELP = "X, raw (adata.raw) or layer:NAME (e.g. layer:counts)"

#: How well each kind of values suits a transform (larger is better; 0: the transform cannot take them).
_SUIT = {
    # counts first: log-normalised values are un-logged to them, which assumes natural-log values
    "log1p_cp10k": {"counts": 4, "log_normalized": 3, "tpm_like": 2},
    "standardize": {"counts": 4, "log_normalized": 3, "zscored": 2, "tpm_like": 1},
    "none": {"counts": 2, "log_normalized": 2, "tpm_like": 1},
    "foundation": {"counts": 3, "log_normalized": 1, "tpm_like": 1},  # scATD embedded counts
}
_WHY = {
    "log1p_cp10k": "this model log-normalises each cell's raw counts, which needs counts or log-normalised "
                   "values (never negative)",
    "standardize": "this model log-normalises each cell's raw counts and z-scores each gene itself",
    "none": "this model takes the values as they are, and was trained on expression values, which are never "
            "negative",
    "foundation": "the foundation model was made to read raw counts",
}


@dataclass
class Candidate:
    """One matrix of the file: ``name`` as the user gives it (``X``, ``raw``, ``layer:counts``),
    ``where`` as it is written in the file (``adata.raw``, ``layers['counts']``)."""

    name: str
    where: str
    matrix: object
    var: pd.DataFrame
    kind: str = "unknown"
    #: What is wrong with its values, for a matrix besides X (X's are checked on read): cells with
    #: negative values (``n_cells_negative``), missing or infinite values (``n_non_finite``).
    faults: dict | None = None

    @property
    def n_genes(self) -> int:
        return int(self.matrix.shape[1])


#: Kinds of values no model reads (never chosen automatically, refused when chosen).
UNREADABLE = {"not_real": "complex or other non-real numbers", "boolean": "True/False values"}


def _words(kind: str) -> str:
    from scatd_core.preprocess import value_kind_words

    return UNREADABLE.get(kind) or value_kind_words(kind)


def _values(kind: str) -> str:
    """``raw counts``, ``z-scored values``: what a matrix holds, in a sentence."""
    return "raw counts" if kind == "counts" else UNREADABLE.get(kind) or f"{_words(kind)} values"


_KINDS: dict[int, tuple] = {}  # id(matrix) -> (weakref, kind, shape, faults): a matrix is judged once
#: A matrix on disk (backed: adata.raw's, whose object is made anew at each look) -> (kind, faults), by
#: :func:`_on_disk_key`: judged once per file, not on every rerun of a page (each a scan of ~500 cells read
#: from the file); a new upload (another path), or the file written anew (size, time), is judged again.
_KINDS_ON_DISK: dict[tuple, tuple] = {}


def _on_disk_key(matrix) -> tuple | None:
    """``(file, size, modification time, place in the file, shape)`` of a matrix read from an HDF5 file
    (an h5py dataset, or anndata's sparse dataset on one), which names the same values however often
    the matrix object is made again; ``None`` for a matrix in memory (or a file that cannot be seen)."""
    import os

    node = getattr(matrix, "group", matrix)  # anndata's sparse dataset: its HDF5 group
    try:
        filename, where = node.file.filename, node.name
        if not filename or not isinstance(where, str):
            return None
        stat = os.stat(filename)
        return (os.path.realpath(filename), stat.st_size, stat.st_mtime_ns, where, tuple(matrix.shape))
    except Exception:  # in memory (no file), a closed file: judged as before
        return None


def _faults(matrix, evidence: dict) -> dict:
    """Negative and non-finite values of a matrix besides X: counted over all its values when it is in
    memory (one vectorised pass over the stored values), else from the sampled cells' evidence."""
    import numpy as np
    import scipy.sparse as sp

    values = matrix.data if sp.issparse(matrix) else matrix if isinstance(matrix, np.ndarray) else None
    if values is None:  # on disk (backed): the cells value-type detection sampled
        return {k: int(evidence.get(k) or 0) for k in ("n_cells_negative", "n_cells_non_finite") if evidence.get(k)}
    out = {}
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values)
        if bad.any():
            out["n_non_finite"] = int(bad.sum())
    negative = values < 0
    if negative.any():
        rows = (np.searchsorted(matrix.indptr, np.flatnonzero(negative), side="right") - 1) \
            if sp.issparse(matrix) and matrix.format == "csr" else \
            (np.nonzero(negative)[0] if not sp.issparse(matrix) else None)
        out["n_cells_negative"] = int(np.unique(rows).size) if rows is not None else int(negative.sum())
    return out


def _kind_of(adata: ad.AnnData, name: str, matrix) -> tuple[str, dict]:
    """``(kind of values, faults)``; a matrix of complex or boolean values is ``not_real`` or
    ``boolean``, which no model reads (:data:`UNREADABLE`)."""
    import numpy as np

    from scatd_core.preprocess import detect_value_type

    if name == "X":
        kind = adata.uns.get(_keys.INPUT_REPORT, {}).get("value_type")
        if kind is not None:
            return str(kind), {}
    dtype = np.dtype(getattr(matrix, "dtype", np.float64))
    if dtype.kind == "b":
        return "boolean", {}
    if dtype.kind not in "iuf":
        return "not_real", {}
    hit = _KINDS.get(id(matrix))
    if hit is not None and hit[0]() is matrix and hit[2] == tuple(matrix.shape):
        return hit[1], hit[3]
    on_disk = _on_disk_key(matrix)
    if on_disk is not None and on_disk in _KINDS_ON_DISK:
        return _KINDS_ON_DISK[on_disk]
    judged = detect_value_type(matrix, n_cells=500)
    kind = judged["kind"]
    faults = _faults(matrix, judged.get("evidence") or {}) if name != "X" else {}
    if on_disk is not None:
        if len(_KINDS_ON_DISK) > 256:
            _KINDS_ON_DISK.clear()
        _KINDS_ON_DISK[on_disk] = (kind, faults)
    try:
        if len(_KINDS) > 256:
            _KINDS.clear()
        _KINDS[id(matrix)] = (weakref.ref(matrix), kind, tuple(matrix.shape), faults)
    except TypeError:  # no weak reference to it: judged again next time
        pass
    return kind, faults


#: At most this many layers are judged for ``all_layers`` (each costs a pass over sampled cells).
MAX_JUDGED_LAYERS = 20


def candidates(adata: ad.AnnData, *, all_layers: bool = False, also: str | None = None) -> list[Candidate]:
    """The matrices of ``adata`` a model may read: X, the count layers (:data:`COUNT_LAYERS`; every
    layer with ``all_layers``), ``adata.raw``. Data read from disk in parts (backed) have them all
    too: ``adata.raw``'s values are read from the file in row blocks as X's are (the layers are in
    memory), and the Ray workers read the chosen matrix from the file (:mod:`scatd_core.scaleout`)."""
    out = [Candidate("X", "X", adata.X, adata.var)]
    names = [n for n in COUNT_LAYERS if n in adata.layers]
    if all_layers:  # the first MAX_JUDGED_LAYERS others (see :func:`layers_not_judged`)
        names += [str(n) for n in list(adata.layers.keys())[:MAX_JUDGED_LAYERS + len(names)] if n not in names]
        names = names[:max(MAX_JUDGED_LAYERS, len(COUNT_LAYERS))]
    if also and also.startswith("layer:") and also[6:] in adata.layers and also[6:] not in names:
        names.append(also[6:])
    for name in names:
        if adata.layers[name].shape == adata.shape:
            out.append(Candidate(f"layer:{name}", f"layers['{name}']", adata.layers[name], adata.var))
    raw = getattr(adata, "raw", None)
    if raw is not None and raw.n_obs == adata.n_obs:
        from scatd_core.genes import mapped_raw_var, raw_has_own_genes

        # raw's own genes (other genes, or Ensembl IDs beside X's symbols) mapped to symbols as X's are
        out.append(Candidate("raw", "adata.raw", raw.X, mapped_raw_var(adata) if raw_has_own_genes(adata)
                             else adata.var))
    for c in out:
        c.kind, c.faults = _kind_of(adata, c.name, c.matrix)
    return out


def layers_not_judged(adata: ad.AnnData) -> int:
    """How many layers :func:`candidates` with ``all_layers`` leaves out (over :data:`MAX_JUDGED_LAYERS`)."""
    return max(len(adata.layers) - MAX_JUDGED_LAYERS, 0)


def parse_choice(text: str | None) -> str | None:
    """A user's matrix choice as :func:`candidates` names it (``None``/``auto``: no choice);
    :class:`InputError` for anything else."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    t = str(text).strip()
    if t.lower() == "x":
        return "X"
    if t.lower() in ("raw", "adata.raw"):
        return "raw"
    if t.lower().startswith("layer:") and t[6:].strip():
        return "layer:" + t[6:].strip()
    if t.startswith("layers[") and t.endswith("]"):
        return "layer:" + t[7:-1].strip("'\"")
    raise InputError(f"Unknown matrix '{text}'.", f"Give {CHOICE_HELP}, or auto.")


def forced(adata: ad.AnnData) -> str | None:
    """The matrix the user chose for this data (``uns['scatd_matrix']``), or ``None``."""
    value = adata.uns.get(_keys.MATRIX)
    return parse_choice(str(value)) if value is not None else None


def _coverage(adata: ad.AnnData, c: Candidate, genes) -> float:
    from scatd_core.genes import align_genes, detect_id_type, names_for

    if not genes:
        return 1.0
    view = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(0).astype(str)), var=c.var)
    matched = align_genes(names_for(view, detect_id_type(genes)), genes)
    return matched.n_matched / max(matched.n_model, 1)


@dataclass
class Choice:
    """The matrix a model reads and why (``note``: ``None`` when it is X, chosen as the only one or as
    good as any)."""

    candidate: Candidate
    note: str | None
    chosen_by_user: bool
    usable: list[Candidate]

    @property
    def name(self) -> str:
        return self.candidate.name

    def record(self) -> dict:
        """JSON-safe: what is recorded with a prediction and shown."""
        c = self.candidate
        return {"matrix": c.name, "where": c.where, "value_type": c.kind, "n_genes": c.n_genes,
                "chosen_by": "user" if self.chosen_by_user else "auto", **({"note": self.note} if self.note else {})}


def _unreadable(c: Candidate) -> str | None:
    """Why no model may read ``c`` (non-real or True/False values, missing or infinite ones), or ``None``."""
    if c.kind in UNREADABLE:
        return f"{c.where} holds {UNREADABLE[c.kind]}, not expression values"
    n = (c.faults or {}).get("n_non_finite") or (c.faults or {}).get("n_cells_non_finite")
    if n:
        return f"{c.where} holds missing (NaN) or infinite values ({n:,} found)"
    return None


def _negative_words(c: Candidate) -> str:
    """A sentence on the negative values of a matrix besides X (empty when it has none)."""
    n = (c.faults or {}).get("n_cells_negative")
    if not n or c.kind in ("zscored", "unknown"):
        return ""
    return (f" {c.where} has negative values in {n:,} {'cell' if n == 1 else 'cells'}, which {_values(c.kind)} never "
            f"have: models that log-normalise the values leave {'it' if n == 1 else 'them'} unscored; check the "
            "export, or set the values to 0.")


def choose(adata: ad.AnnData, transform: str, genes=None, *, choice: str | None = None) -> Choice:
    """The matrix of ``adata`` a model with ``transform`` (``log1p_cp10k``, ``standardize``,
    ``none``; ``foundation`` for the foundation models) and input ``genes`` reads.

    ``choice`` (else the data's own, :func:`forced`): the user's; :class:`InputError` when the file
    has no such matrix. Otherwise the best suited (:data:`_SUIT`), then the one with most of the
    model's genes, X first on a tie."""
    choice = parse_choice(choice) if choice is not None else forced(adata)
    every = candidates(adata, also=choice)
    suit = _SUIT.get(transform, _SUIT["none"])
    if choice is not None:
        found = [c for c in every if c.name == choice]
        if not found:
            have = ", ".join(c.name for c in every)
            raise InputError(f"The data have no matrix '{choice}' (they have: {have}).",
                             f"Choose one of them ({CHOICE_HELP}), or auto.")
        c = found[0]
        bad = _unreadable(c)
        if bad is not None:
            raise InputError(f"The matrix chosen for the models cannot be read by them: {bad}.",
                             f"Choose another one ({CHOICE_HELP}), or auto.")
        note = None if c.name == "X" else (f"The model input is taken from {c.where} ({_values(c.kind)}, "
                                           f"{c.n_genes:,} genes), as chosen." + _negative_words(c))
        return Choice(c, note, True, [c])
    if len(every) == 1:  # X alone: nothing to choose
        return Choice(every[0], None, False, [every[0]] if suit.get(every[0].kind, 0) > 0 else [])
    scored = [(suit.get(c.kind, 0) if _unreadable(c) is None else 0, _coverage(adata, c, genes), -i, c) for i, c in enumerate(every)]
    best = max(scored, key=lambda s: s[:3])
    usable = [s[3] for s in scored if s[0] > 0]
    x = scored[0]
    c = best[3]
    if c.name == "X":
        return Choice(c, None, False, usable)
    why = _WHY.get(transform, _WHY["none"])
    if best[0] > x[0] and c.kind == "counts" and x[3].kind == "log_normalized":
        reason = ("this model log-normalises each cell's raw counts itself; X's log-normalised values would have "
                  "to be un-logged back to counts first, which assumes natural-log values")
    elif best[0] > x[0]:
        reason = f"{why}; X holds {_values(x[3].kind)}"
    else:
        reason = f"it has more of the model's genes ({percent(best[1])}, against {percent(x[1])} in X)"
    note = (f"The model input is taken from {c.where} ({_values(c.kind)}, {c.n_genes:,} genes) rather than "
            f"X ({_values(x[3].kind)}, {x[3].n_genes:,} genes): {reason}. The file itself is not changed."
            + _negative_words(c))
    return Choice(c, note, False, usable)


def matrix_data(adata: ad.AnnData, choice: Choice) -> ad.AnnData:
    """An AnnData of the chosen matrix (same cells, its genes, the read report saying what it holds);
    ``adata`` itself for X. ``adata`` is not changed."""
    c = choice.candidate
    if c.name == "X":
        return adata
    report = dict(adata.uns.get(_keys.INPUT_REPORT, {}))
    report.pop("value_type_evidence", None)
    report["value_type"] = c.kind
    report["matrix"] = c.where
    return ad.AnnData(X=c.matrix, obs=pd.DataFrame(index=adata.obs_names.copy()), var=c.var.copy(),
                      uns={_keys.INPUT_REPORT: report})


def for_model(adata: ad.AnnData, transform: str, genes=None) -> tuple[ad.AnnData, Choice]:
    """``(data the model reads, the choice)``: :func:`choose` then :func:`matrix_data`."""
    choice = choose(adata, transform, genes)
    return matrix_data(adata, choice), choice


def counts_candidate(adata: ad.AnnData) -> Candidate | None:
    """The file's raw counts: X when it holds counts, else the first count layer or ``adata.raw``
    that does (what QC counts per cell and genes per cell are computed from); ``None``: none."""
    for c in candidates(adata):
        if c.kind == "counts" and (c.name == "X" or c.var is adata.var or c.n_genes >= adata.n_vars):
            return c
    return None


#: The values QC metrics mean something for (larger is better; z-scored values never: every gene is
#: "detected" in every cell and their sums say nothing of a cell's quality), as :func:`qc_candidate` ranks them.
_QC_SUIT = {"counts": 3, "log_normalized": 2, "tpm_like": 1}


def qc_candidate(adata: ad.AnnData) -> tuple[Candidate, bool]:
    """``(the matrix the QC metrics are computed from, whether the user chose it)``: the models' matrix.

    The matrix chosen for the models (``uns['scatd_matrix']``: the Data page's 'Matrix for the models',
    ``--matrix``) when it holds expression values (counts, log-normalised, TPM-like); else the file's
    raw counts (:func:`counts_candidate`), which a model that log-normalises values reads first; else
    the log-normalised (then TPM-like) values a model reads beside a scaled X (X first on a tie); else
    X (z-scored values with nothing else: no QC means anything, the caller says so). A backed file's
    ``adata.raw`` stays on disk: the metrics read it in row blocks."""
    every = None
    try:
        choice = forced(adata)
    except InputError:  # a choice no matrix answers to: refused when a model reads it, ignored here
        choice = None
    if choice is not None:
        every = candidates(adata, also=choice)
        found = [c for c in every if c.name == choice and _unreadable(c) is None and c.kind in _QC_SUIT]
        if found:
            return found[0], True
    counts = counts_candidate(adata)
    if counts is not None:
        return counts, False
    every = every if every is not None else candidates(adata)
    scored = [(_QC_SUIT.get(c.kind, 0) if _unreadable(c) is None else 0, -i, c) for i, c in enumerate(every)]
    best = max(scored, key=lambda s: s[:2])
    return (best[2] if best[0] > 0 else every[0]), False


def qc_words(c: Candidate, chosen_by_user: bool, x_kind=None, totals_said: bool = False) -> str | None:
    """What the QC metrics were computed from, in a sentence for the Data page
    (``None`` for X: nothing to say), e.g. "Computed from the raw counts in adata.raw (X holds z-scored
    values)." ``x_kind``: what X holds, when known. ``totals_said``: as for :func:`unlogged_qc`."""
    if c.name == "X":
        return None
    x = f"X holds {_values(str(x_kind))}" if x_kind and x_kind != "unknown" else ""
    why = "the matrix chosen for the models" if chosen_by_user else ""
    said = "; ".join(part for part in (why, x) if part)
    out = f"Computed from the {_values(c.kind)} in {c.where}" + (f" ({said})" if said else "") + "."
    if c.kind == "log_normalized":
        out += " " + unlogged_qc(totals_said)
    elif c.kind != "counts":
        out += " 'Total counts' is then the sum of these values per cell, so judge its thresholds with care."
    return out


#: What QC does with log-normalised values (:func:`scatd_core.preprocess.qc_metrics`), in words: the
#: shares and genes (:data:`UNLOGGED_QC_SHARES`), then the totals (:data:`UNLOGGED_QC_TOTALS`).
UNLOGGED_QC_SHARES = ("% mitochondrial is computed on the un-logged normalised values, so it is the same share as "
                      "in the raw counts, and genes detected are those of the counts.")
UNLOGGED_QC_TOTALS = ("'Total counts' is then about the same in every cell (the total each cell was normalised to, "
                      "e.g. 10,000): it says nothing about a cell's quality here, so no bound is suggested for it.")
UNLOGGED_QC = f"{UNLOGGED_QC_SHARES} {UNLOGGED_QC_TOTALS}"
#: :data:`UNLOGGED_QC_TOTALS` where the QC plots' note says it already ("Total counts is 10,000 in every
#: cell (the values are normalised to this total) ...": :func:`scatd_core.pl.qc_violin`).
UNLOGGED_QC_TOTALS_SAID = "No bound is suggested for total counts: the note under the plots says why."


def unlogged_qc(totals_said: bool = False) -> str:
    """What QC does with log-normalised values, in words (:data:`UNLOGGED_QC`); ``totals_said``: the
    QC plots' note says what the totals are (:func:`scatd_core.pl.qc_notes_say_totals`), so the words
    do not say it again (the Data page said it twice)."""
    return f"{UNLOGGED_QC_SHARES} {UNLOGGED_QC_TOTALS_SAID if totals_said else UNLOGGED_QC_TOTALS}"


def fuller_elsewhere(adata: ad.AnnData, choice: Choice | None, genes) -> str | None:
    """When the user chose a matrix (``uns['scatd_matrix']``, ``--matrix``) and another matrix of the
    same file holds more of the model's ``genes``: a sentence saying so, for a refusal on too few
    genes (the user's choice, not the file, is then the cause); else ``None``."""
    if choice is None or not choice.chosen_by_user or not genes:
        return None
    genes = [str(g) for g in genes]
    best, most = None, _coverage(adata, choice.candidate, genes)
    for c in candidates(adata, all_layers=True):
        share = _coverage(adata, c, genes)
        if c.name != choice.name and share > most:
            best, most = c, share
    if best is None:
        return None
    return (f"This file's {best.where} has {round(most * len(genes)):,} of the model's {len(genes):,} genes, but "
            f"{choice.candidate.where} "
            "was chosen for the models (the Data page's 'Matrix for the models', or --matrix): choose auto or "
            f"{best.where} there.")


def describe(c: Candidate) -> str:
    """``adata.raw (log-normalised, 2,932 genes)``."""
    return f"{c.where} ({_words(c.kind)}, {c.n_genes:,} genes)"


__all__ = ["COUNT_LAYERS", "CHOICE_HELP", "Candidate", "Choice", "candidates", "choose", "counts_candidate",
           "describe", "for_model", "forced", "fuller_elsewhere", "matrix_data", "parse_choice", "qc_candidate",
           "qc_words", "UNLOGGED_QC", "unlogged_qc"]
