"""Target cells whose labels trained a model (few-shot training), kept out of its evaluations.

A model trained with a few labelled target cells (``scatd train --few-shot-labels``, the Train
page's label column with blanks) has seen those cells' labels: scoring it against them again
measures how well it fits its own training labels, not how well it predicts. So the model
records them in its manifest (``manifest['few_shot']``, :func:`manifest_record`): their cell IDs
and the identity of the target they come from (its number of cells and a hash of its cell names).

An evaluation against a label column (:func:`scatd_core.metrics.evaluate_column`, hence the Cells
page, ``scatd report``, ``metrics.csv``, ``report.html`` and the h5ad's ``uns['scatd_report']``)
leaves the labelled training cells out when **the data are the model's training target**: the same
number of cells with the same names (in any order). Matching by name alone is not enough: names
such as ``0``, ``1``, ... or ``AAACCTG...-1`` recur across datasets, and leaving out unrelated
cells that happen to share a name would be wrong. When other data hold some of those names, the
cells are kept and the evaluation says so. A model trained before the IDs were recorded is
evaluated as before, with a note that the evaluation may include its training cells.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass

import numpy as np

#: The manifest's key for the few-shot record (and the run record's, ``uns['<p>']['model']``)
MANIFEST_KEY = "few_shot"
#: Up to this many IDs are stored as a JSON list; more (rare: few-shot labels are few by nature) as
#: the gzip-compressed IDs, one per line, in base64 (``cell_ids_gzip_base64``)
MAX_LISTED_IDS = 1000
#: How an evaluation treats the recorded training cells: ``auto`` leaves them out when the data are
#: the training target, ``exclude`` whenever a cell has one of their names, ``include`` never
MODES = ("auto", "exclude", "include")


def names_sha256(names) -> str:
    """sha256 of a dataset's cell names, sorted (so the same cells in another order match)."""
    text = "\n".join(np.sort(np.asarray([str(n) for n in names], dtype=str)).tolist())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_record(cell_ids, target_names) -> dict:
    """``manifest['few_shot']`` of a model trained with the labelled target cells ``cell_ids`` of the
    target whose cell names are ``target_names`` (all of them, as the data were given)."""
    ids = [str(c) for c in cell_ids]
    record = {"n": len(ids), "target": {"n_cells": int(len(target_names)),
                                        "cell_names_sha256": names_sha256(target_names)}}
    if len(ids) <= MAX_LISTED_IDS:
        record["cell_ids"] = ids
    else:
        packed = gzip.compress("\n".join(ids).encode("utf-8"), mtime=0)
        record["cell_ids_gzip_base64"] = base64.b64encode(packed).decode("ascii")
    return record


def recorded_ids(record) -> list[str]:
    """The cell IDs of a :func:`manifest_record` (also as read back from an h5ad)."""
    if not record:
        return []
    packed = record.get("cell_ids_gzip_base64")
    if packed is not None and str(packed):
        return gzip.decompress(base64.b64decode(str(packed))).decode("utf-8").split("\n")
    ids = record.get("cell_ids")
    return [] if ids is None else [str(c) for c in np.asarray(ids, dtype=object).ravel()]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


@dataclass
class TrainingCells:
    """Which cells of a dataset trained its prediction's model with their labels.

    ``mask``: True for the cells an evaluation leaves out (all False when none are);
    ``status``: ``none`` (the model used no labelled target cells), ``same_target`` (the data are
    its training target: the recorded cells are masked), ``other_data`` (some cells share a
    recorded name, but the data are not the training target: kept), ``absent`` (no cell has a
    recorded name), ``not_recorded`` (a model trained before the cell IDs were recorded),
    ``included`` (masked by the rule, but kept as asked), ``by_name`` (``exclude``: masked by name
    whatever the data); ``n_recorded``: the cells the model records; ``n_in_data``: of them, here."""

    mask: np.ndarray
    status: str
    n_recorded: int = 0
    n_in_data: int = 0
    n_target_cells: int = 0

    def left_out_note(self, n_left: int, column: str) -> str:
        """What an evaluation against ``column`` says about these cells (``n_left`` of them were
        labelled there and left out); ``""`` when there is nothing to say."""
        if self.status in ("same_target", "by_name") and n_left:
            rule = (f"they were recognised by their cell names because these data are the model's training target "
                    f"(the same {self.n_target_cells:,} cell names)" if self.status == "same_target" else
                    "they were recognised by their cell names (as asked, whatever the data)")
            return (f"{_plural(n_left, 'labelled cell')} of '{column}' {'was' if n_left == 1 else 'were'} left out "
                    "of this evaluation because their labels trained the model (few-shot cells, recorded with it); "
                    f"{rule}. Scores on a model's own training labels would overstate it.")
        if self.status == "included" and self.n_in_data:
            return (f"This evaluation includes the {_plural(self.n_in_data, 'cell')} whose labels trained the model "
                    "(few-shot cells; kept as asked), so its scores overstate the model.")
        if self.status == "other_data":
            return (f"{_plural(self.n_in_data, 'cell')} of these data {'has' if self.n_in_data == 1 else 'have'} "
                    "the name of a cell whose label trained the model (few-shot), but these data are not the target it "
                    f"was trained on (that had {self.n_target_cells:,} cells; the cell names here differ), so they "
                    "were kept: the same names in other data need not be the same cells. If they are, leave their "
                    f"labels out of '{column}'.")
        if self.status == "not_recorded":
            return ("This model was trained with labelled target cells (few-shot) whose cell IDs it does not record "
                    "(it was trained before scATD Studio recorded them), so if these data are its training target "
                    "this evaluation may include them and overstate the model. Train it again to have them left "
                    "out, or evaluate on cells whose labels were not used for training.")
        return ""


def _trained_with_labelled_cells(model: dict) -> bool:
    """Whether a run record's model (``uns['<p>']['model']``) was trained with labelled target cells,
    from its provenance or its card (for models that do not record the cells)."""
    if (model.get("provenance") or {}).get("few_shot_labels"):
        return True
    card = model.get("card_json")
    if card:
        import json

        try:
            return bool(json.loads(str(card)).get("data", {}).get("few_shot"))
        except (ValueError, AttributeError):
            return False
    return False


def training_cells(adata, *, key_added: str | None = None, mode: str = "auto") -> TrainingCells:
    """The cells of ``adata`` whose labels trained the model of its prediction (see the module
    docstring for the rule; ``mode``: :data:`MODES`)."""
    from scatd_core._keys import result_keys

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    none = np.zeros(adata.n_obs, dtype=bool)
    model = dict(adata.uns.get(result_keys(key_added).run, {}).get("model") or {})
    record = model.get(MANIFEST_KEY)
    if not record:
        return TrainingCells(none, "not_recorded" if _trained_with_labelled_cells(model) else "none")
    ids = recorded_ids(record)
    target = dict(record.get("target") or {})
    n_target = int(target.get("n_cells", 0))
    names = adata.obs_names.astype(str)
    in_data = np.asarray(names.isin(ids), dtype=bool)
    found = dict(n_recorded=len(ids), n_in_data=int(in_data.sum()), n_target_cells=n_target)
    if not in_data.any():
        return TrainingCells(none, "absent", **found)
    if mode == "exclude":
        return TrainingCells(in_data, "by_name", **found)
    same = adata.n_obs == n_target and names_sha256(names) == target.get("cell_names_sha256")
    if not same:
        return TrainingCells(none, "other_data", **found)
    if mode == "include":
        return TrainingCells(none, "included", **found)
    return TrainingCells(in_data, "same_target", **found)


def without_training_cells(adata, y: np.ndarray, *, key_added: str | None = None) -> np.ndarray:
    """Encoded labels ``y`` (one per cell of ``adata``) with the labels of the cells that trained
    the model removed (NaN), by the rule of :func:`training_cells`: for rankings such as the Cells
    page's top-k precision."""
    y = np.asarray(y, dtype=float).copy()
    y[training_cells(adata, key_added=key_added).mask] = np.nan
    return y
