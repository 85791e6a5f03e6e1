"""Who may read results over HTTP: the worklist data and its thumbnails.

The worklist page itself is static; the data behind it (``/api/worklist``) and the
visual-summary thumbnails are patient results. They need an API key (the same keys as the
native CDSS API: ``security.api_keys`` / ``HAIDANG_API_KEYS``), sent as ``X-API-Key`` by a
program, or once in the page's address (``/worklist?key=…``) by a browser, which then keeps
it in an HttpOnly cookie. Only ``security.development`` switches the check off. Every read,
allowed or refused, is recorded in the audit trail.
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse

from haidang.ground import audit
from haidang.ground.keys import ApiKeys, Unauthorized

COOKIE = "haidang_key"
_COOKIE_SAFE = re.compile(r"^[A-Za-z0-9._~+/=-]{1,200}$")
PROTECTED_PREFIXES = ("/api/worklist", "/worklist/thumbnails/")


class ResultsAccessMiddleware:
    """Pure ASGI: checks the key on result paths, audits, sets the cookie from ``?key=``."""

    def __init__(self, app, settings):
        self.app = app
        self.settings = settings
        self.keys = ApiKeys.from_settings(list(settings.security.api_keys))

    def _presented(self, scope) -> tuple[str | None, str | None]:
        from http.cookies import SimpleCookie
        from urllib.parse import parse_qs

        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key", [None])[0]
        cookie = SimpleCookie(headers.get("cookie", ""))
        from_cookie = cookie[COOKIE].value if COOKIE in cookie else None
        return headers.get("x-api-key") or query or from_cookie, query

    def _verify(self, key: str | None):
        if self.settings.security.development:
            return "development"
        if not self.keys:
            raise Unauthorized("no API keys configured (set HAIDANG_API_KEYS)")
        return self.keys.verify(key).id

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(PROTECTED_PREFIXES):
            key, _ = self._presented(scope)
            client = (scope.get("client") or ("-",))[0]
            try:
                caller = self._verify(key)
            except Unauthorized as exc:
                audit.record(self.settings, "access", resource=path, caller=f"ip:{client}",
                             outcome="refused", reason=exc.reason)
                response = JSONResponse(
                    {"error": "an API key is required to read results: send X-API-Key, or open "
                              "/worklist?key=YOUR_KEY once in the browser"}, status_code=401)
                await response(scope, receive, send)
                return
            audit.record(self.settings, "access", resource=path, caller=caller,
                         outcome="allowed")
        elif path == "/worklist":
            key, query = self._presented(scope)
            if query and _COOKIE_SAFE.match(query):
                try:
                    self._verify(query)
                except Unauthorized:
                    query = None
            else:
                query = None
            if query:
                async def send_with_cookie(message):
                    if message["type"] == "http.response.start":
                        headers = list(message.get("headers", []))
                        headers.append((b"set-cookie", f"{COOKIE}={query}; HttpOnly; "
                                        "SameSite=Strict; Path=/".encode("latin-1")))
                        message = {**message, "headers": headers}
                    await send(message)

                await self.app(scope, receive, send_with_cookie)
                return
        await self.app(scope, receive, send)


def protect_results(app, settings) -> None:
    """Require an API key for result reads on ``app`` and audit each of them."""
    app.add_middleware(ResultsAccessMiddleware, settings=settings)
