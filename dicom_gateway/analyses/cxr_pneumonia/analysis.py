"""Chest X-ray triage: intended-use gate → model → TID 1500 SR, presentation state, optional
visual summary, FHIR report, HL7 result and priority update, webhook.

Runs on the images routing gave it (the instances whose first matching ``[[routes]]`` rule
lists this analysis). Each image first passes the intended-use gate: its header against the
model card's ``population`` (``intended_use``), then its pixels (``serving.imaging.gate``,
the same check ``haidang evaluate`` applies). Only accepted images are scored, by the
``cxr-triage`` model; the study's verdict is the most suspicious accepted image, explained
by the class activation map that came with its scores (no second model run). Above the
model card's threshold the study is URGENT (worklist first, HL7 priority update, webhook).

A study with no accepted image is never scored and never flagged: it gets the
study-summary SR stating, in Vietnamese and English, "not analysed: outside the model's
intended use: <reason>", and the same reason in the worklist summary.

Like every analysis it only builds: the worker stores what it returns and the delivery
queue sends it on the channels the hospital configured.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from dicom_gateway.analyses.base import AnalysisOutput, Finding, Message, StudyInput
from dicom_gateway.analyses.cxr_pneumonia.codes import PNEUMONIA
from dicom_gateway.analyses.cxr_pneumonia.wording import not_analysed, verdict_en, verdict_vi
from dicom_gateway.analyses.intended_use import HeaderVerdict, Population, judge_header
from haidang.ground.logs import uid_hash
from serving.imaging.gate import GateVerdict, ImageGate

NAME = "cxr-pneumonia"
MODEL = "cxr-triage"  # the adult model (issue 18); cxr-pneumonia 1.0.0 is retired from routing
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


@dataclass(frozen=True)
class IntendedUse:
    """The served model's gate: its card's population (header) and its image check."""

    card: dict
    population: Population
    image_gate: ImageGate


_GATES: dict[Path, IntendedUse] = {}


def intended_use(settings) -> IntendedUse:
    """The gate of the model version serving uses, loaded once per version.

    Only the ``current`` pointer is read per study: parsing the card again for every study
    cost ~90 ms, more than the model itself.
    """
    from serving.registry import ModelRegistry, ModelVersion

    registry = ModelRegistry(settings.serving.models_dir)
    path = registry.root / MODEL / registry.current_version(MODEL)
    with _CLIENTS_LOCK:
        if path not in _GATES:
            version = ModelVersion.load(path, verify=False)
            _GATES[path] = IntendedUse(version.card, Population.from_card(version.card),
                                       ImageGate.from_model_dir(version.path))
        return _GATES[path]


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
        log.warning("study %s: impossible header values ignored by the gate: %s",
                    uid_hash(study.study_uid), "; ".join(admitted.warnings))
    return admitted


def _refused(study: StudyInput, headers: list[pydicom.Dataset], admitted: Admitted,
             card: dict) -> AnalysisOutput:
    """No image is what the model was made for: a PACS-visible reason, never a score."""
    from dicom_gateway.analyses.summary_sr import build_summary_sr

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
    log.debug("cxr-pneumonia: not analysed (%s)", summary["reason"])
    return AnalysisOutput(analysis=NAME, objects=[sr], summary=summary, priority="ROUTINE")


def _messages(study: StudyInput, source: pydicom.Dataset, best, summary: dict,
              urgent: bool) -> list[Message]:
    """The FHIR report, the HL7 result (and priority update when urgent) and the webhook."""
    from dicom_gateway.analyses.cxr_pneumonia.fhir import (
        build_diagnostic_report,
        report_json,
        report_key,
    )
    from dicom_gateway.analyses.cxr_pneumonia.hl7 import control_id, oru_r01, priority_update
    from dicom_gateway.notify import urgent_payload

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
    t0 = time.perf_counter()
    routed = [(path, pydicom.dcmread(path, stop_before_pixels=True)) for path in study.routed]
    if not routed:
        note = "no instance of the study was routed to this analysis"
        return AnalysisOutput(analysis=NAME, summary={"verdict": "not-applicable", "note": note},
                              not_analysed=note)
    gate = intended_use(study.settings)
    admitted = admit(study, routed, gate)
    if not admitted.images:
        return _refused(study, [h for _, h in routed], admitted, gate.card)
    return score(study, admitted, t0)


def score(study: StudyInput, admitted: Admitted, t0: float) -> AnalysisOutput:
    """Model, report objects and messages for the images the gate admitted."""
    from dicom_gateway.analyses.cxr_pneumonia.gsps import build_gsps
    from dicom_gateway.analyses.cxr_pneumonia.sr import build_sr
    from dicom_gateway.analyses.cxr_pneumonia.summary_image import (
        build_sc,
        render_summary,
        thumbnail_png,
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

    previous = [ds for ds in (pydicom.dcmread(p) for p in study.previous)
                if ds.SOPClassUID == Comprehensive3DSRStorage]
    sr = build_sr(images, best, previous_versions=previous)
    inner_crop = float(spec.get("inner_crop", 1.0))  # the part of the image the CAM covers
    gsps = build_gsps(source, heat, best, inner_crop=inner_crop)
    objects = [sr, gsps]
    rgb = render_summary(center_square_np(units[top], inner_crop), heat, best)
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
        "probabilities": {k: round(v, 6) for k, v in best.probabilities.items()},
        "findings": best.findings,
        "refused_images": len(admitted.refused), "header_warnings": admitted.warnings,
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
        findings=[Finding(code=PNEUMONIA[0], meaning=PNEUMONIA[1], present=best.finding,
                          probability=best.probability, threshold=best.threshold)],
        messages=_messages(study, source, best, summary, urgent),
        thumbnail_png=thumbnail_png(rgb))


def warm_up(settings) -> dict:
    """Run the whole analysis once on a synthetic image, before the first real study.

    Loading the model, the gate, fonts, highdicom, FHIR models and image codecs costs
    ~0.5-1 s the first time; ``haidang up``, the demo and the benchmark call this at start
    so the first patient does not pay it. The synthetic image goes through the gate (which
    rightly refuses it: the refusal path is warmed) and is then scored as if admitted (the
    model and report path are warmed). Nothing is sent or kept: an analysis only builds.
    """
    import tempfile

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

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
        study = StudyInput(str(ds.StudyInstanceUID), "WARMUP", [path], settings)
        gated = analyse(study)
        scored = score(study, Admitted([ds], [dicom_to_unit(ds)]), time.perf_counter())
        for obj in [*gated.objects, *scored.objects]:  # the writer's first use costs too
            obj.save_as(io.BytesIO(), enforce_file_format=True)
    return info


def _worklist_url(settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.serving.port}/worklist"
