"""The running gateway: listener, study assembler, job worker and exporter threads.

``Gateway(settings).start()`` is what ``haidang gateway`` / ``haidang up`` run and
what tests use in-process. On start it takes back the work a crashed process held:
assembled-but-unprocessed studies and unfinished exports.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from dicom_gateway import metrics
from dicom_gateway.index import Index
from dicom_gateway.scp import StorageSCP
from dicom_gateway.spool import Spool
from dicom_gateway.worker import process_job
from dicom_gateway.writeback import Exporter
from haidang.settings import Settings

log = logging.getLogger("haidang.gateway")

JOB_LEASE_S = 600.0


class Gateway:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.index: Index | None = None
        self.spool: Spool | None = None
        self.scp: StorageSCP | None = None
        self._stop = threading.Event()
        self._jobs_ready = threading.Event()  # a study was assembled
        self._exports_ready = threading.Event()  # a job queued exports
        self._tick = threading.Event()  # the assembler just polls
        self._threads: list[threading.Thread] = []

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Gateway:
        g = self.settings.gateway
        self.spool = Spool(g.spool_dir, g.min_free_bytes, g.fsync)
        swept = self.spool.sweep_temporaries()
        self.index = Index(g.database_url)
        resumed = self.index.resume()
        counts = self.index.counts()
        log.info(
            "gateway starting: %s instances indexed, %s studies waiting, %s jobs pending, "
            "%s exports pending; took back %s jobs and %s exports; swept %s temporaries",
            counts.get("instances", 0),
            counts.get("studies.receiving", 0),
            counts.get("jobs.pending", 0),
            counts.get("exports.pending", 0),
            resumed["jobs"],
            resumed["exports"],
            swept,
        )
        self._stop.clear()
        self.scp = StorageSCP(g, self.spool, self.index)
        self.scp.start()
        for name, target in (
            ("assembler", self._assembler_loop),
            ("worker", self._worker_loop),
            ("exporter", self._exporter_loop),
        ):
            t = threading.Thread(target=target, name=f"haidang-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._jobs_ready.set()
        self._exports_ready.set()
        return self

    def stop(self) -> None:
        self._stop.set()
        for ev in (self._jobs_ready, self._exports_ready, self._tick):
            ev.set()
        if self.scp:
            self.scp.stop()
        for t in self._threads:
            t.join(timeout=30)
        self._threads.clear()
        if self.index:
            self.index.close()
        log.info("gateway stopped")

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.scp.port if self.scp else self.settings.gateway.port

    # -- loops ------------------------------------------------------------------------

    def _loop(self, name: str, step, wake: threading.Event, idle_s: float) -> None:
        while not self._stop.is_set():
            try:
                busy = step()
            except Exception:  # noqa: BLE001 - keep serving; the error is logged and retried
                log.exception("%s step failed; retrying", name)
                busy = False
                self._stop.wait(1.0)
            if not busy:
                wake.wait(idle_s)
                wake.clear()

    def _assembler_loop(self) -> None:
        period = max(0.05, min(0.5, self.settings.gateway.quiet_period_s / 4))
        last_gauge = 0.0

        def step() -> bool:
            nonlocal last_gauge
            done = self.index.assemble_due()
            for study_uid, generation in done:
                metrics.STUDIES_ASSEMBLED.inc()
                log.info(
                    "study %s complete (generation %s)", metrics.uid_hash(study_uid), generation
                )
            if done:
                self._jobs_ready.set()
            now = time.monotonic()
            if now - last_gauge > 5:
                last_gauge = now
                c = self.index.counts()
                metrics.QUEUE_DEPTH.labels("studies_receiving").set(c.get("studies.receiving", 0))
                metrics.QUEUE_DEPTH.labels("jobs").set(c.get("jobs.pending", 0))
                metrics.QUEUE_DEPTH.labels("exports").set(c.get("exports.pending", 0))
                metrics.QUEUE_DEPTH.labels("exports_dead").set(c.get("exports.dead", 0))
            return False

        self._loop("assembler", step, self._tick, period)

    def _worker_loop(self) -> None:
        def step() -> bool:
            job = self.index.claim_job(self.worker_id, JOB_LEASE_S)
            if job is None:
                return False
            if process_job(job, self.index, self.spool, self.settings):
                self._exports_ready.set()
            return True

        self._loop("worker", step, self._jobs_ready, 0.5)

    def _exporter_loop(self) -> None:
        exporter = Exporter(self.settings, self.index, self.spool.root)

        def step() -> bool:
            return exporter.run_once() > 0

        self._loop("exporter", step, self._exports_ready, 0.25)
