"""The worklist: studies the gateway received, AI-flagged (URGENT) ones first.

Read-only over the gateway's index. ``worklist_router(settings, index)`` gives the page
(``/worklist``), its data (``/api/worklist``) and the visual-summary thumbnails; the web
app of ``haidang up`` mounts it. Time to flag = result in PACS (or, with no PACS
configured, result ready) − last instance received − the quiet period the study waited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

STATIC = Path(__file__).parent / "static"
AI_ANALYSES = ("cxr-pneumonia",)
_THUMB = re.compile(r"^[A-Za-z0-9._-]+\.png$")


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None


def worklist_rows(index, limit: int = 200) -> list[dict]:
    """One row per study, URGENT first, then newest first."""
    studies = index.query(
        "SELECT study_uid, state, first_arrival, last_arrival, quiet_period_s, instance_count "
        "FROM studies ORDER BY last_arrival DESC LIMIT ?", (limit,))
    rows = []
    for uid, state, first, last, quiet, count in studies:
        attrs = index.query("SELECT attrs FROM instances WHERE study_uid = ? ORDER BY received_at "
                            "LIMIT 1", (uid,))
        modality = json.loads(attrs[0][0]).get("Modality", "") if attrs else ""
        results = index.query(
            "SELECT id, analysis, state, priority, summary, created_at FROM results "
            "WHERE study_uid = ? AND state IN ('current', 'failed') ORDER BY id DESC", (uid,))
        chosen = next((r for r in results if r[1] in AI_ANALYSES), results[0] if results else None)
        row = {
            "study_uid": uid, "state": state, "modality": modality, "instances": count,
            "arrival": _iso(first), "last_arrival": _iso(last), "arrival_ts": first,
            "status": state, "priority": "ROUTINE", "analysis": None, "verdict": None,
            "finding": None, "probability": None, "thumbnail": None, "time_to_flag_ms": None,
            "model": None, "version": None, "exports_pending": 0,
        }
        if chosen:
            rid, analysis, rstate, priority, summary, created = chosen
            summary = json.loads(summary)
            exports = index.query(
                "SELECT COUNT(*), SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), MAX(done_at) "
                "FROM exports WHERE result_id = ?", (rid,))[0]
            total, done, done_at = exports[0] or 0, exports[1] or 0, exports[2]
            if rstate == "failed":
                status = "failed"
            elif total and done == total:
                status = "in-pacs"
            elif total:
                status = "sending"
            else:
                status = "done"
            flagged_at = done_at if total and done == total else (created if not total else None)
            row.update({
                "status": status, "priority": priority, "analysis": analysis,
                "verdict": summary.get("verdict"), "finding": summary.get("finding"),
                "probability": summary.get("probability"), "thumbnail": summary.get("thumbnail"),
                "model": summary.get("model"), "version": summary.get("version"),
                "exports_pending": total - done,
                "time_to_flag_ms": round(1000 * max(0.0, flagged_at - last - quiet), 1)
                if flagged_at else None,
            })
        rows.append(row)
    rows.sort(key=lambda r: (r["priority"] != "URGENT", -(r["arrival_ts"] or 0)))
    return rows


def worklist_router(settings, index) -> APIRouter:
    """``index``: the gateway's Index, or a callable returning it (it exists after start)."""
    get_index: Callable = index if callable(index) and not hasattr(index, "query") else (
        lambda: index)
    thumbs = Path(settings.gateway.spool_dir) / "ai"
    router = APIRouter()
    page = (STATIC / "worklist.html").read_text(encoding="utf-8")

    @router.get("/worklist", response_class=HTMLResponse)
    def worklist_page() -> str:
        return page.replace("__DEFAULT_LANG__", "en" if settings.language == "en" else "vi")

    @router.get("/api/worklist")
    def worklist_data(limit: int = 200) -> dict:
        return {"studies": worklist_rows(get_index(), min(max(limit, 1), 1000)),
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds")}

    @router.get("/worklist/thumbnails/{name}")
    def thumbnail(name: str) -> FileResponse:
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
