"""What each of Haidang's own steps costs INSIDE a whole request (not on its own).

`inprocess.py` times each step alone, in a tight loop, where its code and data stay in the
processor's caches. In a server the same step runs between the HTTP stack's code and costs
more. Here the whole request goes through Haidang's FastAPI app in-process (no network),
once as served and once with one step replaced by its precomputed result; the difference is
what that step costs in context. With all four replaced, the request costs what the bare
endpoint costs: these four steps are all Haidang adds.

    .venv/bin/python -m bench.cdss.pieces            # ~1 minute; CPU time of this process

The audit writer thread's work (pseudonyms, hash chain, write) is not in these figures: it
runs between requests (`inprocess.py` times it: ~12 µs a record). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.cdss import inprocess as IP  # the request driver and body

HERE = Path(__file__).resolve().parent

STEPS = {
    "the checks (engine.check)": "check",
    "native request -> engine input (prescription_from_native)": "native",
    "answer JSON (response_json)": "answer",
    "audit record queued (audit.record)": "audit",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    os.environ.update({"HAIDANG_API_KEYS": IP.API_KEY, "HAIDANG_SECURITY__AUDIT_LOG": str(
        Path(tempfile.mkdtemp(prefix="haidang-pieces-")) / "audit.log")})
    from bare_app import create_bare_app

    import serving.cdss.api as api
    from serving.cdss.app import app_from_env
    from serving.cdss.models import PrescriptionCheckRequest

    bare, app = create_bare_app(), app_from_env()
    state = app.state.cdss
    audit = state.audit
    audit._interval = 3600.0  # noqa: SLF001 - the writer is left out (see the docstring)
    req = PrescriptionCheckRequest.model_validate_json(IP.BODY)
    rx = api.prescription_from_native(req)
    result = state.engine.check(rx)
    answer = api.response_json(result.alerts, result.recognised, state.knowledge_version)
    # step -> (object, attribute) the route calls it through
    where = {"check": (state.engine, "check"), "native": (api, "prescription_from_native"),
             "answer": (api, "response_json"), "audit": (audit, "record")}
    real = {name: getattr(obj, attr) for name, (obj, attr) in where.items()}
    fake = {"check": lambda _rx: result, "native": lambda _req: rx,
            "answer": lambda *_a: answer, "audit": lambda *_a, **_k: None}

    def use(replaced: tuple[str, ...]) -> None:
        for name, (obj, attr) in where.items():
            setattr(obj, attr, fake[name] if name in replaced else real[name])

    async def many(target, n: int) -> None:
        for _ in range(n):
            await IP._request(target)  # noqa: SLF001

    variants = {"Haidang as served": ()}
    variants.update({f"without {label}": (key,) for label, key in STEPS.items()})
    variants["without all four"] = tuple(STEPS.values())
    times: dict[str, list[float]] = {name: [] for name in [*variants, "bare endpoint"]}
    loop = asyncio.new_event_loop()
    for _ in range(args.rounds):
        for name, replaced in variants.items():
            use(replaced)
            audit._pending.clear()  # noqa: SLF001
            t = time.process_time()
            loop.run_until_complete(many(app, args.calls))
            times[name].append((time.process_time() - t) / args.calls * 1e6)
        t = time.process_time()
        loop.run_until_complete(many(bare, args.calls))
        times["bare endpoint"].append((time.process_time() - t) / args.calls * 1e6)
    use(())
    audit.close()
    served = statistics.median(times["Haidang as served"])
    print(f"cpu clock; load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds x "
          f"{args.calls} requests; median (min-max) µs per request")
    print("| request | µs | the step's cost in context |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        med = statistics.median(values)
        cost = "" if name in ("Haidang as served", "bare endpoint") else f"{served - med:.1f}"
        print(f"| {name} | {med:.1f} ({min(values):.0f}-{max(values):.0f}) | {cost} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
