"""The peer of the benchmark: the same HTTP stack (FastAPI on uvicorn, same workers) and the
same request parsing as Haidang's check endpoint, but no checks: it returns an empty result.
Its speed is the practical limit of the HTTP layer on this machine."""

from __future__ import annotations

import gc

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from serving.cdss.models import PrescriptionCheckRequest, PrescriptionCheckResponse


def create_bare_app() -> FastAPI:
    app = FastAPI(title="bare peer")

    @app.post("/api/v1/prescriptions/check")
    async def check(request: Request) -> Response:
        body = await request.body()
        try:
            PrescriptionCheckRequest.model_validate_json(body)
        except ValidationError:
            return JSONResponse({"error": "invalid"}, status_code=422)
        out = PrescriptionCheckResponse(alerts=[], recognised=[])
        return Response(out.model_dump_json(), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    gc.collect()
    gc.freeze()  # as serving.cdss.app.app_from_env does: same collector settings on both sides
    return app
