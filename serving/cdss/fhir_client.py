"""What the prefetch lacks, read from the EHR's FHIR server (CDS Hooks `fhirServer`).

The CDS Hooks client may send `fhirServer` and `fhirAuthorization` (an OAuth 2.0 bearer
token with `expires_in`). The token is used only for the reads of this one hook call, only
while `expires_in` says it is valid, and it is never logged or kept: errors name the server
and the resource, never the token. Every read of one call shares one deadline (the hook's
budget, `cds_hooks.fhir_timeout_s`), so a slow FHIR server costs at most that much.
The URLs read are kept out of httpx's log lines: they carry the patient's id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

_BASES: set[str] = set()  # fhirServer bases read by this process (bounded below)


class _PatientOutOfUrls(logging.Filter):
    """httpx logs each request's URL at INFO, and a FHIR read's URL names the patient
    (`Condition?patient=…`, `Patient/…`): those URLs are logged as `<fhirServer>/…`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 1 and \
                any(str(args[1]).startswith(base) for base in _BASES):
            record.args = (args[0], "<fhirServer>/…", *args[2:])
        return True


logging.getLogger("httpx").addFilter(_PatientOutOfUrls())


class FhirUnavailable(Exception):
    """The FHIR server could not give what was needed; the message is safe to show."""


@dataclass(frozen=True)
class FhirAccess:
    """Where and how to read one hook call's missing resources (no token outside it)."""

    base: str
    token: str | None
    deadline: float  # time.monotonic() after which nothing more is read

    @classmethod
    def from_request(cls, fhir_server: Any, authorization: Any, budget_s: float,
                     allowed: list[str] | tuple[str, ...] = ()) -> FhirAccess:
        """Checks the request's fields; FhirUnavailable says which one is unusable."""
        if not isinstance(fhir_server, str) or not fhir_server.strip():
            raise FhirUnavailable("no fhirServer in the request")
        base = fhir_server.strip().rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise FhirUnavailable("fhirServer is not an http(s) URL")
        if allowed and not any(base == a.rstrip("/") or base.startswith(a.rstrip("/") + "/")
                               for a in allowed):
            raise FhirUnavailable(f"fhirServer {base} is not in cds_hooks.fhir_servers")
        token = None
        budget = budget_s
        if authorization is not None:
            if not isinstance(authorization, dict):
                raise FhirUnavailable("fhirAuthorization is not an object")
            token = authorization.get("access_token")
            kind = authorization.get("token_type")
            expires_in = authorization.get("expires_in")
            if not isinstance(token, str) or not token:
                raise FhirUnavailable("fhirAuthorization.access_token missing")
            if not isinstance(kind, str) or kind.lower() != "bearer":
                raise FhirUnavailable("fhirAuthorization.token_type must be Bearer")
            if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
                raise FhirUnavailable("fhirAuthorization.expires_in missing (seconds)")
            if expires_in <= 0:
                raise FhirUnavailable("fhirAuthorization has expired (expires_in <= 0)")
            budget = min(budget, float(expires_in))
        return cls(base, token, time.monotonic() + budget)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def fill(template: str, context: dict) -> str:
    """A prefetch template with its `{{context.x}}` tokens replaced (URL-encoded)."""
    out = template
    for key, value in context.items():
        token = "{{context." + key + "}}"
        if token in out and isinstance(value, str):
            out = out.replace(token, quote(value, safe=""))
    return out


async def read_all(access: FhirAccess, queries: dict[str, str]) -> dict[str, Any]:
    """key -> the resource (or search Bundle) each relative query returns, read together.

    FhirUnavailable names the first query that failed (time out, refusal, not JSON)."""
    if not queries:
        return {}
    if len(_BASES) >= 1000:
        _BASES.clear()
    _BASES.add(access.base)
    if access.left() <= 0:
        raise FhirUnavailable("no time left to read from the FHIR server")
    headers = {"Accept": "application/fhir+json"}
    if access.token:
        headers["Authorization"] = f"Bearer {access.token}"
    async with httpx.AsyncClient(headers=headers, timeout=max(access.left(), 0.01),
                                 follow_redirects=False, trust_env=False) as client:
        async def one(key: str, query: str):
            try:
                response = await client.get(f"{access.base}/{query}")
            except httpx.HTTPError as exc:
                raise FhirUnavailable(f"{key}: FHIR server not reachable "
                                      f"({type(exc).__name__})") from None
            if response.status_code != 200:
                raise FhirUnavailable(f"{key}: FHIR server answered {response.status_code} "
                                      f"to {query.split('?')[0]}")
            try:
                return key, response.json()
            except ValueError:
                raise FhirUnavailable(f"{key}: FHIR server answer is not JSON") from None

        try:
            pairs = await asyncio.wait_for(
                asyncio.gather(*(one(k, q) for k, q in queries.items())),
                timeout=max(access.left(), 0.01))
        except TimeoutError:
            raise FhirUnavailable("FHIR server too slow (cds_hooks.fhir_timeout_s)") from None
    return dict(pairs)
