"""``scatd users``: the accounts of the app's login (argon2 hashes in the users file)."""

from __future__ import annotations

import getpass
import sys

from scatd_core.cli._common import say
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("users", help="manage the app's user accounts (add, role, remove, list)",
                       description="Manage who may log in to the app. Passwords are stored as argon2 hashes in the "
                                   "users file (auth.users_file in the configuration).")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("add", help="add a user (asks for the password)")
    a.add_argument("name")
    role = a.add_mutually_exclusive_group()
    role.add_argument("--admin", dest="admin", action="store_const", const=True,
                      help="may replace and delete shared models")
    role.add_argument("--no-admin", dest="admin", action="store_const", const=False,
                      help="with --replace: take the admin rights away (a new user is not an admin anyway)")
    a.add_argument("--replace", action="store_true",
                   help="set a new password for an existing user, keeping the role unless --admin/--no-admin is "
                        "given (a user that does not exist yet is added, so scripts can run it either way)")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    o = acts.add_parser("role", help="make a user an admin or not (keeps the password and the user's sessions)",
                        description="Change only a user's role: the password stays, the user stays logged in and "
                                    "has the new role at the next click in the app.")
    o.add_argument("name")
    wanted = o.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--admin", dest="admin", action="store_const", const=True,
                        help="may replace and delete shared models")
    wanted.add_argument("--no-admin", dest="admin", action="store_const", const=False,
                        help="take the admin rights away")
    r = acts.add_parser("remove", help="remove a user")
    r.add_argument("name")
    acts.add_parser("list", help="list the users")
    p.set_defaults(run=run)


def _password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise ScatdError("No password given: standard input was empty; nothing was changed.",
                             "Pipe the password in, e.g. `printf '%s\\n' \"$PW\" | scatd users add NAME --password-stdin`.")
        return password
    try:
        first = getpass.getpass(f"Password for {args.name}: ")
        again = getpass.getpass("Again: ")
    except EOFError:
        raise ScatdError("No password given: the input ended before a password was typed; nothing was changed.",
                         "Run it at a terminal, or pipe the password in with --password-stdin.") from None
    if first != again:
        raise ScatdError("The two passwords differ; nothing was changed.")
    return first


def _check_before_asking(args, users, path) -> bool:
    """Whether the user exists; a bad name or an existing user without --replace fails before the prompt."""
    users.check_name(args.name)
    known = users.load_users(path)
    users.check_distinct(args.name, known)
    existed = args.name in known
    if existed and not args.replace:
        raise ScatdError(f"User {args.name} already exists.", "Use --replace to set a new password.")
    return existed


def _warn_if_no_admin(users, had_admin: bool) -> None:
    """Say so when the last admin was just removed or demoted: shared models then cannot be replaced
    or deleted in the app until someone is made admin again."""
    if had_admin and not any(u.admin for u in users.list_users()):
        say("note: no admin is left: nobody can replace or delete shared models in the app until one is made "
            "admin again (`scatd users role NAME --admin`).")


def run(args) -> int:
    from scatd_core import users

    path = users.users_file()
    had_admin = any(u.admin for u in users.list_users()) if args.action in ("add", "role", "remove") else False
    if args.action == "add":
        existed = _check_before_asking(args, users, path)
        user = users.add_user(args.name, _password(args), admin=args.admin, replace=args.replace)
        print(f"{'Updated' if existed else 'Added'} {user.name}{' (admin)' if user.admin else ''} in {path}")
        _warn_if_no_admin(users, had_admin)
    elif args.action == "role":
        user = users.set_role(args.name, args.admin)
        print(f"{user.name} is {'an admin' if user.admin else 'not an admin'} now (password unchanged) in {path}")
        _warn_if_no_admin(users, had_admin)
    elif args.action == "remove":
        users.remove_user(args.name)
        print(f"Removed {args.name} from {path}")
        _warn_if_no_admin(users, had_admin)
    else:
        listed = users.list_users()
        if not listed:
            say(f"No users in {path}. Add one with `scatd users add NAME --admin`.")
        for user in listed:
            print(f"{user.name}\t{'admin' if user.admin else 'user'}")
    return 0
