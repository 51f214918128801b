"""Names of the values the pages share through ``st.session_state``.

One place for the keys, so every page reads and writes the same thing:

==================  ==========================================================================
key                 value
==================  ==========================================================================
ADATA               the current dataset (``anndata.AnnData``), as read and QC-annotated
DATA_NAME           its display name (the uploaded file's name, or "demo")
DATA_TOKEN          a content hash of the upload (cache key for every computation on it)
LABEL_COLUMN        obs column holding true labels, for evaluation (or None)
SAMPLE_COLUMN       obs column holding the sample / batch (or None)
BUNDLE_PATH         path (str) of the chosen model bundle
RESULT              the annotated AnnData after prediction (``obs['scatd_*']``, ``obsm['X_scatd']``)
RESULT_TOKEN        hash of (data token, bundle, prediction settings)
THRESHOLD           the decision threshold currently chosen on the Cells page
EXPLAIN             the biomarker result (``scatd_core.explain`` output) for RESULT
==================  ==========================================================================
"""

ADATA = "adata"
DATA_NAME = "data_name"
DATA_TOKEN = "data_token"
LABEL_COLUMN = "label_column"
SAMPLE_COLUMN = "sample_column"
BUNDLE_PATH = "bundle_path"
RESULT = "result"
RESULT_TOKEN = "result_token"
THRESHOLD = "threshold"
EXPLAIN = "explain"
