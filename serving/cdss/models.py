"""Wire models of the prescription check: what an HIS sends and what Haidang answers.

The native request carries the field names of QĐ 130/QĐ-BYT (XML 130) so a Vietnamese HIS
can send what it already produces. Unknown fields are ignored (an XML1 record has dozens);
patient identifiers among them are never stored, only hashed in the audit log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Severity = Literal["contraindicated", "major", "moderate", "minor", "info"]
AlertKind = Literal[
    "drug-drug",
    "duplicate",
    "dose",
    "icd-invalid",
    "icd-specificity",
    "sex-age",
    "indication",
    "contraindication",
    "pregnancy",
    "unrecognised-drug",
    "drug-drug-predicted",  # serving.cdss.learned: a pair the KB lacks, scored by a model
    "unusual-drug",  # serving.cdss.learned: rarely prescribed for these diagnoses
]

SEVERITY_RANK: dict[str, int] = {
    "contraindicated": 4,
    "major": 3,
    "moderate": 2,
    "minor": 1,
    "info": 0,
}


class InteractionAlert(BaseModel):
    """One finding about the prescription, in Vietnamese and English."""

    id: str = Field(description="stable id of this finding (same prescription, same id)")
    kind: AlertKind
    severity: Severity
    drugs: list[str] = Field(default_factory=list, description="normalised ingredient names (INN)")
    icd: list[str] = Field(default_factory=list, description="ICD-10 codes involved")
    lines: list[int] = Field(
        default_factory=list, description="0-based indexes of the THUOC lines involved"
    )
    message_vi: str
    message_en: str
    management_vi: str | None = None
    management_en: str | None = None
    source: str = Field(description="where the knowledge comes from")


Alert = InteractionAlert


class DrugLineIn(BaseModel):
    """One line of THUOC (XML2 of QĐ 130): only TEN_THUOC is required."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    TEN_THUOC: str = Field(min_length=1, max_length=500, description="drug name as prescribed")
    MA_THUOC: str | None = Field(None, max_length=200, description="MoH drug code or ATC")
    HAM_LUONG: str | None = Field(None, max_length=200, description="strength, e.g. 200mg")
    LIEU_DUNG: str | None = Field(
        None, max_length=500, description="dosage, e.g. 1 viên/lần * 2 lần/ngày"
    )
    SO_LUONG: float | None = Field(None, ge=0, description="quantity dispensed")
    DANG_DUNG: bool = Field(
        False, description="Haidang extension: a current medication, not a new order"
    )

    @field_validator("SO_LUONG", mode="before")
    @classmethod
    def _decimal_comma(cls, v):
        if isinstance(v, str):
            v = v.strip().replace(",", ".")
            return v or None
        return v


def _blank_to_none(v):
    if isinstance(v, str) and not v.strip():
        return None
    return v


class PrescriptionCheckRequest(BaseModel):
    """A prescription in QĐ 130 field names (XML1 patient/diagnoses + XML2 drug lines)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    MA_LK: str | None = Field(None, max_length=100, description="treatment link id (hashed)")
    MA_BN: str | None = Field(None, max_length=100, description="patient id (hashed)")
    NGAY_SINH: str | None = Field(
        None, description="date of birth yyyymmdd (QĐ 130 also allows yyyymmddHHMM)"
    )
    GIOI_TINH: int | None = Field(None, description="1 male, 2 female, 3 undetermined")
    MA_BENH_CHINH: str | None = Field(None, max_length=20, description="main diagnosis ICD-10")
    MA_BENH_KT: str | None = Field(
        None, max_length=500, description="secondary diagnoses ICD-10, separated by ';'"
    )
    MANG_THAI: bool | None = Field(
        None, description="Haidang extension: the patient is pregnant (else inferred from ICD)"
    )
    NGAY_KHAM: str | None = Field(None, description="date of the visit yyyymmdd (default today)")
    THUOC: list[DrugLineIn] = Field(min_length=1, max_length=200)

    @field_validator("NGAY_SINH", "NGAY_KHAM", "MA_BENH_CHINH", "MA_BENH_KT", mode="before")
    @classmethod
    def _blank(cls, v):
        return _blank_to_none(v)

    @field_validator("NGAY_SINH", "NGAY_KHAM")
    @classmethod
    def _yyyymmdd(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not (v.isdigit() and len(v) in (8, 12)):
            raise ValueError("must be yyyymmdd (8 digits) or yyyymmddHHMM (12 digits)")
        try:
            date(int(v[:4]), int(v[4:6]), int(v[6:8]))
        except ValueError:
            raise ValueError("is not a real calendar date") from None
        return v

    @field_validator("GIOI_TINH", mode="before")
    @classmethod
    def _sex(cls, v):
        v = _blank_to_none(v)
        if v is None:
            return None
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if v not in (1, 2, 3):
            raise ValueError("must be 1 (male), 2 (female) or 3 (undetermined)")
        return v


class PrescriptionCheckResponse(BaseModel):
    alerts: list[InteractionAlert]
    recognised: list[str] = Field(
        default_factory=list, description="ingredient names recognised, one entry per line"
    )
    knowledge_version: str | None = None


# id(alert) -> (alert, its JSON). The engine reuses alert objects across requests (they are
# never modified); holding the object keeps its id from being reused while cached.
_ALERT_JSON: dict[int, tuple[InteractionAlert, bytes]] = {}


def _alert_json(alert: InteractionAlert) -> bytes:
    hit = _ALERT_JSON.get(id(alert))
    if hit is not None and hit[0] is alert:
        return hit[1]
    data = alert.model_dump_json().encode()
    if len(_ALERT_JSON) >= 20_000:
        _ALERT_JSON.clear()
    _ALERT_JSON[id(alert)] = (alert, data)
    return data


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                          check_circular=False).encode
# A string (an ingredient label, the knowledge version) -> its JSON; bounded.
_STRING_JSON: dict[str | None, bytes] = {}


def _string_json(value: str | None) -> bytes:
    data = _STRING_JSON.get(value)
    if data is None:
        data = _ENCODE(value).encode()
        if len(_STRING_JSON) >= 20_000:
            _STRING_JSON.clear()
        _STRING_JSON[value] = data
    return data


def response_json(alerts: list[InteractionAlert], recognised: list[str],
                  knowledge_version: str | None) -> bytes:
    """`PrescriptionCheckResponse` as JSON bytes, assembled from each alert's and each
    label's cached JSON.

    One join (no copies of the answer per piece): the route returns these bytes as they
    are, so FastAPI neither validates nor re-serialises the answer."""
    return b"".join((
        b'{"alerts":[', b",".join([_alert_json(a) for a in alerts]),
        b'],"recognised":[', b",".join([_string_json(r) for r in recognised]),
        b'],"knowledge_version":', _string_json(knowledge_version), b"}",
    ))


# ---- the engine's own view of a prescription (native and FHIR requests both map to it) ----


@dataclass(slots=True)
class DrugLine:
    """A drug as ordered, before matching against the dictionary (not frozen: cheaper)."""

    text: str
    code: str | None = None
    strength: str | None = None
    dosage: str | None = None
    quantity: float | None = None
    daily_dose_mg: float | None = None  # when the caller gives a structured dose (FHIR)
    current: bool = False  # already taken by the patient, not part of this order
    ref: str | None = None  # e.g. "MedicationRequest/123" for CDS Hooks suggestions


@dataclass(slots=True)
class Prescription:
    lines: list[DrugLine]
    diagnoses: list[str] = field(default_factory=list)  # main diagnosis first
    sex: Literal["male", "female"] | None = None
    age_days: int | None = None
    pregnant: bool | None = None


def _today() -> date:
    """The local date, recomputed only past the next local midnight (not every request)."""
    global _TODAY
    today, start, end = _TODAY
    now = time.time()
    if not start <= now < end:  # a new day (or the clock was set back)
        today = date.today()
        start = datetime.combine(today, datetime.min.time()).timestamp()
        end = datetime.combine(today + timedelta(days=1), datetime.min.time()).timestamp()
        _TODAY = (today, start, end)
    return today


_TODAY: tuple[date, float, float] = (date.min, 0.0, 0.0)  # local date, its start and end


def age_in_days(birth: str | None, on: str | None = None) -> int | None:
    if not birth:
        return None
    today = None if on else _today()
    key = (birth, on, today)
    days = _AGES.get(key, _MISSING)
    if days is _MISSING:
        days = _age_in_days(birth, on, today)
        if len(_AGES) >= 10_000:
            _AGES.clear()
        _AGES[key] = days
    return days


def _age_in_days(birth: str, on: str | None, today: date | None) -> int | None:
    try:
        b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        d = date(int(on[:4]), int(on[4:6]), int(on[6:8])) if on else today
    except (ValueError, TypeError):
        return None
    days = (d - b).days
    return days if days >= 0 else None


_AGES: dict[tuple, int | None] = {}  # (birth, visit, today) -> age in days; bounded
_MISSING = object()
_SEX = {1: "male", 2: "female"}


def prescription_from_native(req: PrescriptionCheckRequest) -> Prescription:
    codes: list[str] = []
    if req.MA_BENH_CHINH:
        codes.append(req.MA_BENH_CHINH)
    if req.MA_BENH_KT:
        codes.extend(c.strip() for c in req.MA_BENH_KT.replace(",", ";").split(";") if c.strip())
    # The validated fields straight from each line's __dict__ (pydantic keeps them there),
    # positionally: a third of the cost of attribute access and keywords, for 10+ lines.
    lines = [
        DrugLine(t["TEN_THUOC"], t["MA_THUOC"], t["HAM_LUONG"], t["LIEU_DUNG"], t["SO_LUONG"],
                 None, t["DANG_DUNG"])
        for t in [line.__dict__ for line in req.THUOC]
    ]
    return Prescription(
        lines=lines,
        diagnoses=codes,
        sex=_SEX.get(req.GIOI_TINH or 0),
        age_days=age_in_days(req.NGAY_SINH, req.NGAY_KHAM),
        pregnant=req.MANG_THAI,
    )
