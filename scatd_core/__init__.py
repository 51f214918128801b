"""scATD Studio core: single-cell drug-response prediction with the scATD models.

No Streamlit anywhere in this package; the app, the ``scatd`` command and scripts all call it.
The path of a dataset (see ``docs/architecture.md``)::

    io.read  ->  genes / preprocess  ->  [foundation.embed_cells]  ->  inputs.ModelInput  ->  predict.predict
             ->  embed.embed  ->  explain.explain  ->  export.write_report

Data stay an AnnData throughout; every field written is named in :mod:`scatd_core._keys`.

- :mod:`scatd_core.io`          read any common scRNA-seq file into AnnData, refusing what is unsafe
- :mod:`scatd_core.genes`       gene vocabularies, ID detection, symbol <-> Ensembl, alignment, coverage
- :mod:`scatd_core.preprocess`  value types, backbone compatibility, QC
- :mod:`scatd_core.labels`      per-cell label columns (which value means resistant) and bulk label tables
- :mod:`scatd_core.nn`          torch modules, checkpoint-compatible with the original scATD
- :mod:`scatd_core.bundle`      model bundles (manifest + safetensors), import of .pth files, the library
- :mod:`scatd_core.foundation`  scFoundation / Geneformer: file probes, embeddings from expression
                                (VAE_sf / VAE_gf), gene-level biomarkers through them
- :mod:`scatd_core.inputs`      ModelInput: the exact model input of every cell, built once
- :mod:`scatd_core.predict`     the one prediction function, thresholds and their calibration
- :mod:`scatd_core.embed`       neighbours, Leiden and UMAP
- :mod:`scatd_core.explain`     integrated-gradients gene rankings, stored in the AnnData
- :mod:`scatd_core.metrics`     evaluation against labels, threshold helpers
- :mod:`scatd_core.train`       bulk -> single-cell transfer learning producing a bundle
- :mod:`scatd_core.pl`          every figure (plotly)
- :mod:`scatd_core.export`      CSV / h5ad / HTML report from one annotated AnnData
- :mod:`scatd_core.demo`        the built-in demo (simulated data, a model trained on it)
- :mod:`scatd_core.cli`         the ``scatd`` command, one module per sub-command
- ``_keys``, ``_matrix``, ``_json``, ``_progress``: keys, matrix helpers, JSON-safe values, ETAs
"""

__version__ = "0.1.0"

from scatd_core.errors import BundleError, Cancelled, CheckpointError, InputError, ScatdError  # noqa: E402

__all__ = ["__version__", "ScatdError", "InputError", "CheckpointError", "BundleError", "Cancelled"]
