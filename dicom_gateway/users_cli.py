"""``haidang users add/disable/enable``: the worklist's local users (see ``signin``)."""

from __future__ import annotations

import getpass
import sys

from haidang.ground import audit


def register(sub) -> None:
    p = sub.add_parser("users", help="worklist sign-in: local users with hashed passwords")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    a = usub.add_parser("add", help="add a user; the password is asked for (or read from stdin)")
    a.add_argument("username")
    a.add_argument("--display-name", help="name shown on the page (default: the user name)")
    a.set_defaults(handler=cmd_add)
    for action, text in (("disable", "disable a user and end their sessions"),
                         ("enable", "enable a disabled user again")):
        d = usub.add_parser(action, help=text)
        d.add_argument("username")
        d.set_defaults(handler=cmd_enable, active=action == "enable")


def _sign_in(args):
    from dicom_gateway.index import Index
    from dicom_gateway.signin import SignIn
    from haidang.ground.settings import load_settings

    settings = load_settings(args.config)
    index = Index(settings.gateway.database_url)
    return SignIn(settings, lambda: index), index


def cmd_add(args) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            print("haidang users add: the two passwords differ; nothing changed",
                  file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    signin, index = _sign_in(args)
    try:
        added = signin.add_user(args.username, password, args.display_name)
    except ValueError as exc:
        print(f"haidang users add: {exc}", file=sys.stderr)
        return 2
    finally:
        index.close()
    if not added:
        print(f"haidang users add: {args.username!r} exists; choose another name",
              file=sys.stderr)
        return 2
    audit.record(signin.settings, "user", action="add", username=args.username)
    print(f"user {args.username} added")
    return 0


def cmd_enable(args) -> int:
    signin, index = _sign_in(args)
    try:
        found = index.set_user_active(args.username, args.active)
    finally:
        index.close()
    word = "enable" if args.active else "disable"
    if not found:
        print(f"haidang users {word}: no user {args.username!r}", file=sys.stderr)
        return 2
    audit.record(signin.settings, "user", action=word, username=args.username)
    print(f"user {args.username} {word}d")
    return 0
