"""``scatd users``: the accounts of the app's login (argon2 hashes in the users file)."""

from __future__ import annotations

import getpass
import sys

from scatd_core.cli._common import say
from scatd_core.errors import ScatdError


def add(sub) -> None:
    p = sub.add_parser("users", help="manage the app's user accounts (add, role, remove, list; signout with OIDC)",
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
    r = acts.add_parser("remove", help="remove a user (says what of theirs stays on the server)",
                        description="Remove a user's account. Their saved panels, panel training records and "
                                    "the models they trained or imported stay unless asked for (listed after the "
                                    "removal): a new account given the same name would get those saved panels and "
                                    "be recorded as those models' maker. Run it again with --delete-data for a "
                                    "name already removed. The command line's saved panels (`scatd panel`) of the "
                                    "operating-system account of the same name are that account's, not the "
                                    "user's: they always stay.")
    r.add_argument("name")
    r.add_argument("--delete-data", action="store_true",
                   help="also delete the user's saved panels in the app and their panel training records "
                        "(private to the name; never the command line's panels of the operating-system account "
                        "of the same name); lists every file deleted")
    r.add_argument("--delete-models", action="store_true",
                   help="with --delete-data: also delete the models they trained or imported from the shared "
                        "library (other users may be using them)")
    acts.add_parser("list", help="list the users")
    so = acts.add_parser("signout", help="with OIDC sign-in: end every sign-in of a person, in every browser",
                         description="With auth.mode = \"oidc\": every sign-in of NAME (the e-mail address the "
                                     "identity provider gives, any case) made before now is refused at its next "
                                     "click in the app, in every browser and tab, and a copy of its cookie opens "
                                     "nothing. A new sign-in is accepted: to keep someone out, also remove them "
                                     "from the identity provider (or the allowed users).")
    so.add_argument("name", help="the person's e-mail address as the identity provider gives it")
    p.set_defaults(run=run)


def _password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise ScatdError("No password given: standard input was empty; nothing was changed.",
                             "Pipe the password in, e.g. `printf '%s\\n' \"$PW\" | scatd users add NAME --password-stdin`.")
        return password
    if not sys.stdin.isatty():  # piped or redirected: getpass would warn of echo (twice) and read the pipe anyway
        from scatd_core.errors import InputError

        raise InputError("Standard input is not a terminal (a pipe or a file): the password is read from it only "
                         "with --password-stdin; nothing was changed.",
                         f"Pipe the password in with --password-stdin, e.g. `printf '%s\\n' \"$PW\" | scatd users add "
                         f"{args.name} --password-stdin` (add --replace for an existing user), or run it at a "
                         "terminal.")
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


def _oidc_settings():
    """The settings when the server signs in with OIDC (the users file then unused), else ``None``."""
    from scatd_core.config import settings

    conf = settings()
    return conf if conf["auth_mode"] == "oidc" else None


def _oidc_notes(args, conf) -> None:
    """With OIDC: say that the users file is not what lets anyone in, who may sign in and who is
    admin instead, and where that is set; for ``remove``, whether that person may still sign in."""
    from scatd_core.oidc_access import normal_email, policy, summary_lines

    for line in summary_lines(conf):
        say(f"note: {line}")
    if args.action == "remove":
        rules = policy(conf)
        email = normal_email(args.name)
        if email is not None and rules.admits(email):
            say(f"note: {email} can still sign in with OIDC: take the address out of auth.allowed_emails (or its "
                "domain out of auth.allowed_domains)" + (" and out of auth.admins" if email in rules.admins else "")
                + " to stop that.")


def _warn_if_no_admin(users, had_admin: bool) -> None:
    """Say so when the last admin was just removed or demoted: shared models then cannot be replaced
    or deleted in the app until someone is made admin again (with OIDC the users file's roles do not
    count: :func:`_oidc_notes` names the administrators instead)."""
    if _oidc_settings() is not None:
        return
    if had_admin and not any(u.admin for u in users.list_users()):
        say("note: no admin is left: nobody can replace or delete shared models in the app until one is made "
            "admin again (`scatd users role NAME --admin`).")


def _remove(args, users, path, had_admin: bool) -> None:
    """Remove the account, then say what of the user's stays (or with --delete-data delete it). A name
    already removed may be given again with --delete-data, to delete what it left."""
    if args.delete_models and not args.delete_data:
        raise ScatdError("--delete-models deletes models from the shared library: give it with --delete-data; "
                         "nothing was changed.", f"`scatd users remove {args.name} --delete-data --delete-models`.")
    left = users.user_data(args.name)
    try:
        users.remove_user(args.name)
        print(f"Removed {args.name} from {path}" + (" (the users file, not used for sign-in with OIDC)"
                                                      if _oidc_settings() is not None else ""))
        _warn_if_no_admin(users, had_admin)
    except ScatdError:
        if not args.delete_data:
            raise
        if not left:  # removed before (or never added), and nothing of it left: nothing to do
            others = ", ".join(sorted(u.name for u in users.list_users())) or "none"
            print(f"There is no user {args.name} in {path} (removed before, or never added; users: {others}), "
                  "and nothing is left by that name: nothing was deleted.")
        else:
            print(f"There is no user {args.name} in {path} (removed before); deleting the data left by that name.")
    if args.delete_data:
        for line in users.delete_user_data(left, models=args.delete_models):
            print(line[0].upper() + line[1:])
        if left.cli_panels_file:
            say(f"note: the command line's saved panels in {left.cli_panels_file} are the operating-system account "
                f"{args.name}'s (another identity than the app login {args.name}): kept. If that account is the "
                f"same person and its panels should go too, delete the file (`rm {left.cli_panels_file}`).")
        if left.models and not args.delete_models:
            say(f"note: the models {args.name} trained or imported stay in the shared library (others may use "
                f"them): {', '.join(p.name for p in left.models)}. Delete them with --delete-models, or one by one "
                f"with `scatd models remove NAME --yes`.")
    elif left:
        inherits = " and ".join(what for what, there in (("get these saved panels", left.panels_file),
                                                         ("be recorded as these models' maker", left.models)) if there)
        say(f"note: what {args.name} made stays on the server: " + "; ".join(left.lines()) + ". A new account "
            f"named {args.name} would {inherits or 'take over these records'}. Delete it with `scatd users remove "
            f"{args.name} --delete-data`" + (" (and --delete-models for the models)." if left.models else "."))


def _signout(name: str) -> int:
    """``scatd users signout NAME``: a not-before time for NAME's OIDC sign-ins (:mod:`scatd_core.logins`)."""
    import datetime as dt

    from scatd_core import logins
    from scatd_core.config import settings

    conf = settings()
    if conf["auth_mode"] != "oidc":
        raise ScatdError(f"This server does not sign in with OIDC (auth.mode = \"{conf['auth_mode']}\"): `scatd "
                         f"users signout` ends OIDC sign-ins; nothing was changed.",
                         f"To end a password user's sessions, give them a new password (`scatd users add {name} "
                         f"--replace`) or remove the account (`scatd users remove {name}`): their sessions end at "
                         f"their next click.")
    if not name.strip():
        raise ScatdError("No name given: give the person's e-mail address; nothing was changed.")
    try:
        when = logins.sign_out_everywhere(name)
    except logins.RecordError as exc:
        raise ScatdError(f"The record of ended sign-ins could not be written: {exc}; nothing was changed.",
                         "Run it as the account the server runs as (`sudo -u scatd scatd users signout NAME`), "
                         "or give that account the file.") from None
    stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"Signed {name.strip()} out everywhere: every sign-in of theirs made before {stamp} is refused at its next "
          f"click in the app ({logins.records_file()}).")
    say("note: they can sign in again at once; to keep them out, also remove them from the identity provider "
        "(or from the allowed users).")
    return 0


def run(args) -> int:
    from scatd_core import users

    if args.action == "signout":
        return _signout(args.name)
    path = users.users_file()
    oidc = _oidc_settings()
    unused = " (not used for sign-in: this server signs in with OIDC)" if oidc is not None else ""
    had_admin = any(u.admin for u in users.list_users()) if args.action in ("add", "role", "remove") else False
    if oidc is not None:  # first: before a password is asked for, an OIDC server's admin reads what counts
        _oidc_notes(args, oidc)
    if args.action == "add":
        existed = _check_before_asking(args, users, path)
        user = users.add_user(args.name, _password(args), admin=args.admin, replace=args.replace)
        print(f"{'Updated' if existed else 'Added'} {user.name}{' (admin)' if user.admin else ''} in {path}{unused}")
        _warn_if_no_admin(users, had_admin)
        if not existed and (left := users.user_data(user.name)):
            say(f"note: data of an earlier account named {user.name} is still here and is now {user.name}'s: "
                + "; ".join(left.lines()) + f". To start afresh: `scatd users remove {user.name} --delete-data`, "
                "then add the user again.")
    elif args.action == "role":
        user = users.set_role(args.name, args.admin)
        print(f"{user.name} is {'an admin' if user.admin else 'not an admin'} now (password unchanged) in {path}"
              f"{unused}")
        _warn_if_no_admin(users, had_admin)
    elif args.action == "remove":
        if oidc is not None:  # an OIDC user is the address in lower case: its data are kept under that name
            from scatd_core.oidc_access import normal_email

            email = normal_email(args.name)
            if (email and email != args.name and not users.user_data(args.name)
                    and args.name not in {u.name for u in users.list_users()}):
                say(f"note: with OIDC the user is the address in lower case: {email}")
                args.name = email
        _remove(args, users, path, had_admin)
    else:
        listed = users.list_users()
        if not listed:
            say(f"No users in {path}." + ("" if oidc is not None else " Add one with `scatd users add NAME --admin`."))
        for user in listed:
            print(f"{user.name}\t{'admin' if user.admin else 'user'}")
    if oidc is None and (note := users.ownership_note(path)):  # with OIDC the server does not read it
        say(f"note: {note}")
    return 0
