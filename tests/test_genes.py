"""scatd_core.genes: identifier types, symbol <-> Ensembl mapping, coverage of a model's genes."""

from __future__ import annotations

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from _data_helpers import SHARED_DATA, make_counts, write_10x_h5, write_table
from scatd_core import genes, io
from scatd_core.errors import InputError

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"shared reference data not found at {SHARED_DATA}")

HUMAN = ["TP53", "EGFR", "MT-CO1", "HLA-DRB1", "C1orf112", "LINC00115", "NKX2-1", "RPL13A", "GAPDH", "ACTB"]
MOUSE = ["Actb", "Gapdh", "Trp53", "mt-Co1", "Rps27a", "Gm12345", "H2-K1", "Hba-a1", "1700001C19Rik", "Cd74"]
ENSEMBL = [f"ENSG{i:011d}" for i in range(1, 11)]


@pytest.mark.parametrize("names, expected", [
    (HUMAN, "symbol"),
    (ENSEMBL, "ensembl"),
    ([f"{e}.{i}" for i, e in enumerate(ENSEMBL, 1)], "ensembl"),
    ([f"ENSMUSG{i:011d}" for i in range(10)], "ensembl"),
    ([f"{e}_TP53" for e in ENSEMBL], "ensembl"),
    (MOUSE, "mouse_symbol"),
    (HUMAN[:5] + ENSEMBL[:5], "mixed"),
    ([str(i) for i in range(10)], "unknown"),
    ([f"feature_{i}" for i in range(10)], "unknown"),
    (["AAACCTGAGCATCATC-1", "AAACCTGCAGGTCCAC-1", "TTTGTCATCTTGCCGT-1"], "unknown"),
    ([], "unknown"),
])
def test_detect_id_type(names, expected):
    assert genes.detect_id_type(names) == expected


def test_id_type_evidence_counts_species_and_versions():
    ev = genes.id_type_evidence(["ENSMUSG00000000001.3", "ENSG00000141510", "TP53", "Actb"])
    assert ev["n"] == 4 and ev["ensembl"] == 0.5 and ev["ensembl_mouse"] == 0.25
    assert ev["ensembl_versioned"] == 0.25 and ev["human_symbol"] == 0.25 and ev["mouse_symbol"] == 0.25
    json.dumps(ev)


def test_strip_ensembl_version():
    assert genes.strip_ensembl_version("ENSG00000141510.16") == "ENSG00000141510"
    assert genes.strip_ensembl_version(["ENSG00000141510.16", "TP53", "ENSMUSG00000059552.14"]) == \
        ["ENSG00000141510", "TP53", "ENSMUSG00000059552"]
    assert genes.strip_ensembl_version("ENSG00000002586.20_PAR_Y") == "ENSG00000002586_PAR_Y"


def _adata(var_names, **var_columns) -> ad.AnnData:
    return ad.AnnData(X=sp.csr_matrix((2, len(var_names)), dtype=np.float32),
                      var=pd.DataFrame(var_columns, index=var_names))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16-le", "utf-16-be"])
def test_gene_lists_read_utf8_and_utf16_as_the_tables_do(tmp_path, encoding):
    """A model gene list (--genes, the Models page) and the scFoundation list: UTF-8 with or without
    its byte-order mark, or UTF-16 with it (Excel's "Unicode text", CRLF), read alike."""
    from scatd_core.foundation import scfoundation

    bom = "\ufeff" if encoding.startswith("utf-16") else ""
    (tmp_path / "genes.txt").write_bytes((bom + "TP53\r\nEGFR\r\nMT-CO1\r\n").encode(encoding))
    assert genes.read_gene_list(tmp_path / "genes.txt") == ["TP53", "EGFR", "MT-CO1"]
    sf = tmp_path / "OS_scRNA_gene_index.19264.tsv"
    sf.write_bytes((bom + "gene_name\tindex\r\nA1BG\t0\r\nA1CF\t1\r\n").encode(encoding))
    assert scfoundation.read_gene_list(sf) == ["A1BG", "A1CF"]


def test_gene_lists_in_utf32_binary_damaged_or_too_large_are_refused_by_name(tmp_path, monkeypatch):
    """UTF-32 (whose byte-order mark starts as UTF-16's) is never decoded as UTF-16 into names with
    NULs; binary, gzip, damaged UTF-16 and non-UTF-8 files are named; a list is read up to its limit."""
    import gzip

    from scatd_core.errors import CheckpointError
    from scatd_core.foundation import scfoundation

    path = tmp_path / "upload.txt"
    text = "gene_name\tindex\nTP53\t0\nEGFR\t1\n"
    for data, match in ((("\ufeff" + text).encode("utf-32-le"), "is saved as UTF-32 text"),
                        (("\ufeff" + text).encode("utf-32-be"), "is saved as UTF-32 text"),
                        (b"\x00\x01\x02\x03" * 20, "is binary"),
                        (gzip.compress(text.encode()), "is gzip-compressed"),
                        (text.encode("utf-16")[:10] + b"\x00\xdc" + text.encode("utf-16")[10:],
                         "starts as UTF-16 text .* not UTF-16"),
                        ("TP53\nCAF\xc9\n".encode("latin-1"), "is not UTF-8 text")):
        path.write_bytes(data)
        with pytest.raises(InputError, match=f"^Gene list my genes.txt {match}"):
            genes.read_gene_list(path, name="my genes.txt")
        with pytest.raises(CheckpointError, match=f"^upload.txt {match}"):
            scfoundation.read_gene_list(path)
    monkeypatch.setattr(genes, "MAX_GENE_LIST_BYTES", 1000)
    path.write_text("gene_name\n" + "".join(f"GENE{i}\n" for i in range(200)))
    with pytest.raises(InputError, match="^Gene list upload.txt is larger than"):
        genes.read_gene_list(path)
    path.write_text("gene_name\n" + "".join(f"GENE{i}\n" for i in range(20)))
    assert len(genes.read_gene_list(path)) == 20


def test_map_symbols_to_ensembl_through_the_routes_in_order(tmp_path):
    # gene 0: the file's own column; gene 1: Geneformer dictionary; gene 2: BioMart; gene 3: nowhere
    data = _adata(["TP53", "EGFR", "MYC", "NOTAGENE", "ENSG00000000005.2"],
                  gene_ids=["ENSG00000141510", "", "", "", "ENSG00000000005.2"])
    gf = {"TP53": "ENSG99999999999", "EGFR": "ENSG00000146648"}
    (tmp_path / "mart.txt").write_text("Gene stable ID,Gene name\nENSG00000136997,MYC\nENSG00000146648,EGFR\n")
    mapping = genes.map_gene_ids(data, "ensembl", geneformer_dict=gf, biomart=tmp_path / "mart.txt")
    assert mapping.names == ["ENSG00000141510", "ENSG00000146648", "ENSG00000136997", "NOTAGENE", "ENSG00000000005"]
    assert mapping.routes == {"already": 1, "file_columns": 1, "geneformer_dict": 1, "biomart": 1, "unmapped": 1}
    assert mapping.mapped.tolist() == [True, True, True, False, True]
    assert mapping.summary()["n_mapped"] == 4


def test_map_ensembl_to_symbols_from_var_columns_and_inverted_dictionary():
    data = _adata(["ENSG00000141510.16", "ENSG00000146648"], gene_symbols=["TP53", "nan"])
    mapping = genes.map_gene_ids(data, "symbol", geneformer_dict={"EGFR": "ENSG00000146648"})
    assert mapping.names == ["TP53", "EGFR"]
    assert mapping.routes["file_columns"] == 1 and mapping.routes["geneformer_dict"] == 1
    plain = genes.map_gene_ids(["ENSG00000141510", "TP53"], "symbol")
    assert plain.names == ["ENSG00000141510", "TP53"] and plain.routes["unmapped"] == 1


def test_map_10x_file_to_ensembl(tmp_path):
    adata = io.read(write_10x_h5(make_counts(), tmp_path / "x.h5"))
    mapping = genes.map_gene_ids(adata, "ensembl")
    assert mapping.routes["file_columns"] == adata.n_vars
    assert mapping.names[0] == "ENSG00000000001"


@needs_shared
def test_real_geneformer_dictionary_maps_symbols():
    mapping = genes.map_gene_ids(["TP53", "EGFR", "MT-CO1"], "ensembl",
                                 geneformer_dict=SHARED_DATA / "geneformer" / "gene_name_id_dict.pkl")
    assert mapping.names[:2] == ["ENSG00000141510", "ENSG00000146648"]
    assert mapping.routes["geneformer_dict"] == 3


@needs_shared
def test_real_token_dictionary_needs_numpy_scalars():
    path = SHARED_DATA / "geneformer" / "token_dictionary.pkl"
    with pytest.raises(InputError, match="refused"):
        genes.load_pickled_dict(path)
    tokens = genes.load_pickled_dict(path, allow_numpy_scalars=True)
    assert tokens["<pad>"] == 0 and tokens["<mask>"] == 1 and len(tokens) == 25426
    assert all(type(v) is int for v in tokens.values())


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling would call open(target, "w") and create the file
        return (open, (str(self.target), "w"))


def test_pickles_cannot_run_code(tmp_path):
    flag = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"TP53": _Exploit(flag)}))
    for allow in (False, True):
        with pytest.raises(InputError, match="refused"):
            genes.load_pickled_dict(tmp_path / "evil.pkl", allow_numpy_scalars=allow)
    assert not flag.exists()
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(["TP53"]))
    with pytest.raises(InputError, match="not a dictionary"):
        genes.load_pickled_dict(tmp_path / "list.pkl")
    (tmp_path / "np.pkl").write_bytes(pickle.dumps({"ENSG00000141510": np.int16(7)}))
    assert genes.load_pickled_dict(tmp_path / "np.pkl", allow_numpy_scalars=True) == {"ENSG00000141510": 7}


def test_biomart_table(tmp_path):
    (tmp_path / "mart.tsv").write_text("Gene stable ID version\tGene name\nENSG00000141510.17\tTP53\nENSG1\t\n")
    table = genes.read_biomart_table(tmp_path / "mart.tsv")
    assert table.to_dict("records") == [{"ensembl": "ENSG00000141510", "symbol": "TP53"}]
    (tmp_path / "bad.csv").write_text("id,name\n1,2\n")
    with pytest.raises(InputError, match="Gene stable ID"):
        genes.read_biomart_table(tmp_path / "bad.csv")


def test_mito_mask_uses_a_symbol_column_for_ensembl_names():
    data = _adata(["ENSG00000198804", "ENSG00000141510"], gene_symbols=["MT-CO1", "TP53"])
    assert genes.mito_mask(data).tolist() == [True, False]
    assert genes.mito_mask(_adata(["mt-Co1", "Actb"])).tolist() == [True, False]


def test_duplicated_genes_are_summed_when_aligned(tmp_path):
    adata = make_counts(n_cells=10, n_genes=6)
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    out = io.read(write_table(adata, tmp_path / "dup.csv"))
    aln = genes.align_genes(genes.original_gene_names(out), [names[0], "NOT_IN_DATA"])
    X = out.X.toarray() if sp.issparse(out.X) else out.X
    np.testing.assert_array_equal((sp.csr_matrix(out.X) @ aln.matrix).toarray()[:, 0], X[:, 0] + X[:, 1])
    assert aln.n_duplicated == 1


def test_coverage_report_does_not_rank_z_scores_as_expression():
    """QA on SCAD's z-scored CSVs: the Model page listed 'most expressed' unused genes by mean z-score
    (B4GALT5 0.83, LCN2 0.80), which is not expression. Centred values: the genes by name, no means."""
    rng = np.random.default_rng(0)
    x = np.log1p(rng.poisson(2.0, size=(60, 6)).astype(np.float64))
    x[:30, 4] += 3  # LCN2 high in half the cells: a mean z-score near 0 all the same
    z = (x - x.mean(0)) / x.std(0)
    z[:, 5] += 0.8  # a centred gene whose mean is off 0: still no expression to rank by
    names = ["TP53", "EGFR", "myc", "KRAS", "LCN2", "B4GALT5"]
    adata = ad.AnnData(X=z.astype(np.float32), var=pd.DataFrame(index=names))
    report = genes.coverage_report(adata, ["TP53", "EGFR"] + [f"G{i}" for i in range(8)])
    assert report["top_unmatched_genes"] == ["B4GALT5", "KRAS", "LCN2", "myc"]
    assert report["unmatched_ranked_by"] == "name"
    assert "top_unmatched_mean" not in report and "expression_fraction_matched" not in report
    assert report["low_coverage"] is True and "highly variable genes" in report["advice"]
    json.dumps(report)
    adata.uns["scatd_input"] = {"value_type": "zscored"}  # as judged when the data were read
    assert genes.coverage_report(adata, ["TP53"], n_top=2)["top_unmatched_genes"] == ["B4GALT5", "EGFR"]
    # log-normalised values with one corrupt cell (a negative value): still expression, by mean
    adata = ad.AnnData(X=x.astype(np.float32), var=pd.DataFrame(index=names))
    adata.X[0, 0] = -1.0
    report = genes.coverage_report(adata, ["TP53", "EGFR"])
    assert report["unmatched_ranked_by"] == "mean" and report["top_unmatched_genes"][0] == "LCN2"


def test_coverage_report_names_only():
    report = genes.coverage_report(HUMAN, HUMAN[:8] + ["X1", "X2"])
    assert report["n_matched"] == 8 and report["fraction_matched"] == 0.8
    assert report["low_coverage"] is False and report["advice"].startswith("Coverage is good")
    assert "top_unmatched_genes" not in report


def test_coverage_report_ranks_unmatched_genes_by_expression():
    X = np.zeros((4, 5), dtype=np.float32)
    X[:, 2], X[:, 3], X[:, 4] = 10, 1, 5
    adata = ad.AnnData(X=X, var=pd.DataFrame(index=["TP53", "EGFR", "MYC", "KRAS", "CD44"]))
    report = genes.coverage_report(adata, ["TP53", "EGFR"] + [f"G{i}" for i in range(8)])
    assert report["low_coverage"] is True and report["fraction_matched"] == 0.2
    assert report["top_unmatched_genes"] == ["MYC", "CD44", "KRAS"]
    assert report["top_unmatched_mean"] == [10.0, 5.0, 1.0]
    assert report["unmatched_ranked_by"] == "mean"
    assert report["expression_fraction_matched"] == 0.0
    assert "highly variable genes" in report["advice"]
    json.dumps(report)


def _mouse_like(symbols, keep: int):
    """The symbols as mouse-style names (Tp53), but the first ``keep`` left human (they still match)."""
    return list(symbols[:keep]) + [s[0] + s[1:].lower() for s in symbols[keep:]]


def test_prediction_is_refused_below_the_minimum_gene_coverage(tmp_path, capsys):
    """QA: mouse symbols matched 2 of a 2,932-gene model (0.1%, shown as "0%") and the prediction still ran
    and called 14 cells resistant. Below the minimum (10%) it is refused, saying how many matched, which
    names did not and why; --min-gene-coverage (or min_gene_coverage=) lets an expert run it anyway."""
    from scatd_core.cli import main
    from scatd_core.predict import predict

    counts = make_counts(n_cells=30, n_genes=40, seed=5)
    bundle = _symbol_model(tmp_path, list(counts.var_names))
    mouse = ad.AnnData(counts.X.copy(), obs=counts.obs.copy(),
                       var=pd.DataFrame(index=_mouse_like(list(counts.var_names), 2)))
    assert genes.detect_id_type(mouse.var_names) == "mouse_symbol"
    with pytest.raises(InputError) as err:
        predict(mouse, bundle, copy=True)
    cov = genes.coverage_report(mouse, bundle.genes)
    assert cov["status"] == "refused" and cov["min_coverage"] == genes.MIN_GENE_COVERAGE == 0.1
    assert cov["advice"].startswith("Too few genes to predict: only 2 of the model's 40 genes (5.0%)")
    message = err.value.message
    assert "only 2 of the model's 40 genes (5.0%) are, and at least 10.0% are needed" in message
    # the model's genes the data lack (QA: the data's genes the model does not know were listed instead)
    assert (f"The model's genes missing from the data (38) include {counts.var_names[2]}, {counts.var_names[3]}"
            in message and "mouse gene symbols" in message)
    assert "--min-gene-coverage" in err.value.hint and "limits.min_gene_coverage" in err.value.app_hint
    done = predict(mouse, bundle, copy=True, min_gene_coverage=0.01)  # an expert's explicit override
    assert any(w.startswith("Only 5.0% of the model's genes are in the data (2 of 40)") and "mouse" in w
               for w in done.uns["scatd"]["warnings"])
    # the command line: refused before anything runs, and run with the override
    mouse.write_h5ad(tmp_path / "mouse.h5ad")
    common = ["predict", "--model", str(bundle.path), "--input", str(tmp_path / "mouse.h5ad")]
    assert main(common + ["--output", str(tmp_path / "a.csv")]) == 3  # read, but cannot be scored
    out = capsys.readouterr().err
    assert "Too few of the model's genes are in the data to predict" in out and "--min-gene-coverage" in out
    assert "Estimated time" not in out and not (tmp_path / "a.csv").exists()
    assert main(common + ["--output", str(tmp_path / "b.csv"), "--min-gene-coverage", "0"]) == 0
    assert "model genes present (5.0%)" in capsys.readouterr().err


def test_small_shares_are_never_rounded_to_zero():
    """QA: "(0%)" for 2 of 2,932 genes, where the Coverage tile said 0.1%: one way of writing a share,
    never 0% (nor 100%) when it is not."""
    from scatd_core._words import percent

    assert [percent(1 / 2932), percent(2 / 2932), percent(0), percent(0.525), percent(2931 / 2932)] == \
        ["<0.1%", "<0.1%", "0.0%", "52.5%", ">99.9%"]


def test_the_minimum_gene_coverage_is_a_server_setting(monkeypatch, tmp_path):
    from scatd_core.config import settings

    monkeypatch.setenv("SCATD_MIN_GENE_COVERAGE", "0.5")
    assert genes.min_gene_coverage() == 0.5
    assert genes.coverage_report(HUMAN, HUMAN[:4] + ["X1"] * 0 + [f"G{i}" for i in range(6)])["status"] == "refused"
    monkeypatch.setenv("SCATD_MIN_GENE_COVERAGE", "10")  # a percentage, not a share: refused, the default used
    conf = settings()
    assert conf["min_gene_coverage"] == 0.1
    assert any("SCATD_MIN_GENE_COVERAGE = 10 is not between 0 and 1" in p for p in conf.problems)


def test_unmapped_ensembl_ids_among_symbols_are_never_good_coverage():
    """QA: half symbols, half Ensembl IDs and no dictionary: "Coverage is good: 74 of 141 genes (52%)", and the
    Data page counted "0 from the file's own columns, 0 from the Geneformer dictionary, 0 from a BioMart
    table" for the 1,466 genes that were symbols already. The unmapped IDs are named, with what to do."""
    counts = make_counts(n_cells=10, n_genes=40, seed=6)
    symbols, ids = list(counts.var_names), list(counts.var["gene_ids"])
    mixed = ad.AnnData(counts.X.copy(), var=pd.DataFrame(index=[ids[i] if i % 2 else s for i, s in enumerate(symbols)]))
    summary = genes.annotate_gene_ids(mixed, geneformer_dict={})
    assert not genes.coverage_report(mixed, symbols)["advice"].startswith("Coverage is good")
    assert summary["data_id_type"] == "mixed" and summary["n_ensembl_unmapped"] == 20
    assert summary["hint"].startswith("20 Ensembl IDs could not be mapped to symbols.")
    assert "--biomart" in summary["hint"] and "gene_name_id_dict.pkl" in summary["hint"]
    assert summary["hint"] in mixed.uns["scatd_input"]["warnings"]
    text = genes.id_mapping_text(summary)
    assert "20 of 40 are already symbols; 0 of the 20 Ensembl IDs have a symbol: 0 from the file's own columns" in text
    cov = genes.coverage_report(mixed, symbols)
    assert cov["fraction_matched"] == 0.5 and cov["status"] == "low" and cov["n_ids_unmapped"] == 20
    assert not cov["advice"].startswith("Coverage is good")
    assert "20 Ensembl IDs of the data could not be mapped to symbols" in cov["advice"]
    assert genes.coverage_warning(mixed, symbols) == cov["advice"]  # the prediction's warning says the same
    # mapped with a BioMart table: good, and counted by route
    mart = pd.DataFrame({"ensembl": ids, "symbol": symbols})
    summary = genes.annotate_gene_ids(mixed, geneformer_dict={}, biomart=mart)
    assert "hint" not in summary and not any("could not be mapped" in w for w in mixed.uns["scatd_input"]["warnings"])
    assert "20 of the 20 Ensembl IDs have a symbol: 0 from the file's own columns, 0 from the Geneformer " \
        "dictionary, 20 from a BioMart table" in genes.id_mapping_text(summary)
    assert genes.coverage_report(mixed, symbols)["status"] == "good"


def test_a_symbol_column_names_genes_whose_var_names_are_no_identifiers(tmp_path):
    """QA: var_names gene0, gene1 ... with the symbols in var['gene_symbols']: "None of the 2,932 genes ...
    Check that the data uses human gene symbols". The column is used, and said to be."""
    counts = make_counts(n_cells=30, n_genes=40, seed=7)
    bundle = _symbol_model(tmp_path, list(counts.var_names))
    expected = _probabilities(counts, bundle)
    generic = ad.AnnData(counts.X.copy(), obs=counts.obs.copy(),
                         var=pd.DataFrame({"gene_symbols": list(counts.var_names)},
                                          index=[f"gene{i}" for i in range(40)]))
    generic.write_h5ad(tmp_path / "generic.h5ad")
    read = io.read(tmp_path / "generic.h5ad")
    np.testing.assert_allclose(_probabilities(read, bundle), expected, atol=1e-6)
    sym = read.uns["scatd_input"]["gene_ids"]["symbol"]
    assert sym["symbol_column"] == "gene_symbols" and sym["n_file_columns"] == 40
    assert "gene symbols taken from var['gene_symbols'] for 40 of 40 genes" in \
        genes.id_mapping_text(read.uns["scatd_input"]["gene_ids"])
    cov = genes.coverage_report(read, bundle.genes)
    assert cov["status"] == "good" and "(gene symbols taken from var['gene_symbols'])" in cov["advice"]
    assert genes.mito_mask(read).sum() == 3  # the MT- genes, by the column's symbols
    # var_names that are symbols keep precedence over such a column
    named = counts.copy()
    named.var["gene_symbols"] = [f"OTHER{i}" for i in range(40)]
    assert "symbol_column" not in genes.map_gene_ids(named, "symbol").summary()


def test_cli_names_biomart_and_says_the_mapping_counts(tmp_path, capsys):
    """QA: the command line's Ensembl hints said "(Data page)", and a mapping made with --biomart printed
    nothing while the Data page counted it: both say the same, naming --biomart."""
    from scatd_core.cli import main

    counts = make_counts(n_cells=30, n_genes=40, seed=8)
    bundle = _symbol_model(tmp_path, list(counts.var_names))
    only = ad.AnnData(counts.X.copy(), obs=counts.obs.copy(), var=pd.DataFrame(index=list(counts.var["gene_ids"])))
    only.write_h5ad(tmp_path / "ensembl_only.h5ad")
    (tmp_path / "mart.csv").write_text("Gene stable ID,Gene name\n" + "".join(
        f"{e},{s}\n" for e, s in zip(counts.var["gene_ids"], counts.var_names)))
    common = ["predict", "--model", str(bundle.path), "--input", str(tmp_path / "ensembl_only.h5ad")]
    assert main(common + ["--output", str(tmp_path / "a.csv")]) == 3  # read, but too few of the model's genes: exit 3 (README)
    err = capsys.readouterr().err
    assert "on the command line --biomart FILE" in err and "BioMart table on the Data page" not in err
    assert main(common + ["--biomart", str(tmp_path / "mart.csv"), "--output", str(tmp_path / "b.csv")]) == 0
    assert ("Gene identifiers: The genes are Ensembl IDs; the drug models use gene symbols. 40 of 40 (100.0%) have "
            "a symbol: 0 from the file's own columns, 0 from the Geneformer dictionary, 40 from a BioMart table."
            ) in capsys.readouterr().err


def test_doctor_says_how_ensembl_ids_get_their_symbols(monkeypatch, tmp_path):
    from scatd_core.doctor import diagnose

    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(tmp_path))
    item, = diagnose()["sections"]["gene identifiers"]
    assert item["status"] == "warning" and "gene_name_id_dict.pkl" in item["detail"] and "--biomart" in item["detail"]
    with open(tmp_path / "gene_name_id_dict.pkl", "wb") as fh:
        pickle.dump({"TP53": "ENSG00000141510", "EGFR": "ENSG00000146648"}, fh)
    item, = diagnose()["sections"]["gene identifiers"]
    assert item["status"] == "ok" and "2 symbols" in item["detail"]


def test_coverage_advice_for_identifier_and_species_mismatch():
    assert "10 Ensembl IDs of the data could not be mapped to symbols" in genes.coverage_report(ENSEMBL, HUMAN)["advice"]
    assert "mouse" in genes.coverage_report(MOUSE, HUMAN)["advice"]


@needs_shared
def test_coverage_of_real_scad_file_against_scfoundation_genes():
    model = genes.read_gene_list(SHARED_DATA / "scfoundation" / "OS_scRNA_gene_index.19264.tsv")
    adata = io.read(SHARED_DATA / "sc" / "scad_sorafenib_hnscc_z.csv")
    report = genes.coverage_report(adata, model)
    assert report["n_model_genes"] == 19264 and report["low_coverage"] is True
    assert 0.1 < report["fraction_matched"] < 0.2
    assert "expression_fraction_matched" not in report  # z-scored: no share of expression


# --------------------------------------------------------------------------------------------
# Ensembl data all the way to predictions
# --------------------------------------------------------------------------------------------

def _symbol_model(tmp_path, symbols):
    """A small Dist_VAE bundle over these symbols (log1p CP10k input)."""
    import torch

    from scatd_core.bundle import save_bundle
    from scatd_core.nn import Architecture, build_model

    torch.manual_seed(0)
    arch = Architecture("dist_vae", [len(symbols), 16, 8], 6, None, 3, 2)
    return save_bundle(tmp_path / "symbol_model", build_model(arch).state_dict(), arch, drug="D", genes=list(symbols),
                       input_transform="log1p_cp10k")


def _probabilities(adata, bundle):
    from scatd_core.predict import predict

    return predict(adata, bundle, copy=True).obs["scatd_prob_resistant"].to_numpy()


def test_10x_file_with_both_identifiers_predicts_like_symbols(tmp_path):
    counts = make_counts(n_cells=30, n_genes=40, seed=3)
    bundle = _symbol_model(tmp_path, list(counts.var_names))
    expected = _probabilities(counts, bundle)
    # cellxgene-style h5ad: Ensembl IDs as var_names, the symbols in a column
    ens = counts.copy()
    ens.var["feature_name"] = list(counts.var_names)
    ens.var_names = list(counts.var["gene_ids"])
    ens.write_h5ad(tmp_path / "ensembl_names.h5ad")
    read = io.read(tmp_path / "ensembl_names.h5ad")
    mapping = read.uns["scatd_input"]["gene_ids"]
    assert mapping["data_id_type"] == "ensembl" and mapping["symbol"]["n_file_columns"] == 40
    assert list(read.var["scatd_symbol"]) == list(counts.var_names)
    np.testing.assert_allclose(_probabilities(read, bundle), expected, atol=1e-6)
    # a 10x .h5 (symbols as names, Ensembl IDs in gene_ids) gives the same
    tenx = io.read(write_10x_h5(counts, tmp_path / "x.h5"))
    assert list(tenx.var["scatd_ensembl"]) == list(counts.var["gene_ids"])
    np.testing.assert_allclose(_probabilities(tenx, bundle), expected, atol=1e-6)


def test_ensembl_only_file_says_what_to_do_and_maps_with_biomart(tmp_path, capsys):
    from scatd_core.errors import InputError

    counts = make_counts(n_cells=30, n_genes=40, seed=4)
    bundle = _symbol_model(tmp_path, list(counts.var_names))
    expected = _probabilities(counts, bundle)
    only = ad.AnnData(counts.X.copy(), obs=counts.obs.copy(), var=pd.DataFrame(index=list(counts.var["gene_ids"])))
    only.write_h5ad(tmp_path / "ensembl_only.h5ad")
    read = io.read(tmp_path / "ensembl_only.h5ad")
    assert "BioMart" in read.uns["scatd_input"]["gene_ids"]["hint"]
    assert any("BioMart" in w for w in read.uns["scatd_input"]["warnings"])
    with pytest.raises(InputError, match="Ensembl IDs") as err:
        _probabilities(read, bundle)
    assert "BioMart" in err.value.hint
    mart = "Gene stable ID version,Gene name\n" + "".join(
        f"{e}.3,{s}\n" for e, s in zip(counts.var["gene_ids"], counts.var_names))
    summary = genes.annotate_gene_ids(read, biomart=genes.read_biomart_table(mart.encode(), name="mart.csv"))
    assert summary["symbol"]["n_biomart"] == 40 and "hint" not in summary
    assert not any("BioMart" in w for w in read.uns["scatd_input"]["warnings"])  # the warning goes with the cause
    cov = genes.coverage_report(read, bundle.genes)
    assert cov["fraction_matched"] == 1.0 and cov["data_id_type"] == "ensembl" and cov["fraction_ids_mapped"] == 1.0
    np.testing.assert_allclose(_probabilities(read, bundle), expected, atol=1e-6)
    # a model whose genes the data lacks: mapped identifiers are not blamed for the low coverage
    other = genes.coverage_report(read, [f"OTHER{i}" for i in range(30)] + list(bundle.genes[:3]))
    assert other["low_coverage"] and "identifiers are not the cause" in other["advice"]
    assert "map them" not in other["advice"]
    # the command line: the warning once without the table, not at all with it
    from scatd_core.cli import main

    (tmp_path / "mart.csv").write_text(mart)
    common = ["predict", "--model", str(bundle.path), "--input", str(tmp_path / "ensembl_only.h5ad")]
    assert main(common + ["--output", str(tmp_path / "a.csv")]) == 3  # nothing matches without symbols: read, not scorable (exit 3)
    assert capsys.readouterr().err.count("Give a BioMart table") == 1
    assert main(common + ["--biomart", str(tmp_path / "mart.csv"), "--output", str(tmp_path / "b.csv")]) == 0
    assert "Give a BioMart table" not in capsys.readouterr().err
    unmapped = io.read(tmp_path / "ensembl_only.h5ad")
    assert "40 Ensembl IDs of the data could not be mapped to symbols" in genes.coverage_report(
        unmapped, [f"OTHER{i}" for i in range(30)] + list(bundle.genes[:3]))["advice"]


@needs_shared
def test_configured_geneformer_dictionary_maps_ensembl_only_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(SHARED_DATA / "geneformer"))
    symbols = ["TP53", "EGFR", "GAPDH", "ACTB", "MYC", "KRAS", "PTEN", "BRCA1", "CDK4", "ERBB2"]
    ids = genes.map_gene_ids(symbols, "ensembl", geneformer_dict=SHARED_DATA / "geneformer" /
                             "gene_name_id_dict.pkl").names
    adata = ad.AnnData(np.ones((3, 10), dtype=np.float32), var=pd.DataFrame(index=ids))
    adata.write_h5ad(tmp_path / "e.h5ad")
    read = io.read(tmp_path / "e.h5ad")
    assert read.uns["scatd_input"]["gene_ids"]["symbol"]["n_geneformer_dict"] == 10
    assert list(read.var["scatd_symbol"]) == symbols


def test_an_unreadable_server_dictionary_is_a_warning_not_a_failed_read(tmp_path, monkeypatch):
    """A Geneformer folder cloned without Git LFS (or holding a pickle with code) must not stop every
    upload: the optional identifier route is skipped with a warning, and a fixed file is read at once."""
    import pickle

    folder = tmp_path / "geneformer"
    folder.mkdir()
    monkeypatch.setenv("SCATD_GENEFORMER_DIR", str(folder))
    names = folder / "gene_name_id_dict.pkl"
    names.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1117117\n")
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32), var=pd.DataFrame(index=["ENSG00000141510", "TP53"]))
    adata.write_h5ad(tmp_path / "d.h5ad")
    read = io.read(tmp_path / "d.h5ad")
    warned = [w for w in read.uns["scatd_input"]["warnings"] if "Geneformer gene dictionary" in w]
    assert len(warned) == 1 and "Git LFS pointer" in warned[0] and "scatd doctor" in warned[0]
    with pytest.raises(InputError, match="Git LFS pointer"):  # given on purpose, it is still an error
        genes.load_pickled_dict(names)

    names.write_bytes(pickle.dumps({"TP53": "ENSG00000141510"}))  # fixed: no restart needed
    read = io.read(tmp_path / "d.h5ad")
    assert not [w for w in read.uns["scatd_input"].get("warnings", []) if "Geneformer gene dictionary" in w]
    assert list(read.var["scatd_symbol"]) == ["TP53", "TP53"]


def test_the_coverage_cause_names_the_kinds_of_identifier_as_a_biologist_writes_them():
    """QA: "The data's ensembl identifiers were mapped to the model's": Ensembl is a name (upper case),
    and "the model symbol" is no kind of identifier a reader knows."""
    ids = [f"ENSG{i:011d}" for i in range(1, 41)]
    data = _adata(ids, gene_symbols=[f"SYM{i}" for i in range(1, 41)])
    genes.annotate_gene_ids(data, geneformer_dict={})
    model = [f"SYM{i}" for i in range(1, 4)] + [f"OTHER{i}" for i in range(200)]  # 3 of 203 in the data
    report = genes.coverage_report(data, model)
    assert report["status"] == "refused" and report["fraction_ids_mapped"] == 1.0
    assert "The data's Ensembl IDs were mapped to the model's gene symbols (100.0% of them)" in report["advice"]
    assert "ensembl" not in report["advice"]
    # unmapped identifiers of the other kind: the two kinds said in words, not the codes
    cause = genes._coverage_cause({"data_id_type": "ensembl", "model_id_type": "symbol", "n_ids_unmapped": 0})
    assert cause.startswith("The data uses Ensembl IDs and the model gene symbols: map them")


def test_a_dictionary_the_account_may_not_read_is_said_so_not_called_a_bad_pickle(tmp_path, monkeypatch):
    """QA: a gene dictionary with the wrong permissions was called "not a plain-data pickled
    dictionary ([Errno 13] Permission denied)", as if the file were damaged; it is said as a
    permission to fix, with the command. (Simulated: the tests may run as root, who reads anything.)"""
    import os
    import pickle

    path = tmp_path / "gene_name_id_dict.pkl"
    path.write_bytes(pickle.dumps({"TP53": "ENSG00000141510"}))
    real = os.open

    def denied(file, flags, *a, **k):
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(file, flags, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(InputError) as err:
        genes.load_pickled_dict(path)
    assert "is not allowed to read it" in err.value.message and "not a plain-data" not in err.value.message
    assert f"chmod a+r {path}" in err.value.hint
    monkeypatch.setattr(os, "open", real)
    assert genes.load_pickled_dict(path) == {"TP53": "ENSG00000141510"}
