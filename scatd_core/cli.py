"""The ``scatd`` command line: the same functions as the app, for scripts and servers.

Every expected problem is a :class:`~scatd_core.errors.ScatdError`: it is printed as
``error: <what is wrong>`` plus a line saying what to do, and the exit code is 2. Anything
unexpected prints one line too (exit 1); ``--debug`` shows the traceback for bug reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scatd_core import __version__
from scatd_core.errors import ScatdError


def _say(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


class _Progress:
    """A one-line terminal progress indicator (only when stderr is a terminal)."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, fraction: float, message: str = "") -> None:
        pct = int(fraction * 100)
        if self.tty:
            print(f"\r{self.label}: {pct:3d}% {message}   ", end="", file=sys.stderr, flush=True)
            if fraction >= 1:
                print(file=sys.stderr)
        elif pct // 25 != self.last // 25 or fraction >= 1:
            _say(f"{self.label}: {pct}% {message}")
        self.last = pct


# --------------------------------------------------------------------------- import-checkpoint

def _add_import(sub) -> None:
    p = sub.add_parser("import-checkpoint", help="import an original scATD .pth into a model bundle",
                       description="Import an original scATD checkpoint (pretraining or transfer-learning) "
                                   "into a model bundle. Loaded with weights_only=True; keys must match exactly.")
    p.add_argument("pth", help="the original .pth state_dict file")
    p.add_argument("--backbone", required=True, choices=["dist_vae", "vae_sf", "vae_gf"])
    p.add_argument("--drug", help="drug name (required for drug classification checkpoints)")
    p.add_argument("--out", help="bundle folder to create (default: a folder in the model library)")
    p.add_argument("--genes", help="Dist_VAE: the model's input gene list (TSV with gene_name, or one per line)")
    p.add_argument("--style-reference", help="VAE_sf/VAE_gf: bulk embeddings .npy (samples x features) for AdaIN")
    p.add_argument("--input-transform", default="none", choices=["none", "log1p_cp10k"],
                   help="transform applied to expression before the model (default: none, as the original "
                        "inference script)")
    p.add_argument("--label-mapping", help='JSON, default {"sensitive": 0, "resistant": 1}')
    p.add_argument("--threshold", type=float, help="decision threshold on P(resistant) "
                                                    "(default: 0.05 Dist_VAE, 0.5 VAE_sf/VAE_gf)")
    p.add_argument("--beta-mode", choices=["shared_with_head", "separate"],
                   help="Dist_VAE: 'shared_with_head' reproduces the original inference (default for "
                        "imported Dist_VAE classifiers); 'separate' keeps the encoder's own Swish beta")
    p.add_argument("--name", help="display name in the model library")
    p.add_argument("--library", help="model library folder (default: $SCATD_MODEL_LIBRARY)")
    p.set_defaults(run=_run_import)


def _run_import(args) -> int:
    from scatd_core.bundle import import_checkpoint

    mapping = None
    if args.label_mapping:
        try:
            mapping = json.loads(args.label_mapping)
            if not isinstance(mapping, dict):
                raise ValueError
            mapping = {str(k): int(v) for k, v in mapping.items()}
        except (ValueError, TypeError):
            raise ScatdError(f"--label-mapping is not a JSON object of names to 0/1: {args.label_mapping}",
                             'Example: --label-mapping \'{"sensitive": 0, "resistant": 1}\'') from None
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ScatdError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    bundle = import_checkpoint(
        args.pth, args.backbone, drug=args.drug, out=args.out, genes=args.genes,
        style_reference=args.style_reference, input_transform=args.input_transform,
        label_mapping=mapping, threshold=args.threshold, beta_mode=args.beta_mode, name=args.name,
        library=args.library)
    arch = bundle.architecture
    print(f"Imported {bundle.kind} '{bundle.name}' ({args.backbone}, encoder {arch.encoder_dims}, "
          f"z {arch.z_dim}) -> {bundle.path}")
    if bundle.input_kind == "embedding" and bundle.style_mean is None and bundle.kind == "classifier":
        _say("warning: no --style-reference given; this model cannot predict until it has bulk style "
             "statistics (re-import with --style-reference BULK.npy).")
    return 0


# --------------------------------------------------------------------------- predict

def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict P(resistant) per cell with a model bundle")
    p.add_argument("--model", required=True, help="bundle folder (or a bundle name in the model library)")
    p.add_argument("--input", required=True, help="single-cell data: h5ad, 10x h5/mtx/zip, CSV/TSV(.gz), "
                                                  "loom, or .npy embeddings")
    p.add_argument("--output", required=True, help="output CSV (one row per input cell, in input order)")
    p.add_argument("--h5ad", help="also write the annotated AnnData here")
    p.add_argument("--mode", default="mean", choices=["mean", "sample"])
    p.add_argument("--samples", type=int, default=50, help="draws per cell in sample mode (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threshold", type=float, help="decision threshold (default: the bundle's)")
    p.add_argument("--beta-mode", choices=["shared_with_head", "separate"], help="override the bundle's Swish mode")
    p.add_argument("--orientation", default="auto", choices=["auto", "cells_x_genes", "genes_x_cells"],
                   help="CSV/TSV orientation (default: detected)")
    p.set_defaults(run=_run_predict)


def resolve_bundle(name_or_path: str, library: str | None = None):
    from scatd_core.bundle import list_library, load_bundle
    from scatd_core.config import model_library_dir

    path = Path(name_or_path)
    if path.is_dir():
        return load_bundle(path)
    root = Path(library) if library else model_library_dir()
    candidate = root / name_or_path
    if candidate.is_dir() and "/" not in name_or_path and ".." not in name_or_path:
        return load_bundle(candidate)
    names = [e.path.name for e in list_library(root) if e.ok]
    raise ScatdError(f"No model bundle at {name_or_path!r}.",
                     f"Installed in {root}: {', '.join(names) if names else 'none'}. "
                     "Import one with `scatd import-checkpoint`, or train one with `scatd train`.")


def _run_predict(args) -> int:
    from scatd_core import io
    from scatd_core.predict import predict, prediction_table

    bundle = resolve_bundle(args.model)
    adata = io.read(args.input, orientation=args.orientation)
    _say(f"Read {adata.n_obs:,} cells x {adata.n_vars:,} features from {Path(args.input).name}")
    predict(adata, bundle, mode=args.mode, n_samples=args.samples, seed=args.seed, device=args.device,
            batch_size=args.batch_size, threshold=args.threshold, beta_mode=args.beta_mode,
            progress=_Progress("Predicting"))
    info = adata.uns["scatd"]
    cov = info.get("gene_coverage") or {}
    if cov:
        _say(f"Genes: {cov['n_matched']:,} of {cov['n_model_genes']:,} model genes present "
             f"({cov['fraction_matched']:.1%}); {cov['n_model_genes'] - cov['n_matched']:,} missing (filled with 0); "
             f"{cov['n_extra_ignored']:,} extra genes ignored; {cov['n_duplicated_summed']:,} duplicated names summed.")
    for w in info["warnings"]:
        _say(f"warning: {w}")
    table = prediction_table(adata)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    n_pos = int((table["label"] == info["positive_label"]).sum())
    _say(f"Scored {info['n_scored']:,} of {info['n_cells']:,} cells on {info['params']['device']}: "
         f"{n_pos:,} predicted {info['positive_label']} at threshold {info['params']['threshold']:g}. "
         f"Wrote {out}")
    if args.h5ad:
        from scatd_core.report import write_h5ad

        write_h5ad(adata, args.h5ad)
        _say(f"Wrote {args.h5ad}")
    return 0


# --------------------------------------------------------------------------- models

def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the installed model bundles")
    p.add_argument("--library", help="model library folder (default: $SCATD_MODEL_LIBRARY)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_models)


def _run_models(args) -> int:
    from scatd_core.bundle import list_library
    from scatd_core.config import model_library_dir

    root = Path(args.library) if args.library else model_library_dir()
    entries = list_library(root)
    if args.json:
        print(json.dumps([e.bundle.summary() if e.ok else {"path": str(e.path), "problem": e.problem}
                          for e in entries], indent=2))
        return 0
    if not entries:
        print(f"No model bundles in {root}.\nImport original checkpoints with `scatd import-checkpoint`, "
              "train one with `scatd train`, or build the demo with `scatd demo`.")
        return 0
    for e in entries:
        if e.ok:
            s = e.bundle.summary()
            print(f"{e.path.name}\t{e.bundle.title}\t{s['kind']}\t{s['n_input_features']} inputs")
        else:
            print(f"{e.path.name}\tBROKEN: {e.problem}")
    return 0


# --------------------------------------------------------------------------- demo

def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole workflow on the built-in demo and write a report folder",
                       description="Build the demo (simulated tumour + a model trained on simulated cell lines; "
                                   "about a minute on first use), then predict, embed, rank biomarkers and write "
                                   "predictions.csv, metrics.csv, biomarkers.csv, annotated.h5ad and report.html.")
    p.add_argument("--out", default="scatd-demo-report", help="report folder (default: ./scatd-demo-report)")
    p.add_argument("--rebuild", action="store_true", help="simulate and train the demo again from scratch")
    p.add_argument("--library", help="model library folder (default: $SCATD_MODEL_LIBRARY)")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    import shutil

    from scatd_core import demo, embed, explain, io, report
    from scatd_core.simulate import RESISTANCE_PROGRAM

    if args.rebuild and demo.bundle_path(args.library).exists():
        shutil.rmtree(demo.bundle_path(args.library))
    path, bundle = demo.ensure(library=args.library, progress=_Progress("Building the demo"))
    adata = io.read(path)
    _say(f"Demo: {adata.n_obs:,} simulated cells; model {bundle.title}")
    result = report.predict_all_cells(adata, bundle, progress=_Progress("Predicting"))
    embed.embed(result, progress=_Progress("UMAP"))
    expl = explain.explain(result, bundle, progress=_Progress("Integrated gradients"))
    paths = report.write_report(result, args.out, label_column=demo.DEMO_LABEL_COLUMN, positive="resistant",
                                group_columns=[demo.DEMO_SAMPLE_COLUMN], data_name="demo (simulated data)")
    expl.ranking.to_csv(Path(args.out) / "biomarkers.csv", index=False)
    top = list(expl.ranking["feature"][:20])
    planted = sum(g in RESISTANCE_PROGRAM for g in top)
    ev = report.evaluate_result(result, demo.DEMO_LABEL_COLUMN, "resistant")[0]
    print(f"AUROC against the simulated truth: {ev.auroc:.3f}; {planted} of the top 20 biomarkers are "
          f"planted resistance genes.")
    for name, p in {**paths, "biomarkers": Path(args.out) / "biomarkers.csv"}.items():
        print(f"{name}: {p}")
    return 0


# --------------------------------------------------------------------------- main

def _lazy(module: str, name: str):
    """A subcommand defined in another module (imported when the parser is built)."""
    def add(sub) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(sub)
    return add


COMMANDS = [_add_import, _add_predict, _add_models, _add_demo,
            _lazy("scatd_core.cli_explain", "add_explain"),
            _lazy("scatd_core.cli_train", "add_train"),
            _lazy("scatd_core.cli_train", "add_labels_from_ic50")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scatd", description="scATD Studio: single-cell drug-resistance "
                                     "prediction with the scATD models.")
    parser.add_argument("--version", action="version", version=f"scatd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ScatdError as exc:
        _say(f"error: {exc.message}")
        if exc.hint:
            _say(exc.hint)
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback with --debug
        if args.debug:
            raise
        _say(f"error: unexpected {type(exc).__name__}: {exc}")
        _say("This is a bug in scATD Studio; run again with --debug and report the output.")
        return 1


if __name__ == "__main__":
    sys.exit(main())
