"""scFoundation: find, check, convert and load its files; turn expression into cell embeddings.

Files (in :func:`scatd_core.config.scfoundation_dir`, ``$SCATD_SCFOUNDATION_DIR``):

- ``models.ckpt`` from the scFoundation README (also found in ``models/``, the official
  ``model/models/`` layout). One ``torch.save`` dict with the keys ``cell``, ``rde`` and
  ``gene``, each ``{'config': {...}, 'state_dict': {'model.<name>': tensor}}``. It is read with
  ``torch.load(weights_only=True)`` only, never with a general unpickler.
- or its conversion, ``scfoundation_<key>.safetensors`` + ``scfoundation_<key>.json``
  (:func:`convert`, ``scatd convert-scfoundation``): the 154 tensors of the cell-embedding path
  and the config, so the app never opens the pickle.
- ``OS_scRNA_gene_index.19264.tsv`` (scFoundation repository, ``model/``), beside the files or
  one folder up (the official layout). Its row order is the model's gene order.

Preprocessing (:func:`prepare`, as ``get_embedding.py --input_type singlecell``,
``backbones.md`` A.5): genes matched **by name** to the 19,264 in list order (missing genes 0,
duplicated names summed, extra genes ignored); counts are scaled to 10,000 per cell over the
aligned genes and ``log1p``-transformed unless the data are already log-normalised (then used
as given, and the "total count" is their sum, as the original's ``pre_normalized=T``); two
tokens are appended: **T** (target resolution, :data:`RESOLUTIONS`) and **S** = log10(total
count); only values > 0 enter the encoder. ``pool_type all`` gives ``[S, T, max, mean]``:
3,072 features.

Defaults are scATD's drug-response settings (reference §7.1; its README runs ``get_embedding.py
--version rde`` and its published single-cell files end ``_a5_resolution``): the ``rde``
(read-depth enhancement) model and T = S + 5. ``key="cell"`` and ``resolution="t4"`` give
scFoundation's own defaults.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import scipy.sparse as sp
import torch

from scatd_core._words import counted
from scatd_core.config import scfoundation_dir
from scatd_core.errors import CheckpointError, InputError
from scatd_core.foundation._assets import (Probe, ProbeCache, Problem, access_state, check_file, file_state,
                                           lfs_pointer_size, lfs_problem, torch_load_tensors, unreachable_problem,
                                           unreadable_problem)
from scatd_core.genes import gene_list_text
from scatd_core.nn.scfoundation import ScFoundationConfig, ScFoundationEncoder, encoder_state_keys

NAME = "scFoundation"
CHECKPOINT = "models.ckpt"
GENE_LIST = "OS_scRNA_gene_index.19264.tsv"
CELL_KEYS = ("rde", "cell")  # the two cell-embedding models of models.ckpt ('gene' is for gene embeddings)
DEFAULT_KEY = "rde"
DEFAULT_RESOLUTION = "a5"
#: T-token modes (``--tgthighres``): ``tN``: T = N; ``fN``: T = log10(total x N); ``aN``: T = S + N.
RESOLUTIONS = ("t", "f", "a")
#: Most expressed genes one cell may send through the encoder. The cost grows with the square of
#: that number (17 s per cell on 2 CPU threads at 4,000 genes, backbones.md A.8) and pre-training
#: never saw more than 15,000; real single cells rarely exceed 8,000, bulk samples and doublets do.
DEFAULT_MAX_GENES = 8000
FORMAT = "scatd-scfoundation"
DOWNLOAD_HINT = ("Download models.ckpt via the link in the scFoundation README (github.com/biomap-research/"
                 "scFoundation, model/models/download.txt; non-commercial licence) into {folder}, or set "
                 "SCATD_SCFOUNDATION_DIR to the folder holding it; then run `scatd convert-scfoundation "
                 "{folder}/models.ckpt` once.")
GENES_HINT = ("Put OS_scRNA_gene_index.19264.tsv (scFoundation repository, model/) in {folder}: its row order is "
              "the model's gene order.")
#: The published gene list (``OS_scRNA_gene_index.19264.tsv``, file sha256 ``bb337ea195d94e7b...``):
#: its number of genes, :func:`gene_list_sha256` of its names in file order, and of its names sorted
#: (the same genes in any order).
OFFICIAL_N_GENES = 19_264
OFFICIAL_GENES_SHA256 = "6037e1bc9b3b48a5112ffdc29261383f747a3c3f8b568a8899b0c69d13565df8"
OFFICIAL_GENE_SET_SHA256 = "e5322ead657fa5ac90d431e2d04e94edb56a1ecde3f4f94988404631ab436df1"
#: The published list's fingerprint (``scatd_core/data/scfoundation_gene_fingerprint.bin``, 77 kB):
#: :func:`gene_fingerprint` of its names in row order, so that a list that differs can be compared
#: row by row without shipping the list itself (regenerate with ``gene_fingerprint(genes).tobytes()``).
FINGERPRINT_FILE = "scfoundation_gene_fingerprint.bin"
#: A 19,264-gene list in which more than this share of the rows hold another gene than the
#: published list is refused (up to it: warned, naming the first rows). Symbols renamed since the
#: list was made touch well under 1% of it (0.6% of its names are missing from Geneformer's 2023
#: symbol table), while a list with a row added or removed, or another list of the same size,
#: differs on most rows. At 5% (963 rows) a twentieth of every cell's genes would already be read
#: as other genes: that is another list, not the published one with a few symbols updated.
MAX_DIFFERING_FRACTION = 0.05
MAX_DIFFERING_ROWS = int(OFFICIAL_N_GENES * MAX_DIFFERING_FRACTION)
#: Differing rows named in the message.
N_ROWS_NAMED = 5
#: The published encoder (both ``cell`` and ``rde``): layers, width, attention heads (backbones.md A.3).
PUBLISHED_ENCODER = {"depth": 12, "hidden_dim": 768, "heads": 12}


# --------------------------------------------------------------------------- files

def converted_paths(folder: Path, key: str) -> tuple[Path, Path]:
    """``(weights, config)`` of the conversion of ``key`` in ``folder``."""
    return folder / f"scfoundation_{key}.safetensors", folder / f"scfoundation_{key}.json"


@dataclass
class Files:
    """Where each scFoundation file is (``None``: not found)."""

    folder: Path
    key: str
    converted: Path | None
    config: Path | None
    checkpoint: Path | None
    gene_list: Path | None


def find_files(folder: str | Path | None = None, key: str = DEFAULT_KEY) -> Files:
    """Look for the scFoundation files in ``folder`` (default :func:`~scatd_core.config.scfoundation_dir`)."""
    folder = Path(folder) if folder is not None else scfoundation_dir()
    places = (folder, folder / "models")  # the official layout keeps models.ckpt in model/models/
    weights, config = next((converted_paths(p, key) for p in places if converted_paths(p, key)[0].exists()),
                           converted_paths(folder, key))
    checkpoint = next((p / CHECKPOINT for p in places if (p / CHECKPOINT).exists()), None)
    gene_list = next((p / GENE_LIST for p in places if (p / GENE_LIST).exists()), None)
    return Files(folder, key, weights if weights.exists() else None, config if config.exists() else None,
                 checkpoint, gene_list)


def read_gene_list(path: Path) -> list[str]:
    """The gene list in file order (``gene_name`` column; ``index`` must run 0..N-1 when present).
    Encodings and limits as every gene list (:func:`scatd_core.genes.gene_list_text`): UTF-8 or
    UTF-16 with its byte-order mark, at most :data:`~scatd_core.genes.MAX_GENE_LIST_BYTES`."""
    path = Path(path)
    try:
        text = gene_list_text(path, path.name, GENES_HINT.format(folder=path.parent))
    except OSError as exc:
        raise CheckpointError(f"{path.name} is not a readable text file ({exc}).",
                              GENES_HINT.format(folder=path.parent)) from None
    except InputError as exc:
        raise CheckpointError(exc.message, exc.hint) from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    header = [h.strip() for h in rows[0]] if rows else []
    if "gene_name" not in header:
        raise CheckpointError(f"{path.name} has no 'gene_name' column.", GENES_HINT.format(folder=path.parent))
    col = header.index("gene_name")
    body = [r for r in rows[1:] if r]
    genes = [r[col].strip() for r in body]
    if "index" in header:
        idx = header.index("index")
        if [r[idx].strip() for r in body] != [str(i) for i in range(len(body))]:
            raise CheckpointError(f"{path.name}: the 'index' column does not run 0..{len(body) - 1} in file order, "
                                  "so the rows were re-sorted.", "Use the unmodified file: its order is the model's.")
    if len(set(genes)) != len(genes):
        raise CheckpointError(f"{path.name} names some genes twice.", "Use the unmodified scFoundation gene list.")
    return genes


def gene_list_sha256(genes: list[str]) -> str:
    return hashlib.sha256("\n".join(genes).encode("utf-8")).hexdigest()


def gene_fingerprint(genes: list[str]) -> np.ndarray:
    """One number per gene: the first 4 bytes of the sha256 of its name (UTF-8), big-endian."""
    return np.frombuffer(b"".join(hashlib.sha256(g.encode("utf-8")).digest()[:4] for g in genes), dtype=">u4")


_PUBLISHED_FINGERPRINT: list[np.ndarray] = []


def published_fingerprint() -> np.ndarray:
    """:func:`gene_fingerprint` of the published list, row by row (:data:`FINGERPRINT_FILE`)."""
    if not _PUBLISHED_FINGERPRINT:
        from importlib import resources

        data = resources.files("scatd_core").joinpath("data", FINGERPRINT_FILE).read_bytes()
        _PUBLISHED_FINGERPRINT.append(np.frombuffer(data, dtype=">u4"))
    return _PUBLISHED_FINGERPRINT[0]


def differing_rows(genes: list[str]) -> tuple[np.ndarray, list[str], int]:
    """The rows of a 19,264-gene list that hold another gene than the published list, the first
    :data:`N_ROWS_NAMED` of them in words, and how many hold a published gene of another row."""
    mine, published = gene_fingerprint(genes), published_fingerprint()
    rows = np.flatnonzero(mine != published)
    published_row = {int(h): i for i, h in enumerate(published)}
    my_row = {int(h): i for i, h in enumerate(mine)}
    moved = sum(int(mine[r]) in published_row for r in rows)
    named = []
    for r in rows[:N_ROWS_NAMED]:
        at = published_row.get(int(mine[r]))
        there = my_row.get(int(published[r]))
        expected = genes[there] if there is not None else "a gene this list lacks"
        named.append(f"index {int(r):,}: expected {expected}, found {genes[r]}"
                     + (f", published at index {at:,}" if at is not None else ""))
    return rows, named, moved


def official_list_problem(genes: list[str], name: str = GENE_LIST) -> Problem | None:
    """How a gene list of the published list's size differs from it (``None``: it is the published
    list, or a list of another size, which the model's own size check judges).

    ``gene_list_reordered``: the published genes in another order (e.g. sorted A-Z and renumbered);
    the model reads each gene at its row, so genes would be read as other genes: refused.
    ``gene_list_too_different``: more than :data:`MAX_DIFFERING_ROWS` rows hold another gene than
    the published list (another list, or one with rows added or removed): refused.
    ``gene_list_differs``: up to that many (e.g. symbols renamed): warned. Both name how many rows
    differ and the first few, with the gene found and the one expected there.
    """
    if len(genes) != OFFICIAL_N_GENES or gene_list_sha256(genes) == OFFICIAL_GENES_SHA256:
        return None
    if gene_list_sha256(sorted(genes)) == OFFICIAL_GENE_SET_SHA256:
        return Problem("gene_list_reordered",
                       f"{name} holds scFoundation's {OFFICIAL_N_GENES:,} genes, but in another order than the "
                       "published list (re-sorted, e.g. A-Z): the model reads each gene at its row, so many genes "
                       "would be read as other genes and the predictions would be wrong.",
                       "Put back the unmodified OS_scRNA_gene_index.19264.tsv from the scFoundation repository "
                       "(model/; file sha256 bb337ea195d94e7b...): its row order is the model's gene order.")
    put_back = ("put back the unmodified OS_scRNA_gene_index.19264.tsv from the scFoundation repository (model/; "
                "file sha256 bb337ea195d94e7b...)")
    rows, named, moved = differing_rows(genes)
    if rows.size == 0:  # names that differ but share their fingerprint (one chance in 4 billion per gene)
        return Problem("gene_list_differs",
                       f"{name} lists {OFFICIAL_N_GENES:,} genes but is not the published scFoundation gene list.",
                       f"Unless these weights were trained with this list, {put_back}.")
    first = "" if rows.size <= len(named) else f"the first {len(named)}: "
    shifted = (f" {moved:,} of these rows {'holds' if moved == 1 else 'hold'} a published gene of another row, "
               "as when rows are added, removed or moved." if moved else "")
    differ = (f"{name} lists {OFFICIAL_N_GENES:,} genes but {rows.size:,} of its rows "
              f"{'holds' if rows.size == 1 else 'hold'} another gene than the "
              f"published scFoundation gene list ({first}{'; '.join(named)}).{shifted}")
    if rows.size > MAX_DIFFERING_ROWS:
        return Problem("gene_list_too_different",
                       f"{differ} That is more than {MAX_DIFFERING_ROWS:,} rows ({MAX_DIFFERING_FRACTION:.0%}), so "
                       "this is not the published list with a few symbols updated: the model reads the values given "
                       "at each row as the gene it learnt there, so it would read that many of each cell's genes as "
                       "other genes and the embeddings and predictions would be wrong.",
                       f"{put_back[0].upper()}{put_back[1:]}: its row order is the model's gene order. scATD Studio "
                       f"refuses a {OFFICIAL_N_GENES:,}-gene list in which more than {MAX_DIFFERING_ROWS:,} rows differ "
                       "from it.")
    return Problem("gene_list_differs",
                   f"{differ} The model reads the values given at each row as the gene it learnt there, so with the "
                   "published weights each of these genes is read as the published one of its row.",
                   "If you only renamed genes to newer symbols (the same gene at the same row), nothing is wrong; "
                   f"otherwise {put_back}.")


#: The problems of :func:`official_list_problem` that refuse the list (the others are warnings).
REFUSED_LIST_PROBLEMS = ("gene_list_reordered", "gene_list_too_different")


# --------------------------------------------------------------------------- checkpoint layout

def _merge_config(raw) -> dict:
    """The flat config of one ``models.ckpt`` entry, merged as the original ``convertconfig`` does."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"The checkpoint's config is a {type(raw).__name__}, not a dict.",
                              "Give the official models.ckpt.")
    if "model_config" in raw:
        model = raw.get("model")
        section = raw["model_config"].get(model) if isinstance(raw["model_config"], Mapping) else None
        if not isinstance(section, Mapping):
            raise CheckpointError(f"The checkpoint's config has no model_config for its model {model!r}.",
                                  "Give the official models.ckpt.")
        dataset = raw.get("dataset_config") or {}
        rnaseq = dataset.get("rnaseq") or {} if isinstance(dataset, Mapping) else None
        if not isinstance(rnaseq, Mapping):
            raise CheckpointError("The checkpoint's config has a 'dataset_config' that is not scFoundation's "
                                  "(a dict with an 'rnaseq' dict).", "Give the official models.ckpt.")
        return {**section, **rnaseq, "model": model}
    return dict(raw)


def _config_of(merged: dict, shapes: Mapping[str, tuple], where: str) -> ScFoundationConfig:
    """The :class:`ScFoundationConfig` of a checkpoint: its config, checked against the tensor shapes."""
    if merged.get("model", "mae_autobin") != "mae_autobin":
        raise CheckpointError(f"{where}: the model is {merged.get('model')!r}, not scFoundation's 'mae_autobin'.",
                              "Give the official scFoundation models.ckpt.")
    enc = merged.get("encoder")
    if not isinstance(enc, Mapping):
        raise CheckpointError(f"{where}: the config has no 'encoder' section.", "Give the official models.ckpt.")
    if enc.get("module_type", "transformer") != "transformer":
        raise CheckpointError(f"{where}: the encoder is a {enc.get('module_type')!r}; scATD Studio reproduces the "
                              "'transformer' encoder of the published model.", "Give the official models.ckpt.")
    try:
        cfg = ScFoundationConfig(
            seq_len=int(merged["seq_len"]), hidden_dim=int(enc["hidden_dim"]), depth=int(enc["depth"]),
            heads=int(enc["heads"]), bin_num=int(merged["bin_num"]), bin_alpha=float(merged["bin_alpha"]),
            pad_token_id=int(merged["pad_token_id"]), mask_token_id=int(merged["mask_token_id"]),
            norm_first=bool(enc.get("norm_first", False)))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{where}: the config lacks or mangles {exc}.", "Give the official models.ckpt.") from None
    problem = _value_problem(cfg, shapes)
    if problem:
        raise CheckpointError(f"{where}: {problem}", "Give the official models.ckpt.")
    problems = shape_problems(cfg, shapes)
    if problems:
        raise CheckpointError(f"{where}: {problems[0]}", "The file does not match its own config; download it again.")
    return cfg


def _value_problem(cfg: ScFoundationConfig, shapes: Mapping[str, tuple]) -> str | None:
    """Config values no encoder can be built from (as a sentence), checked before building one:
    sizes below 1, heads that do not divide the width, more layers than the file holds."""
    small = [f"{k} is {getattr(cfg, k)}" for k in ("seq_len", "hidden_dim", "depth", "heads", "bin_num")
             if getattr(cfg, k) < 1]
    if small:
        return f"the config's {', '.join(small)} (each must be at least 1)."
    if cfg.hidden_dim % cfg.heads:
        return f"the config's hidden_dim {cfg.hidden_dim} is not divisible by its {cfg.heads} heads."
    if not math.isfinite(cfg.bin_alpha):
        return f"the config's bin_alpha is {cfg.bin_alpha}."
    layers = {k.split(".")[2] for k in shapes if k.startswith("encoder.transformer_encoder.")}
    if cfg.depth > len(layers):
        return f"the config says {cfg.depth} encoder layers but the file holds {len(layers)}."
    return None


def shape_problems(cfg: ScFoundationConfig, shapes: Mapping[str, tuple]) -> list[str]:
    """Missing tensors and wrong shapes of the cell-embedding path, as sentences (empty: all fine)."""
    problem = _value_problem(cfg, shapes)
    if problem:
        return [problem]
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in ScFoundationEncoder(cfg).state_dict().items()}
    except (RuntimeError, ValueError, AssertionError, OverflowError) as exc:  # sizes torch cannot allocate
        return [f"the config describes no encoder that can be built ({exc})."]
    out = []
    missing = [k for k in expected if k not in shapes]
    if missing:
        out.append(f"{counted(len(missing), 'tensor')} of the encoder {'is' if len(missing) == 1 else 'are'} missing "
                   f"(e.g. {', '.join(missing[:3])}).")
    wrong = [f"{k} is {tuple(shapes[k])}, expected {v}" for k, v in expected.items()
             if k in shapes and tuple(shapes[k]) != v]
    if wrong:
        out.append("wrong shapes: " + "; ".join(wrong[:3]) + ".")
    return out


def read_checkpoint(path: str | Path, key: str = DEFAULT_KEY) -> tuple[ScFoundationConfig, dict[str, torch.Tensor]]:
    """Config and cell-embedding tensors of ``key`` in an official ``models.ckpt`` (weights_only load)."""
    path = Path(path)
    obj = torch_load_tensors(path, "scFoundation checkpoint",
                             "The official scFoundation models.ckpt is a torch.save file; a safetensors conversion "
                             "(scfoundation_<key>.safetensors with its .json, which `scatd convert-scfoundation` "
                             "writes) goes in the scFoundation folder under those names and needs no conversion.")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not scFoundation's dict of models.",
                              "Give the official models.ckpt.")
    models = [k for k, v in obj.items() if isinstance(v, Mapping) and "config" in v and "state_dict" in v]
    if not models:
        raise _not_models_ckpt(path.name, obj)
    if key not in obj:
        keys = ", ".join(map(str, obj.keys())) or "none"
        raise CheckpointError(f"{path.name} has no model '{key}' (it holds: {keys}).",
                              f"Choose one of its cell-embedding models ({', '.join(CELL_KEYS)}) with --key.")
    entry = obj[key]
    if not isinstance(entry, Mapping) or "state_dict" not in entry or "config" not in entry:
        raise CheckpointError(f"{path.name}['{key}'] lacks 'config' or 'state_dict'.", "Give the official models.ckpt.")
    where = f"{path.name}['{key}']"
    state = _tensors_of(entry["state_dict"], where)
    cfg = _config_of(_merge_config(entry["config"]), {k: tuple(v.shape) for k, v in state.items()}, where)
    encoder = {k: state[k] for k in encoder_state_keys(cfg)}
    odd = [f"{k} is {v.dtype}" for k, v in encoder.items() if not v.is_floating_point()]
    if odd:
        raise CheckpointError(f"{where}: the encoder's weights are not floating-point tensors "
                              f"({'; '.join(odd[:3])}).", "Give the official models.ckpt.")
    return cfg, encoder


def _not_models_ckpt(name: str, obj: Mapping) -> CheckpointError:
    """The error for a dict that is not scFoundation's dict of models (each with a config and a
    state_dict): a drug or backbone model's state dict (e.g. Dist_VAE or VAE_sf .pth) most often."""
    state = next((obj[k] for k in ("state_dict", "model_state_dict", "model") if isinstance(obj.get(k), Mapping)),
                 obj)
    tensors = [str(k) for k, v in state.items() if isinstance(v, torch.Tensor)]
    if tensors:
        first = tensors[0].removeprefix("module.")
        kind, found = "a model's state dict", None
        if first.startswith(("Encoder_resblocks", "Decoder_resblocks")):  # an scATD VAE: which one, by its layout
            from scatd_core.nn.state import detect_backbone

            found = detect_backbone({str(k).removeprefix("module."): v for k, v in state.items()})
            kind = {"dist_vae": "a Dist_VAE model (a drug model or the Dist_VAE backbone)",
                    "vae_sf": "a VAE_sf model (a drug model or backbone that reads scFoundation embeddings)",
                    "vae_gf": "a VAE_gf model (a drug model or backbone that reads Geneformer embeddings)",
                    }.get(found, "an scATD drug or backbone model")
        return CheckpointError(
            f"{name} is not an scFoundation models.ckpt: it is {kind} ({len(tensors):,} tensors, e.g. {first}), "
            "not scFoundation's dict of models ('gene', 'cell', 'rde', each with a config and weights).",
            f"Import a drug model with `scatd import-checkpoint` (--backbone {found or 'dist_vae / vae_sf / vae_gf'}); "
            "convert-scfoundation takes scFoundation's own models.ckpt (see README, 'Backbone files').")
    return CheckpointError(f"{name} is not an scFoundation models.ckpt: it holds no model with a config and "
                           f"weights (its entries: {', '.join(map(str, list(obj)[:5])) or 'none'}).",
                           "Give the official models.ckpt (see README, 'Backbone files').")


def _tensors_of(state_dict, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``state_dict``, without the ``model.`` prefix."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{where}: 'state_dict' is a {type(state_dict).__name__}, not scFoundation's dict of "
                              "tensor names to tensors.", "Give the official models.ckpt.")
    return {str(k).split("model.", 1)[1] if str(k).startswith("model.") else str(k): v
            for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def convert(checkpoint: str | Path, key: str = DEFAULT_KEY, out: str | Path | None = None,
            gene_list: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``scfoundation_<key>.safetensors`` + ``.json`` from an official ``models.ckpt``.

    Only the 154 tensors of the cell-embedding path are kept (float32); the JSON holds the
    config, the source file's name and sha256 and, when the gene list is found (``gene_list``,
    or beside the checkpoint), its sha256 so a later mix-up is caught. Written atomically into
    ``out`` (default: the checkpoint's folder). Returns the two paths.
    """
    from safetensors.torch import save_file

    from scatd_core import __version__
    from scatd_core.bundle import sha256_file

    checkpoint = Path(checkpoint)
    cfg, state = read_checkpoint(checkpoint, key)
    out = Path(out) if out is not None else checkpoint.parent
    genes_path = Path(gene_list) if gene_list is not None else next(
        (p / GENE_LIST for p in (checkpoint.parent, checkpoint.parent.parent) if (p / GENE_LIST).is_file()), None)
    genes = read_gene_list(genes_path) if genes_path is not None else None
    if genes is not None and len(genes) != cfg.n_genes:
        raise CheckpointError(f"{genes_path.name} lists {len(genes):,} genes but the model takes {cfg.n_genes:,}.",
                              "Give the gene list of this checkpoint.")
    problem = official_list_problem(genes, genes_path.name) if genes is not None else None
    if problem is not None and problem.code in REFUSED_LIST_PROBLEMS:  # its sha256 would be recorded as right
        raise problem.error()
    weights, config = converted_paths(out, key)
    record = {"format": FORMAT, "format_version": 1, "key": key, "config": cfg.to_dict(),
              "n_tensors": len(state), "n_parameters": int(sum(v.numel() for v in state.values())),
              "source_file": checkpoint.name, "source_sha256": sha256_file(checkpoint),
              "gene_list_sha256": gene_list_sha256(genes) if genes is not None else None,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "scatd_version": __version__}
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    for target, write in ((weights, lambda p: save_file(tensors, str(p))),
                          (config, lambda p: p.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8"))):
        tmp, mode = _new_file(out, target.name)
        try:
            write(Path(tmp))
            os.chmod(tmp, mode)  # safetensors and mkstemp would leave 0600: a server under another account reads it
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    _MODELS.clear()
    _PROBES.clear()
    return weights, config


def _new_file(folder: Path, name: str) -> tuple[str, int]:
    """A new, empty temporary file in ``folder`` and the permissions the umask gives a new file."""
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask applies
        except FileExistsError:
            continue
        os.close(fd)
        return tmp, os.stat(tmp).st_mode & 0o777


def _read_converted_config(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not valid JSON ({exc}).",
                              "Run `scatd convert-scfoundation models.ckpt` again.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("config"), dict):
        raise CheckpointError(f"{path.name} is not a config written by `scatd convert-scfoundation`.",
                              "Run `scatd convert-scfoundation models.ckpt` again.")
    try:
        ScFoundationConfig.from_dict(record["config"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path.name} has a mangled config ({exc}).",
                              "Run `scatd convert-scfoundation models.ckpt` again.") from None
    return record


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for every corrupt header
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc}).",
                              "Run `scatd convert-scfoundation models.ckpt` again.") from None


# --------------------------------------------------------------------------- probe

#: The probes made last, per folder and settings (:class:`~scatd_core.foundation._assets.ProbeCache`).
_PROBES = ProbeCache()


def configured_by() -> str:
    """What names the scFoundation folder (the Model page's "set by ..."): its variable, its key in
    the configuration file (named), or the default (the precedence of
    :func:`scatd_core.config.settings`: a variable over the file)."""
    from scatd_core.config import settings

    return settings().set_by("scfoundation_dir") or "default ($SCATD_HOME/scfoundation)"


def probe(folder: str | Path | None = None, key: str = DEFAULT_KEY) -> Probe:
    """Check the scFoundation files without loading the weights (cached until a file, its permissions,
    or the setting that names it changes)."""
    by = configured_by()
    try:
        files = find_files(folder, key)
        state = tuple(access_state(p) for p in (files.folder, files.folder / "models", files.converted, files.config,
                                                files.checkpoint, files.gene_list) if p is not None)
        return _PROBES.get((key, str(files.folder), by), state, lambda: _probe(files, by))
    except PermissionError as exc:  # a folder this account may not open: said, not a traceback (not kept)
        out = Probe("vae_sf", NAME, str(Path(folder) if folder is not None else scfoundation_dir()), by)
        out.problems.append(unreachable_problem(exc, NAME))
        return out


def _probe(files: Files, by: str) -> Probe:
    folder = files.folder
    out = Probe("vae_sf", NAME, str(folder), by)
    cfg, genes_sha = None, None
    if files.converted is not None:
        out.files["weights"] = files.converted
        cfg, genes_sha = _probe_converted(files, out)
    elif files.checkpoint is not None:
        out.files["checkpoint"] = files.checkpoint
        cfg = _probe_checkpoint(files, out)
    else:
        out.add("missing_weights", f"No scFoundation weights in {folder} (neither {CHECKPOINT} nor "
                f"scfoundation_{files.key}.safetensors).", DOWNLOAD_HINT.format(folder=folder))
    if files.gene_list is None:
        out.add("missing_gene_list", f"{GENE_LIST} not found in {folder}.", GENES_HINT.format(folder=folder))
    else:
        out.files["gene_list"] = files.gene_list
        problem = check_file(files.gene_list, "Gene list", GENES_HINT.format(folder=folder))
        if problem is not None:
            out.problems.append(problem)
        else:
            try:
                genes = read_gene_list(files.gene_list)
            except CheckpointError as exc:
                out.add("bad_gene_list", exc.message, exc.hint or "")
            else:
                _check_genes(out, cfg, genes, genes_sha)
    if cfg is not None:
        out.embedding_dim = cfg.embedding_dim
        out.details["config"] = cfg.to_dict()
        _check_architecture(out, cfg)
    out.available = not out.problems
    return out


def _check_genes(out: Probe, cfg: ScFoundationConfig | None, genes: list[str], genes_sha: str | None) -> None:
    out.details["n_genes"] = len(genes)
    if cfg is not None and len(genes) != cfg.n_genes:
        out.add("gene_list_mismatch", f"{GENE_LIST} lists {len(genes):,} genes but the model takes {cfg.n_genes:,}.",
                "Use the gene list of the same scFoundation release as the weights.")
    elif genes_sha is not None and genes_sha != gene_list_sha256(genes):
        out.add("gene_list_mismatch", f"{GENE_LIST} differs from the gene list the weights were converted with.",
                "Put back the original gene list (its row order is the model's gene order).")
    else:
        problem = official_list_problem(genes)
        if problem is not None and problem.code in REFUSED_LIST_PROBLEMS:
            out.problems.append(problem)
        elif problem is not None:
            out.warn(f"{problem.message} {problem.hint}", about_embeddings=True)


def _check_architecture(out: Probe, cfg: ScFoundationConfig) -> None:
    """Say when the encoder is not the published one (12 layers x 768, 12 heads): its version
    text names both; a warning when its embeddings still have the published size (3,072), so a
    VAE_sf model would take them without a word."""
    mine = {"depth": cfg.depth, "hidden_dim": cfg.hidden_dim, "heads": cfg.heads}
    if mine == PUBLISHED_ENCODER:
        return
    pub = PUBLISHED_ENCODER
    published = f"{pub['depth']} layers x {pub['hidden_dim']}, {pub['heads']} attention heads"
    if cfg.hidden_dim != pub["hidden_dim"]:  # a VAE_sf model of the published size refuses its embeddings
        out.version = f"{out.version}; the published scFoundation model has {published}"
    else:
        out.warn(
            f"This scFoundation model has {_layers(cfg.depth)} x {cfg.hidden_dim} "
            f"with {cfg.heads} attention head{'s' if cfg.heads != 1 else ''}; the published one has {published}. Its "
            f"{cfg.embedding_dim:,}-d embeddings fit scATD's VAE_sf models, but those were trained on the published "
            "model's embeddings, so their predictions from this one mean little. Install the published models.ckpt "
            "unless this model is the one your drug models were trained on.", about_embeddings=True)


def _probe_converted(files: Files, out: Probe) -> tuple[ScFoundationConfig | None, str | None]:
    unreadable = [p for p in (unreadable_problem(files.converted, "The converted weights"),
                              files.config and unreadable_problem(files.config, "The converted weights' config"))
                  if p is not None]
    if unreadable:
        out.problems.extend(unreadable)
        return None, None
    size = lfs_pointer_size(files.converted)
    if size is not None:
        out.problems.append(lfs_problem(files.converted, size))
        return None, None
    if files.config is None:
        out.add("missing_config", f"{files.converted.name} has no {files.converted.with_suffix('.json').name} beside it.",
                f"Run `scatd convert-scfoundation {files.folder}/models.ckpt --key {files.key}` again.")
        return None, None
    try:
        record = _read_converted_config(files.config)
        cfg = ScFoundationConfig.from_dict(record["config"])
        problems = shape_problems(cfg, _safetensors_shapes(files.converted))
    except CheckpointError as exc:
        out.add("bad_weights", exc.message, exc.hint or "")
        return None, None
    for text in problems:
        out.add("wrong_shape", f"{files.converted.name}: {text}", "Run `scatd convert-scfoundation` again.")
    out.version = (f"scFoundation '{record.get('key', files.key)}' model ({_layers(cfg.depth)} x {cfg.hidden_dim}, "
                   f"{_millions(record.get('n_parameters') or 0)} parameters), converted from {record.get('source_file')}")
    return cfg, record.get("gene_list_sha256")


def _probe_checkpoint(files: Files, out: Probe) -> ScFoundationConfig | None:
    try:
        cfg, state = read_checkpoint(files.checkpoint, files.key)
    except CheckpointError as exc:
        size = lfs_pointer_size(files.checkpoint)
        out.problems.append(lfs_problem(files.checkpoint, size) if size is not None else
                            Problem("unreadable_file" if getattr(exc, "code", None) == "unreadable_file" else
                                    "bad_checkpoint", exc.message, exc.hint or ""))
        return None
    out.version = (f"scFoundation '{files.key}' model ({_layers(cfg.depth)} x {cfg.hidden_dim}, "
                   f"{_millions(sum(v.numel() for v in state.values()))} parameters) in {files.checkpoint.name}; "
                   "convert it once with `scatd convert-scfoundation` so the app reads safetensors")
    return cfg


def _layers(n: int) -> str:
    return f"{n} layer{'s' if n != 1 else ''}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:,}"


# --------------------------------------------------------------------------- model

_MODELS: dict[tuple, tuple[ScFoundationEncoder, list[str]]] = {}


def load(folder: str | Path | None = None, key: str = DEFAULT_KEY,
         device: str | torch.device = "cpu") -> tuple[ScFoundationEncoder, list[str]]:
    """The encoder in eval mode on ``device`` and its gene list (cached until a file changes).

    Reads the conversion when present, else ``models.ckpt`` (``weights_only=True``); raises
    :class:`~scatd_core.errors.CheckpointError` with the probe's first problem otherwise.
    """
    state_of = probe(folder, key)
    state_of.require()
    files = find_files(folder, key)
    stamp = (str(device), key) + tuple(file_state(Path(p)) for p in state_of.files.values())
    if stamp not in _MODELS:
        if files.converted is not None:
            from scatd_core._torchfile import load_safetensors

            cfg = ScFoundationConfig.from_dict(_read_converted_config(files.config)["config"])
            state = load_safetensors(files.converted)  # in memory, not mapped from the file
        else:
            cfg, state = read_checkpoint(files.checkpoint, key)
        with torch.device("meta"):  # no random init, no second copy: the tensors are assigned
            model = ScFoundationEncoder(cfg)
        model.load_state_dict(state, strict=True, assign=True)
        model = model.float().eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        _MODELS.clear()  # one scFoundation (~400 MB) in memory at a time
        _MODELS[stamp] = (model, read_gene_list(files.gene_list))
    return _MODELS[stamp]


# --------------------------------------------------------------------------- preprocessing

def parse_resolution(resolution: str) -> tuple[str, float]:
    """``"a5"`` -> ``("a", 5.0)``; :class:`InputError` for anything else."""
    text = str(resolution).strip()
    try:
        mode, number = text[0], float(text[1:])
    except (IndexError, ValueError):
        mode, number = "", math.nan
    if mode not in RESOLUTIONS or not math.isfinite(number):
        raise InputError(f"Unknown scFoundation resolution {resolution!r}.",
                         "Use tN (T = N), fN (T = log10(total x N)) or aN (T = S + N), e.g. a5 or t4.")
    return mode, number


def total_tokens(totals: np.ndarray, resolution: str) -> tuple[np.ndarray, np.ndarray]:
    """``(T, S)`` per cell from its total count: S = log10(total), T by the resolution mode."""
    mode, number = parse_resolution(resolution)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.log10(totals)
        t = {"t": np.full_like(s, number), "f": np.log10(totals * number), "a": s + number}[mode]
    return t, s


@dataclass
class Prepared:
    """How a dataset's expression reaches scFoundation: the gene alignment and the value scale."""

    genes: list[str]
    alignment: object  # scatd_core.genes.GeneAlignment
    normalise: bool
    value_kind: str
    resolution: str

    def values(self, block) -> tuple[sp.csr_matrix, np.ndarray]:
        """The encoder values of a block of cells (CSR, model gene order) and their total counts."""
        aligned = (sp.csr_matrix(block) @ self.alignment.matrix).tocsr().astype(np.float32)
        totals = np.asarray(aligned.sum(axis=1), dtype=np.float64).ravel()
        if self.normalise:
            from scatd_core._matrix import log1p_cp10k

            aligned = log1p_cp10k(aligned, totals, copy=False)
        aligned.sort_indices()
        return aligned, totals


def prepare(adata, genes: list[str], resolution: str = DEFAULT_RESOLUTION) -> Prepared:
    """Match ``adata``'s genes to scFoundation's and decide the value scale (see the module docstring)."""
    from scatd_core import _keys
    from scatd_core.genes import align_genes, names_for
    from scatd_core.preprocess import detect_value_type

    parse_resolution(resolution)
    alignment = align_genes(names_for(adata, "symbol"), genes)
    if alignment.n_matched == 0:
        raise InputError(f"None of the {adata.n_vars:,} genes in the data (e.g. {', '.join(map(str, adata.var_names[:3]))})"
                         f" is among scFoundation's {len(genes):,} genes (HGNC symbols, e.g. {', '.join(genes[:3])}).",
                         "Give human gene symbols, or Ensembl IDs with their symbols (--biomart: a BioMart table of "
                         "'Gene stable ID' and 'Gene name').",
                         app_hint="Give human gene symbols, or Ensembl IDs with their symbols (a BioMart table on the "
                                  "Data page).")
    report = adata.uns.get(_keys.INPUT_REPORT, {})
    found = {"kind": report["value_type"], "evidence": report.get("value_type_evidence") or {}} \
        if report.get("value_type") else detect_value_type(adata.X)
    kind = found["kind"]
    if kind not in ("counts", "tpm_like", "log_normalized"):
        look = {"zscored": "z-scored (centred and scaled per gene)"}.get(kind, "like neither")
        evidence = found.get("evidence") or {}
        why = f" ({evidence['reason']})" if evidence.get("reason") else ""
        drops = (" scFoundation drops every value <= 0, so centred or scaled data lose most of each cell."
                 if kind == "zscored" or evidence.get("has_negative") else "")
        raise InputError(f"scFoundation needs counts or log-normalised expression; these values look {look}{why}."
                         + drops,
                         "Give the raw counts (the 10x output, or adata.raw / layers['counts']).",
                         app_hint="Upload the raw counts (the 10x output, or adata.raw / layers['counts']).")
    return Prepared(genes, alignment, kind != "log_normalized", kind, resolution)


@dataclass
class Tokens:
    """A right-padded batch of cells for :class:`~scatd_core.nn.scfoundation.ScFoundationEncoder`."""

    values: np.ndarray      # [B, L] float32: genes, T, S, then the pad value
    positions: np.ndarray   # [B, L] int64: gene rows, n_genes (T), n_genes + 1 (S), then seq_len
    n_expressed: np.ndarray  # [B] int64

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.values).to(device), torch.from_numpy(self.positions).to(device),
                torch.from_numpy(self.n_expressed).to(device))


def make_tokens(values: sp.csr_matrix, t: np.ndarray, s: np.ndarray, cfg: ScFoundationConfig) -> Tokens:
    """The encoder input of the rows of ``values``: their values > 0 in gene order, then T and S."""
    keep = values.data > 0  # as the original: only strictly positive values are tokens
    per_row = expressed_counts(values).astype(np.int64)
    n_rows, width = values.shape[0], int(per_row.max(initial=0)) + 2
    vals = np.full((n_rows, width), cfg.pad_token_id, dtype=np.float32)
    pos = np.full((n_rows, width), cfg.seq_len, dtype=np.int64)
    row_of = np.repeat(np.arange(n_rows), np.diff(values.indptr))[keep]
    starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    col = np.arange(row_of.size) - starts[row_of]
    vals[row_of, col] = values.data[keep]
    pos[row_of, col] = values.indices[keep]
    rows = np.arange(n_rows)
    vals[rows, per_row], pos[rows, per_row] = t, cfg.n_genes
    vals[rows, per_row + 1], pos[rows, per_row + 1] = s, cfg.n_genes + 1
    return Tokens(vals, pos, per_row)


def expressed_counts(values: sp.csr_matrix) -> np.ndarray:
    """Number of strictly positive values per row."""
    return np.bincount(np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))[values.data > 0],
                       minlength=values.shape[0])


def flops_per_cell(cfg: ScFoundationConfig, n_tokens: np.ndarray) -> np.ndarray:
    """Multiply-adds x 2 of the encoder for cells of ``n_tokens`` tokens (linear layers + attention)."""
    h, n = cfg.hidden_dim, np.asarray(n_tokens, dtype=np.float64)
    return cfg.depth * (2 * (4 * h * h + 2 * cfg.ff_mult * h * h) * n + 4 * h * n * n)


# --------------------------------------------------------------------------- embedding

#: Why a cell gets no embedding (beyond the caller's mask).
NOT_EMBEDDED = {"non_finite": "NaN or infinite values among its genes (no expression value is)",
                "negative_values": "negative values among its genes, which counts and log-normalised values never "
                                   "have (scFoundation would drop them without a word and embed the rest)",
                "no_expressed_gene": "no expressed gene among scFoundation's genes",
                "total_at_most_1": "a total count of 1 or less (its S token, log10 of the total, would vanish)"}


@dataclass
class Plan:
    """What :func:`embed` will do: the cells it embeds, their token counts, T and S."""

    prepared: Prepared
    n_expressed: np.ndarray
    t: np.ndarray
    s: np.ndarray
    embed: np.ndarray
    not_embedded: dict
    #: rows of the cells not embedded for values no expression has, by reason (``non_finite``, ``negative_values``)
    faulty: dict = None


def plan(adata, wanted: np.ndarray, genes: list[str], resolution: str = DEFAULT_RESOLUTION,
         max_genes: int = DEFAULT_MAX_GENES) -> Plan:
    """One pass over the data: tokens per cell, T and S, which cells can be embedded; the gene cap.

    A cell with a NaN, infinite or negative value among the genes scFoundation reads is not
    embedded (``not_embedded``: ``non_finite``, ``negative_values``), nor is one without an
    expressed gene or with a total count of 1 or less. Raises :class:`InputError` when a wanted
    cell expresses more than ``max_genes`` genes.
    """
    from scatd_core._matrix import row_batches
    from scatd_core.foundation._work import FAULTY, faulty_rows

    prepared = prepare(adata, genes, resolution)
    n = adata.n_obs
    n_expressed, totals = np.zeros(n, dtype=np.int64), np.zeros(n)
    faulty = {reason: np.zeros(n, dtype=bool) for reason in FAULTY}
    columns = np.diff(sp.csr_matrix(prepared.alignment.matrix).indptr) > 0  # the data's genes scFoundation reads
    for start, stop, block in row_batches(adata.X, 8192):
        for reason, rows in faulty_rows(block, columns).items():
            faulty[reason][start:stop] = rows
        with np.errstate(invalid="ignore"):
            values, totals[start:stop] = prepared.values(block)
        n_expressed[start:stop] = expressed_counts(values)
    t, s = total_tokens(totals, resolution)
    reasons, left = {}, wanted.copy()
    for reason, rows in faulty.items():
        reasons[reason] = left & rows
        left &= ~rows
    with np.errstate(invalid="ignore"):
        reasons["no_expressed_gene"] = no_gene = left & (n_expressed == 0)
        # a token <= 0 would be dropped, as any value <= 0
        reasons["total_at_most_1"] = low = left & ~no_gene & ~((s > 0) & (t > 0))
    ok = left & ~no_gene & ~low
    over = ok & (n_expressed > max_genes)
    if over.any():
        raise InputError(
            f"{counted(over.sum())} {'expresses' if over.sum() == 1 else 'express'} more than {max_genes:,} of "
            f"scFoundation's genes (up to "
            f"{int(n_expressed[over].max()):,}): these look like bulk samples or doublets, and each would take "
            "minutes (the cost grows with the square of the number of genes).",
            "Remove them with the QC filter (Data page: an upper bound on genes detected), or raise the cap "
            "(--max-genes) on a GPU server.")
    return Plan(prepared, n_expressed, t, s, ok, {k: int(v.sum()) for k, v in reasons.items() if v.any()},
                {k: np.flatnonzero(reasons[k]) for k in FAULTY if reasons[k].any()})


def embed(adata, wanted: np.ndarray | None = None, *, folder: str | Path | None = None, key: str = DEFAULT_KEY,
          resolution: str = DEFAULT_RESOLUTION, max_genes: int = DEFAULT_MAX_GENES, device: str = "auto",
          batch_tokens: int | None = None, progress=None, should_stop=None,
          lengths: list | None = None, faulty: dict | None = None) -> tuple[np.ndarray, dict]:
    """scFoundation cell embeddings (``pool_type all``) of the ``wanted`` cells of ``adata``.

    Returns ``(embeddings, info)``: a float32 ``(n_obs, 4 x hidden)`` array, NaN rows for the
    cells not embedded, and a JSON-safe dict of the settings and counts. Cells go through the
    encoder in length-sorted, right-padded batches (``batch_tokens`` tokens each), with bf16
    autocast on CUDA. Use :func:`scatd_core.foundation.embed_cells` to store the result.
    ``lengths``, a list, receives the genes expressed by each embedded cell (the Ray engine
    merges shards' medians from them). ``faulty``, a dict, receives the rows of the cells left
    out for NaN, infinite or negative values, by reason (:attr:`Plan.faulty`).
    """
    from scatd_core._matrix import row_batches
    from scatd_core.foundation import _work
    from scatd_core.predict import resolve_device

    dev = resolve_device(device)
    model, genes = load(folder, key, dev)
    cfg = model.config
    wanted = np.ones(adata.n_obs, dtype=bool) if wanted is None else np.asarray(wanted, dtype=bool)
    p = plan(adata, wanted, genes, resolution, max_genes)
    tokens = p.n_expressed + 2
    work = _work.Work(flops_per_cell(cfg, tokens[p.embed]).sum(), int(p.embed.sum()), f"{NAME} embeddings",
                      progress, should_stop)
    budget = _work.batch_tokens(dev, batch_tokens)
    out = np.full((adata.n_obs, cfg.embedding_dim), np.nan, dtype=np.float32)
    finite = p.embed.copy()
    for start, stop, block in row_batches(adata.X, _work.CHUNK_CELLS):
        rows = np.flatnonzero(p.embed[start:stop])
        if rows.size == 0:
            continue
        values, _ = p.prepared.values(block[rows])
        at = rows + start
        for batch in _work.length_batches(tokens[at], budget):
            work.check()
            cells = at[batch]
            tok = make_tokens(values[batch], p.t[cells], p.s[cells], cfg)
            with torch.inference_mode(), _work.autocast(dev):
                result = model(*tok.tensors(dev)).float().cpu().numpy()
            finite[cells] = _work.finite_rows(result)
            out[cells] = result
            work.step(cells.size, flops_per_cell(cfg, tokens[cells]).sum())
    failed = p.embed & ~finite
    if failed.any():
        p.not_embedded[_work.NON_FINITE_OUTPUT] = int(failed.sum())
    if lengths is not None:
        lengths.append(p.n_expressed[finite])
    if faulty is not None:
        faulty.update(p.faulty)
    info = {"model": NAME, "key": key, "resolution": resolution, "pool_type": "all", "max_genes": int(max_genes),
            "values": "log1p of counts per 10k over the aligned genes" if p.prepared.normalise else
                      "log-normalised values as given (total count = their sum)",
            "gene_coverage": p.prepared.alignment.summary(), "n_embedded": int(finite.sum()),
            "not_embedded": p.not_embedded, "embedding_dim": cfg.embedding_dim,
            "median_expressed_genes": int(np.median(p.n_expressed[finite])) if finite.any() else 0}
    return out, info
