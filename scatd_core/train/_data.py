"""What training sees: bulk labels matched by ID, the gene panel, each domain standardised."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scatd_core._words import counted
from scatd_core.bundle import INPUT_KINDS, sha256_file
from scatd_core.errors import InputError
from scatd_core.inputs import InputSpec, ModelInput
from scatd_core.labels import LABEL_MAPPING, check_bulk_orientation, drug_labels, read_label_table
from scatd_core.preprocess import ALL_GENES

MIN_PANEL_GENES = 10


def _data_sha256(adata: ad.AnnData) -> str:
    """Hash of names and values (float32), for provenance when no file is at hand."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update(b"\0")
    h.update("\n".join(map(str, adata.var_names)).encode())
    X = adata.X
    for start in range(0, adata.n_obs, 4096):
        block = X[start:start + 4096]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        h.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    return h.hexdigest()


def _frame_sha256(df: pd.DataFrame) -> str:
    return hashlib.sha256(df.to_csv().encode()).hexdigest()



def _input_spec(backbone: str, n_inputs: int, genes: list[str] | None) -> InputSpec:
    """The model input of a training run, so ModelInput computes it exactly as predict will."""
    kind = INPUT_KINDS[backbone]
    spec = InputSpec(backbone=backbone, input_kind=kind, input_dim=n_inputs, genes=genes, name="training input",
                     transform="standardize" if kind == "expression" else "none",
                     library_size=ALL_GENES)  # counts scaled by each sample's total over all its genes
    if kind == "embedding":  # placeholder statistics; replaced by the bulk's own below
        spec.style_mean, spec.style_std = np.zeros(n_inputs), np.ones(n_inputs)
    return spec


def _inputs(adata: ad.AnnData, spec: InputSpec, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(usable row indices, model input float32, not-scored counts)`` through ModelInput
    (``mask``: the cells that may be used, e.g. those passing QC; the others count as filtered)."""
    mi = ModelInput(adata, spec, mask=mask, batch_size=4096)
    rows, parts = [], []
    for _stop, idx, x in mi.batches():
        rows.append(idx)
        parts.append(x)
    return np.concatenate(rows), np.concatenate(parts), {**mi.not_scored(), "log_normalised": bool(mi.log_normalise)}


@dataclass
class TrainingData:
    """Standardised model inputs of both domains and the bulk labels (what training sees)."""

    backbone: str
    features: list[str] | None  # the gene panel (expression backbones), in model input order
    bulk_all: np.ndarray  # every usable bulk sample, for pretraining
    bulk_x: np.ndarray  # labelled bulk samples
    bulk_y: np.ndarray  # 1 = resistant
    bulk_ids: list[str]
    target_x: np.ndarray
    target_rows: np.ndarray  # target cells that could be used (indices into the target)
    target_ids: list[str]
    style_mean: np.ndarray | None = None
    style_std: np.ndarray | None = None
    report: dict = field(default_factory=dict)


def target_mask_of(target: ad.AnnData, mask) -> np.ndarray | None:
    """The target cells training may use: ``None`` (all), a boolean array over the cells, or the
    name of a boolean obs column (e.g. ``'scatd_qc_pass'``, the app's QC filter). Cells left out
    are neither trained on nor evaluated, as prediction leaves filtered cells unscored."""
    from scatd_core._keys import QC_PASS, columns_text
    from scatd_core.predict import _mask_of

    column = isinstance(mask, str) and mask != QC_PASS  # a column of the user's, not the QC filter's
    return _mask_of(target, mask, subject="The target",
                    missing_hint=f"Its columns: {columns_text(target.obs.columns, also=[QC_PASS])}.",
                    nothing_left=(f"Every target cell is False in the mask column '{mask}', so there is nothing to "
                                  "adapt to." if column else
                                  "Every target cell is filtered out (QC), so there is nothing to adapt to."),
                    nothing_left_hint=("Name another --target-mask column (True for the cells to use)." if column else
                                       "Loosen the QC filter (the Data page), or name another --target-mask column."))


def prepare_training_data(bulk: ad.AnnData, labels, drug: str, target: ad.AnnData, *,
                          backbone: str = "dist_vae", backbone_genes: list[str] | None = None,
                          target_mask: np.ndarray | None = None) -> TrainingData:
    """Match labels to bulk samples by ID, find the gene panel and standardise each domain.

    ``target_mask``: the target cells that may be used (:func:`target_mask_of`); the others
    are left out of the target's standardisation, the adaptation and the evaluation.

    The label table's orientation is checked against the bulk's sample IDs first
    (:func:`~scatd_core.labels.check_orientation`): a table whose columns match more of them than
    its rows (transposed), as many (either way) or that matches neither way is refused with the
    counts; drug columns that are sample IDs too give a warning.

    Raises :class:`InputError` naming what does not fit (no shared IDs, too few shared genes,
    a class with too few cell lines...).
    """
    bulk_names = [str(n) for n in bulk.obs_names]
    table = read_label_table(labels)
    # the bulk's IDs say which way round the table is, before its drug is looked for
    shown = "The label table" if isinstance(labels, pd.DataFrame) else f"The label table {Path(labels).name}"
    orientation_warning = check_bulk_orientation(table, bulk, shown)
    dl = drug_labels(table, drug)
    labelled = dl.labels.reindex([n for n in bulk_names if n in dl.labels.index])
    if labelled.empty:
        raise InputError(
            f"None of the {len(dl.labels)} cell lines labelled for {dl.drug} (e.g. "
            f"{', '.join(map(str, dl.labels.index[:3]))}) is among the {bulk.n_obs} bulk samples (e.g. "
            f"{', '.join(bulk_names[:3])}).",
            "The label table's first column must use the bulk data's sample IDs (e.g. both DepMap ACH- IDs).")
    report: dict = {"drug": dl.drug, "labels": {
        "n_labelled_in_bulk": int(len(labelled)), "n_missing_label": int(dl.n_missing),
        "n_bulk_without_label": int(bulk.n_obs - len(labelled)),
        "n_labels_not_in_bulk": int(len(dl.labels) - len(labelled)),
        "sensitive": int((labelled == "sensitive").sum()), "resistant": int((labelled == "resistant").sum()),
    }}
    kind = INPUT_KINDS[backbone]
    if kind == "expression":
        bulk_genes = [str(g) for g in bulk.var_names]
        target_genes = set(map(str, target.var_names))
        order = backbone_genes if backbone_genes is not None else bulk_genes
        allowed = set(bulk_genes) & target_genes
        panel = list(dict.fromkeys(g for g in order if g in allowed))
        report["genes"] = {"n_bulk": len(bulk_genes), "n_target": len(target_genes),
                           "n_backbone": len(backbone_genes) if backbone_genes is not None else None,
                           "n_panel": len(panel), "examples_bulk_only": sorted(set(bulk_genes) - target_genes)[:10],
                           "examples_target_only": sorted(target_genes - set(bulk_genes))[:10]}
        if len(panel) < MIN_PANEL_GENES:
            upper = {g.upper() for g in target_genes}
            n_any_case = sum(g.upper() in upper for g in set(bulk_genes))  # lasp1 in the bulk, LASP1 in the target
            raise InputError(
                f"Bulk and target share only {len(panel)} genes"
                + (" that the backbone knows" if backbone_genes is not None else "")
                + f" (bulk e.g. {', '.join(bulk_genes[:3])}; target e.g. "
                f"{', '.join(map(str, target.var_names[:3]))})"
                + (f"; ignoring case they would share {n_any_case:,}." if n_any_case > len(panel) else "."),
                "Both need the same gene identifiers (HGNC symbols)"
                + (_case_hint(bulk_genes, list(map(str, target.var_names))) if n_any_case > len(panel)
                   else "; convert Ensembl IDs first."))
        spec = _input_spec(backbone, len(panel), panel)
    else:
        n_feat = bulk.n_vars
        spec = _input_spec(backbone, n_feat, None)
        panel = None
        report["features"] = {"n": n_feat}

    b_rows, b_x, b_reasons = _inputs(bulk, spec)
    style_mean = style_std = None
    if kind == "embedding":  # AdaIN target = the bulk's own statistics, as the original inference
        style_mean, style_std = b_x.astype(np.float64).mean(0), b_x.astype(np.float64).std(0)
        spec.style_mean, spec.style_std = style_mean, style_std
        b_rows, b_x, b_reasons = _inputs(bulk, spec)
    t_rows, t_x, t_reasons = _inputs(target, spec, target_mask)
    pos = {n: i for i, n in enumerate(bulk_names)}
    usable = set(b_rows.tolist())
    keep = [pos[n] for n in labelled.index if pos[n] in usable]
    where = {r: i for i, r in enumerate(b_rows.tolist())}
    bulk_x = b_x[[where[r] for r in keep]]
    y = labelled.loc[[bulk_names[r] for r in keep]].map(LABEL_MAPPING).to_numpy(dtype=np.int64)
    report["labels"]["n_unusable_bulk"] = int(len(labelled) - len(keep))
    report["bulk"] = {"n_samples": int(bulk.n_obs), "n_used_for_pretraining": int(len(b_rows)), **b_reasons}
    report["warnings"] = _renamed_duplicates(bulk, report) + ([orientation_warning] if orientation_warning else [])
    report["target"] = {"n_cells": int(target.n_obs), "n_used": int(len(t_rows)), **t_reasons}
    n_min = int(min((y == 0).sum(), (y == 1).sum()))
    if n_min < 2:
        raise InputError(f"{dl.drug}: only {int((y == 0).sum())} sensitive and {int((y == 1).sum())} resistant "
                         "labelled cell lines in the bulk data; at least 2 of each are needed.",
                         "Choose a drug with more labelled cell lines of both classes.")
    return TrainingData(backbone, panel, b_x, bulk_x, y, [bulk_names[r] for r in keep], t_x, t_rows,
                        [str(target.obs_names[i]) for i in t_rows], style_mean, style_std, report)




def _renamed_duplicates(bulk: ad.AnnData, report: dict) -> list[str]:
    """A warning when the reader renamed duplicated bulk sample IDs (``ID-1``, ``ID-2``...): only the
    first of each is matched to its label, the copies count as samples without a label."""
    from scatd_core._keys import ORIGINAL_CELL_ID

    if ORIGINAL_CELL_ID not in bulk.obs:
        return []
    original = bulk.obs[ORIGINAL_CELL_ID].astype(str).to_numpy()
    renamed = [(o, str(n)) for o, n in zip(original, bulk.obs_names) if o != str(n)]
    if not renamed:
        return []
    report["bulk"]["n_renamed_duplicates"] = len(renamed)
    examples = ", ".join(f"{o} (copy renamed {n})" for o, n in renamed[:3])
    return [f"{counted(len(renamed), 'bulk sample')} {'has' if len(renamed) == 1 else 'have'} a duplicated ID, "
            f"e.g. {examples}. Only the first sample "
            "of each ID is matched to its label; the renamed copies count as samples without a label (used for "
            "pretraining only). Keep one row per cell line in the bulk file (or average the copies)."]


def labels_record(labels, given: dict | None = None) -> dict:
    """What a model records of its label table: for a file (a path), its name and its sha256; for a
    table the caller read from a file (``given``: ``{"file": name, "sha256": of the file}``; the app's
    upload, the sha256 of its bytes), that record, so that the same file gives the same record from
    the app and the command line; for a table with no file (built from ln(IC50) values in the app,
    the demo's), a hash of its values (``of``: ``table``)."""
    if given and given.get("file") and given.get("sha256"):  # the file's own name, never a folder
        return {"file": Path(str(given["file"]).replace("\\", "/")).name, "sha256": str(given["sha256"])}
    if isinstance(labels, pd.DataFrame):
        return {"sha256": _frame_sha256(labels), "of": "table"}
    return {"file": Path(labels).name, "sha256": sha256_file(labels)}


def read_if_path(obj, what: str, record: dict | None = None):
    """An AnnData and a provenance entry for an AnnData or a file path (``record``: the entry of an
    AnnData the caller read from a file, ``{"file", "sha256"}``, used as given, its file name without
    any folder; the app's upload: the sha256 of the uploaded bytes, as for that file). The bulk's entry
    also has ``values_sha256``, the hash of its sample and gene names and values (float32), the same
    for the same data read from a file by the CLI or uploaded to the app, so that two models' cards
    can be compared whatever the file's format. The target's entry has one hash: its file's, or its
    values' when given as data (hashing a large target's values again would cost time)."""
    if isinstance(obj, ad.AnnData):
        adata, entry = obj, (dict(record) if record else {"sha256": _data_sha256(obj), "of": "values"})
        if record and entry.get("file"):  # the file's own name (an upload's, as a browser gave it), never a folder
            entry["file"] = Path(str(entry["file"]).replace("\\", "/")).name
    else:
        from scatd_core import io

        path = Path(obj)
        adata = io.read(path, samples=what == "bulk")  # bulk rows are samples (cell lines) in its messages
        if adata.isbacked:
            adata = adata.to_memory()
        entry = {"file": path.name, "sha256": sha256_file(path)}
    if what == "bulk" and "values_sha256" not in entry:  # its values too, from a file or given as data
        entry["values_sha256"] = entry["sha256"] if entry.get("of") == "values" else _data_sha256(adata)
    return adata, entry




def embedding_origin(adata: ad.AnnData, backbone: str) -> dict:
    """How the cell embeddings an embedding backbone (VAE_sf/VAE_gf) reads were made: ``computed_by``
    "scATD Studio" with the foundation model's settings (scFoundation: ``key`` rde/cell, ``resolution``
    (the T token), ``max_genes``; Geneformer: ``emb_mode``, ``emb_layer``, ``embedding_dim``) from
    ``uns['scatd_foundation']``, or ``computed_by`` :data:`scatd_core.card.UNKNOWN_EMBEDDINGS` (embeddings the user
    brought: nothing says how)."""
    import json

    from scatd_core._keys import FOUNDATION
    from scatd_core.card import UNKNOWN_EMBEDDINGS

    record = (adata.uns.get(FOUNDATION) or {}).get(backbone)
    if not isinstance(record, dict) or not record.get("identity"):
        return {"computed_by": UNKNOWN_EMBEDDINGS}
    try:
        identity = json.loads(record["identity"])
    except (TypeError, ValueError):
        return {"computed_by": UNKNOWN_EMBEDDINGS}
    options = {str(k): v for k, v in (identity.get("options") or {}).items() if v is not None}
    out = {"computed_by": "scATD Studio", "settings": options}
    model = (record.get("info") or {}).get("model")
    if model:
        out["model"] = str(model)
    if identity.get("version"):
        out["version"] = str(identity["version"])
    return out


def _case_hint(bulk_genes, target_genes) -> str:
    """What to do when bulk and target symbols match only ignoring case: mouse symbols (``Actb``)
    need human orthologues, not upper-casing, as ``scatd predict`` says; else the case to write."""
    from scatd_core.genes import detect_id_type

    for side, names in (("target", target_genes), ("bulk", bulk_genes)):
        if detect_id_type(names) == "mouse_symbol":
            return (f"; the {side}'s genes look like mouse symbols (e.g. {', '.join(map(str, names[:3]))}) and the "
                    "models are human: convert them to human orthologues (e.g. with BioMart), not to upper case. "
                    "If they are human genes written in lower case, write them in upper case (HGNC symbols).")
    return "; write both sides' gene symbols in upper case, as HGNC symbols are."
