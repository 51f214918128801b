"""Label tables: the ALL_label_binary_wf.csv format, drug lookup, and labels from GDSC ln(IC50)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file
from scatd_core.errors import InputError
import anndata as ad

from scatd_core import labels
from scatd_core.labels import drug_labels, labels_from_ic50, match_drug, read_label_table


def _wf_csv(tmp_path, sep=","):
    """A small table written like ALL_label_binary_wf.csv: unnamed ID column, R-style drug names."""
    text = sep.join(["", "X5.FLUOROURACIL", "PLX.4720", "DOCETAXEL"]) + "\n"
    rows = [("DATA.683665", "resistant", "sensitive", "resistant"),
            ("DATA.684052", "sensitive", "", "Resistant"),
            ("ACH-000001", "NA", "resistant", "SENSITIVE"),
            ("ACH-000002", "resistant", "NA", "sensitive")]
    text += "".join(sep.join(r) + "\n" for r in rows)
    path = tmp_path / ("labels.tsv" if sep == "\t" else "labels.csv")
    path.write_text(text)
    return path


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_wf_format_any_separator_missing_dropped_and_counted(tmp_path, sep):
    path = _wf_csv(tmp_path, sep)
    table = read_label_table(path)
    assert table.shape == (4, 3)
    assert list(table.index) == ["DATA.683665", "DATA.684052", "ACH-000001", "ACH-000002"]
    dl = drug_labels(path, "docetaxel")  # case-insensitive
    assert dl.drug == "DOCETAXEL" and dl.n_missing == 0
    assert dl.counts == {"sensitive": 2, "resistant": 2}  # any case of the values
    plx = drug_labels(table, "PLX-4720")  # punctuation ignored
    assert plx.drug == "PLX.4720" and plx.n_missing == 2
    assert plx.labels.to_dict() == {"DATA.683665": "sensitive", "ACH-000001": "resistant"}
    assert list(plx.y) == [0, 1]  # sensitive 0, resistant 1
    fu = drug_labels(table, "5-Fluorouracil")  # R's X prefix
    assert fu.drug == "X5.FLUOROURACIL" and fu.n_missing == 1


def test_unknown_drug_lists_close_names(tmp_path):
    with pytest.raises(InputError) as err:
        drug_labels(_wf_csv(tmp_path), "docetaxol")
    assert "not in the label table" in err.value.message and "DOCETAXEL" in err.value.hint
    with pytest.raises(InputError) as err:
        match_drug("zzz", ["A", "B"])
    assert "There are 2 drugs" in err.value.hint
    with pytest.raises(InputError) as err:  # one drug: not "There are 1 drugs"
        match_drug("zzz", ["SORAFENIB"])
    assert err.value.hint == "The only drug there is SORAFENIB."


def test_third_class_is_an_error_not_a_class(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",DRUG\nA,sensitive\nB,intermediate\nC,resistant\n")
    with pytest.raises(InputError, match="intermediate"):
        drug_labels(path, "drug")


def test_duplicate_cell_lines_and_empty_table(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text(",D\nA,sensitive\nA,resistant\n")
    with pytest.raises(InputError, match="twice"):
        read_label_table(path)
    with pytest.raises(InputError, match="no labelled"):
        drug_labels(pd.DataFrame({"D": [None, "NA"]}, index=["a", "b"]), "D")
    (tmp_path / "empty.csv").write_text("")  # which file it is, by what it is (QA: "empty.csv is not a readable ...")
    with pytest.raises(InputError, match=r"empty\.csv \(Label table\) is empty: it has no header line and no rows"):
        read_label_table(tmp_path / "empty.csv")


def test_encode_labels_strings_numbers_and_missing():
    y = labels.encode_labels(["resistant", "sensitive", None, "NA", "", "resistant", np.nan], "resistant")
    assert np.array_equal(y[[0, 1, 5]], [1, 0, 1])
    assert np.isnan(y[[2, 3, 4, 6]]).all()  # missing labels never become a third class
    assert np.array_equal(labels.encode_labels([1, 0, 1.0, "0"], 1), [1, 0, 1, 0])
    assert np.array_equal(labels.encode_labels([True, False], True), [1, 0])
    # SCAD: response 1 = sensitive, so the resistant value is 0
    assert list(labels.encode_labels([1, 0, 1], 0)) == [0.0, 1.0, 0.0]


def test_encode_labels_refuses_absent_value_and_more_than_two_classes():
    with pytest.raises(InputError, match="chosen to mean resistant"):
        labels.encode_labels(["sensitive", "Sensitive"], "resistant")
    with pytest.raises(InputError, match="exactly two"):
        labels.encode_labels([0, 1, 2], 1)


@pytest.mark.parametrize("values, expected", [
    (["sensitive", "resistant"], "resistant"), (["S", "R"], "R"), (["responder", "non-responder"], "non-responder"),
    (["Non_Responder", "Responder", None], "Non_Responder"), (["ok", "sensitive"], "ok"),
    ([0, 1, 1], None), ([True, False], None), (["yes", "no"], None), (["a", "b", "c"], None),
    # a response word next to a reference group does not say which cells resist: asked
    (["sensitive", "control"], None), (["Sensitive", "Parental"], None), (["resistant", "untreated"], None),
    (["resistant", "DMSO"], None), (["tolerant", "sensitive"], "tolerant")])
def test_guess_label_direction_recognises_words_never_codes(values, expected):
    assert labels.guess_label_direction(values) == expected


def test_direction_is_asked_once_recorded_and_used():
    adata = ad.AnnData(np.ones((4, 2), dtype=np.float32))
    adata.obs["response"] = [1, 0, 1, 0]  # SCAD: 1 = sensitive
    assert labels.label_direction(adata, "response") is None
    with pytest.raises(InputError, match="means resistant is not known"):
        labels.encode_column(adata, "response")
    entry = labels.set_label_direction(adata, "response", 0)
    assert entry["resistant"] == "0" and entry["sensitive"] == "1" and entry["counts"] == {"1": 2, "0": 2}
    assert labels.label_direction(adata, "response") == "0"
    assert list(labels.encode_column(adata, "response")) == [0.0, 1.0, 0.0, 1.0]


def test_an_unknown_few_shot_direction_names_where_its_caller_asks_it(monkeypatch):
    """QA: a labelled-cells column whose resistant value is not known hinted --label-resistant, an
    option of scatd predict, also on the Train page (a form field) and in scatd train --few-shot-column
    (whose option is --few-shot-resistant)."""
    adata = ad.AnnData(np.ones((6, 2), dtype=np.float32))
    adata.obs["few"] = pd.Series([1, 0, 1, 0, None, None], index=adata.obs_names, dtype=object)
    with pytest.raises(InputError, match="means resistant is not known") as err:
        labels.few_shot_from_column(adata, "few")  # as the Train page calls it
    assert err.value.hint == ("Say which value means resistant (the Train page asks it under 'Labelled cells to "
                              "train with').")
    with pytest.raises(InputError) as err:
        labels.few_shot_from_column(adata, "few", option="--few-shot-resistant")
    # QA: a terminal was told of the Data page; the command line's hint names its option, the app's its page
    assert err.value.hint == "Say which value means resistant: --few-shot-resistant VALUE."
    assert err.value.app_hint == "Say which value means resistant on the Data page."
    with pytest.raises(InputError) as err:  # the other callers' option as before
        labels.encode_column(adata, "few")
    assert err.value.hint == "Say which value means resistant: --label-resistant VALUE."
    assert labels.few_shot_from_column(adata, "few", 0).to_dict() == {"1": "resistant", "3": "resistant",
                                                                      "0": "sensitive", "2": "sensitive"}
    from argparse import Namespace

    from scatd_core.cli._train_args import few_shot_of_column

    real, options = labels.few_shot_from_column, []
    monkeypatch.setattr(labels, "few_shot_from_column", lambda *a, **k: options.append(k.get("option")) or real(*a, **k))
    assert len(few_shot_of_column(adata, Namespace(few_shot_column="few", few_shot_resistant="0"))) == 4
    assert options == ["--few-shot-resistant"]  # scatd train --few-shot-column names its own option


def _ic50_files(tmp_path):
    cells = ["ACH-1", "ACH-2", "ACH-3", "ACH-4"]
    ic50 = pd.DataFrame([[0.1, -1.0, np.nan, 2.0],      # drug 10: threshold 0.5
                         [3.0, 1.0, 0.0, np.nan],        # drug 20: RDEA119 (rescreen), by synonym
                         [0.0, 0.0, 0.0, 0.0],           # drug 30: no threshold
                         [1.0, 2.0, 3.0, 4.0],           # drug 40: same name as 41, first threshold
                         [1.0, 2.0, 3.0, 4.0]],          # drug 41: second threshold
                        index=["GDSC:10", "GDSC:20", "GDSC:30", "GDSC:40", "GDSC:41"], columns=cells)
    ic50.to_csv(tmp_path / "ic50.csv")
    (tmp_path / "thr.txt").write_text("Gefitinib\tRDEA119 (rescreen)\tTwin\tTwin\n0.5\t1.5\t1.5\t3.5\n")
    pd.DataFrame({"drug_id": [10, 20, 30, 40, 41], "Name": ["Gefitinib", "Refametinib", "Orphan", "Twin", "Twin"],
                  "Synonyms": ["ZD-1839", "RDEA119, BAY-86-9766", None, None, None]}
                 ).to_csv(tmp_path / "list.csv", index=False)
    return tmp_path / "ic50.csv", tmp_path / "thr.txt", tmp_path / "list.csv"


def test_labels_from_ic50_small(tmp_path):
    table = labels_from_ic50(*_ic50_files(tmp_path))
    assert list(table.index) == ["ACH-1", "ACH-2", "ACH-3", "ACH-4"]
    assert table["Gefitinib"].tolist() == ["sensitive", "sensitive", None, "resistant"]  # NA stays missing
    assert table["Refametinib"].tolist() == ["resistant", "sensitive", "sensitive", None]
    # a name listed twice goes to its ids in ascending order
    assert table["Twin (GDSC:40)"].tolist() == ["sensitive", "resistant", "resistant", "resistant"]
    assert table["Twin (GDSC:41)"].tolist() == ["sensitive", "sensitive", "sensitive", "resistant"]
    rep = table.attrs["report"]
    assert rep["no_threshold"] == ["Orphan"] and "Orphan" not in table
    assert rep["thresholds"]["Refametinib"]["matched_by"] == "synonym"
    # the result is a label table the trainer reads
    dl = drug_labels(table, "gefitinib")
    assert dl.counts == {"sensitive": 2, "resistant": 1} and dl.n_missing == 1
    only = labels_from_ic50(*_ic50_files(tmp_path), drugs=["GEFITINIB", 20])
    assert sorted(only.columns) == ["Gefitinib", "Refametinib"]
    with pytest.raises(InputError, match="Gefitinib"):
        labels_from_ic50(*_ic50_files(tmp_path), drugs=["Gefitnib"])


def test_labels_from_ic50_names_each_drug_id_once(tmp_path, capsys):
    """A name of several GDSC ids is the column "Twin (GDSC:40)": the CLI said "Twin (GDSC:40) (GDSC:40)"."""
    from scatd_core.cli import main

    ic50, thr, dlist = _ic50_files(tmp_path)
    assert main(["labels-from-ic50", "--ic50", str(ic50), "--thresholds", str(thr), "--drug-list", str(dlist),
                 "--drugs", "Gefitinib", "40", "--out", str(tmp_path / "labels.csv")]) == 0
    err = capsys.readouterr().err
    assert "Twin (GDSC:40): threshold 1.5" in err and "(GDSC:40) (GDSC:40)" not in err
    assert "Gefitinib (GDSC:10): threshold 0.5" in err


def test_labels_from_ic50_bad_files(tmp_path):
    ic50, thr, dlist = _ic50_files(tmp_path)
    (tmp_path / "thr_bad.txt").write_text("A\tB\n0.5\n")
    with pytest.raises(InputError, match="2 drug names but 1 thresholds"):
        labels_from_ic50(ic50, tmp_path / "thr_bad.txt", dlist)
    (tmp_path / "ic50_bad.csv").write_text(",ACH-1\nDrugX,1.0\n")
    with pytest.raises(InputError, match="GDSC:1010"):
        labels_from_ic50(tmp_path / "ic50_bad.csv", thr, dlist)
    with pytest.raises(InputError, match="not found"):
        labels_from_ic50(tmp_path / "missing.csv", thr, dlist)


def test_labels_from_real_gdsc_files():
    ic50 = shared_file("gdsc", "GDSC_IC50.csv")
    thr = shared_file("gdsc", "IC50_thred.txt")
    dlist = shared_file("gdsc", "GDSC_drug_list.csv")
    table = labels_from_ic50(ic50, thr, dlist, drugs=["Gefitinib", "Sorafenib"])
    rep = table.attrs["report"]
    assert rep["thresholds"]["Gefitinib"]["gdsc_id"] == 1010
    assert rep["thresholds"]["Gefitinib"]["threshold"] == pytest.approx(-0.05346)
    assert rep["thresholds"]["Sorafenib"]["gdsc_id"] == 30
    values = pd.read_csv(ic50, index_col=0).loc["GDSC:1010"]
    expected = np.where(values.isna(), None, np.where(values < -0.05346, "sensitive", "resistant"))
    assert table["Gefitinib"].tolist() == list(expected)


def test_real_wf_label_file():
    path = shared_file("gdsc", "ALL_label_binary_wf.csv")
    dl = drug_labels(path, "docetaxel")
    assert dl.counts == {"sensitive": 467, "resistant": 813} and dl.n_missing == 0  # reference Appendix A


def test_labels_from_ic50_drug_listed_twice_names_rows(tmp_path):
    ic50, thr, dlist = _ic50_files(tmp_path)
    table = pd.read_csv(ic50, index_col=0)
    table = pd.concat([table, table.iloc[[0]]])  # GDSC:10 again, as row 6
    table.to_csv(tmp_path / "GDSC_IC50.csv")
    with pytest.raises(InputError, match=r"GDSC_IC50.csv lists drug GDSC:10 twice \(rows 1 and 6\); "
                                         "keep one row per drug"):
        labels_from_ic50(tmp_path / "GDSC_IC50.csv", thr, dlist)
    # the same id written two ways is the same drug
    table.index = ["GDSC:10", "GDSC:20", "GDSC:30", "GDSC:40", "GDSC:41", "20"]
    table.to_csv(tmp_path / "GDSC_IC50.csv")
    with pytest.raises(InputError, match=r"GDSC:20 twice \(rows 2 and 6\)"):
        labels_from_ic50(tmp_path / "GDSC_IC50.csv", thr, dlist)


def test_threshold_file_decimal_commas_and_one_drug_per_line_are_named(tmp_path):
    ic50, _, dlist = _ic50_files(tmp_path)
    (tmp_path / "euro.txt").write_text("Gefitinib\tTwin\n0,5\t1,5\n")
    with pytest.raises(InputError, match=r"euro.txt are written with decimal commas \(e.g. 0,5\)") as err:
        labels_from_ic50(ic50, tmp_path / "euro.txt", dlist)
    assert "decimal points (e.g. 0.5)" in err.value.hint
    (tmp_path / "vertical.txt").write_text("Gefitinib\t0.5\nTwin\t1.5\nOrphan\t2.0\n")
    with pytest.raises(InputError, match="one drug per line.*expected two rows: drug names, then thresholds"):
        labels_from_ic50(ic50, tmp_path / "vertical.txt", dlist)
    (tmp_path / "commas.txt").write_text("Gefitinib,Twin\n0.5,1.5\n")  # no tab: commas are read as the separator
    assert "Gefitinib" in labels_from_ic50(ic50, tmp_path / "commas.txt", dlist).columns


def test_transposed_label_table_is_named(tmp_path):
    cells = [f"CL{i:03d}" for i in range(6)]
    table = pd.DataFrame([["sensitive", "resistant"] * 3, ["resistant", "sensitive"] * 3],
                         index=["Cisplatin", "Erlotinib"], columns=cells)
    table.to_csv(tmp_path / "labels.csv")
    with pytest.raises(InputError, match=r"labels.csv looks transposed: its columns \(CL000, CL001, CL002, \.\.\.\) "
                                         r"look like cell-line IDs and its rows \(Cisplatin, Erlotinib\) like drugs"):
        read_label_table(tmp_path / "labels.csv")
    table.T.to_csv(tmp_path / "right.csv")  # the right way round reads; so do drugs with digits in their names
    assert read_label_table(tmp_path / "right.csv").shape == (6, 2)
    table.index = ["AZD6244", "PLX4720"]
    table.T.to_csv(tmp_path / "digits.csv")
    assert read_label_table(tmp_path / "digits.csv").shape == (6, 2)


def test_shown_labels_say_what_each_value_means_and_plots_colour_by_it():
    """QA: colouring the UMAP by a label column coded 0 = resistant drew the resistant cells in the
    sensitive blue ('1' and 'true' were taken for resistant whatever the column's direction)."""
    import anndata as ad

    from scatd_core import pl
    from scatd_core.labels import set_label_direction, shown_labels, shown_meanings

    adata = ad.AnnData(np.zeros((5, 1), dtype=np.float32))
    adata.obs["response"] = [0, 1, 0, np.nan, 1]
    adata.obs["phase"] = ["G1", "S", "G2M", "S", "G1"]
    # no direction known yet: the values as they are, no resistant/sensitive colours
    shown = shown_labels(adata, "response")
    assert list(shown.iloc[:3]) == ["0", "1", "0"] and shown.isna().iloc[3]
    palette = pl._palette(["0", "1", "True", "False", "R", "S"])
    assert not {pl.COLORS["resistant"], pl.COLORS["sensitive"]} & set(palette.values())
    set_label_direction(adata, "response", "0")  # SCAD's coding
    shown = shown_labels(adata, "response")
    # QA: "0 (resistant) (60)" in the legend (the count in parentheses too): "0 = resistant (60)"
    assert list(shown.cat.categories) == ["0 = resistant", "1 = sensitive"] and shown.index.equals(adata.obs_names)
    assert list(shown.iloc[[0, 1]]) == ["0 = resistant", "1 = sensitive"] and shown.isna().iloc[3]
    assert shown_meanings(adata, "response") == {"0 = resistant": "resistant", "1 = sensitive": "sensitive"}
    # drawn in the responses' red and blue by any figure given these categories (the report's too)
    assert pl._palette(["0 = resistant", "1 = sensitive"]) == {"0 = resistant": pl.COLORS["resistant"],
                                                               "1 = sensitive": pl.COLORS["sensitive"]}
    set_label_direction(adata, "response", "1")  # resistant first whichever value it is
    assert list(shown_labels(adata, "response").cat.categories) == ["1 = resistant", "0 = sensitive"]
    assert list(shown_meanings(adata, "response").values()) == ["resistant", "sensitive"]
    adata.obs["words"] = ["resistant", "sensitive", "sensitive", None, "resistant"]
    assert list(shown_labels(adata, "words").cat.categories) == ["resistant", "sensitive"]  # said already
    assert shown_meanings(adata, "phase") == {}  # no direction: no meaning, no response colours
    assert pl._palette(["S"])["S"] != pl.COLORS["sensitive"]  # a cell-cycle phase is not a response


def test_labels_from_ic50_cli_writes_a_provenance_file_that_the_training_reads(tmp_path, capsys):
    """QA: `scatd labels-from-ic50 --out labels.csv` then `scatd train --bulk-labels labels.csv`
    recorded only the table's sha256, while the Train page's "Build labels" records the ln(IC50)
    threshold and the files. The CLI writes labels.provenance.json beside the table; it is read back
    only while the table is the one it was written for."""
    import json

    from scatd_core.cli import main
    from scatd_core.cli.labels import say_ic50_provenance
    from scatd_core.labels import ic50_provenance_path, read_ic50_provenance

    ic50, thr, dlist = _ic50_files(tmp_path)
    out = tmp_path / "labels.csv"
    assert main(["labels-from-ic50", "--ic50", str(ic50), "--thresholds", str(thr), "--drug-list", str(dlist),
                 "--drugs", "Gefitinib", "--out", str(out)]) == 0
    assert "Wrote " + str(tmp_path / "labels.provenance.json") in capsys.readouterr().err
    side = ic50_provenance_path(out)
    assert side == tmp_path / "labels.provenance.json"
    record = json.loads(side.read_text())
    assert record["files"] == {"ic50": "ic50.csv", "thresholds": "thr.txt", "drug_list": "list.csv"}
    assert set(record["files_sha256"]) == {"ic50", "thresholds", "drug_list"}
    assert record["thresholds"]["Gefitinib"]["threshold"] == 0.5 and record["thresholds"]["Gefitinib"]["gdsc_id"] == 10
    built = labels_from_ic50(ic50, thr, dlist, drugs=["Gefitinib"]).attrs["report"]
    made, problem = read_ic50_provenance(out)
    assert problem is None and made["thresholds"] == json.loads(json.dumps(built["thresholds"]))
    assert made["files"] == built["files"] and made["files_sha256"] == built["files_sha256"]
    assert read_label_table(out).attrs["report"]["thresholds"]["Gefitinib"]["threshold"] == 0.5  # train-panel's way
    say_ic50_provenance(out)
    assert "Found labels.provenance.json beside labels.csv: the labels were built by scatd labels-from-ic50 from " \
           "ic50.csv" in capsys.readouterr().err
    # the table changed since: nothing recorded from the file, and said
    out.write_text(out.read_text().replace("resistant", "sensitive"))
    made, problem = read_ic50_provenance(out)
    assert made is None and "was written for another version of labels.csv" in problem
    say_ic50_provenance(out, mismatch=True)  # train-panel says it (scatd train's training says it itself)
    assert "warning: labels.provenance.json was written for another version of labels.csv" in \
        capsys.readouterr().err
    assert "report" not in read_label_table(out).attrs
    assert read_ic50_provenance(tmp_path / "list.csv") == (None, None)  # no provenance file: nothing to say


def test_ic50_values_that_are_not_numbers_are_counted_and_said(tmp_path, capsys):
    """QA: ln(IC50) values such as '-' silently counted as not screened; they are counted apart and said
    (with examples), as blanks and NA are not."""
    from scatd_core.cli import main

    ic50_path, thr, dlist = _ic50_files(tmp_path)
    ic50 = pd.read_csv(ic50_path, index_col=0).astype(object)
    ic50.loc["GDSC:10", "ACH-1"] = "-"
    ic50.loc["GDSC:20", ["ACH-1", "ACH-2"]] = ["n.d.", "-"]
    ic50.to_csv(ic50_path)
    table = labels_from_ic50(ic50_path, thr, dlist)
    assert table["Gefitinib"].tolist() == [None, "sensitive", None, "resistant"]  # still not screened
    rep = table.attrs["report"]
    assert rep["unreadable"] == {"n": 3, "examples": ["-", "n.d."], "by_drug": {"Gefitinib": 1, "Refametinib": 2}}
    from scatd_core.labels import unreadable_ic50_words

    said = ("3 ln(IC50) values could not be read as numbers, e.g. '-', 'n.d.': treated as not screened (2 drugs, "
            "e.g. Gefitinib: 1, Refametinib: 2).")
    assert unreadable_ic50_words(rep) == said
    assert main(["labels-from-ic50", "--ic50", str(ic50_path), "--thresholds", str(thr), "--drug-list", str(dlist),
                 "--out", str(tmp_path / "labels.csv")]) == 0
    assert f"warning: {said}" in capsys.readouterr().err
    assert unreadable_ic50_words(labels_from_ic50(*_ic50_files(tmp_path)).attrs["report"]) is None  # NA only


def test_other_label_values_are_refused_with_the_cli_and_the_app_each_told_their_own_way():
    """QA: a drug column holding 'intermediate' besides sensitive/resistant was refused only when a training
    started, and the page's message sent the user to the CLI. The one check (scatd_core) tells the CLI of
    scatd labels-from-ic50 and the app of its own expander, and counts each kind of value."""
    from scatd_core.labels import drug_label_values, other_label_values

    table = pd.DataFrame({"WEIRD": ["sensitive", "Resistant", "intermediate", "NA", "", None, "intermediate"]},
                         index=[f"L{i}" for i in range(7)])
    err = other_label_values(table, "WEIRD")
    assert err.message == "Drug WEIRD: values other than sensitive/resistant: 'intermediate'."
    assert "scatd labels-from-ic50" in err.hint
    assert "No label table? Build one from GDSC ln(IC50) values" in err.app_hint
    assert "scatd labels-from-ic50" not in err.app_hint
    hidden = other_label_values(table, "WEIRD", upload_shown=False).app_hint  # the demo panel's mode: no expander
    assert "choose 'Upload' under Bulk data" in hidden and "above" not in hidden, hidden
    with pytest.raises(InputError) as raised:
        drug_labels(table, "weird")
    assert raised.value.message == err.message and raised.value.app_hint == err.app_hint
    values = drug_label_values(table, "WEIRD")
    assert values.tolist() == ["sensitive", "resistant", "intermediate", "", "", "", "intermediate"]
    assert other_label_values(table.iloc[:2], "WEIRD") is None
