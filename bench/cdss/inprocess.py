"""Where the time of one check goes: both apps driven in-process (no network, no uvicorn).

Calls the ASGI apps directly with the benchmark's 10-drug body, then times each step of
Haidang's route on its own. Rounds alternate between the steps (the machine is shared), and
each figure is the median over the rounds of the mean over `--calls` calls, in µs per
request. Not a test: nothing asserts.

    .venv/bin/python -m bench.cdss.inprocess            # ~1 minute
    .venv/bin/python -m bench.cdss.inprocess --clock cpu   # CPU time of this process

`--clock cpu` (time.process_time) leaves out the time the process waits for a core, so on
a machine shared with other work it moves less from run to run than the wall clock; the
audit writer thread sleeps during the whole-request steps, so it adds nothing there.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BODY = (HERE.parents[1] / "tests" / "support" / "fixtures" / "cdss"
        / "bench-10-drugs.json").read_bytes()
PATH = "/api/v1/prescriptions/check"
API_KEY = "bench-key-not-secret"


def _scope() -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
            "query_string": b"", "root_path": "", "server": ("127.0.0.1", 3000),
            "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", b"application/json"),
                        (b"x-api-key", API_KEY.encode()),
                        (b"content-length", str(len(BODY)).encode())]}


async def _request(app) -> None:
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        return {"type": "http.disconnect"}

    status = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(), receive, send)
    if status != [200]:
        raise SystemExit(f"the app answered {status}, not 200")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per step and round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: time.perf_counter (default); cpu: time.process_time")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    os.environ.update({"HAIDANG_API_KEYS": API_KEY,
                       "HAIDANG_SECURITY__AUDIT_LOG": str(Path(tempfile.mkdtemp()) / "a.log")})
    from bench.cdss.bare_app import create_bare_app
    from serving.cdss.app import app_from_env
    from serving.cdss.checks import CheckEngine
    from serving.cdss.models import (
        PrescriptionCheckRequest,
        prescription_from_native,
        response_json,
    )

    bare, app = create_bare_app(), app_from_env()  # app_from_env: as `haidang serve` builds it
    state = app.state.cdss
    kb_only = CheckEngine(state.engine.kb, state.engine.icd, learned=None)
    req = PrescriptionCheckRequest.model_validate_json(BODY)
    rx = prescription_from_native(req)
    result = state.engine.check(rx)
    ids = [a.id for a in result.alerts]
    audit = state.audit
    # The writer thread's work is timed below, on its own: the whole-request figures do not
    # include it (in a server it runs in the same process, between requests).
    audit._interval = 3600.0  # noqa: SLF001
    loop = asyncio.new_event_loop()

    def record():
        audit.record("check", {"patient": req.MA_BN, "episode": req.MA_LK}, api="native",
                     caller="key:0123456789ab", lines=len(req.THUOC), alerts=list(ids),
                     ms=0.123)

    def writer(n):
        for _ in range(n):
            record()
        audit._drain()  # noqa: SLF001 - pseudonymise, hash-chain and write the batch

    from serving.ratelimit import RateLimitMiddleware

    async def _noop(scope, receive, send):
        return None

    limiter = RateLimitMiddleware(_noop, rate=1e9, burst=10**9)  # never refuses here

    async def _limited(n):
        scope = _scope()
        for _ in range(n):
            await limiter(scope, None, None)

    steps = {
        "bare endpoint, whole request through FastAPI": lambda n: loop.run_until_complete(
            _many(bare, n)),
        "Haidang endpoint, whole request through FastAPI": lambda n: loop.run_until_complete(
            _many(app, n)),
        "parse the body (pydantic, both endpoints)": lambda n: _loop(
            n, PrescriptionCheckRequest.model_validate_json, BODY),
        "API key check": lambda n: _loop(n, state.guard.native, API_KEY),
        "rate limiter middleware (when security.rate_limit_per_s > 0; off in both apps here)":
            lambda n: loop.run_until_complete(_limited(n)),
        "native request -> engine input": lambda n: _loop(n, prescription_from_native, req),
        "the checks, knowledge base only": lambda n: _loop(n, kb_only.check, rx),
        "the checks, with the learned models (served)": lambda n: _loop(
            n, state.engine.check, rx),
        "answer JSON (per-alert JSON cached)": lambda n: _loop(
            n, response_json, result.alerts, result.recognised, state.knowledge_version),
        "audit: queue the record (request path)": lambda n: _loop(n, record),
        "audit: queue + writer thread (HMAC ids, hash chain, write)": writer,
    }
    for fn in steps.values():  # warm every memo and cache
        fn(200)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            audit._drain()  # noqa: SLF001 - records of the previous step, untimed
            gc.collect()
            t = clock()
            fn(args.calls)
            times[name].append((clock() - t) / args.calls * 1e6)
    print(f"{args.clock} clock; load average {os.getloadavg()[0]:.2f}; "
          f"{len(result.alerts)} alerts, "
          f"{len(response_json(result.alerts, result.recognised, None))} bytes of JSON")
    print("| step | µs per request (median; min–max over rounds) |\n| --- | ---: |")
    for name, vals in times.items():
        print(f"| {name} | {statistics.median(vals):.1f} ({min(vals):.0f}–{max(vals):.0f}) |")
    state.close()
    return 0


async def _many(app, n: int) -> None:
    for _ in range(n):
        await _request(app)


def _loop(n: int, fn, *args) -> None:
    for _ in range(n):
        fn(*args)


if __name__ == "__main__":
    sys.exit(main())
