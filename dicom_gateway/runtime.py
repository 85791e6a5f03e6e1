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
from dicom_gateway.worker import RetryLater, process_job
from dicom_gateway.writeback import Exporter
from haidang.ground import audit
from haidang.ground.settings import Settings

log = logging.getLogger("haidang.gateway")

JOB_LEASE_S = 60.0  # renewed while the job runs; a dead worker's job is taken after this
RETRY_MAX_DELAY_S = 60.0  # serving unreachable: the study is retried after 2, 4 ... 60 s


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
        self._listeners: list = []

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Gateway:
        g = self.settings.gateway
        audit.record_settings(self.settings, "gateway")
        self.spool = Spool(g.spool_dir, g.min_free_bytes, g.fsync)
        swept = self.spool.sweep_temporaries()
        self.index = Index(g.database_url)
        reindexed = self.reindex_spool()
        resumed = self.index.resume()
        counts = self.index.counts()
        log.info(
            "gateway starting: %s instances indexed, %s studies waiting, %s jobs pending, "
            "%s exports pending; took back %s jobs and %s exports; re-indexed %s spool files; "
            "swept %s temporaries",
            counts.get("instances", 0),
            counts.get("studies.receiving", 0),
            counts.get("jobs.pending", 0),
            counts.get("exports.pending", 0),
            resumed["jobs"],
            resumed["exports"],
            reindexed,
            swept,
        )
        self._stop.clear()
        self.scp = StorageSCP(g, self.spool, self.index)
        self.scp.reuse_port = g.listener_processes > 1
        self.scp.start()
        self._start_extra_listeners()
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

    def _start_extra_listeners(self) -> None:
        """More listener processes on the same port: parallel associations use more cores."""
        import multiprocessing

        n = self.settings.gateway.listener_processes - 1
        if n <= 0:
            return
        ctx = multiprocessing.get_context("spawn")
        settings = self.settings.model_copy(deep=True)
        settings.gateway.port = self.port  # the port actually bound (0 = any)
        for i in range(n):
            ready = ctx.Event()
            proc = ctx.Process(
                target=run_listener,
                args=(settings.model_dump_json(), os.getpid(), ready),
                name=f"haidang-listener-{i + 1}",
                daemon=True,
            )
            proc.start()
            self._listeners.append(proc)
            if not ready.wait(60):
                log.error("listener process %s did not start within 60 s", i + 1)

    def reindex_spool(self) -> int:
        """Index spool files the index does not know (its last commits lost in an OS crash)."""
        from dicom_gateway.scp import Unparsable, header_of, parse_header

        instances = self.spool.root / "instances"
        if not instances.is_dir():
            return 0
        known = self.index.indexed_paths()
        quiet = {
            a.ae_title.strip(): a.quiet_period_s
            for a in self.settings.gateway.allowed_sources
            if a.quiet_period_s is not None
        }
        n = 0
        for path in instances.rglob("*.dcm"):
            rel = str(path.relative_to(self.spool.root))
            if rel in known:
                continue
            try:
                with open(path, "rb") as fp:
                    ds = parse_header(fp.read())
            except (OSError, Unparsable) as exc:
                log.error("spool file %s cannot be re-indexed: %s", rel, exc)
                continue
            meta = ds.file_meta
            ae = str(meta.get("SourceApplicationEntityTitle", "") or "").strip()
            attrs = header_of(ds).attrs
            self.index.record_instance(
                sop_uid=str(ds.SOPInstanceUID).strip(),
                study_uid=str(ds.StudyInstanceUID).strip(),
                series_uid=str(ds.SeriesInstanceUID).strip(),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax=str(meta.TransferSyntaxUID),
                path=rel,
                size=path.stat().st_size,
                calling_ae=ae,
                attrs=attrs,
                quiet_period_s=quiet.get(ae, self.settings.gateway.quiet_period_s),
                now=path.stat().st_mtime,
            )
            n += 1
        return n

    def stop(self) -> None:
        self._stop.set()
        for ev in (self._jobs_ready, self._exports_ready, self._tick):
            ev.set()
        if self.scp:
            self.scp.stop()
        for proc in self._listeners:
            proc.terminate()
            proc.join(10)
        self._listeners.clear()
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
            done = threading.Event()

            def heartbeat() -> None:
                while not done.wait(JOB_LEASE_S / 3):
                    try:
                        self.index.renew_job(job.id, JOB_LEASE_S)
                    except Exception:  # noqa: BLE001 - the next beat tries again
                        log.exception("could not renew the lease of job %s", job.id)

            beat = threading.Thread(target=heartbeat, name="haidang-job-lease", daemon=True)
            beat.start()
            retry: RetryLater | None = None
            try:
                if process_job(job, self.index, self.spool, self.settings):
                    self._exports_ready.set()
            except RetryLater as exc:
                retry = exc
            finally:
                done.set()
                beat.join()
            if retry is not None:  # the study waits in the queue until serving is back
                delay = min(RETRY_MAX_DELAY_S, 2.0 ** min(job.attempts, 6))
                self.index.defer_job(job.id, delay)
                metrics.JOBS.labels("deferred").inc()
                log.warning("study %s waits %.0f s (attempt %s): %s", metrics.uid_hash(
                    job.study_uid), delay, job.attempts, retry)
                return False
            return True

        self._loop("worker", step, self._jobs_ready, 0.5)

    def _exporter_loop(self) -> None:
        exporter = Exporter(self.settings, self.index, self.spool.root)

        def step() -> bool:
            return exporter.run_once() > 0

        self._loop("exporter", step, self._exports_ready, 0.25)


def run_listener(settings_json: str, parent_pid: int, ready=None) -> None:
    """An extra listener process: C-STORE into the shared spool and index, nothing else."""
    from haidang.ground.logs import configure

    configure()  # text or JSON, as the parent command was told (via the environment)
    settings = Settings.model_validate_json(settings_json)
    g = settings.gateway
    spool = Spool(g.spool_dir, g.min_free_bytes, g.fsync)
    index = Index(g.database_url)
    scp = StorageSCP(g, spool, index)
    scp.reuse_port = True
    scp.start()
    if ready is not None:
        ready.set()
    try:
        while os.getppid() == parent_pid:  # the gateway died (even kill -9): stop listening
            time.sleep(0.5)
    finally:
        scp.stop()
        index.close()
