"""``haidang up``: the gateway and the whole HTTP app in one process (the embedded default).

It sits on top of every room: the gateway (``dicom_gateway.runtime``) takes the studies and
the web app (``haidang.web``) composes the CDSS, the worklist and the metrics around it.
"""

from __future__ import annotations

from dicom_gateway.cli import settings_of, warm_up


def register(sub) -> None:
    p = sub.add_parser("up", help="gateway and HTTP app in one process (the embedded default)")
    p.add_argument("--port", type=int, help="HTTP port (default serving.port)")
    p.add_argument("--host", help="HTTP address (default serving.host)")
    p.set_defaults(handler=cmd_up)


def cmd_up(args) -> int:
    import uvicorn

    from dicom_gateway.runtime import Gateway
    from haidang.web import create_app

    settings = settings_of(args)
    warm_up(settings)
    gateway = Gateway(settings).start()
    try:
        app = create_app(settings, gateway)
    except BaseException:
        gateway.stop()
        raise
    host = args.host or settings.serving.host
    port = args.port or settings.serving.port
    print(
        f"haidang up: DICOM {settings.gateway.ae_title} on port {gateway.port}, "
        f"HTTP on http://{host}:{port}; Ctrl-C stops",
        flush=True,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        gateway.stop()
    return 0
