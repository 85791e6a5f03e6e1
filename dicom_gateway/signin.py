"""Who may see patient results on the worklist: local users, their sessions, API keys.

A radiologist signs in with a local user (``haidang users add/disable``; passwords hashed
with Argon2id by argon2-cffi) and gets a session: a random token in an ``HttpOnly; Secure;
SameSite=Strict`` cookie, kept in the index only as its SHA-256, so a copy of the database
opens no session. Every change (POST) made with a session carries the session's CSRF token
in the ``X-CSRF-Token`` header (a synchroniser token: the page reads it from
``/api/session``; another site can neither read it nor send the cookie). Programs present an
API key in the ``X-API-Key`` header; no credential is ever taken from a URL.
``security.development`` switches the check off; never in production.

Every read of patient data and every refusal is recorded in the audit trail.
"""

from __future__ import annotations

import getpass
import hashlib
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request

from dicom_gateway.index import Index, Session
from haidang import audit
from serving.cdss.security import ApiKeys, Unauthorized

SESSION_COOKIE = "haidang_session"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_FIRST = ("Vui lòng đăng nhập để xem danh sách ca chụp. / "
                 "Please sign in to see the worklist.")


@dataclass(frozen=True)
class Reader:
    """Who is asking: a signed-in user, a program with an API key, or development mode."""

    caller: str  # "user:NAME", "key:DIGEST-PREFIX" or "development"
    name: str  # what the page shows and reviews record
    session: Session | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SignIn:
    """Users, sessions and the check on every request for patient data."""

    def __init__(self, settings, index: Callable[[], Index]):
        self.settings = settings
        self._index = index
        self.keys = ApiKeys.from_settings(list(settings.security.api_keys))
        self.hasher = PasswordHasher()
        # an unknown user name costs one verification too: timing does not tell names apart
        self._unknown = self.hasher.hash(secrets.token_urlsafe(16))

    @property
    def index(self) -> Index:
        return self._index()

    # -- users ------------------------------------------------------------------------

    def add_user(self, username: str, password: str, display_name: str | None = None) -> bool:
        if len(password) < 10:
            raise ValueError("a password needs at least 10 characters")
        return self.index.add_user(username, self.hasher.hash(password),
                                   display_name or username)

    def sign_in(self, username: str, password: str) -> tuple[str, Session] | None:
        """A new session token and its session, or None for a wrong name or password."""
        user = self.index.user(username)
        try:
            self.hasher.verify(user.password_hash if user else self._unknown, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or not user.active:
            return None
        if self.hasher.check_needs_rehash(user.password_hash):
            self.index.set_password_hash(username, self.hasher.hash(password))
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = time.time() + 3600 * self.settings.worklist.session_hours
        self.index.start_session(_digest(token), username, csrf, expires)
        return token, Session(user.username, user.display_name, csrf, expires)

    def sign_out(self, token: str | None) -> None:
        if token:
            self.index.end_session(_digest(token))

    def cookie(self, token: str) -> str:
        max_age = int(3600 * self.settings.worklist.session_hours)
        return (f"{SESSION_COOKIE}={token}; Max-Age={max_age}; Path=/; HttpOnly; Secure; "
                "SameSite=Strict")

    # -- the check --------------------------------------------------------------------

    def _reader(self, request: Request) -> Reader:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            session = self.index.session(_digest(token))
            if session is not None:
                return Reader(f"user:{session.username}", session.display_name, session)
        key = request.headers.get("x-api-key")
        if key:
            if not self.keys:
                raise Unauthorized("no API keys configured (set HAIDANG_API_KEYS)")
            caller = self.keys.verify(key).id
            return Reader(caller, caller)
        if self.settings.security.development:
            return Reader("development", "development")
        raise Unauthorized("no session" if not token else "session ended or unknown")

    def reader(self, request: Request) -> Reader:
        """The FastAPI dependency of every route that shows or changes patient data.

        401 without a session or key; 403 for a change without the session's CSRF token.
        """
        client = request.client.host if request.client else "-"
        try:
            who = self._reader(request)
        except Unauthorized as exc:
            audit.record(self.settings, "access", resource=request.url.path,
                         caller=f"ip:{client}", outcome="refused", reason=exc.reason)
            raise HTTPException(401, SIGN_IN_FIRST) from None
        if request.method not in ("GET", "HEAD") and who.session is not None:
            sent = request.headers.get(CSRF_HEADER.lower(), "")
            if not secrets.compare_digest(sent.encode(), who.session.csrf_token.encode()):
                audit.record(self.settings, "access", resource=request.url.path,
                             caller=who.caller, outcome="refused", reason="CSRF token missing")
                raise HTTPException(403, "Thiếu mã chống giả mạo (CSRF); hãy tải lại trang. / "
                                         "CSRF token missing or wrong: reload the page.")
        audit.record(self.settings, "access", resource=request.url.path, caller=who.caller,
                     method=request.method, outcome="allowed")
        return who


# -- haidang users add/disable --------------------------------------------------------


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


def _sign_in(args) -> tuple[SignIn, Index]:
    from haidang.settings import load_settings

    settings = load_settings(args.config)
    index = Index(settings.gateway.database_url)
    return SignIn(settings, lambda: index), index


def cmd_add(args) -> int:
    password = (getpass.getpass(f"password for {args.username}: ") if sys.stdin.isatty()
                else sys.stdin.readline().rstrip("\n"))
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
