"""``haidang up``: the gateway and the whole HTTP app in one process (the embedded default).

It sits on top of every room: the gateway (``dicom_gateway.runtime``) takes the studies and
the web app (``haidang.web``) composes the CDSS, the worklist and the metrics around it.
Everything is warm before the DICOM listener opens; every port comes from a flag or a setting.
"""

from __future__ import annotations

from dicom_gateway.cli import announce, dicom_port, settings_of, warm_up


def register(sub) -> None:
    p = sub.add_parser("up", help="gateway and HTTP app in one process (the embedded default)")
    p.add_argument("--port", type=int, help="HTTP port (default: serving.port, 3000)")
    p.add_argument("--host", help="HTTP address (default: serving.host)")
    p.add_argument("--dicom-port", type=int,
                   help="DICOM listener port (default: gateway.port, 11112)")
    p.set_defaults(handler=cmd_up)


def cmd_up(args) -> int:
    import uvicorn

    from dicom_gateway.runtime import Gateway
    from haidang.ground.ports import Port, ensure_free
    from haidang.ground.processes import stop_on_signals
    from haidang.web import create_app
    from serving.cli import cdss_models

    settings = settings_of(args)
    host = args.host or settings.serving.host
    http = Port("--port" if args.port else "serving.port", host, args.port or settings.serving.port)
    ensure_free([dicom_port(args, settings), http])
    gateway = Gateway(settings)
    with stop_on_signals() as stop:
        try:
            models, warm_s = warm_up(settings)
            app = create_app(settings, gateway)  # loads the CDSS knowledge and models
            gateway.start()  # the listener opens last: everything is warm
            announce("haidang up", settings, gateway, models + cdss_models(settings), warm_s,
                      http=f"http://{host}:{http.port} ({http.setting})")
            with stop.raising():
                uvicorn.run(app, host=host, port=http.port, log_level="warning")
        finally:
            gateway.stop()
    return 0
