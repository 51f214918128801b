"""Hyper-parameters of a training run: defined in :mod:`scatd_core._train_settings`, which imports
nothing heavy, so the command line's help shows the real defaults without loading torch."""

from __future__ import annotations

from scatd_core._train_settings import HEAD_INPUTS, HEADS, MAX_MEMBERS, TrainSettings

__all__ = ["HEAD_INPUTS", "HEADS", "MAX_MEMBERS", "TrainSettings"]
