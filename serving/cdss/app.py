"""The HTTP application of the CDSS (FastAPI on uvicorn).

The CDSS is served by FastAPI/uvicorn rather than BentoML: measured here at 32 concurrent
clients, a trivial BentoML endpoint answered 219 requests/s against 557 for FastAPI on
uvicorn with 2 workers, and a prescription check must stay far below the HIS's 500 ms
budget. BentoML keeps serving the ONNX imaging models.

`create_app` loads the knowledge base once, mounts the CDSS routes, and answers `/healthz`
(the process is up) and `/readyz` (the knowledge base is loaded and the routes mounted).
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from haidang.ground.logs import quiet_client_disconnects
from serving.ratelimit import install_rate_limit

log = logging.getLogger("haidang.serving")
ICD_CATALOGUE_DIR = Path("var")
ICD_CATALOGUE_STEM = "icd10-moh"


def icd_catalogue_path(base: Path = ICD_CATALOGUE_DIR) -> Path | None:
    """Where `haidang cdss import-icd` keeps the hospital's MoH ICD-10 catalogue, if any."""
    for suffix in (".xlsx", ".csv"):
        path = base / f"{ICD_CATALOGUE_STEM}{suffix}"
        if path.is_file():
            return path
    return None


def load_engine(kb=None, learned: bool = True, settings=None):
    """The knowledge base and a check engine over it (with the MoH ICD titles when imported);
    the learned models as the settings' `learned` section allows (default: both off); the
    lowest severity each channel shows from the settings' `[cdss]` section."""
    from serving.cdss.checks import CheckEngine, channel_thresholds
    from serving.cdss.icd import Icd10
    from serving.cdss.knowledge import KnowledgeBase

    kb = kb or KnowledgeBase.load()
    catalogue = icd_catalogue_path()
    icd = Icd10(moh_catalogue=catalogue) if catalogue else Icd10()
    return kb, CheckEngine(kb, icd, learned=_learned_checks(kb, settings) if learned else None,
                           thresholds=channel_thresholds(settings.cdss) if settings else None)


def _learned_checks(kb, settings=None):
    """The learned models (ONNX) the registry has and the settings let through; None
    switches them off."""
    try:
        from haidang.ground.settings import LearnedSettings
        from serving.cdss.learned import LearnedChecks

        checks = LearnedChecks.from_settings(
            settings.learned if settings is not None else LearnedSettings(), kb)
    except Exception as exc:  # noqa: BLE001 - the KB checks must run without the models
        log.warning("learned CDSS checks off: %s: %s", type(exc).__name__, exc)
        return None
    if checks.interaction is None and checks.protocol is None:
        return None
    return checks


def create_app(settings, kb=None, learned: bool = True, **router_options) -> FastAPI:
    """The app: knowledge base loaded now (once per worker), CDSS routes mounted."""
    from serving.cdss.api import cdss_router

    kb, engine = load_engine(kb, learned=learned, settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    # /docs and /redoc with their scripts served by the app (fastapi-offline), not a CDN: a
    # hospital network often has no internet, and the page was blank there
    app = FastAPIOffline(
        title="Hải Đăng CDSS",
        description="Prescription checks for Vietnamese HIS: native QĐ 130 JSON/XML API and "
        "HL7 CDS Hooks (order-select, order-sign). Knowledge pending pharmacist review.",
        version="0.1.0",
        lifespan=lifespan,
    )
    quiet_client_disconnects(app)
    # The CDSS routes go on the app's own router (no included router: one route match).
    state = cdss_router(settings, kb, engine=engine, router=app.router, **router_options).cdss
    app.state.cdss = state
    install_rate_limit(app, settings.security)
    app.state.kb = kb

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "fields": fields}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Last resort: log the type only (a message could echo patient data).
        log.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        return JSONResponse({"error": "internal error; the request was not checked"},
                            status_code=500)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz():
        if getattr(app.state, "kb", None) is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "drugs": len(getattr(kb, "drugs", {}) or {})}

    return app


def listening_socket(host: str, port: int):
    """A TCP listening socket whose accepted connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY on accepted sockets only when the listener was created with
    proto=IPPROTO_TCP; uvicorn's own multi-worker socket has proto 0, so its workers answer
    with Nagle on, and every response whose head and body go out in two writes waits for the
    client's delayed ACK (measured here: 44 ms per request at concurrency 1, 22 requests/s).
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_http(app: str, host: str, port: int, workers: int = 1, stack: str = "auto") -> None:
    """Serve an app factory ("module:function") on uvicorn with `workers` processes.

    `stack` "auto" takes uvloop and httptools when installed (they are, by default: measured
    in bench/cdss, ~1.4x the requests/s of the pure-Python pair); "asyncio-h11" forces
    Python's asyncio loop and the h11 parser."""
    import uvicorn

    from serving.handoff import HandOff

    loop, http = ("asyncio", "h11") if stack == "asyncio-h11" else ("auto", "auto")
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers,
                            loop=loop, http=http, log_level="warning", access_log=False)
    sock = listening_socket(host, port)
    if workers > 1:  # connections dealt to the workers in turn (see serving/handoff.py)
        HandOff(config, sock, workers).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


def app_from_env() -> FastAPI:
    """uvicorn factory for several workers: settings from $HAIDANG_CONFIG and the env.

    Once the knowledge base is loaded, its objects (~100,000) move to the collector's
    permanent generation (`gc.freeze`): they live as long as the worker, and without this
    every full collection walks them all (measured here: a 60-80 ms pause, stalling every
    request in flight on that worker)."""
    import gc

    from haidang.ground.settings import load_settings

    app = create_app(load_settings(os.environ.get("HAIDANG_CONFIG") or None))
    gc.collect()
    gc.freeze()
    return app
