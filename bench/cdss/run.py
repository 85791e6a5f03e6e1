"""Benchmark: Haidang's prescription check against a bare endpoint on the same HTTP stack.

In one run, with the same load generator (`wrk`, Debian) and the same 10-drug body:
(a) `POST /api/v1/prescriptions/check` of Haidang (API key, checks, audit) and
(b) the bare peer (`bare_app.py`: same FastAPI/uvicorn, same parsing, empty result),
at concurrency 1 and 32, each run at least --requests requests. Prints p50/p99 latency,
requests/s, the Haidang/bare ratios against the targets, and writes a JSON file.

    .venv/bin/python -m bench.cdss.run                 # full run (~3-4 minutes)
    .venv/bin/python -m bench.cdss.run --requests 2000 # short form (CI)

Targets (issue 5): at c=32, throughput >= 0.9x bare and p99 <= 1.2x bare; at c=1,
p99 <= 25 ms. Not a test: nothing here asserts; the numbers are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from haidang.ground.processes import stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BODY = ROOT / "tests" / "support" / "fixtures" / "cdss" / "bench-10-drugs.json"
PATH = "/api/v1/prescriptions/check"
API_KEY = "bench-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, app: str, port: int, workers: int, env: dict,
          launcher: str, stack: str = "auto") -> subprocess.Popen:
    if launcher == "haidang":  # as `haidang serve` runs it (TCP_NODELAY, connections dealt)
        cmd = [sys.executable, str(HERE / "serve.py"), app, str(port), str(workers), stack]
    else:  # the uvicorn command line, for comparison
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), app, "--factory",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--log-level", "warning", "--no-access-log"]
    # stderr to a file, not a pipe: a pipe nobody reads blocks the server once it is full
    log_path = Path(tempfile.gettempdir()) / f"haidang-bench-cdss-{name}-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=log_file)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{name} exited: {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} did not become ready in 60 s")


def post(port: int, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def wrk(port: int, connections: int, seconds: float, body: Path) -> dict:
    threads = 1 if connections == 1 else 2
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_API_KEY": API_KEY}
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s",
         "--timeout", "10s", "-s", str(HERE / "post.lua"), f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, env=env, check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON "))
    result = json.loads(line[len("BENCH_JSON "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors",
                                               "status_errors", "timeouts"))
    return result


def measure(port: int, connections: int, requests: int, body: Path) -> dict:
    """Calibrate for 2 s, then run long enough for `requests` (re-run longer if short)."""
    rate = max(wrk(port, connections, 2, body)["rps"], 1.0)
    seconds = requests * 1.2 / rate + 1
    for _ in range(3):
        result = wrk(port, connections, seconds, body)
        if result["requests"] >= requests:
            return result
        seconds *= 1.5 * requests / max(result["requests"], 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="at least this many per run")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers, both servers")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the interleaved runs; the table shows each pair's median round")
    ap.add_argument("--body", type=Path, default=BODY)
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--launcher", choices=["haidang", "uvicorn-cli"], default="haidang",
                    help="how both servers start: like `haidang serve` (default) or with the "
                    "uvicorn command line (its multi-worker socket leaves Nagle on)")
    ap.add_argument("--stack", choices=["auto", "asyncio-h11"], default="auto",
                    help="event loop and HTTP parser of both servers: uvloop + httptools as "
                    "served (auto), or Python's asyncio + h11")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    body = args.body.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="haidang-bench-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    haidang_env = {**base_env, "HAIDANG_API_KEYS": API_KEY,
                   "HAIDANG_SECURITY__AUDIT_LOG": str(tmp / "audit.log")}
    ports = {"bare": free_port(), "haidang": free_port()}
    procs = []
    try:
        procs.append(start("bare", "bare_app:create_bare_app", ports["bare"], args.workers,
                           base_env, args.launcher, args.stack))
        procs.append(start("haidang", "serving.cdss.app:app_from_env", ports["haidang"],
                           args.workers, haidang_env, args.launcher, args.stack))
        status, answer = post(ports["haidang"], body)
        kinds = sorted({a["kind"] + "/" + a["severity"] for a in answer["alerts"]})
        print(f"haidang answers {status} with {len(answer['alerts'])} alerts: {kinds}")
        print(f"bare answers {post(ports['bare'], body)[0]}")
        for name in ("bare", "haidang"):
            wrk(ports[name], 8, 3, args.body)  # warm-up: imports, caches, connections
        load_before = os.getloadavg()
        rounds: list[dict[str, dict[int, dict]]] = []
        for n in range(args.rounds):
            got: dict[str, dict[int, dict]] = {"bare": {}, "haidang": {}}
            for c in args.concurrency:
                order = ("bare", "haidang") if (c + n) % 2 else ("haidang", "bare")
                for name in order:
                    r = measure(ports[name], c, args.requests, args.body)
                    got[name][c] = r
                    print(f"  round {n + 1} {name:8s} c={c:<3d} {r['requests']:6d} req  "
                          f"{r['rps']:8.1f} req/s  p50 {r['p50_us'] / 1000:7.2f} ms  "
                          f"p99 {r['p99_us'] / 1000:7.2f} ms  errors {r['errors']}")
            rounds.append(got)
        load_after = os.getloadavg()
        # Per concurrency, the round whose throughput ratio is the median: Haidang and bare
        # figures of one table row then come from runs made side by side.
        results: dict[str, dict[int, dict]] = {"bare": {}, "haidang": {}}
        for c in args.concurrency:
            ranked = sorted(rounds, key=lambda g: g["haidang"][c]["rps"] / g["bare"][c]["rps"])
            pick = ranked[len(ranked) // 2]
            results["bare"][c] = pick["bare"][c]
            results["haidang"][c] = pick["haidang"][c]
    finally:
        for p in procs:
            stop_process(p)
    audit_lines = sum(1 for _ in open(tmp / "audit.log", encoding="utf-8")) if (
        tmp / "audit.log").exists() else 0
    shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    verdicts = []
    for c in args.concurrency:
        h, b = results["haidang"][c], results["bare"][c]
        thr, p99 = h["rps"] / b["rps"], h["p99_us"] / b["p99_us"]
        rows.append((c, h, b, thr, p99))
        if c == 32:
            verdicts.append(f"c=32 throughput {thr:.2f}x bare (target >= 0.90): "
                            f"{'met' if thr >= 0.9 else 'NOT met'}")
            verdicts.append(f"c=32 p99 {p99:.2f}x bare (target <= 1.20): "
                            f"{'met' if p99 <= 1.2 else 'NOT met'}")
        if c == 1:
            verdicts.append(f"c=1 p99 {h['p99_us'] / 1000:.2f} ms (target <= 25 ms): "
                            f"{'met' if h['p99_us'] <= 25_000 else 'NOT met'}")
    conditions = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU, "
                  f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after "
                  f"(shared with other work), Python {platform.python_version()}, uvicorn "
                  f"{args.workers} workers each started by {args.launcher} (stack {args.stack}), "
                  f"{args.rounds} round(s), median round shown, wrk 4.1 "
                  f"(-t1 at c=1, -t2 otherwise), body "
                  f"{len(body)} bytes, {len(answer['alerts'])} alerts per Haidang answer, "
                  f"{audit_lines} audit records written")
    print()
    print("| concurrency | endpoint | requests | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for c, h, b, _, _ in rows:
        for name, r in (("Haidang check", h), ("bare (parse, empty result)", b)):
            print(f"| {c} | {name} | {r['requests']} | {r['rps']:.0f} | "
                  f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} |")
    print()
    print("| concurrency | throughput Haidang/bare | p99 Haidang/bare |")
    print("| --- | ---: | ---: |")
    for c, _, _, thr, p99 in rows:
        print(f"| {c} | {thr:.2f} | {p99:.2f} |")
    print()
    for v in verdicts:
        print("- " + v)
    print(f"\nConditions: {conditions}")
    args.out.write_text(json.dumps({
        "conditions": conditions, "verdicts": verdicts,
        "results": {n: {str(c): r for c, r in v.items()} for n, v in results.items()},
        "rounds": [{n: {str(c): r for c, r in v.items()} for n, v in g.items()} for g in rounds],
    }, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
