"""``scatd predict``: P(resistant) for every cell, as the app computes it, into predictions.csv.

With several ``--model`` (or ``--panel NAME``) it scores a panel of drug models in one run
(:func:`scatd_core.panel.predict_panel`) and writes one column set per drug into the same table.
"""

from __future__ import annotations

from pathlib import Path

from scatd_core._words import counted, percent
from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import (BETA_MODES, Progress, add_data_arguments, add_label_arguments,
                                    add_overwrite_argument, add_spelled_both_ways, apply_label_direction, cell_mask,
                                    check_columns,
                                    add_pipeline_arguments, check_outputs, finish_run, positive_int, prepare_embeddings, probability, read_input,
                                    refuse_existing, resolve_bundle, say)


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict P(resistant) per cell with a model bundle, or a panel of them",
                       description="Predict P(resistant) for every cell and write predictions.csv (one row per "
                                   "input cell, in input order; the same table the app downloads). Repeat --model, "
                                   "or give --panel, to score a panel of drug models in one run: one column set "
                                   "per drug (P(resistant), label, calibrated) in the same table and h5ad; a model "
                                   "that cannot score the data is reported and skipped.")
    add_data_arguments(p, several=True)
    p.add_argument("--panel", help="a panel you saved (`scatd panel save`), instead of --model")
    p.add_argument("--library", help=LIBRARY_HELP)
    add_spelled_both_ways(p, "--output", "--out", required=True,
                          help="output CSV (one row per input cell, in input order)")
    p.add_argument("--h5ad", help="also write the annotated AnnData here")
    p.add_argument("--group-summary", help="panel: also write the per-cluster/per-sample summary CSV here")
    p.add_argument("--drug-metrics", help="panel: also write the per-drug metrics CSV here (one row per drug: its "
                                          "status and why it was not scored, cells called resistant/sensitive, "
                                          "threshold, the model's bulk CV AUROC and best baseline, the AUROC "
                                          "against --label-column)")
    p.add_argument("--html", help="panel: also write the HTML panel report here")
    add_overwrite_argument(p, "replace --output, --h5ad, --group-summary, --drug-metrics, --html or --json files that "
                              "already exist "
                              "(without it, an existing file is refused before anything is run)")
    add_prediction_arguments(p)
    add_label_arguments(p, "the calls are evaluated against it (AUROC, AUPRC; `scatd report` adds the curves and "
                           "metrics.csv) and --calibrate-on-labels uses it; for a panel, DRUG=COLUMN: the drug whose "
                           "response it records, the only one calibrated on it")
    p.add_argument("--sample-column", help="obs column with the sample / batch, copied into the table")
    add_engine_arguments(p, "predict")
    add_pipeline_arguments(p)
    p.set_defaults(run=run, outputs=_outputs)  # outputs: what --json may not name


#: What ``--shard-cells`` does in each command, and where its parts go (``--engine ray``). The numbers are
#: scaleout's defaults (BATCHES_PER_SHARD, EXPLAIN_SHARD_CELLS, CHUNKS_PER_SHARD of CHUNK_CELLS; a test
#: checks them) and the folders those of predict_ray / explain_ray / embed_ray as each command calls them.
_EMBEDDING_SHARDS = ("VAE_sf/VAE_gf embeddings computed from expression first: whole chunks of 2,048 cells "
                     "(default 4 chunks, 8,192 cells)")
_RESUME = "; a shard is the unit of retry and resume: the same command run again after a stop skips the shards " \
          "already written"
SHARD_CELLS_HELP = {
    "predict": "cells per shard of the prediction, rounded up to whole batches (default 16 batches of "
               "--batch-size: 16,384 cells on a CPU), its parts in <output>.parts/; " + _EMBEDDING_SHARDS
               + ", parts in <output>.embeddings.parts/" + _RESUME,
    "explain": "explained cells per shard of the attributions, about (whole 1,024-cell batches; default 512), "
               "their parts in <output>.parts/; the prediction before them: cells per shard rounded up to "
               "whole 1,024-cell batches (default 16 batches, 16,384 cells), parts in "
               "<output>.predictions.parts/; " + _EMBEDDING_SHARDS + ", parts in <output>.embeddings.parts/"
               + _RESUME,
    "report": "cells per shard of the prediction, rounded up to whole batches (default 16 batches of "
              "--batch-size: 16,384 cells on a CPU); with --explain, explained cells per shard of the "
              "attributions, about (default 512); " + _EMBEDDING_SHARDS + ". The parts of all three go to "
              "<out>/ray/" + _RESUME,
}


def add_engine_arguments(p, command: str | None = None) -> None:
    """``--engine``, ``--address``, ``--workers``, ``--shard-cells``, ``--keep-parts``. ``command``:
    predict, explain or report, whose shards and parts ``--shard-cells`` describes (default: the
    parser's own name, its ``prog``'s last word)."""
    command = command or p.prog.split()[-1]
    g = p.add_argument_group("scale-out (Ray)")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (default); ray: shards of an .h5ad on a Ray cluster (needs the "
                        "[ray] extra), with the same results")
    g.add_argument("--address", help="Ray cluster to use (e.g. 10.0.0.5:6379; default: the [scaleout] address "
                                     "of the config, else a local Ray instance)")
    g.add_argument("--workers", type=positive_int, help="Ray workers (default: every CPU, or GPU, of the cluster)")
    g.add_argument("--shard-cells", type=positive_int, help=SHARD_CELLS_HELP[command])
    g.add_argument("--keep-parts", action="store_true",
                   help="keep the shard parts once every output is written (default: removed then, as they can "
                        "be large: the embeddings of every cell, for one)")


def parts_note(args, folder) -> str:
    """Where a ``--engine ray`` run keeps its shard parts, and whether they stay: removed once every
    output is written (:func:`scatd_core.cli._remove_parts`), unless ``--keep-parts``."""
    if getattr(args, "keep_parts", False):
        return f"parts kept in {folder}"
    return f"parts in {folder} until every output is written; --keep-parts keeps them"


def add_prediction_arguments(p) -> None:
    p.add_argument("--mode", default="mean", choices=["mean", "sample"],
                   help="mean (default): P(resistant) of each cell's latent mean, the same every run; sample: "
                        "the mean P(resistant) and its sd over --samples seeded draws of each cell's latent")
    p.add_argument("--samples", type=positive_int, default=50,
                   help="draws per cell in sample mode (default 50; 1: one seeded draw per cell, as the original "
                        "scATD inference, with no sd)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sample-mode draws; a cell's draws depend on the seed, its row and the draw "
                        "number only, not on the batch size (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="cells per batch (default: 1024 on a CPU; sized from free memory on a GPU)")
    add_threshold_arguments(p)
    p.add_argument("--beta-mode", choices=BETA_MODES, help="override the bundle's Swish mode")


def add_threshold_arguments(p, panel: bool = True) -> None:
    """``--threshold`` / ``--expected-fraction`` / ``--calibrate-on-labels`` (one of them;
    applied by :func:`predict_from_args` or :func:`calibrate_from_args`). ``panel``: say what
    ``DRUG=FRACTION`` does for a panel."""
    thr = p.add_mutually_exclusive_group()
    if panel:
        thr.add_argument("--threshold", type=threshold_value, action=_ThresholdAction, metavar="[DRUG=]THRESHOLD",
                         help="decision threshold (default: the bundle's); either is marked uncalibrated in the "
                              "outputs; for a panel, DRUG=THRESHOLD sets one drug's (repeat it; each model has its "
                              "own scale of P(resistant), so a bare value is refused for a panel; drugs not named "
                              "keep their model's default)")
    else:
        thr.add_argument("--threshold", type=probability, help="decision threshold (default: the bundle's); "
                         "either is marked uncalibrated in the outputs")
    thr.add_argument("--expected-fraction", type=expected_fraction, action="append",
                     metavar="[DRUG=]FRACTION" if panel else "FRACTION",
                     help="calibrate the threshold so this share of the cells is called resistant" + (
                         "; for a panel, DRUG=FRACTION gives one drug its own (repeat it; drugs not named take the "
                         "plain value when one is given, else keep their threshold)" if panel else ""))
    thr.add_argument("--calibrate-on-labels", choices=["youden", "mcc"],
                     help="calibrate the threshold on the labelled cells of --label-column" + (
                         "; for a panel, --label-column DRUG=COLUMN: a label column records one drug's response, "
                         "so only that drug is calibrated on it (the others keep their threshold)" if panel else ""))


def _drug_probability(text: str, what: str, example: str):
    """``VALUE`` (a probability) or ``DRUG=VALUE`` (``(drug, value)``); ``what`` names VALUE in the error."""
    drug, sep, value = text.rpartition("=")
    if not sep:
        return probability(text)
    if not drug.strip():
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not DRUG={what} (e.g. CISPLATIN={example})")
    return drug.strip(), probability(value)


def threshold_value(text: str):
    """``THRESHOLD`` or ``DRUG=THRESHOLD`` (``(drug, threshold)``)."""
    return _drug_probability(text, "THRESHOLD", "0.4")


class _ThresholdAction(__import__("argparse").Action):
    """``--threshold``: a plain value sets ``args.threshold``; each ``DRUG=THRESHOLD`` goes into
    ``args.threshold_per_drug`` (``{drug: threshold}``), so ``args.threshold`` stays one number."""

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, tuple):
            per = dict(getattr(namespace, "threshold_per_drug", None) or {})
            per[values[0]] = values[1]
            namespace.threshold_per_drug = per
        else:
            setattr(namespace, self.dest, values)


def refuse_threshold_per_drug(args) -> None:
    """``--threshold DRUG=THRESHOLD`` given to a run of one model: refused, saying to give the value alone."""
    per = getattr(args, "threshold_per_drug", None)
    if per:
        from scatd_core.errors import ScatdError

        drug, value = next(iter(per.items()))
        raise ScatdError(f"--threshold {drug}={value:g} gives one drug of a panel its own threshold; this run has one "
                         "model.", f"Give the threshold alone: --threshold {value:g}.")


def expected_fraction(text: str):
    """``FRACTION`` or ``DRUG=FRACTION`` (``(drug, fraction)``)."""
    return _drug_probability(text, "FRACTION", "0.2")


def expected_fractions(args) -> tuple[float | None, dict[str, float]]:
    """``--expected-fraction``'s plain value (``None`` if none) and its ``{DRUG: fraction}``."""
    from scatd_core.errors import ScatdError

    plain = [v for v in args.expected_fraction or [] if not isinstance(v, tuple)]
    per_drug = dict(v for v in args.expected_fraction or [] if isinstance(v, tuple))
    if len(plain) > 1:
        raise ScatdError(f"--expected-fraction was given {len(plain)} plain values ({', '.join(map(str, plain))}).",
                         "Give one for every drug, and DRUG=FRACTION for the drugs that differ.")
    return (plain[0] if plain else None), per_drug


def predict_from_args(adata, bundle, args, inputs=None, *, output=None, load_latent: bool = False, mask=None):
    """Predict (and calibrate) as the arguments say; prints the time estimate, coverage, warnings
    and the threshold.

    Returns the :class:`~scatd_core.scaleout.ScaleoutRun` with ``--engine ray``, else ``None``
    (its shard parts beside ``output``, default ``args.output``; the latent read into the data
    only with ``load_latent``). ``mask``: the cells to score (:func:`~scatd_core.cli._common.cell_mask`).
    """
    from scatd_core._matrix import stored_fraction
    from scatd_core.predict import device_description, estimate_seconds, predict, resolve_device

    refuse_threshold_per_drug(args)  # DRUG=THRESHOLD is a panel's: said before any work
    run = None
    if getattr(args, "engine", "local") == "ray":
        from scatd_core import scaleout
        from scatd_core.config import settings

        address = args.address or settings()["scaleout_address"]
        run = scaleout.predict_ray(adata, bundle, output or args.output, mask=mask, mode=args.mode, n_samples=args.samples,
                                   seed=args.seed, device=args.device, batch_size=args.batch_size,
                                   threshold=args.threshold, beta_mode=args.beta_mode, shard_cells=args.shard_cells,
                                   workers=args.workers or settings()["scaleout_workers"], address=address,
                                   load_latent=load_latent, progress=Progress("Predicting on Ray"),
                                   min_gene_coverage=getattr(args, "min_gene_coverage", None), on_estimate=say)
        say(f"Ray: {counted(run.workers, 'worker')}, {counted(len(run.shards), 'shard')}"
            + (f" ({run.resumed} already done, resumed from {run.store.folder})." if run.resumed else
               f" ({parts_note(args, run.store.folder)})."))
    else:
        resolve_device(args.device)  # a device that is not there is said first, whatever the data
        if inputs is None:  # refuse data the model cannot read (e.g. a .npy of another width) before estimating
            from scatd_core.inputs import InputSpec, model_data, model_source, unscorable_error

            data, choice = model_data(adata, bundle)
            source = model_source(data, InputSpec.of(bundle))
            if source.alignment is not None:  # too few of the model's genes: refused before the estimate, as predict
                from scatd_core.genes import coverage_refusal

                from scatd_core.matrices import fuller_elsewhere

                refusal = coverage_refusal(data, bundle.genes, min_coverage=getattr(args, "min_gene_coverage", None),
                                           model_name=bundle.name, also=fuller_elsewhere(adata, choice, bundle.genes))
                if refusal is not None:
                    raise refusal
            problem = unscorable_error(adata, bundle)  # e.g. z-scored values for a model that log-normalises
            if problem is not None:
                raise problem
        n_run = adata.n_obs if mask is None else int(mask.sum())  # the cells --mask leaves to score, as the app
        read = inputs.data if inputs is not None else data  # the matrix the model reads (X, adata.raw, a layer)
        estimate = estimate_seconds(bundle, n_run, mode=args.mode, n_samples=max(2, args.samples),
                                    device=args.device, density=stored_fraction(read.X))
        say(f"Estimated time: about {max(1, round(estimate)):,} s for {n_run:,} cells on "
            f"{device_description(resolve_device(args.device))} (from per-cell costs; nothing run yet).")
        predict(adata, bundle, inputs=inputs, mask=mask, mode=args.mode, n_samples=args.samples, seed=args.seed,
                device=args.device, batch_size=args.batch_size, threshold=args.threshold, beta_mode=args.beta_mode,
                progress=Progress("Predicting"), min_gene_coverage=getattr(args, "min_gene_coverage", None))
    calibrate_from_args(adata, args)
    report_prediction(adata)
    return run


def calibrate_from_args(adata, args, key_added: str | None = None) -> None:
    """``--expected-fraction`` / ``--calibrate-on-labels``; ``--threshold`` (the calls made at it by
    predict) recorded as "set with --threshold", as the terminal, the report and its histogram say."""
    from scatd_core.predict import SET_WITH_OPTION, calibrate, set_threshold

    refuse_threshold_per_drug(args)
    if args.threshold is not None:
        set_threshold(adata, args.threshold, "user", key_added=key_added, detail=SET_WITH_OPTION)

    fraction, per_drug = expected_fractions(args)
    if per_drug:
        from scatd_core.errors import ScatdError

        raise ScatdError(f"--expected-fraction {next(iter(per_drug))}=... gives one drug of a panel its own fraction; "
                         "this run has one model.", "Give the fraction alone: --expected-fraction 0.3.")
    if fraction is not None:
        calibrate(adata, expected_fraction=fraction, key_added=key_added)
    elif args.calibrate_on_labels:
        if not args.label_column:
            from scatd_core.errors import ScatdError

            raise ScatdError("--calibrate-on-labels needs --label-column (and --label-resistant for codes like 0/1).")
        calibrate(adata, label_column=args.label_column, method=args.calibrate_on_labels, key_added=key_added)


def report_prediction(adata, key_added: str | None = None, label: str = "") -> None:
    """Coverage, warnings and the threshold of one prediction, for the terminal."""
    from scatd_core._keys import result_keys

    info = adata.uns[result_keys(key_added).run]
    cov = info.get("gene_coverage") or {}
    if cov:
        say(f"{label}Genes: {cov['n_matched']:,} of {cov['n_model_genes']:,} model genes present "
            f"({percent(cov['n_matched'] / max(cov['n_model_genes'], 1))}); {cov['n_model_genes'] - cov['n_matched']:,} missing (filled with 0); "
            f"{cov['n_extra_ignored']:,} extra genes ignored; {cov['n_duplicated_summed']:,} duplicated names summed.")
    for w in info["warnings"]:
        say(f"{label}warning: {w}")
    for note in info.get("notes", []):  # what the model input did with the values (e.g. un-logged them)
        say(f"{label}note: {note}")
    thr = info["threshold"]
    routes = ("--expected-fraction DRUG=FRACTION, or --calibrate-on-labels with --label-column DRUG=COLUMN"
              if label else "--expected-fraction or --calibrate-on-labels")  # a panel's drug: name it
    say(f"{label}Threshold {thr['value']:.4g}: {thr['detail']}" + ("" if thr["calibrated"] else
        f" — UNCALIBRATED: the fraction called resistant may be far from the truth; use {routes}"))


def panel_bundles(args) -> list:
    """The bundles of ``--model`` (repeated) or ``--panel``; ``[]`` means a single ``--model``."""
    from scatd_core.errors import ScatdError

    models = args.model or []
    if args.panel and models:
        raise ScatdError("Give either --model (once or more) or --panel, not both.")
    if args.panel:
        from scatd_core.panel import load_panel

        from scatd_core.panel import find_saved, list_panels, lost_from_saved_panel

        bundles, problems = load_panel(args.panel, os_user(), library=args.library, cli=True)
        for problem in problems:
            say(f"warning: panel {args.panel}: skipped {problem}")
        if not bundles:
            raise ScatdError(f"No model of panel {args.panel!r} can be loaded.",
                             "Check the library with `scatd models`, and save the panel again.")
        from scatd_core.panel import check_models

        # the drugs requested but not loaded: named in every output with why (not silently dropped)
        saved = list_panels(os_user(), cli=True)  # 'LUNG' is the panel saved as 'Lung' (QA: KeyError, exit 1)
        args.panel_lost = lost_from_saved_panel(saved[find_saved(saved, args.panel)], bundles, problems)
        bundles, notes = check_models(bundles)
        for note in notes:
            say(f"warning: {note}")
        args.panel_models = [str(b.path) for b in bundles]  # --json's "models": the panel's model folders
        return bundles
    if not models:
        raise ScatdError("Say which model to use: --model NAME (repeat it for a panel), or --panel NAME.",
                         "`scatd models` lists the installed models; `scatd panel list` your saved panels.")
    if len(models) < 2:
        return []
    from scatd_core.panel import check_models

    bundles, notes = check_models([resolve_bundle(m, args.library) for m in models])
    for note in notes:
        say(f"warning: {note}")
    return bundles


def _outputs(args) -> dict:
    return {"--output": args.output, "--h5ad": args.h5ad, "--group-summary": args.group_summary,
            "--drug-metrics": args.drug_metrics, "--html": args.html}


def run(args) -> int:
    check_outputs(args, _outputs(args), existing=False)  # an existing one: refused once the models are known
    bundles = panel_bundles(args)
    if bundles:
        return run_panel(args, bundles)
    refuse_threshold_per_drug(args)  # before the data are read
    from scatd_core.errors import ScatdError

    panel_only = [flag for flag, value in (("--group-summary", args.group_summary),
                                           ("--drug-metrics", args.drug_metrics), ("--html", args.html)) if value]
    if panel_only:
        raise ScatdError(f"{' and '.join(panel_only)} {'are' if len(panel_only) > 1 else 'is'} for a panel of "
                         "models (several --model); this run has one.",
                         "For one model's report (per-sample fractions, figures), use `scatd report --out DIR`.")
    from scatd_core._output import replacing_together, written_as
    from scatd_core.export import predictions_table, to_csv_bytes, write_h5ad
    from scatd_core.predict import lowered_batch_message, summary

    bundle = resolve_bundle(args.model[0], args.library)
    refuse_existing(args, _outputs(args))  # before the data are read: nothing run, nothing replaced
    adata = read_input(args, backed=True if args.engine == "ray" else "auto")
    check_columns(adata, args)
    prepare_embeddings(adata, bundle, args)  # on Ray too with --engine ray
    label_column = apply_label_direction(adata, args)
    run_ = predict_from_args(adata, bundle, args, mask=cell_mask(adata, args))
    table = predictions_table(adata, [c for c in (label_column, args.sample_column) if c], label_column=label_column)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the CSV and the h5ad are one pair: both written under temporary names, then put in place
    # together, so a run that fails or is stopped while writing the second leaves neither new
    with replacing_together([out] + ([Path(args.h5ad)] if args.h5ad else [])) as tmps:
        with written_as(tmps[0], out):
            tmps[0].write_bytes(to_csv_bytes(table))
        if args.h5ad:
            with written_as(tmps[1], args.h5ad):
                if run_ is not None:
                    from scatd_core import scaleout

                    scaleout.write_h5ad(run_, tmps[1])
                else:
                    write_h5ad(adata, tmps[1])
    counts = summary(adata)
    info = adata.uns["scatd"]
    say(f"Scored {info['n_scored']:,} of {info['n_cells']:,} cells on {info['params']['device']}: "
        f"{counts['n_resistant']:,} called {info['positive_label']}. Wrote {out}")
    if lowered_batch_message(counts):
        say("note: " + lowered_batch_message(counts))
    if args.h5ad:
        say(f"Wrote {args.h5ad}")
    if label_column:  # QA: the labels were written beside the calls, and nothing said of how they agree
        say_evaluation(adata, label_column)
    return finish_run(args, adata, _outputs(args).values())


def run_panel(args, bundles) -> int:
    """Score every model of the panel; one column set per drug in the table and the h5ad."""
    from scatd_core import export, panel
    from scatd_core._output import replacing_together, written_as
    from scatd_core.errors import ScatdError
    from scatd_core.predict import SET_WITH_OPTION, set_threshold

    if getattr(args, "engine", "local") == "ray":
        raise ScatdError("--engine ray scores one model at a time; a panel runs in this process.",
                         "Leave out --engine ray, or run one `scatd predict --engine ray --model X` per drug.")
    fraction, per_drug = expected_fractions(args)
    names = panel.distinct_drugs([b.drug or b.name for b in bundles])
    unknown = [d for d in per_drug if d.lower() not in {n.lower() for n in names}]
    if unknown:
        raise ScatdError(f"--expected-fraction names {', '.join(unknown)}, not a drug of the panel.",
                         f"The panel's drugs: {', '.join(names)}.")
    thresholds = panel_thresholds(args, names)  # before any work: a bare --threshold is refused for a panel
    label_drug = panel_label_drug(args, names)  # before any work; args.label_column is then the column
    refuse_existing(args, _outputs(args))  # before the data are read: nothing run, nothing replaced
    adata = read_input(args)
    check_columns(adata, args)
    mask = cell_mask(adata, args)
    panel.refuse_unscorable(adata, bundles)  # e.g. z-scored values for log models: refused before any work
    for bundle in bundles:  # VAE_sf/VAE_gf on expression: embeddings once per backbone (cached in the data)
        try:
            prepare_embeddings(adata, bundle, args)
        except ScatdError as exc:
            say(f"warning: {bundle.drug or bundle.name}: no cell embeddings ({exc.message}); it will be skipped")
    label_column = apply_label_direction(adata, args)
    lost = list(getattr(args, "panel_lost", None) or [])
    say(f"Panel of {len(bundles)} models: {', '.join(names)}" + (
        f" ({len(bundles) + len(lost)} drugs requested; not loaded: {', '.join(d for d, _ in lost)})" if lost else ""))
    members = panel.predict_panel(adata, bundles, mask=mask, mode=args.mode, n_samples=args.samples, seed=args.seed,
                                  device=args.device, batch_size=args.batch_size, beta_mode=args.beta_mode,
                                  progress=Progress("Panel"), min_gene_coverage=getattr(args, "min_gene_coverage", None),
                                  not_loaded=lost)
    scored = [m for m in members if m.scored]
    for m in members:
        if not m.scored:
            say(f"warning: {m.drug} (model {m.folder}) skipped: {m.problem}")
        elif m.drug in thresholds:
            set_threshold(adata, thresholds[m.drug], "user", key_added=m.key, detail=SET_WITH_OPTION)
    lost_thresholds = [d for d in thresholds if d not in {m.drug for m in scored}]
    if lost_thresholds:
        say(f"warning: --threshold {', '.join(lost_thresholds)}: not scored, so no threshold set.")
    if args.calibrate_on_labels:
        calibrate_panel_on_labels(adata, args, scored, label_drug)
    if fraction is not None or per_drug:
        lost = [d for d in per_drug if d.lower() not in {m.drug.lower() for m in scored}]
        if lost:
            say(f"warning: --expected-fraction {', '.join(lost)}: not scored, so not calibrated.")
        panel.calibrate_panel(adata, fraction, {d: f for d, f in per_drug.items() if d not in lost})
    for m in scored:
        report_prediction(adata, m.key, label=f"{m.drug}: ")
    panel.refresh(adata)
    if label_drug and label_column:  # the labels are that drug's: its AUROC, as a single prediction gives it
        found = panel.set_label_drug(adata, label_drug, label_column)
        say(panel.label_statement(found) if not found.get("problem") else f"warning: {panel.label_statement(found)}")
        for note in [] if found.get("problem") else found["notes"]:
            say(f"note: {note}")
    extra = [c for c in (label_column, args.sample_column) if c]
    out = Path(args.output)
    groups = [c for c in (args.sample_column,) if c]
    # one set of files: written under temporary names, put in place together once all are written
    files = {"output": out, **{k: Path(getattr(args, k)) for k in ("group_summary", "drug_metrics", "html", "h5ad")
                               if getattr(args, k)}}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    with replacing_together(files.values()) as tmps:
        tmp = dict(zip(files, tmps))
        with written_as(tmp["output"], out):
            tmp["output"].write_bytes(export.to_csv_bytes(panel.panel_table(adata, extra)))
        if args.group_summary:
            with written_as(tmp["group_summary"], args.group_summary):
                tmp["group_summary"].write_bytes(export.to_csv_bytes(export.panel_summary_table(adata, groups)))
        if args.drug_metrics:
            with written_as(tmp["drug_metrics"], args.drug_metrics):
                tmp["drug_metrics"].write_bytes(export.to_csv_bytes(export.panel_drug_metrics(adata)))
        if args.html:
            page = export.panel_html_report(adata, group_columns=groups, data_name=Path(args.input).name,
                                            files=[Path(f).name for f in (args.output, args.group_summary,
                                                                         args.drug_metrics, args.h5ad) if f])
            with written_as(tmp["html"], args.html):
                tmp["html"].write_text(page, encoding="utf-8")
        if args.h5ad:
            with written_as(tmp["h5ad"], args.h5ad):
                export.write_h5ad(adata, tmp["h5ad"])
    say_panel_comparison(adata, say)
    for path in files.values():
        say(f"Wrote {path}")
    if panel.requested_statement(adata):  # last, where it is seen: not every drug requested was scored
        say(f"warning: {panel.requested_statement(adata)} The files name them (empty columns, "
            f"<DRUG>_not_scored_reason '{panel.DRUG_NOT_SCORED}' in the CSV; why, once per drug, in "
            + (f"{args.drug_metrics}" if args.drug_metrics else "--drug-metrics") + "):")
        for line in panel.not_scored_lines(adata):
            say(f"  - {line}")
    return finish_run(args, adata, _outputs(args).values())


def panel_thresholds(args, drugs: list[str]) -> dict[str, float]:
    """``{drug: threshold}`` of ``--threshold DRUG=THRESHOLD`` (drug names as the panel names them,
    matched case-insensitively). A bare ``--threshold`` is refused for a panel of several drugs,
    before any work: each model has its own scale of P(resistant), so one raw value means a
    different thing for each drug."""
    from scatd_core.errors import ScatdError

    per = dict(getattr(args, "threshold_per_drug", None) or {})
    if args.threshold is not None and len(drugs) > 1:
        example = " ".join(f"--threshold {d}={args.threshold:g}" for d in drugs[:2])
        raise ScatdError(f"--threshold {args.threshold:g} would apply one raw value to all {len(drugs)} drugs of the "
                         "panel, but each model has its own scale of P(resistant), so the same number means a "
                         "different thing for each drug.",
                         f"Give each drug its own: {example} (drugs not named keep their model's default), or "
                         "calibrate them: --expected-fraction FRACTION, or --calibrate-on-labels with "
                         "--label-column DRUG=COLUMN.")
    if args.threshold is not None:
        per.setdefault(drugs[0], args.threshold)
    by_name = {d.lower(): d for d in drugs}
    unknown = [d for d in per if d.lower() not in by_name]
    if unknown:
        raise ScatdError(f"--threshold names {', '.join(unknown)}, not a drug of the panel.",
                         f"The panel's drugs: {', '.join(drugs)}.")
    return {by_name[d.lower()]: v for d, v in per.items()}


def panel_label_drug(args, drugs: list[str]) -> str | None:
    """The panel's drug whose response ``--label-column DRUG=COLUMN`` records (``args.label_column``
    then set to the column); ``None`` for a bare column. A label column records one drug's
    response, so ``--calibrate-on-labels`` needs the drug named: refused otherwise, before any work."""
    from scatd_core.cli._common import drug_and_column
    from scatd_core.errors import ScatdError

    column = args.label_column
    example = f"--label-column {drugs[0]}={column or 'response'}"
    if args.calibrate_on_labels and not column:
        raise ScatdError(f"--calibrate-on-labels needs --label-column DRUG=COLUMN: the labelled cells, and which drug "
                         f"of the panel ({', '.join(drugs)}) they record the response to.",
                         f"e.g. {example} (add --label-resistant VALUE for codes like 0/1).")
    if args.calibrate_on_labels and "=" not in column:
        raise ScatdError(f"--label-column {column} does not say which drug's response the labels record, and this "
                         f"panel has {len(drugs)} drugs ({', '.join(drugs)}): --calibrate-on-labels calibrates only "
                         "the drug the labels are for.",
                         f"Name it: {example}; the other drugs keep their model's default threshold.")
    if not column or "=" not in column:
        return None
    drug, args.label_column = drug_and_column(column, "--label-column", f"{drugs[0]}=response")
    by_name = {d.lower(): d for d in drugs}
    if drug.lower() not in by_name:
        raise ScatdError(f"--label-column {column} names {drug!r}, not a drug of the panel.",
                         f"The panel's drugs: {', '.join(drugs)}.")
    return by_name[drug.lower()]


def calibrate_panel_on_labels(adata, args, scored, drug: str) -> None:
    """``--calibrate-on-labels`` for a panel: only ``drug``, the one whose response the labels
    record; every message names it. Labels that do not pin its threshold down leave it at its
    own threshold (said; the outputs mark it uncalibrated) rather than losing the panel's results."""
    from scatd_core.errors import ScatdError
    from scatd_core.predict import calibrate

    column = args.label_column
    member = next((m for m in scored if m.drug == drug), None)
    others = [m.drug for m in scored if m is not member]
    if member is None:
        say(f"warning: --calibrate-on-labels: {drug} was not scored, so it is not calibrated on '{column}'.")
    else:
        try:
            calibrate(adata, label_column=column, method=args.calibrate_on_labels, key_added=member.key)
        except ScatdError as exc:
            say(f"warning: {drug} (model {member.folder}) is not calibrated on '{column}': {exc.message}"
                + (f" {exc.hint}" if exc.hint else "") + " It keeps its model's default threshold (uncalibrated).")
    if others:
        say(f"note: the labels of '{column}' are {drug}'s, so no other drug is calibrated on them: "
            f"{', '.join(others)} keep{'s' if len(others) == 1 else ''} {'its' if len(others) == 1 else 'their'} "
            "model's default threshold (uncalibrated; each is printed below).")


def say_evaluation(adata, label_column: str) -> None:
    """The calls against the cells' labels in ``label_column``, as metrics.csv and the report have them:
    AUROC with its interval, AUPRC with chance, and the evaluation's notes (the baselines among them)."""
    from scatd_core.errors import InputError
    from scatd_core.metrics import evaluate_column, interval_ends

    try:
        ev = evaluate_column(adata, label_column)[0]
    except InputError as exc:  # also stated in metrics.csv and the HTML report
        say(f"warning: no evaluation against '{label_column}': {exc.message}")
        return
    low, high = interval_ends(*ev.auroc_ci)  # as metrics.csv and the report have them
    say(f"Against '{label_column}' ({ev.n_evaluated:,} cells): AUROC {ev.auroc:.3f} (95% interval "
        f"{low}-{high}, Hanley-McNeil), AUPRC {ev.auprc:.3f} (chance {ev.auprc_chance:.3f}, the share "
        "resistant).")
    for note in ev.notes:
        say(f"note: {note}")


def say_panel_comparison(adata, emit=say) -> None:
    """The whole-sample ranking (each uncalibrated drug marked), what compares across the drugs,
    and the cells resistant to every drug: the words of the Panel page and the HTML report."""
    from scatd_core import panel

    emit(f"{panel.ranking_title(adata, 'Whole sample')}:")
    ranks = panel.is_ranking(adata, "Whole sample")  # no rank numbers where the order ranks nothing
    for rec in panel.drug_ranking(adata).itertuples(index=False):
        frac = "n/a" if rec.fraction_resistant != rec.fraction_resistant else f"{rec.fraction_resistant:.1%}"
        emit(f"  {f'{rec.rank}.' if ranks else '-'} {rec.drug}: {frac} of {rec.n_called:,} cells called resistant, mean P "
             f"{rec.mean_prob_resistant:.3f}" + ("" if rec.calibrated else " (uncalibrated)"))
    for note in panel.comparison_notes(adata):
        emit(f"note: {note}")
    emit(panel.resistant_to_all_statement(adata)[0])


def os_user() -> str | None:
    """The operating-system user: whose saved panels the CLI uses (kept apart from the app's, per login)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
