"""``scatd convert-scfoundation``: the official models.ckpt into safetensors + JSON, once.

The pickle is read with ``torch.load(weights_only=True)`` (no code can run); only the tensors of
the cell-embedding path are written, so the app afterwards reads safetensors and never opens it.
"""

from __future__ import annotations

from scatd_core.cli._common import SCFOUNDATION_KEYS, say


def add(sub) -> None:
    p = sub.add_parser("convert-scfoundation", help="convert scFoundation's models.ckpt to safetensors (once)",
                       description="Convert the official scFoundation models.ckpt into scfoundation_<key>.safetensors "
                                   "+ scfoundation_<key>.json (the cell-embedding encoder and its config). Read with "
                                   "weights_only=True; the app then never unpickles the big file.")
    p.add_argument("checkpoint", help="the official models.ckpt")
    p.add_argument("--key", default="rde", choices=SCFOUNDATION_KEYS,
                   help="which model of the file: rde (read-depth enhancement, scATD's choice; default) or cell "
                        "(scFoundation's default)")
    p.add_argument("--out", help="folder to write into (default: the checkpoint's folder)")
    p.add_argument("--genes", help="the gene list OS_scRNA_gene_index.19264.tsv (default: found beside the checkpoint); "
                                   "its hash is recorded so a mix-up is caught later")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core.config import scfoundation_dir
    from scatd_core.foundation.scfoundation import GENE_LIST, convert, find_files

    weights, config = convert(args.checkpoint, args.key, args.out, args.genes)
    print(f"weights: {weights}")
    print(f"config: {config}")
    here = weights.parent.resolve()
    # the folder to configure: the one the loader finds both the converted files and the gene list
    # from (the official layout keeps models.ckpt in model/models/ and the gene list in model/)
    places = ([here.parent] if here.name == "models" else []) + [here]
    folder = next((p for p in places if find_files(p, args.key).converted is not None
                   and find_files(p, args.key).gene_list is not None), None)
    configured = scfoundation_dir().resolve()
    if folder is None:
        say(f"note: put {GENE_LIST} (scFoundation repository, model/) in {here} beside the converted files.")
        folder = here
    found = find_files(configured, args.key)
    if found.converted is None or found.converted.resolve() != weights.resolve() or found.gene_list is None:
        say(f"note: scATD Studio looks in {configured}; set SCATD_SCFOUNDATION_DIR={folder} or move the converted "
            f"files (and {GENE_LIST}) there.")
    return 0
