"""Chest X-ray pneumonia triage: model → TID 1500 SR + visual summary + FHIR report.

Runs on the radiographs the route picked (the instances whose first matching
``[[routes]]`` rule lists this analysis, and that are single-frame greyscale images).
Each image is scored by the ``cxr-triage`` model; the study's verdict is the most suspicious
image, explained by the class activation map that came with its scores (no second model
run). Above the model card's threshold the study is URGENT (worklist first, webhook when
``notify.webhook_url`` is set).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

from dicom_gateway.analyses.base import AnalysisOutput, StudyInput
from dicom_gateway.reports.wording import verdict_en, verdict_vi

NAME = "cxr-pneumonia"
MODEL = "cxr-triage"  # the adult model (issue 18); cxr-pneumonia is retired from routing
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


def results_dir(settings) -> Path:
    """Where thumbnails and FHIR copies live: ``<gateway.spool_dir>/ai``."""
    return Path(settings.gateway.spool_dir) / "ai"


def study_key(study_uid: str) -> str:
    from dicom_gateway.spool import safe_name

    return safe_name(study_uid)


def _applies(ds: pydicom.Dataset, routes, calling_ae: str) -> bool:
    from dicom_gateway.routing import rule_matches

    attrs = {k: str(ds.get(k, "") or "") for k in
             ("Modality", "BodyPartExamined", "SOPClassUID", "ViewPosition", "StudyDescription",
              "SeriesDescription", "Manufacturer")}
    for route in routes:
        if rule_matches(route, attrs, calling_ae):
            return NAME in route.analyses
    return not routes  # no routes configured: the caller asked for us explicitly


def _is_radiograph(ds: pydicom.Dataset) -> bool:
    return (str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
            and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def analyse(study: StudyInput) -> AnalysisOutput:
    from dicom_gateway.reports.fhir import build_diagnostic_report, post_report, store_report
    from dicom_gateway.reports.sr import build_sr
    from dicom_gateway.reports.summary_image import (
        build_sc,
        render_summary,
        save_thumbnail,
    )
    from serving.imaging.explain import heat_of
    from serving.imaging.preprocess import center_square_np, dicom_to_unit, unit_to_model_input

    t0 = time.perf_counter()
    settings = study.settings
    images = []
    for path in study.instance_paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if _applies(header, settings.routes, study.calling_ae) and _is_radiograph(header):
            images.append(pydicom.dcmread(path))
    if not images:
        return AnalysisOutput(analysis=NAME, summary={
            "verdict": "not-applicable", "note": "no single-frame greyscale radiograph in study"})

    client = imaging_client(settings)
    spec = client.input_spec()
    units = [dicom_to_unit(ds) for ds in images]  # decode + window once: model input and picture
    inputs = np.stack([unit_to_model_input(u, spec) for u in units])
    t_pre = time.perf_counter()
    predictions = client.predict(inputs)
    t_pred = time.perf_counter()
    top = int(np.argmax([p.probability for p in predictions]))
    best, source = predictions[top], images[top]
    heat = heat_of(best)
    if heat is None:  # a model without activation maps: show the image without a heat map
        heat = np.zeros((8, 8), np.float32)
    t_explain = time.perf_counter()

    sr = build_sr(images, best)
    view = center_square_np(units[top], float(spec.get("inner_crop", 1.0)))  # what the CAM covers
    rgb = render_summary(view, heat, best)
    sc = build_sc(source, rgb, best)
    folder = results_dir(settings)
    key = study_key(study.study_uid)
    thumb = save_thumbnail(rgb, folder / f"{key}.png")
    report = build_diagnostic_report(source, best)
    fhir_path = store_report(report, folder, key)
    fhir_posted = None
    if settings.notify.fhir_url:
        try:
            fhir_posted = post_report(report, settings.notify.fhir_url, settings.serving.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the HIS being down must not block PACS results
            log.error("FHIR DiagnosticReport not posted: %s", exc)
            fhir_posted = f"failed: {type(exc).__name__}"

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
        "probabilities": {k: round(v, 6) for k, v in best.probabilities.items()},
        "findings": best.findings,
        "sr_sop_uid": str(sr.SOPInstanceUID), "sc_sop_uid": str(sc.SOPInstanceUID),
        "thumbnail": thumb.name, "fhir": fhir_path.name, "fhir_posted": fhir_posted,
        "timings_ms": {"preprocess": round(1000 * (t_pre - t0), 1),
                       "predict": round(1000 * (t_pred - t_pre), 1),
                       "explain": round(1000 * (t_explain - t_pred), 1),
                       "total": round(1000 * (time.perf_counter() - t0), 1)},
    }
    priority = "URGENT" if best.finding else "ROUTINE"
    if priority == "URGENT" and settings.notify.webhook_url:
        from dicom_gateway.notify import send_webhook, urgent_payload

        payload = urgent_payload(study.study_uid, summary, str(source.get("AccessionNumber", "")),
                                 worklist_url=_worklist_url(settings))
        summary["webhook_delivered"] = send_webhook(settings.notify.webhook_url, payload)
    log.info("cxr-pneumonia: %s", json.dumps({k: summary[k] for k in
                                               ("verdict", "probability", "timings_ms")}))
    return AnalysisOutput(analysis=NAME, objects=[sr, sc], summary=summary, priority=priority)


def warm_up(settings) -> dict:
    """Run the whole analysis once on a synthetic radiograph, before the first real study.

    Loading the model, fonts, highdicom, FHIR models and image codecs costs ~0.5-1 s the
    first time; ``haidang up``, the demo and the benchmark call this at start so the first
    patient does not pay it. Nothing is sent or kept (temporary folder, notifications off).
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
        quiet = settings.model_copy(update={
            "gateway": settings.gateway.model_copy(update={"spool_dir": Path(tmp)}),
            "notify": settings.notify.model_copy(update={"webhook_url": None, "fhir_url": None}),
            "routes": []})
        output = analyse(StudyInput(str(ds.StudyInstanceUID), "WARMUP", [path], quiet))
        from dicom_gateway.worker import encode

        for obj in output.objects:
            encode(obj)
    return info


def _worklist_url(settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.serving.port}/worklist"
