"""Chest X-ray pneumonia triage: gate → model → TID 1500 SR + visual summary + FHIR report.

Runs on the images the route picked (the instances whose first matching ``[[routes]]``
rule lists this analysis). Each image first passes the intended-use gate: its header
against the model card's ``population`` (``intended_use``), then its pixels
(``serving.imaging.gate``, the same check ``haidang evaluate`` applies). Only accepted
images are scored, by the ``cxr-triage`` model; the study's verdict is the most suspicious
accepted image, explained by the class activation map that came with its scores (no
second model run). Above the model card's threshold the study is URGENT (worklist first,
webhook when ``notify.webhook_url`` is set).

A study with no accepted image is never scored and never flagged: it gets the
study-summary SR stating, in Vietnamese and English, "not analysed: outside the model's
intended use: <reason>", and the same reason in the worklist summary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from dicom_gateway.analyses.base import AnalysisOutput, StudyInput
from dicom_gateway.analyses.intended_use import HeaderVerdict, Population, judge_header
from dicom_gateway.reports.wording import not_analysed, verdict_en, verdict_vi
from serving.imaging.gate import GateVerdict, ImageGate

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


@dataclass(frozen=True)
class IntendedUse:
    """The served model's gate: its card's population (header) and its image check."""

    card: dict
    population: Population
    image_gate: ImageGate


_GATES: dict[Path, IntendedUse] = {}


def intended_use(settings) -> IntendedUse:
    """The gate of the model version serving uses, loaded once per version."""
    from serving.registry import ModelRegistry

    version = ModelRegistry(settings.serving.models_dir).current(MODEL, verify=False)
    with _CLIENTS_LOCK:
        if version.path not in _GATES:
            _GATES[version.path] = IntendedUse(version.card, Population.from_card(version.card),
                                               ImageGate.from_model_dir(version.path))
        return _GATES[version.path]


@dataclass
class Admitted:
    """What the gate let through (decoded once: model input and picture) and what it refused."""

    images: list[pydicom.Dataset] = field(default_factory=list)
    units: list[np.ndarray] = field(default_factory=list)
    refused: list[HeaderVerdict | GateVerdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def admit(study: StudyInput, routed: list[tuple[Path, pydicom.Dataset]],
          gate: IntendedUse) -> Admitted:
    """Header first (cheap, no pixels), then the pixels of what the header allowed."""
    from serving.imaging.preprocess import dicom_to_unit

    admitted = Admitted()
    for path, header in routed:
        verdict = judge_header(header, gate.population)
        admitted.warnings += [w for w in verdict.warnings if w not in admitted.warnings]
        if not verdict.analysed:
            admitted.refused.append(verdict)
            continue
        ds = pydicom.dcmread(path)
        unit = dicom_to_unit(ds)  # as displayed (MONOCHROME1 inverted), as evaluate judges it
        judged = gate.image_gate.judge(unit, "MONOCHROME2")
        if judged.analysed:
            admitted.images.append(ds)
            admitted.units.append(unit)
        else:
            admitted.refused.append(judged)
    if admitted.warnings:
        from dicom_gateway.metrics import uid_hash

        log.warning("study %s: impossible header values ignored by the gate: %s",
                    uid_hash(study.study_uid), "; ".join(admitted.warnings))
    return admitted


def _refused(study: StudyInput, headers: list[pydicom.Dataset], admitted: Admitted,
             card: dict) -> AnalysisOutput:
    """No image is what the model was made for: a PACS-visible reason, never a score."""
    from dicom_gateway.analyses.study_summary import build_summary_sr

    verdicts = admitted.refused
    reasons: dict[str, HeaderVerdict | GateVerdict] = {}
    for verdict in verdicts:
        reasons.setdefault(verdict.reason_en, verdict)
    reason_vi = "; ".join(v.reason_vi for v in reasons.values())
    reason_en = "; ".join(v.reason_en for v in reasons.values())
    statement = not_analysed(reason_vi, reason_en)
    sr = build_summary_sr(headers, [statement])
    summary = {
        "analysis": NAME, "verdict": "not-analysed", "finding": None, "probability": None,
        "reason": ",".join(dict.fromkeys(v.reason for v in verdicts)),
        "reason_vi": reason_vi, "reason_en": reason_en, "statement": statement,
        "model": str(card.get("name", MODEL)), "version": str(card.get("version", "")),
        "modality": str(headers[0].get("Modality", "")), "images": 0,
        "refused_images": len(verdicts), "header_warnings": admitted.warnings,
        "sr_sop_uid": str(sr.SOPInstanceUID),
    }
    log.info("cxr-pneumonia: not analysed (%s)", summary["reason"])
    return AnalysisOutput(analysis=NAME, objects=[sr], summary=summary, priority="ROUTINE")


def analyse(study: StudyInput) -> AnalysisOutput:
    t0 = time.perf_counter()
    settings = study.settings
    routed = []
    for path in study.instance_paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if _applies(header, settings.routes, study.calling_ae):
            routed.append((path, header))
    if not routed:
        return AnalysisOutput(analysis=NAME, summary={
            "verdict": "not-applicable", "note": "no instance of the study is routed here"})
    gate = intended_use(settings)
    admitted = admit(study, routed, gate)
    if not admitted.images:
        return _refused(study, [h for _, h in routed], admitted, gate.card)
    return score(study, admitted, t0)


def score(study: StudyInput, admitted: Admitted, t0: float) -> AnalysisOutput:
    """Model, report objects, FHIR and webhook for the images the gate admitted."""
    from dicom_gateway.reports.fhir import build_diagnostic_report, post_report, store_report
    from dicom_gateway.reports.sr import build_sr
    from dicom_gateway.reports.summary_image import (
        build_sc,
        render_summary,
        save_thumbnail,
    )
    from serving.imaging.explain import heat_of
    from serving.imaging.preprocess import center_square_np, unit_to_model_input

    settings = study.settings
    images, units = admitted.images, admitted.units
    client = imaging_client(settings)
    spec = client.input_spec()
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
        "refused_images": len(admitted.refused), "header_warnings": admitted.warnings,
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
    """Run the whole analysis once on a synthetic image, before the first real study.

    Loading the model, the gate, fonts, highdicom, FHIR models and image codecs costs
    ~0.5-1 s the first time; ``haidang up``, the demo and the benchmark call this at start
    so the first patient does not pay it. The synthetic image goes through the gate (which
    rightly refuses it: the refusal path is warmed) and is then scored as if admitted (the
    model and report path are warmed). Nothing is sent or kept (temporary folder,
    notifications off).
    """
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from serving.imaging.preprocess import dicom_to_unit

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
                   "ReferringPhysicianName": "", "Rows": 256, "Columns": 256,
                   "SamplesPerPixel": 1, "BitsAllocated": 8, "BitsStored": 8, "HighBit": 7,
                   "PixelRepresentation": 0, "PhotometricInterpretation": "MONOCHROME2"})
        ds.PixelData = np.tile(np.arange(256, dtype=np.uint8), (256, 1)).tobytes()
        path = Path(tmp) / "warmup.dcm"
        ds.save_as(path, enforce_file_format=True)
        quiet = settings.model_copy(update={
            "gateway": settings.gateway.model_copy(update={"spool_dir": Path(tmp)}),
            "notify": settings.notify.model_copy(update={"webhook_url": None, "fhir_url": None}),
            "routes": []})
        study = StudyInput(str(ds.StudyInstanceUID), "WARMUP", [path], quiet)
        gated = analyse(study)
        scored = score(study, Admitted([ds], [dicom_to_unit(ds)]), time.perf_counter())
        from dicom_gateway.worker import encode

        for obj in [*gated.objects, *scored.objects]:
            encode(obj)
    return info


def _worklist_url(settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.serving.port}/worklist"
