"""The worklist a radiologist works from: who, what, when, what the AI said, how urgent.

``worklist_router(settings, index)`` gives the page (``/worklist``: sign-in form until a
session exists), its data (``/api/worklist``, with filters), the radiologist's answers
("agree" / "AI was wrong: reason", and "read"), and the visual-summary thumbnails; the web
app of ``haidang up`` mounts it. Everything that shows or changes patient data goes through
:class:`dicom_gateway.signin.SignIn` (session or API key, CSRF on changes, audited).

Patient name, ID, accession number, age, sex, description, study date and time come from
the header the gateway records at ingest (``header.STUDY_KEYS``). Times are shown in the
hospital's time zone (``worklist.time_zone``) as dd/mm/yyyy HH:MM. The viewer link fills
``worklist.viewer_url``. Time to flag = result in PACS (or, with no PACS configured, result
ready) − last instance received − the quiet period the study waited.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from dicom_gateway.analyses import TRACE_ANALYSIS
from dicom_gateway.deid import LABEL_OF_VERDICT
from dicom_gateway.index import Index, ResultView, StudyView
from dicom_gateway.oidc import configured
from dicom_gateway.signin import Reader, SignIn, signin_router
from dicom_gateway.spool import thumbnail_dir
from haidang.ground import audit
from haidang.ground.settings import WorklistSettings

STATIC = Path(__file__).parent / "static"
# "AI was wrong": a flagged finding was not there; a study called normal had one
CORRECTED = {"pneumonia": "normal", "abnormal": "normal", "normal": "abnormal"}
_THUMB = re.compile(r"^[A-Za-z0-9._-]+\.png$")
_AGE = re.compile(r"^(\d{3})([DWMY])$")


@dataclass(frozen=True)
class WorklistRow:
    """One study as the page shows it."""

    study_uid: str
    patient_name: str
    patient_id: str
    accession_number: str
    age: str  # DICOM Age String, e.g. 045Y (from the header, else birth date and study date)
    sex: str  # M, F, O or ""
    modality: str
    description: str
    study_datetime: str  # dd/mm/yyyy HH:MM as the modality wrote it (the hospital's clock)
    received: str  # dd/mm/yyyy HH:MM in the hospital's time zone
    received_ts: float
    instances: int
    status: str
    priority: str
    analysis: str | None
    verdict: str | None
    finding: bool | None
    probability: float | None
    band: str | None  # the probability's decile, e.g. 80–90%
    threshold: float | None
    model: str | None
    version: str | None
    thumbnail: str | None
    time_to_flag_ms: float | None
    exports_pending: int
    viewer_url: str | None
    read_by: str | None
    read_at: str | None
    review: str | None  # agree | wrong
    review_reason: str | None
    reviewer: str | None
    not_analysed_vi: str | None = None  # why the model's intended-use gate refused the study
    not_analysed_en: str | None = None


def _local(ts: float | None, tz: ZoneInfo) -> str | None:
    return datetime.fromtimestamp(ts, UTC).astimezone(tz).strftime("%d/%m/%Y %H:%M") if ts \
        else None


def _study_datetime(date: str, time_: str) -> str:
    """DICOM DA (+TM) as dd/mm/yyyy HH:MM; an unreadable value is shown as it is."""
    try:
        day = datetime.strptime(date.strip()[:8], "%Y%m%d")
    except ValueError:
        return date.strip()
    clock = re.sub(r"\D", "", time_.split(".")[0])
    if len(clock) >= 4:
        return f"{day:%d/%m/%Y} {clock[:2]}:{clock[2:4]}"
    return f"{day:%d/%m/%Y}"


def _age(header: dict) -> str:
    age = header.get("PatientAge", "").strip()
    if _AGE.match(age):
        return age
    try:
        born = datetime.strptime(header.get("PatientBirthDate", "")[:8], "%Y%m%d")
        seen = datetime.strptime(header.get("StudyDate", "")[:8], "%Y%m%d")
    except ValueError:
        return ""
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years:03d}Y" if years >= 0 else ""


def orthanc_id(*identifiers: str) -> str:
    """Orthanc's public ID of a resource: SHA-1 of its DICOM identifiers joined by '|'
    (PatientID|StudyInstanceUID[|SeriesInstanceUID]), as 5 dash-separated groups of 8."""
    h = hashlib.sha1("|".join(identifiers).encode("utf-8")).hexdigest()  # noqa: S324 - Orthanc's
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def viewer_link(template: str | None, study: StudyView) -> str | None:
    if not template:
        return None
    h = study.header
    values = {"StudyInstanceUID": study.study_uid,
              "AccessionNumber": h.get("AccessionNumber", ""),
              "OrthancSeriesID": orthanc_id(h.get("PatientID", ""), study.study_uid,
                                            study.series_uid)}
    return template.format_map({k: quote(v, safe="") for k, v in values.items()})


def _band(p: float | None) -> str | None:
    if p is None:
        return None
    low = min(int(p * 10), 9) * 10
    return f"{low}–{low + 10}%"


def _shown(results: list[ResultView]) -> ResultView | None:
    """The result a study's row shows: the AI analysis's, else the newest."""
    return next((r for r in results if r.analysis != TRACE_ANALYSIS),
                results[0] if results else None)


def _status(study: StudyView, chosen: ResultView | None) -> tuple[str, float | None]:
    """The study's status and when it was flagged (result in PACS, or ready with no PACS)."""
    if chosen is None:
        return study.state, None
    if chosen.state == "failed":
        return "failed", None
    if not chosen.exports:
        return "done", chosen.created_at
    if chosen.exports_done == chosen.exports:
        return "in-pacs", chosen.last_export_at
    return "sending", None


def worklist_rows(index: Index, settings=None, limit: int = 200) -> list[WorklistRow]:
    """One row per study, URGENT first, then newest first (``settings``: time zone and
    viewer link; defaults without)."""
    wl = settings.worklist if settings is not None else WorklistSettings()
    tz = ZoneInfo(wl.time_zone)
    studies = index.recent_studies(limit)
    uids = [s.study_uid for s in studies]
    results: dict[str, list[ResultView]] = {}
    for r in index.study_results(uids):
        results.setdefault(r.study_uid, []).append(r)
    reviews, reads = index.latest_reviews(uids), index.read_marks(uids)
    rows = []
    for s in studies:
        chosen = _shown(results.get(s.study_uid, []))
        status, flagged_at = _status(s, chosen)
        summary = chosen.summary if chosen else {}
        review, read = reviews.get(s.study_uid), reads.get(s.study_uid)
        h = s.header
        rows.append(WorklistRow(
            study_uid=s.study_uid, patient_name=h.get("PatientName", "").replace("^", " ").strip(),
            patient_id=h.get("PatientID", ""), accession_number=h.get("AccessionNumber", ""),
            age=_age(h), sex=h.get("PatientSex", "").upper(), modality=h.get("Modality", ""),
            description=h.get("StudyDescription", "") or h.get("SeriesDescription", ""),
            study_datetime=_study_datetime(h.get("StudyDate", ""), h.get("StudyTime", "")),
            received=_local(s.first_arrival, tz) or "", received_ts=s.first_arrival,
            instances=s.instance_count, status=status,
            priority=chosen.priority if chosen else "ROUTINE",
            analysis=chosen.analysis if chosen else None, verdict=summary.get("verdict"),
            finding=summary.get("finding"), probability=summary.get("probability"),
            band=_band(summary.get("probability")), threshold=summary.get("threshold"),
            model=summary.get("model"), version=summary.get("version"),
            thumbnail=summary.get("thumbnail"),
            time_to_flag_ms=round(1000 * max(0.0, flagged_at - s.last_arrival
                                             - s.quiet_period_s), 1) if flagged_at else None,
            exports_pending=chosen.exports - chosen.exports_done if chosen else 0,
            viewer_url=viewer_link(wl.viewer_url, s),
            read_by=read.username if read else None, read_at=_local(read.read_at, tz)
            if read else None,
            review=None if review is None else ("agree" if review.agrees else "wrong"),
            review_reason=review.reason if review else None,
            reviewer=review.reviewer if review else None,
            not_analysed_vi=summary.get("reason_vi"), not_analysed_en=summary.get("reason_en"),
        ))
    rows.sort(key=lambda r: (r.priority != "URGENT", -r.received_ts))
    return rows


def matches(row: WorklistRow, q: str = "", priority: str = "", modality: str = "",
            verdict: str = "", unread: bool = False) -> bool:
    """The page's search (name, patient ID, accession) and filters."""
    text = q.strip().lower()
    if text and not any(text in v.lower() for v in
                        (row.patient_name, row.patient_id, row.accession_number)):
        return False
    return ((not priority or row.priority == priority.upper())
            and (not modality or row.modality.upper() == modality.upper())
            and (not verdict or row.verdict == verdict)
            and not (unread and row.read_by))


class ReviewForm(BaseModel):
    """"Agree" or "AI was wrong", with the reason (required when wrong)."""

    agrees: bool
    reason: str = Field("", max_length=1000)


def worklist_router(settings, index) -> APIRouter:
    """``index``: the gateway's Index, or a callable returning it (it exists after start)."""
    get_index: Callable[[], Index] = index if callable(index) and not hasattr(index, "query") \
        else (lambda: index)
    signin = SignIn(settings, get_index)
    reader = Depends(signin.reader)
    thumbs = thumbnail_dir(settings.gateway.spool_dir)
    router = APIRouter()
    router.include_router(signin_router(signin))
    page = (STATIC / "worklist.html").read_text(encoding="utf-8") \
        .replace("__OIDC__", "true" if configured(settings) else "false")

    @router.get("/worklist", response_class=HTMLResponse)
    def worklist_page() -> str:  # no patient data: the script asks /api/session first
        return page.replace("__DEFAULT_LANG__", "en" if settings.language == "en" else "vi")

    @router.get("/api/worklist")
    def worklist_data(limit: int = 200, q: str = "", priority: str = "", modality: str = "",
                      verdict: str = "", unread: bool = False, who: Reader = reader) -> dict:
        rows = [r for r in worklist_rows(get_index(), settings, min(max(limit, 1), 1000))
                if matches(r, q, priority, modality, verdict, unread)]
        return {"studies": [asdict(r) for r in rows], "reader": who.name,
                "time_zone": settings.worklist.time_zone,
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds")}

    def _current(study_uid: str) -> ResultView:
        chosen = _shown(get_index().study_results([study_uid], ("current",)))
        if chosen is None:
            raise HTTPException(404, "this study has no AI result to review")
        return chosen

    @router.post("/api/worklist/{study_uid}/review")
    def review(study_uid: str, form: ReviewForm, who: Reader = reader) -> dict:
        if not form.agrees and not form.reason.strip():
            raise HTTPException(422, "Hãy ghi lý do AI sai. / Say why the AI was wrong.")
        result = _current(study_uid)
        verdict = str(result.summary.get("verdict") or "")
        label = LABEL_OF_VERDICT.get(verdict)
        if label is not None and not form.agrees:
            label = CORRECTED[label]
        rid = get_index().record_review(study_uid, result.id, who.name, form.agrees, verdict,
                                        label, form.reason.strip())
        audit.record(settings, "review", identifiers={"study_uid": study_uid},
                     caller=who.caller, review_id=rid, result_id=result.id,
                     agrees=form.agrees, ai_verdict=verdict, label=label)
        return {"review_id": rid, "label": label}

    @router.post("/api/worklist/{study_uid}/read")
    def mark_read(study_uid: str, who: Reader = reader) -> dict:
        get_index().mark_read(study_uid, who.name)
        return {"read": True}

    @router.get("/worklist/thumbnails/{name}")
    def thumbnail(name: str, who: Reader = reader) -> FileResponse:
        path = thumbs / name
        if not _THUMB.match(name) or not path.is_file():
            raise HTTPException(404, "no such thumbnail")
        return FileResponse(path, media_type="image/png")

    return router


def worklist_app(settings, index):
    """A standalone app (worklist + /healthz), for the demo and tests without haidang.web."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(title="Hải Đăng worklist")
    app.include_router(worklist_router(settings, index))

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/worklist")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app
