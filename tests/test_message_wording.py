"""Messages found wrong by a QA pass of bad inputs: each says what is there, in the words of where
it is read (the CLI's flags on the command line, the app's pages and widgets in the app), and no
library's raw text."""

from __future__ import annotations

import argparse
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import original_scatd as orig
from conftest import SMALL
from scatd_core import genes, io
from scatd_core.errors import CheckpointError, ScatdError


def _error(call) -> ScatdError:
    with pytest.raises(ScatdError) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------- 1: the app's words, not the CLI's

def _vae_sf_checkpoint():
    enc, z, _ = SMALL["vae_sf"]
    return orig.dal_checkpoint("vae_sf", enc, z, seed=2)


def test_a_checkpoint_of_another_backbone_says_the_flag_in_the_cli_and_the_form_in_the_app():
    from scatd_core.nn.state import infer_architecture

    err = _error(lambda: infer_architecture(_vae_sf_checkpoint(), "dist_vae"))
    assert isinstance(err, CheckpointError) and "This is a vae_sf checkpoint" in err.message
    assert err.hint == "Import it with --backbone vae_sf."
    assert err.app_hint and "--" not in err.app_hint
    assert "Choose Backbone: VAE_sf (scATD-sf) on the import form" in err.app_hint


def test_a_checkpoint_of_wrong_shapes_says_the_form_in_the_app():
    from scatd_core.nn.models import build_model
    from scatd_core.nn.state import check_state_dict, infer_architecture

    sd = _vae_sf_checkpoint()
    model = build_model(infer_architecture(sd, "vae_sf"))
    sd["fc21.bias"] = torch.zeros(sd["fc21.bias"].shape[0] + 1)
    err = _error(lambda: check_state_dict(model, sd))
    assert "wrong shapes: fc21.bias" in err.message and "--backbone" in err.hint
    assert err.app_hint and "--" not in err.app_hint and "Backbone chosen on the import form" in err.app_hint


def test_the_form_titles_are_the_librarys():
    from scatd_core.bundle import BACKBONE_TITLES
    from scatd_core.nn.state import _FORM_TITLES

    assert _FORM_TITLES == BACKBONE_TITLES


# --------------------------------------------------------------------------- 2: the CLI's words, not the app's

def test_an_empty_file_says_upload_again_in_the_app_only(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "blank.csv").write_text("\n  \n\n")
    for name, said in (("empty.csv", "is empty (0 bytes)"), ("blank.csv", "holds no text")):
        err = _error(lambda: io.read(tmp_path / name))
        assert said in err.message
        assert "upload" not in err.hint.lower() and "Upload" in err.app_hint, (name, err.hint)


def test_scfoundation_names_the_biomart_option_in_the_cli_and_the_data_page_in_the_app():
    from scatd_core.foundation.scfoundation import prepare

    adata = ad.AnnData(np.ones((3, 2), np.float32), var=pd.DataFrame(index=["ENSG00000141510", "ENSG00000146648"]))
    err = _error(lambda: prepare(adata, ["TP53", "EGFR", "MYC"]))
    assert "--biomart" in err.hint and "Data page" not in err.hint
    assert "Data page" in err.app_hint


@pytest.mark.parametrize("case", ["train_labels", "few_shot_column", "label_column", "mask", "target_mask"])
def test_the_columns_offered_leave_out_the_tools_own(case):
    """`scatd train --target-labels nosuch` listed obs['scatd_all_zero'] (written by the reader)
    among the columns to choose; a mask may still be the app's QC filter, scatd_qc_pass."""
    from scatd_core.cli._common import cell_mask, check_columns
    from scatd_core.cli._train_args import few_shot_of_column
    from scatd_core.train._data import target_mask_of
    from scatd_core.train._run import _target_truth

    adata = ad.AnnData(np.ones((4, 2), np.float32))
    adata.obs["response"] = ["a", "b", "a", "b"]
    adata.obs["scatd_all_zero"] = False
    adata.obs["scatd_qc_pass"] = True
    args = argparse.Namespace(few_shot_column="nosuch", few_shot_resistant=None, target_labels=None,
                              label_column="nosuch", sample_column=None, mask="nosuch")
    call = {"train_labels": lambda: _target_truth(adata, "nosuch", None, None),
            "few_shot_column": lambda: few_shot_of_column(adata, args),
            "label_column": lambda: check_columns(adata, args),
            "mask": lambda: cell_mask(adata, args),
            "target_mask": lambda: target_mask_of(adata, "nosuch")}[case]
    err = _error(call)
    assert "response" in err.hint and "scatd_all_zero" not in err.hint, err.hint
    assert ("scatd_qc_pass" in err.hint) == (case in ("mask", "target_mask")), err.hint
    if case in ("train_labels", "few_shot_column"):  # a target of no columns of its own: how to add them
        del adata.obs["response"]
        assert "add them from a cell metadata table with --obs" in _error(call).hint


# --------------------------------------------------------------------------- 3: what is there, said accurately

@pytest.mark.parametrize("values, found, advice, not_said", [
    (("inf", "-inf"), "holds 2 infinite values", "Infinite values come from a calculation", "missing"),
    (("nan", "3"), "holds 1 missing (NaN) value", "Replace the missing values with 0", "infinite"),
    (("nan", "inf"), "holds 1 missing (NaN) and 1 infinite values", "Replace the missing values with 0", None),
])
def test_non_finite_values_are_named_by_what_they_are(tmp_path, values, found, advice, not_said):
    (tmp_path / "bad.csv").write_text(f"cell,TP53,EGFR\nc1,1,2\nc2,{values[0]},{values[1]}\nc3,0,1\n")
    err = _error(lambda: io.read(tmp_path / "bad.csv"))
    assert found in err.message and "first in cell 'c2'" in err.message, err.message
    assert advice in err.hint
    if not_said:
        assert not_said not in (err.message + err.hint).lower().replace("(nan)", ""), err
    if "inf" in values:
        assert "Infinite values come from a calculation" in err.hint


def test_bulk_rows_are_samples_in_the_messages(tmp_path):
    from scatd_core.train._data import read_if_path

    (tmp_path / "bulk.csv").write_text("line,TP53,EGFR\nLINE1,1,2\nLINE2,nan,3\nLINE3,0,1\n")
    err = _error(lambda: read_if_path(tmp_path / "bulk.csv", "bulk"))
    # QA: a bulk row was called a cell, and log-TPM told to fill its gaps with 0 ("not expressed")
    assert "first in cell line 'LINE2'" in err.message and "affected cell lines" in err.hint, err
    assert "with 0" not in err.hint and "your own tool" in err.hint, err.hint
    err = _error(lambda: io.read(tmp_path / "bulk.csv"))  # single cells: cells
    assert "first in cell 'LINE2'" in err.message


def test_the_bulk_datas_orientation_reason_speaks_of_cell_lines(tmp_path):
    """QA: the labels-vs-bulk no-match message said the bulk rows "hold cell names (sequencing-run accessions,
    plate wells or cell-line IDs)"; for bulk data they are cell-line IDs."""
    from scatd_core._keys import INPUT_REPORT

    (tmp_path / "bulk.csv").write_text("line,TP53,EGFR,KRAS\nACH-000828,1,2,3\nACH-000568,4,3,1\nACH-000001,0,1,2\n")
    reason = io.read(tmp_path / "bulk.csv", samples=True).uns[INPUT_REPORT]["orientation_reason"]
    assert reason == ("the rows hold cell-line IDs (DepMap IDs such as ACH-000828, Cellosaurus accessions) or "
                      "sequencing-run accessions"), reason
    cells = io.read(tmp_path / "bulk.csv").uns[INPUT_REPORT]["orientation_reason"]
    assert "sequencing-run accessions, plate wells or cell-line IDs" in cells


@pytest.mark.parametrize("table, said", [
    ("cell\tTP53\tEGFR\nc1\t1,000\t2\nc2\t3\t12,500\nc3\t0\t1\n", "thousands separators (e.g. 1,000)"),
    ('cell,TP53,EGFR\nc1,"1,000","2,500.5"\nc2,"3,000","1,250"\n', "thousands separators (e.g. 1,000)"),
    ("cell\tTP53\tEGFR\nc1\t0,5\t2\nc2\t3\t1,25\nc3\t0\t1\n", "decimal commas (e.g. 0,5)"),
    ("cell\tTP53\tEGFR\nc1\t0,125\t2\nc2\t3\t1,250\nc3\t0\t1\n", "decimal commas (e.g. 0,5)"),  # 0,125: no grouping
])
def test_thousands_separators_are_not_called_decimal_commas(tmp_path, table, said):
    (tmp_path / "t.tsv").write_text(table)
    err = _error(lambda: io.read(tmp_path / "t.tsv"))
    assert said in err.hint, err


@pytest.mark.parametrize("damage", ["cut", "header"])
def test_a_truncated_npy_says_so(tmp_path, damage):
    np.save(tmp_path / "ok.npy", np.ones((10, 4), np.float32))
    raw = (tmp_path / "ok.npy").read_bytes()
    raw = raw[:-20] if damage == "cut" else raw.replace(b"(10, 4)", b"(9999, 4)")  # declares more than it holds
    (tmp_path / "bad.npy").write_bytes(raw)
    err = _error(lambda: io.read(tmp_path / "bad.npy"))
    assert "is truncated or damaged: its header declares a" in err.message and "mmap" not in err.message, err
    assert "object arrays" not in err.hint and "numpy.save" in err.hint


def test_a_biomart_table_that_is_no_text_table_says_what_it_is(tmp_path):
    with zipfile.ZipFile(tmp_path / "mart.zip", "w") as zf:
        zf.writestr("mart_export.txt", "Gene stable ID\tGene name\nENSG00000141510\tTP53\n")
    err = _error(lambda: genes.read_biomart_table(tmp_path / "mart.zip"))
    assert "mart.zip is a zip archive, not a text table" in err.message and "columns found" not in err.message
    err = _error(lambda: genes.read_biomart_table(bytes(range(256)) * 8, name="mart.bin"))
    assert "mart.bin is binary, not a text table" in err.message
    text = "Gene stable ID\tGene name\r\nENSG00000141510\tTP53\r\n".encode("utf-16")  # Excel's "Unicode text"
    assert genes.read_biomart_table(text, name="mart.txt")["symbol"].tolist() == ["TP53"]


def test_a_safetensors_file_named_pth_is_recognised(tmp_path):
    from safetensors.torch import save_file

    from scatd_core._torchfile import SAFETENSORS_IMPORT_HINT, safetensors_problem
    from scatd_core.foundation._assets import torch_load_tensors

    save_file({"Encoder_resblocks.0.fc.weight": torch.zeros(3, 4)}, str(tmp_path / "weights.pth"))
    err = _error(lambda: torch_load_tensors(tmp_path / "weights.pth", "Geneformer weights",
                                            "Name it model.safetensors."))
    assert "weights.pth is a safetensors file (1 tensors)" in err.message and "neither" not in err.message
    assert err.hint == "Name it model.safetensors."
    problem = safetensors_problem(tmp_path / "weights.pth", "weights.pth", SAFETENSORS_IMPORT_HINT)
    assert problem is not None and "load_file" in problem.hint
    torch.save({"a": torch.zeros(2)}, tmp_path / "real.pth")
    assert safetensors_problem(tmp_path / "real.pth", "real.pth", "") is None


# --------------------------------------------------------------------------- 4: no library's raw text

def _h5ad(path, n_cells=60, n_genes=200):
    x = sp.random(n_cells, n_genes, density=0.1, format="csr", random_state=0, dtype=np.float32)
    ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
               var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])).write_h5ad(path)


@pytest.mark.parametrize("backed", [False, True])
def test_an_h5ad_whose_x_and_obs_disagree_says_so(tmp_path, backed):
    _h5ad(tmp_path / "x.h5ad")
    with h5py.File(tmp_path / "x.h5ad", "r+") as f:
        f["X"].attrs["shape"] = np.array([50_000, 200])
    err = _error(lambda: io.read(tmp_path / "x.h5ad", backed=backed))
    assert "x.h5ad: X declares 50,000 rows (cells) but obs has 60." in err.message, err
    assert "ValueError" not in err.message


@pytest.mark.parametrize("backed", [False, True])
def test_an_h5ad_whose_sparse_indices_go_past_its_genes_says_it_is_damaged(tmp_path, backed):
    _h5ad(tmp_path / "x.h5ad", n_genes=2000)
    with h5py.File(tmp_path / "x.h5ad", "r+") as f:
        indices = f["X/indices"][:]
        indices[5] = 2500
        f["X/indices"][:] = indices
    err = _error(lambda: io.read(tmp_path / "x.h5ad", backed=backed))
    assert "x.h5ad: X's column indices go past its 2,000 genes: the file is damaged." in err.message, err
    assert "must be <" not in err.message


# --------------------------------------------------------------------------- 5: a spreadsheet

@pytest.mark.parametrize("name", ["table.xlsx", "table.XLS", "table.ods"])
def test_a_spreadsheet_is_named_with_the_export_to_use(tmp_path, name):
    with zipfile.ZipFile(tmp_path / name, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
    for call in (lambda: io.read(tmp_path / name), lambda: io.read_bytes((tmp_path / name).read_bytes(), name)):
        err = _error(call)
        assert "spreadsheets are not read" in err.message and "not supported" not in err.message, err
        assert "CSV UTF-8" in err.hint and "give that file" in err.hint and "upload that file" in err.app_hint
