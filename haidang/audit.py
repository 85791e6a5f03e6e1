"""The product's audit trail: one append-only, hash-chained log for every part of Haidang.

The chain format is the CDSS's (``serving.cdss.audit``): JSON lines, each carrying the
SHA-256 of the previous record of its writer, patient identifiers only as keyed hashes.
The CDSS, the gateway's write-back, the worklist and the start-up of every process append
to the same file (``security.audit_log``); each process is its own writer with its own
chain, and ``haidang audit verify`` checks them all.

What is recorded: every prescription check and override (the CDSS), every export to a PACS
(``export``), every read of results over HTTP (``access``: worklist data, thumbnails), and
every start of a process with the SHA-256 of its settings (``settings``): a configuration
change shows as a new digest.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import threading
from pathlib import Path

from serving.cdss.audit import AuditLog, verify_chain

__all__ = ["AuditLog", "audit_log", "record", "record_settings", "settings_digest",
           "verify_chain"]

_lock = threading.Lock()
_logs: dict[Path, AuditLog] = {}


def audit_log(settings) -> AuditLog:
    """This process's writer on ``security.audit_log`` (one per file, closed at exit)."""
    sec = settings.security
    path = Path(sec.audit_log).resolve()
    with _lock:
        log = _logs.get(path)
        if log is None:
            log = _logs[path] = AuditLog(path, key=sec.audit_key)
            atexit.register(log.close)
        return log


def record(settings, event: str, identifiers: dict[str, str | None] | None = None,
           **fields) -> None:
    """Append one record; ``identifiers`` (patient IDs, UIDs) are written as keyed hashes."""
    audit_log(settings).record(event, identifiers, **fields)


def settings_digest(settings) -> str:
    """SHA-256 of the effective settings (canonical JSON): equal digests, equal configuration."""
    body = json.dumps(settings.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def record_settings(settings, component: str) -> str:
    """Record that ``component`` started with these settings; returns their digest."""
    digest = settings_digest(settings)
    record(settings, "settings", component=component, settings_sha256=digest)
    return digest


def close_all() -> None:
    """Flush and close every writer of this process (tests; atexit does it otherwise)."""
    with _lock:
        logs = list(_logs.values())
        _logs.clear()
    for log in logs:
        log.close()
