"""Runtime settings, read from environment variables so a lab server can set them once.

| variable                    | meaning                                         | default                          |
|-----------------------------|-------------------------------------------------|----------------------------------|
| ``SCATD_HOME``              | data directory of scATD Studio                  | ``$XDG_DATA_HOME/scatd`` or ``~/.local/share/scatd`` |
| ``SCATD_MODEL_LIBRARY``     | folder holding installed model bundles          | ``$SCATD_HOME/models``           |
| ``SCATD_MAX_UPLOAD_MB``     | largest data file accepted (app and CLI)        | 2048                             |
| ``SCATD_MAX_CELLS``         | most cells accepted in one dataset              | 1,000,000                        |
| ``SCATD_GENEFORMER_DIR``    | Geneformer dictionaries, and its model folder(s) | ``$SCATD_HOME/geneformer``       |
| ``SCATD_GENEFORMER_MODEL``  | one Geneformer model folder (``config.json`` + weights), when the folder above holds several or none | found in ``SCATD_GENEFORMER_DIR`` |
| ``SCATD_SCFOUNDATION_DIR``  | scFoundation files (``models.ckpt`` or its conversion, the 19,264-gene list) | ``$SCATD_HOME/scfoundation`` |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return value if value > 0 else default


def scatd_home() -> Path:
    if os.environ.get("SCATD_HOME"):
        return Path(os.environ["SCATD_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "scatd"


def geneformer_dir() -> Path:
    """Folder of the Geneformer assets (dictionaries, model folders); see :mod:`scatd_core.foundation`."""
    raw = os.environ.get("SCATD_GENEFORMER_DIR")
    return Path(raw).expanduser() if raw else scatd_home() / "geneformer"


def geneformer_model_dir() -> Path | None:
    """One Geneformer model folder chosen explicitly, or ``None``: found in :func:`geneformer_dir`."""
    raw = os.environ.get("SCATD_GENEFORMER_MODEL")
    return Path(raw).expanduser() if raw else None


def scfoundation_dir() -> Path:
    """Folder of the scFoundation assets (``models.ckpt`` or its conversion, the gene list)."""
    raw = os.environ.get("SCATD_SCFOUNDATION_DIR")
    return Path(raw).expanduser() if raw else scatd_home() / "scfoundation"


def model_library_dir() -> Path:
    if os.environ.get("SCATD_MODEL_LIBRARY"):
        return Path(os.environ["SCATD_MODEL_LIBRARY"]).expanduser()
    return scatd_home() / "models"


@dataclass(frozen=True)
class Limits:
    max_upload_mb: int
    max_cells: int

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def limits() -> Limits:
    return Limits(
        max_upload_mb=_env_int("SCATD_MAX_UPLOAD_MB", 2048),
        max_cells=_env_int("SCATD_MAX_CELLS", 1_000_000),
    )
