"""Seeded simulator of the built-in demo: a bulk cell-line drug screen and a single-cell tumour.

Everything produced here is **simulated data** (label it "demo (simulated data)" wherever it is
shown). It exists so that the whole scATD path (train on bulk, transfer to single cells, predict,
explain) can be shown and tested with nothing to download, with a ground truth to check against.

What is simulated
-----------------
*Gene panel.* 2,000 real HGNC symbols (``scatd_core/data/demo_genes.txt``): housekeeping and
ribosomal genes, cell-cycle, hypoxia, interferon, stress, epithelial, mesenchymal, immune,
lineage, signalling, metabolic and drug-resistance genes, and the 13 protein-coding
mitochondrial genes (``MT-CO1`` ...). The bulk panel lacks a fixed 10% of it and the tumour a
different fixed 5%, so the two share about 85% of the genes, as real bulk and single-cell data
share only part of their genes.

*The planted resistance program* (:data:`RESISTANCE_PROGRAM`): 20 genes of drug efflux
(ABCB1, ABCG2, ABCC1, ABCC3), detoxification (ALDH1A1, ALDH3A1, GSTP1, AKR1C1, NQO1), a
mesenchymal / persister state (AXL, VIM, ZEB1, TWIST1, SNAI2, FN1, CD44, SOX2), bypass
signalling (MET) and anti-apoptosis (BCL2L1, MCL1). Each program gene *g* has a fixed effect
``beta_g`` (1.0 to 1.6, natural-log fold change per unit of program activity). A sample with
program activity ``a`` has its expression of *g* multiplied by ``exp(program_strength * beta_g * a)``.

*Fixed biology.* Gene abundances, dispersions, program effects, tissue and cell-state signatures
are drawn once from a fixed internal seed: they are the "biology" and are the same for every
``seed``, so bulk data and tumours simulated with any seeds describe the same genes and the same
program (a model trained on one transfers to the other). ``seed`` drives the sampling of cell
lines and cells.

*Bulk panel* (:func:`simulate_bulk`). Cell lines from 8 tissues, each with its lineage markers.
Log expression = gene abundance + tissue signature + 6 latent factors + proliferation +
program activity (``a ~ Normal(tissue shift, 1)``) + noise; turned into TPM with the panel
taking 30% of a transcriptome's TPM, and reported as ``log2(TPM + 1)`` (median ~4, maximum ~15,
as in CCLE). Cell-line ids are ``SIMCL-0001`` ... Drug labels come from logistic models of
``P(resistant)`` on the latent activities (``a``, proliferation ``p``):

- ``DEMOTINIB`` (:data:`DEMO_DRUG`): driven by the program, ``logit = 1.9 + 2.2 a + N(0, 1)``;
  about 25% sensitive; the program score alone separates the classes with AUROC about 0.85-0.9.
- ``DEMOPLATIN``: proliferating lines are sensitive, the program adds some resistance
  (``logit = 1.1 - 1.4 p + 0.7 a + N(0, 1)``); about 30% sensitive.
- ``DEMOLIMUS``: haematopoietic lines are sensitive, otherwise mostly noise; about 25% sensitive.

*Tumour* (:func:`simulate_tumour`). Malignant cells from ``n_samples`` patients in five cell
states (:data:`CELL_STATES`: epithelial, cycling, hypoxic, interferon, stress), each with ~15
marker genes (:data:`STATE_MARKERS`, 3- to 11-fold up). Each cell is resistant with a
probability that depends on its state (hypoxic and stress cells are enriched, cycling cells
depleted) and its sample; resistant cells have program activity ``Normal(1, 0.25)``, sensitive
cells ``Normal(0, 0.25)``. Counts are negative binomial (gamma-Poisson) with gene-specific
dispersions around 0.3, around a mean ``library size x expression fraction``. Library sizes are
log-normal (median ``median_counts``, log-sd 0.45) and shift per sample; mitochondrial genes take
about 4% of each cell's counts. Zeros ("dropout") arise from the negative binomial at this depth
only; there is no extra zero inflation. Each sample also has a mild gene-wise batch effect
(log-sd ``batch_strength``), and ``low_quality_fraction`` of the cells are damaged: a third of
the counts and 15-45% mitochondrial reads, as quality control should find them. Cell ids are
10x-like barcodes (``ACGT...-k`` for sample *k*). With the defaults (2,000 cells, median 3,000
counts) about 65% of the entries are zero, a cell detects ~650 genes, and the program score
separates resistant from sensitive cells with AUROC ~0.95.

*The other drugs' truth in a tumour* (``simulate_tumour(panel_responses=True)``, :func:`panel_truth`):
the bulk label rules applied to each cell, a cycling cell counting as proliferating. DEMOPLATIN
spares cycling cells (the program adds some resistance); DEMOLIMUS spares haematopoietic cells,
which the tumour lacks, so its truth is mostly "resistant" and unrelated to any cell's expression.
The demo uses them only on the reference tumour that chooses the demo panel's thresholds.

Example
-------
>>> from scatd_core.demo.simulate import simulate_demo, DEMO_DRUG
>>> bulk, labels, tumour = simulate_demo(seed=0)
>>> labels[DEMO_DRUG].value_counts()            # doctest: +SKIP
>>> tumour.obs[["sample", "cluster", "response"]]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

DEMO_DRUG = "DEMOTINIB"
"""Name of the made-up drug of the demo (simulated data, not a real compound)."""

DRUGS = (DEMO_DRUG, "DEMOPLATIN", "DEMOLIMUS")
"""All simulated drugs in the bulk label table, the demo drug first."""

SIMULATED_DATA_LABEL = "demo (simulated data)"
"""How anything produced from this module must be labelled when shown to a user."""

RESISTANCE_PROGRAM = (
    "ABCB1", "ABCG2", "ABCC1", "ABCC3",                      # drug efflux
    "ALDH1A1", "ALDH3A1", "GSTP1", "AKR1C1", "NQO1",         # detoxification
    "AXL", "VIM", "ZEB1", "TWIST1", "SNAI2", "FN1", "CD44", "SOX2",  # mesenchymal / persister
    "MET",                                                   # bypass signalling
    "BCL2L1", "MCL1",                                        # anti-apoptosis
)
"""The 20 genes up-regulated by resistant cell lines and cells (the planted ground truth)."""

MT_GENES = (
    "MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
    "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB",
)
"""The 13 protein-coding mitochondrial genes of the panel."""

# Relative share of each MT gene within mitochondrial reads (MT-CO1 and MT-CO3 dominate in
# 10x data, MT-ND6 and MT-ATP8 are rare); same order as MT_GENES.
_MT_WEIGHTS = np.array([6, 6, 20, 10, 2, 12, 12, 4, 2, 10, 3, 1, 10], dtype=float)

STATE_MARKERS = {
    "epithelial": ("EPCAM", "KRT8", "KRT18", "KRT19", "CLDN4", "CLDN7", "ELF3", "SPINT2", "CDH1",
                   "KRT7", "TACSTD2", "AGR2", "MUC1", "CD24", "S100A14"),
    "cycling": ("MKI67", "TOP2A", "CENPF", "NUSAP1", "ASPM", "CDK1", "CCNB1", "CCNB2", "UBE2C",
                "BIRC5", "TPX2", "PBK", "KIF20A", "RRM2", "TYMS", "MCM2", "PCNA"),
    "hypoxic": ("VEGFA", "CA9", "NDRG1", "BNIP3", "PGK1", "SLC2A1", "ADM", "ANKRD37", "EGLN3",
                "P4HA1", "ANGPTL4", "LOX", "ERO1A", "DDIT4", "PFKFB3"),
    "interferon": ("ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "OAS1", "STAT1", "IFI27", "IFITM1",
                   "BST2", "RSAD2", "XAF1", "HLA-B", "LY6E", "IFI44L"),
    "stress": ("FOS", "JUN", "JUNB", "EGR1", "ATF3", "IER2", "DUSP1", "HSPA1A", "HSPA1B", "HSPB1",
               "DNAJB1", "ZFP36", "KLF6", "NR4A1", "PPP1R15A"),
}
"""Marker genes of each simulated tumour cell state (obs ``cluster``)."""

CELL_STATES = tuple(STATE_MARKERS)
"""Names of the tumour cell states, in the order of their categories."""

# Per state: share of cells, relative enrichment in resistant cells, relative library size.
_STATE_PROPORTION = np.array([0.32, 0.20, 0.18, 0.15, 0.15])
_STATE_RESISTANCE = np.array([0.7, 0.35, 1.6, 0.8, 2.0])
_STATE_DEPTH = np.array([1.0, 1.3, 0.9, 1.0, 1.05])

_TISSUES = {
    # name: (share of cell lines, epithelial?, lineage markers)
    "lung": (0.20, True, ("NKX2-1", "SFTPB", "NAPSA", "SFTPC", "SCGB3A1", "SFTPA1")),
    "haematopoietic_and_lymphoid": (0.15, False, ("PTPRC", "CD19", "CD79A", "CD3E", "SPI1",
                                                  "CD3D", "CD34", "MPO", "LYZ", "MS4A1")),
    "large_intestine": (0.11, True, ("CDX2", "CDX1", "VIL1", "LGALS4", "CDH17", "KRT20",
                                     "CEACAM5", "TFF3")),
    "breast": (0.10, True, ("ESR1", "GATA3", "FOXA1", "PGR", "TFF1", "SCGB2A2", "ERBB2")),
    "central_nervous_system": (0.10, False, ("GFAP", "OLIG2", "FABP7", "PTPRZ1", "NES",
                                             "BCAN", "S100B")),
    "skin": (0.10, False, ("MITF", "PMEL", "MLANA", "TYR", "DCT", "SOX10", "TYRP1")),
    "ovary": (0.12, True, ("PAX8", "WT1", "MUC16", "MSLN", "WFDC2")),
    "pancreas": (0.12, True, ("MSLN", "S100P", "CEACAM6", "TFF1", "KRT17", "AGR2")),
}
_EPITHELIAL_CORE = ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "CLDN4", "CLDN7", "ELF3", "ESRP1")

_HIGHLY_EXPRESSED = (
    "ACTB", "ACTG1", "GAPDH", "EEF1A1", "EEF2", "TPT1", "TMSB4X", "TMSB10", "B2M", "MALAT1",
    "FTL", "FTH1", "PTMA", "UBA52", "UBB", "HSP90AB1", "HSPA8", "PPIA", "PFN1", "CFL1", "MYL6",
    "TUBA1B", "NACA", "BTF3", "EIF1", "SERF2", "H3-3B", "NPM1", "HNRNPA1", "S100A6", "LGALS1",
    "ENO1", "LDHA", "ALDOA", "PKM", "YWHAZ", "CD63", "SRP14", "EEF1D", "EEF1G", "PABPC1",
)

_BIOLOGY_SEED = 20240611   # the fixed "biology"; never tied to the user's seed
_BULK_STREAM, _TUMOUR_STREAM = 1, 2   # independent random streams for the same user seed
_CHUNK_CELLS = 500         # cells simulated at once (bounds memory for large n_cells)
_PANEL_TPM_SHARE = 0.3     # the panel's share of a whole transcriptome's TPM in bulk


@lru_cache(maxsize=1)
def demo_genes() -> tuple[str, ...]:
    """Return the full gene panel of the simulator (2,000 real HGNC symbols, sorted).

    Returns
    -------
    tuple of str
        The symbols of ``scatd_core/data/demo_genes.txt``. The bulk panel and the tumour panel
        are each a subset of it.
    """
    text = resources.files("scatd_core").joinpath("data", "demo_genes.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class _Biology:
    """Gene-level parameters shared by every simulated dataset (see the module docstring)."""

    genes: np.ndarray              # (G,) symbols, panel order
    is_mt: np.ndarray              # (G,) bool
    log_abundance: np.ndarray      # (G,) natural-log relative abundance (non-MT genes)
    dispersion: np.ndarray         # (G,) negative binomial dispersion (var = mu + phi mu^2)
    program_effect: np.ndarray     # (G,) natural-log fold change per unit program activity
    in_bulk: np.ndarray            # (G,) bool
    in_tumour: np.ndarray          # (G,) bool
    tissue_effect: np.ndarray      # (n_tissues, G)
    tissue_program_shift: np.ndarray  # (n_tissues,)
    factor_loadings: np.ndarray    # (n_factors, G)
    proliferation: np.ndarray      # (G,) loading of the proliferation axis
    state_effect: np.ndarray       # (n_states, G)


def _indices(genes: np.ndarray, symbols) -> np.ndarray:
    position = {g: i for i, g in enumerate(genes)}
    return np.array([position[s] for s in symbols if s in position], dtype=int)


@lru_cache(maxsize=1)
def _biology() -> _Biology:
    rng = np.random.default_rng(_BIOLOGY_SEED)
    genes = np.array(demo_genes())
    n_genes = genes.size
    is_mt = np.isin(genes, MT_GENES)
    program = _indices(genes, RESISTANCE_PROGRAM)
    ribosomal = np.flatnonzero(np.char.startswith(genes.astype(str), "RPL")
                               | np.char.startswith(genes.astype(str), "RPS"))

    log_abundance = np.clip(rng.normal(-1.0, 1.6, n_genes), -6.0, 3.0)
    log_abundance[ribosomal] = rng.normal(3.0, 0.4, ribosomal.size)
    highly_expressed = _indices(genes, _HIGHLY_EXPRESSED)
    log_abundance[highly_expressed] = rng.normal(3.3, 0.5, highly_expressed.size)
    log_abundance[program] = rng.normal(-0.3, 0.8, program.size)
    log_abundance[is_mt] = 0.0  # MT genes are handled by their own share of the counts

    dispersion = np.exp(rng.normal(np.log(0.3), 0.4, n_genes))
    program_effect = np.zeros(n_genes)
    program_effect[program] = rng.uniform(1.0, 1.6, program.size)

    # Genes each modality lacks: never the program, MT genes or any marker.
    protected = np.zeros(n_genes, dtype=bool)
    protected[program] = True
    protected |= is_mt
    for markers in STATE_MARKERS.values():
        protected[_indices(genes, markers)] = True
    for _, _, markers in _TISSUES.values():
        protected[_indices(genes, markers)] = True
    protected[_indices(genes, _EPITHELIAL_CORE)] = True
    droppable = rng.permutation(np.flatnonzero(~protected))
    n_bulk_only_missing, n_tumour_only_missing = round(0.10 * n_genes), round(0.05 * n_genes)
    in_bulk = np.ones(n_genes, dtype=bool)
    in_bulk[droppable[:n_bulk_only_missing]] = False
    in_tumour = np.ones(n_genes, dtype=bool)
    in_tumour[droppable[n_bulk_only_missing:n_bulk_only_missing + n_tumour_only_missing]] = False

    epithelial = _indices(genes, _EPITHELIAL_CORE)
    tissue_effect = np.zeros((len(_TISSUES), n_genes))
    for t, (_, is_epithelial, markers) in enumerate(_TISSUES.values()):
        touched = rng.random(n_genes) < 0.25
        tissue_effect[t, touched] = rng.normal(0.0, 0.4, touched.sum())
        tissue_effect[t, epithelial] += 2.0 if is_epithelial else -1.5
        idx = _indices(genes, markers)
        tissue_effect[t, idx] += rng.uniform(1.5, 3.0, idx.size)
    tissue_effect[:, is_mt] = 0.0
    tissue_program_shift = rng.normal(0.0, 0.35, len(_TISSUES))

    factor_loadings = rng.normal(0.0, 0.25, (6, n_genes))
    factor_loadings[:, is_mt] = 0.0
    factor_loadings[:, program] = 0.0  # keep the program a clean axis of its own
    proliferation = np.zeros(n_genes)
    proliferation[_indices(genes, STATE_MARKERS["cycling"])] = 1.0

    state_effect = np.zeros((len(STATE_MARKERS), n_genes))
    for k, markers in enumerate(STATE_MARKERS.values()):
        touched = rng.random(n_genes) < 0.05
        state_effect[k, touched] = rng.normal(0.0, 0.3, touched.sum())
        idx = _indices(genes, markers)
        state_effect[k, idx] = rng.uniform(1.2, 2.4, idx.size)
    state_effect[:, is_mt] = 0.0
    state_effect[:, program] = 0.0  # the program is tied to response, not to a state

    return _Biology(genes, is_mt, log_abundance, dispersion, program_effect, in_bulk, in_tumour,
                    tissue_effect, tissue_program_shift, factor_loadings, proliferation,
                    state_effect)


def _expression_fractions(log_expr: np.ndarray, is_mt: np.ndarray,
                          mt_fraction: np.ndarray) -> np.ndarray:
    """Turn per-sample log expression into fractions of all counts, MT genes taking mt_fraction."""
    log_expr = np.where(is_mt, -np.inf, log_expr)
    log_expr -= log_expr.max(axis=1, keepdims=True)
    fractions = np.exp(log_expr)
    fractions *= (1.0 - mt_fraction)[:, None] / fractions.sum(axis=1, keepdims=True)
    fractions[:, is_mt] = mt_fraction[:, None] * (_MT_WEIGHTS / _MT_WEIGHTS.sum())
    return fractions


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}.")


def _check_fraction(**values) -> None:
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def is_simulated(adata) -> bool:
    """Whether ``adata`` was made by this module (its ``uns['simulation']`` record, kept in an h5ad
    written from it): a model trained on such cell lines is a demo model, says nothing about real
    cells, and is marked so (:func:`scatd_core.train.train_drug_model`)."""
    record = getattr(adata, "uns", {}).get("simulation") if adata is not None else None
    return isinstance(record, dict) and str(record.get("simulator", "")).startswith("scatd_core.demo.simulate.")


def _provenance(function: str, seed: int, parameters: dict) -> dict:
    from scatd_core import __version__

    return {
        "label": SIMULATED_DATA_LABEL,
        "simulator": f"scatd_core.demo.simulate.{function}",
        "scatd_version": __version__,
        "seed": int(seed),
        "parameters": parameters,
        "resistance_program": list(RESISTANCE_PROGRAM),
        "demo_drug": DEMO_DRUG,
    }


def simulate_bulk(n_cell_lines: int = 300, seed: int = 0, *, program_strength: float = 1.0,
                  missing_label_fraction: float = 0.0) -> tuple[ad.AnnData, pd.DataFrame]:
    """Simulate a bulk cancer cell-line panel and its drug-response labels.

    Parameters
    ----------
    n_cell_lines
        Number of cell lines.
    seed
        Seed of the sampling (the gene-level biology is fixed, see the module docstring).
    program_strength
        Scales the effect of the resistance program on expression (1 = default; 0 leaves the
        labels without any expression signal of the program).
    missing_label_fraction
        Fraction of (cell line, drug) pairs left unscreened (``NaN``), as in real screens.

    Returns
    -------
    bulk : anndata.AnnData
        Cell lines x genes, dense ``float32`` ``log2(TPM + 1)`` values on the bulk panel
        (~1,800 genes). ``obs['tissue']`` (categorical), ``var['resistance_program']`` (bool),
        ``uns['simulation']`` (provenance: label, seed, parameters, program, demo drug).
    labels : pandas.DataFrame
        Cell lines (index, unnamed, same ids as ``bulk.obs_names``) x drugs (:data:`DRUGS`),
        values ``"sensitive"`` / ``"resistant"`` (or ``NaN`` when unscreened): the format of
        GDSC's ``ALL_label_binary_wf.csv`` once written with ``to_csv``.
    """
    _check_positive(n_cell_lines=n_cell_lines)
    _check_fraction(missing_label_fraction=missing_label_fraction)
    bio = _biology()
    rng = np.random.default_rng([_BULK_STREAM, seed])
    n = int(n_cell_lines)

    tissue_names = list(_TISSUES)
    shares = np.array([v[0] for v in _TISSUES.values()])
    tissue = rng.choice(len(tissue_names), size=n, p=shares / shares.sum())
    activity = rng.normal(bio.tissue_program_shift[tissue], 1.0)
    proliferation = rng.normal(0.0, 1.0, n)
    factors = rng.normal(0.0, 1.0, (n, bio.factor_loadings.shape[0]))

    log_expr = (bio.log_abundance + bio.tissue_effect[tissue] + factors @ bio.factor_loadings
                + 0.6 * proliferation[:, None] * bio.proliferation
                + program_strength * activity[:, None] * bio.program_effect
                + rng.normal(0.0, 0.3, (n, bio.genes.size)))
    mt_fraction = rng.uniform(0.02, 0.06, n)
    tpm = 1e6 * _PANEL_TPM_SHARE * _expression_fractions(log_expr, bio.is_mt, mt_fraction)
    values = np.log2(tpm[:, bio.in_bulk] + 1.0).astype(np.float32)

    ids = pd.Index([f"SIMCL-{i + 1:04d}" for i in range(n)])
    haematopoietic = tissue == tissue_names.index("haematopoietic_and_lymphoid")
    logits = {
        DEMO_DRUG: 1.9 + 2.2 * activity + rng.normal(0.0, 1.0, n),
        "DEMOPLATIN": 1.1 - 1.4 * proliferation + 0.7 * activity + rng.normal(0.0, 1.0, n),
        "DEMOLIMUS": 1.8 - 2.5 * haematopoietic + rng.normal(0.0, 1.2, n),
    }
    labels = pd.DataFrame(index=ids)
    for drug in DRUGS:
        resistant = rng.random(n) < 1.0 / (1.0 + np.exp(-logits[drug]))
        column = pd.Series(np.where(resistant, "resistant", "sensitive"), index=ids, dtype=object)
        column[rng.random(n) < missing_label_fraction] = np.nan
        labels[drug] = column

    genes = bio.genes[bio.in_bulk]
    bulk = ad.AnnData(
        X=values,
        obs=pd.DataFrame({"tissue": pd.Categorical([tissue_names[t] for t in tissue],
                                                   categories=tissue_names)}, index=ids),
        var=pd.DataFrame({"resistance_program": np.isin(genes, RESISTANCE_PROGRAM)},
                         index=pd.Index(genes)),
    )
    bulk.uns["simulation"] = _provenance("simulate_bulk", seed, {
        "n_cell_lines": n, "program_strength": float(program_strength),
        "missing_label_fraction": float(missing_label_fraction), "values": "log2(TPM+1)"})
    return bulk, labels


def _barcodes(rng: np.random.Generator, sample_index: np.ndarray) -> list[str]:
    """10x-like barcodes ``ACGT...-k`` (k = sample number), unique within the dataset."""
    letters = np.array(list("ACGT"))
    codes = rng.integers(0, 4, (sample_index.size, 16))
    while True:
        names = ["".join(letters[row]) + f"-{s + 1}" for row, s in zip(codes, sample_index)]
        duplicated = pd.Index(names).duplicated()
        if not duplicated.any():
            return names
        codes[duplicated] = rng.integers(0, 4, (int(duplicated.sum()), 16))


def simulate_tumour(n_cells: int = 2000, seed: int = 0, *, n_samples: int = 3,
                    resistant_fraction: float = 0.3, median_counts: float = 3000.0,
                    program_strength: float = 1.0, batch_strength: float = 0.15,
                    low_quality_fraction: float = 0.03, panel_responses: bool = False) -> ad.AnnData:
    """Simulate single-cell RNA-seq counts of a tumour with sensitive and resistant cells.

    Parameters
    ----------
    n_cells
        Number of cells.
    seed
        Seed of the sampling (the gene-level biology is fixed, see the module docstring).
    n_samples
        Number of patients / samples (``obs['sample']``: ``P1``, ``P2``, ...).
    resistant_fraction
        Expected fraction of resistant cells over the whole dataset (it varies by cell state
        and sample around this value).
    median_counts
        Median library size (total UMI counts per cell) before per-sample depth differences.
    program_strength
        Scales the up-regulation of the resistance program in resistant cells (1 = default,
        about 3- to 5-fold; 0 makes resistant cells indistinguishable).
    batch_strength
        Standard deviation of the per-sample, per-gene log expression shift (0 = no batch).
    low_quality_fraction
        Fraction of damaged cells (low counts, 15-45% mitochondrial reads).
    panel_responses
        Also give each cell its true response to the screen's two other drugs
        (``obs['response_DEMOPLATIN']``, ``obs['response_DEMOLIMUS']``; :func:`panel_truth`), drawn
        from a random stream of their own, so every other field is the same with or without them.

    Returns
    -------
    anndata.AnnData
        Cells x genes (tumour panel, ~1,900 genes). ``X`` holds raw integer UMI counts as a
        ``scipy.sparse.csr_matrix`` of ``float32``. Sets the following fields:

        - ``obs['sample']``: patient / sample (categorical)
        - ``obs['cluster']``: cell state, one of :data:`CELL_STATES` (categorical)
        - ``obs['response']``: ground truth, ``"sensitive"`` / ``"resistant"`` (categorical)
        - with ``panel_responses``: ``obs['response_DEMOPLATIN']``, ``obs['response_DEMOLIMUS']``, likewise
        - ``var['resistance_program']``: whether the gene is in :data:`RESISTANCE_PROGRAM`
        - ``uns['simulation']``: provenance (label, seed, parameters, program, demo drug)
    """
    _check_positive(n_cells=n_cells, n_samples=n_samples, median_counts=median_counts)
    _check_fraction(resistant_fraction=resistant_fraction,
                    low_quality_fraction=low_quality_fraction)
    if batch_strength < 0:
        raise ValueError(f"batch_strength must be >= 0, got {batch_strength!r}.")
    bio = _biology()
    rng = np.random.default_rng([_TUMOUR_STREAM, seed])
    n, n_states = int(n_cells), len(CELL_STATES)
    sample_names = [f"P{i + 1}" for i in range(int(n_samples))]

    # Who is where: sample sizes, state composition per sample, response per state and sample.
    sample = rng.choice(len(sample_names), size=n, p=rng.dirichlet(np.full(len(sample_names), 8.0)))
    composition = rng.dirichlet(20.0 * _STATE_PROPORTION, size=len(sample_names))
    state = np.empty(n, dtype=int)
    for s in range(len(sample_names)):
        members = np.flatnonzero(sample == s)
        state[members] = rng.choice(n_states, size=members.size, p=composition[s])
    enrichment = _STATE_RESISTANCE / (_STATE_PROPORTION @ _STATE_RESISTANCE)
    sample_tilt = np.exp(rng.normal(0.0, 0.25, len(sample_names)))
    p_resistant = np.clip(resistant_fraction * enrichment[state] * sample_tilt[sample], 0.0, 0.95)
    resistant = rng.random(n) < p_resistant
    activity = rng.normal(np.where(resistant, 1.0, 0.0), 0.25)

    # Depth and quality.
    sample_depth = np.exp(rng.normal(0.0, 0.25, len(sample_names)))
    library = (median_counts * sample_depth[sample] * _STATE_DEPTH[state]
               * np.exp(rng.normal(0.0, 0.45, n)))
    mt_fraction = rng.beta(4.0, 96.0, n)
    damaged = rng.random(n) < low_quality_fraction
    library[damaged] /= 3.0
    mt_fraction[damaged] = rng.uniform(0.15, 0.45, int(damaged.sum()))

    barcodes = _barcodes(rng, sample)

    keep = bio.in_tumour
    batch = rng.normal(0.0, batch_strength, (len(sample_names), bio.genes.size))
    shape = 1.0 / bio.dispersion[keep]
    blocks = []
    for start in range(0, n, _CHUNK_CELLS):
        rows = slice(start, min(start + _CHUNK_CELLS, n))
        log_expr = (bio.log_abundance + bio.state_effect[state[rows]] + batch[sample[rows]]
                    + program_strength * activity[rows, None] * bio.program_effect)
        mean = library[rows, None] * _expression_fractions(log_expr, bio.is_mt,
                                                           mt_fraction[rows])[:, keep]
        counts = rng.poisson(rng.gamma(shape, mean / shape))  # negative binomial
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
    counts = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]

    genes = bio.genes[keep]
    obs = pd.DataFrame({
        "sample": pd.Categorical([sample_names[s] for s in sample], categories=sample_names),
        "cluster": pd.Categorical([CELL_STATES[k] for k in state], categories=list(CELL_STATES)),
        "response": pd.Categorical(np.where(resistant, "resistant", "sensitive"),
                                   categories=["sensitive", "resistant"]),
    }, index=pd.Index(barcodes))
    if panel_responses:
        for drug, truth in panel_truth(state, activity, seed).items():
            obs[panel_response_column(drug)] = pd.Categorical(np.where(truth, "resistant", "sensitive"),
                                                              categories=["sensitive", "resistant"])
    tumour = ad.AnnData(
        X=counts, obs=obs,
        var=pd.DataFrame({"resistance_program": np.isin(genes, RESISTANCE_PROGRAM)},
                         index=pd.Index(genes)),
    )
    tumour.uns["simulation"] = _provenance("simulate_tumour", seed, {
        "n_cells": n, "n_samples": int(n_samples), "resistant_fraction": float(resistant_fraction),
        "median_counts": float(median_counts), "program_strength": float(program_strength),
        "batch_strength": float(batch_strength),
        "low_quality_fraction": float(low_quality_fraction), "values": "raw UMI counts"})
    return tumour


#: Units of the bulk panel's proliferation axis a cycling tumour cell carries: the cycling markers are
#: up 1.2-2.4 (natural log; ~1.8) in cycling cells, and 0.6 per unit of proliferation in the bulk.
_CYCLING_PROLIFERATION = 3.0
_PANEL_TRUTH_STREAM = 3


def panel_response_column(drug: str) -> str:
    """The column of a tumour's true response to ``drug``: ``response`` for :data:`DEMO_DRUG`,
    ``response_<DRUG>`` for the others (made only with ``simulate_tumour(panel_responses=True)``)."""
    return "response" if drug == DEMO_DRUG else f"response_{drug}"


def panel_truth(state: np.ndarray, activity: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Each tumour cell's true resistance to DEMOPLATIN and DEMOLIMUS, by the logistic rules of the bulk
    labels (:func:`simulate_bulk`) applied to the cell: DEMOPLATIN ``logit = 1.1 - 1.4 p + 0.7 a + N(0, 1)``
    with ``p`` the proliferation of a cycling cell (:data:`_CYCLING_PROLIFERATION`, 0 otherwise) and ``a``
    its program activity; DEMOLIMUS ``logit = 1.8 + N(0, 1.2)``: it spares haematopoietic cells, and the
    tumour has none, so nothing in a cell's expression tells its response. Drawn from a stream of their
    own (``seed``), so they change nothing else of the tumour."""
    rng = np.random.default_rng([_TUMOUR_STREAM, seed, _PANEL_TRUTH_STREAM])
    n = len(state)
    proliferation = np.where(np.asarray(state) == CELL_STATES.index("cycling"), _CYCLING_PROLIFERATION, 0.0)
    logits = {"DEMOPLATIN": 1.1 - 1.4 * proliferation + 0.7 * np.asarray(activity) + rng.normal(0.0, 1.0, n),
              "DEMOLIMUS": 1.8 + rng.normal(0.0, 1.2, n)}
    return {drug: rng.random(n) < 1.0 / (1.0 + np.exp(-logit)) for drug, logit in logits.items()}


def simulate_demo(seed: int = 0, *, n_cell_lines: int = 300,
                  n_cells: int = 2000) -> tuple[ad.AnnData, pd.DataFrame, ad.AnnData]:
    """Simulate the demo: the default bulk panel, its labels and the default tumour.

    Parameters
    ----------
    seed
        Seed passed to :func:`simulate_bulk` and :func:`simulate_tumour` (their random streams
        are independent of each other).
    n_cell_lines, n_cells
        Sizes (the defaults are the demo's; tests use smaller ones).

    Returns
    -------
    bulk : anndata.AnnData
        ``n_cell_lines`` cell lines, see :func:`simulate_bulk`.
    labels : pandas.DataFrame
        Their labels for :data:`DRUGS`, the demo drug :data:`DEMO_DRUG` first.
    tumour : anndata.AnnData
        ``n_cells`` cells from 3 samples, see :func:`simulate_tumour`.
    """
    bulk, labels = simulate_bulk(n_cell_lines, seed=seed)
    return bulk, labels, simulate_tumour(n_cells, seed=seed)
