"""JSON webhook payload for urgent studies, for hospitals that want a pager or chat alert.

The payload names the study (UIDs, accession number), the verdict and the model, and
links to the worklist: no patient names, IDs or birth dates. It is delivered by the
export queue (:mod:`dicom_gateway.delivery.webhook`) after the job commits, so a
webhook that is down never fails or delays the analysis and is retried until it answers.
"""

from __future__ import annotations

import datetime as dt


def urgent_payload(study_uid: str, analysis: str, summary: dict, accession: str = "",
                   worklist_url: str | None = None) -> dict:
    return {
        "event": "haidang.urgent-study",
        "priority": "URGENT",
        "study_instance_uid": study_uid,
        "accession_number": accession,
        "analysis": analysis,
        "verdict": summary.get("verdict"),
        "probability": summary.get("probability"),
        "threshold": summary.get("threshold"),
        "model": summary.get("model"),
        "version": summary.get("version"),
        "message_vi": summary.get("verdict_vi"),
        "message_en": summary.get("verdict_en"),
        "unverified_ai_output": True,
        "worklist_url": worklist_url,
        "analysed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
