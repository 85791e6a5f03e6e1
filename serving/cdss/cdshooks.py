"""HL7 CDS Hooks 2.0: discovery, order-select / order-sign services, cards and feedback.

The EHR sends FHIR R4 resources (draft MedicationRequests in `context.draftOrders`, the
Patient, active Conditions and current MedicationRequests in `prefetch`). They are read
with `fhir.resources.R4B`, tolerantly: an optional element that is malformed or unknown is
dropped, the check runs on the rest, and an info card lists what was ignored. Only an
unusable `context` fails the request. Drugs are identified from their codes
(`serving.cdss.coding`); what cannot be identified is a warning card naming the code.
Prefetch the EHR did not send is read from its FHIR server (`serving.cdss.fhir_client`),
else the answer is 412 as the specification says.

Card lifecycle: a card is not repeated within the same hook for the same draft orders; at
order-sign every contraindicated or major finding still in the orders is shown again (the
last chance before signing); at order-select with `selections`, only cards about the
selected orders (and their interactions with the others) are shown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.cdss import fhir_client
from serving.cdss.coding import MA_THUOC_SYSTEM, Code, DrugCoder, Identity, line_text
from serving.cdss.models import DrugLine, InteractionAlert, Prescription

SELECT_SERVICE = "haidang-prescription-select"
SIGN_SERVICE = "haidang-prescription-sign"
ICD10_SYSTEMS = ("http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-vn",
                 "urn:oid:2.16.840.1.113883.6.3")
OVERRIDE_SYSTEM = "urn:haidang:cds:override-reason"
ALERT_KIND_SYSTEM = "urn:haidang:cds:alert-kind"
SUMMARY_MAX = 139  # the specification: fewer than 140 characters
LABEL_MAX = 60
MAX_AGE_YEARS = 130

# R4 search parameters every FHIR server has; tokens are root-level context fields.
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
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
        "description": "The same checks on the whole prescription before it is signed; "
        "every contraindicated or major finding is shown again.",
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
# What FHIR requires but the check does not need: filled in only so the rest can be read.
_REQUIRED_FILL = {"status": "unknown", "intent": "order", "subject": {"display": "?"}}


class HookError(Exception):
    """The request cannot be answered; `status` is the HTTP status, the message names why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HookRequest(BaseModel):
    """The envelope; everything inside `context` and `prefetch` is read tolerantly."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=200)
    context: dict[str, Any]
    prefetch: Any = None
    fhirServer: Any = None
    fhirAuthorization: Any = None


class FeedbackItem(BaseModel):
    """CDS Hooks 2.0 feedback: `overrideReason` only with `overridden`,
    `acceptedSuggestions` only with `accepted`."""

    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=100)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = None
    overrideReason: dict[str, Any] | None = None
    outcomeTimestamp: str | None = None

    @model_validator(mode="after")
    def _per_outcome(self):
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason is only sent with outcome 'overridden'")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only sent with outcome 'accepted'")
        if self.overrideReason is not None:
            reason = self.overrideReason.get("reason")
            if reason is not None and not (isinstance(reason, dict)
                                           and isinstance(reason.get("code"), str)):
                raise ValueError("overrideReason.reason must be a Coding with a code")
        if self.outcomeTimestamp is not None:
            try:
                datetime.fromisoformat(self.outcomeTimestamp.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("outcomeTimestamp must be an ISO 8601 instant") from None
        return self


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


# ---------------------------------------------------------------------- tolerant FHIR
@dataclass
class Notes:
    """What the reading ignored or could not establish, for the response's cards."""

    ignored: list[str] = field(default_factory=list)  # "path: why"
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # (topic, vi, en)

    def ignore(self, where: str, why: str) -> None:
        if len(self.ignored) < 50:
            self.ignored.append(f"{where}: {why}")


def _model(name: str):
    if name == "MedicationRequest":
        from fhir.resources.R4B.medicationrequest import MedicationRequest as M
    elif name == "Condition":
        from fhir.resources.R4B.condition import Condition as M
    elif name == "Medication":
        from fhir.resources.R4B.medication import Medication as M
    else:
        from fhir.resources.R4B.patient import Patient as M
    return M


def _drop(data: dict, loc: list) -> bool:
    """Remove the element at `loc` (keys and list indexes) from `data`; False if absent."""
    node: Any = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        del node[last]
        return True
    return False


def _loc_text(loc: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def read_resource(name: str, data: Any, where: str, notes: Notes):
    """The resource parsed by fhir.resources, with what it could not read dropped (each
    drop noted), or None when nothing usable is left."""
    from pydantic.v1 import ValidationError as V1Error

    if not isinstance(data, dict):
        notes.ignore(where, f"not a FHIR {name} object")
        return None
    data = copy.deepcopy(data)
    model = _model(name)
    for _ in range(25):
        try:
            return model.parse_obj(data)
        except (V1Error, ValueError, TypeError, AttributeError, KeyError) as exc:
            # fhir.resources raises AttributeError on some shapes (a bool as a resource)
            errors = exc.errors() if isinstance(exc, V1Error) else []
            progressed = False
            for err in sorted(errors, key=lambda e: [(0, p) if isinstance(p, int) else (1, str(p))
                                                     for p in e["loc"]], reverse=True):
                loc = [p for p in err["loc"] if p != "__root__"]
                if not loc and "medicationCodeableConcept" in err["msg"]:
                    data["medicationCodeableConcept"] = {}
                    notes.ignore(where, "no medication[x] (the drug is unknown)")
                    progressed = True
                elif len(loc) == 1 and err["type"] == "value_error.missing" \
                        and loc[0] in _REQUIRED_FILL and loc[0] not in data:
                    data[loc[0]] = copy.deepcopy(_REQUIRED_FILL[loc[0]])
                    notes.ignore(f"{where}.{loc[0]}", "missing (required by FHIR R4); read anyway")
                    progressed = True
                elif loc and _drop(data, loc):
                    notes.ignore(where + _loc_text(loc), err["msg"])
                    progressed = True
            if not progressed:
                notes.ignore(where, f"not a readable FHIR {name}")
                return None
    notes.ignore(where, f"not a readable FHIR {name}")
    return None


def _resources(container: Any, resource_type: str, where: str,
               notes: Notes | None = None) -> list[tuple[dict, str]]:
    """Resources of one type in a Bundle, a single resource, or a list."""
    if container is None:
        return []
    if isinstance(container, list):
        items = [(x, f"{where}[{i}]") for i, x in enumerate(container)]
    elif isinstance(container, dict) and container.get("resourceType") == "Bundle":
        entries = container.get("entry") or []
        if not isinstance(entries, list):
            if notes is not None:
                notes.ignore(f"{where}.entry", "not a list")
            return []
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
        return float(qty.value) * factor * float(repeat.frequency) / days
    except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError):
        return None


def _codes(concept) -> tuple[list[Code], str | None]:
    if concept is None:
        return [], None
    return ([Code(c.system, c.code, c.display) for c in concept.coding or []], concept.text)


# ---------------------------------------------------------------------- the request read
@dataclass
class HookPrescription:
    """A hook request read: the engine's prescription and what the cards need besides."""

    rx: Prescription
    notes: Notes
    identities: dict[int, Identity]  # line index -> how its drug was (not) identified
    selected: set[int] | None  # order-select `selections` as line indexes; None: all
    drafts_digest: str


def _ref_id(reference: str | None) -> tuple[str | None, str | None]:
    """("Medication", "123") from "Medication/123", an absolute URL, or ("#", "m1")."""
    if not reference:
        return None, None
    if reference.startswith("#"):
        return "#", reference[1:]
    parts = reference.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (None, None)


class HookService:
    """Reads hook requests into prescriptions and turns alerts into cards."""

    def __init__(self, kb, catalog=None, settings=None):
        self.coder = DrugCoder(kb, catalog, ma_thuoc_systems=tuple(
            getattr(settings, "ma_thuoc_systems", None) or (MA_THUOC_SYSTEM,)))
        self.fhir_timeout_s = getattr(settings, "fhir_timeout_s", 2.0)
        self.fhir_servers = tuple(getattr(settings, "fhir_servers", ()) or ())

    # ------------------------------------------------------------------ prefetch
    async def _prefetch(self, req: HookRequest, notes: Notes):
        """The prefetch, with what is missing read from the FHIR server (or HookError 412),
        and the FHIR access for later reads (None when there is no usable server)."""
        prefetch = req.prefetch
        if prefetch is None:
            prefetch = {}
        if not isinstance(prefetch, dict):
            notes.ignore("prefetch", "not an object")
            prefetch = {}
        prefetch = dict(prefetch)
        missing: dict[str, str] = {}
        for key in PREFETCH:
            value = prefetch.get(key, ...)
            if value is ...:
                missing[key] = "not sent"
            elif isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
                missing[key] = "the EHR reported an error (OperationOutcome)"
                prefetch.pop(key)
        access = None
        try:
            access = fhir_client.FhirAccess.from_request(
                req.fhirServer, req.fhirAuthorization, self.fhir_timeout_s, self.fhir_servers)
        except fhir_client.FhirUnavailable as exc:
            if missing:
                keys = ", ".join(f"{k} ({why})" for k, why in missing.items())
                raise HookError(412, f"prefetch {keys} missing and the FHIR server cannot be "
                                f"read: {exc}. Send the prefetch of /cds-services, or "
                                "fhirServer with fhirAuthorization.") from None
            if req.fhirServer is not None or req.fhirAuthorization is not None:
                notes.ignore("fhirServer", str(exc))
        if missing and access is not None:
            queries = {k: fhir_client.fill(PREFETCH[k], req.context) for k in missing}
            try:
                prefetch.update(await fhir_client.read_all(access, queries))
            except fhir_client.FhirUnavailable as exc:
                raise HookError(412, f"prefetch {', '.join(missing)} missing and the FHIR "
                                f"server could not give it: {exc}") from None
        return prefetch, access

    # ------------------------------------------------------------------ medications
    async def _medication(self, mr, raw_bundles: list, access, notes: Notes, where: str):
        """The Medication a medicationReference points to: contained, sent, or read."""
        kind, ident = _ref_id(mr.medicationReference.reference)
        if kind == "#":
            for res in mr.contained or []:
                if getattr(res, "resource_type", None) == "Medication" and res.id == ident:
                    return res
            notes.ignore(f"{where}.medicationReference", f"contained #{ident} not found")
            return None
        if kind != "Medication" or not ident:
            return None
        for container, w in raw_bundles:
            for data, wm in _resources(container, "Medication", w):
                if data.get("id") == ident:
                    return read_resource("Medication", data, wm, notes)
        if access is not None:
            try:
                got = await fhir_client.read_all(
                    access, {"medication": f"Medication/{quote(ident, safe='')}"})
                return read_resource("Medication", got.get("medication"),
                                     f"fhirServer Medication/{ident}", notes)
            except fhir_client.FhirUnavailable as exc:
                notes.ignore(f"{where}.medicationReference", str(exc))
        return None

    def _identify_medication(self, med) -> Identity:
        codes, text = _codes(med.code)
        found = self.coder.identify(codes, [text])
        if found.ingredients or not med.ingredient:
            return found
        keys: list[str] = []
        all_codes = list(codes)
        for item in med.ingredient:
            icodes, itext = _codes(getattr(item, "itemCodeableConcept", None))
            ref = getattr(item, "itemReference", None)
            one = self.coder.identify(icodes, [itext, ref.display if ref is not None else None])
            all_codes.extend(icodes)
            keys.extend(k for k in one.ingredients if k not in keys)
            if not one.ingredients:
                return Identity((), "", tuple(all_codes))  # a part unknown: not checked
        return Identity(tuple(keys), "ingredient", tuple(all_codes))

    async def _line(self, mr, current: bool, raw_bundles, access, notes: Notes, where: str):
        identity = None
        label = None
        if mr.medicationCodeableConcept is not None:
            codes, text = _codes(mr.medicationCodeableConcept)
            identity = self.coder.identify(codes, [text])
            label = text or next((c.display for c in codes if c.display), None)
        elif mr.medicationReference is not None:
            med = await self._medication(mr, raw_bundles, access, notes, where)
            label = mr.medicationReference.display
            if med is not None:
                identity = self._identify_medication(med)
                label = label or (med.code.text if med.code else None)
            else:
                identity = self.coder.identify([], [label])
        if identity is None:
            identity = Identity((), "")
        dosage = (mr.dosageInstruction or [None])[0]
        if identity.via == "text" and \
                self.coder.by_dictionary(identity.text) == identity.ingredients:
            text = identity.text  # the prescribed words: the engine reads the strength too
        elif identity.ingredients:
            text = line_text(identity.ingredients)
        else:
            text = label or " ".join(c.label() for c in identity.codes)
        return DrugLine(
            text=text,
            code=next((c.code for c in identity.codes if c.code), None),
            dosage=dosage.text if dosage is not None else None,
            daily_dose_mg=_structured_daily_mg(dosage) if dosage is not None else None,
            current=current,
            ref=f"MedicationRequest/{mr.id}" if mr.id else None,
        ), identity

    # ------------------------------------------------------------------ whole request
    async def read(self, req: HookRequest) -> HookPrescription:
        """The prescription of a hook request; HookError for an unusable context (422) or
        prefetch that can be neither found nor read (412)."""
        ctx = req.context
        notes = Notes()
        if not isinstance(ctx.get("patientId"), str) or not ctx.get("patientId"):
            raise HookError(422, "context.patientId: required (string)")
        drafts = ctx.get("draftOrders")
        if not isinstance(drafts, dict) or drafts.get("resourceType") != "Bundle":
            raise HookError(422, "context.draftOrders: required (a FHIR Bundle)")
        prefetch, access = await self._prefetch(req, notes)
        raw_bundles = [(drafts, "context.draftOrders")] + [
            (v, f"prefetch.{k}") for k, v in prefetch.items()]
        lines: list[DrugLine] = []
        identities: dict[int, Identity] = {}
        draft_ids: set[str] = set()
        refs: dict[str, int] = {}
        authored: list[date] = []
        for data, where in _resources(drafts, "MedicationRequest", "context.draftOrders", notes):
            mr = read_resource("MedicationRequest", data, where, notes)
            if mr is None:
                identities[len(lines)] = Identity((), "")
                lines.append(DrugLine(text="", ref=None))
                continue
            line, identity = await self._line(mr, False, raw_bundles, access, notes, where)
            identities[len(lines)] = identity
            if mr.id:
                draft_ids.add(mr.id)
                refs[f"MedicationRequest/{mr.id}"] = len(lines)
            if isinstance(mr.authoredOn, datetime):
                authored.append(mr.authoredOn.date())
            elif isinstance(mr.authoredOn, date):  # a partial date ("2026") stays unused
                authored.append(mr.authoredOn)
            lines.append(line)
        if _resources(drafts, "MedicationOrder", "context.draftOrders"):
            notes.warnings.append((
                "input-not-checked",
                "Đơn có MedicationOrder (FHIR DSTU2): dịch vụ chỉ đọc MedicationRequest (FHIR "
                "R4), các thuốc này CHƯA được kiểm tra.",
                "The orders hold MedicationOrder (FHIR DSTU2): this service reads FHIR R4 "
                "MedicationRequest only; those drugs were NOT checked."))
        for data, where in _resources(prefetch.get("medications"), "MedicationRequest",
                                      "prefetch.medications", notes):
            mr = read_resource("MedicationRequest", data, where, notes)
            if mr is None or mr.id in draft_ids or mr.status not in (None, "active", "on-hold",
                                                                     "unknown"):
                continue
            line, identity = await self._line(mr, True, raw_bundles, access, notes, where)
            identities[len(lines)] = identity
            lines.append(line)
        codes = self._conditions(prefetch.get("conditions"), ctx.get("conditions"), notes)
        sex, age = self._patient(prefetch.get("patient"), min(authored, default=None), notes)
        selected = self._selections(req, refs, notes)
        digest = hashlib.sha256(json.dumps(drafts, sort_keys=True, ensure_ascii=False,
                                           default=str).encode()).hexdigest()[:16]
        return HookPrescription(
            rx=Prescription(lines=lines, diagnoses=codes, sex=sex, age_days=age),
            notes=notes, identities=identities, selected=selected, drafts_digest=digest)

    def _conditions(self, prefetched, in_context, notes: Notes) -> list[str]:
        codes: list[str] = []
        for source, where in ((prefetched, "prefetch.conditions"),
                              (in_context, "context.conditions")):
            for data, w in _resources(source, "Condition", where, notes):
                cond = read_resource("Condition", data, w, notes)
                if cond is None:
                    continue
                status = cond.clinicalStatus.coding[0].code if (
                    cond.clinicalStatus and cond.clinicalStatus.coding) else None
                if status not in (None, "active", "recurrence", "relapse"):
                    continue
                for coding in (cond.code.coding or []) if cond.code else []:
                    if coding.system in ICD10_SYSTEMS and coding.code and coding.code not in codes:
                        codes.append(coding.code)
        return codes

    def _patient(self, data, visit: date | None, notes: Notes):
        """(sex, age in days); an impossible birth date is a warning and no age."""
        if not isinstance(data, dict) or data.get("resourceType") != "Patient":
            if data is not None:
                notes.ignore("prefetch.patient", "not a FHIR Patient")
            return None, None
        pt = read_resource("Patient", data, "prefetch.patient", notes)
        if pt is None:
            return None, None
        sex = pt.gender if pt.gender in ("male", "female") else None
        birth = pt.birthDate
        if birth is None:
            return sex, None
        if isinstance(birth, str):  # FHIR allows "1958" and "1958-03"
            parts = birth.split("-")
            try:
                birth = date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, 1)
            except ValueError:
                return sex, None
        today = date.today()
        on = visit or today
        shown = pt.birthDate if isinstance(pt.birthDate, str) else birth.isoformat()
        if birth > today:
            notes.warnings.append((
                "patient-data",
                f"Ngày sinh {shown} ở tương lai: không kiểm tra được theo tuổi.",
                f"Birth date {shown} is in the future: age-based checks were not done."))
            return sex, None
        if birth > on:
            notes.warnings.append((
                "patient-data",
                f"Ngày sinh {shown} sau ngày kê đơn {on.isoformat()}: không kiểm tra theo tuổi.",
                f"Birth date {shown} is after the order date {on.isoformat()}: age-based "
                "checks were not done."))
            return sex, None
        years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
        if years > MAX_AGE_YEARS:
            notes.warnings.append((
                "patient-data",
                f"Ngày sinh {shown} cho tuổi trên 130: không kiểm tra được theo tuổi.",
                f"Birth date {shown} gives an age over 130 years: age-based checks were "
                "not done."))
            return sex, None
        return sex, (on - birth).days

    def _selections(self, req: HookRequest, refs: dict[str, int], notes: Notes):
        if req.hook != "order-select":
            return None
        raw = req.context.get("selections")
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
            notes.ignore("context.selections", "not a list of references")
            return None
        return {refs[s] for s in raw if s in refs}

    # ------------------------------------------------------------------ cards
    def note_cards(self, hp: HookPrescription, lang: str) -> list[dict]:
        """Cards about the request itself: impossible patient data, ignored elements."""
        vi = lang == "vi"
        cards = []
        for topic, text_vi, text_en in hp.notes.warnings:
            text = text_vi if vi else text_en
            cards.append(_plain_card(text, text, "warning", topic))
        if hp.notes.ignored:
            listed = "\n".join(f"- `{x}`" for x in hp.notes.ignored)
            summary = (f"Đã bỏ qua {len(hp.notes.ignored)} phần tử FHIR không đọc được; "
                       "phần còn lại đã được kiểm tra" if vi else
                       f"{len(hp.notes.ignored)} unreadable FHIR element(s) ignored; the "
                       "rest was checked")
            cards.append(_plain_card(summary, ("Bỏ qua:\n" if vi else "Ignored:\n") + listed,
                                     "info", "input-ignored"))
        return cards

    def card(self, alert: InteractionAlert, lang: str, hp: HookPrescription) -> dict:
        """The alert's card; a drug not recognised is a warning naming its codes."""
        if alert.kind == "unrecognised-drug":
            return self._unrecognised_card(alert, lang, hp)
        return card_for(alert, lang, hp.rx.lines)

    def _unrecognised_card(self, alert, lang: str, hp: HookPrescription) -> dict:
        vi = lang == "vi"
        index = alert.lines[0] if alert.lines else -1
        identity = hp.identities.get(index) or Identity((), "")
        line = hp.rx.lines[index] if 0 <= index < len(hp.rx.lines) else None
        codes = ", ".join(c.label() for c in identity.codes)
        text = line.text if line is not None else ""
        parts = [f"“{text}”"] if text and text != " ".join(
            c.label() for c in identity.codes) else []
        named = " – ".join(parts + ([codes] if codes else [])) or (
            "(không có tên/mã)" if vi else "(no name or code)")
        summary = (f"Thuốc không nhận diện được, CHƯA kiểm tra: {named}" if vi
                   else f"Drug not recognised, NOT checked: {named}")
        detail = (f"Mã/tên {named} không có trong từ điển thuốc của Hải Đăng (ATC, RxNorm, "
                  "MA_THUOC của bệnh viện, tên hoạt chất): tương tác, liều và chỉ định của "
                  "thuốc này CHƯA được kiểm tra." if vi else
                  f"{named} is not in Haidang's drug dictionary (ATC, RxNorm, the hospital's "
                  "MA_THUOC, ingredient names): its interactions, dose and indication were NOT "
                  "checked.")
        return _plain_card(summary, detail, "warning", "unrecognised-drug")


def _short(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.–-") + "…"


def _summary(alert: InteractionAlert, lang: str) -> str:
    return _short((alert.message_vi if lang == "vi" else alert.message_en).split(". ")[0],
                  SUMMARY_MAX)


def _label(source: str) -> str:
    """The source's short name (`QĐ 5948/QĐ-BYT`), its full citation going in `detail`."""
    short = source
    for mark in (",", ";", " ("):
        short = short.split(mark)[0]
    return _short("Hải Đăng CDSS · " + short.strip(), LABEL_MAX)


def _plain_card(summary: str, detail: str, indicator: str, topic: str) -> dict:
    """A card about the request itself (never critical, so no override reasons)."""
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": _short(summary, SUMMARY_MAX),
        "detail": detail,
        "indicator": indicator,
        "source": {"label": "Hải Đăng CDSS",
                   "topic": {"system": ALERT_KIND_SYSTEM, "code": topic, "display": topic}},
    }
    return card


def _override_reasons(lang: str) -> list[dict]:
    vi = lang == "vi"
    return [{"system": OVERRIDE_SYSTEM, "code": code, "display": v if vi else e}
            for code, v, e in OVERRIDE_REASONS]


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
            "label": _label(alert.source),
            "topic": {"system": ALERT_KIND_SYSTEM, "code": alert.kind, "display": alert.kind},
        },
    }
    if card["indicator"] == "critical":
        card["overrideReasons"] = _override_reasons(lang)
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


def shown_again(hook: str, alert: InteractionAlert) -> bool:
    """At order-sign (the last chance) a contraindicated or major finding is always shown."""
    return hook == "order-sign" and alert.severity in ("contraindicated", "major")


def visible(alert: InteractionAlert, hp: HookPrescription) -> bool:
    """With `selections`: cards about a selected order, or about no order in particular."""
    return hp.selected is None or not alert.lines or bool(set(alert.lines) & hp.selected)


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


_INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}


async def answer(state, hook: HookRequest, lang: str, caller_id: str, started: float) -> dict:
    """The service response to one hook call (HookError: 412 / 422 with the reason).

    `state`: the routes' shared state (engine, hooks, audit, shown, cards)."""
    service: HookService = state.hooks
    hp = await service.read(hook)
    result = state.engine.check(hp.rx, channel="cds-hooks")  # [cdss] threshold
    patient = hook.context.get("patientId")
    scope = state.audit.pseudonym(f"{patient}|{hook.context.get('encounterId') or ''}") or ""
    scope = f"{scope}|{hook.hook}|{hp.drafts_digest}"
    cards = []
    shown_ids = []
    for alert in result.alerts:
        if not visible(alert, hp):
            continue
        if not shown_again(hook.hook, alert) and state.shown.seen(scope, alert.id):
            continue  # already shown by this hook for these same draft orders
        state.shown.remember(scope, alert.id)
        card = service.card(alert, lang, hp)
        state.cards.add(card["uuid"], alert)
        cards.append(card)
        shown_ids.append(alert.id)
    cards.extend(service.note_cards(hp, lang))
    cards.sort(key=lambda c: _INDICATOR_RANK[c["indicator"]])
    state.audit.record(
        "check", {"patient": str(patient)}, api="cds-hooks", hook=hook.hook, caller=caller_id,
        hook_instance=hook.hookInstance, lines=len(hp.rx.lines),
        alerts=[a.id for a in result.alerts], shown=shown_ids,
        ignored=len(hp.notes.ignored), ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return {"cards": cards}
