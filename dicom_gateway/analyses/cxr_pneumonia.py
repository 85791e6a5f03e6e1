"""Chest X-ray pneumonia triage: model → TID 1500 SR, presentation state, optional visual
summary, FHIR report, HL7 result and priority update, webhook.

Runs on the radiographs routing gave it (the instances whose first matching ``[[routes]]``
rule lists this analysis) that are single-frame greyscale images. Each image is scored;
the study's verdict is the most suspicious image, explained by its heat map. Above the
model card's threshold the study is URGENT (worklist first, HL7 priority update, webhook).
Like every analysis it only builds: the worker stores what it returns and the export
queue delivers it on the channels the hospital configured.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from dicom_gateway.analyses.base import AnalysisOutput, Finding, Message, StudyInput
from dicom_gateway.reports.wording import verdict_en, verdict_vi

NAME = "cxr-pneumonia"
MODEL = "cxr-pneumonia"
log = logging.getLogger("haidang.analysis.cxr")

_CLIENTS: dict[str, object] = {}
_CLIENTS_LOCK = threading.Lock()


def imaging_client(settings):
    """One ImagingClient per serving configuration (embedded session or HTTP pool)."""
    from serving.imaging.client import ImagingClient

    key = settings.serving.model_dump_json()
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = ImagingClient.from_settings(settings, MODEL)
        return _CLIENTS[key]


def _is_radiograph(ds: pydicom.Dataset) -> bool:
    return (str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
            and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def _messages(study: StudyInput, source: pydicom.Dataset, best, summary: dict,
              urgent: bool) -> list[Message]:
    """The FHIR report, the HL7 result (and priority update when urgent) and the webhook."""
    from dicom_gateway.notify import urgent_payload
    from dicom_gateway.reports.fhir import build_diagnostic_report, report_json, report_key
    from dicom_gateway.reports.hl7 import control_id, oru_r01, priority_update

    settings, uid = study.settings, study.study_uid
    report = build_diagnostic_report(
        source, best, report_uid=generate_uid(entropy_srcs=[uid, NAME, "DiagnosticReport"]),
        time_zone=settings.time_zone,
        patient_system=settings.notify.patient_identifier_system)
    oru = control_id(uid, NAME, study.generation, "ORU^R01")
    out = [Message("fhir", "DiagnosticReport", report_key(report), report_json(report)),
           Message("hl7", "ORU^R01", oru, str(oru_r01(
               source, best, msg_id=oru, cfg=settings.hl7, time_zone=settings.time_zone)))]
    kind = settings.hl7.priority_message
    if urgent and kind != "none":
        msg_id = control_id(uid, NAME, study.generation, kind)
        out.append(Message("hl7", kind, msg_id, str(priority_update(
            source, best, kind=kind, msg_id=msg_id, cfg=settings.hl7,
            time_zone=settings.time_zone))))
    if urgent:
        payload = urgent_payload(uid, NAME, summary, str(source.get("AccessionNumber", "")),
                                 worklist_url=_worklist_url(settings))
        out.append(Message("webhook", "urgent-study",
                           control_id(uid, NAME, study.generation, "webhook"),
                           json.dumps(payload, ensure_ascii=False, indent=2)))
    return out


def analyse(study: StudyInput) -> AnalysisOutput:
    from dicom_gateway.reports.gsps import build_gsps
    from dicom_gateway.reports.sr import build_sr
    from dicom_gateway.reports.summary_image import build_sc, render_summary, thumbnail_png
    from serving.imaging.preprocess import center_square_np, dicom_to_unit, unit_to_model_input

    t0 = time.perf_counter()
    settings = study.settings
    images = []
    for path in study.routed:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if _is_radiograph(header):
            images.append(pydicom.dcmread(path))
    if not images:
        note = "no single-frame greyscale radiograph in study"
        return AnalysisOutput(analysis=NAME, summary={"verdict": "not-applicable", "note": note},
                              not_analysed=note)

    client = imaging_client(settings)
    spec = client.input_spec()
    units = [dicom_to_unit(ds) for ds in images]  # decode + window once: model input and picture
    inputs = np.stack([unit_to_model_input(u, spec) for u in units])
    t_pre = time.perf_counter()
    predictions = client.predict(inputs)
    t_pred = time.perf_counter()
    top = int(np.argmax([p.probability for p in predictions]))
    best, source = predictions[top], images[top]
    heat = client.explain(inputs[top])
    t_explain = time.perf_counter()

    previous = [ds for ds in (pydicom.dcmread(p) for p in study.previous)
                if ds.SOPClassUID == Comprehensive3DSRStorage]
    sr = build_sr(images, best, previous_versions=previous)
    gsps = build_gsps(source, heat, best)
    objects = [sr, gsps]
    rgb = render_summary(center_square_np(units[top]), heat, best)
    if settings.export.summary_image:
        objects.append(build_sc(source, rgb, best))
    summary = {
        "analysis": NAME,
        "verdict": best.label,
        "finding": best.finding,
        "probability": round(best.probability, 6),
        "threshold": best.threshold,
        "verdict_vi": verdict_vi(best.finding),
        "verdict_en": verdict_en(best.finding),
        "model": best.model, "version": best.version, "sha256": best.sha256,
        "provider": best.provider, "serving_mode": client.mode,
        "modality": str(source.get("Modality", "")),
        "images": len(images),
        "image_probabilities": [round(p.probability, 6) for p in predictions],
        "sr_sop_uid": str(sr.SOPInstanceUID), "gsps_sop_uid": str(gsps.SOPInstanceUID),
        "replaces_sr": [str(ds.SOPInstanceUID) for ds in previous],
        "timings_ms": {"preprocess": round(1000 * (t_pre - t0), 1),
                       "predict": round(1000 * (t_pred - t_pre), 1),
                       "explain": round(1000 * (t_explain - t_pred), 1),
                       "total": round(1000 * (time.perf_counter() - t0), 1)},
    }
    urgent = bool(best.finding)
    log.debug("cxr-pneumonia: %s", json.dumps({k: summary[k] for k in
                                               ("verdict", "probability", "timings_ms")}))
    return AnalysisOutput(
        analysis=NAME, objects=objects, summary=summary,
        priority="URGENT" if urgent else "ROUTINE",
        findings=[Finding(code="233604007", meaning="Pneumonia", present=best.finding,
                          probability=best.probability, threshold=best.threshold)],
        messages=_messages(study, source, best, summary, urgent),
        thumbnail_png=thumbnail_png(rgb))


def warm_up(settings) -> dict:
    """Run the whole analysis once on a synthetic radiograph, before the first real study.

    Loading the model, fonts, highdicom, FHIR models and image codecs costs ~0.5-1 s the
    first time; ``haidang up``, the demo and the benchmark call this at start so the first
    patient does not pay it. Nothing is sent or kept: an analysis only builds its output.
    """
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    info = imaging_client(settings).info()
    with tempfile.TemporaryDirectory(prefix="haidang-warmup-") as tmp:
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.update({"Modality": "CR", "BodyPartExamined": "CHEST", "PatientID": "WARMUP",
                   "PatientName": "WARM^UP", "PatientBirthDate": "", "PatientSex": "",
                   "StudyDate": "", "StudyTime": "", "AccessionNumber": "", "StudyID": "",
                   "ReferringPhysicianName": "", "Rows": 64, "Columns": 64,
                   "SamplesPerPixel": 1, "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7,
                   "PixelRepresentation": 0, "PhotometricInterpretation": "MONOCHROME2"})
        ds.PixelData = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)).tobytes()
        path = Path(tmp) / "warmup.dcm"
        ds.save_as(path, enforce_file_format=True)
        output = analyse(StudyInput(str(ds.StudyInstanceUID), "WARMUP", [path], settings))
        for obj in output.objects:  # the writer's first use costs too
            obj.save_as(io.BytesIO(), enforce_file_format=True)
    return info


def _worklist_url(settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.serving.port}/worklist"
