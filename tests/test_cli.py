"""`scatd import-checkpoint`, `scatd predict`, `scatd models`: round trips and error paths."""

from __future__ import annotations

import json
import re
import subprocess
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import original_scatd as orig
from conftest import SMALL, small_gene_names
from scatd_core._output import REPORT_FILES
from scatd_core.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def dist_setup(tmp_path):
    enc, z, _ = SMALL["dist_vae"]
    sd = orig.dal_checkpoint("dist_vae", enc, z, seed=3)
    torch.save(sd, tmp_path / "dal.pth")
    genes = small_gene_names(enc[0])
    (tmp_path / "genes.tsv").write_text("gene_name\tindex\n" + "".join(f"{g}\t{i}\n" for i, g in enumerate(genes)))
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(15, enc[0])).astype(np.float32)
    cells = [f"c{i}" for i in range(15)]
    return tmp_path, sd, enc, z, genes, x, cells


def test_import_then_predict_csv_and_h5ad_agree_with_original(capsys, dist_setup):
    tmp, sd, enc, z, genes, x, cells = dist_setup
    code, out, _ = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Docetaxel",
                        "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    assert code == 0 and "Imported classifier" in out
    import getpass  # who imported it, as the app and `scatd train` record it

    prov = json.loads((tmp / "bundle" / "manifest.json").read_text())["provenance"]
    assert prov["imported_by"] == getpass.getuser() and prov["via"] == "command line"  # the server's account
    # CSV with shuffled columns, 3 model genes missing, 2 extra genes
    order = np.random.default_rng(1).permutation(enc[0])[3:]
    df = pd.DataFrame(x[:, order], index=cells, columns=[genes[j] for j in order])
    df["EXTRA1"], df["EXTRA2"] = 1.0, 2.0
    df.index.name = "cell"
    df.to_csv(tmp / "cells.csv")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.csv",
                        "--output", tmp / "pred.csv")
    assert code == 0, err
    assert f"{enc[0] - 3:,} of {enc[0]:,} model genes present" in err and "2 extra genes ignored" in err
    assert re.search(rf"Estimated time: about [\d,]+ s for {len(cells):,} cells on CPU", err)  # before predicting
    assert err.index("Estimated time") < err.index("Threshold")
    table = pd.read_csv(tmp / "pred.csv")
    assert list(table["cell_id"]) == cells
    model_in = np.zeros_like(x)
    model_in[:, order] = x[:, order]
    expected = orig.original_inference_prob("dist_vae", enc, z, sd, model_in)
    assert np.abs(table["prob_resistant"].to_numpy() - expected).max() < 1e-5
    # the same cells as h5ad give identical results
    ad.AnnData(x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")
    code, _, _ = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                      "--output", tmp / "pred2.csv", "--h5ad", tmp / "annotated.h5ad")
    full = orig.original_inference_prob("dist_vae", enc, z, sd, x)
    assert np.abs(pd.read_csv(tmp / "pred2.csv")["prob_resistant"].to_numpy() - full).max() < 1e-5
    annotated = ad.read_h5ad(tmp / "annotated.h5ad")
    assert annotated.uns["scatd"]["model"]["drug"] == "Docetaxel" and "X_scatd" in annotated.obsm


def test_the_low_coverage_warning_is_said_in_the_command_lines_words(capsys, dist_setup):
    """QA: `scatd predict` warned 'upload the full gene matrix': a file is given on the command line
    (--input), not uploaded. The warning gives the command line's advice; the app keeps its own."""
    tmp, sd, enc, z, genes, x, cells = dist_setup
    code, _, _ = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Docetaxel",
                      "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    assert code == 0
    keep = len(genes) * 2 // 5  # 40 %: low coverage, above the refusal's minimum
    pd.DataFrame(x[:, :keep], index=pd.Index(cells, name="cell"), columns=genes[:keep]).to_csv(tmp / "few.csv")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "few.csv",
                        "--output", tmp / "few_pred.csv")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning:" in line and "of the model's genes are in the data" in line]
    assert warned and "give the full gene matrix" in warned[0] and "upload" not in warned[0], err
    noted = [line for line in err.splitlines() if line.startswith("note:") and "log1p(CP10k)" in line]
    assert noted and "give log1p(CP10k) values instead" in noted[0] and "upload" not in noted[0], err
    code, out, _ = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "few.csv",
                        "--output", tmp / "few_pred2.csv", "--json", tmp / "summary.json")
    said = (tmp / "summary.json").read_text()  # the --json summary says it in the same words
    assert code == 0 and "give the full gene matrix" in said and "upload the full gene matrix" not in said, said
    assert json.loads(said)["argv"][:2] == ["predict", "--model"]  # this command's arguments (not pytest's)
    # --json - was written as a file called '-' in the working folder: refused like --output -
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "few.csv",
                        "--output", tmp / "few_pred3.csv", "--json", "-")
    assert code == 2 and "--json -: writing the summary to standard output ('-') is not supported" in err
    assert not Path("-").exists() and not (tmp / "few_pred3.csv").exists()


def test_predict_sample_mode_writes_sd(capsys, dist_setup):
    tmp, sd, enc, z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    ad.AnnData(x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")
    code, _, _ = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--output",
                      tmp / "p.csv", "--mode", "sample", "--samples", "10", "--seed", "4", "--device", "cpu",
                      "--batch-size", "4")
    table = pd.read_csv(tmp / "p.csv")
    assert code == 0 and "prob_resistant_sd" in table and len(table) == 15


def test_predict_says_how_many_cells_a_table_over_the_cell_limit_has(capsys, dist_setup, monkeypatch):
    """QA: with limits.max_cells = 5,000 a 6,000-cell CSV 'has 5,001 cells' (the reader stopped counting)."""
    tmp, *_ = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    (tmp / "many.csv").write_text("cell,ENSG1,ENSG2\n" + "".join(f"c{i},1,{i % 5}\n" for i in range(120)))
    monkeypatch.setenv("SCATD_MAX_CELLS", "100")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "many.csv", "--output",
                        tmp / "o.csv")
    assert code == 2 and "many.csv has 120 cells, over the limit of 100." in err, err
    assert "SCATD_MAX_CELLS" in err and not (tmp / "o.csv").exists()


def test_predict_npy_embeddings_for_vae_sf(capsys, tmp_path):
    enc, z, _ = SMALL["vae_sf"]
    sd = orig.dal_checkpoint("vae_sf", enc, z, seed=4)
    torch.save(sd, tmp_path / "sf.pth")
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(25, enc[0]))
    np.save(tmp_path / "bulk.npy", ref)
    emb = rng.normal(size=(30, enc[0])).astype(np.float32)
    np.save(tmp_path / "cells.npy", emb)
    code, _, _ = _run(capsys, "import-checkpoint", tmp_path / "sf.pth", "--backbone", "vae_sf", "--drug", "D",
                      "--style-reference", tmp_path / "bulk.npy", "--out", tmp_path / "b")
    assert code == 0
    code, _, err = _run(capsys, "predict", "--model", tmp_path / "b", "--input", tmp_path / "cells.npy",
                        "--output", tmp_path / "p.csv")
    assert code == 0 and "depend on the composition" in err
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table["cell_id"].astype(str)) == [str(i) for i in range(30)]
    xin = ref.std(0) * (emb - emb.mean(0)) / (emb.std(0) + 1e-8) + ref.mean(0)
    assert np.abs(table["prob_resistant"].to_numpy() - orig.original_inference_prob("vae_sf", enc, z, sd, xin)).max() < 1e-5
    # embeddings of another size (e.g. Geneformer's for a VAE_sf model) are not taken for expression to embed
    np.save(tmp_path / "other.npy", rng.normal(size=(30, enc[0] + 7)).astype(np.float32))
    code, _, err = _run(capsys, "predict", "--model", tmp_path / "b", "--input", tmp_path / "other.npy",
                        "--output", tmp_path / "q.csv")
    assert code == 2 and "scFoundation weights" not in err and f"{enc[0] + 7}" in err, err
    assert f"takes {enc[0]}-d scFoundation" in err and "--input" in err and "embed_cells" not in err


def test_predict_npy_with_a_cell_not_embedded_keeps_its_row_unscored(capsys, tmp_path):
    enc, z, _ = SMALL["vae_sf"]
    torch.save(orig.dal_checkpoint("vae_sf", enc, z, seed=4), tmp_path / "sf.pth")
    rng = np.random.default_rng(2)
    np.save(tmp_path / "bulk.npy", rng.normal(size=(25, enc[0])))
    _run(capsys, "import-checkpoint", tmp_path / "sf.pth", "--backbone", "vae_sf", "--drug", "D",
         "--style-reference", tmp_path / "bulk.npy", "--out", tmp_path / "b")
    emb = rng.normal(size=(30, enc[0])).astype(np.float32)
    emb[7] = np.nan  # a row embed_cells leaves NaN: not a fake all-zero cell to score
    np.save(tmp_path / "own.npy", emb)
    code, _, err = _run(capsys, "predict", "--model", tmp_path / "b", "--input", tmp_path / "own.npy",
                        "--output", tmp_path / "p.csv")
    assert code == 0, err
    assert "1 cell was not scored: no embedding" in err
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 30 and not table["scored"][7] and table["label"][7] == "not scored"
    assert table["scored"].sum() == 29


@pytest.mark.parametrize("make,backbone,match", [
    (lambda p: p.write_text("not a checkpoint"), "dist_vae", "not a readable PyTorch checkpoint"),
    (lambda p: p.write_bytes(b""), "dist_vae", "is empty"),
    (lambda p: torch.save(orig.dal_checkpoint("vae_gf", *SMALL["vae_gf"][:2]), p), "dist_vae",
     "This is a vae_gf checkpoint"),
    (lambda p: torch.save({"a": torch.zeros(2)}, p), "vae_sf", "no scATD encoder"),
])
def test_import_errors_are_one_line_and_nonzero(capsys, tmp_path, make, backbone, match):
    make(tmp_path / "x.pth")
    code, _, err = _run(capsys, "import-checkpoint", tmp_path / "x.pth", "--backbone", backbone, "--drug", "D",
                        "--out", tmp_path / "b")
    assert code == 2 and err.startswith("error: ") and match in err


def test_predict_errors(capsys, dist_setup):
    tmp, *_ = dist_setup
    code, _, err = _run(capsys, "predict", "--model", tmp / "nope", "--input", tmp / "x.csv", "--output", tmp / "o.csv")
    assert code == 2 and "No model bundle" in err and "scatd import-checkpoint" in err
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    pd.DataFrame(np.ones((3, 4)), index=["a", "b", "c"], columns=["ENSG1", "ENSG2", "ENSG3", "ENSG4"]).to_csv(tmp / "w.csv")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "w.csv", "--output", tmp / "o.csv")
    assert code == 3 and "is among the model's" in err  # read, but the model cannot score it: not a usage error
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "w.csv", "--output",
                        tmp / "o.csv", "--device", "cuda")
    if not torch.cuda.is_available():
        assert code == 2 and "no GPU" in err
    assert not (tmp / "o.csv").exists()


def test_models_refuses_a_missing_library_folder_and_stray_names(capsys, tmp_path):
    code, _, err = _run(capsys, "models", "--library", tmp_path / "nowhere")
    assert code == 2 and "No folder" in err
    code, _, err = _run(capsys, "models", "list", "foo", "--library", tmp_path)
    assert code == 2 and "models card NAME" in err


def test_models_lists_library(capsys, dist_setup, monkeypatch):
    tmp, *_ = dist_setup
    lib = tmp / "lib"
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(lib))
    code, out, _ = _run(capsys, "models")
    assert code == 0 and "No model bundles" in out and "scatd import-checkpoint" in out
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Gefitinib",
         "--genes", tmp / "genes.tsv")  # default --out: inside the library
    code, out, _ = _run(capsys, "models", "--json")
    entries = json.loads(out)
    assert code == 0 and entries[0]["drug"] == "Gefitinib" and entries[0]["backbone"] == "dist_vae"


def test_models_remove_asks_for_yes_and_removes_under_the_library_lock(capsys, dist_setup, monkeypatch):
    tmp, *_ = dist_setup
    lib = tmp / "lib"
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(lib))
    for drug in ("Gefitinib", "Cisplatin"):
        _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", drug,
             "--genes", tmp / "genes.tsv")
    (tmp / "outside").mkdir()
    for names, said in (([], "takes one model"), (["Gefitinib_dist_vae", "Cisplatin_dist_vae"], "takes one model"),
                        (["nope"], "No model 'nope'"), (["../outside"], "not a path"),
                        ([str(lib / "Gefitinib_dist_vae")], "not a path"), ([".bundle-tmp-x"], "No model")):
        code, _, err = _run(capsys, "models", "remove", *names, "--yes")
        assert code == 2 and said in err, (names, err)
    code, _, err = _run(capsys, "models", "remove", "Gefitinib_dist_vae")  # not without --yes
    assert code == 2 and "for every user" in err and "--yes" in err and "nothing was removed" in err
    assert (lib / "Gefitinib_dist_vae").is_dir()
    removed = []
    import scatd_core.bundle as bundle_module

    real = bundle_module.remove_bundle
    monkeypatch.setattr(bundle_module, "remove_bundle", lambda path: (removed.append(path), real(path)))
    code, out, _ = _run(capsys, "models", "remove", "Gefitinib_dist_vae", "--yes")
    assert code == 0 and out.startswith("Removed Gefitinib · Dist_VAE (scATD-sf-dist) (Gefitinib_dist_vae) from")
    assert removed == [lib / "Gefitinib_dist_vae"]  # the app's own removal (library lock, atomic rename)
    code, out, _ = _run(capsys, "models")
    assert "Gefitinib" not in out and "Cisplatin_dist_vae" in out
    assert [p.name for p in lib.iterdir() if p.name.startswith(".bundle")] == []


def test_console_script_runs_without_traceback(tmp_path):
    (tmp_path / "x.pth").write_text("junk")
    res = subprocess.run([sys.executable, "-m", "scatd_core.cli", "import-checkpoint", str(tmp_path / "x.pth"),
                          "--backbone", "vae_sf", "--drug", "D", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.startswith("error:")


def test_duplicated_genes_in_a_csv_are_summed_not_dropped(capsys, dist_setup):
    tmp, sd, enc, z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    half = pd.DataFrame(x / 2, index=cells, columns=genes)
    pd.concat([half, half], axis=1).to_csv(tmp / "dup.csv")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "dup.csv", "--output", tmp / "p.csv")
    assert code == 0 and f"{enc[0]:,} duplicated names summed" in err
    expected = orig.original_inference_prob("dist_vae", enc, z, sd, x)
    assert np.abs(pd.read_csv(tmp / "p.csv")["prob_resistant"].to_numpy() - expected).max() < 1e-5


def test_report_writes_every_file_with_biomarkers_and_the_label_direction(capsys, dist_setup):
    tmp, sd, enc, z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    x = np.random.default_rng(2).poisson(1.0, size=(40, enc[0])).astype(np.float32)
    obs = pd.DataFrame({"response": np.arange(40) % 2, "sample": np.where(np.arange(40) < 20, "A", "B")},
                       index=[f"c{i}" for i in range(40)])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")
    base = ["report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out", tmp / "rep",
            "--label-column", "response", "--sample-column", "sample", "--no-umap"]
    code, _, err = _run(capsys, *base)
    assert code == 2 and "Which value of 'response' means resistant?" in err and "--label-resistant" in err
    code, out, err = _run(capsys, *base, "--label-resistant", "0", "--explain", "--steps", "8",
                          "--expected-fraction", "0.25")
    assert code == 0, err
    for name in ("predictions.csv", "metrics.csv", "biomarkers.csv", "annotated.h5ad", "report.html"):
        assert (tmp / "rep" / name).is_file() and name.split(".")[0] in out
    table = pd.read_csv(tmp / "rep" / "predictions.csv")
    assert table["calibrated"].all() and (table["label"] == "resistant").mean() == pytest.approx(0.25, abs=0.03)
    assert {"response", "sample"} <= set(table.columns)
    assert len(pd.read_csv(tmp / "rep" / "biomarkers.csv")) == enc[0]
    html = (tmp / "rep" / "report.html").read_text()
    assert "Biomarkers" in html and "expected 25%" in html
    assert "In 'response', <code>0</code> means resistant and <code>1</code> sensitive." in html
    back = ad.read_h5ad(tmp / "rep" / "annotated.h5ad")
    assert back.uns["scatd_labels"]["response"]["resistant"] == "0" and "scatd_attributions" in back.obsm
    assert "Against 'response' (40 cells): AUROC" in err and "note: No baseline is" in err
    assert "taken to mean resistant" not in err  # said with --label-resistant: nothing to tell
    # the UMAP of expression, as the Cells page's "Space" offers it
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out",
                        tmp / "rep_expr", "--label-column", "response", "--label-resistant", "0",
                        "--umap-space", "expression")
    assert code == 0, err
    back = ad.read_h5ad(tmp / "rep_expr" / "annotated.h5ad")
    assert back.uns["scatd_embed"]["basis"] == "expression" and "X_umap" in back.obsm and "scatd_cluster" in back.obs
    # words: the direction is recognised, and the run says which value it took
    obs["response"] = np.where(np.arange(40) % 2 == 0, "non-responder", "responder")
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells_words.h5ad")
    words = [a if a != tmp / "cells.h5ad" else tmp / "cells_words.h5ad" for a in base]
    code, _, err = _run(capsys, *[a if a != tmp / "rep" else tmp / "rep_words" for a in words])
    assert code == 0, err
    assert ("Labels 'response': 'non-responder' taken to mean resistant, 'responder' sensitive (from the words; "
            "give --label-resistant VALUE to say otherwise).") in err
    # an annotated.h5ad carries the direction said before: used, and said where it came from
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "rep" / "annotated.h5ad",
                        "--output", tmp / "again.csv", "--label-column", "response")
    assert code == 0, err
    assert "Labels 'response': '0' taken to mean resistant, '1' sensitive (as recorded in the data's" in err
    # QA: `scatd predict` wrote the labels beside the calls and said nothing of how they agree; now it says
    # what `scatd report` says, with where the baselines are (a saved model cannot fit them on new cells)
    assert "Against 'response' (40 cells): AUROC" in err and "note: No baseline is" in err


def test_report_says_what_the_app_says(capsys, dist_setup):
    """QA, CLI against app: `scatd report` printed "AUROC 0.785, AUPRC 0.812" without the AUROC's
    interval or the AUPRC's chance level; with --mask its time estimate counted every cell; the
    HTML gave the completeness error as a fraction where the terminal gives a percentage; and
    nothing but the statement said how many cells the biomarkers explained (the app explains at
    most 2,000 by default, the CLI all)."""
    tmp, sd, enc, z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    x = np.random.default_rng(2).poisson(1.0, size=(40, enc[0])).astype(np.float32)
    obs = pd.DataFrame({"response": np.arange(40) % 2, "keep": np.arange(40) < 30}, index=[f"c{i}" for i in range(40)])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out",
                        tmp / "rep", "--label-column", "response", "--label-resistant", "0", "--mask", "keep",
                        "--no-umap", "--explain", "--steps", "8", "--max-cells", "20")
    assert code == 0, err
    assert re.search(r"Estimated time: about \d+ s for 30 cells on", err)
    assert re.search(r"Against 'response' \(30 cells\): AUROC \d\.\d{3} \(95% interval \d\.\d{3,6}-\d\.\d{3,6}, "
                     r"Hanley-McNeil\), AUPRC \d\.\d{3} \(chance 0\.500, the share resistant\)\.", err)
    html = (tmp / "rep" / "report.html").read_text()
    said = re.search(r"Completeness error: median [^\n]*", err).group(0)
    assert "%" in said and f"<p>{said}</p>" in html.replace("&lt;", "<")
    table = pd.read_csv(tmp / "rep" / "metrics.csv")
    rows = dict(zip(table["metric"], table["value"]))
    assert rows["n_cells_explained"] == "20" and rows["n_cells_scored"] == "30" and rows["subsampled"] == "True"
    assert rows["cells_explained"].startswith("a random subsample of 20 of the 30 scored cells")


def test_help_does_not_import_torch():
    res = subprocess.run([sys.executable, "-c", "import sys; from scatd_core.cli import build_parser; "
                          "build_parser().format_help(); print('torch' in sys.modules)"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "False"


def test_engine_and_explain_help_say_what_each_command_does():
    """--shard-cells said predict's default and <output>.parts/ for predict, explain and report alike, and
    --keep-top "kept in the h5ad" for scatd explain, which writes no h5ad: each command's help is its own."""
    import argparse

    from scatd_core.cli import build_parser
    from scatd_core.foundation._work import CHUNK_CELLS
    from scatd_core.predict import CPU_BATCH_SIZE
    from scatd_core.scaleout._embed import CHUNKS_PER_SHARD
    from scatd_core.scaleout._explain import EXPLAIN_SHARD_CELLS
    from scatd_core.scaleout._run import BATCHES_PER_SHARD

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {command: {a.dest: " ".join(a.help.split()) for a in sub.choices[command]._actions if a.help}
             for command in ("predict", "explain", "report", "train", "train-panel")}
    predicting = f"default {BATCHES_PER_SHARD} batches of --batch-size: {BATCHES_PER_SHARD * CPU_BATCH_SIZE:,} cells"
    embedding = f"whole chunks of {CHUNK_CELLS:,} cells (default {CHUNKS_PER_SHARD} chunks"
    shards = {command: helps[command]["shard_cells"] for command in ("predict", "explain", "report")}
    assert predicting in shards["predict"] and "<output>.parts/" in shards["predict"]
    assert f"(whole {CPU_BATCH_SIZE:,}-cell batches; default {EXPLAIN_SHARD_CELLS})" in shards["explain"]
    assert "<output>.predictions.parts/" in shards["explain"] and f"default {BATCHES_PER_SHARD} batches" in \
        shards["explain"]
    assert predicting in shards["report"] and f"(default {EXPLAIN_SHARD_CELLS})" in shards["report"]
    assert "<out>/ray/" in shards["report"] and "<output>" not in shards["report"]
    assert all(embedding in text for text in shards.values())
    assert "annotated.h5ad" in helps["report"]["keep_top"]
    assert "writes no h5ad" in helps["explain"]["keep_top"] and "--per-cell-top" in helps["explain"]["keep_top"]
    for command, fields in (("predict", ("device", "mode")), ("report", ("device", "mode")), ("explain", ("device",)),
                            ("train", ("device", "seed")), ("train-panel", ("device", "seed"))):
        assert all(field in helps[command] for field in fields), command


def test_the_device_is_said_in_plain_words():
    """"CPU (1 threads)": one thread is singular; and a --engine ray run says its parts stay only until the
    outputs are written, unless --keep-parts (it said "parts kept in X", then removed them)."""
    from argparse import Namespace

    import torch

    from scatd_core.cli.predict import parts_note
    from scatd_core.predict import device_description

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device_description(torch.device("cpu")) == "CPU (1 thread)"
        torch.set_num_threads(2)
        assert device_description(torch.device("cpu")) == "CPU (2 threads)"
    finally:
        torch.set_num_threads(threads)
    assert parts_note(Namespace(keep_parts=True), "o.csv.parts") == "parts kept in o.csv.parts"
    assert parts_note(Namespace(keep_parts=False), "o.csv.parts") == (
        "parts in o.csv.parts until every output is written; --keep-parts keeps them")


def test_train_help_defaults_are_the_training_defaults(capsys, monkeypatch):
    """train-panel --help said --pretrain-epochs default 200 while the training used 100: the help
    takes each default from TrainSettings, the values a run without the option uses."""
    import argparse
    import re

    from scatd_core.cli import build_parser
    from scatd_core.train import TrainSettings

    defaults = TrainSettings()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {command: {a.dest: " ".join(a.help.split()) for a in sub.choices[command]._actions if a.help}
             for command in ("train", "train-panel")}
    for command, fields in (("train", ("pretrain_epochs", "epochs", "finetune_epochs", "folds", "members",
                                       "head_c", "mmd_weight")),
                            ("train-panel", ("pretrain_epochs", "epochs", "finetune_epochs", "folds"))):
        for field in fields:
            said = re.search(r"default (\S+?)\)", helps[command][field])
            assert said and said.group(1) == str(getattr(defaults, field)), (command, field, helps[command][field])
    seen = {}

    def train_panel(*a, settings, **k):
        seen["settings"] = settings
        raise SystemExit(0)

    monkeypatch.setattr("scatd_core.train.train_panel", train_panel)
    with pytest.raises(SystemExit):
        main(["train-panel", "--bulk", "b.csv", "--bulk-labels", "l.csv", "--drugs", "all", "--target", "t.csv"])
    run = seen["settings"]
    assert (run.pretrain_epochs, run.epochs, run.finetune_epochs, run.folds) == (
        defaults.pretrain_epochs, defaults.epochs, defaults.finetune_epochs, defaults.folds)


def test_cli_choices_match_the_core():
    from scatd_core.cli import _common
    from scatd_core.explain import BASELINES, TARGETS
    from scatd_core.nn import BACKBONES

    assert _common.BASELINES == BASELINES and _common.TARGETS == TARGETS and _common.BACKBONES == BACKBONES


def test_models_card_prints_the_baselines_and_refuses_a_model_without_one(capsys, dist_setup, monkeypatch):
    from test_card import _card
    from test_ensemble import _ensemble

    from scatd_core.bundle import save_bundle

    tmp, *_ = dist_setup
    lib = tmp / "cardlib"
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(lib))
    model = _ensemble()
    save_bundle(lib / "carded", model.stacked_state_dict(), model.arch, drug="DRUGX",
                genes=[f"G{i}" for i in range(model.arch.input_dim)], input_transform="standardize", threshold=0.5,
                extra={"card": _card()})
    code, out, _ = _run(capsys, "models", "card", "carded")
    assert code == 0 and "This model beats gradient boosting" in out and "AUROC [95% bootstrap CI]" in out
    code, out, _ = _run(capsys, "models", "card", "carded", "--json")
    assert code == 0 and json.loads(out)["evaluations"][0]["name"] == "target"
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Gefitinib",
         "--genes", tmp / "genes.tsv", "--out", lib / "imported")
    code, out, err = _run(capsys, "models", "card", "imported")  # an imported checkpoint's short card
    assert code == 0 and "an imported checkpoint" in out and "Imported from dal.pth (sha256 " in out
    assert "Default threshold 0.05: the original scATD inference's default" in out and "latent mean" in out
    # a name given at the import heads its card, as in the library list (it said the drug and backbone only)
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Gefitinib",
         "--genes", tmp / "genes.tsv", "--name", "Lab gefitinib", "--out", lib / "named_import")
    code, out, _ = _run(capsys, "models", "card", "named_import")
    assert code == 0 and out.startswith("Model card: Lab gefitinib (named_import), an imported checkpoint"), out
    # a model with neither (a bundle written by other code) still says it has none
    import shutil

    shutil.copytree(lib / "imported", lib / "plain")
    manifest = json.loads((lib / "plain" / "manifest.json").read_text())
    manifest["provenance"]["source"] = "written elsewhere"
    (lib / "plain" / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(capsys, "models", "card", "plain")
    assert code != 0 and "has no model card" in err and "Traceback" not in err
    code, _, err = _run(capsys, "models", "card", "nothing_here")
    assert code != 0 and "No model 'nothing_here'" in err


def test_a_mistyped_sample_column_is_refused_before_predicting(capsys, dist_setup, monkeypatch):
    """--sample-column naming no obs column exits 2 listing the columns, as --label-column does
    (predict, a panel, report), before anything is computed."""
    tmp, _sd, _enc, _z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    obs = pd.DataFrame({"sample": ["A"] * 15}, index=cells)
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")

    def no_computing(*a, **k):
        raise AssertionError("computed before checking the columns")

    monkeypatch.setattr("scatd_core.predict.predict", no_computing)
    monkeypatch.setattr("scatd_core.panel.predict_panel", no_computing)
    data = ["--input", tmp / "cells.h5ad", "--sample-column", "sampel"]
    for argv in (["predict", "--model", tmp / "bundle", "--output", tmp / "o.csv"],
                 ["predict", "--model", tmp / "bundle", "--model", tmp / "bundle", "--output", tmp / "o.csv"],
                 ["report", "--model", tmp / "bundle", "--out", tmp / "rep", "--no-umap"]):
        code, _, err = _run(capsys, *argv, *data)
        assert code == 2 and "no column 'sampel' for --sample-column" in err and "Its columns: sample" in err
    assert not (tmp / "o.csv").exists() and not (tmp / "rep").exists()


@pytest.mark.parametrize("mapping,match", [
    ('{"a": 0, "b": 1}', "must name exactly the classes 'resistant' and 'sensitive'"),
    ('{"resistant": 1, "sensitive": 0, "other": 2}', "must name exactly"),
    ('{"resistant": 1, "sensitive": 1}', "to the class indices 0 and 1, one each"),
    ('{"resistant": 2, "sensitive": 0}', "0 and 1, one each"),
    ('{"resistant": true, "sensitive": 0}', "0 and 1, one each"),
    ('{"resistant": 0.7, "sensitive": 0}', "0 and 1, one each"),
    ('["resistant", "sensitive"]', "not a JSON object"),
])
def test_a_label_mapping_must_name_resistant_and_sensitive(capsys, dist_setup, mapping, match):
    """--label-mapping with other class names, repeated or other indices is refused (exit 2),
    instead of reporting some other class as prob_resistant."""
    tmp, *_ = dist_setup
    code, _, err = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
                        "--genes", tmp / "genes.tsv", "--out", tmp / "bundle", "--label-mapping", mapping)
    assert code == 2 and match in err and not (tmp / "bundle").exists()


def test_a_reversed_label_mapping_is_accepted(capsys, dist_setup):
    from scatd_core.bundle import load_bundle

    tmp, *_ = dist_setup
    code, _, err = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
                        "--genes", tmp / "genes.tsv", "--out", tmp / "bundle",
                        "--label-mapping", '{"resistant": 0, "sensitive": 1}')
    assert code == 0, err
    bundle = load_bundle(tmp / "bundle")
    assert bundle.positive_index == 0 and bundle.positive_label == "resistant"


def test_import_of_an_installed_name_says_what_works(capsys, dist_setup):
    """The hint named `scatd import-checkpoint --overwrite`, which does not exist: it says what
    does (another folder with --out; --replace, or an administrator's Replace on the app's page)."""
    tmp, *_ = dist_setup
    args = ["import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D", "--genes",
            tmp / "genes.tsv", "--library", tmp / "lib"]
    assert _run(capsys, *args)[0] == 0
    before = (tmp / "lib" / "D_dist_vae" / "manifest.json").read_bytes()
    code, _, err = _run(capsys, *args)
    assert code == 2 and "already exists" in err and "--overwrite" not in err
    assert "--out FOLDER" in err and "add --replace" in err and "'Replace a model of the same name'" in err
    assert (tmp / "lib" / "D_dist_vae" / "manifest.json").read_bytes() == before
    code, _, err = _run(capsys, *args, "--out", tmp / "elsewhere")  # what the hint says works
    assert code == 0 and (tmp / "elsewhere" / "manifest.json").is_file()
    with pytest.raises(SystemExit):  # and the option the hint named is not there
        main([str(a) for a in args] + ["--overwrite"])
    assert "unrecognized arguments: --overwrite" in capsys.readouterr().err


@pytest.fixture
def cells_and_bundle(capsys, dist_setup):
    """The small Dist_VAE bundle and an h5ad of 15 cells for it."""
    tmp, _sd, _enc, _z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    ad.AnnData(x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)).write_h5ad(tmp / "cells.h5ad")
    return tmp


def test_report_again_without_explain_removes_the_earlier_biomarkers_and_says_so(capsys, cells_and_bundle):
    tmp = cells_and_bundle
    base = ["report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out", tmp / "rep", "--no-umap"]
    code, _, err = _run(capsys, *base, "--explain", "--steps", "4")
    assert code == 0 and (tmp / "rep" / "biomarkers.csv").is_file(), err
    code, out, err = _run(capsys, *base, "--threshold", "0.9", "--overwrite")  # the earlier report replaced
    assert code == 0, err
    assert not (tmp / "rep" / "biomarkers.csv").exists() and "biomarkers" not in out
    assert "Removed the biomarkers.csv an earlier report left" in err
    code, _, err = _run(capsys, *base, "--overwrite")  # nothing left to remove: nothing said
    assert code == 0 and "Removed" not in err


def test_a_threshold_given_with_the_option_is_said_so_in_the_terminal_and_the_reports_histogram(capsys,
                                                                                                   cells_and_bundle):
    """QA: `--threshold 0.3` was printed "Threshold 0.3: user" and the report's histogram labelled it
    "model default, uncalibrated"."""
    tmp = cells_and_bundle
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--out", tmp / "rep", "--no-umap", "--threshold", "0.3")
    assert code == 0, err
    assert "Threshold 0.3: set with --threshold — UNCALIBRATED" in err and ": user" not in err
    page = (tmp / "rep" / "report.html").read_text()
    assert "threshold 0.3 (set with --threshold, uncalibrated)" in page and "model default" not in page
    assert "These calls use a threshold set with --threshold, which is <b>not calibrated</b>" in page
    assert "set by hand" not in page
    assert ad.read_h5ad(tmp / "rep" / "annotated.h5ad").uns["scatd"]["threshold"]["detail"] == "set with --threshold"


def test_report_of_too_few_cells_for_a_umap_is_written_without_it_and_says_why(capsys, cells_and_bundle):
    """QA: `scatd report` on 2-4 cells predicted, then exited 2 ("a UMAP and clusters need at least
    5 ... the downloads do not need them") and wrote nothing. Now the report is written without the
    UMAP and clusters, and the terminal, report.html and metrics.csv say why."""
    import html

    from scatd_core import export

    tmp = cells_and_bundle
    ad.read_h5ad(tmp / "cells.h5ad")[:3].copy().write_h5ad(tmp / "three.h5ad")
    code, out, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "three.h5ad",
                          "--out", tmp / "rep")
    assert code == 0, err
    said = "No UMAP or Leiden clusters: The data hold 3 cells; a UMAP and clusters need at least 5."
    assert said in err and "do not need them" in err
    for name in ("predictions.csv", "metrics.csv", "annotated.h5ad", "report.html"):
        assert (tmp / "rep" / name).is_file() and name.split(".")[0] in out
    assert len(pd.read_csv(tmp / "rep" / "predictions.csv")) == 3
    assert said in (tmp / "rep" / "report.html").read_text()
    metrics_csv = pd.read_csv(tmp / "rep" / "metrics.csv")
    row = metrics_csv[(metrics_csv["section"] == "umap") & (metrics_csv["metric"] == "not computed")]
    assert len(row) == 1 and said in row["value"].iloc[0]
    # 5 cells and more: no such note anywhere (--no-umap: the layout is not what is tested)
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--out", tmp / "rep15", "--no-umap")
    page = (tmp / "rep15" / "report.html").read_text()
    assert code == 0 and "No UMAP" not in err + page
    assert html.escape(export.UMAP_NOT_COMPUTED) in page  # QA r1: not computed, said, with how to include it
    assert "umap" not in set(pd.read_csv(tmp / "rep15" / "metrics.csv")["section"])


def test_outputs_that_would_overwrite_the_input_or_cannot_be_written_are_refused_first(
        capsys, cells_and_bundle, monkeypatch):
    """Output == input, an output that is a folder, a report --out that is a file, two options on
    one file, and a folder where nothing can be created: exit 2 before anything is computed."""
    tmp = cells_and_bundle
    before = (tmp / "cells.h5ad").read_bytes()
    (tmp / "folder").mkdir()
    (tmp / "table.csv").write_text("x\n")

    def no_computing(*a, **k):
        raise AssertionError("computed before checking the outputs")

    monkeypatch.setattr("scatd_core.predict.predict", no_computing)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    cases = [
        (["predict", *data, "--output", tmp / "cells.h5ad"], "would overwrite the input file"),
        (["predict", *data, "--output", tmp / "o.csv", "--h5ad", tmp / "folder" / ".." / "cells.h5ad"],
         "--h5ad"),
        (["predict", *data, "--output", tmp / "folder"], "is a folder, not a file"),
        (["predict", *data, "--output", tmp / "table.csv" / "o.csv"], "is a file, not a folder"),
        (["predict", *data, "--output", tmp / "o.csv", "--h5ad", tmp / "o.csv"], "name the same file"),
        (["report", *data, "--out", tmp / "table.csv", "--no-umap"], "is an existing file"),
        (["report", *data, "--out", tmp / "cells.h5ad", "--no-umap"], "would overwrite the input file"),
        (["explain", *data, "--output", tmp / "cells.h5ad"], "would overwrite the input file"),
        (["explain", *data, "--output", tmp / "folder"], "is a folder, not a file"),
        (["explain", *data, "--output", tmp / "b.csv", "--per-cell-top", "5", tmp / "cells.h5ad"],
         "--per-cell-top"),
    ]
    for argv, match in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and match in err and "unexpected" not in err, (argv, err)
    (tmp / "rep").mkdir()
    (tmp / "cells.h5ad").rename(tmp / "rep" / "annotated.h5ad")
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "rep" / "annotated.h5ad",
                        "--out", tmp / "rep")
    assert code == 2 and "would overwrite the input file" in err
    assert (tmp / "rep" / "annotated.h5ad").read_bytes() == before

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "rep" / "annotated.h5ad",
                        "--output", tmp / "o.csv")
    assert code == 2 and "cannot be written" in err and "Permission denied" in err


def test_an_os_error_while_writing_the_results_is_an_error_not_a_bug(capsys, cells_and_bundle, monkeypatch):
    """A disk that fills up (or any OSError) while the outputs are written: exit 2 naming the path
    and the reason, for predict and for the report folder."""
    import errno
    from pathlib import Path

    tmp = cells_and_bundle

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--output", tmp / "o.csv")
    assert code == 2 and f"Cannot write {tmp / 'o.csv'}: No space left on device" in err
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--out", tmp / "rep", "--no-umap")
    assert code == 2 and f"Cannot write {tmp / 'rep' / 'predictions.csv'}: No space left on device." in err


@pytest.mark.parametrize("option", ["--max-cells", "--steps"])
def test_explain_counts_below_two_are_refused_by_the_option(capsys, option):
    """`scatd explain --max-cells 1` is refused while parsing, naming the option (not max_cells)."""
    with pytest.raises(SystemExit) as caught:
        main(["explain", "--model", "m", "--input", "x.h5ad", "--output", "b.csv", option, "1"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"argument {option}: must be at least 2, got 1" in err


def test_explain_steps_above_the_maximum_are_refused_by_the_option(capsys):
    """QA: `scatd explain --steps 1000000` said "about 7 s, up to 259 MB", then crashed with a
    MemoryError of 7.28 TiB (captum's quadrature); the app capped its field at 500. The same
    maximum is refused while parsing, before anything runs (scatd report's --steps too)."""
    from scatd_core.explain import MAX_STEPS

    for command in (["explain", "--output", "b.csv"], ["report", "--out", "rep", "--explain"]):
        with pytest.raises(SystemExit) as caught:
            main([*command, "--model", "m", "--input", "x.h5ad", "--steps", "1000000"])
        err = capsys.readouterr().err
        assert caught.value.code == 2, err
        assert f"argument --steps: must be at most {MAX_STEPS:,}, got 1,000,000; the default 50 usually" in err
    assert f"integration steps (default 50; 2 to {MAX_STEPS};" in _help("explain", capsys)


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_explain_seed_below_zero_is_refused_by_the_option(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["explain", "--model", "m", "--input", "x.h5ad", "--output", "b.csv", "--explain-seed", "-1"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "argument --explain-seed: must be at least 0, got -1" in err


def test_explain_calibrates_the_groups_says_the_threshold_and_records_it(capsys, cells_and_bundle):
    tmp = cells_and_bundle
    base = ["explain", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--steps", "4"]
    code, out, err = _run(capsys, *base, "--output", tmp / "b.csv", "--expected-fraction", "0.4")
    assert code == 0, err
    said = out + err
    assert "Predicted groups: resistant where P(resistant) >" in said, said
    assert "(threshold: calls the expected 40% of the scored cells resistant; calibrated)" in said
    table = pd.read_csv(tmp / "b.csv")
    assert table["threshold_calibrated"].all() and table["threshold"].nunique() == 1
    code, out, err = _run(capsys, *base, "--output", tmp / "c.csv")  # the model's default threshold
    assert code == 0, err
    assert "not calibrated" in out + err and not pd.read_csv(tmp / "c.csv")["threshold_calibrated"].any()
    code, _, err = _run(capsys, *base, "--output", tmp / "d.csv", "--calibrate-on-labels", "youden")
    assert code == 2 and "--calibrate-on-labels needs --label-column" in err


def test_output_piped_to_a_reader_that_stops_is_not_called_a_bug(capsys, monkeypatch):
    """`scatd models card X | head` ended in "unexpected BrokenPipeError ... This is a bug"."""
    from scatd_core import cli
    from scatd_core.cli import models

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(models, "show", broken)
    code = cli.main(["models", "list"])
    assert code == 141 and "bug" not in capsys.readouterr().err


def test_obs_adds_labels_and_samples_from_a_cell_metadata_table(capsys, cells_and_bundle):
    """QA: data without cell annotations (10x output, .mtx, a table of genes x cells) had no way to get
    labels or samples on the command line. --obs FILE adds a table keyed by cell ID, says what matched,
    and --label-column / --sample-column use its columns (predict, report)."""
    tmp = cells_and_bundle
    meta = pd.DataFrame({"cell_id": [f"c{i}" for i in range(14)] + ["stranger"],
                         "response": [i % 2 for i in range(14)] + [1], "sample": ["A"] * 7 + ["B"] * 8})
    meta.to_csv(tmp / "meta.csv", index=False)
    columns = ["--label-column", "response", "--label-resistant", "1", "--sample-column", "sample"]
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--output",
                        tmp / "p.csv", "--obs", tmp / "meta.csv", "--expected-fraction", "0.3", *columns)
    assert code == 0, err
    assert ("--obs meta.csv: 14 of the data's 15 cells matched a row (cell IDs from its column 'cell_id'); added 2 "
            "columns: response, sample.") in err
    assert "      1 row of the table's 15 matches no cell of the data (e.g. 'stranger')" in err
    assert "      1 cell has no row" in err
    table = pd.read_csv(tmp / "p.csv")
    assert list(table["cell_id"]) == [f"c{i}" for i in range(15)]
    assert table["response"].iloc[:14].tolist() == [i % 2 for i in range(14)] and np.isnan(table["response"].iloc[14])
    assert table["sample"].tolist() == ["A"] * 7 + ["B"] * 7 + [np.nan] and table["calibrated"].all()
    # the known labels in words next to the numbers (QA: a 1 beside 'resistant' was read as resistant)
    assert list(table.columns)[list(table.columns).index("response") + 1] == "known_label"
    assert table["known_label"].iloc[:14].tolist() == ["resistant" if i % 2 else "sensitive" for i in range(14)]
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out",
                        tmp / "rep", "--no-umap", "--obs", tmp / "meta.csv", *columns)
    assert code == 0, err
    assert "Against 'response' (14 cells): AUROC" in err and "--obs meta.csv: 14 of the data's 15" in err
    assert ad.read_h5ad(tmp / "rep" / "annotated.h5ad").uns["scatd_cell_metadata"]["file"] == "meta.csv"
    # the report and metrics.csv say where the label and sample columns came from (QA: only the h5ad did)
    assert "meta.csv: 14 of the data&#x27;s 15 cells matched a row" in (tmp / "rep" / "report.html").read_text() or \
        "meta.csv: 14 of the data's 15 cells matched a row" in (tmp / "rep" / "report.html").read_text()
    rows = pd.read_csv(tmp / "rep" / "metrics.csv")
    evaluation = rows[rows["section"] == "evaluation"].set_index("metric")["value"]
    assert (evaluation["label_resistant"], evaluation["label_sensitive"]) == ("1", "0")
    said = rows.loc[rows["metric"] == "cell_metadata_table", "value"].iloc[0]
    assert said.startswith("meta.csv: 14 of the data's 15 cells matched a row") and "response, sample" in said
    assert evaluation["label_direction_from"].startswith("chosen")  # --label-resistant 1
    # QA: a direction recognised from the words was recorded as "chosen (Data page or --label-resistant)"
    meta.assign(response=np.where(meta["response"] == 1, "resistant", "sensitive")).to_csv(tmp / "words.csv",
                                                                                           index=False)
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out",
                        tmp / "rep2", "--no-umap", "--obs", tmp / "words.csv", "--label-column", "response")
    assert code == 0, err
    rows = pd.read_csv(tmp / "rep2" / "metrics.csv")
    evaluation = rows[rows["section"] == "evaluation"].set_index("metric")["value"]
    assert evaluation["label_direction_from"] == "recognised from the words"
    labelled = ad.read_h5ad(tmp / "rep2" / "annotated.h5ad")
    assert labelled.uns["scatd_labels"]["response"]["how"] == "recognised from the words"


def test_obs_that_matches_no_cell_or_is_an_output_is_refused_first(capsys, cells_and_bundle):
    tmp = cells_and_bundle
    pd.DataFrame({"cell_id": ["AAAC-1", "AAAG-1"], "response": [0, 1]}).to_csv(tmp / "other.csv", index=False)
    base = ["predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--obs", tmp / "other.csv"]
    code, _, err = _run(capsys, *base, "--output", tmp / "p.csv")
    assert code == 2 and "error: None of the 2 cell IDs in other.csv (its column 'cell_id', e.g. 'AAAC-1'" in err
    assert "is a cell of the data (e.g. 'c0', 'c1', 'c2')" in err and "Put the data's cell IDs" in err
    assert not (tmp / "p.csv").exists()
    code, _, err = _run(capsys, *base, "--output", tmp / "other.csv")
    assert code == 2 and "would overwrite the input file" in err
    assert pd.read_csv(tmp / "other.csv")["cell_id"].tolist() == ["AAAC-1", "AAAG-1"]


def test_explain_output_records_how_many_cells_were_explained_beside_the_ranking(capsys, cells_and_bundle):
    """QA: `scatd explain --output` said how many cells it explained only in the terminal; the files
    it wrote did not. Beside the ranking (its columns unchanged), NAME_metrics.csv records it as
    metrics.csv does (section biomarkers), with the threshold behind the groups."""
    from scatd_core.explain import RANKING_COLUMNS

    tmp = cells_and_bundle
    base = ["explain", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--steps", "4"]
    (tmp / "out").mkdir()  # an output's folder must exist
    code, _, err = _run(capsys, *base, "--output", tmp / "out" / "biomarkers.csv", "--max-cells", "10",
                        "--expected-fraction", "0.4")
    assert code == 0, err
    assert list(pd.read_csv(tmp / "out" / "biomarkers.csv").columns) == list(RANKING_COLUMNS)
    metrics = pd.read_csv(tmp / "out" / "biomarkers_metrics.csv")
    rows = dict(zip(metrics.loc[metrics["section"] == "biomarkers", "metric"],
                    metrics.loc[metrics["section"] == "biomarkers", "value"]))
    assert rows["n_cells_explained"] == "10" and rows["n_cells_scored"] == "15" and rows["subsampled"] == "True"
    assert rows["cells_explained"].startswith("a random subsample of 10 of the 15 scored cells")
    summary = dict(zip(metrics.loc[metrics["section"] == "summary", "metric"],
                       metrics.loc[metrics["section"] == "summary", "value"]))
    assert summary["threshold_source"] == "expected fraction" and summary["calibrated"] == "True"
    assert "biomarkers_metrics.csv (the run as metrics.csv records it: 10 of 15 scored cells explained" in err
    # QA: and how the ranking was made, as the h5ad and report.html say (the app's file, from the same writer)
    assert rows["method"].startswith("Integrated gradients (captum") and rows["n_steps"] == "4"
    assert (rows["explained_output"], rows["explained_output_meaning"]) == ("logit", "logit P(resistant)")
    assert (rows["baseline"], rows["baseline_meaning"], rows["seed"]) == ("mean", "mean model input of the scored cells",
                                                                          "0")
    assert {"completeness_median_relative_error", "completeness_ok"} <= set(rows)
    assert rows["threshold"] == summary["threshold"] and rows["out_of_date"] == "False"
    assert int(rows["n_explained_resistant"]) + int(rows["n_explained_sensitive"]) == 10
    # the file beside it is an output too: never an input written over
    pd.DataFrame({"cell_id": ["c0"], "x": [1]}).to_csv(tmp / "b_metrics.csv", index=False)
    code, _, err = _run(capsys, *base, "--output", tmp / "b.csv", "--obs", tmp / "b_metrics.csv")
    assert code == 2 and "--output's metrics file" in err and "would overwrite the input file" in err
    assert not (tmp / "b.csv").exists()


def test_report_and_explain_take_a_model_by_name_from_library(capsys, dist_setup, monkeypatch):
    """As predict: --library names the model library that --model's name is looked up in (a lab's
    own library, not only $SCATD_MODEL_LIBRARY); ~ in a path is the home folder."""
    tmp, sd, enc, z, genes, x, cells = dist_setup
    lib = tmp / "lablib"
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--library", lib, "--name", "labmodel")
    x = np.random.default_rng(3).poisson(1.0, size=(12, enc[0])).astype(np.float32)
    ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(12)]),
               var=pd.DataFrame(index=genes)).write_h5ad(tmp / "few.h5ad")
    code, _, err = _run(capsys, "report", "--model", "labmodel", "--library", lib, "--input", tmp / "few.h5ad",
                        "--out", tmp / "rep_lib", "--no-umap")
    assert code == 0, err
    assert (tmp / "rep_lib" / "predictions.csv").is_file()
    code, _, err = _run(capsys, "explain", "--model", "labmodel", "--library", lib, "--input", tmp / "few.h5ad",
                        "--output", tmp / "bio_lib.csv", "--steps", "4")
    assert code == 0, err
    assert (tmp / "bio_lib.csv").is_file()
    from scatd_core.bundle import load_bundle

    monkeypatch.setenv("HOME", str(tmp))
    assert load_bundle("~/lablib/labmodel").name == "labmodel"


def test_the_datas_own_umap_is_never_deleted_and_kept_aside_when_scatd_makes_its_own(capsys, dist_setup):
    """QA: `scatd predict --h5ad` deleted the data's own obsm['X_umap'] although it computes no
    UMAP, and `scatd report` replaced it with scATD's without a word. Now predict leaves it where
    it is; report keeps it as obsm['X_umap_original'] and says so (terminal, metrics.csv,
    report.html); a report made again from that annotated h5ad keeps the data's UMAP there, never
    scATD's."""
    tmp, sd, enc, z, genes, x, cells = dist_setup
    _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
         "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    x = np.random.default_rng(2).poisson(1.0, size=(40, enc[0])).astype(np.float32)
    theirs = np.random.default_rng(3).normal(size=(40, 2))
    data = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=pd.DataFrame(index=genes))
    data.obsm["X_umap"] = theirs
    data.write_h5ad(tmp / "cells.h5ad")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--output", tmp / "p.csv", "--h5ad", tmp / "p.h5ad")
    assert code == 0, err
    back = ad.read_h5ad(tmp / "p.h5ad")
    assert np.array_equal(back.obsm["X_umap"], theirs) and "X_umap_original" not in back.obsm
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad",
                        "--out", tmp / "rep")
    assert code == 0, err
    back = ad.read_h5ad(tmp / "rep" / "annotated.h5ad")
    assert np.array_equal(back.obsm["X_umap_original"], theirs)
    assert not np.allclose(back.obsm["X_umap"], theirs) and back.uns["scatd_embed"]["original_umap"] == "X_umap_original"
    assert "note: Your data's own UMAP (obsm['X_umap'] in your file) is kept, unchanged, as obsm['X_umap_original']" in err
    notes = pd.read_csv(tmp / "rep" / "metrics.csv").query("metric == 'note'")["value"]
    assert notes.str.contains("obsm['X_umap_original']", regex=False).any()
    assert "kept, unchanged, as obsm[&#x27;X_umap_original&#x27;]" in (tmp / "rep" / "report.html").read_text()
    # again from the annotated file: scATD's UMAP is replaced, the data's own stays where it was kept
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "rep" / "annotated.h5ad",
                        "--out", tmp / "rep2")
    assert code == 0, err
    again = ad.read_h5ad(tmp / "rep2" / "annotated.h5ad")
    assert np.array_equal(again.obsm["X_umap_original"], theirs) and "X_umap_original_2" not in again.obsm
    assert np.allclose(again.obsm["X_umap"], back.obsm["X_umap"], equal_nan=True)  # seeded: scATD's own again
    assert "kept, unchanged" in err


def test_predict_and_report_take_both_out_and_output(capsys):
    """QA: `scatd predict` took --output and `scatd report` --out; a biologist types either. Both
    commands take both spellings; the help lists the command's own and names the other."""
    from scatd_core.cli import build_parser

    parser = build_parser()
    given = ["--model", "M", "--input", "cells.h5ad"]
    for command, dest, listed in (("predict", "output", "--output"), ("report", "out", "--out")):
        for spelling in ("--out", "--output"):
            args = parser.parse_args([command, *given, spelling, "result"])
            assert getattr(args, dest) == "result", (command, spelling)
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        said = capsys.readouterr().out
        other = "--out" if listed == "--output" else "--output"
        assert re.search(rf"^  {listed} [A-Z]+ +", said, re.M) and f"(or {other})" in " ".join(said.split())
        assert not re.search(rf"^  {listed} [A-Z]+, {other}", said, re.M)  # one name listed


def test_an_existing_output_is_refused_before_any_work_unless_overwrite(capsys, cells_and_bundle, monkeypatch):
    """QA (data loss): predict --output, report --out, explain --output and labels-from-ic50 --out
    silently replaced an existing file. Now: refused by name before anything is read or run, the
    file as it was; --overwrite replaces it."""
    tmp = cells_and_bundle
    (tmp / "rep").mkdir()
    for path in (tmp / "o.csv", tmp / "o.h5ad", tmp / "rep" / "report.html", tmp / "b.csv", tmp / "labels.csv"):
        path.write_text("my own file\n")

    def no_reading(*a, **k):
        raise AssertionError("read the data before checking the outputs")

    monkeypatch.setattr("scatd_core.io.read", no_reading)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    gdsc = ["--ic50", tmp / "ic50.csv", "--thresholds", tmp / "thr.txt", "--drug-list", tmp / "drugs.csv"]
    cases = [(["predict", *data, "--output", tmp / "o.csv"], tmp / "o.csv"),
             (["predict", *data, "--output", tmp / "new.csv", "--h5ad", tmp / "o.h5ad"], tmp / "o.h5ad"),
             (["report", *data, "--out", tmp / "rep", "--no-umap"], tmp / "rep"),
             (["explain", *data, "--output", tmp / "b.csv"], tmp / "b.csv"),
             (["labels-from-ic50", *gdsc, "--out", tmp / "labels.csv"], tmp / "labels.csv"),
             (["train", "--backbone", "dist_vae", "--bulk", tmp / "bulk.csv", "--bulk-labels", tmp / "l.csv",
               "--drug", "D", "--target", tmp / "cells.h5ad", "--report", tmp / "b.csv"], tmp / "b.csv"),
             (["train-panel", "--bulk", tmp / "bulk.csv", "--bulk-labels", tmp / "l.csv", "--target",
               tmp / "cells.h5ad", "--drugs", "D", "--summary", tmp / "o.csv"], tmp / "o.csv")]
    for argv, named in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and f"error: {named} already" in err and "add --overwrite." in err, (argv, err)
        assert "nothing was run" in err
    assert "error: {} already holds report.html (from an earlier run); choose another folder or add --overwrite." \
        .format(tmp / "rep") in _run(capsys, "report", *data, "--out", tmp / "rep")[2]
    assert f"error: {tmp / 'o.csv'} already exists; choose another name or add --overwrite." in \
        _run(capsys, "predict", *data, "--output", tmp / "o.csv")[2]
    for path in (tmp / "o.csv", tmp / "o.h5ad", tmp / "rep" / "report.html", tmp / "b.csv", tmp / "labels.csv"):
        assert path.read_text() == "my own file\n"
    assert not (tmp / "new.csv").exists()
    monkeypatch.undo()
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "o.csv", "--overwrite")
    assert code == 0, err
    assert len(pd.read_csv(tmp / "o.csv")) == 15
    code, _, err = _run(capsys, "report", *data, "--out", tmp / "rep", "--no-umap", "--overwrite")
    assert code == 0 and "<html" in (tmp / "rep" / "report.html").read_text().lower(), err
    assert not [p.name for p in tmp.rglob("*.part")]  # no temporary file left behind


def test_an_output_in_a_folder_that_does_not_exist_is_refused_not_created(capsys, cells_and_bundle, monkeypatch):
    """QA: `scatd predict --output /nonexistent_dir/x.csv` created the mistyped folder (at / even)
    and exited 0. Now every output named by a path (a file, or the folder of report/demo/train
    --out: created itself, but only in a folder that exists) is refused, exit 2, naming the missing
    folder, before anything is read; nothing is created."""
    tmp = cells_and_bundle
    missing = tmp / "no_such_dir"

    def no_reading(*a, **k):
        raise AssertionError("read the data before checking the outputs")

    monkeypatch.setattr("scatd_core.io.read", no_reading)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    gdsc = ["--ic50", tmp / "ic50.csv", "--thresholds", tmp / "thr.txt", "--drug-list", tmp / "drugs.csv"]
    train = ["train", "--backbone", "dist_vae", "--bulk", tmp / "bulk.csv", "--bulk-labels", tmp / "l.csv",
             "--drug", "D", "--target", tmp / "cells.h5ad"]
    cases = [(["predict", *data, "--output", missing / "x.csv"], "--output", missing),
             (["predict", *data, "--output", tmp / "x.csv", "--h5ad", missing / "x.h5ad"], "--h5ad", missing),
             (["predict", *data, "--output", tmp / "x.csv", "--json", missing / "s.json"], "--json", missing),
             (["explain", *data, "--output", missing / "b.csv"], "--output", missing),
             (["report", *data, "--out", missing / "rep", "--no-umap"], "--out", missing),
             (["labels-from-ic50", *gdsc, "--out", missing / "labels.csv"], "--out", missing),
             ([*train, "--report", missing / "r.csv"], "--report", missing),
             ([*train, "--out", missing / "copy"], "--out", missing)]
    for argv, option, folder in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and f"the folder {folder} does not exist: create it first or give another {option}." \
            in err, (argv, err)
        assert not missing.exists(), argv


def test_a_write_that_stops_half_way_leaves_no_half_written_file(capsys, cells_and_bundle, monkeypatch):
    """A run stopped while writing (disk full, Ctrl+C) left a half-written predictions.csv under
    the user's name. Now each file is written beside it under a temporary name and renamed only
    when complete: nothing under the name, no temporary file left, an earlier file kept."""
    import errno
    from pathlib import Path

    tmp = cells_and_bundle
    real = Path.write_bytes

    def half_then_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    (tmp / "out").mkdir()
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "out" / "p.csv")
    assert code == 2 and f"Cannot write {tmp / 'out' / 'p.csv'}: No space left on device." in err, err
    assert list((tmp / "out").iterdir()) == []
    (tmp / "out" / "p.csv").write_text("earlier\n")
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "out" / "p.csv", "--overwrite")
    assert code == 2 and (tmp / "out" / "p.csv").read_text() == "earlier\n"
    assert [p.name for p in (tmp / "out").iterdir()] == ["p.csv"]


def test_import_into_an_existing_folder_that_is_not_a_model_says_so(capsys, dist_setup):
    """QA: --out naming a folder of the user's said "A model named 'D (dist_vae)' already exists",
    and left the library's lock file beside it. Now: the folder exists and is not a scATD model
    folder; nothing was written (nor in the folder around it)."""
    tmp, *_ = dist_setup
    (tmp / "mine" / "folder").mkdir(parents=True)
    (tmp / "mine" / "folder" / "notes.txt").write_text("keep")
    (tmp / "mine" / "a_file").write_text("keep")
    args = ["import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D", "--genes", tmp / "genes.tsv"]
    code, _, err = _run(capsys, *args, "--out", tmp / "mine" / "folder")
    assert code == 2 and "already exists and is a folder that is not a scATD model folder (it has no manifest.json)" \
        "; nothing was written." in err and "A model named" not in err, err
    code, _, err = _run(capsys, *args, "--out", tmp / "mine" / "a_file")
    assert code == 2 and "already exists and is a file, not a scATD model folder; nothing was written." in err
    assert sorted(p.name for p in (tmp / "mine").rglob("*")) == ["a_file", "folder", "notes.txt"]


def test_panel_save_and_a_saved_panel_name_a_truncated_weights_file(capsys, dist_setup, monkeypatch):
    """QA: `scatd panel save` with a model whose weights file is cut short said only "Not usable
    models of the library: B_dist_vae"; a saved panel with such a member listed nothing wrong.
    Now both name the file and say it is truncated."""
    tmp, *_ = dist_setup
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp / "lib"))
    for drug in ("A", "B"):
        assert _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", drug,
                    "--genes", tmp / "genes.tsv")[0] == 0
    assert _run(capsys, "panel", "save", "two", "--model", "A_dist_vae", "--model", "B_dist_vae")[0] == 0
    weights = tmp / "lib" / "B_dist_vae" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = _run(capsys, "panel", "save", "again", "--model", "A_dist_vae", "--model", "B_dist_vae")
    assert code == 2 and "the panel was not saved" in err
    assert "B_dist_vae: Bundle B_dist_vae: weights file weights.safetensors is truncated" in err, err
    code, _, err = _run(capsys, "panel", "list")
    assert code == 0 and "two: B_dist_vae: Bundle B_dist_vae: weights file weights.safetensors is truncated" in err


def test_z_scored_values_for_a_log_model_are_refused_before_predicting_and_raw_is_read(capsys, dist_setup):
    """QA: the CLI printed the estimate and "Predicting: 100%", then "No cell can be scored (negative
    values ...)"; the app's Model page says why (the model needs counts, the matrix is z-scored).
    The CLI says what X holds, refuses before predicting in the Model page's words, and reads the
    log-normalised values of adata.raw by itself (or the matrix --matrix names)."""
    tmp, _sd, _enc, _z, genes, x, cells = dist_setup
    code, _, _ = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Docetaxel",
                      "--genes", tmp / "genes.tsv", "--input-transform", "log1p_cp10k", "--out", tmp / "bundle")
    assert code == 0
    x = x + 1
    log = np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32)
    z = ((log - log.mean(0)) / log.std(0)).astype(np.float32)
    scaled = ad.AnnData(z, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    scaled.write_h5ad(tmp / "z.h5ad")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "z.h5ad",
                        "--output", tmp / "pred.csv")
    assert code == 3 and "Values: z-scored (X)." in err
    assert "needs non-negative counts" in err and "this matrix is z-scored" in err
    assert "Predicting" not in err and "Estimated time" not in err and "No cell can be scored" not in err
    scaled.raw = ad.AnnData(log, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    scaled.write_h5ad(tmp / "z_raw.h5ad")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "z_raw.h5ad",
                        "--output", tmp / "pred.csv", "--h5ad", tmp / "out.h5ad")
    assert code == 0, err
    assert "Values: z-scored (X); also adata.raw (log-normalised, " in err
    assert "note: The model input is taken from adata.raw (log-normalised values" in err
    out = ad.read_h5ad(tmp / "out.h5ad")
    assert np.array_equal(out.X, z) and np.array_equal(out.raw.X, log)  # X and .raw as given
    assert out.uns["scatd"]["matrix"]["where"] == "adata.raw"
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "z_raw.h5ad",
                        "--output", tmp / "pred.csv", "--overwrite", "--matrix", "layer:counts")
    assert code != 0 and "--matrix layer:counts: the file has no such matrix (it has: X, raw)" in err
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "z_raw.h5ad",
                        "--output", tmp / "pred.csv", "--overwrite", "--matrix", "X")
    assert code != 0 and "--matrix X: the models read X (z-scored" in err and "this matrix is z-scored" in err


def test_progress_in_a_log_file_prints_a_line_per_ten_percent_not_one_per_batch(capsys, monkeypatch):
    """QA at 100k cells: `scatd predict ... 2> log` wrote 98 lines "Predicting: N% 1,024 of 100,000
    cells" (the count in the message made every report a new phase). Off a terminal: a line per
    10 %, one when the step changes, one at least every 30 s of a slow step, and the last line."""
    import time

    from scatd_core.cli import _common

    clock = {"now": 1000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    progress = _common.Progress("Predicting")
    assert not progress.tty  # pytest captures stderr: not a terminal
    n = 100_000
    for done in range(1024, n, 1024):
        progress(done / n, f"{done:,} of {n:,} cells")
    progress(1.0, f"{n:,} of {n:,} cells")
    lines = capsys.readouterr().err.splitlines()
    assert 10 <= len(lines) <= 12, lines
    assert lines[-1] == "Predicting: 100% 100,000 of 100,000 cells"
    assert [line.split("%")[0] for line in lines[:3]] == ["Predicting: 1", "Predicting: 10", "Predicting: 20"]

    slow = _common.Progress("UMAP")  # a slow step: still a line every 30 s within one 10 %
    slow(0.01, "fitting · 1 s elapsed")
    clock["now"] += 10
    slow(0.02, "fitting · 11 s elapsed")
    clock["now"] += 25
    slow(0.03, "fitting · 36 s elapsed")
    slow(0.04, "placing the other cells")  # another step
    assert [line.split("%")[0] for line in capsys.readouterr().err.splitlines()] == ["UMAP: 1", "UMAP: 3", "UMAP: 4"]


def test_exit_codes_tell_a_pipeline_what_went_wrong_and_strict_json_quiet(capsys, dist_setup, tmp_path, monkeypatch):
    """QA (Snakemake/Nextflow): a bad path, an unknown model and "this sample cannot be scored" all
    exited 2. Now 2 is a usage error or bad input, 3 data the model cannot score, 4 with --strict
    when some cells were not scored; --json writes a summary (also on failure); --quiet keeps only
    warnings and errors; `scatd --help` lists the codes."""
    from scatd_core.cli import EXIT_CODES, _common, build_parser

    monkeypatch.setitem(_common._QUIET, "on", False)  # --quiet below: said again after the test

    epilog = build_parser().format_help()
    assert all(f"  {code:<4} " in epilog for code in (0, 1, 2, 3, 4, 130, 141, 143)) and "cannot score" in epilog
    tmp, _sd, enc, _z, genes, x, cells = dist_setup
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 130, 141, 143}
    code, _, _ = _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "D",
                      "--genes", tmp / "genes.tsv", "--out", tmp / "bundle")
    assert code == 0
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "nope.h5ad", "--output",
                        tmp / "o.csv", "--json", tmp / "bad.json")
    assert code == 2 and err.startswith("error: ")
    bad = json.loads((tmp / "bad.json").read_text())
    assert bad["exit_code"] == 2 and bad["command"] == "predict" and bad["error"]
    x = x.copy()
    x[0, :] = 0  # one cell that cannot be scored: no expression in the model's genes
    ad.AnnData(x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)).write_h5ad(tmp / "c.h5ad")
    base = ["predict", "--model", tmp / "bundle", "--input", tmp / "c.h5ad"]
    code, _, err = _run(capsys, *base, "--output", tmp / "a.csv")
    assert code == 0 and "Scored 14 of 15 cells" in err, err  # partial success stays 0
    code, _, err = _run(capsys, *base, "--output", tmp / "b.csv", "--strict", "--json", tmp / "s.json", "--quiet")
    assert code == 4 and (tmp / "b.csv").exists()
    assert "error: --strict" in err and "1 of 15 cells not scored: no expression in the model's genes" in err
    assert "Scored" not in err and "Estimated time" not in err and "Threshold" not in err  # --quiet
    assert all(line.startswith(("warning", "error", "  ")) for line in err.splitlines())
    doc = json.loads((tmp / "s.json").read_text())
    assert doc["exit_code"] == 4 and doc["n_cells_read"] == 15 and doc["n_scored"] == 14
    assert doc["not_scored"] == {"no_expression": 1} and doc["outputs"] == [str(tmp / "b.csv")]
    assert doc["threshold"]["calibrated"] is False and doc["threshold"]["value"] is not None
    assert isinstance(doc["n_called_resistant"], int) and isinstance(doc["warnings"], list)
    assert doc["scatd_version"] and doc["models"] == [str(tmp / "bundle")]
    assert not list(tmp.glob("*.part")) and not list(tmp.glob(".*.part"))  # written atomically
    code, _, err = _run(capsys, "explain", "--model", tmp / "bundle", "--input", tmp / "c.h5ad", "--output",
                        tmp / "bio.csv", "--json", tmp / "e.json", "--strict")
    doc = json.loads((tmp / "e.json").read_text())
    assert code == 4 and doc["command"] == "explain" and doc["exit_code"] == 4 and doc["n_scored"] == 14, err
    assert str(tmp / "bio.csv") in doc["outputs"]
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "c.h5ad", "--out", tmp / "rep",
                        "--no-umap", "--json", tmp / "r.json", "--quiet")
    doc = json.loads((tmp / "r.json").read_text())
    assert code == 0 and doc["exit_code"] == 0 and doc["problems"] and str(tmp / "rep" / "predictions.csv") in \
        doc["outputs"], err


def test_json_never_replaces_an_input_another_output_or_an_existing_file(capsys, cells_and_bundle):
    """QA r1 (data loss): `--json FILE` replaced whatever FILE was: the input matrix (--input
    victim.csv --json victim.csv), the run's own predictions (--output same.csv --json same.csv), an
    earlier run's file. Now --json is checked before anything runs, as every other output: never an
    input, a model's file or another output of the run (even with --overwrite), an existing file only
    with --overwrite; a refused --json is left as it was (the refusal writes no summary into it)."""
    tmp = cells_and_bundle
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    pd.DataFrame({"cell": ["c0"], "response": ["resistant"]}).to_csv(tmp / "obs.csv", index=False)
    (tmp / "old.csv").write_text("an earlier run's predictions\n")
    kept = {p: p.read_bytes() for p in (tmp / "cells.h5ad", tmp / "obs.csv", tmp / "old.csv",
                                        tmp / "bundle" / "manifest.json")}
    (tmp / "rep").mkdir()  # --json's folder must exist (a report's --out folder the run would make is none yet)
    names = sorted(p.name for p in tmp.iterdir())
    for argv, said in (
            (["predict", *data, "--output", tmp / "p1.csv", "--json", tmp / "cells.h5ad", "--overwrite"],
             f"error: --json {tmp / 'cells.h5ad'} would overwrite the input file {tmp / 'cells.h5ad'}."),
            (["predict", *data, "--obs", tmp / "obs.csv", "--output", tmp / "p2.csv", "--json", tmp / "obs.csv"],
             "would overwrite the input file"),
            (["predict", *data, "--output", tmp / "same.csv", "--json", tmp / "same.csv"],
             f"error: --json and --output name the same file {tmp / 'same.csv'}."),
            (["predict", *data, "--output", tmp / "p3.csv", "--h5ad", tmp / "a.h5ad", "--json", tmp / "a.h5ad"],
             "error: --json and --h5ad name the same file"),
            (["predict", *data, "--output", tmp / "p4.csv", "--json", tmp / "old.csv"],
             f"error: {tmp / 'old.csv'} already exists; choose another name or add --overwrite."),
            (["predict", *data, "--output", tmp / "p5.csv", "--json", tmp / "bundle" / "manifest.json", "--overwrite"],
             "is inside the model folder"),
            (["report", *data, "--out", tmp / "rep", "--json", tmp / "rep" / "report.html"],
             f"error: --json and --out name the same file {tmp / 'rep' / 'report.html'}."),
            (["explain", *data, "--output", tmp / "bio.csv", "--json", tmp / "bio_metrics.csv"],
             "error: --json and --output's metrics file name the same file"),
            (["explain", *data, "--output", tmp / "bio.csv", "--json", tmp / "old.csv"], "already exists")):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and said in err and "Read " not in err, (argv, err)  # refused before anything is read
    assert {p: p.read_bytes() for p in kept} == kept  # every file as it was
    assert sorted(p.name for p in tmp.iterdir()) == names  # nothing written, no folder made
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "p6.csv", "--json", tmp / "old.csv", "--overwrite")
    assert code == 0 and json.loads((tmp / "old.csv").read_text())["exit_code"] == 0, err  # replaced, as asked


def test_json_says_a_panels_models_and_the_cells_read_before_a_refusal(capsys, cells_and_bundle):
    """QA r1: a --panel run's summary said "models": [null], and one refused after the input was read
    (exit 3: not the model's genes) said "n_cells_read": null although the terminal said "Read 15 cells"."""
    import shutil

    tmp = cells_and_bundle
    for name in ("A", "B"):
        shutil.copytree(tmp / "bundle", tmp / "lib" / name)
    assert _run(capsys, "panel", "save", "two", "--model", "A", "--model", "B", "--library", tmp / "lib")[0] == 0
    code, _, err = _run(capsys, "predict", "--panel", "two", "--library", tmp / "lib", "--input", tmp / "cells.h5ad",
                        "--output", tmp / "panel.csv", "--json", tmp / "panel.json")
    doc = json.loads((tmp / "panel.json").read_text())
    assert code == 0 and doc["panel"] == "two", err
    assert doc["models"] == [str(tmp / "lib" / "A"), str(tmp / "lib" / "B")], doc["models"]
    cells = ad.read_h5ad(tmp / "cells.h5ad")
    cells.var_names = [f"mouse{i}" for i in range(cells.n_vars)]  # none of the model's genes
    cells.write_h5ad(tmp / "mouse.h5ad")
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "mouse.h5ad", "--output",
                        tmp / "m.csv", "--json", tmp / "m.json")
    doc = json.loads((tmp / "m.json").read_text())
    assert code == 3 and "Read 15 cells" in err and doc["exit_code"] == 3 and doc["n_cells_read"] == 15, (err, doc)
    code, _, err = _run(capsys, "predict", "--model", tmp / "bundle", "--input", tmp / "none.h5ad", "--output",
                        tmp / "n.csv", "--json", tmp / "n.json")
    assert code == 2 and json.loads((tmp / "n.json").read_text())["n_cells_read"] is None  # nothing read


def test_a_stop_while_the_command_loads_is_one_line_not_a_traceback(capsys, cells_and_bundle, monkeypatch):
    """QA r1: Ctrl+C or SIGTERM in the first second (`timeout -s INT 0.3 scatd predict ...`) printed a
    KeyboardInterrupt traceback from the imports, before main's clean-up, and wrote no --json. Now
    `import scatd_core.cli` (what `scatd` and `python -m scatd_core.cli` run before main) loads no
    sub-command, and a stop while main loads them or reads the arguments is one line, exit 130/143;
    once the arguments are read and --json checked, the summary is written too."""
    import signal

    import scatd_core.cli as cli
    from scatd_core.cli import predict as cli_predict

    res = subprocess.run([sys.executable, "-c", "import sys, scatd_core.cli; print(sorted(m for m in sys.modules if "
                          "m.startswith('scatd_core.cli.')), 'argparse' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.split() == ["[]", "False"], res.stdout + res.stderr
    tmp = cells_and_bundle
    argv = ["predict", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--output", tmp / "p.csv",
            "--json", tmp / "s.json"]

    def ctrl_c():
        raise KeyboardInterrupt

    def sigterm():  # a real SIGTERM while the sub-commands load: main's handler is in place already
        os.kill(os.getpid(), signal.SIGTERM)

    for stop, code, said in ((ctrl_c, 130, "interrupted: nothing was written"),
                             (sigterm, 143, "interrupted (SIGTERM: the job was stopped): nothing was written")):
        monkeypatch.setattr(cli, "commands", stop)
        assert _run(capsys, *argv) == (code, "", said + "\n")
    monkeypatch.undo()
    assert not (tmp / "s.json").exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_predict, "run", stopped)  # the arguments read: --json says it too
    code, _, err = _run(capsys, *argv)
    assert code == 130 and err.splitlines()[-1] == "interrupted: nothing was written", err
    assert json.loads((tmp / "s.json").read_text())["exit_code"] == 130


def test_an_output_that_appears_while_the_run_writes_is_not_replaced(capsys, cells_and_bundle, monkeypatch):
    """QA (two `scatd predict --output same.csv` at once): both said "Wrote same.csv", exit 0, and the
    file held one run's results. Now a file that appears under an output's name while the run
    computes (here made just before the results are written) is kept as it is; the run says where
    its own results are and exits 2. With --overwrite it is replaced, as asked."""
    from scatd_core import export

    tmp = cells_and_bundle
    real_csv, real_calls = export.to_csv_bytes, export._exported_calls

    def other_run_csv(*a, **k):
        (tmp / "same.csv").write_text("the other run's results\n")
        return real_csv(*a, **k)

    monkeypatch.setattr(export, "to_csv_bytes", other_run_csv)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    code, out, err = _run(capsys, "predict", *data, "--output", tmp / "same.csv")
    assert code == 2 and f"error: {tmp / 'same.csv'} appeared while this run was writing (another run?); nothing " \
                          "was replaced." in err, err
    assert "Wrote" not in out + err and (tmp / "same.csv").read_text() == "the other run's results\n"
    kept = re.search(r"Your results are in (\S+);", err).group(1)
    assert len(pd.read_csv(kept)) == 15 and "rerun with --overwrite" in err
    assert not [p.name for p in tmp.rglob("*.part")]
    monkeypatch.setattr(export, "to_csv_bytes", real_csv)

    def other_run_h5ad(*a, **k):
        (tmp / "same.h5ad").write_text("the other run's h5ad\n")
        return real_calls(*a, **k)

    monkeypatch.setattr(export, "_exported_calls", other_run_h5ad)
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "p2.csv", "--h5ad", tmp / "same.h5ad")
    assert code == 2 and f"{tmp / 'same.h5ad'} appeared while this run was writing" in err, err
    assert (tmp / "same.h5ad").read_text() == "the other run's h5ad\n"
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "p3.csv", "--h5ad", tmp / "same.h5ad",
                        "--overwrite")
    assert code == 0 and ad.read_h5ad(tmp / "same.h5ad").n_obs == 15, err


def test_a_report_folder_is_written_whole_or_not_at_all(capsys, cells_and_bundle, monkeypatch):
    """QA: two `scatd report --out same` at once left a mixed folder (one sample's CSV, the other's
    h5ad), both exit 0; a report stopped while writing left predictions.csv and metrics.csv without
    the h5ad and the HTML, and the rerun was then refused ("already holds predictions.csv"). Now the
    files are written in a temporary folder and moved in together: a report file that appeared
    meanwhile keeps the folder as the other run left it (this run's files beside it, exit 2), and
    a stopped report leaves nothing."""
    from scatd_core import export

    tmp = cells_and_bundle
    real_html, real_h5ad = export.html_report, export.write_h5ad

    def other_run(*a, **k):
        (tmp / "rep").mkdir(exist_ok=True)
        (tmp / "rep" / "annotated.h5ad").write_text("the other run's h5ad\n")
        return real_html(*a, **k)

    monkeypatch.setattr(export, "html_report", other_run)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--no-umap"]
    code, out, err = _run(capsys, "report", *data, "--out", tmp / "rep")
    assert code == 2 and f"error: {tmp / 'rep' / 'annotated.h5ad'} appeared while this run was writing" in err, err
    assert [p.name for p in (tmp / "rep").iterdir()] == ["annotated.h5ad"]  # the other run's, alone
    kept = re.search(r"Your results are in (\S+);", err).group(1)
    assert sorted(p.name for p in Path(kept).iterdir()) == sorted(n for n in REPORT_FILES if n != "biomarkers.csv")
    monkeypatch.setattr(export, "html_report", real_html)

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_h5ad", stopped)
    code, _, err = _run(capsys, "report", *data, "--out", tmp / "rep2")
    assert code == 130 and not (tmp / "rep2").exists(), err  # nothing left: no folder, no half report
    (tmp / "rep2").mkdir()
    code, _, err = _run(capsys, "report", *data, "--out", tmp / "rep2")
    assert code == 130 and list((tmp / "rep2").iterdir()) == [], err
    monkeypatch.setattr(export, "write_h5ad", real_h5ad)
    code, _, err = _run(capsys, "report", *data, "--out", tmp / "rep2")  # the rerun is not refused
    assert code == 0 and sorted(p.name for p in (tmp / "rep2").iterdir()) == sorted(
        n for n in REPORT_FILES if n != "biomarkers.csv"), err


def _file_size_limit(nbytes: int):
    """For a child process: no file above ``nbytes`` (a write beyond it fails as on a full disk)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return limit


@pytest.mark.parametrize("nbytes", [6000, 20000])
def test_a_full_disk_while_writing_the_h5ad_is_one_line_and_exit_2_not_a_crash(capsys, cells_and_bundle, nbytes):
    """QA (a full disk under --h5ad and report's annotated.h5ad): ~1,900 lines of h5py tracebacks,
    then SIGSEGV/SIGBUS (exit 139/135) and no message. Now HDF5 never meets the failed write (it is
    kept and raised once the file is closed): one line "Cannot write FILE: ...", exit 2, nothing
    left. A file size limit stands in for the full disk (same failed write, no mount needed)."""
    tmp = cells_and_bundle
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    (tmp / "o").mkdir()
    for argv, named in ((["predict", *data, "--output", tmp / "p.csv", "--h5ad", tmp / "o" / "p.h5ad"],
                         tmp / "o" / "p.h5ad"),
                        (["report", *data, "--no-umap", "--out", tmp / "rep"], tmp / "rep" / "annotated.h5ad")):
        root = str(Path(__file__).resolve().parents[1])  # the checkout, installed or not (the child runs in tmp)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.run([sys.executable, "-m", "scatd_core.cli", *map(str, argv)], capture_output=True,
                              text=True, timeout=120, preexec_fn=_file_size_limit(nbytes), cwd=tmp, env=env)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert f"error: Cannot write {named}: File too large." in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 15, proc.stderr[-2000:]
        assert not [p.name for p in tmp.rglob("*.part")] and not (tmp / "rep").exists()
        assert not (tmp / "o").exists() or list((tmp / "o").iterdir()) == []


def test_a_file_the_run_wrote_itself_it_may_write_again(tmp_path):
    """`scatd demo --panel` writes its annotated.h5ad a second time (with the panel's columns): that
    file is this run's own, not one that appeared from another run, so it is replaced."""
    from scatd_core._output import claim, staged_folder, user_outputs, write_file

    with user_outputs():
        claim(tmp_path / "p.csv", False)
        write_file(tmp_path / "p.csv", "first\n")
        write_file(tmp_path / "p.csv", "second\n")
        for name in REPORT_FILES:
            claim(tmp_path / "rep" / name, False)
        with staged_folder(tmp_path / "rep") as stage:
            (stage / "report.html").write_text("first\n")
        write_file(tmp_path / "rep" / "report.html", "second\n")
    assert (tmp_path / "p.csv").read_text() == "second\n" == (tmp_path / "rep" / "report.html").read_text()


def test_sigterm_stops_a_command_as_ctrl_c_does_with_exit_143(capsys, cells_and_bundle, monkeypatch):
    """QA (a cancelled Slurm/Nextflow job): SIGTERM killed the command outright, exit 143 with no
    word, and hidden .NAME.part files stayed for ever. Now SIGTERM takes Ctrl+C's way: the
    temporary files are removed, one line says what was written, exit 143 (Ctrl+C: 130)."""
    import os
    import signal

    from scatd_core import export

    tmp = cells_and_bundle
    real_calls = export._exported_calls

    def cancelled(*a, **k):  # the job is cancelled while the h5ad is written, the CSV written beside it
        os.kill(os.getpid(), signal.SIGTERM)
        return real_calls(*a, **k)

    def not_handled(signum, frame):  # if the command does not handle SIGTERM: a failure, not pytest killed
        raise RuntimeError("SIGTERM not handled by the command")

    monkeypatch.setattr(export, "_exported_calls", cancelled)
    restore = signal.signal(signal.SIGTERM, not_handled)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    try:
        code, _, err = _run(capsys, "predict", *data, "--output", tmp / "p.csv", "--h5ad", tmp / "p.h5ad")
    finally:
        after = signal.signal(signal.SIGTERM, restore)
    assert code == 143, err
    # the CSV and the h5ad are a pair: neither put in place without the other
    assert err.splitlines()[-1] == "interrupted (SIGTERM: the job was stopped): nothing was written"
    assert not (tmp / "p.h5ad").exists() and not (tmp / "p.csv").exists()
    assert not [p.name for p in tmp.rglob("*.part")]
    assert after is not_handled  # as it was, after the command
    monkeypatch.setattr(export, "_exported_calls", real_calls)

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "predictions_table", stopped)
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "q.csv", "--json", tmp / "q.json")
    assert code == 130 and err.splitlines()[-1] == "interrupted: nothing was written", err
    said = json.loads((tmp / "q.json").read_text())  # --json is written on a stop too (it was not: QA pipe)
    assert said["exit_code"] == 130 and said["error"] == "interrupted: nothing was written", said

    def bug(*a, **k):
        raise ValueError("a bug")

    monkeypatch.setattr(export, "predictions_table", bug)  # exit 1 (a bug): the summary says so as well
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "r.csv", "--json", tmp / "r.json")
    said = json.loads((tmp / "r.json").read_text())
    assert code == 1 and said["exit_code"] == 1 and said["error"] == "unexpected ValueError: a bug", said


def test_a_dash_for_standard_input_or_output_is_refused_by_name(capsys, cells_and_bundle):
    """QA: `--output -` silently wrote a file named "-" and `--input -` said "- was not found". Now
    both are refused clearly before anything runs: results go into files, data come from one."""
    tmp = cells_and_bundle
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    for argv, said in ((["predict", *data, "--output", "-"], "error: --output -: writing to standard output ('-') "
                                                             "is not supported; give a file name."),
                       (["predict", *data, "--output", tmp / "p.csv", "--h5ad", "-"], "error: --h5ad -: writing"),
                       (["report", *data, "--out", "-"], "error: --out -: writing to standard output ('-') is not "
                                                         "supported; give a folder name.")):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and said in err, err
    assert not (tmp / "-").exists() and not (Path.cwd() / "-").exists() and not (tmp / "p.csv").exists()
    for option in ("--input", "--biomart", "--obs"):
        argv = ["report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--out", tmp / "r", option, "-"]
        with pytest.raises(SystemExit) as caught:
            main([str(a) for a in argv])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {option}: reading from standard input ('-') is not supported; give a file name" in err, err
    from scatd_core import io
    from scatd_core.errors import InputError

    with pytest.raises(InputError, match=r"Reading data from standard input \('-'\) is not supported"):
        io.read("-")  # any other command reading data (train's --target)


def test_predict_refuses_an_unwritable_h5ad_destination_before_predicting(capsys, cells_and_bundle, monkeypatch):
    """QA: `scatd predict --output X.csv --h5ad Y.h5ad`: a --h5ad where nothing can be written must be
    refused before anything is predicted, and the CSV neither written nor replaced."""
    import tempfile

    tmp = cells_and_bundle
    (tmp / "locked").mkdir()
    (tmp / "p.csv").write_text("earlier\n")
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and Path(dir) == tmp / "locked":
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    def no_computing(*a, **k):
        raise AssertionError("predicted before checking the outputs")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    monkeypatch.setattr("scatd_core.predict.predict", no_computing)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    for csv, extra in ((tmp / "new.csv", []), (tmp / "p.csv", ["--overwrite"])):
        code, _, err = _run(capsys, "predict", *data, "--output", csv, "--h5ad", tmp / "locked" / "a.h5ad", *extra)
        assert code == 2 and f"--h5ad {tmp / 'locked' / 'a.h5ad'} cannot be written" in err, err
        assert "Permission denied" in err and "unexpected" not in err
    assert not (tmp / "new.csv").exists() and (tmp / "p.csv").read_text() == "earlier\n"


@pytest.mark.parametrize("stop", ["disk full", "ctrl-c"])
def test_predict_writes_the_csv_and_the_h5ad_as_a_pair(capsys, cells_and_bundle, monkeypatch, stop):
    """QA: a failure while the --h5ad was written (disk full, Ctrl+C) left the new --output CSV beside
    an old or missing h5ad: a mismatched pair. Now both are written under temporary names and put in
    place only when both are written: neither is new, an earlier pair is kept, no temporary file."""
    import errno

    from scatd_core import export

    tmp = cells_and_bundle

    def fails(adata, path, *a, **k):
        Path(path).write_bytes(b"half an h5ad")
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real = export.write_h5ad
    monkeypatch.setattr(export, "write_h5ad", fails)
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad"]
    (tmp / "out").mkdir()
    code, out, err = _run(capsys, "predict", *data, "--output", tmp / "out" / "p.csv", "--h5ad", tmp / "out" / "a.h5ad")
    assert code == (130 if stop == "ctrl-c" else 2), err
    if stop == "disk full":
        assert f"Cannot write {tmp / 'out' / 'a.h5ad'}: No space left on device." in err, err
    assert list((tmp / "out").iterdir()) == [] and "Wrote" not in out + err  # no new CSV alone, no temporary file
    (tmp / "out" / "p.csv").write_text("earlier csv\n")
    (tmp / "out" / "a.h5ad").write_text("earlier h5ad\n")
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "out" / "p.csv", "--h5ad", tmp / "out" / "a.h5ad",
                        "--overwrite")
    assert code != 0 and (tmp / "out" / "p.csv").read_text() == "earlier csv\n", err  # the earlier pair, as it was
    assert (tmp / "out" / "a.h5ad").read_text() == "earlier h5ad\n"
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["a.h5ad", "p.csv"]
    monkeypatch.setattr(export, "write_h5ad", real)
    code, _, err = _run(capsys, "predict", *data, "--output", tmp / "out" / "p.csv", "--h5ad", tmp / "out" / "a.h5ad",
                        "--overwrite")
    assert code == 0 and len(pd.read_csv(tmp / "out" / "p.csv")) == 15 and ad.read_h5ad(tmp / "out" / "a.h5ad").n_obs == 15
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["a.h5ad", "p.csv"]


def test_a_second_report_into_the_same_folder_is_refused_at_the_start(capsys, cells_and_bundle, monkeypatch):
    """QA: two `scatd report --out same` at once: the second computed everything and was refused only
    at the end ("appeared while this run was writing"). Now a report holds --out while it runs: a
    second one started meanwhile is refused at once (its data not even read), naming the run that
    holds the folder and what to do; the first finishes as usual."""
    import os
    import time

    from scatd_core.cli import report

    tmp = cells_and_bundle
    data = ["--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--no-umap"]
    real_predict, real_read = report.predict_from_args, report.read_input
    reads, second = [], {}

    def counted_read(*a, **k):
        reads.append(1)
        return real_read(*a, **k)

    def first_computing(*a, **k):  # while the first report computes, a second one starts
        if not second:
            second["reads_before"] = len(reads)
            started = time.monotonic()
            second["code"], _, second["err"] = _run(capsys, "report", *data, "--out", tmp / "rep", "--overwrite")
            second["seconds"] = time.monotonic() - started
            second["reads_after"] = len(reads)
            second["folder"] = sorted(p.name for p in (tmp / "rep").iterdir())
        return real_predict(*a, **k)

    monkeypatch.setattr(report, "read_input", counted_read)
    monkeypatch.setattr(report, "predict_from_args", first_computing)
    code, out, err = _run(capsys, "report", *data, "--out", tmp / "rep")
    assert second["code"] == 2, second
    assert second["reads_after"] == second["reads_before"], "the second report read its data before refusing"
    assert second["seconds"] < 5 and second["folder"] == [".scatd-report.running"], second  # the first's note only
    said = second["err"]
    assert f"error: {tmp / 'rep'} is being written by another `scatd report` (process {os.getpid()}" in said, said
    assert "nothing was run" in said and "wait for it to finish" in said.lower(), said
    assert code == 0, err  # the first is not disturbed
    assert sorted(p.name for p in (tmp / "rep").iterdir()) == sorted(n for n in REPORT_FILES if n != "biomarkers.csv")
    # once it has finished, the folder is free again
    code, _, err = _run(capsys, "report", *data, "--out", tmp / "rep", "--overwrite")
    assert code == 0, err


def test_a_report_replaces_an_earlier_one_whole_so_a_reader_never_sees_a_mix(capsys, cells_and_bundle, monkeypatch):
    """QA: `scatd report --overwrite` moved its files into --out one by one: a reader (a pipeline's next
    step, a browser) could see the new predictions.csv beside the earlier metrics.csv. Now the new
    report folder is swapped in for the earlier one (renames of the whole folder): at every rename the
    folder holds the earlier report or the new one, never a mix; its permissions are kept and nothing
    is left beside it."""
    import os
    import stat

    from scatd_core import _output

    tmp = cells_and_bundle
    rep = tmp / "rep"
    rep.mkdir()
    rep.chmod(0o750)
    for name in REPORT_FILES:
        (rep / name).write_text("earlier\n")
    seen = []
    real_replace, real_rename = os.replace, os.rename

    def look(*a, **k):
        if rep.is_dir():
            earlier = {n for n in REPORT_FILES if (rep / n).exists() and (rep / n).read_bytes() == b"earlier\n"}
            new = {n for n in REPORT_FILES if (rep / n).exists()} - earlier
            seen.append((earlier, new))

    def replace(*a, **k):
        look()
        return real_replace(*a, **k)

    def rename(*a, **k):
        look()
        return real_rename(*a, **k)

    monkeypatch.setattr(_output.os, "replace", replace)
    monkeypatch.setattr(_output.os, "rename", rename)
    code, _, err = _run(capsys, "report", "--model", tmp / "bundle", "--input", tmp / "cells.h5ad", "--no-umap",
                        "--out", rep, "--overwrite")
    monkeypatch.undo()
    assert code == 0, err
    assert seen and all(not (earlier and new) for earlier, new in seen), seen  # never a mix
    assert sorted(p.name for p in rep.iterdir()) == sorted(n for n in REPORT_FILES if n != "biomarkers.csv")
    assert all((rep / n).read_bytes() != b"earlier\n" for n in REPORT_FILES if n != "biomarkers.csv")
    assert stat.S_IMODE(rep.stat().st_mode) == 0o750
    assert [p.name for p in tmp.iterdir() if "rep" in p.name and p.name != "rep"] == []  # nothing left beside it
    assert [p.name for p in rep.iterdir() if p.name.startswith(".")] == []


def test_import_checkpoint_replace_replaces_the_model_of_the_name_and_says_which(capsys, dist_setup):
    """QA: `scatd import-checkpoint --name X` with X in the library was refused, its hint sending the administrator
    to the app's Models page: the command line could not replace a model. --replace does, as the page's 'Replace
    a model of the same name': in its folder, also one whose name differs only by case (one folder on a macOS or
    Windows disk), never a second folder beside it; it says which model it replaced."""
    tmp, *_ = dist_setup
    lib = tmp / "lib"
    common = ["import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--genes", tmp / "genes.tsv",
              "--library", lib]
    code, out, _ = _run(capsys, *common, "--drug", "Cisplatin", "--name", "Cisplatin_demo")
    assert code == 0 and "Replaced" not in out
    first = json.loads((lib / "Cisplatin_demo" / "manifest.json").read_text())
    code, _, err = _run(capsys, *common, "--drug", "CISPLATIN", "--name", "cisplatin_demo")
    assert code == 2 and "Cisplatin_demo" in err and "--replace" in err, err
    code, out, err = _run(capsys, *common, "--drug", "CISPLATIN", "--name", "cisplatin_demo", "--replace")
    assert code == 0, err
    assert "Replaced the model 'Cisplatin_demo' (folder Cisplatin_demo)" in out + err, out + err
    assert sorted(p.name for p in lib.iterdir() if not p.name.startswith(".")) == ["Cisplatin_demo"]
    now = json.loads((lib / "Cisplatin_demo" / "manifest.json").read_text())
    assert now["name"] == "cisplatin_demo" and now["drug"] == "CISPLATIN" and now["model_id"] != first["model_id"]
    # a new name with --replace: nothing to replace, nothing said about it
    code, out, err = _run(capsys, *common, "--drug", "CISPLATIN", "--name", "other", "--replace")
    assert code == 0 and "Replaced" not in out + err and (lib / "other").is_dir()


def test_the_card_of_a_model_with_a_damaged_weights_file_says_first_it_is_broken(capsys, dist_setup, monkeypatch):
    """QA: `scatd models card NAME` of a model whose weights file was cut short printed the whole
    card, exit 0, with no word of the damage, while `scatd models` listed it BROKEN and predict
    refused it. Now the card opens with the same reason and what to do, and exits 1."""
    tmp, *_ = dist_setup
    monkeypatch.setenv("SCATD_MODEL_LIBRARY", str(tmp / "lib"))
    assert _run(capsys, "import-checkpoint", tmp / "dal.pth", "--backbone", "dist_vae", "--drug", "Gefitinib",
                "--genes", tmp / "genes.tsv")[0] == 0
    code, out, err = _run(capsys, "models", "card", "Gefitinib_dist_vae")
    assert code == 0 and "BROKEN" not in out + err
    weights = tmp / "lib" / "Gefitinib_dist_vae" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    _, listed, _ = _run(capsys, "models")
    reason = listed.split("BROKEN: ", 1)[1].strip()
    assert "weights.safetensors" in reason
    code, out, err = _run(capsys, "models", "card", "Gefitinib_dist_vae")
    assert code == 1, (out, err)
    assert out.startswith(f"BROKEN: {reason}"), out  # said first, with the reason `scatd models` gives
    assert "scatd models remove Gefitinib_dist_vae --yes" in out and "re-import" in out.lower()
    assert "Model card:" in out and "Imported from dal.pth" in out  # the card is still shown after it
    code, out, _ = _run(capsys, "models", "card", "Gefitinib_dist_vae", "--json")
    said = json.loads(out)
    assert code == 1 and said["broken"] == reason and said["lines"]


def test_every_library_option_says_the_folder_used_when_the_variable_is_unset():
    """QA: --library said "(default: $SCATD_MODEL_LIBRARY)", but unset, the library is
    $SCATD_HOME/models (or config.toml's paths.library): each command's --library says so."""
    import argparse

    from scatd_core.cli import build_parser

    def parsers(parser, name="scatd"):
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield from parsers(sub, f"{name} {sub_name}")

    helps = {name: action.help for name, parser in parsers(build_parser()) for action in parser._actions
             if "--library" in action.option_strings}
    assert {"scatd predict", "scatd explain", "scatd report", "scatd train", "scatd models"} <= set(helps)
    for name, text in helps.items():
        assert "(default: $SCATD_MODEL_LIBRARY, else paths.library in config.toml, else $SCATD_HOME/models)" \
            in text, (name, text)
