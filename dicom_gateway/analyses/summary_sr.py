"""The study-summary SR: what the gateway received, and why a study was not analysed.

Any analysis may answer with it: the built-in ``study-summary`` trace, and a model's
intended-use gate when it refuses a study ("not analysed: outside the model's intended use:
lateral view"), so a study is visibly handled in PACS, never silently skipped.

The tree follows TID 2000 (Basic Diagnostic Imaging Report): the language of the content
(TID 1204: Vietnamese, RFC 5646 ``vi``; each sentence carries its English translation
after a slash), a Findings section listing the series, and, when there is a conclusion,
a Conclusions section.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

VIETNAMESE = hd.sr.CodedConcept("vi", "RFC5646", "Vietnamese")
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def _section(name, item_name, texts: Sequence[str]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=name, relationship_type=CONTAINS)
    section.ContentSequence = [
        hd.sr.TextContentItem(name=item_name, value=text, relationship_type=CONTAINS)
        for text in texts
    ]
    return section


def build_summary_sr(headers: Sequence[pydicom.Dataset],
                     conclusions: Sequence[str] = ()) -> hd.sr.ComprehensiveSR:
    """A TID 2000 SR about ``headers`` (one study): what was received, then ``conclusions``."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    findings = [f"Hải Đăng đã nhận {len(headers)} ảnh trong {len(series)} loạt "
                f"/ received {len(headers)} instances in {len(series)} series."]
    for n, items in enumerate(series.values(), start=1):
        first = items[0]
        modality = str(getattr(first, "Modality", "") or "?")
        desc = str(getattr(first, "SeriesDescription", "") or "")
        findings.append(f"Loạt {n} / series {n}: {modality} {desc}".rstrip()
                        + f", {len(items)} ảnh / instance(s)")
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(VIETNAMESE),
        _section(codes.DCM.Findings, codes.DCM.Finding, findings),
    ]
    if conclusions:
        root.ContentSequence.append(
            _section(codes.DCM.Conclusions, codes.DCM.Conclusion, conclusions))
    sr = hd.sr.ComprehensiveSR(
        evidence=list(headers),
        content=root,
        series_instance_uid=generate_uid(),
        series_number=9901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Hai Dang",
        series_description="Haidang study summary",
        is_complete=True,
        is_final=True,
        specific_character_set="ISO_IR 192",  # UTF-8: the Vietnamese text needs it
    )
    _keep_deidentification(sr, headers[0])
    return sr


def _keep_deidentification(sr: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """A de-identified source makes a de-identified SR, which must say how (Type 1C).

    The method is the source's; a source that says YES without a method gets that fact
    stated, not an invented method.
    """
    if str(sr.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    if "DeidentificationMethodCodeSequence" in source:
        sr.DeidentificationMethodCodeSequence = source.DeidentificationMethodCodeSequence
    sr.DeidentificationMethod = (source.get("DeidentificationMethod")
                                 or "as received: the source images do not state the method")


def read_text(sr: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR tree, depth first: what a PACS viewer shows."""
    texts = []
    for item in sr.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            texts.append(str(item.TextValue))
        texts += read_text(item)
    return texts
