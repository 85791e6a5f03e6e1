"""FHIR R4 DiagnosticReport for an AI finding, for the hospital information system.

Status ``preliminary`` because no physician has verified it; the probability travels as a
contained Observation that names the model (name, version, sha256) as its device. The
study is identified by its DICOM Study Instance UID (``urn:dicom:uid``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import httpx
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import Dataset

from dicom_gateway.reports.wording import (
    AI_DISCLAIMER_EN,
    AI_DISCLAIMER_VI,
    percent,
    verdict_en,
    verdict_vi,
)
from serving.imaging.predictor import Prediction

log = logging.getLogger(__name__)
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def _when(ds: Dataset) -> str | None:
    date = str(ds.get("StudyDate", "") or "")
    if len(date) != 8:
        return None
    time = str(ds.get("StudyTime", "") or "").split(".")[0].ljust(6, "0")[:6]
    try:
        value = dt.datetime.strptime(date + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return value.isoformat()


def build_diagnostic_report(source: Dataset, prediction: Prediction) -> DiagnosticReport:
    """A preliminary DiagnosticReport about the study of ``source``."""
    study_uid = str(source.StudyInstanceUID)
    p = percent(prediction.probability)
    observation = {
        "resourceType": "Observation", "id": "ai-probability", "status": "preliminary",
        "code": {"coding": [{"system": SCT, "code": "233604007", "display": "Pneumonia"}],
                 "text": "AI probability of pneumonia"},
        "valueQuantity": {"value": round(prediction.probability, 6), "unit": "1",
                          "system": "http://unitsofmeasure.org", "code": "1"},
        "interpretation": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "POS" if prediction.finding else "NEG",
            "display": "Positive" if prediction.finding else "Negative"}]}],
        "method": {"text": f"AI {prediction.model} {prediction.version}, threshold "
                           f"{prediction.threshold:g}"},
        "device": {"display": f"{prediction.model} {prediction.version} "
                              f"sha256:{prediction.sha256}"},
        "note": [{"text": AI_DISCLAIMER_VI}, {"text": AI_DISCLAIMER_EN}],
    }
    if "PatientID" in source and source.PatientID:
        observation["subject"] = {"identifier": {"value": str(source.PatientID)}}
    body = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "AI triage: chest X-ray pneumonia"},
        "issued": dt.datetime.now(dt.UTC).isoformat(),
        "contained": [observation],
        "result": [{"reference": "#ai-probability"}],
        "conclusion": (f"{verdict_vi(prediction.finding)} ({p}). {AI_DISCLAIMER_VI}\n"
                       f"{verdict_en(prediction.finding)} ({p}). {AI_DISCLAIMER_EN}"),
    }
    if "PatientID" in source and source.PatientID:
        body["subject"] = {"identifier": {"value": str(source.PatientID)}}
    if "AccessionNumber" in source and source.AccessionNumber:
        body["identifier"].append({"type": {"text": "Accession number"},
                                   "value": str(source.AccessionNumber)})
    when = _when(source)
    if when:
        body["effectiveDateTime"] = when
    if prediction.finding:
        body["conclusionCode"] = [{"coding": [{"system": SCT, "code": "233604007",
                                               "display": "Pneumonia"}]}]
    return DiagnosticReport.parse_obj(body)  # fhir.resources 7 models are pydantic v1 style


def report_json(report: DiagnosticReport) -> str:
    """UTF-8 JSON with Vietnamese kept readable (no \\u escapes)."""
    return json.dumps(json.loads(report.json()), ensure_ascii=False, indent=2)


def store_report(report: DiagnosticReport, folder: Path, study_key: str) -> Path:
    """Keep a copy next to the other results (``<folder>/<study_key>.fhir.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study_key}.fhir.json"
    path.write_text(report_json(report), encoding="utf-8")
    return path


def post_report(report: DiagnosticReport, fhir_url: str, timeout_s: float = 10.0) -> int:
    """POST to ``<fhir_url>/DiagnosticReport``; returns the HTTP status, raises on failure."""
    url = fhir_url.rstrip("/") + "/DiagnosticReport"
    response = httpx.post(url, content=report_json(report).encode("utf-8"), timeout=timeout_s,
                          headers={"Content-Type": "application/fhir+json"})
    if response.status_code >= 300:
        raise RuntimeError(f"FHIR server {url} answered {response.status_code}; "
                           "check notify.fhir_url and the server's log")
    return response.status_code
