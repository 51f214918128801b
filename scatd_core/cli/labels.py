"""``scatd labels-from-ic50``: a sensitive/resistant label table from GDSC ln(IC50) values."""

from __future__ import annotations

from pathlib import Path

from scatd_core._words import counted
from scatd_core.cli._common import add_overwrite_argument, check_output, say


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
    p.add_argument("--out", required=True,
                   help="label table CSV to write; a provenance file goes beside it (labels.csv -> "
                        "labels.provenance.json: the files' names and sha256, each drug's threshold), which "
                        "scatd train and train-panel record with the model while the table is unchanged")
    add_overwrite_argument(p, "replace --out and its provenance file when they already exist (without it, an "
                              "existing file is refused before anything is read)")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core._output import writing
    from scatd_core.labels import (ic50_provenance_path, labels_from_ic50, unreadable_ic50_words,
                                   write_ic50_provenance, write_label_table)

    inputs = [args.ic50, args.thresholds, args.drug_list]
    check_output(args.out, "--out", inputs=inputs, overwrite=args.overwrite)
    side = check_output(ic50_provenance_path(args.out), "--out's provenance file", inputs=inputs,
                        overwrite=args.overwrite)
    table = labels_from_ic50(args.ic50, args.thresholds, args.drug_list, drugs=args.drugs)
    rep = table.attrs["report"]
    with writing(args.out):
        write_label_table(table, args.out)
    with writing(side):
        write_ic50_provenance(table, args.out)
    for drug, info in list(rep["thresholds"].items())[:20]:
        col = table[drug]
        gdsc = f"GDSC:{info['gdsc_id']}"  # a name of several ids already carries it: "Twin (GDSC:40)"
        say(f"{drug if drug.endswith(f'({gdsc})') else f'{drug} ({gdsc})'}: threshold {info['threshold']:g} "
             f"(by {info['matched_by']} '{info['threshold_name']}'): {int((col == 'sensitive').sum())} sensitive, "
             f"{int((col == 'resistant').sum())} resistant, {int(col.isna().sum())} not screened")
    if len(rep["thresholds"]) > 20:
        say(f"... and {len(rep['thresholds']) - 20} more drugs")
    unreadable = unreadable_ic50_words(rep)
    if unreadable:
        say(f"warning: {unreadable}")
    if rep["no_threshold"]:
        say(f"warning: no threshold found for {counted(len(rep['no_threshold']), 'drug')}, left out: "
             f"{', '.join(rep['no_threshold'][:10])}")
    print(f"Wrote {counted(rep['n_drugs'], 'drug')} x {counted(rep['n_cell_lines'], 'cell line')} -> {args.out}")
    say(f"Wrote {side}: how the labels were built (the files' names and sha256, each drug's threshold); scatd train "
        f"records it with the model while {Path(args.out).name} is unchanged.")
    return 0


def say_ic50_provenance(labels_path, *, mismatch: bool = False) -> None:
    """Say that the label table ``labels_path`` comes with the provenance file ``scatd
    labels-from-ic50`` wrote beside it, and so the model records its ln(IC50) thresholds (``scatd
    train``, ``scatd train-panel``). ``mismatch``: also say when such a file does not match the
    table (``scatd train``'s training says it itself: a note, and a warning of the card)."""
    from scatd_core.labels import read_ic50_provenance

    if not labels_path:
        return
    made, problem = read_ic50_provenance(labels_path)
    if problem and mismatch:
        say(f"warning: {problem}")
    if made is not None:
        source = (made.get("files") or {}).get("ic50")
        say(f"Found {made['provenance_file']} beside {Path(labels_path).name}: the labels were built by scatd "
            f"labels-from-ic50{f' from {source}' if source else ''}; the model records the drug's ln(IC50) "
            "threshold and the files' names and sha256 from it.")
