"""Gateway commands: ``gateway``, ``echo``, ``send``, ``exports``.

``haidang up`` (gateway and the whole HTTP app in one process) is the product's top, in
``haidang.up``: the gateway does not know the web app that is composed around it.

Registration stays cheap; pynetdicom, uvicorn and the gateway load inside handlers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime


def register(sub) -> None:
    p = sub.add_parser("gateway", help="the DICOM gateway only (analyses served over HTTP)")
    p.add_argument("--dicom-port", type=int,
                   help="DICOM listener port (default: gateway.port, 11112)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default: off)",
    )
    p.set_defaults(handler=cmd_gateway)

    for name, helptext in (
        ("echo", "C-ECHO a DICOM peer (default: our own gateway)"),
        ("send", "C-STORE files to a DICOM peer, each in its own syntax"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", help="peer address (default: the gateway's)")
        p.add_argument("--port", type=int, help="peer port (default: gateway.port)")
        p.add_argument("--aec", help="called AE title (default: gateway.ae_title)")
        p.add_argument("--aet", default="HAIDANG_SCU", help="our calling AE title")
        p.add_argument("--timeout", type=float, default=30.0)
        if name == "send":
            p.add_argument("files", nargs="+", help="DICOM files or folders")
            p.set_defaults(handler=cmd_send)
        else:
            p.set_defaults(handler=cmd_echo)

    p = sub.add_parser("exports", help="deliveries (DICOM, FHIR, HL7, webhook): list, retry "
                       "dead letters")
    esub = p.add_subparsers(dest="exports_command", metavar="ACTION", required=True)
    q = esub.add_parser("list", help="list exports")
    q.add_argument("--dead", action="store_true", help="only dead-lettered exports")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_exports_list)
    q = esub.add_parser("retry", help="send an export again (resets its attempts)")
    q.add_argument("ids", nargs="+", type=int, metavar="ID")
    q.set_defaults(handler=cmd_exports_retry)


def settings_of(args):
    from haidang.ground.logs import set_third_party_level
    from haidang.ground.settings import load_settings

    settings = load_settings(args.config)
    set_third_party_level(settings.logging.third_party_level)
    return settings


def dicom_port(args, settings):
    """The DICOM listener's port: ``--dicom-port`` else ``gateway.port``, named for messages."""
    from haidang.ground.ports import Port

    if getattr(args, "dicom_port", None):
        settings.gateway.port = args.dicom_port
        return Port("--dicom-port", settings.gateway.host, args.dicom_port)
    return Port("gateway.port", settings.gateway.host, settings.gateway.port)


def warm_up(settings) -> tuple[list[dict], float]:
    """Load every routed analysis's model and report builders before the listener opens,
    so the first study does not pay for it; returns the models' identities and the time.

    A failure (serving not up yet in split mode) is only logged: the gateway must still
    take studies, which wait in the queue until serving answers.
    """
    from dicom_gateway.analyses import warm_up_routed

    t0 = time.perf_counter()
    try:
        models = list(warm_up_routed(settings).values())
    except Exception as exc:  # noqa: BLE001 - start anyway; jobs retry
        logging.getLogger("haidang.gateway").warning(
            "analysis warm-up failed (%s: %s); studies will wait for serving",
            type(exc).__name__, exc)
        models = []
    return models, time.perf_counter() - t0


def announce(command: str, settings, gateway, models, warm_s, http=None) -> None:
    from haidang.ground.logs import startup_line

    g = settings.gateway
    ports = {"DICOM": f"{g.ae_title}@{g.host}:{gateway.port} (gateway.port)"}
    if http:
        ports["HTTP"] = http
    line = startup_line(command, ports=ports, models=models, database=g.database_url,
                        warm_up_s=warm_s)
    logging.getLogger("haidang").info("%s", line)
    print(f"{line}; Ctrl-C stops", flush=True)


def cmd_gateway(args) -> int:
    from dicom_gateway.runtime import Gateway
    from haidang.ground.ports import Port, ensure_free
    from haidang.ground.processes import stop_on_signals

    settings = settings_of(args)
    ports = [dicom_port(args, settings)]
    if args.metrics_port:
        ports.append(Port("--metrics-port", settings.serving.host, args.metrics_port))
    ensure_free(ports)
    gateway = Gateway(settings)
    with stop_on_signals() as stop:
        try:
            models, warm_s = warm_up(settings)  # before the listener accepts anything
            gateway.start()
            if args.metrics_port:
                from prometheus_client import start_http_server

                start_http_server(args.metrics_port, addr=settings.serving.host)
            announce("haidang gateway", settings, gateway, models, warm_s)
            stop.wait()
        finally:
            gateway.stop()
    return 0


def _peer(args, settings):
    host = args.host or settings.gateway.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return host, args.port or settings.gateway.port, args.aec or settings.gateway.ae_title


def cmd_echo(args) -> int:
    from dicom_gateway.scu import echo

    settings = settings_of(args)
    host, port, aec = _peer(args, settings)
    t0 = time.perf_counter()
    ok, detail = echo(host, port, aec, args.aet, args.timeout)
    ms = (time.perf_counter() - t0) * 1000
    print(f"C-ECHO {aec}@{host}:{port}: {'success' if ok else 'FAILED'} ({ms:.0f} ms){detail}")
    return 0 if ok else 1


def cmd_send(args) -> int:
    from dicom_gateway.scu import expand_files, send_files

    settings = settings_of(args)
    host, port, aec = _peer(args, settings)
    files = expand_files(args.files)
    if not files:
        print("haidang send: no files found", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = send_files(host, port, aec, args.aet, files, args.timeout)
    failed = [(f, s) for f, s in results if s is not None]
    dt = time.perf_counter() - t0
    for f, s in failed:
        print(f"FAILED {f}: {s}", file=sys.stderr)
    print(
        f"sent {len(results) - len(failed)}/{len(files)} files to {aec}@{host}:{port} in {dt:.2f} s"
    )
    return 0 if not failed else 1


def _ts(t) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def cmd_exports_list(args) -> int:
    from dicom_gateway.index import Index
    from haidang.ground.logs import uid_hash

    index = Index(settings_of(args).gateway.database_url)
    rows = index.list_exports(dead_only=args.dead)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dead-lettered exports" if args.dead else "no exports")
        return 0
    print(
        f"{'ID':>6}  {'STATE':8} {'TRIES':>5}  {'CHANNEL':7} {'DEST':10} {'STUDY':12}  "
        f"{'NEXT/DONE (UTC)':19}  "
        "LAST ERROR"
    )
    for r in rows:
        when = r["done_at"] if r["state"] == "done" else r["next_attempt_at"]
        print(
            f"{r['id']:>6}  {r['state']:8} {r['attempts']:>5}  {r['channel']:7} "
            f"{r['destination'][:10]:10} "
            f"{uid_hash(r['study_uid']):12}  {_ts(when):19}  {r['last_error'] or ''}"
        )
    return 0


def cmd_exports_retry(args) -> int:
    from dicom_gateway.index import Index

    index = Index(settings_of(args).gateway.database_url)
    status = 0
    for export_id in args.ids:
        if index.retry_export(export_id):
            print(f"export {export_id} queued again; a running gateway sends it within seconds")
        else:
            print(f"export {export_id}: no such export, or already delivered or superseded by a "
                  "newer result", file=sys.stderr)
            status = 1
    return status
