"""Run the routed analyses on one assembled study and record what they produced.

Routing is decided once (:func:`dicom_gateway.routing.route_study`); each analysis gets
the instances its route picked and hands back a typed output. This module then does the
gateway's part: result files (DICOM objects, FHIR/HL7/webhook bodies, the worklist
picture) are written durably to the spool, then the results and their exports are
committed in one transaction; the exporter sends them only after that commit. Each
result object gets a SeriesInstanceUID derived from (study, analysis, SOP class,
modality): a re-run after a late instance lands in the same series in the PACS with new
SOP Instance UIDs, its SR lists the one it replaces as predecessor, and the index marks
the older result superseded.

A study that was received but not analysed (no applicable image, an analysis error)
still gets the trace analysis (the study summary) with the reasons, so PACS shows that
the gateway saw it.
"""

from __future__ import annotations

import io
import logging
import time
import traceback

import pydicom
from pydicom.uid import generate_uid

from dicom_gateway import metrics
from dicom_gateway.analyses import TRACE_ANALYSIS, AnalysisOutput, StudyInput, load_analysis
from dicom_gateway.index import Index, Job
from dicom_gateway.routing import route_study
from dicom_gateway.spool import Spool, write_atomic
from haidang.ground.logs import study_line, uid_hash
from haidang.ground.settings import Settings

log = logging.getLogger("haidang.gateway.worker")

PRIORITIES = ("ROUTINE", "URGENT")
EXTENSIONS = {"fhir": "json", "webhook": "json", "hl7": "hl7"}


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


def channel_enabled(settings: Settings, channel: str) -> bool:
    """A message goes out only on the channels the hospital configured."""
    return bool({"fhir": settings.notify.fhir_url, "webhook": settings.notify.webhook_url,
                 "hl7": settings.hl7.host}.get(channel))


def _store(job: Job, name: str, out: AnalysisOutput, spool: Spool, settings: Settings) -> dict:
    """Write the output's files durably; the result row (with exports) to commit."""
    exports = []
    for ds in out.objects:
        if str(ds.StudyInstanceUID) != job.study_uid:
            raise ValueError(f"analysis {name} returned an object of another study")
        ds.SeriesInstanceUID = result_series_uid(job.study_uid, name, ds)
        path = spool.result_path(job.study_uid, str(ds.SOPInstanceUID))
        write_atomic(path, encode(ds), spool.fsync)
        for dest in settings.destinations:
            exports.append({"channel": "dicom", "destination": dest.name,
                            "sop_uid": str(ds.SOPInstanceUID),
                            "sop_class_uid": str(ds.SOPClassUID),
                            "series_uid": str(ds.SeriesInstanceUID),
                            "path": str(path.relative_to(spool.root))})
    for n, message in enumerate(out.messages, start=1):
        if not channel_enabled(settings, message.channel):
            continue
        path = spool.message_path(job.study_uid,
                                  f"job{job.id}-{n}.{EXTENSIONS[message.channel]}")
        write_atomic(path, message.body.encode("utf-8"), spool.fsync)
        exports.append({"channel": message.channel, "destination": message.channel,
                        "sop_uid": message.key, "sop_class_uid": message.kind,
                        "series_uid": "", "path": str(path.relative_to(spool.root))})
    summary = dict(out.summary)
    if out.thumbnail_png:
        thumb = spool.thumbnail_path(job.study_uid)
        write_atomic(thumb, out.thumbnail_png, spool.fsync)
        summary["thumbnail"] = thumb.name
    if out.not_analysed:
        summary["not_analysed"] = out.not_analysed
    return {"analysis": name, "state": "current",
            "priority": out.priority if out.priority in PRIORITIES else "ROUTINE",
            "summary": summary, "exports": exports}


def process_job(job: Job, index: Index, spool: Spool, settings: Settings) -> list[int]:
    """Run the study's analyses; returns the ids of the exports it queued."""
    t0 = time.perf_counter()
    study = index.study(job.study_uid) or {}
    instances = index.study_instances(job.study_uid)
    calling_ae = study.get("calling_ae", "")
    routed = route_study(settings.routes, [i["attrs"] for i in instances], calling_ae)
    paths = [spool.root / i["path"] for i in instances]

    def study_input(name: str, not_analysed: list[str]) -> StudyInput:
        positions = routed.get(name)
        return StudyInput(
            study_uid=job.study_uid, calling_ae=calling_ae, instance_paths=paths,
            settings=settings, generation=job.generation,
            routed_paths=None if positions is None else [paths[i] for i in positions],
            previous=[spool.root / p for _cls, p in index.previous_objects(job.study_uid, name)],
            not_analysed=not_analysed)

    results: list[dict] = []
    failures: list[str] = []
    reasons: list[str] = []  # why a routed analysis did not analyse the study
    if not routed:
        reasons.append("no [[routes]] rule matched the study")
    names = [n for n in routed if n != TRACE_ANALYSIS]
    for name in names + [TRACE_ANALYSIS]:
        if name == TRACE_ANALYSIS and name not in routed and not reasons:
            break  # the trace runs when routed, or when the study was not analysed
        try:
            out = load_analysis(name)(study_input(name, reasons))
            results.append(_store(job, name, out, spool, settings))
            if out.not_analysed:
                reasons.append(f"{name}: {out.not_analysed}")
        except Exception as exc:  # noqa: BLE001 - a broken analysis fails its job, not the gateway
            if _transient(exc):  # split mode, serving down: nothing is recorded, retried later
                raise RetryLater(f"analysis {name}: {exc}") from exc
            msg = f"analysis {name} failed: {type(exc).__name__}: {exc}"
            log.error(
                "%s (study %s)\n%s",
                msg,
                uid_hash(job.study_uid),
                traceback.format_exc(limit=5),
            )
            failures.append(msg)
            reasons.append(f"{name}: analysis error ({type(exc).__name__})")
            results.append(
                {
                    "analysis": name,
                    "state": "failed",
                    "priority": "ROUTINE",
                    "summary": {"error": msg},
                    "error": msg,
                }
            )
    asked = len(names) + (TRACE_ANALYSIS in routed)  # the job failed if all of these did
    error = "; ".join(failures) if failures and len(failures) >= asked else None
    if not routed:
        log.debug("study %s matched no route: trace only", uid_hash(job.study_uid))
    export_ids = index.complete_job(job, results, error=error)
    timings = {"analysis": time.perf_counter() - t0}
    if study.get("last_arrival"):
        timings["since_last_image"] = max(0.0, time.time() - study["last_arrival"])
    metrics.job_done("failed" if error else "done", timings["analysis"],
                     timings.get("since_last_image"))
    study_line(log, uid_hash(job.study_uid), _verdict(results, job.generation), timings)
    return export_ids


def _verdict(results: list[dict], generation: int) -> str:
    """What the study's line says: each analysis with its verdict (or state) and priority."""
    parts = []
    for r in results:
        summary = r.get("summary") or {}
        said = summary.get("verdict") or summary.get("not_analysed") or r["state"]
        parts.append(f"{r['analysis']}={said} {r.get('priority', 'ROUTINE')}")
    return f"generation {generation}: " + (", ".join(parts) or "-")
