"""JSON webhook for urgent studies, for hospitals that want a pager or chat alert.

The payload names the study (UIDs, accession number), the verdict and the model, and
links to the worklist: no patient names, IDs or birth dates. A failed webhook is logged
and never fails the analysis (PACS write-back is the primary channel).
"""

from __future__ import annotations

import logging
import time

import httpx

log = logging.getLogger("haidang.notify")


def urgent_payload(study_uid: str, summary: dict, accession: str = "",
                   worklist_url: str | None = None) -> dict:
    return {
        "event": "haidang.urgent-study",
        "priority": "URGENT",
        "study_instance_uid": study_uid,
        "accession_number": accession,
        "analysis": summary.get("analysis", "cxr-pneumonia"),
        "verdict": summary.get("verdict"),
        "probability": summary.get("probability"),
        "threshold": summary.get("threshold"),
        "model": summary.get("model"),
        "version": summary.get("version"),
        "message_vi": summary.get("verdict_vi"),
        "message_en": summary.get("verdict_en"),
        "unverified_ai_output": True,
        "worklist_url": worklist_url,
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def send_webhook(url: str, payload: dict, timeout_s: float = 5.0, attempts: int = 3) -> bool:
    """POST ``payload`` as JSON; retries on network errors and 5xx. True when delivered."""
    for attempt in range(attempts):
        try:
            response = httpx.post(url, json=payload, timeout=timeout_s)
            if response.status_code < 300:
                return True
            if response.status_code < 500:
                log.error("webhook %s refused the alert (HTTP %s); check notify.webhook_url",
                          url, response.status_code)
                return False
            reason = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
        if attempt + 1 < attempts:
            time.sleep(0.5 * 2 ** attempt)
    log.error("webhook %s not delivered after %s attempts (%s)", url, attempts, reason)
    return False
