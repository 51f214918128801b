"""The exact model input of every cell: built once per (data, model), used by predict and explain.

:class:`ModelInput` turns an AnnData into what a model's first layer sees, batch by batch:

1. **Source.** Expression models (Dist_VAE) read ``X`` matched to the model's genes **by name**
   (:func:`scatd_core.genes.align_genes`: missing genes are 0, extra genes ignored, duplicated
   names summed; Ensembl data through ``var['scatd_symbol']``). Embedding models (VAE_sf,
   VAE_gf) read ``obsm['X_scfoundation' | 'X_geneformer']`` or ``X`` by position.
2. **Usable cells.** A cell is scored only if its values can go through the model's transform:
   finite, not absurdly large (:data:`MAX_ABS_VALUE`), non-negative for a log transform, with
   some expression in the model's genes, and inside the caller's mask (QC). With a library size
   over all the data's genes, those checks cover every gene it sums (a negative, NaN or infinite
   value in a gene the model does not read would give the cell a wrong library size). Every other cell
   is counted under its reason and keeps its row, flagged "not scored", or "filtered (QC)" /
   "left out (mask)" when the QC filter / a mask column of the user's own left it out.
   What the matrix holds (:func:`value_type`) is decided once for the whole dataset, from the
   read report or a sample of rows that sets a few faulty cells aside
   (:func:`scatd_core.preprocess.detect_value_type`), so a faulty cell, sampled or not, is
   left out by itself and changes nothing for the others.
3. **Transform** (the bundle's ``input_transform``): ``log1p_cp10k`` per cell over the model's
   genes, applied to the stored values of sparse data before densifying; values already
   log-normalised are un-logged first (``expm1``, :func:`scatd_core.preprocess.unlogs`), so
   they get the input their counts would give instead of a second log; ``standardize``
   (models trained here): raw counts log-normalised, then every gene z-scored over the usable
   cells; AdaIN for VAE_sf/VAE_gf: each feature standardised over the usable cells and re-scaled
   to the bundle's bulk statistics (population sd, eps on the source sd only, reference §5).
   The library size a cell's counts are scaled by is the manifest's ``library_size``
   (:data:`LIBRARY_SIZES`): ``"all genes"`` (models trained here since it was recorded) sums
   the cell's counts over every gene of the data, so counts and their log1p(CP10k) over the whole
   transcriptome give the same model input; ``"model genes"`` (absent: the published
   ``log1p_cp10k`` models, as scFoundation's preprocessing, and older trained models) sums
   them over the model's genes only. The whole-row sums are taken from the block each batch
   reads anyway, before its columns are cut to the model's genes: no extra pass over X.

Passes over X: dataset statistics (AdaIN, ``standardize``) need one pass before the first
batch, which also finds the usable cells. Without them (``log1p_cp10k``, ``none``) a
prediction is the only pass: the usable cells are found and the mean model input (the
``mean`` attribution baseline) is summed as the batches go, and :attr:`ModelInput.usable` or
:meth:`ModelInput.input_mean` read only the batches no pass has seen yet.

Sparse data stay sparse up to the model: ``batches(sparse=True)`` yields a batch as CSR when
its model input is sparse (``log1p_cp10k`` or ``none`` of sparse data) and at most
:data:`SPARSE_MAX_DENSITY` non-zero, for the first layer's sparse product
(:func:`scatd_core.nn.sparse.sparse_linear`); denser batches are made dense for the GEMM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp

from scatd_core import _keys
from scatd_core._matrix import MeanVar, block_moments, log1p_cp10k
from scatd_core.errors import DataNotScorable, InputError
from scatd_core.genes import GeneAlignment, align_genes, detect_id_type, id_type_evidence, names_for
from scatd_core.preprocess import ALL_GENES, LIBRARY_SIZES, MODEL_GENES, UNLOG_NOTE, detect_value_type, unlogs

ADAIN_EPS = 1e-8  # on the source std only, as the original
#: Values beyond this magnitude are not expression (overflowing sums, corrupt exports): the cell
#: is not scored ("overflow") rather than scored on numbers no model was trained on.
MAX_ABS_VALUE = 1e30
#: Log-normalised values above this are beyond :data:`MAX_ABS_VALUE` once un-logged (``expm1``).
MAX_LOG_VALUE = float(np.log(MAX_ABS_VALUE))
#: The foundation model whose cell embeddings each embedding backbone takes.
FOUNDATION_MODELS = {"vae_sf": "scFoundation", "vae_gf": "Geneformer"}
#: Reasons a cell is not scored, in the order they are checked.
REASONS = ("filtered", "not_embedded", "missing_values", "non_finite", "overflow", "negative_values",
           "no_expression")
#: Sparse batches up to this fraction of non-zero model inputs go to the first layer sparse;
#: denser ones are made dense. The sparse product's work follows the non-zeros and the GEMM's
#: the whole matrix; the sparse product is as fast as the GEMM at about 30 % non-zero on 2 AMD
#: EPYC cores (AVX2; measured with the earlier, gene-major kernel) and about 22 % on 2 Intel Xeon
#: cores (AVX-512, a faster GEMM) (``benches/bench_predict.py --densities``).
SPARSE_MAX_DENSITY = 0.25
#: Cells named per reason a cell is not scored (the first ones, in the data's order).
EXAMPLES_PER_REASON = 3
REASON_TEXT = {"filtered": "filtered by QC",
               "not_embedded": "no embedding (an all-NaN row: the foundation model found no expressed gene of its "
                               "vocabulary, or a total count of 1 or less)",
               "missing_values": "the embedding has missing values (NaN in some of its features)",
               "non_finite": "NaN or infinite values",
               "overflow": f"values beyond ±{MAX_ABS_VALUE:.0e}",
               "negative_values": "negative values, which a log transform cannot take",
               "no_expression": "no expression in the model's genes",
               "non_finite_output": "the model's output was not a finite number",
               # not a reason of ModelInput: why the foundation model left a cell with expressed genes unembedded
               "non_finite_embedding": "the foundation model gave NaN or infinite values for cells that had expressed "
                                       "genes, so the fault is in the model, not the data: its weights are likely "
                                       "damaged (check or re-install the backbone files), or, on a GPU in half "
                                       "precision, a value overflowed (try the CPU)"}


class ColumnMask(np.ndarray):
    """A boolean array over the cells that remembers the obs column it came from (``column``), so
    the cells it leaves out are said to be left out by that column, not by the QC filter."""
    column: str | None = None


def column_mask(values, column: str | None) -> np.ndarray:
    """``values`` as a boolean array; a :class:`ColumnMask` naming ``column`` when one is given."""
    out = np.asarray(values, dtype=bool)
    if column is None:
        return out
    out = out.view(ColumnMask)
    out.column = str(column)
    return out


def mask_column(mask) -> str | None:
    """The obs column a mask came from: its name when given as one, or the ``column`` a command
    line's ``--mask`` array carries; ``None`` for a plain array (the app's QC filter)."""
    if isinstance(mask, str):
        return mask
    column = getattr(mask, "column", None)
    return str(column) if column else None


def mask_reason_text(mask) -> str:
    """Why a mask's cells were left out, in words: ``filtered by QC`` for the app's QC filter
    (``obs['scatd_qc_pass']`` or a plain array), ``left out by the mask column 'keep'`` for the
    user's own column. The reason's code stays ``filtered`` either way."""
    from scatd_core._keys import QC_PASS

    column = mask_column(mask)
    if column is None or column == QC_PASS:
        return REASON_TEXT["filtered"]
    return f"left out by the mask column '{column}'"


def mask_label(mask) -> str:
    """The called label of the cells a mask leaves out (``obs['<p>_label']``): ``filtered (QC)``
    for the app's QC filter (``obs['scatd_qc_pass']`` or a plain array), ``left out (mask)`` for
    the user's own column (no QC ran); as :func:`mask_reason_text` tells them apart."""
    column = mask_column(mask)
    return _keys.FILTERED if column is None or column == _keys.QC_PASS else _keys.MASKED


def run_mask(run: Mapping) -> str | None:
    """The mask column a prediction's record (``uns['<p>']``) names, ``None`` for the app's QC
    filter given as an array (recorded ``array``) or no mask (``none``)."""
    column = (run.get("qc") or {}).get("mask")
    return None if column in (None, "array", "none") else str(column)


def left_out_label(run: Mapping) -> str:
    """The label of the cells a prediction's mask left out (:func:`mask_label` of its record):
    what the counts of those cells are called on the Predict and Cells pages and in the report."""
    return mask_label(run_mask(run))


def no_cell_scored_error(reasons: Mapping[str, int], filtered_text: str) -> InputError:
    """The error of a run that can score no cell, with the count per reason; the cells a mask left
    out are said as it left them out (``filtered_text``: the QC filter, or the user's mask column),
    and so is where to look."""
    words = {**REASON_TEXT, "filtered": filtered_text}
    detail = "; ".join(f"{words.get(k, k)}: {int(v):,}" for k, v in reasons.items() if v)
    where = "the QC filter" if filtered_text == REASON_TEXT["filtered"] else \
        "the mask column, whose True cells are the only ones scored"
    return DataNotScorable(f"No cell can be scored ({detail}).", f"Check the data's values and gene names, and {where}.")


#: The words of a reason for an embedding model (VAE_sf/VAE_gf), where they differ from
#: :data:`REASON_TEXT`: its cells reach it through a foundation model, which does not take them.
EMBEDDING_REASON_TEXT = {
    "negative_values": "negative expression values, which counts and log-normalised values never have, so the "
                       "foundation model was not given them",
    "non_finite": "NaN or infinite values (in their expression, so the foundation model was not given them, or in "
                  "the embeddings given)"}


@dataclass
class InputSpec:
    """What a model takes as input (derived from a bundle, or built by training)."""

    backbone: str
    input_kind: str  # "expression" | "embedding"
    input_dim: int
    transform: str  # "none" | "log1p_cp10k" | "standardize"
    genes: list[str] | None = None
    style_mean: np.ndarray | None = None
    style_std: np.ndarray | None = None
    name: str = "model"
    library_size: str = MODEL_GENES  # one of LIBRARY_SIZES: the genes a cell's counts are summed over

    @classmethod
    def of(cls, bundle) -> "InputSpec":
        return cls(backbone=bundle.backbone, input_kind=bundle.input_kind,
                   input_dim=bundle.architecture.input_dim, transform=bundle.manifest["input_transform"],
                   genes=bundle.genes, style_mean=bundle.style_mean, style_std=bundle.style_std, name=bundle.name,
                   library_size=bundle.manifest.get("library_size", MODEL_GENES))


@dataclass(frozen=True)
class DatasetStatistics:
    """What a :class:`ModelInput` learns from the whole dataset before its first batch.

    ``log_normalise``: whether the values are log1p-CP10k-normalised first (decided once from the
    whole dataset); ``unlog``: whether they are un-logged (``expm1``) before that, being already
    log-normalised (:func:`scatd_core.preprocess.unlogs`); ``moments``: mean and population sd of
    the pre-scaling values over the usable cells (AdaIN, ``standardize``). Computed once and given
    to the ModelInput of every shard of a dataset (:mod:`scatd_core.scaleout`), so each shard
    scales exactly as one pass would.
    """

    log_normalise: bool
    moments: tuple[np.ndarray, np.ndarray] | None = None
    unlog: bool = False


@dataclass
class Source:
    """Where the model input comes from: X by gene name, or an embedding by position."""

    matrix: object  # AnnData.X, a backed dataset, or an obsm array
    alignment: GeneAlignment | None
    description: str
    columns: np.ndarray | None = field(default=None, repr=False)  # data column of each model feature
    in_order: bool = False  # the data's columns are the model's features, in order: no gather
    #: embeddings: ``{reason: rows}`` of the cells the foundation model left out for NaN, infinite or
    #: negative expression values (their rows are all NaN), counted under that reason, not "no embedding"
    faulty: dict = field(default_factory=dict, repr=False)

    def raw(self, start: int, stop: int, totals: np.ndarray | None = None, unlog: bool = False,
            negative_at: np.ndarray | None = None):
        """Rows ``[start, stop)`` in model feature order, before any transform (sparse stays sparse).

        ``totals``: a float64 array of ``stop - start`` values, filled with each row's sum over
        all the data's columns (the cell's library size), from the block as read, before its
        columns are cut to the model's; of the values un-logged (``expm1``) with ``unlog``.
        ``negative_at``: an int64 array of ``stop - start`` values, filled (with ``totals``) with
        the data column of a negative value of each row, among all the data's columns (-1: none),
        which would make that library size a wrong one.
        """
        block = self.matrix[start:stop]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
        else:
            block = np.asarray(block)
        if totals is not None:
            summed = _expm1(block, copy=True) if unlog else block
            totals[:] = np.asarray(summed.sum(axis=1, dtype=np.float64)).ravel()
            if negative_at is not None:
                negative_at[:] = _first_negative(block)
        if self.alignment is None or self.in_order:
            return block
        if self.columns is not None:  # one data column per model gene: a gather, no product
            if sp.issparse(block):
                return _gather_columns(block, self.columns)
            out = np.zeros((block.shape[0], self.columns.size), dtype=block.dtype)
            present = self.columns >= 0
            out[:, present] = block[:, self.columns[present]]
            return out
        return block @ self.alignment.matrix


def _first_negative(block) -> np.ndarray:
    """Per row of ``block``, the column of one of its negative values (-1 where it has none)."""
    n = block.shape[0]
    out = np.full(n, -1, dtype=np.int64)
    if sp.issparse(block):
        negative = block.data < 0
        if negative.any():
            rows = np.repeat(np.arange(n), np.diff(block.indptr))[negative]
            first_rows, first = np.unique(rows, return_index=True)
            out[first_rows] = block.indices[negative][first]
        return out
    with np.errstate(invalid="ignore"):
        negative = np.asarray(block) < 0
    has = negative.any(axis=1)
    out[has] = negative[has].argmax(axis=1)
    return out


def _gather_columns(block: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """``block`` with its columns re-ordered to ``columns`` (-1: an all-zero column)."""
    present = np.flatnonzero(columns >= 0)
    mapping = np.full(block.shape[1], -1, dtype=np.int64)
    mapping[columns[present]] = present
    new_cols = mapping[block.indices]
    keep = new_cols >= 0
    kept_before = np.concatenate([[0], np.cumsum(keep)])  # kept entries before each stored value
    indptr = kept_before[block.indptr]
    # Left in the data's column order within a row (valid CSR; nothing downstream needs them sorted)
    return sp.csr_matrix((block.data[keep], new_cols[keep].astype(block.indices.dtype), indptr),
                         shape=(block.shape[0], columns.size))


def model_source(adata: ad.AnnData, spec: InputSpec) -> Source:
    """The :class:`Source` of ``spec``'s input in ``adata``; :class:`InputError` when there is none."""
    if spec.input_kind == "expression":
        model_type = detect_id_type(spec.genes)
        alignment = align_genes(names_for(adata, model_type), spec.genes)
        if alignment.n_matched == 0:
            raise _no_gene_matched(adata, spec, alignment)
        columns = _one_to_one_columns(alignment)
        in_order = columns is not None and adata.n_vars == columns.size and \
            np.array_equal(columns, np.arange(columns.size))
        return Source(adata.X, alignment, f"{alignment.n_matched:,} of {alignment.n_model:,} model genes",
                      columns, in_order)
    key = _keys.FOUNDATION_EMBEDDING.get(spec.backbone)
    if key in adata.obsm and np.asarray(adata.obsm[key]).shape[1] == spec.input_dim:
        faulty = {}
        if _keys.FOUNDATION in adata.uns:  # computed here: why some cells have none
            from scatd_core.foundation._embed import faulty_reasons

            faulty = faulty_reasons(adata, spec.backbone)
        return Source(np.asarray(adata.obsm[key]), None, f"obsm['{key}']", faulty=faulty)
    if adata.n_vars == spec.input_dim:
        return Source(adata.X, None, f"X ({adata.n_vars} embedding features, by position)")
    raise embedding_width_error(adata, spec)


def _no_gene_matched(adata: ad.AnnData, spec: InputSpec, alignment: GeneAlignment) -> InputError:
    """Why none of the data's genes is a model gene, with what to do: Ensembl IDs, a transposed
    table (the data's "genes" are cell names, or its cells' names are the model's genes)."""
    example = ", ".join(map(str, adata.var_names[:3]))
    message = (f"None of the {adata.n_vars:,} genes in the data (e.g. {example}) is among the model's "
               f"{alignment.n_model:,} input genes (e.g. {', '.join(spec.genes[:3])}).")
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    if report.get("format") == "npy":  # cell embeddings by position, not genes
        return InputError(f"The data are cell embeddings (.npy, {adata.n_vars:,} features per cell); this model "
                          f"takes gene expression ({alignment.n_model:,} genes).",
                          "Use a VAE_sf or VAE_gf model for embeddings (`scatd models` lists them), or give the "
                          "expression matrix (h5ad, 10x or CSV of counts) as --input.",
                          app_hint="Choose a VAE_sf or VAE_gf model for embeddings, or upload the expression matrix "
                                   "on the Data page.")
    data_type = report.get("gene_id_type") or detect_id_type(adata.var_names)
    var_ev = id_type_evidence(adata.var_names)
    model_genes = set(map(str, spec.genes))
    obs_sample = [str(n) for n in adata.obs_names[:5000]]
    obs_match = sum(n in model_genes for n in obs_sample)
    if var_ev.get("n") and (var_ev["cell_name"] + var_ev["barcode"] >= 0.5 or obs_match >= max(1, len(obs_sample) // 10)):
        why = (f"the cells' names match {obs_match:,} of the model's genes" if obs_match
               else f"the data's genes look like cell names (e.g. {example})")
        return InputError(message + f" The table may be transposed: {why}.",
                          "Read it with --orientation genes_x_cells (rows are genes).",
                          app_hint="Choose 'rows are genes' under Table orientation on the Data page and upload it "
                                   "again.")
    model_upper = {str(g): str(g) for g in spec.genes if str(g) == str(g).upper()}
    var_sample = [str(n) for n in adata.var_names[:20_000]]
    lower_hits = [n for n in var_sample if n != n.upper() and n.upper() in model_upper]
    if len(lower_hits) >= max(1, min(len(var_sample), alignment.n_model) // 10):
        ex = lower_hits[0]
        return DataNotScorable(message + f" Your gene names are lower-case (e.g. {ex}); the model's are upper-case "
                          f"human symbols ({ex.upper()}), and {len(lower_hits):,} would match upper-cased.",
                          "If your data are human, upper-case the names (in Python: adata.var_names = "
                          "adata.var_names.str.upper(), then save the data again). Mouse data need human orthologues "
                          "instead, not upper-casing.")
    if data_type in ("ensembl", "mixed"):
        return DataNotScorable(message, "The data's genes look like Ensembl IDs: give the symbols so they can be matched "
                                   "(--biomart with a BioMart table of 'Gene stable ID' and 'Gene name', or a file "
                                   "that carries them).",
                          app_hint="The data's genes look like Ensembl IDs: give the symbols so they can be matched "
                                   "(a BioMart table on the Data page, or a file that carries them).")
    return DataNotScorable(message, "Check that the data uses human gene symbols, like the model.")


def embedding_width_source(width: int) -> str | None:
    """Which published foundation model gives cell embeddings ``width`` wide, in words (``None``:
    none): scFoundation's 3,072 (pool 'all', 4 x 768), each Geneformer's hidden size (e.g. 768:
    Geneformer V2-104M, 12 layers)."""
    from scatd_core.nn.models import PUBLISHED_SIZES

    if width == PUBLISHED_SIZES["vae_sf"][0][0]:
        return "scFoundation cell embeddings (4 x 768: S, T, max and mean)"
    from scatd_core.foundation.geneformer import PUBLISHED_CONFIGS

    names = [f"{name} ({layers} layers)" for (layers, hidden, _, _), (name, _) in PUBLISHED_CONFIGS.items()
             if hidden == width]
    if not names:
        return None
    return "Geneformer cell embeddings of " + " or ".join(names)


def embedding_fits(adata: ad.AnnData, bundle) -> bool | None:
    """Whether the embeddings ``adata`` carries fit ``bundle`` (VAE_sf/VAE_gf), when that decides
    whether it can score them: ``None`` when the data hold expression (the embeddings are computed
    from it) or for a model that reads genes; else whether its input width is that of the user's
    embeddings (``obsm['X_scfoundation' | 'X_geneformer']``, or X by position for a .npy)."""
    if bundle.input_kind != "embedding":
        return None
    dim = bundle.architecture.input_dim
    key = _keys.FOUNDATION_EMBEDDING.get(bundle.backbone)
    if key in adata.obsm and np.ndim(adata.obsm[key]) == 2 and np.shape(adata.obsm[key])[1] == dim:
        return True
    from scatd_core.foundation._embed import _is_expression

    if _is_expression(adata):
        return None
    return adata.n_vars == dim


def embedding_width_error(adata: ad.AnnData, spec: InputSpec) -> InputError:
    """Why ``adata`` holds no embeddings of the width ``spec`` (VAE_sf/VAE_gf) takes, and what to
    do, in the CLI (``hint``) and in the app (``app_hint``): the other backbone's embeddings and
    a transposed array are recognised."""
    from scatd_core.bundle import BACKBONE_TITLES
    from scatd_core.nn.models import PUBLISHED_SIZES

    title, model, dim = BACKBONE_TITLES[spec.backbone], FOUNDATION_MODELS[spec.backbone], spec.input_dim
    key = _keys.FOUNDATION_EMBEDDING[spec.backbone]
    stored = np.asarray(adata.obsm[key]).shape[1] if key in adata.obsm else None
    has = f"its obsm['{key}'] is {stored:,}-d" if stored is not None else f"no obsm['{key}']"
    message = (f"This {title} model takes {dim:,}-d {model} cell embeddings, but the data has {adata.n_vars:,} "
               f"features per cell and {has}.")
    cli, app = [], []
    if adata.n_obs == dim:
        message += (f" It has {adata.n_obs:,} cells, the width this model takes: the array may be the other way "
                    "round (features x cells).")
        cli.append("If so, read it with --orientation genes_x_cells.")
        app.append("If so, choose 'rows are genes' under Table orientation on the Data page and upload it again.")
    other = next(b for b in FOUNDATION_MODELS if b != spec.backbone)
    other_dim = PUBLISHED_SIZES[other][0][0]
    if other_dim != dim and other_dim in (adata.n_vars, stored):
        message += (f" {other_dim:,} is the width of {FOUNDATION_MODELS[other]} embeddings, which "
                    f"{BACKBONE_TITLES[other]} models take.")
        cli.append(f"For these embeddings, use a {BACKBONE_TITLES[other]} model (`scatd models` lists the installed "
                   "ones).")
        app.append(f"For these embeddings, choose a {BACKBONE_TITLES[other]} model above.")
    else:  # another backbone's width (e.g. 768: Geneformer V2): say which, and that no published model takes it
        width = stored if stored is not None and stored != dim else adata.n_vars
        source = embedding_width_source(width)
        if source is not None and width != dim and width == PUBLISHED_SIZES[spec.backbone][0][0]:
            message += f" {width:,} is the width of {source}, which the published {title} models take."
            cli.append(f"For these embeddings, use a published {title} model (`scatd models` lists the installed "
                       "ones).")
            app.append(f"For these embeddings, choose a published {title} model above.")
        elif source is not None and width != dim:
            message += (f" {width:,} is the width of {source}; scATD's published models take 3,072-d scFoundation "
                        f"embeddings (VAE_sf) or 512-d ones of Geneformer gf-12L-30M-i2048 (VAE_gf).")
            family = "vae_sf" if source.startswith("scFoundation") else "vae_gf"
            cli.append(f"Only a model trained on {width:,}-d embeddings takes these (`scatd train --backbone {family}` "
                       "with embeddings of that model).")
            app.append(f"Only a model trained on {width:,}-d embeddings takes these.")
    cli.append(f"For this model, give the cells' expression as --input (an h5ad, 10x or CSV file of counts): the "
               f"{model} embeddings are then computed first, when {model} is installed (`scatd doctor` checks it); "
               f"or a .npy of their {dim:,}-d {model} embeddings (cells x features).")
    app.append(f"For this model, upload the cells' expression on the Data page (the {model} embeddings are then "
               f"computed here), or a .npy of their {dim:,}-d {model} embeddings; or choose a Dist_VAE model, which "
               "reads genes.")
    return InputError(message, " ".join(cli), app_hint=" ".join(app))


def _one_to_one_columns(alignment: GeneAlignment) -> np.ndarray | None:
    """Data column of each model gene when no gene is duplicated in the data (else None: sum)."""
    if alignment.n_duplicated:
        return None
    m = alignment.matrix.tocsc()
    columns = np.full(alignment.n_model, -1, dtype=np.int64)
    has = np.diff(m.indptr) > 0
    columns[has] = m.indices[m.indptr[:-1][has]]
    return columns


class ModelInput:
    """The exact model input of every cell of ``adata`` for a model, batch by batch.

    Parameters
    ----------
    adata
        The data (may be backed).
    model
        A :class:`~scatd_core.bundle.Bundle` or an :class:`InputSpec`.
    mask
        Cells to score (boolean array over cells); the others are "filtered (QC)", or "left out
        (mask)" for a :class:`ColumnMask` of the user's own column (:func:`mask_label`).
    batch_size
        Cells per batch.

    :func:`scatd_core.predict.predict` and :func:`scatd_core.explain.explain` both read through
    one instance (pass ``inputs=``), so the explained inputs are the predicted inputs and the
    data are aligned and scanned once.
    """

    def __init__(self, adata: ad.AnnData, model, *, mask: np.ndarray | None = None, batch_size: int = 1024,
                 statistics: DatasetStatistics | None = None, row_offset: int = 0):
        self.spec = model if isinstance(model, InputSpec) else InputSpec.of(model)
        if self.spec.input_kind == "embedding" and self.spec.style_mean is None:
            raise InputError(f"{self.spec.name} has no bulk style statistics, which AdaIN needs.",
                             "Re-import it with --style-reference (the bulk embeddings .npy).",
                             app_hint="It was imported without the bulk embeddings, so it cannot predict. Choose "
                                      "another model, or import it again on the Model library page with its bulk "
                                      "embeddings (.npy) under 'Bulk embeddings for AdaIN' (replacing the installed "
                                      "model is for an administrator, or give it another display name).")
        self.adata = adata
        self.batch_size = int(batch_size)
        self.n_obs = adata.n_obs
        #: the words for the cells the mask leaves out: the app's QC filter, or the user's own column
        self.filtered_text = mask_reason_text(mask)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.n_obs,):
                raise ValueError(f"mask of shape {mask.shape} for {self.n_obs} cells")
        self.mask = mask
        #: which matrix of the file the model reads (X, adata.raw, a layer: :mod:`scatd_core.matrices`);
        #: ``data`` is it as an AnnData (``adata`` itself for X), ``adata`` is never changed
        data, self.matrix = model_data(adata, self.spec)
        self.data = data  # the matrix the model reads (X, adata.raw, a layer): its genes are the ones judged
        self.source = model_source(data, self.spec)
        self.transform = self.spec.transform
        #: where row 0 of ``adata`` is in the whole dataset (a shard's rows seed sample mode as one pass would)
        self.row_offset = int(row_offset)
        if statistics is not None:
            self.log_normalise, self.unlog = statistics.log_normalise, statistics.unlog
        else:
            kind = value_type(data) if self.spec.input_kind == "expression" and \
                self.transform in ("log1p_cp10k", "standardize") else None
            self.log_normalise = log_normalises(data, self.spec, kind)
            #: values already log-normalised, un-logged (expm1) before the model's log1p_cp10k
            self.unlog = unlogs_values(data, self.spec, kind)
        self.counts_detected = self.transform == "standardize" and self.log_normalise
        if self.spec.library_size not in LIBRARY_SIZES:
            raise ValueError(f"unknown library size {self.spec.library_size!r}; known: {', '.join(LIBRARY_SIZES)}")
        #: each cell's counts summed over every gene of the data, as the batches read them (only
        #: when they differ from the sums over the model's genes that the transform takes itself)
        self._totals = np.zeros(self.n_obs) if self.log_normalise and self.spec.library_size == ALL_GENES and \
            self.source.alignment is not None and not self.source.in_order else None
        #: with those sums, the data column of a negative value of each cell, in any gene (-1: none):
        #: it would give the cell a wrong library size, so the cell is not scored
        self._negative_at = None if self._totals is None else np.full(self.n_obs, -1, dtype=np.int64)
        self.reasons = dict.fromkeys(REASONS, 0)
        #: per cell, why it gets no model input: 1 + its reason's index in REASONS (0: it gets one)
        self.why = np.zeros(self.n_obs, dtype=np.uint8)
        #: per reason, the first cells (row indices) left out for it; for negative values, with the
        #: model's gene that was negative: ``{reason: [(row, gene or None), ...]}``
        self.examples: dict[str, list[tuple[int, str | None]]] = {}
        self._usable = np.zeros(self.n_obs, dtype=bool)
        self._seen = np.zeros(self.n_obs, dtype=bool)
        # column sums of the model input over the usable cells, per batch the passes have seen
        self._input_sum = np.zeros(self.spec.input_dim)
        self._summed = np.zeros(-(-self.n_obs // self.batch_size), dtype=bool)
        self.moments: tuple[np.ndarray, np.ndarray] | None = None
        if self.needs_moments:
            if statistics is None:
                self._fit_statistics()
            else:  # None while the moments are being computed shard by shard (batch_moments)
                self.moments = statistics.moments

    @property
    def needs_moments(self) -> bool:
        """Whether the model input depends on dataset moments (AdaIN, ``standardize``)."""
        return needs_moments(self.spec)

    def statistics(self) -> DatasetStatistics:
        """The dataset statistics this input scales with (to give to other shards' ModelInput)."""
        return DatasetStatistics(bool(self.log_normalise), self.moments, bool(self.unlog))

    @property
    def notes(self) -> list[str]:
        """What this input did with the values that the user should know (recorded with the
        prediction): the matrix read when it is not X (:mod:`scatd_core.matrices`), values already
        log-normalised un-logged first (:data:`UNLOG_NOTE`)."""
        said = [self.matrix.note] if self.matrix is not None and self.matrix.note else []
        return said + ([UNLOG_NOTE] if self.unlog else [])

    @property
    def value_kind(self) -> str | None:
        """What the matrix the model reads holds (expression models; ``None`` for embeddings)."""
        return None if self.matrix is None else self.matrix.candidate.kind

    # ---------------------------------------------------------------- which cells
    @property
    def usable(self) -> np.ndarray:
        """Boolean mask of the cells that get a model input (reads only batches not yet seen)."""
        if not self._seen.all():
            for start, stop in self.ranges():
                if not self._seen[start:stop].all():
                    self._block(start, stop)
        return self._usable

    @property
    def n_usable(self) -> int:
        return int(self.usable.sum())

    @property
    def scanned(self) -> bool:
        return bool(self._seen.all())

    def ranges(self):
        for start in range(0, self.n_obs, self.batch_size):
            yield start, min(start + self.batch_size, self.n_obs)

    def _check_rows(self, block, start: int, stop: int, totals: np.ndarray | None = None,
                    negative_at: np.ndarray | None = None) -> np.ndarray:
        """Which rows of ``block`` can be transformed (``totals``: their library sizes over all
        the data's genes, which must be finite too, and ``negative_at``: the data column of a
        negative value among those genes, -1 where none); counts the others by reason."""
        n = block.shape[0]
        ok = np.ones(n, dtype=bool) if self.mask is None else self.mask[start:stop].copy()
        seen = self._seen[start:stop]

        def drop(bad: np.ndarray, reason: str, gene_of=None) -> None:
            bad = bad & ok
            new = bad & ~seen
            self.reasons[reason] += int(new.sum())
            if new.any():
                self.why[start:stop][new] = REASONS.index(reason) + 1
                said = self.examples.setdefault(reason, [])
                for r in np.flatnonzero(new)[:max(0, EXAMPLES_PER_REASON - len(said))]:
                    said.append((start + int(r), gene_of(int(r)) if gene_of is not None else None))
            ok[bad] = False

        filtered = ~ok & ~seen
        self.reasons["filtered"] += int(filtered.sum())
        self.why[start:stop][filtered] = REASONS.index("filtered") + 1
        if sp.issparse(block):
            values = block.data
            counts = np.diff(block.indptr)

            def rows_with(flags: np.ndarray) -> np.ndarray:  # only built when some value is flagged
                return np.bincount(np.repeat(np.arange(n), counts)[flags], minlength=n) > 0

            finite = np.isfinite(values)
            if not finite.all():
                drop(rows_with(~finite), "non_finite")
                values = np.where(finite, values, 0)
            big = _beyond(values, MAX_ABS_VALUE)
            if self.unlog:  # beyond MAX_ABS_VALUE once un-logged
                big |= values > MAX_LOG_VALUE
            if big.any():
                drop(rows_with(big), "overflow")
            if self.log_normalise:
                negative = values < 0
                if negative.any():
                    drop(rows_with(negative), "negative_values", lambda r: self._gene(
                        block.indices[block.indptr[r]:block.indptr[r + 1]][values[block.indptr[r]:block.indptr[r + 1]]
                                                                           < 0]))
            zero = values == 0
            nonzero = rows_with(~zero) if zero.any() else counts > 0
        else:
            x = np.asarray(block)
            with np.errstate(invalid="ignore"):
                if self.source.alignment is None:  # embeddings: NaN rows are the cells not embedded
                    empty = np.isnan(x).all(axis=1)
                    for reason, where in self.source.faulty.items():  # left out for their expression values
                        flagged = np.zeros(n, dtype=bool)
                        flagged[where[(where >= start) & (where < stop)] - start] = True
                        drop(empty & flagged, reason)
                    drop(empty, "not_embedded")
                    drop(np.isnan(x).any(axis=1), "missing_values")  # a row partly NaN
                drop(~np.isfinite(x).all(axis=1), "non_finite")
                drop(_beyond(np.nan_to_num(x), MAX_ABS_VALUE).any(axis=1), "overflow")
                if self.unlog:  # beyond MAX_ABS_VALUE once un-logged
                    drop((np.nan_to_num(x) > MAX_LOG_VALUE).any(axis=1), "overflow")
                if self.log_normalise:
                    drop((x < 0).any(axis=1), "negative_values", lambda r: self._gene(np.flatnonzero(x[r] < 0)))
                nonzero = (np.nan_to_num(x) != 0).any(axis=1)
        if totals is not None:  # a value outside the model's genes that spoils the cell's library size
            drop(~np.isfinite(totals), "non_finite")
            drop(np.abs(totals) > MAX_ABS_VALUE, "overflow")
        if negative_at is not None:  # a negative value in a gene the model does not read, in its library size
            names = self.data.var_names
            drop(negative_at >= 0, "negative_values", lambda r: str(names[int(negative_at[r])]))
        if self.source.alignment is not None:
            drop(~nonzero, "no_expression")
        self._usable[start:stop] = ok
        self._seen[start:stop] = True
        return ok

    def _gene(self, columns: np.ndarray) -> str | None:
        """The model's gene at the first of ``columns`` (of a block aligned to the model's genes)."""
        genes_ = self.spec.genes
        return str(genes_[int(columns[0])]) if len(columns) and genes_ is not None and \
            int(columns[0]) < len(genes_) else None

    def reason_text(self, embedding: bool = False) -> np.ndarray:
        """Per cell, why it gets no model input, in words (:data:`REASON_TEXT`); "" where it gets one."""
        words = {**REASON_TEXT, **(EMBEDDING_REASON_TEXT if embedding else {}), "filtered": self.filtered_text}
        table = np.array(["", *(words[r] for r in REASONS)], dtype=object)
        _ = self.usable  # every batch seen
        return table[self.why]

    # ---------------------------------------------------------------- values
    def _read(self, start: int, stop: int):
        """Usable rows of ``[start, stop)`` (absolute indices) and their data as given, aligned to
        the model's features (sparse stays sparse)."""
        if self._totals is None:
            block, totals, negative_at = self.source.raw(start, stop), None, None
        else:
            totals, negative_at = self._totals[start:stop], self._negative_at[start:stop]
            block = self.source.raw(start, stop, totals=totals, unlog=self.unlog, negative_at=negative_at)
        ok = self._check_rows(block, start, stop, totals, negative_at)
        keep = np.flatnonzero(ok)
        if keep.size < block.shape[0]:
            block = block[keep]
        return keep + start, block

    def _transform(self, raw, copy: bool = False, rows: np.ndarray | None = None):
        """Values before dataset scaling: float32 CSR for sparse data (the transforms keep zeros
        at zero), else float32 dense. ``copy=False`` may change a sparse ``raw``'s values.
        ``rows``: the row indices of ``raw``'s rows (their library sizes, when they are summed
        over all the data's genes)."""
        block = raw
        copy = copy or not sp.issparse(block)  # in place only on a copy: dense rows of an in-memory X are views
        if self.unlog:  # already log-normalised: back to values proportional to the counts first
            block, copy = _expm1(block, copy=copy), False
        if self.log_normalise:
            block = log1p_cp10k(block, self.library_sizes(rows), copy=copy)
        if sp.issparse(block):
            return block if block.dtype == np.float32 else block.astype(np.float32)
        return np.asarray(block, dtype=np.float32)

    def _block(self, start: int, stop: int, keep_raw: bool = False):
        """``(rows, values before dataset scaling, raw or None)`` of the usable rows of
        ``[start, stop)``; each row batch of :meth:`ranges` also adds its column sums to the mean
        model input, once."""
        rows, raw = self._read(start, stop)
        block = self._transform(raw, copy=keep_raw, rows=rows)
        k = start // self.batch_size
        if self.moments is None and start % self.batch_size == 0 and stop == min(start + self.batch_size, self.n_obs) \
                and not self._summed[k]:
            self._input_sum += _column_sums(block)
            self._summed[k] = True
        return rows, block, raw if keep_raw else None

    def _pre(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`_block`, the values dense."""
        rows, block, _ = self._block(start, stop)
        return rows, block.toarray() if sp.issparse(block) else block

    def _scale(self, x: np.ndarray) -> np.ndarray:
        if self.moments is None and self.needs_moments:
            raise RuntimeError("the dataset moments are not known yet (give DatasetStatistics with moments)")
        if self.moments is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        mean, sd = self.moments
        if self.spec.input_kind == "embedding":  # AdaIN; eps on the source sd only
            x = self.spec.style_std * (x - mean) / (sd + ADAIN_EPS) + self.spec.style_mean
        else:
            x = np.divide(x - mean, sd, out=np.zeros_like(x, dtype=np.float64), where=sd > 0)
        return np.ascontiguousarray(x, dtype=np.float32)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row indices, model input)`` of the usable cells among rows ``[start, stop)``."""
        idx, x = self._pre(start, stop)
        return idx, self._scale(x)

    def batches(self, *, sparse: bool = False, with_raw: bool = False):
        """Yield ``(stop, row indices, model input)`` for every batch (usable cells only).

        The model input is a float32 array. With ``sparse=True`` (a consumer that uses each
        batch before asking for the next, like predict and explain), it is a float32 CSR matrix
        instead when the batch's model input is sparse and at most :data:`SPARSE_MAX_DENSITY`
        non-zero (no dense copy is made: the first layer takes it as it is), and a batch that
        must be made dense is written into one buffer reused from batch to batch (a fresh
        array per batch costs its page faults again), valid until the next batch.
        ``with_raw=True`` yields ``(stop, row indices, model input, raw)``, ``raw`` the same
        rows' data as given, aligned to the model's features (what :meth:`model_input_of`
        turns into the model input), so a caller that needs both reads the data once.
        """
        buffer = None
        for start, stop in self.ranges():
            idx, block, raw = self._block(start, stop, keep_raw=with_raw)
            if sparse and sp.issparse(block) and self.moments is None:
                if density(block) <= SPARSE_MAX_DENSITY:
                    x = block
                else:
                    if buffer is None:
                        buffer = np.empty((self.batch_size, block.shape[1]), dtype=np.float32)
                    x = block.toarray(out=buffer[:block.shape[0]])
            else:
                x = self._scale(block.toarray() if sp.issparse(block) else block)
            yield (stop, idx, x) + ((raw,) if with_raw else ())

    def library_sizes(self, rows: np.ndarray | None) -> np.ndarray | None:
        """Each of ``rows``' counts summed over every gene of the data, when the model scales
        counts by those (``library_size`` "all genes" on counts; else ``None``: the transform sums
        the model's genes of the block itself). Rows no batch has read yet are read for it."""
        if self._totals is None:
            return None
        if rows is None:
            raise ValueError("the row indices are needed: this model scales each cell by its counts over all genes")
        rows = np.asarray(rows, dtype=np.int64)
        unseen = rows[~self._seen[rows]]
        for k in np.unique(unseen // self.batch_size):  # e.g. a ModelInput given its statistics, not scanned
            start = int(k) * self.batch_size
            self._read(start, min(start + self.batch_size, self.n_obs))
        return self._totals[rows]

    def model_input_of(self, raw, columns: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """The dense model input of rows given as ``raw`` (as yielded by ``batches(with_raw=True)``),
        only the model features ``columns`` if given; the same numbers the batches carried.
        ``rows``: their row indices (needed when the model scales each cell by its counts over all
        the data's genes, :meth:`library_sizes`)."""
        block = self._transform(raw, copy=True, rows=rows)
        if sp.issparse(block) and self.moments is None:
            block = block if columns is None else block[:, columns]
            return np.ascontiguousarray(block.toarray(), dtype=np.float32)
        x = self._scale(block.toarray() if sp.issparse(block) else block)
        return x if columns is None else np.ascontiguousarray(x[:, columns])

    def batch_moments(self):
        """Yield :func:`~scatd_core._matrix.block_moments` of the pre-scaling values of each batch
        (usable cells only): merged in order by :class:`~scatd_core._matrix.MeanVar`, they give
        the dataset moments, here or from the shards of a distributed pass."""
        for start, stop in self.ranges():
            yield block_moments(self._block(start, stop)[1])

    def _fit_statistics(self) -> None:
        """One pass: the usable cells and the mean / population sd of their pre-scaling values."""
        acc = MeanVar()
        for part in self.batch_moments():
            acc.add(*part)
        self._require_some()
        self.moments = (acc.mean, acc.std(correction=0))

    def _require_some(self) -> None:
        if not self._usable.any():
            raise no_cell_scored_error(self.reasons, self.filtered_text)

    def input_mean(self) -> np.ndarray:
        """Mean model input over the usable cells (the ``mean`` attribution baseline).

        Summed during the passes already made (a prediction); reads only batches none has seen.
        """
        if self.moments is not None:  # the scaled mean is the image of the raw mean
            mean = self._scale(self.moments[0][None, :].astype(np.float64))[0]
            return mean.astype(np.float64)
        for k, (start, stop) in enumerate(self.ranges()):
            if not self._summed[k]:
                self._block(start, stop)
        self._require_some()
        return self._input_sum / self._usable.sum()

    def not_scored(self) -> dict:
        """Counts of cells not scored, by reason (only reasons that occurred)."""
        return {k: int(v) for k, v in self.reasons.items() if v}


def model_data(adata: ad.AnnData, model) -> tuple[ad.AnnData, object]:
    """``(the data an expression model reads, the matrices.Choice)``: the matrix of ``adata`` that
    suits its transform and genes best, or the user's (:func:`scatd_core.matrices.choose`); for an
    embedding model ``(adata, None)``. ``model``: a bundle or an :class:`InputSpec`."""
    from scatd_core import matrices

    spec = model if isinstance(model, InputSpec) else InputSpec.of(model)
    if spec.input_kind != "expression":
        return adata, None
    return matrices.for_model(adata, spec.transform, spec.genes)


def needs_moments(spec: InputSpec) -> bool:
    """Whether ``spec``'s model input depends on dataset moments (AdaIN, ``standardize``)."""
    return spec.input_kind == "embedding" or spec.transform == "standardize"


def log_normalises(adata: ad.AnnData, spec: InputSpec, kind: str | None = None) -> bool:
    """Whether ``spec``'s input log1p-CP10k-normalises ``adata``'s values (``log1p_cp10k``, or
    ``standardize`` of raw counts); ``kind``: :func:`value_type` of ``adata``, when known."""
    if spec.transform == "log1p_cp10k":
        return True
    return spec.transform == "standardize" and (kind or value_type(adata)) == "counts"


def unlogs_values(adata: ad.AnnData, spec: InputSpec, kind: str | None = None) -> bool:
    """Whether ``spec``'s input un-logs ``adata``'s values before log-normalising them: an
    expression model's ``log1p_cp10k`` of values already log-normalised
    (:func:`scatd_core.preprocess.unlogs`); ``kind``: :func:`value_type` of ``adata``, when known."""
    if spec.input_kind != "expression" or spec.transform != "log1p_cp10k":
        return False
    return unlogs(kind or value_type(adata), spec.transform)


def value_messages(adata: ad.AnnData, bundle) -> tuple[list[str], list[str]]:
    """``(warnings, notes)``: what an expression model makes of the kind of values the data hold,
    from the read report of :func:`scatd_core.io.read` or else a look at up to 500 cells (~25 ms).

    The warnings (:func:`scatd_core.preprocess.check_backbone_compatibility`, e.g. TPM-like values
    for a model that z-scores log values) are the Model page's and are recorded with the
    prediction (``uns['scatd']['warnings']``); the notes
    (:func:`scatd_core.preprocess.value_notes`: log-normalised values un-logged first, a few
    sampled cells with values no expression has) are the Model page's, before the prediction
    records what it did itself (:attr:`ModelInput.notes`, the cells not scored by reason).
    Embedding models: nothing (their embeddings are checked when computed).
    """
    from scatd_core.preprocess import check_backbone_compatibility, value_notes

    if bundle.input_kind != "expression":
        return [], []
    adata = model_data(adata, bundle)[0]  # the matrix it reads
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    found = report if "value_type" in report else detect_value_type(adata.X, n_cells=500)
    transform = bundle.manifest.get("input_transform")
    warnings = check_backbone_compatibility(found, bundle.backbone, transform)
    kind = found.get("value_type", found.get("kind"))
    if transform == "standardize" and "library_size" not in bundle.manifest \
            and kind in ("log_normalized", "zscored"):  # a model trained before counts were scaled over all genes
        warnings.append("This model was trained by an earlier version of scATD Studio, which log-normalises raw "
                        "counts over the model's genes only; these values are already normalised (over all genes, as "
                        "scanpy does), so they reach it somewhat differently than the same cells' counts would. Give "
                        "it the kind of values it was trained on, or train it again (models trained now treat both "
                        "alike).")
    return warnings, value_notes(found, transform)


def unscorable_error(adata: ad.AnnData, bundle) -> InputError | None:
    """Why an expression model can score none of ``adata``'s cells, said before any is tried: a model
    that log-normalises the values given a matrix whose values are negative in most cells
    (z-scored), in the words of the Model page's warning
    (:func:`scatd_core.preprocess.check_backbone_compatibility`); ``None`` when it can score some."""
    from scatd_core.preprocess import _kind_and_evidence, check_backbone_compatibility

    if bundle.input_kind != "expression":
        return None
    data, choice = model_data(adata, bundle)
    spec = InputSpec.of(bundle)
    report = data.uns.get(_keys.INPUT_REPORT, {})
    found = report if "value_type" in report else detect_value_type(data.X, n_cells=500)
    kind, evidence = _kind_and_evidence(found)
    negative = kind == "zscored" or (kind == "unknown" and evidence.get("has_negative"))
    if not negative or not log_normalises(data, spec, kind):
        return None
    problems = check_backbone_compatibility(found, bundle.backbone, spec.transform)
    where = "" if choice.name == "X" else f" (the model reads {choice.candidate.where})"
    return DataNotScorable(" ".join(problems) or f"This model log-normalises the values; these are "
                                           f"{kind.replace('_', '-')}{where}, so no cell can be scored.",
                      "Or choose a model that takes z-scored values (one trained here, input transform "
                      "'standardize'), or another matrix of the file with --matrix (X, raw, layer:NAME).",
                      app_hint="Or choose a model that takes these values, or another matrix of the file on the "
                               "Data page.")


def fit_for_data(adata: ad.AnnData, bundle) -> tuple[int, float]:
    """How well ``bundle`` can score ``adata``, as a sort key (larger is better): ``(values,
    coverage)``. ``values``: 2 when the kind of values the data hold suits the model's input
    transform (:func:`scatd_core.preprocess.check_backbone_compatibility` says nothing), 1 when the
    model scores them with a warning (z-scored values given to a model that takes values as they
    are), 0 when its transform cannot take them (negative values for a log transform: no cell
    would be scored; values Geneformer refuses). ``coverage``: the share of the model's genes in
    the data (1.0 for a model without a gene list). A VAE_sf/VAE_gf model whose input width is not
    that of the embeddings the data carry (a .npy, or the user's own ``obsm``; :func:`embedding_fits`)
    cannot score them: ``(0, 0.0)``. The app chooses a model before the user does
    by it (``scatd_app.ui.default_model``): a model that can score the data before one with more
    of its genes that cannot. From the read report or ~500 sampled cells; gene names only."""
    from scatd_core.preprocess import BACKBONE_DEFAULT_TRANSFORM, check_backbone_compatibility

    if embedding_fits(adata, bundle) is False:  # the user's embeddings are of another width: it cannot score them
        return 0, 0.0
    if bundle.input_kind == "expression":
        adata = model_data(adata, bundle)[0]  # the matrix it reads
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    found = report if "value_type" in report else detect_value_type(adata.X, n_cells=500)
    transform = bundle.manifest.get("input_transform") or BACKBONE_DEFAULT_TRANSFORM.get(bundle.backbone)
    values = 2
    if check_backbone_compatibility(found, bundle.backbone, transform):
        values = 1 if transform in ("none", "standardize") else 0  # these take any value; a log or ranking cannot
    genes = bundle.genes
    if not genes:
        return values, 1.0
    matched = align_genes(names_for(adata, detect_id_type(genes)), genes)
    return values, matched.n_matched / max(matched.n_model, 1)


def no_model_fits(adata: ad.AnnData, bundles, names: Mapping[str, str],
                  fits: Mapping[str, tuple[int, float]] | None = None) -> tuple[str, list[str], str] | None:
    """When not one of ``bundles`` (the drug models offered) has enough of its genes in ``adata`` to
    predict (fewer than :func:`scatd_core.genes.min_gene_coverage` of them: each would be refused), what
    the Model page says before a model is chosen: ``(statement, one line per model: its name and coverage,
    the likely cause and what to do)``; else ``None`` (also when a model's fit cannot be judged from its
    genes: an embedding model, one without a gene list, one whose fit failed). ``names``: ``{path: the
    model's name}``; ``fits``: :func:`fit_for_data` per path, when already known."""
    from scatd_core._words import percent
    from scatd_core.genes import _coverage_cause, coverage_report, min_gene_coverage

    bundles = list(bundles)
    if not bundles:
        return None
    minimum = min_gene_coverage()
    for b in bundles:
        if b.input_kind != "expression" or not b.genes:
            return None
        values, coverage = (fits or {}).get(str(b.path)) or fit_for_data(adata, b)
        if values < 0 or coverage >= minimum:
            return None
    lines, causes = [], {}
    for b in bundles:
        r = coverage_report(model_data(adata, b)[0], b.genes, n_top=0)
        share = percent(r["n_matched"] / max(r["n_model_genes"], 1))
        lines.append(f"{names.get(str(b.path), b.title)}: only {r['n_matched']:,} of the model's "
                     f"{r['n_model_genes']:,} genes ({share}) are in the data")
        causes.setdefault(_coverage_cause(r))
    needed = f"a prediction needs at least {percent(minimum)} of the model's genes"
    statement = (f"The only drug model in the library does not fit these data: too few of its genes are in them "
                 f"({needed})." if len(bundles) == 1 else
                 f"No drug model in the library fits these data: each has too few of its genes in them ({needed}).")
    return statement, lines, " ".join(causes)


def _beyond(values: np.ndarray, limit: float) -> np.ndarray:
    """``|values| > limit`` without casting ``limit`` to a type too narrow for it (float16 holds at
    most 65,504: no finite float16 value is beyond 1e30, and the cast of 1e30 would overflow)."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and float(np.finfo(values.dtype).max) <= limit:
        return np.zeros(values.shape, dtype=bool)
    return np.abs(values) > limit


def density(block) -> float:
    """Fraction of stored values of a sparse matrix (1.0 for an empty shape)."""
    size = block.shape[0] * block.shape[1]
    return block.nnz / size if size else 1.0


def _column_sums(block) -> np.ndarray:
    """float64 column sums of a CSR or dense block."""
    if sp.issparse(block):
        return np.bincount(block.indices, weights=block.data, minlength=block.shape[1])
    return block.sum(axis=0, dtype=np.float64)


def _expm1(block, copy: bool = True):
    """``expm1`` of a dense float block or a CSR matrix's stored values (zeros stay zero), float32
    at least; ``copy=False`` changes a float block in place."""
    if sp.issparse(block):
        out = sp.csr_matrix(block, copy=copy)
        if out.dtype.kind != "f":
            out = out.astype(np.float32)
        np.expm1(out.data, out=out.data)
        return out
    dtype = np.result_type(block.dtype, np.float32)
    out = np.array(block, dtype=dtype) if copy else np.asarray(block, dtype=dtype)
    return np.expm1(out, out=out)


def value_type(adata: ad.AnnData) -> str:
    """What X holds (:data:`scatd_core.preprocess.VALUE_KINDS`), decided once for the whole data:
    from the read report when there is one, else a sample of rows
    (:func:`scatd_core.preprocess.detect_value_type`, which sets a few faulty cells aside)."""
    kind = adata.uns.get(_keys.INPUT_REPORT, {}).get("value_type")
    return kind if kind is not None else detect_value_type(adata.X)["kind"]


def _holds_counts(adata: ad.AnnData) -> bool:
    """Whether X holds raw counts: from the read report when there is one, else a sample of rows."""
    return value_type(adata) == "counts"
