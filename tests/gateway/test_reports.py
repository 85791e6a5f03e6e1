"""SR (TID 1500), presentation state (GSPS), visual summary (SC), FHIR DiagnosticReport and
HL7 v2 messages, checked by real validators (dciodvfy, PixelMed, fhir.resources, python-hl7)."""

from __future__ import annotations

import copy
import json

import hl7
import numpy as np
import pydicom
import pytest

from dicom_gateway.analyses.cxr_pneumonia.fhir import (
    build_diagnostic_report,
    report_json,
    report_key,
)
from dicom_gateway.analyses.cxr_pneumonia.sr import (
    ABSENT,
    PNEUMONIA,
    PRESENT,
    build_sr,
    read_finding,
)
from dicom_gateway.analyses.cxr_pneumonia.summary_image import (
    BANNER,
    SIDE,
    build_sc,
    model_view,
    render_summary,
    thumbnail_png,
)
from dicom_gateway.analyses.cxr_pneumonia.wording import AI_DISCLAIMER_VI
from haidang.testbed.studies import make_study
from serving.imaging.predictor import Prediction
from tests.support.sr_validation import assert_valid_sr, dciodvfy_errors, pixelmed_dump


def prediction(p: float) -> Prediction:
    return Prediction(probability=p, finding=p >= 0.5, label="pneumonia" if p >= 0.5 else "normal",
                      threshold=0.5, model="cxr-pneumonia", version="1.2.3", sha256="c0ffee" * 10
                      + "abcd", provider="CPUExecutionProvider")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    _, paths = make_study(["cr"], tmp_path_factory.mktemp("src"))
    return pydicom.dcmread(paths[0])


@pytest.mark.parametrize("p", [0.91, 0.12])
def test_sr_is_valid_tid1500_and_carries_the_finding(tmp_path, source, p):
    pred = prediction(p)
    sr = build_sr([source], pred)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid_sr(path)

    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.SeriesDescription.startswith("AI ")
    assert ("PNEUMONIA SUSPECTED" in back.SeriesDescription) == pred.finding
    present, probability = read_finding(back)
    assert present == pred.finding and probability == pytest.approx(p)
    # evidence: the source image is referenced
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    refs = [i.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence]
    assert source.SOPInstanceUID in refs
    # the device observer names the algorithm and version; the text says it is AI output
    text = json.dumps(back.to_json_dict(), ensure_ascii=False)
    assert "cxr-pneumonia 1.2.3" in text
    assert "AI" in text and "NOT verified by a physician" in text
    assert AI_DISCLAIMER_VI in text
    from highdicom.sr import Comprehensive3DSR
    group = Comprehensive3DSR.from_dataset(back).content.get_image_measurement_groups()[0]
    value = group.get_qualitative_evaluations(name=PNEUMONIA)[0].value
    assert value == (PRESENT if pred.finding else ABSENT)


def test_sr_needs_evidence():
    with pytest.raises(ValueError, match="source image"):
        build_sr([], prediction(0.7))


def test_visual_summary_is_valid_sc_with_heat_map_and_banner(tmp_path, source):
    heat = np.zeros((28, 28), np.float32)
    heat[4:12, 4:12] = 1.0
    view = model_view(source)
    assert view.shape[0] == view.shape[1]
    pos = render_summary(view, heat, prediction(0.9))
    neg = render_summary(view, np.zeros_like(heat), prediction(0.1))
    assert pos.shape == (BANNER + SIDE, SIDE, 3) and pos.dtype == np.uint8
    # red banner for a finding, green otherwise; the heat map tints only its region
    assert pos[5, 5, 0] > pos[5, 5, 1] and neg[5, 5, 1] > neg[5, 5, 0]
    hot = pos[BANNER + 4 * SIDE // 28 + 40, 4 * SIDE // 28 + 40].astype(int)
    cold = pos[BANNER + SIDE - 30, SIDE - 30].astype(int)
    assert abs(hot[0] - hot[2]) > 40 and abs(cold[0] - cold[2]) < 5
    sc = build_sc(source, pos, prediction(0.9))
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert not dciodvfy_errors(path)
    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.Modality == "OT"
    assert back.SeriesDescription.startswith("AI summary: PNEUMONIA SUSPECTED")
    assert back.pixel_array.shape == pos.shape and back.BurnedInAnnotation == "YES"
    # a source without Patient Orientation: left unknown (empty), not invented
    bare = pydicom.Dataset(source)
    del bare.PatientOrientation
    path = tmp_path / "sc-bare.dcm"
    build_sc(bare, neg, prediction(0.1)).save_as(path, enforce_file_format=True)
    assert not dciodvfy_errors(path)
    assert pydicom.dcmread(path).PatientOrientation in ("", None)
    thumb = thumbnail_png(pos)
    assert thumb.startswith(b"\x89PNG") and len(thumb) > 1000


def test_fhir_report_is_preliminary_bilingual_and_valid(source):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    local = pydicom.Dataset(source)  # no offset of its own: the hospital's time zone applies
    if "TimezoneOffsetFromUTC" in local:
        del local.TimezoneOffsetFromUTC
    report = build_diagnostic_report(local, prediction(0.8), report_uid="1.2.3.4",
                                     time_zone="Asia/Ho_Chi_Minh",
                                     patient_system="urn:oid:1.2.704.99")
    body = json.loads(report_json(report))
    DiagnosticReport.parse_obj(body)  # the JSON that is sent validates on its own
    assert body["resourceType"] == "DiagnosticReport" and body["status"] == "preliminary"
    assert body["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}
    assert report_key(report) == "urn:dicom:uid|urn:oid:1.2.3.4"
    assert body["imagingStudy"][0]["identifier"] == {
        "system": "urn:dicom:uid", "value": f"urn:oid:{source.StudyInstanceUID}"}
    assert body["subject"]["identifier"] == {"system": "urn:oid:1.2.704.99",
                                             "value": str(source.PatientID)}
    accession = body["identifier"][1]
    assert accession["type"]["coding"][0]["code"] == "ACSN"
    assert accession["value"] == str(source.AccessionNumber)
    # FHIR dateTime with seconds needs a time zone: the hospital's (+07:00)
    assert body["issued"].endswith("+07:00")
    assert body["effectiveDateTime"] == (
        f"{source.StudyDate[:4]}-{source.StudyDate[4:6]}-{source.StudyDate[6:]}T"
        f"{source.StudyTime[:2]}:{source.StudyTime[2:4]}:{source.StudyTime[4:6]}+07:00")
    # contained resources are referenced from the report (FHIR invariant dom-3)
    assert body["result"] == [{"reference": "#" + body["contained"][0]["id"]}]
    assert "NGHI NGỜ VIÊM PHỔI" in body["conclusion"]
    assert "PNEUMONIA SUSPECTED" in body["conclusion"]
    assert body["conclusionCode"][0]["coding"][0]["code"] == "233604007"
    assert body["contained"][0]["valueQuantity"]["value"] == pytest.approx(0.8)
    negative = json.loads(report_json(build_diagnostic_report(
        source, prediction(0.2), report_uid="1.2.3.4")))
    assert "conclusionCode" not in negative
    # DICOM's own offset wins over the hospital's zone when the source carries one
    shifted = pydicom.Dataset(local)
    shifted.TimezoneOffsetFromUTC = "+0100"
    moved = json.loads(report_json(build_diagnostic_report(shifted, prediction(0.2),
                                                           report_uid="1.2.3.4")))
    assert moved["effectiveDateTime"].endswith("+01:00")


def _hl7(message) -> hl7.Message:
    """What a receiver sees: the ER7 text parsed again."""
    return hl7.parse(str(message), encoding="utf-8")


def test_hl7_oru_carries_finding_probability_model_and_bilingual_note(source):
    from dicom_gateway.analyses.cxr_pneumonia.hl7 import control_id, oru_r01
    from haidang.ground.settings import HL7Settings

    msg_id = control_id(str(source.StudyInstanceUID), "cxr-pneumonia", 1, "ORU^R01")
    assert msg_id == control_id(str(source.StudyInstanceUID), "cxr-pneumonia", 1, "ORU^R01")
    assert msg_id != control_id(str(source.StudyInstanceUID), "cxr-pneumonia", 2, "ORU^R01")
    assert len(msg_id) <= 20  # MSH-10 is ST(20) in v2.5.1
    m = _hl7(oru_r01(source, prediction(0.87), msg_id=msg_id, cfg=HL7Settings(host="x"),
                     time_zone="Asia/Ho_Chi_Minh"))
    assert str(m.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert m.extract_field("MSH", 1, 10) == msg_id and m.extract_field("MSH", 1, 12) == "2.5.1"
    assert m.extract_field("MSH", 1, 7).endswith("+0700")
    assert m.extract_field("PID", 1, 3, 1, 1) == str(source.PatientID)
    assert m.extract_field("OBR", 1, 3) == str(source.AccessionNumber)
    assert m.extract_field("OBR", 1, 25) == "P"  # preliminary: no physician verified it
    obx = {str(seg[3][0][0]): seg for seg in m.segments("OBX")}
    assert str(obx["233604007"][5]) == "52101004^Present^SCT"
    assert float(str(obx["122157"][5])) == pytest.approx(0.87)
    assert str(obx["110180"][5]) == str(source.StudyInstanceUID)
    assert "NGHI NGỜ VIÊM PHỔI" in str(obx["VI"][5]) and "CHƯA" in str(obx["VI"][5])
    assert "PNEUMONIA SUSPECTED" in str(obx["EN"][5]) and "NOT verified" in str(obx["EN"][5])
    assert str(obx["MODEL"][18]).startswith("cxr-pneumonia 1.2.3")
    assert all(str(seg[11]) == "P" for seg in m.segments("OBX"))
    assert "unverified AI" in str(m.segment("NTE")[3])


@pytest.mark.parametrize("kind", ["ORM^O01", "OMI^O23"])
def test_hl7_priority_update_sets_stat_on_the_accession(source, kind):
    from dicom_gateway.analyses.cxr_pneumonia.hl7 import priority_update
    from haidang.ground.settings import HL7Settings

    m = _hl7(priority_update(source, prediction(0.9), kind=kind, msg_id="HD1",
                             cfg=HL7Settings(host="x"), time_zone="Asia/Ho_Chi_Minh"))
    assert str(m.segment("MSH")[9]).startswith(kind)
    assert m.extract_field("ORC", 1, 1) == "XO"  # change order
    assert m.extract_field("ORC", 1, 3) == str(source.AccessionNumber)
    assert m.extract_field("OBR", 1, 5) == "S"  # STAT
    if kind == "ORM^O01":
        assert m.extract_field("ORC", 1, 7, 1, 6) == "S"
        assert m.extract_field("OBR", 1, 27, 1, 6) == "S"
    else:
        assert m.extract_field("TQ1", 1, 9, 1, 1) == "S"
        assert m.extract_field("IPC", 1, 1) == str(source.AccessionNumber)
        assert m.extract_field("IPC", 1, 3) == str(source.StudyInstanceUID)


def test_sr_lists_the_sr_it_replaces_as_predecessor(tmp_path, source):
    first = build_sr([source], prediction(0.3))
    second = build_sr([source], prediction(0.8), previous_versions=[first])
    path = tmp_path / "sr2.dcm"
    second.save_as(path, enforce_file_format=True)
    assert_valid_sr(path)
    back = pydicom.dcmread(path)
    [study] = back.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == source.StudyInstanceUID
    [ref] = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_presentation_state_outlines_the_heat_map_on_the_original_image(tmp_path, source):
    import highdicom as hd

    from dicom_gateway.analyses.cxr_pneumonia.gsps import build_gsps, heat_outlines

    heat = np.zeros((28, 28), np.float32)
    heat[4:10, 4:12] = 1.0  # two separate regions
    heat[18:24, 16:24] = 0.8
    heat[26, 26] = 0.7  # a speck: below 1% of the square, not outlined
    rows, columns = int(source.Rows), int(source.Columns)
    outlines = heat_outlines(heat, rows, columns)
    assert len(outlines) == 2
    for points in outlines:
        assert (points[0] == points[-1]).all()  # closed
        assert points[:, 0].min() >= 0 and points[:, 0].max() <= columns
        assert points[:, 1].min() >= 0 and points[:, 1].max() <= rows
    gsps = build_gsps(source, heat, prediction(0.9))
    path = tmp_path / "pr.dcm"
    gsps.save_as(path, enforce_file_format=True)
    assert not dciodvfy_errors(path)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy PS
    assert back.StudyInstanceUID == source.StudyInstanceUID
    [series] = back.ReferencedSeriesSequence
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    [annotation] = back.GraphicAnnotationSequence
    assert annotation.GraphicLayer == "AI"
    text = annotation.TextObjectSequence[0].UnformattedTextValue
    assert "NGHI NGỜ VIÊM PHỔI" in text and "PNEUMONIA SUSPECTED" in text
    # highdicom accepts every outline read back from the file
    objects = [hd.pr.GraphicObject(graphic_type=o.GraphicType, units=o.GraphicAnnotationUnits,
                                   graphic_data=np.array(o.GraphicData).reshape(-1, 2))
               for o in annotation.GraphicObjectSequence]
    assert [o.GraphicType for o in objects] == ["POLYLINE", "POLYLINE"]
    # PixelMed reads it too: the outlines and the whole bilingual text
    dump = pixelmed_dump(path)
    assert dump.count("GraphicType VR=<CS> VL=<0x8> <POLYLINE>") == 2
    assert "chưa xác nhận / unverified" in dump
    # shown as the modality shows it: MONOCHROME1 (this CR) inverted, MONOCHROME2 not
    assert back.PresentationLUTShape == ("INVERSE" if source.PhotometricInterpretation
                                         == "MONOCHROME1" else "IDENTITY")
    for photometric, shape in (("MONOCHROME1", "INVERSE"), ("MONOCHROME2", "IDENTITY")):
        other = copy.deepcopy(source)  # Dataset(source) would share, and change, its elements
        other.PhotometricInterpretation = photometric
        assert build_gsps(other, heat, prediction(0.9)).PresentationLUTShape == shape
    # no finding: the verdict only, no outlines
    calm = build_gsps(source, heat, prediction(0.1))
    assert "GraphicObjectSequence" not in calm.GraphicAnnotationSequence[0]
