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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.cdss.names import STRENGTH

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
    """One line of THUOC (XML2 of QĐ 130/4750): TEN_THUOC, MA_THUOC or TEN_HOAT_CHAT.

    With the hospital's catalogue imported (`haidang cdss import-catalog`), MA_THUOC alone
    identifies the drug; MA_THUOC "00.0000" (outside the insurance list, QĐ 4750) never
    does, the line's TEN_HOAT_CHAT or TEN_THUOC does."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    TEN_THUOC: str | None = Field(None, min_length=1, max_length=1024,
                                  description="drug name as prescribed (brand or ingredient)")
    MA_THUOC: str | None = Field(
        None, max_length=255,
        description="ingredient code of the MoH common code set (QĐ 130 XML2); resolved "
        "through the hospital's imported catalogue; 00.0000 = outside the insurance list")
    TEN_HOAT_CHAT: str | None = Field(
        None, max_length=1024,
        description="Haidang extension: ingredient name(s), e.g. Amoxicilin + Acid clavulanic")
    HAM_LUONG: str | None = Field(None, max_length=1024, description="strength, e.g. 200mg")
    LIEU_DUNG: str | None = Field(
        None, max_length=1024, description="dosage, e.g. 1 viên/lần * 2 lần/ngày"
    )
    SO_LUONG: float | None = Field(None, ge=0, description="quantity dispensed")
    NGAY_TH_YL: str | None = Field(
        None, description="when the order is carried out, yyyymmddHHMM (QĐ 4750)")
    MA_KHOA: str | None = Field(None, max_length=50, description="department code (QĐ 4750)")
    DANG_DUNG: bool = Field(
        False, description="Haidang extension: a current medication, not a new order"
    )

    @field_validator("TEN_THUOC", "MA_THUOC", "TEN_HOAT_CHAT", "NGAY_TH_YL", "MA_KHOA",
                     mode="before")
    @classmethod
    def _blank(cls, v):
        return _blank_to_none(v)

    @field_validator("NGAY_TH_YL")
    @classmethod
    def _order_time(cls, v: str | None) -> str | None:
        return None if v is None else _check_date(v, partial=False)

    @field_validator("SO_LUONG", mode="before")
    @classmethod
    def _decimal_comma(cls, v):
        if isinstance(v, str):
            v = v.strip().replace(",", ".")
            return v or None
        return v

    @model_validator(mode="after")
    def _named(self):
        if self.TEN_THUOC is None and self.MA_THUOC is None and self.TEN_HOAT_CHAT is None:
            raise ValueError("give TEN_THUOC, MA_THUOC or TEN_HOAT_CHAT")
        return self


def _blank_to_none(v):
    if isinstance(v, str) and not v.strip():
        return None
    return v


OUTSIDE_LIST_CODE = "00.0000"  # QĐ 4750: an ingredient outside the insurance-paid list
MAX_SECONDARY_DIAGNOSES = 12  # QĐ 130 XML1 MA_BENH_KT: "tối đa 12 mã bệnh kèm theo"
MAX_AGE_YEARS = 130


def qd130_date(v: str) -> date:
    """The calendar date of a QĐ 130 date/time (yyyymmdd or yyyymmddHHMM); an unknown
    month or day written 00 (QĐ 130, NGAY_SINH) counts as the first."""
    return date(int(v[:4]), int(v[4:6]) or 1, int(v[6:8]) or 1)


def _check_date(v: str, partial: bool) -> str:
    if not (v.isdigit() and len(v) in (8, 12)):
        raise ValueError("must be yyyymmdd (8 digits) or yyyymmddHHMM (12 digits)")
    month, day = int(v[4:6]), int(v[6:8])
    if partial and month == 0 and day != 0:
        raise ValueError("an unknown month (00) needs an unknown day (00) too")
    if not partial and (month == 0 or day == 0):
        raise ValueError("is not a real calendar date")
    try:
        qd130_date(v)
    except ValueError:
        raise ValueError("is not a real calendar date") from None
    if len(v) == 12 and (int(v[8:10]) > 23 or int(v[10:12]) > 59):
        raise ValueError("HHMM is not a time of day (00:00-23:59)")
    return v


class PrescriptionCheckRequest(BaseModel):
    """A prescription in QĐ 130 field names (XML1 patient/diagnoses + XML2 drug lines)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    MA_LK: str | None = Field(None, max_length=100, description="treatment link id (hashed)")
    MA_BN: str | None = Field(None, max_length=100, description="patient id (hashed)")
    NGAY_SINH: str | None = Field(
        None, description="date of birth yyyymmddHHMM (QĐ 130) or yyyymmdd; an unknown day "
        "and month are written 00; a birth date in the future, after the visit or more than "
        "130 years back is refused (422)"
    )
    GIOI_TINH: int | None = Field(None, description="1 male, 2 female, 3 undetermined")
    MA_BENH_CHINH: str | None = Field(None, max_length=20, description="main diagnosis ICD-10")
    MA_BENH_KT: str | None = Field(
        None, max_length=500,
        description="secondary diagnoses ICD-10, separated by ';', at most 12 (QĐ 130)"
    )
    MANG_THAI: bool | None = Field(
        None, description="Haidang extension: the patient is pregnant (else inferred from ICD)"
    )
    NGAY_KHAM: str | None = Field(
        None, description="date of the visit yyyymmdd or yyyymmddHHMM (XML 130: NGAY_VAO); "
        "default today")
    THUOC: list[DrugLineIn] = Field(min_length=1, max_length=200)

    @field_validator("NGAY_SINH", "NGAY_KHAM", "MA_BENH_CHINH", "MA_BENH_KT", mode="before")
    @classmethod
    def _blank(cls, v):
        return _blank_to_none(v)

    @field_validator("NGAY_SINH", "NGAY_KHAM")
    @classmethod
    def _yyyymmdd(cls, v: str | None, info) -> str | None:
        # QĐ 130: a birth date with no known month/day is written with 00 there
        return None if v is None else _check_date(v, partial=info.field_name == "NGAY_SINH")

    @field_validator("MA_BENH_KT")
    @classmethod
    def _secondary(cls, v: str | None) -> str | None:
        if v is not None and len(diagnosis_codes(v)) > MAX_SECONDARY_DIAGNOSES:
            raise ValueError(f"at most {MAX_SECONDARY_DIAGNOSES} codes (QĐ 130 XML1), "
                             "separated by ';'")
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
        b = qd130_date(birth)
        d = qd130_date(on) if on else today
    except (ValueError, TypeError):
        return None
    days = (d - b).days
    return days if days >= 0 else None


def impossible_dates(req: PrescriptionCheckRequest) -> list[dict[str, str]]:
    """Dates no real patient has, each as {field, message}: a birth date in the future, after
    the visit, or more than 130 years before it. Checked on the validated request (422)."""
    if req.NGAY_SINH is None:
        return []
    birth = qd130_date(req.NGAY_SINH)
    today = _today()
    if birth > today:
        return [{"field": "NGAY_SINH", "message": f"birth date {req.NGAY_SINH} is in the "
                 "future; send the date on the patient's insurance card (yyyymmdd)"}]
    visit = qd130_date(req.NGAY_KHAM) if req.NGAY_KHAM else today
    if birth > visit:
        return [{"field": "NGAY_SINH", "message": f"birth date {req.NGAY_SINH} is after the "
                 f"visit date NGAY_KHAM {req.NGAY_KHAM}; check both dates"}]
    years = visit.year - birth.year - ((visit.month, visit.day) < (birth.month, birth.day))
    if years > MAX_AGE_YEARS:
        return [{"field": "NGAY_SINH", "message": f"birth date {req.NGAY_SINH} gives an age of "
                 f"{years} years (over {MAX_AGE_YEARS}); check the year"}]
    return []


def diagnosis_codes(text: str) -> list[str]:
    """MA_BENH_KT's codes (';'-separated in QĐ 130; ',' tolerated)."""
    return [c.strip() for c in text.replace(",", ";").split(";") if c.strip()]


_AGES: dict[tuple, int | None] = {}  # (birth, visit, today) -> age in days; bounded
_MISSING = object()
_SEX = {1: "male", 2: "female"}


def prescription_from_native(req: PrescriptionCheckRequest, catalog=None) -> Prescription:
    """The engine's prescription; `catalog` (`serving.cdss.catalog.HospitalCatalog`) turns a
    line's MA_THUOC, or the brand the hospital stocks, into its ingredients."""
    codes: list[str] = []
    if req.MA_BENH_CHINH:
        codes.append(req.MA_BENH_CHINH)
    if req.MA_BENH_KT:
        codes.extend(diagnosis_codes(req.MA_BENH_KT))
    # The validated fields straight from each line's __dict__ (pydantic keeps them there),
    # positionally: a third of the cost of attribute access and keywords, for 10+ lines.
    lines = [
        DrugLine(_line_text(t, catalog), t["MA_THUOC"], t["HAM_LUONG"], t["LIEU_DUNG"],
                 t["SO_LUONG"], None, t["DANG_DUNG"])
        for t in [line.__dict__ for line in req.THUOC]
    ]
    return Prescription(
        lines=lines,
        diagnoses=codes,
        sex=_SEX.get(req.GIOI_TINH or 0),
        age_days=age_in_days(req.NGAY_SINH, req.NGAY_KHAM),
        pregnant=req.MANG_THAI,
    )


def _line_text(t: dict, catalog) -> str:
    """The text the dictionary resolves for a line: the catalogue's ingredients when the
    line's MA_THUOC (or brand) is in it, else TEN_HOAT_CHAT, else TEN_THUOC; a line known
    only by an unknown code keeps the code, so its "not recognised" alert names it.
    (The catalogue never answers for MA_THUOC "00.0000": the name decides there.)"""
    name = t["TEN_HOAT_CHAT"] or t["TEN_THUOC"]
    code = t["MA_THUOC"]
    if catalog is not None:
        keys = catalog.ingredients_of(code) if code else None
        if keys is None and t["TEN_THUOC"]:
            keys = catalog.ingredients_of_brand(t["TEN_THUOC"])
        if keys:
            strength = STRENGTH.search(f"{t['HAM_LUONG'] or ''} {t['TEN_THUOC'] or ''}")
            if len(keys) == 1 and strength:  # the dose check reads it from the text
                return f"{keys[0]} {strength.group(0)}"
            return " + ".join(keys)
    return name or f"MA_THUOC {code}"
