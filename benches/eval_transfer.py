"""Real-data evaluation of `scatd train`: bulk CCLE/GDSC -> SCAD single cells (Gefitinib, Sorafenib).

Trains on ``../shared/data/ccle/ccle_expression_299x697.csv`` (299 cell lines, log2 TPM+1) with
labels built from GDSC ln(IC50) (``labels_from_ic50``: below the drug's threshold = sensitive),
adapts to the SCAD HNSCC cells **without their labels**, and reports the single-cell AUROC and
AUPRC (positive class: resistant; SCAD's ``response`` is 1 = sensitive) over several seeds:

- ``scatd train`` with adaptation (target in pretraining + MMD while fine-tuning);
- the same with ``mmd_weight=0`` (the target only shapes the pretrained backbone);
- the same with adaptation off (the target is never used for training);
- the logistic-regression floor (deterministic), scikit-learn's default ``C=1`` and ``C=0.1``
  with balanced class weights, on two inputs: the model's own (both domains standardised as
  ``scatd train`` does) and the published recipe's (bulk z-scored over the labelled lines, the
  SCAD z-scores as given), where ``C=0.1, balanced`` reproduces the published floor
  (0.766 / 0.760, ``../shared/data/SOURCES.md``).

Usage (from the repository root; about 1 minute per training run on one CPU thread)::

    python benches/eval_transfer.py --seeds 5 --out benches/results_transfer.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scatd_core import __version__, io  # noqa: E402
from scatd_core.labels import encode_labels, labels_from_ic50  # noqa: E402
from scatd_core.train import TrainSettings, prepare_training_data, train_drug_model  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TARGETS = {"Gefitinib": "sc/scad_gefitinib_hnscc_z.csv", "Sorafenib": "sc/scad_sorafenib_hnscc_z.csv"}
PUBLISHED_FLOOR = {"Gefitinib": 0.766, "Sorafenib": 0.760}
VARIANTS = {  # name -> (adaptation, settings overrides)
    "scatd train (adaptation: pretraining + MMD)": (True, {}),
    "scatd train, MMD weight 0 (target in pretraining only)": (True, {"mmd_weight": 0.0}),
    "scatd train, adaptation off (bulk only)": (False, {}),
}


LR_SETTINGS = {"C=1": {}, "C=0.1, balanced": {"C": 0.1, "class_weight": "balanced"}}


def logistic_floor(data, truth: np.ndarray, bulk, target) -> dict[str, tuple[float, float]]:
    """LR on the model's own inputs, and on the published recipe's (bulk z-scored over the
    labelled lines only, the SCAD z-scores used as given)."""
    genes = [g for g in data.features]
    raw = bulk[data.bulk_ids, genes].X
    recipe_bulk = (raw - raw.mean(0)) / raw.std(0)
    recipe_target = target[data.target_rows, genes].X
    out = {}
    for inputs, (xb, xt) in {"scatd inputs": (data.bulk_x, data.target_x),
                             "published recipe": (recipe_bulk, recipe_target)}.items():
        for label, kw in LR_SETTINGS.items():
            lr = LogisticRegression(max_iter=10000, **kw).fit(xb, data.bulk_y)
            p = lr.predict_proba(xt)[:, 1]
            out[f"logistic regression, {label} ({inputs})"] = (roc_auc_score(truth, p),
                                                               average_precision_score(truth, p))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--drugs", nargs="+", default=list(TARGETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", type=int, help="indices of VARIANTS to run (default: all)")
    ap.add_argument("--out", help="write the markdown table here")
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
    variants = [v for i, v in enumerate(VARIANTS) if args.variants is None or i in args.variants]
    rows, details = [], []
    for drug in args.drugs:
        target = io.read(DATA / TARGETS[drug])
        data = prepare_training_data(bulk, labels, drug, target)
        truth = encode_labels(target.obs["response"].to_numpy()[data.target_rows], 0)  # SCAD: 1 = sensitive
        lab, genes = data.report["labels"], data.report["genes"]
        details.append(f"- {drug}: {lab['sensitive']} sensitive / {lab['resistant']} resistant cell lines "
                       f"(GDSC id {labels.attrs['report']['thresholds'][drug]['gdsc_id']}, threshold "
                       f"{labels.attrs['report']['thresholds'][drug]['threshold']}); {genes['n_panel']} shared genes; "
                       f"{len(truth)} cells ({int(truth.sum())} resistant).")
        for name, (auroc, auprc) in logistic_floor(data, truth, bulk, target).items():
            rows.append((drug, name, f"{auroc:.3f}", f"{auprc:.3f}", "–", "–", "deterministic"))
            print(f"{drug} {name}: AUROC {auroc:.3f} AUPRC {auprc:.3f}", flush=True)
        for variant in variants:
            adaptation, overrides = VARIANTS[variant]
            s = replace(settings, **overrides)
            res, secs = [], []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    _bundle, rep = train_drug_model(bulk, labels, drug, target, seed=seed, settings=s,
                                                    adaptation=adaptation, device="cpu", out=Path(tmp) / "m",
                                                    target_label_column="response", target_resistant_value=0)
                    secs.append(time.perf_counter() - t0)
                tm = rep["metrics"]["target"]
                res.append((tm["auroc"], tm["auprc"], rep["cv"]["auroc_mean"]))
                print(f"{drug} | {variant} | seed {seed}: target AUROC {tm['auroc']:.3f} AUPRC {tm['auprc']:.3f} "
                      f"bulk CV AUROC {rep['cv']['auroc_mean']:.3f} head epochs {rep['cv']['head_epochs']} "
                      f"({secs[-1]:.0f} s)", flush=True)
            a = np.array(res)
            rows.append((drug, variant, f"{a[:, 0].mean():.3f} ± {a[:, 0].std():.3f}",
                         f"{a[:, 1].mean():.3f} ± {a[:, 1].std():.3f}", f"{a[:, 2].mean():.3f}",
                         ", ".join(f"{v:.3f}" for v in a[:, 0]), f"{np.mean(secs):.0f} s"))
    table = ["| drug | model | single-cell AUROC | single-cell AUPRC | bulk CV AUROC | AUROC per seed | time / run |",
             "|---|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    table += [f"| {d} | published LR floor (SOURCES.md) | {PUBLISHED_FLOOR[d]:.3f} | – | – | – | – |"
              for d in args.drugs]
    text = "\n".join(table)
    env = (f"scatd {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
           f"{args.threads} torch thread(s), {args.seeds} seeds (0..{args.seeds - 1}), mean ± sd (population)")
    print(text)
    if args.out:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        block = (f"{BEGIN}\nCommand: `python benches/eval_transfer.py {command}`"
                 f"\n\nEnvironment: {env}\n\nData:\n" + "\n".join(details) + "\n\nSettings (TrainSettings defaults): "
                 + ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k != "seed")
                 + "\n\n" + text + f"\n{END}\n")
        write_block(Path(args.out), block)
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
