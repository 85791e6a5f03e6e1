"""Rate limiting for the HTTP APIs: a token bucket per caller (API key, else client address).

A caller may make ``rate`` requests per second on average, in bursts of up to ``burst``;
beyond that it gets 429 with ``Retry-After``. The key is the SHA-256 of the ``X-API-Key``
header when one is sent (a key guesser changes keys, so unauthenticated guessing is also
bounded by its address through the second bucket), otherwise the client address. Buckets
live in the process: with several uvicorn workers each enforces its own share.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict

from starlette.responses import JSONResponse

LIMITED_PREFIXES = ("/api/", "/cds-services")


class TokenBucket:
    """Buckets by caller; bounded in number (least recently used dropped)."""

    def __init__(self, rate: float, burst: int, max_callers: int = 10_000):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_callers
        self._lock = threading.Lock()

    def take(self, caller: str, now: float | None = None) -> float:
        """0 when a request may go on; else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        buckets = self._buckets
        with self._lock:
            entry = buckets.get(caller)
            if entry is None:
                tokens = float(self.burst)
            else:
                buckets.move_to_end(caller)  # most recently used last
                tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
            if tokens >= 1.0:
                buckets[caller] = (tokens - 1.0, now)
                wait = 0.0
            else:
                buckets[caller] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(buckets) > self._max:
                while len(buckets) > self._max:
                    buckets.popitem(last=False)
        return wait


def key_bucket(presented: str) -> str:
    return "key:" + hashlib.sha256(presented.encode("utf-8")).hexdigest()[:16]


_KEY_MEMO_MAX = 256


class RateLimitMiddleware:
    """Pure ASGI middleware (no body buffering) limiting the API paths."""

    def __init__(self, app, rate: float, burst: int, prefixes=LIMITED_PREFIXES):
        self.app = app
        self.buckets = TokenBucket(rate, burst)
        self.prefixes = tuple(prefixes)
        self._key_buckets: dict[bytes, str] = {}  # X-API-Key value -> its bucket name

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").startswith(self.prefixes):
            # The raw header list, scanned for X-API-Key only (the last one counts, as when
            # the headers were gathered in a dict); its bucket name memoised per key sent.
            presented = None
            for name, value in scope.get("headers", ()):
                if len(name) == 9 and name.lower() == b"x-api-key":
                    presented = value
            client = scope.get("client")
            take = self.buckets.take
            now = time.monotonic()
            wait = take(f"ip:{client[0] if client else '-'}", now)
            if presented:
                bucket = self._key_buckets.get(presented)
                if bucket is None:
                    if len(self._key_buckets) >= _KEY_MEMO_MAX:
                        self._key_buckets.clear()  # bounded: a key guesser only churns it
                    bucket = self._key_buckets[presented] = key_bucket(
                        presented.decode("latin-1"))
                wait = max(wait, take(bucket, now))
            if wait > 0:
                response = JSONResponse(
                    {"error": "too many requests; slow down and retry after the delay given in "
                              "Retry-After (security.rate_limit_per_s)"},
                    status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_rate_limit(app, security) -> None:
    """Add the limiter to ``app`` when ``security.rate_limit_per_s`` is above 0."""
    rate = float(getattr(security, "rate_limit_per_s", 0) or 0)
    if rate <= 0:
        return
    burst = int(getattr(security, "rate_limit_burst", 0) or 0) or max(1, int(2 * rate))
    app.add_middleware(RateLimitMiddleware, rate=rate, burst=burst)
