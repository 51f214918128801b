"""Read a model's architecture off a ``state_dict`` and check its keys strictly.

Layer widths, z size and class count come from tensor shapes, so the published sizes and any
custom size load alike. The backbone is recognised from the key layout (reference §11.2):

- ``vae_sf``: plain ``fc``/``downsample``, no ``swish.beta`` in the blocks;
- ``vae_gf``: spectral ``fc`` (``fc.weight_orig``) and a ``swish.beta`` per block;
- ``dist_vae``: plain ``fc``, spectral ``downsample``, a ``swish.beta`` per block.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from scatd_core.errors import CheckpointError
from scatd_core.nn.models import BACKBONES, Architecture, build_model

_BLOCK = re.compile(r"^(Encoder|Decoder)_resblocks\.(\d+)\.")

_LAYOUT_WORDS = {
    "vae_sf": "plain ResBlock layers with LeakyReLU (no swish.beta)",
    "vae_gf": "spectral-normed ResBlock fc (fc.weight_orig) and a Swish per block",
    "dist_vae": "plain ResBlock fc, spectral-normed shortcut, and Swish in the blocks",
}

#: How the Model library page's import form names each backbone (its Backbone choice).
_FORM_TITLES = {"dist_vae": "Dist_VAE (scATD-sf-dist)", "vae_sf": "VAE_sf (scATD-sf)", "vae_gf": "VAE_gf (scATD-gf)"}


def _weight(sd: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor | None:
    for suffix in ("weight", "weight_orig"):
        if f"{prefix}.{suffix}" in sd:
            return sd[f"{prefix}.{suffix}"]
    return None


def _block_dims(sd: Mapping[str, torch.Tensor], part: str) -> list[int] | None:
    indices = sorted({int(m.group(2)) for k in sd if (m := _BLOCK.match(k)) and m.group(1) == part})
    if not indices:
        return None
    if indices != list(range(len(indices))):
        raise CheckpointError(f"{part} blocks are numbered {indices}; expected 0..{len(indices) - 1}.")
    dims: list[int] = []
    for i in indices:
        w = _weight(sd, f"{part}_resblocks.{i}.fc")
        if w is None or w.ndim != 2:
            raise CheckpointError(f"Missing key {part}_resblocks.{i}.fc.weight (or .weight_orig).")
        out_dim, in_dim = (int(s) for s in w.shape)
        if dims and dims[-1] != in_dim:
            raise CheckpointError(f"{part}_resblocks.{i}.fc takes {in_dim} inputs but block {i - 1} "
                                  f"gives {dims[-1]}.")
        if not dims:
            dims.append(in_dim)
        dims.append(out_dim)
    return dims


def detect_backbone(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone whose key layout the encoder blocks follow, or ``None`` if none does."""
    spectral_fc = "Encoder_resblocks.0.fc.weight_orig" in sd
    plain_fc = "Encoder_resblocks.0.fc.weight" in sd
    has_swish = "Encoder_resblocks.0.swish.beta" in sd
    if plain_fc and not has_swish:
        return "vae_sf"
    if spectral_fc and has_swish:
        return "vae_gf"
    if plain_fc and has_swish:
        return "dist_vae"
    return None


def infer_architecture(sd: Mapping[str, torch.Tensor], backbone: str | None = None) -> Architecture:
    """Architecture of an original (or our own) ``state_dict``; raise ``CheckpointError`` if unclear.

    Parameters
    ----------
    sd
        The state dict (tensors only).
    backbone
        The backbone the user says this is; a checkpoint laid out for another backbone is
        refused with a message naming both.
    """
    if not any(k.startswith("Encoder_resblocks.") for k in sd):
        raise CheckpointError(
            "This file holds tensors but no scATD encoder (no 'Encoder_resblocks.*' keys).",
            "Give a checkpoint saved by the scATD pretraining or transfer-learning scripts.")
    found = detect_backbone(sd)
    if found is None:
        raise CheckpointError("The encoder blocks match none of the scATD layouts (vae_sf, vae_gf, dist_vae).",
                              "Check that this is an scATD checkpoint.")
    if backbone is not None:
        if backbone not in BACKBONES:
            raise CheckpointError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if found != backbone:
            extra = ""
            if backbone == "dist_vae" and found == "vae_gf":
                extra = (" (Dist_VAE_pretraining.py's own class has this layout, but the published "
                         "Dist_VAE checkpoints use plain fc layers: see reference §2.4)")
            raise CheckpointError(
                f"This is a {found} checkpoint ({_LAYOUT_WORDS[found]}), not {backbone}{extra}.",
                f"Import it with --backbone {found}.",
                app_hint=f"Choose Backbone: {_FORM_TITLES[found]} on the import form, then import it again.")
    enc = _block_dims(sd, "Encoder")
    fc21 = _weight(sd, "fc21")
    if fc21 is None:
        raise CheckpointError("Missing key fc21.weight (the latent mean layer).")
    z_dim = int(fc21.shape[0])
    dec = _block_dims(sd, "Decoder")
    if "fc3.bias" in sd or "fc3.weight_orig" in sd:
        fc3, fc4 = _weight(sd, "fc3"), _weight(sd, "fc4")
        if fc3 is None or fc4 is None:
            raise CheckpointError("Classifier head incomplete: fc3 or fc4 weight missing.")
        if dec is not None:
            raise CheckpointError("The checkpoint has both a classifier head (fc3) and decoder blocks; "
                                  "scATD saves either a pretraining VAE or a classification model.")
        return Architecture(found, enc, z_dim, None, int(fc3.shape[0]), int(fc4.shape[0]))
    if dec is None:
        raise CheckpointError("The checkpoint has neither decoder blocks (pretraining VAE) nor a "
                              "classifier head fc3 (transfer-learning model).")
    return Architecture(found, enc, z_dim, dec)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Strict key and shape match of ``sd`` against ``model``; every difference is named.

    An ensemble is matched against its saved (stacked) form.
    """
    stacked = getattr(model, "stacked_state_dict", None)
    expected = stacked() if stacked is not None else model.state_dict()
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError("The checkpoint does not match the scATD layout: " + "; ".join(problems) + ".",
                              "Check the --backbone and that the file is an unmodified scATD checkpoint.",
                              app_hint="Check the Backbone chosen on the import form, and that the file is an "
                                       "unmodified scATD checkpoint.")


def model_from_state_dict(sd: Mapping[str, torch.Tensor], backbone: str | None = None):
    """Build the model ``sd`` describes and load it strictly; returns ``(model, arch)``."""
    arch = infer_architecture(sd, backbone)
    model = build_model(arch)
    check_state_dict(model, sd)
    model.load_state_dict(dict(sd), strict=True)
    return model, arch
