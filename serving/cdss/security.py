"""Who may call the CDSS: CDS Hooks JWTs for EHRs, API keys for the native API.

CDS Hooks (2.0, "Trusting CDS Clients"): the client signs a JWT with an asymmetric key
(ES384 and RS384 among those accepted; `alg: none` and HMAC, a shared secret being no
identity, are refused). The header's `kid` selects the key in the issuer's JWKS: a
configured file or URL, re-read when a token names a kid it lacks; a `jku` header is
honoured only when it is the URL configured for that issuer. `iss`, `sub`, `aud`, `exp`,
`iat` and `jti` are required; `iss` must be allow-listed, `aud` the URL of the service that
was called, `exp` at most 5 minutes ahead (clock skew configurable), and a `jti` seen
before is refused.

Errors raised here carry a short reason for the log; the HTTP answer to the caller is a
plain 401 that does not say which check failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import httpx
import jwt

from haidang.ground.keys import ApiKeys, Caller, Unauthorized

ASYMMETRIC_ALGS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512", "EdDSA",
)
MAX_LIFETIME_S = 300  # CDS Hooks: exp SHALL be no more than 5 minutes in the future
LEEWAY_S = 30
log = logging.getLogger("haidang.cdss")


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


class KeySource:
    """One JWKS (a URL or a file), read when first needed and re-read when a token names a
    kid it lacks, at most every `refresh_s` seconds (a flood of unknown kids costs nothing).

    A URL is read with a short timeout, no redirects and no proxy from the environment. The
    read blocks the calling request: it happens once per key rotation, not per token."""

    def __init__(self, url: str | None = None, path: Path | None = None,
                 jwks: dict | None = None, refresh_s: float = 60.0, timeout_s: float = 2.0):
        self.url = url
        self.path = Path(path) if path else None
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, list] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()
        if jwks is not None:
            self._keys = _index(jwks)
            self._read_at = time.monotonic()

    def keys(self, kid: str) -> list:
        with self._lock:
            if kid not in self._keys and time.monotonic() - self._read_at >= self.refresh_s:
                self._read_at = time.monotonic()
                try:
                    self._keys = _index(self._fetch())
                except (OSError, ValueError, httpx.HTTPError) as exc:
                    # keep the keys we had; the token is refused for its unknown kid
                    log.warning("JWKS %s not read: %s", self.url or self.path,
                                type(exc).__name__)
            return list(self._keys.get(kid, ()))

    def _fetch(self) -> dict:
        if not self.url:
            return json.loads(self.path.read_text(encoding="utf-8"))
        response = httpx.get(self.url, timeout=self.timeout_s, follow_redirects=False,
                             trust_env=False, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()


def _index(jwks: dict) -> dict[str, list]:
    """kid -> public keys; symmetric (`oct`) keys and keys without a kid are left out."""
    out: dict[str, list] = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or not jwk.get("kid"):
            continue
        try:
            key = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        out.setdefault(jwk["kid"], []).append(key)
    return out


class JwtVerifier:
    """Verifies CDS Hooks bearer tokens (CDS Hooks 2.0, "Trusting CDS Clients").

    `sources`: issuer -> its KeySource; `None` as the issuer key is the shared JWKS of
    `security.jwks_file`, valid for every issuer in `allowed_issuers`. `jku` in a token is
    honoured only when the issuer has its own JWKS URL and the jku is exactly that URL."""

    def __init__(self, sources: dict[str | None, KeySource], allowed_issuers: list[str],
                 replay=None, leeway_s: float = LEEWAY_S):
        self._sources = sources
        self._issuers = frozenset(allowed_issuers) | {i for i in sources if i is not None}
        self._replay = replay or ReplayStore()
        self._leeway = leeway_s

    def _source(self, iss: str) -> KeySource | None:
        return self._sources.get(iss) or self._sources.get(None)

    def verify(self, authorization: str | None, audience: str) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGS:
            raise Unauthorized(f"algorithm {alg!r} refused (asymmetric signatures only)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("no kid in the token header")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self._issuers:
            raise Unauthorized("issuer not in allowlist")
        source = self._source(iss)
        if source is None:
            raise Unauthorized("no JWKS configured for this issuer")
        jku = header.get("jku")
        if jku is not None and (source.url is None or jku != source.url):
            raise Unauthorized("jku not the issuer's configured JWKS URL")
        candidates = source.keys(kid)
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
                    issuer=iss,
                    leeway=self._leeway,
                    options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
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
        exp = float(claims["exp"])
        if exp > now + MAX_LIFETIME_S + self._leeway:
            raise Unauthorized("exp more than 5 minutes ahead")
        if not self._replay.check_and_add(f"{iss}\x00{claims['jti']}", exp, now):
            raise Unauthorized("jti replayed")
        return Caller("jwt", f"{iss}|{claims['sub']}")


class Guard:
    """The security decisions of one app: development mode, API keys, JWT verifier."""

    def __init__(self, development: bool, api_keys: ApiKeys, jwt_verifier: JwtVerifier | None):
        self.development = development
        self.api_keys = api_keys
        self.jwt = jwt_verifier

    @classmethod
    def from_settings(cls, security, environ=None, replay=None, cds_hooks=None) -> Guard:
        """`replay`: a store shared by the worker processes (`serving.cdss.shared`);
        `cds_hooks`: the [cds_hooks] settings (issuers with their JWKS, clock skew)."""
        sources: dict[str | None, KeySource] = {}
        refresh = getattr(cds_hooks, "jwks_refresh_s", 60.0)
        if security.jwks_file:
            sources[None] = KeySource(path=security.jwks_file, refresh_s=refresh)
        for issuer in getattr(cds_hooks, "issuers", None) or []:
            sources[issuer.iss] = KeySource(url=issuer.jwks_url, path=issuer.jwks_file,
                                            refresh_s=refresh)
        verifier = None
        if sources:
            verifier = JwtVerifier(sources, list(security.allowed_issuers), replay,
                                   getattr(cds_hooks, "clock_skew_s", LEEWAY_S))
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
            raise Unauthorized("no JWKS configured (security.jwks_file or cds_hooks.issuers)")
        return self.jwt.verify(authorization, audience)
