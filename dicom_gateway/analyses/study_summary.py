"""The built-in analysis: a short text SR listing what the gateway received.

It needs no model, so the write-back path (SR into the PACS) is exercised end to
end even before any imaging model is installed. It is also the trace of every study no
other analysis analysed: its Conclusions say, in Vietnamese and English, why
(``StudyInput.not_analysed``), so a radiologist never wonders whether AI looked.
"""

from __future__ import annotations

from collections import Counter

import pydicom

from dicom_gateway.analyses.base import AnalysisOutput, StudyInput
from dicom_gateway.analyses.summary_sr import build_summary_sr

NAME = "study-summary"


def analyse(study: StudyInput) -> AnalysisOutput:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.instance_paths]
    conclusions = [f"Đã nhận, không phân tích: {reason} (received, not analysed: {reason})"
                   for reason in study.not_analysed]
    sr = build_summary_sr(headers, conclusions)
    modalities = Counter(str(getattr(ds, "Modality", "") or "?") for ds in headers)
    summary = {
        "verdict": "received",
        "instances": len(headers),
        "series": len({str(ds.SeriesInstanceUID) for ds in headers}),
        "modalities": dict(modalities),
        "version": "1",
    }
    if study.not_analysed:
        summary["not_analysed"] = list(study.not_analysed)
    return AnalysisOutput(analysis=NAME, objects=[sr], summary=summary)
