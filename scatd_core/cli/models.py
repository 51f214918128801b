"""``scatd models``: the installed bundles; ``scatd models card NAME``: a model's card (an imported
checkpoint's is short: origin, threshold, mode, caveats);
``scatd models fetch``: the published scATD models; ``scatd models remove NAME --yes``: remove a model
(under the library lock, as the app's Model library page does)."""

from __future__ import annotations

import json
from pathlib import Path

from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import Progress, say


def add(sub) -> None:
    p = sub.add_parser("models", help="list the installed models, or fetch the published scATD models",
                       description="`scatd models` lists the model library. `scatd models card NAME` prints a "
                                   "model's card (its scores next to the baselines). `scatd models fetch` "
                                   "lists the published "
                                   "scATD checkpoints on figshare; `scatd models fetch NAME ...` downloads (with size "
                                   "and checksum checks) and imports them. `scatd models remove NAME --yes` removes a "
                                   "model from the library, for every user of it (under the library's lock; never "
                                   "rm -rf a model folder, which a server may be reading or writing).")
    p.add_argument("action", nargs="?", default="list", choices=["list", "card", "fetch", "remove"])
    p.add_argument("names", nargs="*", help="card: the model's folder in the library (or a bundle path); "
                                            "fetch: the file names to install (default: list them); "
                                            "remove: the model's folder in the library")
    p.add_argument("--library", help=LIBRARY_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.add_argument("--yes", action="store_true", help="remove: confirm the removal")
    p.set_defaults(run=run)


def run(args) -> int:
    return {"fetch": fetch, "card": card, "remove": remove}.get(args.action, show)(args)


def remove(args) -> int:
    """Remove one model of the library (``remove_bundle``, the app's own removal), with ``--yes``."""
    from scatd_core.bundle import MANIFEST, load_bundle, remove_bundle
    from scatd_core.config import model_library_dir
    from scatd_core.errors import InputError, ScatdError

    if len(args.names) != 1:
        raise InputError("`scatd models remove` takes one model: its folder in the library.",
                         "List them with `scatd models` (the first column).")
    root = Path(args.library) if args.library else model_library_dir()
    name = args.names[0]
    path = root / name
    if Path(name).name != name or name.startswith(".") or not path.is_dir():
        raise InputError(f"No model {name!r} in the model library {root}; nothing was removed.",
                         "Give a folder name as `scatd models` lists it (the first column), not a path.")
    if not (path / MANIFEST).exists():
        raise InputError(f"{name} in {root} is not a model bundle (no {MANIFEST}); nothing was removed.",
                         "Only model bundles are removed here.")
    try:
        what = f"{load_bundle(path).title} ({name})"
    except ScatdError:
        what = f"{name} (a model that cannot be loaded)"
    if not args.yes:
        raise InputError(f"This removes {what} from the model library {root} for every user of it; nothing was "
                         "removed yet.", f"Run again with --yes to remove it: scatd models remove {name} --yes")
    remove_bundle(path)
    print(f"Removed {what} from {root}.")
    say("Saved panels that name it leave it out, with a warning, when they are loaded; an app session that had "
        "chosen it is told so.")
    return 0


def card(args) -> int:
    """Print the model card of one bundle (JSON with --json)."""
    from scatd_core.bundle import load_bundle
    from scatd_core.card import card_lines, card_table
    from scatd_core.config import model_library_dir
    from scatd_core.errors import InputError

    if len(args.names) != 1:
        raise InputError("`scatd models card` takes one model: its folder in the library or a bundle path.",
                         "List them with `scatd models`.")
    root = Path(args.library) if args.library else model_library_dir()
    name = args.names[0]
    path = root / name if (root / name).exists() and Path(name).name == name else Path(name)
    if not path.exists():
        raise InputError(f"No model {name!r} in {root}.", "List them with `scatd models`.")
    bundle = load_bundle(path)
    broken = _broken(bundle)  # the card is still worth reading; the model cannot be used as it is
    code = 1 if broken else 0
    found = bundle.manifest.get("card")
    if not found and bundle.is_imported:  # no training data to compare with: a short card
        from scatd_core.bundle import import_card_lines

        lines = import_card_lines(bundle)
        if args.json:
            print(json.dumps({"imported": True, "lines": lines, **({"broken": broken} if broken else {})}, indent=2))
            return code
        _say_broken(broken, bundle, path, root)
        print(f"Model card: {_named(bundle)} ({path.name}), an imported checkpoint")
        for line in lines:
            print(f"  {line}")
        return code
    if not found:
        raise InputError(f"{bundle.title} has no model card: only models trained by `scatd train` carry one "
                         "(an imported checkpoint has no training data to compare with).")
    if args.json:
        print(json.dumps({**found, "broken": broken} if broken else found, indent=2))
        return code
    _say_broken(broken, bundle, path, root)
    print(f"Model card: {_named(bundle)} ({path.name})")
    for line in card_lines(found):
        print(f"  {line}")
    print(card_table(found).to_string(index=False))
    return code


def _broken(bundle) -> str | None:
    """Why the model cannot be used (its weights file damaged, or not the manifest's model), as
    `scatd models` lists it BROKEN; None when it is intact."""
    from scatd_core.bundle import check_weights
    from scatd_core.errors import BundleError, InputError

    try:
        check_weights(bundle)
    except (BundleError, InputError) as exc:
        return exc.message
    return None


def _say_broken(broken: str | None, bundle, path: Path, root: Path) -> None:
    """First, before the card: the model is broken, why, and what to do."""
    if not broken:
        return
    in_library = path.parent.resolve() == root.resolve()
    remove = (f"or remove it with `scatd models remove {path.name} --yes`" if in_library else
              f"or delete the bundle folder {path}")
    again = ("re-import its checkpoint (`scatd import-checkpoint ... --replace`)" if bundle.is_imported else
             "re-train it (`scatd train`)")
    print(f"BROKEN: {broken}\n  This model cannot be used to predict until it is replaced: {again}, {remove}. "
          "Its card, as it was saved:\n")


def _named(bundle) -> str:
    """The display name (``--name``) and, when it does not say it already, the drug and backbone
    (:func:`scatd_core.bundle.named_title`)."""
    from scatd_core.bundle import named_title

    return named_title(bundle)


def show(args) -> int:
    from scatd_core.bundle import UNREADABLE_PROBLEM, list_library
    from scatd_core.config import model_library_dir
    from scatd_core.doctor import _account  # the effective account, as `scatd doctor` names it
    from scatd_core.errors import InputError

    root = Path(args.library) if args.library else model_library_dir()
    if args.library and not root.is_dir():
        raise InputError(f"{root} is a file, not a folder (--library)." if root.exists() else
                         f"No folder {root} (--library).", "Give the model library's folder, or leave out --library "
                                                           "for the configured one.")
    if args.names:
        raise InputError(f"`scatd models list` takes no names (got {' '.join(args.names)}).",
                         "Use `scatd models card NAME` for one model's card.")
    entries = list_library(root)
    if args.json:
        print(json.dumps([e.bundle.summary() if e.ok else {"path": str(e.path), "problem": e.problem,
                                                           "status": _status(e)}
                          for e in entries], indent=2))
        return 0
    if not entries:
        print(f"No model bundles in {root}.\nGet the published ones with `scatd models fetch`, import a checkpoint "
              "with `scatd import-checkpoint`, train one with `scatd train`, or build the demo with `scatd demo`.")
        return 0
    print("FOLDER (what --model takes)\tNAME\tMODEL\tKIND\tINPUTS")
    for e in entries:
        if e.ok:
            s = e.bundle.summary()
            print(f"{e.path.name}\t{e.bundle.name}\t{e.bundle.title}\t{s['kind']}\t{s['n_input_features']} inputs"
                  + (f"\t{s['problem']}" if s["problem"] else ""))
        else:
            problem = (f"this account ({_account()}) may not read it: its permissions, not a damaged model. "
                       f"Its owner or root makes it readable: chmod -R go+rX {e.path}"
                       if e.problem == UNREADABLE_PROBLEM else e.problem)
            print(f"{e.path.name}\t{_status(e).upper()}: {problem}")
    return 0


def _status(entry) -> str:
    """``unreadable`` (this account may not read it: permissions, not a damaged model) or ``broken``."""
    return "unreadable" if entry.unreadable else "broken"


def fetch(args) -> int:
    import getpass

    from scatd_core import published

    files = published.list_files()
    if not args.names:
        for f in files:
            what = f.recognised
            print(f"{f.name}\t{f.size / 2**20:,.1f} MB\t{what.title if what else 'not recognised'}")
        say("Install with `scatd models fetch NAME ...` (the checkpoints above that are recognised).")
        return 0
    installed = published.install(args.names, files=files, library=args.library, user=getpass.getuser(),
                                  progress=Progress("Downloading"), notice=lambda text: say(f"note: {text}"))
    for bundle in installed:
        print(f"Installed {bundle.title} -> {bundle.path}")
    return 0
