"""The one HTTP application of ``haidang up`` (the embedded default).

It composes what each part offers, so a reader finds every route of the process here:
the CDSS (``serving.cdss.app``: native QĐ 130 API, CDS Hooks, ``/readyz``), the radiologists'
worklist (``dicom_gateway.worklist``: its routes carry their own sign-in check, session or
API key, audited) and the Prometheus metrics of the whole process.
"""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_gateway.worklist import worklist_router
from serving.cdss.app import create_app as create_cdss_app


def create_app(settings, gateway) -> FastAPI:
    app = create_cdss_app(settings)
    app.title = "Hải Đăng"
    app.include_router(worklist_router(settings, lambda: gateway.index))

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/worklist")

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/gateway/status", tags=["ops"])
    def gateway_status() -> dict:
        counts = gateway.index.counts() if gateway.index else {}
        return {"status": "ok", "ae_title": settings.gateway.ae_title,
                "dicom_port": gateway.port, "queue": counts}

    return app
