"""API keys and callers: who is asking, in a form safe to log.

The native CDSS API and the results pages accept the same API keys (``security.api_keys``
plus ``$HAIDANG_API_KEYS``), so the gateway's pages and the CDSS share one definition here
instead of one room borrowing the other's. Keys are kept only as SHA-256 digests; a caller is
named by a digest prefix, never by the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

API_KEYS_ENV = "HAIDANG_API_KEYS"


class Unauthorized(Exception):
    """The caller is not trusted; `reason` is for the audit/log only, never for the caller."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called, in a form safe to log (no secret, no raw key)."""

    kind: str  # "jwt" | "api-key" | "development"
    id: str  # issuer (+ sub) or "key:<sha256 prefix>"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The native API's keys (settings plus $HAIDANG_API_KEYS), kept only as digests."""

    def __init__(self, keys: list[str]):
        self._digests = {d: d[:12] for d in (key_digest(k) for k in keys if k)}

    @classmethod
    def from_settings(cls, configured: list[str], environ=None) -> ApiKeys:
        environ = os.environ if environ is None else environ
        env = [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",")]
        return cls([*configured, *env])

    def __bool__(self) -> bool:
        return bool(self._digests)

    def verify(self, presented: str | None) -> Caller:
        if not presented:
            raise Unauthorized("no X-API-Key header")
        digest = key_digest(presented)
        for known in self._digests:
            if hmac.compare_digest(known, digest):
                return Caller("api-key", f"key:{self._digests[known]}")
        raise Unauthorized("unknown API key")
