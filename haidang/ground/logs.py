"""Log lines for people (text) or for a log collector (one JSON object per line).

Hospital IT ships service logs to Loki/ELK/Graylog, which index JSON fields without
parsing rules: `--log-format json` (or HAIDANG_LOG_FORMAT=json) writes `time` (UTC,
ISO 8601), `level`, `logger`, `message`, `process`, `thread`, any `extra={...}` fields
a call adds, and `error`/`traceback` for exceptions. Messages stay what the code logs,
which carries no patient data (UIDs are hashed; see tests/product/test_no_identifiers_in_logs.py).

In a steady state the INFO level carries one line per study (`study_line`); the start-up
line (`startup_line`) says once what runs where. Other libraries' loggers (highdicom,
pynetdicom, uvicorn, bentoml ...) pass only from `logging.third_party_level` (WARNING).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# attributes every LogRecord has: everything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
OWN_LOGGERS = ("haidang", "serving", "dicom_gateway", "training")  # everything else: third party


class ThirdPartyFilter(logging.Filter):
    """Lets other libraries' records through only from `level` up."""

    def __init__(self, level: int = logging.WARNING):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) \
                    else str(value)
        if record.exc_info:
            out["error"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str | None = None, fmt: str | None = None,
              third_party: str | None = None) -> None:
    """Set up the root logger of this process: text or JSON lines on stderr.

    The choice is also put in the environment (HAIDANG_LOG_FORMAT, HAIDANG_LOG_LEVEL) so
    worker processes started later (HTTP workers, listener processes) log the same way
    when they call `configure()` with no arguments. `third_party` (default
    $HAIDANG_LOGGING__THIRD_PARTY_LEVEL, else WARNING) is the least level of other libraries'
    records; `set_third_party_level` changes it once the settings are read."""
    fmt = (fmt or os.environ.get("HAIDANG_LOG_FORMAT") or "text").lower()
    level = (level or os.environ.get("HAIDANG_LOG_LEVEL") or "INFO").upper()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    os.environ["HAIDANG_LOG_FORMAT"], os.environ["HAIDANG_LOG_LEVEL"] = fmt, level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ThirdPartyFilter())
    set_third_party_level(third_party or os.environ.get(THIRD_PARTY_ENV) or "WARNING", handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    # uvicorn configures its loggers with handlers of its own that do not propagate: their
    # records would skip this format and the third-party filter (or go to a stream that is
    # gone, after an in-process server stopped). Send them through the one root handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        library = logging.getLogger(name)
        for old in list(library.handlers):
            library.removeHandler(old)
        library.propagate = True


THIRD_PARTY_ENV = "HAIDANG_LOGGING__THIRD_PARTY_LEVEL"


def set_third_party_level(level: str, *handlers: logging.Handler) -> None:
    """Other libraries' records pass from `level` (a name: WARNING, INFO, DEBUG) up.

    Exported to the environment, so child processes (HTTP workers, listeners) agree."""
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    os.environ[THIRD_PARTY_ENV] = level.upper()
    for handler in handlers or logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, ThirdPartyFilter):
                f.level = value


def startup_line(command: str, *, ports: dict[str, str], models: list[dict] | None = None,
                 database: str | None = None, warm_up_s: float | None = None) -> str:
    """The one line a command logs when it is ready: versions, models, ports, database.

    ``ports``: what listens -> "host:port (setting)"; ``models``: dicts with name, version,
    sha256 and provider (as ``ModelSession.info`` gives them)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "-"

    parts = [f"{command} ready", f"haidang {v('haidang')}",
             f"python {sys.version.split()[0]}, pynetdicom {v('pynetdicom')}, "
             f"onnxruntime {v('onnxruntime')}, fastapi {v('fastapi')}"]
    if models is not None:
        described = [f"{m.get('model') or m.get('name')} {m.get('version')} sha256 "
                     f"{str(m.get('sha256', ''))[:12]} on {m.get('provider', '?')}"
                     for m in models]
        parts.append("models: " + ("; ".join(described) or "none"))
    if warm_up_s is not None:
        parts.append(f"warm-up {warm_up_s:.2f} s")
    parts.append("listening: " + ", ".join(f"{k} {a}" for k, a in ports.items()))
    if database:
        parts.append(f"database {redact_url(database)}")
    return " | ".join(parts)


def redact_url(url: str) -> str:
    """A database URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def study_line(log: logging.Logger, study_uid_hash: str, verdict: str,
               timings: dict[str, float]) -> None:
    """The one INFO line per study: hashed UID, verdict, timings (seconds).

    Called by the worker when a study's analyses are stored; the only INFO line of a steady
    state, so an operator reading INFO sees one line per study."""
    spent = " ".join(f"{k}={t:.3f}s" for k, t in timings.items())
    log.info("study %s: %s; %s", study_uid_hash, verdict, spent,
             extra={"study": study_uid_hash, "verdict": verdict,
                    **{f"{k}_s": round(t, 4) for k, t in timings.items()}})


def quiet_client_disconnects(app) -> None:
    """A client that drops in the middle of its request body: one INFO line, no traceback.

    Starlette raises ``ClientDisconnect`` from the body read; without a handler of its own
    it reached the app's last-resort handler and uvicorn's "Exception in ASGI application"
    traceback. Nobody is left to answer, so the response is never sent."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    http_log = logging.getLogger("haidang.http")

    async def client_gone(request, exc) -> Response:  # noqa: ARG001
        http_log.info("client %s went away before its %s %s was fully received",
                      request.client.host if request.client else "?", request.method,
                      request.url.path)
        return Response(status_code=400)

    app.add_exception_handler(ClientDisconnect, client_gone)


def uid_hash(uid: str) -> str:
    """A short stable stand-in for a UID in logs (UIDs can be traced back to a patient)."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]
