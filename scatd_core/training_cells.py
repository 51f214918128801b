"""Target cells whose labels trained a model (few-shot training), kept out of its evaluations.

A model trained with a few labelled target cells (``scatd train --few-shot-labels``, the Train
page's label column with blanks) has seen those cells' labels: scoring it against them again
measures how well it fits its own training labels, not how well it predicts. So the model
records them in its manifest (``manifest['few_shot']``, :func:`manifest_record`): the identity of
the target they come from (its number of cells and a hash of its cell names) and the cells
themselves as **keyed hashes** of their IDs, never the IDs.

The key is derived from all the target's cell names (a hash of them in another domain than the
recorded one), so only someone who holds the very same dataset can tell which of its cells trained
the model. A shared model on a lab server is seen by every user, and a prediction copies its
record into ``uns['<p>']['model']`` (every h5ad download): cell barcodes come from a small public
list, so a plain or salted hash of each ID alone could be reversed by trying them all.

An evaluation against a label column (:func:`scatd_core.metrics.evaluate_column`, hence the Cells
page, ``scatd report``, ``metrics.csv``, ``report.html`` and the h5ad's ``uns['scatd_report']``)
leaves the labelled training cells out when **the data are the model's training target**: the same
number of cells with the same names (in any order). Matching by name alone would not be enough:
names such as ``0``, ``1``, ... or ``AAACCTG...-1`` recur across datasets, and leaving out
unrelated cells that happen to share a name would be wrong. On other data nothing is left out and
the evaluation says that, if these cells come from the training target (a subset of it, say), its
scores may include cells whose labels trained the model. A model trained before the IDs were
recorded is evaluated as before, with a note that the evaluation may include its training cells.
Models recorded by the version before the hashes (the IDs themselves, ``cell_ids``) still work.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

#: The manifest's key for the few-shot record (and the run record's, ``uns['<p>']['model']``)
MANIFEST_KEY = "few_shot"
#: Up to this many hashes are stored as a JSON list of hex strings; more (rare: few-shot labels are
#: few by nature) as their bytes, concatenated, in base64 (``cell_id_hashes_base64``)
MAX_LISTED_IDS = 1000
#: Bytes kept of each cell's keyed hash (64 bits: a chance match among a million cells is ~1e-7 of
#: a million recorded cells, and only the training target's cells are ever compared)
HASH_BYTES = 8
#: How the IDs are hashed (recorded with them, so that another scheme can be told apart later)
HASH_SCHEME = "hmac-sha256/64 keyed by the target's cell names"
#: How an evaluation treats the recorded training cells: ``auto`` leaves them out when the data are
#: the training target, ``include`` never
MODES = ("auto", "include")


def _sorted_names(names) -> str:
    return "\n".join(np.sort(np.asarray([str(n) for n in names], dtype=str)).tolist())


def names_sha256(names) -> str:
    """sha256 of a dataset's cell names, sorted (so the same cells in another order match)."""
    return hashlib.sha256(_sorted_names(names).encode("utf-8")).hexdigest()


def _key(names) -> bytes:
    """The secret of a target's cell hashes: a hash of all its cell names in a domain of its own, so
    it is not :func:`names_sha256` (which the record holds) and needs every name to compute."""
    return hashlib.sha256(b"scatd few-shot cell key\n" + _sorted_names(names).encode("utf-8")).digest()


def _hashes(key: bytes, ids) -> list[bytes]:
    return [hmac.new(key, str(c).encode("utf-8"), hashlib.sha256).digest()[:HASH_BYTES] for c in ids]


def manifest_record(cell_ids, target_names) -> dict:
    """``manifest['few_shot']`` of a model trained with the labelled target cells ``cell_ids`` of the
    target whose cell names are ``target_names`` (all of them, as the data were given): the cells as
    keyed hashes, sorted (so not even the label file's order shows)."""
    target_names = list(target_names)
    hashed = sorted(_hashes(_key(target_names), cell_ids))
    record = {"n": len(hashed), "target": {"n_cells": int(len(target_names)),
                                           "cell_names_sha256": names_sha256(target_names)},
              "cell_id_hash": HASH_SCHEME}
    if len(hashed) <= MAX_LISTED_IDS:
        record["cell_id_hashes"] = [h.hex() for h in hashed]
    else:
        record["cell_id_hashes_base64"] = base64.b64encode(b"".join(hashed)).decode("ascii")
    return record


def recorded_hashes(record) -> list[str]:
    """The hex keyed hashes of a :func:`manifest_record` (also as read back from an h5ad)."""
    if not record:
        return []
    packed = record.get("cell_id_hashes_base64")
    if packed is not None and str(packed):
        raw = base64.b64decode(str(packed))
        return [raw[i:i + HASH_BYTES].hex() for i in range(0, len(raw), HASH_BYTES)]
    hashes = record.get("cell_id_hashes")
    return [] if hashes is None else [str(h) for h in np.asarray(hashes, dtype=object).ravel()]


def recorded_ids(record) -> list[str]:
    """The plain cell IDs of a record written before the hashes (``cell_ids``, or gzip-packed);
    ``[]`` for a record of hashes."""
    if not record:
        return []
    packed = record.get("cell_ids_gzip_base64")
    if packed is not None and str(packed):
        return gzip.decompress(base64.b64decode(str(packed))).decode("utf-8").split("\n")
    ids = record.get("cell_ids")
    return [] if ids is None else [str(c) for c in np.asarray(ids, dtype=object).ravel()]


def recorded_cells(record, names) -> np.ndarray:
    """Which of the cell ``names`` (the training target's, all of them) the record holds."""
    names = [str(n) for n in names]
    plain = recorded_ids(record)
    if plain:
        return np.isin(np.asarray(names, dtype=object), np.asarray(plain, dtype=object))
    wanted = set(recorded_hashes(record))
    return np.fromiter((h.hex() in wanted for h in _hashes(_key(names), names)), dtype=bool, count=len(names))


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


@dataclass
class TrainingCells:
    """Which cells of a dataset trained its prediction's model with their labels.

    ``mask``: True for the cells an evaluation leaves out (all False when none are);
    ``status``: ``none`` (the model used no labelled target cells), ``same_target`` (the data are
    its training target: the recorded cells are masked), ``other_data`` (the data are not its
    training target: nothing is masked, and it cannot be told whether some cells come from that
    target), ``absent`` (the training target, but none of the recorded cells: an edited record),
    ``not_recorded`` (a model trained before the cells were recorded), ``included`` (masked by the
    rule, but kept as asked); ``n_recorded``: the cells the model records; ``n_in_data``: of them,
    here (known on the training target only)."""

    mask: np.ndarray
    status: str
    n_recorded: int = 0
    n_in_data: int = 0
    n_target_cells: int = 0

    def left_out_note(self, n_left: int, column: str) -> str:
        """What an evaluation against ``column`` says about these cells (``n_left`` of them were
        labelled there and left out); ``""`` when there is nothing to say."""
        if self.status == "same_target" and n_left:
            return (f"{_plural(n_left, 'labelled cell')} of '{column}' {'was' if n_left == 1 else 'were'} left out "
                    "of this evaluation because their labels trained the model (few-shot cells, recorded with it); "
                    "they were recognised because these data are the model's training target (the same "
                    f"{self.n_target_cells:,} cell names). Scores on a model's own training labels would overstate it.")
        if self.status == "included" and self.n_in_data:
            return (f"This evaluation includes the {_plural(self.n_in_data, 'cell')} whose labels trained the model "
                    "(few-shot cells; kept as asked), so its scores overstate the model.")
        if self.status == "other_data":
            return (f"This model was trained with the labels of {_plural(self.n_recorded, 'cell')} of a dataset of "
                    f"{self.n_target_cells:,} cells (few-shot). These data are not that dataset (not the same cell "
                    "names), so no cell was left out of this evaluation. If these cells come from it (a subset of "
                    f"it, for instance), leave the labels of the cells that trained the model out of '{column}': "
                    "scores on a model's own training labels would overstate it.")
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
    target = dict(record.get("target") or {})
    n_target = int(target.get("n_cells", 0))
    found = dict(n_recorded=int(record.get("n", 0)) or len(recorded_hashes(record) or recorded_ids(record)),
                 n_target_cells=n_target)
    names = adata.obs_names.astype(str)
    # the count first: sorting and hashing the names only for data of the target's size
    if adata.n_obs != n_target or names_sha256(names) != target.get("cell_names_sha256"):
        return TrainingCells(none, "other_data", **found)
    in_data = recorded_cells(record, names)
    found["n_in_data"] = int(in_data.sum())
    if not in_data.any():
        return TrainingCells(none, "absent", **found)
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
