"""``scatd report``: predictions.csv, metrics.csv, biomarkers.csv, annotated.h5ad and report.html in one go.

The same steps as the app's path (Predict, Cells, Biomarkers, Report), with the same functions.
"""

from __future__ import annotations

from pathlib import Path

from scatd_core.cli._common import LIBRARY_DEFAULT
from scatd_core.cli._common import add_pipeline_arguments, finish_run, Progress, add_data_arguments, add_label_arguments, add_overwrite_argument, \
    add_spelled_both_ways, apply_label_direction, cell_mask, check_columns, check_output, prepare_embeddings, \
    read_input, resolve_bundle, say
from scatd_core.cli.explain import add_explain_arguments, explain_from_args, gene_level
from scatd_core.cli.predict import add_engine_arguments, add_prediction_arguments, predict_from_args, say_evaluation
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("report", help="predict, embed, (explain) and write the whole report folder",
                       description="Predict every cell, compute the UMAP and clusters, optionally rank biomarkers, "
                                   "and write predictions.csv, metrics.csv, biomarkers.csv, annotated.h5ad and "
                                   "report.html into --out (the app's downloads).")
    add_data_arguments(p)
    p.add_argument("--library",
                   help=f"model library folder that --model names a model of ({LIBRARY_DEFAULT})")
    add_spelled_both_ways(p, "--out", "--output", required=True, help="report folder")
    add_overwrite_argument(p, "replace the files of an earlier report in --out, and an existing --json file (without it, a "
                              "folder that already holds any of them is refused before anything is run)")
    add_prediction_arguments(p)
    add_label_arguments(p)
    p.add_argument("--sample-column", help="obs column with the sample / batch (resistant fraction per sample)")
    p.add_argument("--no-umap", action="store_true", help="skip the UMAP and clusters")
    p.add_argument("--umap-space", choices=("latent", "expression"), default="latent",
                   help="what the UMAP shows, as the Cells page's 'Space': the model's latent space (default) or "
                        "principal components of log-normalised expression; the Leiden clusters are always of "
                        "the latent space")
    p.add_argument("--explain", action="store_true", help="also rank biomarkers (integrated gradients)")
    add_explain_arguments(p, "report")
    add_engine_arguments(p, "report")
    add_pipeline_arguments(p)
    p.set_defaults(run=run, outputs=outputs)  # outputs: what --json may not name


def report_pipeline(adata, bundle, args, *, data_name: str) -> dict[str, Path]:
    """Predict, embed, explain (``args.explain``) and write the report folder ``args.out``.

    With ``--engine ray`` the prediction and the attributions run on Ray (their shard parts in
    ``<out>/ray/``, so a stopped run resumes) and give the single-process numbers; the UMAP and
    the files are made here, from the results as one process has them."""
    from scatd_core import embed, export
    from scatd_core.inputs import ModelInput
    from scatd_core.predict import auto_batch_size, resolve_device

    label_column = apply_label_direction(adata, args)
    mask = cell_mask(adata, args)
    on_ray = getattr(args, "engine", "local") == "ray"
    if on_ray:
        parts = Path(args.out) / "ray"
        parts.mkdir(parents=True, exist_ok=True)
        inputs = None
        predict_from_args(adata, bundle, args, output=parts / "predictions", load_latent=True, mask=mask)
    else:
        batch_size = args.batch_size or auto_batch_size(bundle, resolve_device(args.device))
        inputs = ModelInput(adata, bundle, mask=mask, batch_size=batch_size)
        predict_from_args(adata, bundle, args, inputs=inputs, mask=mask)
    if not args.no_umap:
        note = embed.not_computed_note(adata, args.umap_space)
        if note:  # a report of 2-4 cells: written without them, the note in report.html and metrics.csv too
            say(f"note: {note}")
        else:
            embed.embed(adata, basis=args.umap_space, progress=Progress("UMAP"))
            if kept := adata.uns[embed.INFO_KEY].get("original_umap"):  # the data's own UMAP: kept, said
                say(f"note: {embed.original_umap_note(kept)}")
    if args.explain:
        explain_from_args(adata, bundle, args, inputs=inputs,
                          output=parts / "biomarkers.csv" if on_ray else None)
    earlier = Path(args.out) / "biomarkers.csv"
    earlier = earlier.is_file() and not earlier.is_symlink()
    paths = export.write_report(adata, args.out, label_column=label_column,
                                group_columns=[c for c in (args.sample_column,) if c], data_name=data_name)
    if earlier and "biomarkers" not in paths:
        say(f"Removed the biomarkers.csv an earlier report left in {args.out}: this run ranked no biomarkers "
            "(add --explain to rank them).")
    if label_column:
        say_evaluation(adata, label_column)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def outputs(args) -> dict:
    """The files ``scatd report`` writes into ``--out``."""
    from scatd_core._output import REPORT_FILES

    return {"--out": [Path(args.out) / name for name in REPORT_FILES]}


def run(args) -> int:
    from scatd_core._output import REPORT_FILES, holding_folder

    check_output(args.out, "--out", inputs=[args.input, args.biomart, args.obs], folder_files=REPORT_FILES,
                 existing=False)  # an earlier report there: refused once the model is known
    with holding_folder(args.out, "--out", "scatd report"):  # another report into it: refused now, not at the end
        return _run_holding(args)


def _run_holding(args) -> int:
    from scatd_core._output import REPORT_FILES

    bundle = resolve_bundle(args.model, args.library)
    check_output(args.out, "--out", folder_files=REPORT_FILES, overwrite=args.overwrite)  # before any work
    on_ray = args.engine == "ray"
    adata = read_input(args, backed=True if on_ray else "auto")
    check_columns(adata, args)
    if on_ray and args.explain and gene_level(adata, bundle, args.level):
        raise ScatdError("Gene-level biomarkers through a foundation model do not run on Ray.",
                         "Use --level features (the embedding features), or leave out --engine ray.")
    prepare_embeddings(adata, bundle, args)  # on Ray too with --engine ray
    paths = report_pipeline(adata, bundle, args, data_name=Path(args.input).name)
    return finish_run(args, adata, paths.values())
