"""``scatd explain``: integrated-gradients gene rankings (biomarkers.csv) from the command line."""

from __future__ import annotations

from pathlib import Path

from scatd_core._explain_settings import MAX_STEPS, MIN_STEPS
from scatd_core._words import counted
from scatd_core.cli._common import LIBRARY_DEFAULT
from scatd_core.cli._common import add_pipeline_arguments, finish_run, BASELINES, LEVELS, TARGETS, Progress, add_data_arguments, add_label_arguments, \
    add_overwrite_argument, apply_label_direction, at_least_two, cell_mask, check_columns, check_outputs, \
    positive_int, prepare_embeddings, \
    read_input, refuse_existing, resolve_bundle, say, whole_number
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("explain", help="rank the genes that drive the predictions (biomarkers)",
                       description="Predict, then rank what drives the predictions, one row per gene or feature, "
                                   "with a Wilcoxon rank-sum DE test between the predicted groups for comparison. "
                                   "Dist_VAE: integrated gradients (captum) over the model's genes. VAE_sf/VAE_gf "
                                   "(see --level): when the embeddings are computed from the data's expression, genes "
                                   "ranked through the foundation model (integrated gradients through scFoundation; "
                                   "in-silico deletion through Geneformer, each of --deletion-genes candidate genes "
                                   "removed from each cell), on at most 50 cells by default (each is costly); when "
                                   "the input already holds embeddings, integrated gradients over the embedding "
                                   "features.")
    add_data_arguments(p)
    p.add_argument("--library",
                   help=f"model library folder that --model names a model of ({LIBRARY_DEFAULT})")
    p.add_argument("--output", required=True,
                   help="the ranking CSV to write (e.g. biomarkers.csv); beside it, NAME_metrics.csv (e.g. "
                        "biomarkers_metrics.csv) records the run as metrics.csv does: how many cells were explained, "
                        "of how many scored, whether a subsample, and the threshold behind the groups")
    add_explain_arguments(p, "explain")
    p.add_argument("--per-cell-top", nargs=2, metavar=("K", "CSV"),
                   help="also write the per-cell attributions of the top K genes to CSV")
    add_overwrite_argument(p, "replace --output, its metrics file, --per-cell-top's CSV or --json when they already exist "
                              "(without it, an existing file is refused before anything is run)")
    from scatd_core.cli.predict import add_engine_arguments, add_threshold_arguments

    add_threshold_arguments(p, panel=False)  # the threshold that defines the predicted groups (DE, per-group columns)
    add_label_arguments(p, "for --calibrate-on-labels")
    add_engine_arguments(p, "explain")
    add_pipeline_arguments(p)
    p.set_defaults(run=run, outputs=outputs)  # outputs: what --json may not name


#: ``--keep-top``'s help: scatd report keeps the per-cell attributions in annotated.h5ad; scatd explain
#: writes no h5ad, only --per-cell-top's CSV, with its own K.
KEEP_TOP_HELP = {
    "report": "genes whose per-cell attributions are kept in annotated.h5ad (obsm 'scatd_attributions'; default 100)",
    "explain": "genes whose per-cell attributions are held while explaining (default 100); scatd explain writes "
               "no h5ad: the per-cell attributions go to a file only with --per-cell-top K CSV, whose K is used "
               "instead of this",
}


#: ``--steps``' type: :data:`~scatd_core._explain_settings.MIN_STEPS` to ``MAX_STEPS``, as the app's form.
STEPS = whole_number(MIN_STEPS, MAX_STEPS, "the default 50 usually suffice; more are only needed when the "
                     "completeness warning asks for them")


def add_explain_arguments(p, command: str | None = None) -> None:
    """The integrated-gradients options of ``scatd explain`` and ``scatd report --explain``;
    ``command``: explain or report (default: the parser's own name, its ``prog``'s last word)."""
    command = command or p.prog.split()[-1]
    p.add_argument("--baseline", default="mean", choices=BASELINES,
                   help="IG baseline: dataset mean (default), zero, mean of random cells, or a mix (VAE_gf genes, "
                        "ranked by deletion: the cell without the gene; only the default)")
    p.add_argument("--steps", type=STEPS, default=50,
                   help=f"integration steps (default 50; {MIN_STEPS} to {MAX_STEPS}; not used by Geneformer's in-silico "
                        "deletion)")
    p.add_argument("--target", default="logit", choices=TARGETS,
                   help="logit P(resistant) (default), the raw resistant logit (as the original), or P(resistant)")
    p.add_argument("--max-cells", type=at_least_two,
                   help="explain a subsample of at most N cells (at least 2), stratified by predicted label (default: "
                        "all scored cells; 50 for genes ranked through a foundation model)")
    p.add_argument("--keep-top", type=positive_int, default=100, help=KEEP_TOP_HELP[command])
    p.add_argument("--explain-seed", type=whole_number(0), default=0,
                   help="seed of the subsample and random baselines (0 or more; default 0)")
    p.add_argument("--no-de", action="store_true", help="skip the differential-expression comparison")
    p.add_argument("--level", default="auto", choices=LEVELS,
                   help="VAE_sf/VAE_gf: rank genes through the foundation model (integrated gradients through "
                        "scFoundation; in-silico deletion through Geneformer) or the embedding features; auto: genes "
                        "when the embeddings were computed from the data's expression")
    p.add_argument("--deletion-genes", type=positive_int, default=100,
                   help="VAE_gf gene level: the candidate genes deleted in each explained cell (default 100)")


def gene_level(adata, bundle, level: str) -> bool:
    """Whether ``--level`` asks for (or ``auto`` chooses) genes through the foundation model."""
    from scatd_core import _keys

    if bundle.input_kind != "embedding" or level == "features":
        return False
    computed = bundle.backbone in adata.uns.get(_keys.FOUNDATION, {})
    if level == "genes" and not computed:
        raise ScatdError("--level genes explains embeddings computed from the data's expression, but this input "
                         "already holds embeddings.", "Give the expression matrix (counts), or use --level features.")
    return computed


def explain_from_args(adata, bundle, args, inputs=None, keep_top=None, output=None):
    """Explain as the arguments say (on Ray with ``--engine ray``: shard parts beside ``output``,
    default ``args.output``); prints the statement, completeness, agreement and top features."""
    from scatd_core.explain import explain
    from scatd_core.foundation import explain_genes

    if not MIN_STEPS <= args.steps <= MAX_STEPS:
        raise ScatdError(f"--steps must be from {MIN_STEPS} to {MAX_STEPS}, got {args.steps:,}.")
    common = dict(inputs=inputs, baseline=args.baseline, n_steps=args.steps, target=args.target,
                  max_cells=args.max_cells, seed=args.explain_seed, device=args.device,
                  keep_top=keep_top or args.keep_top, differential_expression=not args.no_de,
                  progress=Progress("Explaining"))
    if gene_level(adata, bundle, args.level):
        from scatd_core._keys import SCORED
        from scatd_core._progress import duration
        from scatd_core.foundation import DEFAULT_MAX_CELLS, explain_seconds

        n_cells = min(args.max_cells or DEFAULT_MAX_CELLS, int(adata.obs[SCORED].sum()))
        seconds = explain_seconds(adata, bundle.backbone, n_cells=n_cells, n_steps=args.steps,
                                  n_genes=args.deletion_genes)
        if seconds is not None:
            say(f"Ranking genes through the foundation model for {n_cells:,} cells: about {duration(seconds)} "
                "(from the speed of the embedding run; fewer --max-cells or --steps shorten it).")
        result = explain_genes(adata, bundle, n_genes=args.deletion_genes, **common)
    elif getattr(args, "engine", "local") == "ray":
        from scatd_core import scaleout
        from scatd_core.cli.predict import parts_note
        from scatd_core.config import settings

        common.update(progress=Progress("Explaining on Ray"), batch_size=inputs.batch_size if inputs else 1024)
        common.pop("inputs")
        result = scaleout.explain_ray(adata, bundle, output=output or args.output, shard_cells=args.shard_cells,
                                      workers=args.workers or settings()["scaleout_workers"],
                                      address=args.address or settings()["scaleout_address"], **common)
        eng = result.info["engine"]
        say(f"Ray: {counted(eng['workers'], 'worker')}, {counted(eng['shards'], 'shard')}"
            + (f" ({eng['shards_resumed']} already done, resumed from {eng['parts']})." if eng["shards_resumed"] else
               f" ({parts_note(args, eng['parts'])})."))
    else:
        from scatd_core._keys import SCORED
        from scatd_core._matrix import stored_fraction
        from scatd_core._memory import size_text
        from scatd_core._progress import duration
        from scatd_core.explain import estimate

        scored = int(adata.obs[SCORED].sum()) if SCORED in adata.obs else adata.n_obs
        n_cells = min(args.max_cells or scored, scored)
        cost = estimate(bundle, n_cells, n_steps=args.steps, keep_top=common["keep_top"] or 0,
                        density=stored_fraction(adata.X), device=args.device)
        say(f"Explaining {n_cells:,} cells: about {duration(max(cost['seconds'], 1))}, up to "
            f"{size_text(cost['bytes'])} of memory (fewer --max-cells or --steps shorten it).")
        result = explain(adata, bundle, **common)
    info = result.info
    say(info["statement"])
    comp = info["completeness"]
    nothing = info.get("nothing_to_attribute")
    if comp and not nothing:  # with nothing to attribute the ratio measures nothing (the warning says why)
        from scatd_core.explain import completeness_text

        say(completeness_text(comp))
    agree = info["agreement"]
    if agree:
        overlap = agree.get("top20_overlap")
        say(f"Attribution vs DE: Spearman {agree['spearman_abs_attribution_vs_abs_de_score']}"
            + (f", {overlap} of the top 20 shared" if overlap is not None else "") + ".")
    for w in info["warnings"]:
        say(f"warning: {w}")
    for n in info["notes"]:
        say(f"note: {n}")
    de = info["differential_expression"]
    if de["method"] == "none" and de.get("reason"):
        say(f"note: no differential-expression test between the predicted groups: {de['reason']}.")
    if nothing:
        say("No ranking: there is nothing to attribute (the first warning above says why); the file lists every "
            "feature with attribution 0 and no rank.")
    else:
        say(f"Top features: {', '.join(result.ranking['feature'].head(10))}.")
    return result


def outputs(args) -> dict:
    """The files ``scatd explain`` writes, by option (``--per-cell-top``'s file also when its number is wrong)."""
    return {"--output": args.output, "--per-cell-top": args.per_cell_top[1] if args.per_cell_top else None,
            "--output's metrics file": metrics_path(args.output)}


def _per_cell_arg(values) -> tuple[int, Path] | None:
    if not values:
        return None
    k, path = values
    try:
        k = int(k)
    except ValueError:
        raise ScatdError(f"--per-cell-top takes a number of genes and a file, got {k!r} {path!r}.",
                         "Example: --per-cell-top 50 per_cell.csv") from None
    if k < 1:
        raise ScatdError("--per-cell-top needs at least 1 gene.")
    return k, Path(path)


def metrics_path(output) -> Path:
    """The file beside ``--output`` that records the run as ``metrics.csv`` does (``biomarkers.csv``
    -> ``biomarkers_metrics.csv``): the ranking's columns stay those of every biomarkers.csv."""
    out = Path(output)
    return out.with_name(f"{out.stem if out.suffix.lower() == '.csv' else out.name}_metrics.csv")


def run(args) -> int:
    from scatd_core._output import write_file, writing
    from scatd_core.export import metrics_table, to_csv_bytes
    from scatd_core.inputs import ModelInput
    from scatd_core.cli.predict import calibrate_from_args, report_prediction
    from scatd_core.predict import predict

    per_cell = _per_cell_arg(args.per_cell_top)
    metrics = metrics_path(args.output)
    outputs = {"--output": args.output, "--per-cell-top": per_cell[1] if per_cell else None,
               "--output's metrics file": metrics}
    check_outputs(args, outputs, existing=False)  # an existing one: refused once the model is known
    if args.calibrate_on_labels and not args.label_column:
        raise ScatdError("--calibrate-on-labels needs --label-column (and --label-resistant for codes like 0/1).")
    bundle = resolve_bundle(args.model, args.library)
    refuse_existing(args, outputs)  # before the data are read: nothing run, nothing replaced
    if args.engine == "ray":
        from scatd_core.foundation import needs_embedding

        adata = read_input(args, backed=True)
        check_columns(adata, args)
        if gene_level(adata, bundle, args.level) or (needs_embedding(adata, bundle) and args.level != "features"):
            raise ScatdError("Gene-level biomarkers through a foundation model do not run on Ray.",
                             "Use --level features (the embedding features), or leave out --engine ray.")
        mask = cell_mask(adata, args)
        prepare_embeddings(adata, bundle, args)  # on Ray
        apply_label_direction(adata, args)
        _predict_on_ray(adata, bundle, args, mask)
        inputs = None
    else:
        adata = read_input(args)
        check_columns(adata, args)
        apply_label_direction(adata, args)
        mask = cell_mask(adata, args)
        prepare_embeddings(adata, bundle, args)
        inputs = ModelInput(adata, bundle, mask=mask)
        predict(adata, bundle, inputs=inputs, mask=mask, device=args.device, threshold=args.threshold,
                progress=Progress("Predicting"), min_gene_coverage=getattr(args, "min_gene_coverage", None))
    calibrate_from_args(adata, args)
    report_prediction(adata)  # the threshold that defines the predicted groups, and whether it is calibrated
    result = explain_from_args(adata, bundle, args, inputs=inputs, keep_top=per_cell[0] if per_cell else None)
    out = Path(args.output)
    with writing(out):
        write_file(out, to_csv_bytes(result.ranking))
    say(f"Wrote {out}")
    with writing(metrics):  # the cells explained (of how many scored) and the threshold, not only said above
        write_file(metrics, to_csv_bytes(metrics_table(adata, args.label_column)))
    cells = result.info.get("cells") or {}
    counted = (f"{int(cells['n_explained']):,} of {int(cells['n_scored']):,} scored cells explained, "
               if cells.get("n_explained") is not None and cells.get("n_scored") is not None else "")
    say(f"Wrote {metrics} (the run as metrics.csv records it: {counted}the threshold behind the groups)")
    if per_cell:
        k, path = per_cell
        table = result.per_cell(k)
        with writing(path):
            write_file(path, to_csv_bytes(table, index=True))
        say(f"Wrote per-cell attributions of the top {min(k, len(result.features))} to {path}")
    return finish_run(args, adata, outputs.values())


def _predict_on_ray(adata, bundle, args, mask=None) -> None:
    """``scatd explain --engine ray``: the prediction the explanation explains, on Ray too (its
    parts in ``<output>.predictions.parts/``), in batches of 1024 cells as one process makes them."""
    from scatd_core import scaleout
    from scatd_core.config import settings

    scaleout.predict_ray(adata, bundle, f"{args.output}.predictions", mask=mask, device=args.device, batch_size=1024,
                         threshold=args.threshold, shard_cells=args.shard_cells, address=args.address or
                         settings()["scaleout_address"], workers=args.workers or settings()["scaleout_workers"],
                         load_latent=False, progress=Progress("Predicting on Ray"),
                         min_gene_coverage=getattr(args, "min_gene_coverage", None))
