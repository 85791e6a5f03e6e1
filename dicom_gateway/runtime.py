"""The running gateway: listener, study assembler, job worker(s) and exporter threads.

``Gateway(settings).start()`` is what ``haidang gateway`` / ``haidang up`` run and
what tests use in-process. On start it first makes sure no other live process owns the
same work (SQLite: an exclusive lock file beside the spool, ``<spool_dir>.lock``;
PostgreSQL: the job and export
leases), then takes back the work a crashed process held: assembled-but-unprocessed
studies and unfinished exports.

``stop()`` is graceful: the listener stops accepting and lets instances being received
finish (``gateway.stop_grace_s``), running analyses get what is left of the grace period
(else their leases lapse and the next start takes them back), and the audit writer is
flushed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from dicom_gateway import metrics
from dicom_gateway.header import Unparsable, header_of, parse_header
from dicom_gateway.index import Index
from dicom_gateway.spool import Spool
from dicom_gateway.store import StorageSCP
from dicom_gateway.worker import RetryLater, process_job
from dicom_gateway.writeback import Exporter
from haidang.ground import audit
from haidang.ground.logs import uid_hash
from haidang.ground.processes import OwnerLock
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
        self._jobs_signal = None  # ... the same, for job worker processes
        self._exports_ready = threading.Event()  # a job queued exports (verdicts)
        self._pictures_ready = threading.Event()  # ... and pictures
        self._tick = threading.Event()  # the assembler just polls
        self._threads: list[threading.Thread] = []
        self._listeners: list = []  # extra listener processes
        self._workers: list = []  # job worker processes
        self._lock: OwnerLock | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Gateway:
        g = self.settings.gateway
        if g.database_url.startswith("sqlite"):  # before any recovery: is the work ours?
            spool = Path(g.spool_dir).resolve()
            self._lock = OwnerLock.take(spool.with_name(spool.name + ".lock"),
                                        f"the spool {g.spool_dir} and database {g.database_url}")
        audit.record_settings(self.settings, "gateway")
        self.spool = Spool(g.spool_dir, g.min_free_bytes, g.fsync)
        swept = self.spool.sweep_temporaries()
        self.index = Index(g.database_url)
        reindexed = self.reindex_spool()
        resumed = self.index.resume()
        counts = self.index.counts()
        recovered = resumed["jobs"] or resumed["exports"] or reindexed or swept
        log.log(
            logging.INFO if recovered else logging.DEBUG,
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
        loops = [("assembler", self._assembler_loop), ("exporter", self._exporter_loop),
                 ("exporter-pictures", self._pictures_loop)]
        if g.job_workers == 1:
            loops.append(("worker", self._worker_loop))
        else:
            self._start_worker_processes()
        for name, target in loops:
            t = threading.Thread(target=target, name=f"haidang-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._jobs_ready.set()
        self._exports_ready.set()
        self._pictures_ready.set()
        return self

    def _start_extra_listeners(self) -> None:
        """More listener processes on the same port: parallel associations use more cores."""
        n = self.settings.gateway.listener_processes - 1
        settings = self.settings.model_copy(deep=True)
        settings.gateway.port = self.port  # the port actually bound (0 = any)
        for i in range(max(0, n)):
            self._listeners.append(self._spawn(
                run_listener, (settings.model_dump_json(), os.getpid()),
                f"haidang-listener-{i + 1}", 60))

    def _start_worker_processes(self) -> None:
        """Job workers as processes: each warms its own model session (hence the longer wait),
        then claims studies from the shared index like a worker thread does."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        settings_json = self.settings.model_dump_json()
        observations = ctx.Queue()  # job metrics; each also says "exports are waiting"
        self._jobs_signal = ctx.Event()  # the assembler wakes the workers at once

        relay = threading.Thread(target=metrics.relay,
                                 args=(observations, self._stop, self._wake_exporters),
                                 name="haidang-metrics-relay", daemon=True)
        relay.start()
        self._threads.append(relay)
        for i in range(self.settings.gateway.job_workers):
            self._workers.append(self._spawn(
                run_worker,
                (settings_json, os.getpid(), f"{self.worker_id}/{i + 1}", observations,
                 self._jobs_signal),
                f"haidang-worker-{i + 1}", 300))

    def _spawn(self, target, args: tuple, name: str, timeout_s: float):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        proc = ctx.Process(target=target, args=(*args, ready), name=name, daemon=True)
        proc.start()
        if not ready.wait(timeout_s):
            log.error("%s did not start within %.0f s (exit code %s)", name, timeout_s,
                      proc.exitcode)
        return proc

    def reindex_spool(self) -> int:
        """Index spool files the index does not know (its last commits lost in an OS crash)."""
        instances = self.spool.root / "instances"
        if not instances.is_dir():
            return 0
        known = self.index.indexed_paths()
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
            header = header_of(ds)
            self.index.record_instance(
                sop_uid=header.sop_uid,
                study_uid=header.study_uid,
                series_uid=header.series_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax=str(meta.TransferSyntaxUID),
                path=rel,
                size=path.stat().st_size,
                calling_ae=ae,
                attrs=header.attrs,
                quiet_period_s=self.settings.gateway.quiet_period(ae),
                now=path.stat().st_mtime,
            )
            n += 1
        return n

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully within ``grace`` seconds (default ``gateway.stop_grace_s``)."""
        grace = self.settings.gateway.stop_grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        children = self._listeners + self._workers
        for proc in children:  # listeners answer what they are receiving, workers finish
            # their study, then they stop
            proc.terminate()
        if self.scp:
            self.scp.stop(grace)
        for proc in children:
            proc.join(max(1.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._listeners.clear()
        self._workers.clear()
        self._stop.set()
        for ev in (self._jobs_ready, self._exports_ready, self._pictures_ready, self._tick):
            ev.set()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        unfinished = [t.name for t in self._threads if t.is_alive()]
        self._threads.clear()
        if unfinished:  # their leases lapse; the next start (or another worker) takes them
            log.warning("stopped with %s still running after %.0f s (gateway.stop_grace_s); "
                        "its work is taken back at the next start", ", ".join(unfinished), grace)
        elif self.index:
            self.index.close()
        audit.close_all()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        log.debug("gateway stopped")

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
                log.debug(
                    "study %s complete (generation %s)", uid_hash(study_uid), generation
                )
            if done:
                self._jobs_ready.set()
                if self._jobs_signal is not None:
                    self._jobs_signal.set()
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
            ran, exported = run_one_job(self.index, self.spool, self.settings, self.worker_id)
            if exported:
                self._wake_exporters()
            return ran

        self._loop("worker", step, self._jobs_ready, 0.5)

    def _wake_exporters(self) -> None:
        """A job committed exports: both senders look now, not at their next poll."""
        self._exports_ready.set()
        self._pictures_ready.set()

    def _exporter_loop(self) -> None:
        exporter = Exporter(self.settings, self.index, self.spool.root, lane="verdicts")
        self._loop("exporter", lambda: exporter.run_once() > 0, self._exports_ready, 0.25)

    def _pictures_loop(self) -> None:
        exporter = Exporter(self.settings, self.index, self.spool.root, lane="pictures")
        self._loop("exporter-pictures", lambda: exporter.run_once(batch=16) > 0,
                   self._pictures_ready, 0.25)


def run_one_job(index: Index, spool: Spool, settings: Settings,
                worker_id: str) -> tuple[bool, bool]:
    """Claim one study and analyse it, renewing its lease meanwhile.

    Returns (a study was analysed, it queued exports). Serving unreachable: the study goes
    back to the queue with a growing delay and counts as not analysed.
    """
    job = index.claim_job(worker_id, JOB_LEASE_S)
    if job is None:
        return False, False
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(JOB_LEASE_S / 3):
            try:
                index.renew_job(job.id, JOB_LEASE_S)
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("could not renew the lease of job %s", job.id)

    beat = threading.Thread(target=heartbeat, name="haidang-job-lease", daemon=True)
    beat.start()
    retry: RetryLater | None = None
    exported = False
    try:
        exported = bool(process_job(job, index, spool, settings))
    except RetryLater as exc:
        retry = exc
    finally:
        done.set()
        beat.join()
    if retry is not None:  # the study waits in the queue until serving is back
        delay = min(RETRY_MAX_DELAY_S, 2.0 ** min(job.attempts, 6))
        index.defer_job(job.id, delay)
        metrics.job_done("deferred")
        log.warning("study %s waits %.0f s (attempt %s): %s", uid_hash(
            job.study_uid), delay, job.attempts, retry)
        return False, False
    return True, exported


def run_worker(settings_json: str, parent_pid: int, worker_id: str, observations=None,
               jobs_signal=None, ready=None) -> None:
    """A job worker process (``gateway.job_workers`` > 1): analyses studies, nothing else.

    The gateway process keeps the listener, assembler and write-back. Each finished job's
    metrics go to it through ``observations``, which also wakes its senders; the assembler
    wakes this process through ``jobs_signal``. SIGTERM lets the running study finish (its
    lease covers a kill: the study is taken back).
    """
    from dicom_gateway.analyses import warm_up_routed
    from haidang.ground.logs import configure

    configure()
    if observations is not None:
        metrics.forward_to(observations)
    settings = Settings.model_validate_json(settings_json)
    g = settings.gateway
    if not settings.serving.threads:  # the workers share the cores instead of each taking all
        settings.serving.threads = max(1, (os.cpu_count() or 1) // g.job_workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    warm_up_routed(settings)  # before taking work: the first study is not slowed by loading
    spool = Spool(g.spool_dir, g.min_free_bytes, g.fsync)
    index = Index(g.database_url)
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set() and os.getppid() == parent_pid:  # parent gone (even kill -9)
            try:
                ran, _ = run_one_job(index, spool, settings, worker_id)
            except Exception:  # noqa: BLE001 - keep serving; logged and retried
                log.exception("worker step failed; retrying")
                ran = False
                stop.wait(1.0)
            if not ran:  # wait for the assembler's signal (or poll: a lease may lapse)
                if jobs_signal is None:
                    stop.wait(0.25)
                elif jobs_signal.wait(0.25):
                    jobs_signal.clear()
    finally:
        index.close()


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
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # the gateway stops: answer, then go
    if ready is not None:
        ready.set()
    try:
        while os.getppid() == parent_pid and not stop.wait(0.5):  # parent gone (even kill -9)
            pass
    finally:
        scp.stop(g.stop_grace_s)
        index.close()
