"""``haidang serve-imaging``: the BentoML imaging service, for split mode.

Wired into the CLI by ``serving.cli`` (``imaging_cli.register(sub)``). It runs
``bentoml serve serving.imaging_service:ImagingService`` with this process's settings
file, so the service and the gateway read the same configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys

from haidang.ground.processes import stop_process


def service_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", "serving.imaging_service:ImagingService",
            "--host", host, "--port", str(port)]


def service_env(config: str | None, models_dir: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if config:
        env["HAIDANG_CONFIG"] = os.path.abspath(config)
    if models_dir:
        env["HAIDANG_SERVING__MODELS_DIR"] = os.path.abspath(models_dir)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def start_imaging_service(config: str | None, host: str, port: int,
                          models_dir: str | None = None, **popen) -> subprocess.Popen:
    """Start the service as a child process (``haidang serve`` may start it next to the CDSS)."""
    return subprocess.Popen(service_command(host, port), env=service_env(config, models_dir),
                            **popen)


def default_address(serving) -> tuple[str, int]:
    """Where the imaging service listens unless told: the first ``serving.url`` (the address
    the gateway calls), else ``serving.host`` and ``serving.port + 1`` (the CDSS app of
    ``haidang serve`` has ``serving.port``)."""
    from urllib.parse import urlsplit

    first = (serving.url or "").split(",")[0].strip()
    if first:
        parts = urlsplit(first)
        if parts.port:
            return serving.host, parts.port
    return serving.host, serving.port + 1


def _run(args) -> int:
    from haidang.ground.settings import load_settings

    settings = load_settings(args.config)
    host, port = default_address(settings.serving)
    host, port = args.host or host, args.port or port
    proc = start_imaging_service(args.config, host, port, args.models_dir)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return stop_process(proc)


def register(sub) -> None:
    p = sub.add_parser("serve-imaging",
                       help="run the BentoML imaging service (split mode)")
    p.add_argument("--host", help="default serving.host")
    p.add_argument("--port", type=int,
                   help="default: the port of serving.url, else serving.port + 1")
    p.add_argument("--models-dir", help="model registry folder; default serving.models_dir")
    p.set_defaults(handler=_run)
