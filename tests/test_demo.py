"""The built-in demo: rebuilt from scratch it is identical, labelled as simulated, and works."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _data_helpers import make_counts
from scatd_core import demo, explain
from scatd_core.demo.simulate import RESISTANCE_PROGRAM
from scatd_core.errors import InputError
from scatd_core.predict import predict


@pytest.fixture(scope="module")
def tiny_progress():
    """The progress reports ``(fraction, message)`` of the first of :func:`tiny_builds`."""
    return []


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory, tiny_progress):
    """Two tiny demos built from scratch: the same code path as the full demo, in seconds."""
    folder = tmp_path_factory.mktemp("tiny_demo")
    return [demo.build(out_bundle=folder / f"bundle{i}", out_data=folder / f"tumour{i}.h5ad", size="tiny",
                       progress=(lambda f, m: tiny_progress.append((f, m))) if i == 1 else None)
            for i in (1, 2)]


def test_demo_build_is_deterministic(tiny_builds):
    (t1, b1, _), (t2, b2, _) = tiny_builds
    assert b1.manifest["weights_sha256"] == b2.manifest["weights_sha256"]
    assert b1.threshold == b2.threshold
    assert (t1.X != t2.X).nnz == 0 and list(t1.obs_names) == list(t2.obs_names)
    assert b1.is_demo and "demo (simulated data)" in b1.title


@pytest.mark.parametrize("technical, plain", [
    # the default recipe's backbones (scatd_core.train._run._fit_ensemble, _fit.pretrain_backbone)
    ("Backbone 1/3 · Pretraining backbone · epoch 16/40 · loss 0.1234",
     "Learning from the bulk cell lines and the tumour (part 1 of 3, 40% done)"),
    # the original head's one backbone (_run._fit_scatd), its CV folds (_cv.cross_validate, _fit.fit_head)
    ("Pretraining backbone · epoch 10/40 · loss 0.1234", "Learning from the bulk cell lines and the tumour (25% done)"),
    ("Fold 2/5 (head) · epoch 3/40 · loss 0.5123 · val AUROC 0.712",
     "Checking the model on held-out cell lines (2 of 5)"),
    ("Fold 5/5 (head + fine-tuning) · epoch 41/45 · loss 0.5123", "Checking the model on held-out cell lines (5 of 5)"),
    ("Final model on 300 cell lines · epoch 7/40 · loss 0.4321", "Training the final model on all 300 cell lines"),
    ("Saved DEMOTINIB · demo (simulated data) to /srv/scatd/models/DEMOTINIB_demo", "Model saved"),
    # already plain (_run.CHECKING): as it is
    ("Checking the model against simple baselines · gradient boosting, bulk cell lines, round 2 of 3",
     "Checking the model against simple baselines · gradient boosting, bulk cell lines, round 2 of 3"),
])
def test_the_demo_build_shows_plain_training_steps(technical, plain):
    """The demo's progress line showed the training's jargon ("Backbone 1/3 · Pretraining backbone ·
    epoch 5/40 · loss 0.1234"); a biologist trying the demo now reads plain steps (the Train page and
    `scatd train` keep the technical lines)."""
    assert demo.plain_step(technical) == plain


def test_the_demo_builds_progress_is_plain_and_keeps_its_fractions_and_time_left(tiny_builds, tiny_progress):
    said = [m for _, m in tiny_progress]
    training = [m for m in said if m.startswith("Training the demo model: ")]
    assert any("Learning from the bulk cell lines and the tumour (part 1 of 2, " in m for m in training), said
    for word in ("epoch", "loss", "Backbone", "Pretraining", "Saved"):
        assert not any(word in m for m in said), (word, said)
    assert all(" elapsed" in m for m in said)  # the time elapsed (and left) of every step, as before
    fractions = [f for f, _ in tiny_progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


#: A full demo build on the 2-core machine (2026-12-04, gradient boosting on binned genes): CPU seconds
#: since its start at which the training reported, the training's own fraction, and its message (the
#: pretraining's epochs: every tenth). (Before the binning, 2026-12-03: 297 s, 156 of them gradient
#: boosting fitted on all 300 cell lines; now 5 s.)
FULL_BUILD = [(t, f, m) for t, f, m in (
    *((2.9 + 10.4 * (40 * (k - 1) + e) / 120, (40 * (k - 1) + e) / 937,
       f"Backbone {k}/3 · Pretraining backbone · epoch {e}/40 · loss 0.1")
      for k in (1, 2, 3) for e in (10, 20, 30, 40)),
    (21.3, 0.1291, "Checking the model against simple baselines (how well simpler methods do on the same data)"),
    *((t, f, f"Checking the model against simple baselines · {name}, bulk cell lines, round {k} of 3{done}")
      for t, f, name, k, done in (
          (21.3, 0.1291, "logistic regression", 1, ""), (22.6, 0.1323, "logistic regression", 1, " done"),
          (22.6, 0.1323, "logistic regression", 2, ""), (24.0, 0.1355, "logistic regression", 2, " done"),
          (24.0, 0.1355, "logistic regression", 3, ""), (25.5, 0.1387, "logistic regression", 3, " done"),
          (25.5, 0.1387, "gradient boosting", 1, ""), (27.9, 0.3522, "gradient boosting", 1, " done"),
          (27.9, 0.3522, "gradient boosting", 2, ""), (30.4, 0.5656, "gradient boosting", 2, " done"),
          (30.4, 0.5656, "gradient boosting", 3, ""), (32.7, 0.7791, "gradient boosting", 3, " done"),
          (32.8, 0.7823, "logistic regression at the model's own setting", 3, " done"))),
    *((t, f, f"Checking the model against simple baselines · {name}, {what}") for t, f, name, what in (
        (33.5, 0.7823, "logistic regression", "scoring the target cells"),
        (36.4, 0.7855, "logistic regression", "target cells done"),
        (36.4, 0.7855, "gradient boosting", "scoring the target cells"),
        (41.6, 0.99, "gradient boosting", "target cells done"),
        (42.3, 0.99, "logistic regression at the model's own setting", "target cells done"))),
    (46.7, 1.0, "Saved DEMOTINIB · demo (simulated data) to /srv/models/DEMOTINIB_demo"))]
FULL_BUILD_SECONDS = 47.7


def test_the_demo_builds_time_left_falls_steadily_through_its_steps(monkeypatch):
    """The demo build's time left grew for minutes: the training's fractions counted gradient boosting
    on all the cell lines (half of the build's time) as one small step, the logistic regression's
    rounds and the heads as almost nothing, so the bar said "about 2 min left" at 74% and the time left
    then grew. Replayed on the timeline of a real full build, each report's time left (extrapolated
    from its fraction, as the line says it) is now within 15% of the build's time of the true time
    left, and never rises by more than 5% of it from one report to the next."""
    from types import SimpleNamespace

    from scatd_core import _progress, train
    from scatd_core.demo import simulate

    clock = [0.0]
    monkeypatch.setattr(_progress, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(simulate, "simulate_demo", lambda **kw: (None, None, None))

    class Replayed(Exception):
        pass

    def replay(*args, progress, **kwargs):
        for t, f, message in FULL_BUILD:
            clock[0] = t
            progress(min(f, 0.99), message)
        raise Replayed

    monkeypatch.setattr(train, "train_drug_model", replay)
    said = []
    with pytest.raises(Replayed):
        demo.build(out_bundle="/nonexistent/b", out_data="/nonexistent/t.h5ad", size="tiny",
                   progress=lambda f, m: said.append((clock[0], f, m)))
    lefts = [(t, t * (1 - f) / f, m) for t, f, m in said if f > 0]
    for t, left, message in lefts:
        assert abs(left - (FULL_BUILD_SECONDS - t)) < 0.15 * FULL_BUILD_SECONDS, (t, left, message)
    for (_, before, _), (t, after, message) in zip(lefts, lefts[1:]):
        assert after <= before + 0.05 * FULL_BUILD_SECONDS, (t, before, after, message)
    assert len(lefts) == len(FULL_BUILD) + 1, said  # (and the heads' step, said when the pretraining ends)
    assert any(demo.HEADS_STEP in m for *_, m in said)  # the step after the pretraining, that reports nothing


def _called_and_balanced_accuracy(cells, bundle):
    from sklearn.metrics import balanced_accuracy_score

    predict(cells, bundle, device="cpu")
    called = (cells.obs["scatd_label"].astype(str) == "resistant").to_numpy()
    truth = (cells.obs["response"].astype(str) == "resistant").to_numpy()
    return called.mean(), truth.mean(), balanced_accuracy_score(truth, called)


def test_demo_threshold_is_chosen_on_a_separate_simulated_tumour_and_calls_near_the_truth(tiny_builds):
    """QA: at the demo model's threshold 0.5 (balanced heads fitted on cell lines, most of them resistant)
    ~85% of the demo tumour's cells were called resistant where ~27% are. The threshold is now chosen on
    another simulated tumour with known labels (never the demo tumour's labels), and transfers."""
    from scatd_core import metrics
    from scatd_core.demo.simulate import simulate_tumour

    tumour, bundle, report = tiny_builds[0]
    called, resistant, balanced = _called_and_balanced_accuracy(tumour.copy(), bundle)
    assert abs(called - resistant) < 0.1 and balanced > 0.75, (called, resistant, balanced)
    record = bundle.manifest["provenance"]["threshold_reference"]
    assert record["seed"] == demo.REFERENCE_SEED != demo.DEMO_SEED and record["n_cells"] == demo.SIZES["tiny"][1]
    reference = simulate_tumour(demo.SIZES["tiny"][1], seed=demo.REFERENCE_SEED)
    assert not set(reference.obs_names) & set(tumour.obs_names)  # other cells, not the demo's
    predict(reference, bundle, device="cpu")
    truth = (reference.obs["response"].astype(str) == "resistant").to_numpy(dtype=float)
    assert bundle.threshold == pytest.approx(metrics.youden_threshold(truth, reference.obs["scatd_prob_resistant"]))
    target = bundle.manifest["metrics"]["target"]  # the card's figures are at the threshold the calls use
    assert target["threshold"] == bundle.threshold and target["fraction_called_resistant"] == pytest.approx(called)
    assert "separate simulated tumour" in bundle.manifest["provenance"]["threshold_origin"]
    assert f"The default threshold, {bundle.threshold:.3g}, was chosen on a separate simulated tumour" \
        in bundle.manifest["card"]["calibration"]
    # the share called next to the share truly resistant (QA: the card said only "this one calls 32%")
    assert f"(in the simulation, {resistant:.0%} of them are resistant)" in bundle.manifest["card"]["calibration"]
    assert report["metrics"]["target"]["threshold"] == bundle.threshold


def test_a_demo_built_with_the_old_threshold_is_built_again(tiny_builds, tmp_path):
    """A demo cached by an older version (threshold 0.5, no reference record) is not reused."""
    import json
    import shutil

    tumour, bundle, _ = tiny_builds[0]
    library = tmp_path / "library"
    shutil.copytree(bundle.path, demo.bundle_path(library))
    demo.data_path().parent.mkdir(parents=True, exist_ok=True)
    tumour.write_h5ad(demo.data_path())
    assert demo.is_built(library)
    manifest = demo.bundle_path(library) / "manifest.json"
    old = json.loads(manifest.read_text())
    old["threshold"] = 0.5
    del old["provenance"]["threshold_reference"], old["provenance"]["threshold_origin"]
    manifest.write_text(json.dumps(old))
    assert not demo.is_built(library)


@pytest.mark.slow
def test_full_demo_is_labelled_simulated_and_recovers_the_program(tmp_path):
    tumour, bundle, report = demo.build(out_bundle=tmp_path / "bundle", out_data=tmp_path / "tumour.h5ad")
    assert bundle.is_demo and "demo (simulated data)" in bundle.title
    assert report["metrics"]["target"]["auroc"] > 0.8  # against the simulated truth, never trained on
    cells = tumour.copy()
    called, resistant, balanced = _called_and_balanced_accuracy(cells, bundle)  # the first calls a user sees
    assert abs(called - resistant) < 0.1 and balanced > 0.75, (called, resistant, balanced)
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
    _thresholds_chosen_on_the_reference_tumour(first)
    # a panel cached by an older version (threshold 0.5, no reference record) is built again, once
    library = tmp_path / "a"
    assert demo.panel_is_built(library)
    manifest = demo.panel_bundle_path(demo.PANEL_DRUGS[1], library) / "manifest.json"
    old = json.loads(manifest.read_text())
    old["threshold"] = 0.5
    del old["provenance"]["threshold_reference"], old["provenance"]["threshold_origin"]
    manifest.write_text(json.dumps(old))
    assert not demo.panel_is_built(library)
    built = []
    monkeypatch.setattr(demo, "ensure", lambda library=None, progress=None: None)
    monkeypatch.setattr(demo, "build_panel", lambda library=None, progress=None: built.append(library))
    monkeypatch.setattr(demo, "bundle_path", lambda library=None: demo.panel_bundle_path(demo.PANEL_DRUGS[0], library))
    assert len(demo.ensure_panel(library=library)) == 3 and built == [library]


def _thresholds_chosen_on_the_reference_tumour(bundles):
    """QA: the demo panel's DEMOPLATIN and DEMOLIMUS models kept threshold 0.5 and called most demo cells one way.
    Their thresholds are chosen as the demo model's: Youden's J on the reference tumour (seed 1), with each
    drug's simulated truth, never on the demo tumour; their cards say so."""
    from scatd_core import metrics
    from scatd_core.demo.simulate import panel_response_column, simulate_tumour

    reference = simulate_tumour(demo.SIZES["tiny"][1], seed=demo.REFERENCE_SEED, panel_responses=True)
    for bundle in bundles:
        record = bundle.manifest["provenance"]["threshold_reference"]
        assert record["seed"] == demo.REFERENCE_SEED != demo.DEMO_SEED and record["drug"] == bundle.drug
        assert bundle.threshold != 0.5
        cells = reference.copy()
        predict(cells, bundle, device="cpu")
        truth = (cells.obs[panel_response_column(bundle.drug)].astype(str) == "resistant").to_numpy(dtype=float)
        assert bundle.threshold == pytest.approx(metrics.youden_threshold(truth, cells.obs["scatd_prob_resistant"]))
        assert f"The default threshold, {bundle.threshold:.3g}, was chosen on a separate simulated tumour (seed 1" \
            in bundle.manifest["card"]["calibration"]
        assert "separate simulated tumour" in bundle.manifest["provenance"]["threshold_origin"]


def test_scatd_demo_command_writes_the_report(tiny_builds, tmp_path, monkeypatch, capsys):
    """`scatd demo` end to end through the command line (the tiny demo :func:`tiny_builds` built by the
    same code, put where `scatd demo` finds a built demo, to stay fast): it runs `scatd report`'s path
    with that command's own defaults and writes every file."""
    import shutil

    import pandas as pd

    from scatd_core.cli import main

    tumour, bundle, _ = tiny_builds[0]
    shutil.copytree(bundle.path, demo.bundle_path(tmp_path / "library"))
    demo.data_path().parent.mkdir(parents=True, exist_ok=True)
    tumour.write_h5ad(demo.data_path())  # what the build wrote
    monkeypatch.setattr(demo, "build", lambda **k: pytest.fail("built again although the demo is built"))
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--library", str(tmp_path / "library")]) == 0
    printed = capsys.readouterr()
    assert "AUROC against the simulated truth" in printed.out
    assert "At the demo model's default threshold (" in printed.out and "truly are (balanced accuracy" in printed.out
    assert not [line for line in printed.err.splitlines() if line.startswith("error")]
    for name in ("predictions.csv", "metrics.csv", "biomarkers.csv", "annotated.h5ad", "report.html"):
        assert (out / name).stat().st_size > 0, name
    ranking = pd.read_csv(out / "biomarkers.csv")
    assert len(ranking) == demo.ensure(library=tmp_path / "library")[1].architecture.input_dim
    assert "demo (simulated data)" in (out / "report.html").read_text(encoding="utf-8")


def test_a_cell_limit_below_the_demo_is_said_before_the_build(tmp_path, monkeypatch, capsys):
    """QA: with limits.max_cells = 1,500 the demo (2,000 cells) was refused after its long build; now
    before it, naming the setting, in the app's loader and in `scatd demo`."""
    from scatd_core.cli import main

    monkeypatch.setenv("SCATD_MAX_CELLS", "1500")
    monkeypatch.setattr(demo, "build", lambda **k: pytest.fail("built although the server cannot load the demo"))
    with pytest.raises(InputError) as info:
        demo.load_data()
    assert "limits.max_cells = 1,500) is below the demo's 2,000 simulated cells" in info.value.message
    assert "SCATD_MAX_CELLS" in info.value.hint and "at least 2,000" in info.value.hint
    assert main(["demo", "--out", str(tmp_path / "report"), "--library", str(tmp_path / "library")]) != 0
    assert "below the demo's 2,000 simulated cells" in capsys.readouterr().err
    monkeypatch.setenv("SCATD_MAX_CELLS", "2000")
    assert demo.cell_limit_problem() is None and demo.cell_limit_warning(2000) is None


def test_the_demo_is_not_an_upload_so_the_upload_limit_does_not_refuse_it(tmp_path, monkeypatch):
    """QA: with limits.max_upload_mb = 3 the demo's 10 MB tumour was refused as an upload."""
    monkeypatch.setenv("SCATD_MAX_UPLOAD_MB", "1")
    path = tmp_path / demo.DEMO_DATA
    make_counts(n_cells=500, n_genes=1000, density=0.5, seed=4).write_h5ad(path)
    assert path.stat().st_size > 1 << 20
    monkeypatch.setattr(demo, "ensure", lambda library=None, progress=None: (path, None))  # the demo, as built
    assert demo.load_data().n_obs == 500
