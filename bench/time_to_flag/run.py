"""Time to flag: last instance's C-STORE Success → the AI SR stored in Orthanc, minus quiet period.

Real parts: Orthanc as the PACS, dcmtk ``storescu`` (TCP_NODELAY=1) as the modality, the
gateway in-process in embedded mode (model in-process, warmed up). Each study is one of the
demo's adult frontal radiographs (1024 px NIH films and the SIIM CR: what the gate admits
and the model scores), with fresh UIDs. Studies arrive one every ``--interval`` seconds
(a busy X-ray room sends one every few minutes; ``--interval 0`` sends back to back and
measures queueing instead).

Clock points, all ``time.time()`` in this process: the gateway's index records when it
stored the study's last instance (just before answering Success) and when the write-back
of the SR got Success from Orthanc. Time to flag = SR stored − last instance − quiet period.

    python -m bench.time_to_flag.run [--studies 60] [--interval 1.0] [--quiet 0.5]
                                     [--workers 2] [--peer-workers 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--studies", type=int, default=60)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between studies")
    ap.add_argument("--quiet", type=float, default=0.5, help="gateway quiet period (s)")
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--workers", type=int, default=2,
                    help="gateway.job_workers: 1 = a thread of the gateway, more = processes")
    ap.add_argument("--peer-workers", type=int, default=None,
                    help="then measure again with this many job workers (e.g. 1) and report "
                    "the ratio of the two: the same arrivals, the same machine, one run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    result = measure(args, args.workers)
    if args.peer_workers is not None:
        peer = measure(args, args.peer_workers)
        ratio = peer["time_to_flag_ms"]["p95"] / result["time_to_flag_ms"]["p95"]
        result = {"measured": result, "peer": peer, "p95_peer_over_measured": round(ratio, 2)}
        print(f"\np95 time to flag: {args.peer_workers} job worker(s) / {args.workers} = "
              f"**{ratio:.2f}×**")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def measure(args, workers: int) -> dict:
    """One run: a fresh Orthanc and gateway, ``args.studies`` studies, the timings printed."""
    from haidang.ground.logs import configure

    configure(level="WARNING")  # and the worker processes, through the environment
    from tqdm import tqdm

    from dicom_gateway.analyses.cxr_pneumonia import warm_up
    from dicom_gateway.runtime import Gateway
    from haidang.demo import demo_settings
    from haidang.testbed.orthanc import Orthanc, orthanc_binary
    from haidang.testbed.studies import cxr_studies

    work = Path(tempfile.mkdtemp(prefix="ttf-"))
    binary = orthanc_binary()
    if not binary:
        raise SystemExit("Orthanc is not installed (apt-get install orthanc)")
    pacs = Orthanc(work / "orthanc", binary=binary)
    pacs.start()
    settings = demo_settings(work, Path(args.models_dir), pacs)
    data = settings.model_dump(mode="json")
    data["gateway"]["quiet_period_s"] = args.quiet
    data["gateway"]["job_workers"] = workers
    settings = type(settings).model_validate(data)
    studies = [(uid, files[0]) for uid, files in cxr_studies(work / "in", args.studies)]
    info = warm_up(settings)
    env = {**os.environ, "TCP_NODELAY": "1"}
    gateway = Gateway(settings).start()
    try:
        for _uid, path in tqdm(studies, desc="sending", unit="study"):
            t = time.monotonic()
            subprocess.run(["/usr/bin/storescu", "--required", "-aet", "MODALITY", "-aec",
                            "HAIDANG", "127.0.0.1", str(gateway.port), str(path)],
                           check=True, env=env, capture_output=True)
            time.sleep(max(0.0, args.interval - (time.monotonic() - t)))
        uids = [u for u, _ in studies]
        deadline = time.monotonic() + 120
        marks = "".join("?" * len(uids))
        while time.monotonic() < deadline:
            done = gateway.index.query(
                f"SELECT COUNT(DISTINCT study_uid) FROM exports WHERE state = 'done' "
                f"AND sop_class_uid = ? AND study_uid IN ({','.join(marks)})", (SR_CLASS, *uids))
            if done[0][0] == len(uids):
                break
            time.sleep(0.2)
        rows = []
        for uid in uids:
            (last, quiet, assembled), = gateway.index.query(
                "SELECT last_arrival, quiet_period_s, assembled_at FROM studies "
                "WHERE study_uid = ?", (uid,))
            (started, finished), = gateway.index.query(
                "SELECT started_at, finished_at FROM jobs WHERE study_uid = ? ORDER BY id DESC "
                "LIMIT 1", (uid,))
            stored = gateway.index.query(
                "SELECT MAX(done_at) FROM exports WHERE study_uid = ? AND sop_class_uid = ? "
                "AND state = 'done'", (uid, SR_CLASS))[0][0]
            rows.append({"ttf": stored - last - quiet if stored else None,
                         "assembly_lag": assembled - last - quiet,
                         "queue": started - assembled, "job": finished - started,
                         "export": stored - finished if stored else None})
        in_pacs = pacs.count("SR")
        analysed = sum(any(r["state"] == "current" and (r["summary"] or {}).get("verdict") not in
                           (None, "not-analysed", "not-applicable")
                           for r in gateway.index.results(uid)) for uid in uids)
    finally:
        gateway.stop()
        pacs.stop()

    ttf = np.array([r["ttf"] for r in rows if r["ttf"] is not None]) * 1000
    def stat(key):
        v = np.array([r[key] for r in rows if r[key] is not None]) * 1000
        return f"{np.percentile(v, 50):.0f} / {np.percentile(v, 95):.0f}"
    result = {
        "studies": len(rows), "srs_in_orthanc": in_pacs, "interval_s": args.interval,
        "quiet_period_s": args.quiet, "job_workers": settings.gateway.job_workers,
        "analysed": analysed, "model": f"{info['model']} {info['version']}",
        "provider": info["provider"],
        "time_to_flag_ms": {"p50": round(float(np.percentile(ttf, 50)), 1),
                            "p95": round(float(np.percentile(ttf, 95)), 1),
                            "max": round(float(ttf.max()), 1)},
    }
    print(f"{len(rows)} studies ({analysed} scored by the model), {in_pacs} SRs in Orthanc, "
          f"{settings.gateway.job_workers} job workers, one every {args.interval}s, quiet "
          f"period {args.quiet}s, model {result['model']} on {info['provider']}\n")
    print("| measure (ms) | p50 / p95 |\n| --- | ---: |")
    print(f"| **time to flag** (SR stored − last Success − quiet) | "
          f"{result['time_to_flag_ms']['p50']:.0f} / {result['time_to_flag_ms']['p95']:.0f} |")
    for key, label in (("assembly_lag", "assembler notices the quiet study"),
                       ("queue", "job waits for the worker"), ("job", "analysis + spool writes"),
                       ("export", "write-back of SR to Orthanc")):
        print(f"| {label} | {stat(key)} |")
    return result


if __name__ == "__main__":
    sys.exit(main())
