"""HL7 v2.5.1 messages for the RIS/HIS: the AI result (ORU^R01) and a priority update.

Built with the ``hl7`` package's containers (fields escaped by its ``escape``), never as
hand-joined strings. Each message's control id (MSH-10) is derived from (study, analysis,
result generation, message type): a resend after a timeout or crash carries the same id,
so the receiver can recognise it, and a re-analysis after a late image is a new message.

- **ORU^R01**: PID (PatientID, name), ORC/OBR keyed by the accession number (OBR-3 filler
  order number), result status P (preliminary: not verified by a physician), and OBX: the
  finding (CWE, SNOMED CT, present/absent), the probability (NM, UCUM ``1``), the model
  and version (OBX-18 equipment), the Study Instance UID (DCM 110180), then the verdict
  and the "unverified AI" note in Vietnamese first, then English.
- **Priority update** (``hl7.priority_message``): ORM^O01, or OMI^O23 for RIS that take
  imaging orders, with ORC-1 XO (change order) and priority S (STAT) in ORC-7/OBR-27
  (ORM) or TQ1-9 (OMI), for the order with this accession number.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from zoneinfo import ZoneInfo

import hl7
from pydicom import Dataset

from dicom_gateway.analyses.cxr_pneumonia import codes
from dicom_gateway.analyses.cxr_pneumonia.wording import (
    AI_DISCLAIMER_EN,
    AI_DISCLAIMER_VI,
    percent,
    verdict_en,
    verdict_vi,
)
from haidang.ground.settings import HL7Settings
from serving.imaging.predictor import Prediction

VERSION = "2.5.1"
PNEUMONIA = (*codes.PNEUMONIA, codes.SNOMED_CT)
PRESENT = (*codes.PRESENT, codes.SNOMED_CT)
ABSENT = (*codes.ABSENT, codes.SNOMED_CT)
PROBABILITY = ("122157", "Probability", "DCM")
STUDY_UID = ("110180", "Study Instance UID", "DCM")
AI_RESULT = ("18748-4", "Diagnostic imaging study", "LN")
STAT = "S"


def control_id(study_uid: str, analysis: str, generation: int, kind: str) -> str:
    """MSH-10 (at most 20 characters): stable for one result generation and message type."""
    digest = hashlib.sha256(f"{study_uid}|{analysis}|{generation}|{kind}".encode()).hexdigest()
    return "HD" + digest[:18].upper()


class _Builder:
    """One message under construction; every value goes through the library's escape."""

    def __init__(self) -> None:
        self.message = hl7.parse("MSH|^~\\&|", encoding="utf-8")
        self.segments: list[hl7.Segment] = []

    def escape(self, text: str) -> str:
        """The library's escape for separators and controls; Vietnamese letters stay UTF-8
        (MSH-18 says so): the library would write code points as ``\\Xhh\\``, which HL7
        defines as bytes of the character set, and receivers would misread them."""
        return "".join(c if ord(c) > 0x7E else self.message.escape(c) for c in text)

    def field(self, value) -> hl7.Field:
        parts = value if isinstance(value, tuple) else (value,)
        m = self.message
        return m.create_field([m.create_repetition(
            [self.escape("" if p is None else str(p)) for p in parts])])

    def add(self, name: str, *values, header: bool = False) -> None:
        m = self.message
        head = [m.create_field([name])]
        if header:  # MSH-1 and MSH-2 are the separators themselves
            head += [m.create_field(["|"]), m.create_field(["^~\\&"])]
        self.segments.append(m.create_segment(head + [self.field(v) for v in values]))

    def build(self) -> hl7.Message:
        return self.message.create_message(self.segments)


def _hl7_time(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S%z")


def _start(kind: str, structure: str, msg_id: str, cfg: HL7Settings, now: dt.datetime,
           source: Dataset) -> _Builder:
    code, event = kind.split("^")
    b = _Builder()
    b.add("MSH", cfg.sending_application, cfg.sending_facility, cfg.receiving_application,
          cfg.receiving_facility, _hl7_time(now), "", (code, event, structure), msg_id, "P",
          VERSION, "", "", "", "", "", "UNICODE UTF-8", header=True)
    name = source.get("PatientName")
    family, given = ((name.family_name, name.given_name) if name else ("", ""))
    b.add("PID", "1", "", (str(source.get("PatientID", "") or ""), "", "", "", "MR"), "",
          (family, given))
    return b


def oru_r01(source: Dataset, prediction: Prediction, *, msg_id: str, cfg: HL7Settings,
            time_zone: str) -> hl7.Message:
    """The AI result about the study of ``source``, for the order with its accession number."""
    now = dt.datetime.now(ZoneInfo(time_zone))
    accession = str(source.get("AccessionNumber", "") or "")
    b = _start("ORU^R01", "ORU_R01", msg_id, cfg, now, source)
    b.add("ORC", "RE", "", accession)
    b.add("OBR", "1", "", accession, AI_RESULT, "", "",
          _hl7_time(now), *[""] * 17, "P")
    p = round(prediction.probability, 6)
    equipment = (f"{prediction.model} {prediction.version}", "HAIDANG")
    rows = [
        ("CWE", PNEUMONIA, PRESENT if prediction.finding else ABSENT, ""),
        ("NM", PROBABILITY, f"{p:g}", ("1", "no units", "UCUM")),
        ("ST", STUDY_UID, str(source.StudyInstanceUID), ""),
        ("TX", ("VI", "Kết luận AI", "L"),
         f"{verdict_vi(prediction.finding)} ({percent(p)}). {AI_DISCLAIMER_VI}", ""),
        ("TX", ("EN", "AI conclusion", "L"),
         f"{verdict_en(prediction.finding)} ({percent(p)}). {AI_DISCLAIMER_EN}", ""),
        ("ST", ("MODEL", "AI model and version", "L"),
         f"{prediction.model} {prediction.version} sha256:{prediction.sha256[:16]} "
         f"threshold {prediction.threshold:g}", ""),
    ]
    for n, (vtype, code, value, units) in enumerate(rows, start=1):
        b.add("OBX", str(n), vtype, code, "", value, units, "", "", "", "", "P", "", "",
              _hl7_time(now), "", "", "AI", equipment)
    b.add("NTE", "1", "L", "Kết quả AI chưa được bác sĩ xác nhận / unverified AI output")
    return b.build()


def priority_update(source: Dataset, prediction: Prediction, *, kind: str, msg_id: str,
                    cfg: HL7Settings, time_zone: str) -> hl7.Message:
    """Raise the order with the study's accession number to STAT (ORM^O01 or OMI^O23)."""
    now = dt.datetime.now(ZoneInfo(time_zone))
    accession = str(source.get("AccessionNumber", "") or "")
    structure = {"ORM^O01": "ORM_O01", "OMI^O23": "OMI_O23"}[kind]
    b = _start(kind, structure, msg_id, cfg, now, source)
    reason = (f"{verdict_vi(prediction.finding)} ({percent(prediction.probability)}) / "
              f"{verdict_en(prediction.finding)} - AI, unverified")
    timing = ("", "", "", "", "", STAT) if kind == "ORM^O01" else ""
    b.add("ORC", "XO", "", accession, "", "", "", timing, "", _hl7_time(now))
    if kind == "OMI^O23":
        b.add("TQ1", "1", "", "", "", "", "", "", "", (STAT, "Stat", "HL70485"))
    procedure = str(source.get("StudyDescription", "") or "") or "Imaging study"
    b.add("OBR", "1", "", accession, ("", procedure), STAT, "", "", "", "", "", "", "",
          reason, *[""] * 13, timing)
    if kind == "OMI^O23":
        b.add("IPC", accession, str(source.get("RequestedProcedureID", "") or accession),
              str(source.StudyInstanceUID),
              str(source.get("ScheduledProcedureStepID", "") or accession),
              str(source.get("Modality", "") or ""))
    b.add("NTE", "1", "L", f"Ưu tiên do AI đề xuất, chưa được bác sĩ xác nhận / priority "
          f"raised by unverified AI: {reason}")
    return b.build()
