"""HTTP routes of the CDSS: the native QĐ 130 check and the CDS Hooks services.

Bodies are read by hand (not by FastAPI's body parsing) so that one route can take JSON or
XML 130, the size limit is enforced while reading (413), and every bad input becomes a
400/422 whose message names the field. The check itself runs inline: it is a few dict
look-ups, cheaper than a hop to a thread pool.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from haidang.ground.audit import AuditLog, audit_log
from haidang.ground.keys import Unauthorized
from serving.cdss import cdshooks
from serving.cdss.catalog import DrugCodes, HospitalCatalog, catalog_path
from serving.cdss.checks import CheckEngine
from serving.cdss.models import (
    PrescriptionCheckRequest,
    PrescriptionCheckResponse,
    impossible_dates,
    prescription_from_native,
    response_json,
)
from serving.cdss.security import Guard
from serving.cdss.shared import SharedState
from serving.cdss.xml130 import Xml130Error, parse_xml130

log = logging.getLogger("haidang.cdss")
XML_TYPES = ("application/xml", "text/xml")
CHECK_PATH = "/api/v1/prescriptions/check"


class BadRequest(Exception):
    def __init__(self, status: int, error: str, fields: list[dict] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.fields = fields or []

    def response(self) -> JSONResponse:
        body: dict = {"error": self.error}
        if self.fields:
            body["fields"] = self.fields
        return JSONResponse(body, status_code=self.status)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_error(exc: ValidationError, what: str) -> BadRequest:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        msg = next(e["msg"] for e in errors if e["type"] == "json_invalid")
        return BadRequest(400, f"body is not valid JSON ({msg}); send one JSON object")
    fields = [{"field": _loc(tuple(e["loc"])), "message": e["msg"]} for e in errors]
    names = ", ".join(f["field"] for f in fields[:5])
    return BadRequest(422, f"{what}: invalid field(s) {names}", fields)


_HEADER = object()  # read_body: take Content-Length from the request's headers


async def read_body(request: Request, limit: int, declared: str | None = _HEADER) -> bytes:
    """The whole body, refused with 413 past `limit` bytes (declared or received).

    Reads the ASGI messages itself (as `Request.stream` does, without an async generator
    per request); `declared`: the Content-Length when the caller has already read it."""
    if declared is _HEADER:
        declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadRequest(413, f"body larger than {limit} bytes; split the request")
        except ValueError:
            raise BadRequest(400, "Content-Length is not a number") from None
    if hasattr(request, "_body"):  # already read by the framework
        body = request._body  # noqa: SLF001
        if len(body) > limit:
            raise BadRequest(413, f"body larger than {limit} bytes; split the request")
        return body
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body larger than {limit} bytes; split the request")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the usual case: one message
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)
        elif kind == "http.disconnect":
            raise ClientDisconnect()


def _native_headers(scope) -> tuple[str | None, str | None, str]:
    """(X-API-Key, Content-Length, Content-Type) from one scan of the raw header list; the
    first of each counts, as with `request.headers.get` (ASGI names are lower case)."""
    key = length = ctype = None
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            if key is None:
                key = value.decode("latin-1")
        elif name == b"content-length":
            if length is None:
                length = value.decode("latin-1")
        elif name == b"content-type":
            if ctype is None:
                ctype = value.decode("latin-1")
    return key, length, ctype or ""


def _json_object(body: bytes, what: str) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"{what}: body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest(422, f"{what}: body must be a JSON object")
    return data


def _inline_schema(model) -> dict:
    """The model's JSON Schema with its `$defs` inlined (OpenAPI `openapi_extra` has no defs)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


@dataclass
class CdssState:
    """What the routes share; `close()` flushes the audit log at shutdown."""

    engine: CheckEngine
    guard: Guard
    audit: AuditLog
    language: str
    max_body: int
    public_url: str | None
    shown: SharedState  # alert ids shown per patient/encounter, hook and draft orders
    cards: SharedState  # card uuid -> alert id, for feedback
    knowledge_version: str | None = None
    shared: SharedState | None = None
    catalog: DrugCodes | None = None  # MA_THUOC (the hospital's catalogue, ATC) and brands
    hooks: cdshooks.HookService | None = None  # reads hook requests (codes, prefetch, FHIR)

    def close(self) -> None:
        self.audit.close()
        if self.shared is not None:
            self.shared.close()


def _unauthorized(state: CdssState, exc: Unauthorized, request: Request, api: str) -> Response:
    state.audit.record("denied", api=api, reason=exc.reason,
                       client=request.client.host if request.client else None)
    return JSONResponse({"error": "unauthorized"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer" if api == "cds-hooks"
                                 else 'ApiKey header="X-API-Key"'})


def hospital_catalog(settings, kb) -> DrugCodes:
    """MA_THUOC codes: the imported catalogue (`haidang cdss import-catalog`), if any, minus
    entries naming ingredients this dictionary no longer has (logged: re-import to get them
    back); WHO ATC codes sent as MA_THUOC either way."""
    path = catalog_path(settings)
    if not path.is_file():
        return DrugCodes(kb)
    catalog = HospitalCatalog.load(path)
    stale = catalog.stale_keys(kb.drugs)
    if stale:
        log.warning("drug catalogue %s names %d ingredient(s) this dictionary lacks (%s); "
                    "their lines go unrecognised until `haidang cdss import-catalog` runs again",
                    path, len(stale), ", ".join(sorted(stale)[:5]))
        catalog = catalog.without(stale)
    log.info("drug catalogue %s: %d codes, %d brands", path, len(catalog.codes),
             len(catalog.brands))
    return DrugCodes(kb, catalog)


def cdss_router(
    settings,
    kb,
    *,
    engine: CheckEngine | None = None,
    guard: Guard | None = None,
    audit: AuditLog | None = None,
    router: APIRouter | None = None,
) -> APIRouter:
    """The CDSS routes; the router's `.cdss` attribute holds their shared state.

    Pass the app's own router (`app.router`) to register the routes on it directly: an
    included router is a second layer of route matching on every request (FastAPI 0.165)."""
    sec = settings.security
    # Shared by the worker processes: JWT jti replay store, cards shown, card ids.
    shared = SharedState(Path(sec.audit_log).with_name("cdss-shared.sqlite"))
    state = CdssState(
        engine=engine or CheckEngine(kb),
        guard=guard or Guard.from_settings(sec, replay=shared,
                                           cds_hooks=getattr(settings, "cds_hooks", None)),
        audit=audit or audit_log(settings),
        language=getattr(settings, "language", "vi"),
        max_body=sec.max_body_bytes,
        public_url=sec.public_url.rstrip("/") if sec.public_url else None,
        shown=shared,
        cards=shared,
        knowledge_version=getattr(kb, "version", None),
        shared=shared,
        catalog=hospital_catalog(settings, kb),
    )
    state.hooks = cdshooks.HookService(kb, getattr(state, "catalog", None),
                                       getattr(settings, "cds_hooks", None))
    router = APIRouter() if router is None else router
    router.cdss = state  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ native API
    @router.post(
        CHECK_PATH,
        tags=["prescriptions"],
        summary="Check a prescription (QĐ 130 fields as JSON, or XML 130)",
        response_model=PrescriptionCheckResponse,
        responses={400: {"description": "malformed JSON/XML"}, 401: {"description": "no key"},
                   413: {"description": "body too large"},
                   422: {"description": "invalid field"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": _inline_schema(PrescriptionCheckRequest)},
            "application/xml": {"schema": {"type": "string", "description": "XML 130"}},
        }}},
    )
    async def check_prescription(request: Request) -> Response:
        started = time.perf_counter()
        key, length, ctype = _native_headers(request.scope)
        try:
            caller = state.guard.native(key)
        except Unauthorized as exc:
            return _unauthorized(state, exc, request, "native")
        try:
            body = await read_body(request, state.max_body, length)
            if ctype != "application/json":
                ctype = ctype.split(";")[0].strip().lower()
            try:
                if ctype in XML_TYPES or ctype.endswith("+xml"):
                    req = PrescriptionCheckRequest.model_validate(parse_xml130(body))
                else:
                    req = PrescriptionCheckRequest.model_validate_json(body)
            except Xml130Error as exc:
                raise BadRequest(400, str(exc)) from None
            except ValidationError as exc:
                raise validation_error(exc, "prescription") from None
            impossible = impossible_dates(req)
            if impossible:
                raise BadRequest(422, "prescription: impossible value in "
                                 + ", ".join(f["field"] for f in impossible), impossible)
        except BadRequest as exc:
            return exc.response()
        result = state.engine.check(prescription_from_native(req, state.catalog), channel="native")
        state.audit.record(
            "check", {"patient": req.MA_BN, "episode": req.MA_LK}, api="native", caller=caller.id,
            lines=len(req.THUOC), alerts=[a.id for a in result.alerts],
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        body = response_json(result.alerts, result.recognised, state.knowledge_version)
        return Response(body, media_type="application/json")

    # ------------------------------------------------------------------ CDS Hooks
    @router.get("/cds-services", tags=["cds-hooks"], summary="CDS Hooks discovery")
    async def discovery() -> dict:
        return {"services": list(cdshooks.SERVICES.values())}

    def _audience(request: Request) -> str:
        if state.public_url:
            return state.public_url + request.url.path
        return str(request.url.replace(query=""))

    @router.post("/cds-services/{service_id}", tags=["cds-hooks"],
                 summary="Call a CDS service (order-select / order-sign)")
    async def call_service(service_id: str, request: Request) -> Response:
        started = time.perf_counter()
        service = cdshooks.SERVICES.get(service_id)
        if service is None:
            return JSONResponse({"error": f"no CDS service {service_id!r}; see /cds-services"},
                                status_code=404)
        try:
            caller = state.guard.cds_hooks(request.headers.get("authorization"),
                                           _audience(request))
        except Unauthorized as exc:
            return _unauthorized(state, exc, request, "cds-hooks")
        try:
            body = await read_body(request, state.max_body)
            data = _json_object(body, "CDS Hooks request")
            try:
                hook = cdshooks.HookRequest.model_validate(data)
            except ValidationError as exc:
                raise validation_error(exc, "CDS Hooks request") from None
            if hook.hook != service["hook"]:
                raise BadRequest(400, f"hook: service {service_id} answers {service['hook']!r}, "
                                 f"not {hook.hook!r}")
        except BadRequest as exc:
            return exc.response()
        lang = cdshooks.language(request.headers.get("accept-language"), state.language)
        try:
            return JSONResponse(await cdshooks.answer(state, hook, lang, caller.id, started))
        except cdshooks.HookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @router.post("/cds-services/{service_id}/feedback", tags=["cds-hooks"],
                 summary="Feedback on cards (accepted / overridden with a reason)")
    async def feedback(service_id: str, request: Request) -> Response:
        if service_id not in cdshooks.SERVICES:
            return JSONResponse({"error": f"no CDS service {service_id!r}"}, status_code=404)
        try:
            caller = state.guard.cds_hooks(request.headers.get("authorization"),
                                           _audience(request))
        except Unauthorized as exc:
            return _unauthorized(state, exc, request, "cds-hooks")
        try:
            body = await read_body(request, state.max_body)
            try:
                fb = cdshooks.FeedbackRequest.model_validate(_json_object(body, "feedback"))
            except ValidationError as exc:
                raise validation_error(exc, "feedback") from None
        except BadRequest as exc:
            return exc.response()
        for item in fb.feedback:
            known = state.cards.get(item.card)
            reason = (item.overrideReason or {}).get("reason") or {}
            state.audit.record(
                "feedback", api="cds-hooks", service=service_id, caller=caller.id,
                card=item.card, alert=known[0] if known else None, outcome=item.outcome,
                override_code=reason.get("code") if isinstance(reason, dict) else None,
                has_comment=bool((item.overrideReason or {}).get("userComment")),
                accepted=[s.get("id") for s in item.acceptedSuggestions or []
                          if isinstance(s, dict)],
            )
        return JSONResponse({})

    return router
