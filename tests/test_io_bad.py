"""Bad inputs found by QA: each gets a specific message (what, where, what to do), never a traceback."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from scatd_core import genes, io
from scatd_core._json import json_safe
from scatd_core.errors import InputError
from scatd_core.inputs import InputSpec, model_source

SYMBOLS = ["TP53", "EGFR", "MT-CO1", "HLA-A", "HLA-DRB1", "C1orf112", "H2AC6", "NKX2-1", "RPL13A", "SEPTIN7",
           "LINC00115", "C3", "F2", "GAPDH", "ACTB", "ABCA1", "ABCB1", "KRT18", "VIM", "CD44"]


def _counts(n_rows, n_cols, seed=0):
    return np.random.default_rng(seed).poisson(2.0, (n_rows, n_cols)) + 1


# -------------------------------------------------------------------------- 2: cell names as genes

@pytest.mark.parametrize("name", ["SRR7000000", "ERR1234567", "GSM4762001", "SAMN12345678", "P1_A01", "plate1_B12",
                                  "A01", "H09"])
def test_accessions_and_plate_wells_are_not_symbols(name):
    ev = genes.id_type_evidence([name])
    assert ev["human_symbol"] == 0 and ev["cell_name"] == 1


def test_real_symbols_with_digits_still_symbols():
    ev = genes.id_type_evidence(SYMBOLS + ["F10", "H19", "G10"])  # genes (and a made-up one) shaped like wells
    assert ev["human_symbol"] == 1 and ev["cell_name"] == 0


@pytest.mark.parametrize("cells", [[f"SRR70000{i:02d}" for i in range(30)],
                                   [f"P1_{r}{c:02d}" for r in "ABC" for c in range(1, 11)]])
@pytest.mark.parametrize("gene_names", [[g.lower() for g in SYMBOLS], [str(7157 + 13 * i) for i in range(20)]])
def test_genes_x_cells_with_accession_or_well_cells_read_as_genes_x_cells(tmp_path, cells, gene_names):
    pd.DataFrame(_counts(20, 30), index=gene_names, columns=cells).to_csv(tmp_path / "t.csv")
    a = io.read(tmp_path / "t.csv")
    assert a.n_obs == 30 and list(a.obs_names) == cells
    assert a.uns[io.REPORT_KEY]["orientation"] == "genes_x_cells"
    pd.DataFrame(_counts(20, 30), index=gene_names, columns=cells).T.to_csv(tmp_path / "c.csv")
    assert list(io.read(tmp_path / "c.csv").obs_names) == cells


def _spec(genes_):
    return InputSpec(backbone="dist_vae", input_kind="expression", input_dim=len(genes_), transform="none",
                     genes=list(genes_))


def test_no_gene_matched_says_transposed_when_the_genes_are_cell_names(tmp_path):
    cells = [f"SRR70000{i:02d}" for i in range(30)]
    pd.DataFrame(_counts(20, 30), index=SYMBOLS, columns=cells).to_csv(tmp_path / "t.csv")
    a = io.read(tmp_path / "t.csv", orientation="cells_x_genes")  # read the wrong way round
    with pytest.raises(InputError) as err:
        model_source(a, _spec(SYMBOLS))
    e = err.value
    assert "may be transposed" in e.message and "--orientation genes_x_cells" in e.hint
    assert "rows are genes" in e.app_hint and "Data page" in e.app_hint


# -------------------------------------------------------------------------- 3: title line above the table

@pytest.mark.parametrize("name, first, sep", [("title_space.txt", "counts", " "),
                                              ("title_line.csv", "# Counts for GSE1, exported 2024", ","),
                                              ("title_line2.csv", "Single-cell counts GSE1", ","),
                                              ("title_word.csv", "counts_matrix", ",")])
def test_title_line_above_the_table_is_named(tmp_path, name, first, sep):
    table = pd.DataFrame(_counts(4, 20), index=[f"c{i}" for i in range(4)], columns=SYMBOLS)
    body = table.to_csv(sep=sep)
    (tmp_path / name).write_text(first + "\n" + body)
    with pytest.raises(InputError, match=r"the first line \('" + first[:6]) as err:
        io.read(tmp_path / name)
    assert "does not look like the table's header" in err.value.message
    assert "title or comment lines" in err.value.hint


def test_pdf_renamed_csv_is_named(tmp_path):
    (tmp_path / "paper.pdf.csv").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")
    with pytest.raises(InputError, match="paper.pdf.csv is a PDF document"):
        io.read(tmp_path / "paper.pdf.csv")


def test_r_header_without_row_name_field_still_reads(tmp_path):
    table = pd.DataFrame(_counts(4, 20), index=[f"c{i}" for i in range(4)], columns=SYMBOLS)
    (tmp_path / "r.txt").write_text(table.to_csv(sep="\t").split("\t", 1)[1])  # header lacks the first field
    assert io.read(tmp_path / "r.txt").shape == (4, 20)


# -------------------------------------------------------------------------- 4: the user's file names

def test_gene_list_and_side_file_messages_use_the_given_name(tmp_path):
    import torch

    import original_scatd as orig
    from scatd_core.bundle import import_checkpoint

    (tmp_path / "genes.txt").write_text("TP53\nTP53\n")
    with pytest.raises(InputError, match="Gene list my genes.txt names 1 gene"):
        genes.read_gene_list(tmp_path / "genes.txt", name="my genes.txt")
    torch.save(orig.dal_checkpoint("dist_vae", [30, 16, 8], 6, seed=1), tmp_path / "checkpoint.pth")
    with pytest.raises(InputError, match="my genes.txt") as err:
        import_checkpoint(tmp_path / "checkpoint.pth", "dist_vae", drug="X", genes=tmp_path / "genes.txt",
                          side_name="my genes.txt", library=tmp_path / "lib")
    assert "genes.txt" not in err.value.message.replace("my genes.txt", "")


def test_label_readers_use_the_given_name(tmp_path):
    from scatd_core import labels

    (tmp_path / "upload0.csv").write_text("cell_line,DrugA\nCL1,sensitive,x,y,z\n")
    with pytest.raises(InputError, match=r"^my labels\.csv \(Label table\) is not a readable"):
        labels.read_label_table(tmp_path / "upload0.csv", name="my labels.csv")
    (tmp_path / "upload1.txt").write_text("A\tB\n0.5\n")
    (tmp_path / "ic50.csv").write_text(",CL1\nGDSC:1,0.5\n")
    (tmp_path / "list.csv").write_text("drug_id,Name\n1,A\n")
    with pytest.raises(InputError, match="^thr.txt: 2 drug names"):
        labels.labels_from_ic50(tmp_path / "ic50.csv", tmp_path / "upload1.txt", tmp_path / "list.csv",
                                names=["GDSC_IC50.csv", "thr.txt", "drugs.csv"])


# -------------------------------------------------------------------------- 5: UTF-16 text, Excel workbooks

def _xlsx(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")


def _same_read(a, b):
    """Two reads of one table: the same AnnData (the report too, but for the file's size and sha256)."""
    np.testing.assert_array_equal(np.asarray(a.X.todense() if hasattr(a.X, "todense") else a.X),
                                  np.asarray(b.X.todense() if hasattr(b.X, "todense") else b.X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    ra, rb = (json_safe(dict(x.uns["scatd_input"])) for x in (a, b))
    for r in (ra, rb):
        r.pop("file_bytes", None), r.pop("file_sha256", None)
    assert ra == rb and set(a.uns) == set(b.uns)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("layout", ["genes_x_cells", "cells_x_genes_with_labels", "gzipped"])
def test_utf16_data_table_reads_as_the_utf8_one(tmp_path, encoding, layout):
    """Excel's "Unicode text" export (UTF-16 with its byte-order mark, tab-separated, CRLF): read
    as the same table saved as UTF-8, upload or path, plain or gzipped."""
    import gzip

    from scatd_core.io import read_bytes

    cells = [f"c{i}" for i in range(6)]
    table = pd.DataFrame(_counts(6, 20), index=cells, columns=SYMBOLS)
    if layout == "genes_x_cells":
        table = table.T
    else:
        table["response"] = ["sensible", "résistant", "sensible", "résistant", "résistant", "sensible"]
    text = table.to_csv(sep="\t", lineterminator="\r\n")
    data = ("\ufeff" + text).encode(encoding)
    name = "t.tsv.gz" if layout == "gzipped" else "t.tsv"
    pack = gzip.compress if layout == "gzipped" else bytes
    (tmp_path / "utf8" / name).parent.mkdir()
    (tmp_path / "utf8" / name).write_bytes(pack(text.encode("utf-8")))
    (tmp_path / name).write_bytes(pack(data))
    want = io.read(tmp_path / "utf8" / name)
    _same_read(io.read(tmp_path / name), want)
    _same_read(read_bytes(pack(data), name, workdir=tmp_path), want)
    assert want.n_obs == 6 and want.n_vars == 20


def test_damaged_utf16_table_is_refused_by_name(tmp_path):
    """Bytes that are not UTF-16 (a lone surrogate) in a UTF-16 table, here near its end, beyond the
    first lines read to find the header (the rows are decoded as they are parsed), are refused with
    the file's name, not read as something else."""
    table = pd.DataFrame(_counts(40_000, 20), index=[f"c{i}" for i in range(40_000)], columns=SYMBOLS)
    data = table.to_csv(sep="\t").encode("utf-16")
    assert len(data) > 3 << 20
    (tmp_path / "excel.txt").write_bytes(data[:-200] + b"\x00\xdc" + data[-200:])
    with pytest.raises(InputError, match="^excel.txt starts as UTF-16 text .* holds bytes that are not UTF-16") as err:
        io.read(tmp_path / "excel.txt")
    assert "Export the table again" in err.value.hint
    (tmp_path / "odd.txt").write_bytes(data[:1000] + b"\x41")  # an odd byte at the end: cut short
    with pytest.raises(InputError, match="^odd.txt starts as UTF-16 text"):
        io.read(tmp_path / "odd.txt")
    (tmp_path / "m.mtx").write_bytes("%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 5\n".encode("utf-16"))
    with pytest.raises(InputError, match="m.mtx is saved as UTF-16 text; a Matrix Market file is plain"):
        io.read(tmp_path / "m.mtx")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("which", ["barcodes", "features"])
@pytest.mark.parametrize("compressed", [True, False])
def test_utf16_10x_barcodes_and_features_read_as_the_utf8_ones(tmp_path, encoding, which, compressed):
    """A 10x barcodes.tsv or features.tsv (genes.tsv) opened in Excel and saved as "Unicode text"
    (UTF-16 with its byte-order mark, CRLF), gzipped again or not, in a folder or an archive: the
    same data as the folder as Cell Ranger wrote it."""
    import gzip

    from _data_helpers import make_counts, write_10x_mtx, write_zip

    written = write_10x_mtx(make_counts(8, 12), tmp_path / "as_written" / "tenx", compressed=compressed)
    want = io.read(written)
    folder = write_10x_mtx(make_counts(8, 12), tmp_path / "excel" / "tenx", compressed=compressed)
    stem = which if compressed or which == "barcodes" else "genes"
    path = next(folder.glob(f"{stem}.tsv*"))
    text = (gzip.decompress(path.read_bytes()) if compressed else path.read_bytes()).decode("utf-8")
    data = ("\ufeff" + text.replace("\n", "\r\n")).encode(encoding)
    path.write_bytes(gzip.compress(data) if compressed else data)
    _same_read(io.read(folder), want)
    _same_read(io.read(write_zip(folder, folder.parent / "tenx.zip")),
               io.read(write_zip(written, written.parent / "tenx.zip")))
    assert want.n_obs == 8 and want.n_vars == 12


def test_10x_names_files_in_utf32_binary_or_damaged_utf16_are_refused_by_name(tmp_path):
    from _data_helpers import make_counts, write_10x_mtx

    folder = write_10x_mtx(make_counts(8, 12), tmp_path / "tenx", compressed=False)
    text = (folder / "barcodes.tsv").read_text()
    for data, match in (("\ufeff" + text).encode("utf-32"), "is saved as UTF-32 text"), \
                       (b"\x00\x01\x02" * 50, "is binary"), \
                       (text.encode("utf-16")[:30] + b"\x00\xdc" + text.encode("utf-16")[30:],
                        "starts as UTF-16 text .* not UTF-16"), \
                       (text.replace("-1", "-\xe9").encode("latin-1"), "is not UTF-8 text"):
        (folder / "barcodes.tsv").write_bytes(data)
        with pytest.raises(InputError, match=f"^tenx: barcodes.tsv {match}"):
            io.read(folder)
    (tmp_path / "t32.tsv").write_bytes("\tc1\tc2\nTP53\t1\t2\n".encode("utf-32"))  # a data table too
    with pytest.raises(InputError, match="^t32.tsv is saved as UTF-32 text; a text table must be UTF-8 or UTF-16"):
        io.read(tmp_path / "t32.tsv")


def test_xlsx_renamed_csv_says_excel_workbook(tmp_path):
    _xlsx(tmp_path / "book.csv")
    with pytest.raises(InputError, match="book.csv is an Excel workbook") as err:
        io.read(tmp_path / "book.csv")
    assert "Export the sheet as CSV" in err.value.hint


def test_utf16_label_table_and_gene_list_are_read_xlsx_named(tmp_path):
    from scatd_core import labels

    (tmp_path / "labels.csv").write_bytes("cell_line,DrugA\nCL1,sensitive\nCL2,resistant\n".encode("utf-16"))
    table = labels.read_label_table(tmp_path / "labels.csv")
    assert list(table.columns) == ["DrugA"] and list(table.index) == ["CL1", "CL2"]
    (tmp_path / "genes.txt").write_bytes("TP53\nEGFR\n".encode("utf-16"))
    assert genes.read_gene_list(tmp_path / "genes.txt") == ["TP53", "EGFR"]
    _xlsx(tmp_path / "labels_x.csv")
    with pytest.raises(InputError, match="labels_x.csv is an Excel workbook"):
        labels.read_label_table(tmp_path / "labels_x.csv")
    _xlsx(tmp_path / "genes_x.csv")
    with pytest.raises(InputError, match="Gene list genes_x.csv is a zip file"):
        genes.read_gene_list(tmp_path / "genes_x.csv")
    import gzip

    text = "cell_line\tDrugA\nCL1\tsensitive\nCL2\trésistant\n"
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    want = labels.read_label_table(tmp_path / "utf8.txt")
    for name, data in (("le.txt", ("\ufeff" + text).encode("utf-16-le")),
                       ("be.txt", ("\ufeff" + text).encode("utf-16-be")),
                       ("le.txt.gz", gzip.compress(("\ufeff" + text).encode("utf-16-le")))):
        (tmp_path / name).write_bytes(data)
        pd.testing.assert_frame_equal(labels.read_label_table(tmp_path / name), want)
    damaged = text.encode("utf-16")
    (tmp_path / "damaged.txt").write_bytes(damaged[:20] + b"\x00\xdc" + damaged[20:])  # once read with a stand-in
    with pytest.raises(InputError, match="^damaged.txt starts as UTF-16 text .* not UTF-16"):
        labels.read_label_table(tmp_path / "damaged.txt")
    (tmp_path / "latin.csv").write_bytes("cell_line,Drug\xe9\nCL1,sensitive\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv \(Label table\) is not UTF-8 text"):
        labels.read_label_table(tmp_path / "latin.csv")
    (tmp_path / "u32.csv").write_bytes(("\ufeff" + text).encode("utf-32-le"))  # never decoded as UTF-16
    with pytest.raises(InputError, match="^u32.csv is saved as UTF-32 text; a CSV/TSV table must be UTF-8 or UTF-16"):
        labels.read_label_table(tmp_path / "u32.csv")


# -------------------------------------------------------------------------- 6, 7: why no gene matched

def test_lower_case_human_symbols_are_explained_not_upper_cased(tmp_path):
    from anndata import AnnData

    a = AnnData(X=_counts(3, 20).astype(np.float32),
                var=pd.DataFrame(index=[g.lower() for g in SYMBOLS]), obs=pd.DataFrame(index=["a", "b", "c"]))
    with pytest.raises(InputError) as err:
        model_source(a, _spec(SYMBOLS))
    e = err.value
    assert "lower-case (e.g. tp53)" in e.message and "(TP53)" in e.message
    assert "adata.var_names = adata.var_names.str.upper()" in e.hint and "human" in e.hint


@pytest.mark.parametrize("cells", [[f"AAACCTG{i:06d}-1" for i in range(30)], [f"P1_{r}{c}" for r in "ABC" for c in
                                                                              range(1, 11)]])
def test_an_h5ad_with_lower_case_genes_is_read_as_stored_and_the_lower_case_hint_is_given(tmp_path, cells):
    from anndata import AnnData

    AnnData(X=_counts(30, 20).astype(np.float32), obs=pd.DataFrame(index=cells),
            var=pd.DataFrame(index=[g.lower() for g in SYMBOLS])).write_h5ad(tmp_path / "lower.h5ad")
    a = io.read(tmp_path / "lower.h5ad")
    assert list(a.obs_names) == cells and a.uns[io.REPORT_KEY]["orientation"] == "cells_x_genes"
    assert not any("transposed" in w for w in a.uns[io.REPORT_KEY]["warnings"])
    with pytest.raises(InputError) as err:
        model_source(a, _spec(SYMBOLS))
    assert "lower-case (e.g. tp53)" in err.value.message


def test_barcode_like_cell_names_are_not_symbols():
    ev = genes.id_type_evidence([f"AAACCTG{i:06d}-1" for i in range(30)] + ["ACGTACG0001"])
    assert ev["human_symbol"] == 0 and ev["barcode"] == 1
    assert genes.id_type_evidence(["CACNG7", "CACNA1C", "GGACT", "GATA1", "TACC3"])["barcode"] == 0


def test_embeddings_with_an_expression_model_say_so(tmp_path):
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32))
    a = io.read(tmp_path / "emb.npy")
    with pytest.raises(InputError) as err:
        model_source(a, _spec(SYMBOLS))
    e = err.value
    assert "cell embeddings (.npy" in e.message and "gene expression" in e.message
    assert "VAE_sf or VAE_gf" in e.hint and "--input" in e.hint
    assert "VAE_sf or VAE_gf" in e.app_hint and "Data page" in e.app_hint


# -------------------------------------------------------------------------- 8: X all zero, expression elsewhere

def test_all_zero_x_names_raw_and_layers(tmp_path):
    from anndata import AnnData

    counts = _counts(40, 30).astype(np.float32)
    a = AnnData(X=counts.copy(), var=pd.DataFrame(index=SYMBOLS + [f"G{i}" for i in range(10)]))
    a.raw = a.copy()
    a.X = np.zeros_like(counts)
    a.write_h5ad(tmp_path / "raw_only.h5ad")
    with pytest.raises(InputError) as err:
        io.read(tmp_path / "raw_only.h5ad")
    assert "adata.raw holds 40 x 30 values" in err.value.message and "adata.X = adata.raw.X" in err.value.hint
    b = AnnData(X=np.zeros_like(counts), layers={"counts": counts}, var=a.var)
    b.write_h5ad(tmp_path / "x_empty_layers.h5ad")
    with pytest.raises(InputError) as err:
        io.read(tmp_path / "x_empty_layers.h5ad")
    assert "layers: counts" in err.value.message and "adata.X = adata.layers['counts']" in err.value.hint


# -------------------------------------------------------------------------- 9: gene names Excel made dates

def test_excel_date_gene_names_are_warned_in_the_data_and_at_import(tmp_path):
    import torch

    import original_scatd as orig
    from scatd_core.bundle import import_checkpoint

    dated = ["1-Mar", "2-Sep", "1-Dec", "01-Mar", "Mar-01", "2023-03-01"]
    assert genes.excel_date_names(SYMBOLS + ["MARCHF1", "SEPTIN2"] + dated) == dated
    names = SYMBOLS[:14] + dated
    pd.DataFrame(_counts(4, 20), index=[f"c{i}" for i in range(4)], columns=names).to_csv(tmp_path / "x.csv")
    warnings = io.read(tmp_path / "x.csv").uns[io.REPORT_KEY]["warnings"]
    hit = [w for w in warnings if "Excel turned gene names such as MARCH1/SEPT2 into dates" in w]
    assert hit and "1-Mar, 2-Sep, 1-Dec, 01-Mar, Mar-01 ..." in hit[0] and "Re-export" in hit[0]
    (tmp_path / "genes.txt").write_text("\n".join(SYMBOLS + [f"G{i}" for i in range(8)] + ["1-Mar", "2-Sep"]) + "\n")
    torch.save(orig.dal_checkpoint("dist_vae", [30, 16, 8], 6, seed=1), tmp_path / "drug.pth")
    bundle = import_checkpoint(tmp_path / "drug.pth", "dist_vae", drug="X", genes=tmp_path / "genes.txt",
                               library=tmp_path / "lib")
    notes = bundle.manifest["provenance"]["notes"]
    assert any("genes.txt" in n and "1-Mar, 2-Sep" in n and "Excel" in n for n in notes)


# -------------------------------------------------------------------------- cut-short and damaged files

@pytest.mark.parametrize("sep, name", [(",", "t.csv"), ("\t", "t.tsv")])
def test_a_table_whose_last_row_is_cut_short_is_called_truncated(tmp_path, sep, name):
    """A download cut short leaves a last row with fewer fields than the header: pandas read the
    missing ones as NaN, and the message advised filling them with zeros. Now it says the file
    looks truncated, which row, how many fields, and to download it again."""
    rows = ["cell" + sep + sep.join(SYMBOLS[:4])] + [f"c{i}" + sep + sep.join(["3"] * 4) for i in range(3)]
    (tmp_path / name).write_text("\n".join(rows) + "\n" + "c3" + sep + "7" + sep + "1")  # cut in the 4th row
    with pytest.raises(InputError) as err:
        io.read(tmp_path / name)
    msg = err.value.message
    assert msg.startswith(f"{name} looks truncated: its last row, row 4 (line 5 of the file), has 3 of 5 fields")
    assert "NaN" not in msg and "again" in err.value.hint


def test_a_short_row_in_the_middle_of_a_table_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("cell,TP53,EGFR,GAPDH\nc1,1,2,3\nc2,4\nc3,7,8,9\n")
    with pytest.raises(InputError, match=r"^t.csv: row 2 \(line 3 of the file\) has 2 of 4 fields; every row needs"):
        io.read(tmp_path / "t.csv")
    (tmp_path / "na.csv").write_text("cell,TP53,EGFR,GAPDH\nc1,1,NA,3\nc2,4,5,6\n")  # a real missing value
    with pytest.raises(InputError, match=r"holds 1 missing \(NaN\) value"):
        io.read(tmp_path / "na.csv")


def _loom(path, gene_names):
    import h5py

    with h5py.File(path, "w") as f:
        f["matrix"] = np.arange(12, dtype=np.float32).reshape(3, 4) + 1  # 3 genes x 4 cells
        rows, cols = f.create_group("row_attrs"), f.create_group("col_attrs")
        if isinstance(gene_names, str):
            rows.create_group(gene_names)
        else:
            rows["Gene"] = np.array(gene_names, dtype="S")
        cols["CellID"] = np.array([b"a", b"b", b"c", b"d"])
    return path


@pytest.mark.parametrize("genes_, match", [(["TP53", "EGFR"], "holds 2 values, but the matrix has 3 genes"),
                                          ([["TP53"], ["EGFR"], ["KRAS"]], "holds 3 x 1 values"),
                                          ("Gene", "is a group, not a list of the matrix's 3 genes")])
def test_a_loom_whose_gene_attribute_does_not_fit_is_refused_by_name(tmp_path, genes_, match):
    """KeyError: 'Gene' ("Could not read x.loom: KeyError ...") when the Gene row attribute is not
    one name per gene: now the file, the attribute and what is wrong."""
    with pytest.raises(InputError) as err:
        io.read(_loom(tmp_path / "x.loom", genes_))
    assert err.value.message.startswith("x.loom: its row attribute 'Gene' (the genes' names) ")
    assert "KeyError" not in err.value.message and re.search(match, err.value.message)


def _mtx_with_size_line(folder, change: int):
    mtx = folder / "matrix.mtx"
    lines = mtx.read_text().splitlines(True)
    at = next(i for i, ln in enumerate(lines) if not ln.startswith("%"))
    rows, cols, nnz = lines[at].split()
    lines[at] = f"{rows} {cols} {int(nnz) + change}\n"
    mtx.write_text("".join(lines))
    return int(nnz) + change


@pytest.mark.parametrize("change, match", [(3, "holds fewer entries than the {} its size line declares: the file "
                                                "looks truncated"),
                                           (-2, "holds more entries than the {} its size line declares")])
def test_a_10x_matrix_whose_entries_disagree_with_its_size_line_says_so(tmp_path, change, match):
    from _data_helpers import make_counts, write_10x_mtx

    folder = write_10x_mtx(make_counts(8, 12), tmp_path / "tenx", compressed=False)
    nnz = _mtx_with_size_line(folder, change)
    with pytest.raises(InputError) as err:
        io.read(folder)
    assert err.value.message.startswith(f"tenx: matrix.mtx {match.format(f'{nnz:,}')}"), err.value.message
    assert "ValueError" not in err.value.message and "Could not read" not in err.value.message


@pytest.mark.parametrize("which", ["matrix.mtx", "barcodes.tsv", "features.tsv"])
def test_a_10x_file_named_gz_that_is_not_gzip_is_refused_by_name(tmp_path, which):
    from _data_helpers import make_counts, write_10x_mtx

    folder = write_10x_mtx(make_counts(8, 12), tmp_path / "tenx", compressed=True)
    import gzip

    path = folder / f"{which}.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain text under a .gz name
    with pytest.raises(InputError) as err:
        io.read(folder)
    assert err.value.message == f"tenx: {which}.gz is not gzip-compressed, although its name ends in .gz."
    assert f"rename it without .gz ({which})" in err.value.hint
