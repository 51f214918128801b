"""Model bundles: one folder per installed drug model, and the model library that lists them.

A bundle folder holds

- ``manifest.json``: backbone, drug, layer sizes, input transform, label mapping, decision
  threshold, Swish mode, gene-list hash, style statistics present or not, provenance (source
  file and its sha256, creation time, scatd version) and metrics when known;
- ``weights.safetensors``: the model's ``state_dict`` with the original key names;
- ``genes.txt`` (expression backbones): the model's input genes, one per line, in input order;
- ``style.safetensors`` (embedding backbones): per-feature ``mean`` and population ``std``
  (ddof=0) of the bulk embeddings, the AdaIN target of the original inference.

Weights are only ever read from safetensors, and original ``.pth`` files only with
``torch.load(..., weights_only=True)``, so no model file can execute code.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
import shutil
import stat
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from scatd_core import __version__
from scatd_core._lock import folder_lock
from scatd_core._output import sha256_file  # also scatd_core.bundle.sha256_file, as before
from scatd_core._torchfile import check_checkpoint_size, load_safetensors
from scatd_core.config import limits, model_library_dir
from scatd_core.errors import BundleError, CheckpointError, InputError
from scatd_core.genes import gene_list_sha256, read_gene_list
from scatd_core.nn import BACKBONES, Architecture, DrugClassifier, EnsembleClassifier, ResVAE, build_model
from scatd_core.nn.state import check_state_dict, infer_architecture
from scatd_core.preprocess import INPUT_TRANSFORMS, LIBRARY_SIZES, MODEL_GENES

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
GENES = "genes.txt"
STYLE = "style.safetensors"
FORMAT_VERSION = 1

#: The public figshare article holding the published scATD checkpoints (reference §8).
FIGSHARE_ARTICLE = 27908847
FIGSHARE_URL = f"https://figshare.com/articles/dataset/_/{FIGSHARE_ARTICLE}"
DEFAULT_LABEL_MAPPING = {"sensitive": 0, "resistant": 1}
# The original inference scripts' defaults (reference §5): 0.05 for Dist_VAE, 0.5 otherwise.
DEFAULT_THRESHOLDS = {"dist_vae": 0.05, "vae_sf": 0.5, "vae_gf": 0.5}
BETA_MODES = ("shared_with_head", "separate")
NO_STYLE_PROBLEM = "cannot predict: no AdaIN statistics (bulk embeddings)"
#: Why a library folder made by another account without read permission for this one is unusable.
UNREADABLE_PROBLEM = ("not readable by this account (the server's, in the app): check the owner and permissions "
                      "of its folder and files")


class Unreadable(BundleError):
    """A bundle (or one of its files) this account may not read: its permissions, not its contents
    (:data:`UNREADABLE_PROBLEM`)."""
INPUT_KINDS = {"dist_vae": "expression", "vae_sf": "embedding", "vae_gf": "embedding"}
#: The published scATD backbones (and the imported checkpoints of their layout), by name.
BACKBONE_TITLES = {"dist_vae": "Dist_VAE (scATD-sf-dist)", "vae_sf": "VAE_sf (scATD-sf)",
                   "vae_gf": "VAE_gf (scATD-gf)"}
#: A model scATD Studio trained from scratch (Train page, ``scatd train``, the demo): a VAE of that
#: backbone's layout trained here on the user's data; not the published one (Dist_VAE is distilled from
#: scFoundation's latent on Panglao cells, VAE_sf / VAE_gf pretrained on Panglao), so not named as it.
TRAINED_TITLES = {"dist_vae": "VAE on genes (trained in scATD Studio)",
                  "vae_sf": "VAE on scFoundation embeddings (trained in scATD Studio)",
                  "vae_gf": "VAE on Geneformer embeddings (trained in scATD Studio)"}
#: The short form in a default model name: ``Gefitinib (VAE on genes, trained)``.
TRAINED_SHORT = {"dist_vae": "VAE on genes", "vae_sf": "VAE on scFoundation embeddings",
                 "vae_gf": "VAE on Geneformer embeddings"}
TRAINED_SOURCE = "trained by scATD Studio"  # the start of provenance['source'] of a model trained here


def backbone_title(backbone: str | None, provenance: Mapping[str, Any] | None = None) -> str:
    """What a model's backbone is, in words: the published name (:data:`BACKBONE_TITLES`) for an
    imported or published checkpoint; for a model trained here (``provenance['source']``), a VAE
    trained here (:data:`TRAINED_TITLES`), or the imported backbone it was trained from."""
    prov = provenance or {}
    if backbone not in BACKBONE_TITLES:
        return str(backbone)
    if not str(prov.get("source") or "").startswith(TRAINED_SOURCE):
        return BACKBONE_TITLES[backbone]
    if prov.get("backbone_bundle"):  # an imported pretrained backbone (scatd train --backbone-bundle)
        return f"{BACKBONE_TITLES[backbone]} backbone (drug model trained in scATD Studio)"
    return TRAINED_TITLES[backbone]



def safe_name(text: str, fallback: str = "model", *, distinct: bool = True) -> str:
    """A file-system-safe name made of ASCII letters, digits, '-', '_' and '.' (never a path).

    With ``distinct`` (folder names in the library), a name that had to be changed (other
    scripts, spaces, slashes ...) gets a short hash of the original, so different names (紫杉醇,
    多西他赛, "a/b", "a b") never share a folder; without it (download file names) it is only cleaned.
    """
    text = str(text)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:64]
    if not distinct or (cleaned == text and cleaned):
        return cleaned or fallback
    return f"{cleaned or fallback}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


# --------------------------------------------------------------------------- original .pth files

#: Entries a training script commonly wraps its ``state_dict`` in (``torch.save({"model_state_dict":
#: model.state_dict(), "epoch": 3, ...})``); the first one present that is a mapping is read.
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."


def load_checkpoint(path: str | Path, name: str | None = None,
                    max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict safely (``weights_only=True``) and return its tensors.

    Raises ``CheckpointError`` with a one-line reason for a missing, empty, corrupt or unsafe
    file, one that holds no tensors, or one that unpacks to more than ``max_bytes`` (default the
    decompression limit, ``SCATD_MAX_DECOMPRESSED_MB``), checked before it is read. ``name``: the
    file's name in messages (an upload's own name, where ``path`` is a temporary copy).
    See :func:`read_checkpoint` for the unwrapping done on the way (and its notes).
    """
    return read_checkpoint(path, name, max_bytes)[0]


def read_checkpoint(path: str | Path, name: str | None = None,
                    max_bytes: int | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """:func:`load_checkpoint`, with notes on what was done losslessly to reach the state dict.

    A state dict wrapped in a dict with other entries (``{"model_state_dict": ..., "epoch": 3}``,
    or ``state_dict`` / ``model``, see :data:`STATE_DICT_WRAPPERS`) is taken out of it, and the
    ``module.`` prefix that ``nn.DataParallel`` puts on every key is removed when every key has it;
    each is said in the notes (recorded in the bundle's provenance). Still ``weights_only=True``.
    """
    path = Path(path)
    name = name or path.name
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.",
                              "Give the checkpoint file itself (e.g. its .pth), not the folder holding it.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}", "Check the path.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {name} is empty (0 bytes).",
                              "The download or copy was probably interrupted; fetch the file again.")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # torch.save zip archive, or a legacy pickle
        raise CheckpointError(f"{name} is not a readable PyTorch checkpoint (it is neither a torch.save "
                              "archive nor a pickle).", "Check that you gave the .pth file itself.")
    check_checkpoint_size(path, name, max_bytes or limits().max_decompressed_bytes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{name} contains Python objects other than tensors; scATD Studio refuses to run "
                "code from a model file.",
                "Re-save the model's state_dict only (torch.save(model.state_dict(), ...)).") from None
        raise CheckpointError(f"{name} is not a readable PyTorch checkpoint (corrupt or another format).",
                              "Check that the file is a complete .pth download.") from None
    notes: list[str] = []
    if isinstance(obj, Mapping):
        wrapper = next((k for k in STATE_DICT_WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
        if wrapper is not None:
            others = [str(k) for k in obj if k != wrapper]
            obj = obj[wrapper]
            notes.append(f"the state dict was read from the checkpoint's '{wrapper}' entry"
                         + (f" (left out: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''})"
                            if others else ""))
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{name} does not hold a state_dict (a mapping of names to tensors).")
    if _is_foundation_checkpoint(obj):
        raise CheckpointError(
            f"{name} is scFoundation's own foundation model (its models {', '.join(map(str, obj))}, each with a "
            "config and weights), not a drug model: it is the backbone the vae_sf drug models read embeddings "
            "from, and is not imported into the model library.",
            "Install it with `scatd convert-scfoundation models.ckpt` (or put it in SCATD_SCFOUNDATION_DIR), see "
            "README, 'Backbone files'; import the drug model (e.g. VAE_sf_<drug>.pth) here.",
            app_hint="Give the drug model (e.g. VAE_sf_<drug>.pth) here. scFoundation's models.ckpt is the "
                     "backbone: the administrator installs it on the server (`scatd convert-scfoundation`, see "
                     "README, 'Backbone files').")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: entries that are not tensors: {', '.join(map(str, bad[:5]))}.",
                              "Save the model's state_dict alone (torch.save(model.state_dict(), ...)), or "
                              f"wrap it as one of the entries {', '.join(STATE_DICT_WRAPPERS)}.")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
        notes.append("the 'module.' prefix nn.DataParallel puts on every key was removed")
    return state, notes


def _is_foundation_checkpoint(obj: Mapping) -> bool:
    """Whether ``obj`` is scFoundation's ``models.ckpt``: models (``gene``, ``cell``, ``rde`` ...)
    each a dict with a ``config`` and a ``state_dict``, rather than a drug model's tensors."""
    models = [v for v in obj.values() if isinstance(v, Mapping) and "config" in v and "state_dict" in v]
    return bool(models) and len(models) == len(obj)


def _float_tensors(state: Mapping[str, torch.Tensor], what: str,
                   hint: str = "Use an intact copy of the model (download or copy it again, or re-train it)."
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict with every floating-point tensor in float32 (what the model computes in), and
    notes on what was converted; integer buffers (``num_batches_tracked``) are kept as they are.

    Raises ``CheckpointError`` naming the tensors that hold NaN or infinite values (before or
    after the conversion: a float64 value beyond float32's range), since such a model scores no
    cell. ``what``: how messages name the file (``"damaged checkpoint"`` ...).
    """
    out: dict[str, torch.Tensor] = {}
    converted: dict[torch.dtype, list[str]] = {}
    damaged: list[str] = []
    for k, v in state.items():
        if v.is_floating_point():
            # a finite sum means every value is finite (NaN and inf propagate; a sum of finite values that
            # overflows takes the exact check): one cheap pass per tensor (~30 ms for a published Dist_VAE)
            if not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all()):
                kinds = [w for w, f in (("NaN", torch.isnan), ("infinite values", torch.isinf)) if bool(f(v).any())]
                damaged.append(f"{k} holds {' and '.join(kinds)}")
            elif v.dtype != torch.float32:
                converted.setdefault(v.dtype, []).append(k)
                v = v.to(torch.float32)
                if not bool(torch.isfinite(v.sum())) and not bool(torch.isfinite(v).all()):
                    damaged.append(f"{k} holds values beyond float32's range")
        out[k] = v
    if damaged:
        shown = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more tensors" if len(damaged) > 5 else "")
        raise CheckpointError(f"{what}: {shown}. A model with such weights cannot score any cell.", hint)
    notes = []
    for dtype, keys in converted.items():
        kind = str(dtype).replace("torch.", "")
        exact = ("exact" if dtype in (torch.float16, torch.bfloat16)
                 else "rounded to float32, the precision the model computes in")
        notes.append(f"converted from {kind} to float32 ({exact}): "
                     + ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else ""))
    return out, notes


# --------------------------------------------------------------------------- bundles

@dataclass
class Bundle:
    """An installed model: its folder, manifest and side files (weights load on demand)."""

    path: Path
    manifest: dict
    genes: list[str] | None = None
    style_mean: np.ndarray | None = None
    style_std: np.ndarray | None = None
    _models: dict = field(default_factory=dict, repr=False)
    #: the display name of the model this bundle replaced when it was written (``overwrite``: the app's
    #: 'Replace a model of the same name', ``--replace``), for the message saying so; never saved
    replaced: str | None = field(default=None, repr=False, compare=False)

    # -- descriptive properties
    @property
    def backbone(self) -> str:
        return self.manifest["backbone"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def drug(self) -> str | None:
        return self.manifest.get("drug")

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def architecture(self) -> Architecture:
        return Architecture.from_dict(self.manifest["architecture"])

    @property
    def input_kind(self) -> str:
        return INPUT_KINDS[self.backbone]

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def label_mapping(self) -> dict[str, int]:
        return dict(self.manifest["label_mapping"])

    @property
    def positive_index(self) -> int:
        """The class whose probability is reported: ``resistant`` if named, else class 1."""
        return int(self.label_mapping.get("resistant", 1))

    @property
    def positive_label(self) -> str:
        inv = {v: k for k, v in self.label_mapping.items()}
        return inv[self.positive_index]

    @property
    def negative_label(self) -> str:
        inv = {v: k for k, v in self.label_mapping.items()}
        return inv[1 - self.positive_index] if len(inv) == 2 else "other"

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.get("demo"))

    @property
    def is_imported(self) -> bool:
        """An original checkpoint imported here (not a model trained by scATD Studio)."""
        return self.manifest["provenance"].get("source") == "imported original scATD checkpoint"

    @property
    def prediction_problem(self) -> str | None:
        """Why this model cannot predict as installed (``None`` when it can): a VAE_sf/VAE_gf drug
        classifier imported without its bulk embeddings lacks the AdaIN statistics its inference needs."""
        if self.kind == "classifier" and self.input_kind == "embedding" and self.style_mean is None:
            return NO_STYLE_PROBLEM
        return None

    @property
    def backbone_title(self) -> str:
        """:func:`backbone_title` of this model: its published name, or that it was trained here."""
        return backbone_title(self.backbone, self.manifest.get("provenance"))

    @property
    def title(self) -> str:
        """What the library and reports show, e.g. ``GEFITINIB · Dist_VAE (scATD-sf-dist)`` (a published
        or imported model), ``GEFITINIB · VAE on genes (trained in scATD Studio)`` (one trained here)."""
        base = f"{self.drug or 'backbone'} · {self.backbone_title}"
        return base + (DEMO_MARK if self.is_demo else "")

    # -- model
    def load_model(self, device: str | torch.device = "cpu", beta_mode: str | None = None):
        """The torch model in eval mode on ``device`` (cached per device and Swish mode)."""
        mode = beta_mode or self.manifest.get("beta_mode", "separate")
        if mode not in BETA_MODES:
            raise BundleError(f"Unknown Swish mode {mode!r}; use one of {', '.join(BETA_MODES)}.")
        key = (str(device), mode)
        if key not in self._models:
            # float32 whatever the bundle was written with (libraries made before imports converted
            # float16/float64 weights), and refused with a message when a weight is NaN or infinite
            called = self.name if self.name == self.path.name else f"{self.name} ({self.path.name})"
            state, _ = _float_tensors(_read_safetensors(self.path / WEIGHTS, "weights"),
                                      f"Model {called} has damaged weights",
                                      "Re-import or re-train this model (an administrator replaces a shared one).")
            with torch.device("meta"):  # no second copy of the weights: load by assignment
                model = build_model(self.architecture)
            try:
                check_state_dict(model, state)
            except CheckpointError as exc:
                raise BundleError(f"Bundle {self.path.name}: weights do not match its manifest. {exc.message}",
                                  "Re-import or re-train this model.") from None
            if isinstance(model, EnsembleClassifier):
                if mode == "shared_with_head":
                    raise BundleError(f"{self.name} is an ensemble trained by scATD Studio; the Swish mode "
                                      "'shared_with_head' reproduces the original Dist_VAE inference of imported "
                                      "checkpoints only.", "Use the bundle's own mode (separate).")
                model.load_stacked_state_dict(state, assign=True)
            else:
                model.load_state_dict(state, strict=True, assign=True)
            if isinstance(model, DrugClassifier) and mode == "shared_with_head" and self.backbone == "dist_vae":
                model.tie_encoder_beta_to_head()
            model.eval().to(device)
            for p in model.parameters():
                p.requires_grad_(False)
            self._models[key] = model
        return self._models[key]

    def summary(self) -> dict:
        m = self.manifest
        arch = m["architecture"]
        return {
            "name": self.name, "drug": self.drug, "backbone": self.backbone, "kind": self.kind,
            "demo": self.is_demo, "input": self.input_kind,
            "n_input_features": arch["encoder_dims"][0], "z_dim": arch["z_dim"], "members": arch.get("members") or 1,
            "threshold": self.threshold if self.kind == "classifier" else None,
            "created": m["provenance"].get("created"),
            "source": m["provenance"].get("source"), "metrics": m.get("metrics") or {},
            "path": str(self.path),
            "source_file": m["provenance"].get("source_file"), "source_sha256": m["provenance"].get("source_sha256"),
            "label_mapping": self.label_mapping if self.kind == "classifier" else None,
            "beta_mode": m["beta_mode"], "n_genes": len(self.genes) if self.genes is not None else None,
            "style": self.style_mean is not None if self.input_kind == "embedding" else None,
            "problem": self.prediction_problem,
        }


def input_transform_words(bundle: Bundle) -> str:
    """What happens to the data's values before they reach ``bundle``'s model, in words."""
    t = bundle.manifest["input_transform"]
    if bundle.input_kind == "embedding":
        return (f"Input: the cells' {BACKBONE_TITLES[bundle.backbone].split(' ')[0]} embeddings, re-styled by AdaIN "
                "(each feature's mean and sd over your cells set to those of the bulk embeddings stored with the "
                "model), as the original inference did; so the result depends on which cells are in the dataset.")
    if t == "none":
        return ("Input transform: none. The expression values go into the model as they are in your data (counts stay "
                "counts, log-normalised values stay log-normalised), as the original inference script did. The scATD "
                "reference leaves Dist_VAE's normalisation open (its code reads raw counts, its biomarker "
                "documentation asks for log-normalised values), so give values like those the model was trained on.")
    if t == "log1p_cp10k":
        return ("Input transform: log1p_cp10k. Each cell's values over the model's genes are scaled to 10,000 in "
                "total and log1p-transformed before the model.")
    n = f"{len(bundle.genes):,}" if bundle.genes is not None else "its"
    if bundle.manifest.get("library_size", MODEL_GENES) != MODEL_GENES:
        return ("Input transform: standardize, as this model was trained here. Raw counts are log-normalised first: "
                "each cell is scaled to 10,000 over all the genes in your data (its whole library, not only the "
                f"model's {n} genes) and log1p-transformed. Log-normalised values (log1p of counts per 10,000 over "
                "all genes, e.g. scanpy's normalize_total then log1p) and per-gene z-scores of them are used as they "
                "are, so they give the same calls as the counts. Then each gene is z-scored over your cells.")
    return ("Input transform: standardize, as this model was trained here. Raw counts are log-normalised first "
            f"over the model's {n} genes only: each cell is scaled to 10,000 over those genes (not its whole library) "
            "and log1p-transformed, as in the version of scATD Studio that trained it. Log-normalised values are "
            "used as they are; normalised over all genes, the same cells score somewhat differently than from their "
            f"counts, so give this model the kind of values it was trained on{_trained_on(bundle)}. Then each gene "
            "is z-scored over your cells.")


def _trained_on(bundle: Bundle) -> str:
    """What a trained model's target data held, as the end of a sentence ('' when not recorded)."""
    target = ((bundle.manifest.get("training") or {}).get("target") or {})
    if "log_normalised" not in target:
        return ""
    return (" (its single-cell training data were raw counts)" if target["log_normalised"] else
            " (its single-cell training data were already normalised values, not raw counts)")


def _threshold_origin(bundle: Bundle) -> str:
    recorded = bundle.manifest["provenance"].get("threshold_origin")
    if recorded:
        return recorded
    if bundle.threshold == DEFAULT_THRESHOLDS[bundle.backbone]:
        return f"the original scATD inference's default for {BACKBONE_TITLES[bundle.backbone]}"
    return "set when the model was installed"


def import_card_lines(bundle: Bundle) -> list[str]:
    """A short card for an imported checkpoint (which has no training data to compare with):
    where it comes from, who installed it and when, its threshold, how it predicts, its caveats."""
    m, prov = bundle.manifest, bundle.manifest["provenance"]
    sha = prov.get("source_sha256")
    lines = [f"Imported from {prov.get('source_file') or 'an original scATD checkpoint'}"
             + (f" (sha256 {sha})" if sha else "")
             + (f", downloaded from {prov['source_url']}" if prov.get("source_url") else "") + "."]
    when = (prov.get("created") or "")[:10] or "an unrecorded date"
    lines.append(f"Installed on {when}" + (f" by {prov['imported_by']}" if prov.get("imported_by") else "")
                 + f" with scATD Studio {prov.get('scatd_version', '?')}.")
    if bundle.kind == "classifier":
        mapping = bundle.label_mapping
        lines.append(f"Classes: {', '.join(f'{k} = {v}' for k, v in sorted(mapping.items(), key=lambda kv: kv[1]))}; "
                     f"P(resistant) is the probability of class {bundle.positive_index}.")
        lines.append(f"Default threshold {bundle.threshold:.3g}: {_threshold_origin(bundle)}; it is not calibrated to "
                     "your data (calibrate it on the Cells page, or --expected-fraction).")
        lines.append("Deterministic by default: the latent mean, where the original inference sampled the latent "
                     "(Monte-Carlo mode gives the per-cell mean and sd of sampled predictions).")
        if bundle.backbone == "dist_vae":
            lines.append("Swish: " + ("one beta shared by the encoder and the classifier head, as the original "
                                      "inference had it (reference §2.6)" if m["beta_mode"] == "shared_with_head"
                                      else "the encoder's and the head's own betas") + ".")
    if bundle.input_kind == "embedding":
        style = m.get("style")
        lines.append(f"AdaIN statistics: from {prov.get('style_reference') or 'the bulk embeddings'}"
                     + (f" (sha256 {prov['style_reference_sha256']})" if prov.get("style_reference_sha256") else "")
                     + "." if style else f"AdaIN statistics: none, so it {NO_STYLE_PROBLEM}.")
    else:
        lines.append(f"Genes: {len(bundle.genes or []):,}, matched by name.")
    lines.append(input_transform_words(bundle))
    lines.extend(f"Note: {n}." for n in prov.get("notes") or [])
    return lines


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BundleError(f"Bundle {path.parent.name} has no {path.name}.", "Re-import or re-train this model.")
    try:
        with open(path, "rb"):  # safetensors says "No such file" for a file it may not read
            pass
        return load_safetensors(path)  # in memory, not mapped from the file (see load_safetensors)
    except PermissionError:
        raise Unreadable(f"Bundle {path.parent.name}: its {what} file {path.name} is {UNREADABLE_PROBLEM}.",
                          f"It is {path}.",
                          app_hint="Ask the administrator to make it readable by the server's account.") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"Bundle {path.parent.name}: {what} file {path.name} is corrupt ({exc}).",
                          "Re-import or re-train this model.") from None


#: The largest safetensors header read (safetensors' own limit): a larger length is a broken file.
SAFETENSORS_HEADER_MAX = 100_000_000
_SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
                            "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


class _Shape:
    """A tensor's shape from a safetensors header, standing in for the tensor in a shape check."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


class _ShapesOf:
    """Stands in for a model in :func:`check_state_dict`: its state dict's tensor shapes."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes

    def state_dict(self) -> dict[str, _Shape]:
        return {k: _Shape(v) for k, v in self.shapes.items()}


@functools.lru_cache(maxsize=16)
def _expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    """The saved tensor names and shapes of the model a manifest's architecture (as JSON) describes,
    built on the meta device (no memory) once per architecture, as :meth:`Bundle.load_model` builds it."""
    with torch.device("meta"):
        model = build_model(Architecture.from_dict(json.loads(architecture)))
    stacked = getattr(model, "stacked_state_dict", None)  # an ensemble's weights are saved stacked
    return {k: tuple(v.shape) for k, v in (stacked() if stacked is not None else model.state_dict()).items()}


def safetensors_shapes(path: Path, what: str = "weights") -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the header of the safetensors file ``path``, without reading the
    tensors: the 8-byte header length, then the JSON header (at most :data:`SAFETENSORS_HEADER_MAX`
    bytes), each entry's byte range checked against its dtype and shape, and the file's length
    against the ranges. A broken header, a truncated (or overlong) file or a malformed entry is a
    :class:`BundleError` saying which; ``PermissionError`` passes (an unreadable file)."""
    called = f"Bundle {path.parent.name}: {what} file {path.name}"
    hint = "Re-import or re-train this model."
    if not path.is_file():
        raise BundleError(f"Bundle {path.parent.name} has no {path.name}.", hint)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise BundleError(f"{called} is truncated: {size:,} bytes, too short for a safetensors file.", hint)
        n = int.from_bytes(first, "little")
        if n > SAFETENSORS_HEADER_MAX or n > size - 8:
            raise BundleError(f"{called} has a broken header: it gives a header of {n:,} bytes in a file of "
                              f"{size:,} bytes.", hint)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{called} has a broken header (not the JSON a safetensors file starts with).",
                          hint) from None
    if not isinstance(header, dict):
        raise BundleError(f"{called} has a broken header (not a table of tensors).", hint)
    shapes, end = {}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            width = _SAFETENSORS_DTYPE_BYTES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, stop = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{called} has a broken header: its entry for tensor {key!r} is malformed.",
                              hint) from None
        if min(shape, default=0) < 0 or begin < 0 or stop - begin != width * math.prod(shape):
            raise BundleError(f"{called} has a broken header: tensor {key!r} of shape {shape} takes "
                              f"{width * math.prod(shape):,} bytes, but the header gives it {stop - begin:,}.", hint)
        shapes[str(key)] = shape
        end = max(end, stop)
    expected = 8 + n + end
    if size < expected:
        raise BundleError(f"{called} is truncated: it holds {size:,} of the {expected:,} bytes its header "
                          "describes.", hint)
    if size > expected:
        raise BundleError(f"{called} is damaged: it holds {size - expected:,} bytes more than its header "
                          "describes.", hint)
    return shapes


def check_weights(bundle: "Bundle") -> None:
    """Check a bundle's weights file without loading the tensors (a header read): intact
    (:func:`safetensors_shapes`), and holding exactly the tensor names and shapes the model its
    manifest describes has (built on the meta device: no memory). Raises :class:`BundleError`
    naming the problem, as :meth:`Bundle.load_model` would only when the model is used."""
    shapes = safetensors_shapes(bundle.path / WEIGHTS)
    try:
        check_state_dict(_ShapesOf(_expected_shapes(json.dumps(bundle.manifest["architecture"], sort_keys=True))),
                         {k: _Shape(v) for k, v in shapes.items()})
    except CheckpointError as exc:
        raise BundleError(f"Bundle {bundle.path.name}: weights do not match its manifest. {exc.message}",
                          "Re-import or re-train this model.") from None


def _check_manifest(m: Any, folder: Path) -> dict:
    if not isinstance(m, dict):
        raise BundleError(f"{folder.name}/{MANIFEST} is not a JSON object.")
    if m.get("format") != "scatd-bundle":
        raise BundleError(f"{folder.name}/{MANIFEST} is not an scATD Studio manifest.")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"Bundle {folder.name} was written by a newer scATD Studio "
                          f"(format {m.get('format_version')}).", "Upgrade scatd to use it.")
    required = ("kind", "backbone", "architecture", "input_transform", "label_mapping", "threshold",
                "beta_mode", "provenance")
    missing = [k for k in required if k not in m]
    if missing:
        raise BundleError(f"{folder.name}/{MANIFEST} lacks {', '.join(missing)}.")
    if m["backbone"] not in BACKBONES:
        raise BundleError(f"{folder.name}: unknown backbone {m['backbone']!r}.")
    if m["input_transform"] not in INPUT_TRANSFORMS:
        raise BundleError(f"{folder.name}: unknown input transform {m['input_transform']!r}.",
                          "Upgrade scatd, or re-import the model.")
    if m.get("library_size", MODEL_GENES) not in LIBRARY_SIZES:
        raise BundleError(f"{folder.name}: unknown library size {m['library_size']!r} (the genes each cell's counts "
                          f"are summed over; known: {', '.join(LIBRARY_SIZES)}).", "Upgrade scatd, or re-train the model.")
    mapping = m["label_mapping"]
    if m["kind"] == "classifier" and (not isinstance(mapping, dict)
                                      or sorted(mapping.values()) != list(range(len(mapping)))):
        raise BundleError(f"{folder.name}: label_mapping must map class names to 0..n-1.")
    return m


def load_bundle(path: str | Path) -> Bundle:
    """Open and validate a bundle folder (manifest, side files; weights are read lazily).

    A folder or file this account may not read is a :class:`BundleError` (no path in its message).
    ``~`` is the user's home folder, as in a shell (``load_bundle("~/.local/share/scatd/models/X")``)."""
    folder = Path(path).expanduser()
    try:
        return _load_bundle(folder)
    except PermissionError:
        raise Unreadable(f"Model {folder.name} is {UNREADABLE_PROBLEM}.", f"It is {folder}.",
                          app_hint="Ask the administrator to make it readable by the server's account.") from None


def _load_bundle(folder: Path) -> Bundle:
    if not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder} is not a model bundle (no {MANIFEST}).",
                          "Give a folder made by `scatd import-checkpoint` or `scatd train`.")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder.name}/{MANIFEST} is not valid JSON ({exc}).") from None
    manifest = _check_manifest(manifest, folder)
    bundle = Bundle(folder, manifest)
    arch = bundle.architecture
    if not (folder / WEIGHTS).is_file():
        raise BundleError(f"Bundle {folder.name} has no {WEIGHTS}.", "Re-import or re-train this model.")
    if bundle.input_kind == "expression":
        if not (folder / GENES).is_file():
            raise BundleError(f"Bundle {folder.name} has no {GENES} (the model's input genes).")
        genes = [g for g in (folder / GENES).read_text(encoding="utf-8").splitlines() if g]
        if len(genes) != arch.input_dim:
            raise BundleError(f"Bundle {folder.name}: {GENES} lists {len(genes)} genes but the model takes "
                              f"{arch.input_dim} inputs.")
        want = manifest.get("genes", {}).get("sha256")
        if want and gene_list_sha256(genes) != want:
            raise BundleError(f"Bundle {folder.name}: {GENES} differs from the list the model was saved with.")
        bundle.genes = genes
    if manifest.get("style"):
        style = _read_safetensors(folder / STYLE, "style statistics")
        if "mean" not in style or "std" not in style:
            raise BundleError(f"Bundle {folder.name}: {STYLE} lacks 'mean' or 'std'.")
        bundle.style_mean = style["mean"].numpy().astype(np.float64)
        bundle.style_std = style["std"].numpy().astype(np.float64)
        if bundle.style_mean.shape != (arch.input_dim,):
            raise BundleError(f"Bundle {folder.name}: style statistics have {bundle.style_mean.shape[0]} "
                              f"features but the model takes {arch.input_dim}.")
    return bundle


def check_label_mapping(mapping: Any) -> dict[str, int]:
    """A two-class model's label mapping: exactly ``resistant`` and ``sensitive``, mapped to the
    class indices 0 and 1, one each (the reported probability is the ``resistant`` class's)."""
    hint = 'Give the class index of each, e.g. {"sensitive": 0, "resistant": 1} (or the reverse).'
    shown = json.dumps(mapping) if isinstance(mapping, dict) else repr(mapping)
    if not isinstance(mapping, Mapping) or set(mapping) != {"resistant", "sensitive"}:
        raise InputError(f"The label mapping {shown} must name exactly the classes 'resistant' and 'sensitive'.",
                         hint)
    values = [mapping["sensitive"], mapping["resistant"]]
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values) or sorted(values) != [0, 1]:
        raise InputError(f"The label mapping {shown} must map 'resistant' and 'sensitive' to the class indices "
                         "0 and 1, one each.", hint)
    return {"sensitive": int(values[0]), "resistant": int(values[1])}


def save_bundle(
    out: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    arch: Architecture,
    *,
    drug: str | None,
    genes: Sequence[str] | None = None,
    style_mean: np.ndarray | None = None,
    style_std: np.ndarray | None = None,
    input_transform: str = "none",
    library_size: str | None = None,
    label_mapping: Mapping[str, int] | None = None,
    threshold: float | None = None,
    beta_mode: str = "separate",
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    name: str | None = None,
    demo: bool = False,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    unique: bool = False,
) -> Bundle:
    """Write a bundle folder atomically under the library lock and return it.

    ``overwrite`` replaces an existing bundle (the old one stays until the new one is complete);
    ``unique`` writes to the first free name ``out``, ``out-2`` ... instead of failing. Who made
    it (``provenance['imported_by' | 'trained_by']``) is recorded by the callers.
    ``library_size``: over which genes the model's input scales each cell's counts
    (:data:`~scatd_core.preprocess.LIBRARY_SIZES`); ``None`` records nothing, which reads as the
    model's genes.
    """
    out = Path(out)
    if input_transform not in INPUT_TRANSFORMS:
        raise BundleError(f"Unknown input transform {input_transform!r}; use one of {', '.join(INPUT_TRANSFORMS)}.")
    if library_size is not None and library_size not in LIBRARY_SIZES:
        raise BundleError(f"Unknown library size {library_size!r}; use one of {', '.join(LIBRARY_SIZES)}.")
    if beta_mode not in BETA_MODES:
        raise BundleError(f"Unknown Swish mode {beta_mode!r}; use one of {', '.join(BETA_MODES)}.")
    label_mapping = dict(label_mapping or DEFAULT_LABEL_MAPPING)
    if arch.class_num == 2:
        label_mapping = check_label_mapping(label_mapping)
    elif arch.class_num is not None and sorted(label_mapping.values()) != list(range(arch.class_num)):
        raise BundleError(f"The label mapping {label_mapping} does not give one name to each of the model's "
                          f"{arch.class_num} classes (0..{arch.class_num - 1}).")
    kind = arch.kind
    if INPUT_KINDS[arch.backbone] == "expression":
        if genes is None:
            raise BundleError(f"A {arch.backbone} model needs its input gene list.",
                              "Pass --genes (the scFoundation list OS_scRNA_gene_index.19264.tsv for "
                              "published Dist_VAE models).")
        if len(genes) != arch.input_dim:
            raise BundleError(f"The gene list has {len(genes)} genes but the model takes {arch.input_dim} "
                              "inputs.", "Give the gene list the model was trained with, in its order.")
    manifest: dict[str, Any] = {
        "format": "scatd-bundle",
        "format_version": FORMAT_VERSION,
        "model_id": uuid.uuid4().hex,  # this model, whichever folder holds it (see model_identity)
        "name": name or (f"{drug} ({arch.backbone})" if drug else f"{arch.backbone} backbone"),
        "kind": kind,
        "backbone": arch.backbone,
        "drug": drug,
        "demo": bool(demo),
        "architecture": arch.to_dict(),
        "activation": {"vae_sf": "leaky_relu", "vae_gf": "swish_per_block", "dist_vae": "swish_shared"}[arch.backbone],
        "beta_mode": beta_mode,
        "input_kind": INPUT_KINDS[arch.backbone],
        "input_transform": input_transform,
        **({"library_size": library_size} if library_size is not None else {}),
        "label_mapping": label_mapping if kind == "classifier" else None,
        "threshold": float(threshold if threshold is not None else DEFAULT_THRESHOLDS[arch.backbone]),
        "genes": ({"file": GENES, "n": len(genes), "sha256": gene_list_sha256(list(genes))}
                  if genes is not None else None),
        "style": None,
        "provenance": {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "scatd_version": __version__,
            "torch_version": torch.__version__,
            **(dict(provenance) if provenance else {}),
        },
        "metrics": dict(metrics) if metrics else {},
    }
    if extra:
        manifest.update(extra)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}
    style = None
    if style_mean is not None:
        style = {"mean": torch.as_tensor(np.asarray(style_mean, dtype=np.float32)),
                 "std": torch.as_tensor(np.asarray(style_std, dtype=np.float32))}
        manifest["style"] = {"file": STYLE, "n_features": int(style["mean"].shape[0]), "std": "population (ddof=0)"}

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / WEIGHTS))
        manifest["weights_sha256"] = sha256_file(folder / WEIGHTS)
        if genes is not None:
            (folder / GENES).write_text("\n".join(genes) + "\n", encoding="utf-8")
        if style is not None:
            save_file(style, str(folder / STYLE))
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    written, replaced = _write_atomically(out, write, overwrite, unique)
    bundle = load_bundle(written)
    bundle.replaced = replaced
    return bundle


# --------------------------------------------------------------------------- atomic, locked writes

class NameTaken(BundleError):
    """The bundle folder to write exists already (and is not to be replaced)."""


LOCK_FILE = ".library.lock"
_TMP_PREFIX, _OLD_PREFIX = ".bundle-tmp-", ".bundle-old-"


def library_lock(root: str | Path):
    """An exclusive lock on a library folder, so concurrent imports and trainings from several app
    sessions never interleave."""
    return folder_lock(root, LOCK_FILE)


def library_write_problem(library: str | Path | None = None) -> str | None:
    """Why a new model cannot be installed in the model library (``library``, default the configured
    one), or ``None``: a real try at creating a file there (permissions, read-only and special file
    systems all show), at the nearest folder that exists when the library folder is not made yet.
    Checked before training, which takes minutes to hours: it once failed only when saving."""
    import tempfile

    folder = (Path(library).expanduser() if library else model_library_dir()).absolute()
    while not folder.exists() and not folder.is_symlink() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".scatd-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"nothing can be created in {folder} ({exc.strerror or exc})"
    return None


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(out: Path, write, overwrite: bool, unique: bool = False) -> tuple[Path, str | None]:
    """Write a bundle folder with ``write(tmp_folder)``, then move it into place atomically.

    Under the library lock: refuse an existing bundle unless ``overwrite`` (or, with ``unique``,
    use the first free name ``out``, ``out-2``, ``out-3`` ...); write and fsync a temporary folder
    beside it; rename the old bundle aside, rename the new one into place, and only then delete
    the old one, so a crash at any point leaves either the old or the new bundle
    (:func:`clean_library` finishes the job at the next start). Returns the folder written and, when
    it replaced a model, that model's display name (its folder's name when it has none).

    The folder and its files get the permissions the umask gives any new folder and file (not
    ``tempfile``'s 0700/0600), so the other accounts that use the library (the server's service
    account, an administrator's own with the command line) can read the model. An account that may
    not write into the library gets a :class:`BundleError` saying so.
    """
    parent = out.parent
    try:
        return _write_locked(out, write, overwrite, unique)
    except PermissionError:
        raise BundleError("The model library cannot be written by this account; nothing was changed.",
                          f"The account running scATD Studio needs write access to {parent} and its lock file "
                          f"{LOCK_FILE}: check their owner and permissions (accounts that share a library share a "
                          "group that may write it, with a umask such as 002).",
                          app_hint="Ask the administrator to check the model library's owner and permissions."
                          ) from None


def _new_folder(parent: Path) -> Path:
    """A new, empty temporary folder in ``parent``, with the permissions the umask gives any new folder."""
    while True:
        tmp = parent / f"{_TMP_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            tmp.mkdir(mode=0o777)  # the umask applies (tempfile.mkdtemp would make it 0700)
            return tmp
        except FileExistsError:
            continue


def _readable_as_the_umask_allows(folder: Path) -> None:
    """Give what was written into ``folder`` the permissions the umask gives a new folder or file:
    the folder's own mode (0o777 & ~umask) for folders, without the execute bits for files
    (safetensors writes its files 0600 whatever the umask)."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(mode if path.is_dir() else mode & 0o666)


def _write_locked(out: Path, write, overwrite: bool, unique: bool) -> tuple[Path, str | None]:
    parent = out.parent
    with library_lock(parent):
        if unique:
            base, k = out, 2
            while out.exists() or _case_variant(out) is not None:
                out, k = base.with_name(f"{base.name}-{k}"), k + 1
        if overwrite and not out.exists() and (variant := _case_variant(out)) is not None:
            out = variant  # the model the clash names (one folder on a macOS or Windows disk): replaced, not a twin
        if not overwrite and (out.exists() or _case_variant(out) is not None):
            held = out if out.exists() else _case_variant(out)
            what = "A model bundle" if (held / MANIFEST).exists() else "A folder"
            named = out.name if held.name == out.name else f"{held.name} (the same name but for its case: one " \
                                                           "folder on a macOS or Windows disk)"
            raise NameTaken(f"{what} named {named} already exists in {parent}; nothing was changed.",
                            "To keep both, import it under another name (scatd import-checkpoint ... --name NAME) "
                            "or into another folder (--out FOLDER). To replace it, for every user of the library, "
                            "add --replace (an account that may write the library; in the app, an administrator's "
                            "'Replace a model of the same name' on the Model library page).",
                            app_hint="Give it another name, or ask an administrator to replace the model.")
        replaced = _shown_name(out) if out.exists() else None
        tmp = _new_folder(parent)
        try:
            write(tmp)
            _readable_as_the_umask_allows(tmp)
            _fsync_tree(tmp)
            if out.exists():
                old = parent / f"{_OLD_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}"
                out.rename(old)
                tmp.rename(out)
                _fsync_dir(parent)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
                _fsync_dir(parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out, replaced


def _shown_name(folder: Path) -> str:
    """The name the model in ``folder`` is shown by (:func:`named_title`), for a message saying it was replaced;
    a model that cannot be loaded: its display name, or its folder's."""
    try:
        return named_title(_load_bundle(folder))
    except Exception:  # a damaged or unreadable model: only named, never a reason to fail the replace
        return _held_name(folder) or folder.name


def _case_variant(out: Path) -> Path | None:
    """Another folder beside ``out`` whose name differs from ``out``'s only by case (``Gefitinib_...``,
    ``GEFITINIB_...``): two folders on Linux, one on a case-insensitive disk (macOS, Windows), where the
    library may be copied or mounted; a new model never takes such a name."""
    try:
        return next((p for p in out.parent.iterdir()
                     if p.name != out.name and p.name.casefold() == out.name.casefold()), None)
    except OSError:
        return None


def clean_library(root: str | Path | None = None) -> list[str]:
    """Finish or undo interrupted writes: incomplete temporary folders are removed, and a bundle
    renamed aside by an overwrite that did not finish is put back (or removed when the new one is in
    place). Returns what was done, for the server log and ``scatd doctor``."""
    root = Path(root) if root else model_library_dir()
    if not root.is_dir():
        return []
    done = []
    with library_lock(root):
        for folder in sorted(root.iterdir()):
            try:
                if folder.name.startswith(_TMP_PREFIX) and folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
                    done.append(f"removed an incomplete write ({folder.name})" if not folder.exists() else
                                f"could not remove an incomplete write ({folder.name}): {_NOT_MINE}")
                elif folder.name.startswith(_OLD_PREFIX) and folder.is_dir():
                    original = root / folder.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
                    if original.exists():
                        shutil.rmtree(folder, ignore_errors=True)
                        done.append(f"removed the replaced copy of {original.name}" if not folder.exists() else
                                    f"could not remove the replaced copy of {original.name} ({folder.name}): "
                                    f"{_NOT_MINE}")
                    else:
                        folder.rename(original)
                        done.append(f"restored {original.name} (its replacement was interrupted)")
            except OSError as exc:  # another account's folder: reported, never the end of the start-up
                done.append(f"could not repair {folder.name} ({exc.strerror or type(exc).__name__}): {_NOT_MINE}")
    return done


_NOT_MINE = "this account may not change it; check its owner and permissions"


def remove_bundle(path: str | Path) -> None:
    """Delete an installed bundle (under the library lock; the app allows it to administrators only)."""
    path = Path(path)
    try:
        with library_lock(path.parent):
            if not (path / MANIFEST).is_file():
                raise BundleError(f"{path.name} is not a model bundle; nothing was removed.")
            aside = path.parent / f"{_TMP_PREFIX}removed-{uuid.uuid4().hex[:8]}"
            path.rename(aside)  # atomic: the library never lists a half-deleted bundle
            shutil.rmtree(aside, ignore_errors=True)
    except PermissionError:
        raise BundleError(f"{path.name} could not be removed: {_NOT_MINE} (and the model library's); nothing "
                          "was removed.", f"It is {path}.",
                          app_hint="Ask the administrator to check the model library's owner and permissions."
                          ) from None


def style_statistics(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std (ddof=0) of bulk embeddings (samples x features)."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] < 2:
        raise InputError(f"The style reference must be a 2-D array of at least 2 samples x features; "
                         f"got shape {ref.shape}.")
    if not np.isfinite(ref).all():
        raise InputError("The style reference contains NaN or infinite values.")
    return ref.mean(axis=0), ref.std(axis=0, ddof=0)


def _read_style_reference(path: Path, name: str | None = None) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"Style reference not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{name or path.name} is not a numeric .npy array ({exc}).",
                         "Give the bulk embedding .npy the original used for AdaIN (samples x features).") from None


def _refuse_non_bundle_out(out: Path) -> None:
    """``out`` (import-checkpoint's ``--out``) is new, or a model folder (which is then refused as
    taken, or replaced, as the import says): an existing file or folder that is not a scATD model
    folder is refused before anything is read or written."""
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and (out / MANIFEST).is_file()):
        return
    what = ("a folder that is not a scATD model folder (it has no " + MANIFEST + ")" if out.is_dir()
            else "a file, not a scATD model folder")
    raise NameTaken(f"{out} already exists and is {what}; nothing was written.",
                    "Give --out a new folder (it is created), or leave out --out to install the model in the model "
                    "library.",
                    app_hint="Choose a new folder for the model.")


def import_checkpoint(
    pth: str | Path,
    backbone: str,
    *,
    drug: str | None = None,
    out: str | Path | None = None,
    genes: str | Path | None = None,
    style_reference: str | Path | None = None,
    input_transform: str = "none",
    label_mapping: Mapping[str, int] | None = None,
    threshold: float | None = None,
    beta_mode: str | None = None,
    name: str | None = None,
    library: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    source_name: str | None = None,
    max_checkpoint_bytes: int | None = None,
    require_style: bool = False,
    side_name: str | None = None,
    published: bool = False,
) -> Bundle:
    """Turn an original scATD ``.pth`` (pretraining or DAL) into a bundle.

    The key layout must match the backbone exactly; layer sizes are read from tensor shapes.
    Dist_VAE classifiers default to ``beta_mode='shared_with_head'`` so that published
    predictions reproduce (reference §2.6); pass ``beta_mode='separate'`` for the corrected
    behaviour. ``out`` defaults to a folder in the model library; an existing bundle there is
    replaced only with ``overwrite``. ``provenance`` adds to what is recorded (e.g.
    ``imported_by``, the source URL). ``source_name``: the checkpoint's own file name, for
    messages and provenance, where ``pth`` is a copy under another name (an upload);
    ``side_name`` likewise for ``genes`` or ``style_reference``.
    ``max_checkpoint_bytes``: the most the checkpoint may unpack to (default the decompression
    limit; the app passes the upload limit for an uploaded file), see :func:`load_checkpoint`.

    The folder, when ``out`` is not given, is named after ``name`` when one is given (so two
    models of one drug and backbone, e.g. Dist_VAE models for two target datasets, can both be
    installed), else ``DRUG_backbone``. Floating-point weights are stored in float32 (float16 and
    bfloat16 exactly; said in the provenance's ``notes``, with any unwrapping of the state dict);
    a tensor holding NaN or infinite values is refused. ``require_style`` (the app): refuse a
    VAE_sf/VAE_gf drug classifier without ``style_reference``, which could not predict.

    The names the published install uses are kept for it
    (:func:`scatd_core.published.reserved_name_problem`): ``DRUG_backbone_published`` folders and
    display names saying "published scATD" are refused, and a published model's own folder
    ``DRUG_backbone`` to a model of another drug or backbone; ``published`` is that install's own
    import (:func:`scatd_core.published.install`).
    """
    if backbone not in BACKBONES:
        raise CheckpointError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    if label_mapping is not None:
        check_label_mapping(label_mapping)  # before reading the checkpoint
    if out is not None:  # a folder of the user's that is not a model is never written into, nor replaced
        _refuse_non_bundle_out(Path(out))
    pth = Path(pth)
    shown = source_name or pth.name
    state, notes = read_checkpoint(pth, source_name, max_checkpoint_bytes)
    state, converted = _float_tensors(state, f"Damaged checkpoint {shown}")
    notes += converted
    arch = infer_architecture(state, backbone)
    model = build_model(arch)
    check_state_dict(model, state)
    if arch.kind == "classifier" and not drug:
        raise CheckpointError("This is a drug classification checkpoint; name its drug with --drug.",
                              app_hint="Type its drug in the Drug field.")
    if (require_style and style_reference is None and arch.kind == "classifier"
            and INPUT_KINDS[backbone] == "embedding"):
        raise InputError(
            f"{shown} is a {BACKBONE_TITLES[backbone]} drug classifier: it needs the bulk embeddings its AdaIN "
            "statistics come from, or it cannot predict.",
            f"Give --style-reference: the bulk cell-line embeddings of this backbone (.npy, samples x "
            f"{arch.input_dim:,} features).",
            app_hint=f"Add them under 'Bulk embeddings for AdaIN': the bulk cell-line embeddings of this backbone "
                     f"the model was trained on (.npy, samples x {arch.input_dim:,} features, e.g. scATD's "
                     "AllbulkDEll_*_bulk_cell_embedding_*.npy), then import again.")
    gene_list = read_gene_list(genes, side_name) if genes is not None else None
    if gene_list is not None:
        from scatd_core.genes import excel_dates_warning

        dates = excel_dates_warning(gene_list)
        if dates:
            notes.append(f"gene list {side_name or Path(genes).name}: {dates[0].lower()}{dates[1:].rstrip('.')}")
    if gene_list is not None and INPUT_KINDS[backbone] != "expression":
        raise InputError(f"--genes applies to Dist_VAE models only; {backbone} takes embeddings.")
    style_mean = style_std = None
    if style_reference is not None:
        if INPUT_KINDS[backbone] != "embedding":
            raise InputError("--style-reference applies to VAE_sf/VAE_gf models only.")
        ref = _read_style_reference(Path(style_reference), side_name)
        if ref.ndim != 2 or ref.shape[1] != arch.input_dim:
            raise InputError(f"The style reference has shape {ref.shape}; the model takes {arch.input_dim} "
                             "features per sample.", "Give the bulk embeddings of this backbone.")
        style_mean, style_std = style_statistics(ref)
    if beta_mode is None:
        beta_mode = "shared_with_head" if (backbone == "dist_vae" and arch.kind == "classifier") else "separate"
    in_library = out is None
    if out is None:
        base = Path(library) if library else model_library_dir()
        out = base / safe_name(name or f"{drug or 'backbone'}_{backbone}")
    if not published:
        from scatd_core.published import refuse_reserved_name

        refuse_reserved_name(Path(out).name, name, kind=arch.kind, backbone=backbone, drug=drug, nothing="imported",
                             hint="Give another --name (it also names the model's library folder)"
                             + (", or another --out." if not in_library else "."),
                             app_hint="Give it another display name (it also names the model's folder).")
    try:
        return save_bundle(
            out, state, arch, drug=drug, genes=gene_list, style_mean=style_mean, style_std=style_std,
            input_transform=input_transform, label_mapping=label_mapping, threshold=threshold,
            beta_mode=beta_mode, name=name,
            provenance={"source": "imported original scATD checkpoint", "source_file": shown,
                        "source_sha256": sha256_file(pth),
                        "style_reference": Path(style_reference).name if style_reference else None,
                        "style_reference_sha256": sha256_file(style_reference) if style_reference else None,
                        "threshold_origin": ("set at import" if threshold is not None else
                                             f"the original scATD inference's default for {BACKBONE_TITLES[backbone]}"),
                        **({"notes": notes} if notes else {}),
                        **(dict(provenance) if provenance else {})},
            overwrite=overwrite,
        )
    except NameTaken as exc:
        called = name or f"{drug or 'backbone'} ({backbone})"
        # the folder, or one whose name differs from it only by case (GEFITINIB_dist_vae beside Gefitinib_dist_vae)
        taken = Path(out) if Path(out).exists() else _case_variant(Path(out)) or Path(out)
        held = _held_name(taken)
        if held is not None and held.casefold() != called.casefold():  # the folder's model has another name
            folder = taken.name
            made = ("--out names it" if not in_library else f"the name '{name}' names it" if name else
                    "without --name, the model's library folder is named after its drug and backbone")
            raise NameTaken(
                f"The {'model library ' if in_library else ''}folder {folder} already holds another model, named "
                f"'{held}'; nothing was changed.",
                f"It is {out} ({made}). {exc.hint}",
                app_hint=f"The model's folder is named after its display name, and that folder ({folder}) already "
                         f"holds the model '{held}': give this one another display name (e.g. with its target "
                         "dataset), or ask an administrator to replace the existing model.") from None
        raise NameTaken(
            f"A model named '{called}' already exists{' in the model library' if in_library else ''} "
            f"(folder {taken.name}); nothing was changed.",
            f"It is {taken}. {exc.hint}",
            app_hint="Give it another display name (a second model of one drug and backbone, e.g. for another "
                     "target dataset, needs its own), or ask an administrator to replace the existing one.") from None


def _held_name(folder: Path) -> str | None:
    """The display name of the model in ``folder`` (its folder name when it has none), or ``None``
    when the folder holds no readable model manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(manifest.get("name") or folder.name) if isinstance(manifest, dict) else None


def model_identity(bundle: Bundle) -> str:
    """What tells a model from another that later took its library folder (a model removed, and
    another of the same default name trained or imported since; or one replaced): the
    ``model_id`` each bundle gets when it is written, or, for a bundle written before those, the
    sha256 of its weights. Whatever refers to a library model by its folder (a saved panel, a
    panel training's resume state, an app session's chosen model) records this with it."""
    m = bundle.manifest
    return str(m.get("model_id") or f"sha256:{m.get('weights_sha256', '')}")


def who_made(bundle: Bundle) -> str:
    """``"trained by bob on 2026-05-01"``, ``"imported by alice"``...: what the provenance records, in words."""
    prov = bundle.manifest.get("provenance") or {}
    verb, who = (("trained", prov["trained_by"]) if prov.get("trained_by") else
                 ("imported", prov["imported_by"]) if prov.get("imported_by") else
                 ("installed", None))
    when = (prov.get("created") or "")[:10]
    where = " with the server's command line" if made_on_command_line(bundle) else ""
    return verb + where + (f" by {who}" if who else "") + (f" on {when}" if when else "")


def maker(bundle: Bundle) -> str | None:
    """Who trained or imported ``bundle`` (``provenance['trained_by' | 'imported_by']``), or None
    where nobody is recorded (the demo, a model installed with the server)."""
    prov = bundle.manifest.get("provenance") or {}
    return prov.get("trained_by") or prov.get("imported_by") or None


def is_published(bundle: Bundle) -> bool:
    """One of the scATD authors' published models, as the published install installs them (only it
    gives the display name saying "published scATD": :func:`scatd_core.published.reserved_name_problem`)."""
    from scatd_core.published import PUBLISHED_MARK

    return PUBLISHED_MARK.lower() in str(bundle.manifest.get("name") or "").lower()


def chosen_by_default_for(bundle: Bundle, user: str | None) -> bool:
    """Whether ``bundle`` may be chosen for ``user`` before they choose a model (the app's default):
    a published model, the library's demo (nobody is recorded to have made it), one nobody is
    recorded to have made, or one ``user`` trained or imported. Another user's model in the shared
    library is offered, never chosen for them, a demo model they trained on simulated data too.
    ``user`` None: a single-user installation (no login), where every model is the user's."""
    if user is None or is_published(bundle) or made_on_command_line(bundle):
        return True
    who = maker(bundle)
    return who is None or who == user


#: ``provenance['via']`` of a model the ``scatd`` command line made on the server (imported or
#: trained there by an account of the server, typically its administrator), not an app login.
COMMAND_LINE = "command line"


def made_on_command_line(bundle: Bundle) -> bool:
    """Whether ``bundle`` was imported or trained with the ``scatd`` command line on the server
    (``provenance['via']``; models trained before it was recorded: their ``source`` names the
    command): its maker is an account of the server, such as the administrator installing the lab's
    models, not one of the app's users, so it is the lab's model, chosen as a published one is."""
    prov = bundle.manifest.get("provenance") or {}
    return prov.get("via") == COMMAND_LINE or str(prov.get("source") or "").startswith("trained by scATD Studio (scatd ")


def folder_taken_words(was: str | None, now: Bundle) -> str:
    """What to say of a reference whose model is gone and whose library folder another model holds now."""
    return (f"the model {f'{was!r} ' if was else ''}was removed (or replaced) and another model now has its "
            f"folder ({now.name!r}, {who_made(now)})")


def distinct_titles(bundles: Sequence[Bundle]) -> dict[str, str]:
    """Each bundle's :attr:`Bundle.title`, keyed by ``str(bundle.path)``, for a list to choose from:
    a title several bundles share gets the bundle's folder name added, e.g.
    ``TESTDRUG · VAE_sf (scATD-sf) (vae_sf_64)``, so no two entries look the same."""
    shared = Counter(b.title for b in bundles)
    return {str(b.path): b.title if shared[b.title] == 1 else f"{b.title} ({b.path.name})" for b in bundles}


def short_backbone_title(title: str) -> str:
    """A backbone's title without its explanation in brackets, for a narrow table column or select box:
    ``Dist_VAE`` (published or imported, also as the backbone a model was trained from), ``VAE on
    genes`` (trained in scATD Studio); the help beside it says the rest (:data:`BACKBONE_HELP`)."""
    return str(title).split(" (")[0]


#: What the short backbone names mean (the help of the Model page's Backbone box and the library's column).
BACKBONE_HELP = ("Dist_VAE (scATD-sf-dist), VAE_sf (scATD-sf), VAE_gf (scATD-gf): the published scATD backbones, "
                 "in a published or imported model (or one trained in scATD Studio from such a backbone); "
                 "'VAE on genes' (or on scFoundation / Geneformer embeddings): a VAE of that layout trained in "
                 "scATD Studio on your own data.")


def backbone_group_titles(bundles: Sequence[Bundle], *, short: bool = False) -> dict[str, str]:
    """For a choice of backbone before a model (the Model page): each backbone's name as its models
    read, e.g. ``Dist_VAE (scATD-sf-dist) / VAE on genes (trained in scATD Studio)`` when both an
    imported and a model trained here are offered; a backbone with none, its published name. ``short``:
    each by :func:`short_backbone_title` (``Dist_VAE / VAE on genes``), for a narrow select box."""
    cut = short_backbone_title if short else str
    found: dict[str, list[str]] = {}
    for b in bundles:
        found.setdefault(b.backbone, [])
        if cut(b.backbone_title) not in found[b.backbone]:
            found[b.backbone].append(cut(b.backbone_title))
    return {b: " / ".join(sorted(found.get(b) or [cut(title)], key=lambda t: t != cut(title)))
            for b, title in BACKBONE_TITLES.items()}


def named_title(bundle: Bundle) -> str:
    """The display name (``--name``) and, when it does not say it already, the drug and backbone
    (a name made of the title's parts, as the demo's "DEMOTINIB · demo (simulated data)": the
    title alone, never "DEMOTINIB · demo (simulated data) · DEMOTINIB · Dist_VAE ..."). A name the
    user gave a model, trained here or imported (``scatd train --name``, the Train page's Model name,
    ``scatd import-checkpoint --name``, the import form's Display name), is shown as given (with
    " · demo (simulated data)" for a demo model)."""
    name, title = bundle.name, bundle.title
    unnamed = name == bundle.path.name and not (getattr(bundle, "manifest", None) or {}).get("name")
    if (not name or unnamed or set(name.split(" · ")) <= set(title.split(" · "))
            or _saved_default_name(bundle)):
        return title
    default = _default_name_number(bundle)
    if default is not None:  # "Gefitinib (VAE on genes, trained)" says the title's drug, backbone and origin
        if getattr(bundle, "backbone_title", None) == TRAINED_TITLES.get(getattr(bundle, "backbone", None)):
            return name  # not "Gefitinib (VAE on genes, trained) · Gefitinib · VAE on genes (trained in scATD Studio)"
        return title + (f" {default}" if default else "")  # trained on an imported backbone: the title says which
    # a name the user gave (scatd train/import-checkpoint --name, the Train page's Model name, the import form's
    # Display name): shown as given, not "cisplatin_demo · Cisplatin · VAE on genes (trained in scATD Studio)"
    # nor "DOCETAXEL GSE140440 · DOCETAXEL · Dist_VAE (scATD-sf-dist)"; a demo model says so
    demo = DEMO_MARK if getattr(bundle, "is_demo", False) and DEMO_MARK not in name else ""
    return name + demo


#: The end of a demo model's title (:attr:`Bundle.title`)
DEMO_MARK = " · demo (simulated data)"


def _saved_default_name(bundle) -> bool:
    """Whether ``bundle``'s name is the one :func:`save_bundle` gives a model without one
    (``DOCETAXEL (dist_vae)``, ``dist_vae backbone``: an import without --name): it says nothing
    the title does not say better (``DOCETAXEL · Dist_VAE (scATD-sf-dist)``)."""
    drug, backbone = getattr(bundle, "drug", None), getattr(bundle, "backbone", None)
    default = f"{drug} ({backbone})" if drug else f"{backbone} backbone"
    return bool(backbone) and str(bundle.name).casefold() == default.casefold()


def _default_name_number(bundle) -> str | None:
    """When ``bundle``'s name is the one a model trained without a name gets (``Gefitinib (VAE on
    genes, trained)``, ``... panel)``, with the number :func:`~scatd_core.train.free_model_name`
    adds when taken): that number ("" without one); else ``None``."""
    drug, short = getattr(bundle, "drug", None), TRAINED_SHORT.get(getattr(bundle, "backbone", None))
    if not drug or not short:
        return None
    found = re.fullmatch(rf"{re.escape(str(drug))} \({re.escape(short)}, (?:trained|panel)\)(?: (\d+))?",
                         str(bundle.name), flags=re.IGNORECASE)
    return None if found is None else (found.group(1) or "")


def display_names(bundles: Sequence[Bundle]) -> dict[str, str]:
    """The one name each model is shown by, keyed by ``str(bundle.path)``: every picker, table,
    card and message of the app says it (pass the whole library, so a model reads the same on every
    page). It is :func:`named_title`, with the folder name added where several bundles would read
    the same, even by case alone, e.g. ``GEFITINIB · Dist_VAE (scATD-sf-dist) (gefitinib_copy)``."""
    titles = [named_title(b) for b in bundles]
    shared = Counter(t.casefold() for t in titles)
    return {str(b.path): t if shared[t.casefold()] == 1 else f"{t} ({b.path.name})" for b, t in zip(bundles, titles)}


#: the former name of :func:`display_names`
distinct_named_titles = display_names


# --------------------------------------------------------------------------- library

@dataclass
class LibraryEntry:
    path: Path
    bundle: Bundle | None
    problem: str | None = None
    #: not a damaged model: one this account may not read (its problem is :data:`UNREADABLE_PROBLEM`
    #: when permissions keep it out; another error of the file system otherwise)
    unreadable: bool = False

    @property
    def ok(self) -> bool:
        return self.bundle is not None


def list_library(library: str | Path | None = None) -> list[LibraryEntry]:
    """Every bundle folder in the library, validated; broken ones carry their problem.

    A folder this account may not read, or one of its files (made by another account without read
    permission for this one), is listed as unusable, :data:`UNREADABLE_PROBLEM` and
    ``unreadable``, never as a damaged model; a library folder it may not list at all is a
    :class:`BundleError`. No problem names a path. The weights are checked by their header only
    (:func:`check_weights`: broken, truncated, or names and shapes other than the manifest's
    model has), so a damaged model is listed as broken, not found out at its first prediction."""
    root = Path(library) if library else model_library_dir()
    if not root.is_dir():
        return []
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise BundleError("The model library cannot be read by this account.",
                          f"Check the owner and permissions of {root}: the account running scATD Studio needs to "
                          "read it.", app_hint="Ask the administrator to check the model library's owner and "
                                               "permissions.") from None
    entries = []
    for folder in folders:
        try:
            if not (folder / MANIFEST).exists():
                continue
            bundle = load_bundle(folder)
            check_weights(bundle)  # readable, intact and the manifest's shapes: a header read, no tensors
            entries.append(LibraryEntry(folder, bundle))
        except (Unreadable, PermissionError):  # its manifest, gene list, style statistics or weights, or the folder
            entries.append(LibraryEntry(folder, None, UNREADABLE_PROBLEM, unreadable=True))
        except (BundleError, InputError) as exc:
            entries.append(LibraryEntry(folder, None, exc.message))
        except OSError as exc:
            entries.append(LibraryEntry(folder, None, f"cannot be read ({exc.strerror or type(exc).__name__})",
                                        unreadable=True))
    return entries


def load_backbone_from_bundle(bundle: Bundle) -> ResVAE:
    """The pretraining VAE of a ``kind == 'backbone'`` bundle (for transfer learning)."""
    if bundle.kind != "backbone":
        raise BundleError(f"{bundle.name} is a drug classifier, not a pretrained backbone.",
                          "Give a bundle imported from a pretraining checkpoint.")
    return copy.deepcopy(bundle.load_model("cpu"))
