"""Webhook target: the urgent-study JSON POSTed to ``notify.webhook_url`` (pager, chat).

The payload carries no patient name, ID or birth date (see :mod:`dicom_gateway.notify`).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from dicom_gateway.delivery import Failure, http_failure
from dicom_gateway.index import Export
from haidang.ground.settings import Settings


def send(settings: Settings, destination: str, exports: list[Export],
         spool_root: Path) -> list[Failure | None]:
    url = settings.notify.webhook_url
    if not url:
        return [Failure("notify.webhook_url is not set any more")] * len(exports)
    out: list[Failure | None] = []
    with httpx.Client(timeout=settings.serving.timeout_s) as client:
        for exp in exports:
            try:
                response = client.post(url, content=(spool_root / exp.path).read_bytes(),
                                        headers={"Content-Type": "application/json",
                                                 "Idempotency-Key": exp.sop_uid})
            except httpx.HTTPError as exc:
                out.append(Failure(f"webhook {url} not reached: {type(exc).__name__}"))
                continue
            out.append(None if response.status_code < 300 else
                       http_failure(url, response.status_code, "notify.webhook_url"))
    return out
