"""Plain, JSON-safe values for reports, manifests and ``uns`` (h5ad writes them as they are)."""

from __future__ import annotations

import numpy as np


def json_safe(obj):
    """Plain Python containers and scalars: numpy scalars and arrays become numbers and lists,
    non-finite floats become ``None``, tuples become lists, keys become text."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
