"""Two peers between the bare endpoint and Haidang, for `floor.py`: what the answer costs on
its own, whatever the checks cost.

- `create_answer_app`: the bare endpoint (same stack, same parsing) returning Haidang's real
  answer to the benchmark body (its bytes computed once at start by Haidang's own engine):
  the cost of sending and receiving the answer, as if the checks took no time at all.
- `create_answer_audit_app`: the same, plus the audit record Haidang writes per check (same
  fields, same writer: pseudonymised ids, hash chain, file append).

Haidang at zero check cost is the second one; if even the first is below the target ratio,
no speed-up of the checks can reach it."""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from haidang.ground.audit import AuditLog
from serving.cdss.models import PrescriptionCheckRequest, prescription_from_native, response_json

BODY = (Path(__file__).resolve().parents[2] / "tests" / "support" / "fixtures" / "cdss"
        / "bench-10-drugs.json")


def _haidang_answer() -> tuple[bytes, list[str]]:
    """Haidang's answer to the benchmark body, and its alert ids, from the served engine."""
    from serving.cdss.app import load_engine

    kb, engine = load_engine(None, learned=True)
    req = PrescriptionCheckRequest.model_validate_json(BODY.read_bytes())
    result = engine.check(prescription_from_native(req))
    return (response_json(result.alerts, result.recognised, getattr(kb, "version", None)),
            [a.id for a in result.alerts])


def _app(audit: AuditLog | None) -> FastAPI:
    answer, alert_ids = _haidang_answer()
    app = FastAPI(title="answer peer")

    @app.post("/api/v1/prescriptions/check")
    async def check(request: Request) -> Response:
        started = time.perf_counter()
        body = await request.body()
        try:
            req = PrescriptionCheckRequest.model_validate_json(body)
        except ValidationError:
            return JSONResponse({"error": "invalid"}, status_code=422)
        if audit is not None:
            audit.record(
                "check", {"patient": req.MA_BN, "episode": req.MA_LK}, api="native",
                caller="bench", lines=len(req.THUOC), alerts=list(alert_ids),
                ms=round((time.perf_counter() - started) * 1000, 3),
            )
        return Response(answer, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    gc.collect()
    gc.freeze()
    return app


def create_answer_app() -> FastAPI:
    return _app(None)


def create_answer_audit_app() -> FastAPI:
    path = os.environ.get("HAIDANG_SECURITY__AUDIT_LOG") or str(
        Path(tempfile.mkdtemp(prefix="haidang-floor-")) / "audit.log")
    from haidang.ground.audit import FLUSH_INTERVAL_S

    return _app(AuditLog(path, flush_interval_s=FLUSH_INTERVAL_S))
