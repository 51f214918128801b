"""``scatd panel``: your saved panels of drug models (save, list, remove)."""

from __future__ import annotations

from scatd_core.cli._common import LIBRARY_HELP
from scatd_core.cli._common import say


def add(sub) -> None:
    p = sub.add_parser("panel", help="save, list or remove your panels of drug models",
                       description="A panel is a named list of models of the library, saved for you only (your "
                                   "account on this computer; the app's saved panels are kept apart, per login). "
                                   "Score data against it with `scatd predict --panel NAME`.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = acts.add_parser("save", help="save a panel: scatd panel save NAME --model A --model B ...")
    s.add_argument("name")
    s.add_argument("--model", action="append", required=True, help="a model of the library (repeat it)")
    s.add_argument("--replace", action="store_true", help="replace your panel of the same name")
    s.add_argument("--library", help=LIBRARY_HELP)
    r = acts.add_parser("remove", help="remove one of your panels")
    r.add_argument("name")
    acts.add_parser("list", help="list your panels")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core import panel
    from scatd_core.cli.predict import os_user

    user = os_user()
    if args.action == "save":
        record = panel.save_panel(args.name, args.model, user, library=args.library, replace=args.replace, cli=True)
        print(f"Saved panel {args.name!r}: {', '.join(record['models'])}")
    elif args.action == "remove":
        name, record = panel.delete_panel(args.name, user, cli=True)
        print(f"Removed your panel {name!r} ({panel.saved_panel_drugs(record)}); the models stay in the library.")
    else:
        panels = panel.list_panels(user, cli=True)
        if legacy := panel.legacy_panels_note(user):
            say(f"note: {legacy}")
        if not panels:
            say("You have no saved panel on the command line (the app's saved panels are kept apart, per login). "
                "Save one with `scatd panel save NAME --model A --model B`.")
        for name, record in panels.items():
            # as predict finds it
            _, problems = panel.load_panel(name, user, library=getattr(args, "library", None), cli=True)
            print(f"{name}\t{', '.join(record['models'])}")
            for problem in problems:  # e.g. a member removed, or another model in its folder now
                say(f"  {name}: {problem}")
    return 0
