"""``scatd labels-from-ic50``: a sensitive/resistant label table from GDSC ln(IC50) values."""

from __future__ import annotations

from scatd_core.cli._common import check_output, say


def add(sub) -> None:
    p = sub.add_parser(
        "labels-from-ic50", help="build a sensitive/resistant label table from GDSC ln(IC50) values",
        description="Build a cell lines x drugs label table (the ALL_label_binary_wf.csv format) from GDSC "
                    "ln(IC50) values and per-drug thresholds: below the threshold = sensitive.")
    p.add_argument("--ic50", required=True, help="GDSC_IC50.csv: rows GDSC:<drug_id>, columns cell lines, ln(IC50)")
    p.add_argument("--thresholds", required=True,
                   help="IC50_thred.txt: two tab-separated rows, drug names then ln(IC50) thresholds")
    p.add_argument("--drug-list", required=True, help="GDSC drug list CSV (drug_id, Name, Synonyms, ...)")
    p.add_argument("--drugs", nargs="+", help="only these drugs (names or GDSC ids; default: all)")
    p.add_argument("--out", required=True, help="label table CSV to write")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core._output import writing
    from scatd_core.labels import labels_from_ic50, write_label_table

    check_output(args.out, "--out", inputs=[args.ic50, args.thresholds, args.drug_list])
    table = labels_from_ic50(args.ic50, args.thresholds, args.drug_list, drugs=args.drugs)
    rep = table.attrs["report"]
    with writing(args.out):
        write_label_table(table, args.out)
    for drug, info in list(rep["thresholds"].items())[:20]:
        col = table[drug]
        gdsc = f"GDSC:{info['gdsc_id']}"  # a name of several ids already carries it: "Twin (GDSC:40)"
        say(f"{drug if drug.endswith(f'({gdsc})') else f'{drug} ({gdsc})'}: threshold {info['threshold']:g} "
             f"(by {info['matched_by']} '{info['threshold_name']}'): {int((col == 'sensitive').sum())} sensitive, "
             f"{int((col == 'resistant').sum())} resistant, {int(col.isna().sum())} not screened")
    if len(rep["thresholds"]) > 20:
        say(f"... and {len(rep['thresholds']) - 20} more drugs")
    if rep["no_threshold"]:
        say(f"warning: no threshold found for {len(rep['no_threshold'])} drug(s), left out: "
             f"{', '.join(rep['no_threshold'][:10])}")
    print(f"Wrote {rep['n_drugs']} drugs x {rep['n_cell_lines']} cell lines -> {args.out}")
    return 0
