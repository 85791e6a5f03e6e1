"""Who may see patient results on the worklist: local users, their sessions, API keys.

A radiologist signs in with a local user (``haidang users add/disable``; passwords hashed
with Argon2id by argon2-cffi) and gets a session: a random token in an ``HttpOnly; Secure;
SameSite=Strict`` cookie, kept in the index only as its SHA-256, so a copy of the database
opens no session. Every change (POST) made with a session carries the session's CSRF token
in the ``X-CSRF-Token`` header (a synchroniser token: the page reads it from
``/api/session``; another site can neither read it nor send the cookie). Programs present an
API key in the ``X-API-Key`` header; no credential is ever taken from a URL. With
``worklist.oidc`` set, the hospital's OpenID Connect provider can sign users in too
(:mod:`dicom_gateway.oidc`); the session is the same.
``security.development`` switches the check off; never in production.

Every read of patient data and every refusal is recorded in the audit trail.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

import requests
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from dicom_gateway.index import Index, Session, User
from dicom_gateway.oidc import (
    NO_PASSWORD,
    REQUEST_TTL_S,
    STATE_COOKIE,
    OidcError,
    OidcSignIn,
    configured,
)
from haidang.ground import audit
from haidang.ground.keys import ApiKeys, Unauthorized
from serving.ratelimit import TokenBucket

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
        return self.open_session(user)

    def open_session(self, user: User) -> tuple[str, Session] | None:
        """A new session token and its session for an active user (local or OIDC)."""
        if not user.active:
            return None
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = time.time() + 3600 * self.settings.worklist.session_hours
        self.index.start_session(_digest(token), user.username, csrf, expires)
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


class SignInForm(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=500)


def _client(request: Request) -> str:
    return f"ip:{request.client.host if request.client else '-'}"


def signin_router(signin: SignIn) -> APIRouter:
    """Sign-in (local user or OpenID Connect), the session the page asks for, sign-out."""
    settings = signin.settings
    router = APIRouter()
    reader = Depends(signin.reader)
    oidc = OidcSignIn(settings, lambda: signin.index) if configured(settings) else None
    attempts = TokenBucket(rate=1 / 60, burst=10)  # per user name: 10 tries, then 1 a minute

    def signed_in(session_cookie: str, response: Response) -> Response:
        response.headers.append("set-cookie", session_cookie)
        return response

    @router.post("/api/signin")
    def sign_in(form: SignInForm, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise HTTPException(403, "sign-in from another site refused")
        wait = attempts.take(form.username.casefold())
        if wait:
            audit.record(settings, "sign-in", caller=_client(request), username=form.username,
                         method="password", outcome="refused", reason="too many attempts")
            raise HTTPException(429, "Thử quá nhiều lần; hãy đợi rồi thử lại. / Too many "
                                     "attempts: wait, then try again.",
                                headers={"Retry-After": str(math.ceil(wait))})
        started = signin.sign_in(form.username, form.password)
        audit.record(settings, "sign-in", caller=_client(request), username=form.username,
                     method="password", outcome="allowed" if started else "refused")
        if started is None:
            raise HTTPException(401, "Sai tên đăng nhập hoặc mật khẩu. / "
                                     "Wrong user name or password.")
        token, session = started
        return signed_in(signin.cookie(token), JSONResponse(
            {"name": session.display_name, "csrf": session.csrf_token}))

    @router.get("/api/session")
    def session(who: Reader = reader) -> dict:
        return {"name": who.name, "csrf": who.session.csrf_token if who.session else None}

    @router.post("/api/signout")
    def sign_out(request: Request, who: Reader = reader) -> Response:
        signin.sign_out(request.cookies.get(SESSION_COOKIE))
        return signed_in(f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; Secure; "
                         "SameSite=Strict", JSONResponse({"signed_out": True}))

    @router.get("/signin/oidc", include_in_schema=False)
    def oidc_start(request: Request) -> Response:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect sign-in is not configured (worklist.oidc)")
        callback = settings.worklist.oidc.redirect_url or str(request.url_for("oidc_callback"))
        url, state = oidc.start(callback)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(STATE_COOKIE, state, max_age=REQUEST_TTL_S, path="/signin/oidc",
                            httponly=True, secure=True, samesite="lax")
        return response

    @router.get("/signin/oidc/callback", include_in_schema=False)
    def oidc_callback(request: Request, state: str = "", code: str = "",
                      error: str = "") -> Response:
        if oidc is None:
            raise HTTPException(404, "OpenID Connect sign-in is not configured (worklist.oidc)")
        try:
            if error or not code:
                raise OidcError(f"the provider answered {error or 'without a code'}")
            who = oidc.finish(state, request.cookies.get(STATE_COOKIE), code)
        except (OidcError, requests.RequestException) as exc:
            audit.record(settings, "sign-in", caller=_client(request), method="oidc",
                         outcome="refused", reason=str(exc)[:200])
            return HTMLResponse(
                f"<p>Đăng nhập không thành công. / Sign-in failed: {escape(str(exc))}</p>"
                '<p><a href="/worklist">Đăng nhập lại / Sign in again</a></p>', status_code=401)
        signin.index.add_user(who.username, NO_PASSWORD, who.display_name)  # first sign-in
        started = signin.open_session(signin.index.user(who.username))
        audit.record(settings, "sign-in", caller=_client(request), username=who.username,
                     method="oidc", outcome="allowed" if started else "refused")
        if started is None:
            return HTMLResponse("<p>Tài khoản đã bị khoá. / This user is disabled.</p>",
                                status_code=403)
        response = signed_in(signin.cookie(started[0]), RedirectResponse("/worklist", 303))
        response.headers.append("set-cookie", f"{STATE_COOKIE}=; Max-Age=0; Path=/signin/oidc; "
                                "HttpOnly; Secure; SameSite=Lax")
        return response

    return router
