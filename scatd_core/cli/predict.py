"""``scatd predict``: P(resistant) for every cell, as the app computes it, into predictions.csv."""

from __future__ import annotations

from pathlib import Path

from scatd_core.cli._common import (BETA_MODES, Progress, add_data_arguments, add_label_arguments,
                                    apply_label_direction, positive_int, prepare_embeddings, probability, read_input,
                                    resolve_bundle, say)
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict P(resistant) per cell with a model bundle",
                       description="Predict P(resistant) for every cell and write predictions.csv (one row per "
                                   "input cell, in input order; the same table the app downloads).")
    add_data_arguments(p)
    p.add_argument("--output", required=True, help="output CSV (one row per input cell, in input order)")
    p.add_argument("--h5ad", help="also write the annotated AnnData here")
    add_prediction_arguments(p)
    add_label_arguments(p)
    p.add_argument("--sample-column", help="obs column with the sample / batch, copied into the table")
    add_engine_arguments(p)
    p.set_defaults(run=run)


def add_engine_arguments(p) -> None:
    g = p.add_argument_group("scale-out (Ray)")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (default); ray: shards of an .h5ad on a Ray cluster (needs the "
                        "[ray] extra), with the same results")
    g.add_argument("--address", help="Ray cluster to use (e.g. 10.0.0.5:6379; default: the [scaleout] address "
                                     "of the config, else a local Ray instance)")
    g.add_argument("--workers", type=positive_int, help="Ray workers (default: every CPU, or GPU, of the cluster)")
    g.add_argument("--shard-cells", type=positive_int,
                   help="cells per shard, rounded up to whole batches (default 16 batches); a shard is the "
                        "unit of retry and resume: the parts go to <output>.parts/, and the same command run "
                        "again skips the shards already written")


def add_prediction_arguments(p) -> None:
    p.add_argument("--mode", default="mean", choices=["mean", "sample"])
    p.add_argument("--samples", type=positive_int, default=50, help="draws per cell in sample mode (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="cells per batch (default: 1024 on a CPU; sized from free memory on a GPU)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=probability, help="decision threshold (default: the bundle's); "
                     "either is marked uncalibrated in the outputs")
    thr.add_argument("--expected-fraction", type=probability,
                     help="calibrate the threshold so this share of the cells is called resistant")
    thr.add_argument("--calibrate-on-labels", choices=["youden", "mcc"],
                     help="calibrate the threshold on the labelled cells of --label-column")
    p.add_argument("--beta-mode", choices=BETA_MODES, help="override the bundle's Swish mode")


def predict_from_args(adata, bundle, args, inputs=None):
    """Predict (and calibrate) as the arguments say; prints the time estimate, coverage, warnings
    and the threshold.

    Returns the :class:`~scatd_core.scaleout.ScaleoutRun` with ``--engine ray``, else ``None``.
    """
    from scatd_core._matrix import stored_fraction
    from scatd_core.predict import calibrate, device_description, estimate_seconds, predict, resolve_device

    run = None
    if getattr(args, "engine", "local") == "ray":
        from scatd_core import scaleout
        from scatd_core.config import settings

        address = args.address or settings()["scaleout_address"]
        run = scaleout.predict_ray(adata, bundle, args.output, mode=args.mode, n_samples=args.samples,
                                   seed=args.seed, device=args.device, batch_size=args.batch_size,
                                   threshold=args.threshold, beta_mode=args.beta_mode, shard_cells=args.shard_cells,
                                   workers=args.workers or settings()["scaleout_workers"], address=address,
                                   load_latent=False,
                                   progress=Progress("Predicting on Ray"))
        say(f"Ray: {run.workers} worker(s), {len(run.shards)} shards ({run.resumed} already done, resumed from "
            f"{run.store.folder}).")
    else:
        estimate = estimate_seconds(bundle, adata.n_obs, mode=args.mode, n_samples=max(2, args.samples),
                                    device=args.device, density=stored_fraction(adata.X))
        say(f"Estimated time: about {max(1, round(estimate)):,} s for {adata.n_obs:,} cells on "
            f"{device_description(resolve_device(args.device))} (from per-cell costs; nothing run yet).")
        predict(adata, bundle, inputs=inputs, mode=args.mode, n_samples=args.samples, seed=args.seed,
                device=args.device, batch_size=args.batch_size, threshold=args.threshold, beta_mode=args.beta_mode,
                progress=Progress("Predicting"))
    if args.expected_fraction is not None:
        calibrate(adata, expected_fraction=args.expected_fraction)
    elif args.calibrate_on_labels:
        if not args.label_column:
            from scatd_core.errors import ScatdError

            raise ScatdError("--calibrate-on-labels needs --label-column (and --label-resistant for codes like 0/1).")
        calibrate(adata, label_column=args.label_column, method=args.calibrate_on_labels)
    info = adata.uns["scatd"]
    cov = info.get("gene_coverage") or {}
    if cov:
        say(f"Genes: {cov['n_matched']:,} of {cov['n_model_genes']:,} model genes present "
            f"({cov['fraction_matched']:.1%}); {cov['n_model_genes'] - cov['n_matched']:,} missing (filled with 0); "
            f"{cov['n_extra_ignored']:,} extra genes ignored; {cov['n_duplicated_summed']:,} duplicated names summed.")
    for w in info["warnings"]:
        say(f"warning: {w}")
    thr = info["threshold"]
    say(f"Threshold {thr['value']:.4g}: {thr['detail']}" + ("" if thr["calibrated"] else
        " — UNCALIBRATED: the fraction called resistant may be far from the truth; use --expected-fraction or "
        "--calibrate-on-labels"))
    return run


def run(args) -> int:
    from scatd_core.export import predictions_table, to_csv_bytes, write_h5ad
    from scatd_core.predict import lowered_batch_message, summary

    bundle = resolve_bundle(args.model)
    adata = read_input(args, backed=True if args.engine == "ray" else "auto")
    if args.engine == "ray":
        from scatd_core.foundation import needs_embedding

        if needs_embedding(adata, bundle):
            raise ScatdError(f"{bundle.name} reads foundation-model embeddings, which {Path(args.input).name} does "
                             "not carry, and computing them on Ray is not available yet.",
                             "Compute them once in one process (scatd predict without --engine ray, with --h5ad "
                             "embedded.h5ad), then run --engine ray on that file.")
    prepare_embeddings(adata, bundle, args)
    label_column = apply_label_direction(adata, args)
    run_ = predict_from_args(adata, bundle, args)
    table = predictions_table(adata, [c for c in (label_column, args.sample_column) if c])
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(to_csv_bytes(table))
    counts = summary(adata)
    info = adata.uns["scatd"]
    say(f"Scored {info['n_scored']:,} of {info['n_cells']:,} cells on {info['params']['device']}: "
        f"{counts['n_resistant']:,} called {info['positive_label']}. Wrote {out}")
    if lowered_batch_message(counts):
        say("note: " + lowered_batch_message(counts))
    if args.h5ad:
        if run_ is not None:
            from scatd_core import scaleout

            scaleout.write_h5ad(run_, args.h5ad)
        else:
            write_h5ad(adata, args.h5ad)
        say(f"Wrote {args.h5ad}")
    return 0
