"""Who may call the CDSS: CDS Hooks JWTs for EHRs, API keys for the native API.

CDS Hooks (2.0, "Trusting CDS Clients"): the client signs a JWT with an asymmetric key; we
verify it against a configured JWKS, accept only allow-listed issuers, require `aud` to be
the URL of the service that was called, `exp` at most 5 minutes ahead, and refuse a `jti`
seen before. `alg: none` and HMAC (a shared secret is not an identity) are refused.

Errors raised here carry a short reason for the log; the HTTP answer to the caller is a
plain 401 that does not say which check failed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

import jwt

from haidang.ground.keys import ApiKeys, Caller, Unauthorized

ASYMMETRIC_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512", "EdDSA",
)
MAX_LIFETIME_S = 300  # CDS Hooks: exp SHALL be no more than 5 minutes in the future
LEEWAY_S = 30


class ReplayStore:
    """`jti` values seen while their token is still valid; bounded in size and time.

    In one process only; the app uses `serving.cdss.shared.SharedState` (same interface),
    which all worker processes share."""

    def __init__(self, max_entries: int = 100_000):
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def check_and_add(self, key: str, exp: float, now: float) -> bool:
        """True the first time `key` is seen (and remembers it); False on a replay."""
        with self._lock:
            while self._seen:
                oldest_key, oldest_exp = next(iter(self._seen.items()))
                if oldest_exp >= now - LEEWAY_S and len(self._seen) < self._max:
                    break
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = exp
            return True


class JwtVerifier:
    """Verifies CDS Hooks bearer tokens against a JWKS file and an issuer allowlist."""

    def __init__(self, jwks: dict, allowed_issuers: list[str], replay=None):
        self._keys: dict[str | None, list] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "oct":
                continue  # symmetric keys never verify anything here
            try:
                key = jwt.PyJWK(jwk)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
            self._keys.setdefault(jwk.get("kid"), []).append(key)
        self._issuers = frozenset(allowed_issuers)
        self._replay = replay or ReplayStore()

    @classmethod
    def from_file(cls, path: Path, allowed_issuers: list[str], replay=None) -> JwtVerifier:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")), allowed_issuers, replay)

    def verify(self, authorization: str | None, audience: str) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGS:
            raise Unauthorized(f"algorithm {alg!r} refused (asymmetric signatures only)")
        candidates = self._keys.get(header.get("kid")) or (
            [k for ks in self._keys.values() for k in ks] if header.get("kid") is None else []
        )
        if not candidates:
            raise Unauthorized("no configured key for this kid")
        claims = None
        last: Exception | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=audience,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "aud", "exp", "jti"]},
                )
                break
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"invalid token: {exc}") from None
        if claims is None:
            raise Unauthorized(f"invalid token: {last}")
        now = time.time()
        iss = claims.get("iss")
        if iss not in self._issuers:
            raise Unauthorized("issuer not in allowlist")
        exp = float(claims["exp"])
        if exp > now + MAX_LIFETIME_S + LEEWAY_S:
            raise Unauthorized("exp more than 5 minutes ahead")
        if not self._replay.check_and_add(f"{iss}\x00{claims['jti']}", exp, now):
            raise Unauthorized("jti replayed")
        sub = claims.get("sub")
        return Caller("jwt", f"{iss}|{sub}" if sub else str(iss))


class Guard:
    """The security decisions of one app: development mode, API keys, JWT verifier."""

    def __init__(self, development: bool, api_keys: ApiKeys, jwt_verifier: JwtVerifier | None):
        self.development = development
        self.api_keys = api_keys
        self.jwt = jwt_verifier

    @classmethod
    def from_settings(cls, security, environ=None, replay=None) -> Guard:
        """`replay`: a store shared by the worker processes (`serving.cdss.shared`)."""
        verifier = None
        if security.jwks_file:
            verifier = JwtVerifier.from_file(security.jwks_file, list(security.allowed_issuers),
                                             replay)
        return cls(bool(security.development), ApiKeys.from_settings(list(security.api_keys),
                                                                     environ), verifier)

    def native(self, x_api_key: str | None) -> Caller:
        if self.development:
            return Caller("development", "development")
        if not self.api_keys:
            raise Unauthorized("no API keys configured (set HAIDANG_API_KEYS)")
        return self.api_keys.verify(x_api_key)

    def cds_hooks(self, authorization: str | None, audience: str) -> Caller:
        if self.development:
            return Caller("development", "development")
        if self.jwt is None:
            raise Unauthorized("no JWKS configured (security.jwks_file)")
        return self.jwt.verify(authorization, audience)
