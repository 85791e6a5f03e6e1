"""One gateway worker process, as ``haidang gateway`` runs it, for multi-worker tests and
``bench/scale``: ``python -m tests.support.gateway_worker``.

Settings come from the environment (``HAIDANG_<SECTION>`` JSON variables, see
``tests.support.gateway_helpers.settings_env``). Test knobs, also from the environment:

* ``HAIDANG_TEST_JOB_LEASE_S``: the job lease (production: 60 s), so a killed worker's
  job is taken over within seconds instead of a minute;
* ``HAIDANG_TEST_MARKER``: a file where the ``marked-summary`` analysis appends
  ``start STUDY PID`` and ``done STUDY PID`` lines (O_APPEND: one write per line);
* ``HAIDANG_TEST_ANALYSIS_S``: how long ``marked-summary`` works on a study;
* ``HAIDANG_TEST_WARM_UP=cxr``: load the chest X-ray model and builders before listening
  (as ``haidang demo`` does), so a benchmark's clock does not count start-up.

Prints ``READY <dicom port>`` once listening, stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from dicom_gateway import analyses, runtime
from dicom_gateway.analyses.base import AnalysisOutput, StudyInput


def _mark(event: str, study_uid: str) -> None:
    path = os.environ.get("HAIDANG_TEST_MARKER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {study_uid} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def marked_summary(study: StudyInput) -> AnalysisOutput:
    """The built-in study summary, bracketed by start/done marks, taking a known time."""
    from dicom_gateway.analyses.study_summary import analyse

    _mark("start", study.study_uid)
    time.sleep(float(os.environ.get("HAIDANG_TEST_ANALYSIS_S", "0")))
    out = analyse(study)
    _mark("done", study.study_uid)
    return out


def main() -> int:
    from haidang.ground.settings import load_settings

    analyses.ANALYSES["marked-summary"] = "tests.support.gateway_worker:marked_summary"
    lease = os.environ.get("HAIDANG_TEST_JOB_LEASE_S")
    if lease:
        runtime.JOB_LEASE_S = float(lease)
    settings = load_settings()
    if os.environ.get("HAIDANG_TEST_WARM_UP") == "cxr":
        from dicom_gateway.analyses.cxr_pneumonia import warm_up

        warm_up(settings)
    gateway = runtime.Gateway(settings).start()
    print(f"READY {gateway.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
