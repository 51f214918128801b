"""``scatd models``: the installed model bundles."""

from __future__ import annotations

import json
from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser("models", help="list the installed model bundles")
    p.add_argument("--library", help="model library folder (default: $SCATD_MODEL_LIBRARY)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
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
