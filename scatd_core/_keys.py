"""Every key scATD Studio writes into an AnnData, in one place (like scvi-tools' REGISTRY_KEYS).

Results of one model go under a *prefix* (``"scatd"`` by default; a panel of models uses one
prefix per model, see :func:`result_keys`):

================================  ==============================================================
field                             written by
================================  ==============================================================
``obs['<p>_prob_resistant']``     :func:`scatd_core.predict.predict`: P(resistant), NaN if not scored
``obs['<p>_prob_resistant_sd']``  predict, Monte-Carlo mode (sd over draws, or over ensemble members)
``obs['<p>_label']``              predict: resistant / sensitive / not scored / filtered (QC) (the
                                  app's QC filter) / left out (mask) (a mask column of the user's own)
``obs['<p>_scored']``             predict: whether the cell got a probability
``obsm['X_<p>']``                 predict: the latent mean (NaN rows where not scored)
``uns['<p>']``                    predict: run parameters, model provenance, coverage, warnings
``obs['scatd_qc_pass']``          :func:`scatd_core.preprocess.apply_qc_filter`
``uns['scatd_qc']``               apply_qc_filter: thresholds and counts
``uns['scatd_input']``            :func:`scatd_core.io.read`: the read report
``uns['scatd_matrix']``           the user's choice of the matrix the models read (``X``, ``raw``,
                                  ``layer:NAME``; :mod:`scatd_core.matrices`), when not automatic
``uns['scatd_labels']``           :func:`scatd_core.labels.set_label_direction`: which value of a
                                  label column means resistant
``uns['scatd_cell_metadata']``    :func:`scatd_core.io.add_cell_metadata`: the cell metadata table
                                  added to obs (file, matched cells, the columns it added)
``obs['scatd_all_zero']``         io.read: cells with no expression at all
``obs['scatd_original_id']``      io.read: cell names before they were made unique
``var['scatd_original_name']``    io.read: gene names before they were made unique
``var['scatd_symbol']``,          :func:`scatd_core.genes.annotate_gene_ids`: every gene as an
``var['scatd_ensembl']``          HGNC symbol and as an Ensembl ID (where known)
``obsm['X_umap']``                :func:`scatd_core.embed.embed`; a UMAP the data brought (no
                                  ``uns['scatd_embed']``) is never deleted
``obsm['X_umap_original']``       embed: the data's own UMAP, moved there when embed writes its
                                  own; back in ``X_umap`` when scATD's is removed (a new prediction)
``obs['scatd_cluster']``          embed: Leiden clusters of the latent space
``uns['scatd_embed']``            embed: parameters and counts
``uns['scatd_biomarkers']``       :func:`scatd_core.explain.explain`: ranking, settings, checks
``obsm['scatd_attributions']``    explain: per-cell attributions of the top genes (NaN: not explained)
``obsm['scatd_attribution_inputs']``  explain: the model-input values of those genes
``uns['scatd_columns']``          :func:`scatd_core.export.write_h5ad`: which obs columns hold the
                                  single-model prediction (its model, threshold) and which the panel's
                                  per-drug calls (each drug's model, threshold)
``uns['scatd_panel']``            :func:`scatd_core.panel.predict_panel`: the panel's models (each
                                  under its own prefix ``scatd_<DRUG>``), status, coverage, times
``obs['scatd_panel_n_resisted']`` predict_panel / panel.refresh: drugs the cell is called resistant to
``obs['scatd_panel_resistant_to_all']``  resistant to every scored drug of the panel
``obsm['X_scfoundation']``,       :func:`scatd_core.foundation.embed_cells`: cell embeddings computed
``obsm['X_geneformer']``          from expression (NaN rows: not embedded); or brought by the user
``uns['scatd_foundation']``       embed_cells: per backbone, model, settings, cells embedded, the data
                                  fingerprint its cache is checked against
================================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

# ----------------------------------------------------------------------------- one model's results
DEFAULT_PREFIX = "scatd"


@dataclass(frozen=True)
class ResultKeys:
    """The obs/obsm/uns names of one model's results (see the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def prob(self) -> str:
        return f"{self.prefix}_prob_resistant"

    @property
    def prob_sd(self) -> str:
        return f"{self.prefix}_prob_resistant_sd"

    @property
    def label(self) -> str:
        return f"{self.prefix}_label"

    @property
    def scored(self) -> str:
        return f"{self.prefix}_scored"

    @property
    def not_scored_reason(self) -> str:
        """Why a cell got no probability, in words ("" where it got one)."""
        return f"{self.prefix}_not_scored_reason"

    @property
    def latent(self) -> str:
        return f"X_{self.prefix}"

    @property
    def run(self) -> str:
        return self.prefix


def result_keys(prefix: str | None = None) -> ResultKeys:
    return ResultKeys(prefix or DEFAULT_PREFIX)


DEFAULT = ResultKeys()
PROB = DEFAULT.prob
PROB_SD = DEFAULT.prob_sd
LABEL = DEFAULT.label
SCORED = DEFAULT.scored
LATENT = DEFAULT.latent
RUN = DEFAULT.run

# ----------------------------------------------------------------------------- called labels
RESISTANT = "resistant"
SENSITIVE = "sensitive"
NOT_SCORED = "not scored"
#: The cells the app's QC filter left out (``--mask scatd_qc_pass``, or the Data page's filter)
FILTERED = "filtered (QC)"
#: The cells a True/False column of the user's own left out (``scatd predict --mask keep``): no QC ran
MASKED = "left out (mask)"
#: The labels of the cells a mask left out: every count, colour, legend and exclusion treats them alike
LEFT_OUT = (FILTERED, MASKED)
#: The labels of the cells without a call (no probability): left out of fractions, groups and counts of calls
NOT_CALLED = (NOT_SCORED, FILTERED, MASKED)

# ----------------------------------------------------------------------------- data and QC
INPUT_REPORT = "scatd_input"
#: uns: the matrix the user chose for the models to read (X, raw, layer:NAME; absent: chosen by scatd_core.matrices)
MATRIX = "scatd_matrix"
REPORT = "scatd_report"  # uns: what a report was made with (label and group columns, the evaluation)
#: uns of an exported h5ad: which obs columns belong to the single-model prediction and which to the panel
COLUMNS = "scatd_columns"
LABEL_DIRECTIONS = "scatd_labels"
CELL_METADATA = "scatd_cell_metadata"
ALL_ZERO = "scatd_all_zero"
ORIGINAL_CELL_ID = "scatd_original_id"
ORIGINAL_GENE_NAME = "scatd_original_name"
SYMBOL = "scatd_symbol"
ENSEMBL = "scatd_ensembl"
QC_PASS = "scatd_qc_pass"
QC = "scatd_qc"

# ----------------------------------------------------------------------------- embedding, clusters
UMAP = "X_umap"
#: Where :func:`scatd_core.embed.embed` keeps a UMAP the data brought (scanpy: basis ``"umap_original"``)
UMAP_ORIGINAL = "X_umap_original"
CLUSTER = "scatd_cluster"
EMBED = "scatd_embed"
#: The Leiden "cluster" of the cells without one (no latent: QC-filtered, or not scored), in every
#: table, plot and file (``obs['scatd_cluster']``)
NOT_EMBEDDED = "no cluster (QC-filtered or not scored)"
#: What earlier versions wrote for it (annotated h5ad files made then): shown as NOT_EMBEDDED
OLD_NOT_EMBEDDED = "not embedded"

# ----------------------------------------------------------------------------- biomarkers
BIOMARKERS = "scatd_biomarkers"
ATTRIBUTIONS = "scatd_attributions"
ATTRIBUTION_INPUTS = "scatd_attribution_inputs"
EXPLAINED = "scatd_explained"

# ----------------------------------------------------------------------------- panels of models
PANEL = "scatd_panel"
PANEL_N_RESISTED = "scatd_panel_n_resisted"
PANEL_RESISTANT_TO_ALL = "scatd_panel_resistant_to_all"
PANEL_N_SCORED = "scatd_panel_n_scored"

# ----------------------------------------------------------------------------- foundation models
FOUNDATION_EMBEDDING = {"vae_sf": "X_scfoundation", "vae_gf": "X_geneformer"}
FOUNDATION = "scatd_foundation"


# ----------------------------------------------------------------------------- columns offered to the user
def user_columns(columns, also=()) -> list[str]:
    """The columns a message offers to choose from: scATD Studio's own (``scatd_*``, e.g.
    ``scatd_all_zero``, written by the reader) left out, but for those in ``also`` (e.g.
    :data:`QC_PASS` where a True/False mask column is asked for)."""
    keep = {str(c) for c in also}
    return [str(c) for c in columns if not str(c).startswith("scatd_") or str(c) in keep]


def columns_text(columns, also=()) -> str:
    """:func:`user_columns` as a comma-separated list, or ``none``."""
    return ", ".join(user_columns(columns, also)) or "none"


def target_columns_hint(columns) -> str:
    """The hint for a column the target of ``scatd train`` lacks: its columns, or, when it has
    none of its own (a counts table, a 10x folder), how to add them."""
    shown = user_columns(columns)
    if not shown:
        return "It has no cell annotation columns: add them from a cell metadata table with --obs."
    return f"Its columns: {', '.join(shown)}."
