"""Where one association's time goes: the gateway in-process, dcmtk storescu sending CT copies.

Prints wall time per instance, the listener thread's CPU per instance and, with
``--cprofile``, the top functions of the association thread. A development tool (run it
under ``flock -s``); throughput figures come from ``run.py``.

    python -m bench.ingest.breakdown --ct 200 [--cprofile] [--no-fsync]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from haidang.testbed.dcmtk import dcmtk, dcmtk_env
from haidang.testbed.studies import fresh_copy

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ct", type=int, default=200)
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--no-group-commit", action="store_true",
                    help="each C-STORE commits its own index transaction")
    ap.add_argument("--no-spare", action="store_true",
                    help="create each temporary file when the data set is complete")
    ap.add_argument("--parallel", type=int, default=1, help="storescu processes at once")
    args = ap.parse_args(argv)

    from pydicom.uid import generate_uid

    from dicom_gateway import lean
    from dicom_gateway.runtime import Gateway
    from haidang.ground.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="haidang-prof-"))
    settings = Settings.model_validate({
        "gateway": {"ae_title": "HAIDANG", "host": "127.0.0.1", "port": 0,
                    "spool_dir": str(root / "spool"), "database_url": f"sqlite:///{root}/h.db",
                    "quiet_period_s": 30.0, "fsync": not args.no_fsync,
                    "min_free_bytes": 1 << 20},
        "destinations": [], "routes": [],
    })
    profiles: list[cProfile.Profile] = []
    cpu: list[float] = []
    run = lean.Association.run

    def profiled_run(self):
        t0 = time.thread_time()
        if args.cprofile:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.runcall(run, self)
        else:
            run(self)
        cpu.append(time.thread_time() - t0)

    lean.Association.run = profiled_run
    study, series = generate_uid(), generate_uid()
    warm = [fresh_copy("ct", root / "warm", study_uid=study, series_uid=series)
            for _ in range(10)]
    files = [fresh_copy("ct", root / "send", study_uid=study, series_uid=series)
             for _ in range(args.ct)]
    try:
        with Gateway(settings) as gw:
            if args.no_group_commit:
                gw.scp.commits.record = gw.index.record_instance
            if args.no_spare:
                gw.spool.spare = lambda: None

            def send(paths):
                procs = [subprocess.Popen(
                    [dcmtk("storescu"), "--required", "-xe", "-aet", "STORESCU", "-aec",
                     "HAIDANG", "127.0.0.1", str(gw.port), *map(str, paths[i::args.parallel])],
                    env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for i in range(args.parallel)]
                if any(p.wait() for p in procs):
                    raise RuntimeError("storescu failed")
            send(warm)
            profiles.clear()
            cpu.clear()
            p0 = time.process_time()
            t0 = time.perf_counter()
            send(files)
            wall = time.perf_counter() - t0
            proc_cpu = time.process_time() - p0
            for _ in range(50):
                if len(cpu) >= args.parallel:
                    break
                time.sleep(0.05)
            n = gw.index.counts().get("instances", 0)
        print(f"{args.parallel} association(s), {args.ct} CT instances, "
              f"group commit {'off' if args.no_group_commit else 'on'}, "
              f"spare file {'off' if args.no_spare else 'on'}, "
              f"fsync={'off' if args.no_fsync else 'on'}: "
              f"{args.ct / wall:.1f} inst/s, wall {wall / args.ct * 1e3:.2f} ms/instance, "
              f"association thread CPU {sum(cpu) / args.ct * 1e3:.2f} ms/instance, "
              f"gateway process CPU {proc_cpu / args.ct * 1e3:.2f} ms/instance; "
              f"{n} indexed (incl. warm-up); threads alive {threading.active_count()}")
        if profiles:
            out = io.StringIO()
            stats = pstats.Stats(profiles[0], stream=out)
            for p in profiles[1:]:
                stats.add(p)
            stats.sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
