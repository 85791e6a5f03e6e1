"""HL7 CDS Hooks 2.0: discovery, order-select / order-sign services, cards and feedback.

The EHR sends FHIR R4 resources (draft MedicationRequests in `context.draftOrders`, the
Patient, active Conditions and current MedicationRequests in `prefetch`); they are read with
`fhir.resources.R4B`, turned into the engine's `Prescription`, checked, and each alert
becomes a card. A card shown at order-select for a patient/encounter is not shown again at
order-sign (`serving.cdss.shared`: bounded in time, shared by the worker processes).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.cdss.models import DrugLine, InteractionAlert, Prescription, age_in_days

SELECT_SERVICE = "haidang-prescription-select"
SIGN_SERVICE = "haidang-prescription-sign"
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-vn",
                 "urn:oid:2.16.840.1.113883.6.3")
OVERRIDE_SYSTEM = "urn:haidang:cds:override-reason"
ALERT_KIND_SYSTEM = "urn:haidang:cds:alert-kind"

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=active",
    "medications": "MedicationRequest?patient={{context.patientId}}&status=active",
}

SERVICES = {
    SELECT_SERVICE: {
        "hook": "order-select",
        "id": SELECT_SERVICE,
        "title": "Hải Đăng – kiểm tra đơn thuốc (khi chọn thuốc)",
        "description": "Drug–drug interactions (MoH QĐ 5948/QĐ-BYT and curated), duplicate "
        "therapy, dose, ICD-10 and protocol checks for the drugs being selected.",
        "prefetch": PREFETCH,
    },
    SIGN_SERVICE: {
        "hook": "order-sign",
        "id": SIGN_SERVICE,
        "title": "Hải Đăng – kiểm tra đơn thuốc (khi ký đơn)",
        "description": "The same checks on the whole prescription before it is signed; cards "
        "already shown at order-select are not repeated.",
        "prefetch": PREFETCH,
    },
}

INDICATOR = {
    "contraindicated": "critical",
    "major": "warning",
    "moderate": "info",
    "minor": "info",
    "info": "info",
}
OVERRIDE_REASONS = [
    ("benefit-outweighs-risk", "Lợi ích vượt trội nguy cơ, sẽ theo dõi sát",
     "Benefit outweighs risk, will monitor"),
    ("already-tolerated", "Người bệnh đã dùng phối hợp này an toàn",
     "Patient already tolerates this combination"),
    ("not-applicable", "Cảnh báo không phù hợp với người bệnh này",
     "Alert does not apply to this patient"),
    ("will-adjust", "Sẽ điều chỉnh liều / thời điểm dùng", "Will adjust dose or timing"),
]


class CdsRequestError(ValueError):
    """The hook request cannot be used; the message names the field."""


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=200)
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=100)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = None
    overrideReason: dict[str, Any] | None = None
    outcomeTimestamp: str | None = None


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


# ---------------------------------------------------------------------- FHIR -> Prescription
def _fhir(model_name: str, data: Any, where: str):
    """Parse one resource with fhir.resources R4B; errors name the place in the request."""
    from pydantic.v1 import ValidationError as V1Error

    if model_name == "MedicationRequest":
        from fhir.resources.R4B.medicationrequest import MedicationRequest as M
    elif model_name == "Condition":
        from fhir.resources.R4B.condition import Condition as M
    else:
        from fhir.resources.R4B.patient import Patient as M
    if not isinstance(data, dict):
        raise CdsRequestError(f"{where}: expected a FHIR {model_name} object")
    try:
        return M.parse_obj(data)
    except (V1Error, ValueError, TypeError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(first[1:3]).strip() if len(first) > 1 else str(exc)
        raise CdsRequestError(f"{where}: invalid FHIR {model_name}: {detail}") from None


def _resources(container: Any, resource_type: str, where: str) -> list[tuple[dict, str]]:
    """Resources of one type in a Bundle, a single resource, or a list."""
    if container is None:
        return []
    if isinstance(container, list):
        items = [(x, f"{where}[{i}]") for i, x in enumerate(container)]
    elif isinstance(container, dict) and container.get("resourceType") == "Bundle":
        entries = container.get("entry") or []
        if not isinstance(entries, list):
            raise CdsRequestError(f"{where}.entry: expected a list")
        items = [((e or {}).get("resource") if isinstance(e, dict) else None,
                  f"{where}.entry[{i}].resource") for i, e in enumerate(entries)]
    else:
        items = [(container, where)]
    return [(r, w) for r, w in items if isinstance(r, dict)
            and r.get("resourceType") == resource_type]


_MASS_TO_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001, "ng": 1e-6}
_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0,
                "mo": 30.0, "a": 365.0}


def _structured_daily_mg(dosage) -> float | None:
    """dose × frequency / period, when the dose is a mass and the timing is regular."""
    try:
        rate = (dosage.doseAndRate or [None])[0]
        qty = rate.doseQuantity if rate is not None else None
        repeat = dosage.timing.repeat if dosage.timing else None
        if qty is None or qty.value is None or repeat is None:
            return None
        factor = _MASS_TO_MG.get((qty.code or qty.unit or "").lower())
        if factor is None or not repeat.frequency or not repeat.period:
            return None
        days = float(repeat.period) * _PERIOD_DAYS[repeat.periodUnit]
        if days <= 0:
            return None
        per_day = float(Decimal(qty.value)) * factor * float(repeat.frequency) / days
        return per_day
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
        return None


def _drug_line(mr, current: bool) -> DrugLine | None:
    concept = mr.medicationCodeableConcept
    text = None
    code = None
    if concept is not None:
        text = concept.text
        for coding in concept.coding or []:
            code = code or coding.code
            text = text or coding.display
    elif mr.medicationReference is not None:
        text = mr.medicationReference.display
    if not text and code:
        text = code
    if not text:
        text = ""
    dosage = (mr.dosageInstruction or [None])[0]
    return DrugLine(
        text=text,
        code=code,
        dosage=dosage.text if dosage is not None else None,
        daily_dose_mg=_structured_daily_mg(dosage) if dosage is not None else None,
        current=current,
        ref=f"MedicationRequest/{mr.id}" if mr.id else None,
    )


def prescription_from_hook(req: HookRequest) -> Prescription:
    """The prescription in a hook request: draft orders, current medications, conditions."""
    ctx = req.context
    prefetch = req.prefetch or {}
    if not isinstance(ctx.get("patientId"), str) or not ctx.get("patientId"):
        raise CdsRequestError("context.patientId: required (string)")
    drafts = ctx.get("draftOrders")
    if not isinstance(drafts, dict):
        raise CdsRequestError("context.draftOrders: required (a FHIR Bundle)")
    lines: list[DrugLine] = []
    draft_ids: set[str] = set()
    for data, where in _resources(drafts, "MedicationRequest", "context.draftOrders"):
        mr = _fhir("MedicationRequest", data, where)
        line = _drug_line(mr, current=False)
        if line is not None:
            lines.append(line)
            if mr.id:
                draft_ids.add(mr.id)
    for data, where in _resources(prefetch.get("medications"), "MedicationRequest",
                                  "prefetch.medications"):
        mr = _fhir("MedicationRequest", data, where)
        if mr.id in draft_ids or mr.status not in (None, "active", "on-hold"):
            continue
        line = _drug_line(mr, current=True)
        if line is not None:
            lines.append(line)
    codes: list[str] = []
    for source, where in ((prefetch.get("conditions"), "prefetch.conditions"),
                          (ctx.get("conditions"), "context.conditions")):
        for data, w in _resources(source, "Condition", where):
            cond = _fhir("Condition", data, w)
            status = cond.clinicalStatus.coding[0].code if (
                cond.clinicalStatus and cond.clinicalStatus.coding) else None
            if status not in (None, "active", "recurrence", "relapse"):
                continue
            for coding in (cond.code.coding or []) if cond.code else []:
                if coding.system in ICD10_SYSTEMS and coding.code and coding.code not in codes:
                    codes.append(coding.code)
    sex = None
    age = None
    pregnant = None
    patient = prefetch.get("patient")
    if isinstance(patient, dict):
        pt = _fhir("Patient", patient, "prefetch.patient")
        sex = pt.gender if pt.gender in ("male", "female") else None
        if pt.birthDate:
            age = age_in_days(pt.birthDate.strftime("%Y%m%d"))
    return Prescription(lines=lines, diagnoses=codes, sex=sex, age_days=age, pregnant=pregnant)


# ---------------------------------------------------------------------- alerts -> cards
def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _summary(alert: InteractionAlert, lang: str) -> str:
    return _short((alert.message_vi if lang == "vi" else alert.message_en).split(". ")[0])


def card_for(alert: InteractionAlert, lang: str, lines: list[DrugLine]) -> dict:
    """One CDS Hooks card; `lines` are the prescription's lines (for remove suggestions)."""
    vi = lang == "vi"
    message = alert.message_vi if vi else alert.message_en
    management = (alert.management_vi if vi else alert.management_en) or alert.management_vi
    parts = [message]
    if management:
        parts.append(("**Xử trí:** " if vi else "**Management (Vietnamese source):** "
                      if not alert.management_en else "**Management:** ") + management)
    if alert.icd:
        parts.append(("**Mã ICD-10:** " if vi else "**ICD-10:** ") + ", ".join(alert.icd))
    parts.append(("**Nguồn:** " if vi else "**Source:** ") + alert.source)
    parts.append("_Tri thức đang chờ dược sĩ lâm sàng thẩm định._" if vi
                 else "_Knowledge pending clinical pharmacist review._")
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(alert, lang),
        "detail": "\n\n".join(parts),
        "indicator": INDICATOR[alert.severity],
        "source": {
            "label": _short("Hải Đăng CDSS – " + alert.source.split(";")[0], 200),
            "topic": {"system": ALERT_KIND_SYSTEM, "code": alert.kind, "display": alert.kind},
        },
    }
    if card["indicator"] == "critical":
        card["overrideReasons"] = [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": v if vi else e}
            for code, v, e in OVERRIDE_REASONS
        ]
    suggestions = []
    if alert.kind in ("drug-drug", "duplicate", "drug-drug-predicted"):
        for index in alert.lines:
            line = lines[index] if 0 <= index < len(lines) else None
            if line is None or line.ref is None or line.current:
                continue
            label = _short((f"Bỏ “{line.text}” khỏi đơn" if vi
                            else f"Remove “{line.text}” from the order"), 80)
            suggestions.append({
                "label": label,
                "uuid": str(uuid.uuid4()),
                "actions": [{"type": "delete", "description": label, "resourceId": line.ref}],
            })
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    return card


def language(accept_language: str | None, default: str) -> str:
    """`vi` or `en` from the first language tag we serve, else the configured default."""
    if accept_language:
        for part in accept_language.split(","):
            tag = part.split(";")[0].strip().lower()
            if tag.startswith("vi"):
                return "vi"
            if tag.startswith("en"):
                return "en"
    return "en" if default == "en" else "vi"
