"""A per-cell metadata table (cell ID, response, sample ...) added to the data's obs:
``scatd_core.io.add_cell_metadata`` (the Data page's table and ``--obs`` of the CLI)."""

from __future__ import annotations

import gzip
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scatd_core import io
from scatd_core.errors import InputError
from scatd_core.labels import set_label_direction


def _data(names) -> ad.AnnData:
    names = list(names)
    return ad.AnnData(np.ones((len(names), 3), dtype=np.float32), obs=pd.DataFrame(index=names))


def _csv(tmp_path, text: str, name: str = "meta.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_are_matched_by_cell_id_and_counted(tmp_path):
    adata = _data(["c1", "c2", "c3", "c4"])
    path = _csv(tmp_path, "cell_id,response,sample,dose\nc2,1,01,0.5\nc1,0,02,NA\nc3,NA,01,1\nc9,1,03,2\n")
    record = io.add_cell_metadata(adata, path)
    assert record["n_matched"] == 3 and record["n_rows_unmatched"] == 1 and record["n_cells_without_row"] == 1
    obs = adata.obs
    assert obs["response"].tolist()[:2] == [0.0, 1.0]
    assert np.isnan(obs.loc["c3", "response"]) and np.isnan(obs.loc["c4", "response"])  # NA and no row: missing
    assert pd.api.types.is_numeric_dtype(obs["response"]) and pd.api.types.is_numeric_dtype(obs["dose"])
    assert list(obs["sample"].astype(object)[:3]) == ["02", "01", "01"]  # "01" stays a name, not the number 1
    assert "cell_id" not in obs
    said = io.cell_metadata_messages(record)
    assert said[0] == ("meta.csv: 3 of the data's 4 cells matched a row (cell IDs from its column 'cell_id'); "
                       "added 3 columns: response, sample, dose.")
    assert "1 row of the table's 4 matches no cell of the data (e.g. 'c9'); it is left out." in said
    assert "1 cell has no row: its values are missing (left out of label scores and sample fractions)." in said


def test_the_columns_are_flagged_in_the_read_report(tmp_path):
    """As the reader flags a file's own columns: the Data page offers them first and picks them."""
    from _data_helpers import make_counts

    counts = make_counts(n_cells=20, n_genes=30)
    counts.write_h5ad(tmp_path / "x.h5ad")
    adata = io.read(tmp_path / "x.h5ad")
    table = pd.DataFrame({"barcode": adata.obs_names, "response": ["R", "S"] * 10, "sample": ["A"] * 20})
    io.add_cell_metadata(adata, table, "m.csv")
    report = adata.uns["scatd_input"]
    assert report["label_columns"]["response"]["binary"] and "sample" in report["group_columns"]
    io.remove_cell_metadata(adata)
    assert "response" not in report["label_columns"] and "sample" not in report["group_columns"]


def test_the_id_column_is_found_by_its_name_or_taken_first(tmp_path):
    adata = _data(["a", "b", "c"])
    record = io.add_cell_metadata(adata, _csv(tmp_path, "response,barcode\nR,a\nS,b\nR,c\n"))
    assert record["id_column"] == "barcode" and adata.obs["response"].tolist() == ["R", "S", "R"]
    adata = _data(["a", "b", "c"])  # a table written by pandas: its unnamed index column
    record = io.add_cell_metadata(adata, _csv(tmp_path, ",response\na,R\nb,S\n"))
    assert record["n_matched"] == 2 and "(cell IDs from its first column)" in io.cell_metadata_messages(record)[0]


def test_a_10x_barcode_suffix_on_one_side_is_matched_and_said(tmp_path):
    adata = _data(["AAAC-1", "AAAG-1", "TTTC-1"])
    record = io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,response\nAAAC,R\nAAAG,S\nTTTC,R\n"))
    assert record["n_matched"] == 3 and record["n_matched_by_suffix"] == 3
    assert adata.obs["response"].tolist() == ["R", "S", "R"]
    assert ("3 of them matched only once a barcode suffix was ignored (the table's 'AAAC' is the data's 'AAAC-1')."
            in io.cell_metadata_messages(record))
    plain = _data(["AAAC", "AAAG"])  # the other way round
    record = io.add_cell_metadata(plain, _csv(tmp_path, "cell_id,response\nAAAC-1,R\nAAAG-1,S\n"))
    assert record["n_matched_by_suffix"] == 2 and plain.obs["response"].tolist() == ["R", "S"]


def test_an_ambiguous_suffix_matches_nothing_and_an_exact_id_wins(tmp_path):
    # two libraries (cellranger aggr): AAAC-1 and AAAC-2 are two cells; 'AAAC' could be either
    adata = _data(["AAAC-1", "AAAC-2", "GGGT-1"])
    record = io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,response\nAAAC,R\nGGGT,S\n"))
    assert record["n_matched"] == 1 and adata.obs["response"].isna().tolist() == [True, True, False]
    adata = _data(["AAAC", "AAAC-1"])  # both exact: no suffix guessing
    io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,response\nAAAC,R\nAAAC-1,S\n"))
    assert adata.obs["response"].tolist() == ["R", "S"]


def test_no_match_is_refused_with_examples_and_nothing_changes(tmp_path):
    adata = _data(["AAAC-1", "AAAG-1"])
    path = _csv(tmp_path, "cell_id,response\nS1_AAAC-1,R\nS1_AAAG-1,S\n")
    with pytest.raises(InputError) as err:
        io.add_cell_metadata(adata, path)
    assert "None of the 2 cell IDs in meta.csv (its column 'cell_id', e.g. 'S1_AAAC-1', 'S1_AAAG-1') is a cell of " \
           "the data (e.g. 'AAAC-1', 'AAAG-1')." == err.value.message
    assert "'-1'" in err.value.hint and "sample name" in err.value.hint
    assert list(adata.obs.columns) == [] and "scatd_cell_metadata" not in adata.uns


@pytest.mark.parametrize("text,match", [
    ("cell_id,response\nc1,R\nc1,S\n", "lists 1 cell ID more than once (e.g. 'c1')"),
    ("c1,R\nc2,S\n", "has no header line: its first line starts with the cell ID 'c1'"),
    ("cell_id\nc1\nc2\n", "has one column"),
    ("cell_id,response\n", "has a header but no rows"),
    ("cell_id,scatd_prob_resistant\nc1,0.2\n", "no column to add besides the cell IDs"),
])
def test_tables_that_cannot_be_used_are_refused(tmp_path, text, match):
    adata = _data(["c1", "c2"])
    with pytest.raises(InputError, match=re.escape(match)):
        io.add_cell_metadata(adata, _csv(tmp_path, text))
    assert list(adata.obs.columns) == []


def test_an_existing_column_is_never_overwritten_and_results_are_left_out(tmp_path):
    adata = _data(["c1", "c2"])
    adata.obs["response"] = ["mine", "mine"]
    adata.obs["response_meta"] = ["taken", "taken"]
    record = io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,response,scatd_label\nc1,R,resistant\nc2,S,x\n"))
    assert adata.obs["response"].tolist() == ["mine", "mine"] and adata.obs["response_meta2"].tolist() == ["R", "S"]
    assert "scatd_label" not in adata.obs
    said = io.cell_metadata_messages(record)
    assert "The data already has a column 'response': the table's is added as 'response_meta2'." in said
    assert "Left out scatd_label: names starting with scatd_ are scATD Studio's own results." in said


def test_another_table_replaces_the_earlier_columns_and_the_same_again_changes_nothing(tmp_path):
    adata = _data(["c1", "c2"])
    first = _csv(tmp_path, "cell_id,response\nc1,0\nc2,1\n")
    io.add_cell_metadata(adata, first)
    set_label_direction(adata, "response", "0")
    record = io.add_cell_metadata(adata, first)  # again: the same column, not response_meta
    assert list(adata.obs.columns) == ["response"] and record["columns"] == ["response"]
    assert "scatd_labels" not in adata.uns or "response" not in adata.uns["scatd_labels"]  # asked again
    record = io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,sample\nc1,A\nc2,B\n", "other.csv"))
    assert list(adata.obs.columns) == ["sample"]
    assert "Replaced the columns of the table added before (response)." in io.cell_metadata_messages(record)


def test_the_record_survives_an_h5ad_and_can_be_replaced_after(tmp_path):
    adata = _data(["AAAC-1", "AAAG-1"])
    io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,response,sample\nAAAC,R,A\nZZZ,S,B\n"))
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    said = io.cell_metadata_messages(back.uns["scatd_cell_metadata"])  # arrays once read back, not lists
    assert said == io.cell_metadata_messages(adata.uns["scatd_cell_metadata"])
    assert io.remove_cell_metadata(back) == ["response", "sample"] and list(back.obs.columns) == []


def test_bytes_utf16_and_gzip_are_read_and_the_size_limit_holds(tmp_path, monkeypatch):
    adata = _data(["c1", "c2"])
    text = "cell_id\tresponse\nc1\tR\nc2\tS\n"
    record = io.add_cell_metadata(adata, text.encode("utf-16"), name="excel.txt")  # Excel's "Unicode text"
    assert record["n_matched"] == 2 and record["file"] == "excel.txt"
    big_endian = ("\ufeff" + text).encode("utf-16-be")
    assert io.add_cell_metadata(_data(["c1", "c2"]), big_endian, name="mac.txt")["n_matched"] == 2
    (tmp_path / "u16.txt.gz").write_bytes(gzip.compress(big_endian))  # UTF-16, then gzipped
    assert io.add_cell_metadata(_data(["c1", "c2"]), tmp_path / "u16.txt.gz")["n_matched"] == 2
    (tmp_path / "m.csv.gz").write_bytes(gzip.compress(text.encode()))
    assert io.add_cell_metadata(_data(["c1", "c2"]), tmp_path / "m.csv.gz")["n_matched"] == 2
    monkeypatch.setenv("SCATD_MAX_UPLOAD_MB", "1")
    with pytest.raises(InputError, match=r"big\.csv is 2 MB, over the limit of 1 MB"):
        io.read_cell_metadata(b"x" * (2 << 20), "big.csv")
    with pytest.raises(InputError) as err:  # a file that is not text: its name only, never where it was kept
        io.read_cell_metadata(b"\x89HDF\r\n\x1a\n\x00\x00" + bytes(range(256)) * 4, "cells.h5ad")
    assert err.value.message.startswith("cells.h5ad is not a text table") and "scatd-metadata" not in str(err.value)


def test_a_threshold_fitted_on_a_replaced_column_goes_back_to_the_model_default(tmp_path):
    """A threshold calibrated on the labels of a table's column means nothing once another table
    replaces that column: put back to the model's default, and said."""
    from _app_helpers import make_bundle, make_dataset
    from scatd_core.predict import calibrate, predict

    adata = make_dataset(120, seed=1)
    truth = adata.obs.pop("response")
    bundle = make_bundle(tmp_path / "model", make_dataset(150, seed=0), steps=20)
    predict(adata, bundle)
    table = pd.DataFrame({"cell_id": adata.obs_names, "known": truth.to_numpy()})
    table.to_csv(tmp_path / "meta.csv", index=False)
    io.add_cell_metadata(adata, tmp_path / "meta.csv")
    set_label_direction(adata, "known", "resistant")
    calibrate(adata, label_column="known", method="youden")
    assert adata.uns["scatd"]["threshold"]["label_column"] == "known"
    table.assign(known=truth.sample(frac=1, random_state=0).to_numpy()).to_csv(tmp_path / "other.csv", index=False)
    io.add_cell_metadata(adata, tmp_path / "other.csv")
    threshold = adata.uns["scatd"]["threshold"]
    assert threshold["source"] == "model default" and "label_column" not in threshold
    assert "another cell metadata table replaced the column" in threshold["detail"]


def test_true_false_columns_are_booleans_a_mask_can_use(tmp_path):
    """QA: a table's keep column written True/False (or the app's own predictions.csv qc_pass) came
    in as text, and --mask refused it as not a True/False column."""
    from scatd_core.predict import _mask_of

    adata = _data(["c1", "c2", "c3"])
    io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,keep,flag,note\nc1,True,TRUE,true story\nc2,False,false,x\n"
                                               "c3,True,,y\n"))
    assert adata.obs["keep"].dtype == bool and list(adata.obs["keep"]) == [True, False, True]
    assert list(_mask_of(adata, "keep")) == [True, False, True]
    assert adata.obs["flag"].iloc[2] is None or pd.isna(adata.obs["flag"].iloc[2])  # a gap stays a gap
    assert adata.obs["note"].iloc[0] == "true story"  # other text stays text


def test_a_missing_mask_column_is_called_a_mask_and_the_true_false_columns_named(tmp_path):
    """QA: a --mask/--target-mask column that is not there was 'no obs[...] to use as the QC mask',
    though a mask may be any True/False column (e.g. of a cell metadata table)."""
    from scatd_core.predict import _mask_of

    adata = _data(["c1", "c2", "c3"])
    io.add_cell_metadata(adata, _csv(tmp_path, "cell_id,keep,note\nc1,True,a\nc2,False,b\nc3,True,c\n"))
    with pytest.raises(InputError) as err:
        _mask_of(adata, "kept")
    assert err.value.message == ("The data has no obs column 'kept' to use as the mask (the cells to keep); its "
                                 "True/False columns: keep.")
    assert "QC" not in err.value.message and err.value.hint == "Name a True/False column: True for the cells to keep."
    with pytest.raises(InputError, match="no obs column 'scatd_qc_pass'.*; its True/False columns: keep") as err:
        _mask_of(adata, "scatd_qc_pass")
    assert "Apply the QC filter first" in err.value.hint
    with pytest.raises(InputError, match="; it has no True/False column"):
        _mask_of(_data(["c1"]), "keep")


def test_a_missing_mask_column_offers_the_users_columns_not_the_readers_flags(tmp_path):
    """QA: `scatd explain --mask nosuch` listed "its True/False columns: scatd_all_zero", a flag the
    reader adds, not a column of the user's: scATD Studio's own scatd_* columns are not offered (but
    for the QC filter's scatd_qc_pass, a mask the app makes)."""
    import argparse

    from scatd_core.cli._common import cell_mask

    x = np.ones((4, 3), dtype=np.float32)
    x[0] = 0  # a cell without expression: the reader marks it in obs['scatd_all_zero']
    obs = pd.DataFrame({"keep": [True, True, False, True]}, index=[f"c{i}" for i in range(4)])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["A", "B", "C"])).write_h5ad(tmp_path / "cells.h5ad")
    adata = io.read(tmp_path / "cells.h5ad")
    assert adata.obs["scatd_all_zero"].dtype == bool  # a True/False column, of the reader's
    with pytest.raises(InputError) as err:
        cell_mask(adata, argparse.Namespace(mask="nosuch"))
    assert "its True/False columns: keep." in err.value.message and "scatd_all_zero" not in err.value.message
    assert "scatd_all_zero" not in err.value.hint
    adata.obs["scatd_qc_pass"] = True
    with pytest.raises(InputError, match=r"its True/False columns: (keep, scatd_qc_pass|scatd_qc_pass, keep)\."):
        cell_mask(adata, argparse.Namespace(mask="nosuch"))


def test_a_missing_mask_column_on_annotated_data_does_not_say_it_has_no_true_false_column(tmp_path):
    """QA: `scatd predict --mask COL` on an annotated.h5ad said "it has no True/False column ... (its
    columns: sample, cluster, response)", though obs holds the boolean scatd_scored, scatd_all_zero and
    scatd_explained (bool in the file and as read: they were left out as scATD Studio's own, not
    missed). Now the message names them as scATD Studio's, and the hint's list says it leaves them out."""
    import argparse

    from scatd_core.cli._common import cell_mask

    n = 4
    obs = pd.DataFrame({"sample": list("aabb"), "cluster": list("xyxy"), "response": ["R", "S", "R", "S"],
                        "scatd_scored": [True, True, True, False], "scatd_all_zero": [False] * n,
                        "scatd_explained": [True, False, True, False]}, index=[f"c{i}" for i in range(n)])
    ad.AnnData(np.ones((n, 3), dtype=np.float32), obs=obs,
               var=pd.DataFrame(index=["A", "B", "C"])).write_h5ad(tmp_path / "annotated.h5ad")
    adata = io.read(tmp_path / "annotated.h5ad")
    assert all(adata.obs[c].dtype == bool for c in ("scatd_scored", "scatd_all_zero", "scatd_explained"))
    with pytest.raises(InputError) as err:
        cell_mask(adata, argparse.Namespace(mask="keep"))
    assert "it has no True/False column of its own (only scATD Studio's: scatd_scored, scatd_all_zero, " \
           "scatd_explained)." in err.value.message, err.value.message
    assert "it has no True/False column." not in err.value.message
    assert "(its columns, scATD Studio's scatd_* aside: sample, cluster, response)" in err.value.hint, err.value.hint
