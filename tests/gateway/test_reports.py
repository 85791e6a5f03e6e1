"""SR (TID 1500), visual summary (SC) and FHIR DiagnosticReport, checked by real validators."""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pydicom
import pytest

from dicom_gateway.reports.fhir import (
    build_diagnostic_report,
    post_report,
    report_json,
    store_report,
)
from dicom_gateway.reports.sr import ABSENT, PNEUMONIA, PRESENT, build_sr, read_finding
from dicom_gateway.reports.summary_image import (
    BANNER,
    SIDE,
    build_sc,
    model_view,
    render_summary,
    save_thumbnail,
)
from dicom_gateway.reports.wording import AI_DISCLAIMER_VI
from haidang.testbed.studies import make_study
from serving.imaging.predictor import Prediction
from tests.support.sr_validation import assert_valid_sr, dciodvfy_errors


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
    thumb = save_thumbnail(pos, tmp_path / "t.png")
    assert thumb.stat().st_size > 1000


def test_fhir_report_is_preliminary_bilingual_and_posts(tmp_path, source):
    report = build_diagnostic_report(source, prediction(0.8))
    body = json.loads(report_json(report))
    assert body["resourceType"] == "DiagnosticReport" and body["status"] == "preliminary"
    assert body["identifier"][0]["value"] == f"urn:oid:{source.StudyInstanceUID}"
    assert "NGHI NGỜ VIÊM PHỔI" in body["conclusion"]
    assert "PNEUMONIA SUSPECTED" in body["conclusion"]
    assert body["conclusionCode"][0]["coding"][0]["code"] == "233604007"
    assert body["contained"][0]["valueQuantity"]["value"] == pytest.approx(0.8)
    negative = json.loads(report_json(build_diagnostic_report(source, prediction(0.2))))
    assert "conclusionCode" not in negative
    assert store_report(report, tmp_path, "s1").read_text(encoding="utf-8") == report_json(report)

    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers["Content-Length"])
            received.append((self.path, self.headers["Content-Type"],
                             json.loads(self.rfile.read(length))))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/fhir"
        assert post_report(report, url) == 201
    finally:
        server.shutdown()
    path, ctype, posted = received[0]
    assert path == "/fhir/DiagnosticReport" and ctype == "application/fhir+json"
    assert posted["status"] == "preliminary"
