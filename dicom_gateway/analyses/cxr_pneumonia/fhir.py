"""FHIR R4 DiagnosticReport for an AI finding, for the hospital information system.

Status ``preliminary`` because no physician has verified it; the probability travels as a
contained Observation that names the model (name, version, sha256) as its device. The
report's identifier is a UID derived from (study, analysis), so the delivery's conditional
update by identifier replaces the report when the study is analysed again: the HIS only
ever holds the current generation. The study is referenced in the standard form
(``imagingStudy`` by identifier, system ``urn:dicom:uid``); the patient by PatientID with
the hospital's identifier system; times carry the hospital's time zone.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom import Dataset

from dicom_gateway.analyses.cxr_pneumonia.codes import PNEUMONIA
from dicom_gateway.analyses.cxr_pneumonia.wording import (
    AI_DISCLAIMER_EN,
    AI_DISCLAIMER_VI,
    percent,
    verdict_en,
    verdict_vi,
)
from serving.imaging.predictor import Prediction

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DICOM_UID = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def study_datetime(ds: Dataset, zone: ZoneInfo) -> dt.datetime | None:
    """StudyDate/StudyTime as an aware time: DICOM's own offset if the source gives one
    (TimezoneOffsetFromUTC), else the hospital's time zone."""
    date = str(ds.get("StudyDate", "") or "")
    if len(date) != 8:
        return None
    time = str(ds.get("StudyTime", "") or "").split(".")[0].ljust(6, "0")[:6]
    try:
        value = dt.datetime.strptime(date + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        sign = 1 if offset[0] == "+" else -1
        delta = dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:]))
        return value.replace(tzinfo=dt.timezone(sign * delta))
    return value.replace(tzinfo=zone)


def _identifier(uid: str) -> dict:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def report_key(report: DiagnosticReport) -> str:
    """``system|value`` of the report's identifier: what the conditional update searches by."""
    first = report.identifier[0]
    return f"{first.system}|{first.value}"


def build_diagnostic_report(source: Dataset, prediction: Prediction, *, report_uid: str,
                            time_zone: str = "Asia/Ho_Chi_Minh",
                            patient_system: str = "urn:haidang:patient-id") -> DiagnosticReport:
    """A preliminary DiagnosticReport about the study of ``source``, identified by
    ``report_uid`` (stable per study and analysis)."""
    zone = ZoneInfo(time_zone)
    study_uid = str(source.StudyInstanceUID)
    p = percent(prediction.probability)
    issued = dt.datetime.now(zone).isoformat(timespec="seconds")
    observation = {
        "resourceType": "Observation", "id": "ai-probability", "status": "preliminary",
        "code": {"coding": [{"system": SCT, "code": PNEUMONIA[0], "display": PNEUMONIA[1]}],
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
        "issued": issued,
        "note": [{"text": AI_DISCLAIMER_VI}, {"text": AI_DISCLAIMER_EN}],
    }
    body = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "identifier": [_identifier(report_uid)],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "AI triage: chest X-ray pneumonia"},
        "issued": issued,
        "imagingStudy": [{"type": "ImagingStudy", "identifier": _identifier(study_uid)}],
        "contained": [observation],
        "result": [{"reference": "#ai-probability"}],
        "conclusion": (f"{verdict_vi(prediction.finding)} ({p}). {AI_DISCLAIMER_VI}\n"
                       f"{verdict_en(prediction.finding)} ({p}). {AI_DISCLAIMER_EN}"),
    }
    if source.get("PatientID"):
        subject = {"type": "Patient", "identifier": {"system": patient_system,
                                                     "value": str(source.PatientID)}}
        body["subject"] = observation["subject"] = subject
    if source.get("AccessionNumber"):
        body["identifier"].append({
            "type": {"coding": [{"system": V2_0203, "code": "ACSN",
                                 "display": "Accession ID"}], "text": "Accession number"},
            "value": str(source.AccessionNumber)})
    when = study_datetime(source, zone)
    if when:
        body["effectiveDateTime"] = observation["effectiveDateTime"] = when.isoformat()
    if prediction.finding:
        body["conclusionCode"] = [{"coding": [{"system": SCT, "code": PNEUMONIA[0],
                                               "display": PNEUMONIA[1]}]}]
    return DiagnosticReport.parse_obj(body)  # fhir.resources 7 models are pydantic v1 style


def report_json(report: DiagnosticReport) -> str:
    """UTF-8 JSON with Vietnamese kept readable (no \\u escapes)."""
    return json.dumps(json.loads(report.json()), ensure_ascii=False, indent=2)
