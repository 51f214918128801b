"""scATD Studio core: single-cell drug-response prediction with the scATD models.

Submodules (no Streamlit anywhere in this package):

- :mod:`scatd_core.io`          read any common scRNA-seq file into AnnData
- :mod:`scatd_core.genes`       gene vocabularies, ID detection, alignment to a model's genes
- :mod:`scatd_core.preprocess`  QC and the input transform each backbone expects
- :mod:`scatd_core.nn`          torch modules, checkpoint-compatible with the original scATD
- :mod:`scatd_core.bundle`      model bundles (manifest + safetensors), the model library
- :mod:`scatd_core.predict`     batched inference writing results into AnnData
- :mod:`scatd_core.explain`     integrated-gradients gene rankings
- :mod:`scatd_core.embed`       neighbours, Leiden and UMAP of the latent space
- :mod:`scatd_core.train`       bulk -> single-cell transfer learning producing a bundle
- :mod:`scatd_core.report`      CSV / h5ad / HTML export
"""

__version__ = "0.1.0"

from scatd_core.errors import BundleError, CheckpointError, InputError, ScatdError  # noqa: E402

__all__ = ["__version__", "ScatdError", "InputError", "CheckpointError", "BundleError"]
