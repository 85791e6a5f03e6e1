"""FHIR target: each DiagnosticReport is a conditional update by its identifier.

``PUT <notify.fhir_url>/DiagnosticReport?identifier=<system>|<value>`` creates the report
the first time and replaces it afterwards (FHIR R4 3.1.0.4.3), so a resend after a crash or
a lost answer, and a re-analysis of the study, leave exactly one report: the current one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx

from dicom_gateway.delivery import Failure, http_failure
from dicom_gateway.index import Export
from haidang.ground.settings import Settings


def send(settings: Settings, destination: str, exports: list[Export],
         spool_root: Path) -> list[Failure | None]:
    base = settings.notify.fhir_url
    if not base:
        return [Failure("notify.fhir_url is not set any more")] * len(exports)
    out: list[Failure | None] = []
    with httpx.Client(timeout=settings.serving.timeout_s) as client:
        for exp in exports:
            url = (f"{base.rstrip('/')}/{exp.sop_class_uid}"
                   f"?identifier={quote(exp.sop_uid, safe='|:')}")
            try:
                response = client.put(url, content=(spool_root / exp.path).read_bytes(),
                                      headers={"Content-Type": "application/fhir+json"})
            except httpx.HTTPError as exc:
                out.append(Failure(f"FHIR server {base} not reached: {type(exc).__name__}"))
                continue
            out.append(None if response.status_code < 300 else
                       http_failure(url, response.status_code, "notify.fhir_url"))
    return out
