"""The Data page's cell metadata table through Streamlit's AppTest: 10x output (no labels, no samples)
gets them from a CSV keyed by cell ID, and the predictions are evaluated against them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from _app_helpers import make_dataset, trained_library  # noqa: F401 (fixture)
from _data_helpers import write_10x_mtx, write_zip
from scatd_app import state
from test_app_pages import _no_component_scan, goto, h5ad_bytes, metric, ok, run_prediction, start, text, upload  # noqa: F401,E501

N_CELLS = 180


@pytest.fixture
def library(trained_library, monkeypatch):  # noqa: F811 (the fixture imported above)
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(trained_library))
    return trained_library


def _tenx_zip(adata, tmp_path) -> bytes:
    return write_zip(write_10x_mtx(adata, tmp_path / "tenx"), tmp_path / "tenx.zip").read_bytes()


def said(elements) -> str:
    """The text of the page's messages as the user reads it (markdown escapes removed)."""
    return re.sub(r"\\(.)", r"\1", text(elements))


def _metadata_uploader(at):
    return next(u for u in at.file_uploader if str(u.key).startswith("upload_cell_metadata_"))


def test_10x_data_get_labels_and_samples_from_a_cell_metadata_table(library, tmp_path):
    """QA: a 10x upload offered only "none" as label and sample column, with no way to add them and no
    hint. Now the page says what to do, and a table keyed by barcode (written without the '-1' of the
    data's barcodes (-2, -3), one cell missing, one stranger) adds its columns, with the counts said."""
    adata = make_dataset(N_CELLS, seed=5)
    at = start()
    upload(at, "filtered_feature_bc_matrix.zip", _tenx_zip(adata, tmp_path))
    assert metric(at, "Cells") == f"{N_CELLS:,}"
    assert at.selectbox(key=state.LABEL_COLUMN).options == ["none (unlabelled data)"]
    assert "add a cell metadata table above" in text(at.info)

    barcodes = [re.sub(r"-\d+$", "", c) for c in adata.obs_names]  # the data's end in -1, -2, -3 (the samples)
    table = pd.DataFrame({"barcode": barcodes, "response": adata.obs["response"].astype(str).to_numpy(),
                          "sample": adata.obs["sample"].astype(str).to_numpy()}).iloc[1:]
    table.loc[len(table) + 1] = ["NOTACELL", "resistant", "S9"]
    _metadata_uploader(at).upload("meta.csv", table.to_csv(index=False).encode())
    at.run()
    ok(at)
    shown = said(at.info)
    assert f"meta.csv: {N_CELLS - 1:,} of the data's {N_CELLS:,} cells matched a row" in shown
    assert "column 'barcode'" in shown and "added 2 columns: response, sample" in shown
    assert f"{N_CELLS - 1:,} of them matched only once a barcode suffix was ignored" in shown
    assert "1 row of the table's" in shown and "'NOTACELL'" in shown
    assert "1 cell has no row" in shown
    assert "add a cell metadata table above" not in shown
    data = at.session_state[state.ADATA]
    assert data.obs["response"].isna().sum() == 1 and "barcode" not in data.obs
    # the columns are offered, and the ones named like a label and a sample are chosen
    assert at.session_state[state.LABEL_COLUMN] == "response" and at.session_state[state.SAMPLE_COLUMN] == "sample"
    assert "response" in at.selectbox(key=state.LABEL_COLUMN).options
    assert "sample" in at.selectbox(key=state.SAMPLE_COLUMN).options

    run_prediction(at)
    goto(at, "4_Cells")
    assert float(metric(at, "AUROC")) > 0.5
    goto(at, "1_Data")  # the columns stay with the data across pages and reruns
    assert "response" in at.session_state[state.ADATA].obs and "meta.csv" in said(at.info)

    # the table removed (the page's button: after a visit elsewhere the uploader shows no file, while
    # its columns stay with the data): its columns leave the data, with the label column
    at.button(key="btn_remove_cell_metadata").click().run()
    ok(at)
    assert "response" not in at.session_state[state.ADATA].obs and state.CELL_METADATA not in at.session_state
    assert "Removed the table's columns from the data: response, sample" in said(at.info)
    assert at.session_state[state.LABEL_COLUMN] is None and "meta.csv" not in said(at.info)
    goto(at, "4_Cells")
    ok(at)
    goto(at, "1_Data")
    assert "Removed the table" not in said(at.info)  # said once

    # new data: the table goes with the old data, the uploader starts empty
    upload(at, "other.zip", _tenx_zip(make_dataset(60, seed=6), tmp_path / "second"))
    assert state.CELL_METADATA not in at.session_state
    assert "response" not in at.session_state[state.ADATA].obs
    assert _metadata_uploader(at).value is None and "add a cell metadata table above" in text(at.info)


def test_a_metadata_table_is_added_again_when_the_upload_is_read_again(library):
    """A table of genes x cells read again in another orientation: the table is added to the new
    reading when it fits its cells (and says why not when it does not)."""
    adata = make_dataset(40, seed=1)
    frame = pd.DataFrame(adata.X.toarray().T, index=adata.var_names, columns=adata.obs_names)
    at = upload(start(), "genes_rows.csv", frame.to_csv().encode())
    assert metric(at, "Cells") == "40"  # detected: rows are genes
    meta = pd.DataFrame({"cell_id": adata.obs_names, "response": adata.obs["response"].astype(str).to_numpy()})
    _metadata_uploader(at).upload("labels.csv", meta.to_csv(index=False).encode())
    at.run()
    ok(at)
    assert at.session_state[state.LABEL_COLUMN] == "response"
    at.radio(key="data_orientation").set_value("cells_x_genes").run()  # read again: cells are now genes
    ok(at)
    assert metric(at, "Cells") == f"{adata.n_vars:,}" and "response" not in at.session_state[state.ADATA].obs
    assert "None of the 40 cell IDs in labels.csv" in said(at.error)
    at.radio(key="data_orientation").set_value("auto").run()  # read again as it was: added again
    ok(at)
    assert metric(at, "Cells") == "40" and not at.error
    assert at.session_state[state.ADATA].obs["response"].notna().all()
    assert at.session_state[state.LABEL_COLUMN] == "response" and "labels.csv: 40 of the data's 40" in said(at.info)


def test_an_orientation_change_followed_at_once_by_another_page_reads_the_file_again(library):
    """As the QC filter and the label answer: the upload was read again in the orientation chosen only
    when the Data page's code ran, so a change followed at once by another page (one rerun of that
    page) left that page with the earlier reading. The radio's callback reads it again, and adds the
    cell metadata table again; the Data page then keeps that reading and says why the table does not
    fit it."""
    adata = make_dataset(40, seed=1)
    frame = pd.DataFrame(adata.X.toarray().T, index=adata.var_names, columns=adata.obs_names)
    at = upload(start(), "genes_rows.csv", frame.to_csv().encode())
    assert metric(at, "Cells") == "40"  # detected: rows are genes
    meta = pd.DataFrame({"cell_id": adata.obs_names, "response": adata.obs["response"].astype(str).to_numpy()})
    _metadata_uploader(at).upload("labels.csv", meta.to_csv(index=False).encode())
    at.run()
    ok(at)
    at.radio(key="data_orientation").set_value("cells_x_genes")
    goto(at, "2_Model")  # the click and the page change in one rerun: the Data page does not run
    reading = at.session_state[state.ADATA]
    assert reading.n_obs == adata.n_vars and "response" not in reading.obs
    assert "labels.csv" not in said(at.error)  # (said on the Data page, below)
    goto(at, "1_Data")  # kept as read, not read again; the table that does not fit is said here
    assert at.session_state[state.ADATA] is reading and metric(at, "Cells") == f"{adata.n_vars:,}"
    assert "None of the 40 cell IDs in labels.csv" in said(at.error)
    at.radio(key="data_orientation").set_value("auto")
    goto(at, "3_Predict")  # back, and Predict at once: the table is added to that reading again
    assert at.session_state[state.ADATA].n_obs == 40 and at.session_state[state.ADATA].obs["response"].notna().all()
    assert at.session_state[state.LABEL_COLUMN] == "response" and metric(at, "Cells to predict") == "40"


def test_metadata_never_replaces_a_column_and_a_bad_table_is_said(library):
    adata = make_dataset(60, seed=2)
    at = start()
    upload(at, "tumour.h5ad", h5ad_bytes(adata))
    _metadata_uploader(at).upload("ids.csv", ("cell_id\n" + "\n".join(adata.obs_names)).encode())
    at.run()
    ok(at)
    assert "ids.csv has one column" in said(at.error) and "cell_id,response,sample" in said(at.error)
    assert "scatd-metadata" not in text(at.error) and metric(at, "Cells") == "60"  # no server path; data kept
    table = pd.DataFrame({"cell_id": adata.obs_names, "response": np.where(np.arange(60) % 2, "R", "S")})
    _metadata_uploader(at).upload("more.tsv", table.to_csv(index=False, sep="\t").encode())
    at.run()
    ok(at)
    data = at.session_state[state.ADATA]
    assert list(data.obs["response"].astype(str)) == list(adata.obs["response"].astype(str))  # the file's own
    assert list(data.obs["response_meta"].astype(str)) == list(table["response"])
    assert "The data already has a column 'response': the table's is added as 'response_meta'." in said(at.info)
    assert at.session_state[state.LABEL_COLUMN] == "response"  # the choice made before stays


def test_removing_the_table_from_its_uploader_removes_its_columns(library, tmp_path):
    """QA: the x of the uploader left the table's columns (and the label column chosen from them)
    in the data: the wrong labels went on being used."""
    adata = make_dataset(60, seed=7)
    at = start()
    upload(at, "filtered_feature_bc_matrix.zip", _tenx_zip(adata, tmp_path))
    table = pd.DataFrame({"cell_id": adata.obs_names, "response": adata.obs["response"].astype(str).to_numpy()})
    _metadata_uploader(at).upload("meta.csv", table.to_csv(index=False).encode())
    at.run()
    assert at.session_state[state.LABEL_COLUMN] == "response"
    _metadata_uploader(at).clear()
    at.run()
    ok(at)
    assert "response" not in at.session_state[state.ADATA].obs and at.session_state[state.LABEL_COLUMN] is None
    assert "Removed the table's columns from the data: response" in said(at.info)


def test_10x_data_card_says_its_layout_in_one_plain_statement(library, tmp_path):
    """QA (21_zip.png): a 10x zip's card said "layout: one row per cell (cells x genes), 10x layout (genes x
    cells), matched by the feature and barcode counts": two layouts at once. Now one statement: how it is
    stored and how it was read."""
    adata = make_dataset(N_CELLS, seed=5)
    at = start()
    upload(at, "filtered_feature_bc_matrix.zip", _tenx_zip(adata, tmp_path))
    card = said(at.caption)
    assert (f"layout: stored genes x cells (10x); read as {N_CELLS:,} cells x {adata.n_vars:,} genes") in card
    assert "one row per cell" not in card and "matched by" not in card
