"""Subcommands of `serving`: `haidang serve` and `haidang cdss …`.

`serve` runs the HTTP app (CDSS routes, OpenAPI docs at /docs) on uvicorn and, beside it,
the BentoML imaging service (`serving.imaging_cli`; alone: `serve-imaging`). Heavy imports
stay inside the handlers so `haidang --help` is fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from haidang.ground.processes import stop_process


def register(sub) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service (CDSS API, CDS Hooks, docs)")
    serve.add_argument("--host", default=None, help="default: serving.host")
    serve.add_argument("--port", type=int, default=None, help="default: serving.port (3000)")
    serve.add_argument("--imaging-port", type=int, default=None,
                       help="port of the BentoML imaging service: default the port of "
                       "serving.url, else serving.imaging_port (3001)")
    serve.add_argument("--workers", type=int, default=1,
                       help="uvicorn worker processes (each loads the knowledge base)")
    serve.add_argument("--no-imaging", action="store_true",
                       help="do not start the BentoML imaging service beside the CDSS")
    serve.set_defaults(handler=_serve)

    cdss = sub.add_parser("cdss", help="prescription checks from the command line")
    cdss_sub = cdss.add_subparsers(dest="cdss_command", metavar="COMMAND", required=True)
    check = cdss_sub.add_parser("check", help="print the alerts for a prescription file")
    check.add_argument("file", help="native JSON (QĐ 130 field names) or XML 130")
    check.add_argument("--lang", choices=["vi", "en"], default=None)
    check.add_argument("--json", action="store_true", help="print the API's JSON answer")
    check.set_defaults(handler=_check)

    icd = cdss_sub.add_parser("import-icd",
                              help="load the MoH ICD-10 catalogue (QĐ 4469, .xlsx or .csv)")
    icd.add_argument("file")
    icd.set_defaults(handler=_import_icd)

    cat = cdss_sub.add_parser(
        "import-catalog",
        help="import the hospital's drug catalogue (BHXH template, .csv or .xlsx): MA_THUOC "
        "and brand names then identify drugs (serving.drug_catalog)")
    cat.add_argument("file", help="columns MA_THUOC, TEN_HOAT_CHAT, TEN_THUOC, HAM_LUONG, "
                     "DUONG_DUNG, SO_DANG_KY (any case; other columns ignored)")
    cat.add_argument("--json", action="store_true",
                     help='print {"lines", "resolved", "unresolved": [{"line", "reason"}]}')
    cat.set_defaults(handler=_import_catalog)

    from serving import imaging_cli  # `haidang serve-imaging` (BentoML, split mode)

    imaging_cli.register(sub)


def _serve(args) -> int:
    from haidang.ground.logs import set_third_party_level
    from haidang.ground.ports import Port, ensure_free
    from haidang.ground.processes import stop_on_signals
    from haidang.ground.settings import load_settings
    from serving.cdss.app import run_http
    from serving.imaging_cli import imaging_port as imaging_port_of

    settings = load_settings(args.config)  # fail here, once, on a bad settings file
    set_third_party_level(settings.logging.third_party_level)
    if args.config:
        os.environ["HAIDANG_CONFIG"] = str(Path(args.config).resolve())
    host = args.host or settings.serving.host
    http = Port("--port" if args.port else "serving.port", host,
                args.port or settings.serving.port)
    imaging_port = imaging_port_of(settings.serving, args.imaging_port)
    ensure_free([http] + ([] if args.no_imaging else [imaging_port]))
    imaging = None
    with stop_on_signals() as stop:
        try:
            if not args.no_imaging:
                # Split mode: the gateway calls this BentoML service (serving.url) for the
                # imaging models; a child that dies with `haidang serve`, however it stops.
                from serving.imaging_cli import announce_when_ready, start_imaging_service

                imaging = start_imaging_service(args.config, imaging_port.host, imaging_port.port)
                announce_when_ready(imaging, http, imaging_port, cdss_models(settings))
            with stop.raising():
                run_http("serving.cdss.app:app_from_env", host, http.port, max(1, args.workers))
        finally:
            if imaging is not None:
                stop_process(imaging)
    return 0


def cdss_models(settings) -> list[dict]:
    """The CDSS's learned models, as the start-up line names them (``serving.cdss.learned``
    runs them on onnxruntime's CPU provider)."""
    from serving.cdss.learned import INTERACTION_MODEL, PROTOCOL_MODEL
    from serving.registry import ModelRegistry, RegistryError

    registry = ModelRegistry(settings.serving.models_dir)
    out = []
    for name in (INTERACTION_MODEL, PROTOCOL_MODEL):
        try:
            mv = registry.current(name, verify=False)
        except RegistryError:
            continue  # the CDSS runs without it and says so at start
        out.append({"model": mv.name, "version": mv.version, "sha256": mv.sha256,
                    "provider": "CPUExecutionProvider"})
    return out


def _check(args) -> int:
    from pydantic import ValidationError

    from haidang.ground.settings import load_settings
    from serving.cdss.app import load_engine
    from serving.cdss.catalog import CatalogError, DrugCodes, load_if_present
    from serving.cdss.models import (
        PrescriptionCheckRequest,
        impossible_dates,
        prescription_from_native,
    )
    from serving.cdss.xml130 import Xml130Error, parse_xml130

    settings = load_settings(args.config)
    lang = args.lang or settings.language
    path = Path(args.file)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        print(f"haidang: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if raw.lstrip()[:1] == b"<":
            req = PrescriptionCheckRequest.model_validate(parse_xml130(raw))
        else:
            req = PrescriptionCheckRequest.model_validate_json(raw)
    except Xml130Error as exc:
        print(f"haidang: {path}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            print(f"haidang: {path}: {where}: {err['msg']}", file=sys.stderr)
        return 2
    for problem in impossible_dates(req):
        print(f"haidang: {path}: {problem['field']}: {problem['message']}", file=sys.stderr)
        return 2
    try:
        catalog = load_if_present(settings)
    except CatalogError as exc:
        print(f"haidang: {exc}", file=sys.stderr)
        return 2
    kb, engine = load_engine(settings=settings)
    codes = DrugCodes(kb, catalog)  # the catalogue's MA_THUOC, and ATC codes sent as MA_THUOC
    result = engine.check(prescription_from_native(req, codes), channel="native")
    if args.json:
        print(json.dumps({"alerts": [a.model_dump() for a in result.alerts],
                          "recognised": result.recognised}, ensure_ascii=False, indent=2))
        return 1 if result.alerts else 0
    for line, inn in zip(req.THUOC, result.recognised, strict=True):
        print(f"  {line.TEN_THUOC or line.TEN_HOAT_CHAT or line.MA_THUOC} -> {inn or '?'}")
    if not result.alerts:
        print("Không có cảnh báo." if lang == "vi" else "No alerts.")
        return 0
    for alert in result.alerts:
        message = alert.message_vi if lang == "vi" else alert.message_en
        print(f"[{alert.severity}] {alert.kind}: {message}")
        management = alert.management_vi if lang == "vi" else alert.management_en
        if management:
            print(f"    {'Xử trí' if lang == 'vi' else 'Management'}: {management}")
        print(f"    {'Nguồn' if lang == 'vi' else 'Source'}: {alert.source}")
    return 1


def _import_icd(args) -> int:
    from serving.cdss.app import ICD_CATALOGUE_DIR, ICD_CATALOGUE_STEM
    from serving.cdss.icd import Icd10
    from serving.cdss.knowledge import KnowledgeError

    src = Path(args.file)
    suffix = src.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        print(f"haidang: {src}: expected an .xlsx or .csv file", file=sys.stderr)
        return 2
    try:
        loaded = Icd10().load_moh_catalogue(src)
    except (KnowledgeError, OSError, ValueError) as exc:
        print(f"haidang: {exc}", file=sys.stderr)
        return 2
    ICD_CATALOGUE_DIR.mkdir(parents=True, exist_ok=True)
    for old in ICD_CATALOGUE_DIR.glob(f"{ICD_CATALOGUE_STEM}.*"):
        old.unlink()
    dest = ICD_CATALOGUE_DIR / f"{ICD_CATALOGUE_STEM}{suffix}"
    shutil.copyfile(src, dest)
    print(f"{loaded} Vietnamese ICD-10 titles loaded from {src}; kept as {dest} "
          "(used by `haidang serve` and `haidang cdss check` from the next start).")
    return 0


def _import_catalog(args) -> int:
    from haidang.ground.settings import load_settings
    from serving.cdss.catalog import CatalogError, catalog_path, import_catalog
    from serving.cdss.knowledge import KnowledgeBase

    settings = load_settings(args.config)
    src = Path(args.file)
    try:
        result = import_catalog(src, KnowledgeBase.load())
    except (CatalogError, OSError) as exc:
        print(f"haidang: {exc}", file=sys.stderr)
        return 2
    dest = catalog_path(settings)
    result.catalog.save(dest)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        print(f"{src}: {result.lines} lines, {result.resolved} resolved, "
              f"{len(result.unresolved)} unresolved; stored in {dest} "
              f"({len(result.catalog.codes)} MA_THUOC codes, {len(result.catalog.brands)} "
              "brands; used by `haidang serve` and `haidang cdss check` from the next start)")
        for item in result.unresolved:
            print(f"  line {item.line}: {item.reason}")
    return 0 if not result.unresolved else 1
