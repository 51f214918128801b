"""Pure torch modules of scATD, checkpoint-compatible with the original code. No I/O here."""

from scatd_core.nn.layers import ResBlock, SpectralLinear, Swish
from scatd_core.nn.ensemble import EnsembleClassifier
from scatd_core.nn.models import (
    BACKBONES,
    PUBLISHED_SIZES,
    STYLES,
    Architecture,
    DrugClassifier,
    ResVAE,
    build_model,
)
from scatd_core.nn.state import check_state_dict, detect_backbone, infer_architecture, model_from_state_dict

__all__ = [
    "BACKBONES", "PUBLISHED_SIZES", "STYLES", "Architecture", "DrugClassifier", "ResVAE", "ResBlock",
    "EnsembleClassifier", "SpectralLinear", "Swish", "build_model", "check_state_dict", "detect_backbone",
    "infer_architecture", "model_from_state_dict",
]
