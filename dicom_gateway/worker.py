"""Run the routed analyses on one assembled study and record what they produced.

Result objects are written durably to the spool before their export rows are
committed, so nothing the index promises to send can be missing after a crash.
Each result object gets a SeriesInstanceUID derived from (study, analysis, SOP
class, modality): a re-run after a late instance lands in the same series in the
PACS with new SOP Instance UIDs, and the index marks the older result superseded.
"""

from __future__ import annotations

import io
import logging
import time
import traceback

import pydicom
from pydicom.uid import generate_uid

from dicom_gateway import metrics
from dicom_gateway.analyses import StudyInput, load_analysis
from dicom_gateway.index import Index, Job
from dicom_gateway.routing import analyses_for
from dicom_gateway.spool import Spool, write_atomic
from haidang.ground.settings import Settings

log = logging.getLogger("haidang.gateway.worker")

PRIORITIES = ("ROUTINE", "URGENT")


class RetryLater(RuntimeError):
    """Serving cannot be reached: the job goes back to the queue and the study waits."""


def _transient(exc: Exception) -> bool:
    from serving.imaging.client import ServingUnavailable

    return isinstance(exc, ServingUnavailable)


def result_series_uid(study_uid: str, analysis: str, ds: pydicom.Dataset) -> str:
    return generate_uid(
        entropy_srcs=[study_uid, analysis, str(ds.SOPClassUID), str(getattr(ds, "Modality", ""))]
    )


def encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def process_job(job: Job, index: Index, spool: Spool, settings: Settings) -> list[int]:
    """Run the study's analyses; returns the ids of the exports it queued."""
    t0 = time.perf_counter()
    study = index.study(job.study_uid) or {}
    instances = index.study_instances(job.study_uid)
    calling_ae = study.get("calling_ae", "")
    names = analyses_for(settings.routes, [i["attrs"] for i in instances], calling_ae)
    study_input = StudyInput(
        study_uid=job.study_uid,
        calling_ae=calling_ae,
        instance_paths=[spool.root / i["path"] for i in instances],
        settings=settings,
    )
    results: list[dict] = []
    failures: list[str] = []
    for name in names:
        try:
            out = load_analysis(name)(study_input)
            exports = []
            for ds in out.objects:
                if str(ds.StudyInstanceUID) != job.study_uid:
                    raise ValueError(f"analysis {name} returned an object of another study")
                ds.SeriesInstanceUID = result_series_uid(job.study_uid, name, ds)
                path = spool.result_path(job.study_uid, str(ds.SOPInstanceUID))
                write_atomic(path, encode(ds), spool.fsync)
                for dest in settings.destinations:
                    exports.append(
                        {
                            "destination": dest.name,
                            "sop_uid": str(ds.SOPInstanceUID),
                            "sop_class_uid": str(ds.SOPClassUID),
                            "series_uid": str(ds.SeriesInstanceUID),
                            "path": str(path.relative_to(spool.root)),
                        }
                    )
            priority = out.priority if out.priority in PRIORITIES else "ROUTINE"
            results.append(
                {
                    "analysis": name,
                    "state": "current",
                    "priority": priority,
                    "summary": out.summary,
                    "exports": exports,
                }
            )
        except Exception as exc:  # noqa: BLE001 - a broken analysis fails its job, not the gateway
            if _transient(exc):  # split mode, serving down: nothing is recorded, retried later
                raise RetryLater(f"analysis {name}: {exc}") from exc
            msg = f"analysis {name} failed: {type(exc).__name__}: {exc}"
            log.error(
                "%s (study %s)\n%s",
                msg,
                metrics.uid_hash(job.study_uid),
                traceback.format_exc(limit=5),
            )
            failures.append(msg)
            results.append(
                {
                    "analysis": name,
                    "state": "failed",
                    "priority": "ROUTINE",
                    "summary": {"error": msg},
                    "error": msg,
                }
            )
    error = "; ".join(failures) if failures and len(failures) == len(names) else None
    if not names:
        log.info("study %s matched no route: nothing to run", metrics.uid_hash(job.study_uid))
    export_ids = index.complete_job(job, results, error=error)
    metrics.JOBS.labels("failed" if error else "done").inc()
    metrics.JOB_SECONDS.observe(time.perf_counter() - t0)
    if study.get("last_arrival"):
        metrics.TIME_TO_RESULT.observe(max(0.0, time.time() - study["last_arrival"]))
    log.info(
        "study %s processed (generation %s): %s",
        metrics.uid_hash(job.study_uid),
        job.generation,
        ", ".join(f"{r['analysis']}={r['state']}" for r in results) or "-",
    )
    return export_ids
