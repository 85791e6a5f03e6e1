"""PACS outage, full form: Orthanc is stopped for several minutes while the gateway keeps
receiving and analysing studies; exports retry with backoff and all arrive once it returns.

    python -m bench.soak.outage --minutes 3 --studies 20

Prints: studies, exports, attempts (retries), exports dead (must be 0), seconds from the PACS
coming back to the last delivery, results in the PACS (must equal studies), duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.soak.run import make_corpus  # the crash soak's corpus
from haidang.testbed.dcmtk import storescu, wait_for_port
from haidang.testbed.orthanc import Orthanc, free_port

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--max-delay", type=float, default=30.0, help="export backoff cap (s)")
    args = ap.parse_args(argv)
    import subprocess

    from dicom_gateway.index import Index

    work = Path(tempfile.mkdtemp(prefix="haidang-outage-"))
    pacs = Orthanc(work / "orthanc")
    pacs.start()
    port = free_port()
    data = {
        "gateway": {"ae_title": "HAIDANG", "host": "127.0.0.1", "port": port,
                    "allowed_sources": [{"ae_title": "STORESCU"}], "quiet_period_s": 1.0,
                    "spool_dir": str(work / "spool"),
                    "database_url": f"sqlite:///{work / 'haidang.db'}",
                    "min_free_bytes": 1024 * 1024},
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                          "port": pacs.dicom_port}],
        "export": {"max_attempts": 50, "base_delay_s": 2.0, "max_delay_s": args.max_delay},
        "routes": [{"name": "all", "match": {}, "analyses": ["study-summary"]}],
        "security": {"audit_log": str(work / "audit.log")},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update({f"HAIDANG_{k.upper()}": json.dumps(v) for k, v in data.items()})
    gw = subprocess.Popen([sys.executable, "-m", "haidang", "gateway"], cwd=REPO, env=env,
                          stdout=open(work / "gateway.log", "ab"),  # noqa: SIM115
                          stderr=subprocess.STDOUT)
    index = Index(data["gateway"]["database_url"])
    try:
        wait_for_port(port, 60)
        files = make_corpus(work / "send", args.studies * 3, 3)
        pacs.stop()
        t_down = time.monotonic()
        print(f"PACS stopped; sending {len(files)} instances in {args.studies} studies, "
              f"keeping it down {args.minutes} min", flush=True)
        res = storescu(files, port, "HAIDANG", extra=["-xe"])
        assert res.returncode == 0, res.stderr
        while time.monotonic() - t_down < args.minutes * 60:
            time.sleep(10)
            c = index.counts()
            print(f"  {time.monotonic() - t_down:5.0f} s down: {c}", flush=True)
        pacs.start()
        t_up = time.monotonic()
        while True:
            c = index.counts()
            if c.get("exports.done", 0) + c.get("exports.dead", 0) >= args.studies and \
                    not c.get("exports.pending") and not c.get("exports.sending"):
                break
            if time.monotonic() - t_up > 600:
                break
            time.sleep(0.5)
        t_delivered = time.monotonic() - t_up
        exports = index.list_exports()
        in_pacs = sum(len(pacs.find_instances(StudyInstanceUID=uid, Modality="SR"))
                      for (uid,) in index.query("SELECT study_uid FROM studies"))
        rows = [
            ("PACS down (s)", f"{t_up - t_down:.0f}"),
            ("studies", args.studies),
            ("exports", len(exports)),
            ("delivery attempts (incl. retries)", sum(e["attempts"] for e in exports)),
            ("exports delivered", sum(e["state"] == "done" for e in exports)),
            ("exports dead", sum(e["state"] == "dead" for e in exports)),
            ("last delivery after PACS back (s)", f"{t_delivered:.1f}"),
            ("results in PACS", in_pacs),
            ("duplicates in PACS", in_pacs - args.studies),
        ]
        print("\n".join(f"{k:<36}{v}" for k, v in rows))
        ok = in_pacs == args.studies and all(e["state"] == "done" for e in exports)
        return 0 if ok else 1
    finally:
        index.close()
        gw.terminate()
        gw.wait(30)
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
