"""``scatd import-checkpoint``: an original scATD .pth into a model bundle (weights_only=True)."""

from __future__ import annotations

import json

from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import BACKBONES, BETA_MODES, probability, say
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("import-checkpoint", help="import an original scATD .pth into a model bundle",
                       description="Import an original scATD checkpoint (pretraining or transfer-learning) "
                                   "into a model bundle. Loaded with weights_only=True; keys must match exactly.")
    p.add_argument("pth", help="the original .pth state_dict file")
    p.add_argument("--backbone", required=True, choices=BACKBONES)
    p.add_argument("--drug", help="drug name (required for drug classification checkpoints)")
    p.add_argument("--out", help="bundle folder to create (default: a folder in the model library)")
    p.add_argument("--genes", help="Dist_VAE: the model's input gene list (TSV with gene_name, or one per line)")
    p.add_argument("--style-reference", help="VAE_sf/VAE_gf: bulk embeddings .npy (samples x features) for AdaIN")
    p.add_argument("--input-transform", default="none", choices=["none", "log1p_cp10k"],
                   help="transform applied to expression before the model (default: none, as the original "
                        "inference script)")
    p.add_argument("--label-mapping", help='class index of "resistant" and of "sensitive" (0 and 1, one each) as '
                                           'JSON; default {"sensitive": 0, "resistant": 1}')
    p.add_argument("--threshold", type=probability, help="decision threshold on P(resistant) "
                                                         "(default: 0.05 Dist_VAE, 0.5 VAE_sf/VAE_gf)")
    p.add_argument("--beta-mode", choices=BETA_MODES,
                   help="Dist_VAE: 'shared_with_head' reproduces the original inference (default for "
                        "imported Dist_VAE classifiers); 'separate' keeps the encoder's own Swish beta")
    p.add_argument("--name", help="display name in the model library; also names the bundle's folder (default: "
                                   "DRUG_BACKBONE), so a second model of one drug and backbone needs one. Characters "
                                   "other than ASCII letters, digits, '-', '_' and '.' become '_' in the folder's "
                                   "name, with a short hash of the name added ('DOCETAXEL GSE140440' -> "
                                   "DOCETAXEL_GSE140440-419881e4); the import prints the folder, which --model takes")
    p.add_argument("--library", help=LIBRARY_HELP)
    p.add_argument("--replace", action="store_true",
                   help="replace the model already in the folder (--name's, DRUG_BACKBONE, or --out's bundle; also "
                        "a library folder whose name differs only by case, replaced in that folder), for every user "
                        "of the library, as the app's 'Replace a model of the same name' (without it a taken name "
                        "is refused). Needs an account that may write the library")
    p.set_defaults(run=run)


def _mapping(text: str | None) -> dict | None:
    """The JSON of --label-mapping (its names and indices are checked by the import)."""
    if not text:
        return None
    try:
        mapping = json.loads(text)
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict):
        raise ScatdError(f"--label-mapping is not a JSON object of names to 0/1: {text}",
                         'Example: --label-mapping \'{"sensitive": 0, "resistant": 1}\'')
    return mapping


def run(args) -> int:
    from scatd_core.bundle import COMMAND_LINE, import_checkpoint
    from scatd_core.cli.predict import os_user

    bundle = import_checkpoint(
        args.pth, args.backbone, drug=args.drug, out=args.out, genes=args.genes,
        style_reference=args.style_reference, input_transform=args.input_transform,
        label_mapping=_mapping(args.label_mapping), threshold=args.threshold, beta_mode=args.beta_mode,
        name=args.name, library=args.library, overwrite=args.replace,
        # as the app, `scatd train` and `models fetch` record who; an account of the server, not an app login
        provenance={"imported_by": os_user(), "via": COMMAND_LINE})
    arch = bundle.architecture
    print(f"Imported {bundle.kind} '{bundle.name}' ({args.backbone}, encoder {arch.encoder_dims}, "
          f"z {arch.z_dim}) -> {bundle.path}")
    if bundle.replaced:
        print(f"Replaced the model '{bundle.replaced}' (folder {bundle.path.name}) with this one, for every user of "
              "the library.")
    for note in bundle.manifest["provenance"].get("notes") or []:
        say(f"note: {note}")
    if bundle.input_kind == "embedding" and bundle.style_mean is None and bundle.kind == "classifier":
        say("warning: no --style-reference given; this model cannot predict until it has bulk style "
            "statistics (re-import with --style-reference BULK.npy).")
    return 0
