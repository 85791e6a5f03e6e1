"""Log lines for people (text) or for a log collector (one JSON object per line).

Hospital IT ships service logs to Loki/ELK/Graylog, which index JSON fields without
parsing rules: `--log-format json` (or HAIDANG_LOG_FORMAT=json) writes `time` (UTC,
ISO 8601), `level`, `logger`, `message`, `process`, `thread`, any `extra={...}` fields
a call adds, and `error`/`traceback` for exceptions. Messages stay what the code logs,
which carries no patient data (UIDs are hashed; see tests/product/test_no_identifiers_in_logs.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# attributes every LogRecord has: everything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Set up the root logger of this process: text or JSON lines on stderr.

    The choice is also put in the environment (HAIDANG_LOG_FORMAT, HAIDANG_LOG_LEVEL) so
    worker processes started later (HTTP workers, listener processes) log the same way
    when they call `configure()` with no arguments."""
    fmt = (fmt or os.environ.get("HAIDANG_LOG_FORMAT") or "text").lower()
    level = (level or os.environ.get("HAIDANG_LOG_LEVEL") or "INFO").upper()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    os.environ["HAIDANG_LOG_FORMAT"], os.environ["HAIDANG_LOG_LEVEL"] = fmt, level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
