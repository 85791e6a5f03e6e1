"""``haidang serve-imaging``: the BentoML imaging service, for split mode.

Wired into the CLI by ``serving.cli`` (``imaging_cli.register(sub)``). It runs
``bentoml serve serving.imaging_service:ImagingService`` with this process's settings
file, so the service and the gateway read the same configuration.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from haidang.ground.processes import die_with_parent, stop_process

log = logging.getLogger("haidang.serving")


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
    """Start the service as a child process (``haidang serve`` may start it next to the CDSS).

    The kernel stops the child when this process dies, even by SIGKILL (``die_with_parent``);
    the child's own workers stop with it (BentoML stops them on SIGTERM)."""
    return subprocess.Popen(service_command(host, port), env=service_env(config, models_dir),
                            preexec_fn=die_with_parent, **popen)


def announce_when_ready(imaging: subprocess.Popen, http, imaging_port, models: list[dict],
                        timeout: float = 300.0) -> threading.Thread:
    """Log the start-up line once the imaging service answers ``/info`` (its model, version,
    sha256 and execution provider, as loaded, after its warm-up), with the other ``models``,
    from a thread: the HTTP app starts meanwhile."""
    import httpx

    from haidang.ground.logs import startup_line

    host = "127.0.0.1" if imaging_port.host in ("0.0.0.0", "::", "") else imaging_port.host
    url = f"http://{host}:{imaging_port.port}/info"

    started = time.monotonic()

    def wait() -> None:
        deadline = started + timeout
        while time.monotonic() < deadline and imaging.poll() is None:
            try:
                info = httpx.post(url, json={}, timeout=5)
                if info.status_code == 200:
                    line = startup_line(
                        "haidang serve", models=[info.json(), *models],
                        warm_up_s=time.monotonic() - started,  # started, loaded, run once
                        ports={"HTTP": f"http://{http.host}:{http.port} ({http.setting})",
                               "imaging": f"http://{imaging_port.host}:{imaging_port.port} "
                                          f"({imaging_port.setting})"})
                    log.info("%s", line)
                    print(f"{line}; Ctrl-C stops", flush=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log.error("the imaging service did not answer %s within %.0f s (exit status %s)",
                  url, timeout, imaging.poll())

    thread = threading.Thread(target=wait, name="haidang-imaging-ready", daemon=True)
    thread.start()
    return thread


def default_address(serving) -> tuple[str, int]:
    """Where the imaging service listens unless told: the port of the first ``serving.url``
    (the address the gateway calls), else ``serving.imaging_port``."""
    return serving.host, _default_port(serving)[1]


def _default_port(serving) -> tuple[str, int]:
    """(the setting that chose it, the port) of :func:`default_address`."""
    from urllib.parse import urlsplit

    first = (serving.url or "").split(",")[0].strip()
    if first and urlsplit(first).port:
        return "serving.url", urlsplit(first).port
    return "serving.imaging_port", serving.imaging_port


def imaging_port(serving, flag: int | None, host: str | None = None):
    """The imaging service's port, named by the flag or setting that chose it."""
    from haidang.ground.ports import Port

    setting, port = ("--imaging-port", flag) if flag else _default_port(serving)
    return Port(setting, host or serving.host, port)


def _run(args) -> int:
    from haidang.ground.ports import Port, ensure_free
    from haidang.ground.processes import stop_on_signals
    from haidang.ground.settings import load_settings

    settings = load_settings(args.config)
    port = imaging_port(settings.serving, args.port, args.host)
    if args.port:
        port = Port("--port", port.host, port.port)
    ensure_free([port])
    with stop_on_signals() as stop:
        proc = start_imaging_service(args.config, port.host, port.port, args.models_dir)
        try:
            while proc.poll() is None and not stop.event.wait(0.5):
                pass
        finally:
            stop_process(proc)
    return 0 if stop.event.is_set() else proc.returncode


def register(sub) -> None:
    p = sub.add_parser("serve-imaging",
                       help="run the BentoML imaging service (split mode)")
    p.add_argument("--host", help="default serving.host")
    p.add_argument("--port", type=int,
                   help="default: the port of serving.url, else serving.imaging_port (3001)")
    p.add_argument("--models-dir", help="model registry folder; default serving.models_dir")
    p.set_defaults(handler=_run)
