"""Gateway workers over PostgreSQL: studies per minute with 1, 2 and 4 worker processes.

Real PostgreSQL (started here on loopback, as the tests do), real worker processes
(``haidang gateway``), the real
``cxr-pneumonia`` analysis (preprocessing, onnxruntime, occlusion map, TID 1500 SR, visual
summary, FHIR) on the shipped chest X-ray samples with fresh UIDs. No write-back (no
destinations): this measures the processing side of the queue.

For each worker count: a fresh database and spool are loaded with N studies held back;
the workers start and warm up (model loaded); then every study is released at once and
the clock runs from the release to the last job's finish (times from the index).
Speed-up is against 1 worker in the same run; efficiency = speed-up / workers.

    python -m bench.scale.run --studies 120 --workers 1,2,4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicom_gateway.header import ROUTING_KEYS, parse_header
from dicom_gateway.index import Index
from dicom_gateway.spool import Spool
from haidang.ground.settings import settings_env
from haidang.testbed.orthanc import free_port
from haidang.testbed.postgres import PostgresServer, fresh_database
from haidang.testbed.studies import cxr_studies

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
# Chest radiographs to the chest model, as a hospital's settings route them.
ROUTES = [{"name": "chest-xray", "match": {"Modality": ["CR", "DX"]},
           "analyses": ["cxr-pneumonia"]},
          {"name": "other", "match": {}, "analyses": ["study-summary"]}]


def load_queue(url: str, spool_dir: Path, studies) -> None:
    """Spool and index every study, held back (huge quiet period) until release()."""
    index, spool = Index(url), Spool(spool_dir, 0, fsync=False)
    for study_uid, files in studies:
        for f in files:
            data = f.read_bytes()
            ds = parse_header(data)
            path = spool.instance_path(study_uid, str(ds.SeriesInstanceUID),
                                       str(ds.SOPInstanceUID))
            spool.store(path, data)
            attrs = {k: str(ds.get(k, "") or "") for k in ROUTING_KEYS}
            attrs["SOPClassUID"] = str(ds.SOPClassUID)
            index.record_instance(
                sop_uid=str(ds.SOPInstanceUID), study_uid=study_uid,
                series_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                path=str(path.relative_to(spool.root)), size=len(data), calling_ae="BENCH",
                attrs=attrs, quiet_period_s=1e9, now=time.time() - 1)
    index.close()


def start_worker(url: str, spool_dir: Path, models: Path, log: Path) -> subprocess.Popen:
    port = free_port()
    data = {
        "gateway": {"ae_title": "HAIDANG", "host": "127.0.0.1", "port": port,
                    "quiet_period_s": 0.2, "spool_dir": str(spool_dir), "database_url": url,
                    "min_free_bytes": 0},
        "routes": ROUTES,
        "serving": {"models_dir": str(models)},
    }
    # `haidang gateway` itself: it warms the routed models before it listens.
    proc = subprocess.Popen([sys.executable, "-u", "-m", "haidang", "gateway"], cwd=ROOT,
                            env=settings_env(data), stdout=subprocess.PIPE,
                            stderr=open(log, "wb"))  # noqa: SIM115
    line = proc.stdout.readline().decode()
    if f":{port}" not in line:
        raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
    return proc


def cpu_seconds(pids) -> float:
    """user + system CPU time of these processes (Linux /proc), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def run_once(server: PostgresServer, workers: int, studies, models: Path, tmp: Path) -> dict:
    url = fresh_database(server)
    spool_dir = tmp / f"spool-{workers}-{time.time_ns()}"
    load_queue(url, spool_dir, studies)
    procs = [start_worker(url, spool_dir, models, tmp / f"w{workers}-{i}.log")
             for i in range(workers)]
    index = Index(url)
    try:
        cpu_before = cpu_seconds([p.pid for p in procs])
        released = time.time()
        with index.tx() as q:
            q("UPDATE studies SET quiet_period_s = 0")
        deadline = time.monotonic() + 1800
        while index.counts().get("jobs.done", 0) < len(studies):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} workers: not done: {index.counts()}")
            time.sleep(0.2)
        finished = index.query("SELECT MAX(finished_at) FROM jobs")[0][0]
        per_worker = dict(index.query("SELECT worker, COUNT(*) FROM jobs GROUP BY worker"))
        failed = index.counts().get("jobs.failed", 0)
        cpu = cpu_seconds([p.pid for p in procs]) - cpu_before
    finally:
        index.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(spool_dir, ignore_errors=True)
    seconds = finished - released
    return {"workers": workers, "studies": len(studies), "seconds": round(seconds, 2),
            "studies_per_min": round(len(studies) / seconds * 60, 1), "failed_jobs": failed,
            "worker_cpu_s_per_study": round(cpu / len(studies), 3),
            "load_average": round(os.getloadavg()[0], 1),
            "jobs_per_worker": sorted(per_worker.values(), reverse=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=120)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeat", type=int, default=1, help="rounds, alternating the order")
    ap.add_argument("--out", default=str(ROOT / "bench" / "scale" / "results.json"))
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="haidang-scale-"))
    try:
        studies = cxr_studies(tmp / "in", args.studies)
        models = MODELS
        runs: dict[int, list[dict]] = {n: [] for n in counts}
        load_before = os.getloadavg()[0]
        with PostgresServer() as server:
            for r in range(args.repeat):  # alternate the order: drift hits every count alike
                for n in counts if r % 2 == 0 else counts[::-1]:
                    row = run_once(server, n, studies, models, tmp)
                    runs[n].append(row)
                    print(json.dumps(row), flush=True)
        rows = []
        for n in counts:  # the median run of each worker count
            ordered = sorted(runs[n], key=lambda x: x["studies_per_min"])
            rows.append({**ordered[len(ordered) // 2],
                         "all_studies_per_min": [x["studies_per_min"] for x in runs[n]]})
        base = rows[0]["studies_per_min"] / counts[0]
        print(f"\ncpus: {os.cpu_count()}, {platform.processor() or platform.machine()}, "
              f"studies: {args.studies}, rounds: {args.repeat} (median shown), analysis: "
              f"cxr-pneumonia (SR + visual summary); load average before {load_before:.1f}, "
              f"after {os.getloadavg()[0]:.1f}")
        print("| workers | studies/min | speed-up | linear | efficiency | worker CPU s/study |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            speedup = r["studies_per_min"] / base
            r["speedup"], r["efficiency"] = round(speedup, 2), round(speedup / r["workers"], 2)
            print(f"| {r['workers']} | {r['studies_per_min']:.0f} | {speedup:.2f}x | "
                  f"{r['workers']}x | {r['efficiency']:.0%} | {r['worker_cpu_s_per_study']} |")
        Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "studies": args.studies,
                                              "rounds": args.repeat, "rows": rows}, indent=2)
                                  + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
