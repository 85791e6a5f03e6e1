"""The built-in analysis: a short text SR listing what the gateway received.

It needs no model, so the write-back path (SR into the PACS) is exercised end to
end even before any imaging model is installed.
"""

from __future__ import annotations

from collections import Counter

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_gateway.analyses.base import AnalysisOutput, StudyInput

NAME = "study-summary"


def analyse(study: StudyInput) -> AnalysisOutput:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.instance_paths]
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    lines = []
    for n, (_uid, items) in enumerate(series.items(), start=1):
        first = items[0]
        modality = str(getattr(first, "Modality", "") or "?")
        desc = str(getattr(first, "SeriesDescription", "") or "")
        lines.append(f"Series {n}: {modality} {desc}".rstrip() + f", {len(items)} instance(s)")
    modalities = Counter(str(getattr(ds, "Modality", "") or "?") for ds in headers)
    text = (
        f"Hải Đăng đã nhận {len(headers)} ảnh trong {len(series)} loạt "
        f"(received {len(headers)} instances in {len(series)} series)."
    )
    lines += [f"Đã nhận, không phân tích: {reason} (received, not analysed: {reason})"
              for reason in study.not_analysed]
    comment = hd.sr.CodedConcept("121106", "DCM", "Comment")
    items = [
        hd.sr.TextContentItem(
            name=comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]
    items += [
        hd.sr.TextContentItem(
            name=comment, value=line, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for line in lines
    ]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=headers,
        content=root,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Hai Dang",
        series_description="Haidang study summary",
        is_complete=True,
        is_final=True,
    )
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the Vietnamese text needs it
    summary = {
        "verdict": "received",
        "instances": len(headers),
        "series": len(series),
        "modalities": dict(modalities),
        "version": "1",
    }
    if study.not_analysed:
        summary["not_analysed"] = list(study.not_analysed)
    return AnalysisOutput(analysis=NAME, objects=[sr], summary=summary)
