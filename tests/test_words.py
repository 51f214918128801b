"""Counts in messages: "1 model" / "2 models", never "model(s)" (scatd_core._words.counted)."""

from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest

from scatd_core._words import counted
from scatd_core.doctor import _readability
from scatd_core.embed import too_few_cells
from scatd_core.metrics import evaluate


def test_counted():
    assert (counted(1, "model"), counted(2, "model"), counted(0, "cell"), counted(2000, "cell")) == \
        ("1 model", "2 models", "0 cells", "2,000 cells")


@pytest.mark.parametrize("n, said", [(1, "1 model cannot be read by this account"),
                                     (2, "2 models cannot be read by this account")])
def test_doctor_unreadable_models_counted(tmp_path, n, said):
    unreadable = [SimpleNamespace(path=Path(tmp_path / f"m{i}")) for i in range(n)]
    detail = _readability(tmp_path, unreadable, unreadable)["detail"]
    assert said in detail and "(s)" not in detail
    assert ("make it readable" if n == 1 else "make them readable") in detail


@pytest.mark.parametrize("n, said", [(1, "1 cell without a label was left out."),
                                     (2, "2 cells without a label were left out.")])
def test_evaluate_notes_counted(n, said):
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10 + [np.nan] * n)
    prob = rng.random(y.size)
    notes = evaluate(y, prob, 0.5).notes
    assert said in notes and not any("(s)" in s for s in notes)


@pytest.mark.parametrize("n, said", [(1, "The data hold 1 cell;"), (3, "The data hold 3 cells;")])
def test_too_few_cells_counted(n, said):
    why = too_few_cells(ad.AnnData(np.zeros((n, 2), dtype=np.float32)), basis="expression")
    assert why.startswith(said)


def test_the_command_line_gives_files_where_the_app_uploads_them():
    """QA: the CLI printed the app's advice ('Upload raw counts', 'upload the full gene matrix');
    every line it prints goes through cli_words, whole phrases only (the upload limit stays)."""
    from scatd_core._words import SUBSET_ADVICE, cli_words

    tpm = "would dominate. Upload raw counts, or log1p-transform the values first."
    assert cli_words(tpm) == "would dominate. Give raw counts, or log1p-transform the values first."
    assert "give the full gene matrix" in cli_words(SUBSET_ADVICE) and "upload" not in cli_words(SUBSET_ADVICE)
    assert cli_words("over the upload limit of 500 MB") == "over the upload limit of 500 MB"
