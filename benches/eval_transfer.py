"""Real-data evaluation of `scatd train`: bulk CCLE/GDSC -> SCAD single cells (Gefitinib, Sorafenib).

Trains on ``../shared/data/ccle/ccle_expression_299x697.csv`` (299 cell lines, log2 TPM+1) with
labels built from GDSC ln(IC50) (``labels_from_ic50``: below the drug's threshold = sensitive),
for the SCAD HNSCC cells, and scores the single cells against their labels (positive class:
resistant; SCAD's ``response`` is 1 = sensitive), which training never sees unless stated:

1. **Default recipe, no target labels** (``train_drug_model`` with default settings, one run per
   seed): single-cell AUROC / AUPRC, mean ± sd over the seeds, and per seed the paired bootstrap
   difference to the logistic-regression floor on the same cells with its 95 % interval.
2. **Floors and baselines** (deterministic): the published floor's recipe (logistic regression,
   ``C=0.1``, balanced, bulk z-scored over the labelled lines, the SCAD z-scores as given; it
   reproduces 0.766 / 0.760 of ``../shared/data/SOURCES.md``), the same on the model's own inputs,
   the model card's logistic regression (C chosen by inner CV on the bulk) and one at the heads'
   C (0.01: the model's head without the latent), and gradient boosting on the model's inputs.
3. **Leave-one-target-out for every setting chosen** (head inputs and C, members, few-shot
   weights): each alternative is scored on both targets with the members of the runs above; a
   setting picked on one target is then scored on the other, next to the default.
4. **Few labelled target cells**: k = 0, 3, 5, 10 labelled cells per class, 20 random draws each,
   the default semi-supervised recipe (the heads of the seed-0 run refitted with the draw's
   labelled cells, as ``scatd train --few-shot-labels`` does) against the bulk-only floor and a
   logistic regression on the same labelled cells alone, all scored on the other cells.
5. ``--variants no-adaptation scatd-head``: the default recipe with the target never used for
   training, and the original scATD head (both over the same seeds).

Usage (from the repository root)::

    python benches/eval_transfer.py --seeds 5 --out benches/results_transfer.md

Each training run takes about 1-2 minutes on 2 busy CPU cores; ``--cache DIR`` keeps the trained
runs' latents so that a second call only re-scores.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scatd_core import __version__, io  # noqa: E402
from scatd_core.labels import encode_labels, labels_from_ic50  # noqa: E402
from scatd_core.metrics import paired_bootstrap  # noqa: E402
from scatd_core.train import TrainSettings, prepare_training_data, train_drug_model  # noqa: E402
from scatd_core.train import _baselines as baselines  # noqa: E402
from scatd_core.train._ensemble import FewShot, ensemble_logit, fit_heads, latent_means  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TARGETS = {"Gefitinib": "sc/scad_gefitinib_hnscc_z.csv", "Sorafenib": "sc/scad_sorafenib_hnscc_z.csv"}
PUBLISHED_FLOOR = {"Gefitinib": 0.766, "Sorafenib": 0.760}
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MEMBER_GRID = (1, 3, 5, 10)
FEW_SHOT_K = (0, 3, 5, 10)
FEW_SHOT_DRAWS = 20
FEW_SHOT_GRID = {"few_shot_weight": (0.3, 1.0, 3.0), "entropy_weight": (0.0, 0.3, 1.0)}
FEW_SHOT_GRID_K, FEW_SHOT_GRID_DRAWS = 5, 10
VARIANTS = {"no-adaptation": ({}, False), "scatd-head": ({"head": "scatd"}, True)}


@dataclass
class Case:
    drug: str
    bulk: object
    labels: object
    target: object
    data: object  # TrainingData
    truth: np.ndarray  # 1 = resistant, per usable target cell


@dataclass
class Run:
    seed: int
    prob: np.ndarray  # the trained bundle's P(resistant) per target cell (what `scatd predict` gives)
    bulk: list  # members' latent means of the labelled bulk
    target: list  # members' latent means of the target cells
    seconds: float
    card: dict


def load_case(drug: str, bulk, labels) -> Case:
    target = io.read(DATA / TARGETS[drug])
    data = prepare_training_data(bulk, labels, drug, target)
    truth = encode_labels(target.obs["response"].to_numpy()[data.target_rows], 0)  # SCAD: 1 = sensitive
    return Case(drug, bulk, labels, target, data, truth.astype(int))


def floors(case: Case) -> dict[str, np.ndarray]:
    """The deterministic baselines' P(resistant) per target cell."""
    d = case.data
    raw = case.bulk[d.bulk_ids, d.features].X
    recipe_bulk = (raw - raw.mean(0)) / raw.std(0)
    recipe_target = case.target[d.target_rows, d.features].X
    return {
        "logistic regression, published recipe (the floor)": fixed_c(recipe_bulk, d.bulk_y, recipe_target),
        "logistic regression, model inputs": fixed_c(d.bulk_x, d.bulk_y, d.target_x),
        # the model card's baseline since 2026-12-02: C chosen by inner CV on the bulk, and the heads' own C
        "logistic regression, model inputs, C tuned on the bulk (the card's)":
            baselines.fit_predict(baselines.LOGISTIC, d.bulk_x, d.bulk_y, d.target_x, 0,
                                  grid=baselines.c_grid(TrainSettings().head_c)),
        "logistic regression, model inputs, heads' C (0.01)":
            baselines.fit_predict(baselines.HEADS_C, d.bulk_x, d.bulk_y, d.target_x, 0, c=TrainSettings().head_c),
        "gradient boosting, model inputs": baselines.fit_predict(baselines.BOOSTING, d.bulk_x, d.bulk_y, d.target_x, 0),
    }


#: The published floor's C (and of the model card's logistic regression before 2026-12-02)
FLOOR_C = 0.1


def fixed_c(x, y, x_new, c: float = FLOOR_C) -> np.ndarray:
    """P(resistant) of a balanced logistic regression with C fixed at ``c`` (the published recipe's 0.1)."""
    model = baselines.logistic(0, c).fit(x, y)
    return model.predict_proba(x_new)[:, list(model.classes_).index(1)]


def train_run(case: Case, seed: int, settings: TrainSettings, adaptation: bool) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bundle, rep = train_drug_model(case.bulk, case.labels, case.drug, case.target, seed=seed, settings=settings,
                                       adaptation=adaptation, device="cpu", out=Path(tmp) / "m",
                                       target_label_column="response", target_resistant_value=0)
        seconds = time.perf_counter() - t0
        model = bundle.load_model("cpu")
    members = getattr(model, "members", None)
    dev = torch.device("cpu")
    bulk = [latent_means(m, case.data.bulk_x, dev) for m in members] if members is not None else []
    target = [latent_means(m, case.data.target_x, dev) for m in members] if members is not None else []
    return Run(seed, rep["target_predictions"]["prob_resistant"].to_numpy(), bulk, target, seconds, rep["card"])


def auroc(y, p) -> float:
    return float(roc_auc_score(y, p))


class Scores:
    """Scores computed from a run's members, kept in ``--cache`` (one file per drug, rewritten
    atomically after each new score), so that the sections can be computed by one process per
    drug and a last call assembles the document without recomputing anything."""

    def __init__(self, path: Path | None):
        self.path = path
        self.memo = pickle.loads(path.read_bytes()) if path is not None and path.exists() else {}

    def get(self, key: tuple, compute) -> float:
        if key not in self.memo:
            self.memo[key] = float(compute())
            if self.path is not None:
                tmp = self.path.with_suffix(".part")
                tmp.write_bytes(pickle.dumps(self.memo))
                tmp.replace(self.path)
        return self.memo[key]


SCORES: dict[str, Scores] = {}


def _key(s: TrainSettings) -> tuple:
    return (s.head_inputs, s.head_c, s.members, s.few_shot_weight, s.entropy_weight)


def head_auroc(case: Case, run: Run, s: TrainSettings, few: FewShot | None = None, held=None) -> float:
    """Target AUROC of the run's members with heads refitted under settings ``s``."""
    if few is None and held is None and case.drug in SCORES:
        return SCORES[case.drug].get(("head", run.seed, _key(s)), lambda: _head_auroc(case, run, s))
    return _head_auroc(case, run, s, few, held)


def _head_auroc(case: Case, run: Run, s: TrainSettings, few: FewShot | None = None, held=None) -> float:
    d = case.data
    k = min(s.members, len(run.bulk))
    xb = d.bulk_x.astype(np.float64) if s.head_inputs == "latent+input" else None
    xt = d.target_x.astype(np.float64) if s.head_inputs == "latent+input" else None
    heads = fit_heads(run.bulk[:k], xb, d.bulk_y, s, target=(run.target[:k], xt), few=few)
    logit = ensemble_logit(heads, run.target[:k], xt)
    held = np.arange(len(case.truth)) if held is None else held
    return auroc(case.truth[held], logit[held])


def draw(truth: np.ndarray, k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` labelled cells per class (draw ``r``) and the other cells."""
    rng = np.random.default_rng(1000 * k + r)
    lab = np.concatenate([rng.choice(np.flatnonzero(truth == c), k, replace=False) for c in (1, 0)])
    return lab, np.setdiff1d(np.arange(len(truth)), lab)


def few_shot_auroc(case: Case, run: Run, s: TrainSettings, k: int, r: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The recipe's AUROC on the other cells with draw ``r`` of ``k`` labelled cells per class."""
    lab, held = draw(case.truth, k, r)
    compute = lambda: _head_auroc(case, run, s, FewShot(lab, case.truth[lab], []), held)  # noqa: E731
    score = SCORES[case.drug].get(("few", run.seed, _key(s), k, r), compute) if case.drug in SCORES else compute()
    return score, lab, held


def few_shot_scores(case: Case, run: Run, s: TrainSettings, floor: np.ndarray, k: int, draws: int) -> dict:
    """AUROC on the other cells per draw: the recipe, the bulk floor, the target-only regression."""
    if k == 0:  # nothing to draw: one score each
        return {"this model": [head_auroc(case, run, s)],
                "bulk-only floor (logistic regression)": [auroc(case.truth, floor)]}
    out = {"this model": [], "bulk-only floor (logistic regression)": [],
           "logistic regression on the labelled cells alone": []}
    x = case.data.target_x
    for r in range(draws):
        score, lab, held = few_shot_auroc(case, run, s, k, r)
        out["this model"].append(score)
        out["bulk-only floor (logistic regression)"].append(auroc(case.truth[held], floor[held]))
        p = fixed_c(x[lab], case.truth[lab], x)  # C=0.1, as these figures were made
        out["logistic regression on the labelled cells alone"].append(auroc(case.truth[held], p[held]))
    return out


def loto(grid: dict, drugs: list[str], default) -> list[str]:
    """Rows: each alternative's AUROC per target; then the choice made on one target scored on the other."""
    rows = []
    for value, per in grid.items():
        mark = " (default)" if value == default else ""
        rows.append(f"| {value}{mark} | " + " | ".join(f"{per[d]:.3f}" for d in drugs)
                    + f" | {np.mean([per[d] for d in drugs]):.3f} |")
    if len(drugs) == 2:
        for a, b in (drugs, drugs[::-1]):
            best = max(grid, key=lambda v: grid[v][a])
            rows.append(f"| chosen on {a}: {best} | " + " | ".join(
                f"**{grid[best][d]:.3f}** (held out)" if d == b else f"{grid[best][d]:.3f}" for d in drugs)
                + f" | default on {b}: {grid[default][b]:.3f} |")
    return rows


def rules(drugs: list[str], no_label: dict, floor: dict, few_rows: list) -> list[str]:
    """The issue's two rules, checked on the figures above (not asserted: reported)."""
    lines = ["### The rules", ""]
    gaps = {d: no_label[d].mean() - floor[d] for d in drugs}
    for d in drugs:
        lines.append(f"- Without target labels, {d}: mean AUROC {no_label[d].mean():.3f} vs floor {floor[d]:.3f} "
                     f"(difference {gaps[d]:+.3f}; rule: no more than 0.03 below) — "
                     + ("**holds**" if gaps[d] >= -0.03 else "**does not hold**") + ".")
    mean_gap = np.mean([gaps[d] for d in drugs])
    lines.append(f"- Without target labels, mean over the targets: {np.mean([no_label[d].mean() for d in drugs]):.3f} "
                 f"vs floor {np.mean([floor[d] for d in drugs]):.3f} (rule: above) — "
                 + ("**holds**" if mean_gap > 0 else "**does not hold**") + ".")
    at5 = {(d, n): m for d, k, n, m, _, _ in few_rows if k == 5}
    base = ("bulk-only floor (logistic regression)", "logistic regression on the labelled cells alone")
    if all((d, "this model") in at5 for d in drugs):
        for d in drugs:
            best = max(at5[(d, b)] for b in base)
            lines.append(f"- 5 labelled cells per class, {d}: {at5[(d, 'this model')]:.3f} vs the better few-shot "
                         f"baseline {best:.3f} (rule: no more than 0.02 below) — "
                         + ("**holds**" if at5[(d, 'this model')] >= best - 0.02 else "**does not hold**") + ".")
        model = np.mean([at5[(d, "this model")] for d in drugs])
        means = {b: np.mean([at5[(d, b)] for d in drugs]) for b in base}
        lines.append(f"- 5 labelled cells per class, mean over the targets: {model:.3f} vs "
                     + ", ".join(f"{b} {v:.3f}" for b, v in means.items()) + " (rule: above both) — "
                     + ("**holds**" if all(model > v for v in means.values()) else "**does not hold**") + ".")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--drugs", nargs="+", default=list(TARGETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS))
    ap.add_argument("--cache", help="folder keeping each training run and every score computed from it (re-used "
                                    "when present): run one process per drug, then one for the document")
    ap.add_argument("--few-shot-k", type=int, nargs="+", default=list(FEW_SHOT_K),
                    help="labelled cells per class of the few-shot curve")
    ap.add_argument("--few-shot-draws", type=int, default=FEW_SHOT_DRAWS, help="random draws per k")
    ap.add_argument("--c-grid", type=float, nargs="+", default=list(C_GRID), help="head L2 values (C) compared")
    ap.add_argument("--few-shot-grid-draws", type=int, default=FEW_SHOT_GRID_DRAWS,
                    help=f"draws (k = {FEW_SHOT_GRID_K}) per few-shot weight setting compared; 0 skips that grid")
    ap.add_argument("--out", help="write the markdown block here")
    args = ap.parse_args(argv)
    for part in ("ccle/ccle_expression_299x697.csv", "gdsc/GDSC_IC50.csv", *TARGETS.values()):
        if not (DATA / part).exists():
            print(f"needs ../shared/data/{part} beside the checkout; not present", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    settings = TrainSettings()
    bulk = io.read(DATA / "ccle/ccle_expression_299x697.csv")
    labels = labels_from_ic50(DATA / "gdsc/GDSC_IC50.csv", DATA / "gdsc/IC50_thred.txt",
                              DATA / "gdsc/GDSC_drug_list.csv", drugs=args.drugs)
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)

    def runs_of(case: Case, name: str, s: TrainSettings, adaptation: bool) -> list[Run]:
        out = []
        for seed in range(args.seeds):
            path = cache / f"{case.drug}_{name}_{seed}.pkl" if cache else None
            if path is not None and path.exists():
                run = pickle.loads(path.read_bytes())
            else:
                run = train_run(case, seed, s, adaptation)
                if path is not None:
                    path.write_bytes(pickle.dumps(run))
            print(f"{case.drug} | {name} | seed {seed}: AUROC {auroc(case.truth, run.prob):.3f} ({run.seconds:.0f} s)",
                  flush=True)
            out.append(run)
        return out

    cases = {d: load_case(d, bulk, labels) for d in args.drugs}
    for d in cases:
        SCORES[d] = Scores(cache / f"{d}_scores.pkl" if cache else None)
    details = []
    main_rows, per_seed_rows, variant_rows = [], [], []
    grids = {"inputs": {}, "members": {}, "few": {}}
    few_rows = []
    timing = []
    no_label_means, floor_aurocs = {}, {}
    for drug, case in cases.items():
        lab, genes = case.data.report["labels"], case.data.report["genes"]
        thr = labels.attrs["report"]["thresholds"][drug]
        details.append(f"- {drug}: {lab['sensitive']} sensitive / {lab['resistant']} resistant cell lines (GDSC id "
                       f"{thr['gdsc_id']}, threshold {thr['threshold']}); {genes['n_panel']} shared genes; "
                       f"{len(case.truth)} cells ({int(case.truth.sum())} resistant).")
        base = floors(case)
        floor = base["logistic regression, published recipe (the floor)"]
        for name, p in base.items():
            main_rows.append(f"| {drug} | {name} | {auroc(case.truth, p):.3f} | "
                             f"{average_precision_score(case.truth, p):.3f} | – | deterministic |")
        floor_aurocs[drug] = auroc(case.truth, floor)
        runs = runs_of(case, "default", settings, True)
        timing += [r.seconds for r in runs]
        a = np.array([auroc(case.truth, r.prob) for r in runs])
        no_label_means[drug] = a
        pr = np.array([average_precision_score(case.truth, r.prob) for r in runs])
        main_rows.append(f"| {drug} | **scatd train (default)** | **{a.mean():.3f} ± {a.std():.3f}** | "
                         f"{pr.mean():.3f} ± {pr.std():.3f} | {', '.join(f'{v:.3f}' for v in a)} | "
                         f"{np.mean([r.seconds for r in runs]):.0f} s |")
        for r in runs:
            diff, lo, hi = paired_bootstrap(case.truth, r.prob, floor, "auroc", n_boot=2000, seed=r.seed)
            per_seed_rows.append(f"| {drug} | {r.seed} | {auroc(case.truth, r.prob):.3f} | {auroc(case.truth, floor):.3f} "
                                 f"| {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
        for variant in args.variants:
            overrides, adaptation = VARIANTS[variant]
            vruns = runs_of(case, variant, replace(settings, **overrides), adaptation)
            v = np.array([auroc(case.truth, r.prob) for r in vruns])
            variant_rows.append(f"| {drug} | {variant} | {v.mean():.3f} ± {v.std():.3f} | "
                                f"{', '.join(f'{x:.3f}' for x in v)} | {np.mean([r.seconds for r in vruns]):.0f} s |")
        # the few-shot curve on the seed-0 run (computed k = 5 first: it decides the rule)
        curve = {}
        for k in sorted(args.few_shot_k, key=lambda k: (k != 5, k)):
            curve[k] = few_shot_scores(case, runs[0], settings, floor, k, args.few_shot_draws)
            print(f"{drug} few-shot k={k}: " + ", ".join(f"{n} {np.mean(v):.3f}" for n, v in curve[k].items() if v),
                  flush=True)
        for k in sorted(curve):
            for name, v in curve[k].items():
                if v:
                    few_rows.append((drug, k, name, np.mean(v), np.std(v), len(v)))
        # leave-one-target-out grids on the members of the default runs
        for inputs in ("latent+input", "latent"):
            for c in args.c_grid:
                s = replace(settings, head_inputs=inputs, head_c=c)
                grids["inputs"].setdefault(f"{inputs}, C={c:g}", {})[drug] = np.mean([head_auroc(case, r, s) for r in runs])
        for k in MEMBER_GRID:
            s = replace(settings, members=k)
            grids["members"].setdefault(k, {})[drug] = np.mean([head_auroc(case, r, s) for r in runs])
        for lam in FEW_SHOT_GRID["few_shot_weight"] if args.few_shot_grid_draws else ():
            for mu in FEW_SHOT_GRID["entropy_weight"]:
                s = replace(settings, few_shot_weight=lam, entropy_weight=mu)
                scores = [few_shot_auroc(case, runs[0], s, FEW_SHOT_GRID_K, r)[0]
                          for r in range(args.few_shot_grid_draws)]
                grids["few"].setdefault(f"few-shot weight {lam:g}, entropy weight {mu:g}", {})[drug] = np.mean(scores)

    drugs = list(cases)
    out = [f"Command: `python benches/eval_transfer.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
           f"Environment: scatd {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
           f"{args.threads} torch thread(s), {args.seeds} seeds (0..{args.seeds - 1}), mean ± sd (population); "
           f"one training run took {np.mean(timing):.0f} s on average (min {np.min(timing):.0f}, max "
           f"{np.max(timing):.0f}).", "", "Data:", *details, "",
           "Settings (TrainSettings defaults): " + ", ".join(f"{k}={v}" for k, v in asdict(settings).items()
                                                             if k != "seed"), "",
           "### Without target labels", "",
           "| drug | model | single-cell AUROC | single-cell AUPRC | AUROC per seed | time / run |",
           "|---|---|---|---|---|---|", *main_rows,
           *[f"| {d} | published floor (SOURCES.md) | {PUBLISHED_FLOOR[d]:.3f} | – | – | – |" for d in drugs], "",
           "Per seed, against the floor (the published recipe's logistic regression) on the same cells: the paired "
           "bootstrap difference of AUROC (2,000 class-stratified resamples) with its 95% interval.", "",
           "| drug | seed | model AUROC | floor AUROC | model − floor [95% CI] |", "|---|---|---|---|---|",
           *per_seed_rows, ""]
    if variant_rows:
        out += ["Variants (same seeds):", "", "| drug | variant | single-cell AUROC | per seed | time / run |",
                "|---|---|---|---|---|", *variant_rows, ""]
    few_section = [
        "### A few labelled target cells", "",
        f"k labelled cells per class drawn at random ({args.few_shot_draws} draws; k = 0: none), the seed-0 run's "
        "members with heads refitted as `scatd train --few-shot-labels` does; AUROC on the cells whose labels "
        "were not used, mean ± sd over the draws, next to the bulk-only floor and a logistic regression on the "
        "same labelled cells alone, scored on the same cells.", "",
        "| drug | k | model | AUROC (other cells) | draws |", "|---|---|---|---|---|",
        *[f"| {d} | {k} | {n} | {m:.3f} ± {sd:.3f} | {cnt} |" for d, k, n, m, sd, cnt in few_rows], ""]
    out += rules(drugs, no_label_means, floor_aurocs, few_rows) + few_section
    loto_section = ["### Leave-one-target-out", "",
                    f"Each alternative refits the heads of the {args.seeds} default runs' members (mean target AUROC "
                    "over the seeds). A row 'chosen on X' is the alternative best on X; in bold its AUROC on the other "
                    "target, which played no part in the choice, next to the default's there.", "",
                    "Head inputs and L2 (C):", "", f"| setting | {' | '.join(drugs)} | mean |", "|---|---|---|---|",
                    *loto(grids["inputs"], drugs, f"{settings.head_inputs}, C={settings.head_c:g}"), "",
                    "Members (the first k of each run):", "", f"| members | {' | '.join(drugs)} | mean |",
                    "|---|---|---|---|", *loto(grids["members"], drugs, settings.members), ""]
    if grids["few"]:
        loto_section += [
            f"Few-shot weights (k = {FEW_SHOT_GRID_K} labelled cells per class, {args.few_shot_grid_draws} draws, "
            "seed-0 members; AUROC on the other cells):", "", f"| setting | {' | '.join(drugs)} | mean |",
            "|---|---|---|---|",
            *loto(grids["few"], drugs, f"few-shot weight {settings.few_shot_weight:g}, entropy weight "
                                       f"{settings.entropy_weight:g}"), ""]
    else:
        loto_section += ["Few-shot weights: not compared in this run (`--few-shot-grid-draws 0`).", ""]
    out += loto_section
    text = "\n".join(out)
    print(text)
    if args.out:
        write_block(Path(args.out), f"{BEGIN}\n{text}\n{END}\n")
    return 0


BEGIN, END = "<!-- BEGIN eval_transfer.py output -->", "<!-- END eval_transfer.py output -->"


def write_block(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (keeping the text around it), or write a new file."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + tail, encoding="utf-8")
    else:
        path.write_text(old + ("\n" if old else "") + block, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
