"""Sign-in through the hospital's OpenID Connect provider (e.g. Keycloak), when configured.

The authorization code flow with PKCE and a nonce (authlib's OAuth 2.0 client); the ID
token's signature, issuer, audience, expiry and nonce are checked with PyJWT against the
provider's published keys. The pending request (state, nonce, PKCE verifier) is kept in the
index, bound to the browser by a short-lived ``HttpOnly; Secure; SameSite=Lax`` cookie
holding the state (Lax: the provider's redirect back is a cross-site navigation).

Who may sign in is decided by the provider (the client's roles or scopes in Keycloak): a
user it vouches for gets a local user of the same name on first sign-in (with no password,
so only the provider can sign them in), and ``haidang users disable NAME`` still shuts
them out. The session is then the same as a local user's.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from functools import cached_property

import jwt
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

STATE_COOKIE = "haidang_oidc_state"
NO_PASSWORD = "!oidc"  # not an Argon2 hash: a local password never matches
REQUEST_TTL_S = 600


class OidcError(ValueError):
    """The provider's answer cannot sign anyone in; the message says why."""


@dataclass(frozen=True)
class Identity:
    username: str
    display_name: str


def configured(settings) -> bool:
    return bool(settings.worklist.oidc and settings.worklist.oidc.issuer)


class OidcSignIn:
    """One configured provider (``worklist.oidc``)."""

    def __init__(self, settings, index):
        self.oidc = settings.worklist.oidc
        if not self.oidc.client_id:
            raise ValueError("worklist.oidc.issuer is set but worklist.oidc.client_id is empty: "
                             "set the client ID registered at the provider")
        self._index = index
        self.timeout = settings.serving.timeout_s

    @cached_property
    def metadata(self) -> dict:
        """The provider's discovery document (fetched once, when first needed)."""
        url = self.oidc.issuer.rstrip("/") + "/.well-known/openid-configuration"
        r = requests.get(url, timeout=self.timeout)
        r.raise_for_status()
        meta = r.json()
        if meta.get("issuer", "").rstrip("/") != self.oidc.issuer.rstrip("/"):
            raise OidcError(f"{url} names issuer {meta.get('issuer')!r}, not the configured "
                            f"{self.oidc.issuer!r}")
        return meta

    @cached_property
    def _keys(self) -> jwt.PyJWKClient:
        return jwt.PyJWKClient(self.metadata["jwks_uri"], timeout=int(self.timeout))

    def _client(self, redirect_uri: str) -> OAuth2Session:
        return OAuth2Session(self.oidc.client_id, self.oidc.client_secret,
                             scope=self.oidc.scopes, redirect_uri=redirect_uri,
                             code_challenge_method="S256")

    def start(self, redirect_uri: str) -> tuple[str, str]:
        """The provider's authorization URL and the state to bind to the browser."""
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(48)
        url, _ = self._client(redirect_uri).create_authorization_url(
            self.metadata["authorization_endpoint"], state=state, nonce=nonce,
            code_verifier=verifier)
        self._index().start_oidc_request(_digest(state), nonce, verifier, redirect_uri,
                                         time.time() + REQUEST_TTL_S)
        return url, state

    def finish(self, state: str, cookie_state: str | None, code: str) -> Identity:
        """Exchange the code and check the ID token; raises OidcError."""
        if not cookie_state or not secrets.compare_digest(state, cookie_state):
            raise OidcError("the sign-in did not start in this browser (state mismatch)")
        pending = self._index().take_oidc_request(_digest(state))
        if pending is None:
            raise OidcError("the sign-in request is unknown or expired; sign in again")
        nonce, verifier, redirect_uri = pending
        token = self._client(redirect_uri).fetch_token(
            self.metadata["token_endpoint"], code=code, code_verifier=verifier,
            timeout=self.timeout)
        if "id_token" not in token:
            raise OidcError("the provider answered without an ID token (scope 'openid'?)")
        raw = token["id_token"]
        try:
            claims = jwt.decode(raw, self._signing_key(raw), algorithms=["RS256", "ES256", "PS256"],
                                audience=self.oidc.client_id, issuer=self.metadata["issuer"],
                                options={"require": ["exp", "iat", "sub", "nonce"]})
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token refused: {exc}") from exc
        if not secrets.compare_digest(str(claims["nonce"]), nonce):
            raise OidcError("ID token refused: nonce mismatch")
        username = str(claims.get(self.oidc.username_claim) or claims["sub"])
        return Identity(username, str(claims.get("name") or username))


    def _signing_key(self, raw: str):
        """The provider's key for this token: by its ``kid``, or the provider's only
        signing key when the token names none (OpenID Connect Core 10.1 allows that)."""
        kid = jwt.get_unverified_header(raw).get("kid")
        if kid:
            return self._keys.get_signing_key(kid).key
        keys = [k for k in self._keys.get_jwk_set().keys if k.public_key_use in ("sig", None)]
        if len(keys) != 1:
            raise OidcError(f"ID token names no key ('kid') and the provider has {len(keys)}")
        return keys[0].key


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
