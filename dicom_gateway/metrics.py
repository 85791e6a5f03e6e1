"""Prometheus metrics of the gateway."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSTANCES = Counter("haidang_instances_received_total", "C-STORE requests by outcome", ["outcome"])
BYTES = Counter("haidang_bytes_received_total", "bytes of instances stored in the spool")
STUDIES_ASSEMBLED = Counter("haidang_studies_assembled_total", "studies found complete")
JOBS = Counter("haidang_jobs_total", "analysis jobs by outcome", ["outcome"])
EXPORTS = Counter(
    "haidang_exports_total", "deliveries by channel (dicom, fhir, hl7, webhook) and outcome",
    ["channel", "outcome"])
QUEUE_DEPTH = Gauge("haidang_queue_depth", "work waiting", ["queue"])
STORE_SECONDS = Histogram(
    "haidang_store_seconds",
    "C-STORE handling time (parse, fsync, index)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOB_SECONDS = Histogram(
    "haidang_job_seconds",
    "time to run a study's analyses",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TIME_TO_RESULT = Histogram(
    "haidang_time_to_result_seconds",
    "last instance received to results stored",
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
EXPORT_SECONDS = Histogram(
    "haidang_export_seconds",
    "one delivery batch (an association or connection), by channel",
    ["channel"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# A job worker process (gateway.job_workers > 1) forwards its job observations to the
# gateway process, so /metrics there counts every study whichever process analysed it.
_forward = None


def forward_to(queue) -> None:
    """In a worker process: send job observations to ``queue`` instead of counting here."""
    global _forward
    _forward = queue


def job_done(outcome: str, seconds: float | None = None,
             time_to_result: float | None = None) -> None:
    """One job ended: ``done``, ``failed`` or ``deferred``, with its timings when it ran."""
    if _forward is not None:
        _forward.put((outcome, seconds, time_to_result))
        return
    JOBS.labels(outcome).inc()
    if seconds is not None:
        JOB_SECONDS.observe(seconds)
    if time_to_result is not None:
        TIME_TO_RESULT.observe(time_to_result)


def relay(queue, stop, on_job=None) -> None:
    """In the gateway process: count what the worker processes forward, until ``stop``;
    ``on_job`` is called after each (a job committed: its exports are waiting)."""
    import queue as queues

    while not stop.is_set():
        try:
            job_done(*queue.get(timeout=0.5))
        except queues.Empty:
            continue
        except (EOFError, OSError):  # the queue closed: the workers are gone
            return
        if on_job is not None:
            on_job()
