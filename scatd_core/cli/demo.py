"""``scatd demo``: the whole workflow on the built-in demo, written as a report folder."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import Progress, add_overwrite_argument, check_output, say

#: What ``--panel`` adds to the report folder.
PANEL_FILES = ("panel.csv", "panel_summary.csv", "panel_report.html")


def add(sub) -> None:
    p = sub.add_parser("demo", help="run the whole workflow on the built-in demo and write a report folder",
                       description="Build the demo (simulated tumour + a model trained on simulated cell lines; "
                                   "built once, then cached), then predict, embed, rank biomarkers and write "
                                   "predictions.csv, metrics.csv, biomarkers.csv, annotated.h5ad and report.html.")
    p.add_argument("--out", default="scatd-demo-report", help="report folder (default: ./scatd-demo-report)")
    add_overwrite_argument(p, "replace the files of an earlier demo report in --out (without it, a folder that "
                              "already holds any of them is refused before anything is run)")
    p.add_argument("--rebuild", action="store_true", help="simulate and train the demo again from scratch")
    p.add_argument("--library", help=LIBRARY_HELP)
    p.add_argument("--panel", action="store_true",
                   help="also score the demo's 3-drug panel (DEMOTINIB, DEMOPLATIN, DEMOLIMUS; the two extra models "
                        "are trained on first use) and write panel.csv, panel_summary.csv and panel_report.html")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core import demo, io
    from scatd_core._output import REPORT_FILES
    from scatd_core.cli.report import report_pipeline
    from scatd_core.demo.simulate import RESISTANCE_PROGRAM
    from scatd_core.metrics import evaluate_column

    check_output(args.out, "--out", folder_files=REPORT_FILES + (PANEL_FILES if args.panel else ()),
                 overwrite=args.overwrite)
    problem = demo.cell_limit_problem()  # said before the (long) build, not after it
    if problem is not None:
        raise problem
    if args.rebuild and demo.bundle_path(args.library).exists():
        shutil.rmtree(demo.bundle_path(args.library))
    path, bundle = demo.ensure(library=args.library, progress=Progress("Building the demo"))
    adata = io.read(path)
    say(f"Demo: {adata.n_obs:,} simulated cells; model {bundle.title}")
    options = report_options(path, demo.bundle_path(args.library), args.out)
    report_pipeline(adata, bundle, options, data_name="demo (simulated data)")
    top = list(adata.uns["scatd_biomarkers"]["ranking"]["feature"][:20])
    planted = sum(g in RESISTANCE_PROGRAM for g in top)
    ev = evaluate_column(adata, demo.DEMO_LABEL_COLUMN)[0]
    print(f"AUROC against the simulated truth: {ev.auroc:.3f}; {planted} of the top 20 biomarkers are "
          f"planted resistance genes.")
    print(f"At the demo model's default threshold ({ev.threshold:.3g}, chosen on a separate simulated tumour) "
          f"{ev.fraction_called_resistant:.0%} of the cells are called resistant; "
          f"{ev.n_positive / ev.n_evaluated:.0%} truly are (balanced accuracy {ev.balanced_accuracy:.2f}).")
    if args.panel:
        demo_panel(adata, args)
    return 0


def report_options(data: Path, model: Path, out: str) -> argparse.Namespace:
    """``scatd report``'s arguments for the demo, parsed by its own parser (every option at the
    default a user of ``scatd report`` gets), so the demo runs that command's path exactly."""
    from scatd_core import demo
    from scatd_core.cli import build_parser

    return build_parser().parse_args([
        "report", "--model", str(model), "--input", str(data), "--out", str(out),
        "--label-column", demo.DEMO_LABEL_COLUMN, "--label-resistant", "resistant",
        "--sample-column", demo.DEMO_SAMPLE_COLUMN, "--explain"])


def demo_panel(adata, args) -> None:
    """The demo's 3-drug panel on the same cells, written next to the single-drug report."""
    from scatd_core import demo, export, panel
    from scatd_core._output import write_file
    from scatd_core.cli.predict import say_panel_comparison

    bundles = demo.ensure_panel(library=args.library, progress=Progress("Building the demo panel"))
    panel.predict_panel(adata, bundles, device="auto", progress=Progress("Panel"))
    groups = [demo.DEMO_SAMPLE_COLUMN, "cluster"]
    out = Path(args.out)
    write_file(out / "panel.csv", export.to_csv_bytes(panel.panel_table(adata, [demo.DEMO_LABEL_COLUMN, *groups])))
    export.write_panel_summary(adata, out / "panel_summary.csv", groups)
    markers = (panel.multi_resistant_markers(adata)
               if panel.resistant_to_all_statement(adata)[1] and adata.obs["scatd_panel_resistant_to_all"].sum() >= 3
               else None)
    export.write_h5ad(adata, out / "annotated.h5ad")  # again, with the panel's columns next to the single drug's
    write_file(out / "panel_report.html", export.panel_html_report(adata, group_columns=groups, markers=markers,
                                                                   data_name="demo (simulated data)",
                                                                   files=export.PANEL_DOWNLOADS))
    say_panel_comparison(adata, print)
    for name in PANEL_FILES:
        print(f"{name}: {out / name}")
