"""The training report as JSON (what the manifest, ``scatd train --report`` and the Train page keep)."""

from __future__ import annotations

from scatd_core._json import json_safe


def report_to_json(report: dict) -> dict:
    """The training report without its per-cell table (JSON-safe)."""
    return json_safe({k: v for k, v in report.items() if k != "target_predictions"})
