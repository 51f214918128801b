"""The foundation models in the loop: scFoundation and Geneformer, from expression to embeddings.

VAE_sf reads 3,072-d scFoundation cell embeddings and VAE_gf 512-d Geneformer (12L) ones. This
package computes them from an uploaded expression matrix, so a raw-counts h5ad reaches those
models without the foundation models' own environments:

- :func:`probe` / :func:`probe_all`: a cheap check of each backbone's files (present or not,
  version, embedding size, and for each problem a message and a hint: missing file, Git LFS
  pointer, dictionary/model version mismatch, wrong shapes read from the header). Nothing is
  loaded; the Model page and ``scatd doctor`` show it.
- :func:`embed_cells`: expression -> ``obsm['X_scfoundation' | 'X_geneformer']``, batched,
  with progress and the time left, cached in the AnnData per (data, backbone, settings);
  :func:`ensure_embeddings` is the hook the CLI and the app call before predicting.
- :func:`scatd_core.foundation.scfoundation.convert` (``scatd convert-scfoundation``): the
  official ``models.ckpt`` -> safetensors + JSON, so the app never opens a pickle.
- :func:`explain_genes`: gene-level biomarkers through the foundation model, called by
  :func:`scatd_core.explain.explain` with ``gene_level=True`` (integrated gradients through
  scFoundation for VAE_sf, in-silico deletion through Geneformer for VAE_gf).

Paths: ``$SCATD_SCFOUNDATION_DIR``, ``$SCATD_GENEFORMER_DIR``, ``$SCATD_GENEFORMER_MODEL``
(:mod:`scatd_core.config`). Model files are read from safetensors or with
``torch.load(weights_only=True)``; Geneformer's dictionaries with a restricted unpickler.
"""

import importlib

# Loaded on first use: scatd_core.genes reads the dictionary locations from this package on every
# upload, and should not pay for importing torch and transformers to do so.
_EXPORTS = {"Probe": "_assets", "Problem": "_assets", "explain_genes": "_biomarkers", "embed_cells": "_embed",
            "ensure_embeddings": "_embed", "estimate_seconds": "_embed", "needs_embedding": "_embed",
            "cells_to_embed": "_embed", "stored_without_backbone": "_embed", "stored_note": "_embed", "not_embedded_text": "_embed", "explain_seconds": "_embed", "probe": "_embed", "probe_all": "_embed",
            "DEFAULT_MAX_CELLS": "_biomarkers", "DEFAULT_DELETION_GENES": "_biomarkers"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
