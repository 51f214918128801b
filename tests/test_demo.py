"""The built-in demo: rebuilt from scratch it is identical, labelled as simulated, and works."""

from __future__ import annotations

import numpy as np
import pytest

from scatd_core import demo, explain
from scatd_core.demo.simulate import RESISTANCE_PROGRAM
from scatd_core.predict import predict


def test_demo_build_is_deterministic(tmp_path):
    # a tiny copy: the same code path as the full demo, in seconds
    (t1, b1, _), (t2, b2, _) = [demo.build(out_bundle=tmp_path / f"bundle{i}", out_data=tmp_path / f"tumour{i}.h5ad",
                                           size="tiny") for i in (1, 2)]
    assert b1.manifest["weights_sha256"] == b2.manifest["weights_sha256"]
    assert (t1.X != t2.X).nnz == 0 and list(t1.obs_names) == list(t2.obs_names)
    assert b1.is_demo and "demo (simulated data)" in b1.title


@pytest.mark.slow
def test_full_demo_is_labelled_simulated_and_recovers_the_program(tmp_path):
    tumour, bundle, report = demo.build(out_bundle=tmp_path / "bundle", out_data=tmp_path / "tumour.h5ad")
    assert bundle.is_demo and "demo (simulated data)" in bundle.title
    assert report["metrics"]["target"]["auroc"] > 0.8  # against the simulated truth, never trained on
    cells = tumour.copy()
    predict(cells, bundle, device="cpu")
    result = explain.explain(cells, bundle, max_cells=400, differential_expression=False, device="cpu")
    top = list(result.ranking["feature"][:20])
    assert sum(g in RESISTANCE_PROGRAM for g in top) >= 15
    assert np.isfinite(cells.obs["scatd_prob_resistant"]).all()


def test_demo_panel_builds_three_simulated_drug_models(tmp_path, monkeypatch):
    """The demo panel's extra models: built by the project's own training (seeded, as the demo model,
    whose determinism the test above checks), labelled demo."""
    from scatd_core import panel
    from scatd_core.demo.simulate import simulate_tumour

    first = demo.build_panel(library=tmp_path / "a", size="tiny")
    assert [b.drug for b in first] == list(demo.PANEL_DRUGS)
    assert all(b.manifest["provenance"]["seed"] == demo.DEMO_SEED for b in first)
    assert all(b.is_demo and "demo (simulated data)" in b.title for b in first)
    cells = simulate_tumour(n_cells=120, seed=2)
    members = panel.predict_panel(cells, first, device="cpu")
    assert [m.status for m in members] == ["scored", "scored"] and members[0].input_group == 0


def test_scatd_demo_command_writes_the_report(tmp_path, monkeypatch, capsys):
    """`scatd demo` end to end through the command line (a tiny demo built by the same code, to stay
    fast): it runs `scatd report`'s path with that command's own defaults and writes every file."""
    import functools

    import pandas as pd

    from scatd_core.cli import main

    monkeypatch.setattr(demo, "build", functools.partial(demo.build, size="tiny"))
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--library", str(tmp_path / "library")]) == 0
    printed = capsys.readouterr()
    assert "AUROC against the simulated truth" in printed.out 
    assert not [line for line in printed.err.splitlines() if line.startswith("error")]
    for name in ("predictions.csv", "metrics.csv", "biomarkers.csv", "annotated.h5ad", "report.html"):
        assert (out / name).stat().st_size > 0, name
    ranking = pd.read_csv(out / "biomarkers.csv")
    assert len(ranking) == demo.ensure(library=tmp_path / "library")[1].architecture.input_dim
    assert "demo (simulated data)" in (out / "report.html").read_text(encoding="utf-8")
