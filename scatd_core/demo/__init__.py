"""The built-in demo: simulated data and a model trained on it, built once at first use.

The published checkpoints and foundation-model weights cannot ship with scATD Studio, so the
demo is made locally, deterministically, with the project's own pipeline:

1. :func:`scatd_core.demo.simulate.simulate_demo` (seed 0) draws a bulk cell-line panel with
   labels for the made-up drug ``DEMOTINIB`` and a 2,000-cell "tumour" with a planted
   resistance program (see that module's docstring);
2. :func:`scatd_core.train.train_drug_model` trains a Dist_VAE-style model on the bulk panel,
   adapted to the tumour *without* its labels, with small settings (about a minute on 2 CPU
   cores, longer on a busy server);
3. the model's default threshold is chosen on a **reference tumour**: a second simulated tumour
   (:data:`REFERENCE_SEED`: other cells, other patients, the same simulator) whose known labels
   give the cut that best separates its resistant from its sensitive cells (Youden's J, i.e. the
   highest balanced accuracy; :func:`reference_threshold`). The threshold 0.5 of a model trained
   on cell lines does not transfer to single cells: each domain is standardised on its own, so a
   cut fitted on the bulk (where most lines are resistant) called ~85% of the demo tumour's cells
   resistant where ~27% are. The demo tumour's own labels are never used for it;
4. the tumour (with its true ``response`` column, for evaluation) is written to
   ``$SCATD_HOME/demo/demo_tumour.h5ad`` and the model bundle to the library as
   ``DEMOTINIB_demo``, marked **demo (simulated data)** in its manifest, so the library, the
   results and every report label it so.

A file lock makes concurrent first starts (several users of one server) build it once.

The **demo panel** (:func:`ensure_panel`) adds models for the two other simulated drugs of the
same screen, ``DEMOPLATIN`` and ``DEMOLIMUS`` (bundles ``DEMOPLATIN_demo``, ``DEMOLIMUS_demo``),
trained the same way with a cheaper recipe (:func:`panel_settings`), so the panel view works
offline with three drugs; their thresholds are chosen as the demo model's, on the reference
tumour, whose cells the simulator also gives a true response to each of these drugs
(:func:`scatd_core.demo.simulate.panel_truth`). It is built on first use of the panel, not with
the demo itself; one built before its thresholds were chosen so is built again (:func:`panel_is_built`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np

from scatd_core._lock import folder_lock
from scatd_core.bundle import MANIFEST, Bundle, load_bundle
from scatd_core.config import model_library_dir, scatd_home
from scatd_core.errors import BundleError

DEMO_SEED = 0
#: Seed of the reference tumour that chooses the demo model's threshold (never the demo tumour's).
REFERENCE_SEED = DEMO_SEED + 1
DEMO_BUNDLE = "DEMOTINIB_demo"
DEMO_DATA = "demo_tumour.h5ad"
DEMO_LABEL_COLUMN = "response"
DEMO_SAMPLE_COLUMN = "sample"
#: The demo panel's other drugs (simulated; see :mod:`scatd_core.demo.simulate`).
PANEL_DRUGS = ("DEMOPLATIN", "DEMOLIMUS")


#: Sizes of the demo (``full``) and of a quick copy for tests (``tiny``): cell lines, cells.
SIZES = {"full": (300, 2000), "tiny": (60, 200)}
#: Cells in the demo tumour: a server whose ``limits.max_cells`` is lower cannot load it.
DEMO_CELLS = SIZES["full"][1]
#: Memory one demo session adds to the server: its data take ~10 MB, its prediction ~140 MB more of the
#: process's memory (measured on 2 CPU cores), its UMAP and biomarkers some more: rounded up.
DEMO_MEMORY_BYTES = 256 << 20


def cell_limit_problem(max_cells: int | None = None):
    """Why this server cannot load the demo, said before anything is built: its cell limit
    (``max_cells``, default ``limits.max_cells``) is below the demo's :data:`DEMO_CELLS` cells. An
    :class:`~scatd_core.errors.InputError` naming the setting, or None when the demo fits.

    The demo is not an upload: the upload size limit (``limits.max_upload_mb``) does not apply to it."""
    from scatd_core.config import limits
    from scatd_core.errors import InputError
    from scatd_core.io._common import raise_limit

    cap = limits().max_cells if max_cells is None else max_cells
    if cap >= DEMO_CELLS:
        return None
    return InputError(f"This server's cell limit (limits.max_cells = {cap:,}) is below the demo's {DEMO_CELLS:,} "
                      "simulated cells, so the demo cannot be loaded here.",
                      f"To use the demo, {raise_limit('max_cells')}, to at least {DEMO_CELLS:,}.",
                      app_hint=f"To use the demo, {raise_limit('max_cells')}, to at least {DEMO_CELLS:,}. "
                               "Your own data can still be uploaded, up to this limit.")


def cell_limit_warning(max_cells: int) -> str | None:
    """What ``scatd doctor`` says when ``max_cells`` is below the demo's cells; else None."""
    if max_cells >= DEMO_CELLS:
        return None
    return (f"limits.max_cells = {max_cells:,} is below the demo's {DEMO_CELLS:,} simulated cells: the app's "
            "'Try the demo' button is disabled (it says why) and `scatd demo` stops before building it. Raise "
            f"limits.max_cells (or SCATD_MAX_CELLS) to at least {DEMO_CELLS:,} to offer the demo.")


def demo_settings(size: str = "full"):
    """Training settings of the demo model: small enough for about a minute on 2 CPU cores."""
    from scatd_core.train import TrainSettings

    settings = replace(TrainSettings(), hidden_dims=(128, 64), z_dim=32, pretrain_epochs=40, members=3, folds=3,
                       seed=DEMO_SEED)
    if size == "tiny":
        settings = replace(settings, hidden_dims=(32, 16), z_dim=8, pretrain_epochs=4, members=2)
    return settings


def panel_settings(size: str = "full"):
    """The cheaper recipe of the demo panel's extra models (each a fraction of the demo model's training)."""
    return replace(demo_settings(size), pretrain_epochs=8 if size == "full" else 2, epochs=15 if size == "full" else 4,
                   finetune_epochs=3 if size == "full" else 1, folds=2)


def demo_dir() -> Path:
    return scatd_home() / "demo"


def data_path() -> Path:
    return demo_dir() / DEMO_DATA


def bundle_path(library: str | Path | None = None) -> Path:
    return (Path(library) if library else model_library_dir()) / DEMO_BUNDLE


def available() -> bool:
    """The demo can always be offered: it is built locally on first use."""
    return True


def is_built(library: str | Path | None = None) -> bool:
    if not data_path().is_file():
        return False
    try:
        bundle = load_bundle(bundle_path(library))
    except BundleError:
        return False
    # a demo built before its threshold was chosen on the reference tumour (0.5, which called most cells
    # resistant) is built again
    return "threshold_reference" in bundle.manifest["provenance"]


def _lock():
    """One demo build at a time, across the server's processes and threads."""
    return folder_lock(demo_dir(), ".build.lock")


#: The training's progress lines (scatd_core.train: _run, _fit, _cv) as the demo shows them: plain steps
#: for a biologist trying the demo, not epochs and losses (the Train page and ``scatd train`` keep those).
_PLAIN_STEPS = (
    (re.compile(r"^Backbone (\d+)/(\d+) · Pretraining backbone · epoch (\d+)/(\d+)\b"),
     lambda m: f"Learning from the bulk cell lines and the tumour (part {m[1]} of {m[2]}, "
               f"{int(m[3]) / max(int(m[4]), 1):.0%} done)"),
    (re.compile(r"^Pretraining backbone · epoch (\d+)/(\d+)\b"),
     lambda m: f"Learning from the bulk cell lines and the tumour ({int(m[1]) / max(int(m[2]), 1):.0%} done)"),
    (re.compile(r"^Fold (\d+)/(\d+) \(head[^)]*\) · "),
     lambda m: f"Checking the model on held-out cell lines ({m[1]} of {m[2]})"),
    (re.compile(r"^Final model on (\d[\d,]*) cell lines · "),
     lambda m: f"Training the final model on all {m[1]} cell lines"),
    (re.compile(r"^Saved .+ to "), lambda m: "Model saved"),
)


def plain_step(message: str) -> str:
    """A progress line of :func:`scatd_core.train.train_drug_model` as the demo's build shows it:
    "Backbone 1/3 · Pretraining backbone · epoch 16/40 · loss 0.1234" -> "Learning from the bulk cell
    lines and the tumour (part 1 of 3, 40% done)"; a line already in plain words (the baselines'
    "Checking the model against simple baselines · ...") as it is."""
    for pattern, words in _PLAIN_STEPS:
        found = pattern.match(message)
        if found is not None:
            return words(found)
    return message


#: The demo build's steps in order, with the CPU seconds each took in a full build on the 2-core
#: machine (2026-12-04, 48 CPU s, 40 s of wall time on a quiet machine; wall time varies with the load,
#: the shares little): the progress bar gives each its share, so the time left (extrapolated from the
#: fraction done) falls steadily. The training's own fractions count its steps in rough units, so the
#: bar once said 74% and "about 2 min left" when gradient boosting was fitted on all the cell lines
#: (then 156 of the build's 297 CPU s, before its genes were binned beforehand: 5 s now) and the time
#: left grew on. ``(step, baseline key or None, seconds)``; the baselines' steps are their out-of-fold
#: rounds on the bulk cell lines (``cv``) and their fit scored on the tumour's cells (``target``).
BUILD_SECONDS = (
    ("simulate", None, 2.9),
    ("pretrain", None, 10.4),  # the members' backbones: 3 x 40 epochs
    ("heads", None, 8.0),  # their heads (on the latent and the genes), in and out of the cross-validation
    ("cv", "logistic_regression", 4.2),  # ~1.4 s a round: its C chosen by an inner CV
    ("cv", "gradient_boosting", 7.2),
    ("cv", "logistic_regression_heads_c", 0.8),
    ("target", "logistic_regression", 2.9),
    ("target", "gradient_boosting", 5.2),  # on all 300 lines (binned genes; 156 s before)
    ("target", "logistic_regression_heads_c", 0.7),
    ("save", None, 4.4),
    ("threshold", None, 1.0),  # the reference tumour simulated and scored, the demo tumour written
)
_BASELINE_STEP = re.compile(r"^Checking the model against simple baselines · (?P<name>.+?), (?:bulk cell lines, "
                            r"round (?P<k>\d+) of (?P<n>\d+)(?P<done> done)?|(?P<target>scoring the target cells|"
                            r"target cells done))$")
_PRETRAIN_STEP = re.compile(r"^Backbone (\d+)/(\d+) · Pretraining backbone · epoch (\d+)/(\d+)\b")
#: What the bar says while the members' heads are fitted (the training reports nothing then)
HEADS_STEP = "Fitting the model's final layer on the cell lines"


def build_fraction(step: str, baseline: str | None = None, done: float = 0.0) -> float:
    """The fraction of the demo build done ``done`` (0-1) of the way through ``step`` (of
    :data:`BUILD_SECONDS`; a baseline's step also by its key), from the steps' measured times."""
    total = sum(sec for *_, sec in BUILD_SECONDS)
    before = 0.0
    for name, key, sec in BUILD_SECONDS:
        if (name, key) == (step, baseline):
            return (before + sec * min(max(done, 0.0), 1.0)) / total
        before += sec
    raise KeyError((step, baseline))


def _training_progress(progress: Callable[[float, str], None]) -> Callable[[float, str], None]:
    """The demo model's training progress as a part of the demo build: each report placed by its
    step (:func:`build_fraction`), not by the training's own fraction, and said in plain words
    (:func:`plain_step`). Reports never move the bar back."""
    from scatd_core.train._run import PROGRESS_NAMES

    keys = {words: key for key, words in PROGRESS_NAMES.items()}
    at = [build_fraction("pretrain")]

    def report(fraction: float, message: str) -> None:
        heads = False
        if (found := _PRETRAIN_STEP.match(message)) is not None:
            k, n, e, epochs = map(int, found.groups())
            at[0] = max(at[0], build_fraction("pretrain", done=(k - 1 + e / max(epochs, 1)) / max(n, 1)))
            heads = k == n and e == epochs  # the heads are fitted next, without a report
        elif (found := _BASELINE_STEP.match(message)) is not None and found["name"] in keys:
            key = keys[found["name"]]
            if found["target"]:
                at[0] = max(at[0], build_fraction("target", key, done=float(found["target"] == "target cells done")))
            else:
                at[0] = max(at[0], build_fraction("cv", key, done=(int(found["k"]) - 1 + bool(found["done"]))
                                                  / max(int(found["n"]), 1)))
        elif message.startswith("Checking the model against simple baselines"):  # the heads are done
            at[0] = max(at[0], build_fraction("heads", done=1.0))
        elif message.startswith("Saved "):
            at[0] = max(at[0], build_fraction("save", done=1.0))
        progress(at[0], f"Training the demo model: {plain_step(message)}")
        if heads:
            progress(at[0], f"Training the demo model: {HEADS_STEP}")
    return report


def build(*, library: str | Path | None = None, out_bundle: str | Path | None = None,
          out_data: str | Path | None = None, size: str = "full",
          progress: Callable[[float, str], None] | None = None) -> tuple[ad.AnnData, Bundle, dict]:
    """Simulate the demo data and train the demo model from scratch (deterministic).

    Returns ``(tumour, bundle, training report)``. ``out_bundle``/``out_data`` default to the
    library and the demo folder; an existing demo there is replaced. ``size="tiny"`` builds a
    small copy in seconds (for tests); the app and ``scatd demo`` use ``"full"``.
    """
    from scatd_core.demo.simulate import DEMO_DRUG, simulate_demo
    from scatd_core.train import train_drug_model

    from scatd_core._progress import with_eta

    progress = with_eta(progress)
    if progress:
        progress(0.0, "Simulating the demo tumour and cell-line panel")
    n_cell_lines, n_cells = SIZES[size]
    bulk, labels, tumour = simulate_demo(seed=DEMO_SEED, n_cell_lines=n_cell_lines, n_cells=n_cells)
    out_bundle = Path(out_bundle) if out_bundle else bundle_path(library)
    out_data = Path(out_data) if out_data else data_path()
    bundle, report = train_drug_model(
        bulk, labels, DEMO_DRUG, tumour, backbone="dist_vae", settings=demo_settings(size), device="cpu",
        target_label_column=DEMO_LABEL_COLUMN, out=out_bundle, overwrite=True, demo=True,
        name=f"{DEMO_DRUG} · demo (simulated data)", min_lines_per_class=2,  # (the tiny demo: 14 sensitive lines)
        progress=_training_progress(progress) if progress else None)
    if progress:
        progress(build_fraction("threshold"), "Choosing the demo model's threshold on a separate simulated tumour")
    threshold, record = reference_threshold(bundle, size)
    bundle = _set_default_threshold(bundle, threshold, record, report, tumour)
    out_data.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_data.with_suffix(".tmp.h5ad")
    tumour.write_h5ad(tmp)
    tmp.replace(out_data)
    if progress:
        progress(1.0, "Demo ready")
    return tumour, bundle, report


def reference_threshold(bundle: Bundle, size: str = "full") -> tuple[float, dict]:
    """The default threshold of a demo model (the demo's, or one of the demo panel's), chosen on the
    reference tumour (:data:`REFERENCE_SEED`).

    A tumour simulated as the demo's (same size) but from another seed, so other cells and
    patients, is scored by ``bundle``; the threshold is the one that best separates its known
    resistant and sensitive cells to the bundle's drug (Youden's J = sensitivity + specificity - 1,
    the highest balanced accuracy; the truth of the panel's other drugs:
    :func:`scatd_core.demo.simulate.panel_truth`). Returns ``(threshold, record)``, the record saying
    how it was chosen (kept in the bundle's provenance as ``threshold_reference``)."""
    from scatd_core import metrics
    from scatd_core.demo.simulate import panel_response_column, simulate_tumour
    from scatd_core.predict import predict

    n_cells = SIZES[size][1]
    reference = simulate_tumour(n_cells, seed=REFERENCE_SEED, panel_responses=True)
    predict(reference, bundle, device="cpu")
    prob = reference.obs["scatd_prob_resistant"].to_numpy(dtype=float)
    truth = (reference.obs[panel_response_column(bundle.drug)].astype(str) == "resistant").to_numpy(dtype=float)
    threshold = metrics.youden_threshold(truth, prob)
    called = prob[np.isfinite(prob)] > threshold
    record = {"data": "a separate simulated tumour (not the demo tumour)", "seed": REFERENCE_SEED, "drug": bundle.drug,
              "n_cells": int(n_cells), "n_resistant": int(truth.sum()), "n_sensitive": int((1 - truth).sum()),
              "rule": "Youden's J (the highest balanced accuracy)",
              "auroc": round(float(metrics.auroc(truth, prob)), 4),
              "fraction_called_resistant": round(float(called.mean()), 4),
              "fraction_resistant": round(float(truth.mean()), 4)}
    return float(threshold), record


#: Below this AUROC on the reference tumour, a demo model's card says that its threshold separates little.
WEAK_REFERENCE_AUROC = 0.6


def _threshold_words(threshold: float, record: dict) -> str:
    words = (f"chosen on a separate simulated tumour (seed {record['seed']}: {record['n_cells']:,} other cells whose "
             f"true responses the simulation knows, {record['fraction_resistant']:.0%} resistant; not the demo "
             f"tumour) as the cut that best separates its resistant from its sensitive cells (Youden's J, the highest "
             f"balanced accuracy); it calls {record['fraction_called_resistant']:.0%} of those cells resistant")
    if record.get("auroc") is not None and record["auroc"] < WEAK_REFERENCE_AUROC:
        words += (f", but the model barely tells those cells apart (AUROC {record['auroc']:.2f}), so its calls say "
                  "little about single cells")
    return words


def _set_default_threshold(bundle: Bundle, threshold: float, record: dict, report: dict,
                           tumour: ad.AnnData) -> Bundle:
    """Write ``threshold`` into the demo bundle as its default, with where it came from, and bring the
    manifest's threshold-dependent figures (target metrics, the card's calibration note, the
    training report's) to it."""
    import json

    from scatd_core.metrics import evaluate

    from scatd_core.demo.simulate import panel_response_column

    m = bundle.manifest
    column = panel_response_column(bundle.drug)  # the simulation's truth of this drug (evaluation only)
    words = _threshold_words(threshold, record)
    m["threshold"] = float(threshold)
    m["provenance"]["threshold_origin"] = words
    m["provenance"]["threshold_reference"] = record
    predictions = report["target_predictions"]
    prob = predictions["prob_resistant"].to_numpy(dtype=float)
    target = m.get("metrics", {}).get("target")
    if target and column in tumour.obs:  # evaluation only: the demo tumour's labels, scored at the new threshold
        truth = (tumour.obs[column].astype(str).reindex(predictions["cell_id"]) == "resistant")
        target.update({k: v for k, v in evaluate(truth.to_numpy(dtype=float), prob, threshold).as_dict().items()
                       if k in target})
        report["metrics"] = m["metrics"]
    truly = (f" (in the simulation, {float((tumour.obs[column].astype(str) == 'resistant').mean()):.0%} of them are "
             "resistant)" if column in tumour.obs else "")  # the simulation's truth
    card = m.get("card")
    if card is not None:
        card["calibration"] = (
            f"P(resistant) is a score from heads trained with balanced class weights on cell lines, not a calibrated "
            f"probability. The default threshold, {threshold:.3g}, was {words}: the threshold 0.5 of the training "
            f"would call {float((prob > 0.5).mean()):.0%} of the {len(prob):,} demo cells resistant, this one calls "
            f"{float((prob > threshold).mean()):.0%}{truly}. It is "
            "not calibrated to any other data, so calls made with it are "
            "marked uncalibrated. Calibrate it with an expected resistant fraction or labelled cells, or use the "
            "ranking (AUROC does not depend on the threshold).")
        report["card"] = card
    tmp = bundle.path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    tmp.replace(bundle.path / MANIFEST)
    return load_bundle(bundle.path)


def ensure(*, library: str | Path | None = None,
           progress: Callable[[float, str], None] | None = None) -> tuple[Path, Bundle]:
    """The demo data path and bundle, building them first if needed (once per server)."""
    with _lock():
        if not is_built(library):
            if bundle_path(library).exists():
                shutil.rmtree(bundle_path(library))
            build(library=library, progress=progress)
    return data_path(), load_bundle(bundle_path(library))


def load_data(*, library: str | Path | None = None,
              progress: Callable[[float, str], None] | None = None) -> ad.AnnData:
    """The demo tumour as an AnnData (raw counts; ``obs['response']`` holds the truth).

    Refused before anything is built when the server's cell limit is below the demo's cells
    (:func:`cell_limit_problem`); never by the upload size limit: the demo is not an upload."""
    from scatd_core import io

    problem = cell_limit_problem()
    if problem is not None:
        raise problem
    path, _ = ensure(library=library, progress=progress)
    return io.read(path)


def panel_bundle_path(drug: str, library: str | Path | None = None) -> Path:
    return (Path(library) if library else model_library_dir()) / f"{drug}_demo"


def build_panel(*, library: str | Path | None = None, size: str = "full",
                progress: Callable[[float, str], None] | None = None) -> list[Bundle]:
    """Train the demo panel's extra models (:data:`PANEL_DRUGS`) on the demo's simulated screen,
    adapted to the demo tumour (deterministic; existing ones are replaced). Each model's default
    threshold is chosen on the reference tumour, as the demo model's (:func:`reference_threshold`):
    0.5 called most demo cells resistant."""
    from scatd_core.demo.simulate import panel_response_column, simulate_bulk, simulate_tumour
    from scatd_core.train import train_drug_model

    n_cell_lines, n_cells = SIZES[size]
    bulk, labels = simulate_bulk(n_cell_lines, seed=DEMO_SEED)
    # the demo tumour (as simulate_demo draws it), with each drug's truth for the cards only: the models
    # adapt to it without its labels
    tumour = simulate_tumour(n_cells, seed=DEMO_SEED, panel_responses=True)
    unlabelled = tumour.copy()
    unlabelled.obs = unlabelled.obs.drop(columns=[panel_response_column(d) for d in PANEL_DRUGS])
    out = []
    for i, drug in enumerate(PANEL_DRUGS):
        step = (lambda f, m, i=i, drug=drug: progress((i + f) / len(PANEL_DRUGS), f"Training the demo {drug} model: {plain_step(m)}")
                ) if progress else None
        bundle, report = train_drug_model(
            bulk, labels, drug, unlabelled, backbone="dist_vae", settings=panel_settings(size), device="cpu",
            target_label_column=None, out=panel_bundle_path(drug, library), overwrite=True, demo=True,
            name=f"{drug} · demo (simulated data)", progress=step,
            min_lines_per_class=2)  # the tiny panel (tests) has 8 sensitive lines of one drug; the full one 74+
        threshold, record = reference_threshold(bundle, size)
        out.append(_set_default_threshold(bundle, threshold, record, report, tumour))
    return out


def panel_is_built(library: str | Path | None = None) -> bool:
    """The demo panel's extra models are in the library, with thresholds chosen on the reference tumour
    (those of an older version kept 0.5, which called most demo cells resistant, and are built again)."""
    try:
        extra = [load_bundle(panel_bundle_path(d, library)) for d in PANEL_DRUGS]
    except BundleError:
        return False
    return all("threshold_reference" in b.manifest["provenance"] for b in extra)


def ensure_panel(*, library: str | Path | None = None,
                 progress: Callable[[float, str], None] | None = None) -> list[Bundle]:
    """The demo panel's three bundles (DEMOTINIB, DEMOPLATIN, DEMOLIMUS), building what is missing."""
    ensure(library=library, progress=progress)
    with _lock():
        if not panel_is_built(library):
            build_panel(library=library, progress=progress)
    return [load_bundle(bundle_path(library))] + [load_bundle(panel_bundle_path(d, library)) for d in PANEL_DRUGS]
