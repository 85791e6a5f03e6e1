"""Ingest benchmark: the same dcmtk storescu sends the same kind of study to three SCPs.

(a) the Haidang gateway (``haidang gateway``, fsync on: spool file + directory + index commit
    before every Success), (b) dcmtk ``storescp`` writing to a temporary directory (no fsync),
(c) Orthanc 1.10. Targets alternate round by round; each round sends fresh-UID copies
(several hundred small CT instances and a few large CR) so nothing is a duplicate.
Before each timed round the disk is synced (``sync``), so no target's round pays for the
write-back of the previous target's files.
TCP_NODELAY=1 for every dcmtk process. Prints instances/s, MB/s, the receiving processes' CPU
per instance (user + system, kernel threads such as the journal not counted) and the ratios.

    python -m bench.ingest.run --ct 300 --cr 3 --rounds 2 [--parallel 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from haidang.testbed.dcmtk import dcmtk, dcmtk_env, wait_for_port
from haidang.testbed.orthanc import Orthanc, free_port
from haidang.testbed.studies import fresh_copy

REPO = Path(__file__).resolve().parents[2]


def make_files(dest: Path, n_ct: int, n_cr: int) -> list[Path]:
    from pydicom.uid import generate_uid

    study = generate_uid()
    series = generate_uid()
    files = [fresh_copy("ct", dest, study_uid=study, series_uid=series) for _ in range(n_ct)]
    files += [fresh_copy("cr", dest, study_uid=study) for _ in range(n_cr)]
    return files


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its live children and its reaped children (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[1]), sum(int(x) for x in fields[11:15])  # ppid, utime..cstime

    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = stat(entry.name)
            if st and (int(entry.name) == pid or st[0] == pid):
                total += st[1]
    return total / tick


def send(files: list[Path], port: int, aec: str, parallel: int) -> float:
    """Wall time for storescu (one or more processes, each one association) to send all files."""
    chunks = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), "--required", "-xe", "-aet", "STORESCU",
                               "-aec", aec, "127.0.0.1", str(port), *map(str, chunk)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env())
             for chunk in chunks if chunk]
    errors = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed ({p.returncode}): {err.decode()[-1000:]}")
    return dt


class Haidang:
    name = "haidang"

    def __init__(self, work: Path, processes: int, fsync: bool = True, code: Path = REPO):
        self.work = work
        self.code = code
        self.fsync = fsync
        self.port = free_port()
        self.processes = processes
        self.proc = None

    def start(self):
        g = {"ae_title": "HAIDANG", "host": "127.0.0.1", "port": self.port,
             "spool_dir": str(self.work / "spool"), "database_url": f"sqlite:///{self.work}/h.db",
             "quiet_period_s": 3.0, "fsync": self.fsync, "min_free_bytes": 256 * 1024 * 1024}
        if self.processes >= 1:
            g["listener_processes"] = self.processes
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
        env.update(PYTHONPATH=str(self.code), HAIDANG_GATEWAY=json.dumps(g),
                   HAIDANG_DESTINATIONS="[]",
                   HAIDANG_ROUTES=json.dumps([{"name": "all", "match": {},
                                               "analyses": ["study-summary"]}]))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.work / "haidang.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "haidang", "--log-level", "WARNING",
                                      "gateway"], cwd=self.code, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=60)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()

    def aec(self):
        return "HAIDANG"

    def pid(self):
        return self.proc.pid


class StoreSCP:
    """dcmtk storescp; ``fork=True`` adds ``--fork`` (one child process per association, so
    parallel associations are served at once instead of one after another)."""

    name = "storescp"

    def __init__(self, work: Path, fork: bool = False):
        self.work = work
        self.port = free_port()
        self.fork = fork

    def start(self):
        out = self.work / "out"
        out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([dcmtk("storescp"), *(["--fork"] if self.fork else []),
                                      "-aet", "STORESCP", "-od", str(out), str(self.port)],
                                     env=dcmtk_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=20)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)

    def aec(self):
        return "STORESCP"

    def pid(self):
        return self.proc.pid


class OrthancTarget:
    name = "orthanc"

    def __init__(self, work: Path):
        self.pacs = Orthanc(work)

    @property
    def port(self):
        return self.pacs.dicom_port

    def start(self):
        self.pacs.start()

    def stop(self):
        self.pacs.stop()

    def aec(self):
        return self.pacs.aet

    def pid(self):
        return self.pacs.proc.pid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ct", type=int, default=300, help="small CT instances per round")
    ap.add_argument("--cr", type=int, default=3, help="large (6 MB) CR instances per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=16, help="untimed CT instances per target first")
    ap.add_argument("--parallel", type=int, default=1,
                    help="storescu processes (associations) at once, for every target")
    ap.add_argument("--haidang-processes", type=int, default=1,
                    help="listener processes of the gateway (SO_REUSEPORT)")
    ap.add_argument("--targets", default="haidang,storescp,orthanc",
                    help="any of haidang, storescp, storescp-fork (storescp --fork), orthanc")
    ap.add_argument("--no-fsync", action="store_true",
                    help="gateway.fsync = false (not a production setting; shows the fsync cost)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--with-code", type=Path,
                    help="a second Haidang checkout (e.g. an older commit extracted with git "
                         "archive), measured as target 'haidang-other' (add it to --targets): "
                         "before/after figures in one run")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="haidang-bench-"))
    makers = {"haidang": lambda w: Haidang(w, args.haidang_processes, not args.no_fsync),
              "haidang-other": lambda w: Haidang(w, args.haidang_processes, not args.no_fsync,
                                                 args.with_code),
              "storescp": StoreSCP, "storescp-fork": lambda w: StoreSCP(w, fork=True),
              "orthanc": OrthancTarget}
    names = args.targets.split(",")
    targets = {n: makers[n](root / n) for n in names}
    for t in targets.values():
        t.start()
    runs: dict[str, list[tuple[float, int, int]]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}  # receiver CPU ms per instance
    try:
        for n in names:  # warm-up, not timed: first associations, directories, caches
            files = make_files(root / "send" / f"{n}-warmup", args.warmup, 0)
            send(files, targets[n].port, targets[n].aec(), args.parallel)
            shutil.rmtree(root / "send" / f"{n}-warmup")
        for r in range(args.rounds):
            for n in names if r % 2 == 0 else reversed(names):
                files = make_files(root / "send" / f"{n}-{r}", args.ct, args.cr)
                nbytes = sum(f.stat().st_size for f in files)
                # the previous target's unflushed files (storescp and Orthanc leave ~170 MB of
                # dirty pages) would otherwise be written back during this round, and queue
                # ahead of this target's fsyncs: every round starts on a clean disk
                os.sync()
                c0 = tree_cpu_seconds(targets[n].pid())
                dt = send(files, targets[n].port, targets[n].aec(), args.parallel)
                cpu[n].append((tree_cpu_seconds(targets[n].pid()) - c0) / len(files) * 1e3)
                runs[n].append((dt, len(files), nbytes))
                print(f"round {r + 1} {n:13} {len(files) / dt:7.1f} inst/s "
                      f"{nbytes / dt / 1e6:7.1f} MB/s ({dt:.2f} s)", flush=True)
                shutil.rmtree(root / "send" / f"{n}-{r}")
    finally:
        for t in targets.values():
            t.stop()
        shutil.rmtree(root, ignore_errors=True)

    summary = {}
    for n, rs in runs.items():
        ips = statistics.median(c / dt for dt, c, _ in rs)
        mbs = statistics.median(b / dt / 1e6 for dt, _, b in rs)
        summary[n] = {"instances_per_s": round(ips, 1), "mb_per_s": round(mbs, 1),
                      "cpu_ms_per_instance": round(statistics.median(cpu[n]), 2)}
    load_after = os.getloadavg()
    print(f"\n{args.ct} CT + {args.cr} CR per round, {args.rounds} rounds, "
          f"{args.parallel} association(s) at once, {args.haidang_processes} gateway "
          f"process(es); median of rounds; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}")
    print("| target | instances/s | MB/s | receiver CPU ms/instance | Haidang ÷ target |\n"
          "|---|---:|---:|---:|---:|")
    for n, s in summary.items():
        ratio = (summary["haidang"]["instances_per_s"] / s["instances_per_s"]
                 if "haidang" in summary else float("nan"))
        print(f"| {n} | {s['instances_per_s']} | {s['mb_per_s']} | "
              f"{s['cpu_ms_per_instance']} | {ratio:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": summary,
                                               "load_before": load_before,
                                               "load_after": load_after}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
