"""``scatd doctor``: is this installation healthy? Versions, device, configuration, library, login."""

from __future__ import annotations

import json

from scatd_core._words import counted


def add(sub) -> None:
    p = sub.add_parser("doctor", help="check the installation: versions, device, configuration, library, login",
                       description="Checks what an administrator needs to know: package versions, the compute "
                                   "device, configuration problems, folders, the model library's health (and "
                                   "interrupted writes, which it repairs), users, and the foundation-model assets.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    from scatd_core.doctor import diagnose

    report = diagnose()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for section, items in report["sections"].items():
            print(f"[{section}]")
            for item in items:
                mark = {"ok": "ok  ", "warning": "WARN", "problem": "FAIL"}[item["status"]]
                print(f"  {mark} {item['what']}: {item['detail']}")
        print(f"\n{counted(report['n_problems'], 'problem')}, {counted(report['n_warnings'], 'warning')}.")
    return 1 if report["n_problems"] else 0
