"""How close to the bare endpoint can Haidang's check get on this stack? Four servers, one run.

    .venv/bin/python -m bench.cdss.floor --rounds 3     # ~4 minutes

At concurrency 32, with `run.py`'s load generator and body, interleaved in turn each round:
- bare: parse the body, empty answer (run.py's peer);
- answer: parse, then return Haidang's real 8.8 KB answer, precomputed (`floor_app.py`);
- answer+audit: the same, plus Haidang's audit record per request;
- Haidang: the real check endpoint.
For each: requests/s, p99, and the CPU the server's processes and wrk spent per request
(user and system, from /proc and getrusage), so the cost of each step shows in µs.

"answer+audit" is Haidang with checks that cost nothing: its ratio to bare is the most any
speed-up of the checks can reach while the answer keeps its content and every check is
audited. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.cdss import run as R  # start, wrk, constants
from haidang.ground.processes import stop_process

HERE = Path(__file__).resolve().parent

TARGETS = {
    "bare": "bare_app:create_bare_app",
    "answer": "floor_app:create_answer_app",
    "answer+audit": "floor_app:create_answer_audit_app",
    "haidang": "serving.cdss.app:app_from_env",
}


def _children(pid: int) -> list[int]:
    """The process and all its descendants (the handoff parent and its workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def _cpu(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of these processes, threads included."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / tick
        system += int(fields[12]) / tick
    return user, system


def measure(port: int, pid: int, seconds: float, body: Path) -> dict:
    pids = _children(pid)
    u0, s0 = _cpu(pids)
    w0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = R.wrk(port, 32, seconds, body)
    w1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    u1, s1 = _cpu(pids)
    n = max(r["requests"], 1)
    r["server_user_us"] = (u1 - u0) / n * 1e6
    r["server_sys_us"] = (s1 - s0) / n * 1e6
    r["wrk_us"] = ((w1.ru_utime - w0.ru_utime) + (w1.ru_stime - w0.ru_stime)) / n * 1e6
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per target and round")
    ap.add_argument("--body", type=Path, default=R.BODY)
    ap.add_argument("--out", type=Path, default=HERE / "floor.json")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="haidang-floor-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env = {**base, "HAIDANG_API_KEYS": R.API_KEY,
           "HAIDANG_SECURITY__AUDIT_LOG": str(tmp / "audit.log")}
    procs, ports = {}, {}
    rounds: list[dict[str, dict]] = []
    try:
        for name, app in TARGETS.items():
            ports[name] = R.free_port()
            procs[name] = R.start(name.replace("+", "-"), app, ports[name], 2,
                                  base if name == "bare" else env, "haidang")
            R.wrk(ports[name], 8, 2, args.body)  # warm-up
        load_before = os.getloadavg()
        names = list(TARGETS)
        for n in range(args.rounds):
            got = {}
            for name in names[n % len(names):] + names[:n % len(names)]:
                r = measure(ports[name], procs[name].pid, args.seconds, args.body)
                got[name] = r
                print(f"  round {n + 1} {name:13s} {r['rps']:8.0f} req/s  p99 "
                      f"{r['p99_us'] / 1000:6.2f} ms  server {r['server_user_us']:6.1f} user + "
                      f"{r['server_sys_us']:5.1f} sys µs/req  wrk {r['wrk_us']:5.1f} µs/req  "
                      f"errors {r['errors']}", flush=True)
            rounds.append(got)
        load_after = os.getloadavg()
    finally:
        for p in procs.values():
            stop_process(p)

    def med(name: str, key: str) -> float:
        return statistics.median(g[name][key] for g in rounds)

    print()
    print("| endpoint | req/s | ÷ bare (per round) | p99 ms | ÷ bare | server CPU µs/req "
          "(user + sys) | wrk CPU µs/req |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    table = {}
    for name in TARGETS:
        ratios = [g[name]["rps"] / g["bare"]["rps"] for g in rounds]
        p99 = [g[name]["p99_us"] / g["bare"]["p99_us"] for g in rounds]
        table[name] = {k: med(name, k) for k in ("rps", "p99_us", "server_user_us",
                                                 "server_sys_us", "wrk_us")}
        table[name].update(ratio=statistics.median(ratios), ratios=ratios,
                           p99_ratio=statistics.median(p99))
        print(f"| {name} | {table[name]['rps']:.0f} | "
              f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)}) | "
              f"{table[name]['p99_us'] / 1000:.2f} | {statistics.median(p99):.2f} | "
              f"{table[name]['server_user_us']:.0f} + {table[name]['server_sys_us']:.0f} | "
              f"{table[name]['wrk_us']:.0f} |")
    conditions = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU, "
                  f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after, "
                  f"c=32, {args.rounds} rounds x {args.seconds:.0f} s per target, medians")
    print(f"\nConditions: {conditions}")
    args.out.write_text(json.dumps({"conditions": conditions, "table": table,
                                    "rounds": rounds}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
