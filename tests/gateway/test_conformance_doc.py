"""The DICOM Conformance Statement states what the code does: its constants are read from
the code, the created objects' SOP classes and series attributes from objects the report
builders really produce."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_gateway import lean, store
from dicom_gateway.analyses.cxr_pneumonia.wording import series_description
from haidang.ground.settings import ExportSettings, GatewaySettings
from haidang.testbed.studies import SAMPLES, sample_path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "dicom-conformance-statement.md").read_text(encoding="utf-8")


def test_association_constants_match_the_code():
    for value in (lean.APPLICATION_CONTEXT, lean.IMPLEMENTATION_UID, lean.IMPLEMENTATION_VERSION,
                  str(lean.MAX_PDU_RECEIVE), str(GatewaySettings().max_associations),
                  lean.VERIFICATION):
        assert value in DOC, value
    assert f"default `{GatewaySettings().ae_title}`" in DOC
    assert f"(default `{ExportSettings().calling_ae_title}`)" in DOC
    assert f"default {GatewaySettings().port}" in DOC


def test_status_codes_match_the_code():
    for status in (store.SUCCESS, store.OUT_OF_RESOURCES, store.CANNOT_UNDERSTAND,
                   store.PROCESSING_FAILURE):
        assert f"| 0x{status:04X} |" in DOC, hex(status)


def test_every_syntax_the_tests_send_is_listed_as_tested():
    sent = {str(pydicom.dcmread(sample_path(k), stop_before_pixels=True).file_meta
                .TransferSyntaxUID) for k in SAMPLES}
    sent.add("1.2.840.10008.1.2.1.99")  # test_gateway deflates a copy
    assert len(sent) >= 9
    for uid in sent:
        row = next((ln for ln in DOC.splitlines() if f"| {uid} |" in ln), None)
        assert row is not None and row.rstrip().endswith("| yes |"), uid


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    """The SR and visual summary the chest X-ray analysis writes for a real sample."""
    from dicom_gateway.analyses.base import StudyInput
    from dicom_gateway.analyses.cxr_pneumonia import analyse
    from tests.support.imaging_e2e import cxr_studies, imaging_settings

    tmp = tmp_path_factory.mktemp("conformance")
    settings = imaging_settings(tmp)
    (study_uid, files), = cxr_studies(tmp / "in", 1)
    out = analyse(StudyInput(study_uid, "PACS", files, settings))
    return {str(ds.SOPClassUID): ds for ds in out.objects}


def test_created_objects_are_the_documented_ones(created):
    from dicom_gateway.analyses.study_summary import analyse  # noqa: F401 - documented too

    sr = created["1.2.840.10008.5.1.4.1.1.88.34"]
    sc = created["1.2.840.10008.5.1.4.1.1.7"]
    pr = created["1.2.840.10008.5.1.4.1.1.11.1"]
    assert len(created) == 3
    for ds, number in ((sr, 9001), (sc, 9002), (pr, 9003)):
        assert f"| Series Number | {ds.SeriesNumber} |" in DOC and ds.SeriesNumber == number
        assert f"| Modality | {ds.Modality} |" in DOC
        assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    for finding in (True, False):
        assert f"`{series_description(finding, 'SR')}`" in DOC
        assert f"`{series_description(finding, 'summary')}`" in DOC
        assert f"`{series_description(finding, 'overlay')}`" in DOC
    assert sr.SeriesDescription in (series_description(True, "SR"),
                                    series_description(False, "SR"))
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert f"| Content Label | {pr.ContentLabel} |" in DOC
    assert "Predecessor Documents Sequence" in DOC
    codes = {item.ConceptNameCodeSequence[0].CodeValue for item in _walk(sr)}
    for code in ("122157", "121106", "233604007"):
        assert code in codes and code in DOC
    assert sr.Manufacturer in DOC


def _walk(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        if "ConceptNameCodeSequence" in item:
            yield item
        yield from _walk(item)
